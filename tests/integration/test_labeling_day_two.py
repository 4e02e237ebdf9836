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


def _demo_config(run_dir: Path, teacher_dir: Path, seed: int):
    """The demo's pipeline config (jobs/configs/demo.yaml) at test size, labelled by a tiny random BERT."""
    from distillery.config import load_config
    from distillery.pipeline import PipelineConfig

    return load_config(PipelineConfig, "jobs/configs/demo.yaml", [
        f"run_dir={run_dir}", f"data.seed={seed}", "data.rows_train=40", "data.rows_unlabeled=60",
        "data.rows_test=10", "data.files_per_split=2", "ray.num_cpus=4",
        f"label.teacher={{kind: hf-classifier, model: {teacher_dir}, max_length: 32, num_threads: 1, batch_size: 64}}",
        "label.actors.batch_size=64",
    ])


def _committed_labels(run_dir: Path) -> dict[str, float]:
    from distillery.training.data import read_labels

    table = read_labels(str(run_dir / "labels"))
    return dict(zip(table["id"].to_pylist(), table["teacher_prob"].to_pylist()))


def _data_ids(run_dir: Path) -> set[str]:
    return {i for split in ("train", "unlabeled") for p in (run_dir / "data" / split).glob("*.parquet")
            for i in pq.read_table(p, columns=["id"])["id"].to_pylist()}


def test_day_two_with_the_demo_data_and_label_stages(local_ray, tmp_path, monkeypatch):
    """Issue 27's scripted check on the demo's own `data → label` stage code: new logs, a changed
    teacher, one changed input file, an input removed."""
    from tinymodels import save_tiny_bert

    from distillery.pipeline_stages import run_data, run_label

    monkeypatch.chdir(REPO)
    run_dir, teacher = tmp_path / "run", tmp_path / "run" / "teacher"
    save_tiny_bert(teacher, seed=0)
    day_one = _demo_config(run_dir, teacher, seed=0)
    run_data(day_one)
    assert run_label(day_one)["rows_in"] == 100 and set(_committed_labels(run_dir)) == _data_ids(run_dir)

    # (a) new logs (the next day's data seed) over the same file names: the labels are a fresh run's
    day_two = _demo_config(run_dir, teacher, seed=1)
    run_data(day_two)
    run_label(day_two)
    manifest = json.loads((run_dir / "labels" / "_MANIFEST.json").read_text())
    assert manifest["relabelled"] == {"input changed": 4} and manifest["timings"]["rows_this_run"] == 100
    fresh_dir = tmp_path / "fresh"
    save_tiny_bert(fresh_dir / "teacher", seed=0)
    fresh = _demo_config(fresh_dir, fresh_dir / "teacher", seed=1)
    run_data(fresh)
    run_label(fresh)
    got, want = _committed_labels(run_dir), _committed_labels(fresh_dir)
    assert set(got) == set(want) == _data_ids(run_dir)
    assert max(abs(got[i] - want[i]) for i in want) <= 1e-3

    # (b) the teacher refitted (its folder written anew): every file relabelled
    save_tiny_bert(teacher, seed=1)
    run_label(day_two)
    manifest = json.loads((run_dir / "labels" / "_MANIFEST.json").read_text())
    assert manifest["relabelled"] == {"teacher or config changed": 4} and manifest["timings"]["rows_this_run"] == 100
    refitted = _committed_labels(run_dir)
    assert set(refitted) == set(got) and any(abs(refitted[i] - got[i]) > 1e-6 for i in got)

    # (c) one input file changed: only it is relabelled, and the manifest counts it
    path = sorted((run_dir / "data" / "train").glob("*.parquet"))[0]
    table = pq.read_table(path)
    rows = [{**r, "query": f"{r['query']} today"} for r in table.to_pylist()]
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)
    run_label(day_two)
    manifest = json.loads((run_dir / "labels" / "_MANIFEST.json").read_text())
    assert manifest["relabelled"] == {"input changed": 1} and manifest["timings"]["rows_this_run"] == len(rows)
    changed = _committed_labels(run_dir)
    assert all(changed[i] == refitted[i] for i in refitted if i not in {r["id"] for r in rows})

    # (d) an input removed: its labels are retired (out of the manifest, never read), nothing relabelled
    gone = sorted((run_dir / "data" / "unlabeled").glob("*.parquet"))[-1]
    gone_ids = set(pq.read_table(gone, columns=["id"])["id"].to_pylist())
    gone.unlink()
    assert run_label(day_two)["rows_in"] == 100 - len(gone_ids)
    manifest = json.loads((run_dir / "labels" / "_MANIFEST.json").read_text())
    assert manifest["relabelled"] == {} and manifest["timings"]["rows_this_run"] == 0 and len(manifest["inputs"]) == 3
    assert set(_committed_labels(run_dir)) == _data_ids(run_dir) and not gone_ids & set(_committed_labels(run_dir))
