"""The quality gate: is a compressed variant worse than FP32 *with confidence*, on the same rows?

    stats = paired_comparison(clicks, fp32_probs, int8_probs)     # DeLong CI, rank agreement, |Δp|
    decision = gate_decision(stats, GateThresholds(max_auc_drop=0.005))
    if not decision["passed"]: raise QualityGateError(...)

Two AUCs measured on a few thousand test rows with ~80 clicks each carry a standard error of about
0.03, so a fixed threshold on their *difference* passes or fails by chance. Both variants score the
*same* rows, though, and their scores are almost identical, so the difference has a far smaller
standard error once the pairing is used. DeLong's paired test (DeLong et al. 1988, in the fast form
of Sun & Xu 2014) gives that standard error from the structural components of each AUC.

A variant passes only when it is shown non-inferior, and fails when any of these holds:
- its AUC is not shown to be within `max_auc_drop` of FP32's: the upper end of the two-sided
  confidence interval of (AUC_fp32 − AUC_variant) exceeds `max_auc_drop` (the non-inferiority
  margin). A variant that cannot be told apart from one that loses more than the margin fails,
  so a point drop of 0.004 fails a 0.005 margin on the demo's gate sample (interval ±0.003); with
  too few clicks for an AUC at all, the rank and probability rules below decide alone;
- its scores no longer rank rows like FP32's: Spearman correlation below `min_spearman`;
- its probabilities moved: mean |Δp| above `max_mean_abs_dp` (a scale error keeps the ranking but
  breaks calibration, which the bidder's prices depend on).
All three are measured on paired predictions, so a correct variant passes whatever the seed and a
damaged one (scrambled weights, wrong scales) fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["GateThresholds", "delong_paired", "flipped_pair_fraction", "paired_comparison", "gate_decision"]


@dataclass(frozen=True)
class GateThresholds:
    """What a variant may lose against FP32 (see the module docstring for the rule)."""

    max_auc_drop: float = 0.005  # AUC points: the non-inferiority margin, compared with the upper end of the CI of the drop
    confidence: float = 0.95  # two-sided level of the DeLong interval
    min_spearman: float = 0.95  # rank agreement with FP32 over all rows
    max_mean_abs_dp: float = 0.01  # mean |p_variant − p_fp32|, probability units


def _midranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def delong_paired(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Paired DeLong comparison of two scores on the same rows.

    `y: (n,)` 0/1 labels, `a, b: (n,)` scores (any monotone scale). Returns `auc_a`, `auc_b`,
    `diff` (= auc_a − auc_b), `se` (standard error of diff), `var_a`, `var_b`, `cov`.
    Ties count ½, as in the Mann–Whitney form of the AUC.
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if not len(a) == len(b) == len(y):
        raise ValueError(f"delong_paired: {len(y)} labels for {len(a)} and {len(b)} scores")
    scores = np.vstack([a, b])
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise ValueError(f"delong_paired: needs at least 2 positives and 2 negatives (got {m} and {n})")
    x, z = scores[:, pos], scores[:, neg]
    aucs, v10, v01 = np.empty(2), np.empty((2, m)), np.empty((2, n))
    for k in range(2):
        tx, tz, txz = _midranks(x[k]), _midranks(z[k]), _midranks(np.concatenate([x[k], z[k]]))
        aucs[k] = (txz[:m].sum() - m * (m + 1) / 2) / (m * n)
        v10[k] = (txz[:m] - tx) / n  # per positive: share of negatives it outranks
        v01[k] = 1.0 - (txz[m:] - tz) / m  # per negative: share of positives that outrank it
    s10, s01 = np.cov(v10), np.cov(v01)
    s = s10 / m + s01 / n  # (2, 2) covariance of the two AUC estimates
    var = float(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return {"auc_a": float(aucs[0]), "auc_b": float(aucs[1]), "diff": float(aucs[0] - aucs[1]),
            "se": float(np.sqrt(max(var, 0.0))), "var_a": float(s[0, 0]), "var_b": float(s[1, 1]),
            "cov": float(s[0, 1])}


def flipped_pair_fraction(y: np.ndarray, a: np.ndarray, b: np.ndarray, chunk: int = 256) -> float:
    """Share of (click, non-click) pairs that `a` and `b` order differently (a tie in one but not
    the other counts ½). 0 = same ranking of every pair that decides the AUC."""
    y = np.asarray(y).ravel()
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    pa, na, pb, nb = a[y == 1], a[y == 0], b[y == 1], b[y == 0]
    if not len(pa) or not len(na):
        return float("nan")
    flipped = 0.0
    for i in range(0, len(pa), chunk):  # (chunk, negatives) blocks keep memory bounded
        sa = np.sign(pa[i:i + chunk, None] - na[None, :])
        sb = np.sign(pb[i:i + chunk, None] - nb[None, :])
        flipped += float(np.abs(sa - sb).sum()) / 2.0
    return flipped / (len(pa) * len(na))


def paired_comparison(y: np.ndarray, ref: np.ndarray, variant: np.ndarray, confidence: float = 0.95) -> dict[str, Any]:
    """Every figure the gate reads, for `variant` against `ref` (both probabilities `(n,)`) on labels `y`.

    Keys: `auc_ref`, `auc_variant`, `auc_drop` (ref − variant), `auc_drop_se`, `auc_drop_ci`
    (two-sided, `confidence`), `p_value` (two-sided, drop ≠ 0), `spearman`, `kendall`,
    `flipped_pairs`, `max_abs_dp`, `mean_abs_dp`, `rows`, `clicks`.
    """
    from scipy.stats import kendalltau, norm, spearmanr

    ref, variant = np.asarray(ref, dtype=np.float64).ravel(), np.asarray(variant, dtype=np.float64).ravel()
    d = delong_paired(y, ref, variant)
    zq = float(norm.ppf(0.5 + confidence / 2))
    if d["se"] > 0:
        p_value = float(2 * norm.sf(abs(d["diff"]) / d["se"]))
    else:
        p_value = 1.0 if d["diff"] == 0 else 0.0
    dp = np.abs(variant - ref)
    same = bool(np.all(ref == variant))
    return {
        "auc_ref": d["auc_a"], "auc_variant": d["auc_b"], "auc_drop": d["diff"], "auc_drop_se": d["se"],
        "auc_drop_ci": [d["diff"] - zq * d["se"], d["diff"] + zq * d["se"]], "confidence": confidence,
        "p_value": p_value,
        "spearman": 1.0 if same else float(spearmanr(ref, variant).statistic),
        "kendall": 1.0 if same else float(kendalltau(ref, variant).statistic),
        "flipped_pairs": flipped_pair_fraction(y, ref, variant),
        "max_abs_dp": float(dp.max(initial=0.0)), "mean_abs_dp": float(dp.mean()) if len(dp) else 0.0,
        "rows": int(len(ref)), "clicks": int(np.sum(np.asarray(y) == 1)),
    }


def gate_decision(stats: dict[str, Any], thresholds: GateThresholds) -> dict[str, Any]:
    """`{"passed": bool, "reasons": [str, ...]}` for one variant's `paired_comparison` figures."""
    reasons = []
    low, high = stats["auc_drop_ci"]
    if np.isfinite(high) and not high <= thresholds.max_auc_drop:  # an infinite interval: no AUC, rank rules decide
        reasons.append(f"AUC {stats['auc_variant']:.4f} is {stats['auc_drop']:+.4f} below FP32 {stats['auc_ref']:.4f} and "
                       f"not shown within the margin {thresholds.max_auc_drop}: {thresholds.confidence:.0%} CI of the drop "
                       f"[{low:+.4f}, {high:+.4f}] (paired DeLong) reaches above it")
    if not stats["spearman"] >= thresholds.min_spearman:  # NaN fails too
        reasons.append(f"rank agreement with FP32: Spearman {stats['spearman']:.4f} < {thresholds.min_spearman}")
    if not stats["mean_abs_dp"] <= thresholds.max_mean_abs_dp:
        reasons.append(f"probabilities moved: mean |Δp| {stats['mean_abs_dp']:.4g} > {thresholds.max_mean_abs_dp}")
    return {"passed": not reasons, "reasons": reasons}
