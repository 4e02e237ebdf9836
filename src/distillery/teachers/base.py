"""The teacher protocol, its typed configs, confidence, and `build_teacher`.

A teacher is any object with a `teacher_id` (lineage) and `predict_proba(texts) -> (n,) float64`
click probabilities. Ensembles also expose `predict_members(texts) -> (n, k)` and `member_weights`
`(k,)`, which `score` uses to lower confidence where members disagree.

    cfg = parse_teacher_config({"kind": "hf-classifier", "model": "runs/demo/teacher"})
    teacher = build_teacher(cfg)              # loads weights; fails first on a missing model folder
    probs, conf = score(teacher, texts)      # (n,), (n,) float64 in [0, 1]

Extension point: `{"kind": "python", "target": "my_pkg.my_module:MyTeacher", "kwargs": {...}}` builds
`MyTeacher(**kwargs)`, any class following the `Teacher` protocol. The module must be importable on
every Ray worker (installed, on the job's working_dir, or under the driver's cwd).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple, Protocol, Union, runtime_checkable

import numpy as np
from pydantic import Field, ValidationError, ValidationInfo, field_validator

from distillery.config import ConfigError, Section

__all__ = [
    "Teacher",
    "HFClassifierConfig",
    "CausalLMConfig",
    "RetrievalConfig",
    "TwoTowerConfig",
    "EnsembleConfig",
    "PythonTeacherConfig",
    "TeacherConfig",
    "parse_teacher_config",
    "describe_errors",
    "check_teacher_sources",
    "build_teacher",
    "folder_teacher_config",
    "warm_caches",
    "binary_entropy_bits",
    "disagreement",
    "confidence",
    "Scores",
    "score",
    "score_detailed",
]


@runtime_checkable
class Teacher(Protocol):
    """What the labeling job needs from a teacher."""

    teacher_id: str

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, shape (len(texts),), float64 in [0, 1], in the order of `texts`."""
        ...


# ---------------------------------------------------------------------------------------- configs

Dtype = Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 where the CPU/GPU computes it natively, else fp32
_DEVICE = r"^(auto|cpu|cuda(:\d+)?)$"


class HFClassifierConfig(Section):
    """A Hugging Face sequence-classification model: num_labels 1 (sigmoid) or 2 (softmax[:, 1])."""

    kind: Literal["hf-classifier"] = Field("hf-classifier", description="teacher backend")
    model: str = Field("minilm", description="model folder (local or URI), `minilm` (packaged backbone; its head is untrained) or hub id")
    batch_size: int = Field(32, ge=1, description="rows per forward pass")
    max_length: int = Field(128, ge=8, le=8192, description="tokens per row; longer rows are truncated")
    dtype: Dtype = Field("fp32", description="weights and activations: fp32, bf16 or fp16")
    device: str = Field("auto", pattern=_DEVICE, description="auto (cuda if available), cpu, cuda or cuda:N")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads for this process; None keeps torch's default")


DEFAULT_PROMPT = (
    "Ad impression: {text}\n"
    "Question: will the user click this ad? Answer yes or no.\n"
    "Answer:"
)


class CausalLMConfig(Section):
    """An instruct/causal LM scored by prompt: P(click) = p(yes) / (p(yes) + p(no)) for the next token."""

    kind: Literal["hf-causal-lm"] = Field("hf-causal-lm", description="teacher backend")
    model: str = Field("Qwen/Qwen2.5-0.5B-Instruct", description="causal LM folder (local or URI) or hub id")
    prompt: str = Field(DEFAULT_PROMPT, description="prompt template; `{text}` is replaced by the row's text")
    yes_words: list[str] = Field([" yes", " Yes"], min_length=1, description="answers meaning click; each word's first token counts")
    no_words: list[str] = Field([" no", " No"], min_length=1, description="answers meaning no click; each word's first token counts")
    chat_template: bool = Field(False, description="wrap the prompt as a user turn with the tokenizer's chat template")
    batch_size: int = Field(8, ge=1, description="prompts per forward pass")
    max_length: int = Field(256, ge=8, le=32768, description="prompt tokens; a longer row's text is truncated, the template kept")
    dtype: Dtype = Field("fp32", description="weights and activations: fp32, bf16 or fp16")
    device: str = Field("auto", pattern=_DEVICE, description="auto (cuda if available), cpu, cuda or cuda:N")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads for this process; None keeps torch's default")

    @field_validator("prompt")
    @classmethod
    def _has_text_slot(cls, value: str) -> str:
        if "{text}" not in value:
            raise ValueError("prompt template must contain {text}")
        return value

    @field_validator("no_words")
    @classmethod
    def _answers_differ(cls, value: list[str], info: ValidationInfo) -> list[str]:
        both = set(value) & set(info.data.get("yes_words") or ())
        if both:
            raise ValueError(f"shares {sorted(both)} with yes_words")
        return value


class RetrievalConfig(Section):
    """k nearest labelled logs by embedding; their smoothed click rate blended with a base teacher.

    rate = (Σ w_j·click_j + a·base_rate) / (Σ w_j + a), w_j = max(cosine_j, 0) over the k neighbours,
    a = `prior_strength`, base_rate = the index's click rate. Then with λ = `neighbour_weight`:
    `logit` blend: p = σ(λ·logit(rate) + (1−λ)·logit(p_base)); `prob` blend: p = λ·rate + (1−λ)·p_base.
    Without `base`, p = rate.
    """

    kind: Literal["retrieval"] = Field("retrieval", description="teacher backend")
    encoder: str = Field("minilm", description="sentence encoder (mean pooling, L2-normalised): `minilm`, folder or hub id")
    index: str = Field("runs/demo/data/train", description="parquet logs with known clicks (folder, file or URI) to retrieve from")
    k: int = Field(32, ge=1, description="neighbours per row")
    prior_strength: float = Field(8.0, ge=0, description="Beta prior pseudo-count pulling the neighbour rate toward the index's base rate")
    neighbour_weight: float = Field(0.5, ge=0, le=1, description="weight of the neighbour rate against the base teacher (1 = neighbours only)")
    blend: Literal["logit", "prob"] = Field("logit", description="space in which the neighbour rate and the base teacher are mixed")
    base: "TeacherConfig | None" = Field(None, description="base teacher config; None uses the neighbour rate alone")
    cache: str | None = Field("auto", description="npz of index embeddings: `auto` (per-machine cache dir), a path (local or URI), or null (always embed)")
    max_rows: int | None = Field(None, ge=1, description="use only the first N labelled index rows (in file order); None uses all")
    batch_size: int = Field(64, ge=1, description="texts per encoder forward pass")
    max_length: int = Field(128, ge=8, le=8192, description="encoder tokens per text")
    dtype: Dtype = Field("fp32", description="encoder dtype: fp32, bf16 or fp16")
    device: str = Field("auto", pattern=_DEVICE, description="auto (cuda if available), cpu, cuda or cuda:N")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads for this process; None keeps torch's default")


class TwoTowerConfig(Section):
    """A sentence encoder's cosine(request, ad) with a fitted logistic click head (`teachers.two_tower`)."""

    kind: Literal["two-tower"] = Field("two-tower", description="teacher backend")
    model: str = Field(..., description="folder (local or URI) holding two_tower.json, written by `distillery teacher` with kind: two-tower")
    batch_size: int = Field(128, ge=1, description="texts per encoder forward pass")
    max_length: int | None = Field(None, ge=8, le=8192, description="encoder tokens per text; None: what the head was fitted with")
    cache_size: int = Field(200_000, ge=0, description="distinct request/ad strings whose embeddings are kept per process (0: no cache)")
    dtype: Dtype = Field("fp32", description="encoder dtype: fp32, bf16 or fp16")
    device: str = Field("auto", pattern=_DEVICE, description="auto (cuda if available), cpu, cuda or cuda:N")
    num_threads: int | None = Field(None, ge=1, description="torch intra-op threads for this process; None keeps torch's default")


class EnsembleConfig(Section):
    """Weighted mean of member teachers' probabilities; member disagreement lowers confidence."""

    kind: Literal["ensemble"] = Field("ensemble", description="teacher backend")
    members: list["TeacherConfig"] = Field(default_factory=list, min_length=1, description="member teacher configs")
    weights: list[float] | None = Field(None, description="one non-negative weight per member (normalised to sum 1); None = equal")

    @field_validator("weights")
    @classmethod
    def _weights_match(cls, value: list[float] | None, info: ValidationInfo) -> list[float] | None:
        if value is None:
            return value
        members = info.data.get("members")
        if members is not None and len(value) != len(members):
            raise ValueError(f"{len(value)} weights for {len(members)} members")
        if any(w < 0 for w in value) or sum(value) <= 0:
            raise ValueError("must be non-negative with a positive sum")
        return value


class PythonTeacherConfig(Section):
    """A teacher class of your own, `target(**kwargs)`; it must follow the `Teacher` protocol."""

    kind: Literal["python"] = Field("python", description="teacher backend")
    target: str = Field(..., pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
                        description="import path `package.module:Class` of the teacher class")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments passed to the class")


TeacherConfig = Annotated[
    Union[HFClassifierConfig, CausalLMConfig, RetrievalConfig, TwoTowerConfig, EnsembleConfig, PythonTeacherConfig],
    Field(discriminator="kind"),
]
RetrievalConfig.model_rebuild()
EnsembleConfig.model_rebuild()


class _TeacherHolder(Section):
    teacher: TeacherConfig = Field(description="the teacher config being validated")


_KINDS = {"hf-classifier", "hf-causal-lm", "retrieval", "two-tower", "ensemble", "python"}
_CONFIG_TYPES = (HFClassifierConfig, CausalLMConfig, RetrievalConfig, TwoTowerConfig, EnsembleConfig, PythonTeacherConfig)


def parse_teacher_config(data: Any, source: str = "config") -> TeacherConfig:
    """Validate a dict into the right config class by its `kind`; an error names each field path,
    e.g. `config: teacher.members.1.k: Input should be greater than or equal to 1`."""
    try:
        return _TeacherHolder.model_validate({"teacher": data}).teacher
    except ValidationError as err:
        raise ConfigError(describe_errors(err, source)) from None


def describe_errors(err: ValidationError, source: str = "config") -> str:
    """One line per error, `source: field.path: message`, without pydantic's union tags in the path
    (pydantic reports `teacher.retrieval.k`; the YAML key is `teacher.k`)."""
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if p not in _KINDS]
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {'.'.join(loc) or '<root>'}: {msg}")
    return "\n".join(lines)


def check_teacher_sources(cfg: TeacherConfig, field: str = "teacher") -> None:
    """Check every model folder and index path in the config tree exists, without loading weights,
    so a bad member fails before a good one spends minutes loading. Errors name the field path."""
    from distillery import io
    from distillery.teachers._hf import check_model_source

    if isinstance(cfg, (HFClassifierConfig, CausalLMConfig)):
        check_model_source(cfg.model, f"{field}.model")
    elif isinstance(cfg, RetrievalConfig):
        check_model_source(cfg.encoder, f"{field}.encoder")
        if not io.exists(cfg.index):
            raise ConfigError(f"{field}.index: no logs at {cfg.index!r}")
        if cfg.base is not None:
            check_teacher_sources(cfg.base, f"{field}.base")
    elif isinstance(cfg, TwoTowerConfig):
        from distillery.teachers.two_tower import HEAD_FILE

        if not io.exists(io.join(cfg.model, HEAD_FILE)):
            raise ConfigError(f"{field}.model: no {HEAD_FILE} in {cfg.model!r} (fit one with `distillery teacher` kind=two-tower)")
    elif isinstance(cfg, EnsembleConfig):
        for i, member in enumerate(cfg.members):
            check_teacher_sources(member, f"{field}.members.{i}")
    elif isinstance(cfg, PythonTeacherConfig):
        _import_target(cfg.target, f"{field}.target")


def folder_teacher_config(path: str, **runtime: Any) -> TeacherConfig:
    """The teacher config of a published teacher folder: `two-tower` when it holds two_tower.json,
    else `hf-classifier`. `runtime` sets batch_size, dtype, device, num_threads (and max_length for
    hf-classifier; a two-tower head keeps the max_length it was fitted with)."""
    from distillery import io
    from distillery.teachers.two_tower import HEAD_FILE

    if io.exists(io.join(path, HEAD_FILE)):
        runtime.pop("max_length", None)  # the head's own
        return TwoTowerConfig(model=path, **runtime)
    return HFClassifierConfig(model=path, **runtime)


def build_teacher(cfg: TeacherConfig | dict[str, Any]) -> Teacher:
    """Construct (and load) the teacher a config describes. Raises ConfigError naming the field
    for an invalid config or a missing model folder / index."""
    if not isinstance(cfg, _CONFIG_TYPES):
        cfg = parse_teacher_config(cfg)
    check_teacher_sources(cfg)
    return _construct(cfg)


def warm_caches(cfg: TeacherConfig, field: str = "teacher") -> dict[str, str]:
    """Build every retrieval index in the config tree once (driver side, before actors start), so
    actors load cached embeddings; {field path: "cache" or "built"}. Loads encoders, not teachers."""
    if not isinstance(cfg, _CONFIG_TYPES):
        cfg = parse_teacher_config(cfg)
    done: dict[str, str] = {}
    if isinstance(cfg, RetrievalConfig):
        from distillery.teachers.retrieval import build_index_cache

        check_teacher_sources(cfg, field)
        done[field] = build_index_cache(cfg)[1]
        if cfg.base is not None:
            done.update(warm_caches(cfg.base, f"{field}.base"))
    elif isinstance(cfg, EnsembleConfig):
        for i, member in enumerate(cfg.members):
            done.update(warm_caches(member, f"{field}.members.{i}"))
    return done


def _construct(cfg: TeacherConfig, field: str = "teacher") -> Teacher:
    if isinstance(cfg, HFClassifierConfig):
        from distillery.teachers.hf_classifier import HFClassifierTeacher

        return _named(field, HFClassifierTeacher, cfg)
    if isinstance(cfg, CausalLMConfig):
        from distillery.teachers.causal_lm import CausalLMTeacher

        return _named(field, CausalLMTeacher, cfg)
    if isinstance(cfg, RetrievalConfig):
        from distillery.teachers.retrieval import RetrievalTeacher

        base = _construct(cfg.base, f"{field}.base") if cfg.base is not None else None
        return _named(field, RetrievalTeacher, cfg, base=base)
    if isinstance(cfg, TwoTowerConfig):
        from distillery.teachers.two_tower import TwoTowerTeacher

        return _named(field, TwoTowerTeacher, cfg)
    if isinstance(cfg, EnsembleConfig):
        from distillery.teachers.ensemble import EnsembleTeacher

        return EnsembleTeacher([_construct(m, f"{field}.members.{i}") for i, m in enumerate(cfg.members)], cfg.weights)
    if isinstance(cfg, PythonTeacherConfig):
        teacher = _import_target(cfg.target, f"{field}.target")(**cfg.kwargs)
        if not isinstance(teacher, Teacher):
            raise ConfigError(f"{field}.target: {cfg.target} has no teacher_id / predict_proba (the Teacher protocol)")
        return teacher
    raise ConfigError(f"{field}.kind: unknown config type {type(cfg).__name__}")


def _import_target(target: str, field: str) -> Any:
    """The object `package.module:Name` names; ConfigError naming `field` if it cannot be imported."""
    import importlib

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


# ------------------------------------------------------------------------------------- confidence

def sigmoid(z: np.ndarray) -> np.ndarray:
    """σ(z) in float64 without overflow warnings for large |z|."""
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """log(p / (1 − p)) with p clipped to [eps, 1 − eps], float64."""
    q = np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps)
    return np.log(q) - np.log1p(-q)


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
