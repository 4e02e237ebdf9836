"""Ad-log readers: parquet, CSV/TSV, JSON lines, the Criteo and Avazu layouts, OpenRTB bid requests.

    result = read_logs("../shared/data/avazu-deepctr")          # file, folder or URI; format sniffed
    result.table      # LOG_SCHEMA columns the source provides + unknown columns as extra strings
    result.rejects    # id (may be null), source (file:line), reason (names the field)
    inspect_logs("logs.csv", label_column="clicked")            # rows, clicks, click_rate, ...

A row the reader cannot parse (wrong column count, undecodable bytes, a bad label or number) goes
to `rejects` with a reason; every other row still loads. Whether a parsed row is good enough to
label (`schema.row_problem`) is the labeling job's call, not the reader's.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import logging
import math
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillery import io
from distillery.data.openrtb import request_to_rows, validate_bid_request
from distillery.data.schema import CLICK, CLICK_PROB, ID, LOG_SCHEMA
from distillery.data.text import to_text

__all__ = ["FORMATS", "REJECT_SCHEMA", "ReadResult", "read_logs", "inspect_logs", "detect_format"]

log = logging.getLogger(__name__)

FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl", "criteo", "avazu", "openrtb")
REJECT_SCHEMA = pa.schema([pa.field(ID, pa.string()), pa.field("source", pa.string()), pa.field("reason", pa.string())])
KNOWN = {f.name: f.type for f in LOG_SCHEMA}
CRITEO_HEADER = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
AVAZU_APP_CATEGORY_PLACEHOLDER = "07d7df22"  # app_category of site traffic in Avazu
_COMPRESSION = (".gz", ".bz2", ".zst", ".lz4")  # pyarrow's input streams decompress these by name
_SUFFIXES = {
    "parquet": (".parquet", ".pq"),
    "csv": (".csv", ".txt"),
    "tsv": (".tsv", ".tab", ".txt"),
    "jsonl": (".jsonl", ".ndjson", ".json"),
    "criteo": (".txt", ".csv", ".tsv"),
    "avazu": (".txt", ".csv", ".tsv"),
    "openrtb": (".json", ".jsonl", ".ndjson"),
}
_SUFFIXES["auto"] = tuple(sorted({s for v in _SUFFIXES.values() for s in v}))
_INT_BITS = {pa.int8(): 8, pa.int32(): 32, pa.int64(): 64}


@dataclass(frozen=True)
class ReadResult:
    """`table`: one row per impression (`id` always, other LOG_SCHEMA columns as provided, extras as
    strings); `rejects`: `REJECT_SCHEMA` rows; `files`: the files read, in order."""

    table: pa.Table
    rejects: pa.Table
    files: tuple[str, ...] = field(default=())


class RowError(ValueError):
    """A row that cannot be parsed; the message names the field (`hour: expected an integer, got 'x'`)."""


# ---------------------------------------------------------------- values


def _int(value: Any, name: str, bits: int = 64) -> int:
    if isinstance(value, bool):
        raise RowError(f"{name}: expected an integer, got bool")
    try:
        number = value if isinstance(value, int) else float(str(value).strip())
    except ValueError:
        raise RowError(f"{name}: expected an integer, got {value!r}") from None
    if isinstance(number, float):
        if not number.is_integer():
            raise RowError(f"{name}: expected an integer, got {value!r}")
        number = int(number)
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise RowError(f"{name}: {number} out of range for int{bits}")
    return number


def _click(value: Any, name: str) -> int | None:
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


def _string(value: Any) -> str | None:
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


def _known(name: str, value: Any, source_name: str | None = None) -> Any:
    """`value` as the LOG_SCHEMA type of column `name`; errors name the source's column."""
    label = source_name or name
    if value is None or value == "":
        return None
    if name == CLICK:
        return _click(value, label)
    typ = KNOWN[name]
    if typ in _INT_BITS:
        return _int(value, label, _INT_BITS[typ])
    if name == CLICK_PROB:
        try:
            prob = float(value)
        except (TypeError, ValueError):
            raise RowError(f"{label}: expected a probability, got {value!r}") from None
        if not 0.0 <= prob <= 1.0:
            raise RowError(f"{label}: probability {prob} outside [0, 1]")
        return prob
    return _string(value)


def _check_utf8(fields: dict[str, str]) -> None:
    """Text was decoded with surrogateescape: a lone surrogate marks a byte that is not UTF-8."""
    for name, value in fields.items():
        if value and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise RowError(f"{name}: undecodable bytes (not UTF-8)") from None


# ---------------------------------------------------------------- row mappers (source dict -> log row)

Mapper = Callable[[dict[str, Any], str], dict[str, Any]]


def _generic_mapper(label_column: str | None) -> Mapper:
    """Known columns typed, `label_column` renamed to `click`, `id` kept or derived, the rest strings."""

    def to_row(raw: dict[str, Any], default_id: str) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for name, value in raw.items():
            target = CLICK if name == label_column else name
            if name == CLICK and label_column not in (None, CLICK):
                target = "click_original"  # the file's own `click` column when another one is the label
            row[target] = _known(target, value, name) if target in KNOWN else _string(value)
        if ID in raw:
            if row[ID] is None or not row[ID].strip():
                raise RowError(f"{ID}: missing or empty")
        else:
            row[ID] = default_id
        return row

    return to_row


def _criteo_row(raw: dict[str, Any], default_id: str) -> dict[str, Any]:
    """`label` -> click; I1..I13 as integer text (`260.0` -> `260`), C1..C26 as given; empty -> null."""
    row: dict[str, Any] = {ID: default_id, CLICK: _click(raw.get("label"), "label")}
    for name, value in raw.items():
        if name == "label":
            continue
        if value and name.startswith("I"):
            try:
                number = float(value)
            except ValueError:
                raise RowError(f"{name}: expected a number, got {value!r}") from None
            value = str(int(number)) if number.is_integer() else value
        row[name] = value or None
    return row


def _avazu_hour(value: str) -> tuple[int, int]:
    """`YYMMDDHH` (UTC) -> (unix seconds, hour of day)."""
    try:
        when = datetime.strptime(value.strip(), "%y%m%d%H").replace(tzinfo=timezone.utc)
    except (ValueError, AttributeError):
        raise RowError(f"hour: expected YYMMDDHH, got {value!r}") from None
    return int(when.timestamp()), when.hour


def _avazu_row(raw: dict[str, Any], default_id: str) -> dict[str, Any]:
    """Avazu: `id` kept as text (most exceed int64), hour -> ts + hour of day, slot from C15xC16."""
    rid = (raw.get(ID) or "").strip()
    if not rid:
        raise RowError(f"{ID}: missing or empty")
    row: dict[str, Any] = {ID: rid}
    if CLICK in raw:
        row[CLICK] = _click(raw[CLICK], CLICK)
    if raw.get("hour"):
        row["ts"], row["hour"] = _avazu_hour(raw["hour"])
    if raw.get("banner_pos"):
        row["position"] = _int(raw["banner_pos"], "banner_pos", 32)
    app_cat = raw.get("app_category")
    row["site_category"] = (app_cat if app_cat and app_cat != AVAZU_APP_CATEGORY_PLACEHOLDER
                            else raw.get("site_category")) or None
    row["device"] = raw.get("device_type") or None
    w, h = raw.get("C15"), raw.get("C16")
    row["slot_size"] = f"{w}x{h}" if w and h else None
    used = {ID, CLICK, "hour", "banner_pos", "site_category", "app_category", "device_type", "C15", "C16"}
    row.update({k: v or None for k, v in raw.items() if k not in used})
    return row


# ---------------------------------------------------------------- per-file parsers -> (rows, rejects)


def _stem(path: str) -> str:
    name = posixpath.basename(path.replace("\\", "/"))
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[0] if "." in name else name


def _suffix(path: str) -> str:
    name = posixpath.basename(path.replace("\\", "/")).lower()
    for suffix in _COMPRESSION:
        name = name.removesuffix(suffix)
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


Parsed = tuple[list[dict[str, Any]], list[tuple[str | None, str, str]]]


def _delimited_records(path: str, data: bytes, delimiter: str, header: list[str] | None
                       ) -> tuple[list[str], Iterator[tuple[int, dict[str, str] | None, str | None]]]:
    """(header, records): each record is (line, {column: text}, None), or (line, None, reason) for a
    malformed one. Bytes that are not UTF-8 survive as lone surrogates for `_check_utf8` to flag."""
    text = data.decode("utf-8", errors="surrogateescape").lstrip("\ufeff")
    reader = csv.reader(_stdio.StringIO(text, newline=""), delimiter=delimiter)
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

    return header, records()


def _parse_delimited(path: str, data: bytes, delimiter: str, mapper: Mapper, header: list[str] | None = None,
                     label_column: str | None = None) -> Parsed:
    rows, rejects, stem = [], [], _stem(path)
    header, records = _delimited_records(path, data, delimiter, header)
    if label_column and header and label_column not in header:
        raise ValueError(f"{path}: label column {label_column!r} not found; columns are {header}")
    for line, raw, problem in records:
        default_id = f"{stem}:{line}"
        if ID not in header:
            rid = default_id
        else:  # the row's own id, if the row could be split at all
            rid = (raw.get(ID) or None) if raw is not None else None
        if problem is None:
            try:
                _check_utf8(raw)
                rows.append(mapper(raw, default_id))
                continue
            except RowError as err:
                problem = str(err)
        if rid is not None and not rid.isascii():
            rid = rid.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
        rejects.append((rid, f"{path}:{line}", problem))
    return rows, rejects


def _json_lines(path: str, data: bytes, whole: bool) -> Iterator[tuple[int, Any, str | None]]:
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


def _parse_jsonl(path: str, data: bytes, label_column: str | None) -> Parsed:
    rows, rejects, to_row, stem = [], [], _generic_mapper(label_column), _stem(path)
    for line, obj, problem in _json_lines(path, data, whole=False):
        rid = None
        if problem is None and not isinstance(obj, dict):
            problem = f"line: expected a JSON object, got {type(obj).__name__}"
        if problem is None:
            rid = _string(obj.get(ID)) if ID in obj else f"{stem}:{line}"
            try:
                rows.append(to_row(obj, f"{stem}:{line}"))
                continue
            except RowError as err:
                problem = str(err)
        rejects.append((rid, f"{path}:{line}", problem))
    if label_column and rows and not any(CLICK in r for r in rows):
        raise ValueError(f"{path}: label column {label_column!r} not found in any row")
    return rows, rejects


def _parse_openrtb(path: str, data: bytes, outcomes: dict[str, Any] | None) -> Parsed:
    """One request per `.json` file (or a JSON array of them), one per line in `.jsonl`."""
    rows, rejects = [], []
    documents = list(_json_lines(path, data, whole=_suffix(path) == ".json"))
    if len(documents) == 1 and isinstance(documents[0][1], list):
        documents = [(documents[0][0], request, None) for request in documents[0][1]]
    for line, request, problem in documents:
        source = f"{path}:{line}"
        if problem is not None:
            rejects.append((None, source, problem))
            continue
        problems = validate_bid_request(request)
        rid = request.get(ID) if isinstance(request, dict) and isinstance(request.get(ID), str) else None
        fatal = [p for p in problems if p.startswith(("request:", "id:", "imp:"))]
        if fatal:
            rejects.append((rid, source, "; ".join(fatal)))
            continue
        bad_imps = {}
        for i, imp in enumerate(request["imp"]):
            mine = [p for p in problems if p.startswith((f"imp[{i}].", f"imp[{i}]:"))]
            if mine:
                imp_id = imp.get(ID) if isinstance(imp, dict) and isinstance(imp.get(ID), str) else None
                bad_imps[imp_id] = mine
                rejects.append((f"{rid}:{imp_id}" if imp_id else None, source, "; ".join(mine)))
        good = dict(request, imp=[imp for imp in request["imp"] if isinstance(imp, dict)
                                  and isinstance(imp.get(ID), str) and imp[ID] not in bad_imps])
        for row in request_to_rows(good, outcomes):
            try:
                if CLICK in row:
                    row[CLICK] = _click(row[CLICK], CLICK)
                rows.append(row)
            except RowError as err:
                rejects.append((row[ID], source, f"outcome {err}"))
    return rows, rejects


def _read_parquet(path: str, label_column: str | None) -> tuple[pa.Table, list[tuple[str | None, str, str]]]:
    """Known columns cast to LOG_SCHEMA types, the rest to strings; values that will not cast are
    coerced one by one, and rows that still fail are rejected (source `file:row`, rows from 1)."""
    fs, inner = io.filesystem(path)
    table = pq.read_table(inner, filesystem=fs)
    if label_column and label_column != CLICK:
        if label_column not in table.column_names:
            raise ValueError(f"{path}: label column {label_column!r} not found; columns are {table.column_names}")
        names = ["click_original" if n == CLICK else n for n in table.column_names]
        table = table.rename_columns([CLICK if n == label_column else n for n in names])
    if ID not in table.column_names:
        stem = _stem(path)
        table = table.append_column(ID, pa.array([f"{stem}:{i + 1}" for i in range(table.num_rows)], pa.string()))
    bad: dict[int, str] = {}
    columns = {}
    for name in table.column_names:
        column = table.column(name)
        source_name = label_column if name == CLICK and label_column else name
        typ = KNOWN.get(name, pa.string())
        try:
            if name == CLICK and not pc.all(pc.is_in(pc.cast(column, pa.int64()).drop_null(),
                                                     pa.array([0, 1]))).as_py():
                raise pa.ArrowInvalid("click outside 0/1")
            columns[name] = pc.cast(column, typ)
            continue
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            pass
        values = []
        for i, value in enumerate(column.to_pylist()):
            try:
                values.append(_known(name, value, source_name) if name in KNOWN else _string(value))
            except RowError as err:
                bad.setdefault(i, str(err))
                values.append(None)
        columns[name] = pa.array(values, typ)
    table = pa.table(columns)
    missing_id = pc.is_null(table.column(ID)).to_pylist()
    bad.update({i: f"{ID}: missing" for i, m in enumerate(missing_id) if m and i not in bad})
    rejects = [(table.column(ID)[i].as_py(), f"{path}:{i + 1}", reason) for i, reason in sorted(bad.items())]
    if bad:
        keep = pa.array([i not in bad for i in range(table.num_rows)])
        table = table.filter(keep)
    return table, rejects


# ---------------------------------------------------------------- format detection and the public calls


def detect_format(path: str, head: bytes) -> str | None:
    """The format of one file from its name and first line; None when it is not a log file.

    `.parquet` parquet; `.json` OpenRTB; `.jsonl` OpenRTB when its first object has `imp`, else JSON
    lines; `.csv/.tsv/.txt` Criteo or Avazu by header (or a 40-field tab-separated Criteo line
    without header), else CSV or TSV.
    """
    ext = _suffix(path)
    if ext in _SUFFIXES["parquet"]:
        return "parquet"
    if ext == ".json":
        return "openrtb"
    # strip only the line end: a headerless Criteo line may end in empty tab-separated fields
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").rstrip("\r\n").lstrip("\ufeff")
    if ext in (".jsonl", ".ndjson"):
        try:
            obj = json.loads(first)
        except ValueError:
            return "jsonl"
        return "openrtb" if isinstance(obj, dict) and isinstance(obj.get("imp"), list) else "jsonl"
    if ext not in (".csv", ".tsv", ".tab", ".txt"):
        return None
    tab = "\t" in first and ext != ".csv"
    fields = [f.strip().strip('"') for f in first.split("\t" if tab else ",")]
    if fields == CRITEO_HEADER:
        return "criteo"
    if fields[:3] == [ID, CLICK, "hour"] and "banner_pos" in fields:
        return "avazu"
    if tab and len(fields) == len(CRITEO_HEADER) and fields[0] in ("0", "1"):
        return "criteo"
    return "tsv" if tab else "csv"


def _is_outcomes(path: str) -> bool:
    return _stem(path) == "outcomes" or _stem(path).endswith(".outcomes")


def _load_outcomes(path: str, label_column: str | None) -> tuple[dict[str, Any], list]:
    """`id` (`<request.id>:<imp.id>`) -> click, from a CSV/TSV/JSON-lines file with `id` and a click column."""
    data = io.read_bytes(path)
    if _suffix(path) in (".jsonl", ".ndjson", ".json"):
        rows, rejects = _parse_jsonl(path, data, label_column)
    else:
        delimiter = "\t" if _suffix(path) in (".tsv", ".tab") else ","
        rows, rejects = _parse_delimited(path, data, delimiter, _generic_mapper(label_column),
                                         label_column=label_column)
    return {r[ID]: r.get(CLICK) for r in rows}, rejects


def _rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    names: dict[str, None] = {ID: None}
    for row in rows:
        names.update(dict.fromkeys(row))
    return pa.table({n: pa.array([r.get(n) for r in rows], KNOWN.get(n, pa.string())) for n in names})


def _ordered(table: pa.Table, extras_order: list[str]) -> pa.Table:
    known = [f.name for f in LOG_SCHEMA if f.name in table.column_names]
    return table.select(known + [n for n in extras_order if n in table.column_names and n not in KNOWN])


def read_logs(path: str, fmt: str = "auto", label_column: str | None = None,
              outcomes: str | None = None) -> ReadResult:
    """Read ad logs from a file, a folder (its log files, sorted) or a URI into LOG_SCHEMA rows.

    `fmt`: one of `FORMATS`; `auto` decides per file (`detect_format`) and skips files that are not
    logs (e.g. `SOURCE.md`). `label_column`: the click column of a generic CSV/TSV/JSONL/parquet
    (renamed to `click`, values coerced to 0/1). `outcomes`: for OpenRTB, a CSV/JSONL of `id`
    (`<request.id>:<imp.id>`) and click; a file named `outcomes.*` beside the requests is used too.
    Raises ValueError for an unknown format or a missing label column, FileNotFoundError for a
    missing path.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt: {fmt!r} is not one of {FORMATS}")
    listing = io.list_files(path)
    single = listing == [str(path)]
    files = listing if single else [f for f in listing if _suffix(f) in _SUFFIXES[fmt]]
    tables, rejects, read, extras = [], [], [], []
    outcome_map: dict[str, Any] | None = None
    outcome_files = [f for f in files if _is_outcomes(f)] if not single else []
    if outcomes is not None:
        outcome_files = [outcomes]
    for outcome_file in outcome_files:
        found, bad = _load_outcomes(outcome_file, label_column)
        outcome_map = {**(outcome_map or {}), **found}
        rejects += bad
    for file in files:
        if file in outcome_files:
            continue
        data = io.read_bytes(file)
        kind = detect_format(file, data[:65536]) if fmt == "auto" else fmt
        if kind is None:
            if single:
                raise ValueError(f"{file}: cannot tell the log format from the name; pass fmt")
            log.info("skipping %s: not a log file", file)
            continue
        read.append(file)
        if kind == "parquet":
            table, bad = _read_parquet(file, label_column)
        else:
            if kind == "openrtb":
                rows, bad = _parse_openrtb(file, data, outcome_map)
            elif kind == "jsonl":
                rows, bad = _parse_jsonl(file, data, label_column)
            elif kind in ("criteo", "avazu"):
                delimiter = "\t" if "\t" in data[:65536].split(b"\n", 1)[0].decode("utf-8", "replace") else ","
                first = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(delimiter)
                header = None if kind == "avazu" or first[0].strip() == "label" else CRITEO_HEADER
                mapper = _criteo_row if kind == "criteo" else _avazu_row
                rows, bad = _parse_delimited(file, data, delimiter, mapper, header)
            else:
                rows, bad = _parse_delimited(file, data, "\t" if kind == "tsv" else ",",
                                             _generic_mapper(label_column), label_column=label_column)
            table = _rows_to_table(rows)
        extras += [n for n in table.column_names if n not in KNOWN and n not in extras]
        tables.append(table)
        rejects += bad
    table = (pa.concat_tables(tables, promote_options="default") if tables
             else pa.table({ID: pa.array([], pa.string())}))
    table = _ordered(table, extras)
    reject_table = pa.Table.from_pylist([dict(zip(REJECT_SCHEMA.names, r)) for r in rejects], schema=REJECT_SCHEMA)
    log.info("read %d rows from %d files of %s (%d rejected)", table.num_rows, len(read), path, len(rejects))
    return ReadResult(table=table, rejects=reject_table, files=tuple(read))


def inspect_logs(path: str, fmt: str = "auto", label_column: str | None = None) -> dict[str, Any]:
    """`{rows, clicks, click_rate, rejected, columns, sample_text}` for `distillery data inspect`.

    `clicks`/`click_rate` are null when no row has a known click; `click_rate` is over rows with a
    known click; `sample_text` is the first row's `to_text` (null when there are no rows).
    """
    result = read_logs(path, fmt=fmt, label_column=label_column)
    table = result.table
    clicks = click_rate = None
    if CLICK in table.column_names and table.column(CLICK).null_count < table.num_rows:
        known = table.column(CLICK).drop_null()
        clicks = int(pc.sum(known).as_py() or 0)
        click_rate = clicks / len(known)
    return {
        "rows": table.num_rows,
        "clicks": clicks,
        "click_rate": click_rate,
        "rejected": result.rejects.num_rows,
        "columns": table.column_names,
        "sample_text": to_text(table.slice(0, 1).to_pylist()[0]) if table.num_rows else None,
    }
