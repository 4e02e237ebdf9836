"""Training rows one input file at a time: the rules of `training.data`, with memory bounded by a file.

    inputs, selection = plan_inputs("runs/demo", DataSection(stream=True), loss="joint")
    for table in file_rows(inputs[0], selection, part="train"):   # pyarrow tables of ≤ block_rows rows
        ...                                                     # id, text, split, target, teacher_prob, click
    counts = count_rows(inputs[0], selection)                   # what a pass over the file would keep

The same rules as the in-memory table (`build_training_table`), applied per file so that no task
holds more than one input file and its own label file:
- labels: a data file's labels are its own committed label file (`label_store.label_file_key`; the
  labeling job gives each input file one), so the join is per file. Labeling owns an id at its first
  row in input order and rejects every later row with it, in the same file or another: a later row
  has no label in its own file's labels and is skipped, as the in-memory table skips it. A labels
  folder without a manifest (hand-made labels) has no such mapping: each file then reads every label
  file, keeping the rows of its own ids (I/O grows with files × labels; memory stays one file's);
- within a file the first row with an id owns it; for the click loss (no labels) an id repeated in
  another file is trained once per file (the in-memory table keeps the first only);
- clicks of a hidden split are not even read from the file unless `reveal_hidden_clicks`;
- `kept=false` and unlabelled rows are skipped and counted, as are rows without a click (click loss);
- validation rows are chosen by `is_validation_id` (crc32 of the id), so every model is validated
  on the same rows; the validation *sample* scored each epoch is the held-out rows whose hash also
  falls under a cut sized for `streaming.val_max_rows` over the rows in the input files (parquet
  footers), the same for every model trained on the same files;
- hard targets in `sample` mode draw y ~ Bernoulli(p) from a hash of (seed, id): the same draw
  whichever worker, file order or epoch reads the row.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from distillery import io
from distillery.data.schema import CLICK, ID
from distillery.data.text import is_text_column, table_texts
from distillery.label_store import committed_label_files, label_file_key
from distillery.training.data import DataSection, LossTarget

__all__ = ["FileInput", "Selection", "plan_inputs", "streams", "file_rows", "count_rows", "id_hashes", "ROW_SCHEMA", "COUNT_KEYS"]

HASH_RANGE = 1_000_000  # `is_validation_id`'s range
Part = Literal["train", "val", "head"]

ROW_SCHEMA = pa.schema([
    pa.field(ID, pa.string()), pa.field("text", pa.string()), pa.field("split", pa.string()),
    pa.field("target", pa.float32()), pa.field("teacher_prob", pa.float32()), pa.field("click", pa.float32()),
])
COUNT_KEYS = ("rows_read", "rows_duplicate_id", "rows_no_label", "rows_not_kept", "rows_no_click", "rows_used",
              "rows_val", "rows_train", "rows_val_sample", "target_sum", "target_known")


@dataclass(frozen=True)
class FileInput:
    """One data file and where its labels are."""

    split: str
    path: str
    rows: int                           # rows in the file (its parquet footer)
    max_rows: int | None = None         # read at most this many (data.max_rows_per_split, spread over files)
    labels: tuple[str, ...] = ()        # label files to look its ids up in (its own, or every file without a manifest)
    label_rows: int | None = None       # rows its own committed label file must hold
    hidden: bool = False                # clicks hidden: the column is not read


@dataclass(frozen=True)
class Selection:
    """How rows become targets and which part a row belongs to (the same for every file)."""

    loss: LossTarget
    needs_labels: bool
    val_fraction: float
    val_cut: int                 # held-out rows with hash < val_cut form the validation sample
    head_cut: int                # training rows with head hash < head_cut form the head-start sample
    hard_mode: str = "sample"
    hard_threshold: float = 0.5
    seed: int = 0
    block_rows: int = 1024
    notes: dict = field(default_factory=dict)


def _data_files(run_dir: str, split: str) -> list[str]:
    path = io.join(run_dir, "data", split)
    files = io.list_files(path, suffixes=(".parquet",))
    if not files:
        raise FileNotFoundError(f"{path}: no parquet files")
    return files


def _footer_rows(path: str) -> int:
    fs, p = io.filesystem(path)
    with fs.open_input_file(p) as f:
        return pq.ParquetFile(f).metadata.num_rows


def plan_inputs(run_dir: str, cfg: DataSection, loss: LossTarget) -> tuple[list[FileInput], Selection]:
    """Every data file of `cfg.splits` (splits in order, files sorted) with its labels, and the selection rules."""
    needs_labels = loss != "click"
    labels_dir = cfg.labels_dir or io.join(run_dir, "labels")
    committed = committed_label_files(labels_dir) if needs_labels else None
    every_label_file = tuple(io.list_files(labels_dir, suffixes=(".parquet",))) if needs_labels and committed is None else ()
    own = dict(committed or [])
    inputs: list[FileInput] = []
    for split in cfg.splits:
        hidden = split in cfg.hidden_click_splits and not cfg.reveal_hidden_clicks
        left = cfg.max_rows_per_split
        for path in _data_files(run_dir, split):
            if left is not None and left <= 0:
                break
            rows = _footer_rows(path)
            labels, label_rows = every_label_file, None
            if committed is not None:
                mine = io.join(labels_dir, label_file_key(path, run_dir) + ".parquet")
                labels, label_rows = ((mine,), own[mine]) if mine in own else ((), None)
            inputs.append(FileInput(split, path, rows, left, labels, label_rows, hidden))
            left = None if left is None else left - rows
    if committed is not None and not any(i.labels for i in inputs):
        raise ValueError(f"data.labels_dir: {labels_dir} holds committed labels, but none for the files of splits "
                         f"{cfg.splits} (label_store.label_file_key): label these inputs, or set data.stream=false")
    s = cfg.streaming
    total = sum(min(i.rows, i.max_rows) if i.max_rows is not None else i.rows for i in inputs)
    val_cut = int(cfg.val_fraction * HASH_RANGE * min(1.0, s.val_max_rows / max(1.0, cfg.val_fraction * total)))
    head_cut = int(HASH_RANGE * min(1.0, s.head_rows / max(1, total)))
    notes = {"input_files": len(inputs), "rows_in_files": total,
             "labels": "per file" if committed is not None else ("every file" if needs_labels else "none")}
    return inputs, Selection(loss, needs_labels, cfg.val_fraction, val_cut, head_cut, cfg.hard_mode,
                             cfg.hard_threshold, cfg.seed, s.block_rows, notes)


def streams(run_dir: str, cfg: DataSection) -> tuple[bool, str]:
    """(stream the rows?, why) for `cfg.stream`: as set, or with `auto` by the rows in the input files."""
    if cfg.stream != "auto":
        return bool(cfg.stream), f"data.stream={str(cfg.stream).lower()}"
    rows = 0
    for split in cfg.splits:
        in_split = sum(_footer_rows(path) for path in _data_files(run_dir, split))
        rows += in_split if cfg.max_rows_per_split is None else min(in_split, cfg.max_rows_per_split)
    big = rows > cfg.stream_above_rows
    return big, (f"data.stream=auto: {rows} rows in the input files, {'above' if big else 'not above'} "
                 f"data.stream_above_rows={cfg.stream_above_rows}")


def id_hashes(ids: list[str], salt: bytes = b"") -> np.ndarray:
    """`(n,)` int64 in [0, HASH_RANGE): crc32 of each id (with a salt for an independent draw);
    unsalted, `h < fraction * HASH_RANGE` is `training.data.is_validation_id`."""
    return np.fromiter((zlib.crc32(salt + i.encode()) % HASH_RANGE for i in ids), dtype=np.int64, count=len(ids))


def _read_columns(inp: FileInput, with_text: bool) -> list[str]:
    fs, p = io.filesystem(inp.path)
    names = pq.read_schema(p, filesystem=fs).names
    if ID not in names:
        raise ValueError(f"{inp.path}: no {ID!r} column")
    # Never a hidden click: the column is left in the file.
    keep = [ID] + ([CLICK] if CLICK in names and not inp.hidden else [])
    return keep + ([n for n in names if is_text_column(n) and n not in keep] if with_text else [])


def _batches(inp: FileInput, columns: list[str], block_rows: int) -> Iterator[pa.Table]:
    fs, p = io.filesystem(inp.path)
    left = inp.max_rows
    with fs.open_input_file(p) as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=block_rows, columns=columns):
            table = pa.Table.from_batches([batch])
            if left is not None:
                table = table.slice(0, left)
                left -= table.num_rows
            if table.num_rows:
                yield table
            if left is not None and left <= 0:
                return


def _label_lookup(inp: FileInput, ids: pa.Array | None) -> pa.Table | None:
    """`id, teacher_prob, kept` of the file's labels (its own file whole; else every label file's rows of `ids`)."""
    if not inp.labels:
        return None
    parts = []
    for path in inp.labels:
        fs, p = io.filesystem(path)
        own = inp.label_rows is not None
        t = pq.read_table(p, filesystem=fs, columns=[ID, "teacher_prob", "kept"],
                          filters=None if own else pc.field(ID).isin(ids))
        if own and t.num_rows != inp.label_rows:
            raise ValueError(f"{path}: {t.num_rows} rows, but the labeling manifest says {inp.label_rows}: the file "
                             "changed after the run that committed it; re-run labeling")
        parts.append(t)
    table = pa.concat_tables(parts)
    if pc.count_distinct(table[ID]).as_py() != table.num_rows:
        raise ValueError(f"labels of {inp.path}: duplicate id(s) (exactly-once broken)")
    return table


def _file_ids(inp: FileInput, block_rows: int) -> pa.Array:
    return pa.concat_arrays([t[ID].combine_chunks() for t in _batches(inp, [ID], block_rows)] or [pa.array([], pa.string())])


def _as_float(column, n: int) -> np.ndarray:
    if column is None:
        return np.full(n, np.nan, dtype=np.float32)
    return np.asarray(column.cast(pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)


def _targets(sel: Selection, ids: list[str], teacher_prob: np.ndarray, click: np.ndarray) -> np.ndarray:
    if sel.loss == "click":
        return click.copy()
    if sel.loss == "hard":
        if sel.hard_mode == "threshold":
            return (teacher_prob >= sel.hard_threshold).astype(np.float32)
        u = id_hashes(ids, f"hard:{sel.seed}:".encode()) / HASH_RANGE
        return (u < teacher_prob).astype(np.float32)
    return teacher_prob.copy()


def _selected(inp: FileInput, sel: Selection, with_text: bool, counts: dict[str, float]) -> Iterator[tuple[pa.Table, np.ndarray]]:
    """(rows that train or validate, their id hash) per block of the file, after every rule; `counts` filled in."""
    labels = _label_lookup(inp, _file_ids(inp, sel.block_rows) if inp.labels and inp.label_rows is None else None)
    label_ids = labels[ID] if labels is not None else None
    seen: set[str] = set()
    for table in _batches(inp, _read_columns(inp, with_text), sel.block_rows):
        counts["rows_read"] += table.num_rows
        first = []
        for rid in table[ID].to_pylist():
            first.append(rid not in seen)
            seen.add(rid)
        kept = table.filter(pa.array(first, pa.bool_()))
        counts["rows_duplicate_id"] += table.num_rows - kept.num_rows
        table, teacher_prob = kept, None
        if sel.needs_labels:
            if labels is None:
                counts["rows_no_label"] += table.num_rows
                continue
            at = pc.index_in(table[ID], value_set=label_ids)
            has = pc.is_valid(at)
            ok = pc.and_(has, pc.fill_null(pc.take(labels["kept"], at), False))
            counts["rows_no_label"] += table.num_rows - (pc.sum(has.cast(pa.int64())).as_py() or 0)
            counts["rows_not_kept"] += (pc.sum(has.cast(pa.int64())).as_py() or 0) - (pc.sum(ok.cast(pa.int64())).as_py() or 0)
            table = table.filter(ok)
            teacher_prob = pc.take(labels["teacher_prob"], pc.filter(at, ok))
        if sel.loss == "click":
            if CLICK not in table.column_names:
                raise ValueError(f"data.splits: split {inp.split!r} has hidden clicks; the click loss needs "
                                 "data.reveal_hidden_clicks=true (strict comparison) or another split")
            valid = pc.is_valid(table[CLICK])
            counts["rows_no_click"] += table.num_rows - (pc.sum(valid.cast(pa.int64())).as_py() or 0)
            if teacher_prob is not None:
                teacher_prob = pc.filter(teacher_prob, valid)
            table = table.filter(valid)
        if table.num_rows:
            yield table.append_column("_teacher_prob", pa.array(_as_float(teacher_prob, table.num_rows))), id_hashes(table[ID].to_pylist())


def _part_mask(sel: Selection, table: pa.Table, h: np.ndarray, part: Part) -> np.ndarray:
    held_out = h < sel.val_fraction * HASH_RANGE
    if part == "val":
        return held_out & (h < sel.val_cut)
    if part == "head":
        return ~held_out & (id_hashes(table[ID].to_pylist(), b"head:") < sel.head_cut)
    return ~held_out


def file_rows(inp: FileInput, sel: Selection, part: Part = "train") -> Iterator[pa.Table]:
    """The file's rows of `part` (`train`: not held out; `val`: the validation sample; `head`: the
    head-start sample of training rows), as `ROW_SCHEMA` tables of at most `block_rows` rows."""
    counts = dict.fromkeys(COUNT_KEYS, 0.0)
    for table, h in _selected(inp, sel, True, counts):
        table = table.filter(pa.array(_part_mask(sel, table, h, part)))
        if not table.num_rows:
            continue
        n = table.num_rows
        ids = table[ID].to_pylist()
        teacher_prob = _as_float(table["_teacher_prob"], n)
        click = _as_float(table[CLICK] if CLICK in table.column_names else None, n)
        yield pa.table({
            ID: table[ID], "text": pa.array(table_texts(table.drop_columns(["_teacher_prob"])), pa.string()),
            "split": pa.array([inp.split] * n, pa.string()), "target": _targets(sel, ids, teacher_prob, click),
            "teacher_prob": teacher_prob, "click": click,
        }, schema=ROW_SCHEMA)


def count_rows(inp: FileInput, sel: Selection) -> dict[str, float]:
    """What `file_rows` would keep, without rendering a text: the `build_training_table` counts plus
    `rows_train`, `rows_val_sample` and the training targets' sum and count (`target_sum`, `target_known`)."""
    counts = dict.fromkeys(COUNT_KEYS, 0.0)
    for table, h in _selected(inp, sel, False, counts):
        counts["rows_used"] += table.num_rows
        val = _part_mask(sel, table, h, "val")
        train = _part_mask(sel, table, h, "train")
        counts["rows_val"] += int((~train).sum())
        counts["rows_val_sample"] += int(val.sum())
        counts["rows_train"] += int(train.sum())
        n = table.num_rows
        click = _as_float(table[CLICK] if CLICK in table.column_names else None, n)
        target = _targets(sel, table[ID].to_pylist(), _as_float(table["_teacher_prob"], n), click)
        prior = table["_teacher_prob"].to_numpy() if sel.loss == "joint" else target
        prior = np.asarray(prior, dtype=np.float64)[train]
        known = np.isfinite(prior)
        counts["target_sum"] += float(prior[known].sum())
        counts["target_known"] += int(known.sum())
    return counts
