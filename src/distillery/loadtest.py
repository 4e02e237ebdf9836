"""A bounded HTTP load generator for the serving routes (127.0.0.1 only), plus request builders.

Each client thread keeps one HTTP/1.1 connection open and sends its share of the requests; the run
stops when the requests are spent or `max_seconds` has passed, whichever comes first.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator
from urllib.parse import urlparse

__all__ = ["LoadResult", "run_load", "predict_bodies", "openrtb_bodies"]

_CONTEXT = ("query", "site_category", "device", "os", "hour", "position", "slot_size")
_AD = ("advertiser", "ad_title", "ad_description", "ad_category")
_DEVICE_TYPE = {"mobile": 4, "desktop": 2, "tablet": 5}


@dataclass
class LoadResult:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0          # transport errors and 5xx
    rows: int = 0            # rows scored in 2xx answers
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


def openrtb_bodies(rows: list[dict[str, Any]], version: str = "2.6") -> Iterator[tuple[str, bytes, int]]:
    """OpenRTB bid requests built from log rows' request context (site page text, device, slot)."""
    n = len(rows)
    i = 0
    while True:
        r = rows[i % n]
        w, h = (int(x) for x in (r.get("slot_size") or "300x250").split("x"))
        request = {
            "id": f"load-{i}", "at": 1, "tmax": 120, "cur": ["USD"],
            "imp": [{"id": "1", "banner": {"w": w, "h": h, "pos": int(r.get("position") or 0)},
                     "bidfloor": 0.01, "bidfloorcur": "USD"}],
            "site": {"id": "s1", "page": f"https://example.com/{r['query'].replace(' ', '-')}",
                     "keywords": r["query"], "cat": []},
            "device": {"devicetype": _DEVICE_TYPE.get(r.get("device"), 2), "os": r.get("os") or ""},
            "user": {"id": "u1"},
        }
        i += 1
        yield f"/openrtb/{version}/bid", json.dumps(request).encode(), 1


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
            try:
                conn.request("POST", path, body=body, headers=base_headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                status = 0
                conn.close()
                conn = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if status == 0 or status >= 500:
                    result.errors += 1
                elif 200 <= status < 300:
                    result.latencies_ms.append(ms)
                    result.rows += n_rows
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max_seconds + 60)
    result.seconds = time.perf_counter() - started
    return result
