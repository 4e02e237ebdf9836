"""Cross-encoder candidates without re-tokenising: each ad's tokens once, the request's once per bid.

    scorer = CrossCandidateScorer("runs/demo/onnx", "int8", intra_op_threads=1)
    scorer.warm_ads(ad.row_fields() for ad in catalog.candidates())   # ad pieces tokenised once
    probs = scorer.predict_rows(candidate_rows)      # == OnnxScorer.predict_proba([to_text(r) for r in rows])

`to_text(row)` of a bid candidate is `context_text + " | " + ad_text` (context fields come first,
the ad's after them, and a candidate row carries nothing else). For a BERT WordPiece tokenizer
(BertNormalizer: character-wise; BertPreTokenizer: splits at whitespace and punctuation, and "|" is
punctuation) the tokens of that string are exactly tokens(context) + tokens("|") + tokens(ad), and
truncation keeps the first `max_length - 2` of them between [CLS] and [SEP]. So the ids are
assembled from cached pieces; `tests/unit/test_cross_candidates.py` checks the equality against the
tokenizer on every synthetic and catalog row. Any other tokenizer, or a row with extra columns
(rendered after the ad), falls back to tokenising `to_text(row)` — never an approximation.
The transformer pass per candidate remains: this saves the tokenizer's share only.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from distillery.data.schema import AD_FIELDS, CONTEXT_FIELDS, TEXT_FIELDS
from distillery.data.text import LABEL_STRIP_RULES, to_text
from distillery.onnx_model.scorer import OnnxScorer, check_row, sigmoid

__all__ = ["CandidateTokens", "CrossCandidateScorer", "exact_for"]


def _bert_normalizer(normalizer: Mapping[str, Any] | None) -> bool:
    """BertNormalizer, alone or after the field-label rules (`training.vocab.strip_field_labels`): the
    rules remove a label only at the start of a text or after " | ", so a context, "|" and an ad
    normalise, piece by piece, to the pieces of the whole text's normal form."""
    if not normalizer:
        return False
    if normalizer.get("type") == "BertNormalizer":
        return True
    parts = normalizer.get("normalizers") or []
    rules = [{"type": "Replace", "pattern": {"Regex": pattern}, "content": content} for pattern, content in LABEL_STRIP_RULES]
    return normalizer.get("type") == "Sequence" and parts[:-1] == rules and _bert_normalizer(parts[-1] if parts else None)


def exact_for(tokenizer) -> bool:
    """True when piece-wise tokenisation equals whole-text tokenisation for this tokenizer (BERT WordPiece,
    [CLS] $A [SEP], truncation from the right)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "truncation_side", "right") != "right":
        return False
    spec = json.loads(backend.to_str())
    post = spec.get("post_processor") or {}
    single = [p.get("SpecialToken", {}).get("id") or ("$A" if "Sequence" in p else None) for p in post.get("single", [])]
    return (_bert_normalizer(spec.get("normalizer"))
            and (spec.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
            and spec.get("model", {}).get("type") == "WordPiece"
            and (post.get("type") == "BertProcessing" or single == [tokenizer.cls_token, "$A", tokenizer.sep_token]))


class CandidateTokens:
    """Token ids of candidate rows from cached pieces: `ids(row) -> list[int]` equals
    `tokenizer(to_text(row), truncation=True, max_length=max_length)["input_ids"]`."""

    def __init__(self, tokenizer, max_length: int, cache_size: int = 200_000):
        self.tokenizer, self.max_length, self.cache_size = tokenizer, max_length, cache_size
        self.exact = exact_for(tokenizer)
        self._pieces: OrderedDict[str, list[int]] = OrderedDict()
        self.bar = tokenizer("|", add_special_tokens=False)["input_ids"]
        self.cls, self.sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.tokenized = 0  # texts handed to the tokenizer (pieces or fallbacks)

    def piece(self, text: str) -> list[int]:
        ids = self._pieces.get(text)
        if ids is None:
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self.tokenized += 1
            if self.cache_size > 0:
                self._pieces[text] = ids
                while len(self._pieces) > self.cache_size:
                    self._pieces.popitem(last=False)
        return ids

    def ids(self, row: Mapping[str, Any]) -> list[int]:
        extra = any(k not in TEXT_FIELDS and to_text({k: v}) for k, v in row.items())
        if not self.exact or extra:
            self.tokenized += 1
            return self.tokenizer(to_text(row), truncation=True, max_length=self.max_length)["input_ids"]
        context = to_text({k: row.get(k) for k in CONTEXT_FIELDS})
        ad = to_text({k: row.get(k) for k in AD_FIELDS})
        body = self.piece(context) + self.bar + self.piece(ad) if context and ad else self.piece(context or ad)
        return [self.cls, *body[: self.max_length - 2], self.sep]


class CrossCandidateScorer(OnnxScorer):
    """`OnnxScorer` whose rows (`predict_rows`, the rows of `predict`) get their token ids from
    `CandidateTokens` (same probabilities); texts are tokenised as `OnnxScorer` does."""

    def __init__(self, model_dir: str, variant: str = "int8", *, piece_cache_size: int = 200_000, **kwargs: Any):
        super().__init__(model_dir, variant, **kwargs)
        self.pieces = CandidateTokens(self.tokenizer, self.max_length, piece_cache_size)

    def warm_ads(self, ads: Iterable[Mapping[str, Any]]) -> int:
        before = self.pieces.tokenized
        for ad in ads:
            self.pieces.piece(to_text({k: ad.get(k) for k in AD_FIELDS}))
        return self.pieces.tokenized - before

    def predict(self, inputs: Sequence[str | Mapping[str, Any]]) -> np.ndarray:
        seqs = [None if isinstance(x, str) else self.pieces.ids(check_row(i, x)) for i, x in enumerate(inputs)]
        at = [i for i, s in enumerate(seqs) if s is None]
        if at:  # the texts, in one tokenizer call
            texts = self.tokenizer([inputs[i] for i in at], truncation=True, max_length=self.max_length)["input_ids"]
            for i, ids in zip(at, texts):
                seqs[i] = ids
        if not seqs:
            return np.zeros(0, dtype=np.float64)
        return sigmoid(self.logits_of_ids(seqs))
