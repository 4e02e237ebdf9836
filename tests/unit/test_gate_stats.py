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


def test_non_inferiority_fails_a_point_drop_of_0_004_that_is_not_shown_within_the_margin():
    """The old rule failed a variant only when the interval's *lower* end passed 0.002, so a point drop
    near 0.004 passed; non-inferiority asks the *upper* end to stay under the margin (0.005)."""
    rng = np.random.default_rng(0)
    n = 3000  # the demo's gate sample: 3,000 test rows, ~80 clicks
    clicks = (rng.random(n) < 80 / 3000).astype(float)
    logit = rng.normal(-3.5, 0.6, n) + 0.9 * clicks
    fp32 = 1 / (1 + np.exp(-logit))
    drops = {}
    for scale in np.linspace(0.02, 0.2, 19):  # score noise whose AUC cost is near 0.004
        variant = 1 / (1 + np.exp(-(logit + np.random.default_rng(1).normal(0, scale, n))))
        drops[scale] = paired_comparison(clicks, fp32, variant)
    scale = min(drops, key=lambda s: abs(drops[s]["auc_drop"] - 0.004))
    stats = drops[scale]
    assert 0.003 <= stats["auc_drop"] <= 0.005
    assert stats["auc_drop_ci"][0] < 0.002  # the old rule passed it
    decision = gate_decision(stats, GateThresholds())
    assert not decision["passed"] and "not shown within the margin 0.005" in decision["reasons"][0]
    faithful = paired_comparison(clicks, fp32, fp32 * (1 + np.random.default_rng(2).normal(0, 1e-3, n)))
    assert gate_decision(faithful, GateThresholds())["passed"]  # a real INT8's |Δp| of ~1e-3 passes
