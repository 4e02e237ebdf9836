"""The two-tower student's inputs: which row fields each tower reads, and the head's features.

    spec = TwoTowerSpec()
    request_text, ad_text, position, slot = tower_inputs(to_text(row), spec)
    request_text, ad_text, position, slot = tower_inputs_from_fields(row, spec)   # same result, no parsing

Pure functions without torch, shared by training (`training.two_tower_student`) and serving
(`onnx_model.two_tower`): both towers read their fields in `TEXT_FIELDS` order, rendered as `to_text`
renders them (so the text path and the row path give the same strings), either labelled
(`text: labelled`, "ad: Trail runners | text: Grip on any terrain") or as bare values joined by ". "
(`text: joined`, "Trail runners. Grip on any terrain": the two-tower teacher's strings, which the
pretrained encoder's cosine was trained on). Position and slot size become bucket ids for the head's
embeddings.
"""

from __future__ import annotations

import zlib
from typing import Any, Literal, Mapping

from pydantic import Field, model_validator

from distillery.config import Section
from distillery.data.schema import TEXT_FIELDS
from distillery.data.text import from_text, to_text

__all__ = ["TwoTowerSpec", "tower_inputs", "tower_inputs_from_fields", "head_bucket", "HEAD_FEATURES"]

HEAD_FEATURES = ("position", "slot_size")


class TwoTowerSpec(Section):
    """Which row fields each tower reads and the head's size."""

    # Defaults: the two-tower teacher's towers (teacher_two_tower.yaml), so a student started from its
    # head (`ModelInit.head_from`) compares the fields the teacher's cosine compared.
    request_fields: list[str] = Field(["query"], min_length=1,
                                      description="row fields rendered (to_text) into the request tower's text")
    ad_fields: list[str] = Field(["ad_title", "ad_description"], min_length=1,
                                 description="row fields rendered (to_text) into the ad tower's text")
    # Default labelled: folders saved before this field existed were trained on labelled text.
    text: Literal["labelled", "joined"] = Field("labelled", description="tower text: labelled to_text parts, or bare values "
                                                "joined by '. ' as the two-tower teacher reads them")
    position_buckets: int = Field(8, ge=2, description="position embeddings: 0 = unknown, 1.. = position clipped to buckets-1")
    slot_buckets: int = Field(16, ge=2, description="slot-size embeddings: 0 = unknown, else 1 + crc32(size) mod (buckets-1)")
    feature_dim: int = Field(8, ge=1, description="width of the position and slot embeddings")
    head_hidden: int = Field(64, ge=1, description="hidden units of the interaction head (per-candidate cost ∝ d × this)")

    @model_validator(mode="after")
    def _check(self) -> "TwoTowerSpec":
        for name in ("request_fields", "ad_fields"):
            bad = [f for f in getattr(self, name) if f not in TEXT_FIELDS or f in HEAD_FEATURES]
            if bad:
                raise ValueError(f"{name}: {bad} are not tower text fields (choose from "
                                 f"{[f for f in TEXT_FIELDS if f not in HEAD_FEATURES]}; position and slot_size feed the head)")
        both = set(self.request_fields) & set(self.ad_fields)
        if both:
            raise ValueError(f"ad_fields: {sorted(both)} also in request_fields; a field belongs to one tower")
        return self


def _bucket_position(value: Any, buckets: int) -> int:
    try:
        p = int(float(value))
    except (TypeError, ValueError):
        return 0
    return 1 + min(max(p, 0), buckets - 2)


def _bucket_slot(value: Any, buckets: int) -> int:
    if value is None or not str(value).strip():
        return 0
    return 1 + zlib.crc32(str(value).strip().encode()) % (buckets - 1)


def head_bucket(field: str, value: Any, spec: TwoTowerSpec) -> int:
    """The embedding row of a head feature's value: `field` is one of `HEAD_FEATURES`."""
    if field == "position":
        return _bucket_position(value, spec.position_buckets)
    if field == "slot_size":
        return _bucket_slot(value, spec.slot_buckets)
    raise ValueError(f"head_bucket: {field!r} is not a head feature {HEAD_FEATURES}")


def _tower_text(fields: Mapping[str, Any], names: list[str], form: str) -> str:
    text = to_text({k: fields.get(k) for k in names})
    if form == "labelled":
        return text
    rendered = from_text(text)  # the values exactly as to_text renders them, missing ones left out
    return ". ".join(rendered[k] for k in names if rendered.get(k))


def tower_inputs_from_fields(fields: Mapping[str, Any], spec: TwoTowerSpec) -> tuple[str, str, int, int]:
    """(request text, ad text, position bucket, slot bucket) of one row's fields (a row dict or `from_text`)."""
    request, ad = _tower_text(fields, spec.request_fields, spec.text), _tower_text(fields, spec.ad_fields, spec.text)
    return (request, ad, _bucket_position(fields.get("position"), spec.position_buckets),
            _bucket_slot(fields.get("slot_size"), spec.slot_buckets))


def tower_inputs(text: str, spec: TwoTowerSpec) -> tuple[str, str, int, int]:
    """`tower_inputs_from_fields` of a canonical row text (`to_text(row)`)."""
    return tower_inputs_from_fields(from_text(text), spec)


