"""Shared fixtures: the third-party data samples, and tiny random Hugging Face models (no downloads)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tinymodels import (  # noqa: E402
    make_tiny_run,
    save_tiny_bert,
    save_tiny_causal_lm,
    shared_data_dir,
)

@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("third-party samples absent: set DISTILLERY_SHARED_DATA to the shared/data folder")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """Folder of a 2-layer, 64-wide random BERT with one output logit (click)."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


# Words a tiny causal-LM tokenizer must know: prompt words, answers, ad-log field labels.
@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory) -> Path:
    """Folder of a tiny random GPT-2 causal LM with a byte-level BPE tokenizer."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_gpt2"), "gpt2")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Folder of a tiny random Llama causal LM (RoPE, grouped-query attention) with a BPE tokenizer."""
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_factories():
    """`(make_tiny_run, save_tiny_bert)` for test folders whose own conftest shadows this module's name."""
    return make_tiny_run, save_tiny_bert
