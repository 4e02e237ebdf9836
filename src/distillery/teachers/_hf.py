"""Hugging Face plumbing shared by the teacher backends: model sources, lineage, length-sorted batches.

Kept apart from the backends so that `hf-classifier`, `hf-causal-lm` and the retrieval encoder load,
fingerprint and batch models the same way.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from distillery import io
from distillery.config import ConfigError
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

    cache_root = Path(os.environ.get("DISTILLERY_CACHE", Path.home() / ".cache" / "distillery"))
    dest = cache_root / "models" / hashlib.sha256(name.encode()).hexdigest()[:16]
    if not (dest / "config.json").exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".partial-"))
        src_fs, src_path = io.filesystem(name)
        pafs.copy_files(src_path, str(tmp), source_filesystem=src_fs,
                        destination_filesystem=pafs.LocalFileSystem())
        try:
            os.replace(tmp, dest)
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
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
    return resolved, torch_dtype(dtype)


def load_tokenizer(path: str, **kwargs: Any):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, **kwargs)


def length_sorted_batches(lengths: list[int] | np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """Index arrays of at most `batch_size` rows, longest rows first, so each batch pads only to its
    own longest row (and an out-of-memory batch shows up first, not last). Stable for ties."""
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def pad_batch(tokenizer: Any, encoded: dict[str, list], index: np.ndarray, device: str) -> dict[str, Any]:
    """Tensors for rows `index` of an unpadded `tokenizer(...)` output, padded to the batch's
    longest row (on the tokenizer's padding side), moved to `device`."""
    features = {key: [values[i] for i in index] for key, values in encoded.items()}
    batch = tokenizer.pad(features, padding="longest", return_tensors="pt")
    return {key: value.to(device) for key, value in batch.items()}
