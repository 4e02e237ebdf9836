"""Every figure the project measures, in one place: ranking, probability quality and latency.

    from distillery.metrics import evaluate_predictions, percentiles, roc_auc
    evaluate_predictions(clicks, probs)  # {"auc", "logloss", "ece", "rows", "mean_prob"}
    percentiles(latencies_ms)            # {"p50": 1.234, "p99": 5.678}, ms rounded to the µs

AUC, the ROC curve and log loss are scikit-learn's. The calibration bins are our own: they hold
equal numbers of rows by rank, which suits click rates of a few percent, whereas scikit-learn's
`calibration_curve(strategy="quantile")` splits at percentile edges (tied scores share a bin, so
counts differ) and does not return the counts the ECE weighs by.

Pure numpy and scikit-learn, no Ray and no torch, so teachers, training, compression, evaluation
and the report all import it from below.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np

__all__ = ["roc_auc", "roc_points", "logloss", "calibration_bins", "ece", "evaluate_predictions", "percentiles"]

Strategy = Literal["quantile", "uniform"]


def _pair(y: Any, score: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """`(y, score)` as flat float64 arrays of one shape."""
    y = np.asarray(y, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{what}: y_true {y.shape} and score {s.shape} differ in shape")
    return y, s


def roc_auc(y_true: Any, score: Any) -> float:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties count ½.

    `y_true: (n,)` 0/1, `score: (n,)` any monotone score (probabilities or logits). NaN when the
    labels hold a single class (no pair to rank) or a score is NaN.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _pair(y_true, score, "roc_auc")
    positive = y == 1
    if positive.all() or not positive.any() or np.isnan(s).any():
        return float("nan")
    if np.isinf(s).any():  # scikit-learn refuses ±inf; ranks keep the order and the ties, all the AUC reads
        s = np.unique(s, return_inverse=True)[1]
    return float(roc_auc_score(positive, s))


def roc_points(y_true: Any, score: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve `(fpr, tpr)`, each `(k,)` from (0, 0) to (1, 1): one point per distinct score,
    thresholds descending, so tied scores move diagonally (the ½-credit the AUC gives ties)."""
    from sklearn.metrics import roc_curve

    y, s = _pair(y_true, score, "roc_points")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("roc_points: y must hold 0/1 clicks")
    if not np.isfinite(s).all():
        raise ValueError("roc_points: score holds NaN or infinite values")
    if y.all() or not y.any():
        raise ValueError("roc_points: y needs both clicks and non-clicks")
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr


def logloss(y_true: Any, prob: Any, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy in nats; probabilities are clipped to [eps, 1 − eps] (scikit-learn
    clips at machine epsilon, which lets one confident miss dominate the mean)."""
    from sklearn.metrics import log_loss

    y, p = _pair(y_true, prob, "logloss")
    if len(y) == 0 or np.isnan(p).any():
        return float("nan")
    return float(log_loss(y, np.clip(p, eps, 1 - eps), labels=[0, 1]))


def calibration_bins(y_true: Any, prob: Any, n_bins: int = 10, strategy: Strategy = "quantile") -> dict[str, np.ndarray]:
    """Calibration per bin: `lo`, `hi` (predicted-probability range), `count`, `mean_pred` and
    `frac_pos` (observed click rate), each `(b,)` over the non-empty bins in ascending order.

    `quantile` bins hold equal numbers of rows (by rank, ties broken by position), which suits
    click rates of a few percent; `uniform` bins split [0, 1] evenly (then nearly every row lands
    in the first bin).
    """
    y, p = _pair(y_true, prob, "calibration_bins")
    if n_bins < 1:
        raise ValueError(f"calibration_bins: n_bins must be ≥ 1, got {n_bins}")
    if strategy == "uniform":
        idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    elif strategy == "quantile":
        idx = np.empty(len(p), dtype=int)
        idx[np.argsort(p, kind="stable")] = np.arange(len(p)) * n_bins // max(len(p), 1)
    else:
        raise ValueError(f"calibration strategy {strategy!r}: expected 'quantile' or 'uniform'")
    rows = []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            rows.append((p[sel].min(), p[sel].max(), sel.sum(), p[sel].mean(), y[sel].mean()))
    cols = np.array(rows, dtype=np.float64).reshape(-1, 5).T
    return {"lo": cols[0], "hi": cols[1], "count": cols[2].astype(int), "mean_pred": cols[3], "frac_pos": cols[4]}


def ece(y_true: Any, prob: Any, n_bins: int = 10, strategy: Strategy = "quantile") -> float:
    """Expected calibration error: Σ_bins (n_b / n)·|mean(p) − mean(y)| over `calibration_bins`."""
    n = np.size(prob)  # rows whose probability no bin takes (NaN) still count in n
    if n == 0:
        return float("nan")
    b = calibration_bins(y_true, prob, n_bins, strategy)
    return float(sum(c / n * abs(m - f) for c, m, f in zip(b["count"], b["mean_pred"], b["frac_pos"])))


def evaluate_predictions(y_true: Any, prob: Any, n_bins: int = 10, strategy: Strategy = "quantile") -> dict[str, float]:
    """`{auc, logloss, ece, rows, mean_prob}` of click probabilities `prob: (n,)` against clicks `(n,)`."""
    prob = np.asarray(prob, dtype=np.float64)
    return {"auc": roc_auc(y_true, prob), "logloss": logloss(y_true, prob), "ece": ece(y_true, prob, n_bins, strategy),
            "rows": int(len(prob)), "mean_prob": float(prob.mean()) if len(prob) else float("nan")}


def percentiles(latencies_ms: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """`{"p50", "p99"}` of latencies in ms (numpy's linear interpolation), rounded to 3 decimals
    (1 µs); both None when there is no sample."""
    ms = np.asarray(latencies_ms, dtype=np.float64).ravel()
    if ms.size == 0:
        return {"p50": None, "p99": None}
    p50, p99 = np.percentile(ms, [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3)}
