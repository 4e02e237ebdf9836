"""Confidence intervals for the evaluation figures: a stratified, paired bootstrap over test rows.

    quality.update(confidence_intervals(clicks, {"teacher": p_t, "student": p_s, ...}, BootstrapSection()))

A real log's test split may hold a few dozen clicks, where an AUC is uncertain by several hundredths
and a ratio of two AUCs more so. Each resample draws the test's positives from its positives and its
negatives from its negatives, with replacement (stratified: every resample has the test's click
count, so an AUC always exists), and the *same* draw scores every model (paired: the efficiency and
lift intervals keep the correlation between models, which makes them much narrower than two
independent intervals would suggest). Intervals are percentile intervals at `level`.

Keys (merged into `quality`): `<model>.auc_ci`, `<model>.gain_retention_ci` (against the teacher), `distillation_efficiency_ci`,
`distillation_efficiency_student_ci`, `gain_retention_ci`, `lift_auc_ci` ([low, high]), `test_clicks`,
`few_clicks_warning` (a sentence, or null with enough clicks), `bootstrap` (how they were made).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from distillery.config import Section

__all__ = ["BootstrapSection", "bootstrap_aucs", "confidence_intervals", "gain_retention"]


def gain_retention(student_auc, teacher_auc):
    """(AUC_student − 0.5) / (AUC_teacher − 0.5): the share of the teacher's gain over chance that the
    student keeps (floats or arrays of paired resamples). Unlike AUC_student / AUC_teacher, which is
    near 1 at AUCs near 0.6 whatever the student learned, it reads 0 for a student at chance; NaN where
    the teacher itself is at chance."""
    gain = np.asarray(teacher_auc, dtype=np.float64) - 0.5
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(np.abs(gain) > 1e-12, (np.asarray(student_auc, dtype=np.float64) - 0.5) / gain, np.nan)
    return float(out) if out.ndim == 0 else out


class BootstrapSection(Section):
    resamples: int = Field(1000, ge=0, description="bootstrap resamples of the test rows (0: no intervals)")
    level: float = Field(0.95, gt=0.0, lt=1.0, description="coverage of the percentile intervals")
    seed: int = Field(0, description="seed of the resampling")
    few_clicks: int = Field(100, ge=1, description="below this many test clicks the report warns that the figures are noisy")
    chunk: int = Field(50, ge=1, description="resamples computed at once (memory: chunk × negatives floats)")


def bootstrap_aucs(clicks: np.ndarray, scores: dict[str, np.ndarray], cfg: BootstrapSection) -> dict[str, np.ndarray]:
    """`{model: (resamples,) AUCs}` over stratified resamples shared by every model (ties count ½).

    `clicks: (n,)` 0/1 with both classes present; `scores[model]: (n,)`. Each resample is a
    multiset of positives and one of negatives; a model's AUC on it is Σ_pos w_p·(#weighted
    negatives below + ½ tied) / (n_pos·n_neg), from one sort of the negatives per model.
    """
    y = np.asarray(clicks, dtype=np.float64).ravel()
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"bootstrap_aucs: need both click classes (positives {n_pos}, negatives {n_neg})")
    rng = np.random.default_rng(cfg.seed)
    prepared = {}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64).ravel()
        order = np.argsort(s[neg], kind="stable")
        sorted_neg = s[neg][order]
        prepared[name] = (order, np.searchsorted(sorted_neg, s[pos], "left"),
                          np.searchsorted(sorted_neg, s[pos], "right"))
    out = {name: np.empty(cfg.resamples) for name in scores}
    for start in range(0, cfg.resamples, cfg.chunk):
        b = min(cfg.chunk, cfg.resamples - start)
        # counts of each positive / negative in each resample: (b, n_pos), (b, n_neg)
        wp = _counts(rng.integers(0, n_pos, (b, n_pos)), n_pos)
        wn_rows = _counts(rng.integers(0, n_neg, (b, n_neg)), n_neg)
        for name, (order, below, upto) in prepared.items():
            cum = np.concatenate([np.zeros((b, 1)), np.cumsum(wn_rows[:, order], axis=1)], axis=1)
            wins = cum[:, below] + 0.5 * (cum[:, upto] - cum[:, below])
            out[name][start:start + b] = (wp * wins).sum(1) / (n_pos * n_neg)
    return out


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """(b, k) indices in [0, n) → (b, n) counts per index, as float64."""
    b = draws.shape[0]
    flat = (draws + np.arange(b)[:, None] * n).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def _interval(values: np.ndarray, level: float) -> list[float] | None:
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = (1 - level) / 2 * 100
    return [round(float(np.percentile(values, tail)), 6), round(float(np.percentile(values, 100 - tail)), 6)]


def confidence_intervals(clicks: np.ndarray, scored: dict[str, np.ndarray], cfg: BootstrapSection) -> dict[str, Any]:
    """The `quality` keys listed in the module docstring, for every scored model and the derived ratios."""
    y = np.asarray(clicks, dtype=np.float64)
    n_clicks, n = int(y.sum()), len(y)
    out: dict[str, Any] = {"test_clicks": n_clicks, "few_clicks_warning": None}
    if n_clicks < cfg.few_clicks:
        out["few_clicks_warning"] = (
            f"only {n_clicks} clicks among {n} test rows (fewer than {cfg.few_clicks}): every AUC, the efficiency "
            "and the lift are uncertain by the width of their confidence intervals; differences inside them are noise")
    out["bootstrap"] = {"resamples": cfg.resamples, "level": cfg.level, "seed": cfg.seed,
                        "method": "stratified bootstrap over test rows (clicks and non-clicks resampled apart), "
                                  "paired: one draw scores every model; percentile intervals"}
    why = None
    if cfg.resamples == 0:
        why = "bootstrap.resamples is 0"
    elif n_clicks in (0, n):
        why = "the test rows hold a single click class: no AUC, so no interval"
    elif not scored:
        why = "no model was scored"
    if why:
        out["bootstrap"]["reason"] = why
        return out
    aucs = bootstrap_aucs(y, scored, cfg)
    for name, values in aucs.items():
        out[name] = {"auc_ci": _interval(values, cfg.level)}
        if "teacher" in aucs and name != "teacher":
            out[name]["gain_retention_ci"] = _interval(gain_retention(values, aucs["teacher"]), cfg.level)
    final = "student_int8" if "student_int8" in aucs else "student"
    with np.errstate(divide="ignore", invalid="ignore"):
        if "teacher" in aucs and final in aucs:
            out["distillation_efficiency_ci"] = _interval(aucs[final] / aucs["teacher"], cfg.level)
            out["gain_retention_ci"] = _interval(gain_retention(aucs[final], aucs["teacher"]), cfg.level)
        if "teacher" in aucs and "student" in aucs:
            out["distillation_efficiency_student_ci"] = _interval(aucs["student"] / aucs["teacher"], cfg.level)
    if "student" in aucs and "student_direct" in aucs:
        out["lift_auc_ci"] = _interval(aucs["student"] - aucs["student_direct"], cfg.level)
    return out
