"""The terminal stays readable: the setup hook every Ray worker runs quiets the noisy loggers and
transformers' per-load progress bars; the driver drops the bars too."""

from __future__ import annotations

import logging

from transformers.utils import logging as hf_logging

from distillery.ray_runtime import _QUIET_LOGGERS, no_progress_bars, quiet_worker_logs


def test_the_worker_hook_quiets_loggers_and_bars():
    hf_logging.enable_progress_bar()
    try:
        quiet_worker_logs()
        assert not hf_logging.is_progress_bar_enabled()
        for name, level in _QUIET_LOGGERS.items():
            assert logging.getLogger(name).level == level, name
        hf_logging.enable_progress_bar()
        no_progress_bars()
        assert not hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.enable_progress_bar()
