"""The load generator's bid side: fresh request contexts, a catalog whose size groups give each bid
exactly N eligible creatives (checked with the bidder's own eligibility code), and bids, no-bids and
saturation counted from a real HTTP server on 127.0.0.1 (no Ray)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from distillery.data.openrtb import impression_context, validate_bid_request
from distillery.data.synthetic import SyntheticConfig, generate
from distillery.loadtest import (BID_COUNTS, bid_bodies, bid_catalog, bid_formats, bid_latency, bid_request,
                                 bid_saturation, catalog_ads, fresh_contexts, run_load, size_groups)
from distillery.serving.bidder import plan_bids
from distillery.serving.catalog import Catalog


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return generate(SyntheticConfig(seed=3, rows_train=1, rows_unlabeled=0, rows_test=400), "test").to_pylist()


def _queries(contexts, n: int, counts=BID_COUNTS) -> list[str]:
    """The query text a model reads (`impression_context`) of the next `n` bids."""
    out = []
    for i, ctx in enumerate(itertools.islice(contexts, n)):
        request = bid_request(ctx, bid_formats(counts[i % len(counts)], counts, first=ctx["slot_size"]), f"r{i}")
        assert validate_bid_request(request) == []
        out.append(impression_context(request, request["imp"][0])["query"])
    return out


def test_fresh_contexts_never_repeat_a_request(rows):
    # 400 rows hold far fewer distinct queries than 5,000 bids: the variants must take over
    assert len({r["query"] for r in rows}) < 400
    queries = _queries(fresh_contexts(rows), 5000)
    assert len(set(queries)) == 5000
    # a variant that meets a query already sent is skipped, not sent twice
    clash = [{"query": "running shoes"}, {"query": "running shoes 2"}, {"query": "running shoes"}]
    words = [c["keywords"] for c in itertools.islice(fresh_contexts(clash), 6)]
    assert words == ["running shoes", "running shoes 2", "running shoes 2 2", "running shoes 3",
                     "running shoes 2 3", "running shoes 4"]
    # logs without a query column (Criteo, Avazu) still get distinct pages
    assert len(set(_queries(fresh_contexts([{"C1": 1}, {"C1": 2}]), 300))) == 300
    with pytest.raises(ValueError, match="no rows"):
        next(fresh_contexts([]))


@pytest.mark.parametrize("counts,sizes", [(BID_COUNTS, None), ((1, 8, 32, 128, 512, 1024),
                                                                tuple(f"{301 + g}x250" for g in range(6)))])
def test_formats_select_exactly_n_creatives(rows, counts, sizes):
    extra = {"sizes": sizes} if sizes else {}
    catalog = Catalog.model_validate(bid_catalog(rows, counts, **extra))
    assert len(catalog.candidates()) == counts[-1]
    assert len({(a.creative.title, a.creative.description, a.campaign.brand) for a in catalog.candidates()}) == counts[-1]
    contexts = fresh_contexts(rows)
    for n in counts:
        for _, (_, body, rows_per) in zip(range(3), bid_bodies(contexts, n, counts, **extra)):
            request = json.loads(body)
            plan = plan_bids(request, catalog, max_candidates=100_000)
            assert len(plan.candidates) == n == rows_per and not plan.no_bid
            assert plan.candidates[0].row["query"]  # the model reads the page and keywords


def test_size_groups_and_formats_refuse_what_cannot_work():
    assert size_groups((1, 8, 128, 1024)) == [("300x250", 1), ("728x90", 7), ("320x50", 120), ("160x600", 896)]
    assert size_groups(range(1, 15))[-1] == ("1002x250", 1)  # past the named sizes
    with pytest.raises(ValueError, match="ascending"):
        size_groups((8, 1))
    with pytest.raises(ValueError, match="not one of"):
        bid_formats(5)
    assert bid_formats(8, first="728x90") == [{"w": 728, "h": 90}, {"w": 300, "h": 250}]


def test_catalog_ads_fill_up_with_numbered_titles():
    ads = catalog_ads([{"advertiser": "A", "ad_title": "T", "ad_description": "d", "ad_category": "c"}] * 3, 4)
    assert [a["ad_title"] for a in ads] == ["T", "T 1", "T 2", "T 3"]
    assert catalog_ads([{"C1": 1}], 2)[0]["ad_category"] == "general"  # no ad text in the log


# ------------------------------------------------------------------------- against a real server

class _Bidder(BaseHTTPRequestHandler):
    """Bids when the keywords' first letter is before "n", answers `{"id", "nbr"}` (200) or 204 otherwise."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []
    delay_s = 0.0

    def do_POST(self):  # noqa: N802 - the http.server hook
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        keywords = request["site"]["keywords"]
        type(self).seen.append(keywords)
        time.sleep(self.delay_s)
        if keywords < "n":
            self._send(200, {"id": request["id"], "seatbid": [{"seat": "s", "bid": [{"id": "1", "price": 1.0}]}]})
        elif len(keywords) % 2:
            self._send(200, {"id": request["id"], "nbr": 2})
        else:
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def _send(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Bidder.seen, _Bidder.delay_s = [], 0.0
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Bidder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_bids_and_no_bids_are_told_apart(server, rows):
    r = run_load(server, bid_bodies(fresh_contexts(rows), 8), 120, 2, 30)
    expect_bids = sum(k < "n" for k in _Bidder.seen)
    assert r.requests == 120 and r.bids == expect_bids and r.no_bids == 120 - expect_bids and r.errors == 0
    assert 0 < r.bids < 120 and {200, 204} <= set(r.statuses)


def test_bid_latency_times_fresh_bids_only_and_counts_them(server, rows):
    out = bid_latency(server, fresh_contexts(rows), (1, 8), requests=40, tmax_ms=100, max_seconds=30, warmup=3)
    assert set(out) == {"1", "8"}
    for n in ("1", "8"):
        b = out[n]
        assert b["requests"] == 40 and b["bids"] + b["no_bids"] == 40 and b["errors"] == 0
        assert b["p50"] <= b["p99"]
    assert len(_Bidder.seen) == 2 * (3 + 40) == len(set(_Bidder.seen))  # warm-ups fresh too, nothing repeated


def test_bid_saturation_stops_when_p99_leaves_tmax(server, rows):
    _Bidder.delay_s = 0.004
    sat = bid_saturation(server, fresh_contexts(rows), 8, (1, 2), seconds=0.5, tmax_ms=1000, cores=2)
    assert [lv["concurrency"] for lv in sat["levels"]] == [1, 2]
    best = max(sat["levels"], key=lambda lv: lv["bids_per_s"])
    assert sat["bids_per_s"] == best["bids_per_s"] and sat["bids_per_s_per_core"] == round(best["bids_per_s"] / 2, 2)
    assert len(_Bidder.seen) == len(set(_Bidder.seen))
    slow = bid_saturation(server, fresh_contexts(rows), 8, (1, 2, 4), seconds=0.3, tmax_ms=1, cores=2)
    assert len(slow["levels"]) == 1 and slow["bids_per_s_per_core"] is None  # p99 > 1 ms at once: stop
    assert "tmax" in slow["bids_per_s_per_core_reason"]
