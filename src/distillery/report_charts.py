"""The report's charts: ROC, reliability, latency against size, labeling, /predict latency at
saturation, bid latency by number of candidates, replicas and stage timings, drawn with matplotlib.

`build_charts` turns report.json plus the test predictions into `{chart name: SVG document}` and
records in `notes` why a chart is missing or partial; `inline(svg)` is one of those documents as an
element for the HTML page. Figures are built without pyplot (no global figure state, no GUI
backend) and saved as SVG with text kept as text, a fixed id salt per chart and no metadata, so the
same report.json gives the same bytes.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, LogLocator, MaxNLocator, NullLocator, StrMethodFormatter

from distillery.metrics import calibration_bins, roc_auc, roc_points
from distillery.stages import STAGES

__all__ = ["build_charts", "inline", "latency_histogram", "label", "quality_models", "stage_order", "MODEL_LABELS",
           "COLORS", "Predictions"]

MODEL_LABELS = {"teacher": "Teacher", "student": "Distilled student", "student_direct": "Click-only student",
                "student_fp32": "Distilled student, ONNX FP32", "student_int8": "Distilled student, ONNX INT8"}
# Okabe–Ito: distinguishable under the common colour-vision deficiencies.
COLORS = {"teacher": "#0072B2", "student": "#D55E00", "student_direct": "#009E73", "student_int8": "#CC79A7",
          "student_fp32": "#E69F00", "other": "#56B4E9", "grey": "#6b7280", "ink": "#1f2937"}
_DASH = {"student_fp32": (0, (6, 3)), "student_int8": (0, (2, 3))}
_STYLE = {
    "svg.fonttype": "none",  # <text>, not glyph outlines: smaller, selectable, searchable
    "font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans"], "font.size": 10,
    "text.color": COLORS["ink"], "axes.labelcolor": COLORS["ink"], "axes.titleweight": "bold",
    "axes.titlesize": 12, "axes.edgecolor": "#d1d5db", "axes.facecolor": "#fafafa", "axes.grid": True,
    "grid.color": "#e5e7eb", "grid.linewidth": 0.8, "xtick.color": COLORS["grey"], "ytick.color": COLORS["grey"],
    "xtick.major.size": 0, "ytick.major.size": 0, "xtick.minor.size": 0, "ytick.minor.size": 0,
    "legend.fontsize": 9, "legend.framealpha": 0.92, "lines.linewidth": 2,
}
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}  # no timestamp, version or RDF

Predictions = tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], list[str]]


def label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _color(model: str) -> str:
    return COLORS.get(model, COLORS["other"])


def _num(value: Any) -> float | None:
    """A finite number, or None (null, NaN, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def quality_models(report: dict[str, Any]) -> list[str]:
    """The four models of `pipeline_stages.DESIGN_KEYS` (present or not, so a missing one shows its reason), then any
    other model entry under `quality` (a dict holding an auc)."""
    q = report.get("quality") or {}
    known = ["teacher", "student", "student_direct", "student_fp32", "student_int8"]
    out = [m for m in known if m != "student_fp32" or isinstance(q.get(m), dict)]
    return out + [m for m, v in q.items() if m not in known and isinstance(v, dict) and "auc" in v]


def stage_order(report: dict[str, Any]) -> list[str]:
    """Keys of `timings_s` in pipeline order, unknown stages after, `total` last."""
    t = report.get("timings_s") or {}
    names = [s for s in STAGES if s in t] + [s for s in t if s not in STAGES and s != "total"
                                              and not s.endswith("_reason") and s != "null_reasons"]
    return names + (["total"] if "total" in t else [])


def latency_histogram(data: Any, bins: int = 30) -> tuple[np.ndarray, np.ndarray, int]:
    """`(edges (b+1,), counts (b,), overflow)` in ms from per-request latencies or from
    `{"edges": [...], "counts": [...]}`. Raw latencies are binned over [0, p99.5] so one slow
    request does not flatten the rest; `overflow` counts the requests beyond the last edge."""
    if isinstance(data, dict):
        edges = np.asarray(data.get("edges", []), dtype=np.float64)
        counts = np.asarray(data.get("counts", []), dtype=np.float64)
        if len(edges) != len(counts) + 1 or len(counts) == 0:
            raise ValueError(f"serve.latency_hist_ms: {len(edges)} edges need {len(edges) - 1} counts, "
                             f"got {len(counts)}")
        return edges, counts, 0
    values = np.asarray(data, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise ValueError("serve.latency_hist_ms: no finite latencies")
    hi = float(np.quantile(values, 0.995))
    hi = hi if hi > 0 else float(values.max()) or 1.0
    counts, edges = np.histogram(values, bins=bins, range=(0.0, hi))
    return edges, counts.astype(np.float64), int((values > hi).sum())


# ------------------------------------------------------------------------------------ drawing

def _axes(title: str, height: float = 3.8) -> tuple[Figure, Axes]:
    """A 6-inch-wide figure with one titled axes (SVG units: 432 pt wide)."""
    fig = Figure(figsize=(6.0, height), layout="constrained")  # room for every label, whatever its length
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_axisbelow(True)
    return fig, ax


def _thin(xs: np.ndarray, ys: np.ndarray, limit: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` points, ends kept, so a 100k-row ROC stays a small SVG."""
    if len(xs) <= limit:
        return xs, ys
    keep = np.unique(np.linspace(0, len(xs) - 1, limit).round().astype(int))
    return xs[keep], ys[keep]


def _plain_log_ticks(axis: Axis) -> None:
    """A log axis ticked at 1, 2, 5 × 10^k in plain numbers (matplotlib's default labels decades
    only, as 10^k)."""
    axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    axis.set_major_formatter(StrMethodFormatter("{x:g}"))
    axis.set_minor_locator(NullLocator())


def _diagonal(ax: Axes) -> None:
    """y = x: chance for a ROC curve, perfect calibration for a reliability diagram."""
    ax.axline((0, 0), slope=1, color="#9ca3af", linewidth=1, linestyle=(0, (4, 4)))


def _bars(title: str, names: list[str], values: list[float], texts: list[str],
          colors: list[str] | None = None) -> Figure:
    """Horizontal bars, first on top, each annotated with its text; no value axis."""
    fig, ax = _axes(title, height=max(1.6, 0.75 + 0.34 * len(names)))
    bars = ax.barh(names, values, color=colors or COLORS["teacher"], height=0.7)
    ax.bar_label(bars, labels=texts, padding=4)
    ax.invert_yaxis()
    ax.set_xlim(0, max(max(values), 1e-12) * 1.3)  # room for the text right of the longest bar
    ax.xaxis.set_visible(False)
    ax.grid(False)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    return fig


def _roc_chart(report: dict[str, Any], models: dict[str, tuple[np.ndarray, np.ndarray]],
               notes: dict[str, str]) -> Figure | None:
    curves, problems = [], []
    quality = report.get("quality") or {}
    for m, (y, p) in models.items():
        try:
            fpr, tpr = roc_points(y, p)
        except ValueError as err:
            problems.append(f"{m}: {err}")
            continue
        auc = roc_auc(y, p)
        stated = _num((quality.get(m) or {}).get("auc"))
        if stated is not None and abs(stated - auc) > 5e-4:  # the curve and the table must be the same rows
            problems.append(f"{m}: predictions.parquet gives AUC {auc:.4f} but report.json says {stated:.4f}")
        curves.append((m, f"{label(m)} (AUC {auc:.4f})", *_thin(fpr, tpr)))
    if problems:
        notes["roc"] = "; ".join(problems)
    if not curves:
        return None
    fig, ax = _axes("ROC on the test split")
    _diagonal(ax)
    for m, name, fpr, tpr in curves:
        ax.plot(fpr, tpr, label=name, color=_color(m), linestyle=_DASH.get(m, "-"))
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="False positive rate", ylabel="True positive rate")
    ax.legend(loc="lower right")
    return fig


def _reliability_chart(models: dict[str, tuple[np.ndarray, np.ndarray]], notes: dict[str, str]) -> Figure | None:
    bins = {m: calibration_bins(y, p, n_bins=10) for m, (y, p) in models.items() if len(p)}
    if not bins:
        return None
    fig, ax = _axes("Reliability (calibration), 10 equal-count bins")
    _diagonal(ax)
    for m, b in bins.items():
        ax.plot(b["mean_pred"], b["frac_pos"], label=label(m), color=_color(m), linestyle=_DASH.get(m, "-"),
                marker="o", markersize=4)
    top = max(max(float(b["mean_pred"].max()), float(b["frac_pos"].max())) for b in bins.values())
    hi = min(1.0, top * 1.05) if top > 0 else 1.0
    ax.set(xlim=(0, hi), ylim=(0, hi), xlabel="Mean predicted click probability", ylabel="Observed click rate")
    ax.legend(loc="upper left")
    notes.setdefault("reliability", "10 equal-count bins per model: mean predicted probability against the observed "
                                    "click rate; the dashed diagonal is perfect calibration.")
    return fig


def _latency_size_chart(report: dict[str, Any], notes: dict[str, str]) -> Figure | None:
    size, lat = report.get("size_mb") or {}, report.get("latency_ms") or {}
    points, missing = [], []
    for m in ("teacher", "student_fp32", "student_int8"):
        x, y = _num(size.get(m)), _num((lat.get(m) or {}).get("p50"))
        if x is None or y is None or x <= 0 or y <= 0:
            missing.append(label(m))
            continue
        points.append((m, x, y, _num((lat.get(m) or {}).get("p99"))))
    if missing:
        notes["latency_size"] = "Not plotted (size or p50 missing): " + ", ".join(missing) + "."
    if not points:
        return None
    xs = [x for _, x, _, _ in points]
    ys = [y for _, _, y, _ in points] + [hi for *_, hi in points if hi]
    xlog, ylog = max(xs) / min(xs) > 8, max(ys) / min(ys) > 8
    fig, ax = _axes("Latency against size, batch 1")
    for m, x, y, y_hi in points:
        if y_hi is not None:  # whisker from p50 up to p99
            ax.errorbar([x], [y], yerr=[[0], [max(y_hi - y, 0)]], color=_color(m), capsize=5, linewidth=2)
        ax.plot([x], [y], "o", color=_color(m), markersize=9, markeredgecolor="white")
        right = x == max(xs)  # the largest model's label goes on its left, inside the plot
        ax.annotate(label(m), (x, y), xytext=(-9 if right else 9, 0), textcoords="offset points",
                    ha="right" if right else "left", va="center")
    if xlog:
        ax.set_xscale("log")
        _plain_log_ticks(ax.xaxis)
    if ylog:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.margins(0.15)
    if not xlog:
        ax.set_xlim(left=0)
    if not ylog:
        ax.set_ylim(bottom=0)
    ax.set(xlabel="Model size, MB" + (" (log scale)" if xlog else ""),
           ylabel="Latency p50 (whisker to p99), ms" + (" (log)" if ylog else ""))
    return fig


def _labeling_chart(report: dict[str, Any]) -> Figure | None:
    lab = report.get("labeling") or {}
    rows = [(name, _num(lab.get(k))) for k, name in (("rows_in", "Rows in"), ("rows_labeled", "Labeled"),
                                                      ("rows_kept", "Kept"), ("rows_rejected", "Rejected"))]
    rows = [(n, v) for n, v in rows if v is not None]
    if not rows:
        return None
    base = _num(lab.get("rows_labeled")) or _num(lab.get("rows_in"))
    text = [f"{v:,.0f}" + (f" ({v / base:.1%})" if base and n in ("Kept", "Rejected") else "") for n, v in rows]
    rate = _num(lab.get("rows_per_s"))
    title = "Rows through teacher labeling" + (f" ({rate:,.2f} rows/s)" if rate is not None else "")
    colors = [COLORS["grey"], COLORS["teacher"], COLORS["student_direct"], COLORS["student"]]
    return _bars(title, [n for n, _ in rows], [v for _, v in rows], text, colors[:len(rows)])


def _serve_latency_chart(report: dict[str, Any], notes: dict[str, str]) -> Figure | None:
    sv = report.get("serve") or {}
    if sv.get("latency_hist_ms") is None:
        notes["serve_latency"] = "serve.latency_hist_ms not in report.json: no latency histogram."
        return None
    try:
        edges, counts, overflow = latency_histogram(sv["latency_hist_ms"])
    except (ValueError, TypeError) as err:
        notes["serve_latency"] = str(err)
        return None
    if overflow:
        notes["serve_latency"] = f"{overflow:,} slowest requests (above {edges[-1]:,.2f} ms) not drawn."
    clients = _num(sv.get("concurrency"))
    fig, ax = _axes("/predict latency at saturation" + (f" ({clients:,.0f} clients)" if clients else ""))
    ax.stairs(counts, edges, fill=True, color=COLORS["teacher"], alpha=0.8)
    for (name, key), dash in zip((("p50", "p50_ms"), ("p99", "p99_ms")), ((0, (5, 3)), (0, (1, 2)))):
        v = _num(sv.get(key))
        if v is not None and edges[0] <= v <= edges[-1]:
            ax.axvline(v, color=COLORS["student"], linewidth=1.5, linestyle=dash, label=f"{name} {v:,.2f} ms")
    ax.set(xlim=(edges[0], edges[-1]), ylim=(0, max(counts.max(), 1) * 1.05), xlabel="Latency, ms",
           ylabel="Requests")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")
    return fig


def _bid_latency_chart(report: dict[str, Any], notes: dict[str, str]) -> Figure | None:
    bids = (report.get("serve") or {}).get("bid_ms")
    points = sorted((int(n), _num(b.get("p50")), _num(b.get("p99"))) for n, b in (bids or {}).items()
                    if str(n).isdigit() and isinstance(b, dict))
    points = [(n, p50, p99) for n, p50, p99 in points if p50 is not None and p99 is not None and p50 > 0]
    if not points:
        notes["bid_latency"] = "serve.bid_ms holds no measured bids: no bid latency chart."
        return None
    n = [x for x, _, _ in points]
    fig, ax = _axes("Bid latency over HTTP, light load, fresh requests")
    for i, (name, color, dash) in enumerate((("p50", COLORS["teacher"], "-"), ("p99", COLORS["student"], (0, (5, 3))))):
        ax.plot(n, [p[1 + i] for p in points], marker="o", color=color, linestyle=dash, label=name)
    if len(n) > 1 and max(n) / min(n) > 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(n))
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(bottom=0, top=max(p[2] for p in points) * 1.15)
    ax.set(xlabel="Eligible candidates per bid", ylabel="Latency, ms")
    ax.legend(loc="upper left")
    return fig


def _replicas_chart(report: dict[str, Any], notes: dict[str, str]) -> Figure | None:
    samples = (report.get("serve") or {}).get("replicas_over_time")
    if not samples:
        notes["replicas"] = "serve.replicas_over_time not in report.json: no replica chart."
        return None
    try:
        t, n = (np.asarray(c, dtype=np.float64) for c in zip(*[(s[0], s[1]) for s in samples]))
    except (TypeError, IndexError, ValueError):
        notes["replicas"] = "serve.replicas_over_time: expected a list of [t_seconds, replicas] pairs"
        return None
    fig, ax = _axes("Running replicas during the load test")
    ax.step(t, n, where="post", color=COLORS["teacher"])  # a count holds until the next sample
    ax.set(xlim=(min(float(t.min()), 0.0), float(t.max()) * 1.04 if t.max() > 0 else 1.0),
           ylim=(0, max(float(n.max()) + 1, 2)), xlabel="Seconds since the load test started", ylabel="Replicas")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _timings_chart(report: dict[str, Any]) -> Figure | None:
    t = report.get("timings_s") or {}
    stages = [(s, _num(t.get(s))) for s in stage_order(report) if s != "total"]
    stages = [(s, v) for s, v in stages if v is not None]
    if not stages:
        return None
    total = _num(t.get("total"))
    title = "Wall time per stage" + (f" (total {total:,.2f} s)" if total is not None else "")
    return _bars(title, [s for s, _ in stages], [v for _, v in stages], [f"{v:,.2f} s" for _, v in stages])


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata=_NO_METADATA)
    return buf.getvalue()


def inline(svg: str) -> str:
    """An SVG document as an element of an HTML page: no XML prolog or DOCTYPE and no namespace
    declarations (HTML puts an inline <svg> in its namespace and knows `xlink:href`), so the page
    holds no http:// text. References left are in-document ones (`#id`)."""
    root = svg[svg.index("<svg"):]
    head, body = root.split(">", 1)
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", head) + ">" + body


def build_charts(report: dict[str, Any], predictions: Predictions | None, notes: dict[str, str]) -> dict[str, str]:
    """`{name: SVG document}` for each chart that has data; why one is missing goes to `notes[name]`."""
    models: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if predictions is None:
        if "predictions" not in notes:
            notes["roc"] = "plots/predictions.parquet absent: no ROC curves or reliability diagram."
    else:
        _, found, problems = predictions
        order = [m for m in MODEL_LABELS if m in found] + [m for m in found if m not in MODEL_LABELS]
        models = {m: found[m] for m in order}
        if problems:
            notes["predictions"] = "; ".join(problems)
    builders = {"roc": lambda: _roc_chart(report, models, notes) if models else None,
                "reliability": lambda: _reliability_chart(models, notes) if models else None,
                "latency_size": lambda: _latency_size_chart(report, notes),
                "labeling": lambda: _labeling_chart(report),
                "serve_latency": lambda: _serve_latency_chart(report, notes),
                "bid_latency": lambda: _bid_latency_chart(report, notes),
                "replicas": lambda: _replicas_chart(report, notes),
                "timings": lambda: _timings_chart(report)}
    out = {}
    for name, build in builders.items():
        # a salt per chart keeps the ids of the inline SVGs apart within one page
        with matplotlib.rc_context({**_STYLE, "svg.hashsalt": f"distillery-{name}"}):
            fig = build()
            if fig is not None:
                out[name] = _svg(fig)
    return out
