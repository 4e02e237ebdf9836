"""Replica metrics beside Ray Serve's own (`ray.serve.metrics`, exported on Ray's Prometheus port).

    distillery_predictions            rows scored by the model
    distillery_no_bids{reason}        no-bids (200 with an OpenRTB nbr): no_candidates | floor | deadline
    distillery_deadline_misses        bid requests answered no-bid because tmax would have passed
    distillery_rejected{route,status} requests refused with a 4xx
    distillery_model_swaps{outcome}   hot swaps: ok | failed
    distillery_model_info{model,version}  1 for the version served now, 0 for the one it replaced
    distillery_swap_failed            1 while the configured model (user_config) is not the one served
    distillery_unscorable{route}      requests the model could not score (answered 422 alone, not the batch)
    distillery_model_faults{kind}     requests failed by the model, not the request (503 / no-bid nbr 1):
                                      non_finite | runtime_error; refused hot swaps count as kind canary
    distillery_client_disconnects     requests whose client went away before its body arrived
    distillery_body_timeouts          bid requests whose body did not arrive within the bid deadline (408)
    distillery_batch_rows             rows per scoring batch (histogram)
    distillery_batch_queue_ms         how long a batch's oldest request queued for the scoring thread (histogram)
    distillery_batch_score_ms         scoring time of a batch (histogram)

Serve adds the deployment, replica and application tags itself.
"""

from __future__ import annotations

from collections import Counter as Tally

from ray.serve.metrics import Counter, Gauge, Histogram

__all__ = ["ServingMetrics"]


class ServingMetrics:
    """The counters one replica keeps; created inside the replica (they need a running Ray)."""

    def __init__(self) -> None:
        self.predictions = Counter("distillery_predictions", description="rows scored by the click model")
        self.no_bids = Counter("distillery_no_bids", description="OpenRTB requests answered no-bid (nbr)",
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
        self.batch_rows = Histogram("distillery_batch_rows", description="rows per scoring batch",
                                    boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
        ms = [0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000]
        self.batch_queue_ms = Histogram("distillery_batch_queue_ms", boundaries=ms,
                                        description="how long a batch's oldest request queued for the scoring thread, ms")
        self.batch_score_ms = Histogram("distillery_batch_score_ms", boundaries=ms, description="scoring time of a batch, ms")
        self.model_faults = Counter("distillery_model_faults", tag_keys=("kind",),
                                    description="requests failed by the model (NaN scores, ONNX Runtime errors), not the request")
        self.client_disconnects = Counter("distillery_client_disconnects",
                                          description="requests whose client disconnected before its body arrived")
        self.body_timeouts = Counter("distillery_body_timeouts",
                                     description="bid requests whose body did not arrive within the bid deadline")
        # Ray's counters cannot be read back: the same events tallied here for the authenticated /healthz.
        self.tally: Tally[str] = Tally()

    def batch(self, rows: int, queued_s: float, score_s: float) -> None:
        """One scoring batch (`ThreadBatcher.on_batch`)."""
        self.batch_rows.observe(rows)
        self.batch_queue_ms.observe(queued_s * 1000.0)
        self.batch_score_ms.observe(score_s * 1000.0)

    def model_fault(self, kind: str) -> None:
        self.model_faults.inc(tags={"kind": kind})
        self.tally[f"model_faults.{kind}"] += 1

    def client_disconnect(self) -> None:
        self.client_disconnects.inc()
        self.tally["client_disconnects"] += 1

    def body_timeout(self) -> None:
        self.body_timeouts.inc()
        self.tally["body_timeouts"] += 1

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
