"""`to_text(row)`: the one deterministic string a transformer reads for an ad-log row."""

from __future__ import annotations

import math
from typing import Any, Mapping

from distillery.data.schema import NON_TEXT_COLUMNS, TEXT_FIELDS

__all__ = ["to_text", "to_texts", "from_text"]

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


def _render(value: Any) -> str | None:
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
    (`id`, `ts`, `click`, `click_prob`) are never shown.
    """
    parts = []
    for name in TEXT_FIELDS:
        value = _render(row.get(name))
        if value is not None:
            parts.append(f"{_LABELS[name]}: {value}")
    extras = sorted(k for k in row if k not in NON_TEXT_COLUMNS and k not in _LABELS)
    for name in extras:
        value = _render(row[name])
        if value is not None:
            parts.append(f"{name}={value}")
    return " | ".join(parts)


def to_texts(batch: Mapping[str, Any]) -> list[str]:
    """`to_text` over a columnar batch (`{column: sequence}`), row by row."""
    columns = list(batch)
    n = len(batch[columns[0]]) if columns else 0
    return [to_text({c: batch[c][i] for c in columns}) for i in range(n)]


def from_text(text: str) -> dict[str, str]:
    """The known fields of a `to_text` string, `{field: value}` (values as rendered, all strings).

    The inverse of `to_text` for the fields in `TEXT_FIELDS`; `name=value` extras are skipped. A value
    that itself contains " | " cannot be told from a field boundary: the part with no known label
    is joined back onto the field before it, so the value survives whole.
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
            last = None  # a `name=value` extra: not a known field
    return fields
