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
