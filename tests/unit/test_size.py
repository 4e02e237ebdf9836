"""`distillery size`: the pick on synthetic latency tables (per call, per bid), the grids, bad bids, and\nreal measurements of tiny students."""

from __future__ import annotations

import json
import math

import pytest

from distillery.cli import main
from distillery.compress.size import (BidSection, BidWorkload, SizeConfig, bid_grid, candidate_grid, fits_bid, format_table,
                                      measure_student_kind, needed_budget_message, pick_largest, student_shape)
from distillery.config import ConfigError, validate_config

TABLE = [
    {"name": "tiny", "params": 1_000_000, "p50": 0.4, "p99": 0.9},
    {"name": "small", "params": 5_000_000, "p50": 1.1, "p99": 2.4},
    {"name": "small-twin", "params": 5_000_000, "p50": 0.9, "p99": 1.9},
    {"name": "medium", "params": 12_000_000, "p50": 2.8, "p99": 6.0},
    {"name": "large", "params": 22_000_000, "p50": 4.5, "p99": 11.0},
]


@pytest.mark.parametrize("budget, stat, expected", [
    (1.0, "p99", "tiny"),
    (2.0, "p99", "small-twin"),      # small (2.4) does not fit; its faster twin does
    (2.5, "p99", "small-twin"),      # both fit, same params: the faster wins
    (6.0, "p99", "medium"),          # exactly at the budget counts as fitting
    (100, "p99", "large"),
    (3.0, "p50", "medium"),          # p50 ranks differently than p99
])
def test_pick_largest_that_fits(budget, stat, expected):
    assert pick_largest(TABLE, budget, stat)["name"] == expected


def test_nothing_fits_returns_none_and_bad_arguments_fail():
    assert pick_largest(TABLE, 0.5, "p99") is None
    assert pick_largest([], 10) is None
    with pytest.raises(ValueError, match="stat"):
        pick_largest(TABLE, 1.0, "p90")
    with pytest.raises(ValueError, match="budget_ms"):
        pick_largest(TABLE, 0)


def test_pick_is_not_fooled_by_row_order():
    assert pick_largest(list(reversed(TABLE)), 2.0)["name"] == "small-twin"


def test_grid_covers_every_combination_smallest_first():
    grid = candidate_grid(SizeConfig(layers=[1, 2], hidden=[128, 256], intermediate_ratio=[2, 4]))
    assert len(grid) == 8
    assert grid[0] == {"layers": 1, "hidden": 128, "intermediate": 256, "heads": 2}
    assert grid[-1] == {"layers": 2, "hidden": 256, "intermediate": 1024, "heads": 4}
    with pytest.raises(ValueError, match="head_dim"):
        candidate_grid(SizeConfig(hidden=[100]))


def test_table_marks_the_pick():
    rows = [dict(r, layers=1, hidden=64, intermediate=128, heads=1, size_mb=1.0) for r in TABLE]
    text = format_table(rows, rows[1], 2.5, "p99")
    assert text.count("<- pick") == 1 and "| yes <- pick |" in text.splitlines()[3]


def test_size_command_measures_real_candidates(tmp_path, capsys):
    config = tmp_path / "grid.yaml"
    config.write_text("layers: [1]\nhidden: [64]\nintermediate_ratio: [2]\ncalls: 10\nwarmup: 2\n")
    code = main(["size", "--budget-ms", "10000", "--batch", "1", "--seq-len", "16", "--config", str(config),
                 "--out", str(tmp_path / "out")])
    assert code == 0
    saved = json.loads((tmp_path / "out" / "size_table.json").read_text())
    assert saved["pick"]["layers"] == 1 and saved["rows"][0]["variant"] == "int8"
    assert saved["rows"][0]["providers"] == ["CPUExecutionProvider"]
    assert "<- pick" in capsys.readouterr().out
    code = main(["size", "--budget-ms", "0.000001", "--seq-len", "16", "--config", str(config), "--out", str(tmp_path / "o2")])
    assert code == 1


# ---- bid mode: a bid of N candidates, two-tower and cross-encoder students ----

BID_TABLE = [
    {"kind": "two_tower", "layers": 1, "hidden": 128, "params": 4_000_000, "candidates": 128, "p50": 1.2, "p99": 2.01},
    {"kind": "two_tower", "layers": 2, "hidden": 384, "params": 15_000_000, "candidates": 128, "p50": 3.0, "p99": 6.0},
    {"kind": "cross", "layers": 1, "hidden": 384, "params": 15_000_000, "candidates": 128, "p50": 2.5, "p99": 5.0},
    {"kind": "cross", "layers": 2, "hidden": 384, "params": 17_000_000, "candidates": 128, "p50": 4.0, "p99": 9.0},
]


def _by_name(row):
    return None if row is None else f"{row['kind']} {row['layers']}x{row['hidden']}"


@pytest.mark.parametrize("budget, stat, expected", [
    (2.5, "p99", "two_tower 1x128"),
    (6.0, "p99", "cross 1x384"),        # same params as two_tower 2x384, both fit: the faster wins
    (5.5, "p99", "cross 1x384"),
    (10, "p99", "cross 2x384"),         # most parameters, whichever kind
    (4.0, "p50", "cross 2x384"),        # p50 ranks differently than p99
    (2.0, "p99", None),
])
def test_fits_bid_picks_the_largest_student_of_either_kind(budget, stat, expected):
    bid = BidSection(budget_ms=budget, candidates=128, stat=stat)
    assert _by_name(fits_bid(BID_TABLE, bid)) == expected


def test_none_fits_names_the_budget_the_fastest_needs():
    bid = BidSection(budget_ms=2.0, candidates=128)
    text = needed_budget_message(BID_TABLE, bid)
    assert text == ("no student fits budget_ms=2 at 128 candidates (p99); the fastest measured, two_tower 1×128, "
                    "needs 2.01 ms: raise bid.budget_ms to ≥ 2.01 or lower bid.candidates")
    assert "needs 1.2 ms" in needed_budget_message(BID_TABLE, BidSection(budget_ms=1.0, candidates=128, stat="p50"))
    assert "none was measured" in needed_budget_message([], bid)
    with pytest.raises(ValueError, match="bid.candidates=64"):  # a table measured at another N says nothing here
        fits_bid(BID_TABLE, BidSection(budget_ms=10, candidates=64))


@pytest.mark.parametrize("field, value", [("budget_ms", 0), ("budget_ms", -1), ("candidates", 0), ("stat", "p90")])
def test_bad_bid_is_rejected_with_the_field_named(field, value):
    with pytest.raises(ConfigError, match=f"size: {field}"):
        validate_config(BidSection, {field: value}, "size")


@pytest.mark.parametrize("argv, named", [
    (["--budget-ms", "0", "--candidates", "8"], "budget_ms"),
    (["--budget-ms", "5", "--candidates", "0"], "candidates"),
    (["--budget-ms", "5", "--candidates", "8", "--batch", "4"], "--batch"),
    (["--budget-ms", "5", "--candidates", "8", "--calls", "3"], "calls"),
])
def test_size_command_rejects_a_bad_bid_before_measuring(argv, named, tmp_path, capsys):
    assert main(["size", *argv, "--out", str(tmp_path / "out")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_shapes_follow_minilm_and_its_own_layers_where_they_fit():
    shipped = student_shape("two_tower", 2, 384)
    assert shipped["source"] == "minilm" and shipped["minilm_layers"] == [0, 5]
    assert shipped["heads"] == 12 and shipped["intermediate"] == 1536
    assert student_shape("cross", 4, 384)["minilm_layers"] == [0, 2, 3, 5]
    assert student_shape("cross", 6, 384)["minilm_layers"] == [0, 1, 2, 3, 4, 5]
    assert student_shape("two_tower", 1, 128)["source"] == "random"
    with pytest.raises(ValueError, match="hidden=100"):
        student_shape("cross", 1, 100)
    with pytest.raises(ValueError, match="kind"):
        student_shape("bi_encoder", 1, 128)
    grid = bid_grid(SizeConfig(two_tower_layers=[2, 1], two_tower_hidden=[256, 128], cross_layers=[2, 1], cross_hidden=[384]))
    assert grid == [("two_tower", 1, 128), ("two_tower", 2, 128), ("two_tower", 1, 256), ("two_tower", 2, 256),
                    ("cross", 1, 384), ("cross", 2, 384)]


def test_bid_workload_never_repeats_a_request():
    work = BidWorkload(40, seed=0)
    assert len({tuple(a.values()) for a in work.ads}) == 40
    bids = [work.rows(i) for i in range(300)]  # more bids than contexts
    assert all(len(b) == 40 and len({r["query"] for r in b}) == 1 for b in bids)
    assert len({b[0]["query"] for b in bids}) == 300
    assert {r["position"] for r in bids[0]} == {1, 2, 3, 4}


def test_size_measures_real_tiny_students_per_bid(tmp_path, capsys):
    students = tmp_path / "out" / "students"
    rows = [measure_student_kind(kind, 2, 64, candidates=8, calls=10, warmup=2, work_dir=str(students))
            for kind in ("two_tower", "cross")]
    for row in rows:
        assert row["bids"] == 10 and row["candidates"] == 8 and row["params"] > 0 and not row["reused"]
        assert math.isfinite(row["p50"]) and math.isfinite(row["p99"]) and 0 < row["p50"] <= row["p99"]
        assert row["variant"] == "int8" and row["providers"] == ["CPUExecutionProvider"]

    config = tmp_path / "grid.yaml"
    config.write_text("two_tower_layers: [2]\ntwo_tower_hidden: [64]\ncross_layers: [2]\ncross_hidden: [64]\nwarmup: 2\n")
    code = main(["size", "--budget-ms", "10000", "--candidates", "8", "--calls", "10", "--config", str(config),
                 "--out", str(tmp_path / "out")])
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("cpu: ") and "[1/2] two_tower 2×64" in out and "[2/2] cross 2×64" in out
    saved = json.loads((tmp_path / "out" / "size_table.json").read_text())
    assert saved["candidates"] == 8 and saved["stat"] == "p99" and saved["machine"]["model"]
    assert [r["reused"] for r in saved["rows"]] == [True, True]  # the students built above, not rebuilt
    assert saved["choice"]["params"] == max(r["params"] for r in saved["rows"])
    assert "choice: " in out and "<- pick" in (tmp_path / "out" / "size_table.md").read_text()

    code = main(["size", "--budget-ms", "0.001", "--candidates", "8", "--calls", "10", "--config", str(config),
                 "--out", str(tmp_path / "out")])
    assert code == 1
    assert "no student fits budget_ms=0.001 at 8 candidates (p99); the fastest measured" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "size_table.json").read_text())
    assert saved["choice"] is None and "raise bid.budget_ms to ≥" in saved["message"]
