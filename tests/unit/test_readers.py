"""Ad-log readers: the shared Criteo/Avazu/OpenRTB samples, generic CSV/TSV/JSONL/parquet, rejects, CLI."""

from __future__ import annotations

import gzip
import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery.cli import main
from distillery.data.parsing import content_id
from distillery.data.readers import REJECT_SCHEMA, detect_format, inspect_logs, read_logs
from distillery.data.schema import LOG_SCHEMA
from distillery.data.text import to_text

INSPECT_KEYS = {"rows", "clicks", "click_rate", "rejected", "columns", "sample_text"}


def _rows(table: pa.Table) -> dict[str, dict]:
    return {r["id"]: r for r in table.to_pylist()}


# ---------------------------------------------------------------- shared samples


def test_criteo_sample(shared_data):
    result = read_logs(str(shared_data / "criteo-deepctr"))  # folder: SOURCE.md is skipped
    table = result.table
    assert result.files == (str(shared_data / "criteo-deepctr" / "criteo_sample.txt"),)
    assert table.num_rows == 200 and result.rejects.num_rows == 0
    assert pa.compute.sum(table.column("click")).as_py() == 49
    assert table.schema.field("click").type == pa.int8()
    assert all(table.schema.field(f"I{i}").type == pa.string() for i in range(1, 14))
    first = table.slice(0, 1).to_pylist()[0]
    assert first["id"] == content_id(first) and first["id"].startswith("c-")  # no id column: its content
    assert first["I1"] is None and first["I2"] == "3" and first["I3"] == "260" and first["C1"] == "05db9164"
    assert table.column("I2").to_pylist()[1] == "-1"
    assert table.column("I12").null_count == 157 and table.column("C22").null_count == 159
    assert len(set(table.column("id").to_pylist())) == 200
    text = to_text(first)
    assert text.startswith("C1=05db9164 | C10=8f48ce11") and "I3=260 |" in text and "I1=" not in text
    assert read_logs(str(shared_data / "criteo-deepctr" / "criteo_sample.txt"), fmt="criteo").table.equals(table)


def test_avazu_sample_keeps_ids_beyond_int64_exactly(shared_data):
    path = shared_data / "avazu-deepctr" / "avazu_sample.txt"
    result = read_logs(str(path))
    table = result.table
    assert table.num_rows == 100 and result.rejects.num_rows == 0
    assert pa.compute.sum(table.column("click")).as_py() == 20
    assert table.schema.field("id").type == pa.string()
    raw_ids = [line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]]
    assert table.column("id").to_pylist() == raw_ids
    assert sum(int(i) > 2**63 - 1 for i in raw_ids) == 93
    rows = _rows(table)
    row = rows["10000169349117863715"]
    assert row["ts"] == 1_413_849_600 and row["hour"] == 0  # 14102100 = 2014-10-21 00:00 UTC
    assert row["slot_size"] == "320x50" and row["position"] == 0 and row["device"] == "1"
    assert row["site_category"] == "28905ebd" and row["device_ip"] == "96809ac8"
    assert "C15" not in row and "app_category" not in row and "banner_pos" not in row
    app_rows = [r for r in rows.values() if r["site_id"] == "85f751fd"]  # app traffic
    assert len(app_rows) == 21  # their site_category is the placeholder 50e219e0; the app's is used
    assert sum(r["site_category"] != "50e219e0" for r in app_rows) == 20  # one row has both placeholders


def test_openrtb_folder_one_row_per_impression(shared_data):
    result = read_logs(str(shared_data / "openrtb"))
    assert len(result.files) == 11 and result.rejects.num_rows == 0
    assert result.table.num_rows == 12  # the 2.5 mobile request has two impressions
    assert "click" not in result.table.column_names
    rows = result.table.to_pylist()
    assert {"IxexyLDIIk:1", "IxexyLDIIk:2", "1234567893:1"} <= {r["id"] for r in rows}
    assert sorted(r["imp_type"] for r in rows).count("native") == 1


def test_openrtb_with_outcomes_and_bad_requests(shared_data, tmp_path):
    for name in ("iab-ortb25-mobile.json", "iab-ortb25-video.json"):
        shutil.copy(shared_data / "openrtb" / name, tmp_path / name)
    (tmp_path / "outcomes.csv").write_text("id,click\nIxexyLDIIk:1,1\nIxexyLDIIk:2,0\nnope:1,maybe\n")
    lines = [json.dumps({"id": "r9", "imp": [{"id": "1", "banner": {"w": 300, "h": 250}},
                                              {"id": "2", "banner": {"w": "wide"}}]}),
             json.dumps({"id": "r10", "imp": []}), "{not json"]
    (tmp_path / "more.jsonl").write_text("\n".join(lines) + "\n")
    result = read_logs(str(tmp_path))
    rows = _rows(result.table)
    assert sorted(rows) == ["1234567893:1", "IxexyLDIIk:1", "IxexyLDIIk:2", "r9:1"]
    assert rows["IxexyLDIIk:1"]["click"] == 1 and rows["IxexyLDIIk:2"]["click"] == 0
    assert rows["1234567893:1"]["click"] is None  # no outcome: unknown, not a non-click
    rejects = {(r["id"], r["source"].rsplit("/", 1)[1]): r["reason"] for r in result.rejects.to_pylist()}
    assert rejects[("nope:1", "outcomes.csv:4")].startswith("click: expected a 0/1 click label")
    assert rejects[("r9:2", "more.jsonl:1")] == "imp[1].banner.w: expected an integer, got str"
    assert rejects[("r10", "more.jsonl:2")].startswith("imp: empty")
    assert rejects[(None, "more.jsonl:3")].startswith("line: not valid JSON")
    explicit = read_logs(str(tmp_path / "iab-ortb25-mobile.json"), outcomes=str(tmp_path / "outcomes.csv"))
    assert explicit.table.column("click").to_pylist() == [1, 0]


# ---------------------------------------------------------------- generic formats


CSV = (
    "sid,query,was_clicked,zeta,alpha,hour\n"
    "a,running shoes,yes,z1,3,14\n"
    "b,\"cheap, fast flights\",0,,4,\n"
    "c,phones,1,z3,5,9\n"
)


def test_generic_csv_any_label_column_and_unknown_columns(tmp_path):
    path = tmp_path / "clicks.csv"
    path.write_text(CSV)
    result = read_logs(str(path), label_column="was_clicked")
    table = result.table
    assert table.column_names == ["id", "query", "hour", "click", "sid", "zeta", "alpha"]
    assert table.column("click").to_pylist() == [1, 0, 1]
    assert table.schema.field("alpha").type == pa.string() and table.schema.field("hour").type == pa.int32()
    rows = table.to_pylist()
    assert table.column("id").to_pylist() == [content_id(r) for r in rows] and len({r["id"] for r in rows}) == 3
    assert to_text(rows[0]) == "query: running shoes | hour: 14 | alpha=3 | sid=a | zeta=z1"
    assert to_text(rows[1]) == "query: cheap, fast flights | alpha=4 | sid=b"
    summary = inspect_logs(str(path), label_column="was_clicked")
    assert summary == {"rows": 3, "clicks": 2, "click_rate": pytest.approx(2 / 3), "rejected": 0,
                       "columns": table.column_names, "sample_text": to_text(rows[0])}
    with pytest.raises(ValueError, match="label column 'clicked' not found"):
        read_logs(str(path), label_column="clicked")


def test_malformed_rows_are_rejected_with_reasons_and_the_rest_kept(tmp_path):
    path = tmp_path / "logs.csv"
    path.write_bytes(
        b"id,query,label,hour\n"
        b"1,shoes,1,3\n"
        b"2,too,many,fields,here\n"
        b"3,caf\xe9 latte,0,4\n"  # Latin-1, not UTF-8
        b"4,hats,2,5\n"
        b"5,boots,0,noon\n"
        b",nameless,0,1\n"
        b"7,\"multi\nline\",0,6\n"
        b"8,socks,0,7\n"
    )
    result = read_logs(str(path), label_column="label")
    assert result.table.column("id").to_pylist() == ["1", "7", "8"]
    assert result.table.column("query").to_pylist()[1] == "multi\nline"
    assert result.rejects.schema == REJECT_SCHEMA
    rejects = [(r["id"], r["source"].rsplit("/", 1)[1], r["reason"]) for r in result.rejects.to_pylist()]
    assert rejects == [
        (None, "logs.csv:3", "row has 5 fields, header has 4"),
        ("3", "logs.csv:4", "query: undecodable bytes (not UTF-8)"),
        ("4", "logs.csv:5", "label: expected a 0/1 click label, got '2'"),
        ("5", "logs.csv:6", "hour: expected an integer, got 'noon'"),
        (None, "logs.csv:7", "id: missing or empty"),
    ]
    assert inspect_logs(str(path), label_column="label")["rejected"] == 5


def test_tsv_and_headerless_criteo_tsv(tmp_path):
    (tmp_path / "a.tsv").write_text("id\tquery\tclick\n10\tq one\t0\n11\tq two\t1\n")
    table = read_logs(str(tmp_path / "a.tsv")).table
    assert table.column("id").to_pylist() == ["10", "11"] and table.column("click").to_pylist() == [0, 1]
    # Kaggle's train.txt: tab-separated, no header, label then 13 integers then 26 hashes
    line = "\t".join(["1", "5.0"] + [""] * 12 + ["68fd1e64"] + [""] * 25)
    (tmp_path / "train.txt").write_text(line + "\n" + line.replace("1", "0", 1) + "\n")
    assert detect_format(str(tmp_path / "train.txt"), line.encode()) == "criteo"
    criteo = read_logs(str(tmp_path / "train.txt")).table.to_pylist()
    assert [(r["click"], r["I1"], r["C1"]) for r in criteo] == [(1, "5", "68fd1e64"), (0, "5", "68fd1e64")]
    assert [r["id"] for r in criteo] == [content_id(r) for r in criteo] and criteo[0]["id"] != criteo[1]["id"]


def test_jsonl_types_nesting_and_bad_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(
        json.dumps({"id": 98765432109876543210, "query": "tea", "clicked": True, "meta": {"b": 1, "a": [2]},
                    "score": 2.0, "position": 2.0}).encode() + b"\n"
        b"\n"
        + json.dumps({"query": "coffee", "clicked": 0, "flag": False}).encode() + b"\n"
        b"[1, 2]\n"
        b"{\"query\": \"caf\xe9\"}\n"
        b"{\"query\": \"x\", \"clicked\": \"perhaps\"}\n"
        b"{broken\n"
    )
    result = read_logs(str(path), label_column="clicked")
    rows = result.table.to_pylist()
    assert [r["id"] for r in rows] == ["98765432109876543210", content_id(rows[1])]
    assert rows[0]["click"] == 1 and rows[0]["position"] == 2 and rows[0]["score"] == "2"
    assert rows[0]["meta"] == '{"a":[2],"b":1}' and rows[1]["flag"] == "false"
    reasons = [(r["source"].rsplit(":", 1)[1], r["reason"]) for r in result.rejects.to_pylist()]
    assert [line for line, _ in reasons] == ["4", "5", "6", "7"]
    assert reasons[0][1] == "line: expected a JSON object, got list"
    assert reasons[1][1] == "line: undecodable bytes (not UTF-8)"
    assert reasons[2][1] == "clicked: expected a 0/1 click label, got 'perhaps'"
    assert reasons[3][1].startswith("line: not valid JSON")


def test_parquet_round_trip_and_label_column(tmp_path):
    source = tmp_path / "src.csv"
    source.write_text(CSV)
    first = read_logs(str(source), label_column="was_clicked").table
    pq.write_table(first, tmp_path / "logs.parquet")
    again = read_logs(str(tmp_path / "logs.parquet"))
    assert again.table.equals(first) and again.rejects.num_rows == 0
    # a parquet file with its own names and types: ints become strings, a bad label is rejected
    raw = pa.table({"user": ["u1", "u2", "u3"], "clk": [1, 0, 7], "hour": pa.array([1, 2, 3], pa.int64()),
                    "price": [1.5, 2.0, None]})
    pq.write_table(raw, tmp_path / "other.parquet")
    other = read_logs(str(tmp_path / "other.parquet"), label_column="clk")
    expected = [{"hour": 1, "click": 1, "user": "u1", "price": "1.5"}, {"hour": 2, "click": 0, "user": "u2", "price": "2"}]
    assert other.table.to_pylist() == [{"id": content_id(r), **r} for r in expected]
    assert other.rejects.to_pylist() == [  # its content is not what was read: the source names it
        {"id": None, "source": f"{tmp_path / 'other.parquet'}:3", "reason": "clk: expected a 0/1 click label, got 7"}]
    assert other.table.schema.field("hour").type == LOG_SCHEMA.field("hour").type


def test_folder_uri_and_compressed_input(tmp_path):
    folder = tmp_path / "logs"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.csv").write_text("id,query,click\n1,q1,0\n")
    (folder / "sub" / "a.csv").write_text("id,query,click,extra\n2,q2,1,e\n")
    with gzip.open(folder / "c.csv.gz", "wt") as f:
        f.write("id,query,click\n3,q3,1\n")
    (folder / "README.md").write_text("not logs")
    (folder / "_SUCCESS").write_text("")
    result = read_logs(str(folder))
    assert [p.rsplit("/", 1)[1] for p in result.files] == ["b.csv", "c.csv.gz", "a.csv"]
    assert result.table.column("id").to_pylist() == ["1", "3", "2"]
    assert result.table.column("extra").to_pylist() == [None, None, "e"]
    uri = read_logs(f"file://{folder}")
    assert uri.table.equals(result.table) and all(f.startswith("file://") for f in uri.files)
    assert inspect_logs(f"file://{folder}")["clicks"] == 2


def test_rows_without_ids_are_named_by_content_not_by_file_or_line(tmp_path):
    """Before: `<file>:<line>`, so the same impression in two daily exports was two rows, and a line
    inserted at the top of a file renamed every row below it."""
    folder = tmp_path / "logs"
    for day in ("day-1", "day-2", "_old"):  # `_old`: a hidden folder, not read
        (folder / day).mkdir(parents=True)
        (folder / day / "part-0.csv").write_text("query,click\nshoes,0\nboots,1\n")
        (folder / day / "part-1.jsonl").write_text('{"query": "hats"}\n{"query": "shoes", "click": 0}\n')
        pq.write_table(pa.table({"query": ["socks", "boots"], "click": pa.array([None, 1], pa.int64())}),
                       folder / day / "part-2.parquet")
    table = read_logs(str(folder)).table
    by_query = {}
    for row in table.to_pylist():
        by_query.setdefault(row["query"], set()).add(row["id"])
    # one id per impression, whatever file, folder or format it came from
    assert {q: len(ids) for q, ids in by_query.items()} == {"shoes": 1, "boots": 1, "hats": 1, "socks": 1}
    assert table.num_rows == 12 and len(set(table.column("id").to_pylist())) == 4
    single = folder / "day-1" / "part-0.csv"
    ids = read_logs(str(single)).table.column("id").to_pylist()
    single.write_text("query,click\nsandals,1\nshoes,0\nboots,1\n")  # a line inserted above
    assert read_logs(str(single)).table.column("id").to_pylist()[1:] == ids


def test_bad_arguments_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="fmt: 'xml'"):
        read_logs(str(tmp_path), fmt="xml")
    with pytest.raises(FileNotFoundError):
        read_logs(str(tmp_path / "missing.csv"))
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(ValueError, match="cannot tell the log format"):
        read_logs(str(tmp_path / "notes.md"))
    empty = inspect_logs(str(tmp_path))  # a folder without logs
    assert empty == {"rows": 0, "clicks": None, "click_rate": None, "rejected": 0, "columns": ["id"],
                     "sample_text": None}


# ---------------------------------------------------------------- CLI


def test_cli_data_inspect_json(shared_data, capsys):
    assert main(["data", "inspect", str(shared_data / "avazu-deepctr"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == INSPECT_KEYS
    assert summary["rows"] == 100 and summary["clicks"] == 20 and summary["click_rate"] == pytest.approx(0.2)
    assert summary["rejected"] == 0 and summary["columns"][0] == "id" and "slot: 320x50" in summary["sample_text"]
    assert main(["data", "inspect", str(shared_data / "criteo-deepctr" / "criteo_sample.txt"),
                 "--format", "criteo", "--json"]) == 0
    criteo = json.loads(capsys.readouterr().out)
    assert (criteo["rows"], criteo["clicks"], criteo["click_rate"]) == (200, 49, pytest.approx(0.245))


def test_cli_inspect_generic_label_column(tmp_path, capsys):
    path = tmp_path / "clicks.csv"
    path.write_text(CSV)
    assert main(["data", "inspect", str(path), "--label-column", "was_clicked", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == INSPECT_KEYS and summary["clicks"] == 2
    assert summary["sample_text"] == "query: running shoes | hour: 14 | alpha=3 | sid=a | zeta=z1"


def test_cli_inspect_bad_label_column_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "clicks.csv"
    path.write_text(CSV)
    assert main(["data", "inspect", str(path), "--label-column", "nope", "--json"]) == 2
    assert "label column 'nope' not found" in capsys.readouterr().err


def test_openrtb_reader_keeps_the_first_of_duplicate_imps_and_survives_escapes(tmp_path):
    requests = [{"id": "r", "imp": [{"id": "1", "banner": {"w": 1, "h": 2}}, {"id": "1", "banner": {}}]},
                {"id": "s", "site": {"page": "\udc80"}, "imp": [{"id": "1", "banner": {}}]}]
    (tmp_path / "reqs.json").write_text(json.dumps(requests))  # a JSON array of requests
    result = read_logs(str(tmp_path / "reqs.json"))
    assert result.table.to_pylist()[0]["slot_size"] == "1x2"
    assert result.rejects.to_pylist()[0] == {"id": "r:1", "source": f"{tmp_path / 'reqs.json'}:1",
                                             "reason": "imp[1].id: duplicate '1'"}
    assert result.table.column("id").to_pylist() == ["r:1", "s:1"]
    assert "\ufffd" in result.table.column("query").to_pylist()[1]  # marked for row_problem, not a crash
    (tmp_path / "rows.jsonl").write_text('{"id": "a", "query": "\\udc80"}\n{"id": "b", "query": "ok"}\n')
    rows = read_logs(str(tmp_path / "rows.jsonl"))
    assert rows.table.column("id").to_pylist() == ["b"]
    assert rows.rejects.column("reason").to_pylist() == ["query: undecodable bytes (not UTF-8)"]
