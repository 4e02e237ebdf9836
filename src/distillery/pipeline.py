"""The whole flow, stage by stage, on one run directory: what `make demo` runs.

    python -m jobs.pipeline --config jobs/configs/demo.yaml [--force] [key=value ...]

data → teacher → label → student → student_direct → compress → evaluate → serve → report

The stages, their order, runners and outputs are `distillery.stages.STAGES`; the runners are in
`pipeline_stages`, the config in `pipeline_config`. Each stage is the library call its own job makes
(`labeling.run`, `training.job.run`, …) with its own typed config, nested under the stage's name. A stage that finishes writes
`_stages/<stage>.json` (its config hash chained with the upstream stages' hashes, timings, outputs);
a re-run skips a stage whose marker matches and whose outputs exist, so changing one stage's config
re-runs it and everything downstream. A failing stage says which, why, and how to re-run just it.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import traceback
from typing import Any

from distillery import io
from distillery.pipeline_config import PipelineConfig
from distillery.ray_runtime import ensure_ray
from distillery.stages import STAGES

__all__ = ["PipelineConfig", "run"]


def _stage_hash(stage: str, cfg: PipelineConfig, upstream: str) -> str:
    part = getattr(cfg, stage) if stage in type(cfg).model_fields else {}  # a stage without a section: {}
    if hasattr(part, "model_dump"):
        part = part.model_dump(mode="json")
    blob = json.dumps({"stage": stage, "config": part, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _outputs(stage: str, run_dir: str) -> list[str]:
    return [io.join(run_dir, *path.split("/")) for path in STAGES[stage].outputs]


def _complete(stage: str, run_dir: str, key: str) -> bool:
    marker = io.join(run_dir, "_stages", f"{stage}.json")
    if not io.exists(marker):
        return False
    try:
        done = io.read_json(marker)
    except (OSError, ValueError):
        return False
    return done.get("key") == key and all(io.exists(p) for p in _outputs(stage, run_dir))


def run(cfg: PipelineConfig) -> dict[str, Any]:
    """Run the configured stages; returns report.json's content."""
    io.makedirs(cfg.run_dir)
    timings_path = io.join(cfg.run_dir, "_stages", "timings.json")
    timings: dict[str, float] = io.read_json(timings_path) if io.exists(timings_path) else {}
    started = time.perf_counter()
    upstream = ""
    selected = [s for s in STAGES if s in cfg.stages]
    print(f"pipeline: {cfg.run_dir}: {' → '.join(selected)}", flush=True)
    if "student" in selected:
        from distillery.pipeline_stages import check_bid

        check_bid(cfg)  # seconds: a student that cannot answer the bid stops the run before any stage
    if any(STAGES[s].needs_ray for s in selected):
        ensure_ray(cfg.ray)
    for stage in STAGES:
        upstream = key = _stage_hash(stage, cfg, upstream)
        if stage not in selected:
            continue
        n = selected.index(stage) + 1
        if not cfg.force and _complete(stage, cfg.run_dir, key):
            print(f"[{n}/{len(selected)}] {stage}: complete, skipped (--force re-runs it)", flush=True)
            continue
        print(f"[{n}/{len(selected)}] {stage}: running", flush=True)
        t0 = time.perf_counter()
        if stage == "report":
            timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 2)
            io.write_json(timings_path, timings)
        try:
            outputs = STAGES[stage].runner_function()(cfg)
        except Exception as err:  # noqa: BLE001 — report which stage failed, then re-raise
            elapsed = time.perf_counter() - t0
            print(f"[{n}/{len(selected)}] {stage}: FAILED after {elapsed:.1f}s: {type(err).__name__}: {err}", file=sys.stderr)
            traceback.print_exc()
            print(f"re-run just this stage: python -m jobs.pipeline --config <config> 'stages=[{stage}]' --force",
                  file=sys.stderr, flush=True)
            raise
        elapsed = round(time.perf_counter() - t0, 2)
        timings[stage] = elapsed
        io.write_json(timings_path, timings)
        io.write_json(io.join(cfg.run_dir, "_stages", f"{stage}.json"),
                      {"stage": stage, "key": key, "seconds": elapsed, "finished_at": time.time(),
                       "outputs": outputs if isinstance(outputs, dict) else None})
        print(f"[{n}/{len(selected)}] {stage}: done in {elapsed:.1f}s", flush=True)
    print(f"pipeline: finished in {time.perf_counter() - started:.1f}s", flush=True)
    report_path = io.join(cfg.run_dir, "report.json")
    report = io.read_json(report_path) if io.exists(report_path) else {}
    if report.get("headline"):  # a student that learned nothing: said before any table
        print(f"pipeline: {report['headline']}", flush=True)
    return report

