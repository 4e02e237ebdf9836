"""Hugging Face plumbing shared by the teacher backends: model sources, lineage, length-sorted batches.

Kept apart from the backends so that `hf-classifier`, `hf-causal-lm` and the retrieval encoder load,
fingerprint and batch models the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

# distillery.io (pyarrow) and distillery.config (pydantic) are imported inside the functions that
# need them, so the batching helpers below import on a GPU box that has only torch/transformers.
from distillery.models import BACKBONE_ALIAS, default_backbone, pick_device, torch_dtype

log = logging.getLogger(__name__)

# `org/name` (one slash, hub-style characters): a hub id unless its first part is a local folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_BLOCK = 1 << 16


def check_model_source(name: str, field: str) -> None:
    """Fail with a ConfigError naming `field` when `name` cannot be a loadable model.

    Accepted: `minilm`; a local folder holding config.json; a URI folder holding config.json; a hub
    id (with HF_HUB_OFFLINE=1 it must already be in the local hub cache). Cheap: reads no weights.
    """
    from distillery import io
    from distillery.config import ConfigError

    if not name:
        raise ConfigError(f"{field}: empty model name")
    if name == BACKBONE_ALIAS:
        try:
            default_backbone()
        except (ImportError, FileNotFoundError) as err:
            raise ConfigError(f"{field}: {BACKBONE_ALIAS!r} backbone unavailable ({err})") from None
        return
    if "://" in name:
        if not io.exists(io.join(name, "config.json")):
            raise ConfigError(f"{field}: no config.json under {name!r}")
        return
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ConfigError(f"{field}: folder {name!r} has no config.json (not a Hugging Face model folder)")
        return
    first = name.split("/", 1)[0]
    if not _HUB_ID.match(name) or os.path.isdir(first) or name.startswith((".", "/", "~")):
        raise ConfigError(f"{field}: no model folder at {name!r}")
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(name, "config.json"), str):
            raise ConfigError(
                f"{field}: {name!r} is neither a local folder nor a cached hub model (HF_HUB_OFFLINE=1)"
            )


def local_model_dir(name: str) -> str:
    """A path `from_pretrained` can read: `minilm` → the packaged backbone; a URI folder is copied
    once to a local cache (keyed by URI) since Hugging Face loaders read only local files or the hub."""
    if name == BACKBONE_ALIAS:
        return default_backbone()
    if "://" not in name:
        return name
    import pyarrow.fs as pafs

    from distillery import io

    cache_root = Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))
    dest = cache_root / "models" / hashlib.sha256(name.encode()).hexdigest()[:16]
    if not (dest / "config.json").exists():
        from distillery.publish import staged_folder

        with staged_folder(str(dest), first_wins=True) as tmp:  # actors copying at once: the first copy stays
            src_fs, src_path = io.filesystem(name)
            pafs.copy_files(src_path, tmp, source_filesystem=src_fs, destination_filesystem=pafs.LocalFileSystem())
        log.info("copied model %s to %s", name, dest)
    return str(dest)


def model_fingerprint(path: str, model: Any) -> str:
    """Short stable hash of a model's identity, for lineage. For a local folder: config.json, each
    weight file's name and size, and 16 blocks of 64 KiB sampled evenly through it (a retrained
    model with the same shapes changes every block; reading ~1 MiB keeps this fast for large
    LMs). For a hub id: the config and the parameter count."""
    h = hashlib.sha256()
    folder = Path(path)
    if (folder / "config.json").is_file():
        h.update((folder / "config.json").read_bytes())
        for f in sorted(folder.iterdir()):
            if f.suffix in _WEIGHT_SUFFIXES:
                size = f.stat().st_size
                h.update(f"{f.name}:{size};".encode())
                with open(f, "rb") as handle:
                    for offset in np.linspace(0, max(size - _BLOCK, 0), 16).astype(np.int64):
                        handle.seek(int(offset))
                        h.update(handle.read(_BLOCK))
    else:
        h.update(model.config.to_json_string().encode())
        h.update(str(sum(p.numel() for p in model.parameters())).encode())
    return h.hexdigest()[:10]


def model_label(name: str) -> str:
    """Readable part of a teacher id: the folder's base name (`teacher`), or the alias / hub id."""
    if name == BACKBONE_ALIAS:
        return name
    return os.path.basename(name.rstrip("/")) or name


def setup_torch(device: str, dtype: str, num_threads: int | None) -> tuple[str, Any]:
    """(device, torch dtype) from config names; `num_threads` sets torch's intra-op threads for
    the whole process (a Ray actor with fractional CPUs should say how many cores it may use)."""
    import torch

    if num_threads is not None:
        torch.set_num_threads(num_threads)
    resolved = pick_device(device)
    if dtype == "fp16" and resolved == "cpu":
        log.warning("dtype fp16 on CPU is slow and less accurate; bf16 or fp32 is the usual choice")
    if dtype == "bf16" and resolved == "cpu":
        from distillery.hardware import native_bf16

        if not native_bf16():
            log.warning("dtype bf16 on a CPU without native bf16 is emulated and slower than fp32; dtype auto chooses for you")
    return resolved, torch_dtype(dtype, resolved)


def load_tokenizer(path: str, **kwargs: Any):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)


def length_sorted_batches(lengths: list[int] | np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Index arrays of at most `batch_size` rows, longest rows first, so each batch pads only to its
    own longest row (and an out-of-memory batch shows up first, not last). Stable for ties."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def token_budget_batches(lengths: list[int] | np.ndarray, max_rows: int, max_tokens: int) -> Iterator[np.ndarray]:
    """Like `length_sorted_batches`, but a batch also stops growing once rows × its longest row
    (the padded tokens it costs) would pass `max_tokens`: short rows share big batches, long rows
    small ones, so a GPU batch's memory stays bounded whatever the length mix. A row longer than
    `max_tokens` on its own still gets a batch of one."""
    if max_rows < 1 or max_tokens < 1:
        raise ValueError(f"max_rows={max_rows}, max_tokens={max_tokens}: both must be >= 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)  # longest first: the batch's padded width
        rows = max(1, min(max_rows, max_tokens // longest))
        yield order[start:start + rows]
        start += rows


def padded_tokens(lengths: list[int] | np.ndarray, batches: Iterator[np.ndarray] | list[np.ndarray]) -> int:
    """Tokens a forward pass computes over `batches` (rows × longest row, summed): the cost that
    length bucketing reduces, against `len(lengths) * max(lengths)` for one-width padding."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return int(sum(len(index) * int(lengths[index].max()) for index in batches if len(index)))


def pad_batch(tokenizer: Any, encoded: dict[str, list], index: np.ndarray, device: str) -> dict[str, Any]:
    """Tensors for rows `index` of an unpadded `tokenizer(...)` output, padded to the batch's
    longest row (on the tokenizer's padding side), moved to `device`.

    On CUDA the host tensors are pinned (page-locked) first so the copy is a DMA that runs
    asynchronously (`non_blocking=True`) while the CPU pads the next batch; the stream orders it
    before the forward pass that reads it, and reading the logits back synchronises."""
    features = {key: [values[i] for i in index] for key, values in encoded.items()}
    batch = tokenizer.pad(features, padding="longest", return_tensors="pt")
    if str(device).startswith("cuda"):
        return {key: value.pin_memory().to(device, non_blocking=True) for key, value in batch.items()}
    return {key: value.to(device) for key, value in batch.items()}


def batched_logits(model: Any, tokenizer: Any, texts: list[str], *, max_length: int, batch_size: int,
                   device: str, max_batch_tokens: int | None = None) -> np.ndarray:
    """A sequence classifier's logits for `texts`, float32 (n, num_labels), in the order of `texts`.

    Texts are tokenised once without padding, sorted longest first and batched so each batch pads
    only to its own longest row (`max_batch_tokens` also caps rows × longest, see
    `token_budget_batches`); batches go to `device` through `pad_batch` (pinned on CUDA). The model
    runs in whatever dtype it was loaded in; logits come back as float32.
    """
    import torch

    num_labels = int(model.config.num_labels)
    out = np.zeros((len(texts), num_labels), dtype=np.float32)
    if not texts:
        return out
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length)
    lengths = [len(ids) for ids in encoded["input_ids"]]
    batches = (token_budget_batches(lengths, batch_size, max_batch_tokens) if max_batch_tokens
               else length_sorted_batches(lengths, batch_size))
    with torch.inference_mode():
        for index in batches:
            batch = pad_batch(tokenizer, encoded, index, device)
            out[index] = model(**batch).logits.float().cpu().numpy()
    return out
