"""The GPU path on a real GPU: bf16 teacher batches match fp32, pinned copies, FP16 student on
ORT's CUDA EP (or a clear refusal), PyTorch FP16 student with CUDA graphs, bench/gpu.py end to end."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(bench, tmp_path_factory):
    """A 3-layer, 128-wide teacher and its 2-layer student (random BERT, bench tokenizer)."""
    texts = bench.ad_texts(64)
    shape = dict(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256)
    return bench.build_models(str(tmp_path_factory.mktemp("gpu_models")), texts, shape=shape), texts


def test_pad_batch_pins_and_copies_to_cuda(bench, models):
    from transformers import AutoTokenizer

    folders, texts = models
    hf = bench.hf_helpers()
    tok = AutoTokenizer.from_pretrained(folders["teacher"])
    enc = tok(texts[:8], truncation=True, max_length=64)
    batch = hf.pad_batch(tok, enc, np.arange(8), "cuda")
    torch.cuda.synchronize()
    assert all(v.is_cuda for v in batch.values())
    assert batch["input_ids"].shape[1] == max(len(ids) for ids in enc["input_ids"])


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_teacher_half_precision_on_cuda_matches_fp32_on_cpu(bench, models, dtype):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery.models import torch_dtype

    folders, texts = models
    hf = bench.hf_helpers()
    tok = AutoTokenizer.from_pretrained(folders["teacher"])
    cpu = AutoModelForSequenceClassification.from_pretrained(folders["teacher"]).eval()
    gpu = AutoModelForSequenceClassification.from_pretrained(folders["teacher"], dtype=torch_dtype(dtype)).to("cuda").eval()
    ref = hf.batched_logits(cpu, tok, texts, max_length=64, batch_size=16, device="cpu")
    out = hf.batched_logits(gpu, tok, texts, max_length=64, batch_size=64, device="cuda", max_batch_tokens=1024)
    assert out.dtype == np.float32 and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, atol=0.05 if dtype == "bf16" else 0.01)


def test_hf_classifier_teacher_on_cuda_bf16(models):
    pytest.importorskip("pydantic", reason="distillery's teacher configs need pydantic (absent on the bare GPU image)")
    from distillery.teachers import build_teacher
    from distillery.teachers import HFClassifierConfig

    folders, texts = models
    teacher = build_teacher(HFClassifierConfig(model=folders["teacher"], device="cuda", dtype="bf16", batch_size=256))
    assert teacher.teacher_id.endswith("@bf16") and str(next(teacher.model.parameters()).device).startswith("cuda")
    probs = teacher.predict_proba(texts)
    assert probs.shape == (len(texts),) and np.all((probs >= 0) & (probs <= 1))


def test_torch_fp16_student_with_cuda_graphs_matches_eager(bench, models):
    folders, texts = models
    student = bench.TorchFP16Student(folders["student"], max_length=64)
    eager = np.array([student.predict([t])[0] for t in texts[:16]])
    note = student.capture_graphs()
    if not student.graphs:
        pytest.skip(f"CUDA graphs not capturable with this transformers/torch: {note}")
    graphed = np.array([student.predict([t])[0] for t in texts[:16]])
    np.testing.assert_allclose(graphed, eager, atol=2e-2)
    assert student.predict(texts[:32]).shape == (32,)  # batches other than 1 stay eager


def test_ort_cuda_fp16_student_or_clear_refusal(bench, models, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("pyarrow", reason="distillery.compress.export writes through distillery.io (pyarrow)")
    from distillery.compress.export import export_onnx
    from distillery.compress.quantize import apply_preset
    from distillery.onnx_model.scorer import OnnxScorer

    folders, texts = models
    export_onnx(folders["student"], str(tmp_path), max_length=64)
    apply_preset(str(tmp_path), "fp16")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="refusing to run on CPU silently"):
            OnnxScorer(str(tmp_path), variant="fp16", provider="cuda")
        pytest.skip(f"this onnxruntime has no CUDA EP ({ort.get_available_providers()}); refusal checked")
    fp32 = OnnxScorer(str(tmp_path), variant="fp32").logits(texts)
    for io_binding in (False, True):
        scorer = OnnxScorer(str(tmp_path), variant="fp16", provider="cuda", io_binding=io_binding)
        assert scorer.providers[0] == "CUDAExecutionProvider"
        np.testing.assert_allclose(scorer.logits(texts), fp32, atol=2e-2)


def test_bench_gpu_runs_end_to_end(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--rows", "512", "--cpu-rows", "64", "--iters", "30",
                           "--batches", "3", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "teacher rows/s" in proc.stdout and "student FP16 batch 1 p50" in proc.stdout
    import json

    res = json.loads(out.read_text())
    assert res["teacher"]["gpu_rows_per_s"] > 0 and res["student"]
