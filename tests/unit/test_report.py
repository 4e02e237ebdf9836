"""The run report: chart data against hand-computed values, SVG well-formedness, and the page's
figures against report.json (every figure, formatted; nulls show their reason; nothing external)."""

from __future__ import annotations

import json
import re
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillery.metrics import evaluate_predictions, percentiles
from distillery.report import flatten, format_value, lookup, write_report
from distillery.report_charts import build_charts, inline, latency_histogram

CHROMIUM = Path("/usr/bin/chromium")
CHARTS = {"roc", "reliability", "latency_size", "labeling", "serve_latency", "bid_latency", "replicas", "timings"}


# ------------------------------------------------------------------------------ sample run dir

def sample_report(predictions: pa.Table | None = None) -> dict:
    """A report.json with realistic figures, every `DESIGN_KEYS` key, the optional extras and three
    kinds of null-with-reason (sibling `_reason`, section `null_reasons`, root `null_reasons`).
    With `predictions`, the quality figures are computed from them (as the evaluate stage does)."""
    rng = np.random.default_rng(0)
    latencies = np.exp(rng.normal(np.log(14.0), 0.45, 1500)).round(3).tolist() + [310.0]
    report = {
        "quality": {
            "teacher": {"auc": 0.742149, "logloss": 0.361204, "ece": 0.011873, "rows": 4000, "mean_prob": 0.1213},
            "student": {"auc": 0.731532, "logloss": 0.366811, "ece": 0.014420, "rows": 4000},
            "student_direct": {"auc": 0.701187, "logloss": 0.378902, "ece": 0.021055, "rows": 4000},
            "student_int8": {"auc": 0.729818, "logloss": 0.367345, "ece": 0.015001, "rows": 4000, "seconds": 3.4172},
            "oracle_auc": None, "null_reasons": {"oracle_auc": "no true click probability in these logs"},
            "distillation_efficiency": 0.983383, "lift_auc": 0.030345, "strict_lift": None,
            "test_rows": 4000, "click_rate": 0.1187, "skipped": ["student_fp32"],
        },
        "labeling": {"rows_in": 20000, "rows_labeled": 20000, "rows_kept": 16342, "rows_rejected": 3658,
                     "rows_per_s": 212.4391, "kept_fraction": 0.8171, "teacher_ids": ["hf-classifier:teacher"]},
        "latency_ms": {"teacher": {"p50": 24.3121, "p99": 41.2055}, "student_fp32": {"p50": 3.1241, "p99": 5.4032},
                       "student_int8": {"p50": 1.8712, "p99": 3.6104}},
        "size_mb": {"teacher": 90.87, "student_fp32": 17.41, "student_int8": 4.62},
        "null_reasons": {"quality.strict_lift": "the unlabeled split holds no hidden clicks"},
        "serve": {"p50_ms": percentiles(latencies)["p50"], "p99_ms": percentiles(latencies)["p99"],
                  "rps": 310.512, "errors": 0,
                  "max_replicas": None, "max_replicas_reason": "serve.status() returned no replica counts",
                  "requests": 2000, "concurrency": 8, "candidates_per_request": 8, "statuses": {"200": 2000},
                  "bid_ms": {"1": {"p50": 3.12, "p99": 5.87, "requests": 200, "bids": 200, "no_bids": 0, "errors": 0},
                             "8": {"p50": 3.4, "p99": 6.91, "requests": 200, "bids": 199, "no_bids": 1, "errors": 0},
                             "128": {"p50": 5.02, "p99": 9.4417, "requests": 200, "bids": 200, "no_bids": 0,
                                     "errors": 0, "statuses": {"200": 200}},
                             "1024": {"p50": 14.8, "p99": 30.2, "requests": 187, "bids": 180, "no_bids": 7,
                                      "errors": 0}},
                  "bid_tmax_ms": 100,
                  "bid_saturation": {"candidates": 128, "cores": 2, "tmax_ms": 100, "seconds_per_level": 3.0,
                                     "bids_per_s_per_core": 80.12, "bids_per_s": 160.24, "concurrency": 4,
                                     "p99_ms": 62.4, "levels": [
                                         {"concurrency": 1, "bids_per_s": 97.9, "p50": 8.5, "p99": 24.3, "requests": 294,
                                          "bids": 294, "no_bids": 0, "errors": 0},
                                         {"concurrency": 4, "bids_per_s": 160.24, "p50": 18.2, "p99": 62.4,
                                          "requests": 483, "bids": 483, "no_bids": 0, "errors": 0}]},
                  "replicas_over_time": [[0.0, 1], [0.5, 1], [4.0, 2], [9.5, 2], [12.0, 1]],
                  "latency_hist_ms": latencies},
        "timings_s": {"data": 3.21, "teacher": 121.5, "label": 94.2, "student": 88.74, "student_direct": 80.1,
                      "compress": 41.0, "evaluate": 30.55, "serve": 25.3, "total": 484.6},
    }
    if predictions is not None:
        q = report["quality"]
        y = predictions["click"].to_numpy()
        for m in ("teacher", "student", "student_direct", "student_int8"):
            q[m].update(evaluate_predictions(y, predictions[m].to_numpy()))
        q["distillation_efficiency"] = q["student_int8"]["auc"] / q["teacher"]["auc"]
        q["lift_auc"] = q["student"]["auc"] - q["student_direct"]["auc"]
    return report


def sample_predictions(n: int = 4000, seed: int = 0) -> pa.Table:
    """Test-split predictions: clicks drawn from a true probability, models see it through noise."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(-2.0, 1.0, n)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    cols = {"click": click}
    for name, noise in (("teacher", 0.6), ("student", 0.7), ("student_direct", 1.0), ("student_int8", 0.72)):
        cols[name] = 1 / (1 + np.exp(-(logit + rng.normal(0, noise, n))))
    return pa.table(cols)


def write_run(run_dir: Path, report: dict | None = None, predictions: pa.Table | None = None) -> Path:
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    (run_dir / "report.json").write_text(json.dumps(report if report is not None else sample_report()))
    if predictions is not None:
        pq.write_table(predictions, run_dir / "plots" / "predictions.parquet")
    return run_dir


class _Figures(HTMLParser):
    """Collects (data-key, attributes, text) of every element carrying data-key, and every
    attribute value that could load a resource."""

    def __init__(self):
        super().__init__()
        self.figures: list[tuple[str, dict, str]] = []
        self.resources: list[str] = []
        self._open: list[list] = []  # [key, attrs, depth, text parts]
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        self.resources += [v for k, v in attrs if k in ("src", "href", "xlink:href", "action", "data") and v]
        for entry in self._open:
            entry[2] += 1
        if "data-key" in a:
            self._open.append([a["data-key"], a, 1, []])

    def handle_endtag(self, tag):
        for entry in list(self._open):
            entry[2] -= 1
            if entry[2] == 0:
                self._open.remove(entry)
                self.figures.append((entry[0], entry[1], " ".join("".join(entry[3]).split())))

    def handle_data(self, data):
        for entry in self._open:
            entry[3].append(data)


def parse(html_text: str) -> _Figures:
    p = _Figures()
    p.feed(html_text)
    p.close()
    return p


# ---------------------------------------------------------------------------------- chart data
# (ROC points, calibration bins and the AUC are distillery.metrics, tested in test_metrics.py)

def test_latency_histogram_keeps_every_request():
    values = list(np.linspace(1, 20, 199)) + [500.0]
    edges, counts, overflow = latency_histogram(values, bins=20)
    assert len(edges) == 21 and edges[0] == 0
    assert counts.sum() + overflow == 200 and overflow == 1
    e, c, o = latency_histogram({"edges": [0, 5, 10], "counts": [3, 4]})
    assert c.tolist() == [3, 4] and o == 0
    with pytest.raises(ValueError, match="latency_hist_ms"):
        latency_histogram({"edges": [0, 5], "counts": [3, 4]})


# ------------------------------------------------------------------------------ figures and keys

@pytest.mark.parametrize("key,value,text", [
    ("quality.student.auc", 0.731532, "0.7315"),
    ("quality.lift_auc", 0.030345, "+0.0303"),
    ("quality.lift", -0.01, "-0.0100"),
    ("quality.teacher.rows", 4000, "4,000"),
    ("quality.student_int8.seconds", 3.4172, "3.42"),
    ("latency_ms.teacher.p50", 24.3121, "24.31"),
    ("latency_ms.teacher.p50", 3, "3.00"),
    ("serve.p99_ms", 1048.9132, "1,048.91"),
    ("serve.errors", 0, "0"),
    ("labeling.rows_kept", 16342, "16,342"),
    ("labeling.kept_fraction", 0.8171, "0.8171"),
    ("labeling.rows_per_s", 212.4391, "212.44"),
    ("timings_s.total", 484.6, "484.60"),
    ("quality.oracle_auc", float("nan"), "NaN"),
    ("serve.max_replicas", None, "—"),
    ("serve.bid_ms.128.bids", 200, "200"),
    ("serve.bid_ms.1024.no_bids", 7, "7"),
    ("serve.bid_saturation.bids_per_s_per_core", 80.12, "80.12"),
    ("serve.bid_saturation.cores", 2, "2"),
    ("serve.bid_tmax_ms", 100, "100"),
])
def test_format_value(key, value, text):
    assert format_value(key, value) == text


def test_lookup_finds_reasons_wherever_they_are():
    report = {"quality": {"oracle_auc": None, "null_reasons": {"oracle_auc": "no true probability"},
                          "student_int8": None, "student_int8_reason": "int8 export failed"},
              "serve": {"max_replicas": None, "max_replicas_reason": "no replica counts", "p50_ms": 3.2},
              "size_mb": {"teacher": None}, "null_reasons": {"size_mb.teacher": "on object storage"}}
    assert lookup(report, "serve.p50_ms") == (3.2, None)
    assert lookup(report, "quality.oracle_auc") == (None, "no true probability")
    assert lookup(report, "quality.student_int8.auc") == (None, "int8 export failed")
    assert lookup(report, "serve.max_replicas") == (None, "no replica counts")
    assert lookup(report, "size_mb.teacher") == (None, "on object storage")
    assert lookup(report, "labeling.rows_in") == (None, "not in report.json")
    assert lookup({"serve": {"rps": None}}, "serve.rps") == (None, "null in report.json, no reason given")


def test_flatten_skips_lists_and_reasons():
    flat = flatten(sample_report())
    assert flat["quality.student.auc"] == 0.731532 and flat["serve.bid_ms.1024.p99"] == 30.2
    assert not any(k.endswith("_reason") or "null_reasons" in k for k in flat)
    assert "serve.latency_hist_ms" not in flat and "quality.skipped" not in flat
    assert "serve.bid_saturation.levels" not in flat


# ----------------------------------------------------------------------------------------- charts

def _model_predictions(table: pa.Table) -> tuple:
    y = table["click"].to_numpy().astype(float)
    return y, {m: (y, table[m].to_numpy()) for m in table.column_names if m != "click"}, []


def test_charts_are_deterministic_well_formed_svg():
    predictions = sample_predictions(500)
    first = build_charts(sample_report(), _model_predictions(predictions), {})
    assert set(first) == CHARTS
    assert first == build_charts(sample_report(), _model_predictions(predictions), {})  # same input, same bytes
    for svg_text in first.values():
        assert ET.fromstring(svg_text.encode()).tag == "{http://www.w3.org/2000/svg}svg"
        element = inline(svg_text)
        assert element.startswith("<svg ") and "http" not in element and "xmlns" not in element


def test_chart_text_is_text_and_escaped():
    y = np.array([0, 1, 0, 1, 0, 0])
    p = np.array([0.1, 0.8, 0.3, 0.6, 0.2, 0.4])
    svgs = build_charts({}, (y, {"a & b <c>": (y, p)}, []), {})
    texts = "".join(ET.fromstring(svgs["roc"].encode()).itertext())
    assert "ROC on the test split" in texts and "a & b <c> (AUC 1.0000)" in texts  # escaped in the markup


# ------------------------------------------------------------------------------------ the page

def test_report_shows_every_figure_of_report_json(tmp_path):
    report = sample_report()
    run = write_run(tmp_path / "run", report, sample_predictions())
    path = write_report(str(run))
    assert path == str(run / "report.html")
    page = Path(path).read_text()
    parsed = parse(page)
    shown: dict[str, list[tuple[dict, str]]] = {}
    for key, attrs, text in parsed.figures:
        shown.setdefault(key, []).append((attrs, text))

    flat = flatten(report)
    assert len(flat) > 50
    for key, value in flat.items():
        if isinstance(value, str):
            continue
        assert key in shown, f"{key} missing from the page"
        for attrs, text in shown[key]:
            if value is None:
                _, why = lookup(report, key)
                assert attrs.get("data-null") == "true" and why in text, key
            else:
                assert text == format_value(key, value), f"{key}: page {text!r}, report.json {value!r}"

    # spelled out by hand, so a wrong formatter cannot agree with itself
    by_key = {k: v[0][1] for k, v in shown.items()}
    assert by_key["quality.student.auc"] == "0.7315"
    assert by_key["quality.distillation_efficiency"] == "0.9834"
    assert by_key["quality.lift_auc"] == "+0.0303"
    assert by_key["latency_ms.student_int8.p50"] == "1.87"
    assert by_key["labeling.rows_kept"] == "16,342"
    assert "no true click probability in these logs" in by_key["quality.oracle_auc"]
    assert "no hidden clicks" in by_key["quality.strict_lift"]
    assert "returned no replica counts" in by_key["serve.max_replicas"]

    # self-contained: nothing to fetch, no scripts, no stylesheets from elsewhere
    assert "http://" not in page and "https://" not in page
    # the charts' only references are in-document ones (clip paths, markers: "#id")
    assert all(r.startswith("#") for r in parsed.resources) and "@import" not in page
    assert all(ref.startswith("url(#") for ref in re.findall(r"url\([^)]*", page))
    assert "script" not in parsed.tags and "link" not in parsed.tags

    assert parsed.tags.count("svg") == len(CHARTS)
    assert {p.stem for p in (run / "plots").glob("*.svg")} == CHARTS
    for p in (run / "plots").glob("*.svg"):
        ET.parse(p)
    roc_text = "".join(ET.parse(run / "plots" / "roc.svg").getroot().itertext())
    for name in ("Teacher", "Distilled student", "Click-only student", "ONNX INT8"):
        assert name in roc_text
    # these predictions are not the rows report.json's AUCs came from, and the page says so
    assert "predictions.parquet gives AUC" in page


def test_consistent_run_has_no_warnings_and_legend_matches_table(tmp_path):
    predictions = sample_predictions()
    report = sample_report(predictions)
    run = write_run(tmp_path / "run", report, predictions)
    page = Path(write_report(str(run))).read_text()
    assert "predictions.parquet gives AUC" not in page
    roc_text = "".join(ET.parse(run / "plots" / "roc.svg").getroot().itertext())
    assert f"Teacher (AUC {report['quality']['teacher']['auc']:.4f})" in roc_text
    hist_text = "".join(ET.parse(run / "plots" / "serve_latency.svg").getroot().itertext())
    assert f"p99 {report['serve']['p99_ms']:,.2f} ms" in hist_text


def test_report_without_predictions_or_most_figures(tmp_path):
    run = write_run(tmp_path / "run", {"quality": {"teacher": {"auc": 0.7}}, "labeling": {"rows_in": 10}})
    page = Path(write_report(str(run))).read_text()
    figures = {k: t for k, _, t in parse(page).figures}
    assert figures["quality.teacher.auc"] == "0.7000"
    assert "not in report.json" in figures["quality.student_int8.auc"]
    assert "not in report.json" in figures["serve.p99_ms"]
    assert "not in report.json" in figures["serve.bid_ms.128.p99"]
    assert "not in report.json" in figures["serve.bid_saturation.bids_per_s_per_core"]
    assert "predictions.parquet absent" in page
    assert not (run / "plots" / "roc.svg").exists()


def test_bad_predictions_cost_only_their_charts(tmp_path):
    bad = pa.table({"clicked": [0, 1], "teacher": [0.2, 0.8]})
    run = write_run(tmp_path / "run", sample_report(), bad)
    page = Path(write_report(str(run))).read_text()
    assert "column click missing" in page
    assert not (run / "plots" / "roc.svg").exists()
    assert (run / "plots" / "timings.svg").exists()
    assert {k for k, _, _ in parse(page).figures} >= {"quality.student.auc", "serve.p50_ms"}


def test_predictions_with_gaps_and_bad_columns(tmp_path):
    table = sample_predictions(400)
    teacher = table["teacher"].to_numpy().copy()
    teacher[:10] = np.nan
    table = table.set_column(table.column_names.index("teacher"), "teacher", pa.array(teacher))
    table = table.append_column("student_fp32", pa.array(np.full(400, 1.5)))
    run = write_run(tmp_path / "run", sample_report(), table)
    page = Path(write_report(str(run))).read_text()
    assert "teacher: 10 rows without a probability left out" in page
    assert "student_fp32: probabilities outside [0, 1]" in page
    assert (run / "plots" / "roc.svg").exists()


def test_run_dir_as_uri(tmp_path):
    run = write_run(tmp_path / "run", sample_report())
    path = write_report(f"file://{run}")
    assert path == f"file://{run}/report.html"
    assert 'data-key="serve.p50_ms"' in (run / "report.html").read_text()
    assert (run / "plots" / "timings.svg").exists()


def test_missing_report_json_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.json"):
        write_report(str(tmp_path))


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium absent (apt-get install chromium to render)")
def test_report_renders_in_headless_chromium(tmp_path):
    predictions = sample_predictions(1000)
    report = sample_report(predictions)
    run = write_run(tmp_path / "run", report, predictions)
    page = write_report(str(run))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "report.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", "--window-size=1200,3000", f"file://{page}"],
                   check=True, capture_output=True, timeout=120)
    assert shot.stat().st_size > 20_000  # a blank page is a few KB
    dom = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", f"file://{page}"],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    figures = {k: t for k, _, t in parse(dom).figures}
    assert figures["quality.student.auc"] == f"{report['quality']['student']['auc']:.4f}"
    assert figures["latency_ms.student_int8.p50"] == "1.87"
    assert parse(dom).tags.count("svg") == len(CHARTS)


def test_missing_design_keys_names_absent_and_null_figures():
    from distillery.pipeline_stages import DESIGN_KEYS, missing_design_keys

    full: dict = {}
    for key in DESIGN_KEYS:
        node = full
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = 1.0
    full["timings_s"] = {"data": 0.5}
    assert missing_design_keys(full, ("data",)) == []
    assert missing_design_keys(full, ("data", "serve")) == ["timings_s.serve"]
    full["serve"]["rps"] = None
    del full["quality"]["teacher"]["auc"]
    assert missing_design_keys(full, ("data",)) == ["quality.teacher.auc", "serve.rps"]
    assert missing_design_keys(full, ("data",), allow_null=True) == ["quality.teacher.auc"]


def test_tile_is_light_load_bid_latency_with_saturation_beside(tmp_path):
    """The headline serving tile is a bid's p99 at 128 candidates at light load, with the sample it
    stands on and the saturation throughput beside it; /predict's queueing figures are labelled as
    at saturation, and every measured candidate count has its row."""
    report = sample_report()
    page = Path(write_report(str(write_run(tmp_path / "run", report)))).read_text()
    cards = page[page.index('<div class="cards">'):page.index('<div class="tables">')]
    assert "Bid p99 at 128 candidates, light load, ms" in cards and "Serving p99" not in cards
    shown = {k: t for k, _, t in parse(cards).figures}
    assert shown["serve.bid_ms.128.p99"] == "9.44" and shown["serve.bid_ms.128.requests"] == "200"
    assert shown["serve.bid_saturation.bids_per_s_per_core"] == "80.12"
    assert "serve.p99_ms" not in shown
    assert re.search(r"Saturation: <span[^>]*>80\.12</span> bids/s per core at 128", cards)
    serving = page[page.index('id="serving"'):page.index('id="timings"')]
    assert "/predict p99 at saturation (8 clients), ms" in serving
    rows = re.findall(r"<tr><th scope=row>(\d+)</th>(.*?)</tr>", serving)
    assert [n for n, _ in rows] == ["1", "8", "128", "1024"]  # by count, not as text
    cells = {n: [t for _, _, t in parse(f"<table><tr>{body}</tr></table>").figures] for n, body in rows}
    assert cells["1024"] == ["14.80", "30.20", "187", "180", "7", "0"]
    assert "Bids/s per core" in serving and "160.24" in serving


def test_tile_without_bids_says_why(tmp_path):
    report = sample_report()
    report["serve"]["bid_ms"] = {"128": {"p50": None, "p99": None, "p99_reason": "no bids with 128 candidates were timed"}}
    del report["serve"]["bid_saturation"]
    page = Path(write_report(str(write_run(tmp_path / "run", report)))).read_text()
    shown = {k: (a, t) for k, a, t in parse(page).figures}
    attrs, text = shown["serve.bid_ms.128.p99"]
    assert attrs.get("data-null") == "true" and "no bids with 128 candidates were timed" in text
    assert "not in report.json" in shown["serve.bid_ms.1024.p99"][1]  # a contract count still gets its row
    assert "not in report.json" in shown["serve.bid_saturation.bids_per_s_per_core"][1]


def test_fill_nulls_gives_every_bid_count_a_reason(tmp_path):
    from distillery.pipeline_stages import DESIGN_KEYS, _fill_nulls, missing_design_keys

    assert {f"serve.bid_ms.{n}.{k}" for n in (1, 8, 128, 1024) for k in ("p50", "p99")} <= set(DESIGN_KEYS)
    run = tmp_path / "run"
    run.mkdir()
    partial = {"serve": {"p50_ms": 1.0, "bid_ms": {"8": {"p50": 2.0, "p99": 3.0, "requests": 200}}}}
    (run / "report.json").write_text(json.dumps(partial))
    _fill_nulls(str(run), partial)
    report = json.loads((run / "report.json").read_text())
    bids = report["serve"]["bid_ms"]
    assert bids["8"] == {"p50": 2.0, "p99": 3.0, "requests": 200}
    assert bids["128"]["p99"] is None and "128 candidates" in bids["128"]["p99_reason"]
    missing = missing_design_keys(report, allow_null=True)
    assert not [k for k in missing if k.startswith("serve.")]
    assert "serve.bid_ms.128.p99" in missing_design_keys(report)


def test_a_student_that_learned_nothing_is_said_so_at_the_top(tmp_path):
    """Issue 27: a student whose test AUC interval holds 0.5, or whose scores are near constant, gets a
    headline in a user's words (clicks seen, clicks roughly needed and why) in report.json and at the
    top of the page, instead of a gate traceback or a table of noise."""
    from distillery.report import learning_warnings

    preds = sample_predictions(2000, seed=3)
    cols = {name: preds[name] for name in preds.column_names}
    cols["student_int8"] = pa.array(np.full(2000, 0.006) + np.random.default_rng(0).normal(0, 1e-6, 2000))
    report = sample_report()
    report["quality"]["student"].update(auc=0.53, auc_ci=[0.41, 0.65])
    report["quality"]["teacher"]["auc_ci"] = [0.70, 0.78]
    report["data"] = {"train_rows": 5000, "train_clicks": 32, "test_rows": 2000, "test_clicks": 12}
    run_dir = write_run(tmp_path / "run", report, pa.table(cols))
    html_text = Path(write_report(str(run_dir))).read_text()
    saved = json.loads((run_dir / "report.json").read_text())
    warned = {w["model"]: w for w in saved["warnings"]}
    assert set(warned) == {"student", "student_int8"}  # the teacher's interval is clear of 0.5
    student, int8 = warned["student"], warned["student_int8"]
    assert student["auc_ci"] == [0.41, 0.65] and student["train_clicks"] == 32
    # interval half-width 0.12 -> 0.05 needs (0.12 / 0.05)^2 = 5.76x the clicks: ~180 train clicks
    assert student["needed_train_clicks"] == 180 and "1/√clicks" in student["text"]
    assert "32 clicks in 5,000 training rows" in student["text"] and "includes 0.5" in student["text"]
    assert int8["prob_std"] < 1e-4 and "almost the same probability" in int8["text"]
    assert saved["headline"] == saved["warnings"][0]["text"]
    top = html_text.index('id="headline"')
    assert top < html_text.index('id="quality"') and "What this log could teach" in html_text
    assert all(html_text.index(f'data-key="warnings.{i}"') > top for i in range(2))

    healthy = sample_report(sample_predictions(2000))
    for m in ("teacher", "student", "student_int8"):
        healthy["quality"][m]["auc_ci"] = [0.70, 0.80]
    assert learning_warnings(healthy, None) == []


def test_report_shows_the_students_training_budgets(tmp_path):
    import json

    from distillery.pipeline_stages import _budgets

    for model, steps, epochs in (("student", 416, 1), ("student_direct", 416, 4)):
        (tmp_path / model).mkdir()
        (tmp_path / model / "training_summary.json").write_text(json.dumps(
            {"optimizer_steps": steps, "batch_rows": 32, "history": [{}] * epochs}))
    assert _budgets(str(tmp_path)) == {"student": {"optimizer_steps": 416, "batch_rows": 32, "epochs": 1},
                                       "student_direct": {"optimizer_steps": 416, "batch_rows": 32, "epochs": 4}}
    assert _budgets(str(tmp_path / "nothing")) == {}
