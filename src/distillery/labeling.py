"""Cluster-scale teacher labeling on Ray Data, exactly once, resumable by input file.

    python -m jobs.label --config jobs/configs/label.yaml [key=value ...]

Pipeline per round of input files:

    file paths ─► read tasks: read_logs → validate rows → to_text      (one task per file)
               ─► teacher actors (ActorPoolStrategy; CPUs/GPUs from YAML): predict, confidence, filters
               ─► write_parquet to labels/_staging/<round>
    driver commit: split by input file → labels/<key>.parquet (+ labels/_rejects/<key>.parquet),
                   check every input row came back once, reject ids already taken, write
                   labels/_done/<key>.json

Guarantees (the folder layout is in `distillery.label_store`):
- every input row ends up exactly once in labels or rejects: per file `rows_in == rows_labeled +
  rows_rejected`, and the multiset of label and reject ids equals the input rows' ids;
- an id is labelled at most once per output: the first row carrying it, in input order (the
  `inputs` in config order, files sorted, rows in file order; files committed by an earlier run come
  first), owns it whatever its fate; every later row with that id, in the same file or another, is
  a reject naming where the id was first seen;
- a file's outputs appear whole (temp + rename) before its marker; the manifest is written last
  and readers use only the files it lists;
- one run at a time writes an output (`_LOCK.json`, a lease renewed by a heartbeat; an expired or
  dead holder's lock is taken over atomically); a run that loses its lease stops before its next
  commit; a run clears staging left by a killed one.

Labels follow their inputs: each file's marker records the input's fingerprint (size, mtime) and
the labeling key (`labeling_key`: the teacher's config with the fingerprints of every file it
names, the filters, the reader settings). A re-run relabels exactly the files whose marker is
missing or records another fingerprint or key, keeps the rest, and leaves inputs that are gone out
of the manifest; `force` relabels everything. Before anything is relabelled the folder is marked
unfinished (`label_store.mark_incomplete`: `_INCOMPLETE.json`, manifest removed; `force` does so
before it drops the markers), so no training run reads a half-relabelled folder, even one a killed
run left. A job killed mid-run relabels only the round that was in flight
and the files it had not reached. Output names come from each input's path relative to `run_dir`
(`label_store.input_name`), so `runs/demo` and `/abs/runs/demo` are one run; rows without an id are
named by their content (`parsing.content_id`), so the same impression in two inputs is one id.
`_MANIFEST.json` is rebuilt from the markers at the end.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from distillery import io
from distillery.config import RunSection, Section, config_hash
from distillery.data.schema import ID, row_problem
from distillery.data.text import to_text
from distillery.filters import FilterConfig, apply_filters, clip_probs
from distillery.label_store import (
    LABEL_SCHEMA,
    REJECT_SCHEMA,
    OutputLock,
    done_marker,
    input_name,
    label_file_key,
    mark_complete,
    mark_incomplete,
)
from distillery.ray_runtime import RaySection, ensure_ray
from distillery.teachers import TeacherConfig, check_teacher_sources

__all__ = ["ActorConfig", "LabelConfig", "run", "label_file_key", "LABEL_SCHEMA", "REJECT_SCHEMA"]

log = logging.getLogger(__name__)

# `_row`: the row's position among its file's rows (reader rejects last); `_of`: that file's row count.
_STAGED_SCHEMA = pa.schema(list(LABEL_SCHEMA) + [
    pa.field("rejected", pa.bool_()), pa.field("_source", pa.string()),
    pa.field("_row", pa.int64()), pa.field("_of", pa.int64()),
])


class ActorConfig(Section):
    pool_min: int = Field(1, ge=1, description="teacher actors kept alive (GPU cluster: one per GPU)")
    pool_max: int = Field(1, ge=1, description="teacher actors the pool may grow to")
    num_cpus: float = Field(0.5, gt=0, description="CPUs reserved per actor (fractional on small machines: whole-CPU actors starve read tasks)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 on a GPU cluster)")
    batch_size: int = Field(64, ge=1, description="rows per teacher call")
    max_tasks_in_flight: int = Field(2, ge=1, description="batches queued per actor (keeps the teacher busy)")
    batch_retries: int = Field(2, ge=0, description="re-tries of a batch whose teacher call raised, before it goes to rejects")
    resources: dict[str, float] = Field(default_factory=dict, description="custom Ray resources per actor (e.g. {accelerator_type:T4: 0.01})")


class LabelConfig(RunSection):
    inputs: list[str] = Field(default_factory=lambda: ["{run_dir}/data/train", "{run_dir}/data/unlabeled"],
                              description="log files/folders/URIs to label; {run_dir} is substituted")
    format: str = Field("auto", description="input format: auto|parquet|csv|tsv|jsonl|criteo|avazu|openrtb")
    label_column: str | None = Field(None, description="click column of a generic CSV/TSV/JSONL input")
    output: str = Field("{run_dir}/labels", description="labels folder (parquet + _MANIFEST.json)")
    teacher: TeacherConfig = Field(..., description="the teacher (hf-classifier, hf-causal-lm, retrieval, ensemble)")
    filters: FilterConfig = Field(default_factory=FilterConfig, description="confidence and domain filters")
    actors: ActorConfig = Field(default_factory=ActorConfig, description="teacher actor pool")
    read_num_cpus: float = Field(1.0, gt=0, description="CPUs per read task (Ray Data read tasks want a whole CPU)")
    max_field_chars: int = Field(2000, ge=16, description="a text field longer than this sends the row to rejects")
    files_per_round: int = Field(8, ge=1, description="input files labeled and committed together (the resume unit)")
    force: bool = Field(False, description="relabel files that are already done")
    lock_ttl_s: float = Field(60.0, gt=0, description="lease of the output lock in s: renewed every third of it; an unrenewed lock may be taken over after it")
    ray: RaySection = Field(default_factory=RaySection, description="Ray connection / embedded resources")

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str) -> str:
        formats = {"auto", "parquet", "csv", "tsv", "jsonl", "criteo", "avazu", "openrtb"}
        if v not in formats:
            raise ValueError(f"unknown format {v!r}; expected one of {sorted(formats)}")
        return v


# ---------------------------------------------------------------- read stage (Ray tasks)

def _read_and_prepare(batch: dict[str, np.ndarray], fmt: str, label_column: str | None,
                      required: tuple[str, ...], max_chars: int) -> pa.Table:
    """Input files → (id, _source, _row, _of, _text, _problem) rows; unreadable rows carry their reason.

    Within a file the first row carrying an id owns it; later rows with that id get a problem.
    """
    from distillery.data.readers import read_logs

    columns: dict[str, list] = {ID: [], "_source": [], "_row": [], "_of": [], "_text": [], "_problem": []}
    for path in batch["path"]:
        path = str(path)
        result = read_logs(path, fmt=fmt, label_column=label_column)
        ids, texts, problems = [], [], []
        seen: set[str] = set()
        for row in result.table.to_pylist():
            problem = row_problem(row, required=required, max_field_chars=max_chars)
            rid = row.get(ID)
            rid = rid if isinstance(rid, str) and rid else f"{path}:{len(ids) + 1}"
            if problem is None and rid in seen:
                problem = f"{ID}: duplicate id within the file"
            seen.add(rid)
            ids.append(rid)
            texts.append("" if problem else to_text(row))
            problems.append(problem or "")
        for rej in result.rejects.to_pylist():
            ids.append(rej.get(ID) or f"{rej.get('source') or path}")
            texts.append("")
            problems.append(rej.get("reason") or "unreadable row")
        n = len(ids)
        columns[ID] += ids
        columns["_text"] += texts
        columns["_problem"] += problems
        columns["_source"] += [path] * n
        columns["_row"] += list(range(n))
        columns["_of"] += [n] * n
    return pa.table({**columns, "_row": pa.array(columns["_row"], pa.int64()),
                     "_of": pa.array(columns["_of"], pa.int64())})


# ---------------------------------------------------------------- teacher actor

class TeacherActor:
    """Holds one teacher; labels batches, retries a failing batch, routes a poison batch to rejects."""

    def __init__(self, teacher_cfg: dict, filter_cfg: dict, retries: int):
        import ray

        from distillery.teachers import build_teacher, score_detailed

        self.teacher = build_teacher(teacher_cfg)
        self.score = score_detailed
        self.filters = FilterConfig.model_validate(filter_cfg)
        self.retries = retries
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        problems = batch["_problem"].to_numpy(zero_copy_only=False).astype(object)
        ok = problems == ""
        texts = [t for t, good in zip(batch["_text"].to_pylist(), ok) if good]
        probs = np.full(n, np.nan)
        conf = np.full(n, np.nan)
        spread = np.zeros(n)
        if texts:
            error = None
            for _attempt in range(self.retries + 1):
                try:
                    p, c, d = self.score(self.teacher, texts)
                    error = None
                    break
                except Exception as err:  # noqa: BLE001 — any teacher failure is retried, then rejected
                    error = f"teacher failed on this batch: {type(err).__name__}: {err}"[:500]
                    log.warning("%s (attempt %d of %d)", error, _attempt + 1, self.retries + 1)
            if error is None:
                probs[ok], conf[ok], spread[ok] = clip_probs(p, self.filters), c, d
            else:
                problems[ok] = error
                ok = np.zeros(n, dtype=bool)
        kept, reason = apply_filters(probs, conf, self.filters, spread)
        kept &= ok
        reason = np.where(ok, reason, problems)
        return pa.table({
            ID: batch[ID], "teacher_prob": pa.array(np.where(ok, probs, np.nan)).fill_null(np.nan),
            "confidence": pa.array(np.where(ok, conf, np.nan)),
            "kept": pa.array(kept), "reason": pa.array(reason.astype(str)),
            "teacher_id": pa.array([self.teacher.teacher_id] * n, pa.string()),
            "labeled_on": pa.array([self.node_id] * n, pa.string()),
            "rejected": pa.array(~ok), "_source": batch["_source"], "_row": batch["_row"], "_of": batch["_of"],
        }, schema=_STAGED_SCHEMA)


# ---------------------------------------------------------------- driver: plan, run rounds, commit

def _input_files(cfg: LabelConfig) -> list[str]:
    """Absolute paths (or URIs) of the files to label, in input order: `inputs` as configured, each sorted."""
    files: list[str] = []
    for spec in cfg.inputs:
        path = io.absolute(spec)
        found = io.list_files(path)
        if not found:
            raise FileNotFoundError(f"inputs: {path} holds no files")
        files.extend(found)
    names = [input_name(f, cfg.run_dir) for f in files]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"inputs: the same file is listed twice: {twice[:3]}")
    return files


class _ClaimedIds:
    """Ids owned by input files already committed to this output (label and reject rows alike)."""

    def __init__(self) -> None:
        self._arrays: list[pa.Array] = []
        self._owners: list[str] = []
        self._ends: list[int] = []
        self._all: pa.Array | None = None

    def add(self, ids: pa.ChunkedArray | pa.Array, owner: str) -> None:
        ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
        self._arrays.append(ids.cast(pa.string()))
        self._owners.append(owner)
        self._ends.append((self._ends[-1] if self._ends else 0) + len(ids))
        self._all = None

    def owners(self, ids: pa.ChunkedArray) -> list[str | None]:
        """For each id: the input that owns it, or None."""
        if not self._arrays:
            return [None] * len(ids)
        if self._all is None:
            self._all = pa.concat_arrays(self._arrays)
        at = pc.index_in(ids, value_set=self._all).to_pylist()
        return [None if i is None else self._owners[bisect.bisect_right(self._ends, i)] for i in at]

    @classmethod
    def of_committed(cls, out: str, files: list[str], run_dir: str) -> "_ClaimedIds":
        claimed = cls()
        for path in files:
            key = label_file_key(path, run_dir)
            for part in (f"{key}.parquet", f"_rejects/{key}.parquet"):
                fs, p = io.filesystem(io.join(out, part))
                claimed.add(pq.read_table(p, filesystem=fs, columns=[ID])[ID], input_name(path, run_dir))
        return claimed


def _one_per_input_row(part: pa.Table, path: str) -> pa.Table:
    """The staged rows of one file, one per input row (a re-executed block stages rows twice), in
    file order; raises when a row is missing, so a file is never committed short."""
    if part.num_rows == 0:
        return part
    rows = part["_row"].to_numpy()
    order = np.argsort(rows, kind="stable")
    _, first = np.unique(rows[order], return_index=True)
    part = part.take(pa.array(order[first]))
    expected = int(part["_of"][0].as_py())
    if part.num_rows != expected:
        raise RuntimeError(f"{path}: {part.num_rows} of its {expected} rows came back from labeling; "
                           "not committed (a re-run labels it again)")
    return part


def _reject_taken_ids(part: pa.Table, claimed: _ClaimedIds) -> pa.Table:
    """Turn labelled rows whose id an earlier row owns (this file or a committed one) into rejects."""
    owners = claimed.owners(part[ID])
    rejected = part["rejected"].to_pylist()
    reasons = part["reason"].to_pylist()
    seen: set[str] = set()
    for i, rid in enumerate(part[ID].to_pylist()):
        if not rejected[i]:
            if owners[i] is not None:
                rejected[i], reasons[i] = True, f"{ID}: duplicate of a row in {owners[i]} (the first row with an id owns it)"
            elif rid in seen:
                rejected[i], reasons[i] = True, f"{ID}: duplicate id within the file"
        seen.add(rid)
    part = part.set_column(part.schema.get_field_index("rejected"), "rejected", pa.array(rejected, pa.bool_()))
    return part.set_column(part.schema.get_field_index("reason"), "reason", pa.array(reasons, pa.string()))


def _commit(staging: str, out: str, files: list[str], run_dir: str, claimed: _ClaimedIds,
            stamps: dict[str, dict]) -> list[dict]:
    """Split a staged round by input file into final outputs, each input row exactly once, each id
    labelled at most once across the output; a file's marker is written after its two parquet files."""
    fs, base = io.filesystem(staging)
    staged = pq.read_table(base, filesystem=fs, schema=_STAGED_SCHEMA) if io.exists(staging) else _STAGED_SCHEMA.empty_table()
    markers = []
    for path in files:
        key, name = label_file_key(path, run_dir), input_name(path, run_dir)
        part = _one_per_input_row(staged.filter(pc.equal(staged["_source"], path)), path)
        part = _reject_taken_ids(part, claimed)
        rejected = part["rejected"].to_numpy(zero_copy_only=False)
        labels = part.filter(pa.array(~rejected)).select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA)
        rejects = part.filter(pa.array(rejected))
        rejects = pa.table({ID: rejects[ID], "source": rejects["_source"], "reason": rejects["reason"]}, schema=REJECT_SCHEMA)
        assert labels.num_rows + rejects.num_rows == part.num_rows
        io.write_parquet(labels, io.join(out, f"{key}.parquet"))
        io.write_parquet(rejects, io.join(out, "_rejects", f"{key}.parquet"))
        marker = {
            "path": path, "name": name, "key": key, "rows_in": part.num_rows, "rows_labeled": labels.num_rows,
            "rows_kept": int(pc.sum(labels["kept"]).as_py() or 0), "rows_rejected": rejects.num_rows,
            "output": f"{key}.parquet", "committed_at": time.time(),
            "teacher_ids": sorted(x for x in pc.unique(labels["teacher_id"]).to_pylist() if x),
            **stamps[path],  # fingerprint (taken before reading) and labeling_key
        }
        io.write_json(done_marker(out, key), marker)
        claimed.add(part[ID], name)
        markers.append(marker)
    return markers


def _label_round(cfg: LabelConfig, teacher_cfg: TeacherConfig, files: list[str], staging: str) -> None:
    import ray

    ds = ray.data.from_items([{"path": f} for f in files], override_num_blocks=len(files))
    ds = ds.map_batches(
        _read_and_prepare, batch_size=1, batch_format="numpy", num_cpus=cfg.read_num_cpus,
        fn_kwargs={"fmt": cfg.format, "label_column": cfg.label_column,
                   "required": tuple(cfg.filters.required_fields), "max_chars": cfg.max_field_chars},
    )
    a = cfg.actors
    ds = ds.map_batches(
        TeacherActor, batch_size=a.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=a.pool_min, max_size=a.pool_max,
                                           max_tasks_in_flight_per_actor=a.max_tasks_in_flight),
        num_cpus=a.num_cpus, num_gpus=a.num_gpus or None, resources=a.resources or None,
        fn_constructor_kwargs={"teacher_cfg": teacher_cfg.model_dump(mode="json"),
                               "filter_cfg": cfg.filters.model_dump(mode="json"), "retries": a.batch_retries},
    )
    ds.write_parquet(staging)


_MODEL_KEYS = ("model", "encoder", "index")  # teacher config fields naming what it scores with


def _local_paths(value: Any, named: bool = False) -> list[str]:
    """Existing local files or folders named by a teacher config's `model`, `encoder` or `index`
    fields, at any depth (an ensemble's members). Other strings (a log folder in a custom teacher's
    kwargs) are not what a label depends on."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _local_paths(v, named or k in _MODEL_KEYS)]
    if isinstance(value, (list, tuple)):
        return [p for v in value for p in _local_paths(v, named)]
    if named and isinstance(value, str) and "://" not in value and os.path.exists(value):
        return [os.path.realpath(value)]
    return []


def labeling_key(cfg: LabelConfig) -> str:
    """A hash of everything a label depends on besides its input: the teacher's config and the
    fingerprint of every file it names (a refitted teacher folder changes it), the filters, and
    how the input is read. Not the actors, batch sizes or inputs list: they do not change a label."""
    teacher = cfg.teacher.model_dump(mode="json")
    files = []
    for root in sorted(set(_local_paths(teacher))):
        for f in io.list_files(root):
            files.append([f, *io.fingerprint(f).values()])
    blob = {"teacher": teacher, "teacher_files": files, "filters": cfg.filters.model_dump(mode="json"),
            "format": cfg.format, "label_column": cfg.label_column, "max_field_chars": cfg.max_field_chars}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _why_stale(marker: dict | None, fingerprint: dict, key: str) -> str | None:
    """Why a file's committed labels cannot be kept (None: they can)."""
    if marker is None:
        return "new"
    if marker.get("fingerprint") != fingerprint:
        return "input changed"
    if marker.get("labeling_key") != key:
        return "teacher or config changed"
    return None


def _warn_orphans(out: str, keys: set[str]) -> None:
    """Label files of inputs this run does not cover stay on disk but out of the manifest (never read)."""
    orphans = [f for f in io.list_files(out, (".parquet",)) if f.rsplit("/", 1)[-1].removesuffix(".parquet") not in keys]
    if orphans:
        log.warning("labeling: %d label file(s) in %s belong to no current input and are not in the manifest "
                    "(readers ignore them): %s", len(orphans), out, orphans[:3])


def run(cfg: LabelConfig) -> dict[str, Any]:
    """Label every input file not yet done; returns the manifest (also in `<output>/_MANIFEST.json`)."""
    out = io.absolute(cfg.output)
    # Fail before any work: a missing input, model folder or index names its field.
    files = _input_files(cfg)
    teacher_cfg = cfg.teacher
    check_teacher_sources(teacher_cfg)
    started = time.perf_counter()
    io.makedirs(out)
    with OutputLock(out, cfg.lock_ttl_s) as lock:
        # Holding the lock, no other run writes here: any staging is a killed run's leftover.
        io.remove_dir(io.join(out, "_staging"))
        if cfg.force:  # readers refuse the folder before the markers the old manifest lists go
            mark_incomplete(out, "force")
            io.remove_dir(io.join(out, "_done"))
        keys = {f: label_file_key(f, cfg.run_dir) for f in files}
        key = labeling_key(cfg)
        # fingerprints before reading: a file rewritten while it is labelled is relabelled next run
        stamps = {f: {"fingerprint": io.fingerprint(f), "labeling_key": key} for f in files}
        why = {f: _why_stale(io.read_json(done_marker(out, keys[f])) if io.exists(done_marker(out, keys[f])) else None,
                             stamps[f]["fingerprint"], key) for f in files}
        pending = [f for f in files if why[f]]
        if pending:  # until the new manifest, readers find an unfinished run rather than a mix
            mark_incomplete(out, ("force: " if cfg.force else "") + f"{len(pending)} input file(s) to label")
        reasons = {r: sum(1 for f in pending if why[f] == r) for r in ("new", "input changed", "teacher or config changed")}
        print(f"labeling: {len(files)} input files: {len(files) - len(pending)} kept, {len(pending)} to label "
              f"({', '.join(f'{n} {r}' for r, n in reasons.items() if n) or 'none'})", flush=True)
        rows_this_run = 0
        if pending:
            ensure_ray(cfg.ray)
            claimed = _ClaimedIds.of_committed(out, [f for f in files if f not in pending], cfg.run_dir)
        for start in range(0, len(pending), cfg.files_per_round):
            round_files = pending[start:start + cfg.files_per_round]
            staging = io.join(out, "_staging", uuid.uuid4().hex[:12])
            try:
                _label_round(cfg, teacher_cfg, round_files, staging)
                lock.check()  # a run that lost its lease commits nothing
                rows_this_run += sum(m["rows_in"] for m in _commit(staging, out, round_files, cfg.run_dir, claimed, stamps))
            finally:  # only this round's: after a lost lease, `_staging/` may hold the new holder's
                io.remove_dir(staging)
            log.info("labeling: committed %d/%d pending files", min(start + cfg.files_per_round, len(pending)), len(pending))
        io.remove_dir(io.join(out, "_staging"))
        elapsed = time.perf_counter() - started
        markers = [io.read_json(done_marker(out, keys[f])) for f in files]
        _warn_orphans(out, set(keys.values()))
        teacher_ids = {t for m in markers for t in m.get("teacher_ids", [])}
        total = {k: sum(m[k] for m in markers) for k in ("rows_in", "rows_labeled", "rows_kept", "rows_rejected")}
        manifest = {
            **total,
            "complete": True,
            "inputs": markers,
            "teacher_ids": sorted(teacher_ids),
            "config_hash": config_hash(cfg),
            "labeling_key": key,
            "relabelled": {r: n for r, n in reasons.items() if n},
            "format": cfg.format,
            "timings": {"total_s": round(elapsed, 3), "rows_this_run": rows_this_run,
                        "rows_per_s": round(rows_this_run / elapsed, 2) if rows_this_run and elapsed > 0 else None},
        }
        lock.check()
        mark_complete(out, manifest)
    print(f"labeling: {total['rows_in']} rows in {len(files)} files ({rows_this_run} this run) in {elapsed:.1f}s"
          + (f" = {rows_this_run / elapsed:.1f} rows/s" if rows_this_run else "")
          + f"; kept {total['rows_kept']}, filtered {total['rows_labeled'] - total['rows_kept']}, rejected {total['rows_rejected']}",
          flush=True)
    return manifest
