"""`hf-causal-lm`: an instruct / causal LM scored by prompt.

For each row the prompt template is filled with the row's text, and the model's next-token
distribution after the prompt gives P(click) = p(yes) / (p(yes) + p(no)), where p(yes) sums the
probabilities of the `yes_words`' tokens (likewise for no). Computed as
sigmoid(logsumexp(logits[yes]) − logsumexp(logits[no])), which is the same ratio without a softmax
over the whole vocabulary. Prompts are left-padded so the last position is every row's last real
token; position ids count real tokens only, so padding does not shift absolute positions (GPT-2).
"""

from __future__ import annotations

import hashlib
import inspect
import logging

import numpy as np

from distillery.config import ConfigError
from distillery.models import dtype_suffix
from distillery.teachers._hf import (
    length_sorted_batches,
    load_tokenizer,
    local_model_dir,
    model_fingerprint,
    model_label,
    pad_batch,
    setup_torch,
)
from distillery.teachers.base import sigmoid
from distillery.teachers.configs import CausalLMConfig

__all__ = ["CausalLMTeacher"]

log = logging.getLogger(__name__)


class CausalLMTeacher:
    """Loads tokenizer and model in `__init__`; `predict_proba` is pure inference."""

    def __init__(self, cfg: CausalLMConfig):
        import torch
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self._torch = torch
        self.device, dtype = setup_torch(cfg.device, cfg.dtype, cfg.num_threads)
        path = local_model_dir(cfg.model)
        self.tokenizer = load_tokenizer(path, padding_side="left")
        if self.tokenizer.pad_token is None:
            # Pad positions are masked out, so any existing token serves; eos is the convention.
            fallback = self.tokenizer.eos_token or self.tokenizer.unk_token
            if fallback is None:
                raise ConfigError(f"teacher.model: tokenizer of {cfg.model!r} has no pad, eos or unk token to pad with")
            self.tokenizer.pad_token = fallback
        if cfg.chat_template and not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"teacher.chat_template: tokenizer of {cfg.model!r} has no chat template")
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()
        self.yes_ids = self._answer_ids(cfg.yes_words, "yes_words")
        self.no_ids = self._answer_ids(cfg.no_words, "no_words")
        shared = sorted(set(self.yes_ids) & set(self.no_ids))
        if shared:
            raise ConfigError(
                f"teacher.no_words: token ids {shared} also start a yes word with this tokenizer; choose distinct words"
            )
        self._overhead = len(self.encode_prompt(""))
        if self._overhead >= cfg.max_length:
            raise ConfigError(
                f"teacher.max_length: {cfg.max_length} leaves no room for text; the prompt alone is {self._overhead} tokens"
            )
        params = inspect.signature(self.model.forward).parameters
        self._pass_positions = "position_ids" in params
        self._logits_to_keep = "logits_to_keep" in params
        prompt_hash = hashlib.sha256(
            "\x00".join([cfg.prompt, *cfg.yes_words, "|", *cfg.no_words, str(cfg.chat_template)]).encode()
        ).hexdigest()[:8]
        suffix = dtype_suffix(dtype)
        self.teacher_id = (
            f"hf-causal-lm:{model_label(cfg.model)}:{model_fingerprint(path, self.model)}:prompt-{prompt_hash}{suffix}"
        )

    def _answer_ids(self, words: list[str], field: str) -> list[int]:
        """First non-blank token of each answer word (sentencepiece may emit a bare `▁` first)."""
        ids = []
        for word in words:
            tokens = self.tokenizer.encode(word, add_special_tokens=False)
            tokens = [t for t in tokens if self.tokenizer.decode([t]).strip()] or tokens
            if not tokens:
                raise ConfigError(f"teacher.{field}: {word!r} encodes to no tokens")
            ids.append(int(tokens[0]))
        return sorted(set(ids))

    def render(self, text: str) -> str:
        """The prompt string for one row's text (chat-wrapped when `chat_template`)."""
        prompt = self.cfg.prompt.replace("{text}", text)
        if self.cfg.chat_template:
            prompt = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
        return prompt

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of the prompt for `text`, untruncated (chat templates carry their own BOS)."""
        return self.tokenizer(self.render(text), add_special_tokens=not self.cfg.chat_template)["input_ids"]

    def _encode_fitting(self, text: str) -> list[int]:
        """Prompt ids within max_length: a long row's text is cut (keeping its start), never the
        template, whose end is the answer cue the next-token distribution depends on."""
        ids = self.encode_prompt(text)
        limit = self.cfg.max_length
        if len(ids) <= limit:
            return ids
        text_ids = self.tokenizer.encode(text, add_special_tokens=False)
        budget = limit - self._overhead
        for _ in range(4):  # decode/re-encode may merge tokens differently at the cut; shrink and retry
            ids = self.encode_prompt(self.tokenizer.decode(text_ids[:max(budget, 0)]))
            if len(ids) <= limit:
                return ids
            budget -= len(ids) - limit
        return ids[-limit:]

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Click probabilities, (len(texts),) float64 in [0, 1], in the order of `texts`."""
        return sigmoid(self.predict_yes_no_margin(texts))

    def predict_yes_no_margin(self, texts: list[str]) -> np.ndarray:
        """logsumexp(yes logits) − logsumexp(no logits) at the next token, (n,) float64."""
        torch = self._torch
        out = np.zeros(len(texts), dtype=np.float64)
        if not texts:
            return out
        encoded = {"input_ids": [self._encode_fitting(t) for t in texts]}
        encoded["attention_mask"] = [[1] * len(ids) for ids in encoded["input_ids"]]
        lengths = [len(ids) for ids in encoded["input_ids"]]
        yes = torch.tensor(self.yes_ids, device=self.device)
        no = torch.tensor(self.no_ids, device=self.device)
        with torch.inference_mode():
            for index in length_sorted_batches(lengths, self.cfg.batch_size):
                batch = pad_batch(self.tokenizer, encoded, index, self.device)
                kwargs = {}
                if self._pass_positions:
                    kwargs["position_ids"] = (batch["attention_mask"].long().cumsum(-1) - 1).clamp(min=0)
                if self._logits_to_keep:
                    kwargs["logits_to_keep"] = 1
                logits = self.model(**batch, **kwargs).logits[:, -1, :].float()
                margin = torch.logsumexp(logits[:, yes], dim=-1) - torch.logsumexp(logits[:, no], dim=-1)
                out[index] = margin.cpu().numpy().astype(np.float64)
        return out
