"""`distillery size`: the pick on a synthetic latency table, the grid, and one real tiny measurement."""

from __future__ import annotations

import json

import pytest

from distillery.cli import main
from distillery.compress.size import SizeConfig, candidate_grid, format_table, pick_largest

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
