"""When a request arrived, so a bid's `tmax` counts the time it queued before the handler ran.

Serve's proxy queues a request (up to `max_queued_requests`) before a replica's handler starts;
a clock started in the handler misses that wait and sends late bids as 200. The deadline clock
starts instead at the `X-Request-Start` header: stamped by the Serve proxy itself when

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=distillery.serving.arrival:proxy_middlewares

is set in the environment of `ray start` (the RayService pods set it; `distillery serve` sets it for
the Ray it starts), or by a load balancer in front (nginx `t=${msec}`, HAProxy `t=%Ts%ms`). Without
the header the clock starts when the handler does. Pure and Ray-free apart from the middleware
list, which needs Starlette.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

__all__ = ["HEADER", "CALLBACK_ENV", "CALLBACK", "StampArrival", "proxy_middlewares", "arrival_time"]

HEADER = "x-request-start"
CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
CALLBACK = "distillery.serving.arrival:proxy_middlewares"
_MAX_AGE_S = 300.0  # an older stamp is a broken clock, not a queue


class StampArrival:
    """ASGI middleware for the Serve proxy: sets `X-Request-Start: t=<µs since epoch>` on every HTTP
    request as it arrives (replacing one a client sent)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            stamp = f"t={int(time.time() * 1e6)}".encode()
            headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != HEADER.encode()]
            scope = {**scope, "headers": headers + [(HEADER.encode(), stamp)]}
        await self.app(scope, receive, send)


def proxy_middlewares() -> list:
    """The callback `RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH` names: Starlette middlewares."""
    from starlette.middleware import Middleware

    return [Middleware(StampArrival)]


def arrival_time(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Wall-clock arrival (Unix seconds) from `X-Request-Start` (`t=` optional; seconds, ms or µs by
    magnitude), or None when absent, unreadable, in the future, or older than 5 minutes."""
    raw = headers.get(HEADER)
    if not raw:
        return None
    raw = raw.strip().removeprefix("t=")
    try:
        value = float(raw)
    except ValueError:
        return None
    if value > 1e14:
        value /= 1e6
    elif value > 1e11:
        value /= 1e3
    now = time.time() if now is None else now
    return value if now - _MAX_AGE_S <= value <= now + 0.001 else None
