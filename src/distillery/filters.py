"""Which teacher labels to trust: confidence, disagreement and domain-constraint filters.

Filtered rows are never dropped: they stay in the labels with `kept=false` and the first reason
that failed, so every input row is accounted for.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from distillery.config import Section

__all__ = ["FilterConfig", "apply_filters", "clip_probs"]


class FilterConfig(Section):
    min_confidence: float = Field(0.0, ge=0, le=1, description="rows whose teacher confidence is below this are not kept")
    max_disagreement: float | None = Field(None, ge=0, le=0.5, description="ensemble member std above this is not kept (ensembles only)")
    max_prob: float = Field(1.0, gt=0, le=1, description="a click probability above this is implausible for ads: not kept")
    required_fields: list[str] = Field(default_factory=list, description="log fields that must be present and non-empty for a row to be labeled")
    clip: tuple[float, float] = Field((1e-4, 1 - 1e-4), description="teacher probabilities are clipped into [lo, hi] (keeps logits finite)")

    @model_validator(mode="after")
    def _check_clip(self) -> "FilterConfig":
        lo, hi = self.clip
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"clip: need 0 <= lo < hi <= 1, got {self.clip}")
        return self


def clip_probs(probs: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    """probs: (n,) → (n,) clipped into cfg.clip."""
    return np.clip(np.asarray(probs, dtype=np.float64), *cfg.clip)


def apply_filters(
    probs: np.ndarray,
    confidence: np.ndarray,
    cfg: FilterConfig,
    disagreement: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(kept (n,) bool, reason (n,) object: "" when kept, else the first failed check).

    probs, confidence, disagreement: (n,) arrays. NaN probabilities are never kept.
    """
    probs = np.asarray(probs, dtype=np.float64)
    confidence = np.asarray(confidence, dtype=np.float64)
    reason = np.full(len(probs), "", dtype=object)

    def fail(mask: np.ndarray, why: str) -> None:
        reason[mask & (reason == "")] = why

    fail(~np.isfinite(probs), "teacher_prob is not a finite number")
    fail(probs > cfg.max_prob, f"teacher_prob above max_prob {cfg.max_prob}")
    fail(confidence < cfg.min_confidence, f"confidence below min_confidence {cfg.min_confidence}")
    if cfg.max_disagreement is not None and disagreement is not None:
        fail(np.asarray(disagreement) > cfg.max_disagreement, f"ensemble disagreement above {cfg.max_disagreement}")
    return reason == "", reason
