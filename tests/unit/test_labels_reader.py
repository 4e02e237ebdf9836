"""The labels folder without Ray: training reads exactly the committed label files (never rejects,
staging leftovers or stale outputs) and never a folder a labeling run is writing or left unfinished,
duplicate ids in the logs use the labelled row, output names do not depend on how a path was written,
and label files appear whole. (The lock itself: test_lease_lock.py.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import shutil
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tinymodels import make_tiny_run
from distillery import io
from distillery.training.data import DataSection, build_training_table, read_labels

SPLITS = DataSection(splits=["train", "unlabeled"], val_fraction=0.2)


@pytest.fixture()
def run_dir(tmp_path):
    return make_tiny_run(tmp_path / "run", rows_train=60, rows_unlabeled=40, rows_test=10)


def _write_manifest(labels, names):
    """A finished labeling run's manifest listing `names` (files under `labels`), as `labeling.run` writes it."""
    inputs = [{"output": n, "rows_labeled": pq.read_metadata(labels / n).num_rows, "key": n[:-8]} for n in names]
    (labels / "_done").mkdir(exist_ok=True)
    for m in inputs:
        (labels / "_done" / f"{m['key']}.json").write_text(json.dumps(m))
    (labels / "_MANIFEST.json").write_text(json.dumps({"inputs": inputs, "complete": True}))


def _leftovers(labels, ids):
    """What a labeling run leaves beside its labels: rejects (null labels) and a killed round's staging."""
    n = len(ids)
    (labels / "_rejects").mkdir()
    pq.write_table(pa.table({"id": ids, "source": ["x:1"] * n, "reason": ["query: required field missing"] * n}),
                   labels / "_rejects" / "train.parquet")
    (labels / "_staging" / "0f3a9c2e41aa").mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, "teacher_prob": [None] * n, "kept": [True] * n}, schema=pa.schema([
        ("id", pa.string()), ("teacher_prob", pa.float64()), ("kept", pa.bool_())])),
        labels / "_staging" / "0f3a9c2e41aa" / "part-0.parquet")


def test_list_files_skips_every_hidden_path_component(tmp_path):
    base = tmp_path / "_base"  # components of the path asked for do not count
    for rel in ("a.parquet", "sub/e.parquet", "_rejects/b.parquet", "_staging/x/c.parquet", ".cache/d.parquet",
                "sub/_tmp/f.parquet", "_SUCCESS", ".g.parquet.1234.tmp"):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"x")
    assert io.list_files(str(base)) == [str(base / "a.parquet"), str(base / "sub" / "e.parquet")]


def test_training_ignores_rejects_and_staging_leftovers(run_dir):
    clean = build_training_table(str(run_dir), SPLITS, "soft")
    labels = pq.read_table(run_dir / "labels" / "train.parquet")
    _write_manifest(run_dir / "labels", ["train.parquet", "unlabeled.parquet"])  # a finished run's leftovers
    _leftovers(run_dir / "labels", labels["id"].to_pylist()[:5])

    table = build_training_table(str(run_dir), SPLITS, "soft")
    assert table.counts == clean.counts and table.ids == clean.ids
    assert not np.isnan(table.target).any()


def test_training_reads_only_the_files_the_manifest_lists(run_dir):
    labels = run_dir / "labels"
    _write_manifest(labels, ["train.parquet", "unlabeled.parquet"])
    _leftovers(labels, pq.read_table(labels / "train.parquet")["id"].to_pylist()[:5])
    # an output of an input no longer labelled (e.g. named under an older key): same ids, other values
    stale = pq.read_table(labels / "train.parquet")
    pq.write_table(stale.set_column(1, "teacher_prob", pa.array([0.5] * stale.num_rows)), labels / "train-0123456789.parquet")

    table = build_training_table(str(run_dir), SPLITS, "soft")
    assert table.counts["rows_no_label"] == 0 and len(table) == len(set(table.ids))
    assert read_labels(str(labels)).num_rows == 100


def test_a_label_file_changed_after_the_commit_is_an_error(run_dir):
    labels = run_dir / "labels"
    _write_manifest(labels, ["train.parquet", "unlabeled.parquet"])
    pq.write_table(pq.read_table(labels / "train.parquet").slice(0, 10), labels / "train.parquet")
    with pytest.raises(ValueError, match=r"train.parquet: 10 rows, but the labeling manifest says 60"):
        build_training_table(str(run_dir), SPLITS, "soft")


def test_an_unfinished_labeling_run_is_an_error(run_dir):
    (run_dir / "labels" / "_done").mkdir()
    (run_dir / "labels" / "_done" / "train.json").write_text("{}")
    with pytest.raises(ValueError, match="labeling has not finished"):
        build_training_table(str(run_dir), SPLITS, "soft")
    # the click loss reads no labels at all
    assert build_training_table(str(run_dir), DataSection(splits=["train"]), "click").counts["rows_used"] == 60


def test_a_duplicated_id_in_the_logs_trains_once_on_the_first_row(run_dir):
    path = run_dir / "data" / "train" / "part-00000.parquet"
    rows = pq.read_table(path).to_pylist()
    first = rows[3]
    rows.insert(10, {**first, "query": "another row's text"})   # same id, later, within the split
    rows.append({**first, "query": "and a third"})
    pq.write_table(pa.Table.from_pylist(rows, schema=pq.read_schema(path)), path)

    table = build_training_table(str(run_dir), SPLITS, "soft")
    assert len(table.ids) == len(set(table.ids))
    assert table.counts["rows_duplicate_id"] == 2 and table.counts["rows_read"] == 102
    assert table.texts[table.ids.index(first["id"])].startswith(f"query: {first['query']} |")


def test_output_names_do_not_depend_on_how_the_path_is_written(tmp_path, monkeypatch):
    from distillery.label_store import label_file_key

    run = tmp_path / "runs" / "demo"
    (run / "data" / "train").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    absolute = label_file_key(str(run / "data" / "train" / "part-0.csv"), str(run))
    relative = label_file_key("runs/demo/data/train/part-0.csv", "runs/demo")
    dotted = label_file_key("./runs/demo/../demo/data/train/part-0.csv", "./runs/demo/")
    moved = label_file_key("/mnt/elsewhere/demo/data/train/part-0.csv", "/mnt/elsewhere/demo")
    assert absolute == relative == dotted == moved and absolute.startswith("train_part-0.csv-")
    assert label_file_key(str(run / "data" / "unlabeled" / "part-0.csv"), str(run)) != absolute


def test_label_files_appear_whole_or_not_at_all(tmp_path, monkeypatch):
    table = pa.table({"id": ["a", "b"], "teacher_prob": [0.1, 0.2]})
    target = tmp_path / "labels" / "x.parquet"

    def dies_halfway(tbl, where, **kw):
        where.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    with pytest.raises(OSError, match="disk full"):
        io.write_parquet(table, str(target))
    assert os.listdir(tmp_path / "labels") == []  # neither the file nor its temp
    monkeypatch.undo()
    io.write_parquet(table, str(target))
    assert pq.read_table(target).equals(table) and os.listdir(tmp_path / "labels") == ["x.parquet"]


def _lock(labels, **holder):
    (labels / "_LOCK.json").write_text(json.dumps({"holder": "h", "token": "t", "host": socket.gethostname(),
                                                   "pid": os.getpid(), "since": 0, **holder}))


def test_labels_a_run_is_writing_are_refused(run_dir):
    """Before: the reader looked at the manifest only, so it read labels while a run rewrote them."""
    labels = run_dir / "labels"
    _write_manifest(labels, ["train.parquet", "unlabeled.parquet"])
    _lock(labels, host="another-host", expires_at=time.time() + 60)
    with pytest.raises(ValueError, match=rf"{labels}: a labeling run is writing these labels \(holder h, "
                                         r"host another-host, .* lease until"):
        read_labels(str(labels))
    _lock(labels, host="another-host", expires_at=time.time() - 1)  # a dead run's expired lease: its manifest rules
    assert read_labels(str(labels)).num_rows == 100
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _lock(labels, pid=dead.pid, expires_at=time.time() + 60)  # a SIGKILLed driver of this host
    assert read_labels(str(labels)).num_rows == 100


@pytest.mark.parametrize("left", ["marked unfinished", "manifest not complete", "no manifest"])
def test_labels_of_a_run_that_did_not_finish_are_refused(run_dir, left):
    """What a killed run leaves: with `force`, before the fix, a folder without manifest nor `_done/`
    whose old label files the reader took as a finished run's."""
    labels = run_dir / "labels"
    _write_manifest(labels, ["train.parquet", "unlabeled.parquet"])
    if left == "marked unfinished":  # what `labeling.run` does before it relabels (force or not)
        from distillery.label_store import mark_incomplete

        mark_incomplete(str(labels), "force")
        shutil.rmtree(labels / "_done")
        assert not (labels / "_MANIFEST.json").exists()
        message = r"labeling has not finished \(a run that started relabelling at .* \(force\) did not finish"
    elif left == "manifest not complete":
        (labels / "_MANIFEST.json").write_text(json.dumps({"inputs": [], "complete": False}))
        message = r"labeling has not finished \(_MANIFEST.json is not marked complete\)"
    else:  # a manifest lost, the job's rejects still there
        (labels / "_MANIFEST.json").unlink()
        shutil.rmtree(labels / "_done")
        (labels / "_rejects").mkdir()
        message = r"labeling has not finished \(no _MANIFEST.json, but the labeling job's _rejects are there\)"
    with pytest.raises(ValueError, match=rf"{labels}: {message}"):
        build_training_table(str(run_dir), SPLITS, "soft")
