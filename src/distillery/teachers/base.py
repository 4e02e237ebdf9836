"""The teacher protocol, and the logit maths its backends share.

A teacher is any object with a `teacher_id` (lineage) and `predict_proba(texts) -> (n,) float64`
click probabilities. Ensembles also expose `predict_members(texts) -> (n, k)` and `member_weights`
`(k,)`, which `teachers.confidence.score` uses to lower confidence where members disagree.

Where the rest lives: configs per `kind` in `teachers.configs`, the kind → backend table and
`build_teacher` in `teachers.registry`, confidence and `score` in `teachers.confidence`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["Teacher", "sigmoid", "logit"]


@runtime_checkable
class Teacher(Protocol):
    """What the labeling job needs from a teacher."""

    teacher_id: str

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, shape (len(texts),), float64 in [0, 1], in the order of `texts`."""
        ...


def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) in float64 without overflow warnings for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 − p)) with p clipped to [eps, 1 − eps], float64."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(q) - np.log1p(-q)
