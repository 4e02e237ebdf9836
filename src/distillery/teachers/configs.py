"""Teacher configs: one typed section per backend `kind`, and the parser that picks one by `kind`.

    cfg = parse_teacher_config({"kind": "hf-classifier", "model": "runs/demo/teacher"})   # HFClassifierConfig
    parse_teacher_config({"kind": "retrieval", "k": 0})   # ConfigError: config: teacher.k: Input should be ...

Pure pydantic: importing this module loads no backend, torch or transformers
(`distillery.teachers.registry` maps each config to its backend).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Field, ValidationError, ValidationInfo, field_validator

from distillery.config import ConfigError, Section

__all__ = [
    "Dtype",
    "HFClassifierConfig",
    "CausalLMConfig",
    "RetrievalConfig",
    "TwoTowerConfig",
    "EnsembleConfig",
    "PythonTeacherConfig",
    "TeacherConfig",
    "CONFIG_CLASSES",
    "parse_teacher_config",
    "describe_errors",
]


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


# kind -> its config class, read off the TeacherConfig union (the registry maps the same kinds to backends)
CONFIG_CLASSES: dict[str, type[Section]] = {
    cls.model_fields["kind"].default: cls for cls in get_args(get_args(TeacherConfig)[0])
}


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
        loc = [str(p) for p in e["loc"] if p not in CONFIG_CLASSES]
        if e["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc.append("kind")
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {'.'.join(loc) or '<root>'}: {msg}")
    return "\n".join(lines)
