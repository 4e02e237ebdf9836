"""OpenRTB 2.5 / 2.6 bidding as a demand-side platform does it, in two pure steps around one model call.

    plan = plan_bids(request, catalog)                # eligibility: format, size, bcat/acat, badv, cur, deals
    probs = scorer.predict([c.row for c in plan.candidates])   # ALL candidates of the request in one call
    response, no_bid = decide_bids(plan, probs, model_version="v1", openrtb="2.6")  # None: no bid
    body = no_bid_response(plan.request_id, no_bid)   # then answer 200 {"id": ..., "nbr": 504, "ext": ...}

Per impression, each eligible (campaign, creative) pair becomes a candidate row: the impression's
request context (`distillery.data.openrtb.impression_context`) plus the ad's fields. The winner is the
candidate with the highest expected value, eCPM = pCTR × value_per_click × 1000, among those whose
price, min(eCPM, max_bid_cpm), clears the floor (the deal's floor for a PMP deal, else `bidfloor`).
Impressions that cannot be scored (an invalid native request string, a malformed impression) get no
bid and a reason in the response's `ext.no_bid`; the other impressions are still answered.

Every no-bid has a reason, a `NoBid`: text (logs, `ext.no_bid`) carrying its OpenRTB 2.6 No-Bid Reason
Code (list 5.24) as `.nbr`, a `NoBidReason` (1, 2 and 15 from the list; 500+ the bidder's own, for the ad
side). A model that fails (NaN scores, an ONNX Runtime error) is the bidder's technical error: no bid,
nbr 1, never a price. A request that gets no bid at all is answered HTTP 200 with `no_bid_response`: `{"id": <request
id>, "nbr": N}` without `seatbid` (OpenRTB 2.6 section 7.1), N its first impression's reason; not 204,
whose empty body has no room for `nbr`. A request the bidder cannot use at all is an error, not a
no-bid: `BidRequestError`, 400 naming the field (413 past the impression limit). A `format` list without
one usable `w` x `h` leaves the slot's size unknown: no creative fits (500), never a bid of some size.

`bcat` and `acat` are read in the request's `cattax` (default 1). The catalog's categories are IAB 1.0
codes (`catalog.CATTAX`) and no table maps other taxonomies to them, so a `bcat` or `acat` in another
`cattax` cannot be checked: no creative is bid (501).
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Mapping, Sequence

import numpy as np

from distillery.data.openrtb import IMP_TYPES, MAX_TMAX_MS, impression_context, validate_bid_request
from distillery.data.text import to_text
from distillery.serving.catalog import CATTAX, CandidateAd, Catalog
from distillery.serving.metrics_health import check_probs

__all__ = ["BidRequestError", "Candidate", "BidPlan", "NoBid", "NoBidReason", "plan_bids", "decide_bids",
           "no_bid_response", "deadline_budget_ms", "MTYPE"]

MTYPE = {"banner": 1, "video": 2, "audio": 3, "native": 4}  # OpenRTB 2.6 bid.mtype
DEFAULT_CURRENCY = "USD"  # OpenRTB: cur and bidfloorcur default to USD


class NoBidReason(IntEnum):
    """The `nbr` the bidder sends: OpenRTB 2.6 list 5.24 below 500, the bidder's own codes from 500."""

    TECHNICAL_ERROR = 1  # the model failed (NaN or infinite scores, an ONNX Runtime error): ours, not the request's
    INVALID_REQUEST = 2  # an impression the bidder cannot read (a malformed field, a broken native request)
    INSUFFICIENT_AUCTION_TIME = 15  # tmax spent before scoring finished
    NO_FITTING_CREATIVE = 500  # no creative has the impression's type, size, MIME type and allowed attributes
    BLOCKED = 501  # every fitting creative blocked: bcat, acat, badv, wseat/bseat, or a cattax not the catalog's
    NO_CURRENCY = 502  # no campaign prices in a currency the request offers (cur, bidfloorcur)
    NO_DEAL = 503  # a private auction with no deal open to our seats
    BELOW_FLOOR = 504  # no candidate's price clears the floor
    CANDIDATE_LIMIT = 505  # the request's candidates pass the bidder's per-request limit


class NoBid(str):
    """Why one impression gets no bid: readable text (logs, `ext.no_bid`) carrying its code as `nbr`."""

    nbr: NoBidReason

    def __new__(cls, nbr: NoBidReason, text: str) -> "NoBid":
        reason = super().__new__(cls, text)
        reason.nbr = NoBidReason(nbr)
        return reason

    def __reduce__(self) -> tuple:
        return NoBid, (self.nbr, str(self))


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
    no_bid: dict[str, NoBid] = field(default_factory=dict)  # imp id -> why it gets no bid, in imp order

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


def _covered(cat: str, codes: Sequence[str]) -> bool:
    """IAB codes are hierarchical: `IAB8` covers `IAB8-5` too."""
    return any(cat == code or cat.startswith(code + "-") for code in codes)


def _blocked_domain(domain: str, badv: Sequence[str]) -> bool:
    domain = domain.lower()
    return any(domain == b.lower() or domain.endswith("." + b.lower()) for b in badv if b)


@dataclass(frozen=True)
class _Blocks:
    """A request's category and advertiser rules, read once per request."""

    bcat: list[str]
    acat: list[str]
    badv: list[str]
    unverifiable: str | None  # why no category can be checked: bcat/acat in a taxonomy not the catalog's


def _blocks(request: Mapping[str, Any]) -> _Blocks:
    cattax = request.get("cattax")
    cattax = 1 if cattax is None else cattax  # OpenRTB's default: IAB Content Category Taxonomy 1.0
    listed = [key for key in ("bcat", "acat") if request.get(key)]
    unverifiable = None
    if cattax != CATTAX and listed:
        unverifiable = (f"{' and '.join(listed)} in cattax {cattax}: the catalog's categories are cattax {CATTAX} "
                        "(IAB 1.0) codes and cannot be checked against them")
    return _Blocks(_strings(request.get("bcat")), _strings(request.get("acat")), _strings(request.get("badv")),
                   unverifiable)


def _blocked(ad: CandidateAd, blocks: _Blocks) -> str | None:
    """Why the request's bcat, acat or badv rule out `ad`, or None. Every category must be allowed."""
    if blocks.unverifiable:
        return blocks.unverifiable
    cats = ad.campaign.iab_categories
    if blocks.bcat and (cat := next((c for c in cats if _covered(c, blocks.bcat)), None)):
        return f"bcat blocks {cat}"
    if blocks.acat and (cat := next((c for c in cats if not _covered(c, blocks.acat)), None)):
        return f"acat does not allow {cat}"
    if blocks.badv and _blocked_domain(ad.campaign.advertiser, blocks.badv):
        return f"badv blocks {ad.campaign.advertiser}"
    return None


def _imp_sizes(media: Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """Sizes an impression accepts. None means any (no size given, or 0x0 as interstitials send); []
    means none the bidder can read: a `format` list without one positive `w` x `h` (ratios, `h: null`)."""
    formats = media.get("format") if isinstance(media.get("format"), list) else []
    formats = [f for f in formats if isinstance(f, dict)]
    sizes = []
    for spec in [media, *formats]:
        w, h = spec.get("w"), spec.get("h")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            sizes.append((w, h))
    return sizes if sizes or formats else None


def _fit_size(creative_sizes: list[str], imp_sizes: list[tuple[int, int, str]] | None) -> tuple[bool, int | None, int | None]:
    """(fits, w, h): the first impression size (w, h, "WxH") the creative has; any size fits an open
    slot (None); nothing fits a slot whose sizes are unreadable ([])."""
    if imp_sizes is None:
        if creative_sizes:
            w, h = creative_sizes[0].split("x")
            return True, int(w), int(h)
        return True, None, None
    if not imp_sizes:
        return False, None, None
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
    sizes: list[tuple[int, int, str]] | None  # (w, h, "WxH") the slot accepts; None = any, [] = unreadable


def _media_rules(imp: Mapping[str, Any], kinds: list[str]) -> list[_Media]:
    rules = []
    for kind in kinds:
        media = imp[kind]
        battr = media.get("battr")
        readable = None if kind == "native" else _imp_sizes(media)
        sizes = None if readable is None else [(w, h, f"{w}x{h}") for w, h in readable]
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
    planning stops: the remaining impressions get no bid without being looked at. Every impression
    without candidates gets a `NoBid` in `plan.no_bid`.
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
    blocks = _blocks(request)
    wseat, bseat = _strings(request.get("wseat")), _strings(request.get("bseat"))
    plan = BidPlan(request_id=request["id"], currency=currency,
                   imp_ids=[imp["id"] if isinstance(imp, dict) and isinstance(imp.get("id"), str) else str(i + 1)
                            for i, imp in enumerate(imps)])
    ads = catalog.candidate_rows()
    over_limit = NoBid(NoBidReason.CANDIDATE_LIMIT, f"over the {max_candidates}-candidate limit of one request")
    for i, imp in enumerate(imps):
        imp_id = plan.imp_ids[i]
        if len(plan.candidates) >= max_candidates:
            plan.no_bid[imp_id] = over_limit
            continue
        if i in bad:
            plan.no_bid[imp_id] = NoBid(NoBidReason.INVALID_REQUEST, bad[i])
            continue
        kinds = [k for k in IMP_TYPES if isinstance(imp.get(k), dict)]
        if "native" in kinds and (why := _native_problem(imp["native"])):
            kinds.remove("native")
            if not kinds:
                plan.no_bid[imp_id] = NoBid(NoBidReason.INVALID_REQUEST, f"imp[{i}].{why}: impression cannot be scored")
                continue
        context = impression_context(request, imp)
        rules, auction = _media_rules(imp, kinds), _auction(imp, currency)
        unreadable = "".join(f" ({m.kind}.format has no usable w and h)" for m in rules if m.sizes == [])
        found, reason = [], NoBid(NoBidReason.NO_FITTING_CREATIVE, "no creative fits its format and size" + unreadable)
        for ad, fields in ads:
            if ad.campaign.currency != currency:
                reason = NoBid(NoBidReason.NO_CURRENCY, f"currency: no campaign in {offered}")
                continue
            fit = _fit(ad, rules)
            if fit is None:
                continue
            if (wseat and ad.seat not in wseat) or ad.seat in bseat:
                reason = NoBid(NoBidReason.BLOCKED, f"every fitting creative is blocked: wseat/bseat exclude seat {ad.seat}")
                continue
            if why := _blocked(ad, blocks):
                reason = NoBid(NoBidReason.BLOCKED, f"every fitting creative is blocked: {why}")
                continue
            terms = _deal_terms(ad, auction)
            if not terms:
                reason = (NoBid(NoBidReason.NO_DEAL, "private auction: no deal open to our seats") if auction.private
                          else NoBid(NoBidReason.NO_CURRENCY, "bidfloorcur differs from bid currency"))
                continue
            deal_id, floor = max(terms, key=lambda t: t[0] is not None)  # a deal beats the open auction
            found.append(Candidate(imp_id, ad, {**context, **fields}, fit[0], floor, deal_id, fit[1], fit[2]))
        if not found:
            plan.no_bid[imp_id] = reason
        elif len(plan.candidates) + len(found) > max_candidates:
            plan.no_bid[imp_id] = over_limit
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
    """(bid response, why each unanswered impression got no bid, in imp order) for `plan` given click
    probabilities `probs` (len(plan.candidates),). The response is None when no impression gets a bid
    (the caller answers `no_bid_response(plan.request_id, no_bid)`); otherwise the reasons are also in
    its `ext.no_bid`. Prices are CPM in `plan.currency`. Raises `ModelFault` (non_finite) when a
    probability is NaN, infinite or outside [0, 1]: NaN passes every floor comparison, so it would be
    priced as a bid."""
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    if probs.shape[0] != len(plan.candidates):
        raise ValueError(f"probs: {probs.shape[0]} values for {len(plan.candidates)} candidates")
    if (fault := check_probs(probs, model_version)) is not None:
        raise fault
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
    no_bid: dict[str, NoBid] = {}
    seats: dict[str, list[dict[str, Any]]] = {}
    for imp_id in plan.imp_ids:
        if imp_id in plan.no_bid:
            no_bid[imp_id] = plan.no_bid[imp_id]
            continue
        if imp_id not in best:
            floors = [c.floor_cpm for c in plan.candidates if c.imp_id == imp_id]
            no_bid[imp_id] = NoBid(NoBidReason.BELOW_FLOOR, f"no creative clears the floor {min(floors):g} "
                                                            f"(best price {best_price.get(imp_id, 0.0):.4g})")
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


def no_bid_response(request_id: str, no_bid: Mapping[str, NoBid], nbr: NoBidReason | None = None) -> dict[str, Any]:
    """The OpenRTB answer (HTTP 200) to a request that gets no bid: `{"id": request_id, "nbr": N,
    "ext": {"no_bid": {imp id: why}}}`, no `seatbid`. N is `nbr` when given (15 when `tmax` ran out),
    else the reason of the first impression in `no_bid` (one response has one `nbr`)."""
    if nbr is None:
        if not no_bid:
            raise ValueError("no_bid: empty, and no nbr given: a no-bid answer needs a reason")
        nbr = next(iter(no_bid.values())).nbr
    response: dict[str, Any] = {"id": request_id, "nbr": int(nbr)}
    if no_bid:
        response["ext"] = {"no_bid": {imp_id: str(why) for imp_id, why in no_bid.items()}}
    return response


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
