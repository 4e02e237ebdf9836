"""`distillery data split` and what reads its output: time order, exact accounting, the same text everywhere."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from impressions_csv import write_impressions_csv
from tinymodels import shared_data_dir

from distillery.cli import main
from distillery.config import ConfigError, load_config, validate_config
from distillery.data.parsing import content_id, criteo_row, generic_mapper, log_row
from distillery.data.readers import read_logs
from distillery.data.split import LogsConfig, parse_times, split_logs
from distillery.data.text import from_text, table_texts, to_text
from distillery.pipeline import PipelineConfig
from distillery.training.data import DataSection, build_training_table


def _split_table(out, split):
    return pq.read_table(out / split)


def line_ids(path, label_column=None):
    """The id of each data line of a CSV without an id column, in file order: its content id, or None
    for a line the reader cannot split (its reject names it by `file:line`)."""
    with open(path, newline="") as f:
        header, *lines = list(csv.reader(f))
    to_row = generic_mapper(label_column)
    return [content_id(to_row(dict(zip(header, line)), None)) if len(line) == len(header) else None
            for line in lines]


def _sorted(ids):
    return sorted(ids, key=lambda i: (i is not None, i or ""))


@pytest.fixture
def impressions(tmp_path):
    path = tmp_path / "impressions.csv"
    return path, write_impressions_csv(path, rows=1200, ctr=0.02, seed=3, bad_lines=4)


def test_split_is_in_time_order_and_accounts_for_every_line(impressions, tmp_path):
    path, made = impressions
    out = tmp_path / "data"
    summary = split_logs(LogsConfig(path=str(path)), str(out))  # time column found by name: timestamp
    assert summary["time_column"] == "timestamp" and summary["order"] == "time"
    assert summary["dropped_columns"] == {"": "row-number index column"}
    tables = {s: _split_table(out, s) for s in ("train", "unlabeled", "test")}
    rejects = pq.read_table(out / "_rejects")
    ids = [i for t in tables.values() for i in t["id"].to_pylist()] + rejects["id"].to_pylist()
    assert _sorted(ids) == _sorted(line_ids(path))  # every input line exactly once, bad ones included
    assert len(set(ids) - {None}) == made["rows"] - ids.count(None)  # content ids: distinct rows, distinct ids
    assert summary["rejected"] == rejects.num_rows == made["bad_lines"]
    assert summary["rows_read"] == made["rows"]
    assert {r.split(":")[0] for r in summary["reject_reasons"]} <= {"timestamp", "row has 8 fields, header has 9"}
    n = made["rows"] - made["bad_lines"]
    assert [tables[s].num_rows for s in ("train", "unlabeled", "test")] == [round(n * 0.5), round(n * 0.3),
                                                                           n - round(n * 0.5) - round(n * 0.3)]
    ts = [t for s in ("train", "unlabeled", "test") for t in tables[s]["ts"].to_pylist()]
    assert ts == sorted(ts)  # train oldest, test newest
    assert summary["train"]["time_range"][1] <= summary["test"]["time_range"][0]
    clicks = sum(summary[s]["clicks"] for s in ("train", "unlabeled", "test"))
    assert clicks == sum(pa.compute.sum(t["click"]).as_py() for t in tables.values())
    assert "click" in tables["unlabeled"].column_names  # kept, hidden by training (the generator's rule)
    assert "" not in tables["train"].column_names and "timestamp" in tables["train"].column_names
    assert json.loads((out / "_SPLIT.json").read_text())["rejected"] == made["bad_lines"]


def test_resplit_replaces_the_earlier_parts(impressions, tmp_path):
    path, _ = impressions
    out = tmp_path / "data"
    split_logs(LogsConfig(path=str(path), files_per_split=4), str(out))
    split_logs(LogsConfig(path=str(path), files_per_split=1), str(out))
    assert len(list((out / "train").glob("*.parquet"))) == 1


def test_file_order_without_a_time_column_and_fractions(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("clicked,site,ad\n" + "".join(f"{i % 7 == 0:d},s{i % 3},a{i}\n" for i in range(20)))
    summary = split_logs(LogsConfig(path=str(path), label_column="clicked", fractions=[0.6, 0.0, 0.4]), str(tmp_path / "d"))
    assert summary["order"] == "file" and summary["time_column"] is None
    assert [summary[s]["rows"] for s in ("train", "unlabeled", "test")] == [12, 0, 8]
    assert pq.read_table(tmp_path / "d" / "train")["id"].to_pylist()[:2] == line_ids(path, "clicked")[:2]
    assert summary["test"]["clicks"] == sum(1 for i in range(12, 20) if i % 7 == 0)


def test_bad_split_requests_name_the_field(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("click,a\n0,x\n1,y\n")
    with pytest.raises(ValueError, match="time_column: 'when' is not a column"):
        split_logs(LogsConfig(path=str(path), time_column="when"), str(tmp_path / "d"))
    with pytest.raises(ValueError, match="cannot fill train and test"):
        split_logs(LogsConfig(path=str(path), fractions=[0.9, 0.1, 0.0 + 1e-9]), str(tmp_path / "d"))
    for fractions, message in (([0.5, 0.5], "expected 3 fractions"), ([0.5, 0.3, 0.3], "sum to 1"),
                               ([0.0, 0.5, 0.5], "must be > 0")):
        with pytest.raises(ConfigError, match=message):
            validate_config(LogsConfig, {"path": "x", "fractions": fractions}, "data")


def test_parse_times_units_and_iso():
    values = [1_767_225_600, 1_767_225_600_000, "1767225600", "2026-01-01T00:00:00Z", "2026-01-01 00:00:00",
              1_767_225_600_000_000_000, "", "noon"]
    seconds, bad = parse_times(values, "when")
    assert seconds[:6] == [1_767_225_600] * 6
    assert bad == {6: "when: missing time", 7: "when: expected a unix time or ISO-8601 date, got 'noon'"}


def test_cli_split_json(impressions, tmp_path, capsys):
    path, made = impressions
    assert main(["data", "split", str(path), "--out", str(tmp_path / "d"), "--fractions", "0.6,0.2,0.2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["rows"] + summary["unlabeled"]["rows"] + summary["test"]["rows"] + summary["rejected"] \
        == made["rows"]
    assert set(summary["test"]) >= {"rows", "clicks", "time_range"} and "columns" in summary
    assert main(["data", "split", str(path), "--out", str(tmp_path / "e"), "--fractions", "a,b"]) == 2


def test_pipeline_data_source_logs_and_synthetic_default():
    demo = load_config(PipelineConfig, "jobs/configs/demo.yaml")
    assert type(demo.data).__name__ == "SyntheticConfig"
    logs = load_config(PipelineConfig, "jobs/configs/pipeline_logs.yaml")
    assert logs.data.source == "logs" and logs.data.fractions == [0.5, 0.3, 0.2]
    explicit = load_config(PipelineConfig, "jobs/configs/demo.yaml", ["data.source=synthetic"])
    assert explicit.data == demo.data
    with pytest.raises(ConfigError, match="data: source: expected 'synthetic'"):
        load_config(PipelineConfig, "jobs/configs/demo.yaml", ["data.source=files"])
    with pytest.raises(ConfigError, match="data.logs.path: Input should be a valid string"):
        load_config(PipelineConfig, "jobs/configs/pipeline_logs.yaml", ["data.path=null"])
    with pytest.raises(ConfigError, match="data.logs.fractions: .*sum to 1"):
        load_config(PipelineConfig, "jobs/configs/pipeline_logs.yaml", ["data.fractions=[0.5, 0.5, 0.5]"])


def test_training_reads_the_text_labeling_gave_the_teacher(tmp_path):
    """The defect of issue 15: extra columns (Avazu site_id, Criteo C1...) were dropped from training text."""
    run = tmp_path / "run"
    (run / "data").mkdir(parents=True)
    path = tmp_path / "log.csv"
    path.write_text("click,ts,query,site_id,C1\n" + "".join(f"{i % 2},{1000 + i},q{i},s{i},c{i}\n" for i in range(10)))
    split_logs(LogsConfig(path=str(path), fractions=[0.6, 0.2, 0.2], files_per_split=1), str(run / "data"))
    train_file = next((run / "data" / "train").glob("*.parquet"))
    labeled = read_logs(str(train_file), fmt="parquet").table  # what labeling reads and renders
    teacher_texts = {r["id"]: to_text(r) for r in labeled.to_pylist()}
    table = build_training_table(str(run), DataSection(splits=["train"], val_fraction=0.0), loss="click")
    assert dict(zip(table.ids, table.texts)) == teacher_texts
    assert all("site_id=" in t and "C1=" in t for t in table.texts)


def test_table_texts_casts_like_the_reader():
    table = pa.table({"id": ["a"], "hour": pa.array([5], pa.int64()), "score": [0.5], "n": [3], "": ["7"],
                      "nested": pa.array([[1, 2]])})
    (text,) = table_texts(table)
    assert text == "hour: 5 | n=3 | nested=[1,2] | score=0.5"  # the index column "" never reaches a model


def test_from_text_extras_round_trip():
    row = {"query": "a | b", "site_id": "s1", "C1": "x=y", "position": 2}
    fields = from_text(to_text(row), extras=True)
    assert fields == {"query": "a | b", "position": "2", "C1": "x=y", "site_id": "s1"}
    assert from_text(to_text(row)) == {"query": "a | b", "position": "2"}


@pytest.mark.parametrize("name", ["criteo", "avazu"])
def test_raw_rows_of_a_real_log_render_the_training_text(name, tmp_path):
    """/predict with rows in the log's own columns (log_row) = the text training read from the split."""
    shared = shared_data_dir()
    if shared is None:
        pytest.skip("../shared/data is absent (set DISTILLERY_SHARED_DATA): the real Criteo/Avazu samples live there")
    sample = next((shared / f"{name}-deepctr").glob("*.txt"))
    split_logs(LogsConfig(path=str(sample)), str(tmp_path / "d"))
    stored = pa.concat_tables([pq.read_table(tmp_path / "d" / s) for s in ("train", "unlabeled", "test")])
    texts = dict(zip(stored["id"].to_pylist(), table_texts(stored)))
    raw = list(csv.DictReader(open(sample)))
    ids = [r["id"] for r in raw] if name == "avazu" else [content_id(criteo_row(r, None)) for r in raw]
    assert [to_text(log_row(r)) for r in raw] == [texts[i] for i in ids]
    assert [to_text(log_row(r)) for r in stored.to_pylist()] == table_texts(stored)  # split rows: unchanged


def test_raw_csv_rows_of_the_acceptance_log_render_the_training_text(impressions, tmp_path):
    path, _ = impressions
    split_logs(LogsConfig(path=str(path)), str(tmp_path / "d"))
    stored = pq.read_table(tmp_path / "d" / "test")
    texts = dict(zip(stored["id"].to_pylist(), table_texts(stored)))
    raw = {i: r for i, r in zip(line_ids(path), csv.DictReader(open(path))) if i is not None}
    assert all(to_text(log_row(raw[i])) == texts[i] for i in texts)


def test_a_log_without_ids_counts_a_duplicated_line_and_rejects_it_once(tmp_path):
    """The same impression twice (a double write): one id, both lines counted, the later one rejected
    naming where the id was first seen. Before: ids were `<file>:<line>`, so both were kept as two rows."""
    lines = [f"{i % 2},2026-03-01 00:00:{i:02d},s{i},ad {i}" for i in range(10)]
    path = tmp_path / "day.csv"
    path.write_text("click,timestamp,site,ad_title\n" + "\n".join(lines + [lines[3]]) + "\n")
    summary = split_logs(LogsConfig(path=str(path), files_per_split=1), str(tmp_path / "d"))
    assert summary["rows_read"] == 11 and summary["rejected"] == 1
    assert sum(summary[s]["rows"] for s in ("train", "unlabeled", "test")) == 10
    (reject,) = pq.read_table(tmp_path / "d" / "_rejects").to_pylist()
    assert reject["id"] == line_ids(path)[3] == line_ids(path)[10]
    assert reject["reason"] == f"id: duplicate of an earlier row in {path} (the first row with an id owns it)"
    kept = [i for s in ("train", "unlabeled", "test") for i in _split_table(tmp_path / "d", s)["id"].to_pylist()]
    assert sorted(kept) == sorted(line_ids(path)[:10]) and len(set(kept)) == 10


def test_ids_follow_content_not_lines(tmp_path):
    """Overlapping daily exports share the ids of the impressions they share; a row edited in place
    gets a new id, the rows around it keep theirs; an index column does not count."""
    rows = [f"{i},{i % 2},q{i},ad {i}" for i in range(6)]
    (tmp_path / "day-1.csv").write_text(",click,query,ad_title\n" + "\n".join(rows[:4]) + "\n")
    (tmp_path / "day-2.csv").write_text(",click,query,ad_title\n" + "\n".join(
        f"{n}," + r.split(",", 1)[1] for n, r in enumerate(rows[2:])) + "\n")  # renumbered index
    day1, day2 = line_ids(tmp_path / "day-1.csv"), line_ids(tmp_path / "day-2.csv")
    assert day1[2:] == day2[:2] and len(set(day1 + day2)) == 6
    assert read_logs(str(tmp_path)).table["id"].to_pylist() == day1 + day2
    (tmp_path / "day-1.csv").write_text(",click,query,ad_title\n" + "\n".join(rows[:4]).replace("q1", "q1 edited") + "\n")
    edited = read_logs(str(tmp_path / "day-1.csv")).table["id"].to_pylist()
    assert edited[0] == day1[0] and edited[2:] == day1[2:] and edited[1] not in day1


def _ten_rows(path):
    path.write_text("click,timestamp,query\n" + "".join(f"{i % 2},{1000 + i},q{i}\n" for i in range(10)))
    return path


def test_a_split_that_fails_half_way_leaves_the_earlier_data_whole(tmp_path, monkeypatch):
    """Before: the split cleared `<out>/train` etc. first, so a split that died left an emptied or
    half-written data folder."""
    log, out = _ten_rows(tmp_path / "log.csv"), tmp_path / "data"
    split_logs(LogsConfig(path=str(log), files_per_split=1), str(out))
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (tmp_path / "log.csv").write_text("click,timestamp,query\n" + "".join(f"0,{2000 + i},new {i}\n" for i in range(10)))
    from distillery import io

    real, calls = io.write_parquet, []

    def dies_on_the_second_file(table, where):
        calls.append(where)
        if len(calls) == 2:
            raise OSError("No space left on device")
        real(table, where)

    monkeypatch.setattr(io, "write_parquet", dies_on_the_second_file)
    with pytest.raises(OSError, match="No space left"):
        split_logs(LogsConfig(path=str(log), files_per_split=1), str(out))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "log.csv"]  # no staging left beside it
    monkeypatch.undo()

    # a split killed between the two renames of its swap: the data it had moved aside comes back
    (out).rename(tmp_path / ".data.split-old-deadbeef")
    with pytest.raises(ValueError, match="cannot fill train and test"):
        split_logs(LogsConfig(path=str(log), fractions=[0.98, 0.01, 0.01]), str(out))
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    summary = split_logs(LogsConfig(path=str(log), files_per_split=1), str(out))
    assert summary["rows_read"] == 10 and pq.read_table(out / "test")["query"].to_pylist() == ["new 8", "new 9"]


def test_out_that_would_delete_the_log_or_other_files_is_refused(tmp_path, monkeypatch):
    """Before: `--out` was written in place, whatever else it held: `--out .` beside the log, or a
    run directory instead of its data/ folder, mixed the split into (and a re-split cleared) other files."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = _ten_rows(logs / "day.csv")
    monkeypatch.chdir(logs)
    for out in (".", str(logs), str(tmp_path)):  # the log's folder, or a folder above it
        with pytest.raises(ValueError, match="out: .* holds the log .* would delete the log"):
            split_logs(LogsConfig(path=str(log)), out)
    with pytest.raises(ValueError, match="lies inside the log folder"):
        split_logs(LogsConfig(path=str(logs)), str(logs / "data"))
    (tmp_path / "run" / "labels").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"out: .*run holds \['labels'\], which a split does not write"):
        split_logs(LogsConfig(path=str(log)), str(tmp_path / "run"))
    assert log.exists() and sorted(p.name for p in logs.iterdir()) == ["day.csv"]
    assert split_logs(LogsConfig(path=str(log)), str(tmp_path / "run" / "data"))["rows_read"] == 10
