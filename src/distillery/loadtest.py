"""A bounded HTTP load generator for the serving routes (127.0.0.1 only), plus request builders.

    result = run_load(url, predict_bodies(rows, 8), requests=800, concurrency=8, max_seconds=30)
    catalog = bid_catalog(rows)                       # 1,024 creatives in size groups (serving.catalog schema)
    contexts = fresh_contexts(rows)                   # request contexts, never the same page/keywords twice
    by_count = bid_latency(url, contexts, requests=200, tmax_ms=100, max_seconds=10)   # light load, per N
    sat = bid_saturation(url, contexts, 128, (1, 2, 4), seconds=3, tmax_ms=100)       # bids/s per core

Each client thread keeps one HTTP/1.1 connection open and sends its share of the requests; a run
stops when the requests are spent or `max_seconds` has passed, whichever comes first. OpenRTB
answers are sorted into bids (200 with a non-empty seatbid) and no-bids (204, or 200 without one).

Bid requests are built so that an impression's banner formats select exactly N creatives of the
generated catalog: creatives come in size groups, group k holding counts[k] − counts[k−1] of them,
and a request for counts[k] candidates lists the sizes of groups 0..k. Their request context
(keywords, page) comes from log rows and is never repeated within one `fresh_contexts` stream, so a
replica's request-embedding cache cannot answer a timed bid.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from distillery.data.openrtb import DEVICE_TYPES
from distillery.metrics import percentiles

__all__ = ["LoadResult", "run_load", "predict_bodies", "BID_COUNTS", "size_groups", "catalog_ads",
           "bid_catalog", "fresh_contexts", "bid_formats", "bid_request", "bid_bodies", "bid_summary", "bid_latency",
           "bid_saturation"]

_CONTEXT = ("query", "site_category", "device", "os", "hour", "position", "slot_size")
_AD = ("advertiser", "ad_title", "ad_description", "ad_category")
_DEVICE_TYPE = {name: code for code, name in DEVICE_TYPES.items() if name in ("mobile", "desktop", "tablet")}
BID_COUNTS = (1, 8, 128, 1024)  # eligible candidates per bid: the report contract's serve.bid_ms.<N>
# Group sizes: the IAB banner sizes the synthetic logs use first, so a bid's slot_size is one a model saw.
_SIZES = ("300x250", "728x90", "320x50", "160x600", "300x600", "970x250", "336x280", "468x60", "320x100",
          "250x250", "120x600", "970x90")


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)  # 2xx answers only
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0          # transport errors and 5xx
    rows: int = 0            # rows scored in 2xx answers
    bids: int = 0            # OpenRTB: 200 with a non-empty seatbid
    no_bids: int = 0         # OpenRTB: 204, or 200 without a seatbid
    seconds: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def predict_bodies(rows: list[dict[str, Any]], candidates: int) -> Iterator[tuple[str, bytes, int]]:
    """(path, body, rows) for /predict: one request context with `candidates` ads, cycling the rows."""
    n = len(rows)
    i = 0
    while True:
        if any(k in rows[i % n] for k in _AD):
            context = {k: rows[i % n][k] for k in _CONTEXT if rows[i % n].get(k) is not None}
            batch = [{**context, **{k: rows[(i + j) % n][k] for k in _AD}} for j in range(candidates)]
        else:  # a log in its own columns (Criteo, Avazu, yours): whole rows are the candidates
            batch = [rows[(i + j) % n] for j in range(candidates)]
        i += candidates
        yield "/predict", json.dumps({"rows": batch}).encode(), candidates


def _has_seatbid(body: bytes) -> bool:
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    seats = answer.get("seatbid") if isinstance(answer, dict) else None
    return isinstance(seats, list) and any(isinstance(s, dict) and s.get("bid") for s in seats)


def run_load(url: str, bodies: Iterator[tuple[str, bytes, int]], requests: int, concurrency: int,
             max_seconds: float, headers: dict[str, str] | None = None) -> LoadResult:
    """Send `requests` POSTs from `concurrency` keep-alive connections; latencies in ms."""
    target = urlparse(url)
    if target.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load tests target this machine only, not {target.hostname}")
    result = LoadResult()
    lock = threading.Lock()
    body_lock = threading.Lock()
    deadline = time.perf_counter() + max_seconds
    remaining = [requests]
    base_headers = {"Content-Type": "application/json", **(headers or {})}

    def client() -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        while time.perf_counter() < deadline:
            with body_lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
                path, body, n_rows = next(bodies)
            t0 = time.perf_counter()
            answer = b""
            try:
                conn.request("POST", path, body=body, headers=base_headers)
                resp = conn.getresponse()
                answer = resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
            ms = (time.perf_counter() - t0) * 1000
            bid = path.startswith("/openrtb/") and status == 200 and _has_seatbid(answer)
            with lock:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 0 or status >= 500:
                    result.errors += 1
                elif 200 <= status < 300:
                    result.latencies_ms.append(ms)
                    result.rows += n_rows
                    if path.startswith("/openrtb/"):
                        result.bids += bid
                        result.no_bids += not bid
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max_seconds + 60)
    result.seconds = time.perf_counter() - started
    return result


# ------------------------------------------------------------------ bids by number of candidates

def size_groups(counts: Sequence[int] = BID_COUNTS, sizes: Sequence[str] = _SIZES) -> list[tuple[str, int]]:
    """(WxH, creatives) per group: group k holds counts[k] − counts[k−1] creatives, so a request that
    lists the sizes of groups 0..k has exactly counts[k] eligible. `counts` ascending, distinct, ≥ 1;
    past the end of `sizes`, groups get sizes 1001x250, 1002x250, …"""
    counts = list(counts)
    if not counts or counts[0] < 1 or any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"counts: expected ascending distinct numbers ≥ 1, got {counts}")
    names = list(sizes) + [f"{1001 + k}x250" for k in range(max(0, len(counts) - len(sizes)))]
    return [(names[k], n - (counts[k - 1] if k else 0)) for k, n in enumerate(counts)]


def catalog_ads(rows: Sequence[Mapping[str, Any]], n: int) -> list[dict[str, str]]:
    """`n` distinct ads (advertiser, ad_title, ad_description, ad_category) from log rows, in row
    order; when the rows hold fewer, earlier ads come back with a numbered title. Rows without ad
    text (Criteo, Avazu) give placeholder ads: a bid's cost does not depend on the words."""
    seen: dict[tuple, dict[str, str]] = {}
    for r in rows:
        ad = {"advertiser": str(r.get("advertiser") or f"Advertiser {len(seen)}"),
              "ad_title": str(r.get("ad_title") or f"Ad {len(seen)}"),
              "ad_description": str(r.get("ad_description") or ""),
              "ad_category": str(r.get("ad_category") or "general")}
        seen.setdefault(tuple(ad.values()), ad)
        if len(seen) == n:
            break
    ads = list(seen.values()) or [{"advertiser": "Advertiser 0", "ad_title": "Ad 0", "ad_description": "",
                                  "ad_category": "general"}]
    base = len(ads)
    while len(ads) < n:
        ads.append({**ads[len(ads) % base], "ad_title": f"{ads[len(ads) % base]['ad_title']} {len(ads)}"})
    return ads[:n]


def bid_catalog(rows: Sequence[Mapping[str, Any]], counts: Sequence[int] = BID_COUNTS,
                sizes: Sequence[str] = _SIZES, seat: str = "loadtest") -> dict[str, Any]:
    """A bidder catalog (the `distillery.serving.catalog` schema, as a dict for YAML) of max(counts)
    creatives from the rows' ads, one campaign each, in the size groups of `size_groups`."""
    groups = size_groups(counts, sizes)
    ads = catalog_ads(rows, sum(n for _, n in groups))
    campaigns, k = [], 0
    for size, n in groups:
        for _ in range(n):
            ad = ads[k]
            campaigns.append({"id": f"c{k}", "advertiser": f"adv{k}.example.com", "brand": ad["advertiser"],
                              "ad_category": ad["ad_category"], "iab_categories": ["IAB1"], "value_per_click": 5.0,
                              "max_bid_cpm": 20.0,
                              "ads": [{"id": f"a{k}", "title": ad["ad_title"], "description": ad["ad_description"],
                                       "sizes": [size]}]})
            k += 1
    return {"seat": seat, "campaigns": campaigns}


def _words(text: str) -> str:
    return " ".join(str(text).split())


def fresh_contexts(rows: Sequence[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """Request contexts (keywords, site category, device, os, position, slot size) from log rows,
    never the same keywords twice: each row's query once (repeats skipped), then the rows again with
    " 2", " 3", … appended (a variant that meets an earlier text is skipped too). Rows without a
    query (Criteo, Avazu) read as "page <k>". Raises ValueError on no rows."""
    if not rows:
        raise ValueError("fresh_contexts: no rows to build request contexts from")
    seen: set[str] = set()
    round_ = 1
    while True:
        for k, r in enumerate(rows):
            words = _words(r.get("query") or f"page {k}")
            text = words if round_ == 1 else f"{words} {round_}"
            if text in seen:
                continue
            seen.add(text)
            yield {"keywords": text, "site_category": r.get("site_category"), "device": r.get("device"),
                   "os": r.get("os"), "position": r.get("position"), "slot_size": r.get("slot_size")}
        round_ += 1


def bid_formats(n: int, counts: Sequence[int] = BID_COUNTS, sizes: Sequence[str] = _SIZES,
                first: str | None = None) -> list[dict[str, int]]:
    """Banner formats that select exactly `n` creatives of `bid_catalog(rows, counts, sizes)`; `first`
    (a slot size among them) is listed first, as the slot the context's slot_size reports."""
    groups = size_groups(counts, sizes)
    if n not in counts:
        raise ValueError(f"candidates {n}: not one of the catalog's counts {list(counts)}")
    picked = [size for size, _ in groups[:list(counts).index(n) + 1]]
    if first in picked:
        picked.remove(first)
        picked.insert(0, first)
    return [{"w": int(s.split("x")[0]), "h": int(s.split("x")[1])} for s in picked]


def bid_request(context: Mapping[str, Any], formats: list[dict[str, int]], request_id: str,
                tmax_ms: int = 100) -> dict[str, Any]:
    """One OpenRTB 2.6 bid request: one banner impression (floor 0.01 USD CPM) on a site whose page
    and keywords are the context's."""
    words = context["keywords"]
    slug = re.sub(r"[^a-z0-9]+", "-", words.lower()).strip("-") or "home"
    banner: dict[str, Any] = {"format": formats}
    if isinstance(context.get("position"), int):
        banner["pos"] = context["position"]
    site: dict[str, Any] = {"id": "s1", "page": f"https://news.example.com/{slug}", "keywords": words}
    if context.get("site_category"):
        site["cat"] = [str(context["site_category"])]
    device = {"devicetype": _DEVICE_TYPE.get(context.get("device"), 2), **({"os": context["os"]} if context.get("os") else {})}
    return {"id": request_id, "at": 1, "tmax": int(tmax_ms), "cur": ["USD"],
            "imp": [{"id": "1", "banner": banner, "bidfloor": 0.01, "bidfloorcur": "USD"}],
            "site": site, "device": device, "user": {"id": f"u-{request_id}"}}


def bid_bodies(contexts: Iterator[dict[str, Any]], n: int, counts: Sequence[int] = BID_COUNTS,
               tmax_ms: int = 100, sizes: Sequence[str] = _SIZES, version: str = "2.6"
               ) -> Iterator[tuple[str, bytes, int]]:
    """(path, body, n) for run_load: bid requests with `n` eligible creatives, each on the next context."""
    for i, ctx in enumerate(contexts):
        formats = bid_formats(n, counts, sizes, first=ctx.get("slot_size"))
        yield f"/openrtb/{version}/bid", json.dumps(bid_request(ctx, formats, f"n{n}-{i}", tmax_ms)).encode(), n


def bid_summary(result: LoadResult) -> dict[str, Any]:
    """p50/p99 (ms, over every answer: bids and no-bids) with the sample behind them: requests,
    bids, no_bids, errors (neither: 4xx, 5xx, transport), statuses."""
    return {**percentiles(result.latencies_ms), "requests": result.requests, "bids": result.bids,
            "no_bids": result.no_bids, "errors": result.requests - result.bids - result.no_bids,
            "statuses": {str(k): v for k, v in sorted(result.statuses.items())}}


def bid_latency(url: str, contexts: Iterator[dict[str, Any]], counts: Sequence[int] = BID_COUNTS, *,
                requests: int, tmax_ms: int, max_seconds: float, warmup: int = 5,
                headers: dict[str, str] | None = None, layout: Sequence[int] | None = None,
                sizes: Sequence[str] = _SIZES) -> dict[str, dict[str, Any]]:
    """Light load: per candidate count, one client sends `requests` fresh bids in sequence on one
    keep-alive connection (after `warmup` fresh, untimed ones); `max_seconds` bounds each count.
    `layout`: the counts the catalog was made for (`bid_catalog`), default `counts`.
    {"<N>": bid_summary}."""
    out = {}
    for n in counts:
        bodies = bid_bodies(contexts, n, layout or counts, tmax_ms, sizes)
        if warmup:
            run_load(url, bodies, warmup, 1, max_seconds, headers)
        out[str(n)] = bid_summary(run_load(url, bodies, requests, 1, max_seconds, headers))
    return out


def bid_saturation(url: str, contexts: Iterator[dict[str, Any]], n: int, concurrency: Sequence[int], *,
                   seconds: float, tmax_ms: int, counts: Sequence[int] = BID_COUNTS, cores: int | None = None,
                   headers: dict[str, str] | None = None, sizes: Sequence[str] = _SIZES,
                   p99_limit_ms: float | None = None) -> dict[str, Any]:
    """Bids/s at `n` candidates, `seconds` per level of closed-loop clients, raised in the order
    given until p99 exceeds `p99_limit_ms` (default: the requests' `tmax_ms`) or a request fails.
    The figure is the best level whose p99 stays within the limit, over `cores` (this machine's:
    client, proxy and replica share them)."""
    cores = cores or os.cpu_count() or 1
    limit = tmax_ms if p99_limit_ms is None else p99_limit_ms
    levels = []
    for c in concurrency:
        r = run_load(url, bid_bodies(contexts, n, counts, tmax_ms, sizes), 10**9, c, seconds, headers)
        levels.append({"concurrency": c, "bids_per_s": round(r.bids / r.seconds, 2) if r.seconds else None,
                       **bid_summary(r)})
        if levels[-1]["p99"] is None or levels[-1]["p99"] > limit or levels[-1]["errors"]:
            break
    ok = [lv for lv in levels if lv["p99"] is not None and lv["p99"] <= limit and not lv["errors"] and lv["bids_per_s"]]
    best = max(ok, key=lambda lv: lv["bids_per_s"], default=None)
    out: dict[str, Any] = {
        "candidates": n, "cores": cores, "tmax_ms": tmax_ms, "p99_limit_ms": limit, "seconds_per_level": seconds,
        "bids_per_s_per_core": round(best["bids_per_s"] / cores, 2) if best else None,
        "bids_per_s": best["bids_per_s"] if best else None, "concurrency": best["concurrency"] if best else None,
        "p99_ms": best["p99"] if best else None, "levels": levels}
    if best is None:
        out["bids_per_s_per_core_reason"] = f"no concurrency level answered bids with p99 within {limit} ms (requests' tmax {tmax_ms} ms)"
    return out
