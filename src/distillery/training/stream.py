"""Streamed training input (`data.stream: true`): Ray Data → each Ray Train worker's shard.

    job = prepare(spec, world_size=2)                 # driver: plan, counts, start model, datasets
    TorchTrainer(..., datasets=job.datasets, dataset_config=split_config(preserve_order=True, read_ahead_mb=64))
    rows = StreamedRows(train=ray.train.get_dataset_shard("train"), val=..., **job.plan)   # in a worker
    train(cfg, rows, model, tokenizer, hooks)         # the same loop as the in-memory table

Where the rows go, and what is held where:
- read tasks (a `Datasource`, `streaming.read_cpus` each, `read_tasks` at a time): one input file
  each, joined with its own committed label file and filtered by the rules of `training.data`
  (`stream_rows.file_rows`), yielding blocks of `block_rows` rows with their texts;
- tokenizer actors (`map_batches`, `tokenize_actors` × `tokenize_cpus`): the student kind's dataset
  over a block (`StudentKind.rows`), as token-id lists plus `_length` (what a batch pads to);
- each worker: Ray Train's `streaming_split(n, equal=True)`, read through `iter_torch_batches`
  with a bounded local shuffle; a chunk of `length_bucket_batches` batches is sorted by `_length`
  and cut into batches whose order is shuffled by a seed shared by the ranks, so every rank's
  step-i batch has about the same width, as `LengthBucketSampler` does in memory. Equal shares
  give every rank the same steps (DDP's all-reduces stay paired). Ray's equal split drops the
  last `rows mod n` rows; `prepare` appends that many *filler* rows instead (copies of sample
  rows, flagged `_filler`), which a batch drops before the step, so every training row is read
  exactly once an epoch and nothing else is trained on;
- validation: the bounded sample (`stream_rows`), tokenised once in the driver's job and
  materialised in the object store; each epoch every worker reads it and scores every n-th batch,
  and `loop.validate` gathers the pieces (`Hooks.gather`);
- read-ahead: the split's `ExecutionOptions.resource_limits` cap the object store the pipeline may
  fill ahead of the steps (`streaming.read_ahead_mb`), so reading and tokenising do not take the
  training workers' cores for long on a small machine.
The driver also builds the starting model once (the vocabulary trimmed on streamed texts, a
two-tower head started on a bounded sample) and hands every worker the same folder.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa

from distillery.training.stream_rows import COUNT_KEYS, ROW_SCHEMA, FileInput, Selection, count_rows, file_rows, plan_inputs

__all__ = ["StreamedRows", "StreamJob", "prepare", "StreamLoader", "split_config", "pack_folder", "unpack_folder",
           "rows_dataset", "tokenized", "loaders", "WEIGHT_KEY", "FILLER_KEY"]

log = logging.getLogger(__name__)

WEIGHT_KEY = "_step_weight"  # loop.WEIGHT_KEY: 0 on a batch of filler rows only (trains nothing)
LENGTH_KEY = "_length"
FILLER_KEY = "_filler"  # True on the rows `prepare` pads the training rows with, so Ray's equal split drops none


@dataclass
class StreamedRows:
    """What the loop trains on when rows stream: the worker's shard, the validation sample and the plan's figures."""

    train: Any                 # ray DataIterator (a worker's shard) or Dataset (one process)
    val: Any                   # the materialised validation sample, read whole
    train_rows: int            # training rows over all workers, an epoch
    val_rows: int
    prior: float               # mean training target (init_bias_to_prior)
    counts: dict[str, float] = field(default_factory=dict)
    stream: Any = None         # `data.streaming` (StreamSection): shuffle buffer, prefetch; None: its defaults


# ------------------------------------------------------------------------------ Ray Data pipeline


def _count(batch: dict[str, np.ndarray], inputs: list[FileInput], sel: Selection) -> dict[str, np.ndarray]:
    rows = [count_rows(inputs[int(i)], sel) for i in batch["i"]]
    return {k: np.array([r[k] for r in rows], dtype=np.float64) for k in COUNT_KEYS}


def _files(inputs: list[FileInput]):
    import ray

    return ray.data.from_items([{"i": i} for i in range(len(inputs))], override_num_blocks=max(1, len(inputs)))


ROW_BYTES = 320  # a ROW_SCHEMA row with its rendered text, about: Ray Data's size estimate before it reads


def _source(inputs: list[FileInput], sel: Selection, part: str):
    """A Ray Data `Datasource` with one read task per input file (`file_rows` of `part`).

    Read tasks, not a `map_batches` over file indices: Ray fuses such a map into the tokenizer's
    actor pool, which then bundles batch-size many *file indices* into one task, so one actor read
    and tokenised every file before it emitted a row (the first step of a 400k-row run waited 48 s)."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class TrainingRows(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(i.rows for i in inputs) * ROW_BYTES

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None, data_context=None) -> list:
            return [ReadTask(lambda inp=inp: file_rows(inp, sel, part),
                             BlockMetadata(num_rows=None, size_bytes=inp.rows * ROW_BYTES, input_files=[inp.path],
                                           exec_stats=None),
                             schema=ROW_SCHEMA, per_task_row_limit=per_task_row_limit)
                    for inp in inputs]

        def get_name(self) -> str:
            return f"TrainingRows[{part}]"

    return TrainingRows()


def rows_dataset(inputs: list[FileInput], sel: Selection, part: str, read_cpus: float, read_tasks: int | None = None):
    """A Dataset of `stream_rows.ROW_SCHEMA` rows of `part`, one read task per input file, at most
    `read_tasks` at a time (None: as many as the CPUs allow)."""
    import ray

    return ray.data.read_datasource(_source(inputs, sel, part), num_cpus=read_cpus, concurrency=read_tasks,
                                    override_num_blocks=max(1, len(inputs)))


def count_all(inputs: list[FileInput], sel: Selection, read_cpus: float, read_tasks: int | None = None) -> dict[str, float]:
    """The counts of every file (`stream_rows.count_rows`), summed: one pass over ids, labels and clicks,
    at most `read_tasks` files at a time (each new task process costs seconds of start-up on a small machine)."""
    from ray.data import TaskPoolStrategy

    rows = _files(inputs).map_batches(_count, batch_size=1, batch_format="numpy", num_cpus=read_cpus,
                                      compute=TaskPoolStrategy(size=read_tasks), fn_kwargs={"inputs": inputs, "sel": sel}).take_all()
    return {k: float(sum(r[k] for r in rows)) for k in COUNT_KEYS}


def pack_folder(path: str) -> dict[str, bytes]:
    """Every file of a local folder, by relative path (a model or tokenizer shipped through the object store)."""
    out = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def unpack_folder(files: dict[str, bytes], path: str) -> str:
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, rel)), exist_ok=True)
        with open(os.path.join(path, rel), "wb") as f:
            f.write(data)
    return path


class Tokenize:
    """`map_batches` actor: ROW_SCHEMA rows → the student kind's inputs per row (token-id lists,
    two-tower head features) + targets + `_length`."""

    def __init__(self, tokenizer_files: dict[str, bytes], kind: str, spec: dict | None, max_length: int):
        from transformers import AutoTokenizer

        from distillery.data.tower_inputs import TwoTowerSpec
        from distillery.onnx_model.kinds import KINDS

        with tempfile.TemporaryDirectory(prefix="distillery-tok-") as tmp:
            self.tokenizer = AutoTokenizer.from_pretrained(unpack_folder(tokenizer_files, tmp))
        self.kind, self.max_length = KINDS[kind], max_length
        self.model = SimpleNamespace(spec=TwoTowerSpec.model_validate(spec) if spec is not None else None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if not batch.num_rows:
            return batch
        rows = self.kind.rows(self.tokenizer, batch["text"].to_pylist(), self.max_length, self.model,
                              **{k: batch[k].to_numpy(zero_copy_only=False) for k in ("target", "teacher_prob", "click")})
        table = _columns(rows).append_column("id", batch["id"])  # ~20 bytes a row: which rows a worker read
        return table.append_column(FILLER_KEY, pa.array(np.zeros(table.num_rows, dtype=bool)))


def _columns(rows) -> pa.Table:
    """A tokenised dataset as columns: list<int64> for id lists and per-row arrays, scalars as they are."""
    items = [rows[i] for i in range(len(rows))]
    cols: dict[str, pa.Array] = {}
    for key in (k for k in items[0] if k != "pad_id"):
        values = [it[key] for it in items]
        if isinstance(values[0], (list, tuple, np.ndarray)):
            cols[key] = pa.array([np.asarray(v, dtype=np.int64) for v in values], pa.list_(pa.int64()))
        else:
            cols[key] = pa.array(np.asarray(values))
    cols[LENGTH_KEY] = pa.array(np.asarray(rows.length_keys(), dtype=np.int64))
    return pa.table(cols)


def tokenized(ds, tokenizer_files: dict[str, bytes], kind: str, spec: dict | None, max_length: int, stream) -> Any:
    """`ds` (ROW_SCHEMA rows) tokenised by `stream.tokenize_actors` actors of `tokenize_cpus` CPUs each."""
    # no bigger than a read block: a tokenised block is what the split hands a worker whole
    from ray.data import ActorPoolStrategy

    return ds.map_batches(Tokenize, batch_size=min(stream.tokenize_batch_rows, stream.block_rows), batch_format="pyarrow",
                          compute=ActorPoolStrategy(size=stream.tokenize_actors), num_cpus=stream.tokenize_cpus,
                          fn_constructor_kwargs={"tokenizer_files": tokenizer_files, "kind": kind, "spec": spec,
                                                 "max_length": max_length})


# --------------------------------------------------------------------------------- driver side


@dataclass
class StreamJob:
    """What `prepare` hands Ray Train: datasets, the plan's figures (JSON) and the packed start model."""

    datasets: dict[str, Any]
    plan: dict[str, Any]
    start: dict[str, bytes]


class _StreamedTexts(Sequence):
    """Texts of a Dataset read front to back in slices, never held whole: `vocab.used_token_ids`
    reads its `texts` this way (slices of 4096 in order), so vocabulary trimming streams too."""

    def __init__(self, ds, n: int):
        self._batches = iter(ds.iter_batches(batch_size=4096, batch_format="pyarrow"))
        self._n, self._at, self._buffer = n, 0, []

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, key):
        if not isinstance(key, slice) or (key.start or 0) != self._at:
            raise IndexError("streamed texts are read front to back, in slices")
        stop = min(self._n if key.stop is None else key.stop, self._n)
        while len(self._buffer) < stop - self._at:
            self._buffer.extend(next(self._batches)["text"].to_pylist())
        out, self._buffer = self._buffer[: stop - self._at], self._buffer[stop - self._at:]
        self._at = stop
        return out


def _trim(model, tokenizer, spec, stream):
    """The vocabulary trimmed to the pieces of `init.trim_vocab_splits` (every row, as `ray_train._trim`)."""
    from distillery.training.data import DataSection
    from distillery.training.vocab import trim_vocabulary

    cfg = DataSection(splits=spec.init.trim_vocab_splits, hidden_click_splits=spec.data.hidden_click_splits, val_fraction=0.0)
    inputs, sel = plan_inputs(spec.run_dir, cfg, "click")
    sel = Selection(**{**sel.__dict__, "loss": "soft", "needs_labels": False})  # every row: no label, no click rule
    n = sum(i.rows for i in inputs)
    texts = _StreamedTexts(rows_dataset(inputs, sel, "train", stream.read_cpus, stream.read_tasks), n)
    model, tokenizer, info = trim_vocabulary(model, tokenizer, texts)
    print(f"[train] vocabulary trimmed to the pieces of {spec.init.trim_vocab_splits}: {info['before']} → "
          f"{info['after']} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters left)", flush=True)
    return model, tokenizer


def _head_table(ds):
    """The head-start sample as a `TrainingTable` (bounded: `streaming.head_rows`), sorted by id."""
    from distillery.training.data import TrainingTable

    parts = list(ds.iter_batches(batch_size=4096, batch_format="pyarrow"))
    table = (pa.concat_tables(parts) if parts else ROW_SCHEMA.empty_table()).sort_by("id")
    n = table.num_rows
    return TrainingTable(ids=table["id"].to_pylist(), texts=table["text"].to_pylist(), split=table["split"].to_pylist(),
                         target=table["target"].to_numpy(), teacher_prob=table["teacher_prob"].to_numpy(),
                         click=table["click"].to_numpy(), is_val=np.zeros(n, dtype=bool))


def _start_model(spec, inputs, sel, stream):
    """(model, tokenizer) every worker starts from: built once here, trimmed and head-started on streamed rows."""
    from distillery.onnx_model.kinds import kind_of_model
    from distillery.training.init import build_model

    model, tokenizer = build_model(spec.init)
    if spec.init.trim_vocab_splits:
        model, tokenizer = _trim(model, tokenizer, spec, stream)
    if spec.init.head_from and kind_of_model(model).starts_head_on_rows:
        from distillery.training.two_tower_student import start_head_on_rows

        sample = _head_table(rows_dataset(inputs, sel, "head", stream.read_cpus, stream.read_tasks))
        start = start_head_on_rows(model, tokenizer, spec.init.head_from, sample, spec.loop.max_length)
        print(f"[train] two-tower head start ({spec.init.head_from}) on {len(sample)} sampled training rows: {start}", flush=True)
    return model, tokenizer


def _packed(save) -> dict[str, bytes]:
    with tempfile.TemporaryDirectory(prefix="distillery-start-") as tmp:
        save(tmp)
        return pack_folder(tmp)


def _as_filler(batch: pa.Table) -> pa.Table:
    return batch.set_column(batch.schema.get_field_index(FILLER_KEY), FILLER_KEY,
                            pa.array(np.ones(batch.num_rows, dtype=bool)))


def _padded(train, val, rows: int, val_rows: int, world_size: int):
    """`train` + `(-rows) mod world_size` filler rows (copies of validation rows, else of training rows)."""
    pad = -rows % world_size
    if not pad:
        return train
    fillers = (val if val_rows >= pad else train).limit(pad).map_batches(_as_filler, batch_format="pyarrow").materialize()
    if fillers.count() < pad:
        raise ValueError(f"data: {rows} training row(s) for {world_size} workers; use fewer scaling.num_workers")
    return train.union(fillers)


def prepare(spec, world_size: int = 1) -> StreamJob:
    """Plan the files, count the rows, build the start model and the datasets (driver side)."""
    from distillery.onnx_model.kinds import kind_of_model

    stream = spec.data.streaming
    inputs, sel = plan_inputs(spec.run_dir, spec.data, spec.loop.loss)
    counts = count_all(inputs, sel, stream.read_cpus, stream.read_tasks)
    if counts["rows_train"] < 1:
        raise ValueError(f"data: no usable training rows in splits {spec.data.splits} of {spec.run_dir} ({counts})")
    print(f"[train] streaming {len(inputs)} file(s) ({sel.notes['labels']} labels): "
          + ", ".join(f"{k}={int(v)}" for k, v in counts.items() if k.startswith("rows_")), flush=True)
    model, tokenizer = _start_model(spec, inputs, sel, stream)
    kind = kind_of_model(model)
    model_spec = getattr(model, "spec", None)
    tok_files = _packed(tokenizer.save_pretrained)
    args = (tok_files, kind.name, model_spec.model_dump(mode="json") if model_spec is not None else None,
            spec.loop.max_length, stream)
    val = tokenized(rows_dataset(inputs, sel, "val", stream.read_cpus, stream.read_tasks), *args).materialize()
    val_rows = val.count()
    train = _padded(tokenized(rows_dataset(inputs, sel, "train", stream.read_cpus, stream.read_tasks), *args), val,
                    int(counts["rows_train"]), val_rows, world_size)
    prior = counts["target_sum"] / counts["target_known"] if counts["target_known"] else 0.5
    plan = {"train_rows": int(counts["rows_train"]), "val_rows": val_rows,
            "prior": min(max(prior, 1e-4), 1 - 1e-4), "counts": counts}

    def save(path):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)

    for ds in (train, val):  # read in the workers and their split coordinator: a bar per worker and epoch
        ds.context.enable_progress_bars = False  # is noise there; the loop's [train] lines show the rows/s
    return StreamJob(datasets={"train": train, "val": val}, plan=plan, start=_packed(save))


def split_config(preserve_order: bool, read_ahead_mb: float | None = None):
    """Ray Train's `DataConfig`: "train" split `equal=True` (equal shares keep the ranks' steps paired;
    `prepare` pads the rows to a multiple of the workers, so Ray's split drops none), "val" read whole.
    `read_ahead_mb` caps the object store the pipelines feeding the workers may hold: past it Ray
    Data stops reading and tokenising until the steps catch up (None: Ray's own share)."""
    from ray.data import DataContext, ExecutionOptions
    from ray.train import DataConfig

    # `DataConfig.default_ingest_options()` without its deprecated `exclude_resources` (a warning each job)
    current = DataContext.get_current().execution_options
    limits = current.resource_limits
    if read_ahead_mb is not None:
        limits = limits.copy(object_store_memory=read_ahead_mb * 2**20)
    options = ExecutionOptions(resource_limits=limits, preserve_order=preserve_order, verbose_progress=current.verbose_progress)
    return DataConfig(datasets_to_split=["train"], execution_options=options)


# --------------------------------------------------------------------------------- worker side


def _collated(collate_fn, pad_id: int, batch: dict[str, np.ndarray], rows: np.ndarray) -> dict:
    """The kind's collate over `rows` of a numpy batch, filler rows left out (a batch of fillers
    only is kept with weight 0: the ranks still take the step together)."""
    filler = batch[FILLER_KEY][rows].astype(bool) if FILLER_KEY in batch else np.zeros(len(rows), dtype=bool)
    keep = rows[~filler] if not filler.all() else rows
    keys = [k for k in batch if k not in (LENGTH_KEY, FILLER_KEY)]  # the kind's collate reads its own keys (not `id`)
    out = collate_fn([{**{k: batch[k][i] for k in keys}, "pad_id": pad_id} for i in keep])
    return {**out, WEIGHT_KEY: 0.0} if filler.all() else out


def _bucket_collate(collate_fn, pad_id: int, batch_size: int, bucket: bool):
    from ray.data.collate_fn import NumpyBatchCollateFn

    class BucketCollate(NumpyBatchCollateFn):
        """A chunk of rows → its batches, each padded to its own longest row (sorted by length when `bucket`)."""

        def __call__(self, batch: dict[str, np.ndarray]) -> list[dict]:
            n = len(batch[LENGTH_KEY])
            order = np.argsort(batch[LENGTH_KEY], kind="stable") if bucket else np.arange(n)
            return [_collated(collate_fn, pad_id, batch, order[i:i + batch_size]) for i in range(0, n, batch_size)]

    return BucketCollate()


class StreamLoader:
    """Batches of a Ray shard for the loop: `len()` is the plan's steps an epoch, `set_epoch` reseeds."""

    def __init__(self, source, collate_fn, pad_id: int, batch_size: int, *, steps: int, shuffle: bool,
                 bucket_batches: int = 0, shuffle_buffer: int = 0, prefetch: int = 1, seed: int = 0):
        self.source, self.collate_fn, self.pad_id, self.batch_size = source, collate_fn, pad_id, batch_size
        self.steps, self.shuffle, self.bucket_batches = steps, shuffle, bucket_batches if shuffle else 0
        self.shuffle_buffer, self.prefetch, self.seed = shuffle_buffer, prefetch, seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _chunks(self) -> Iterator[list[dict]]:
        chunk = self.batch_size * max(1, self.bucket_batches)
        kwargs = {}
        if self.shuffle:
            kwargs = {"local_shuffle_buffer_size": max(self.shuffle_buffer, chunk),
                      "local_shuffle_seed": self.seed * 100_003 + self.epoch}
        return iter(self.source.iter_torch_batches(
            batch_size=chunk, collate_fn=_bucket_collate(self.collate_fn, self.pad_id, self.batch_size, self.bucket_batches > 0),
            prefetch_batches=self.prefetch, drop_last=False, **kwargs))

    def _batches(self) -> Iterator[dict]:
        for c, batches in enumerate(self._chunks()):
            if self.bucket_batches > 0:  # the same permutation on every rank: step-i batches of like widths
                rng = np.random.default_rng([self.seed, self.epoch, c])
                batches = [batches[i] for i in rng.permutation(len(batches))]
            yield from batches

    def __iter__(self) -> Iterator[dict]:
        return self._batches()


def loaders(data: StreamedRows, cfg, model, tokenizer, world_size: int) -> tuple[StreamLoader, StreamLoader, int]:
    """(train loader, validation loader, steps an epoch) of streamed rows for `loop.train`."""
    from distillery.onnx_model.kinds import kind_of_model
    from distillery.training.loop import collate as plain_collate
    from distillery.training.loop import unwrap

    raw = unwrap(model)
    probe = kind_of_model(raw).rows(tokenizer, [""], cfg.max_length, raw)  # for the kind's collate only
    collate_fn, pad_id = getattr(probe, "collate", plain_collate), tokenizer.pad_token_id or 0
    from distillery.training.data import StreamSection

    steps = max(1, math.ceil(data.train_rows / (cfg.batch_size * world_size)))
    s = data.stream or StreamSection()
    val = StreamLoader(data.val, collate_fn, pad_id, cfg.eval_batch_size, steps=math.ceil(data.val_rows / cfg.eval_batch_size),
                       shuffle=False, prefetch=1)
    train = StreamLoader(data.train, collate_fn, pad_id, cfg.batch_size, steps=steps, shuffle=True,
                         bucket_batches=cfg.length_bucket_batches, shuffle_buffer=s.shuffle_buffer_rows,
                         prefetch=max(1, s.prefetch_batches), seed=cfg.seed)
    return train, val, steps
