"""Model faults and the replica's health: what the server, not the client, got wrong. Ray-free.

    fault = check_probs(probs)                  # ModelFault("non_finite") on NaN, inf or outside [0, 1]; else None
    fault = model_fault(err)                    # a scorer exception -> ModelFault("runtime_error"), or None (the input's)
    health = ScoringHealth(HealthSection(), busy_s=lambda: batcher.busy_s)
    health.batch(failed=True)                   # on the scoring thread, once per batch
    health.problem()                            # None, or why `check_health` must raise (Serve replaces the replica)

A model fault is answered 503 on /predict and OIP infer and no-bid with nbr 1 (technical error) on
OpenRTB, never 500 and never a 4xx: the request was fine, the model was not. `HealthSection` is the
`health:` section of the app args (`AppArgs.health` once serving.config lists it).
"""

from __future__ import annotations

import threading
from typing import Callable, Literal

import numpy as np
from pydantic import Field

from distillery.config import Section

__all__ = ["HealthSection", "ModelFault", "FaultKind", "REQUEST_FAULTS", "check_probs", "model_fault",
           "ScoringHealth", "EveryN"]

FaultKind = Literal["non_finite", "runtime_error", "canary"]
# What a scorer raises about one input it was handed (`check_row`, a text that is not a string): the
# request's fault (422). Anything else out of the scorer (ONNX Runtime's own errors included) is the model's.
REQUEST_FAULTS: tuple[type[BaseException], ...] = (TypeError, UnicodeError)


class HealthSection(Section):
    """When a replica stops calling itself healthy (`check_health` raises, Serve replaces it)."""

    max_consecutive_failures: int = Field(5, ge=1, description="scoring batches in a row with a model fault "
                                          "(NaN scores, an ONNX Runtime error) before the replica is unhealthy")
    max_scoring_s: float = Field(10.0, gt=0, description="one scoring call running longer than this (s) "
                                 "makes the replica unhealthy: the scoring thread is hung")


class ModelFault(Exception):
    """The model, not the request, failed: `kind` is non_finite | runtime_error | canary; `version`
    the model version that failed (None where unknown)."""

    def __init__(self, kind: FaultKind, message: str, version: str | None = None):
        super().__init__(message)
        self.kind, self.message, self.version = kind, message, version


def check_probs(probs: np.ndarray, version: str | None = None) -> ModelFault | None:
    """A `ModelFault("non_finite")` when any click probability of `probs` (n,) is NaN, infinite or
    outside [0, 1] (a NaN passes every floor comparison and would be priced as a bid); else None."""
    values = np.asarray(probs, dtype=np.float64)
    ok = np.isfinite(values) & (values >= 0.0) & (values <= 1.0)
    if ok.all():
        return None
    bad = values[~ok]
    return ModelFault("non_finite", f"the model returned {bad.size} of {values.size} click probabilities "
                                    f"NaN, infinite or outside [0, 1] (first: {bad[0]!r})", version)


def model_fault(err: BaseException, version: str | None = None) -> ModelFault | None:
    """`err`, raised by a scorer, as the model's fault (`ModelFault("runtime_error")`), or None when it
    is about the input it was handed (`REQUEST_FAULTS`)."""
    if isinstance(err, ModelFault):
        return err
    if isinstance(err, REQUEST_FAULTS):
        return None
    return ModelFault("runtime_error", f"the model failed to score ({type(err).__name__}: {str(err)[:300]})", version)


class ScoringHealth:
    """Whether scoring works: failed batches in a row (reset by one that succeeds) and how long the
    call in progress has run (`busy_s`, seconds; the batcher's). `batch` runs on the scoring
    thread, `problem` on the event loop and in `check_health`."""

    def __init__(self, section: HealthSection, busy_s: Callable[[], float]):
        self.section, self._busy_s = section, busy_s
        self.consecutive_failures = 0

    def batch(self, failed: bool) -> None:
        self.consecutive_failures = self.consecutive_failures + 1 if failed else 0

    def problem(self) -> str | None:
        """Why this replica should be replaced, or None."""
        limit = self.section.max_consecutive_failures
        if self.consecutive_failures >= limit:
            return (f"{self.consecutive_failures} scoring batches in a row failed with a model fault "
                    f"(health.max_consecutive_failures={limit})")
        busy = self._busy_s()
        if busy > self.section.max_scoring_s:
            return (f"a scoring call has run {busy:.1f} s, past health.max_scoring_s={self.section.max_scoring_s:g}: "
                    "the scoring thread is hung")
        return None


class EveryN:
    """`EveryN(100)()` is True on the 1st call, the 101st, the 201st...: log a frequent event once per N."""

    def __init__(self, n: int):
        self.n, self.count = n, 0
        self._lock = threading.Lock()

    def __call__(self) -> bool:
        with self._lock:
            self.count += 1
            return (self.count - 1) % self.n == 0

