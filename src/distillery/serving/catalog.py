"""The bidder's catalog: campaigns (who pays, how much, where) and their creatives (what is shown).

    catalog = load_catalog()                     # the demo catalog shipped with the package
    catalog = load_catalog("serve/catalog.yaml") # a configured one (same schema)
    for ad in catalog.candidates(): ...          # one CandidateAd per (campaign, creative)

Money is in the campaign's `currency`: `value_per_click` is what a click is worth to the advertiser,
`max_bid_cpm` the most the bidder may pay per thousand impressions. `ad_category` is the category
word a model reads (as in the training logs); `iab_categories` are the IAB codes OpenRTB speaks
(`bcat` blocks them, the bid's `cat` reports them), all in one taxonomy: `CATTAX`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from distillery.config import Section, load_config

__all__ = ["Creative", "Campaign", "Catalog", "CandidateAd", "load_catalog", "DEMO_CATALOG", "CATTAX"]

DEMO_CATALOG = "demo_catalog.yaml"
# OpenRTB `cattax` of `iab_categories`: 1, IAB Content Category Taxonomy 1.0 (the `IAB2-3` codes `_IAB` accepts)
CATTAX = 1
_SIZE = re.compile(r"^[1-9][0-9]{0,4}x[1-9][0-9]{0,4}$")
_IAB = re.compile(r"^IAB[0-9]{1,2}(-[0-9]{1,3})?$")
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)+$")

Format = Literal["banner", "video", "audio", "native"]


class Creative(Section):
    id: str = Field(..., min_length=1, description="creative id, sent as the bid's crid and adid")
    title: str = Field(..., min_length=1, description="ad title (the model reads it as ad_title)")
    description: str = Field("", description="ad body text (the model reads it as ad_description)")
    formats: list[Format] = Field(["banner"], min_length=1, description="impression types this creative can fill")
    sizes: list[str] = Field([], description="WxH sizes it fits, e.g. 300x250; empty fits any size")
    mimes: list[str] = Field([], description="video/audio MIME types of the creative; empty skips the check")
    attr: list[int] = Field([], description="OpenRTB creative attributes (list 5.3); an imp's battr blocks them")
    adm: str | None = Field(None, description="markup returned in the bid's adm; None sends no markup")

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, sizes: list[str]) -> list[str]:
        for size in sizes:
            if not _SIZE.match(size):
                raise ValueError(f"size {size!r}: expected WxH like 300x250")
        return sizes


class Campaign(Section):
    id: str = Field(..., min_length=1, description="campaign id, sent as the bid's cid")
    advertiser: str = Field(..., description="advertiser domain (the bid's adomain; badv blocks it)")
    brand: str | None = Field(None, description="advertiser name the model reads (None: the domain)")
    ad_category: str = Field(..., min_length=1, description="category word the model reads, as in the logs")
    iab_categories: list[str] = Field(..., min_length=1, description="IAB content categories (bcat blocks, bid cat reports)")
    value_per_click: float = Field(..., gt=0, description="value of one click to the advertiser, in `currency`")
    max_bid_cpm: float = Field(..., gt=0, description="highest price the bidder may pay, CPM in `currency`")
    currency: str = Field("USD", description="ISO-4217 code of every amount in this campaign")
    seat: str | None = Field(None, description="buyer seat bidding for it (None: the catalog's seat)")
    deal_ids: list[str] = Field([], description="PMP deal ids this campaign may bid on")
    ads: list[Creative] = Field(..., min_length=1, description="its creatives")

    @field_validator("advertiser")
    @classmethod
    def _domain(cls, value: str) -> str:
        if not _DOMAIN.match(value):
            raise ValueError(f"advertiser {value!r}: expected a lower-case domain like brand.com")
        return value

    @field_validator("iab_categories")
    @classmethod
    def _iab(cls, cats: list[str]) -> list[str]:
        for cat in cats:
            if not _IAB.match(cat):
                raise ValueError(f"category {cat!r}: expected an IAB code like IAB2 or IAB2-3")
        return cats

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Z]{3}", value):
            raise ValueError(f"currency {value!r}: expected a 3-letter ISO-4217 code like USD")
        return value


class Catalog(Section):
    _rows: list | None = PrivateAttr(None)
    seat: str = Field("distillery", min_length=1, description="default buyer seat of the bids")
    campaigns: list[Campaign] = Field(..., min_length=1, description="what the bidder can buy impressions for")

    @model_validator(mode="after")
    def _unique_ids(self) -> "Catalog":
        seen: set[str] = set()
        for campaign in self.campaigns:
            for ad in campaign.ads:
                if ad.id in seen:
                    raise ValueError(f"creative id {ad.id!r} appears twice (crid must identify one creative)")
                seen.add(ad.id)
        return self

    def candidates(self) -> list["CandidateAd"]:
        """Every (campaign, creative) pair, in catalog order."""
        return [ad for ad, _ in self.candidate_rows()]

    def candidate_rows(self) -> list[tuple["CandidateAd", dict[str, str]]]:
        """(`CandidateAd`, its `row_fields()`) of every pair, built once and kept: a bid plans against
        every creative, and building them per bid was a third of a 1,024-candidate plan. A catalog is
        read once (start, hot swap); its campaigns are not edited in place after that."""
        if self._rows is None:
            ads = [CandidateAd(c, ad, c.seat or self.seat) for c in self.campaigns for ad in c.ads]
            self._rows = [(ad, ad.row_fields()) for ad in ads]
        return self._rows


@dataclass(frozen=True)
class CandidateAd:
    """One creative of one campaign: what the bidder scores against an impression."""

    campaign: Campaign
    creative: Creative
    seat: str

    def row_fields(self) -> dict[str, str]:
        """The ad columns of a log row (`advertiser, ad_title, ad_description, ad_category`)."""
        return {
            "advertiser": self.campaign.brand or self.campaign.advertiser,
            "ad_title": self.creative.title,
            "ad_description": self.creative.description,
            "ad_category": self.campaign.ad_category,
        }


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a catalog YAML; None reads the demo catalog shipped in this package.

    Raises `ConfigError` naming the field on a bad catalog.
    """
    if path is None:
        with resources.as_file(resources.files("distillery.serving") / DEMO_CATALOG) as demo:
            return load_config(Catalog, demo)
    return load_config(Catalog, path)
