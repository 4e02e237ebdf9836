"""tests/gpu: the CUDA path, run on a machine with an NVIDIA GPU; every test here is skipped,
with the reason, where torch sees no CUDA device.

    PYTHONPATH=src python -m pytest tests/gpu -q        # on the GPU machine

The bare GPU image lacks pydantic (distillery's configs need it): tests that build a teacher from
its config skip with that reason; BENCHMARKS.md ("GPU") says how to carry the wheels.
"""

from __future__ import annotations

import pytest


def cuda_skip_reason() -> str | None:
    try:
        import torch
    except ImportError as err:
        return f"torch not importable ({err})"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'})"
    return None


def pytest_collection_modifyitems(config, items):
    reason = cuda_skip_reason()
    if reason is None:
        return
    marker = pytest.mark.skip(reason=f"tests/gpu needs CUDA: {reason}")
    for item in items:
        if "tests/gpu/" in str(item.path).replace("\\", "/"):
            item.add_marker(marker)
