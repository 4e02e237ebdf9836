"""Fixtures the training tests share (each test module gets its own copy: module scope)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinymodels import make_tiny_run, save_tiny_bert


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run directory with oracle labels: 240 train and 160 unlabeled rows (every 7th kept=false), 300 test rows."""
    return make_tiny_run(tmp_path_factory.mktemp("run"), rows_train=240, rows_unlabeled=160, rows_test=300)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """A random 2-layer, 32-wide BERT (seed 1): the student backbone of the training tests."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), num_layers=2, hidden=32, seed=1)
