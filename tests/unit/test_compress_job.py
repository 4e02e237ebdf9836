"""The compress job end to end on a tiny BERT, and the AUC quality gate on a deliberately broken model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

from tinymodels import REPO, save_tiny_bert
from distillery.compress.export import CARD_FILE, export_onnx
from distillery.compress.job import CompressConfig, run
from distillery.compress.quantize import quantize_int8
from distillery.compress.validate import (ParityError, QualityGateError, check_quality_gate, fp32_parity, onnx_logits,
                                          variant_aucs)
from distillery.config import ConfigError, load_config
from distillery.data.synthetic import SyntheticConfig, generate
from distillery.data.text import to_text


@pytest.fixture(scope="module")
def texts():
    return [to_text(r) for r in generate(SyntheticConfig(rows_test=300), "test").to_pylist()]


def test_gate_passes_small_drops_and_names_a_less_aggressive_preset():
    drops = check_quality_gate({"fp32": 0.75, "int8": 0.7495, "fp16": 0.751}, max_drop=0.002)
    assert drops["int8"] == pytest.approx(0.0005) and drops["fp16"] < 0
    with pytest.raises(QualityGateError, match=r"int8 \(int8-dynamic\).*try the less aggressive preset: fp16"):
        check_quality_gate({"fp32": 0.75, "int8": 0.74}, max_drop=0.002, presets={"int8": "int8-dynamic"})
    with pytest.raises(QualityGateError, match="int8-static.*int8-dynamic"):
        check_quality_gate({"fp32": 0.75, "int8_static": 0.70}, presets={"int8_static": "int8-static"})
    with pytest.raises(QualityGateError):  # NaN AUC is a failure, not a pass
        check_quality_gate({"fp32": 0.75, "int8": float("nan")})


def test_gate_trips_on_a_deliberately_broken_int8_model(tmp_path, texts):
    good = save_tiny_bert(tmp_path / "good", seed=0)
    other = save_tiny_bert(tmp_path / "other", seed=7)
    out, broken = tmp_path / "onnx", tmp_path / "broken"
    export_onnx(str(good), str(out), max_length=64)
    quantize_int8(str(out))
    export_onnx(str(other), str(broken), max_length=64)
    # Clicks the FP32 model ranks perfectly: its top 20% of logits clicked.
    fp32 = onnx_logits(str(out), "fp32", texts)
    clicks = (fp32 > np.quantile(fp32, 0.8)).astype(float)
    assert variant_aucs(str(out), ["fp32"], texts, clicks)["fp32"] == 1.0
    shutil.copy(broken / "student.fp32.onnx", out / "student.int8.onnx")  # a different model posing as INT8
    aucs = variant_aucs(str(out), ["fp32", "int8"], texts, clicks)
    with pytest.raises(QualityGateError, match="int8"):
        check_quality_gate(aucs, max_drop=0.002, presets={"int8": "int8-dynamic"})


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
    assert cfg.presets == ["int8-dynamic"] and cfg.validation.max_auc_drop == 0.002
    with pytest.raises(ConfigError, match="presets"):
        load_config(CompressConfig, None, ["presets=[int4]"])
    with pytest.raises(ConfigError, match="validation.max_auc_dorp"):
        load_config(CompressConfig, None, ["validation.max_auc_dorp=0.1"])
    with pytest.raises(ConfigError, match="ffn_keep_ratio"):
        load_config(CompressConfig, None, ["ffn_keep_ratio=0"])
    assert yaml.safe_load((REPO / "jobs" / "configs" / "compress.yaml").read_text())["run_dir"] == "runs/demo"
