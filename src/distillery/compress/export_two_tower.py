"""Export a two-tower student: one tower graph (ONNX), the head as numpy arrays, a card that says so.

    card = export_two_tower("runs/demo/student_two_tower", "runs/demo/onnx_two_tower", max_length=64)
    parity = two_tower_parity("runs/demo/student_two_tower", "runs/demo/onnx_two_tower", texts, atol=1e-3)
    probs = two_tower_variant_probs("runs/demo/onnx_two_tower", ["fp32", "int8"], texts)

The folder keeps the cross-encoder's serving contract where it can, so quantization presets,
sizes and the paired quality gate apply unchanged:

    student.fp32.onnx   the tower: int64 input_ids, attention_mask (batch, sequence) → float32
                        `embedding` (batch, d), norm √d. Request and ad towers share the weights,
                        so one graph serves both (half the file, one session per replica)
    two_tower_head.npz  the interaction head and the towers' hashed categorical tables (float32;
                        `onnx_model.two_tower.NumpyHead`)
    tokenizer files, model_card.json with `student_kind: two_tower` and the towers' `two_tower` spec

Quantization touches the tower only: the head is ~50k weights and per-candidate, where float32 is
both cheap and exact.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from distillery.compress.export import FP32_FILE, file_sha256
from distillery.onnx_model.card import CARD_FILE, ModelCard
from distillery.onnx_model.two_tower import HEAD_FILE, KIND

__all__ = ["EMBEDDING_OUTPUT", "export_two_tower", "head_arrays", "torch_two_tower_logits", "two_tower_parity",
           "two_tower_variant_probs"]

log = logging.getLogger(__name__)

EMBEDDING_OUTPUT = "embedding"
_SAMPLE = ["query: running shoes | site: sports | device: mobile", "advertiser: acme | ad: trail runner sale | text: half price this week"]


def head_arrays(model) -> dict[str, np.ndarray]:
    """The `InteractionHead` of a `TwoTowerStudent` as float32 arrays (`onnx_model.two_tower.NumpyHead` names)."""
    h = model.classifier
    t = lambda x: x.detach().cpu().float().numpy()  # noqa: E731
    arrays = {"dense_w": t(h.dense.weight), "dense_b": t(h.dense.bias), "skip_w": t(h.skip.weight).reshape(-1),
              "out_w": t(h.out.weight).reshape(-1), "out_b": t(h.out.bias).reshape(()),
              "position": t(h.position.weight), "slot": t(h.slot.weight)}
    if h.cats is not None:
        arrays["head_cat"] = t(h.cats.weight)
    for side, tower in (("request", model.request_cats), ("ad", model.ad_cats)):
        if tower is not None:  # folded: (buckets, hash_dim) @ (hash_dim, d) → one (buckets, d) table to sum
            arrays[f"{side}_cat"] = t(tower.table.weight) @ t(tower.proj.weight).T
    return arrays


def export_two_tower(model_dir: str, out_dir: str, *, opset: int = 17, max_length: int = 64, name: str = "ctr",
                     lineage: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write the tower graph, the head, the tokenizer and `model_card.json` into `out_dir`; return the card."""
    import torch

    from distillery.training.two_tower_student import load_two_tower

    if max_length < 8:
        raise ValueError(f"max_length={max_length}: too short for a tower text (need >= 8)")
    model, tokenizer = load_two_tower(model_dir)

    class Tower(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            return self.model.embed(input_ids, attention_mask).float()

    enc = tokenizer(_SAMPLE, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FP32_FILE)
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(Tower().eval(), (enc["input_ids"], enc["attention_mask"]), path,
                          input_names=["input_ids", "attention_mask"], output_names=[EMBEDDING_OUTPUT],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                                        EMBEDDING_OUTPUT: {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
    np.savez(os.path.join(out_dir, HEAD_FILE), **head_arrays(model))
    tokenizer.save_pretrained(out_dir)
    dim = int(model.config.hidden_size)
    card = ModelCard.from_dict({
        "name": name, "version": file_sha256(path) + "-" + file_sha256(os.path.join(out_dir, HEAD_FILE), 6),
        "student_kind": KIND, "two_tower": model.spec.model_dump(mode="json"), "head": HEAD_FILE,
        "max_length": int(max_length), "inputs": ["input_ids", "attention_mask"], "output": EMBEDDING_OUTPUT,
        "output_shape": ["batch", dim], "probability": "sigmoid(head(tower(request), tower(ad), position, slot))",
        "opset": opset, "model_type": model.config.model_type, "variants": {"fp32": FP32_FILE},
        "size_mb": {"fp32": round(os.path.getsize(path) / 1e6, 3), "head": round(os.path.getsize(os.path.join(out_dir, HEAD_FILE)) / 1e6, 3)},
        "lineage": dict(lineage or {}, source_model=str(Path(model_dir).resolve())), "metrics": {},
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    card.write(out_dir)
    log.info("exported two-tower %s (%.1f MB, %.1fs) → %s", path, card.size_mb["fp32"], time.perf_counter() - t0, CARD_FILE)
    return card.to_dict()


def torch_two_tower_logits(model_dir: str, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Click logits `(n,)` float64 of the PyTorch two-tower student on row texts."""
    from distillery.training.loop import predict_logits, make_loader
    from distillery.training.two_tower_student import TwoTowerRows, load_two_tower

    model, tok = load_two_tower(model_dir)
    return predict_logits(model, make_loader(TwoTowerRows(tok, texts, max_length, model.spec), batch_size, shuffle=False))


def _onnx_logits(onnx_dir: str, variant: str, texts: list[str], batch_size: int, intra_op_threads: int | None) -> np.ndarray:
    from distillery.onnx_model.two_tower import TwoTowerScorer

    # caches off: every row goes through the tower, so the figure is the graph's, not a cache's
    scorer = TwoTowerScorer(onnx_dir, variant, provider="cpu", intra_op_threads=intra_op_threads,
                            ad_cache_size=0, request_cache_size=0)
    out = [scorer.logits(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    return np.concatenate(out) if out else np.zeros(0)


def two_tower_parity(model_dir: str, onnx_dir: str, texts: list[str], *, atol: float = 1e-3, max_length: int = 64,
                     batch_size: int = 64, intra_op_threads: int | None = None) -> dict[str, Any]:
    """Max |Δ logit| between PyTorch and FP32 tower graph + numpy head; raises `ParityError` over `atol`."""
    from distillery.compress.validate import compare_logits

    if not texts:
        raise ValueError("two_tower_parity: no texts to compare on")
    ref = torch_two_tower_logits(model_dir, texts, max_length, batch_size)
    got = _onnx_logits(onnx_dir, "fp32", texts, batch_size, intra_op_threads)
    return compare_logits(ref, got, atol, "two-tower FP32 ONNX + numpy head")


def two_tower_variant_probs(onnx_dir: str, variants: list[str], texts: list[str], *, batch_size: int = 64,
                            intra_op_threads: int | None = None) -> dict[str, np.ndarray]:
    """Click probabilities `(n,)` of each variant (whole model: tower + head) on the same texts."""
    return {v: 1.0 / (1.0 + np.exp(-_onnx_logits(onnx_dir, v, texts, batch_size, intra_op_threads))) for v in variants}
