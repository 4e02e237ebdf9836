"""Chart data and the report's charts: ROC, reliability, latency vs size, labeling, serving, timings.

The data functions (`roc_points`, `reliability_bins`, `latency_histogram`) are pure numpy; the
drawing is `distillery.report_svg`. `build_charts` turns report.json plus the test predictions into
`{chart name: inline <svg>}` and records in `notes` why a chart is missing or partial.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from distillery import report_svg as svg
from distillery.stages import STAGES

__all__ = ["roc_points", "roc_area", "reliability_bins", "latency_histogram", "build_charts", "label",
           "quality_models", "stage_order", "MODEL_LABELS"]

MODEL_LABELS = {"teacher": "Teacher", "student": "Distilled student", "student_direct": "Click-only student",
                "student_fp32": "Distilled student, ONNX FP32", "student_int8": "Distilled student, ONNX INT8"}
_DASH = {"student_fp32": "6 3", "student_int8": "2 3"}

Predictions = tuple[np.ndarray, dict[str, tuple[np.ndarray, np.ndarray]], list[str]]


def label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


def _color(model: str) -> str:
    return svg.COLORS.get(model, svg.COLORS["other"])


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



def _check_pair(y: Any, p: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{what}: y {y.shape} and p {p.shape} differ in shape")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"{what}: y must hold 0/1 clicks")
    if not np.isfinite(p).all():
        raise ValueError(f"{what}: p holds NaN or infinite values")
    return y, p


def roc_points(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve `(fpr, tpr)`, each `(k,)` from (0, 0) to (1, 1): one point per distinct score,
    thresholds descending, so tied scores move diagonally (the ½-credit the AUC gives ties)."""
    y, p = _check_pair(y, p, "roc_points")
    pos = y.sum()
    neg = len(y) - pos
    if pos == 0 or neg == 0:
        raise ValueError("roc_points: y needs both clicks and non-clicks")
    order = np.argsort(-p, kind="stable")
    y, p = y[order], p[order]
    last_of_run = np.r_[np.nonzero(np.diff(p))[0], len(p) - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def roc_area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoid area under `roc_points` output (equals the rank AUC, ties counted ½)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def reliability_bins(y: Any, p: Any, bins: int = 10, strategy: str = "quantile") -> dict[str, np.ndarray]:
    """Calibration per bin: `lo`, `hi` (predicted-probability range), `count`, `mean_pred` and
    `frac_pos` (observed click rate), each `(b,)` over the non-empty bins. `quantile` bins hold
    equal numbers of rows (as `evaluate.ece` does, since clicks are a few percent); `uniform` bins
    split [0, 1] evenly."""
    y, p = _check_pair(y, p, "reliability_bins")
    if bins < 1:
        raise ValueError(f"reliability_bins: bins must be ≥ 1, got {bins}")
    if strategy == "uniform":
        idx = np.minimum((p * bins).astype(int), bins - 1)
    elif strategy == "quantile":
        idx = np.empty(len(p), dtype=int)
        idx[np.argsort(p, kind="stable")] = np.arange(len(p)) * bins // max(len(p), 1)
    else:
        raise ValueError(f"reliability_bins strategy {strategy!r}: expected 'quantile' or 'uniform'")
    rows = []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            rows.append((p[sel].min(), p[sel].max(), sel.sum(), p[sel].mean(), y[sel].mean()))
    cols = np.array(rows, dtype=np.float64).reshape(-1, 5).T
    return {"lo": cols[0], "hi": cols[1], "count": cols[2].astype(int), "mean_pred": cols[3], "frac_pos": cols[4]}


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


def _thin(xs: np.ndarray, ys: np.ndarray, limit: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` points, ends kept, so a 100k-row ROC stays a small SVG."""
    if len(xs) <= limit:
        return xs, ys
    keep = np.unique(np.linspace(0, len(xs) - 1, limit).round().astype(int))
    return xs[keep], ys[keep]




def _range(values: list[float], log: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        return lo / 1.8, hi * 1.8
    return 0.0, svg.nice_ceiling(hi * 1.15) if hi > 0 else 1.0


def _roc_chart(report: dict[str, Any], models: dict[str, tuple[np.ndarray, np.ndarray]],
               notes: dict[str, str]) -> str | None:
    series, problems = [], []
    quality = report.get("quality") or {}
    for m, (y, p) in models.items():
        try:
            fpr, tpr = roc_points(y, p)
        except ValueError as err:
            problems.append(f"{m}: {err}")
            continue
        area = roc_area(fpr, tpr)
        stated = _num((quality.get(m) or {}).get("auc"))
        if stated is not None and abs(stated - area) > 5e-4:  # the curve and the table must be the same rows
            problems.append(f"{m}: predictions.parquet gives AUC {area:.4f} but report.json says {stated:.4f}")
        fpr, tpr = _thin(fpr, tpr)
        series.append(svg.Series(f"{label(m)} (AUC {area:.4f})", fpr, tpr, _color(m), _DASH.get(m)))
    if problems:
        notes["roc"] = "; ".join(problems)
    if not series:
        return None
    return svg.line_chart("ROC on the test split", series, svg.Axis("False positive rate", 0, 1),
                          svg.Axis("True positive rate", 0, 1), diagonal=True, legend="lower right")


def _reliability_chart(models: dict[str, tuple[np.ndarray, np.ndarray]], notes: dict[str, str]) -> str | None:
    series = []
    for m, (y, p) in models.items():
        if len(p) == 0:
            continue
        b = reliability_bins(y, p, bins=10)
        series.append(svg.Series(label(m), b["mean_pred"], b["frac_pos"], _color(m), _DASH.get(m), markers=True))
    if not series:
        return None
    top = max(max(float(np.max(s.xs)), float(np.max(s.ys))) for s in series)
    hi = min(1.0, svg.nice_ceiling(top * 1.05)) if top > 0 else 1.0
    notes.setdefault("reliability", "10 equal-count bins per model: mean predicted probability against the observed "
                                    "click rate; the dashed diagonal is perfect calibration.")
    return svg.line_chart("Reliability (calibration), 10 equal-count bins", series,
                          svg.Axis("Mean predicted click probability", 0, hi),
                          svg.Axis("Observed click rate", 0, hi), diagonal=True, legend="upper left")


def _latency_size_chart(report: dict[str, Any], notes: dict[str, str]) -> str | None:
    size, lat = report.get("size_mb") or {}, report.get("latency_ms") or {}
    points, missing = [], []
    for m in ("teacher", "student_fp32", "student_int8"):
        x, y = _num(size.get(m)), _num((lat.get(m) or {}).get("p50"))
        if x is None or y is None or x <= 0 or y <= 0:
            missing.append(label(m))
            continue
        points.append(svg.Point(label(m), x, y, _num((lat.get(m) or {}).get("p99")), _color(m)))
    if missing:
        notes["latency_size"] = "Not plotted (size or p50 missing): " + ", ".join(missing) + "."
    if not points:
        return None
    xs, ys = [p.x for p in points], [p.y for p in points] + [p.y_hi for p in points if p.y_hi]
    xlog, ylog = max(xs) / min(xs) > 8, max(ys) / min(ys) > 8
    x_axis = svg.Axis("Model size, MB" + (" (log scale)" if xlog else ""), *_range(xs, xlog), log=xlog)
    y_axis = svg.Axis("Latency p50 (whisker to p99), ms" + (" (log)" if ylog else ""), *_range(ys, ylog), log=ylog)
    return svg.scatter_chart("Latency against size, batch 1", points, x_axis, y_axis)


def _labeling_chart(report: dict[str, Any]) -> str | None:
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
    colors = [svg.COLORS["grey"], svg.COLORS["teacher"], svg.COLORS["student_direct"], svg.COLORS["student"]]
    return svg.bar_chart(title, [n for n, _ in rows], [v for _, v in rows], "rows", colors[:len(rows)], text)


def _serve_latency_chart(report: dict[str, Any], notes: dict[str, str]) -> str | None:
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
    marks = [(f"{k} {v:,.2f} ms", v) for k, v in (("p50", _num(sv.get("p50_ms"))), ("p99", _num(sv.get("p99_ms"))))
             if v is not None and edges[0] <= v <= edges[-1]]
    return svg.histogram_chart("Serving latency per request", edges, counts,
                               svg.Axis("Latency, ms", float(edges[0]), float(edges[-1])), "Requests", marks)


def _replicas_chart(report: dict[str, Any], notes: dict[str, str]) -> str | None:
    samples = (report.get("serve") or {}).get("replicas_over_time")
    if not samples:
        notes["replicas"] = "serve.replicas_over_time not in report.json: no replica chart."
        return None
    try:
        t, n = (np.asarray(c, dtype=np.float64) for c in zip(*[(s[0], s[1]) for s in samples]))
    except (TypeError, IndexError, ValueError):
        notes["replicas"] = "serve.replicas_over_time: expected a list of [t_seconds, replicas] pairs"
        return None
    x_hi = svg.nice_ceiling(float(t.max()) * 1.04) if t.max() > 0 else 1.0
    return svg.line_chart("Running replicas during the load test",
                          [svg.Series("", t, n, svg.COLORS["teacher"], step=True)],
                          svg.Axis("Seconds since the load test started", float(min(t.min(), 0)), x_hi),
                          svg.Axis("Replicas", 0, max(float(n.max()) + 1, 2)))


def _timings_chart(report: dict[str, Any]) -> str | None:
    t = report.get("timings_s") or {}
    stages = [(s, _num(t.get(s))) for s in stage_order(report) if s != "total"]
    stages = [(s, v) for s, v in stages if v is not None]
    if not stages:
        return None
    total = _num(t.get("total"))
    title = "Wall time per stage" + (f" (total {total:,.2f} s)" if total is not None else "")
    return svg.bar_chart(title, [s for s, _ in stages], [v for _, v in stages], "s")


def build_charts(report: dict[str, Any], predictions: Predictions | None, notes: dict[str, str]) -> dict[str, str]:
    """`{name: inline svg}` for each chart that has data; why one is missing goes to `notes[name]`."""
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
    built = {"roc": _roc_chart(report, models, notes) if models else None,
             "reliability": _reliability_chart(models, notes) if models else None,
             "latency_size": _latency_size_chart(report, notes),
             "labeling": _labeling_chart(report),
             "serve_latency": _serve_latency_chart(report, notes),
             "replicas": _replicas_chart(report, notes),
             "timings": _timings_chart(report)}
    return {name: chart for name, chart in built.items() if chart is not None}
