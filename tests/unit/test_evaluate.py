"""The evaluate job on a tiny run: which keys it writes into report.json and what it keeps."""

import json

import pytest

from distillery.evaluate import EvaluateConfig, run
from tinymodels import make_tiny_run, save_tiny_bert


def test_evaluate_job_writes_design_report_keys(tmp_path):
    run_dir = make_tiny_run(tmp_path / "run", rows_train=20, rows_unlabeled=0, rows_test=120)
    save_tiny_bert(run_dir / "teacher", num_layers=1, hidden=32, seed=1)
    save_tiny_bert(run_dir / "student", num_layers=1, hidden=32, seed=2)
    (run_dir / "report.json").write_text(json.dumps({"labeling": {"rows_in": 5}, "quality": {"keep": 1}}))
    out = run(EvaluateConfig(run_dir=str(run_dir), max_length=64))
    report = json.loads((run_dir / "report.json").read_text())
    q = report["quality"]
    assert report["labeling"] == {"rows_in": 5} and q["keep"] == 1  # merged, nothing else lost
    for name in ("teacher", "student"):
        assert set(q[name]) >= {"auc", "logloss", "ece"} and q[name]["rows"] == 120
    assert 0.5 < q["oracle_auc"] <= 1.0
    assert q["distillation_efficiency"] == pytest.approx(q["student"]["auc"] / q["teacher"]["auc"])
    assert "student_direct" in q["skipped"] and "student_int8" in q["skipped"]
    assert out["quality"]["test_rows"] == 120
