"""The labels folder on disk: output names, which files are committed, and the one-writer lock.

    labels/
      <key>.parquet            one input file's labels (LABEL_SCHEMA), written temp + rename
      _rejects/<key>.parquet   that input file's rejects (REJECT_SCHEMA)
      _done/<key>.json         that file's commit marker, written after both parquet files
      _MANIFEST.json           written last by a finished run: totals and every input's marker
      _staging/<round>/        Ray Data's output for a round in flight; removed after its commit
      _LOCK.json               held by the run writing this folder (host, pid, token)

Readers never list this folder: `committed_label_files` names the files of the last finished run
(from `_MANIFEST.json`), so rejects, staging leftovers and outputs of inputs that are no longer
labelled are never read. Both the labeling job (writer) and the training table (reader) use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import time
import uuid

import pyarrow as pa

from distillery import io
from distillery.data.schema import ID

__all__ = ["LABEL_SCHEMA", "REJECT_SCHEMA", "MANIFEST", "LabelsLocked", "OutputLock", "input_name",
           "label_file_key", "done_marker", "committed_label_files"]

log = logging.getLogger(__name__)

LABEL_SCHEMA = pa.schema([
    pa.field(ID, pa.string()), pa.field("teacher_prob", pa.float64()), pa.field("confidence", pa.float64()),
    pa.field("kept", pa.bool_()), pa.field("reason", pa.string()), pa.field("teacher_id", pa.string()),
    pa.field("labeled_on", pa.string()),
])
REJECT_SCHEMA = pa.schema([pa.field(ID, pa.string()), pa.field("source", pa.string()), pa.field("reason", pa.string())])
MANIFEST = "_MANIFEST.json"
LOCK = "_LOCK.json"


def _normal(path: str) -> str:
    """A local path made absolute with symlinks resolved; a URI without its trailing slash."""
    return str(path).rstrip("/") if "://" in str(path) else os.path.realpath(path)


def input_name(path: str, run_dir: str | None) -> str:
    """The name an input file goes by in a run: its path relative to `run_dir` (`data/train/part-0.csv`)
    when it lies inside, else its absolute path or URI. The same for `runs/demo` and `/abs/runs/demo`,
    and unchanged when the whole run directory moves."""
    p = _normal(path)
    if run_dir is not None:
        root = _normal(run_dir)
        if p.startswith(root + "/"):
            return p[len(root) + 1:]
    return p


def label_file_key(path: str, run_dir: str | None = None) -> str:
    """A stable, filesystem-safe name for one input file's outputs: `<last two parts>-<hash of its name>`,
    where the name is `input_name(path, run_dir)` (so not the text the path was written in)."""
    name = input_name(path, run_dir)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(name.split("/")[-2:]))[-80:]
    return f"{stem}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def done_marker(out: str, key: str) -> str:
    return io.join(out, "_done", f"{key}.json")


def committed_label_files(labels_dir: str) -> list[tuple[str, int]] | None:
    """`[(label file, rows it must hold)]` of the last finished labeling run, in input order.

    None when `labels_dir` was not written by the labeling job (no manifest, no `_done/`): the caller
    then reads every visible parquet file. Raises ValueError when labeling started but never finished
    (markers without a manifest), so a training run cannot silently use part of the labels.
    """
    manifest_path = io.join(labels_dir, MANIFEST)
    if io.exists(manifest_path):
        manifest = io.read_json(manifest_path)
        return [(io.join(labels_dir, m["output"]), int(m["rows_labeled"])) for m in manifest["inputs"]]
    if io.exists(io.join(labels_dir, "_done")):
        raise ValueError(f"{labels_dir}: labeling has not finished (no {MANIFEST}, but files were committed "
                         "under _done/); re-run the labeling job to finish it before training")
    return None


# ---------------------------------------------------------------- the one-writer lock


class LabelsLocked(RuntimeError):
    """Another labeling run holds the output folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class OutputLock:
    """`<out>/_LOCK.json` for the length of a labeling run: one writer per labels folder.

    A lock left by a dead process on this host (a SIGKILLed driver) is taken over; a lock held by a
    live process, or by another host (whose processes cannot be checked), raises `LabelsLocked`
    naming the file and its holder. Exclusive creation is atomic on local disks and best effort on
    object stores (see `io.create_exclusive`).
    """

    def __init__(self, out: str):
        self.path = io.join(out, LOCK)
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                       "since": time.time()}

    def _stale(self, holder: dict) -> bool:
        same_host = holder.get("host") == self.holder["host"]
        pid = holder.get("pid")
        return same_host and isinstance(pid, int) and pid != os.getpid() and not _alive(pid)

    def __enter__(self) -> "OutputLock":
        body = json.dumps(self.holder, indent=2).encode()
        for _attempt in range(3):
            if io.create_exclusive(self.path, body):
                return self
            try:
                holder = io.read_json(self.path)
            except FileNotFoundError:  # released between our attempt and the read: try again
                continue
            if not self._stale(holder):
                raise LabelsLocked(
                    f"{self.path}: another labeling run holds this output (host {holder.get('host')}, "
                    f"pid {holder.get('pid')}, since {time.ctime(holder.get('since', 0))}); wait for it, "
                    "or delete the file if that run is gone")
            log.warning("%s: taking over the lock of dead process %s", self.path, holder.get("pid"))
            io.remove_file(self.path)
        raise LabelsLocked(f"{self.path}: could not take the lock (contended)")

    def __exit__(self, *exc) -> None:
        try:
            if io.read_json(self.path).get("token") == self.holder["token"]:
                io.remove_file(self.path)
        except FileNotFoundError:
            pass
