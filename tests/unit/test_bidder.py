"""The bidder's pure steps: eligibility (`plan_bids`) and the auction (`decide_bids`), without Ray or a model."""

from __future__ import annotations

import copy
import re
import json

import numpy as np
import pytest

from distillery.config import ConfigError
from distillery.serving.bidder import (BidRequestError, NoBid, NoBidReason, decide_bids, deadline_budget_ms,
                                      no_bid_response, plan_bids)
from distillery.serving.catalog import Catalog, load_catalog


def _catalog(**overrides) -> Catalog:
    campaign = {
        "id": "c1", "advertiser": "brand.example", "ad_category": "sports", "iab_categories": ["IAB17"],
        "value_per_click": 1.0, "max_bid_cpm": 5.0,
        "ads": [{"id": "a300", "title": "Shoes", "formats": ["banner"], "sizes": ["300x250"]},
                {"id": "a728", "title": "Shoes wide", "formats": ["banner"], "sizes": ["728x90"]}],
    }
    other = {
        "id": "c2", "advertiser": "other.example", "ad_category": "travel", "iab_categories": ["IAB20-1"],
        "value_per_click": 2.0, "max_bid_cpm": 3.0,
        "ads": [{"id": "b300", "title": "Flights", "formats": ["banner", "video"], "sizes": ["300x250", "640x480"],
                 "mimes": ["video/mp4"]}],
    }
    campaign.update(overrides)
    return Catalog.model_validate({"campaigns": [campaign, other]})


def _request(**overrides) -> dict:
    req = {"id": "r1", "imp": [{"id": "1", "bidfloor": 0.5, "banner": {"w": 300, "h": 250}}],
           "site": {"domain": "news.example", "cat": ["IAB12"]}}
    req.update(overrides)
    return req


def test_demo_catalog_loads_and_has_every_format():
    catalog = load_catalog()
    formats = {f for ad in catalog.candidates() for f in ad.creative.formats}
    assert {"banner", "video", "native"} <= formats


def test_bad_catalog_names_the_field(tmp_path):
    path = tmp_path / "cat.yaml"
    path.write_text("campaigns:\n  - id: x\n    advertiser: 'https://Brand.com'\n    ad_category: a\n"
                    "    iab_categories: [IAB1]\n    value_per_click: 1\n    max_bid_cpm: 1\n    ads: [{id: a, title: t}]\n")
    with pytest.raises(ConfigError, match="advertiser"):
        load_catalog(path)


def test_size_and_format_decide_eligibility():
    plan = plan_bids(_request(), _catalog())
    assert sorted(c.ad.creative.id for c in plan.candidates) == ["a300", "b300"]
    assert all(c.imp_id == "1" and (c.w, c.h) == (300, 250) for c in plan.candidates)
    # the row the model reads is the impression context plus the ad's fields
    assert plan.candidates[0].row["ad_title"] == "Shoes" and plan.candidates[0].row["slot_size"] == "300x250"
    assert len(plan.texts()) == 2 and "ad: Shoes" in plan.texts()[0]


def test_banner_format_list_and_open_size():
    req = _request(imp=[{"id": "1", "banner": {"format": [{"w": 728, "h": 90}]}},
                        {"id": "2", "instl": 1, "banner": {"w": 0, "h": 0}}])
    plan = plan_bids(req, _catalog())
    by_imp = {}
    for c in plan.candidates:
        by_imp.setdefault(c.imp_id, []).append(c.ad.creative.id)
    assert by_imp["1"] == ["a728"]
    assert sorted(by_imp["2"]) == ["a300", "a728", "b300"]


def test_bcat_is_hierarchical_and_badv_matches_subdomains():
    plan = plan_bids(_request(bcat=["IAB20"]), _catalog())
    assert [c.ad.creative.id for c in plan.candidates] == ["a300"]
    plan = plan_bids(_request(badv=["example"]), _catalog(advertiser="shop.brand.example"))
    assert plan.candidates == [] and "blocked" in plan.no_bid["1"]
    plan = plan_bids(_request(badv=["brand.example"]), _catalog(advertiser="shop.brand.example"))
    assert [c.ad.creative.id for c in plan.candidates] == ["b300"]


def test_currency_mismatch_means_no_candidates():
    plan = plan_bids(_request(cur=["EUR"]), _catalog())
    assert plan.candidates == [] and "currency" in plan.no_bid["1"]
    assert decide_bids(plan, np.zeros(0), model_version="v")[0] is None


def test_battr_and_video_mimes():
    cat = _catalog()
    cat.campaigns[1].ads[0].attr.append(13)
    plan = plan_bids(_request(imp=[{"id": "1", "banner": {"w": 300, "h": 250, "battr": [13]}}]), cat)
    assert [c.ad.creative.id for c in plan.candidates] == ["a300"]
    video = {"id": "v", "video": {"w": 640, "h": 480, "mimes": ["video/x-flv"]}}
    assert plan_bids(_request(imp=[video]), _catalog()).candidates == []
    video["video"]["mimes"].append("video/mp4")
    plan = plan_bids(_request(imp=[video]), _catalog())
    assert [(c.ad.creative.id, c.kind) for c in plan.candidates] == [("b300", "video")]


def test_best_expected_value_wins_and_price_is_capped():
    plan = plan_bids(_request(), _catalog())  # a300: vpc 1, cap 5; b300: vpc 2, cap 3
    resp, _ = decide_bids(plan, np.array([0.004, 0.003]), model_version="v7", openrtb="2.6")
    (seat,) = resp["seatbid"]
    (bid,) = seat["bid"]
    # eCPM a300 = 4.0, b300 = 6.0 -> b300 wins, price capped by its max bid 3.0
    assert bid["crid"] == "b300" and bid["price"] == pytest.approx(3.0)
    assert bid["adomain"] == ["other.example"] and bid["cat"] == ["IAB20-1"] and bid["mtype"] == 1
    assert resp["id"] == "r1" and resp["cur"] == "USD" and resp["ext"]["model_version"] == "v7"
    resp25, _ = decide_bids(plan, np.array([0.004, 0.003]), model_version="v7", openrtb="2.5")
    assert "mtype" not in resp25["seatbid"][0]["bid"][0]


def test_floor_is_respected():
    plan = plan_bids(_request(), _catalog())
    # prices 0.4 and 0.4 CPM, floor 0.5 -> no bid at all
    response, why = decide_bids(plan, np.array([0.0004, 0.0002]), model_version="v")
    assert response is None and "clears the floor 0.5" in why["1"]
    # only a300 clears the floor (0.6); b300's eCPM is below it
    resp, _ = decide_bids(plan, np.array([0.0006, 0.0002]), model_version="v")
    assert resp["seatbid"][0]["bid"][0]["crid"] == "a300"
    assert resp["seatbid"][0]["bid"][0]["price"] >= 0.5


def test_invalid_native_request_gets_no_bid_others_answered():
    req = _request(imp=[{"id": "n", "native": {"request": '{"native":{"assets":[ ... ]}}'}},
                        {"id": "1", "bidfloor": 0.01, "banner": {"w": 300, "h": 250}}])
    plan = plan_bids(req, _catalog())
    assert "native.request: not valid JSON" in plan.no_bid["n"]
    resp, _ = decide_bids(plan, np.full(len(plan.candidates), 0.01), model_version="v")
    assert [b["impid"] for b in resp["seatbid"][0]["bid"]] == ["1"]
    assert "native.request" in resp["ext"]["no_bid"]["n"]


def test_private_deal_needs_a_matching_deal_and_seat():
    deals = {"private_auction": 1, "deals": [{"id": "D1", "bidfloor": 2.5, "wseat": ["Agency1"]}]}
    req = _request(imp=[{"id": "1", "bidfloor": 0.03, "banner": {"w": 300, "h": 250}, "pmp": deals}])
    assert plan_bids(req, _catalog()).candidates == []
    plan = plan_bids(req, _catalog(deal_ids=["D1"], seat="Agency1"))
    (cand,) = [c for c in plan.candidates]
    assert cand.deal_id == "D1" and cand.floor_cpm == 2.5
    resp, _ = decide_bids(plan, np.array([0.004]), model_version="v")
    bid = resp["seatbid"][0]["bid"][0]
    assert resp["seatbid"][0]["seat"] == "Agency1" and bid["dealid"] == "D1" and bid["price"] >= 2.5


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r.pop("imp"), "imp: missing"),
    (lambda r: r.update(imp=[]), "imp: empty"),
    (lambda r: r.update(imp="x"), "imp: expected an array"),
    (lambda r: r.pop("id"), "id: missing"),
    (lambda r: r.update(imp=[{"banner": {}}]), "imp[0].id"),
])
def test_unusable_requests_raise_naming_the_field(mutate, field):
    req = _request()
    mutate(req)
    with pytest.raises(BidRequestError, match=field.replace("[", r"\[").replace("]", r"\]")):
        plan_bids(req, _catalog())


def test_one_malformed_impression_does_not_sink_the_request():
    req = _request(imp=[{"id": "1", "banner": {"w": 300, "h": 250}}, {"id": "2"}])
    plan = plan_bids(req, _catalog())
    assert "no banner" in plan.no_bid["2"] and {c.imp_id for c in plan.candidates} == {"1"}


def test_candidate_limit():
    req = _request(imp=[{"id": str(i), "banner": {"w": 300, "h": 250}} for i in range(5)])
    plan = plan_bids(req, _catalog(), max_candidates=4)
    assert len(plan.candidates) == 4 and "limit" in plan.no_bid["2"]


def test_deadline_budget():
    assert deadline_budget_ms({"tmax": 120}, 100, 20) == 100
    assert deadline_budget_ms({}, 100, 20) == 80
    assert deadline_budget_ms({"tmax": "soon"}, 100, 20) == 80


def test_every_shared_sample_plans(shared_data):
    catalog = load_catalog()
    for path in sorted((shared_data / "openrtb").glob("*.json")):
        req = json.loads(path.read_text())
        plan = plan_bids(copy.deepcopy(req), catalog)
        probs = np.full(len(plan.candidates), 0.01)
        resp, _ = decide_bids(plan, probs, model_version="v")
        imp_ids = {imp["id"] for imp in req["imp"]}
        if "native" in path.name:
            assert resp is None and "native.request" in plan.no_bid["1"], path.name
            continue
        assert resp is not None, (path.name, plan.no_bid)
        for seat in resp["seatbid"]:
            for bid in seat["bid"]:
                assert bid["impid"] in imp_ids
                assert not set(bid["cat"]) & set(req.get("bcat", []))
                assert not set(bid["adomain"]) & set(req.get("badv", []))


# -- issue 14: fields that used to raise (a 500 over HTTP) or bid on nonsense --------------------

HUGE = 10 ** 400


@pytest.mark.parametrize("change, field", [
    ({"imp": [{"id": "1", "video": {"w": 640, "h": 480, "format": 5}}]}, "imp[0].video.format"),
    ({"imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "pmp": {"deals": 5}}]}, "imp[0].pmp.deals"),
    ({"imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "pmp": {"deals": [5]}}]}, "imp[0].pmp.deals[0]"),
    ({"imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "pmp": {"deals": [{"id": "d1", "bidfloor": HUGE}]}}]},
     "imp[0].pmp.deals[0].bidfloor"),
    ({"imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": HUGE}]}, "imp[0].bidfloor"),
    ({"tmax": -5}, "tmax"), ({"tmax": HUGE}, "tmax"), ({"tmax": 0}, "tmax"),
    ({"ts": HUGE}, "ts"), ({"ts": 1e20}, "ts"), ({"ts": -5}, "ts"), ({"ts": "0001-01-01T00:00:00"}, "ts"),
    ({"ext": {"ts": 1e20}}, "ext.ts"),
])
def test_fields_that_used_to_raise_are_refused_naming_the_field(change, field):
    with pytest.raises(BidRequestError) as err:
        plan_bids(_request(**change), _catalog())
    assert err.value.status == 400 and field in str(err.value), str(err.value)


def test_deeply_nested_native_request_string_is_no_bid_not_a_crash():
    request = _request(imp=[{"id": "1", "native": {"request": "[" * 100_000}},
                            {"id": "2", "banner": {"w": 300, "h": 250}}])
    plan = plan_bids(request, _catalog())
    assert "native.request" in plan.no_bid["1"] and "2" not in plan.no_bid


def test_deadline_budget_ignores_a_tmax_that_is_no_deadline():
    assert deadline_budget_ms({"tmax": HUGE}, 100, 15) == 85
    assert deadline_budget_ms({"tmax": -5}, 100, 15) == 85


def test_too_many_impressions_is_413_before_any_planning(monkeypatch):
    import distillery.serving.bidder as bidder

    monkeypatch.setattr(bidder, "validate_bid_request", lambda r: pytest.fail("validated an over-limit request"))
    imps = [{"id": str(i), "banner": {"w": 300, "h": 250}} for i in range(65)]
    with pytest.raises(BidRequestError) as err:
        plan_bids(_request(imp=imps), _catalog(), max_impressions=64)
    assert err.value.status == 413 and "imp: 65 impressions exceed the limit of 64" in str(err.value)


def test_planning_stops_at_the_candidate_cap(monkeypatch):
    import distillery.serving.bidder as bidder

    calls = []
    real = bidder.impression_context
    monkeypatch.setattr(bidder, "impression_context", lambda req, imp: calls.append(imp["id"]) or real(req, imp))
    imps = [{"id": str(i), "banner": {"w": 300, "h": 250}} for i in range(5000)]
    plan = plan_bids(_request(imp=imps), _catalog(), max_candidates=4, max_impressions=10_000)
    assert len(plan.candidates) <= 4 and len(calls) <= 4  # the other impressions were never looked at
    assert "candidate limit" in plan.no_bid["4999"]


def test_non_string_imp_ids_do_not_break_the_plan():
    request = _request(imp=[{"id": [1], "banner": {"w": 300, "h": 250}}, {"id": "2", "banner": {"w": 300, "h": 250}}])
    plan = plan_bids(request, _catalog())
    assert "imp[0].id" in plan.no_bid["1"] and plan.candidates


@pytest.mark.parametrize("change, field", [({"id": "r\ud800"}, "id"),
                                           ({"imp": [{"id": "\udfff", "banner": {"w": 300, "h": 250}}]}, "imp[0].id")])
def test_ids_with_lone_surrogates_are_refused(change, field):
    """They are echoed in the bid response, whose UTF-8 encoding failed (a 500 over HTTP)."""
    with pytest.raises(BidRequestError, match=rf"{re.escape(field)}: lone surrogate"):
        plan_bids(_request(**change), _catalog())


def test_catalog_candidate_rows_are_built_once_and_match_the_ads():
    from distillery.serving.catalog import load_catalog

    catalog = load_catalog()
    rows = catalog.candidate_rows()
    assert catalog.candidate_rows() is rows  # kept, not rebuilt per bid
    assert [ad for ad, _ in rows] == catalog.candidates()
    assert all(fields == ad.row_fields() for ad, fields in rows)


# -- issue 26: what a buyer's exchange expects (nbr, cattax, unusable banner formats) -----------------

BANNER = {"id": "1", "bidfloor": 0.5, "banner": {"w": 300, "h": 250}}
PRIVATE = {"private_auction": 1, "deals": [{"id": "D1", "bidfloor": 2.5}]}


@pytest.mark.parametrize("change, imp_id, nbr, text", [
    ({"imp": [BANNER, {"id": "2"}]}, "2", NoBidReason.INVALID_REQUEST, "no banner"),
    ({"imp": [{"id": "n", "native": {"request": "{"}}, BANNER]}, "n", NoBidReason.INVALID_REQUEST, "native.request"),
    ({"imp": [{"id": "1", "banner": {"w": 1, "h": 1}}]}, "1", NoBidReason.NO_FITTING_CREATIVE, "no creative fits"),
    ({"imp": [{"id": "1", "audio": {}}]}, "1", NoBidReason.NO_FITTING_CREATIVE, "no creative fits"),
    ({"cur": ["EUR"]}, "1", NoBidReason.NO_CURRENCY, "currency"),
    ({"imp": [{**BANNER, "bidfloorcur": "EUR"}]}, "1", NoBidReason.NO_CURRENCY, "bidfloorcur"),
    ({"bcat": ["IAB17", "IAB20"]}, "1", NoBidReason.BLOCKED, "bcat blocks"),
    ({"badv": ["example"]}, "1", NoBidReason.BLOCKED, "badv blocks"),
    ({"bseat": ["distillery"]}, "1", NoBidReason.BLOCKED, "seat distillery"),
    ({"imp": [{**BANNER, "pmp": PRIVATE}]}, "1", NoBidReason.NO_DEAL, "no deal"),
])
def test_every_planned_no_bid_carries_an_openrtb_reason_code(change, imp_id, nbr, text):
    plan = plan_bids(_request(**change), _catalog())
    assert all(isinstance(why, NoBid) for why in plan.no_bid.values())
    assert plan.no_bid[imp_id].nbr == nbr and text in plan.no_bid[imp_id]
    if not plan.candidates:
        assert decide_bids(plan, np.zeros(0), model_version="v")[0] is None
        assert no_bid_response("r1", plan.no_bid)["nbr"] == nbr


def test_candidate_limit_and_floor_no_bids_carry_codes():
    plan = plan_bids(_request(imp=[{"id": str(i), "banner": {"w": 300, "h": 250}} for i in range(3)]), _catalog(),
                     max_candidates=2)
    assert plan.no_bid["1"].nbr == NoBidReason.CANDIDATE_LIMIT
    response, why = decide_bids(plan_bids(_request(), _catalog()), np.array([0.0004, 0.0002]), model_version="v")
    assert response is None and why["1"].nbr == NoBidReason.BELOW_FLOOR


def test_no_bid_response_is_an_openrtb_bid_response_with_nbr():
    plan = plan_bids(_request(), _catalog())
    _, why = decide_bids(plan, np.array([0.0004, 0.0002]), model_version="v")
    body = no_bid_response(plan.request_id, why)
    assert body == {"id": "r1", "nbr": 504, "ext": {"no_bid": {"1": why["1"]}}}
    assert json.loads(json.dumps(body)) == body  # no seatbid, plain JSON
    # the deadline is the deployment's call: the code says so, with no per-impression detail
    assert no_bid_response("r1", {}, NoBidReason.INSUFFICIENT_AUCTION_TIME) == {"id": "r1", "nbr": 15}
    with pytest.raises(ValueError, match="no_bid"):
        no_bid_response("r1", {})
    # OpenRTB 2.6 list 5.24 codes, or exchange-specific ones (500+)
    assert all(code <= 17 or code >= 500 for code in NoBidReason)


def test_request_nbr_is_the_first_impressions_reason_in_request_order():
    # imp "1" loses on the floor (decided after planning), imp "2" was refused while planning
    plan = plan_bids(_request(imp=[BANNER, {"id": "2"}]), _catalog())
    _, why = decide_bids(plan, np.array([0.0004, 0.0002]), model_version="v")
    assert list(why) == ["1", "2"] and no_bid_response("r1", why)["nbr"] == NoBidReason.BELOW_FLOOR


def test_no_bid_reason_survives_copy_and_pickle():
    import pickle

    why = NoBid(NoBidReason.BLOCKED, "bcat blocks IAB17")
    for again in (copy.deepcopy(why), pickle.loads(pickle.dumps(why))):
        assert again == "bcat blocks IAB17" and again.nbr == NoBidReason.BLOCKED


@pytest.mark.parametrize("change", [{"cattax": 2, "bcat": ["483"]}, {"cattax": 2, "acat": ["483"]},
                                    {"cattax": 7, "bcat": ["IAB20"]}, {"cattax": 2, "bcat": [483]}])
def test_bcat_or_acat_in_a_taxonomy_the_catalog_is_not_in_never_bids(change):
    plan = plan_bids(_request(**change), _catalog())
    assert plan.candidates == []
    assert plan.no_bid["1"].nbr == NoBidReason.BLOCKED and f"cattax {change['cattax']}" in plan.no_bid["1"]


def test_issue_example_cattax_2_no_longer_bids_the_demo_catalog():
    request = {"id": "r", "cattax": 2, "bcat": ["483"], "imp": [{"id": "1", "banner": {"w": 300, "h": 250}}]}
    plan = plan_bids(request, load_catalog())
    assert plan.candidates == [] and no_bid_response("r", plan.no_bid)["nbr"] == NoBidReason.BLOCKED


def test_cattax_1_categories_are_checked_and_acat_allows_only_its_categories():
    assert [c.ad.creative.id for c in plan_bids(_request(cattax=1, bcat=["IAB17"]), _catalog()).candidates] == ["b300"]
    assert [c.ad.creative.id for c in plan_bids(_request(acat=["IAB20"]), _catalog()).candidates] == ["b300"]
    assert [c.ad.creative.id for c in plan_bids(_request(acat=["IAB17-1"]), _catalog()).candidates] == []
    # a creative must have every category allowed
    two = _catalog(iab_categories=["IAB17", "IAB8-5"])
    plan = plan_bids(_request(acat=["IAB17", "IAB20"]), two)
    assert [c.ad.creative.id for c in plan.candidates] == ["b300"]
    # another cattax with nothing to check is no reason to stop bidding
    assert len(plan_bids(_request(cattax=2), _catalog()).candidates) == 2


@pytest.mark.parametrize("change, field", [({"cattax": "2"}, "cattax"), ({"cattax": True}, "cattax"),
                                           ({"acat": "IAB1"}, "acat")])
def test_malformed_cattax_or_acat_is_refused_naming_the_field(change, field):
    with pytest.raises(BidRequestError, match=field):
        plan_bids(_request(**change), _catalog())


def test_banner_whose_only_format_is_malformed_is_a_400_naming_the_field():
    request = _request(imp=[{"id": "1", "banner": {"format": [{"w": "x", "h": None}]}}])
    with pytest.raises(BidRequestError) as err:
        plan_bids(request, _catalog())
    assert err.value.status == 400 and "imp[0].banner.format[0].w: expected an integer" in str(err.value)
    # beside a usable impression it is that impression's no-bid, as any malformed impression
    request["imp"].append({"id": "2", "banner": {"w": 300, "h": 250}})
    plan = plan_bids(request, _catalog())
    assert plan.no_bid["1"].nbr == NoBidReason.INVALID_REQUEST and "format[0].w" in plan.no_bid["1"]
    assert {c.imp_id for c in plan.candidates} == {"2"}


@pytest.mark.parametrize("formats", [[{"w": 300, "h": None}], [{}], [{"w": 0, "h": 0}],
                                     [{"wratio": 16, "hratio": 9, "wmin": 300}]])
def test_banner_format_without_a_usable_size_gets_no_bid_not_a_bid_of_some_size(formats):
    plan = plan_bids(_request(imp=[{"id": "1", "banner": {"format": formats}}]), _catalog())
    assert plan.candidates == []
    assert plan.no_bid["1"].nbr == NoBidReason.NO_FITTING_CREATIVE and "banner.format" in plan.no_bid["1"]


def test_usable_sizes_beside_an_unusable_format_entry_still_bid():
    plan = plan_bids(_request(imp=[{"id": "1", "banner": {"w": 728, "h": 90, "format": [{}]}},
                                   {"id": "2", "banner": {"format": [{}, {"w": 728, "h": 90}]}},
                                   {"id": "3", "banner": {"format": []}}]), _catalog())  # [] = no size given: any
    assert {(c.imp_id, c.ad.creative.id) for c in plan.candidates if c.imp_id != "3"} == {("1", "a728"), ("2", "a728")}
    assert sorted(c.ad.creative.id for c in plan.candidates if c.imp_id == "3") == ["a300", "a728", "b300"]
