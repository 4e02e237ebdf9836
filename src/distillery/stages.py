"""The one registry of jobs and pipeline stages; the CLI, `jobs/`, the pipeline and the report read it.

A **job** is a library call runnable alone, `distillery <name>` and `python -m jobs.<name>`: one typed
config class and the function called with it. A **stage** is one step of the pipeline
(`python -m jobs.pipeline`), in pipeline order: the job whose config its section of the pipeline YAML
holds (none for the pipeline's own sections), the runner the pipeline calls, and the files under
the run directory that say it has finished.

Adding a job is one `Job(...)` here plus a `jobs/<name>.py` shell; adding a stage is one `Stage(...)`
here plus its runner (`pipeline_stages.run_<name>`). Code is named by `"module:attribute"` and
imported only when used, so reading the registry (`distillery --help`) imports no ML library.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

__all__ = ["Job", "Stage", "JOBS", "STAGES", "load"]


def load(ref: str) -> Any:
    """The object a `"package.module:attribute"` reference names, importing its module."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Job:
    name: str  # `distillery <name>`, `python -m jobs.<name>`
    config: str  # "module:Class" of its typed config (pydantic, extra="forbid")
    run: str  # "module:function" called with that config
    help: str  # one line for `distillery --help`
    force_flag: bool = False  # a `--force` flag, the same as the override force=true
    summary: str | None = None  # "module:function(result) -> str" that `python -m jobs.<name>` prints at the end

    def config_class(self) -> type:
        return load(self.config)

    def run_function(self) -> Any:
        return load(self.run)


@dataclass(frozen=True)
class Stage:
    name: str  # its section of the pipeline YAML, `_stages/<name>.json`, `timings_s.<name>` in report.json
    job: str | None  # the JOBS entry whose config its section holds (run_dir and ray filled in); None: a section of the pipeline's own
    runner: str  # "module:function(PipelineConfig) -> dict" the pipeline calls; the dict goes in the stage's marker
    outputs: tuple[str, ...]  # paths under the run directory that exist once it has finished
    doc: str = ""  # the description of its pipeline YAML section
    needs_ray: bool = True  # the pipeline starts (or joins) Ray before a run that includes it

    def runner_function(self) -> Any:
        return load(self.runner)


JOBS: dict[str, Job] = {job.name: job for job in (
    Job("teacher", "distillery.training.job:TeacherJobConfig", "distillery.training.job:run_teacher",
        "fine-tune the teacher on the train split's clicks (Ray Train)"),
    Job("label", "distillery.labeling:LabelConfig", "distillery.labeling:run",
        "label logs with teacher actors (Ray Data)"),
    Job("train", "distillery.training.job:TrainJobConfig", "distillery.training.job:run",
        "distill a student, or train the click-only baseline (Ray Train)"),
    Job("evaluate", "distillery.evaluate:EvaluateConfig", "distillery.evaluate:run",
        "AUC, logloss, calibration on the test split; writes report.json"),
    Job("compress", "distillery.compress.job:CompressConfig", "distillery.compress.job:run",
        "prune, export to ONNX, quantize, validate"),
    Job("pipeline", "distillery.pipeline:PipelineConfig", "distillery.pipeline:run",
        "the whole flow, stage by stage, skipping completed stages", force_flag=True,
        summary="distillery.pipeline_stages:summary_table"),
)}

_RUNNERS = "distillery.pipeline_stages"

STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("data", None, f"{_RUNNERS}:run_data", ("data/train", "data/unlabeled", "data/test"), needs_ray=False),
    # fine-tune and two-tower teachers both write training_summary.json
    Stage("teacher", "teacher", f"{_RUNNERS}:run_teacher", ("teacher/training_summary.json",), "TeacherJobConfig fields"),
    Stage("label", "label", f"{_RUNNERS}:run_label", ("labels/_MANIFEST.json",), "LabelConfig fields"),
    Stage("student", "train", f"{_RUNNERS}:run_student", ("student/training_summary.json",),
          "TrainJobConfig fields of the distilled student"),
    Stage("student_direct", "train", f"{_RUNNERS}:run_student_direct", ("student_direct/training_summary.json",),
          "TrainJobConfig fields of the click-only student"),
    Stage("compress", "compress", f"{_RUNNERS}:run_compress", ("onnx/model_card.json",), "CompressConfig fields"),
    Stage("evaluate", "evaluate", f"{_RUNNERS}:run_evaluate", ("report.json",), "EvaluateConfig fields"),
    Stage("serve", None, f"{_RUNNERS}:run_serve", ("serve/loadtest.json",)),
    Stage("report", None, f"{_RUNNERS}:run_report", ("report.html",), needs_ray=False),
)}
