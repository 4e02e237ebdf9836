"""The ad-log row: column names, types, and the checks that route a bad row to rejects.

A log row is one impression. Every reader produces these columns (missing ones are null) and keeps
unknown columns as extra string columns, which `to_text` renders as `name=value`.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import pyarrow as pa

__all__ = [
    "ID",
    "CLICK",
    "CLICK_PROB",
    "CONTEXT_FIELDS",
    "AD_FIELDS",
    "TEXT_FIELDS",
    "NON_TEXT_COLUMNS",
    "LOG_SCHEMA",
    "is_index_column",
    "is_text_column",
    "row_problem",
]

ID = "id"
CLICK = "click"
CLICK_PROB = "click_prob"  # the true click probability; synthetic logs only

# Request context, then the ad: the order here is the order `to_text` writes them.
CONTEXT_FIELDS = ("query", "site_category", "device", "os", "hour", "position", "slot_size")
AD_FIELDS = ("advertiser", "ad_title", "ad_description", "ad_category")
TEXT_FIELDS = CONTEXT_FIELDS + AD_FIELDS
# Columns never shown to a model: identity, time, and the answers.
NON_TEXT_COLUMNS = frozenset({ID, "ts", CLICK, CLICK_PROB, "split", "_source"})

INT_FIELDS = frozenset({"hour", "position", "ts"})
_INDEX_COLUMN = re.compile(r"Unnamed: \d+|__index_level_\d+__")


def is_index_column(name: str) -> bool:
    """A row-number column a dataframe library wrote (pandas `to_csv`: an empty header, read back as
    `Unnamed: 0`; `to_parquet`: `__index_level_0__`): it numbers rows, it says nothing about the
    impression (nor about its identity: `parsing.content_id` leaves it out)."""
    return not str(name).strip() or bool(_INDEX_COLUMN.fullmatch(str(name)))


def is_text_column(name: str) -> bool:
    """Whether `to_text` shows column `name` to a model: everything but identity, time, the answers
    (`NON_TEXT_COLUMNS`) and row-number index columns."""
    return name not in NON_TEXT_COLUMNS and not is_index_column(name)

LOG_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field("ts", pa.int64()),
        pa.field("query", pa.string()),
        pa.field("site_category", pa.string()),
        pa.field("device", pa.string()),
        pa.field("os", pa.string()),
        pa.field("hour", pa.int32()),
        pa.field("position", pa.int32()),
        pa.field("slot_size", pa.string()),
        pa.field("advertiser", pa.string()),
        pa.field("ad_title", pa.string()),
        pa.field("ad_description", pa.string()),
        pa.field("ad_category", pa.string()),
        pa.field(CLICK, pa.int8()),
        pa.field(CLICK_PROB, pa.float64()),
    ]
)

MAX_FIELD_CHARS = 2_000  # a field longer than this is a broken row, not an ad


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def row_problem(
    row: Mapping[str, Any],
    required: tuple[str, ...] = (),
    max_field_chars: int = MAX_FIELD_CHARS,
) -> str | None:
    """Why `row` cannot be labeled (a short reason naming the field), or None if it can.

    Checks: a non-empty string id; integer fields are integers; text fields are strings that
    decode as UTF-8 and are not giant; `required` fields are present and non-empty; and at least
    one text field carries something for a model to read.
    """
    rid = row.get(ID)
    if _is_missing(rid) or not isinstance(rid, str) or not rid.strip():
        return f"{ID}: missing or not a non-empty string"
    has_text = False
    for name, value in row.items():
        if not is_text_column(name) or _is_missing(value):
            continue
        if isinstance(value, (bytes, bytearray)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                return f"{name}: undecodable bytes (not UTF-8)"
        if name in INT_FIELDS:
            if isinstance(value, bool) or not isinstance(value, (int,)) and not (
                isinstance(value, float) and value.is_integer()
            ):
                return f"{name}: expected an integer, got {type(value).__name__}"
            continue
        if isinstance(value, str):
            if len(value) > max_field_chars:
                return f"{name}: string of {len(value)} chars exceeds {max_field_chars}"
            if "\ufffd" in value:
                return f"{name}: undecodable bytes (replacement characters)"
            if value.strip():
                has_text = True
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            has_text = True
        elif name in TEXT_FIELDS:
            return f"{name}: expected a string, got {type(value).__name__}"
    for name in required:
        value = row.get(name)
        if _is_missing(value) or (isinstance(value, str) and not value.strip()):
            return f"{name}: required field missing or empty"
    if not has_text:
        return "row has no text fields"
    return None
