"""The run report: one self-contained `report.html` (inline SVG charts, no external resources) from a run dir.

    python -c "from distillery.report import write_report; print(write_report('runs/demo'))"

Reads `<run_dir>/report.json` (the keys of `pipeline_stages.DESIGN_KEYS`; any figure may be null, explained by a sibling
`<name>_reason` or a `null_reasons` dict) and, when present, `<run_dir>/plots/predictions.parquet`
(test split: `click` 0/1 plus one probability column per model). Writes `<run_dir>/report.html`
and a copy of each chart as `<run_dir>/plots/<chart>.svg`.

Every figure from report.json is printed in an element carrying `data-key="<dotted key>"`, formatted
by `format_value`, so tests (and people) can check the page against the JSON.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from typing import Any

import numpy as np

from distillery import io
from distillery import report_charts as charts
from distillery.loadtest import BID_COUNTS

__all__ = ["write_report", "render_html", "format_value", "lookup", "flatten", "load_predictions", "learning_warnings"]

_FOUR_DECIMALS = ("auc", "logloss", "ece", "efficiency", "lift", "fraction", "rate", "mean_prob")
_COUNTS = ("errors", "max_replicas", "requests", "concurrency", "candidates_per_request", "replicas", "bids",
           "no_bids", "cores", "candidates", "tmax_ms", "bid_tmax_ms")
_TILE_BIDS = 128  # candidates per bid of the headline tile (one of the report contract's counts)


# ------------------------------------------------------------------------------- figures and keys

def format_value(key: str, value: Any) -> str:
    """How the report prints the figure at dotted `key`: quality metrics, fractions and rates with 4
    decimals (lifts signed), counts as integers with thousands separators, everything else
    (ms, MB, seconds, rows/s) with 2 decimals. None prints as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, list) and key.endswith("_ci") and len(value) == 2:  # a confidence interval
        return " – ".join(format_value(key[:-3], v) for v in value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    if not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("∞" if value > 0 else "−∞")
    leaf = key.rsplit(".", 1)[-1]
    is_count = (leaf != "rows_per_s" and (leaf.startswith("rows") or leaf.endswith("_rows"))) \
        or leaf in _COUNTS or ".statuses." in key
    if is_count and float(value).is_integer():
        return f"{int(value):,}"
    if any(part in leaf for part in _FOUR_DECIMALS) or (key.startswith("quality.") and leaf != "seconds"):
        return f"{value:+.4f}" if "lift" in leaf else f"{value:.4f}"
    return f"{value:,.2f}"


def _node(report: Any, parts: list[str]) -> Any:
    for part in parts:
        if not isinstance(report, dict):
            return None
        report = report.get(part)
    return report


def _reason(report: dict[str, Any], parts: list[str]) -> str | None:
    """Why `parts` (or the nearest of its ancestors) is null: `<name>_reason` beside it, or a
    `null_reasons` dict at any level above it, keyed by the rest of the dotted path."""
    for k in range(len(parts), 0, -1):
        parent = _node(report, parts[:k - 1])
        if isinstance(parent, dict) and parent.get(f"{parts[k - 1]}_reason"):
            return str(parent[f"{parts[k - 1]}_reason"])
        for j in range(k - 1, -1, -1):
            reasons = _node(report, parts[:j] + ["null_reasons"])
            if isinstance(reasons, dict) and reasons.get(".".join(parts[j:k])):
                return str(reasons[".".join(parts[j:k])])
    return None


def lookup(report: dict[str, Any], key: str) -> tuple[Any, str | None]:
    """(value, None) for a figure that is there; (None, why) for one that is null or missing."""
    parts = key.split(".")
    value = _node(report, parts)
    if value is not None:
        return value, None
    why = _reason(report, parts)
    if why:
        return None, why
    parent = _node(report, parts[:-1])
    present = isinstance(parent, dict) and parts[-1] in parent
    return None, "null in report.json, no reason given" if present else "not in report.json"


def flatten(report: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted key → scalar for every figure (lists, `*_reason` and `null_reasons` left out)."""
    out: dict[str, Any] = {}
    for k, v in report.items():
        key = f"{prefix}{k}"
        if k == "null_reasons" or k.endswith("_reason") or isinstance(v, list):
            continue
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------------- predictions

def load_predictions(run_dir: str) -> charts.Predictions | None:
    """`(clicks (n,), {model: (clicks (m,), probabilities (m,))}, notes)` from `plots/predictions.parquet`,
    or None when the file is absent. A model column with missing values loses those rows (noted);
    one with values outside [0, 1] is left out (noted)."""
    import pyarrow.parquet as pq

    path = io.join(run_dir, "plots", "predictions.parquet")
    if not io.exists(path):
        return None
    fs, inner = io.filesystem(path)
    table = pq.read_table(inner, filesystem=fs)
    if "click" not in table.column_names:
        raise ValueError(f"{path}: column click missing (columns: {table.column_names})")
    y = table["click"].to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{path}: click must be 0/1 on every row")
    models: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    notes = []
    for name in table.column_names:
        if name == "click":
            continue
        p = table[name].to_numpy(zero_copy_only=False).astype(np.float64)
        ok = np.isfinite(p)
        if (p[ok] < 0).any() or (p[ok] > 1).any():
            notes.append(f"{name}: probabilities outside [0, 1]; left out of the charts")
            continue
        if not ok.all():
            notes.append(f"{name}: {int((~ok).sum()):,} rows without a probability left out")
        models[name] = (y[ok], p[ok])
    return y, models, notes


# ------------------------------------------------------------------------------------ headline

CONSTANT_STD = 1e-4  # std of a student's test probabilities below which it gives every ad the same score
TARGET_AUC_GAIN = 0.05  # the gain over chance (AUC 0.55) a log must be able to show to be worth serving
_SERVED_FIRST = ("student_int8", "student_fp32", "student")


def learning_warnings(report: dict[str, Any], predictions: charts.Predictions | None) -> list[dict[str, Any]]:
    """One entry per student that learned nothing the test can see: its test AUC interval holds 0.5,
    or its probabilities are near constant (std < CONSTANT_STD). Each says, in a user's words, how many
    train clicks it saw (`data.train_clicks`) and roughly how many it needs, and on what basis: an
    AUC interval narrows as 1/√clicks (Hanley & McNeil), so to exclude chance at a gain of
    TARGET_AUC_GAIN the clicks must grow by (half-width / gain)², train and test alike."""
    q, data = report.get("quality") or {}, report.get("data") or {}
    scored = predictions[1] if predictions else {}
    out = []
    teacher_at_chance = _at_chance(q.get("teacher"))
    for model in _SERVED_FIRST:
        m = q.get(model) if isinstance(q.get(model), dict) else None
        at_chance = _at_chance(m)
        std = float(np.std(scored[model][1])) if model in scored and len(scored[model][1]) else None
        constant = std is not None and std < CONSTANT_STD
        if at_chance or constant:
            out.append(_learned_nothing(model, m or {}, m["auc_ci"] if at_chance else None, std if constant else None,
                                        data, teacher_at_chance))
    return out


def _at_chance(m: Any) -> bool:
    """Whether a model's test AUC interval holds 0.5."""
    ci = m.get("auc_ci") if isinstance(m, dict) else None
    return isinstance(ci, list) and len(ci) == 2 and None not in ci and ci[0] <= 0.5 <= ci[1]


def _learned_nothing(model: str, m: dict[str, Any], ci: list[float] | None, std: float | None,
                     data: dict[str, Any], teacher_at_chance: bool) -> dict[str, Any]:
    train_clicks, train_rows = data.get("train_clicks"), data.get("train_rows")
    teacher = " The teacher's interval holds 0.5 too: it had nothing to pass on." if teacher_at_chance else ""
    saw = (f"It saw {train_clicks:,} clicks in {train_rows:,} training rows." if train_clicks is not None and train_rows
           else "The run did not record its training clicks.")
    why = []
    if ci is not None:
        why.append(f"its test AUC {format_value('auc', m.get('auc'))} (interval {format_value('auc', ci[0])} – "
                   f"{format_value('auc', ci[1])}) includes 0.5, a coin flip")
    if std is not None:
        why.append(f"it gives every ad almost the same probability (std {std:.1e})")
    entry = {"kind": "learned_nothing", "model": model, "train_clicks": train_clicks, "train_rows": train_rows,
             "auc": m.get("auc"), "auc_ci": ci, "prob_std": std}
    need = ""
    half = (ci[1] - ci[0]) / 2 if ci is not None else None
    if half and train_clicks:
        factor = max((half / TARGET_AUC_GAIN) ** 2, 1.0)
        entry["needed_train_clicks"] = int(round(train_clicks * factor, -1 if train_clicks * factor < 1000 else -2))
        rate = train_clicks / train_rows if train_rows else None
        rows = f" (about {int(round(entry['needed_train_clicks'] / rate, -3)):,} rows at this click rate)" if rate else ""
        need = (f" To show an AUC of {0.5 + TARGET_AUC_GAIN:.2f} apart from chance, its interval must shrink from "
                f"±{half:.2f} to ±{TARGET_AUC_GAIN:.2f}; intervals narrow as 1/√clicks, so at least about "
                f"{entry['needed_train_clicks']:,} training clicks{rows}, with the test split grown alike.")
        entry["basis"] = (f"test AUC interval half-width {half:.3f} at {train_clicks} train clicks, scaled by "
                          f"(half-width / {TARGET_AUC_GAIN})² (AUC standard error ∝ 1/√clicks, Hanley & McNeil 1982)")
    elif std is not None:
        need = " A student needs at least a few thousand training clicks before its scores separate ads (rule of thumb)."
        entry["basis"] = "rule of thumb: no test interval to scale from"
    entry["text"] = (f"The student ({charts.label(model)}) learned nothing this test can see: {' and '.join(why)}."
                     f"{teacher} {saw}{need} The figures below are noise at this size.")
    return entry


# -------------------------------------------------------------------------------------- output

def write_report(run_dir: str) -> str:
    """Render `<run_dir>/report.html` and `<run_dir>/plots/*.svg`; returns the HTML's path."""
    report_path = io.join(run_dir, "report.json")
    if not io.exists(report_path):
        raise FileNotFoundError(f"{report_path}: no report.json to render (run the evaluate stage first)")
    report = io.read_json(report_path)
    if not isinstance(report, dict):
        raise ValueError(f"{report_path}: top level must be an object, got {type(report).__name__}")
    notes: dict[str, str] = {}
    try:
        predictions = load_predictions(run_dir)
    except (ValueError, OSError) as err:  # a bad predictions file costs the two charts, not the report
        predictions, notes["predictions"] = None, str(err)
    report["warnings"] = learning_warnings(report, predictions)
    report["headline"] = report["warnings"][0]["text"] if report["warnings"] else None
    io.write_json(report_path, report)  # the headline is a figure too: other tools read it from report.json
    figures = charts.build_charts(report, predictions, notes)
    for name, svg in figures.items():
        io.write_bytes(io.join(run_dir, "plots", f"{name}.svg"), svg.encode())
    inline = {name: charts.inline(svg) for name, svg in figures.items()}
    out = io.join(run_dir, "report.html")
    io.write_bytes(out, render_html(report, inline, notes, run_dir).encode())
    return out


def _cell(report: dict[str, Any], key: str, tag: str = "td", cls: str = "num") -> str:
    """One figure in an element carrying its key; a null shows its reason instead of a number."""
    value, why = lookup(report, key)
    attr = html.escape(key)
    if value is None:
        return (f'<{tag} class="{cls} null" data-key="{attr}" data-null="true"><span class="dash">—</span> '
                f'<span class="reason">{html.escape(why or "")}</span></{tag}>')
    return f'<{tag} class="{cls}" data-key="{attr}">{html.escape(format_value(key, value))}</{tag}>'


def _table(report: dict[str, Any], head: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """`rows`: (row label, [dotted keys]); a key of "" leaves the cell empty."""
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(f"<tr><th scope=row>{html.escape(label)}</th>"
                   + "".join(_cell(report, k) if k else "<td></td>" for k in keys) + "</tr>" for label, keys in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _figure(figures: dict[str, str], notes: dict[str, str], name: str) -> str:
    note = f'<p class="note">{html.escape(notes[name])}</p>' if name in notes else ""
    return f'<figure id="fig-{name}">{figures.get(name, "")}{note}</figure>' if name in figures or note else ""


def _lift_key(report: dict[str, Any]) -> str:
    q = report.get("quality") or {}
    return next((f"quality.{k}" for k in ("lift", "lift_auc") if k in q), "quality.lift")


def _rows(report: dict[str, Any], section: str, labels: dict[str, str], required: tuple[str, ...] = ()
          ) -> list[tuple[str, list[str]]]:
    """One table row per `labels` key that the section has, or that `pipeline_stages.DESIGN_KEYS` requires (then a
    missing one shows why)."""
    part = _node(report, section.split(".")) or {}
    return [(label, [f"{section}.{k}"]) for k, label in labels.items() if k in part or k in required]


def _grid(*parts: str) -> str:
    return f'<div class="grid">{"".join(parts)}</div>'


def _quality(report: dict[str, Any], figures: dict[str, str], notes: dict[str, str]) -> str:
    cards = [("Distillation efficiency (INT8 AUC / teacher AUC)", "quality.distillation_efficiency"),
             ("Lift over click-only student (AUC)", _lift_key(report)),
             ("INT8 student p50 latency, ms", "latency_ms.student_int8.p50"),
             (f"Bid p99 at {_TILE_BIDS} candidates, light load, ms", f"serve.bid_ms.{_TILE_BIDS}.p99")]
    headline = _rows(report, "quality", {
        "distillation_efficiency": "Distillation efficiency",
        "gain_retention": "Gain retention ((student − 0.5) / (teacher − 0.5))",
        "distillation_efficiency_student": "Distillation efficiency, FP32 student"}, ("distillation_efficiency",))
    headline += [("Lift over click-only student (AUC)", [_lift_key(report)])]
    headline += _rows(report, "training.student", {"optimizer_steps": "Optimizer steps, distilled student"})
    headline += _rows(report, "training.student_direct", {"optimizer_steps": "Optimizer steps, click-only student"})
    headline += _rows(report, "quality", {"strict_lift": "Strict lift over click-only student",
                                          "oracle_auc": "Oracle AUC (true click probability)",
                                          "test_rows": "Test rows", "click_rate": "Click rate"}, ("oracle_auc",))
    q = report.get("quality") or {}
    level = f"{round(100 * ((q.get('bootstrap') or {}).get('level') or 0.95))}% CI"
    headline += _rows(report, "quality", {"test_clicks": "Test clicks"})
    headline += _rows(report, "quality", {"distillation_efficiency_ci": f"Distillation efficiency, {level}",
                                          "gain_retention_ci": f"Gain retention, {level}",
                                          "lift_auc_ci": f"Lift over click-only student, {level}"})
    models = charts.quality_models(report)
    with_ci = any(isinstance(q.get(m), dict) and "auc_ci" in q[m] for m in models)
    per_model = [(charts.label(m), [f"quality.{m}.{k}" for k in ("auc", *(("auc_ci",) if with_ci else ()),
                                                                  "logloss", "ece")]) for m in models]
    card_html = "".join(f'<div class="card"><div class="label">{html.escape(label)}</div>'
                        f'{_cell(report, key, "div", "big")}{_card_ci(report, key, level)}{_card_beside(report, key)}</div>'
                        for label, key in cards)
    problems = f'<p class="note">Predictions: {html.escape(notes["predictions"])}</p>' if "predictions" in notes else ""
    warning = (f'<p class="warn" data-key="quality.few_clicks_warning">{html.escape(str(q["few_clicks_warning"]))}</p>'
               if q.get("few_clicks_warning") else "")
    return (warning + f'<div class="cards">{card_html}</div>'
            f'<div class="tables">{_table(report, ["Figure", "Value"], headline)}'
            f'{_table(report, ["Model", "AUC", *((level,) if with_ci else ()), "Log loss", "ECE"], per_model)}</div>'
            + _grid(_figure(figures, notes, "roc"), _figure(figures, notes, "reliability")) + problems)


def _card_ci(report: dict[str, Any], key: str, level: str) -> str:
    """The confidence interval under a headline card, when evaluation computed one."""
    value = _node(report, f"{key}_ci".split("."))
    if not isinstance(value, list):
        return ""
    return (f'<div class="ci" data-key="{html.escape(key)}_ci">{html.escape(level)} '
            f'{html.escape(format_value(key + "_ci", value))}</div>')


def _card_beside(report: dict[str, Any], key: str) -> str:
    """Under the light-load bid tile: the saturation figure at the same candidate count, so neither
    is read as the other."""
    if key != f"serve.bid_ms.{_TILE_BIDS}.p99":
        return ""
    n = _node(report, ["serve", "bid_saturation", "candidates"]) or _TILE_BIDS
    sample = (f'<div class="ci">p99 of {_cell(report, f"serve.bid_ms.{_TILE_BIDS}.requests", "span", "num")} bids</div>'
              if _node(report, ["serve", "bid_ms", str(_TILE_BIDS), "requests"]) is not None else "")
    return sample + (f'<div class="ci">Saturation: {_cell(report, "serve.bid_saturation.bids_per_s_per_core", "span", "num")} '
                     f'bids/s per core at {html.escape(format_value("candidates", n))}</div>')


def _speed(report: dict[str, Any], figures: dict[str, str], notes: dict[str, str]) -> str:
    rows = [(charts.label(m), [f"size_mb.{m}", f"latency_ms.{m}.p50", f"latency_ms.{m}.p99"])
            for m in ("teacher", "student_fp32", "student_int8")]
    return _grid(_table(report, ["Model", "Size, MB", "p50, ms", "p99, ms"], rows),
                 _figure(figures, notes, "latency_size"))


def _labeling(report: dict[str, Any], figures: dict[str, str], notes: dict[str, str]) -> str:
    rows = _rows(report, "labeling", {
        "rows_in": "Rows in", "rows_labeled": "Rows labeled", "rows_kept": "Rows kept",
        "rows_rejected": "Rows rejected",
        "kept_fraction": "Kept fraction", "rows_per_s": "Throughput, rows/s"},
        ("rows_in", "rows_labeled", "rows_kept", "rows_per_s"))
    return _grid(_table(report, ["Figure", "Value"], rows), _figure(figures, notes, "labeling"))


def _serving(report: dict[str, Any], figures: dict[str, str], notes: dict[str, str]) -> str:
    sv = report.get("serve") or {}
    clients = format_value("serve.concurrency", sv.get("concurrency")) if sv.get("concurrency") else "C"
    required = ("p50_ms", "p99_ms", "rps", "errors", "max_replicas")
    rows = _rows(report, "serve", {"p50_ms": f"/predict p50 at saturation ({clients} clients), ms",
                                   "p99_ms": f"/predict p99 at saturation ({clients} clients), ms",
                                   "rps": "/predict requests/s at saturation", "rows_per_s": "Rows scored/s",
                                   "errors": "Errors (all load tests)", "max_replicas": "Max replicas"}, required)
    load = _rows(report, "serve", {"requests": "/predict requests",
                                   "candidates_per_request": "Candidate ads per /predict request",
                                   "concurrency": "/predict concurrent connections"})
    load += [(f"/predict HTTP {code} answers", [f"serve.statuses.{code}"]) for code in (sv.get("statuses") or {})]
    return (_grid(_table(report, ["/predict at saturation", "Value"], rows), _figure(figures, notes, "serve_latency"))
            + _grid(_bid_table(report), _figure(figures, notes, "bid_latency"))
            + _grid(_saturation_table(report), _figure(figures, notes, "replicas"))
            + (_grid(_table(report, ["Load test", "Value"], load), "") if load else ""))


def _bid_counts(report: dict[str, Any]) -> list[str]:
    """Candidate counts of `serve.bid_ms`: the report contract's, then any other measured, ascending."""
    bids = _node(report, ["serve", "bid_ms"])
    found = [k for k, v in bids.items() if isinstance(v, dict) and k.isdigit()] if isinstance(bids, dict) else []
    return sorted({*map(str, BID_COUNTS), *found}, key=int)


def _bid_table(report: dict[str, Any]) -> str:
    """Light-load bid latency by number of eligible candidates, with the sample behind each p99."""
    cols = (("p50", "p50, ms"), ("p99", "p99, ms"), ("requests", "Bids timed"), ("bids", "Bids"),
            ("no_bids", "No-bids"), ("errors", "Errors"))
    rows = [(n, [f"serve.bid_ms.{n}.{k}" if k in ("p50", "p99") or k in (_node(report, ["serve", "bid_ms", n]) or {})
                 else "" for k, _ in cols]) for n in _bid_counts(report)]
    tmax = _node(report, ["serve", "bid_tmax_ms"])
    note = (f'<p class="note">OpenRTB bids over HTTP, one client, one bid at a time on a keep-alive connection; '
            f'every bid a new page and keywords (no request-cache hits); tmax '
            f'{html.escape(format_value("serve.bid_tmax_ms", tmax))} ms. p50 and p99 over every answer, bid or no-bid.</p>')
    return _table(report, ["Candidates (light load)", *(h for _, h in cols)], rows) + note


def _saturation_table(report: dict[str, Any]) -> str:
    """Bids/s at saturation: the headline figure, then every concurrency level the sweep ran."""
    rows = _rows(report, "serve.bid_saturation", {
        "bids_per_s_per_core": "Bids/s per core", "bids_per_s": "Bids/s", "candidates": "Candidates per bid",
        "concurrency": "Clients at that rate", "p99_ms": "p99 at that rate, ms", "cores": "Cores (client and server share them)",
        "tmax_ms": "tmax, ms"}, ("bids_per_s_per_core",))
    levels = _node(report, ["serve", "bid_saturation", "levels"]) or []
    cols = (("concurrency", "Clients"), ("bids_per_s", "Bids/s"), ("p50", "p50, ms"), ("p99", "p99, ms"),
            ("requests", "Requests"), ("no_bids", "No-bids"), ("errors", "Errors"))
    body = "".join("<tr>" + "".join(f'<td class="num">{html.escape(format_value(k, lv.get(k)))}</td>' for k, _ in cols)
                   + "</tr>" for lv in levels if isinstance(lv, dict))
    head = "".join(f"<th>{h}</th>" for _, h in cols)
    sweep = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>" if body else ""
    return _table(report, ["Saturation (bids)", "Value"], rows) + sweep


def _timings(report: dict[str, Any], figures: dict[str, str], notes: dict[str, str]) -> str:
    rows = [(stage, [f"timings_s.{stage}"]) for stage in charts.stage_order(report)]
    return _grid(_table(report, ["Stage", "Seconds"], rows), _figure(figures, notes, "timings"))


_SECTIONS = (("quality", "Quality on the held-out test split", _quality),
             ("speed", "Latency and size (batch 1, in process, this host)", _speed),
             ("labeling", "Teacher labeling", _labeling),
             ("serving", "Serving (Ray Serve, INT8 student, over HTTP on this host)", _serving),
             ("timings", "Stage timings", _timings))


def render_html(report: dict[str, Any], figures: dict[str, str], notes: dict[str, str], run_dir: str) -> str:
    """The whole page as one string: CSS inline, charts inline (`figures`: {name: inline <svg>}),
    no external references."""
    body = _headline(report) + "".join(
        f'<section id="{sid}"><h2>{html.escape(heading)}</h2>{build(report, figures, notes)}</section>'
        for sid, heading, build in _SECTIONS)
    everything = [(key, [key]) for key in flatten(report)]
    appendix = (f'<section id="all"><details><summary>Every figure in report.json ({len(everything)})</summary>'
                f'{_table(report, ["Key", "Value"], everything)}</details></section>')
    title = html.escape(f"distillery run report — {run_dir.rstrip('/').rsplit('/', 1)[-1]}")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_CSS}</style></head>'
            f'<body><header><h1>{title}</h1><p class="meta">Run directory <code>{html.escape(run_dir)}</code> · '
            f'generated {when} · figures from report.json, charts from plots/predictions.parquet</p></header>'
            f'{body}{appendix}</body></html>')


def _headline(report: dict[str, Any]) -> str:
    """What the run could teach, above every figure, when a student learned nothing."""
    items = "".join(f'<p class="warn" data-key="warnings.{i}">{html.escape(str(w.get("text", "")))}</p>'
                    for i, w in enumerate(report.get("warnings") or []) if isinstance(w, dict))
    return f'<section id="headline"><h2>What this log could teach</h2>{items}</section>' if items else ""


_CSS = """
:root{--ink:#1f2937;--muted:#6b7280;--line:#e5e7eb;--accent:#0072B2}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;color:var(--ink);
margin:0 auto;max-width:1240px;padding:24px 32px;line-height:1.4;background:#fff}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:0 0 12px;padding-bottom:6px;border-bottom:2px solid var(--line)}
.meta{color:var(--muted);margin:0 0 20px;font-size:13px}section{margin:0 0 28px}
.cards{display:grid;grid-template-columns:repeat(4,1fr);gap:12px;margin-bottom:16px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:#f9fafb}
.card .label{font-size:12px;color:var(--muted);margin-bottom:4px}
.card .big{font-size:26px;font-weight:600;font-variant-numeric:tabular-nums}
.card .big.null{font-size:13px;font-weight:400}
.tables,.grid{display:grid;grid-template-columns:1fr 1fr;gap:20px;align-items:start;margin-bottom:12px}
table{border-collapse:collapse;width:100%;font-size:13.5px}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left}
thead th{background:#f3f4f6;font-weight:600}thead th+th{text-align:right}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody th{font-weight:500}.null{color:var(--muted)}.null .reason{font-size:12px;font-style:italic}
figure{margin:0}figure svg{width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
.note{color:var(--muted);font-size:12.5px;margin:6px 0 0}
.warn{background:#fff7ed;border:1px solid #fdba74;border-radius:6px;padding:8px 12px;margin:0 0 12px;font-size:13.5px}
.card .ci{font-size:12px;color:var(--muted);margin-top:2px;font-variant-numeric:tabular-nums}
details summary{cursor:pointer;font-weight:600;margin-bottom:8px}
details td.num,details thead th{text-align:left}details tbody th{font-family:ui-monospace,monospace;font-size:12.5px}
code{background:#f3f4f6;padding:1px 4px;border-radius:3px}
@media (max-width:900px){.cards{grid-template-columns:1fr 1fr}.tables,.grid{grid-template-columns:1fr}}
"""
