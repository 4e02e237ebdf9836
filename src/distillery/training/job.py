"""The `distillery train` and `distillery teacher` jobs: one training path, different targets and models.

    python -m jobs.train   --config jobs/configs/train.yaml        run_dir=runs/demo   # distilled student
    python -m jobs.train   --config jobs/configs/train_direct.yaml run_dir=runs/demo   # student_direct (clicks)
    python -m jobs.teacher --config jobs/configs/teacher_two_tower.yaml run_dir=runs/demo   # two-tower teacher (fit)
    python -m jobs.teacher --config jobs/configs/teacher.yaml      run_dir=runs/demo   # teacher fine-tune

Each job trains on Ray Train, checkpoints every epoch under `checkpoint.storage`/<output name>,
and publishes the best-by-validation checkpoint as a Hugging Face folder at `<run_dir>/<output>`
(`save_pretrained` + tokenizer + `training_summary.json`). Re-running resumes the same run: the
same model start, rows, targets and loop settings (`epochs` may grow) on the same input files
(`run_key`); checkpoints made otherwise are set aside and the run starts afresh, saying why.
A `kind: two-tower` teacher is not trained on Ray Train: its click head is fitted in the driver
in seconds (`distillery.teachers.two_tower`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import shutil
import time
from typing import Any, Literal

import pyarrow.fs as pafs
from pydantic import Field, model_validator

from distillery import io
from distillery.config import FolderName, RunSection, config_hash
from distillery.ray_runtime import RaySection, ensure_ray
from distillery.training.two_tower_teacher import TwoTowerFit, fit_two_tower
from distillery.training.data import DataSection
from distillery.training.init import ModelInit
from distillery.training.loop import STATE_FILE, LoopConfig
from distillery.training.ray_train import CheckpointSection, FailureSection, ScalingSection, TrainSpec, fit

__all__ = ["TrainJobConfig", "TeacherJobConfig", "run", "run_teacher", "publish_checkpoint"]

log = logging.getLogger(__name__)


class TrainJobConfig(RunSection):
    absolute_paths = True  # {run_dir} paths are read by Ray Train workers, which do not run in the driver's cwd
    output: FolderName = Field("student", description="folder under run_dir for the trained model: student | student_direct | teacher | …")
    init: ModelInit = Field(default_factory=lambda: ModelInit(kind="layer_subset", source="{run_dir}/teacher", layers=[0, 5]),
                            description="student initialisation ({run_dir} is substituted in source)")
    data: DataSection = Field(default_factory=DataSection, description="training rows and targets")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="loss, optimiser, epochs")
    scaling: ScalingSection = Field(default_factory=ScalingSection, description="Ray Train workers and resources")
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection, description="checkpoint storage and retention")
    failure: FailureSection = Field(default_factory=FailureSection, description="worker failure handling")
    ray: RaySection = Field(default_factory=RaySection, description="Ray connection / embedded resources")

    @model_validator(mode="after")
    def _check(self) -> "TrainJobConfig":
        if self.data.reveal_hidden_clicks and self.loop.loss != "click":
            raise ValueError("data.reveal_hidden_clicks: only the click loss (student_direct, strict comparison) may see hidden clicks")
        hidden = set(self.data.splits) & set(self.data.hidden_click_splits)
        if self.loop.loss == "click" and hidden and not self.data.reveal_hidden_clicks:
            raise ValueError(f"data.splits: {sorted(hidden)} hide their clicks; loss=click needs "
                             "data.reveal_hidden_clicks=true or splits without them")
        if self.scaling.use_gpu is False and self.scaling.backend == "nccl":
            raise ValueError("scaling.backend: nccl needs use_gpu=true")
        return self


class TeacherJobConfig(TrainJobConfig):
    """The teacher: `two-tower` (the encoder's cosine + a click head fitted on the train split's
    clicks, seconds) or `fine-tune` (the MiniLM backbone trained on those clicks, same loop as students)."""

    kind: Literal["fine-tune", "two-tower"] = Field("fine-tune", description="fine-tune: a cross-encoder on Ray Train; two-tower: fit the click head of `two_tower` (data.splits, data.val_fraction and loop.seed apply; the rest is unused)")
    two_tower: TwoTowerFit = Field(default_factory=TwoTowerFit, description="kind=two-tower: encoder, tower fields and the head's features")
    output: FolderName = Field("teacher", description="folder under run_dir for the teacher")
    init: ModelInit = Field(default_factory=lambda: ModelInit(kind="pretrained", source="minilm"),
                            description="the backbone the teacher starts from")
    data: DataSection = Field(default_factory=lambda: DataSection(splits=["train"]), description="rows with known clicks")
    loop: LoopConfig = Field(default_factory=lambda: LoopConfig(loss="click", lr=5e-5, epochs=2), description="click loss")

    @model_validator(mode="after")
    def _teacher_check(self) -> "TeacherJobConfig":
        if self.kind == "fine-tune" and self.loop.loss != "click":
            raise ValueError(f"loop.loss: the teacher learns from clicks; got {self.loop.loss!r}")
        return self


def publish_checkpoint(checkpoint_dir: str, dest: str, summary: dict[str, Any]) -> str:
    """Publish a checkpoint's Hugging Face files (not the optimizer state) and `training_summary.json`
    as `dest` (path or URI), whole or not at all (`distillery.publish.staged_folder`)."""
    from distillery.publish import staged_folder

    with staged_folder(dest) as tmp:
        shutil.copytree(checkpoint_dir, tmp, ignore=shutil.ignore_patterns(STATE_FILE), dirs_exist_ok=True)
        io.write_json(os.path.join(tmp, "training_summary.json"), summary)
    return dest


def _history(checkpoint_dir: str) -> list[dict[str, Any]]:
    from distillery.training.loop import load_state

    return load_state(checkpoint_dir).get("history", [])


RUN_KEY_FILE = "_run_key.json"
_EXTENDABLE = {"epochs", "fail_once_at_epoch"}  # a resumed run may add epochs (and tests inject one failure)


def _file_stamps(path: str) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime ns) of every file under `path` (path or URI); [] when it is absent."""
    fs, p = io.filesystem(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.File:
        return [(posixpath.basename(p), info.size, info.mtime_ns or 0)]
    if info.type != pafs.FileType.Directory:
        return []
    return sorted((f.path[len(p):].lstrip("/"), f.size, f.mtime_ns or 0)
                  for f in fs.get_file_info(pafs.FileSelector(p, recursive=True)) if f.type == pafs.FileType.File)


def run_key(spec: TrainSpec) -> dict[str, Any]:
    """What makes a checkpoint folder this run's: the model start, the rows and targets, the loop
    settings except `epochs`, and the size and mtime of every input file (the splits, the labels,
    a local `init.source` folder). `{"hash": …, "inputs": n files}`."""
    from distillery.models import resolve_model_path

    loop = {k: v for k, v in spec.loop.model_dump(mode="json").items() if k not in _EXTENDABLE}
    inputs = {f"data/{split}": _file_stamps(io.join(spec.run_dir, "data", split)) for split in spec.data.splits}
    if spec.loop.loss != "click":
        inputs["labels"] = _file_stamps(spec.data.labels_dir or io.join(spec.run_dir, "labels"))
    try:
        source = resolve_model_path(spec.init.source)
    except Exception:  # noqa: BLE001 - an id the workers resolve themselves: its name is in `init`
        source = None
    if source and os.path.isdir(source):
        inputs["init.source"] = _file_stamps(source)
    blob = json.dumps({"init": spec.init.model_dump(mode="json"), "data": spec.data.model_dump(mode="json"),
                       "loop": loop, "inputs": inputs}, sort_keys=True, separators=(",", ":"), default=str)
    return {"hash": hashlib.sha256(blob.encode()).hexdigest()[:16], "inputs": sum(len(v) for v in inputs.values())}


def _claim_run_folder(folder: str, key: dict[str, Any], resume: bool) -> None:
    """Empty `folder` unless it holds checkpoints of this very run (`resume` and the same run key),
    then record the key. A changed config or rewritten inputs must not resume a stale checkpoint and
    publish it as the new model."""
    if io.exists(folder):
        path = io.join(folder, RUN_KEY_FILE)
        old = io.read_json(path).get("hash") if io.exists(path) else None
        if not resume or old != key["hash"]:
            if resume:
                why = ("no run key recorded there" if old is None
                       else f"run key {old}, this run's {key['hash']}: the config or the input files changed")
                log.warning("%s: checkpoints there belong to another run (%s); starting afresh", folder, why)
            io.remove_dir(folder)
    io.makedirs(folder)
    io.write_json(io.join(folder, RUN_KEY_FILE), key)


def matched_steps(run_dir: str, output: str) -> int:
    """The optimizer steps the model in `<run_dir>/<output>` trained in all (its training summary)."""
    path = io.join(run_dir, output, "training_summary.json")
    if not io.exists(path):
        raise ValueError(f"loop.match_steps_of: {path} does not exist: train {output!r} first")
    steps = io.read_json(path).get("optimizer_steps")
    if not steps:
        raise ValueError(f"loop.match_steps_of: {path} records no optimizer steps (trained before they were recorded): "
                         f"retrain {output!r}, or set loop.steps")
    return int(steps)


def run(cfg: TrainJobConfig) -> dict[str, Any]:
    """Train on Ray Train; publish the best checkpoint to `<run_dir>/<output>`; return a summary."""
    t0 = time.perf_counter()
    # Ray Train workers do not run in the driver's cwd: a relative run_dir would not be found there.
    cfg = cfg.model_copy(update={"run_dir": io.absolute(cfg.run_dir)})
    if cfg.loop.match_steps_of:  # resolved here: the steps (not the name) are what the run key and the loop see
        other = cfg.loop.match_steps_of
        loop = cfg.loop.model_copy(update={"steps": matched_steps(cfg.run_dir, other), "match_steps_of": None})
        cfg = cfg.model_copy(update={"loop": loop})
        print(f"[train] {cfg.output}: {loop.steps} optimizer steps, as {other} trained (loop.match_steps_of)", flush=True)
    ensure_ray(cfg.ray)
    storage = cfg.checkpoint.storage or io.join(cfg.run_dir, "checkpoints")
    name = cfg.output.replace("/", "_")
    marker = None
    if cfg.loop.fail_once_at_epoch is not None and "://" not in storage:
        marker = os.path.join(os.path.abspath(storage), name, "_injected_failure")
    spec = TrainSpec(run_dir=cfg.run_dir, init=cfg.init, data=cfg.data, loop=cfg.loop, failure_marker=marker)
    _claim_run_folder(io.join(io.absolute(storage), name), run_key(spec), cfg.checkpoint.resume)
    result = fit(spec, cfg.scaling, cfg.checkpoint, cfg.failure, storage, name)
    if result.error is not None:
        raise result.error
    ranked = [c for c, _ in result.best_checkpoints] or ([result.checkpoint] if result.checkpoint else [])
    if not ranked:
        raise RuntimeError(f"{name}: training finished without a checkpoint")
    best, latest = ranked[0], result.checkpoint
    with latest.as_directory() as latest_dir:
        history = _history(latest_dir)
    best_metrics = dict(result.best_checkpoints[0][1]) if result.best_checkpoints else dict(result.metrics or {})
    summary = {
        "output": cfg.output, "loss": cfg.loop.loss, "init": cfg.init.model_dump(mode="json"),
        "splits": cfg.data.splits, "reveal_hidden_clicks": cfg.data.reveal_hidden_clicks,
        "workers": cfg.scaling.num_workers, "config_hash": config_hash(cfg), "history": history,
        "best": best_metrics, "best_checkpoint": best.path, "latest_checkpoint": latest.path,
        "optimizer_steps": sum(int(h.get("steps", 0)) for h in history), "batch_rows": cfg.loop.batch_size * cfg.scaling.num_workers,
        "seconds": time.perf_counter() - t0,
    }
    dest = io.join(cfg.run_dir, cfg.output)
    with best.as_directory() as best_dir:
        publish_checkpoint(best_dir, dest, summary)
    log.info("%s: best epoch %s (%s=%.4f) published to %s", name, best_metrics.get("epoch"), cfg.checkpoint.score,
             best_metrics.get(cfg.checkpoint.score, float("nan")), dest)
    print(json.dumps({"output": dest, "best": best_metrics}, default=str), flush=True)
    return summary


def run_teacher(cfg: TeacherJobConfig) -> dict[str, Any]:
    """`fine-tune`: `run` with the click loss on the train split, from the backbone.
    `two-tower`: fit the click head in this process and publish the folder."""
    if cfg.kind == "two-tower":
        result = fit_two_tower(io.absolute(cfg.run_dir), cfg.output, cfg.two_tower, cfg.data.splits,
                               cfg.data.val_fraction, seed=cfg.loop.seed)
        print(json.dumps({"output": result["output"], "best": result["best"]}, default=str), flush=True)
        return result
    return run(cfg)
