"""`parsing.content_id`: a row without an id is named by what it says, not where it sits.

Before: such rows were `<file>:<line>`, so one impression exported twice was two rows (labelled and
trained on twice), and a line inserted at the top of a file renamed every row below it."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq

from distillery.data.parsing import content_id
from distillery.data.readers import read_logs

ROW = {"query": "running shoes", "hour": 14, "click": 1, "site_id": "s9", "score": 0.25}


def test_canonical_form():
    rid = content_id(ROW)
    assert re.fullmatch(r"c-[0-9a-f]{24}", rid)
    assert content_id(dict(reversed(list(ROW.items())))) == rid  # column order is not content
    assert content_id({**ROW, "id": None, "os": None, "x": float("nan")}) == rid  # null = absent; id is no content
    assert content_id({**ROW, "": "17", "Unnamed: 0": "3", "__index_level_0__": 5}) == rid  # row numbers are not
    for name, value in (("query", "running shoe"), ("hour", 15), ("click", 0), ("site_id", "s1"), ("score", 0.5),
                        ("extra", "x")):
        assert content_id({**ROW, name: value}) != rid, name  # every other column is
    assert content_id({**ROW, "hour": "14"}) != rid  # typed values: the readers type a column before hashing


def test_the_same_impression_has_one_id_in_every_format(tmp_path):
    (tmp_path / "a.csv").write_text("query,hour,click,site_id\nrunning shoes,14,1,s9\n")
    (tmp_path / "b.jsonl").write_text('{"site_id": "s9", "click": 1, "hour": 14.0, "query": "running shoes"}\n')
    (tmp_path / "c.tsv").write_text("Unnamed: 0\tquery\thour\tclick\tsite_id\n7\trunning shoes\t14\ttrue\ts9\n")
    pq.write_table(pa.table({"query": ["running shoes"], "hour": pa.array([14], pa.int64()), "click": [1],
                             "site_id": ["s9"]}), tmp_path / "d.parquet")
    ids = read_logs(str(tmp_path)).table["id"].to_pylist()
    assert len(ids) == 4 and len(set(ids)) == 1


def test_label_column_is_read_as_the_click(tmp_path):
    """A generic log's own label column name is not content: it is renamed to `click` first."""
    (tmp_path / "a.csv").write_text("query,clicked\nshoes,1\n")
    (tmp_path / "b.csv").write_text("query,was_clicked\nshoes,1\n")
    a = read_logs(str(tmp_path / "a.csv"), label_column="clicked").table["id"][0].as_py()
    b = read_logs(str(tmp_path / "b.csv"), label_column="was_clicked").table["id"][0].as_py()
    assert a == b == content_id({"query": "shoes", "click": 1})
