"""The whole pipeline end to end on a tiny config (tiny random models, a few hundred rows), local Ray."""

import json

import pytest

from distillery import io
from distillery.config import load_config
from distillery.pipeline import PipelineConfig, run
from distillery.pipeline_stages import missing_design_keys

pytestmark = pytest.mark.integration

TINY_LOOP = {"epochs": 1, "batch_size": 16, "max_length": 32, "torch_threads": 1}
TINY_SCALING = {"num_workers": 1, "cpus_per_worker": 0.5}


def _tiny_overrides(run_dir, tiny_bert, port):
    return [
        f"run_dir={run_dir}",
        "bid.budget_ms=1000",  # the flow, not this box's p99: a loaded CI box must not stop it
        "data.rows_train=240", "data.rows_unlabeled=360", "data.rows_test=200", "data.files_per_split=2",
        f"teacher.two_tower.encoder={tiny_bert}", "teacher.two_tower.max_length=32",
        "label.teacher.max_length=32", "label.teacher.num_threads=1", "label.actors.batch_size=64",
        f"student.loop={json.dumps({**TINY_LOOP, 'loss': 'joint', 'alpha': 0.0, 'temperature': 4.0})}",
        f"student.scaling={json.dumps(TINY_SCALING)}", f"student.init.source={tiny_bert}", "student.init.layers=[0]", "student_direct.init.layers=[0]", f"student_direct.init.source={tiny_bert}",
        f"student_direct.loop={json.dumps({**TINY_LOOP, 'loss': 'click', 'match_steps_of': 'student'})}",  # as the demo
        f"student_direct.scaling={json.dumps(TINY_SCALING)}",
        "compress.max_length=32", "compress.validation.rows=200", "compress.validation.parity_rows=32",
        "compress.validation.latency_calls=10", "compress.validation.gate=warn", "compress.try_fusion=false",
        "evaluate.max_length=32",
        f"serve.port={port}", "serve.requests=60", "serve.openrtb_requests=10", "serve.concurrency=2",
        "serve.max_seconds=60", "serve.saturation_concurrency=[1,2]", "serve.saturation_seconds=1",
    ]


def test_pipeline_end_to_end_then_skips(local_ray, tmp_path, tiny_bert, capsys):
    run_dir = tmp_path / "run"
    cfg = load_config(PipelineConfig, "jobs/configs/demo.yaml", _tiny_overrides(run_dir, tiny_bert, 17531))
    report = run(cfg)
    stages = ("data", "teacher", "label", "student", "student_direct", "compress", "evaluate", "serve")
    assert missing_design_keys(report, stages) == []  # every DESIGN_KEYS key holds a measured value
    assert report["compress"]["quality_gate"]["variants"]["int8"]["auc_drop_ci"]
    q = report["quality"]
    for model in ("teacher", "student", "student_direct", "student_int8"):
        assert 0.0 <= q[model]["auc"] <= 1.0, model
    assert q["distillation_efficiency"] == pytest.approx(q["student_int8"]["auc"] / q["teacher"]["auc"])
    assert 0.5 < q["oracle_auc"] <= 1.0
    budget = report["training"]  # the click-only twin trains as many optimizer steps, over its fewer rows
    assert budget["student_direct"]["optimizer_steps"] == budget["student"]["optimizer_steps"] > 0
    assert budget["student_direct"]["epochs"] > budget["student"]["epochs"]
    lab = report["labeling"]
    assert lab["rows_in"] == 600 and lab["rows_labeled"] + (lab.get("rows_rejected") or 0) == 600
    assert lab["rows_kept"] <= lab["rows_labeled"]
    manifest = io.read_json(str(run_dir / "labels" / "_MANIFEST.json"))
    assert manifest["rows_kept"] == lab["rows_kept"]
    sv = report["serve"]
    assert sv["errors"] == 0 and sv["p50_ms"] <= sv["p99_ms"] and sv["max_replicas"] >= 1
    for n in ("1", "8", "128", "1024"):  # fresh bids at light load, every answer a bid or a no-bid
        b = sv["bid_ms"][n]
        assert b["requests"] == 10 and b["bids"] + b["no_bids"] == 10 and b["p50"] <= b["p99"], (n, b)
    assert sv["bid_saturation"]["candidates"] == 128 and 1 <= len(sv["bid_saturation"]["levels"]) <= 2
    assert set(sv["stage_seconds"]) >= {"start", "predict", "bids", "saturation", "shutdown"}
    assert (run_dir / "serve" / "bid_catalog.yaml").exists()
    for m in ("teacher", "student_fp32", "student_int8"):
        assert report["latency_ms"][m]["p50"] <= report["latency_ms"][m]["p99"]
        assert report["size_mb"][m] > 0
    assert report["size_mb"]["student_int8"] < report["size_mb"]["student_fp32"]
    assert set(report["timings_s"]) >= set(stages)
    assert (run_dir / "report.html").exists()
    # the report's curves come from the same test predictions the AUCs were computed on
    import pyarrow.parquet as pq

    from distillery.metrics import roc_auc

    preds = pq.read_table(run_dir / "plots" / "predictions.parquet").to_pandas()
    assert len(preds) == 200
    assert roc_auc(preds["click"].to_numpy(), preds["student"].to_numpy()) == pytest.approx(q["student"]["auc"])
    html = (run_dir / "report.html").read_text()
    assert f'data-key="quality.student.auc"' in html and "<svg" in html

    capsys.readouterr()
    run(cfg)  # everything is complete: every stage is skipped
    out = capsys.readouterr().out
    assert out.count("complete, skipped") == 9
