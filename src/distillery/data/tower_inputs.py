"""The two-tower student's inputs: which row columns each tower reads, and the head's features.

    spec = TwoTowerSpec()
    x = tower_inputs(to_text(row), spec)          # TowerInputs(request, ad, position, slot, request_cats, ad_cats, head_cats)
    x = tower_inputs_from_fields(row, spec)       # the same result, without parsing a row text

Pure functions without torch, shared by training (`training.two_tower_student`) and serving
(`onnx_model.two_tower`). Any column of a log can feed the model, in one of three ways:

- tower text (`request_fields`, `ad_fields`): rendered as `to_text` renders it, either labelled
  (`text: labelled`, "ad: Trail runners | text: Grip on any terrain", "C3=a1b2c3") or as bare values
  joined by ". " (`text: joined`, "Trail runners. Grip on any terrain": the two-tower teacher's
  strings, which the pretrained encoder's cosine was trained on);
- tower categoricals (`request_categorical`, `ad_categorical`): each value hashed with its column
  name into one bounded table per tower (`hash_buckets` rows), learned embeddings added to the
  tower's vector — for hashed ids (Criteo's C1…C26, Avazu's site_id) whose text means nothing;
- head categoricals (`head_categorical`): per-candidate features of the interaction head, hashed the
  same way; position and slot size are always head features (bucketed by `head_bucket`).

A tower needs text or categoricals (or both); a tower without text never runs the transformer.
Bucket 0 of every table is "missing".
"""

from __future__ import annotations

import zlib
from typing import Any, Literal, Mapping, NamedTuple

from pydantic import Field, model_validator

from distillery.config import Section
from distillery.data.schema import is_text_column
from distillery.data.text import from_text, render_value, to_text

__all__ = ["TwoTowerSpec", "TowerInputs", "tower_inputs", "tower_inputs_from_fields", "tower_side", "tower_text",
           "cats_of", "head_bucket", "hash_bucket", "HEAD_FEATURES"]

HEAD_FEATURES = ("position", "slot_size")


class TwoTowerSpec(Section):
    """Which row columns each tower and the head read, and the head's size."""

    # Defaults: the two-tower teacher's towers (teacher_two_tower.yaml), so a student started from its
    # head (`ModelInit.head_from`) compares the fields the teacher's cosine compared.
    request_fields: list[str] = Field(["query"], description="columns rendered (to_text) into the request tower's text")
    ad_fields: list[str] = Field(["ad_title", "ad_description"], description="columns rendered (to_text) into the ad tower's text")
    request_categorical: list[str] = Field([], description="columns hashed into the request tower's learned embedding table")
    ad_categorical: list[str] = Field([], description="columns hashed into the ad tower's learned embedding table")
    head_categorical: list[str] = Field([], description="per-candidate columns hashed into the head's embedding table (beside position and slot size)")
    # Default labelled: folders saved before this field existed were trained on labelled text.
    text: Literal["labelled", "joined"] = Field("labelled", description="tower text: labelled to_text parts, or bare values "
                                                "joined by '. ' as the two-tower teacher reads them")
    position_buckets: int = Field(8, ge=2, description="position embeddings: 0 = unknown, 1.. = position clipped to buckets-1")
    slot_buckets: int = Field(16, ge=2, description="slot-size embeddings: 0 = unknown, else 1 + crc32(size) mod (buckets-1)")
    feature_dim: int = Field(8, ge=1, description="width of the head's position, slot and categorical embeddings")
    head_hidden: int = Field(64, ge=1, description="hidden units of the interaction head (per-candidate cost ∝ d × this)")
    hash_buckets: int = Field(4096, ge=2, description="rows of each hashed table (a tower's categoricals share one; the head's one): 0 = missing")
    hash_dim: int = Field(32, ge=1, description="width of a tower's categorical embeddings before their projection to the tower's width")

    @model_validator(mode="after")
    def _check(self) -> "TwoTowerSpec":
        lists = ("request_fields", "ad_fields", "request_categorical", "ad_categorical", "head_categorical")
        for name in lists:
            values = getattr(self, name)
            bad = [f for f in values if not is_text_column(f)]
            if bad:
                raise ValueError(f"{name}: {bad} are identity, time or label columns, never model input")
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: {values} names a column twice")
            if set(values) & set(HEAD_FEATURES):
                raise ValueError(f"{name}: {sorted(set(values) & set(HEAD_FEATURES))} always feed the head (position, slot size)")
        request = set(self.request_fields) | set(self.request_categorical)
        ad = set(self.ad_fields) | set(self.ad_categorical)
        for side, cols in (("request", request), ("ad", ad)):
            if not cols:
                raise ValueError(f"{side}_fields: the {side} tower reads no column (give {side}_fields or {side}_categorical)")
        if request & ad:
            raise ValueError(f"ad_fields: {sorted(request & ad)} also in the request tower; a column belongs to one tower")
        return self

    def has_text(self, side: Literal["request", "ad"]) -> bool:
        """Whether the `side` tower runs the transformer (it has text columns)."""
        return bool(self.request_fields if side == "request" else self.ad_fields)


class TowerInputs(NamedTuple):
    """One row as the two-tower student reads it: each tower's text and hashed categoricals, the head's buckets."""

    request: str
    ad: str
    position: int
    slot: int
    request_cats: tuple[int, ...]
    ad_cats: tuple[int, ...]
    head_cats: tuple[int, ...]


def hash_bucket(column: str, value: Any, buckets: int) -> int:
    """The table row of a categorical value: 0 when missing, else 1 + crc32("column=value") mod (buckets-1).
    The value is rendered as `to_text` renders it, so a row dict and its text hash alike."""
    text = render_value(value)
    if text is None:
        return 0
    return 1 + zlib.crc32(f"{column}={text}".encode()) % (buckets - 1)


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
    """The embedding row of a head feature's value: position, slot_size, or one of `spec.head_categorical`."""
    if field == "position":
        return _bucket_position(value, spec.position_buckets)
    if field == "slot_size":
        return _bucket_slot(value, spec.slot_buckets)
    if field in spec.head_categorical:
        return hash_bucket(field, value, spec.hash_buckets)
    raise ValueError(f"head_bucket: {field!r} is not a head feature ({[*HEAD_FEATURES, *spec.head_categorical]})")


def tower_text(fields: Mapping[str, Any], names: list[str], form: str) -> str:
    """One tower's text of a row's `fields` (a row dict or `from_text(text, extras=True)`)."""
    if form == "labelled":
        return to_text({k: fields.get(k) for k in names})
    rendered = (render_value(fields.get(k)) for k in names)  # the values exactly as to_text renders them
    return ". ".join(v for v in rendered if v)


def cats_of(fields: Mapping[str, Any], names: list[str], buckets: int) -> tuple[int, ...]:
    """`hash_bucket` of each of `names` in `fields`, in order."""
    return tuple(hash_bucket(k, fields.get(k), buckets) for k in names)


def tower_side(fields: Mapping[str, Any], spec: TwoTowerSpec, side: Literal["request", "ad"]) -> tuple[str, tuple[int, ...]]:
    """(text, hashed categoricals) of one tower: what its vector depends on, so the key it is cached by."""
    text_cols, cat_cols = ((spec.request_fields, spec.request_categorical) if side == "request"
                           else (spec.ad_fields, spec.ad_categorical))
    return tower_text(fields, text_cols, spec.text), cats_of(fields, cat_cols, spec.hash_buckets)


def tower_inputs_from_fields(fields: Mapping[str, Any], spec: TwoTowerSpec) -> TowerInputs:
    """`TowerInputs` of one row's fields (a row dict or `from_text(text, extras=True)`)."""
    (request, request_cats), (ad, ad_cats) = tower_side(fields, spec, "request"), tower_side(fields, spec, "ad")
    return TowerInputs(request, ad, _bucket_position(fields.get("position"), spec.position_buckets),
                       _bucket_slot(fields.get("slot_size"), spec.slot_buckets), request_cats, ad_cats,
                       cats_of(fields, spec.head_categorical, spec.hash_buckets))


def tower_inputs(text: str, spec: TwoTowerSpec) -> TowerInputs:
    """`tower_inputs_from_fields` of a canonical row text (`to_text(row)`, any columns)."""
    return tower_inputs_from_fields(from_text(text, extras=True), spec)
