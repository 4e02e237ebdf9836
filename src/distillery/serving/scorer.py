"""The Ray-free ONNX Runtime scorer: an ONNX folder in, click probabilities out.

    scorer = OnnxScorer("runs/demo/onnx", variant="int8", provider="cpu", intra_op_threads=1)
    probs = scorer.predict_proba(["query: shoes | ad: trail runner sale"])   # (1,) float64
    probs = scorer.predict_rows([{"id": "1", "query": "shoes", "ad_title": "trail runner"}])

Ray Serve replicas wrap one of these; it is also what benchmarks and validation time, so the
numbers they report are the serving path's. Texts are padded to the batch's longest and truncated
to the model card's `max_length`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Mapping

import numpy as np

from distillery.data.text import to_text

__all__ = ["OnnxScorer", "sigmoid", "PROVIDERS"]

PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic in float64 (no overflow warnings for large |x|)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out


class OnnxScorer:
    """One ORT session over `model_dir/<variant file>` plus the folder's tokenizer.

    `variant`: a key of the card's `variants` (`fp32`, `int8`, `int8_static`, `fp16`).
    `provider`: `cpu` or `cuda`; `cuda` refuses to start unless ORT really gave CUDA.
    `intra_op_threads`: ORT intra-op threads (None = ORT's default, one per core).
    """

    def __init__(self, model_dir: str, variant: str = "int8", provider: str = "cpu",
                 intra_op_threads: int | None = None, graph_optimization: str = "all"):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        card_path = os.path.join(model_dir, "model_card.json")
        if not os.path.exists(card_path):
            raise FileNotFoundError(f"model_dir {model_dir!r}: no model_card.json (not an exported ONNX folder)")
        with open(card_path) as f:
            self.card: dict[str, Any] = json.load(f)
        variants = self.card.get("variants", {})
        if variant not in variants:
            raise ValueError(f"variant {variant!r}: not in {model_dir}/model_card.json (has {sorted(variants)})")
        if provider not in PROVIDERS:
            raise ValueError(f"provider {provider!r}: expected one of {sorted(PROVIDERS)}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads={intra_op_threads}: must be >= 1 or None")
        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        if graph_optimization not in levels:
            raise ValueError(f"graph_optimization {graph_optimization!r}: expected one of {sorted(levels)}")

        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[graph_optimization]
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        # One request at a time per session: extra inter-op threads only contend for the cores.
        opts.inter_op_num_threads = 1
        self.model_path = os.path.join(model_dir, variants[variant])
        self.session = ort.InferenceSession(self.model_path, sess_options=opts, providers=PROVIDERS[provider])
        self.providers: list[str] = list(self.session.get_providers())
        if provider == "cuda" and "CUDAExecutionProvider" not in self.providers:
            raise RuntimeError(
                f"provider='cuda' requested but ONNX Runtime started with {self.providers} "
                "(no usable CUDA: check the GPU, CUDA/cuDNN libraries and onnxruntime-gpu); refusing to run on CPU silently"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.card.get("output", "logits")
        self.max_length = int(self.card["max_length"])
        self.name: str = self.card.get("name", "ctr")
        self.version: str = str(self.card.get("version", "0"))
        self.variant = variant
        self.provider = provider

    def encode(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Feeds for the session: int64 arrays (batch, longest-in-batch ≤ max_length)."""
        enc = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                             return_tensors="np")
        return {n: (enc[n] if n in enc else np.zeros_like(enc["input_ids"])).astype(np.int64) for n in self.input_names}

    def logits(self, texts: list[str]) -> np.ndarray:
        """Click logits, float64 (n,)."""
        if isinstance(texts, str):
            raise TypeError("texts: expected a list of strings, got one string")
        texts = list(texts)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}]: expected a string, got {type(t).__name__}")
        (out,) = self.session.run([self.output_name], self.encode(texts))
        return np.asarray(out, dtype=np.float64).reshape(len(texts), -1)[:, 0]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, float64 (n,) in [0, 1]."""
        return sigmoid(self.logits(texts))

    def predict_rows(self, rows: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Click probabilities for ad-log rows (dicts), rendered with `to_text`; float64 (n,)."""
        return self.predict_proba([to_text(r) for r in rows])

    def __repr__(self) -> str:
        return f"OnnxScorer(name={self.name!r}, version={self.version!r}, variant={self.variant!r}, providers={self.providers})"
