"""Evaluation without an oracle, bootstrap intervals and their display; two-tower fields on any column."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_report import sample_predictions, sample_report, write_run

from distillery.config import ConfigError
from distillery.evaluate import EvaluateConfig, run
from distillery.metrics import roc_auc
from distillery.evaluate_ci import BootstrapSection, bootstrap_aucs, confidence_intervals, gain_retention
from distillery.report import format_value, write_report
from distillery.training.two_tower_teacher import TwoTowerFit, check_fields


def _scores(n=2000, rate=0.02, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(float)
    return y, y * 0.8 + rng.random(n), np.round(y * 0.5 + rng.random(n), 1)  # the second has ties


def test_bootstrap_matches_explicit_resampling():
    y, a, b = _scores()
    fast = bootstrap_aucs(y, {"b": b}, BootstrapSection(resamples=2000, seed=1))["b"]
    rng = np.random.default_rng(2)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    slow = []
    for _ in range(400):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        slow.append(roc_auc(y[idx], b[idx]))
    assert fast.mean() == pytest.approx(np.mean(slow), abs=0.006)
    assert fast.std() == pytest.approx(np.std(slow), rel=0.15)
    assert fast.mean() == pytest.approx(roc_auc(y, b), abs=0.006)


def test_intervals_are_paired_and_reproducible():
    y, a, b = _scores()
    cfg = BootstrapSection(resamples=300)
    out = confidence_intervals(y, {"teacher": a, "student": a, "student_direct": a, "student_int8": b}, cfg)
    assert out["lift_auc_ci"] == [0.0, 0.0]  # the same draw scores both: identical models differ by exactly 0
    assert out["distillation_efficiency_student_ci"] == [1.0, 1.0]
    lo, hi = out["teacher"]["auc_ci"]
    assert lo < roc_auc(y, a) < hi
    lo, hi = out["distillation_efficiency_ci"]
    assert lo < roc_auc(y, b) / roc_auc(y, a) < hi
    assert out == confidence_intervals(y, {"teacher": a, "student": a, "student_direct": a, "student_int8": b}, cfg)
    assert out["test_clicks"] == int(y.sum()) and out["few_clicks_warning"].startswith(f"only {int(y.sum())} clicks")
    assert confidence_intervals(y, {"teacher": a}, BootstrapSection(few_clicks=int(y.sum())))["few_clicks_warning"] is None


def test_gain_retention_reads_the_share_of_the_teachers_gain_over_chance():
    assert gain_retention(0.59, 0.61) == pytest.approx(0.09 / 0.11)  # efficiency 0.967 keeps 82% of the gain
    assert gain_retention(0.5, 0.61) == 0.0 and gain_retention(0.61, 0.61) == 1.0
    assert np.isnan(gain_retention(0.55, 0.5))  # a teacher at chance has no gain to keep
    y, a, b = _scores()
    out = confidence_intervals(y, {"teacher": a, "student_int8": b}, BootstrapSection(resamples=300))
    lo, hi = out["gain_retention_ci"]
    point = gain_retention(roc_auc(y, b), roc_auc(y, a))
    assert lo < point < hi
    eff_lo, eff_hi = out["distillation_efficiency_ci"]
    assert hi - lo > eff_hi - eff_lo  # the ratio of gains is the stricter, wider figure
    assert confidence_intervals(y, {"teacher": a, "student_int8": a}, BootstrapSection(resamples=50))["gain_retention_ci"] == [1.0, 1.0]


def test_the_report_carries_gain_retention_beside_the_efficiency(tmp_path):
    from distillery.evaluate import _derived

    q = _derived({"teacher": {"auc": 0.61}, "student": {"auc": 0.60}, "student_int8": {"auc": 0.59}})
    assert q["gain_retention"] == pytest.approx(0.09 / 0.11) and q["distillation_efficiency"] == pytest.approx(0.59 / 0.61)
    report = sample_report()
    report["quality"].update(gain_retention=0.818, gain_retention_ci=[0.61, 1.02])
    html = Path(write_report(str(write_run(tmp_path, report)))).read_text()
    assert "Gain retention" in html and "0.818" in html


def test_single_class_gives_a_reason_not_an_interval():
    out = confidence_intervals(np.zeros(50), {"teacher": np.random.rand(50)}, BootstrapSection())
    assert "single click class" in out["bootstrap"]["reason"] and "teacher" not in out


def _real_log_run(run_dir: Path, clicks: list[int]) -> Path:
    (run_dir / "data" / "test").mkdir(parents=True)
    n = len(clicks)
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(n)], "click": pa.array(clicks, pa.int8()),
                             "C1": [f"c{i % 3}" for i in range(n)]}), run_dir / "data" / "test" / "part-0.parquet")
    return run_dir


def test_evaluation_without_oracle_says_why(tmp_path):
    run_dir = _real_log_run(tmp_path / "run", [0, 1, 0, 0, 1, 0, None, 0])
    quality = run(EvaluateConfig(run_dir=str(run_dir)))["quality"]
    assert quality["oracle_auc"] is None and "click_prob" in quality["oracle_auc_reason"]
    assert quality["test_rows"] == 7 and quality["test_rows_no_click"] == 1 and quality["test_clicks"] == 2
    assert quality["bootstrap"]["reason"] == "no model was scored"


def test_report_shows_intervals_and_the_warning(tmp_path):
    report = sample_report()
    q = report["quality"]
    q.update(distillation_efficiency_ci=[0.91, 1.02], lift_auc_ci=[-0.01, 0.05], test_clicks=12,
             few_clicks_warning="only 12 clicks among 40 test rows", oracle_auc=None,
             oracle_auc_reason="the test split has no click_prob column", bootstrap={"level": 0.9})
    q["teacher"]["auc_ci"] = [0.55, 0.68]
    page = Path(write_report(str(write_run(tmp_path / "run", report, sample_predictions())))).read_text()
    assert "only 12 clicks among 40 test rows" in page and "90% CI" in page
    assert "0.9100 – 1.0200" in page and "-0.0100 – +0.0500" in page
    assert "0.5500 – 0.6800" in page and "the test split has no click_prob column" in page
    assert format_value("quality.lift_auc_ci", [-0.01, 0.05]) == "-0.0100 – +0.0500"


def test_two_tower_fields_any_column_and_a_clear_error():
    cfg = TwoTowerFit(request_fields=["site_id"], ad_fields=["C3", "C4"], categorical=["C9"])
    check_fields(cfg, ["id", "click", "site_id", "C3", "C4", "C9"], "train")
    with pytest.raises(ConfigError, match=r"two_tower.ad_fields: column 'C4' is not in split 'train'"):
        check_fields(cfg, ["id", "click", "site_id", "C3", "C9"], "train")
    with pytest.raises(ConfigError, match=r"two_tower.categorical: column 'click' is identity, time or a label"):
        check_fields(TwoTowerFit(categorical=["click"], request_fields=["query"], ad_fields=["ad_title"]),
                     ["id", "click", "query", "ad_title"], "train")
