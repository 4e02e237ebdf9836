"""The labels folder on disk: output names, which files are committed, and the one-writer lock.

    labels/
      <key>.parquet            one input file's labels (LABEL_SCHEMA), written temp + rename
      _rejects/<key>.parquet   that input file's rejects (REJECT_SCHEMA)
      _done/<key>.json         that file's commit marker, written after both parquet files
      _MANIFEST.json           written last by a finished run (`complete: true`): totals and every
                               input's marker
      _INCOMPLETE.json         written (and the manifest removed) before a run changes anything,
                               removed after it writes the manifest: a killed run, `force` included,
                               leaves it, and readers refuse the folder
      _staging/<round>/        Ray Data's output for a round in flight; removed after its commit
      _LOCK.json               the writing run's lease (`OutputLock`: holder, host, pid, expires_at)

Readers never list this folder: `committed_label_files` names the files of the last finished run
(from `_MANIFEST.json`), so rejects, staging leftovers and outputs of inputs that are no longer
labelled are never read, and it refuses a folder a run is writing or left unfinished. Both the
labeling job (writer) and the training table (reader) use it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid

import pyarrow as pa

from distillery import io
from distillery.data.schema import ID

__all__ = ["LABEL_SCHEMA", "REJECT_SCHEMA", "MANIFEST", "LOCK", "LabelsLocked", "LeaseLost", "OutputLock",
           "input_name", "label_file_key", "done_marker", "committed_label_files", "mark_incomplete", "mark_complete"]

log = logging.getLogger(__name__)

LABEL_SCHEMA = pa.schema([
    pa.field(ID, pa.string()), pa.field("teacher_prob", pa.float64()), pa.field("confidence", pa.float64()),
    pa.field("kept", pa.bool_()), pa.field("reason", pa.string()), pa.field("teacher_id", pa.string()),
    pa.field("labeled_on", pa.string()),
])
REJECT_SCHEMA = pa.schema([pa.field(ID, pa.string()), pa.field("source", pa.string()), pa.field("reason", pa.string())])
MANIFEST = "_MANIFEST.json"
INCOMPLETE = "_INCOMPLETE.json"
LOCK = "_LOCK.json"
DEFAULT_LOCK_TTL_S = 60.0
_JOB_TRACES = ("_done", "_rejects", "_staging", LOCK, INCOMPLETE)  # what only the labeling job leaves in a folder


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


def mark_incomplete(out: str, why: str) -> None:
    """Before a run changes anything in `out`: `_INCOMPLETE.json` first, then the manifest goes, so no
    moment shows a finished run and readers refuse the folder until `mark_complete` (a killed run,
    `force` included, leaves it so; without a manifest the pipeline also re-runs the stage)."""
    io.write_json(io.join(out, INCOMPLETE), {"why": why, "started_at": time.time()})
    io.remove_file(io.join(out, MANIFEST))


def mark_complete(out: str, manifest: dict) -> None:
    """A run's last step: the manifest (`complete: true`), then `_INCOMPLETE.json` goes."""
    io.write_json(io.join(out, MANIFEST), {**manifest, "complete": True})
    io.remove_file(io.join(out, INCOMPLETE))


def _refuse_unfinished(labels_dir: str) -> None:
    path = io.join(labels_dir, INCOMPLETE)
    if io.exists(path):
        try:
            mark = io.read_json(path)
        except (FileNotFoundError, ValueError):
            mark = {}
        raise ValueError(f"{labels_dir}: labeling has not finished (a run that started relabelling at "
                         f"{time.ctime(mark.get('started_at', 0))} ({mark.get('why', 'unknown')}) did not finish: "
                         f"{INCOMPLETE}); re-run the labeling job to finish it before training")


def _refuse_live_lock(labels_dir: str) -> None:
    holder = _read_holder(io.join(labels_dir, LOCK))
    if holder is not None and _why_stale(holder) is None:
        raise ValueError(f"{labels_dir}: a labeling run is writing these labels ({_describe(holder)}); "
                         "train after it finishes")


def committed_label_files(labels_dir: str) -> list[tuple[str, int]] | None:
    """`[(label file, rows it must hold)]` of the last finished labeling run, in input order.

    None when `labels_dir` was not written by the labeling job (no manifest and none of its files):
    the caller then reads every visible parquet file. Raises ValueError naming the folder and why
    when labels are not final: a labeling run holds its lock (a live lease), or a run started and did
    not finish (`_INCOMPLETE.json`, as a killed or running run leaves it, `force` included; a manifest
    not marked complete; or no manifest beside the job's `_done/`, `_rejects/`, `_staging/` or lock),
    so a training run never reads part of a run's labels.
    """
    _refuse_live_lock(labels_dir)
    _refuse_unfinished(labels_dir)
    manifest_path = io.join(labels_dir, MANIFEST)
    if io.exists(manifest_path):
        manifest = io.read_json(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("complete") is not True or not isinstance(
                manifest.get("inputs"), list):
            raise ValueError(f"{labels_dir}: labeling has not finished ({MANIFEST} is not marked complete); "
                             "re-run the labeling job to finish it before training")
        return [(io.join(labels_dir, m["output"]), int(m["rows_labeled"])) for m in manifest["inputs"]]
    traces = [t for t in _JOB_TRACES if io.exists(io.join(labels_dir, t))]
    if traces:
        raise ValueError(f"{labels_dir}: labeling has not finished (no {MANIFEST}, but the labeling job's "
                         f"{', '.join(traces)} are there); re-run the labeling job to finish it before training")
    return None


# ---------------------------------------------------------------- the one-writer lease


class LabelsLocked(RuntimeError):
    """Another labeling run holds the output folder's lock."""


class LeaseLost(RuntimeError):
    """This run's lease on the output folder passed to another run: it must stop before committing."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(path: str) -> dict | None:
    """The lock (or takeover claim) file's holder; None when there is no file. An unreadable file
    holds no lease and gets a token from its bytes, so it can be taken over like any stale lock."""
    try:
        raw = io.read_bytes(path)
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(raw)
    except ValueError:
        holder = None
    if not isinstance(holder, dict):
        holder = {}
    holder.setdefault("token", "unreadable-" + hashlib.sha256(raw).hexdigest()[:16])
    return holder


def _why_stale(holder: dict, now: float | None = None) -> str | None:
    """Why `holder`'s lease no longer holds, or None while it does.

    Expired: `expires_at` (unix s) has passed. Dead: the holder is a process of this host that no
    longer exists (a SIGKILLed driver; no need to wait for its lease). A lock without `expires_at`
    (written before locks were leases) holds while its process on this host lives, and never for a
    process of another host, which cannot be checked.
    """
    now = time.time() if now is None else now
    same_host = holder.get("host") == socket.gethostname()
    pid = holder.get("pid")
    checkable = same_host and isinstance(pid, int) and pid != os.getpid()
    expires = holder.get("expires_at")
    if isinstance(expires, (int, float)) and expires <= now:
        return f"its lease expired at {time.ctime(expires)}"
    if checkable and not _alive(pid):
        return f"its process {pid} on this host is gone"
    if not isinstance(expires, (int, float)) and not (same_host and isinstance(pid, int)):
        return "it records no lease expiry"
    return None


def _describe(holder: dict) -> str:
    expires = holder.get("expires_at")
    until = f"lease until {time.ctime(expires)}" if isinstance(expires, (int, float)) else "no lease expiry"
    return f"holder {holder.get('holder', '?')}, host {holder.get('host')}, pid {holder.get('pid')}, {until}"


class OutputLock:
    """`<out>/_LOCK.json`, a lease on the output folder for the length of a labeling run: one writer.

    The file names its holder (a random id), host, pid and `expires_at` (unix s); a heartbeat thread
    renews it every `ttl_s / 3`. Another run may take over a lock whose lease expired (a driver on a
    replaced host) or whose process on this host is gone; a live lock raises `LabelsLocked` naming
    the holder and its expiry. Takeover is atomic: the taker first creates `<lock>.takeover-<stale
    token>` exclusively (`io.create_exclusive`), so of several runs taking over one stale lock exactly
    one proceeds; it then checks the lock is still that stale one and replaces it (temp + rename). A
    taker that dies mid-way leaves a claim that goes stale in turn and is taken over the same way.

    A run that finds its lock replaced, or a takeover claim on it, has lost the lease: the heartbeat
    records it and `check()` (called before every commit) raises `LeaseLost`. So does `check()` when
    the lease expired before it could be renewed (a stalled process may have been taken over).

    Local disks: exclusive creation and rename are atomic, so exactly one taker wins. Object stores:
    pyarrow has no conditional create, so `create_exclusive` is check-then-write: two takers in the
    same instant may both proceed; the later write holds the file and the other run raises
    `LeaseLost` at its next renewal or commit. Leases assume host clocks agree to well under `ttl_s`.
    """

    def __init__(self, out: str, ttl_s: float = DEFAULT_LOCK_TTL_S):
        if not ttl_s > 0:
            raise ValueError(f"lock_ttl_s: must be > 0, got {ttl_s}")
        self.path = io.join(out, LOCK)
        self.ttl_s = float(ttl_s)
        self.token = uuid.uuid4().hex
        self.holder = {"holder": self.token, "token": self.token, "host": socket.gethostname(), "pid": os.getpid(),
                       "since": time.time(), "ttl_s": self.ttl_s, "expires_at": 0.0}
        self._lost: str | None = None
        self._stop = threading.Event()
        self._renewing = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------ taking the lock

    def _body(self) -> bytes:
        self.holder["expires_at"] = time.time() + self.ttl_s
        return json.dumps(self.holder, indent=2).encode()

    def _claim(self, token: str) -> str:
        return f"{self.path}.takeover-{re.sub(r'[^A-Za-z0-9_-]', '_', str(token))[:64]}"

    def _take_over(self, stale: dict) -> bool:
        """Replace the stale lock `stale` with ours; True if this run won it."""
        chain = [stale["token"]]
        while True:
            claim = self._claim(chain[-1])
            if io.create_exclusive(claim, self._body()):
                break
            claimer = _read_holder(claim)
            if claimer is None:  # the winner finished and removed its claim: the lock shows who won
                return False
            if _why_stale(claimer) is None:
                raise LabelsLocked(f"{self.path}: another labeling run is taking over this output's stale lock "
                                   f"({_describe(claimer)})")
            chain.append(claimer["token"])  # that taker died mid-way: take over its claim
        current = _read_holder(self.path)
        won = current is None or (current["token"] in chain and _why_stale(current) is not None)
        if won:
            log.warning("%s: taking over the lock of %s: %s", self.path, _describe(stale), _why_stale(stale))
            io.write_bytes(self.path, self._body())
        for token in chain:  # after the lock is ours: a late taker's claim then fails its check above
            io.remove_file(self._claim(token))
        return won

    def __enter__(self) -> "OutputLock":
        for _attempt in range(5):
            if io.create_exclusive(self.path, self._body()) or self._take_over_if_stale():
                self._thread = threading.Thread(target=self._heartbeat, name=f"lease {self.path}", daemon=True)
                self._thread.start()
                return self
        raise LabelsLocked(f"{self.path}: could not take the lock (contended); try again")

    def _take_over_if_stale(self) -> bool:
        holder = _read_holder(self.path)
        if holder is None:  # released between our attempt and the read: try again
            return False
        if _why_stale(holder) is None:
            raise LabelsLocked(f"{self.path}: another labeling run holds this output ({_describe(holder)}); wait "
                               "for it, or for its lease to expire if that run is gone")
        return self._take_over(holder)

    # ------------------------------------------------ keeping it

    def _renew(self) -> None:
        with self._renewing:
            if self._lost:
                raise LeaseLost(self._lost)
            current = _read_holder(self.path)
            if current is None or current["token"] != self.token:
                self._lost = (f"{self.path}: this run's lock is gone or held by another run "
                              f"({_describe(current) if current else 'no lock file'}); stopping before any commit")
            elif io.exists(self._claim(self.token)):
                self._lost = f"{self.path}: another run is taking over this run's lock; stopping before any commit"
            elif self.holder["expires_at"] <= time.time():
                self._lost = (f"{self.path}: this run's lease expired at {time.ctime(self.holder['expires_at'])} "
                              "before it was renewed (another run may have taken over); stopping before any commit")
            if self._lost:
                raise LeaseLost(self._lost)
            io.write_bytes(self.path, self._body())

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self._renew()
            except LeaseLost as err:
                log.error("%s", err)
                return
            except OSError as err:  # a storage hiccup: the next beat tries again before the lease ends
                log.warning("%s: could not renew the lease: %s", self.path, err)

    def check(self) -> None:
        """Renew the lease now; raise `LeaseLost` if this run no longer holds it (before a commit)."""
        self._renew()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._renewing:
            current = _read_holder(self.path)
            if current is not None and current["token"] == self.token:
                io.remove_file(self.path)
