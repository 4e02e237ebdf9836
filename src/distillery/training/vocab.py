"""Vocabulary trimming: keep only the word pieces a model's logs use.

    model, tokenizer, info = trim_vocabulary(model, tokenizer, texts)

MiniLM's WordPiece vocabulary has 30,522 entries; its embedding table (11.7M parameters, 47 MB in
float32) is three quarters of a 2-layer student, yet ad logs use a few thousand pieces. Trimming cuts
the table to the pieces the given texts produce plus the tokenizer's special tokens, renumbered in
their old order, and rewrites the tokenizer to match. It shrinks what DDP all-reduces every step
and the served model file alike.

Parity: WordPiece takes the longest piece in the vocabulary at each position, so a word seen in
`texts` is split into the same pieces by the trimmed vocabulary (each piece it used is kept, and no
longer piece was in the old one): on such texts the trimmed model computes exactly what the
untrimmed one did. A word never seen may split differently or become `[UNK]`.
Only WordPiece tokenizers (BERT, MiniLM, DistilBERT, ELECTRA) are supported: trimming a BPE
vocabulary would break its merges.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from typing import Any

import numpy as np

__all__ = ["used_token_ids", "trim_vocabulary", "strip_field_labels"]

log = logging.getLogger(__name__)


def _backend(tokenizer, what: str = "trim_vocab") -> dict[str, Any]:
    """The tokenizer's `tokenizer.json` as a dict (a copy), if it is a WordPiece one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{what}: {type(tokenizer).__name__} has no tokenizers backend (tokenizer.json) to rewrite")
    spec = json.loads(backend.to_str())
    kind = spec.get("model", {}).get("type")
    if kind != "WordPiece":
        raise ValueError(f"{what}: only WordPiece tokenizers can be rewritten (BERT family); this tokenizer is {kind}")
    return spec


def used_token_ids(tokenizer, texts: list[str], batch_size: int = 4096) -> np.ndarray:
    """Sorted ids `(k,)` of every piece the tokenizer makes of `texts`, plus its special tokens."""
    used: set[int] = set(tokenizer.all_special_ids)
    for i in range(0, len(texts), batch_size):
        for ids in tokenizer(list(texts[i:i + batch_size]), add_special_tokens=True, truncation=False)["input_ids"]:
            used.update(ids)
    return np.asarray(sorted(used), dtype=np.int64)


def _rewrite(spec: dict[str, Any], old_to_new: dict[int, int]) -> dict[str, Any]:
    vocab = spec["model"]["vocab"]
    spec["model"]["vocab"] = {tok: old_to_new[i] for tok, i in sorted(vocab.items(), key=lambda kv: kv[1]) if i in old_to_new}
    for added in spec.get("added_tokens") or []:
        added["id"] = old_to_new[added["id"]]
    post = spec.get("post_processor") or {}
    for special in (post.get("special_tokens") or {}).values():
        special["ids"] = [old_to_new[i] for i in special["ids"]]
    for key in ("cls", "sep"):  # BertProcessing keeps [token, id] pairs
        if isinstance(post.get(key), list):
            post[key][1] = old_to_new[post[key][1]]
    if spec.get("padding"):
        spec["padding"]["pad_id"] = old_to_new[spec["padding"]["pad_id"]]
    return spec


def trim_vocabulary(model, tokenizer, texts: list[str]):
    """`(model, tokenizer, info)`: the model's input embeddings cut to the pieces `texts` use (in place),
    and a tokenizer that numbers them the same way. `info`: `{"before", "after", "kept_fraction"}`."""
    import torch
    from transformers import AutoTokenizer

    spec = _backend(tokenizer)
    keep = used_token_ids(tokenizer, texts)
    embeddings = model.get_input_embeddings()
    before = int(embeddings.weight.shape[0])
    if keep.max(initial=-1) >= before:
        raise ValueError(f"trim_vocab: tokenizer id {int(keep.max())} is outside the model's {before} embeddings")
    old_to_new = {int(old): new for new, old in enumerate(keep)}
    missing = [t for t, i in spec["model"]["vocab"].items() if i in (tokenizer.unk_token_id,) and i not in old_to_new]
    if missing:
        raise ValueError(f"trim_vocab: the unknown token {missing} must be kept")
    with tempfile.TemporaryDirectory(prefix="trim-vocab-") as tmp:
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(_rewrite(spec, old_to_new), f, ensure_ascii=False)
        inverse = {v: k for k, v in json.loads(tokenizer.backend_tokenizer.to_str())["model"]["vocab"].items()}
        with open(os.path.join(tmp, "vocab.txt"), "w", encoding="utf-8") as f:
            f.writelines(inverse[int(old)] + "\n" for old in keep)
        trimmed = AutoTokenizer.from_pretrained(tmp)
    new = torch.nn.Embedding(len(keep), embeddings.weight.shape[1], padding_idx=None)
    with torch.no_grad():
        new.weight.copy_(embeddings.weight[torch.from_numpy(keep)])
    if embeddings.padding_idx is not None and embeddings.padding_idx in old_to_new:
        new.padding_idx = old_to_new[embeddings.padding_idx]
    new.weight.requires_grad_(embeddings.weight.requires_grad)
    model.set_input_embeddings(new)
    model.config.vocab_size = len(keep)
    if getattr(model.config, "pad_token_id", None) is not None and model.config.pad_token_id in old_to_new:
        model.config.pad_token_id = old_to_new[model.config.pad_token_id]
    info = {"before": before, "after": len(keep), "kept_fraction": round(len(keep) / before, 4), "texts": len(texts)}
    log.info("vocabulary trimmed: %d → %d pieces (%d texts)", before, len(keep), len(texts))
    return model, trimmed, info


def strip_field_labels(tokenizer):
    """A tokenizer that reads `to_text` without its field labels: `query: new suv | site: search | …`
    is tokenised as `new suv | search | …`.

    The labels cost two pieces per field (the label and its colon), a third of a demo row's ~66;
    the fields stay apart by the ` | ` between them and in the fixed order `to_text` writes them.
    The rule lives in the tokenizer's own normalizer (`tokenizer.json`), so every stage that loads the
    saved model — training, evaluation, the ONNX checks, serving — tokenises the same way with no
    code of its own. A value that itself contains ` | <label>: ` loses that label too.
    """
    from transformers import AutoTokenizer

    from distillery.data.text import LABEL_STRIP_RULES

    spec = _backend(tokenizer, "strip_field_labels")
    rules = [{"type": "Replace", "pattern": {"Regex": pattern}, "content": content} for pattern, content in LABEL_STRIP_RULES]
    spec["normalizer"] = {"type": "Sequence", "normalizers": rules + ([spec["normalizer"]] if spec.get("normalizer") else [])}
    with tempfile.TemporaryDirectory(prefix="strip-labels-") as tmp:
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(spec, f, ensure_ascii=False)
        # A model-specific class (BertTokenizer) rebuilds its normalizer from its flags when it loads,
        # which would drop the rules; the generic fast class loads tokenizer.json as written.
        config_path = os.path.join(tmp, "tokenizer_config.json")
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        return AutoTokenizer.from_pretrained(tmp)
