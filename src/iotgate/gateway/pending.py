"""A reply that waits only for its commit: what a dialect's hot path hands the router."""

from __future__ import annotations

import asyncio

from iotgate.gateway.http import Response


class Pending:
    """The request's records are submitted: `reply` goes out once every future has resolved
    (after COMMIT). Returned instead of a coroutine so that a report crosses one coroutine (the
    router's) on its way, not one per layer (router, dialect, core: ~0.3 µs each per request)."""

    __slots__ = ("futures", "metric", "reply")

    def __init__(self, futures: list[asyncio.Future[None]], reply: Response, metric: tuple[str, str, str]) -> None:
        self.futures = futures
        self.reply = reply
        self.metric = metric  # the reply's (dialect, endpoint, result), as metrics.device_request counts it
