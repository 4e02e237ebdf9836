"""Teachers: models that give a click probability for an ad-log row's text.

    from distillery.teachers import build_teacher, parse_teacher_config, score
    teacher = build_teacher({"kind": "hf-classifier", "model": "runs/demo/teacher", "batch_size": 64})
    probs, confidence = score(teacher, texts)    # (n,) float64 each, in [0, 1]

Backends (`kind`): `hf-classifier`, `hf-causal-lm`, `retrieval`, `two-tower`, `ensemble`, and `python` (a class
of your own, `module:Class` + kwargs). Importing this package
does not import torch or transformers; `build_teacher` loads them.

Modules: `base` (the `Teacher` protocol, sigmoid/logit), `configs` (one config per kind),
`registry` (kind → backend, `build_teacher`), `confidence` (`score`), then one module per backend.
The two-tower teacher's click head is fitted by `distillery.training.two_tower_teacher`.
"""

from distillery.teachers.base import Teacher
from distillery.teachers.confidence import Scores, confidence, disagreement, score, score_detailed
from distillery.teachers.configs import (
    CausalLMConfig,
    EnsembleConfig,
    HFClassifierConfig,
    PythonTeacherConfig,
    RetrievalConfig,
    TeacherConfig,
    TwoTowerConfig,
    describe_errors,
    parse_teacher_config,
)
from distillery.teachers.registry import build_teacher, check_teacher_sources, folder_teacher_config, warm_caches

__all__ = [
    "Teacher",
    "TeacherConfig",
    "HFClassifierConfig",
    "CausalLMConfig",
    "RetrievalConfig",
    "TwoTowerConfig",
    "EnsembleConfig",
    "PythonTeacherConfig",
    "parse_teacher_config",
    "describe_errors",
    "check_teacher_sources",
    "build_teacher",
    "folder_teacher_config",
    "warm_caches",
    "confidence",
    "disagreement",
    "Scores",
    "score",
    "score_detailed",
]
