"""CPU feature detection and the dtype/quantization choices that follow from it."""

from __future__ import annotations

import pytest

from distillery import hardware


@pytest.fixture(autouse=True)
def _no_caps(monkeypatch):
    for var in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(var, raising=False)


AVX512_BF16 = frozenset({"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"})
AVX2_ONLY = frozenset({"avx2", "fma"})


def test_bf16_and_vnni_follow_the_flags():
    assert hardware.native_bf16(AVX512_BF16) and hardware.has_vnni(AVX512_BF16)
    assert not hardware.native_bf16(AVX2_ONLY) and not hardware.has_vnni(AVX2_ONLY)
    assert hardware.has_vnni(AVX2_ONLY | {"avx_vnni"}) and not hardware.native_bf16(AVX2_ONLY | {"avx_vnni"})
    assert hardware.native_bf16(frozenset({"asimd", "bf16"}))  # Arm


def test_auto_dtype_is_fp32_without_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2_ONLY)
    assert hardware.resolve_dtype("auto", "cpu") == "fp32"
    assert hardware.resolve_dtype("bf16", "cpu") == "bf16"  # an explicit choice is honoured
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX512_BF16)
    assert hardware.resolve_dtype("auto", "cpu") == "bf16"


def test_an_avx2_cap_in_the_environment_is_honoured(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX512_BF16)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert not hardware.native_bf16() and not hardware.has_vnni()
    assert hardware.resolve_dtype("auto", "cpu") == "fp32"
    assert hardware.cpu_info()["isa"] == "avx2" and hardware.cpu_info()["capped_by"] == {"ONEDNN_MAX_CPU_ISA": "AVX2"}


def test_summary_names_the_machine():
    info = hardware.cpu_info()
    assert info["cores"] >= 1 and isinstance(info["flags"], list)
    summary = hardware.cpu_summary()
    assert f"{info['cores']} cores" in summary and "bf16" in summary


def test_torch_dtype_auto_resolves(monkeypatch):
    import torch

    from distillery.models import dtype_suffix, torch_dtype

    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX2_ONLY)
    assert torch_dtype("auto") is torch.float32 and dtype_suffix(torch.float32) == ""
    monkeypatch.setattr(hardware, "cpu_flags", lambda: AVX512_BF16)
    assert torch_dtype("auto") is torch.bfloat16 and dtype_suffix(torch.bfloat16) == "@bf16"
