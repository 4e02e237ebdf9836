"""The two-tower student on tiny random towers: shapes, training, checkpoints, ONNX parity, the INT8
gate, the serving scorer, and a per-bid cost that does not grow with the candidates."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tinymodels import REPO
from distillery.compress.export_two_tower import export_two_tower, two_tower_parity, two_tower_variant_probs
from distillery.compress.gate import GateThresholds
from distillery.compress.quantize import quantize_int8
from distillery.compress.validate import ParityError, quality_gate
from distillery.config import load_config
from distillery.data.synthetic import SyntheticConfig, generate
from distillery.data.text import to_text
from distillery.data.tower_inputs import TwoTowerSpec, tower_inputs, tower_inputs_from_fields
from distillery.training.data import DataSection, build_training_table
from distillery.training.init import ModelInit, build_model
from distillery.training.loop import LoopConfig, load_checkpoint, local_hooks, save_checkpoint, score_texts, train
from distillery.training.two_tower_student import TwoTowerRows, collate_two_tower, load_two_tower


@pytest.fixture(scope="module")
def texts(run_dir):
    return [to_text(r) for r in generate(SyntheticConfig(rows_test=300), "test").to_pylist()]


def _loop(**kw):
    base = dict(loss="joint", alpha=0.0, temperature=4.0, epochs=3, batch_size=16, lr=3e-3, max_length=48, warmup_fraction=0.0)
    return LoopConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained(run_dir, bert, tmp_path_factory):
    """(student folder, training state): 3 epochs of KL to the (oracle) teacher labels."""
    table = build_training_table(str(run_dir), DataSection(splits=["train", "unlabeled"]), "joint")
    model, tok = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0, 1]))
    ckpt = tmp_path_factory.mktemp("ckpt")
    state = train(_loop(), table, model, tok, hooks=local_hooks(str(ckpt)))
    return ckpt / "best", state


@pytest.fixture(scope="module")
def onnx_dir(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    export_two_tower(str(trained[0]), str(out), max_length=48)
    quantize_int8(str(out))
    return out


def test_text_and_row_paths_give_the_same_tower_inputs():
    spec = TwoTowerSpec()
    for row in generate(SyntheticConfig(rows_test=50), "test").to_pylist():
        x = tower_inputs(to_text(row), spec)
        assert x == tower_inputs_from_fields(row, spec)
        req, ad, pos, slot = x.request, x.ad, x.position, x.slot
        assert req.startswith("query:") and "ad:" in ad and "position" not in req + ad
        assert pos == 1 + min(row["position"], spec.position_buckets - 2) and slot > 0
    assert tower_inputs("query: x", spec)[2:4] == (0, 0)  # unknown position / slot → bucket 0


def test_spec_names_the_bad_field():
    with pytest.raises(ValueError, match="request_fields"):
        ModelInit(kind="two_tower", two_tower={"request_fields": ["position"]})
    with pytest.raises(ValueError, match="ad_fields"):
        TwoTowerSpec(request_fields=["query", "ad_title"])
    with pytest.raises(ValueError, match="overrides"):
        ModelInit(kind="two_tower", overrides={"hidden_size": 8})


def test_shipped_yaml_parses():
    from distillery.training.job import TrainJobConfig

    cfg = load_config(TrainJobConfig, REPO / "jobs" / "configs" / "train_two_tower.yaml")
    assert cfg.init.kind == "two_tower" and cfg.loop.loss == "joint" and cfg.output == "student_two_tower"


def test_forward_shapes(bert):
    model, tok = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[1]))
    rows = TwoTowerRows(tok, [to_text(r) for r in generate(SyntheticConfig(rows_test=5), "test").to_pylist()], 48, model.spec)
    batch = collate_two_tower([rows[i] for i in range(5)])
    assert batch["request_input_ids"].shape[0] == batch["ad_input_ids"].shape[0] == 5
    inputs = {k: v for k, v in batch.items() if k not in ("target", "teacher_prob", "click")}
    assert model(**inputs).logits.shape == (5, 1)
    emb = model.embed(batch["ad_input_ids"], batch["ad_attention_mask"])
    assert emb.shape == (5, 32) and torch.allclose(emb.norm(dim=-1), torch.full((5,), 32 ** 0.5))


def test_loss_goes_down_and_checkpoint_round_trips(trained, texts, tmp_path):
    folder, state = trained
    losses = [h["loss"] for h in state.history]
    assert losses[-1] < losses[0], losses
    model, tok, resumed = load_checkpoint(str(folder))
    assert resumed.epoch == state.best_epoch + 1
    again = tmp_path / "again"
    save_checkpoint(str(again), model, tok, resumed)
    model2, tok2, _ = load_checkpoint(str(again))
    a, b = score_texts(model.eval(), tok, texts[:40], 48), score_texts(model2.eval(), tok2, texts[:40], 48)
    assert np.array_equal(a, b) and a.std() > 0


def test_onnx_fp32_matches_pytorch_and_a_broken_export_is_caught(trained, onnx_dir, texts, tmp_path):
    result = two_tower_parity(str(trained[0]), str(onnx_dir), texts[:64], atol=1e-4, max_length=48)
    assert result["max_abs_diff"] < 1e-4
    broken = tmp_path / "broken"
    shutil.copytree(onnx_dir, broken)
    with np.load(broken / "two_tower_head.npz") as a:
        arrays = dict(a)
    arrays["out_b"] = arrays["out_b"] + 0.5
    np.savez(broken / "two_tower_head.npz", **arrays)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        two_tower_parity(str(trained[0]), str(broken), texts[:16], atol=1e-4, max_length=48)


def test_int8_passes_the_paired_gate_and_a_damaged_one_fails(onnx_dir, tmp_path):
    rows = generate(SyntheticConfig(rows_test=3000, seed=3), "test").to_pylist()
    texts = [to_text(r) for r in rows]
    clicks = np.array([r["click"] for r in rows], dtype=float)
    probs = two_tower_variant_probs(str(onnx_dir), ["fp32", "int8"], texts, batch_size=256)
    loose = GateThresholds(max_auc_drop=0.01, min_spearman=0.9, max_mean_abs_dp=0.01)  # a random tiny tower
    assert quality_gate(clicks, probs, loose, presets={"int8": "int8-dynamic"})["passed"]
    damaged = tmp_path / "damaged"
    shutil.copytree(onnx_dir, damaged)
    with np.load(damaged / "two_tower_head.npz") as a:
        arrays = dict(a)
    rng = np.random.default_rng(0)
    arrays["dense_w"] = arrays["dense_w"] + rng.normal(0, 3 * arrays["dense_w"].std(), arrays["dense_w"].shape)
    np.savez(damaged / "two_tower_head.npz", **arrays)
    bad = two_tower_variant_probs(str(damaged), ["int8"], texts, batch_size=256)["int8"]
    result = quality_gate(clicks, {"fp32": probs["fp32"], "int8": bad}, loose)
    assert result["failed"] == ["int8"]


def test_serving_scorer_matches_pytorch_on_rows(trained, onnx_dir):
    from distillery.onnx_model.kinds import open_scorer
    from distillery.onnx_model.two_tower import TwoTowerScorer

    model, tok = load_two_tower(str(trained[0]))
    rows = generate(SyntheticConfig(rows_test=64, seed=5), "test").to_pylist()
    ref = score_texts(model, tok, [to_text(r) for r in rows], 48)
    scorer = open_scorer(str(onnx_dir), "fp32", intra_op_threads=1)
    assert isinstance(scorer, TwoTowerScorer) and scorer.card.student_kind == "two_tower"
    np.testing.assert_allclose(scorer.predict_rows(rows), ref, atol=1e-5)
    np.testing.assert_allclose(scorer.predict_proba([to_text(r) for r in rows]), ref, atol=1e-5)
    mixed = [to_text(r) if i % 2 else r for i, r in enumerate(rows)]  # /predict texts and bid rows in one batch
    np.testing.assert_allclose(scorer.predict(mixed), ref, atol=1e-5)
    with pytest.raises(TypeError, match=r"inputs\[0\]: expected a row text"):
        scorer.predict([None])


def test_per_bid_tower_calls_do_not_grow_with_candidates(onnx_dir):
    from distillery.serving.catalog import load_catalog
    from distillery.onnx_model.kinds import open_scorer

    scorer = open_scorer(str(onnx_dir), "int8", intra_op_threads=1)
    ads = [a.row_fields() for a in load_catalog().candidates()]
    encoded = scorer.warm_ads(ads)
    assert encoded == len({tower_inputs_from_fields(a, scorer.spec)[1] for a in ads})
    assert scorer.warm_ads(ads) == 0  # the catalog is encoded once
    for n, query in ((1, "shoes"), (len(ads), "cheap flights"), (8 * len(ads), "laptop deals")):
        context = {"query": query, "device": "mobile", "site_category": "news"}
        cands = [{**context, **ads[i % len(ads)], "position": 1 + i % 3, "slot_size": "300x250"} for i in range(n)]
        calls, rows = scorer.tower_calls, scorer.tower_rows
        probs = scorer.predict_rows(cands)
        assert probs.shape == (n,) and np.isfinite(probs).all()
        assert scorer.tower_calls - calls == 1 and scorer.tower_rows - rows == 1, n  # the request tower, once


def test_compress_job_and_evaluate_open_a_two_tower_student(trained, run_dir):
    import json

    from distillery.compress.job import CompressConfig, run as compress
    from distillery.evaluate import EvaluateConfig, run as evaluate

    shutil.copytree(trained[0], run_dir / "student_two_tower", dirs_exist_ok=True)
    card = compress(CompressConfig(run_dir=str(run_dir), student="student_two_tower", out="onnx_two_tower", max_length=48,
                                   validation={"rows": 300, "parity_rows": 32, "latency_calls": 5, "num_threads": 1,
                                               "max_auc_drop": 0.05, "min_spearman": 0.8, "max_mean_abs_dp": 0.02}))
    assert card["student_kind"] == "two_tower" and set(card["variants"]) == {"fp32", "int8"}
    assert card["metrics"]["fp32_parity"]["max_abs_diff"] < 1e-3 and card["metrics"]["quality_gate"]["passed"]
    assert json.loads((run_dir / "onnx_two_tower" / "model_card.json").read_text())["two_tower"]["head_hidden"] == 64
    with pytest.raises(ValueError, match="keep_layers"):
        compress(CompressConfig(run_dir=str(run_dir), student="student_two_tower", out="onnx_x", keep_layers=1))
    q = evaluate(EvaluateConfig(run_dir=str(run_dir), models={"student_two_tower": "{run_dir}/student_two_tower"},
                                onnx_dir="{run_dir}/onnx_two_tower", onnx_variants={"two_tower_int8": "int8"},
                                max_length=48, num_threads=1, predictions=None))["quality"]
    assert 0 <= q["student_two_tower"]["auc"] <= 1 and abs(q["two_tower_int8"]["auc"] - q["student_two_tower"]["auc"]) < 0.05


def test_vocabulary_trimming_keeps_the_two_tower_scores(bert, tmp_path):
    from distillery.training.vocab import trim_vocabulary

    texts = [to_text(r) for r in generate(SyntheticConfig(rows_test=80, seed=9), "test").to_pylist()]
    model, tok = build_model(ModelInit(kind="two_tower", source=str(bert), layers=[0]))
    before = score_texts(model.eval(), tok, texts, 48)
    model, small, info = trim_vocabulary(model, tok, texts)
    assert info["after"] < info["before"] and model.config.vocab_size == info["after"]
    np.testing.assert_allclose(score_texts(model, small, texts, 48), before, atol=1e-6)
    model.save_pretrained(str(tmp_path)), small.save_pretrained(str(tmp_path))
    loaded, tok2 = load_two_tower(str(tmp_path))
    np.testing.assert_allclose(score_texts(loaded, tok2, texts, 48), before, atol=1e-6)
