"""Day two: labels follow their inputs (issue 27). A re-run on a real local Ray with the scripted
teacher of `test_faults_labeling` (deterministic scores from the text) relabels exactly the input
files whose content, teacher or labeling config changed, and keeps the rest.

Before: a file counted as done when its `_done` marker existed, so new logs written over the old
files were never labelled (14,000 of 14,000 ids stale in the demo)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.test_faults_labeling import REPO, input_ids, label_config, write_data

pytestmark = pytest.mark.integration


def _labels(run_dir: Path) -> dict[str, float]:
    """{id: teacher_prob} of the files the manifest lists."""
    labels_dir = run_dir / "labels"
    manifest = json.loads((labels_dir / "_MANIFEST.json").read_text())
    table = pa.concat_tables([pq.read_table(labels_dir / m["output"]) for m in manifest["inputs"]])
    return dict(zip(table["id"].to_pylist(), table["teacher_prob"].to_pylist()))


def test_a_rerun_relabels_exactly_what_changed(local_ray, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO))
    from distillery.labeling import run

    run_dir, log = tmp_path / "run", tmp_path / "calls"
    write_data(run_dir, seed=0, rows_train=60, rows_unlabeled=90, files=3)
    first = run(label_config(run_dir, log))
    assert first["timings"]["rows_this_run"] == 150 and set(_labels(run_dir)) == set(input_ids(run_dir))

    again = run(label_config(run_dir, log))  # nothing changed: nothing relabelled
    assert again["timings"]["rows_this_run"] == 0 and "relabelled" in again and not again["relabelled"]

    # new logs written over the same file names (data.seed=1): every file relabelled, the labels are
    # a fresh run's on the new logs, id for id
    write_data(run_dir, seed=1, rows_train=60, rows_unlabeled=90, files=3)
    new = run(label_config(run_dir, log))
    assert new["timings"]["rows_this_run"] == 150 and new["relabelled"] == {"input changed": 6}
    fresh_dir = tmp_path / "fresh"
    write_data(fresh_dir, seed=1, rows_train=60, rows_unlabeled=90, files=3)
    run(label_config(fresh_dir, tmp_path / "calls_fresh"))
    got, want = _labels(run_dir), _labels(fresh_dir)
    assert set(got) == set(want) == set(input_ids(run_dir))
    assert max(abs(got[i] - want[i]) for i in want) <= 1e-3

    # one input file rewritten: only that file relabelled (counted), the others kept as they were
    path = sorted((run_dir / "data" / "unlabeled").glob("*.parquet"))[0]
    table = pq.read_table(path)
    rows = table.to_pylist()
    for r in rows:
        r["query"] = f"{r['query']} today"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    one = run(label_config(run_dir, log))
    assert one["relabelled"] == {"input changed": 1} and one["timings"]["rows_this_run"] == len(rows)
    capsys.readouterr()

    # the labeling config changed (a filter a label depends on): everything relabelled
    changed = run(label_config(run_dir, log, filters={"required_fields": ["query"]}))
    assert changed["relabelled"] == {"teacher or config changed": 6} and changed["timings"]["rows_this_run"] == 150
    assert "6 to label (6 teacher or config changed)" in capsys.readouterr().out


def test_a_refitted_teacher_folder_relabels_everything(tmp_path):
    """The labeling key covers the files the teacher config names (a refit writes them anew), not
    other strings of its kwargs (a log folder); pure, no Ray."""
    from distillery.labeling import labeling_key

    teacher_dir, logs = tmp_path / "teacher", tmp_path / "calls"
    teacher_dir.mkdir()
    logs.mkdir()
    (teacher_dir / "two_tower.json").write_text("{}")
    cfg = label_config(tmp_path, logs, teacher={"model": str(teacher_dir)})
    key = labeling_key(cfg)
    (logs / "a-call").write_text("x")  # a custom teacher's log folder: not what labels depend on
    assert labeling_key(cfg) == key
    (teacher_dir / "two_tower.json").write_text('{"refit": 1}')  # the teacher stage ran again
    assert labeling_key(cfg) != key
    shutil.rmtree(teacher_dir)
