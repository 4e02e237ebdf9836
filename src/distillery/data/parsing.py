"""Parsing helpers of the ad-log readers: typed values, row mappers, delimited and JSON-lines files.

Everything here is pure: bytes in, `(rows, rejects)` out, where a row is a dict of LOG_SCHEMA columns
plus extra string columns and a reject is `(id or None, "file:line", reason naming the field)`.
`distillery.data.readers` picks the format and assembles tables.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import posixpath
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import pyarrow as pa

from distillery.data.schema import CLICK, CLICK_PROB, ID, LOG_SCHEMA, TEXT_FIELDS, is_index_column

__all__ = [
    "KNOWN", "CRITEO_HEADER", "RowError", "Reject", "Parsed", "as_int", "as_text", "click_label", "typed_value",
    "check_utf8", "generic_mapper", "criteo_row", "avazu_row", "file_stem", "file_suffix", "content_id",
    "with_content_id", "CONTENT_ID_PREFIX", "parse_delimited", "json_documents", "parse_jsonl", "log_row",
]

KNOWN = {f.name: f.type for f in LOG_SCHEMA}
CRITEO_HEADER = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
_CRITEO_INTS = frozenset(CRITEO_HEADER[1:14])
AVAZU_APP_CATEGORY_PLACEHOLDER = "07d7df22"  # app_category of site traffic in Avazu
COMPRESSION = (".gz", ".bz2", ".zst", ".lz4")  # pyarrow's input streams decompress these by name
_INT_BITS = {pa.int8(): 8, pa.int32(): 32, pa.int64(): 64}

Reject = tuple[str | None, str, str]  # (row id if known, "file:line", reason naming the field)
Parsed = tuple[list[dict[str, Any]], list[Reject]]


class RowError(ValueError):
    """A row that cannot be parsed; the message names the field (`hour: expected an integer, got 'x'`)."""


# ---------------------------------------------------------------- values


def as_int(value: Any, name: str, bits: int = 64) -> int:
    if isinstance(value, bool):
        raise RowError(f"{name}: expected an integer, got bool")
    number: int | float
    if isinstance(value, (int, float)):
        number = value
    else:
        text = str(value).strip()
        try:  # int() first: float() would round ids and nanosecond times beyond 2**53
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                raise RowError(f"{name}: expected an integer, got {value!r}") from None
    if isinstance(number, float):
        if not number.is_integer():  # also NaN and infinities
            raise RowError(f"{name}: expected an integer, got {value!r}")
        number = int(number)
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise RowError(f"{name}: {number} out of range for int{bits}")
    return number


def click_label(value: Any, name: str) -> int | None:
    """0/1 from `0`, `1`, `0.0`, `true`, `no`, ...; None when empty; RowError otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip().lower()
    if text in ("", "null", "none", "nan"):
        return None
    if text in ("1", "1.0", "true", "yes"):
        return 1
    if text in ("0", "0.0", "false", "no"):
        return 0
    raise RowError(f"{name}: expected a 0/1 click label, got {value!r}")


def as_text(value: Any) -> str | None:
    """Extras and text fields are strings: numbers as `to_text` would render them, JSON for nesting."""
    if value is None or isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def typed_value(name: str, value: Any, source_name: str | None = None) -> Any:
    """`value` as the LOG_SCHEMA type of column `name`; errors name the source's column."""
    label = source_name or name
    if value is None or value == "":
        return None
    if name == CLICK:
        return click_label(value, label)
    typ = KNOWN[name]
    if typ in _INT_BITS:
        return as_int(value, label, _INT_BITS[typ])
    if name == CLICK_PROB:
        try:
            prob = float(value)
        except (TypeError, ValueError):
            raise RowError(f"{label}: expected a probability, got {value!r}") from None
        if not 0.0 <= prob <= 1.0:
            raise RowError(f"{label}: probability {prob} outside [0, 1]")
        return prob
    return as_text(value)


def check_utf8(fields: dict[str, str]) -> None:
    """Text was decoded with surrogateescape: a lone surrogate marks a byte that is not UTF-8."""
    for name, value in fields.items():
        if value and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RowError(f"{name}: undecodable bytes (not UTF-8)") from None


# ---------------------------------------------------------------- identity of a row without an id

CONTENT_ID_PREFIX = "c-"
# 96 bits: a day of a large exchange's log (1e9 impressions) collides with odds ~1e-11, where 64 bits
# (~3%) would reject a real impression as a duplicate now and then.
_CONTENT_ID_BYTES = 12


def content_id(row: dict[str, Any]) -> str:
    """The id of a log row that carries none: `c-<24 hex>`, a BLAKE2b hash of the row's content.

    Content is every column of the row as read (typed, `label_column` renamed to `click`) except
    `id` and row-number index columns (`schema.is_index_column`: they number lines, not impressions),
    written as JSON with sorted keys; a null and an absent column are the same. So the same
    impression exported twice (overlapping daily files, a double write) has one id wherever it
    appears, a changed row gets a new id, and rewriting a file keeps the ids of its unchanged rows.
    """
    body = {k: v for k, v in row.items()
            if k != ID and v is not None and not (isinstance(v, float) and math.isnan(v)) and not is_index_column(k)}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    digest = hashlib.blake2b(blob.encode("utf-8", errors="surrogatepass"), digest_size=_CONTENT_ID_BYTES)
    return CONTENT_ID_PREFIX + digest.hexdigest()


def with_content_id(row: dict[str, Any]) -> dict[str, Any]:
    """`row` with `content_id(row)` as its id when the source gave it none (`id` None)."""
    if row.get(ID) is None:
        row[ID] = content_id(row)
    return row


# ---------------------------------------------------------------- row mappers (source dict -> log row)

# (raw row, id to use when the source has no id column: None leaves it to `with_content_id`) -> log row
Mapper = Callable[[dict[str, Any], str | None], dict[str, Any]]


def generic_mapper(label_column: str | None) -> Mapper:
    """Known columns typed, `label_column` renamed to `click`, `id` kept or `default_id`, the rest strings."""

    def to_row(raw: dict[str, Any], default_id: str | None) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, value in raw.items():
            target = CLICK if name == label_column else name
            if name == CLICK and label_column not in (None, CLICK):
                target = "click_original"  # the file's own `click` column when another one is the label
            row[target] = typed_value(target, value, name) if target in KNOWN else as_text(value)
        if ID in raw:
            if row[ID] is None or not row[ID].strip():
                raise RowError(f"{ID}: missing or empty")
        else:
            row[ID] = default_id
        return row

    return to_row


def criteo_row(raw: dict[str, Any], default_id: str | None) -> dict[str, Any]:
    """`label` -> click; I1..I13 as integer text (`260.0` -> `260`), C1..C26 as given; empty -> null."""
    row: dict[str, Any] = {ID: default_id, CLICK: click_label(raw["label"], "label")}
    for name, value in raw.items():
        if not value:
            row[name] = None
        elif name in _CRITEO_INTS and value.endswith(".0"):
            try:
                row[name] = str(int(float(value)))
            except ValueError:
                raise RowError(f"{name}: expected a number, got {value!r}") from None
        else:
            row[name] = value
    del row["label"]
    return row


def _avazu_hour(value: str) -> tuple[int, int]:
    """`YYMMDDHH` (UTC) -> (unix seconds, hour of day)."""
    try:
        when = datetime.strptime(value.strip(), "%y%m%d%H").replace(tzinfo=timezone.utc)
    except (ValueError, AttributeError):
        raise RowError(f"hour: expected YYMMDDHH, got {value!r}") from None
    return int(when.timestamp()), when.hour


def avazu_row(raw: dict[str, Any], default_id: str | None) -> dict[str, Any]:
    """Avazu: `id` kept as text (most exceed int64), hour -> ts + hour of day, slot from C15xC16."""
    rid = (raw.get(ID) or "").strip()
    if not rid:
        raise RowError(f"{ID}: missing or empty")
    row: dict[str, Any] = {ID: rid}
    if CLICK in raw:
        row[CLICK] = click_label(raw[CLICK], CLICK)
    if raw.get("hour"):
        row["ts"], row["hour"] = _avazu_hour(raw["hour"])
    if raw.get("banner_pos"):
        row["position"] = as_int(raw["banner_pos"], "banner_pos", 32)
    app_cat = raw.get("app_category")
    row["site_category"] = (app_cat if app_cat and app_cat != AVAZU_APP_CATEGORY_PLACEHOLDER
                            else raw.get("site_category")) or None
    row["device"] = raw.get("device_type") or None
    w, h = raw.get("C15"), raw.get("C16")
    row["slot_size"] = f"{w}x{h}" if w and h else None
    used = {ID, CLICK, "hour", "banner_pos", "site_category", "app_category", "device_type", "C15", "C16"}
    row.update({k: v or None for k, v in raw.items() if k not in used})
    return row


_CRITEO_COLUMNS = frozenset(CRITEO_HEADER[1:])
_TEXT_FIELDS = frozenset(TEXT_FIELDS)
_AVAZU_COLUMNS = frozenset({"hour", "banner_pos", "device_type", "C15", "C16"})


def log_row(raw: dict[str, Any]) -> dict[str, Any]:
    """One row in its log's own columns → the row the reader makes of it, so `to_text` matches training.

    A raw Criteo row (`I1..I13`, `C1..C26`, optional `label`) or raw Avazu row (`hour` as YYMMDDHH,
    `banner_pos`, `device_type`, `C15`, `C16`) goes through the reader's mapper, as `detect_format`
    tells those layouts from a header; the known text fields of any other row are typed the way the
    generic reader types them (`hour: "5.0"` → 5) and every other value is left as it is. A row that is
    already in log columns (a split's parquet row, a synthetic row) comes back with the same text.
    Raises RowError (naming the field) for a value the reader would have rejected.
    """
    keys = set(raw)
    if _CRITEO_COLUMNS <= keys:
        text = {k: as_text(v) or "" for k, v in raw.items()}
        return criteo_row({**text, "label": text.get("label", "")}, str(raw.get(ID) or "row"))
    hour = raw.get("hour")
    if _AVAZU_COLUMNS <= keys and str(hour).strip().isdigit() and len(str(hour).strip()) == 8:
        text = {k: as_text(v) or "" for k, v in raw.items()}
        return avazu_row({**text, ID: text.get(ID) or "row"}, "row")
    return {k: typed_value(k, v) if k in _TEXT_FIELDS else v for k, v in raw.items()}


# ---------------------------------------------------------------- per-file parsers -> (rows, rejects)


def file_stem(path: str) -> str:
    name = posixpath.basename(path.replace("\\", "/"))
    for suffix in COMPRESSION:
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[0] if "." in name else name


def file_suffix(path: str) -> str:
    name = posixpath.basename(path.replace("\\", "/")).lower()
    for suffix in COMPRESSION:
        name = name.removesuffix(suffix)
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


def _delimited_records(path: str, data: bytes, delimiter: str, header: list[str] | None
                       ) -> tuple[list[str], Iterator[tuple[int, dict[str, str] | None, str | None]], bool]:
    """(header, records, clean): each record is (line, {column: text}, None), or (line, None, reason)
    for a malformed one. Unless `clean` (the file is valid UTF-8), bytes that are not UTF-8 survive
    as lone surrogates for `check_utf8` to flag."""
    try:
        text, clean = data.decode("utf-8"), True
    except UnicodeDecodeError:  # keep going: only the rows holding the bad bytes are rejected
        text, clean = data.decode("utf-8", errors="surrogateescape"), False
    text = text.lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    if header is None:
        header = next(reader, [])
        dupes = sorted({c for c in header if header.count(c) > 1})
        if dupes:
            raise ValueError(f"{path}: duplicate column names {dupes}")

    def records() -> Iterator[tuple[int, dict[str, str] | None, str | None]]:
        line = reader.line_num
        while True:
            start = line + 1  # line_num counts physical lines, so quoted newlines keep numbering true
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                line = reader.line_num
                yield start, None, f"line: malformed ({err})"
                continue
            line = reader.line_num
            if not fields:  # blank line
                continue
            if len(fields) != len(header):
                yield start, None, f"row has {len(fields)} fields, header has {len(header)}"
                continue
            yield start, dict(zip(header, fields)), None

    return header, records(), clean


def parse_delimited(path: str, data: bytes, delimiter: str, mapper: Mapper, header: list[str] | None = None,
                    label_column: str | None = None) -> Parsed:
    """Rows of a CSV/TSV file through `mapper`; a file without an `id` column gets `content_id`s.

    `header`: the column names of a file without a header row (headerless Criteo); else line 1.
    A reject's id is the row's own id when it has one, else None (its source `file:line` names it).
    """
    rows, rejects = [], []
    header, records, clean = _delimited_records(path, data, delimiter, header)
    if label_column and header and label_column not in header:
        raise ValueError(f"{path}: label column {label_column!r} not found; columns are {header}")
    for line, raw, problem in records:
        rid = (raw.get(ID) or None) if raw is not None and ID in header else None
        if problem is None:
            try:
                if not clean:
                    check_utf8(raw)
                rows.append(with_content_id(mapper(raw, None)))
                continue
            except RowError as err:
                problem = str(err)
        if rid is not None and not rid.isascii():
            rid = rid.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
        rejects.append((rid, f"{path}:{line}", problem))
    return rows, rejects


def json_documents(path: str, data: bytes, whole: bool) -> Iterator[tuple[int, Any, str | None]]:
    """(line, decoded JSON, None) or (line, None, reason); `whole`: the file is one JSON document."""
    chunks = [(1, data)] if whole else enumerate(data.split(b"\n"), start=1)
    for line, chunk in chunks:
        if not chunk.strip():
            continue
        try:
            yield line, json.loads(chunk.decode("utf-8")), None
        except UnicodeDecodeError:
            yield line, None, "line: undecodable bytes (not UTF-8)"
        except ValueError as err:
            yield line, None, f"line: not valid JSON ({err})"


def parse_jsonl(path: str, data: bytes, label_column: str | None) -> Parsed:
    """One JSON object per line; nested values become JSON text; an object without `id` gets its
    `content_id`. A reject's id is the object's own id when it has one, else None."""
    rows, rejects, to_row = [], [], generic_mapper(label_column)
    for line, obj, problem in json_documents(path, data, whole=False):
        rid = None
        if problem is None and not isinstance(obj, dict):
            problem = f"line: expected a JSON object, got {type(obj).__name__}"
        if problem is None:
            rid = as_text(obj.get(ID))
            try:
                for key in obj:  # a JSON-escaped lone surrogate ("\ud800") in a field name
                    check_utf8({"field name": key})
                check_utf8({k: v for k, v in obj.items() if isinstance(v, str)})  # "\udc80" escapes
                rows.append(with_content_id(to_row(obj, None)))
                continue
            except RowError as err:
                problem = str(err)
        if rid is not None and not rid.isascii():
            try:
                rid.encode("utf-8")
            except UnicodeEncodeError:  # the reject is still written; its source names the line
                rid = None
        rejects.append((rid, f"{path}:{line}", problem))
    if label_column and rows and not any(CLICK in r for r in rows):
        raise ValueError(f"{path}: label column {label_column!r} not found in any row")
    return rows, rejects
