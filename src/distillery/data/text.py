"""`to_text(row)`: the one deterministic string a transformer reads for an ad-log row."""

from __future__ import annotations

import math
from typing import Any, Mapping

from distillery.data.schema import TEXT_FIELDS, is_text_column

__all__ = ["to_text", "to_texts", "table_texts", "from_text", "render_value", "LABEL_STRIP_RULES"]

_LABELS = {
    "query": "query",
    "site_category": "site",
    "device": "device",
    "os": "os",
    "hour": "hour",
    "position": "position",
    "slot_size": "slot",
    "advertiser": "advertiser",
    "ad_title": "ad",
    "ad_description": "text",
    "ad_category": "ad category",
}
_FIELDS = {label: name for name, label in _LABELS.items()}
_LABEL_ALTERNATIVES = "|".join(sorted(_LABELS.values(), key=len, reverse=True))  # longest first: "ad category" before "ad"
# (regex, replacement) pairs that take `to_text`'s field labels out and keep its separators:
# "query: new suv | site: search" -> "new suv | search" (training.vocab.strip_field_labels)
LABEL_STRIP_RULES: tuple[tuple[str, str], ...] = ((f"^(?:{_LABEL_ALTERNATIVES}): ", ""),
                                                  (f" \\| (?:{_LABEL_ALTERNATIVES}): ", " | "))


def render_value(value: Any) -> str | None:
    """One value as `to_text` shows it (whitespace collapsed, 3.0 as 3), or None when it is not shown."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            value = int(value)
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    text = " ".join(str(value).split())  # collapse whitespace and newlines
    return text or None


def to_text(row: Mapping[str, Any]) -> str:
    """Render a log row as `query: … | site: … | … | ad: … | name=value …`.

    Known fields come first in the fixed order of `TEXT_FIELDS`; unknown columns follow as
    `name=value`, sorted by name; nulls and empty strings are skipped; identity, time and labels
    (`id`, `ts`, `click`, `click_prob`) and row-number index columns (`schema.is_index_column`) are
    never shown.
    """
    parts = []
    for name in TEXT_FIELDS:
        value = render_value(row.get(name))
        if value is not None:
            parts.append(f"{_LABELS[name]}: {value}")
    extras = sorted(k for k in row if k not in _LABELS and is_text_column(k))
    for name in extras:
        value = render_value(row[name])
        if value is not None:
            parts.append(f"{name}={value}")
    return " | ".join(parts)


def to_texts(batch: Mapping[str, Any]) -> list[str]:
    """`to_text` over a columnar batch (`{column: sequence}`), row by row."""
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [to_text({c: batch[c][i] for c in columns}) for i in range(n)]


def table_texts(table: Any) -> list[str]:
    """`to_text` of every row of a pyarrow log table, exactly as labeling renders the same rows.

    Labeling reads a split back through `readers.read_logs`, which casts known columns to their
    LOG_SCHEMA types and every other column to text; the same casts are applied here, so training,
    evaluation and the teacher fit read the strings the teacher labelled (all columns, not only
    `TEXT_FIELDS`: a Criteo or Avazu log is mostly extra columns).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from distillery.data.parsing import KNOWN, as_text

    columns: dict[str, list] = {}
    for name in table.column_names:
        if not is_text_column(name):
            continue
        column = table.column(name)
        try:
            column = pc.cast(column, KNOWN.get(name, pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            if name not in KNOWN:  # the reader's per-value fallback (nested values as JSON)
                column = pa.array([as_text(v) for v in column.to_pylist()], pa.string())
        columns[name] = column.to_pylist()
    if not columns:
        return [""] * table.num_rows
    return to_texts(columns)


def from_text(text: str, extras: bool = False) -> dict[str, str]:
    """The fields of a `to_text` string, `{field: value}` (values as rendered, all strings).

    The inverse of `to_text` for the fields in `TEXT_FIELDS`, plus the `name=value` extras when
    `extras` (keyed by column name: `C1`, `site_id`, ...). A value that itself contains " | " cannot
    be told from a field boundary: a part with no label is joined back onto the field before it, so
    the value survives whole. A value that starts with "|" (`text: |…`) is the one form that does not
    survive: it reads as an empty field and a boundary.
    """
    fields: dict[str, str] = {}
    last: str | None = None
    for part in text.split(" | "):
        label, sep, value = part.partition(": ")
        name = _FIELDS.get(label) if sep else None
        if name is not None and name not in fields:
            fields[name] = value
            last = name
        elif last is not None and "=" not in part.split(" ", 1)[0]:
            fields[last] += " | " + part
        else:
            key, eq, value = part.partition("=")
            if extras and eq and key not in fields:
                fields[key] = value
                last = key
            else:
                last = None  # a `name=value` extra the caller did not ask for
    return fields
