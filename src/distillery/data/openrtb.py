"""OpenRTB 2.5 / 2.6 bid requests as ad-log rows: one row per impression (`imp`).

    problems = validate_bid_request(request)          # [] when the bidder can use it
    rows = request_to_rows(request, {"1": 1})         # [{"id": "<request.id>:1", "click": 1, ...}]
    context = impression_context(request, imp)        # the request-context fields of one row

A bid request carries the request context only (page or app, category, device, slot); the ad
fields of a row come from the candidate the bidder scores. The same functions build training rows
from logged requests and serving rows from live ones, so both see identical text.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone
from typing import Any, Mapping

__all__ = ["DEVICE_TYPES", "IMP_TYPES", "impression_context", "request_time", "request_to_rows", "validate_bid_request"]

# OpenRTB 2.5 list 5.21 / AdCOM 1.0 "Device Type" (2.6), as the short words our rows use.
DEVICE_TYPES = {
    1: "mobile",  # "Mobile/Tablet - General"
    2: "desktop",  # "Personal Computer"
    3: "ctv",
    4: "phone",
    5: "tablet",
    6: "connected_device",
    7: "set_top_box",
    8: "ooh",  # out-of-home screen (2.6)
}
IMP_TYPES = ("banner", "video", "audio", "native")
_SURROGATE = re.compile("[\ud800-\udfff]")
_OBJECTS = ("site", "app", "device", "user", "regs", "source", "ext")


def _text(value: Any) -> str | None:
    """A stripped non-empty string, or None (numbers become their decimal text)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        value = _number(value)
    if not isinstance(value, str):
        return None
    if not value.isascii():
        # a "\udc80" escape decodes to a lone surrogate, which no encoder accepts: mark it the way a
        # bad byte is marked (U+FFFD), so the row stays serializable and `row_problem` can flag it
        value = _SURROGATE.sub("\ufffd", value)
    value = " ".join(value.split())
    return value or None


def _number(value: Any) -> str | None:
    """`0.5` -> "0.5", `2.0` -> "2": the form `to_text` would render, fixed here so rows are strings."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer():
            value = int(value)
    return str(value)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _obj(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _size(w: Any, h: Any) -> str | None:
    w, h = _int(w), _int(h)
    return f"{w}x{h}" if w and h and w > 0 and h > 0 else None


def request_time(request: Mapping[str, Any]) -> int | None:
    """Unix seconds (UTC) at which the request was made, if it says; OpenRTB has no standard field.

    Looks at `ts` / `timestamp` at the top level, then in `ext`; numbers above 1e11 are taken as
    milliseconds, strings as ISO-8601 (naive times are UTC).
    """
    for holder in (request, _obj(request.get("ext"))):
        for key in ("ts", "timestamp"):
            value = holder.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                return int(value / 1000) if value > 1e11 else int(value)
            if isinstance(value, str) and value.strip():
                try:
                    when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
                except ValueError:
                    continue
                if when.tzinfo is None:
                    when = when.replace(tzinfo=timezone.utc)
                return int(when.timestamp())
    return None


def _keywords(holder: Mapping[str, Any]) -> list[str]:
    out = []
    if (kw := _text(holder.get("keywords"))) is not None:
        out.append(kw)
    kwarray = holder.get("kwarray")  # 2.6: keywords as an array
    if isinstance(kwarray, list):
        words = [w for w in (_text(k) for k in kwarray) if w]
        if words:
            out.append(",".join(words))
    return out


def _query(request: Mapping[str, Any]) -> str | None:
    """What the page or app is about: its name, domain/bundle, page URL, keywords, then content."""
    site, app = _obj(request.get("site")), _obj(request.get("app"))
    parts: list[str | None] = []
    if site:
        parts += [_text(site.get("name")), _text(site.get("domain")), _text(site.get("page")), *_keywords(site)]
    elif app:
        parts += [_text(app.get("name")), _text(app.get("bundle")), _text(app.get("domain")), *_keywords(app)]
    content = _obj((site or app).get("content"))
    parts += [_text(content.get("title")), _text(content.get("series")), *_keywords(content)]
    seen: list[str] = []
    for part in parts:
        if part and part not in seen:  # the same words twice add nothing for a model
            seen.append(part)
    return " ".join(seen) or None


def _categories(holder: Mapping[str, Any]) -> str | None:
    for key in ("cat", "sectioncat", "pagecat"):
        cats = holder.get(key)
        if isinstance(cats, list):
            names = [c for c in (_text(x) for x in cats) if c]
            if names:
                return ",".join(names)
    return None


def _native_request(native: Mapping[str, Any]) -> dict:
    """The native markup request: a JSON *string* in 2.5/2.6 (often invalid in the wild), or an object."""
    raw = native.get("request")
    if isinstance(raw, dict):
        parsed: Any = raw
    elif isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except ValueError:
            return {}
    else:
        return {}
    parsed = _obj(parsed)
    return _obj(parsed.get("native")) or parsed  # 1.0 wraps the request in {"native": …}


def _native_size(native: Mapping[str, Any]) -> str | None:
    """Size of the main image asset (image type 3), else of the first image asset with a size."""
    assets = _native_request(native).get("assets")
    images = [_obj(_obj(a).get("img")) for a in assets] if isinstance(assets, list) else []
    images.sort(key=lambda img: img.get("type") != 3)
    for img in images:
        size = _size(img.get("w"), img.get("h")) or _size(img.get("wmin"), img.get("hmin"))
        if size:
            return size
    return None


def _slot(imp: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """(position, slot size) from the banner, video or native object of an impression."""
    banner, video = _obj(imp.get("banner")), _obj(imp.get("video"))
    position = _int(banner.get("pos")) if "pos" in banner else _int(video.get("pos"))
    size = _size(banner.get("w"), banner.get("h"))
    if size is None and isinstance(banner.get("format"), list) and banner["format"]:
        first = _obj(banner["format"][0])
        size = _size(first.get("w"), first.get("h"))
    if size is None:
        size = _size(video.get("w"), video.get("h"))
    if size is None and isinstance(imp.get("native"), dict):
        size = _native_size(imp["native"])
    return position, size


def impression_context(request: Mapping[str, Any], imp: Mapping[str, Any]) -> dict[str, Any]:
    """Request-context fields of the log row for impression `imp` of bid `request`.

    Returns the context columns of `LOG_SCHEMA` (`query, site_category, device, os, hour,
    position, slot_size`; None where the request does not say) plus string extras: `imp_type`
    (`banner`, `video`, `audio`, `native`, joined by `+` for multi-format impressions), and when
    present `bidfloor` (CPM, as decimal text) and `instl` (`"1"` for interstitials). Never raises on
    odd input: fields of the wrong type are treated as absent (`validate_bid_request` reports them).
    """
    request, imp = _obj(request), _obj(imp)
    site, app, device = _obj(request.get("site")), _obj(request.get("app")), _obj(request.get("device"))
    ts = request_time(request)
    position, slot_size = _slot(imp)
    devicetype = _int(device.get("devicetype"))
    row: dict[str, Any] = {
        "query": _query(request),
        "site_category": _categories(site or app),
        "device": DEVICE_TYPES.get(devicetype, "other") if devicetype is not None else None,
        "os": _text(device.get("os")),
        "hour": datetime.fromtimestamp(ts, timezone.utc).hour if ts is not None else None,
        "position": position,
        "slot_size": slot_size,
        "imp_type": "+".join(t for t in IMP_TYPES if isinstance(imp.get(t), dict)) or None,
    }
    if (floor := _number(imp.get("bidfloor"))) is not None:
        row["bidfloor"] = floor
    if _int(imp.get("instl")) == 1:
        row["instl"] = "1"
    return row


def request_to_rows(
    request: Mapping[str, Any], outcomes: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One log row per impression: `id` = `<request.id>:<imp.id>`, `ts`, the context, and `click`.

    `outcomes` maps an impression to its click (0/1), keyed by the row id or by the bare `imp.id`;
    impressions without an outcome get `click=None` (unknown), and without `outcomes` there is no
    `click` key at all. Impressions that are not objects are skipped: call `validate_bid_request`
    first to report them.
    """
    rid = _text(request.get("id")) if isinstance(request, Mapping) else None
    imps = request.get("imp") if isinstance(request, Mapping) else None
    if rid is None or not isinstance(imps, list):
        return []
    ts = request_time(request)
    rows = []
    for index, imp in enumerate(imps):
        if not isinstance(imp, dict):
            continue
        imp_id = _text(imp.get("id")) or str(index + 1)
        row = {"id": f"{rid}:{imp_id}", "ts": ts, **impression_context(request, imp)}
        if outcomes is not None:
            row["click"] = outcomes.get(row["id"], outcomes.get(imp_id))
        rows.append(row)
    return rows


def _check_type(problems: list[str], holder: Mapping[str, Any], key: str, kind: type | tuple, where: str, what: str) -> None:
    if key in holder and holder[key] is not None:
        value = holder[key]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            problems.append(f"{where}{key}: expected {what}, got bool")
        elif not isinstance(value, kind):
            problems.append(f"{where}{key}: expected {what}, got {type(value).__name__}")


def validate_bid_request(request: Any) -> list[str]:
    """Why `request` is not a usable OpenRTB 2.5/2.6 bid request: one message per problem, each
    naming the field (`imp[1].id: missing`); an empty list when it is usable."""
    if not isinstance(request, dict):
        return [f"request: expected a JSON object, got {type(request).__name__}"]
    problems: list[str] = []
    rid = request.get("id")
    if rid is None:
        problems.append("id: missing")
    elif not isinstance(rid, str) or not rid.strip():
        problems.append("id: expected a non-empty string")
    for key in _OBJECTS:
        _check_type(problems, request, key, dict, "", "an object")
    for key in ("tmax", "at", "test", "allimps"):
        _check_type(problems, request, key, int, "", "an integer")
    for key in ("cur", "bcat", "badv", "wseat", "bseat"):
        _check_type(problems, request, key, list, "", "an array")
    if isinstance(request.get("site"), dict) and isinstance(request.get("app"), dict):
        problems.append("site, app: a request must not carry both")
    device = request.get("device")
    if isinstance(device, dict):
        for key in ("devicetype", "connectiontype", "js", "dnt", "lmt"):
            _check_type(problems, device, key, int, "device.", "an integer")
    imps = request.get("imp")
    if imps is None:
        problems.append("imp: missing")
        return problems
    if not isinstance(imps, list):
        problems.append(f"imp: expected an array, got {type(imps).__name__}")
        return problems
    if not imps:
        problems.append("imp: empty (a request needs at least one impression)")
    seen: set[str] = set()
    for i, imp in enumerate(imps):
        where = f"imp[{i}]."
        if not isinstance(imp, dict):
            problems.append(f"imp[{i}]: expected an object, got {type(imp).__name__}")
            continue
        imp_id = imp.get("id")
        if imp_id is None:
            problems.append(f"{where}id: missing")
        elif not isinstance(imp_id, str) or not imp_id.strip():
            problems.append(f"{where}id: expected a non-empty string")
        elif imp_id in seen:
            problems.append(f"{where}id: duplicate {imp_id!r}")
        else:
            seen.add(imp_id)
        _check_type(problems, imp, "bidfloor", (int, float), where, "a number")
        _check_type(problems, imp, "instl", int, where, "an integer")
        if isinstance(imp.get("bidfloor"), (int, float)) and not isinstance(imp["bidfloor"], bool) and imp["bidfloor"] < 0:
            problems.append(f"{where}bidfloor: negative")
        for kind in IMP_TYPES:
            _check_type(problems, imp, kind, dict, where, "an object")
        if not any(isinstance(imp.get(kind), dict) for kind in IMP_TYPES):
            problems.append(f"imp[{i}]: no banner, video, audio or native object")
        for kind in ("banner", "video", "audio"):
            media = imp.get(kind)
            if isinstance(media, dict):
                for key in ("w", "h", "pos"):
                    _check_type(problems, media, key, int, f"{where}{kind}.", "an integer")
                if kind == "banner":
                    _check_type(problems, media, "format", list, f"{where}banner.", "an array")
        native = imp.get("native")
        if isinstance(native, dict):
            # the spec says a JSON string; some exchanges send the object itself; both are read
            _check_type(problems, native, "request", (str, dict), f"{where}native.", "a string")
    return problems
