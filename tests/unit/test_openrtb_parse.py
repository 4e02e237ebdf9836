"""OpenRTB 2.5/2.6 bid requests -> log rows, and the bidder's request validation."""

from __future__ import annotations

import json

import pytest

from distillery.data.openrtb import impression_context, request_time, request_to_rows, validate_bid_request
from distillery.data.schema import CONTEXT_FIELDS
from distillery.data.text import to_text

# file -> [(row id, fields that row must carry)]
EXPECTED = {
    "iab-ortb25-simple-banner.json": [
        ("80ce30c53c16e6ede735f123ef6e32361bfc7b22:1",
         {"slot_size": "300x250", "site_category": "IAB3-1", "imp_type": "banner", "bidfloor": "0.03",
          "query": "www.foobar.com http://www.foobar.com/1234.html", "device": None, "position": None}),
    ],
    "iab-ortb25-expandable-creative.json": [
        ("123456789316e6ede735f123ef6e32361bfc7b22:1", {"slot_size": "300x250", "imp_type": "banner"}),
    ],
    "iab-ortb25-mobile.json": [
        ("IxexyLDIIk:1", {"query": "Yahoo Weather 12345", "site_category": "IAB15,IAB15-10", "device": "mobile",
                          "os": "iOS", "position": 1, "slot_size": "728x90", "bidfloor": "0.5"}),
        ("IxexyLDIIk:2", {"position": 2, "slot_size": None, "instl": "1"}),  # 0x0 interstitial: no size
    ],
    "iab-ortb25-video.json": [
        ("1234567893:1", {"imp_type": "video", "slot_size": "640x480", "position": 1, "os": "OS X",
                          "site_category": "IAB2-1,IAB2-2",
                          "query": "Site ABCD siteabcd.com http://siteabcd.com/page.htm Car Show All About Cars "
                                   "keyword-a,keyword-b,keyword-c"}),
    ],
    "iab-ortb25-pmp-with-direct-deal.json": [
        ("80ce30c53c16e6ede735f123ef6e32361bfc7b22:1", {"slot_size": "300x250", "imp_type": "banner"}),
    ],
    "iab-ortb25-native-ad.json": [
        ("80ce30c53c16e6ede735f123ef6e32361bfc7b22:1", {"imp_type": "native", "slot_size": None,
                                                         "query": "www.foobar.com http://www.foobar.com/1234.html"}),
    ],
    "iab-ortb26-simple-banner.json": [
        ("80ce30c53c16e6ede735f123ef6e32361bfc7b22:1", {"position": 0, "slot_size": "300x250", "device": None}),
    ],
    "iab-ortb26-expandable-creative.json": [
        ("123456789316e6ede735f123ef6e32361bfc7b22:1", {"position": 0, "imp_type": "banner"}),
    ],
    "iab-ortb26-mobile.json": [
        ("IxexyLDIIk:1", {"device": "mobile", "os": "iOS", "position": 1, "slot_size": "728x90"}),
    ],
    "iab-ortb26-video.json": [
        ("1234567893:1", {"imp_type": "video", "slot_size": "640x480", "position": 1}),
    ],
    "iab-ortb26-pmp-with-direct-deal.json": [
        ("80ce30c53c16e6ede735f123ef6e32361bfc7b22:1", {"position": 0, "slot_size": "300x250"}),
    ],
}


def test_expected_covers_every_shared_sample(shared_data):
    assert sorted(p.name for p in (shared_data / "openrtb").glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_sample_is_valid_and_becomes_one_row_per_imp(shared_data, name):
    request = json.loads((shared_data / "openrtb" / name).read_text())
    assert validate_bid_request(request) == []
    rows = request_to_rows(request)
    assert [r["id"] for r in rows] == [rid for rid, _ in EXPECTED[name]]
    for row, (_, fields) in zip(rows, EXPECTED[name]):
        for key in CONTEXT_FIELDS:
            assert key in row
        for key, value in fields.items():
            assert row.get(key) == value, (name, key)
        assert "click" not in row  # no outcomes given: the click is not known, not "0"
        assert row["hour"] is None and row["ts"] is None  # the IAB samples carry no request time
        text = to_text(row)
        assert "imp_type=" in text and row["id"] not in text


def test_outcomes_join_by_row_id_or_imp_id(shared_data):
    request = json.loads((shared_data / "openrtb" / "iab-ortb25-mobile.json").read_text())
    by_imp = request_to_rows(request, {"2": 1})
    assert [r["click"] for r in by_imp] == [None, 1]
    by_row = request_to_rows(request, {"IxexyLDIIk:1": 0})
    assert [r["click"] for r in by_row] == [0, None]


def test_native_request_is_parsed_leniently():
    base = {"id": "r", "site": {"page": "p"}, "imp": []}
    good = {"native": {"assets": [{"id": 1, "img": {"type": 1, "w": 50, "h": 50}},
                                  {"id": 2, "img": {"type": 3, "w": 1200, "h": 627}}]}}
    cases = {
        "broken": ({"id": "1", "native": {"request": "{\"native\":{\"assets\":[ ... ]}}"}}, None),
        "string": ({"id": "1", "native": {"request": json.dumps(good)}}, "1200x627"),
        "object": ({"id": "1", "native": {"request": good["native"]}}, "1200x627"),
        "number": ({"id": "1", "native": {"request": 7}}, None),
        "list": ({"id": "1", "native": {"request": "[1, 2]"}}, None),
    }
    for label, (imp, size) in cases.items():
        ctx = impression_context(base, imp)
        assert ctx["imp_type"] == "native", label
        assert ctx["slot_size"] == size, label
    assert validate_bid_request({**base, "imp": [cases["number"][0]]}) == [
        "imp[0].native.request: expected a string, got int"]


def test_context_from_request_time_device_and_format():
    request = {
        "id": "r1",
        "ext": {"ts": 1_413_856_800_000},  # ms: 2014-10-21 02:00 UTC
        "app": {"name": "Weather", "bundle": "com.w", "kwarray": ["rain", "sun"], "cat": ["IAB15"]},
        "device": {"devicetype": 5, "os": "Android"},
        "imp": [{"id": "a", "banner": {"format": [{"w": 320, "h": 50}, {"w": 300, "h": 250}], "pos": 3}},
                {"id": "b", "video": {"w": 640, "h": 360}, "banner": {"w": 300, "h": 250}}],
    }
    assert request_time(request) == 1_413_856_800
    a, b = request_to_rows(request)
    assert a["hour"] == 2 and a["ts"] == 1_413_856_800
    assert a["device"] == "tablet" and a["os"] == "Android" and a["query"] == "Weather com.w rain,sun"
    assert a["slot_size"] == "320x50" and a["position"] == 3 and "bidfloor" not in a
    assert b["imp_type"] == "banner+video" and b["slot_size"] == "300x250"
    assert request_time({"timestamp": "2014-10-21T05:00:00Z"}) == 1_413_867_600
    assert impression_context({"device": {"devicetype": 99}}, {})["device"] == "other"


def test_odd_types_never_crash_context():
    request = {"id": "r", "site": "not-an-object", "device": [], "imp": [{"id": "1", "banner": {"w": "300", "h": 250,
                                                                                                "pos": "top"}}]}
    (row,) = request_to_rows(request)
    assert row["slot_size"] is None and row["position"] is None and row["query"] is None
    assert request_to_rows({"imp": []}) == [] and request_to_rows("junk") == []  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_, problem",
    [
        ([], "request: expected a JSON object, got list"),
        ({"imp": [{"id": "1", "banner": {}}]}, "id: missing"),
        ({"id": "", "imp": [{"id": "1", "banner": {}}]}, "id: expected a non-empty string"),
        ({"id": "r"}, "imp: missing"),
        ({"id": "r", "imp": []}, "imp: empty (a request needs at least one impression)"),
        ({"id": "r", "imp": {"id": "1"}}, "imp: expected an array, got dict"),
        ({"id": "r", "imp": [{"banner": {}}]}, "imp[0].id: missing"),
        ({"id": "r", "imp": [{"id": 1, "banner": {}}]}, "imp[0].id: expected a non-empty string"),
        ({"id": "r", "imp": [{"id": "1", "banner": {}}, {"id": "1", "banner": {}}]}, "imp[1].id: duplicate '1'"),
        ({"id": "r", "imp": ["x"]}, "imp[0]: expected an object, got str"),
        ({"id": "r", "imp": [{"id": "1"}]}, "imp[0]: no banner, video, audio or native object"),
        ({"id": "r", "imp": [{"id": "1", "banner": {"w": "300"}}]}, "imp[0].banner.w: expected an integer, got str"),
        ({"id": "r", "imp": [{"id": "1", "banner": {}, "bidfloor": "1"}]}, "imp[0].bidfloor: expected a number, got str"),
        ({"id": "r", "imp": [{"id": "1", "banner": {}, "bidfloor": -1}]}, "imp[0].bidfloor: negative"),
        ({"id": "r", "imp": [{"id": "1", "video": []}]}, "imp[0].video: expected an object, got list"),
        ({"id": "r", "tmax": "120", "imp": [{"id": "1", "banner": {}}]}, "tmax: expected an integer, got str"),
        ({"id": "r", "site": {}, "app": {}, "imp": [{"id": "1", "banner": {}}]},
         "site, app: a request must not carry both"),
        ({"id": "r", "device": {"devicetype": True}, "imp": [{"id": "1", "banner": {}}]},
         "device.devicetype: expected an integer, got bool"),
        ({"id": "r", "imp": [{"id": "1", "banner": {"format": [{"w": "x", "h": None}]}}]},
         "imp[0].banner.format[0].w: expected an integer, got str"),
        ({"id": "r", "imp": [{"id": "1", "banner": {"format": [{"w": 300, "h": 250}, "320x50"]}}]},
         "imp[0].banner.format[1]: expected an object, got str"),
        ({"id": "r", "imp": [{"id": "1", "banner": {"format": [{"wratio": 1.5, "hratio": 1}]}}]},
         "imp[0].banner.format[0].wratio: expected an integer, got float"),
        ({"id": "r", "cattax": "2", "imp": [{"id": "1", "banner": {}}]}, "cattax: expected an integer, got str"),
        ({"id": "r", "acat": "IAB1", "imp": [{"id": "1", "banner": {}}]}, "acat: expected an array, got str"),
    ],
)
def test_validate_bid_request_names_the_field(request_, problem):
    assert problem in validate_bid_request(request_)


def test_well_formed_format_entries_and_category_taxonomy_are_valid():
    banner = {"format": [{"w": 300, "h": 250}, {"wratio": 16, "hratio": 9, "wmin": 320}, {"w": 320, "h": None}]}
    request = {"id": "r", "cattax": 2, "acat": ["483"], "imp": [{"id": "1", "banner": banner}]}
    assert validate_bid_request(request) == []
    assert impression_context(request, request["imp"][0])["slot_size"] == "300x250"
    # a malformed first entry is reported, and the row builder still never raises on it
    bad = {"id": "1", "banner": {"format": [{"w": "x", "h": None}]}}
    assert impression_context({}, bad)["slot_size"] is None


def test_validate_reports_every_problem_at_once():
    problems = validate_bid_request({"imp": [{"banner": {"h": 2.5}}, 3]})
    assert problems == [
        "id: missing",
        "imp[0].id: missing",
        "imp[0].banner.h: expected an integer, got float",
        "imp[1]: expected an object, got int",
    ]


def test_lone_surrogates_become_replacement_characters():
    request = json.loads('{"id": "r", "app": {"name": "we\\udc80ather"}, "imp": [{"id": "1", "banner": {}}]}')
    (row,) = request_to_rows(request)
    assert row["query"] == "we\ufffdather"
    json.dumps(row).encode("utf-8")  # serializable: the bidder can log and score it


# -- issue 14: a bad logged `ts` is one rejected request, not a failed read ----------------------

BAD_TS = [10 ** 400, -5, 1e20, -1e20, "0001-01-01T00:00:00", "9999-12-31T23:59:59-14:00", "yesterday",
          float("inf")]


@pytest.mark.parametrize("ts", BAD_TS)
def test_bad_request_time_never_raises_and_is_reported(ts):
    request = {"id": "r", "ts": ts, "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    assert request_time(request) is None
    assert request_to_rows(request)[0]["hour"] is None  # no row builder raises either
    problems = validate_bid_request(request)
    assert any(p.startswith("request: ts:") for p in problems), problems


def test_read_logs_rejects_only_the_request_with_a_bad_ts(tmp_path):
    from distillery.data.readers import read_logs

    good = {"id": "good", "ts": 1_413_856_800, "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    lines = [dict(good, id=f"bad{i}", ts=ts) for i, ts in enumerate(BAD_TS) if ts != float("inf")] + [good]
    path = tmp_path / "logs.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    result = read_logs(str(path), fmt="openrtb")
    assert result.table["id"].to_pylist() == ["good:1"]
    reasons = result.rejects["reason"].to_pylist()
    assert len(reasons) == len(lines) - 1 and all("ts:" in r for r in reasons), reasons
