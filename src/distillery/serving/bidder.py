"""OpenRTB 2.5 / 2.6 bidding as a demand-side platform does it, in two pure steps around one model call.

    plan = plan_bids(request, catalog)                # eligibility: format, size, bcat, badv, cur, deals
    probs = scorer.predict([c.row for c in plan.candidates])   # ALL candidates of the request in one call
    response, no_bid = decide_bids(plan, probs, model_version="v1", openrtb="2.6")  # None: no bid (204)

Per impression, each eligible (campaign, creative) pair becomes a candidate row: the impression's
request context (`distillery.data.openrtb.impression_context`) plus the ad's fields. The winner is the
candidate with the highest expected value, eCPM = pCTR × value_per_click × 1000, among those whose
price, min(eCPM, max_bid_cpm), clears the floor (the deal's floor for a PMP deal, else `bidfloor`).
Impressions that cannot be scored (an invalid native request string, a malformed impression) get no
bid and a reason in the response's `ext.no_bid`; the other impressions are still answered.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from distillery.data.openrtb import IMP_TYPES, MAX_TMAX_MS, impression_context, validate_bid_request
from distillery.data.text import to_text
from distillery.serving.catalog import CandidateAd, Catalog

__all__ = ["BidRequestError", "Candidate", "BidPlan", "plan_bids", "decide_bids", "deadline_budget_ms", "MTYPE"]

MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}  # OpenRTB 2.6 bid.mtype
DEFAULT_CURRENCY = "USD"  # OpenRTB: cur and bidfloorcur default to USD


class BidRequestError(ValueError):
    """A bid request the bidder cannot use at all; `problems` name the fields; `status` is the HTTP
    answer (400, or 413 for a request over a size limit)."""

    def __init__(self, problems: Sequence[str], status: int = 400):
        self.problems = list(problems)
        self.status = status
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class Candidate:
    """One (impression, creative) pair that may be bid: its model row and its auction terms."""

    imp_id: str
    ad: CandidateAd
    row: dict[str, Any]
    kind: str  # banner | video | audio | native: what the creative fills
    floor_cpm: float  # the floor this bid must clear, in the plan's currency
    deal_id: str | None = None
    w: int | None = None
    h: int | None = None


@dataclass
class BidPlan:
    """Everything decided before the model runs: candidates to score and impressions already lost."""

    request_id: str
    currency: str
    imp_ids: list[str]
    candidates: list[Candidate] = field(default_factory=list)
    no_bid: dict[str, str] = field(default_factory=dict)  # imp id -> why it gets no bid

    def texts(self) -> list[str]:
        """Model inputs, one per candidate, in `candidates` order."""
        return [to_text(c.row) for c in self.candidates]


def deadline_budget_ms(request: Mapping[str, Any], default_tmax_ms: float, network_margin_ms: float) -> float:
    """Time the bidder may spend, ms: the request's `tmax` (else the default) minus the network margin."""
    tmax = request.get("tmax")
    if not isinstance(tmax, (int, float)) or isinstance(tmax, bool) or not 0 < tmax <= MAX_TMAX_MS:
        tmax = default_tmax_ms  # `validate_bid_request` refuses these; never trust them here
    return float(tmax) - network_margin_ms


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _blocked_category(cats: Sequence[str], bcat: Sequence[str]) -> str | None:
    """IAB codes are hierarchical: blocking `IAB8` blocks `IAB8-5` too."""
    for cat in cats:
        for blocked in bcat:
            if cat == blocked or cat.startswith(blocked + "-"):
                return cat
    return None


def _blocked_domain(domain: str, badv: Sequence[str]) -> bool:
    domain = domain.lower()
    return any(domain == b.lower() or domain.endswith("." + b.lower()) for b in badv if b)


def _imp_sizes(media: Mapping[str, Any]) -> list[tuple[int, int]]:
    """Sizes an impression accepts; [] means any (no size given, or 0x0 as interstitials send)."""
    sizes = []
    formats = media.get("format") if isinstance(media.get("format"), list) else []
    for spec in [media] + [f for f in formats if isinstance(f, dict)]:
        w, h = spec.get("w"), spec.get("h")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            sizes.append((w, h))
    return sizes


def _fit_size(creative_sizes: list[str], imp_sizes: list[tuple[int, int, str]]) -> tuple[bool, int | None, int | None]:
    """(fits, w, h): the first impression size (w, h, "WxH") the creative has; any size fits an open slot."""
    if not imp_sizes:
        if creative_sizes:
            w, h = creative_sizes[0].split("x")
            return True, int(w), int(h)
        return True, None, None
    if not creative_sizes:
        return True, imp_sizes[0][0], imp_sizes[0][1]
    for w, h, size in imp_sizes:
        if size in creative_sizes:
            return True, w, h
    return False, None, None


def _native_problem(native: Mapping[str, Any]) -> str | None:
    raw = native.get("request")
    if isinstance(raw, dict):
        return None
    if not isinstance(raw, str):
        return "native.request: missing"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as err:
        return f"native.request: not valid JSON ({err.msg} at char {err.pos})"
    except (ValueError, RecursionError) as err:  # a 5,000-digit number; 100k "[" overflow the parser
        return f"native.request: not usable JSON ({type(err).__name__})"
    return None if isinstance(parsed, dict) else "native.request: not a JSON object"


@dataclass(frozen=True)
class _Media:
    """One impression type's rules, read once per impression (not once per creative)."""

    kind: str
    battr: frozenset[int]
    mimes: frozenset[str]
    sizes: list[tuple[int, int, str]]  # (w, h, "WxH") the slot accepts; [] = any size


def _media_rules(imp: Mapping[str, Any], kinds: list[str]) -> list[_Media]:
    rules = []
    for kind in kinds:
        media = imp[kind]
        battr = media.get("battr")
        sizes = [] if kind == "native" else [(w, h, f"{w}x{h}") for w, h in _imp_sizes(media)]
        rules.append(_Media(kind, frozenset(a for a in battr if isinstance(a, int)) if isinstance(battr, list) else frozenset(),
                            frozenset(_strings(media.get("mimes"))), sizes))
    return rules


def _fit(ad: CandidateAd, rules: list[_Media]) -> tuple[str, int | None, int | None] | None:
    """How `ad` fills the impression (kind, w, h), or None when format, size, MIME type or battr rule it out."""
    creative = ad.creative
    for media in rules:
        kind = media.kind
        if kind not in creative.formats:
            continue
        if media.battr and not media.battr.isdisjoint(creative.attr):
            continue
        if kind in ("video", "audio") and media.mimes and creative.mimes and media.mimes.isdisjoint(creative.mimes):
            continue
        if kind == "native":
            return kind, None, None
        fits, w, h = _fit_size(creative.sizes, media.sizes)
        if fits:
            return kind, w, h
    return None


def _price(value: Any) -> float:
    """A floor CPM as a float; 0 for anything `validate_bid_request` would refuse."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0.0
    try:
        value = float(value)
    except OverflowError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


@dataclass(frozen=True)
class _Auction:
    """An impression's auction terms in the bid currency, read once per impression."""

    private: bool
    deals: list[tuple[str, list[str], float]]  # (deal id, wseat, floor CPM) of deals priced in the bid currency
    open_floor: float | None  # the open auction's floor; None when private or floored in another currency


def _auction(imp: Mapping[str, Any], currency: str) -> _Auction:
    pmp = imp.get("pmp") if isinstance(imp.get("pmp"), dict) else {}
    private = pmp.get("private_auction") == 1
    deals = [(deal.get("id"), _strings(deal.get("wseat")), _price(deal.get("bidfloor", imp.get("bidfloor"))))
             for deal in (pmp.get("deals") if isinstance(pmp.get("deals"), list) else [])
             if isinstance(deal, dict) and deal.get("bidfloorcur", DEFAULT_CURRENCY) == currency]
    open_floor = None
    if not private:
        floor = _price(imp.get("bidfloor"))
        if floor <= 0 or imp.get("bidfloorcur", DEFAULT_CURRENCY) == currency:
            open_floor = floor
    return _Auction(private, deals, open_floor)


def _deal_terms(ad: CandidateAd, auction: _Auction) -> list[tuple[str | None, float]]:
    """[(deal id or None for the open auction, floor CPM)] open to this ad."""
    terms: list[tuple[str | None, float]] = [
        (deal_id, floor) for deal_id, wseat, floor in auction.deals
        if deal_id in ad.campaign.deal_ids and (not wseat or ad.seat in wseat)]
    if auction.open_floor is not None:
        terms.append((None, auction.open_floor))
    return terms


def plan_bids(request: Any, catalog: Catalog, max_candidates: int = 512, max_impressions: int = 64) -> BidPlan:
    """Eligible candidates of every impression of `request`, ready to score in one batch.

    Raises `BidRequestError` when the request itself is unusable (no `imp`, no `id`, wrong types,
    or every impression malformed), and with status 413 when it has more than `max_impressions`
    impressions (checked before any other work). Once `max_candidates` candidate rows are planned,
    planning stops: the remaining impressions get no bid without being looked at.
    """
    imps = request.get("imp") if isinstance(request, dict) else None
    if isinstance(imps, list) and len(imps) > max_impressions:
        raise BidRequestError([f"imp: {len(imps)} impressions exceed the limit of {max_impressions} per request"],
                              status=413)
    problems = validate_bid_request(request)
    if any(not p.startswith("imp[") for p in problems):
        raise BidRequestError([p for p in problems if not p.startswith("imp[")])
    imps = request["imp"]
    bad: dict[int, str] = {}
    for p in problems:
        index = int(p[4:p.index("]")])
        bad.setdefault(index, p)
    if len(bad) == len(imps):
        raise BidRequestError(list(bad.values()))

    offered = _strings(request.get("cur")) or [DEFAULT_CURRENCY]
    ours = {c.currency for c in catalog.campaigns}
    currency = next((c for c in offered if c in ours), offered[0])
    bcat, badv = _strings(request.get("bcat")), _strings(request.get("badv"))
    wseat, bseat = _strings(request.get("wseat")), _strings(request.get("bseat"))
    plan = BidPlan(request_id=request["id"], currency=currency,
                   imp_ids=[imp["id"] if isinstance(imp, dict) and isinstance(imp.get("id"), str) else str(i + 1)
                            for i, imp in enumerate(imps)])
    ads = catalog.candidate_rows()
    for i, imp in enumerate(imps):
        imp_id = plan.imp_ids[i]
        if len(plan.candidates) >= max_candidates:
            plan.no_bid[imp_id] = f"over the {max_candidates}-candidate limit of one request"
            continue
        if i in bad:
            plan.no_bid[imp_id] = bad[i]
            continue
        kinds = [k for k in IMP_TYPES if isinstance(imp.get(k), dict)]
        if "native" in kinds and (why := _native_problem(imp["native"])):
            kinds.remove("native")
            if not kinds:
                plan.no_bid[imp_id] = f"imp[{i}].{why}: impression cannot be scored"
                continue
        context = impression_context(request, imp)
        rules, auction = _media_rules(imp, kinds), _auction(imp, currency)
        found, reason = [], "no creative fits its format and size"
        for ad, fields in ads:
            if ad.campaign.currency != currency:
                reason = f"currency: no campaign in {offered}"
                continue
            if (wseat and ad.seat not in wseat) or ad.seat in bseat:
                continue
            fit = _fit(ad, rules)
            if fit is None:
                continue
            if (bcat and _blocked_category(ad.campaign.iab_categories, bcat)) or (badv and _blocked_domain(ad.campaign.advertiser, badv)):
                reason = "every fitting creative is blocked by bcat or badv"
                continue
            terms = _deal_terms(ad, auction)
            if not terms:
                reason = "private auction: no deal open to our seats" if auction.private else "bidfloorcur differs from bid currency"
                continue
            deal_id, floor = max(terms, key=lambda t: t[0] is not None)  # a deal beats the open auction
            found.append(Candidate(imp_id, ad, {**context, **fields}, fit[0], floor, deal_id, fit[1], fit[2]))
        if not found:
            plan.no_bid[imp_id] = reason
        elif len(plan.candidates) + len(found) > max_candidates:
            plan.no_bid[imp_id] = f"over the {max_candidates}-candidate limit of one request"
        else:
            plan.candidates.extend(found)
    return plan


def decide_bids(
    plan: BidPlan,
    probs: np.ndarray,
    *,
    model_version: str,
    openrtb: str = "2.6",
) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """(bid response, why each unanswered impression got no bid) for `plan` given click probabilities
    `probs` (len(plan.candidates),). The response is None when no impression gets a bid (the caller
    answers HTTP 204); otherwise the reasons are also in its `ext.no_bid`. Prices are CPM in
    `plan.currency`."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(plan.candidates):
        raise ValueError(f"probs: {probs.shape[0]} values for {len(plan.candidates)} candidates")
    best: dict[str, tuple[float, float, int]] = {}  # imp id -> (eCPM, price, candidate index)
    best_price: dict[str, float] = {}
    for k, (cand, p) in enumerate(zip(plan.candidates, probs)):
        ecpm = float(p) * cand.ad.campaign.value_per_click * 1000.0
        price = min(ecpm, cand.ad.campaign.max_bid_cpm)
        best_price[cand.imp_id] = max(best_price.get(cand.imp_id, 0.0), price)
        if price <= 0 or price < cand.floor_cpm:
            continue
        if cand.imp_id not in best or ecpm > best[cand.imp_id][0]:
            best[cand.imp_id] = (ecpm, price, k)
    no_bid = dict(plan.no_bid)
    seats: dict[str, list[dict[str, Any]]] = {}
    for imp_id in plan.imp_ids:
        if imp_id in no_bid:
            continue
        if imp_id not in best:
            floors = [c.floor_cpm for c in plan.candidates if c.imp_id == imp_id]
            no_bid[imp_id] = f"no creative clears the floor {min(floors):g} (best price {best_price.get(imp_id, 0.0):.4g})"
            continue
        _, price, k = best[imp_id]
        cand = plan.candidates[k]
        seats.setdefault(cand.ad.seat, []).append(_bid(cand, price, float(probs[k]), openrtb))
    if not seats:
        return None, no_bid
    response: dict[str, Any] = {
        "id": plan.request_id,
        "bidid": uuid.uuid4().hex,
        "cur": plan.currency,
        "seatbid": [{"seat": seat, "bid": bids} for seat, bids in seats.items()],
        "ext": {"model_version": model_version},
    }
    if no_bid:
        response["ext"]["no_bid"] = no_bid
    return response, no_bid


def _bid(cand: Candidate, price: float, pctr: float, openrtb: str) -> dict[str, Any]:
    campaign, creative = cand.ad.campaign, cand.ad.creative
    bid: dict[str, Any] = {
        "id": uuid.uuid4().hex[:16],
        "impid": cand.imp_id,
        "price": round(max(price, cand.floor_cpm), 6),
        "adid": creative.id,
        "crid": creative.id,
        "cid": campaign.id,
        "adomain": [campaign.advertiser],
        "cat": list(campaign.iab_categories),
        "ext": {"pctr": round(pctr, 6)},
    }
    if cand.w and cand.h:
        bid["w"], bid["h"] = cand.w, cand.h
    if cand.deal_id is not None:
        bid["dealid"] = cand.deal_id
    if creative.adm is not None:
        bid["adm"] = creative.adm
    if openrtb == "2.6":
        bid["mtype"] = MTYPE[cand.kind]
    return bid
