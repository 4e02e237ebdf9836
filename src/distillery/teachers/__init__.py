"""Teachers: models that give a click probability for an ad-log row's text.

    from distillery.teachers import build_teacher, parse_teacher_config, score
    teacher = build_teacher({"kind": "hf-classifier", "model": "runs/demo/teacher", "batch_size": 64})
    probs, confidence = score(teacher, texts)    # (n,) float64 each, in [0, 1]

Backends (`kind`): `hf-classifier`, `hf-causal-lm`, `retrieval`, `two-tower`, `ensemble`, and `python` (a class
of your own, `module:Class` + kwargs). Importing this package
does not import torch or transformers; `build_teacher` loads them.
"""

from distillery.teachers.base import (
    CausalLMConfig,
    EnsembleConfig,
    HFClassifierConfig,
    PythonTeacherConfig,
    RetrievalConfig,
    Scores,
    TwoTowerConfig,
    Teacher,
    TeacherConfig,
    build_teacher,
    folder_teacher_config,
    check_teacher_sources,
    confidence,
    describe_errors,
    disagreement,
    parse_teacher_config,
    score,
    score_detailed,
    warm_caches,
)

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
