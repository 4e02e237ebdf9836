"""Does the exported model still say what the PyTorch model said, and is each variant good enough?

    parity = fp32_parity("runs/demo/student", "runs/demo/onnx", texts, atol=1e-4)   # max |Δ logit|
    aucs = variant_aucs("runs/demo/onnx", ["fp32", "int8"], texts, clicks)
    check_quality_gate(aucs, max_drop=0.002, presets={"int8": "int8-dynamic"})       # raises if not

FP32 is checked against PyTorch logit by logit (it must be the same function); quantized variants
are checked by what matters downstream, test-split AUC against true clicks, relative to FP32.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from distillery.evaluate import roc_auc

__all__ = ["QualityGateError", "ParityError", "torch_logits", "onnx_logits", "fp32_parity", "variant_aucs",
           "check_quality_gate", "batch1_latency", "interleaved_latency"]


class ParityError(RuntimeError):
    """The FP32 ONNX graph disagrees with PyTorch beyond the tolerance."""


class QualityGateError(RuntimeError):
    """A quantized variant lost more AUC than allowed; the message names a less aggressive preset."""


def torch_logits(model_dir: str, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """The click logit PyTorch computes for each text, float64 (n,), exactly as the ONNX graph
    defines it (`l1 - l0` for two-class models)."""
    import torch

    from distillery.compress.export import load_for_export

    model, tok = load_for_export(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
            if "token_type_ids" in enc and not getattr(model.config, "type_vocab_size", 0):
                enc.pop("token_type_ids")
            logits = model(**enc).logits.double()
            out.append((logits[:, 1] - logits[:, 0]) if logits.shape[1] == 2 else logits[:, 0])
    return torch.cat(out).numpy() if out else np.zeros(0)


def onnx_logits(onnx_dir: str, variant: str, texts: list[str], batch_size: int = 64,
                intra_op_threads: int | None = None) -> np.ndarray:
    """Click logits of one ONNX variant through the serving scorer, float64 (n,)."""
    from distillery.serving.scorer import OnnxScorer

    scorer = OnnxScorer(onnx_dir, variant=variant, provider="cpu", intra_op_threads=intra_op_threads)
    out = [scorer.logits(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def fp32_parity(model_dir: str, onnx_dir: str, texts: list[str], *, atol: float = 1e-4, max_length: int = 128,
                batch_size: int = 64, intra_op_threads: int | None = None) -> dict[str, Any]:
    """Max |Δ logit| between PyTorch and the FP32 ONNX graph on `texts`; raises ParityError over `atol`."""
    if not texts:
        raise ValueError("fp32_parity: no texts to compare on")
    ref = torch_logits(model_dir, texts, max_length, batch_size)
    got = onnx_logits(onnx_dir, "fp32", texts, batch_size, intra_op_threads)
    diff = float(np.max(np.abs(ref - got)))
    result = {"max_abs_diff": diff, "atol": atol, "rows": len(texts)}
    if not diff <= atol:  # also catches NaN
        raise ParityError(f"FP32 ONNX differs from PyTorch by {diff:.3g} (> atol {atol}) on {len(texts)} rows: "
                          "the export is broken (check attention implementation and dynamic axes)")
    return result


def variant_aucs(onnx_dir: str, variants: list[str], texts: list[str], clicks: np.ndarray, *,
                 batch_size: int = 64, intra_op_threads: int | None = None) -> dict[str, float]:
    """Test AUC of each variant on (texts, true clicks): {variant: auc}."""
    clicks = np.asarray(clicks)
    if len(clicks) != len(texts):
        raise ValueError(f"clicks: {len(clicks)} labels for {len(texts)} texts")
    if clicks.min(initial=0) == clicks.max(initial=0):
        raise ValueError("clicks: one class only; AUC needs both clicks and non-clicks (use more validation rows)")
    return {v: roc_auc(clicks, onnx_logits(onnx_dir, v, texts, batch_size, intra_op_threads)) for v in variants}


def check_quality_gate(aucs: dict[str, float], *, max_drop: float = 0.002, presets: dict[str, str] | None = None,
                       reference: str = "fp32") -> dict[str, float]:
    """AUC drop of every variant below `reference`; raises QualityGateError if any exceeds `max_drop`.

    `presets` maps variant → preset name so the message can name the less aggressive one to try.
    Returns {variant: drop} (positive = worse than FP32).
    """
    from distillery.compress.quantize import LESS_AGGRESSIVE

    if reference not in aucs:
        raise ValueError(f"aucs: no {reference!r} reference AUC")
    base = aucs[reference]
    drops = {v: float(base - a) for v, a in aucs.items() if v != reference}
    failed = {v: d for v, d in drops.items() if not d <= max_drop}
    if failed:
        lines = []
        for v, d in failed.items():
            preset = (presets or {}).get(v, v)
            lines.append(f"{v} ({preset}): AUC {aucs[v]:.4f} is {d:.4f} below FP32 {base:.4f} (allowed {max_drop}); "
                         f"try the less aggressive preset: {LESS_AGGRESSIVE.get(preset, 'fp32')}")
        raise QualityGateError("quality gate failed:\n  " + "\n  ".join(lines))
    return drops


def batch1_latency(predict, texts: list[str], *, calls: int = 200, warmup: int = 20) -> dict[str, float]:
    """p50/p99 in ms of `predict([text])`, one row per call, cycling through `texts`."""
    for t in texts[:warmup]:
        predict([t])
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        predict([texts[i % len(texts)]])
        times[i] = (time.perf_counter() - t0) * 1000
    return {"p50": round(float(np.percentile(times, 50)), 3), "p99": round(float(np.percentile(times, 99)), 3)}


def interleaved_latency(predicts: dict[str, Any], texts: list[str], *, calls: int = 200, warmup: int = 10,
                        batch: int = 1) -> dict[str, dict[str, float]]:
    """p50/p99 in ms per candidate, measured round-robin (a, b, c, a, b, c, …) on the same texts so
    that load from other processes on a shared host hits every candidate alike; ratios of these
    are fairer than of numbers taken one after another. `predicts`: {name: predict(list[str])}."""
    if batch < 1:
        raise ValueError(f"batch={batch}: must be >= 1")
    groups = [[texts[(i * batch + j) % len(texts)] for j in range(batch)] for i in range(max(calls, warmup))]
    for g in groups[:warmup]:
        for fn in predicts.values():
            fn(g)
    times = {k: np.empty(calls) for k in predicts}
    for i in range(calls):
        for k, fn in predicts.items():
            t0 = time.perf_counter()
            fn(groups[i])
            times[k][i] = (time.perf_counter() - t0) * 1000
    return {k: {"p50": round(float(np.percentile(t, 50)), 3), "p99": round(float(np.percentile(t, 99)), 3)}
            for k, t in times.items()}
