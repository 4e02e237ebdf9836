"""The model card: `model_card.json` beside an exported ONNX folder, typed and validated.

    card = ModelCard.read("runs/demo/onnx")          # ModelCardError naming the field when it is bad
    card.variants["int8"]                             # "student.int8.onnx"
    path = card.variant_path("runs/demo/onnx", "int8")   # absolute, never outside the folder
    card.write("runs/demo/onnx")                      # validated again, then written

`compress.export` writes it, `compress.quantize` and the compress job add variants and figures;
the scorers, evaluation, the pipeline and serving read it. Keys this model does not name (free-form
export details) are kept as they are, so older and newer cards load.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from distillery.config import ConfigError, validate_config

__all__ = ["CARD_FILE", "ModelCard", "ModelCardError", "variant_path"]

CARD_FILE = "model_card.json"


class ModelCardError(ConfigError):
    """A model card that is missing, unreadable or invalid; the message names the file and the field."""


class ModelCard(BaseModel):
    """What an exported folder holds and how to run it. Shapes: `inputs` are int64 (batch, sequence);
    `output` is (batch, 1) click logits for a cross-encoder, (batch, d) embeddings for a two-tower."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, protected_namespaces=())

    name: str = Field("ctr", min_length=1, description="model name; served and reported under it")
    version: str = Field("0", min_length=1, description="content hash of the graph(s); every served answer carries it")
    student_kind: Literal["cross", "two_tower"] = Field("cross", description="cross-encoder, or two towers + numpy head")
    max_length: int | None = Field(None, ge=1, description="truncation length in tokens the scorer applies")
    inputs: list[str] = Field(["input_ids", "attention_mask"], min_length=1, description="graph input names")
    output: str = Field("logits", min_length=1, description="graph output name")
    variants: dict[str, str] = Field(default_factory=dict, description="variant (fp32, int8, ...) -> file in the folder")
    head: str | None = Field(None, description="two-tower: the numpy head's file in the folder")
    two_tower: dict[str, Any] | None = Field(None, description="two-tower: the towers' TwoTowerSpec")
    model_type: str | None = Field(None, description="Hugging Face model_type of the source (picks ORT fusions)")
    size_mb: dict[str, float] = Field(default_factory=dict, description="variant -> file size, MB")
    presets: dict[str, dict[str, Any]] = Field(default_factory=dict, description="variant -> how it was quantized")
    lineage: dict[str, Any] = Field(default_factory=dict, description="where the model came from")
    metrics: dict[str, Any] = Field(default_factory=dict, description="parity, AUC, latency, quality gate")
    rejected_variants: dict[str, str] | None = Field(None, description="variants the quality gate refused -> file")
    default_variant: str | None = Field(None, description="the variant to serve when none is named: the first that passed (int8, int8_static, fp32, fp16)")
    canary: dict[str, Any] | None = Field(None, description="inputs: rows a promotion re-scores; probs: variant -> their recorded probabilities; atol")

    @model_validator(mode="after")
    def _default_is_a_variant(self) -> "ModelCard":
        if self.default_variant is not None and self.variants and self.default_variant not in self.variants:
            raise ValueError(f"default_variant: {self.default_variant!r} is not one of the variants {sorted(self.variants)}")
        return self

    @field_validator("version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value

    @classmethod
    def from_dict(cls, data: Any, source: str = CARD_FILE) -> "ModelCard":
        """Validate `data` (a parsed card); ModelCardError `<source>: <field>: <problem>` otherwise."""
        if not isinstance(data, dict):
            raise ModelCardError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            return validate_config(cls, data, source)
        except ConfigError as err:
            raise ModelCardError(str(err)) from None

    @classmethod
    def read(cls, model_dir: str) -> "ModelCard":
        """The card of `model_dir` (a local folder or a URI); FileNotFoundError when there is none."""
        from distillery import io  # pyarrow: only where a card is read or written

        path = io.join(str(model_dir), CARD_FILE)
        if not io.exists(path):
            raise FileNotFoundError(f"model_dir {model_dir!r}: no {CARD_FILE} (not an exported ONNX folder)")
        try:
            data = io.read_json(path)
        except (OSError, ValueError) as err:
            raise ModelCardError(f"{path}: unreadable ({err})") from None
        return cls.from_dict(data, path)

    def write(self, model_dir: str) -> None:
        from distillery import io

        io.write_json(io.join(str(model_dir), CARD_FILE), self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as written (unset optional fields left out)."""
        return self.model_dump(exclude_none=True)

    def require_variant(self, model_dir: str, variant: str) -> str:
        """The file of `variant`; ValueError naming the variants the card has when it is absent."""
        if variant not in self.variants:
            raise ValueError(f"variant {variant!r}: not in {model_dir}/{CARD_FILE} (has {sorted(self.variants)})")
        return self.variants[variant]

    def variant_path(self, model_dir: str, variant: str) -> str:
        """Absolute path of `variant`'s file (see `variant_path`)."""
        return variant_path(model_dir, variant, self.require_variant(model_dir, variant))


def variant_path(model_dir: str, variant: str, file: Any) -> str:
    """`model_dir/file` for a card's `variants[variant]`, refusing a path that leaves the folder
    (absolute, `../`, or a symlink out): a tampered card must not load a file elsewhere."""
    where = f"{model_dir}/{CARD_FILE}: variants.{variant}"
    if not isinstance(file, str) or not file.strip():
        raise ValueError(f"{where}: expected a file name inside the model folder, got {file!r}")
    if os.path.isabs(file) or ".." in file.replace("\\", "/").split("/"):
        raise ValueError(f"{where}: {file!r} points outside the model folder; expected a file name inside it")
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(root, file))
    if os.path.commonpath([root, path]) != root:
        raise ValueError(f"{where}: {file!r} resolves to {path}, outside the model folder {root}")
    return path
