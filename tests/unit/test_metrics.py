"""distillery.metrics against hand-computed values."""

import math

import numpy as np
import pytest

from distillery.metrics import calibration_bins, ece, evaluate_predictions, logloss, percentiles, roc_auc, roc_points


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


def test_auc_of_infinite_and_nan_scores():
    y = np.array([0, 1, 0, 1])
    assert roc_auc(y, np.array([-np.inf, np.inf, 0.0, 2.0])) == 1.0  # logits of 0 and 1 still rank
    assert math.isnan(roc_auc(y, np.array([0.1, np.nan, 0.2, 0.3])))


def test_roc_points_hand_computed_with_ties():
    # thresholds 0.8, 0.4 (one positive and one negative tie), 0.2, 0.1
    fpr, tpr = roc_points([1, 1, 0, 0, 0], [0.8, 0.4, 0.4, 0.2, 0.1])
    np.testing.assert_allclose(fpr, [0, 0, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1, 1])


def test_roc_points_rejects_bad_input():
    with pytest.raises(ValueError, match="both clicks and non-clicks"):
        roc_points([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="shape"):
        roc_points([0, 1], [0.1])
    with pytest.raises(ValueError, match="NaN"):
        roc_points([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="0/1"):
        roc_points([0, 2], [0.1, 0.2])


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


def test_calibration_bins_hand_computed():
    b = calibration_bins([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], n_bins=2)
    np.testing.assert_allclose(b["mean_pred"], [0.2, 0.7])
    np.testing.assert_allclose(b["frac_pos"], [0, 1])
    assert b["count"].tolist() == [2, 2]
    np.testing.assert_allclose(b["lo"], [0.1, 0.6])
    np.testing.assert_allclose(b["hi"], [0.3, 0.8])
    u = calibration_bins([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.8], n_bins=10, strategy="uniform")
    assert u["count"].tolist() == [1, 1, 1, 1]  # empty bins are left out
    with pytest.raises(ValueError, match="strategy"):
        calibration_bins([0, 1], [0.1, 0.2], strategy="kmeans")


def test_percentiles_hand_computed():
    # linear interpolation: p50 of 1..100 is 50.5; p99 is 99.01
    assert percentiles(np.arange(1, 101)) == {"p50": 50.5, "p99": 99.01}
    assert percentiles([1.23456, 1.23456]) == {"p50": 1.235, "p99": 1.235}  # ms to the µs
    assert percentiles([]) == {"p50": None, "p99": None}


def test_evaluate_predictions_keys():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.1, 1000)
    y = (rng.uniform(size=1000) < p).astype(int)
    out = evaluate_predictions(y, p)
    assert set(out) >= {"auc", "logloss", "ece", "rows", "mean_prob"} and out["rows"] == 1000
    assert 0.5 < out["auc"] < 1.0 and out["ece"] < 0.05
