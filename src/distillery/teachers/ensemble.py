"""`ensemble`: a weighted mean of several teachers' click probabilities.

`predict_members` exposes the (n, k) matrix, and `member_weights` the normalised (k,) weights, so
`distillery.teachers.score` can turn the members' disagreement into lower confidence.
"""

from __future__ import annotations

import numpy as np

from distillery.teachers.base import Teacher
from distillery.teachers.configs import EnsembleConfig

__all__ = ["EnsembleTeacher"]


class EnsembleTeacher:
    def __init__(self, cfg: EnsembleConfig, members: list[Teacher]):
        weights = cfg.weights
        if not members:
            raise ValueError("members: an ensemble needs at least one teacher")
        w = np.ones(len(members)) if weights is None else np.asarray(weights, dtype=np.float64)
        if w.shape != (len(members),) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"weights: need {len(members)} non-negative weights with a positive sum, got {weights}")
        self.members = list(members)
        self.member_weights = w / w.sum()
        listed = ",".join(f"{m.teacher_id}*{wi:.3g}" for m, wi in zip(self.members, self.member_weights))
        self.teacher_id = f"ensemble[{listed}]"

    def predict_members(self, texts: list[str]) -> np.ndarray:
        """Each member's click probabilities, (len(texts), k) float64, columns in member order."""
        if not texts:
            return np.zeros((0, len(self.members)))
        return np.stack([np.asarray(m.predict_proba(texts), dtype=np.float64) for m in self.members], axis=1)

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Weighted mean of the members' probabilities, (len(texts),) float64 in [0, 1]."""
        return self.predict_members(texts) @ self.member_weights
