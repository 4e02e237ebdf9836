"""Training on Ray Train: the teacher fine-tune, the distilled student and `student_direct` share
one loop (`loop.train`), differing only in targets (`losses`), rows (`data`) and the starting model
(`init`). `ray_train` wraps the loop in a TorchTrainer; `job` is what `distillery train|teacher` run.

Names are imported lazily so `import distillery.training` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "TrainJobConfig", "TeacherJobConfig", "run", "run_teacher",
    "LoopConfig", "train", "DataSection", "build_training_table", "ModelInit", "build_model", "compute_loss",
]

_WHERE = {
    "TrainJobConfig": "job", "TeacherJobConfig": "job", "run": "job", "run_teacher": "job",
    "LoopConfig": "loop", "train": "loop", "DataSection": "data", "build_training_table": "data",
    "ModelInit": "init", "build_model": "init", "compute_loss": "losses",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"distillery.training.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'distillery.training' has no attribute {name!r}")
