"""The whole flow, stage by stage, on one run directory: what `make demo` runs.

    python -m jobs.pipeline --config jobs/configs/demo.yaml [--force] [key=value ...]

data → teacher → label → student → student_direct → compress → evaluate → serve → report

Each stage is the library call its own job makes (`labeling.run`, `training.job.run`, …) with its
own typed config, nested here under the stage's name. A stage that finishes writes
`_stages/<stage>.json` (its config hash chained with the upstream stages' hashes, timings, outputs);
a re-run skips a stage whose marker matches and whose outputs exist, so changing one stage's config
re-runs it and everything downstream. A failing stage says which, why, and how to re-run just it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import traceback
from typing import Annotated, Any, Callable, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from distillery import io
from distillery.config import ConfigError, Section, validate_config
from distillery.data.split import LogsConfig
from distillery.data.synthetic import SyntheticConfig
from distillery.ray_runtime import RaySection, ensure_ray

__all__ = ["PipelineConfig", "STAGES", "run"]

log = logging.getLogger(__name__)

STAGES = ("data", "teacher", "label", "student", "student_direct", "compress", "evaluate", "serve", "report")

# stage -> (module, config class); stages whose config is a plain section live in this file
_STAGE_CONFIGS = {
    "teacher": ("distillery.training.job", "TeacherJobConfig"),
    "label": ("distillery.labeling", "LabelConfig"),
    "student": ("distillery.training.job", "TrainJobConfig"),
    "student_direct": ("distillery.training.job", "TrainJobConfig"),
    "compress": ("distillery.compress.job", "CompressConfig"),
    "evaluate": ("distillery.evaluate", "EvaluateConfig"),
}


class ServeStageConfig(Section):
    app: dict[str, Any] = Field(default_factory=dict, description="serving app args (see serve/serve_config.yaml); model_dir is set to <run_dir>/onnx")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port on 127.0.0.1 for the load test")
    requests: int = Field(2000, ge=1, description="prediction requests in the load test (bounded)")
    candidates: int = Field(8, ge=1, description="candidate ads per /predict request (the bidder pattern)")
    concurrency: int = Field(8, ge=1, description="concurrent client connections")
    openrtb_requests: int = Field(200, ge=0, description="OpenRTB bid requests in the load test")
    max_seconds: float = Field(120, gt=0, description="the load test stops after this long whatever is left")


def _data_source(value: Any) -> str:
    """`data.source`: synthetic (the default, and every config written before logs existed) or logs."""
    if isinstance(value, dict):
        return str(value.get("source", "synthetic"))
    return getattr(value, "source", "synthetic")


# `source: synthetic` generates (SyntheticConfig, unchanged, so existing runs keep their stage keys);
# `source: logs` splits the user's own log in time order (`distillery data split`).
DataConfig = Annotated[Union[Annotated[SyntheticConfig, Tag("synthetic")], Annotated[LogsConfig, Tag("logs")]],
                       Discriminator(_data_source, custom_error_type="data_source",
                                     custom_error_message="source: expected 'synthetic' (the default) or 'logs'")]


class PipelineConfig(Section):
    run_dir: str = Field("runs/demo", description="run directory (local path or URI); every stage writes under it")
    stages: list[str] = Field(default_factory=lambda: list(STAGES), description="stages to run, in pipeline order")
    force: bool = Field(False, description="re-run stages whose outputs are complete")
    ray: RaySection = Field(default_factory=RaySection, description="Ray connection / embedded resources, shared by all stages")
    data: DataConfig = Field(default_factory=SyntheticConfig, description="ad logs: synthetic (default) or `source: logs` with path, format, label_column, time_column, fractions")
    teacher: dict[str, Any] = Field(default_factory=dict, description="TeacherJobConfig fields")
    label: dict[str, Any] = Field(default_factory=dict, description="LabelConfig fields")
    student: dict[str, Any] = Field(default_factory=dict, description="TrainJobConfig fields of the distilled student")
    student_direct: dict[str, Any] = Field(default_factory=dict, description="TrainJobConfig fields of the click-only student")
    compress: dict[str, Any] = Field(default_factory=dict, description="CompressConfig fields")
    evaluate: dict[str, Any] = Field(default_factory=dict, description="EvaluateConfig fields")
    serve: ServeStageConfig = Field(default_factory=ServeStageConfig, description="Ray Serve load test")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; expected names from {list(STAGES)}")
        return [s for s in STAGES if s in v]

    @field_validator("data", mode="before")
    @classmethod
    def _synthetic_source(cls, v: Any) -> Any:
        # `source: synthetic` may be written out; SyntheticConfig itself has no such field
        if isinstance(v, dict) and v.get("source") == "synthetic":
            return {k: x for k, x in v.items() if k != "source"}
        return v

    @field_validator("run_dir")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return io.absolute(v)  # Ray Train workers do not run in the driver's cwd

    @model_validator(mode="after")
    def _validate_stage_configs(self) -> "PipelineConfig":
        # Fail at load time, naming the field, rather than after an hour of earlier stages.
        for stage in _STAGE_CONFIGS:
            self.stage_config(stage)
        return self

    def stage_config(self, stage: str) -> Any:
        """The typed config of one stage, with the pipeline's run_dir and Ray section."""
        import importlib

        module, name = _STAGE_CONFIGS[stage]
        cls = getattr(importlib.import_module(module), name)
        data = {**getattr(self, stage), "run_dir": self.run_dir}
        if "ray" in cls.model_fields:
            data["ray"] = self.ray.model_dump()
        return validate_config(cls, data, f"pipeline.{stage}")


def _stage_hash(stage: str, cfg: PipelineConfig, upstream: str) -> str:
    part = getattr(cfg, stage) if stage not in ("report",) else {}
    if hasattr(part, "model_dump"):
        part = part.model_dump(mode="json")
    blob = json.dumps({"stage": stage, "config": part, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _outputs(stage: str, run_dir: str) -> list[str]:
    j = lambda *p: io.join(run_dir, *p)  # noqa: E731
    return {
        "data": [j("data", s) for s in ("train", "unlabeled", "test")],
        "teacher": [j("teacher", "training_summary.json")],  # fine-tune and two-tower teachers both write it
        "label": [j("labels", "_MANIFEST.json")],
        "student": [j("student", "config.json")],
        "student_direct": [j("student_direct", "config.json")],
        "compress": [j("onnx", "model_card.json")],
        "evaluate": [j("report.json")],
        "serve": [j("serve", "loadtest.json")],
        "report": [j("report.html")],
    }[stage]


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
    from distillery import pipeline_stages as stages

    runners: dict[str, Callable[[PipelineConfig], Any]] = {
        "data": stages.run_data, "teacher": stages.run_teacher, "label": stages.run_label,
        "student": stages.run_student, "student_direct": stages.run_student_direct,
        "compress": stages.run_compress, "evaluate": stages.run_evaluate,
        "serve": stages.run_serve, "report": stages.run_report,
    }
    io.makedirs(cfg.run_dir)
    timings_path = io.join(cfg.run_dir, "_stages", "timings.json")
    timings: dict[str, float] = io.read_json(timings_path) if io.exists(timings_path) else {}
    started = time.perf_counter()
    upstream = ""
    selected = [s for s in STAGES if s in cfg.stages]
    print(f"pipeline: {cfg.run_dir}: {' → '.join(selected)}", flush=True)
    if any(s not in ("data", "report") for s in selected):
        ensure_ray(cfg.ray)
    for i, stage in enumerate(STAGES):
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
            outputs = runners[stage](cfg)
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
    return io.read_json(report_path) if io.exists(report_path) else {}


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.pipeline` / `distillery pipeline`: parse, run, print the summary table."""
    import argparse

    from distillery.config import load_config

    parser = argparse.ArgumentParser(description="run the distillery pipeline")
    parser.add_argument("--config", required=True)
    parser.add_argument("--force", action="store_true", help="re-run stages whose outputs are complete")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(PipelineConfig, args.config, args.overrides + (["force=true"] if args.force else []))
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    report = run(cfg)
    from distillery.pipeline_stages import summary_table

    print(summary_table(report), flush=True)
    return 0
