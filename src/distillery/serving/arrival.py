"""When a request arrived, so a bid's `tmax` counts the time it queued before the handler ran.

A request queues (up to `max_queued_requests`) before a replica's handler starts; a clock started
in the handler misses that wait and sends late bids as 200. The deadline clock starts instead at
the `X-Request-Start` header, stamped as the request arrives at Serve's HTTP server when

    RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=distillery.serving.arrival:proxy_middlewares

is in the Serve processes' environment (serving.ingress puts it in the controller's runtime_env,
which Serve hands on; serve/serve_config.yaml's controller_options and the RayService pods set it).
Serve applies that callback to every HTTP server it runs: its Python proxy, and on the fast path
(HAProxy + direct ingress) each replica's own server, which accepts the connection HAProxy
forwards at once (HAProxy keeps no queue of its own here) and queues the request itself. A load
balancer in front may stamp first (nginx `t=${msec}`, HAProxy `t=%Ts%ms`): the earlier of its
stamp and ours is kept, so the clock only ever starts earlier. Without the header the clock
starts when the handler does. Pure and Ray-free apart from the middleware list (Starlette).
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
    """ASGI middleware for Serve's HTTP servers: sets `X-Request-Start: t=<µs since epoch>` on every
    HTTP request as it arrives, unless it already carries a valid earlier stamp (a load balancer in
    front); an unreadable, future or stale stamp is replaced."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            now = time.time()
            given = [v for k, v in scope.get("headers", []) if k.lower() == HEADER.encode()]
            earlier = arrival_time({HEADER: given[0].decode("latin-1")}, now) if len(given) == 1 else None
            if earlier is None:
                stamp = f"t={int(now * 1e6)}".encode()
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
