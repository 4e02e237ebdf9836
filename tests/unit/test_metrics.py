"""Metric functions against hand-computed values."""

import math

import numpy as np
import pytest

from distillery.evaluate import ece, evaluate_predictions, logloss, roc_auc


def test_auc_hand_computed_with_ties():
    # positives score 0.8 and 0.4; negatives 0.4, 0.2, 0.1. Pairs: (0.8 beats all 3) + (0.4: tie, beats 2) = 3 + 2.5
    y = np.array([1, 1, 0, 0, 0])
    s = np.array([0.8, 0.4, 0.4, 0.2, 0.1])
    assert roc_auc(y, s) == pytest.approx(5.5 / 6)


def test_auc_perfect_inverted_and_single_class():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(y, -np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert math.isnan(roc_auc(np.zeros(3), np.arange(3.0)))
    with pytest.raises(ValueError, match="shape"):
        roc_auc(y, np.zeros(3))


def test_logloss_hand_computed_and_clipped():
    y = np.array([1, 0])
    p = np.array([0.8, 0.4])
    assert logloss(y, p) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert np.isfinite(logloss(np.array([1]), np.array([0.0])))


def test_ece_hand_computed():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.6, 0.8])
    # quantile, 2 bins: {0.1, 0.3} mean p 0.2 vs y 0; {0.6, 0.8} mean p 0.7 vs y 1 -> 0.5·0.2 + 0.5·0.3
    assert ece(y, p, n_bins=2) == pytest.approx(0.25)
    # uniform, 2 bins over [0, 1] gives the same split here
    assert ece(y, p, n_bins=2, strategy="uniform") == pytest.approx(0.25)
    assert ece(y, np.array([0.0, 0.0, 1.0, 1.0]), n_bins=2) == 0.0


def test_evaluate_predictions_keys():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.1, 1000)
    y = (rng.uniform(size=1000) < p).astype(int)
    out = evaluate_predictions(y, p)
    assert set(out) >= {"auc", "logloss", "ece", "rows", "mean_prob"} and out["rows"] == 1000
    assert 0.5 < out["auc"] < 1.0 and out["ece"] < 0.05


def test_evaluate_job_writes_design_report_keys(tmp_path):
    import json

    from tinymodels import make_tiny_run, save_tiny_bert
    from distillery.evaluate import EvaluateConfig, run

    run_dir = make_tiny_run(tmp_path / "run", rows_train=20, rows_unlabeled=0, rows_test=120)
    save_tiny_bert(run_dir / "teacher", num_layers=1, hidden=32, seed=1)
    save_tiny_bert(run_dir / "student", num_layers=1, hidden=32, seed=2)
    (run_dir / "report.json").write_text(json.dumps({"labeling": {"rows_in": 5}, "quality": {"keep": 1}}))
    out = run(EvaluateConfig(run_dir=str(run_dir), max_length=64))
    report = json.loads((run_dir / "report.json").read_text())
    q = report["quality"]
    assert report["labeling"] == {"rows_in": 5} and q["keep"] == 1  # merged, nothing else lost
    for name in ("teacher", "student"):
        assert set(q[name]) >= {"auc", "logloss", "ece"} and q[name]["rows"] == 120
    assert 0.5 < q["oracle_auc"] <= 1.0
    assert q["distillation_efficiency"] == pytest.approx(q["student"]["auc"] / q["teacher"]["auc"])
    assert "student_direct" in q["skipped"] and "student_int8" in q["skipped"]
    assert out["quality"]["test_rows"] == 120
