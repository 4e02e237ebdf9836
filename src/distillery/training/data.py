"""The training table: ad-log rows joined with teacher labels on `id`, one target per row.

    table = build_training_table("runs/demo", DataSection(splits=["train", "unlabeled"]), loss="soft")

Rules, the same for the teacher fine-tune, the distilled student and `student_direct`:
- logs come from `<run_dir>/data/<split>/*.parquet`, and a row's text is `to_text` of all its columns
  (`data.text.table_texts`), the very string labeling gave the teacher; labels from the files a finished labeling run
  lists in `<labels>/_MANIFEST.json` (never `_rejects/`, `_staging/` or stale outputs; a labeling run
  that has not finished is an error), or every visible `*.parquet` of a folder without a manifest;
- an id is used once: the first row carrying it (splits in order, files sorted, rows in file order:
  the order labeling gives ids to rows) owns the label, later rows with that id are skipped and counted;
- clicks of a `hidden_click_splits` split (the unlabeled split) are never read unless
  `reveal_hidden_clicks` is set, which only the strict `student_direct` comparison does;
- a row whose label has `kept=false`, or that has no label at all, is skipped and counted;
- `target` is the teacher probability (`soft`), its 0/1 version (`hard`) or the click (`click`);
  `joint` uses both `teacher_prob` and `click` (NaN where the click is unknown);
- a fixed fraction of rows, chosen by a hash of `id`, is held out for validation, so every model
  trained on the same rows is validated on the same ones.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from distillery import io
from distillery.config import Section
from distillery.data.schema import CLICK, ID
from distillery.data.text import table_texts
from distillery.label_store import committed_label_files

__all__ = ["StreamSection", "DataSection", "TrainingTable", "read_split", "read_labels", "build_training_table", "is_validation_id"]

log = logging.getLogger(__name__)

LossTarget = Literal["soft", "hard", "joint", "click"]


class StreamSection(Section):
    """`data.stream: true`: Ray Data reads, joins and tokenises the rows while Ray Train steps
    (`training.stream`). Resources are fractional: on a small machine whole-CPU read tasks or
    tokenizer actors would wait behind the training workers."""

    read_cpus: float = Field(0.25, gt=0, description="CPUs reserved per read task (one input file: read, join its labels, render texts)")
    read_tasks: int | None = Field(2, ge=1, description="read tasks running at once (null: as many as the CPUs allow). On a "
                                                        "small machine, more read ahead of the steps and take their cores")
    read_ahead_mb: float | None = Field(64, gt=0, description="object store the rows read and tokenised ahead of the steps may hold "
                                                            "(null: Ray Data's share of the object store, the whole split on a small run)")
    tokenize_cpus: float = Field(0.25, gt=0, description="CPUs reserved per tokenizer actor")
    tokenize_actors: int = Field(1, ge=1, description="tokenizer actors (map_batches concurrency)")
    tokenize_batch_rows: int = Field(512, ge=1, description="rows per tokenizer call")
    block_rows: int = Field(1024, ge=1, description="rows per block a read task yields (bounds a task's memory and a worker's imbalance)")
    shuffle_buffer_rows: int = Field(1024, ge=1, description="rows in each worker's local shuffle buffer (bounded shuffle; the first step waits for it to fill)")
    prefetch_batches: int = Field(2, ge=0, description="length buckets each worker prepares ahead of the step")
    val_max_rows: int = Field(8192, ge=1, description="validation sample per epoch: held-out rows under a hash cut sized for about this many")
    head_rows: int = Field(4096, ge=1, description="two-tower head start (init.head_from): training rows of a hash sample of about this many")
    preserve_order: bool = Field(True, description="Ray Data keeps block order, so a seed gives the same shards and batches")


class DataSection(Section):
    splits: list[str] = Field(default_factory=lambda: ["train", "unlabeled"], description="splits under <run_dir>/data to train on")
    labels_dir: str | None = Field(None, description="teacher labels folder; default <run_dir>/labels")
    hidden_click_splits: list[str] = Field(default_factory=lambda: ["unlabeled"], description="splits whose clicks exist but are hidden from training")
    reveal_hidden_clicks: bool = Field(False, description="read the hidden clicks too (strict student_direct comparison only)")
    max_rows_per_split: int | None = Field(None, ge=1, description="read at most this many rows of each split (tests, quick runs)")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="fraction of rows (by hash of id) held out for validation")
    hard_mode: Literal["threshold", "sample"] = Field("sample", description="hard loss: threshold the teacher probability or sample y ~ Bernoulli(p)")
    hard_threshold: float = Field(0.5, gt=0.0, lt=1.0, description="hard loss, threshold mode: y = [p >= threshold]")
    seed: int = Field(0, description="seed of the hard-label sampling")
    stream: bool | Literal["auto"] = Field("auto", description="true: stream the rows (Ray Data → each Ray Train worker's shard, "
                                           "memory flat in the rows); false: every worker builds the whole table in memory; "
                                           "auto: stream when the input files hold more than stream_above_rows rows")
    stream_above_rows: int = Field(200_000, ge=0, description="data.stream auto: rows in the input files (parquet footers) above "
                                                              "which the rows stream. Below, the table fits every worker (400k rows: "
                                                              "7.2 GB each) and trains faster on a small machine")
    streaming: StreamSection = Field(default_factory=StreamSection, description="data.stream: read, tokenize and shuffle settings")

    @model_validator(mode="after")
    def _check(self) -> "DataSection":
        if not self.splits:
            raise ValueError("splits: at least one split is needed")
        if self.reveal_hidden_clicks and not set(self.splits) & set(self.hidden_click_splits):
            raise ValueError("reveal_hidden_clicks: none of the splits has hidden clicks")
        return self


@dataclass
class TrainingTable:
    """Columnar training rows, aligned by position. Arrays are float32 `(n,)`, NaN where unknown."""

    ids: list[str]
    texts: list[str]
    split: list[str]
    target: np.ndarray
    teacher_prob: np.ndarray
    click: np.ndarray
    is_val: np.ndarray  # bool (n,)
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask: np.ndarray) -> "TrainingTable":
        idx = np.flatnonzero(mask)
        return TrainingTable(
            ids=[self.ids[i] for i in idx], texts=[self.texts[i] for i in idx], split=[self.split[i] for i in idx],
            target=self.target[idx], teacher_prob=self.teacher_prob[idx], click=self.click[idx],
            is_val=self.is_val[idx], counts=dict(self.counts),
        )


def is_validation_id(row_id: str, fraction: float) -> bool:
    """Deterministic, seed-free holdout: crc32(id) in the lowest `fraction` of its range."""
    return zlib.crc32(row_id.encode()) % 1_000_000 < fraction * 1_000_000


def _read_parquet_files(path: str, files: list[str], columns: list[str] | None, max_rows: int | None,
                        expected_rows: list[int] | None = None) -> pa.Table:
    if not files:
        raise FileNotFoundError(f"{path}: no parquet files")
    tables, rows = [], 0
    for i, f in enumerate(files):
        fs, p = io.filesystem(f)
        schema = pq.read_schema(p, filesystem=fs)
        cols = [c for c in columns if c in schema.names] if columns else None
        t = pq.read_table(p, filesystem=fs, columns=cols)
        if expected_rows is not None and t.num_rows != expected_rows[i]:
            raise ValueError(f"{f}: {t.num_rows} rows, but the labeling manifest says {expected_rows[i]}: the file "
                             "changed after the run that committed it; re-run labeling")
        tables.append(t)
        rows += t.num_rows
        if max_rows is not None and rows >= max_rows:
            break
    table = pa.concat_tables(tables, promote_options="default")
    return table.slice(0, max_rows) if max_rows is not None else table


def read_split(run_dir: str, split: str, max_rows: int | None = None, columns: list[str] | None = None) -> pa.Table:
    """Rows of `<run_dir>/data/<split>/*.parquet` (files in name order; at most `max_rows`)."""
    path = io.join(run_dir, "data", split)
    return _read_parquet_files(path, io.list_files(path, suffixes=(".parquet",)), columns, max_rows)


def read_labels(labels_dir: str) -> pa.Table:
    """`id, teacher_prob, kept` of the committed labels (`label_store.committed_label_files`; each file
    must hold the row count its marker records); duplicate ids are an error."""
    committed = committed_label_files(labels_dir)
    if committed is None:
        files, expected = io.list_files(labels_dir, suffixes=(".parquet",)), None
    else:
        files, expected = [f for f, _ in committed], [n for _, n in committed]
    table = _read_parquet_files(labels_dir, files, ["id", "teacher_prob", "kept"], None, expected)
    missing = {"id", "teacher_prob", "kept"} - set(table.column_names)
    if missing:
        raise ValueError(f"{labels_dir}: labels lack column(s) {sorted(missing)}")
    if pc.count_distinct(table["id"]).as_py() != table.num_rows:
        dupes = table.num_rows - pc.count_distinct(table["id"]).as_py()
        raise ValueError(f"{labels_dir}: {dupes} duplicate id(s) in labels (exactly-once broken)")
    return table


def _first_sightings(ids: list[str], seen: set[str]) -> list[bool]:
    """True for each id not in `seen` and not earlier in `ids`; adds them to `seen`."""
    first = []
    for rid in ids:
        first.append(rid not in seen)
        seen.add(rid)
    return first


def _as_float(column: pa.ChunkedArray | None, n: int) -> np.ndarray:
    if column is None:
        return np.full(n, np.nan, dtype=np.float32)
    return np.asarray(column.cast(pa.float32()).to_numpy(zero_copy_only=False), dtype=np.float32)


def build_training_table(run_dir: str, cfg: DataSection, loss: LossTarget) -> TrainingTable:
    """Read the configured splits of `run_dir`, join teacher labels (unless `loss == "click"`), build targets.

    Counts: `rows_read`, `rows_duplicate_id` (a later row with an id already read), `rows_no_label`,
    `rows_not_kept`, `rows_no_click` (click loss on a row without a known click), `rows_used`, `rows_val`.
    """
    needs_labels = loss != "click"
    labels = read_labels(cfg.labels_dir or io.join(run_dir, "labels")) if needs_labels else None
    counts = {"rows_read": 0, "rows_duplicate_id": 0, "rows_no_label": 0, "rows_not_kept": 0, "rows_no_click": 0}
    parts: list[dict] = []
    seen: set[str] = set()
    for split in cfg.splits:
        hidden = split in cfg.hidden_click_splits and not cfg.reveal_hidden_clicks
        table = read_split(run_dir, split, cfg.max_rows_per_split)
        # Every column the teacher read (extras included), rendered once; then only what training needs.
        texts = pa.array(table_texts(table), pa.string())
        keep = [ID] + ([CLICK] if CLICK in table.column_names and not hidden else [])  # never a hidden click
        table = table.select(keep).append_column("_text", texts)
        counts["rows_read"] += table.num_rows
        # A label belongs to the first row with its id (labeling rejects the later ones): a later
        # row would inherit a label computed from another row's text.
        read = table.num_rows
        table = table.filter(pa.array(_first_sightings(table[ID].to_pylist(), seen), pa.bool_()))
        counts["rows_duplicate_id"] += read - table.num_rows
        if labels is not None:
            table = table.join(labels, keys=ID, join_type="left outer")
            no_label = pc.is_null(table["teacher_prob"])
            not_kept = pc.and_(pc.invert(no_label), pc.invert(pc.fill_null(table["kept"], False)))
            counts["rows_no_label"] += pc.sum(no_label.cast(pa.int64())).as_py() or 0
            counts["rows_not_kept"] += pc.sum(not_kept.cast(pa.int64())).as_py() or 0
            table = table.filter(pc.and_(pc.invert(no_label), pc.invert(not_kept)))
        if loss == "click":
            if CLICK not in table.column_names:
                raise ValueError(f"data.splits: split {split!r} has hidden clicks; the click loss needs "
                                 "data.reveal_hidden_clicks=true (strict comparison) or another split")
            no_click = pc.is_null(table[CLICK])
            counts["rows_no_click"] += pc.sum(no_click.cast(pa.int64())).as_py() or 0
            table = table.filter(pc.invert(no_click))
        table = table.sort_by([(ID, "ascending")])  # joins do not keep order; sorting makes runs repeatable
        n = table.num_rows
        parts.append({
            "ids": table[ID].to_pylist(),
            "texts": table["_text"].to_pylist(),
            "split": [split] * n,
            "teacher_prob": _as_float(table["teacher_prob"] if labels is not None else None, n),
            "click": _as_float(table[CLICK] if CLICK in table.column_names else None, n),
        })
    ids = [i for p in parts for i in p["ids"]]
    teacher_prob = np.concatenate([p["teacher_prob"] for p in parts])
    click = np.concatenate([p["click"] for p in parts])
    target = _targets(cfg, loss, teacher_prob, click)
    is_val = np.array([is_validation_id(i, cfg.val_fraction) for i in ids], dtype=bool)
    counts.update(rows_used=len(ids), rows_val=int(is_val.sum()))
    if not ids:
        raise ValueError(f"data: no usable rows in splits {cfg.splits} of {run_dir} ({counts})")
    log.info("training table for loss=%s: %s", loss, counts)
    return TrainingTable(
        ids=ids, texts=[t for p in parts for t in p["texts"]], split=[s for p in parts for s in p["split"]],
        target=target, teacher_prob=teacher_prob, click=click, is_val=is_val, counts=counts,
    )


def _targets(cfg: DataSection, loss: LossTarget, teacher_prob: np.ndarray, click: np.ndarray) -> np.ndarray:
    if loss == "click":
        return click.copy()
    if loss == "hard":
        import torch

        from distillery.training.losses import hard_targets

        gen = torch.Generator().manual_seed(cfg.seed)
        return hard_targets(torch.from_numpy(teacher_prob), cfg.hard_mode, cfg.hard_threshold, gen).numpy()
    return teacher_prob.copy()  # soft; joint reads teacher_prob and click directly
