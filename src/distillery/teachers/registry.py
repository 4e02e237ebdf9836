"""One table from teacher `kind` to backend, and what walks it: `build_teacher`, source checks, caches.

    teacher = build_teacher({"kind": "two-tower", "model": "runs/demo/teacher"})  # loads weights
    check_teacher_sources(cfg)       # every model folder / index / import in the tree, no weights loaded
    warm_caches(cfg)                 # driver side: build retrieval indexes once, before actors start

A backend is a class `Backend(cfg, **nested)` in `distillery.teachers.<module>`, imported only when
built (so parsing and checking never import torch); teachers nested in a config (retrieval's `base`,
an ensemble's `members`) are built first and passed by field name. Adding a backend: its config in
`teachers.configs`, its class in a module here, one row in `BACKENDS`.

Extension point: `{"kind": "python", "target": "my_pkg.my_module:MyTeacher", "kwargs": {...}}` builds
`MyTeacher(**kwargs)`, any class following the `Teacher` protocol. The module must be importable on
every Ray worker (installed, on the job's working_dir, or under the driver's cwd).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, NamedTuple

from distillery import io
from distillery.config import ConfigError
from distillery.teachers.base import Teacher
from distillery.teachers.configs import (
    CONFIG_CLASSES,
    HFClassifierConfig,
    TeacherConfig,
    TwoTowerConfig,
    parse_teacher_config,
)

__all__ = ["Backend", "BACKENDS", "build_teacher", "check_teacher_sources", "folder_teacher_config", "warm_caches"]


# ----------------------------------------------------------------- what each kind checks and warms

def _model_folder(cfg: Any, field: str) -> None:
    from distillery.teachers._hf import check_model_source

    check_model_source(cfg.model, f"{field}.model")


def _encoder_and_index(cfg: Any, field: str) -> None:
    from distillery.teachers._hf import check_model_source

    check_model_source(cfg.encoder, f"{field}.encoder")
    if not io.exists(cfg.index):
        raise ConfigError(f"{field}.index: no logs at {cfg.index!r}")


def _fitted_head(cfg: Any, field: str) -> None:
    from distillery.teachers.two_tower import HEAD_FILE, is_two_tower_folder

    if not is_two_tower_folder(cfg.model):
        raise ConfigError(f"{field}.model: no {HEAD_FILE} in {cfg.model!r} (fit one with `distillery teacher` kind=two-tower)")


def _importable_target(cfg: Any, field: str) -> None:
    _import_target(cfg.target, f"{field}.target")


def _index_cache(cfg: Any) -> str:
    from distillery.teachers.retrieval import build_index_cache

    return build_index_cache(cfg)[1]


class Backend(NamedTuple):
    """How one teacher `kind` is built, checked and warmed."""

    teacher: str | None  # "module:Class" in distillery.teachers, built as Class(cfg, **nested); None: cfg.target(**cfg.kwargs)
    sources: Callable[[Any, str], None] | None = None  # checks this node's own folders / imports (nested ones are walked)
    nested: tuple[str, ...] = ()  # config fields holding nested teacher configs (one, a list, or None)
    warm: Callable[[Any], str] | None = None  # driver-side cache build; returns "cache" or "built"


BACKENDS: dict[str, Backend] = {
    "hf-classifier": Backend("hf_classifier:HFClassifierTeacher", _model_folder),
    "hf-causal-lm": Backend("causal_lm:CausalLMTeacher", _model_folder),
    "retrieval": Backend("retrieval:RetrievalTeacher", _encoder_and_index, nested=("base",), warm=_index_cache),
    "two-tower": Backend("two_tower:TwoTowerTeacher", _fitted_head),
    "ensemble": Backend("ensemble:EnsembleTeacher", nested=("members",)),
    "python": Backend(None, _importable_target),
}
assert BACKENDS.keys() == CONFIG_CLASSES.keys(), "every teacher kind needs a config and a backend"


# ------------------------------------------------------------------------------- walking the table

def check_teacher_sources(cfg: TeacherConfig, field: str = "teacher") -> None:
    """Check every model folder and index path in the config tree exists, without loading weights,
    so a bad member fails before a good one spends minutes loading. Errors name the field path."""
    backend = BACKENDS[cfg.kind]
    if backend.sources is not None:
        backend.sources(cfg, field)
    _each_nested(cfg, field, check_teacher_sources)


def build_teacher(cfg: TeacherConfig | dict[str, Any]) -> Teacher:
    """Construct (and load) the teacher a config describes. Raises ConfigError naming the field
    for an invalid config or a missing model folder / index."""
    cfg = _parsed(cfg)
    check_teacher_sources(cfg)
    return _construct(cfg)


def warm_caches(cfg: TeacherConfig, field: str = "teacher") -> dict[str, str]:
    """Build every retrieval index in the config tree once (driver side, before actors start), so
    actors load cached embeddings; {field path: "cache" or "built"}. Loads encoders, not teachers."""
    cfg = _parsed(cfg)
    done: dict[str, str] = {}
    warm = BACKENDS[cfg.kind].warm
    if warm is not None:
        check_teacher_sources(cfg, field)
        done[field] = warm(cfg)
    _each_nested(cfg, field, lambda child, path: done.update(warm_caches(child, path)))
    return done


def folder_teacher_config(path: str, **runtime: Any) -> TeacherConfig:
    """The teacher config of a published teacher folder: `two-tower` when it holds two_tower.json,
    else `hf-classifier`. `runtime` sets batch_size, dtype, device, num_threads (and max_length for
    hf-classifier; a two-tower head keeps the max_length it was fitted with)."""
    from distillery.teachers.two_tower import is_two_tower_folder

    if is_two_tower_folder(path):
        runtime.pop("max_length", None)  # the head's own
        return TwoTowerConfig(model=path, **runtime)
    return HFClassifierConfig(model=path, **runtime)


def _parsed(cfg: TeacherConfig | dict[str, Any]) -> TeacherConfig:
    return cfg if isinstance(cfg, tuple(CONFIG_CLASSES.values())) else parse_teacher_config(cfg)


def _each_nested(cfg: TeacherConfig, field: str, fn: Callable[[TeacherConfig, str], Any]) -> dict[str, Any]:
    """`fn(child, field path)` over the teacher configs nested in `cfg`, in order: {field name: result,
    or a list of results for a list field}; fields set to None are left out."""
    out: dict[str, Any] = {}
    for name in BACKENDS[cfg.kind].nested:
        value = getattr(cfg, name)
        if isinstance(value, list):
            out[name] = [fn(child, f"{field}.{name}.{i}") for i, child in enumerate(value)]
        elif value is not None:
            out[name] = fn(value, f"{field}.{name}")
    return out


def _construct(cfg: TeacherConfig, field: str = "teacher") -> Teacher:
    backend = BACKENDS[cfg.kind]
    if backend.teacher is None:  # kind: python, a class of the user's own
        teacher = _import_target(cfg.target, f"{field}.target")(**cfg.kwargs)
        if not isinstance(teacher, Teacher):
            raise ConfigError(f"{field}.target: {cfg.target} has no teacher_id / predict_proba (the Teacher protocol)")
        return teacher
    nested = _each_nested(cfg, field, _construct)  # built first: their errors already name their own node
    module, _, name = backend.teacher.partition(":")
    return _named(field, getattr(importlib.import_module(f"distillery.teachers.{module}"), name), cfg, **nested)


def _import_target(target: str, field: str) -> Any:
    """The object `package.module:Name` names; ConfigError naming `field` if it cannot be imported."""
    module_name, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{field}: cannot import {target!r} ({type(err).__name__}: {err})") from None


def _named(field: str, backend: Any, cfg: TeacherConfig, **kwargs: Any) -> Teacher:
    """Construct one backend; its errors say `teacher.x`, so inside a tree say which node it is."""
    try:
        return backend(cfg, **kwargs)
    except ConfigError as err:
        message = str(err)
        if message.startswith("teacher."):
            message = field + message[len("teacher"):]
        raise ConfigError(message) from None
