"""Ray Train around the single-process loop: `TorchTrainer`, DDP on gloo (CPU) or NCCL (GPU).

    result = fit(spec, ScalingSection(num_workers=2), CheckpointSection(), FailureSection(), storage, "student")

Each worker runs `distillery.training.loop.train` unchanged; only the hooks differ from a single
process: `ray.train.torch.prepare_model` (DDP), `prepare_data_loader` (DistributedSampler) and
`ray.train.report` with a checkpoint folder from rank 0 every epoch. With `data.stream: true` the
rows come from Ray Data instead (`training.stream`): the driver plans the input files, counts the
rows and builds the start model once; each worker reads its shard (`get_dataset_shard("train")`)
and the validation sample, so no process holds the whole table. Workers, CPUs/GPUs per worker,
failures and checkpoint retention come from YAML. Re-running with the same storage path and name
resumes: Ray Train V2 restores its checkpoint manager from storage and `ray.train.get_checkpoint()`
hands the latest checkpoint to the loop, which continues after its last completed epoch.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any, Literal

from pydantic import Field

from distillery.config import Section
from distillery.training.data import DataSection
from distillery.training.init import ModelInit
from distillery.training.loop import LoopConfig

__all__ = ["ScalingSection", "CheckpointSection", "FailureSection", "TrainSpec", "fit", "worker_loop"]

log = logging.getLogger(__name__)


class ScalingSection(Section):
    num_workers: int = Field(2, ge=1, description="training workers (DDP ranks)")
    use_gpu: bool = Field(False, description="one GPU per worker (NCCL); False trains on CPU (gloo)")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker (fractional on small machines)")
    gpus_per_worker: float | None = Field(None, ge=0, description="GPUs per worker when use_gpu (None = 1)")
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="torch.distributed backend; auto = nccl on GPU, gloo on CPU")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description="worker placement")


class CheckpointSection(Section):
    storage: str | None = Field(None, description="storage path or URI of Ray Train runs; default <run_dir>/checkpoints")
    num_to_keep: int = Field(2, ge=1, description="checkpoints kept (best by score; the latest is kept for resuming)")
    score: Literal["val_loss", "val_auc"] = Field("val_loss", description="validation metric that picks the best checkpoint")
    resume: bool = Field(True, description="continue from the last checkpoint of a run with the same name")


class FailureSection(Section):
    max_failures: int = Field(1, ge=-1, description="worker-group restarts before the run fails (-1 = unlimited)")


class TrainSpec(Section):
    """Everything a worker needs, shipped as plain JSON to each Ray Train worker."""

    run_dir: str = Field(..., description="run directory with data/ and labels/")
    init: ModelInit = Field(default_factory=ModelInit, description="where the model starts (used when no checkpoint exists)")
    data: DataSection = Field(default_factory=DataSection, description="training rows and targets")
    loop: LoopConfig = Field(default_factory=LoopConfig, description="loss, optimiser and epochs")
    failure_marker: str | None = Field(None, description="file of the one-shot injected failure (testing)")


def _report_hook(checkpoint_prefix: str):
    import ray.train

    from distillery.training.loop import save_checkpoint

    def report(metrics: dict[str, Any], *, model, tokenizer, state) -> None:
        metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report(metrics)  # every rank reports; rank 0 alone writes the checkpoint
            return
        with tempfile.TemporaryDirectory(prefix=checkpoint_prefix) as tmp:
            save_checkpoint(tmp, model, tokenizer, state)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"epoch_{metrics['epoch']:04d}")

    return report


def _shards(spec: TrainSpec, plan: dict[str, Any]):
    """`stream.StreamedRows`: this worker's shard of "train", the whole validation sample, the plan's figures."""
    import ray.train

    from distillery.training.stream import StreamedRows

    return StreamedRows(train=ray.train.get_dataset_shard("train"), val=ray.train.get_dataset_shard("val"),
                        stream=spec.data.streaming, **plan)


def _start_from(start_ref):
    """(model, tokenizer) of the start folder the driver built once (`stream.prepare`)."""
    import ray

    from distillery.training.loop import load_model
    from distillery.training.stream import unpack_folder

    with tempfile.TemporaryDirectory(prefix="distillery-start-") as tmp:
        return load_model(unpack_folder(ray.get(start_ref), tmp))


def worker_loop(config: dict[str, Any]) -> None:
    """`train_loop_per_worker`: build rows and model (or resume), then the plain loop with Ray hooks.

    `config` is `{"spec": TrainSpec as JSON, "stream": None | {"plan", "start"}}`: with `data.stream`
    the rows are this worker's shard of the driver's datasets and the model starts from the driver's
    start folder; otherwise every worker builds the whole table and the model itself."""
    import ray.train
    import ray.train.torch

    from distillery.onnx_model.kinds import kind_of_model
    from distillery.training.data import build_training_table
    from distillery.training.init import build_model
    from distillery.training.loop import Hooks, load_checkpoint, train

    spec = TrainSpec.model_validate(config["spec"])
    ctx = ray.train.get_context()
    stream = config.get("stream")
    if stream is not None:
        data = _shards(spec, stream["plan"])
    else:
        data = build_training_table(spec.run_dir, spec.data, spec.loop.loss)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            model, tokenizer, state = load_checkpoint(path)
        if ctx.get_world_rank() == 0:
            print(f"[train] resuming after epoch {state.epoch - 1} from {checkpoint.path}", flush=True)
    elif stream is not None:
        model, tokenizer = _start_from(stream["start"])  # built, trimmed and head-started once, in the driver
        state = None
    else:
        model, tokenizer = build_model(spec.init)
        if spec.init.trim_vocab_splits:
            model, tokenizer = _trim(model, tokenizer, spec, ctx.get_world_rank() == 0)
        if spec.init.head_from and kind_of_model(model).starts_head_on_rows:
            from distillery.training.two_tower_student import start_head_on_rows

            start = start_head_on_rows(model, tokenizer, spec.init.head_from, data, spec.loop.max_length)
            if ctx.get_world_rank() == 0:
                print(f"[train] two-tower head start ({spec.init.head_from}) on training rows: {start}", flush=True)
        state = None
    hooks = Hooks(
        prepare_model=ray.train.torch.prepare_model,
        prepare_loader=ray.train.torch.prepare_data_loader,
        report=_report_hook("distillery-ckpt-"),
        world_rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=str(ray.train.torch.get_device()),
        failure_marker=spec.failure_marker,
        gather=_all_gather,
    )
    train(spec.loop, data, model, tokenizer, hooks, state)


def _all_gather(obj) -> list:
    """Every worker's `obj` in rank order (the process group Ray Train set up; gloo on CPU)."""
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _trim(model, tokenizer, spec: TrainSpec, verbose: bool):
    """Every worker trims to the same vocabulary: the same texts give the same sorted piece ids.
    The texts are rendered as labeling and training render them (`table_texts`: every column)."""
    from distillery.data.text import table_texts
    from distillery.training.data import read_split
    from distillery.training.vocab import trim_vocabulary

    texts: list[str] = []
    for split in spec.init.trim_vocab_splits:
        texts.extend(table_texts(read_split(spec.run_dir, split)))
    model, tokenizer, info = trim_vocabulary(model, tokenizer, texts)
    if verbose:
        print(f"[train] vocabulary trimmed to the pieces of {spec.init.trim_vocab_splits}: {info['before']} → "
              f"{info['after']} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters left)", flush=True)
    return model, tokenizer


def fit(spec: TrainSpec, scaling: ScalingSection, checkpoint: CheckpointSection, failure: FailureSection,
        storage: str, name: str):
    """Run the TorchTrainer; returns Ray's `Result` (best checkpoints, metrics, path).

    With `data.stream` the driver first plans the files, counts the rows and builds the start model
    (`stream.prepare`); the workers then read their shards of its datasets."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    config: dict[str, Any] = {"spec": spec.model_dump(mode="json"), "stream": None}
    data_args: dict[str, Any] = {}
    from distillery.training.stream_rows import streams

    stream, why = streams(spec.run_dir, spec.data)
    print(f"[train] input {'streamed through Ray Data' if stream else 'read whole by every worker'} ({why})", flush=True)
    if stream:
        from distillery.training.stream import prepare, split_config

        job = prepare(spec, scaling.num_workers)
        config["stream"] = {"plan": job.plan, "start": ray.put(job.start)}
        data_args = {"datasets": job.datasets,
                     "dataset_config": split_config(spec.data.streaming.preserve_order, spec.data.streaming.read_ahead_mb)}

    if "://" not in storage:
        storage = os.path.abspath(storage)
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker if scaling.gpus_per_worker is not None else 1
    backend = scaling.backend if scaling.backend != "auto" else ("nccl" if scaling.use_gpu else "gloo")
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config=config,
        **data_args,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources, placement_strategy=scaling.placement_strategy),
        run_config=RunConfig(
            name=name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=failure.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=checkpoint.num_to_keep,
                checkpoint_score_attribute=checkpoint.score,
                checkpoint_score_order="min" if checkpoint.score == "val_loss" else "max",
            ),
        ),
    )
    return trainer.fit()
