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

__all__ = ["DEVICE_TYPES", "IMP_TYPES", "MAX_TMAX_MS", "impression_context", "request_time", "request_to_rows", "validate_bid_request"]

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
MAX_TMAX_MS = 60_000  # a bid deadline longer than a minute is a mistake, not a deadline
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


# Request times a log row may carry: Unix seconds from 1970 to the end of 9999 (what `datetime` holds).
_MAX_TS = 253_402_300_799
_TIME_KEYS = ("ts", "timestamp")


def _as_unix_seconds(value: Any) -> int | None:
    """Unix seconds (UTC) of a `ts` value, or None when it is no usable time: numbers above 1e11 are
    milliseconds, strings ISO-8601 (naive times are UTC). Never raises (huge, negative, year 0001)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # exact: a 400-digit integer has no float
        seconds = value // 1000 if value > 100_000_000_000 else value
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        seconds = int(value / 1000) if value > 1e11 else int(value)
    elif isinstance(value, str) and value.strip():
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            seconds = int(when.timestamp())
        except (ValueError, OverflowError, OSError):
            return None
    else:
        return None
    return seconds if 0 <= seconds <= _MAX_TS else None


def _time_problems(request: Mapping[str, Any]) -> list[str]:
    """`request: <field>: ...` for each request-time field present that is no usable time (the
    `request:` prefix makes a log reader reject the whole request: every row would carry it)."""
    problems = []
    for where, holder in (("", request), ("ext.", _obj(request.get("ext")))):
        for key in _TIME_KEYS:
            value = holder.get(key)
            if value is not None and _as_unix_seconds(value) is None:
                problems.append(f"request: {where}{key}: {_show(value)} is not a time between 1970 and 9999 "
                                "(Unix seconds or milliseconds, or ISO-8601)")
    return problems


def _show(value: Any) -> str:
    """A short repr for messages (a huge integer gets its size, not its digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= 40 else text[:40] + "..."


def request_time(request: Mapping[str, Any]) -> int | None:
    """Unix seconds (UTC) at which the request was made, if it says; OpenRTB has no standard field.

    Looks at `ts` / `timestamp` at the top level, then in `ext`; numbers above 1e11 are taken as
    milliseconds, strings as ISO-8601 (naive times are UTC). A value that is no time between 1970
    and 9999 counts as absent (`validate_bid_request` reports it); never raises.
    """
    for holder in (request, _obj(request.get("ext"))):
        for key in _TIME_KEYS:
            if (seconds := _as_unix_seconds(holder.get(key))) is not None:
                return seconds
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
        except (ValueError, RecursionError):  # 100k "[" overflows the parser's stack
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


def _check_price(problems: list[str], holder: Mapping[str, Any], where: str) -> None:
    """`bidfloor`: a finite, non-negative CPM (a 400-digit integer has no float: refused here)."""
    value = holder.get("bidfloor")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        problems.append(f"{where}bidfloor: expected a number, got {type(value).__name__}")
    elif not (isinstance(value, float) or abs(value) <= 2**63) or not math.isfinite(float(value)):
        problems.append(f"{where}bidfloor: {_show(value)} is not a finite price")
    elif value < 0:
        problems.append(f"{where}bidfloor: negative")


def _check_pmp(problems: list[str], imp: Mapping[str, Any], where: str) -> None:
    """`pmp` (object), `pmp.deals` (array of objects with a string id and a valid floor)."""
    _check_type(problems, imp, "pmp", dict, where, "an object")
    pmp = imp.get("pmp")
    if not isinstance(pmp, dict):
        return
    _check_type(problems, pmp, "private_auction", int, f"{where}pmp.", "an integer")
    _check_type(problems, pmp, "deals", list, f"{where}pmp.", "an array")
    deals = pmp.get("deals")
    for d, deal in enumerate(deals if isinstance(deals, list) else []):
        at = f"{where}pmp.deals[{d}]."
        if not isinstance(deal, dict):
            problems.append(f"{at[:-1]}: expected an object, got {type(deal).__name__}")
            continue
        if not isinstance(deal.get("id"), str) or not deal["id"].strip() or _SURROGATE.search(deal["id"]):
            problems.append(f"{at}id: expected a non-empty string of valid Unicode")
        _check_price(problems, deal, at)
        _check_type(problems, deal, "bidfloorcur", str, at, "a string")
        _check_type(problems, deal, "wseat", list, at, "an array")


def _check_formats(problems: list[str], formats: Any, where: str) -> None:
    """Each `format` entry: an object whose sizes (`w`, `h`, `wratio`, `hratio`, `wmin`) are integers."""
    for f, entry in enumerate(formats if isinstance(formats, list) else []):
        if not isinstance(entry, dict):
            problems.append(f"{where}[{f}]: expected an object, got {type(entry).__name__}")
            continue
        for key in ("w", "h", "wratio", "hratio", "wmin"):
            _check_type(problems, entry, key, int, f"{where}[{f}].", "an integer")


def validate_bid_request(request: Any) -> list[str]:
    """Why `request` is not a usable OpenRTB 2.5/2.6 bid request: one message per problem, each
    naming the field (`imp[1].id: missing`); an empty list when it is usable."""
    if not isinstance(request, dict):
        return [f"request: expected a JSON object, got {type(request).__name__}"]
    problems: list[str] = _time_problems(request)
    rid = request.get("id")
    if rid is None:
        problems.append("id: missing")
    elif not isinstance(rid, str) or not rid.strip():
        problems.append("id: expected a non-empty string")
    elif _SURROGATE.search(rid):
        problems.append("id: lone surrogate, not valid Unicode text")
    for key in _OBJECTS:
        _check_type(problems, request, key, dict, "", "an object")
    for key in ("tmax", "at", "test", "allimps", "cattax"):
        _check_type(problems, request, key, int, "", "an integer")
    for key in ("cur", "bcat", "acat", "badv", "wseat", "bseat"):
        _check_type(problems, request, key, list, "", "an array")
    tmax = request.get("tmax")
    if isinstance(tmax, int) and not isinstance(tmax, bool) and not 0 < tmax <= MAX_TMAX_MS:
        problems.append(f"tmax: {_show(tmax)} ms is not a deadline (expected 1 to {MAX_TMAX_MS})")
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
        elif _SURROGATE.search(imp_id):
            problems.append(f"{where}id: lone surrogate, not valid Unicode text")
        elif imp_id in seen:
            problems.append(f"{where}id: duplicate {imp_id!r}")
        else:
            seen.add(imp_id)
        _check_price(problems, imp, where)
        _check_type(problems, imp, "bidfloorcur", str, where, "a string")
        _check_type(problems, imp, "instl", int, where, "an integer")
        for kind in IMP_TYPES:
            _check_type(problems, imp, kind, dict, where, "an object")
        if not any(isinstance(imp.get(kind), dict) for kind in IMP_TYPES):
            problems.append(f"imp[{i}]: no banner, video, audio or native object")
        for kind in ("banner", "video", "audio"):
            media = imp.get(kind)
            if isinstance(media, dict):
                for key in ("w", "h", "pos"):
                    _check_type(problems, media, key, int, f"{where}{kind}.", "an integer")
                for key in ("format", "mimes", "battr"):
                    _check_type(problems, media, key, list, f"{where}{kind}.", "an array")
                _check_formats(problems, media.get("format"), f"{where}{kind}.format")
        _check_pmp(problems, imp, where)
        native = imp.get("native")
        if isinstance(native, dict):
            # the spec says a JSON string; some exchanges send the object itself; both are read
            _check_type(problems, native, "request", (str, dict), f"{where}native.", "a string")
    return problems
