"""Ad-log readers: parquet, CSV/TSV, JSON lines, the Criteo and Avazu layouts, OpenRTB bid requests.

    result = read_logs("../shared/data/avazu-deepctr")          # file, folder or URI; format sniffed
    result.table      # LOG_SCHEMA columns the source provides + unknown columns as extra strings
    result.rejects    # id (may be null), source (file:line), reason (names the field)

A log without an `id` column (Criteo, most CSV exports) gets content ids (`parsing.content_id`): the
same impression read twice has one id, so a duplicate is found and rejected downstream, not counted
as a second impression.
    inspect_logs("logs.csv", label_column="clicked")            # rows, clicks, click_rate, ...

A row the reader cannot parse (wrong column count, undecodable bytes, a bad label or number) goes
to `rejects` with a reason; every other row still loads. Whether a parsed row is good enough to
label (`schema.row_problem`) is the labeling job's call, not the reader's.
"""

from __future__ import annotations

import bisect
import itertools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillery import io
from distillery.data.openrtb import request_to_rows, validate_bid_request
from distillery.data.parsing import (
    CRITEO_HEADER,
    KNOWN,
    Parsed,
    Reject,
    RowError,
    as_text,
    avazu_row,
    content_id,
    criteo_row,
    file_stem,
    file_suffix,
    generic_mapper,
    json_documents,
    parse_delimited,
    parse_jsonl,
    typed_value,
)
from distillery.data.schema import CLICK, ID, LOG_SCHEMA
from distillery.data.text import to_text

__all__ = ["FORMATS", "REJECT_SCHEMA", "ReadResult", "read_logs", "inspect_logs", "detect_format"]

log = logging.getLogger(__name__)

FORMATS = ("auto", "parquet", "csv", "tsv", "jsonl", "criteo", "avazu", "openrtb")
REJECT_SCHEMA = pa.schema([pa.field(ID, pa.string()), pa.field("source", pa.string()), pa.field("reason", pa.string())])
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


@dataclass(frozen=True)
class ReadResult:
    """`table`: one row per impression (`id` always, other LOG_SCHEMA columns as provided, extras as
    strings); `rejects`: `REJECT_SCHEMA` rows; `files`: the files read, in order; `file_rows`: how
    many rows of `table` each of them gave (the table holds them in that order)."""

    table: pa.Table
    rejects: pa.Table
    files: tuple[str, ...] = field(default=())
    file_rows: tuple[int, ...] = field(default=())

    def file_of_row(self, position: int) -> str:
        """The file row `position` of `table` was read from."""
        return self.files[bisect.bisect_right(list(itertools.accumulate(self.file_rows)), position)]


def _parse_openrtb(path: str, data: bytes, outcomes: dict[str, Any] | None) -> Parsed:
    """One request per `.json` file (or a JSON array of them), one per line in `.jsonl`."""
    rows, rejects = [], []
    documents = list(json_documents(path, data, whole=file_suffix(path) == ".json"))
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
        bad_imps = set()
        for i, imp in enumerate(request["imp"]):
            mine = [p for p in problems if p.startswith((f"imp[{i}].", f"imp[{i}]:"))]
            if mine:
                imp_id = imp.get(ID) if isinstance(imp, dict) and isinstance(imp.get(ID), str) else None
                bad_imps.add(i)
                rejects.append((f"{rid}:{imp_id}" if imp_id else None, source, "; ".join(mine)))
        good = dict(request, imp=[imp for i, imp in enumerate(request["imp"]) if i not in bad_imps])
        rows += request_to_rows(good, outcomes)  # outcome clicks were coerced to 0/1 when loaded
    return rows, rejects


def _with_content_ids(table: pa.Table) -> pa.Table:
    """`table` (no `id` column) with each row's `content_id` as its id."""
    ids = pa.array([content_id(row) for row in table.to_pylist()], pa.string())
    return table.append_column(ID, ids)


def _read_parquet(path: str, label_column: str | None) -> tuple[pa.Table, list[Reject]]:
    """Known columns cast to LOG_SCHEMA types, the rest to strings; values that will not cast are
    coerced one by one, and rows that still fail are rejected (source `file:row`, rows from 1).
    Without an `id` column ids are content ids, of the typed row (as the text readers make them)."""
    fs, inner = io.filesystem(path)
    table = pq.read_table(inner, filesystem=fs)
    if label_column and label_column != CLICK:
        if label_column not in table.column_names:
            raise ValueError(f"{path}: label column {label_column!r} not found; columns are {table.column_names}")
        names = ["click_original" if n == CLICK else n for n in table.column_names]
        table = table.rename_columns([CLICK if n == label_column else n for n in names])
    derive_ids = ID not in table.column_names
    if derive_ids:  # a placeholder until the row is typed: a content id hashes typed values
        table = table.append_column(ID, pa.nulls(table.num_rows, pa.string()))
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
                values.append(typed_value(name, value, source_name) if name in KNOWN else as_text(value))
            except RowError as err:
                bad.setdefault(i, str(err))
                values.append(None)
        columns[name] = pa.array(values, typ)
    table = pa.table(columns)
    if derive_ids:
        table = _with_content_ids(table.drop_columns([ID])).select(table.column_names)
    missing_id = pc.is_null(table.column(ID)).to_pylist()
    bad.update({i: f"{ID}: missing" for i, m in enumerate(missing_id) if m and i not in bad})
    # a rejected row's content is not what was read (its bad values are gone): its source names it
    rejects = [(None if derive_ids else table.column(ID)[i].as_py(), f"{path}:{i + 1}", reason)
               for i, reason in sorted(bad.items())]
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
    ext = file_suffix(path)
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


def _head(path: str, size: int = 65536) -> bytes:
    """The first `size` bytes (decompressed when the name says .gz etc.), enough to sniff a header."""
    fs, inner = io.filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read(size)


def _is_outcomes(path: str) -> bool:
    return file_stem(path) == "outcomes" or file_stem(path).endswith(".outcomes")


def _load_outcomes(path: str, label_column: str | None) -> tuple[dict[str, Any], list[Reject]]:
    """`id` (`<request.id>:<imp.id>`) -> click, from a CSV/TSV/JSON-lines file with `id` and a click column."""
    data = io.read_bytes(path)
    if file_suffix(path) in (".jsonl", ".ndjson", ".json"):
        rows, rejects = parse_jsonl(path, data, label_column)
    else:
        delimiter = "\t" if file_suffix(path) in (".tsv", ".tab") else ","
        rows, rejects = parse_delimited(path, data, delimiter, generic_mapper(label_column),
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


def _read_file(file: str, kind: str, label_column: str | None, outcomes: dict[str, Any] | None
               ) -> tuple[pa.Table, list[Reject]]:
    if kind == "parquet":
        return _read_parquet(file, label_column)
    data = io.read_bytes(file)
    if kind == "openrtb":
        rows, rejects = _parse_openrtb(file, data, outcomes)
    elif kind == "jsonl":
        rows, rejects = parse_jsonl(file, data, label_column)
    elif kind in ("criteo", "avazu"):
        first = data.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff")
        delimiter = "\t" if "\t" in first else ","
        # Kaggle's Criteo train.txt has no header row; DeepCTR's sample and Avazu have one
        header = CRITEO_HEADER if kind == "criteo" and first.split(delimiter)[0].strip() != "label" else None
        rows, rejects = parse_delimited(file, data, delimiter, criteo_row if kind == "criteo" else avazu_row, header)
    else:
        rows, rejects = parse_delimited(file, data, "\t" if kind == "tsv" else ",", generic_mapper(label_column),
                                        label_column=label_column)
    return _rows_to_table(rows), rejects


def read_logs(path: str, fmt: str = "auto", label_column: str | None = None,
              outcomes: str | None = None) -> ReadResult:
    """Read ad logs from a file, a folder (its log files, sorted) or a URI into LOG_SCHEMA rows.

    `fmt`: one of `FORMATS`; `auto` decides per file (`detect_format`) and, in a folder, skips files
    that are not logs (e.g. `SOURCE.md`). `label_column`: the click column of a generic
    CSV/TSV/JSONL/parquet or of an outcomes file (renamed to `click`, values coerced to 0/1).
    `outcomes`: for OpenRTB, a CSV/TSV/JSONL of `id` (`<request.id>:<imp.id>`) and click; with fmt
    `auto`/`openrtb` a file named `outcomes.*` in the folder is used the same way. Rows without an
    `id` get their content id (`parsing.content_id`), wherever the file lies or however it is named.
    Files or folders whose name starts with `_` or `.` are skipped. Raises ValueError
    for an unknown format or a missing label column, FileNotFoundError for a missing path.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt: {fmt!r} is not one of {FORMATS}")
    listing = io.list_files(path)
    single = listing == [str(path)]
    files = listing if single else [f for f in listing if file_suffix(f) in _SUFFIXES[fmt]]
    outcome_files = [f for f in files if _is_outcomes(f)] if not single and fmt in ("auto", "openrtb") else []
    if outcomes is not None:
        outcome_files = [outcomes]
    rejects: list[Reject] = []
    outcome_map: dict[str, Any] | None = None
    for outcome_file in outcome_files:
        found, bad = _load_outcomes(outcome_file, label_column)
        outcome_map = {**(outcome_map or {}), **found}
        rejects += bad
    tables, read, extras, file_rows = [], [], [], []
    for file in files:
        if file in outcome_files:
            continue
        kind = fmt
        if fmt == "auto":
            kind = detect_format(file, _head(file))
        if kind is None:
            if single:
                raise ValueError(f"{file}: cannot tell the log format from the name; pass fmt")
            log.info("skipping %s: not a log file", file)
            continue
        table, bad = _read_file(file, kind, label_column, outcome_map)
        read.append(file)
        file_rows.append(table.num_rows)
        extras += [n for n in table.column_names if n not in KNOWN and n not in extras]
        tables.append(table)
        rejects += bad
    table = (pa.concat_tables(tables, promote_options="default") if tables
             else pa.table({ID: pa.array([], pa.string())}))
    table = _ordered(table, extras)
    reject_table = pa.Table.from_pylist([dict(zip(REJECT_SCHEMA.names, r)) for r in rejects], schema=REJECT_SCHEMA)
    log.info("read %d rows from %d files of %s (%d rejected)", table.num_rows, len(read), path, len(rejects))
    return ReadResult(table=table, rejects=reject_table, files=tuple(read), file_rows=tuple(file_rows))


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
