"""`distillery data split`: your own ad log → `<out>/{train,unlabeled,test}/*.parquet`, in time order.

    distillery data split logs/impressions.csv --out runs/mine/data --time-column timestamp --json
    split_logs(LogsConfig(path="logs/impressions.csv", time_column="timestamp"), "runs/mine/data")

The log is read with `readers.read_logs` (any supported format) and cut into three consecutive
parts: `train` (the oldest `fractions[0]` of rows, clicks known), `unlabeled` (the next ones; its
clicks are kept in the file but hidden from teacher and student, the same rule as the synthetic
generator's unlabeled split, enforced by `training.data.DataSection.hidden_click_splits`) and `test`
(the newest). A model is trained on the past and judged on the future.

- Time order: by `time_column` (default: `ts` when the reader produced it, as for Avazu and OpenRTB,
  else the first column named timestamp/time/datetime/event_time/date); ties and logs without a
  time column keep file/row order. The parsed time is written as `ts` (unix seconds, never model
  text); the source column itself stays in the row, so a served row in the log's own columns
  renders the same `to_text` that training read. Unix seconds, milliseconds, microseconds and
  nanoseconds and ISO-8601 strings are understood; naive times are UTC.
- Rejects: rows the reader cannot parse, and rows whose time is missing or unparseable, go to
  `<out>/_rejects/rejects.parquet` (`id, source, reason`) and are counted; every input row ends in
  exactly one split or the rejects.
- Duplicates: a later row with the id of an earlier one (a log without ids: the same content, see
  `parsing.content_id`) goes to the rejects, naming the file where the id was first seen; the
  first row keeps it.
- Row-number index columns (`schema.is_index_column`: a pandas index) are dropped.
- `<out>/_SPLIT.json` holds the summary (`--json` prints it).
- Written aside, then swapped in: everything goes to a hidden sibling folder (`.<out name>.split-new-*`),
  which replaces `<out>` by rename at the end, so a failed or killed split leaves the earlier data
  whole (a kill between the two renames of the swap leaves it under `.<out name>.split-old-*`, and
  the next split puts it back first). `<out>` may hold only what a split writes, and may not hold
  the log nor lie inside its folder. On object stores a folder rename is a copy, so the swap there
  moves file by file (not atomic).
"""

from __future__ import annotations

import logging
import math
import os
import posixpath
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from pydantic import Field, field_validator

from distillery import io
from distillery.config import Section
from distillery.data.readers import FORMATS, REJECT_SCHEMA, ReadResult, read_logs
from distillery.data.schema import CLICK, ID, is_index_column

__all__ = ["LogsConfig", "SPLITS", "SUMMARY_FILE", "REJECTS_DIR", "split_logs", "parse_times"]

log = logging.getLogger(__name__)

SPLITS = ("train", "unlabeled", "test")
SUMMARY_FILE = "_SPLIT.json"
REJECTS_DIR = "_rejects"
TS = "ts"
_TIME_NAMES = ("timestamp", "time", "datetime", "event_time", "date")


class LogsConfig(Section):
    """The pipeline's `data` section for your own logs (`source: logs`), and `distillery data split`."""

    source: Literal["logs"] = Field("logs", description="logs: split a log file or folder (synthetic: generate)")
    path: str = Field(..., description="log file, folder or URI (relative paths are from the working directory)")
    format: str = Field("auto", description=f"reader format: one of {'|'.join(FORMATS)}")
    label_column: str | None = Field(None, description="click column of a generic CSV/TSV/JSONL/parquet log (renamed to click)")
    time_column: str | None = Field(None, description="column ordering the splits in time; default ts, else a timestamp/time/... column, else file order")
    fractions: list[float] = Field(default_factory=lambda: [0.5, 0.3, 0.2], description="train, unlabeled, test shares of the rows, in time order")
    files_per_split: int = Field(4, ge=1, description="parquet files per split (units of resumable labeling)")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        if v not in FORMATS:
            raise ValueError(f"unknown format {v!r}; expected one of {list(FORMATS)}")
        return v

    @field_validator("fractions")
    @classmethod
    def _three_shares(cls, v: list[float]) -> list[float]:
        if len(v) != 3:
            raise ValueError(f"expected 3 fractions (train, unlabeled, test), got {len(v)}")
        if any(not math.isfinite(f) or f < 0 for f in v):
            raise ValueError(f"fractions must be finite and >= 0, got {v}")
        if abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"fractions must sum to 1, got {v} (sum {sum(v):g})")
        if v[0] <= 0 or v[2] <= 0:
            raise ValueError(f"train and test fractions must be > 0, got {v}")
        return v


# ---------------------------------------------------------------- time


def _seconds(number: float) -> int:
    """Unix time in s, ms, µs or ns → seconds (a 2001–2286 date in seconds is < 1e10)."""
    magnitude = abs(number)
    scale = 1e9 if magnitude >= 1e17 else 1e6 if magnitude >= 1e14 else 1e3 if magnitude >= 1e11 else 1
    return int(number // scale)


def _parse_time(value: Any) -> int:
    if isinstance(value, datetime):
        when = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return int(when.timestamp())
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(value)
        return _seconds(value)
    text = str(value).strip()
    try:
        return _seconds(float(text)) if text.lstrip("-").replace(".", "", 1).isdigit() else _parse_time(
            datetime.fromisoformat(text.replace("Z", "+00:00")))
    except (ValueError, OverflowError):
        raise ValueError(value) from None


def parse_times(values: list[Any], name: str) -> tuple[list[int | None], dict[int, str]]:
    """(unix seconds per value, {position: reason naming `name`} for values that are not a time)."""
    out: list[int | None] = []
    bad: dict[int, str] = {}
    for i, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            bad[i] = f"{name}: missing time"
            out.append(None)
            continue
        try:
            out.append(_parse_time(value))
        except (ValueError, TypeError):
            bad[i] = f"{name}: expected a unix time or ISO-8601 date, got {str(value)[:40]!r}"
            out.append(None)
    return out, bad


def _time_column(table: pa.Table, requested: str | None) -> str | None:
    if requested is not None:
        if requested not in table.column_names:
            raise ValueError(f"time_column: {requested!r} is not a column of the log; columns are {table.column_names}")
        return requested
    if TS in table.column_names and table.column(TS).null_count < table.num_rows:
        return TS
    lower = {n.lower(): n for n in table.column_names}
    return next((lower[n] for n in _TIME_NAMES if n in lower), None)


# ---------------------------------------------------------------- split


def _iso(seconds: int | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_split(table: pa.Table, folder: str, files: int) -> int:
    io.makedirs(folder)
    parts = max(1, min(files, table.num_rows))
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    for p in range(parts):
        io.write_parquet(table.slice(bounds[p], bounds[p + 1] - bounds[p]), io.join(folder, f"part-{p:05d}.parquet"))
    return parts


def _reject_duplicates(result: ReadResult) -> tuple[pa.Table, list[dict[str, Any]]]:
    """The log's rows without later repeats of an id (file order: the first row owns it), and a
    reject for each repeat naming the file where its id was first seen."""
    first: dict[str, int] = {}
    keep, rejects = [], []
    for i, rid in enumerate(result.table.column(ID).to_pylist()):
        keep.append(rid not in first)
        if keep[-1]:
            first[rid] = i
        else:
            rejects.append({ID: rid, "source": result.file_of_row(i), "reason": (
                f"{ID}: duplicate of an earlier row in {result.file_of_row(first[rid])} (the first row with an id owns it)")})
    return (result.table.filter(pa.array(keep)) if rejects else result.table), rejects


# ---------------------------------------------------------------- write aside, then swap

_OWNED = frozenset({*SPLITS, REJECTS_DIR, SUMMARY_FILE})  # all a split writes under <out>


def _real(path: str) -> str:
    return str(path).rstrip("/") if "://" in str(path) else os.path.realpath(path)


def _parent_and_name(path: str) -> tuple[str, str]:
    real = _real(path)
    return real.rsplit("/", 1) if "://" in real else (os.path.dirname(real), os.path.basename(real))


def _children(folder: str) -> list[str]:
    """Names directly under `folder` ([] when it does not exist)."""
    fs, p = io.filesystem(folder)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(p)))


def _check_out(log_path: str, out_dir: str) -> None:
    """Refuse an `out_dir` whose replacement would delete the log or files a split does not write,
    or that lies inside the log's folder (the next read would take the split's parts for logs)."""
    log_real, out = _real(log_path), _real(out_dir)
    if log_real == out or log_real.startswith(out + "/"):
        raise ValueError(f"out: {out_dir} holds the log {log_path}; a split replaces its output folder whole, "
                         "which would delete the log: choose a folder outside it (e.g. runs/<name>/data)")
    fs, p = io.filesystem(log_path)
    if fs.get_file_info(p).type == pafs.FileType.Directory and out.startswith(log_real + "/"):
        raise ValueError(f"out: {out_dir} lies inside the log folder {log_path}; the next read of the logs would "
                         "take the split's own files for logs: choose a folder outside it")
    extra = [n for n in _children(out_dir) if n not in _OWNED]
    if extra:
        raise ValueError(f"out: {out_dir} holds {extra[:5]}, which a split does not write; a split replaces its "
                         "output folder whole: choose an empty folder or one an earlier split wrote")


def _aside(out_dir: str, kind: str) -> list[str]:
    """Hidden siblings of `out_dir` a split made: `new` (staging) or `old` (moved aside by a swap)."""
    parent, name = _parent_and_name(out_dir)
    prefix = f".{name}.split-{kind}-"
    return [io.join(parent, n) for n in _children(parent) if n.startswith(prefix)]


def _move(src: str, dst: str) -> None:
    """Rename a folder (local: atomic); on object stores, file by file."""
    fs, p = io.filesystem(src)
    _, q = io.filesystem(dst)
    if isinstance(fs, pafs.LocalFileSystem):
        os.rename(p, q)
        return
    for f in fs.get_file_info(pafs.FileSelector(p, recursive=True)):
        if f.type == pafs.FileType.File:
            fs.create_dir(posixpath.dirname(q + f.path[len(p):]), recursive=True)
            fs.move(f.path, q + f.path[len(p):])
    fs.delete_dir(p)


def _recover(out_dir: str) -> None:
    """Undo a killed split: the folder a killed swap moved aside goes back, unfinished staging goes."""
    old = _aside(out_dir, "old")
    if old and not io.exists(out_dir):
        log.warning("%s: restoring the data a killed split had moved aside (%s)", out_dir, old[0])
        _move(old[0], out_dir)
    for leftover in _aside(out_dir, "new") + _aside(out_dir, "old"):
        io.remove_dir(leftover)


def _swap_in(staging: str, out_dir: str) -> None:
    """`staging` becomes `out_dir`; the earlier `out_dir` is moved aside, then deleted."""
    parent, name = _parent_and_name(out_dir)
    if io.exists(out_dir):
        old = io.join(parent, f".{name}.split-old-{uuid.uuid4().hex[:8]}")
        _move(out_dir, old)
        _move(staging, out_dir)
        io.remove_dir(old)
    else:
        _move(staging, out_dir)


def _summary(table: pa.Table, files: int, timed: bool) -> dict[str, Any]:
    clicks = None
    if CLICK in table.column_names and table.column(CLICK).null_count < table.num_rows:
        clicks = int(pc.sum(table.column(CLICK)).as_py() or 0)
    known = table.num_rows - (table.column(CLICK).null_count if CLICK in table.column_names else table.num_rows)
    out: dict[str, Any] = {"rows": table.num_rows, "clicks": clicks,
                           "click_rate": clicks / known if clicks is not None and known else None, "files": files}
    if timed and table.num_rows:
        lo, hi = pc.min(table.column(TS)).as_py(), pc.max(table.column(TS)).as_py()
        out["time_range"] = [_iso(lo), _iso(hi)]
    else:
        out["time_range"] = None
    return out


def split_logs(cfg: LogsConfig, out_dir: str, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read `cfg.path`, write `out_dir/{train,unlabeled,test}/part-NNNNN.parquet`, `_rejects/` and
    `_SPLIT.json`; return the summary: per split `{rows, clicks, click_rate, files, time_range}`,
    `rows_read`, `rejected`, `reject_reasons`, `columns`, `dropped_columns`, `time_column`, `order`.
    `progress`: where the progress lines go (default: stdout)."""
    say = progress or (lambda line: print(line, flush=True))
    t0 = time.perf_counter()
    _check_out(cfg.path, out_dir)
    _recover(out_dir)
    say(f"[split] reading {cfg.path} (format {cfg.format})")
    result = read_logs(cfg.path, fmt=cfg.format, label_column=cfg.label_column)
    rejects = result.rejects.to_pylist()
    rows_read = result.table.num_rows + len(rejects)
    table, duplicates = _reject_duplicates(result)
    rejects += duplicates
    say(f"[split] {rows_read} rows in {len(result.files)} file(s): {result.rejects.num_rows} rejected by the reader, "
        f"{len(duplicates)} duplicates ({time.perf_counter() - t0:.1f}s)")
    parent, name = _parent_and_name(out_dir)
    staging = io.join(parent, f".{name}.split-new-{uuid.uuid4().hex[:8]}")
    try:
        summary = _split_into(cfg, result, table, rejects, rows_read, staging, say)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        io.write_json(io.join(staging, SUMMARY_FILE), summary)
        _swap_in(staging, out_dir)
    finally:
        io.remove_dir(staging)
    return summary


def _split_into(cfg: LogsConfig, result: ReadResult, table: pa.Table, rejects: list[dict[str, Any]],
                rows_read: int, out_dir: str, say: Callable[[str], None]) -> dict[str, Any]:
    """Order `table` in time, write the three splits and the rejects under `out_dir`; the summary."""
    dropped = {n: "row-number index column" for n in table.column_names if is_index_column(n)}
    table = table.drop_columns(list(dropped))
    time_column = _time_column(table, cfg.time_column)
    if time_column is not None:
        seconds, bad = parse_times(table.column(time_column).to_pylist(), time_column)
        if bad:
            ids = table.column(ID).to_pylist()
            rejects += [{ID: ids[i], "source": str(cfg.path), "reason": reason} for i, reason in sorted(bad.items())]
            keep = pa.array([i not in bad for i in range(table.num_rows)])
            table, seconds = table.filter(keep), [s for i, s in enumerate(seconds) if i not in bad]
        ts = pa.array(seconds, pa.int64())
        table = table.set_column(table.column_names.index(TS), TS, ts) if TS in table.column_names \
            else table.add_column(1, TS, ts)
        order = pc.sort_indices(pa.table({TS: ts, "_pos": pa.array(np.arange(len(ts)))}),
                                sort_keys=[(TS, "ascending"), ("_pos", "ascending")])
        table = table.take(order)
    n = table.num_rows
    n_train = int(round(n * cfg.fractions[0]))
    n_unlabeled = min(int(round(n * cfg.fractions[1])), n - n_train)
    n_test = n - n_train - n_unlabeled
    if n_train == 0 or n_test == 0:
        raise ValueError(f"{cfg.path}: {n} usable rows cannot fill train and test at fractions {cfg.fractions}")
    summary: dict[str, Any] = {"source": str(cfg.path), "format": cfg.format, "files_read": list(result.files),
                               "rows_read": rows_read, "rejected": len(rejects)}
    bounds = {"train": (0, n_train), "unlabeled": (n_train, n_unlabeled), "test": (n_train + n_unlabeled, n_test)}
    for split in SPLITS:
        part = table.slice(*bounds[split])
        files = _write_split(part, io.join(out_dir, split), cfg.files_per_split)
        summary[split] = _summary(part, files, time_column is not None)
        say(f"[split] {split}: {part.num_rows} rows, {summary[split]['clicks']} clicks, {files} file(s)")
    reasons: dict[str, int] = {}
    for r in rejects:
        key = str(r.get("reason") or "unreadable row").split(" (", 1)[0][:80]
        reasons[key] = reasons.get(key, 0) + 1
    reject_dir = io.join(out_dir, REJECTS_DIR)
    if rejects:
        io.makedirs(reject_dir)
        io.write_parquet(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), io.join(reject_dir, "rejects.parquet"))
    summary.update(
        reject_reasons=dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        columns=table.column_names, dropped_columns=dropped, time_column=time_column,
        order="time" if time_column is not None else "file",
        hidden_click_splits=["unlabeled"], fractions=cfg.fractions,
    )
    if n + len(rejects) != rows_read:  # every input row lands exactly once
        raise RuntimeError(f"split lost rows: {n} written + {len(rejects)} rejected != {rows_read} read")
    return summary
