"""Replica metrics beside Ray Serve's own (`ray.serve.metrics`, exported on Ray's Prometheus port).

    distillery_predictions            rows scored by the model
    distillery_no_bids{reason}        204 answers: no_candidates | floor | deadline
    distillery_deadline_misses        bid requests answered no-bid because tmax would have passed
    distillery_rejected{route,status} requests refused with a 4xx
    distillery_model_swaps{outcome}   hot swaps: ok | failed
    distillery_model_info{model,version}  1 for the version served now, 0 for the one it replaced
    distillery_swap_failed            1 while the configured model (user_config) is not the one served
    distillery_unscorable{route}      requests the model could not score (answered 422 alone, not the batch)

Serve adds the deployment, replica and application tags itself.
"""

from __future__ import annotations

from ray.serve.metrics import Counter, Gauge

__all__ = ["ServingMetrics"]


class ServingMetrics:
    """The counters one replica keeps; created inside the replica (they need a running Ray)."""

    def __init__(self) -> None:
        self.predictions = Counter("distillery_predictions", description="rows scored by the click model")
        self.no_bids = Counter("distillery_no_bids", description="OpenRTB requests answered 204 no-bid",
                               tag_keys=("reason",))
        self.deadline_misses = Counter("distillery_deadline_misses",
                                       description="bid requests answered no-bid to stay within tmax")
        self.rejected_requests = Counter("distillery_rejected", description="requests refused with a 4xx",
                                         tag_keys=("route", "status"))
        self.swaps = Counter("distillery_model_swaps", description="hot model swaps", tag_keys=("outcome",))
        self.swap_failed = Gauge("distillery_swap_failed",
                                 description="1 while the configured model failed to load and the last good one serves")
        self.unscorable = Counter("distillery_unscorable", description="requests the model could not score (422)")
        self.model_info = Gauge("distillery_model_info", description="1 for the model version being served",
                                tag_keys=("model", "version"))

    def no_bid(self, reason: str) -> None:
        self.no_bids.inc(tags={"reason": reason})

    def rejected(self, route: str, status: int) -> None:
        self.rejected_requests.inc(tags={"route": route, "status": str(status)})

    def swap(self, ok: bool) -> None:
        self.swaps.inc(tags={"outcome": "ok" if ok else "failed"})

    def model_loaded(self, name: str, version: str, replaced: str | None) -> None:
        if replaced is not None and replaced != version:
            self.model_info.set(0, tags={"model": name, "version": replaced})
        self.model_info.set(1, tags={"model": name, "version": version})
