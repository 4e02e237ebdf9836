import numpy as np
import pytest
from pydantic import ValidationError

from distillery.filters import FilterConfig, apply_filters, clip_probs


def test_first_failed_check_is_the_reason():
    cfg = FilterConfig(min_confidence=0.5, max_prob=0.9, max_disagreement=0.1)
    probs = np.array([0.02, 0.95, 0.5, np.nan, 0.03])
    conf = np.array([0.9, 0.9, 0.0, 0.9, 0.9])
    spread = np.array([0.0, 0.0, 0.0, 0.0, 0.3])
    kept, reason = apply_filters(probs, conf, cfg, spread)
    assert kept.tolist() == [True, False, False, False, False]
    assert reason[0] == ""
    assert "max_prob" in reason[1]
    assert "min_confidence" in reason[2]
    assert "finite" in reason[3]
    assert "disagreement" in reason[4]


def test_disagreement_ignored_without_threshold():
    kept, _ = apply_filters(np.array([0.1]), np.array([1.0]), FilterConfig(), np.array([0.5]))
    assert kept.all()


def test_clip_and_bad_clip_config():
    assert clip_probs(np.array([0.0, 1.0, 0.3]), FilterConfig(clip=(0.01, 0.99))).tolist() == [0.01, 0.99, 0.3]
    with pytest.raises(ValidationError, match="clip"):
        FilterConfig(clip=(0.5, 0.1))
