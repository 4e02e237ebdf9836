"""Export a Hugging Face click classifier to ONNX, with its tokenizer and a model card beside it.

    card = export_onnx("runs/demo/student", "runs/demo/onnx", max_length=128)

The folder written (`runs/<name>/onnx/`) is the serving contract:

    student.fp32.onnx   inputs int64 input_ids, attention_mask (+ token_type_ids when the model
                        has them), dynamic axes `batch` and `sequence`; output float32
                        `logits` (batch, 1) — one click logit, probability = sigmoid(logit)
    tokenizer files     `tokenizer.save_pretrained`
    model_card.json     name, version, max_length, inputs, output, variants, lineage, metrics

Why the legacy TorchScript exporter (`dynamo=False`) and eager attention: the dynamo exporter
needs onnxscript and its graph ran slower in ORT here, and SDPA attention exports as a pattern
ORT's transformer fusions do not recognise. A two-class model (`num_labels=2`) is exported as the
single logit `l1 - l0`, because sigmoid(l1 - l0) == softmax(l0, l1)[1] exactly.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from distillery.onnx_model.card import ModelCard

__all__ = [
    "FP32_FILE",
    "OUTPUT_NAME",
    "export_onnx",
    "load_for_export",
    "model_input_names",
    "file_sha256",
]

log = logging.getLogger(__name__)

FP32_FILE = "student.fp32.onnx"
OUTPUT_NAME = "logits"
_SAMPLE_TEXTS = [
    "query: running shoes | site: sports | device: mobile | ad: trail runner sale",
    "query: cheap flights to lisbon in may | site: travel | device: desktop | os: windows | hour: 14 "
    "| ad: fly for less | text: book now and save on spring fares",
]


def load_for_export(model_dir: str):
    """(model in eval mode with eager attention, tokenizer) from a local Hugging Face folder."""
    from transformers import AutoTokenizer

    from distillery.compress.prune import load_pruned

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model_dir {model_dir!r}: not a local folder")
    if not os.path.exists(os.path.join(model_dir, "config.json")):
        raise FileNotFoundError(f"model_dir {model_dir!r}: no config.json (not a save_pretrained folder)")
    model = load_pruned(model_dir, attn_implementation="eager")  # re-applies recorded head pruning
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # scoring is one pass; KV-cache ops would only bloat the graph
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return model.eval(), tokenizer


def model_input_names(model, tokenizer) -> list[str]:
    """The ONNX inputs: input_ids, attention_mask, and token_type_ids only where both the tokenizer
    produces them and the model has a token-type embedding that can make them matter."""
    names = ["input_ids", "attention_mask"]
    type_vocab = getattr(model.config, "type_vocab_size", 0) or 0
    if "token_type_ids" in tokenizer.model_input_names and type_vocab > 0:
        names.append("token_type_ids")
    return names


def _click_logit_module(model, input_names: list[str]):
    """Wrap `model` so it takes positional int64 tensors and returns float32 logits (batch, 1)."""
    import torch

    num_labels = int(model.config.num_labels)
    if num_labels not in (1, 2):
        raise ValueError(f"num_labels={num_labels}: a click model has 1 logit (or 2 classes)")

    class ClickLogit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            logits = self.model(**dict(zip(input_names, tensors))).logits
            if num_labels == 2:
                logits = logits[:, 1:2] - logits[:, 0:1]
            return logits.float()

    return ClickLogit().eval()


def _ensure_pad_token(model, tokenizer) -> None:
    """Decoders (GPT-2, Llama) ship without a pad token; batching and the classifier's
    last-token pooling both need one, so reuse EOS as the usual convention."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; cannot pad batches")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


def file_sha256(path: str, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def export_onnx(
    model_dir: str,
    out_dir: str,
    *,
    opset: int = 17,
    max_length: int = 128,
    name: str = "ctr",
    lineage: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write `student.fp32.onnx`, the tokenizer and `model_card.json` into `out_dir`; return the card
    (its JSON form, `ModelCard.to_dict()`).

    `model_dir` is a local `save_pretrained` folder holding a sequence classifier (num_labels 1 or
    2) and its tokenizer. `max_length` is the truncation length (tokens) the scorer applies.
    """
    import torch

    if max_length < 8:
        raise ValueError(f"max_length={max_length}: too short for a tokenised ad row (need >= 8)")
    model, tokenizer = load_for_export(model_dir)
    _ensure_pad_token(model, tokenizer)
    input_names = model_input_names(model, tokenizer)
    wrapped = _click_logit_module(model, input_names)

    # Batch of 2 with unequal lengths so tracing sees real padding and cannot bake batch=1 in.
    enc = tokenizer(_SAMPLE_TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    args = tuple(enc[n].to(torch.int64) if n in enc else torch.zeros_like(enc["input_ids"]) for n in input_names)
    dynamic = {n: {0: "batch", 1: "sequence"} for n in input_names}
    dynamic[OUTPUT_NAME] = {0: "batch"}

    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, FP32_FILE)
    t0 = time.perf_counter()
    with torch.no_grad():
        torch.onnx.export(
            wrapped,
            args,
            path,
            input_names=input_names,
            output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    export_s = time.perf_counter() - t0
    tokenizer.save_pretrained(out_dir)

    card = ModelCard.from_dict({
        "name": name,
        "version": file_sha256(path),
        "max_length": int(max_length),
        "inputs": input_names,
        "output": OUTPUT_NAME,
        "output_shape": ["batch", 1],
        "probability": "sigmoid(logits)",
        "opset": opset,
        "num_labels_source": int(model.config.num_labels),
        "model_type": model.config.model_type,
        "variants": {"fp32": FP32_FILE},
        "size_mb": {"fp32": round(os.path.getsize(path) / 1e6, 3)},
        "lineage": dict(lineage or {}, source_model=str(Path(model_dir).resolve())),
        "metrics": dict(metrics or {}),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    card.write(out_dir)
    log.info("exported %s (%.1f MB, %.1fs) inputs=%s", path, card.size_mb["fp32"], export_s, input_names)
    return card.to_dict()
