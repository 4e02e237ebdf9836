"""Scoring a teacher: click probabilities, confidence and member disagreement, checked.

    probs, conf = score(teacher, texts)            # (n,), (n,) float64 in [0, 1]
    scores = score_detailed(teacher, texts)        # Scores(probs, confidence, disagreement)

One teacher: confidence = 1 − H(p) (binary entropy in bits). An ensemble (`predict_members`,
`member_weights`) also loses confidence where its members disagree.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from distillery.teachers.base import Teacher

__all__ = ["binary_entropy_bits", "disagreement", "confidence", "Scores", "score", "score_detailed"]


def binary_entropy_bits(probs: np.ndarray) -> np.ndarray:
    """H(p) = −p·log2 p − (1−p)·log2(1−p), in bits: 0 at p ∈ {0, 1}, 1 at p = 0.5."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def disagreement(members: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted standard deviation of members' probabilities per row: (n, k) → (n,), in [0, 0.5]."""
    m = np.asarray(members, dtype=np.float64)
    w = np.full(m.shape[1], 1.0 / m.shape[1]) if weights is None else np.asarray(weights, np.float64) / np.sum(weights)
    mean = m @ w
    return np.sqrt(np.maximum(((m - mean[:, None]) ** 2) @ w, 0.0))


def confidence(probs: np.ndarray, members: np.ndarray | None = None, weights: np.ndarray | None = None) -> np.ndarray:
    """Confidence in [0, 1] per row, (n,).

    One teacher: c = 1 − H(p), H the binary entropy in bits (1 at p ∈ {0, 1}, 0 at p = 0.5).
    Ensemble (members (n, k), optional weights (k,)): c = (1 − H(p)) · clip(1 − 2·σ, 0, 1), σ the
    weighted std of the members' probabilities (at most 0.5, reached when members split 0 vs 1).
    """
    c = 1.0 - binary_entropy_bits(probs)
    if members is not None and np.asarray(members).shape[1] > 1:
        c = c * np.clip(1.0 - 2.0 * disagreement(members, weights), 0.0, 1.0)
    return np.clip(c, 0.0, 1.0)


class Scores(NamedTuple):
    probs: np.ndarray  # (n,) float64 click probabilities
    confidence: np.ndarray  # (n,) float64 in [0, 1]
    disagreement: np.ndarray  # (n,) float64 weighted std of members' probabilities; 0 for one teacher


def score_detailed(teacher: Teacher, texts: list[str]) -> Scores:
    """Probabilities, confidence and member disagreement for `texts`, checked for shape and range."""
    predict_members = getattr(teacher, "predict_members", None)
    if predict_members is not None:
        members = _check(teacher, np.asarray(predict_members(texts), dtype=np.float64), (len(texts), None))
        weights = np.asarray(teacher.member_weights, dtype=np.float64)
        probs = members @ (weights / weights.sum())
        return Scores(probs, confidence(probs, members, weights), disagreement(members, weights))
    probs = _check(teacher, np.asarray(teacher.predict_proba(texts), dtype=np.float64), (len(texts),))
    return Scores(probs, confidence(probs), np.zeros(len(texts)))


def score(teacher: Teacher, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(probs, confidence), each (n,) float64 in [0, 1]."""
    scores = score_detailed(teacher, texts)
    return scores.probs, scores.confidence


def _check(teacher: Teacher, values: np.ndarray, shape: tuple[int | None, ...]) -> np.ndarray:
    if values.ndim != len(shape) or any(s is not None and s != v for s, v in zip(shape, values.shape)):
        raise ValueError(f"teacher {teacher.teacher_id}: output shape {values.shape}, expected {shape}")
    if values.size and (not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1):
        raise ValueError(f"teacher {teacher.teacher_id}: probabilities not finite or outside [0, 1]")
    return values
