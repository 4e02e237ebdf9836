"""What this machine's CPU can do, and the dtype that follows from it.

    cpu_info()                      # {"model": ..., "isa": "avx512_vnni" | "avx2" | ..., "flags": [...], ...}
    resolve_dtype("auto", "cpu")    # "bf16" only where the CPU has native bf16, else "fp32"

Machines of one kind differ: one has AVX-512 VNNI and native bf16 (AVX512_BF16 / AMX), another only
AVX2, where bf16 is emulated and runs *slower* than fp32 (measured: 119 s against 17.6 s for the same
student on 3,000 rows) and INT8 gains 1.4x instead of 2.8x. Choices are made from the features
detected here, never assumed; every benchmark figure is printed beside `cpu_summary()`.

`ONEDNN_MAX_CPU_ISA` (oneDNN, torch's CPU kernels) and `ATEN_CPU_CAPABILITY` (torch's own vector
kernels) cap what torch uses; a cap below AVX-512 is honoured here too, so an AVX2-only machine can
be reproduced on a bigger one.
"""

from __future__ import annotations

import functools
import os
import platform
from typing import Any

__all__ = ["cpu_flags", "cpu_info", "cpu_summary", "native_bf16", "has_vnni", "resolve_dtype"]

# /proc/cpuinfo flags that matter for the kernels we run (x86); others are dropped from summaries.
_INTERESTING = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16",
                "amx_bf16", "amx_int8", "amx_tile", "avx512_fp16", "asimd", "sve", "bf16", "i8mm")
_BELOW_AVX512 = ("avx2", "avx", "sse41", "sse4_1", "default", "sse42")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Feature flags of the first CPU in /proc/cpuinfo (x86 `flags`, Arm `Features`); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def _capped_below_avx512() -> bool:
    """True when the environment caps torch's kernels below AVX-512 (an AVX2 machine, reproduced)."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "").lower()
    aten = os.environ.get("ATEN_CPU_CAPABILITY", "").lower()
    return isa.startswith(_BELOW_AVX512) or aten in _BELOW_AVX512


def native_bf16(flags: frozenset[str] | None = None) -> bool:
    """The CPU computes bf16 in hardware (AVX512_BF16 or AMX-BF16 on x86, BF16 on Arm)."""
    flags = cpu_flags() if flags is None else flags
    if flags is cpu_flags() and _capped_below_avx512():
        return False
    return bool({"avx512_bf16", "amx_bf16"} & flags) or ("bf16" in flags and "asimd" in flags)


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    """INT8 dot products in hardware (AVX512-VNNI or AVX-VNNI): dynamic INT8 gains most here."""
    flags = cpu_flags() if flags is None else flags
    if flags is cpu_flags() and _capped_below_avx512():
        return "avx_vnni" in flags
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)


def _isa(flags: frozenset[str]) -> str:
    capped = flags is cpu_flags() and _capped_below_avx512()
    if not capped and "amx_bf16" in flags:
        return "amx"
    if not capped and "avx512_vnni" in flags:
        return "avx512_vnni"
    if not capped and "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2" + ("+avx_vnni" if "avx_vnni" in flags else "")
    return "asimd" if "asimd" in flags else platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def _model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_info() -> dict[str, Any]:
    """The CPU as benchmarks report it: model, cores, ISA tier, the flags that matter, bf16/VNNI, caps."""
    flags = cpu_flags()
    info: dict[str, Any] = {
        "model": _model_name(), "cores": os.cpu_count(), "isa": _isa(flags),
        "flags": sorted(f for f in flags if f in _INTERESTING),
        "native_bf16": native_bf16(), "vnni": has_vnni(),
    }
    caps = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k)}
    if caps:
        info["capped_by"] = caps
    return info


def cpu_summary() -> str:
    """One line: `Intel Xeon ... | 2 cores | isa avx512_vnni | bf16 native | vnni`."""
    i = cpu_info()
    parts = [i["model"], f"{i['cores']} cores", f"isa {i['isa']}",
             "bf16 native" if i["native_bf16"] else "bf16 emulated", "vnni" if i["vnni"] else "no vnni"]
    if i.get("capped_by"):
        parts.append("capped " + ",".join(f"{k}={v}" for k, v in i["capped_by"].items()))
    return " | ".join(parts)


def resolve_dtype(name: str, device: str) -> str:
    """`auto` → the fastest accurate dtype here: bf16 on CUDA and on CPUs with native bf16, else fp32.
    Any other name is returned as is (an explicit choice is honoured)."""
    if name != "auto":
        return name
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if native_bf16() else "fp32"
