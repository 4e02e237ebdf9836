"""The training loop, single-process first: tokenise, batch, step, validate, checkpoint every epoch.

    state = train(cfg, table, model, tokenizer, hooks=local_hooks("runs/x/checkpoints"))

The same `train` runs inside each Ray Train worker; `distillery.training.ray_train` only swaps
the hooks (`prepare_model` / `prepare_data_loader` from Ray, `ray.train.report` for checkpoints).
A checkpoint is a Hugging Face folder (`save_pretrained` + tokenizer, loadable by compression and
serving as is) plus `train_state.pt` (optimizer, scheduler, epoch, history, RNG) for resuming.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from pydantic import Field, model_validator
from torch.utils.data import DataLoader, Dataset

from distillery.config import Section
from distillery.training.data import TrainingTable
from distillery.training.length_buckets import LengthBucketSampler
from distillery.training.losses import LossName, compute_loss

__all__ = [
    "LoopConfig", "TrainState", "Hooks", "TokenizedRows", "InjectedFailure", "LengthBucketSampler",
    "train", "train_epoch", "validate", "predict_logits", "score_texts", "make_loader", "rows_for",
    "save_checkpoint", "load_model", "load_checkpoint", "load_state", "Progress", "local_hooks", "latest_local_checkpoint", "set_seed", "set_output_bias", "unwrap",
]

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"


class LoopConfig(Section):
    loss: LossName = Field("soft", description="soft | hard | joint (distillation) | click (teacher fine-tune, student_direct)")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="joint: weight of the click cross-entropy")
    temperature: float = Field(2.0, gt=0.0, description="joint: distillation temperature T")
    epochs: int = Field(2, ge=1, description="passes over the training rows (unless `steps` is set)")
    steps: int | None = Field(None, ge=1, description="optimizer steps in all, as many passes as they need (the last cut "
                                                      "short); set, it replaces `epochs`. A baseline of equal budget")
    match_steps_of: str | None = Field(None, description="take `steps` from the model in <run_dir>/<this output> (its "
                                                         "training summary's optimizer steps): the same budget as that model")
    batch_size: int = Field(32, ge=1, description="rows per step per worker")
    eval_batch_size: int = Field(128, ge=1, description="rows per validation batch")
    max_length: int = Field(64, ge=8, description="tokens per row (longer texts are truncated)")
    length_bucket_batches: int = Field(
        50, ge=0, description="shuffle, then sort each run of this many global batches by token length, so a batch "
                              "pads to rows of its own length (every worker's step-i batch alike); 0: plain shuffle")
    lr: float = Field(1e-4, gt=0.0, description="peak AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay")
    warmup_fraction: float = Field(0.06, ge=0.0, lt=1.0, description="linear warm-up share of all steps, then linear decay")
    grad_clip: float = Field(1.0, ge=0.0, description="max gradient norm; 0 disables clipping")
    freeze_embeddings: bool = Field(False, description="keep token embeddings fixed (less to all-reduce, pretrained vocabulary kept)")
    seed: int = Field(0, description="seed of initial shuffles and dropout")
    torch_threads: int | None = Field(None, ge=1, description="intra-op threads per worker; None leaves torch's default")
    fail_once_at_epoch: int | None = Field(None, ge=0, description="testing: raise once at the start of this epoch (marker file in the checkpoint root)")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="cap on steps per epoch (benchmarks, smoke runs)")
    init_bias_to_prior: bool = Field(True, description="fresh runs: set the output bias to logit(mean target), so steps learn ranking, not the base rate")

    @model_validator(mode="after")
    def _one_budget(self) -> "LoopConfig":
        if self.steps is not None and self.match_steps_of:
            raise ValueError("steps: set loop.steps or loop.match_steps_of, not both")
        return self


class InjectedFailure(RuntimeError):
    """Raised by `fail_once_at_epoch` to exercise worker-failure recovery."""


@dataclass
class TrainState:
    """What survives a restart: completed epochs, per-epoch metrics, best validation score."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    optimizer: dict | None = None
    scheduler: dict | None = None
    rng: Any = None


@dataclass
class Hooks:
    """What differs between a single process and a Ray Train worker."""

    prepare_model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m
    prepare_loader: Callable[[DataLoader], DataLoader] = lambda d: d
    report: Callable[..., None] = lambda metrics, **_: None  # (metrics, model=, tokenizer=, state=)
    world_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    failure_marker: str | None = None  # file whose absence lets `fail_once_at_epoch` fire
    gather: Callable[[Any], list[Any]] = lambda obj: [obj]  # every rank's `obj`, in rank order (all ranks call it)


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (or the model itself)."""
    return getattr(model, "module", model)


class TokenizedRows(Dataset):
    """Rows tokenised once; items are dicts of token ids and float targets (NaN = unknown)."""

    def __init__(self, tokenizer, texts: list[str], max_length: int, target=None, teacher_prob=None, click=None):
        enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
        self.input_ids = enc["input_ids"]
        n = len(self.input_ids)
        nan = np.full(n, np.nan, dtype=np.float32)
        self.target = nan if target is None else np.asarray(target, dtype=np.float32)
        self.teacher_prob = nan if teacher_prob is None else np.asarray(teacher_prob, dtype=np.float32)
        self.click = nan if click is None else np.asarray(click, dtype=np.float32)
        self.pad_id = tokenizer.pad_token_id or 0

    @classmethod
    def from_table(cls, tokenizer, table: TrainingTable, max_length: int) -> "TokenizedRows":
        return cls(tokenizer, table.texts, max_length, table.target, table.teacher_prob, table.click)

    def __len__(self) -> int:
        return len(self.input_ids)

    def length_keys(self) -> np.ndarray:
        """`(n,)` int64 tokens per row: rows with equal keys pad alike (`LengthBucketSampler`)."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.input_ids[i], "target": self.target[i],
                "teacher_prob": self.teacher_prob[i], "click": self.click[i], "pad_id": self.pad_id}


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad to the longest row in the batch: `input_ids, attention_mask: (batch, seq)` int64, targets `(batch,)`."""
    width = max(len(it["input_ids"]) for it in items)
    pad = items[0]["pad_id"]
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for r, it in enumerate(items):
        ids[r, : len(it["input_ids"])] = torch.tensor(it["input_ids"], dtype=torch.long)
        mask[r, : len(it["input_ids"])] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    for key in ("target", "teacher_prob", "click"):
        out[key] = torch.tensor([it[key] for it in items], dtype=torch.float32)
    return out


def make_loader(rows: Dataset, batch_size: int, shuffle: bool, seed: int = 0, bucket_batches: int = 0,
                world_size: int = 1, rank: int = 0) -> DataLoader:
    """Batches of `rows`, collated by the dataset's own `collate` when it has one (two-tower rows), else `collate`.

    `shuffle` with `bucket_batches > 0` (and rows that have `length_keys`) batches through a
    `LengthBucketSampler` for `world_size` workers; otherwise a plain seeded shuffle, which
    Ray's `prepare_data_loader` turns into a `DistributedSampler`."""
    collate_fn = getattr(rows, "collate", collate)
    if shuffle and bucket_batches > 0 and hasattr(rows, "length_keys"):
        sampler = LengthBucketSampler(rows, batch_size, world_size, rank, seed, bucket_batches)
        return DataLoader(rows, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, collate_fn=collate_fn, generator=gen)


def rows_for(model, tokenizer, table: TrainingTable, max_length: int) -> Dataset:
    """The dataset `model` trains on: `TokenizedRows` for a cross-encoder, `TwoTowerRows` (each
    tower's ids + head features) for a two-tower student; the same targets either way."""
    from distillery.onnx_model.kinds import kind_of_model

    raw = unwrap(model)
    return kind_of_model(raw).rows_of_table(tokenizer, table, max_length, raw)


def _start_epoch(loader, epoch: int, seed: int) -> None:
    """Each epoch gets its own seeded order, single-process and distributed alike."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(loader, "set_epoch"):  # streamed rows (`stream.StreamLoader`)
        loader.set_epoch(epoch)
    elif hasattr(sampler, "set_epoch"):
        sampler.seed = seed
        sampler.set_epoch(epoch)
    elif getattr(loader, "generator", None) is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)


TARGET_KEYS = ("target", "teacher_prob", "click")
WEIGHT_KEY = "_step_weight"  # `stream.WEIGHT_KEY`: 0 on a streamed batch of padding rows only (the ranks step together)


def _forward(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: str) -> torch.Tensor:
    """Every non-target tensor of the batch is a model input (`input_ids, attention_mask` for a
    cross-encoder; both towers' ids and the head features for a two-tower student)."""
    out = model(**{k: v.to(device) for k, v in batch.items() if k not in TARGET_KEYS})
    return out.logits.reshape(-1).float()  # (batch,): one click logit per row


class Progress:
    """`[train] epoch 1/2 step 120/437 (27%) loss 0.1234 312 rows/s ETA 2m05s` every `every_s` seconds.

    Rows/s count every worker (`world_size` × this worker's rows); the ETA covers all remaining epochs."""

    def __init__(self, steps_per_epoch: int, epochs: int, world_size: int = 1, enabled: bool = True, every_s: float = 10.0):
        self.steps_per_epoch, self.epochs, self.world_size = steps_per_epoch, epochs, world_size
        self.enabled, self.every_s = enabled, every_s
        self._last = self._t0 = time.perf_counter()
        self._rows = 0
        self._steps_done = 0  # in this process, for the rate

    def update(self, epoch: int, step: int, loss: float, rows: int) -> None:
        self._rows += rows
        self._steps_done += 1
        now = time.perf_counter()
        if self.enabled and self._steps_done == 1:  # bench/train_scale.py times the start by this line
            print(f"[train] first step done ({now - self._t0:.1f} s after the loop started)", flush=True)
        if not self.enabled or now - self._last < self.every_s:
            return
        self._last = now
        elapsed = now - self._t0
        left = (self.epochs - epoch - 1) * self.steps_per_epoch + (self.steps_per_epoch - step - 1)
        eta = left * elapsed / self._steps_done
        total = self.steps_per_epoch
        print(f"[train] epoch {epoch + 1}/{self.epochs} step {step + 1}/{total} ({100 * (step + 1) / max(total, 1):.0f}%) "
              f"loss {loss:.4f} {self._rows * self.world_size / elapsed:.0f} rows/s ETA {int(eta) // 60}m{int(eta) % 60:02d}s",
              flush=True)


def train_epoch(model, loader, optimizer, scheduler, cfg: LoopConfig, device: str = "cpu",
                progress: Progress | None = None, epoch: int = 0, max_steps: int | None = None) -> dict[str, float]:
    """One pass over `loader` (at most `max_steps`, default `cfg.max_steps_per_epoch`);
    returns `{"loss": mean train loss, "rows": n, "steps": optimizer steps, "seconds": s}`."""
    model.train()
    max_steps = cfg.max_steps_per_epoch if max_steps is None else max_steps
    total, rows, steps, t0 = 0.0, 0, 0, time.perf_counter()
    for step, batch in enumerate(loader):
        if max_steps is not None and step >= max_steps:
            break
        weight = float(batch.pop(WEIGHT_KEY, 1.0))
        logits = _forward(model, batch, device)
        batch = {k: v.to(device) for k, v in batch.items() if k in TARGET_KEYS}
        loss = compute_loss(cfg.loss, logits, batch, cfg.alpha, cfg.temperature) * weight
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        n = len(logits) if weight else 0  # a zero-weight step trains no row
        total += loss.item() * n
        rows += n
        steps += 1
        if progress is not None:
            progress.update(epoch, step, total / max(rows, 1), n)
    return {"loss": total / max(rows, 1), "rows": rows, "steps": steps, "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict_logits(model, loader: DataLoader, device: str = "cpu") -> np.ndarray:
    """Click logits `(n,)` float64 for every row of `loader`, in order."""
    model.eval()
    out = [_forward(model, b, device).cpu().numpy() for b in loader]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def score_texts(model, tokenizer, texts: list[str], max_length: int = 64, batch_size: int = 128, device: str = "cpu") -> np.ndarray:
    """Click probabilities `(n,)` float64 in [0, 1] of a one-logit classifier over raw texts."""
    from distillery.onnx_model.kinds import kind_of_model

    raw = unwrap(model)
    rows = kind_of_model(raw).rows(tokenizer, texts, max_length, raw)
    loader = make_loader(rows, batch_size, shuffle=False)
    return 1.0 / (1.0 + np.exp(-predict_logits(model, loader, device)))


@torch.no_grad()
def validate(model, loader, cfg: LoopConfig, device: str = "cpu", hooks: "Hooks | None" = None) -> dict[str, float]:
    """`val_loss` (the training loss on held-out rows) and `val_auc` (against clicks where known);
    the targets come with the batches (in-memory or streamed rows alike). With `hooks` of several
    workers each scores every `world_size`-th batch of the (identically ordered) loader and the
    pieces are gathered, so every worker returns the figures of the whole validation set."""
    from distillery.metrics import roc_auc

    hooks = hooks or Hooks()
    model.eval()
    logits, targets = [], {k: [] for k in TARGET_KEYS}
    for i, b in enumerate(loader):
        if i % hooks.world_size != hooks.world_rank:
            continue
        logits.append(_forward(model, b, device).cpu())
        for k in TARGET_KEYS:
            targets[k].append(b[k].float())
    mine = (torch.cat(logits) if logits else torch.zeros(0), {k: torch.cat(v) if v else torch.zeros(0) for k, v in targets.items()})
    pieces = hooks.gather(mine) if hooks.world_size > 1 else [mine]
    all_logits = torch.cat([p[0] for p in pieces])
    if not len(all_logits):
        return {"val_loss": float("nan"), "val_auc": float("nan"), "val_rows": 0, "val_click_rows": 0}
    batch = {k: torch.cat([p[1][k] for p in pieces]) for k in TARGET_KEYS}
    val_loss = compute_loss(cfg.loss, all_logits, batch, cfg.alpha, cfg.temperature).item()
    click, logits = batch["click"].numpy(), all_logits.double().numpy()
    known = ~np.isnan(click)
    auc = roc_auc(click[known], logits[known]) if known.any() else float("nan")
    return {"val_loss": float(val_loss), "val_auc": float(auc), "val_rows": int(len(logits)), "val_click_rows": int(known.sum())}


def _lr_lambda(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    warmup = max(1, int(total_steps * warmup_fraction))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return f


def _table_loaders(cfg: LoopConfig, table: TrainingTable, model, tokenizer, hooks: Hooks):
    """(train loader, validation loader, training rows, validation rows, prior) of an in-memory table."""
    train_rows = rows_for(model, tokenizer, table.subset(~table.is_val), cfg.max_length)
    val_rows = rows_for(model, tokenizer, table.subset(table.is_val), cfg.max_length)
    train_loader = hooks.prepare_loader(make_loader(train_rows, cfg.batch_size, shuffle=True, seed=cfg.seed,
                                                    bucket_batches=cfg.length_bucket_batches,
                                                    world_size=hooks.world_size, rank=hooks.world_rank))
    val_loader = make_loader(val_rows, cfg.eval_batch_size, shuffle=False)  # every worker reads it; `validate` shares the scoring
    return train_loader, val_loader, len(train_rows), len(val_rows), _prior(table.subset(~table.is_val), cfg.loss)


def _loaders(cfg: LoopConfig, data, model, tokenizer, hooks: Hooks):
    """`_table_loaders` for a `TrainingTable`; `stream.loaders` for `stream.StreamedRows` (a worker's shard)."""
    if isinstance(data, TrainingTable):
        return _table_loaders(cfg, data, model, tokenizer, hooks)
    from distillery.training.stream import loaders

    train_loader, val_loader, _ = loaders(data, cfg, model, tokenizer, hooks.world_size)
    return train_loader, val_loader, data.train_rows, data.val_rows, data.prior


def train(cfg: LoopConfig, data, model, tokenizer, hooks: Hooks | None = None,
          state: TrainState | None = None) -> TrainState:
    """Train `model` on `data`'s training rows for `cfg.epochs`, validating on its held-out rows.

    `data` is a `TrainingTable` (in memory) or `stream.StreamedRows` (streamed: a Ray Train worker's
    shard and the validation sample). Resumes after `state.epoch` completed epochs (optimizer and scheduler restored) when `state`
    is given. Calls `hooks.report(metrics, model=, tokenizer=, state=)` at the end of each epoch.
    """
    hooks = hooks or Hooks()
    state = state or TrainState()
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    set_seed(cfg.seed + 7919 * state.epoch)
    if cfg.freeze_embeddings:
        for name, p in unwrap(model).named_parameters():
            if "word_embeddings" in name:
                p.requires_grad_(False)
    train_loader, val_loader, n_train, n_val, prior = _loaders(cfg, data, model, tokenizer, hooks)
    if cfg.init_bias_to_prior and state.optimizer is None:
        set_output_bias(model, prior)
    model = hooks.prepare_model(model)
    raw = unwrap(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = len(train_loader) if cfg.max_steps_per_epoch is None else min(len(train_loader), cfg.max_steps_per_epoch)
    epochs = cfg.epochs if cfg.steps is None else math.ceil(cfg.steps / max(1, steps))
    total_steps = steps * epochs if cfg.steps is None else cfg.steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(max(1, total_steps), cfg.warmup_fraction))
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
    if state.rng is not None:
        torch.set_rng_state(state.rng)
    progress = Progress(steps, epochs, hooks.world_size, enabled=hooks.world_rank == 0)
    if hooks.world_rank == 0:
        budget = "" if cfg.steps is None else f" ({cfg.steps} optimizer steps in all)"
        print(f"[train] {n_train} rows, {n_val} validation rows; {steps} steps/epoch × {epochs - state.epoch} "
              f"epoch(s) of {cfg.batch_size} rows × {hooks.world_size} worker(s){budget}", flush=True)
    for epoch in range(state.epoch, epochs):
        _maybe_fail(cfg, epoch, hooks)
        _start_epoch(train_loader, epoch, cfg.seed)
        limit = None if cfg.steps is None else min(steps, cfg.steps - epoch * steps)
        stats = train_epoch(model, train_loader, optimizer, scheduler, cfg, hooks.device, progress, epoch, limit)
        if hooks.world_rank == 0:
            print(f"[train] epoch {epoch + 1}/{epochs}: {stats['steps']} steps done in {stats['seconds']:.1f} s; "
                  f"validating on {n_val} rows", flush=True)
        val = validate(raw, val_loader, cfg, hooks.device, hooks) if n_val else {"val_loss": stats["loss"], "val_auc": float("nan")}
        metrics = {
            "epoch": epoch, "loss": stats["loss"], **val,
            "rows_per_s": stats["rows"] * hooks.world_size / max(stats["seconds"], 1e-9),
            "train_seconds": stats["seconds"], "steps": stats["steps"], "world_size": hooks.world_size,
            "lr": scheduler.get_last_lr()[0],
        }
        state.epoch = epoch + 1
        state.history.append(metrics)
        if metrics["val_loss"] < state.best_val_loss:
            state.best_val_loss, state.best_epoch = metrics["val_loss"], epoch
        state.optimizer, state.scheduler, state.rng = optimizer.state_dict(), scheduler.state_dict(), torch.get_rng_state()
        if hooks.world_rank == 0:  # printed, not logged: visible in `ray job logs` and the driver while it runs
            print(f"[train] epoch {epoch} loss={metrics['loss']:.4f} val_loss={metrics['val_loss']:.4f} "
                  f"val_auc={metrics['val_auc']:.4f} rows/s={metrics['rows_per_s']:.0f}", flush=True)
        hooks.report(metrics, model=raw, tokenizer=tokenizer, state=state)
    return state


def _prior(table: TrainingTable, loss: str) -> float:
    """Mean training target: the click rate, or the mean teacher probability."""
    values = table.teacher_prob if loss == "joint" else table.target
    mean = float(np.nanmean(values)) if np.isfinite(values).any() else 0.5
    return min(max(mean, 1e-4), 1 - 1e-4)


def set_output_bias(model: torch.nn.Module, prob: float) -> None:
    """Set the bias of the one-logit output layer to logit(prob).

    At a click rate of ~3% a zero bias starts every row at p = 0.5; AdamW moves a parameter by
    about `lr` per step, so the head would spend thousands of steps learning the base rate alone
    (observed: a teacher stuck at a constant 0.05 after an epoch). Starting at the prior avoids it.
    """
    heads = [m for m in unwrap(model).modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not heads or heads[-1].bias is None:
        log.warning("no one-logit output layer with a bias found; init_bias_to_prior skipped")
        return
    with torch.no_grad():
        heads[-1].bias.fill_(math.log(prob / (1 - prob)))


def _maybe_fail(cfg: LoopConfig, epoch: int, hooks: Hooks) -> None:
    if cfg.fail_once_at_epoch is None or epoch != cfg.fail_once_at_epoch or hooks.failure_marker is None:
        return
    if os.path.exists(hooks.failure_marker):
        return
    os.makedirs(os.path.dirname(hooks.failure_marker), exist_ok=True)
    with open(hooks.failure_marker, "w") as f:
        f.write(f"injected failure at epoch {epoch}\n")
    raise InjectedFailure(f"fail_once_at_epoch={epoch}: injected worker failure (marker {hooks.failure_marker})")


def save_checkpoint(path: str, model, tokenizer, state: TrainState) -> str:
    """Write a resumable checkpoint folder: HF model + tokenizer + `train_state.pt`."""
    os.makedirs(path, exist_ok=True)
    unwrap(model).save_pretrained(path)
    tokenizer.save_pretrained(path)
    # Plain tensors, numbers, lists and dicts only: the file loads with weights_only=True, so a checkpoint
    # on shared storage cannot run code on the workers that resume from it.
    torch.save(_plain(state.__dict__), os.path.join(path, STATE_FILE))
    return path


def _plain(value):
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_state(path: str) -> dict[str, Any]:
    """The `train_state.pt` of a checkpoint folder, loaded without unpickling code (weights_only)."""
    return torch.load(os.path.join(path, STATE_FILE), weights_only=True)


def load_model(path: str):
    """(model in train mode, tokenizer) from a folder written by `save_pretrained` + tokenizer (either student kind)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery.training.two_tower_student import CONFIG_FILE, load_two_tower

    if os.path.exists(os.path.join(path, CONFIG_FILE)):
        model, tokenizer = load_two_tower(path)
        return model.train(), tokenizer
    model = AutoModelForSequenceClassification.from_pretrained(path)
    return model.train(), AutoTokenizer.from_pretrained(path)


def load_checkpoint(path: str):
    """(model, tokenizer, TrainState) from a folder written by `save_checkpoint` (either student kind)."""
    model, tokenizer = load_model(path)
    return model, tokenizer, TrainState(**load_state(path))


def local_hooks(checkpoint_dir: str, keep: int = 2) -> Hooks:
    """Single-process hooks: a checkpoint folder per epoch under `checkpoint_dir`, `best/` kept apart."""

    def report(metrics, *, model, tokenizer, state):
        path = os.path.join(checkpoint_dir, f"epoch_{metrics['epoch']:04d}")
        save_checkpoint(path, model, tokenizer, state)
        if state.best_epoch == metrics["epoch"]:
            best = os.path.join(checkpoint_dir, "best")
            shutil.rmtree(best, ignore_errors=True)
            shutil.copytree(path, best)
        epochs = sorted(d for d in os.listdir(checkpoint_dir) if d.startswith("epoch_"))
        for old in epochs[:-keep]:
            shutil.rmtree(os.path.join(checkpoint_dir, old), ignore_errors=True)

    return Hooks(report=report, failure_marker=os.path.join(checkpoint_dir, "_injected_failure"))


def latest_local_checkpoint(checkpoint_dir: str) -> str | None:
    if not os.path.isdir(checkpoint_dir):
        return None
    epochs = sorted(d for d in os.listdir(checkpoint_dir) if d.startswith("epoch_"))
    return os.path.join(checkpoint_dir, epochs[-1]) if epochs else None
