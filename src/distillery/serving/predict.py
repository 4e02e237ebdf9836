"""`POST /predict` bodies: ad-log rows or raw texts in, model texts out. Pure and Ray-free.

    {"rows": [{"query": "running shoes", "ad_title": "Marathon-ready footwear", ...}, ...]}
    {"texts": ["query: running shoes | ad: Marathon-ready footwear", ...]}

Answer: `{"model": "ctr", "model_version": "...", "probabilities": [p, ...]}` in input order.
"""

from __future__ import annotations

from typing import Any

from distillery.data.parsing import RowError, log_row
from distillery.data.schema import ID, row_problem
from distillery.data.text import to_text
from distillery.serving.limits import BadRequest, LimitsSection, check_text

__all__ = ["predict_texts"]

_KEYS = {"rows", "texts", "id"}


def _check_list(body: dict[str, Any], key: str, limits: LimitsSection) -> list[Any]:
    items = body[key]
    if not isinstance(items, list):
        raise BadRequest(400, f"{key}: expected a list, got {type(items).__name__}")
    if not items:
        raise BadRequest(400, f"{key}: empty list; send at least one")
    if len(items) > limits.max_rows:
        raise BadRequest(413, f"{key}: {len(items)} items exceed the limit of {limits.max_rows} per request")
    return items


def _row_text(i: int, row: Any, limits: LimitsSection) -> str:
    if not isinstance(row, dict):
        raise BadRequest(400, f"rows[{i}]: expected an object, got {type(row).__name__}")
    for name, value in row.items():
        if value is not None and not isinstance(value, (str, int, float)):
            raise BadRequest(400, f"rows[{i}].{name}: expected a string or number, got {type(value).__name__}")
        if isinstance(value, str) and value.strip():  # unknown fields reach the model text too
            check_text(f"rows[{i}].{name}", value, limits)
        if name.strip():
            check_text(f"rows[{i}] field name {name[:40]!r}", name, limits)
    try:  # a row in its log's own columns (raw Criteo/Avazu too) → the row training read: the same text
        row = log_row(row)
    except RowError as err:
        raise BadRequest(400, f"rows[{i}].{err}") from None
    checked = row if ID in row else {**row, ID: f"row-{i}"}
    problem = row_problem(checked, max_field_chars=limits.max_text_chars)
    if problem is not None:
        raise BadRequest(400, f"rows[{i}].{problem}" if not problem.startswith("row ") else f"rows[{i}]: {problem}")
    return to_text(row)


def predict_texts(body: Any, limits: LimitsSection) -> list[str]:
    """The model texts of a /predict body; raises `BadRequest` naming the field on bad input."""
    if not isinstance(body, dict):
        raise BadRequest(400, f"body: expected a JSON object with 'rows' or 'texts', got {type(body).__name__}")
    unknown = sorted(set(body) - _KEYS)
    if unknown:
        raise BadRequest(400, f"{unknown[0]}: unknown field; expected 'rows' or 'texts'")
    if ("rows" in body) == ("texts" in body):
        raise BadRequest(400, "rows, texts: send exactly one of them")
    if "texts" in body:
        texts = _check_list(body, "texts", limits)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise BadRequest(400, f"texts[{i}]: expected a string, got {type(text).__name__}")
            check_text(f"texts[{i}]", text, limits)
        return texts
    rows = _check_list(body, "rows", limits)
    return [_row_text(i, row, limits) for i, row in enumerate(rows)]
