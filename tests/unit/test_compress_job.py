"""The compress job end to end on a tiny BERT, and the paired quality gate on a deliberately damaged model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tinymodels import REPO, save_tiny_bert
from distillery.compress.export import export_onnx
from distillery.compress.job import CompressConfig, run
from distillery.compress.quantize import quantize_int8
from distillery.compress.gate import GateThresholds
from distillery.compress.validate import (ParityError, QualityGateError, fp32_parity, onnx_logits, quality_gate,
                                          raise_if_failed, variant_probs)
from distillery.config import ConfigError, load_config
from distillery.onnx_model.card import CARD_FILE
from distillery.data.synthetic import SyntheticConfig, generate
from distillery.data.text import to_text


@pytest.fixture(scope="module")
def texts():
    return [to_text(r) for r in generate(SyntheticConfig(rows_test=300), "test").to_pylist()]


def test_gate_fails_only_a_variant_worse_with_confidence():
    rng = np.random.default_rng(0)
    clicks = (rng.random(3000) < 0.03).astype(float)
    fp32 = 1 / (1 + np.exp(-(rng.normal(-3.5, 0.5, 3000) + 0.8 * clicks)))
    probs = {"fp32": fp32, "int8": fp32 * (1 + rng.normal(0, 1e-3, 3000)), "fp16": fp32.copy()}
    result = quality_gate(clicks, probs, GateThresholds(), presets={"int8": "int8-dynamic", "fp16": "fp16"})
    assert result["passed"] and result["failed"] == []
    assert result["variants"]["fp16"]["auc_drop"] == 0 and result["variants"]["fp16"]["spearman"] == 1.0
    raise_if_failed(result)  # a pass does not raise
    damaged = {"fp32": fp32, "int8": fp32 * rng.uniform(0.2, 1.8, 3000)}  # noise as large as the signal
    result = quality_gate(clicks, damaged, GateThresholds(), presets={"int8": "int8-dynamic"})
    assert result["failed"] == ["int8"] and result["variants"]["int8"]["auc_drop_ci"][0] > 0.002
    with pytest.raises(QualityGateError, match=r"int8 \(int8-dynamic\).*try the less aggressive preset: fp16"):
        raise_if_failed(result)
    with pytest.raises(QualityGateError, match="int8-static.*int8-dynamic"):
        raise_if_failed(quality_gate(clicks, {"fp32": fp32, "int8_static": 1 - fp32}, GateThresholds(),
                                     presets={"int8_static": "int8-static"}))
    nan = quality_gate(clicks, {"fp32": fp32, "int8": np.full(3000, np.nan)}, GateThresholds())
    assert not nan["passed"]  # NaN scores are a failure, not a pass
    # rows without a click: no AUC to compare, rank agreement and |Δp| still decide
    no_clicks = quality_gate(np.zeros(3000), {**probs, "bad": 1 - fp32}, GateThresholds())
    assert no_clicks["failed"] == ["bad"] and no_clicks["variants"]["int8"]["auc_drop"] is None
    assert "no AUC" in no_clicks["variants"]["int8"]["auc_drop_reason"]


def test_gate_trips_on_a_deliberately_damaged_int8_model(tmp_path, texts):
    import onnx
    from onnx import numpy_helper

    good = save_tiny_bert(tmp_path / "good", seed=0)
    out = tmp_path / "onnx"
    export_onnx(str(good), str(out), max_length=64)
    quantize_int8(str(out))
    fp32 = onnx_logits(str(out), "fp32", texts)
    clicks = (fp32 > np.quantile(fp32, 0.8)).astype(float)  # clicks the FP32 model ranks perfectly
    probs = variant_probs(str(out), ["fp32", "int8"], texts)
    assert quality_gate(clicks, probs, GateThresholds())["variants"]["int8"]["auc_ref"] == 1.0
    # Damage the INT8 graph the way a broken quantizer would: corrupt every weight scale.
    model = onnx.load(str(out / "student.int8.onnx"))
    rng = np.random.default_rng(1)
    for init in model.graph.initializer:
        if init.name.endswith("_scale") and init.data_type == onnx.TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            init.CopyFrom(numpy_helper.from_array((arr * rng.uniform(0.1, 10, arr.shape)).astype(np.float32), init.name))
    onnx.save(model, str(out / "student.int8.onnx"))
    result = quality_gate(clicks, variant_probs(str(out), ["fp32", "int8"], texts), GateThresholds(),
                          presets={"int8": "int8-dynamic"})
    assert result["failed"] == ["int8"], result["variants"]["int8"]
    with pytest.raises(QualityGateError, match="int8"):
        raise_if_failed(result)


def test_parity_check_catches_a_graph_that_is_not_the_model(tmp_path, texts):
    good = save_tiny_bert(tmp_path / "good", seed=0)
    other = save_tiny_bert(tmp_path / "other", seed=3)
    export_onnx(str(other), str(tmp_path / "onnx"), max_length=64)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        fp32_parity(str(good), str(tmp_path / "onnx"), texts[:16], max_length=64)
    assert fp32_parity(str(other), str(tmp_path / "onnx"), texts[:16], max_length=64)["max_abs_diff"] < 1e-4


def test_run_prunes_exports_quantizes_and_writes_the_card(tmp_path):
    run_dir = tmp_path / "run"
    save_tiny_bert(run_dir / "student", num_layers=3)
    (run_dir / "labels").mkdir()
    (run_dir / "labels" / "_MANIFEST.json").write_text(json.dumps({"teacher_ids": ["hf-classifier:minilm"]}))
    cfg = CompressConfig(run_dir=str(run_dir), keep_layers=2, ffn_keep_ratio=0.5, keep_heads=2,
                         presets=["int8-dynamic", "fp16"], max_length=64,
                         validation={"rows": 400, "parity_rows": 32, "calibration_rows": 32, "latency_calls": 5,
                                     "gate": "warn", "num_threads": 1})
    card = run(cfg)
    saved = json.loads((run_dir / "onnx" / CARD_FILE).read_text())
    assert saved == card
    assert {"fp32", "int8", "fp16"} <= set(card["variants"])
    for file in card["variants"].values():
        assert (run_dir / "onnx" / file).exists()
    lineage = card["lineage"]
    assert lineage["teacher_id"] == "hf-classifier:minilm" and lineage["labels_manifest_sha256"]
    assert lineage["config_hash"] and lineage["student_checkpoint"].endswith("student")
    m = card["metrics"]
    assert m["pruning"]["after"]["layers"] == {"encoder": 2}
    assert m["fp32_parity"]["max_abs_diff"] < 1e-3
    assert set(m["auc"]) == set(card["variants"]) and m["validation_source"] == "synthetic:test"
    assert m["graph_optimization"]["chosen"] in ("plain", "fused")
    assert (run_dir / "student_pruned" / "config.json").exists()


def test_shipped_yaml_parses_and_bad_keys_name_the_field():
    cfg = load_config(CompressConfig, REPO / "jobs" / "configs" / "compress.yaml")
    assert cfg.presets == ["int8-dynamic"] and cfg.validation.max_auc_drop == 0.005
    with pytest.raises(ConfigError, match="presets"):
        load_config(CompressConfig, None, ["presets=[int4]"])
    with pytest.raises(ConfigError, match="validation.max_auc_dorp"):
        load_config(CompressConfig, None, ["validation.max_auc_dorp=0.1"])
    with pytest.raises(ConfigError, match="ffn_keep_ratio"):
        load_config(CompressConfig, None, ["ffn_keep_ratio=0"])
    assert yaml.safe_load((REPO / "jobs" / "configs" / "compress.yaml").read_text())["run_dir"] == "runs/demo"


def test_a_failed_gate_never_touches_the_model_being_served(tmp_path):
    """Issue 27: `onnx` names the last model that passed. A passing build becomes a new immutable
    version and `onnx` is switched to it; a variant that fails the gate is left out of the next
    version (named, with its figures) and the rest is published; a build with nothing to serve
    (FP32 parity broken) is kept aside and `onnx` still names the last good one."""
    from distillery.compress.validate import ParityError
    from distillery.onnx_model.kinds import open_scorer

    run_dir = tmp_path / "run"
    save_tiny_bert(run_dir / "student")
    (run_dir / "onnx").mkdir(parents=True)
    (run_dir / "onnx" / CARD_FILE).write_text("{}")  # published before versions existed: kept as one
    validation = {"rows": 300, "parity_rows": 16, "calibration_rows": 16, "latency_calls": 0, "num_threads": 1}
    lenient = {**validation, "min_spearman": -1.0, "max_auc_drop": 1.0, "max_mean_abs_dp": 1.0}  # a random tiny model
    passed = run(CompressConfig(run_dir=str(run_dir), max_length=64, try_fusion=False, validation=lenient))
    assert (run_dir / "onnx").is_symlink() and json.loads((run_dir / "onnx" / CARD_FILE).read_text())["version"] == passed["version"]
    assert passed["default_variant"] == "int8" and not passed["metrics"]["rejected"]
    served = (run_dir / "onnx").resolve()
    assert served.parent == run_dir / "onnx.versions" and len(list((run_dir / "onnx.versions").iterdir())) == 2

    # min_spearman=1: INT8 can never rank exactly like FP32, so its gate fails: before, the whole
    # build was refused (QualityGateError, nothing new to serve); now FP32 is published without it.
    cfg = CompressConfig(run_dir=str(run_dir), max_length=64, try_fusion=False, validation={**validation, "min_spearman": 1.0})
    card = run(cfg)
    assert (run_dir / "onnx").resolve() != served and not (run_dir / "onnx.staging").exists()
    assert json.loads((run_dir / "onnx" / CARD_FILE).read_text()) == card
    assert set(card["variants"]) == {"fp32"} and card["default_variant"] == "fp32"
    assert set(card["rejected_variants"]) == {"int8"} and (run_dir / "onnx" / card["rejected_variants"]["int8"]).exists()
    gate = card["metrics"]["quality_gate"]
    assert gate["passed"] is False and gate["failed"] == ["int8"]
    assert {"auc_drop_ci", "spearman", "kendall", "flipped_pairs", "max_abs_dp"} <= set(gate["variants"]["int8"])
    why = card["metrics"]["rejected"]["int8"]
    assert "Spearman" in why["why"] and why["spearman"] < 1.0 and why["preset"] == "int8-dynamic"
    assert not (run_dir / "onnx.rejected").exists()

    # canary rows: re-scoring the published files reproduces the card's probabilities
    canary = card["canary"]
    assert len(canary["inputs"]) == 64 and set(canary["probs"]) == {"fp32"}
    again = open_scorer(str(run_dir / "onnx"), "fp32", intra_op_threads=1).predict(canary["inputs"])
    np.testing.assert_allclose(again, canary["probs"]["fp32"], atol=canary["atol"])
    assert canary["atol"] == 1e-3

    # FP32 that does not compute what PyTorch does: nothing can be served, the build is kept aside
    current = (run_dir / "onnx").resolve()
    broken = CompressConfig(run_dir=str(run_dir), max_length=64, try_fusion=False, validation={**validation, "atol": 1e-12})
    with pytest.raises(ParityError, match=r"(?s)differs from PyTorch.*nothing can be served.*onnx\.rejected"):
        run(broken)
    assert (run_dir / "onnx").resolve() == current and not (run_dir / "onnx.staging").exists()
    rejected = json.loads((run_dir / "onnx.rejected" / CARD_FILE).read_text())
    assert rejected["metrics"]["fp32_parity"]["passed"] is False


def test_canary_rows_rescore_every_published_variant(tmp_path):
    """The card's canary (64 gate inputs, each published variant's probabilities) is what the
    published files compute, so a promotion check can compare a replica's answers with it."""
    from distillery.onnx_model.kinds import open_scorer

    run_dir = tmp_path / "run"
    save_tiny_bert(run_dir / "student")
    validation = {"rows": 200, "parity_rows": 16, "calibration_rows": 16, "latency_calls": 0, "num_threads": 1,
                  "min_spearman": -1.0, "max_auc_drop": 1.0, "max_mean_abs_dp": 1.0}
    card = run(CompressConfig(run_dir=str(run_dir), max_length=64, try_fusion=False, presets=["int8-dynamic", "fp16"],
                              validation=validation))
    canary = card["canary"]
    assert set(canary["probs"]) == set(card["variants"]) == {"fp32", "int8", "fp16"}
    assert all(isinstance(x, str) for x in canary["inputs"]) and len(canary["inputs"]) == 64
    for variant, probs in canary["probs"].items():
        again = open_scorer(str(run_dir / "onnx"), variant, intra_op_threads=1).predict(canary["inputs"])
        assert len(probs) == 64
        np.testing.assert_allclose(again, probs, atol=canary["atol"])
