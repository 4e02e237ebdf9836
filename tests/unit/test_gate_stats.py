"""The quality gate's statistics against values computed by hand, and its stability across seeds."""

from __future__ import annotations

import numpy as np
import pytest

from distillery.compress.gate import GateThresholds, delong_paired, flipped_pair_fraction, gate_decision, paired_comparison

# Two positives, three negatives; b ties one positive with a negative. Worked by hand (DeLong 1988):
# a: V10 = [1, 2/3], V01 = [1/2, 1, 1] → AUC 5/6;  b: V10 = [1, 5/6], V01 = [3/4, 1, 1] → AUC 11/12
# S10 = [[1/18, 1/36], [1/36, 1/72]], S01 = [[1/12, 1/24], [1/24, 1/48]]
# Var(A) = 1/36 + 1/36 = 1/18, Var(B) = 1/144 + 1/144 = 1/72, Cov = 1/72 + 1/72 = 1/36
# Var(A − B) = 1/18 + 1/72 − 2/36 = 1/72
Y = np.array([1, 1, 0, 0, 0])
A = np.array([0.9, 0.4, 0.5, 0.2, 0.1])
B = np.array([0.9, 0.5, 0.5, 0.2, 0.1])


def test_delong_paired_matches_the_hand_computation():
    d = delong_paired(Y, A, B)
    assert d["auc_a"] == pytest.approx(5 / 6) and d["auc_b"] == pytest.approx(11 / 12)
    assert d["diff"] == pytest.approx(-1 / 12)
    assert d["var_a"] == pytest.approx(1 / 18) and d["var_b"] == pytest.approx(1 / 72)
    assert d["cov"] == pytest.approx(1 / 36)
    assert d["se"] == pytest.approx(np.sqrt(1 / 72))


def test_delong_of_a_score_with_itself_has_no_spread_and_needs_both_classes():
    d = delong_paired(Y, A, A)
    assert d["diff"] == 0 and d["se"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="2 positives"):
        delong_paired(np.array([1, 0, 0]), A[:3], B[:3])
    with pytest.raises(ValueError, match="labels"):
        delong_paired(Y, A, B[:4])


def test_flipped_pairs_and_rank_figures_by_hand():
    # (pos, neg) pairs: 6. Only (0.4 vs 0.5) in a becomes a tie (0.5 vs 0.5) in b: half a flip.
    assert flipped_pair_fraction(Y, A, B) == pytest.approx(0.5 / 6)
    assert flipped_pair_fraction(Y, A, A) == 0
    assert flipped_pair_fraction(Y, A, -A) == 1.0  # every pair reversed
    stats = paired_comparison(Y, A, B)
    assert stats["max_abs_dp"] == pytest.approx(0.1) and stats["mean_abs_dp"] == pytest.approx(0.02)
    assert stats["auc_drop"] == pytest.approx(-1 / 12)
    lo, hi = stats["auc_drop_ci"]
    assert lo == pytest.approx(-1 / 12 - 1.959964 * np.sqrt(1 / 72), rel=1e-5)
    assert hi == pytest.approx(-1 / 12 + 1.959964 * np.sqrt(1 / 72), rel=1e-5)
    assert stats["rows"] == 5 and stats["clicks"] == 2


def test_delong_se_agrees_with_a_paired_bootstrap():
    rng = np.random.default_rng(3)
    n = 2000
    y = (rng.random(n) < 0.1).astype(int)
    a = rng.normal(size=n) + 1.0 * y
    b = a + rng.normal(scale=0.5, size=n)
    se = delong_paired(y, a, b)["se"]
    diffs = []
    for _ in range(300):
        i = rng.integers(0, n, n)
        if 2 <= y[i].sum() <= n - 2:
            d = delong_paired(y[i], a[i], b[i])
            diffs.append(d["diff"])
    assert np.std(diffs) == pytest.approx(se, rel=0.2)


@pytest.mark.parametrize("seed", range(10))
def test_a_faithful_variant_passes_and_a_damaged_one_fails_whatever_the_seed(seed):
    # Demo-sized: 3,000 rows, ~80 clicks. Faithful: INT8-like noise (|Δlogit| ~ 1e-2). The unpaired AUC
    # of each has a standard error of ~0.03, far above the 0.002 allowed; the paired test is not fooled.
    rng = np.random.default_rng(seed)
    n = 3000
    signal = rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(-3.7 + 0.6 * signal)))).astype(int)
    logit = -3.6 + 0.5 * signal + rng.normal(scale=0.8, size=n)
    fp32 = 1 / (1 + np.exp(-logit))
    faithful = 1 / (1 + np.exp(-(logit + rng.normal(scale=0.01, size=n))))
    th = GateThresholds()
    assert gate_decision(paired_comparison(y, fp32, faithful), th)["passed"]
    damaged = 1 / (1 + np.exp(-(logit + rng.normal(scale=1.0, size=n))))  # noise as large as the signal
    decision = gate_decision(paired_comparison(y, fp32, damaged), th)
    assert not decision["passed"] and any("Spearman" in r for r in decision["reasons"])
    shifted = 1 / (1 + np.exp(-(logit + 1.0)))  # same ranking, every probability ~2.7x: calibration broken
    decision = gate_decision(paired_comparison(y, fp32, shifted), th)
    assert not decision["passed"] and decision["reasons"] == [r for r in decision["reasons"] if "|Δp|" in r]
