"""The labeling job on a real local Ray: exactly-once output, manifest counts, resume, rejects."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery import io
from distillery.config import ConfigError, load_config
from distillery.data.schema import LOG_SCHEMA
from distillery.data.synthetic import SyntheticConfig, write_splits
from distillery.labeling import LabelConfig, run

pytestmark = pytest.mark.integration


def _bad_rows_file(path):
    good = {c: None for c in LOG_SCHEMA.names}
    rows = [
        {**good, "id": "bad-0", "query": "running shoes", "ad_title": "Race day flats"},   # fine
        {**good, "id": "bad-1", "query": None, "ad_title": "Race day flats"},               # missing required
        {**good, "id": "bad-2", "query": "x" * 5000, "ad_title": "t"},                       # giant string
        {**good, "id": "bad-3", "query": "", "ad_title": ""},                                # empty
        {**good, "id": "bad-4", "query": "broken \ufffd bytes", "ad_title": "t"},           # undecodable
        {**good, "id": "bad-4", "query": "dup id", "ad_title": "t"},                         # duplicate id
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=LOG_SCHEMA), path)
    return [r["id"] for r in rows]


@pytest.fixture()
def run_dir(tmp_path):
    write_splits(SyntheticConfig(seed=5, rows_train=600, rows_unlabeled=2400, rows_test=10, files_per_split=3),
                 str(tmp_path / "data"))
    os.makedirs(tmp_path / "data" / "unlabeled", exist_ok=True)
    _bad_rows_file(tmp_path / "data" / "unlabeled" / "part-bad.parquet")
    return tmp_path


def _cfg(run_dir, model, **over):
    items = [f"run_dir={run_dir}", f"teacher.model={model}", "teacher.num_threads=1",
             "actors.batch_size=128", "files_per_round=3"] + [f"{k}={v}" for k, v in over.items()]
    return load_config(LabelConfig, "jobs/configs/label.yaml", items)


def _ids(folder):
    return pq.read_table(folder, columns=["id"])["id"].to_pylist()


def test_labels_every_row_exactly_once_and_resumes(local_ray, run_dir, tiny_bert):
    cfg = _cfg(run_dir, tiny_bert)
    manifest = run(cfg)
    input_ids = _ids(run_dir / "data" / "train") + _ids(run_dir / "data" / "unlabeled")
    labels = pq.read_table(run_dir / "labels")
    rejects = pq.read_table(run_dir / "labels" / "_rejects")
    out_ids = labels["id"].to_pylist() + rejects["id"].to_pylist()
    # exactly once: the duplicate input id is one row labelled and one rejected, nothing else repeats
    assert sorted(out_ids) == sorted(input_ids)
    assert len(set(labels["id"].to_pylist())) == labels.num_rows
    reasons = dict(zip(rejects["id"].to_pylist(), rejects["reason"].to_pylist()))
    assert set(reasons) == {"bad-1", "bad-2", "bad-3", "bad-4"}
    assert reasons["bad-1"].startswith("query:") and reasons["bad-2"].startswith("query:")
    assert manifest["rows_in"] == len(input_ids) == 3006
    assert manifest["rows_rejected"] == 5 and manifest["rows_labeled"] == 3001
    assert manifest["rows_kept"] == labels.filter(labels["kept"]).num_rows
    assert manifest["complete"] and manifest["teacher_ids"] and len(manifest["inputs"]) == 7
    assert io.read_json(str(run_dir / "labels" / "_MANIFEST.json")) == manifest
    probs = labels["teacher_prob"].to_numpy()
    assert ((probs >= 1e-4) & (probs <= 1 - 1e-4)).all()
    assert set(labels.column_names) >= {"id", "teacher_prob", "confidence", "kept", "reason", "teacher_id"}

    # a re-run labels nothing; losing one file's marker relabels that file only
    again = run(cfg)
    assert again["timings"]["rows_this_run"] == 0 and again["rows_in"] == manifest["rows_in"]
    marker = manifest["inputs"][0]
    os.remove(run_dir / "labels" / "_done" / f"{marker['key']}.json")
    third = run(cfg)
    assert third["timings"]["rows_this_run"] == marker["rows_in"]
    assert sorted(_ids(run_dir / "labels") + _ids(run_dir / "labels" / "_rejects")) == sorted(input_ids)


def test_filters_keep_rows_with_reasons(local_ray, run_dir, tiny_bert):
    manifest = run(_cfg(run_dir, tiny_bert, **{"filters.min_confidence": 0.999}))
    labels = pq.read_table(run_dir / "labels")
    dropped = labels.filter(pa.compute.invert(labels["kept"]))
    assert dropped.num_rows > 0 and manifest["rows_kept"] == labels.num_rows - dropped.num_rows
    assert all("min_confidence" in r for r in dropped["reason"].to_pylist())


def test_bad_config_fails_before_any_work(tmp_path, run_dir):
    with pytest.raises(ConfigError, match="teacher.model"):
        run(_cfg(run_dir, tmp_path / "no-such-model"))
    with pytest.raises(ConfigError, match="actors.num_cpus"):
        _cfg(run_dir, "x", **{"actors.num_cpus": -1})
    with pytest.raises(ConfigError, match="actors.bogus"):
        _cfg(run_dir, "x", **{"actors.bogus": 1})
    assert not (run_dir / "labels").exists()
