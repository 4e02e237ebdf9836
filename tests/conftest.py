"""Shared fixtures: the third-party data samples, and tiny random Hugging Face models (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """`$DISTILLERY_SHARED_DATA`, else `../shared/data` beside the checkout; None if absent."""
    env = os.environ.get("DISTILLERY_SHARED_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("third-party samples absent: set DISTILLERY_SHARED_DATA to the shared/data folder")
    return path


def _tokenizer():
    from transformers import AutoTokenizer

    from distillery.models import default_backbone

    return AutoTokenizer.from_pretrained(default_backbone())


def save_tiny_bert(path: Path, num_layers: int = 2, hidden: int = 64, num_labels: int = 1, seed: int = 0) -> Path:
    """A random BERT classifier with the MiniLM tokenizer, saved as a Hugging Face folder."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tok = _tokenizer()
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        intermediate_size=hidden * 2,
        max_position_embeddings=256,
        num_labels=num_labels,
    )
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """Folder of a 2-layer, 64-wide random BERT with one output logit (click)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))
