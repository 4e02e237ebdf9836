"""`hf-classifier`: any Hugging Face sequence-classification folder as a click teacher.

num_labels 1 → P(click) = sigmoid(logit); num_labels 2 → softmax(logits)[:, 1]. Texts are
tokenized once per call, sorted by token length and batched so each batch pads only to its own
longest row (pinned host memory and asynchronous copies on CUDA; `dtype: bf16` loads the weights
in bf16); results come back in the caller's order. The loop is `_hf.batched_logits`, shared with
`bench/gpu.py`.
"""

from __future__ import annotations

import logging

import numpy as np

from distillery.config import ConfigError
from distillery.models import dtype_suffix
from distillery.teachers._hf import (
    batched_logits,
    load_tokenizer,
    local_model_dir,
    model_fingerprint,
    model_label,
    setup_torch,
)
from distillery.teachers.base import sigmoid
from distillery.teachers.configs import HFClassifierConfig

__all__ = ["HFClassifierTeacher"]

log = logging.getLogger(__name__)


class HFClassifierTeacher:
    """Loads the model in `__init__` (on the configured device and dtype); `predict_proba` is pure
    inference. Construct it inside a Ray actor, not on the driver, to avoid shipping weights."""

    def __init__(self, cfg: HFClassifierConfig):
        import torch
        from transformers import AutoModelForSequenceClassification

        self.cfg = cfg
        self.device, dtype = setup_torch(cfg.device, cfg.dtype, cfg.num_threads)
        path = local_model_dir(cfg.model)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).to(self.device).eval()
        if self.tokenizer.pad_token is None:
            # Decoder-style classifiers (GPT-2, Llama) ship without a pad token; they locate each
            # row's last real token through config.pad_token_id, so both must agree.
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise ConfigError(f"teacher.model: tokenizer of {cfg.model!r} has no pad, eos or unk token to pad with")
            self.tokenizer.pad_token = fallback
        if getattr(self.model.config, "pad_token_id", None) is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.num_labels = int(self.model.config.num_labels)
        if self.num_labels not in (1, 2):
            raise ConfigError(
                f"teacher.model: {cfg.model!r} has num_labels={self.num_labels}; a click teacher needs 1 (sigmoid) or 2 (softmax)"
            )
        suffix = dtype_suffix(dtype)
        self.teacher_id = f"hf-classifier:{model_label(cfg.model)}:{model_fingerprint(path, self.model)}{suffix}"
        self._torch = torch

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, (len(texts),) float64 in [0, 1], in the order of `texts`."""
        return self._sigmoid_or_softmax(self.predict_logits(texts))

    def predict_logits(self, texts: list[str]) -> np.ndarray:
        """Raw logits in fp32: (n,) for num_labels 1, (n, 2) for num_labels 2."""
        logits = batched_logits(self.model, self.tokenizer, list(texts), max_length=self.cfg.max_length,
                                batch_size=self.cfg.batch_size, device=self.device)
        return logits[:, 0] if self.num_labels == 1 else logits

    def _sigmoid_or_softmax(self, logits: np.ndarray) -> np.ndarray:
        z = logits.astype(np.float64)
        if self.num_labels == 1:
            return sigmoid(z)
        return sigmoid(z[:, 1] - z[:, 0])  # = softmax(z)[:, 1], stable for large logits
