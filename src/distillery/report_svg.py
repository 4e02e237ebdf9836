"""Dependency-free SVG charts for the run report: lines, scatter, histogram, horizontal bars.

Every builder returns one `<svg>` element as a string, without an `xmlns` so it can sit inline in
HTML (and so the report holds no `http://` text at all); `standalone(svg)` adds the namespace for
the `plots/*.svg` files. Charts are drawn in a fixed 600×380 coordinate box and scale with CSS.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence
from xml.sax.saxutils import escape, quoteattr

__all__ = ["Series", "Point", "Axis", "COLORS", "nice_ticks", "nice_ceiling", "log_ticks", "line_chart",
           "scatter_chart", "histogram_chart", "bar_chart", "standalone"]

# Okabe–Ito: distinguishable under the common colour-vision deficiencies.
COLORS = {"teacher": "#0072B2", "student": "#D55E00", "student_direct": "#009E73", "student_int8": "#CC79A7",
          "student_fp32": "#E69F00", "other": "#56B4E9", "grey": "#6b7280", "ink": "#1f2937"}
FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif"
WIDTH, HEIGHT = 600, 380
MARGIN = {"left": 64, "right": 20, "top": 40, "bottom": 52}
_SVG_NS = "http://www.w3.org/2000/svg"
_HALO = 'paint-order="stroke" stroke="white" stroke-width="3" stroke-linejoin="round"'  # legible over marks


@dataclass(frozen=True)
class Axis:
    """One axis: label, data range [lo, hi] and whether it is logarithmic (then lo > 0)."""

    label: str
    lo: float
    hi: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.hi <= self.lo:
            raise ValueError(f"axis {self.label!r}: need finite lo < hi, got [{self.lo}, {self.hi}]")
        if self.log and self.lo <= 0:
            raise ValueError(f"axis {self.label!r}: a log axis needs lo > 0, got {self.lo}")


@dataclass(frozen=True)
class Series:
    """A polyline (`xs`, `ys` same length); `step` draws it as a step function (a count over time)."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = COLORS["other"]
    dash: str | None = None
    step: bool = False
    markers: bool = False


@dataclass(frozen=True)
class Point:
    """A labelled scatter point; `y_hi` (optional) draws a whisker up to it (p50 → p99)."""

    label: str
    x: float
    y: float
    y_hi: float | None = None
    color: str = COLORS["other"]


def _fmt_tick(v: float, step: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 and step >= 1:
        return f"{v:,.0f}"
    decimals = max(0, -int(math.floor(math.log10(step)))) if step > 0 else 2
    return f"{v:.{min(decimals, 6)}f}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values (steps of 1, 2 or 5 × 10^k) inside [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 12))
        t += step
    return ticks


def nice_ceiling(v: float) -> float:
    """`v` (> 0) rounded up to the next tick of a round 0..v axis (12.5 → 15, 0.63 → 0.8, 168 → 200)."""
    ticks = nice_ticks(0, v)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else v
    return math.ceil(v / step - 1e-9) * step


def log_ticks(lo: float, hi: float) -> list[float]:
    """1, 2, 5 × 10^k values inside [lo, hi] (only powers of ten when the range spans > 3 decades)."""
    mults = (1,) if math.log10(hi / lo) > 3 else (1, 2, 5)
    ticks = []
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        ticks += [m * 10.0 ** k for m in mults if lo * (1 - 1e-9) <= m * 10.0 ** k <= hi * (1 + 1e-9)]
    return ticks


class _Frame:
    """Plot area, scales, grid, ticks and labels shared by the x/y charts."""

    def __init__(self, title: str, x: Axis, y: Axis):
        self.x, self.y = x, y
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.w = WIDTH - MARGIN["left"] - MARGIN["right"]
        self.h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
        self.parts = [_open(title), f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15" '
                      f'font-weight="600" fill="{COLORS["ink"]}">{escape(title)}</text>']
        self._grid()

    def sx(self, v: float) -> float:
        return self.left + self.w * _frac(v, self.x)

    def sy(self, v: float) -> float:
        return self.top + self.h * (1 - _frac(v, self.y))

    def _grid(self) -> None:
        p, x, y = self.parts, self.x, self.y
        p.append(f'<rect x="{self.left}" y="{self.top}" width="{self.w}" height="{self.h}" fill="#fafafa" '
                 f'stroke="#d1d5db"/>')
        xt = log_ticks(x.lo, x.hi) if x.log else nice_ticks(x.lo, x.hi)
        yt = log_ticks(y.lo, y.hi) if y.log else nice_ticks(y.lo, y.hi)
        xstep = _step(xt, x.lo, x.hi)
        ystep = _step(yt, y.lo, y.hi)
        bottom = self.top + self.h
        for t in xt:
            X = self.sx(t)
            p.append(f'<line x1="{X:.1f}" y1="{self.top}" x2="{X:.1f}" y2="{bottom}" stroke="#e5e7eb"/>')
            label = _fmt_tick(t, t if x.log else xstep)
            p.append(f'<text x="{X:.1f}" y="{bottom + 16}" text-anchor="middle" font-size="11" '
                     f'fill="{COLORS["grey"]}">{label}</text>')
        for t in yt:
            Y = self.sy(t)
            p.append(f'<line x1="{self.left}" y1="{Y:.1f}" x2="{self.left + self.w}" y2="{Y:.1f}" stroke="#e5e7eb"/>')
            label = _fmt_tick(t, t if y.log else ystep)
            p.append(f'<text x="{self.left - 6}" y="{Y + 4:.1f}" text-anchor="end" font-size="11" '
                     f'fill="{COLORS["grey"]}">{label}</text>')
        p.append(f'<text x="{self.left + self.w / 2}" y="{HEIGHT - 12}" text-anchor="middle" font-size="12" '
                 f'fill="{COLORS["ink"]}">{escape(x.label)}</text>')
        p.append(f'<text x="16" y="{self.top + self.h / 2}" text-anchor="middle" font-size="12" '
                 f'fill="{COLORS["ink"]}" transform="rotate(-90 16 {self.top + self.h / 2})">{escape(y.label)}</text>')

    def legend(self, entries: list[tuple[str, str, str | None]], where: str) -> None:
        """`entries`: (name, colour, dash). `where`: 'lower right' or 'upper left'."""
        if not entries:
            return
        longest = max(len(name) for name, _, _ in entries)
        box_w, box_h = 34 + 6.6 * longest, 8 + 18 * len(entries)
        bx = self.left + self.w - box_w - 8 if where == "lower right" else self.left + 8
        by = self.top + self.h - box_h - 8 if where == "lower right" else self.top + 8
        self.parts.append(f'<rect x="{bx:.1f}" y="{by:.1f}" width="{box_w:.1f}" height="{box_h}" fill="white" '
                          f'fill-opacity="0.92" stroke="#d1d5db" rx="4"/>')
        for i, (name, color, dash) in enumerate(entries):
            yy = by + 15 + 18 * i
            dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
            self.parts.append(f'<line x1="{bx + 8:.1f}" y1="{yy - 4:.1f}" x2="{bx + 28:.1f}" y2="{yy - 4:.1f}" '
                              f'stroke="{color}" stroke-width="2.5"{dash_attr}/>')
            self.parts.append(f'<text x="{bx + 34:.1f}" y="{yy:.1f}" font-size="11.5" fill="{COLORS["ink"]}">'
                              f'{escape(name)}</text>')

    def close(self) -> str:
        return "".join(self.parts) + "</svg>"


def _frac(v: float, axis: Axis) -> float:
    if axis.log:
        return (math.log10(max(v, 1e-300)) - math.log10(axis.lo)) / (math.log10(axis.hi) - math.log10(axis.lo))
    return (v - axis.lo) / (axis.hi - axis.lo)


def _step(ticks: list[float], lo: float, hi: float) -> float:
    return ticks[1] - ticks[0] if len(ticks) > 1 else (hi - lo)


def _open(title: str, height: int = HEIGHT) -> str:
    return (f'<svg viewBox="0 0 {WIDTH} {height}" width="{WIDTH}" height="{height}" role="img" '
            f'aria-label={quoteattr(title)} font-family={quoteattr(FONT)}>'
            f'<rect width="{WIDTH}" height="{height}" fill="white"/>')


def line_chart(title: str, series: Sequence[Series], x: Axis, y: Axis, diagonal: bool = False,
               legend: str = "lower right") -> str:
    """Polylines over a grid; `diagonal` draws y = x (chance for ROC, perfect calibration)."""
    f = _Frame(title, x, y)
    if diagonal:
        lo, hi = max(x.lo, y.lo), min(x.hi, y.hi)
        f.parts.append(f'<line x1="{f.sx(lo):.1f}" y1="{f.sy(lo):.1f}" x2="{f.sx(hi):.1f}" y2="{f.sy(hi):.1f}" '
                       f'stroke="#9ca3af" stroke-dasharray="4 4"/>')
    for s in series:
        if len(s.xs) != len(s.ys):
            raise ValueError(f"series {s.name!r}: {len(s.xs)} x values but {len(s.ys)} y values")
        pts = list(zip(s.xs, s.ys))
        if s.step:
            pts = [q for i, (a, b) in enumerate(pts) for q in ([(a, pts[i - 1][1])] if i else []) + [(a, b)]]
        coords = " ".join(f"{f.sx(a):.1f},{f.sy(b):.1f}" for a, b in pts)
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        f.parts.append(f'<polyline points="{coords}" fill="none" stroke="{s.color}" stroke-width="2.2" '
                       f'stroke-linejoin="round"{dash}/>')
        if s.markers:
            f.parts += [f'<circle cx="{f.sx(a):.1f}" cy="{f.sy(b):.1f}" r="3.5" fill="{s.color}"/>' for a, b in pts]
    f.legend([(s.name, s.color, s.dash) for s in series if s.name], legend)
    return f.close()


def scatter_chart(title: str, points: Sequence[Point], x: Axis, y: Axis) -> str:
    """Labelled points, each with an optional whisker from `y` up to `y_hi`."""
    f = _Frame(title, x, y)
    for pt in points:
        X, Y = f.sx(pt.x), f.sy(pt.y)
        if pt.y_hi is not None:
            f.parts.append(f'<line x1="{X:.1f}" y1="{Y:.1f}" x2="{X:.1f}" y2="{f.sy(pt.y_hi):.1f}" '
                           f'stroke="{pt.color}" stroke-width="2"/>')
            f.parts.append(f'<line x1="{X - 5:.1f}" y1="{f.sy(pt.y_hi):.1f}" x2="{X + 5:.1f}" '
                           f'y2="{f.sy(pt.y_hi):.1f}" stroke="{pt.color}" stroke-width="2"/>')
        f.parts.append(f'<circle cx="{X:.1f}" cy="{Y:.1f}" r="6" fill="{pt.color}" stroke="white" stroke-width="1.5"/>')
        # a label that would run past the plot's right edge goes on the point's left
        anchor, dx = ("end", -10) if X + 10 + 7 * len(pt.label) > f.left + f.w else ("start", 10)
        f.parts.append(f'<text x="{X + dx:.1f}" y="{Y + 4:.1f}" text-anchor="{anchor}" font-size="12" '
                       f'fill="{COLORS["ink"]}" {_HALO}>{escape(pt.label)}</text>')
    return f.close()


def histogram_chart(title: str, edges: Sequence[float], counts: Sequence[float], x: Axis, y_label: str,
                    markers: Sequence[tuple[str, float]] = (), color: str = COLORS["teacher"]) -> str:
    """Bars over `edges` (len(counts) + 1); `markers` draw labelled vertical lines (p50, p99)."""
    if len(edges) != len(counts) + 1:
        raise ValueError(f"histogram: {len(edges)} edges need {len(edges) - 1} counts, got {len(counts)}")
    top = max(max(counts, default=0), 1)
    f = _Frame(title, x, Axis(y_label, 0, nice_ceiling(top * 1.05)))
    for lo, hi, c in zip(edges[:-1], edges[1:], counts):
        if c <= 0:
            continue
        X0, X1, Y = f.sx(lo), f.sx(hi), f.sy(c)
        f.parts.append(f'<rect x="{X0 + 0.5:.1f}" y="{Y:.1f}" width="{max(X1 - X0 - 1, 0.5):.1f}" '
                       f'height="{f.top + f.h - Y:.1f}" fill="{color}" fill-opacity="0.8"/>')
    for i, (label, v) in enumerate(markers):
        X = f.sx(v)
        f.parts.append(f'<line x1="{X:.1f}" y1="{f.top}" x2="{X:.1f}" y2="{f.top + f.h}" stroke="{COLORS["student"]}" '
                       f'stroke-width="1.5" stroke-dasharray="5 3"/>')
        anchor, dx = ("end", -4) if X + 4 + 7 * len(label) > f.left + f.w else ("start", 4)
        f.parts.append(f'<text x="{X + dx:.1f}" y="{f.top + 14 + 14 * i}" text-anchor="{anchor}" font-size="11.5" '
                       f'fill="{COLORS["student"]}" {_HALO}>{escape(label)}</text>')
    return f.close()


def bar_chart(title: str, labels: Sequence[str], values: Sequence[float], unit: str,
              colors: Sequence[str] | None = None, value_labels: Sequence[str] | None = None) -> str:
    """Horizontal bars, one per label, each annotated with its value (`value_labels` or `v unit`)."""
    if len(labels) != len(values):
        raise ValueError(f"bar chart {title!r}: {len(labels)} labels but {len(values)} values")
    row = 26
    height = max(MARGIN["top"] + row * len(labels) + 20, 120)
    label_w = 8 + 7 * max((len(s) for s in labels), default=4)
    left, right = min(max(label_w, 90), 220), 110
    w = WIDTH - left - right
    top_v = max(max(values, default=0), 1e-12)
    parts = [_open(title, height), f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="15" '
             f'font-weight="600" fill="{COLORS["ink"]}">{escape(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        yy = MARGIN["top"] + row * i
        color = colors[i] if colors else COLORS["teacher"]
        text = value_labels[i] if value_labels else f"{v:,.2f} {unit}"
        bw = max(w * v / top_v, 1)
        parts.append(f'<text x="{left - 8}" y="{yy + 15}" text-anchor="end" font-size="12" '
                     f'fill="{COLORS["ink"]}">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{yy + 3}" width="{bw:.1f}" height="{row - 8}" fill="{color}" rx="2"/>')
        parts.append(f'<text x="{left + bw + 6:.1f}" y="{yy + 15}" font-size="12" '
                     f'fill="{COLORS["ink"]}">{escape(text)}</text>')
    return "".join(parts) + "</svg>"


def standalone(svg: str) -> str:
    """An inline `<svg>` as a file of its own: XML declaration and the SVG namespace."""
    if not svg.startswith("<svg "):
        raise ValueError("standalone: expected a string starting with '<svg '")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="{_SVG_NS}" ' + svg[len("<svg "):] + "\n"
