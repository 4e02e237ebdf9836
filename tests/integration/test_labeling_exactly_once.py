"""Exactly-once from labeling to training, on a real local Ray with the scripted teacher of
`test_faults_labeling` (deterministic scores from the text): ids duplicated within and across files,
a killed run's staging and lock left behind, same-named files in two folders, a run directory
written relative or absolute, a commit that dies half-way, a second run while one holds the lock.

Each test states the one thing the old code got wrong; the invariant is always the same: labels and
rejects hold every input row once, each id is labelled once, and training uses exactly those labels.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery.training.data import DataSection, build_training_table
from tests.integration.test_faults_labeling import REPO, label_config, write_data

pytestmark = pytest.mark.integration


def scripted_prob(text: str) -> float:
    """`ScriptedTeacher`'s score of one text."""
    return (zlib.crc32(text.encode()) % 1000 + 0.5) / 1000


def _table(folder: Path, name: str) -> pa.Table:
    path = folder / name
    return pq.read_table(path) if path.exists() else pa.table({"id": pa.array([], pa.string()), "reason": pa.array([], pa.string())})


def committed(run_dir: Path) -> tuple[pa.Table, pa.Table]:
    """(labels, rejects) exactly as the manifest lists them."""
    labels_dir = run_dir / "labels"
    manifest = json.loads((labels_dir / "_MANIFEST.json").read_text())
    labels = pa.concat_tables([_table(labels_dir, m["output"]) for m in manifest["inputs"]])
    rejects = pa.concat_tables([_table(labels_dir / "_rejects", m["output"]).select(["id", "reason"])
                                for m in manifest["inputs"]])
    return labels, rejects


def _with_ids(path: Path, edits: dict[int, str], drop_query: tuple[int, ...] = ()) -> list[str]:
    """Rewrite a parquet log file: row i gets id `edits[i]`; rows in `drop_query` lose their query."""
    table = pq.read_table(path)
    rows = table.to_pylist()
    for i, rid in edits.items():
        rows[i]["id"] = rid
    for i in drop_query:
        rows[i]["query"] = None
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    return [r["id"] for r in rows]


@pytest.fixture()
def on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # the driver imports the scripted teacher's module too


def test_duplicates_within_and_across_files_train_on_exactly_the_committed_labels(local_ray, on_path, tmp_path,
                                                                                    tiny_bert):
    """Old code: the triple id's two rejects collapsed into one (rows_in short by one), the id shared by
    two files was labelled twice, and training read `_rejects/` and the leftover `_staging/` too."""
    from distillery.labeling import run
    from distillery.training.init import ModelInit, build_model
    from distillery.training.loop import LoopConfig, train

    write_data(tmp_path, seed=11, rows_train=64, rows_unlabeled=64, files=2)
    data = tmp_path / "data"
    train0 = pq.read_table(data / "train" / "part-00000.parquet")["id"].to_pylist()
    train1 = pq.read_table(data / "train" / "part-00001.parquet")["id"].to_pylist()
    triple, shared = train0[1], train1[2]
    input_ids = (_with_ids(data / "train" / "part-00000.parquet", {5: triple, 9: triple}) + train1
                 + _with_ids(data / "unlabeled" / "part-00000.parquet", {}, drop_query=(0,))
                 + _with_ids(data / "unlabeled" / "part-00001.parquet", {3: shared}))
    assert len(input_ids) == 128 and len(set(input_ids)) == 125

    # what a SIGKILLed driver leaves: its lock, and a staged round holding the same ids again
    labels_dir = tmp_path / "labels"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    labels_dir.mkdir()
    (labels_dir / "_LOCK.json").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "x"}))
    (labels_dir / "_staging" / "a1b2c3d4e5f6").mkdir(parents=True)
    pq.write_table(pa.table({"id": input_ids[:20], "teacher_prob": [0.9] * 20, "kept": [True] * 20}),
                   labels_dir / "_staging" / "a1b2c3d4e5f6" / "0_000000_000000.parquet")

    manifest = run(label_config(tmp_path, tmp_path / "calls"))

    labels, rejects = committed(tmp_path)
    label_ids, reject_ids = labels["id"].to_pylist(), rejects["id"].to_pylist()
    assert len(set(label_ids)) == len(label_ids) == 125 - 1  # every distinct id once, but the one without a query
    assert Counter(label_ids + reject_ids) == Counter(input_ids)
    reasons = Counter(zip(reject_ids, rejects["reason"].to_pylist()))
    assert reasons[(triple, "id: duplicate id within the file")] == 2
    assert [r for (i, r) in reasons if i == shared] == [
        "id: duplicate of a row in data/train/part-00001.parquet (the first row with an id owns it)"]
    assert manifest["rows_in"] == 128 == manifest["rows_labeled"] + manifest["rows_rejected"]
    assert manifest["rows_rejected"] == 4 and manifest["rows_labeled"] == 124
    assert all(m["rows_in"] == m["rows_labeled"] + m["rows_rejected"] for m in manifest["inputs"])
    assert not (labels_dir / "_staging").exists() and not (labels_dir / "_LOCK.json").exists()

    table = build_training_table(str(tmp_path), DataSection(splits=["train", "unlabeled"], val_fraction=0.25), "soft")
    kept = {i for i, k in zip(label_ids, labels["kept"].to_pylist()) if k}
    assert sorted(table.ids) == sorted(kept)
    assert table.counts["rows_duplicate_id"] == 3 and table.counts["rows_no_label"] == 1
    # each row trains on the label the teacher gave its own text (the first row of a duplicated id)
    assert all(math.isclose(t, scripted_prob(x), rel_tol=1e-6) for t, x in zip(table.target, table.texts))
    first_triple = pq.read_table(data / "train" / "part-00000.parquet").slice(1, 1).to_pylist()[0]
    assert table.texts[table.ids.index(triple)].startswith(f"query: {first_triple['query']} |")

    model, tok = build_model(ModelInit(kind="pretrained", source=str(tiny_bert)))
    state = train(LoopConfig(loss="soft", epochs=1, batch_size=32, max_length=32, warmup_fraction=0.0),
                  table, model, tok)
    assert math.isfinite(state.history[0]["loss"]) and math.isfinite(state.history[0]["val_loss"])


def test_an_id_three_times_in_one_file_is_one_label_and_two_rejects(local_ray, on_path, tmp_path):
    """Old code de-duplicated the commit on (id, rejected, reason): the two identical rejects became
    one, so an input row vanished and `rows_in` under-counted."""
    from distillery.labeling import run

    write_data(tmp_path, seed=14, rows_train=16, rows_unlabeled=16, files=1)
    path = tmp_path / "data" / "train" / "part-00000.parquet"
    triple = pq.read_table(path)["id"][0].as_py()
    input_ids = _with_ids(path, {4: triple, 7: triple}) + pq.read_table(tmp_path / "data" / "unlabeled")["id"].to_pylist()

    manifest = run(label_config(tmp_path, tmp_path / "calls"))
    labels, rejects = committed(tmp_path)
    assert rejects["id"].to_pylist() == [triple, triple]
    assert Counter(labels["id"].to_pylist() + rejects["id"].to_pylist()) == Counter(input_ids)
    assert manifest["rows_in"] == 32 and manifest["rows_labeled"] == 30 and manifest["rows_rejected"] == 2


def test_ids_and_output_names_do_not_depend_on_how_paths_are_written(local_ray, on_path, tmp_path):
    """Old code: ids of a log without an id column were `<file>:<line>`, so a line written twice (a
    double write, overlapping exports) was labelled twice; and the same run with a relative `run_dir`
    hashed other output names, relabelled everything and doubled every label."""
    from distillery.data.parsing import content_id
    from distillery.labeling import run

    rows = {split: [{"query": f"{split} query {i}", "ad_title": f"ad {i}"} for i in range(12)]
            for split in ("train", "unlabeled")}
    lines = {split: [f"{r['query']},{r['ad_title']}" for r in rows[split]] for split in rows}
    lines["train"].insert(7, lines["train"][2])       # the same impression twice in one file
    lines["unlabeled"].append(lines["train"][4])      # and one of them again in the next file
    for split in ("train", "unlabeled"):
        (tmp_path / "data" / split).mkdir(parents=True)
        (tmp_path / "data" / split / "logs.csv").write_text("query,ad_title\n" + "\n".join(lines[split]) + "\n")

    first = run(label_config(tmp_path, tmp_path / "calls", format="csv"))
    labels, rejects = committed(tmp_path)
    expected = [content_id(r) for split in ("train", "unlabeled") for r in rows[split]]
    assert sorted(labels["id"].to_pylist()) == sorted(expected)
    assert first["rows_in"] == 26 == first["rows_labeled"] + first["rows_rejected"]
    assert first["rows_labeled"] == 24 and first["rows_rejected"] == 2  # both counted, each later one rejected
    assert sorted(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist())) == sorted([
        (content_id(rows["train"][2]), "id: duplicate id within the file"),
        (content_id(rows["train"][4]),
         "id: duplicate of a row in data/train/logs.csv (the first row with an id owns it)")])

    relative = os.path.relpath(tmp_path, os.getcwd())
    assert not os.path.isabs(relative)
    again = run(label_config(Path(relative), tmp_path / "calls", format="csv"))
    assert again["timings"]["rows_this_run"] == 0 and again["rows_labeled"] == 24
    assert len(list((tmp_path / "labels").glob("*.parquet"))) == 2
    assert committed(tmp_path)[0].equals(labels)


def test_a_commit_that_dies_half_way_leaves_no_partial_label_file(local_ray, on_path, tmp_path, monkeypatch):
    """Old code wrote `labels/<key>.parquet` in place: a commit killed mid-write left a truncated
    file under its final name, which every reader then tripped over."""
    from distillery.labeling import run

    write_data(tmp_path, seed=12, rows_train=32, rows_unlabeled=32, files=1)
    real_write = pq.write_table

    def dies_halfway(table, where, *args, **kwargs):
        if "teacher_prob" not in table.column_names:
            return real_write(table, where, *args, **kwargs)
        if isinstance(where, str):
            Path(where).write_bytes(b"PAR1 half a file")
        else:
            where.write(b"PAR1 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(pq, "write_table", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        run(label_config(tmp_path, tmp_path / "calls"))
    left = [p.relative_to(tmp_path / "labels") for p in (tmp_path / "labels").rglob("*") if p.is_file()]
    # no label file (whole or partial), temp file, marker, staging or lock; the mark that says so
    assert left == [Path("_INCOMPLETE.json")]
    monkeypatch.setattr(pq, "write_table", real_write)

    manifest = run(label_config(tmp_path, tmp_path / "calls"))
    assert manifest["rows_in"] == manifest["rows_labeled"] == 64
    table = build_training_table(str(tmp_path), DataSection(splits=["train", "unlabeled"]), "soft")
    assert table.counts["rows_no_label"] == 0 and len(table) == 64


def test_a_second_run_on_the_same_output_is_refused(local_ray, on_path, tmp_path):
    """Old code had no lock: two runs on one output committed over each other."""
    from distillery.labeling import run

    write_data(tmp_path, seed=13, rows_train=16, rows_unlabeled=16, files=1)
    (tmp_path / "labels").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / "labels" / "_LOCK.json").write_text(
            json.dumps({"host": socket.gethostname(), "pid": holder.pid, "token": "other", "since": 0}))
        with pytest.raises(RuntimeError, match=f"another labeling run holds this output .*pid {holder.pid}") as err:
            run(label_config(tmp_path, tmp_path / "calls"))
        assert type(err.value).__name__ == "LabelsLocked"
        assert sorted(p.name for p in (tmp_path / "labels").iterdir()) == ["_LOCK.json"]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_real_avazu_log_with_duplicated_ids_trains_on_the_committed_labels(local_ray, on_path, tmp_path, shared_data):
    """The reported case on a real click log (the shared Avazu sample, real 64-bit ids): two ids
    duplicated, one within a file and one across files. Old code: the rejected duplicates went to
    `_rejects/` and training read them as labels, `2 duplicate id(s) in labels (exactly-once broken)`."""
    from distillery.data.readers import read_logs
    from distillery.labeling import run

    rows = read_logs(str(shared_data / "avazu-deepctr" / "avazu_sample.txt")).table.to_pylist()
    assert len(rows) == 100
    first, second = rows[:60], rows[60:]
    first.append({**rows[10], "device": "dup-within"})     # same id again, later in the same file
    second.insert(5, {**rows[20], "device": "dup-across"})  # an id of the first file in the second
    (tmp_path / "data" / "train").mkdir(parents=True)
    for name, part in (("part-00000", first), ("part-00001", second)):
        pq.write_table(pa.Table.from_pylist(part), tmp_path / "data" / "train" / f"{name}.parquet")

    manifest = run(label_config(tmp_path, tmp_path / "calls", inputs=["{run_dir}/data/train"],
                                filters={"required_fields": []}))
    assert manifest["rows_in"] == 102 and manifest["rows_labeled"] == 100 and manifest["rows_rejected"] == 2

    labels, rejects = committed(tmp_path)
    assert sorted(rejects["id"].to_pylist()) == sorted([rows[10]["id"], rows[20]["id"]])
    table = build_training_table(str(tmp_path), DataSection(splits=["train"], val_fraction=0.2), "soft")
    assert table.counts["rows_duplicate_id"] == 2 and len(table) == len(set(table.ids)) == 100
    prob = dict(zip(labels["id"].to_pylist(), labels["teacher_prob"].to_pylist()))
    assert all(math.isclose(t, prob[i], rel_tol=1e-6) for i, t in zip(table.ids, table.target))
    assert not any("dup-" in t for t in table.texts)  # the rows that were labelled, not their duplicates


def test_training_never_reads_a_force_run_that_did_not_finish(local_ray, on_path, tmp_path, monkeypatch):
    """Old code: `force` removed the manifest and `_done/` and relabelled; killed mid-way it left the
    old label files with neither, a folder the reader took as labels written by hand, and read."""
    from distillery.labeling import run
    from distillery.training.data import read_labels

    write_data(tmp_path, seed=15, rows_train=32, rows_unlabeled=32, files=1)
    run(label_config(tmp_path, tmp_path / "calls"))
    assert read_labels(str(tmp_path / "labels")).num_rows == 64
    real_write = pq.write_table

    def dies_in_the_commit(table, where, *args, **kwargs):
        if "teacher_prob" in table.column_names:
            raise OSError("No space left on device")
        return real_write(table, where, *args, **kwargs)

    monkeypatch.setattr(pq, "write_table", dies_in_the_commit)
    with pytest.raises(OSError, match="No space left"):
        run(label_config(tmp_path, tmp_path / "calls", force=True))
    monkeypatch.setattr(pq, "write_table", real_write)
    with pytest.raises(ValueError, match=r"labeling has not finished \(a run that started relabelling .*\(force: 2 input"):
        build_training_table(str(tmp_path), DataSection(splits=["train", "unlabeled"]), "soft")

    manifest = run(label_config(tmp_path, tmp_path / "calls", force=True))
    assert manifest["complete"] and manifest["timings"]["rows_this_run"] == 64
    assert read_labels(str(tmp_path / "labels")).num_rows == 64 and not (tmp_path / "labels" / "_INCOMPLETE.json").exists()


def test_a_run_that_loses_its_lease_commits_nothing(local_ray, on_path, tmp_path):
    """Old code had no lease: a run whose lock another run took over went on committing beside it."""
    import threading
    import time

    from distillery.label_store import LeaseLost
    from distillery.labeling import run

    write_data(tmp_path, seed=16, rows_train=32, rows_unlabeled=32, files=1)
    lock = tmp_path / "labels" / "_LOCK.json"

    def take_over_mid_run():  # what a second driver does once this run's lease looks expired to it
        deadline = time.time() + 120
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.05)
        lock.write_text(json.dumps({"holder": "other", "token": "other", "host": "other-host", "pid": 1,
                                    "expires_at": time.time() + 600}))

    thief = threading.Thread(target=take_over_mid_run)
    thief.start()
    try:
        with pytest.raises(LeaseLost, match=r"held by another run \(holder other, host other-host"):
            run(label_config(tmp_path, tmp_path / "calls", teacher={"delay_s": 0.3}))
    finally:
        thief.join()
    assert not (tmp_path / "labels" / "_done").exists() and not list((tmp_path / "labels").glob("*.parquet"))
    assert json.loads(lock.read_text())["holder"] == "other"  # the other run's lock is left alone
