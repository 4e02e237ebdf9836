"""Does the exported model still say what the PyTorch model said, and is each variant good enough?

    parity = fp32_parity("runs/demo/student", "runs/demo/onnx", texts, atol=1e-4)   # max |Δ logit|
    probs = variant_probs("runs/demo/onnx", ["fp32", "int8"], texts)
    result = quality_gate(clicks, probs, GateThresholds(max_auc_drop=0.005), presets={"int8": "int8-dynamic"})
    raise_if_failed(result)                                                           # names the preset to try

FP32 is checked against PyTorch logit by logit (it must be the same function); quantized variants
are checked against FP32 on paired predictions of the same test rows (`gate.py`): a paired DeLong
interval of the AUC drop, rank agreement and |Δp|, so the decision does not flip with the sample.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from distillery.compress.gate import GateThresholds, gate_decision, paired_comparison
from distillery.metrics import percentiles

__all__ = ["QualityGateError", "ParityError", "torch_logits", "onnx_logits", "fp32_parity", "variant_probs",
           "quality_gate", "gate_failures", "raise_if_failed", "batch1_latency", "interleaved_latency"]


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
    from distillery.onnx_model.scorer import OnnxScorer

    scorer = OnnxScorer(onnx_dir, variant=variant, provider="cpu", intra_op_threads=intra_op_threads)
    out = [scorer.logits(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def compare_logits(ref: np.ndarray, got: np.ndarray, atol: float, what: str, hint: str = "") -> dict[str, Any]:
    """`{"max_abs_diff", "atol", "rows"}` of two logit vectors `(n,)`; ParityError when over `atol` (or NaN)."""
    diff = float(np.max(np.abs(ref - got)))
    if not diff <= atol:  # also catches NaN
        raise ParityError(f"{what} differs from PyTorch by {diff:.3g} (> atol {atol}) on {len(ref)} rows"
                          + (f": {hint}" if hint else ""))
    return {"max_abs_diff": diff, "atol": atol, "rows": len(ref)}


def fp32_parity(model_dir: str, onnx_dir: str, texts: list[str], *, atol: float = 1e-4, max_length: int = 128,
                batch_size: int = 64, intra_op_threads: int | None = None) -> dict[str, Any]:
    """Max |Δ logit| between PyTorch and the FP32 ONNX graph on `texts`; raises ParityError over `atol`."""
    if not texts:
        raise ValueError("fp32_parity: no texts to compare on")
    ref = torch_logits(model_dir, texts, max_length, batch_size)
    got = onnx_logits(onnx_dir, "fp32", texts, batch_size, intra_op_threads)
    return compare_logits(ref, got, atol, "FP32 ONNX",
                          "the export is broken (check attention implementation and dynamic axes)")


def variant_probs(onnx_dir: str, variants: list[str], texts: list[str], *, batch_size: int = 64,
                  intra_op_threads: int | None = None) -> dict[str, np.ndarray]:
    """Click probabilities `(n,)` of each variant on the same texts: {variant: probs}."""
    return {v: 1.0 / (1.0 + np.exp(-onnx_logits(onnx_dir, v, texts, batch_size, intra_op_threads))) for v in variants}


def quality_gate(clicks: np.ndarray, probs: dict[str, np.ndarray], thresholds: GateThresholds, *,
                 presets: dict[str, str] | None = None, reference: str = "fp32") -> dict[str, Any]:
    """Compare every variant with `reference` on paired predictions (see `distillery.compress.gate`).

    `clicks: (n,)` 0/1; `probs`: {variant: (n,) probabilities on the same rows}; `presets` maps
    variant → preset so the message names the less aggressive one to try. Returns
    `{"passed", "thresholds", "variants": {v: figures + passed + reasons}, "failed": [v, ...]}`;
    never raises on a failing variant (`raise_if_failed` does).
    """
    from dataclasses import asdict

    clicks = np.asarray(clicks)
    if reference not in probs:
        raise ValueError(f"probs: no {reference!r} reference variant")
    if len(clicks) != len(probs[reference]):
        raise ValueError(f"clicks: {len(clicks)} labels for {len(probs[reference])} predictions")
    n_pos = int((clicks == 1).sum())
    if len(clicks) < 2:
        raise ValueError(f"clicks: {len(clicks)} rows; the gate needs rows to compare on (raise validation.rows)")
    with_auc = n_pos >= 2 and len(clicks) - n_pos >= 2
    variants = {}
    for v, p in probs.items():
        if v == reference:
            continue
        if with_auc:
            stats = paired_comparison(clicks, probs[reference], p, thresholds.confidence)
            variants[v] = {**stats, **gate_decision(stats, thresholds)}
        else:
            variants[v] = _rank_only(clicks, probs[reference], p, thresholds)
        variants[v]["preset"] = (presets or {}).get(v, v)
    failed = sorted(v for v, r in variants.items() if not r["passed"])
    return {"passed": not failed, "failed": failed, "reference": reference,
            "thresholds": asdict(thresholds), "variants": variants}


def _rank_only(clicks: np.ndarray, ref: np.ndarray, variant: np.ndarray, thresholds: GateThresholds) -> dict[str, Any]:
    """The gate without its AUC test, for rows with fewer than two clicks or non-clicks (no pair to
    rank): rank agreement and |Δp| against `ref` decide; the AUC figures are null with the reason."""
    from scipy.stats import kendalltau, spearmanr

    ref, variant = np.asarray(ref, dtype=np.float64).ravel(), np.asarray(variant, dtype=np.float64).ravel()
    same = bool(np.all(ref == variant))
    dp = np.abs(variant - ref)
    stats = {"spearman": 1.0 if same else float(spearmanr(ref, variant).statistic),
             "kendall": 1.0 if same else float(kendalltau(ref, variant).statistic),
             "max_abs_dp": float(dp.max(initial=0.0)), "mean_abs_dp": float(dp.mean()) if len(dp) else 0.0,
             "rows": int(len(ref)), "clicks": int(np.sum(clicks == 1))}
    decision = gate_decision({**stats, "auc_drop_ci": [float("-inf"), float("inf")]}, thresholds)
    none = dict.fromkeys(("auc_ref", "auc_variant", "auc_drop", "auc_drop_se", "auc_drop_ci", "p_value", "flipped_pairs"))
    return {**none, **stats, **decision, "confidence": thresholds.confidence,
            "auc_drop_reason": f"{stats['clicks']} clicks in {stats['rows']} gate rows: no AUC to compare "
                               "(raise validation.rows); rank agreement and |Δp| decided"}


def gate_failures(result: dict[str, Any]) -> dict[str, str]:
    """{failed variant: why, and the less aggressive preset to try} of a `quality_gate` result."""
    from distillery.compress.quantize import LESS_AGGRESSIVE

    out = {}
    for v in result["failed"]:
        r = result["variants"][v]
        out[v] = (f"{v} ({r['preset']}): " + "; ".join(r["reasons"])
                  + f"; try the less aggressive preset: {LESS_AGGRESSIVE.get(r['preset'], 'fp32')}")
    return out


def raise_if_failed(result: dict[str, Any]) -> None:
    """QualityGateError naming each failed variant, why, and the less aggressive preset to try."""
    if not result["passed"]:
        raise QualityGateError("quality gate failed:\n  " + "\n  ".join(gate_failures(result).values()))


def batch1_latency(predict, texts: list[str], *, calls: int = 200, warmup: int = 20) -> dict[str, float]:
    """p50/p99 in ms of `predict([text])`, one row per call, cycling through `texts`."""
    for t in texts[:warmup]:
        predict([t])
    times = np.empty(calls)
    for i in range(calls):
        t0 = time.perf_counter()
        predict([texts[i % len(texts)]])
        times[i] = (time.perf_counter() - t0) * 1000
    return percentiles(times)


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
    return {k: percentiles(t) for k, t in times.items()}
