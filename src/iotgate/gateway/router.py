"""Routes device requests to their dialect; both dialects share one listener."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from iotgate import metrics
from iotgate.core import DeviceCore
from iotgate.gateway import alink, iotda
from iotgate.gateway.http import Request, Response
from iotgate.gateway.pending import Pending
from iotgate.ingest.pipeline import ShuttingDown

log = logging.getLogger("iotgate.gateway")
HEADER_TOO_LARGE = "request header is too large"  # gateway/http.py's reason for max_header_bytes


def _is_iotda(path: str) -> bool:
    return path.startswith("/v5/")


class DeviceRouter:
    def __init__(self, core: DeviceCore) -> None:
        self.alink = alink.AlinkDialect(core)
        self.iotda = iotda.IotdaDialect(core)

    def body_limit(self, path: str) -> int:
        return iotda.BODY_LIMIT if _is_iotda(path) else alink.BODY_LIMIT

    def too_large(self, path: str) -> Response:
        if _is_iotda(path):
            resp = iotda.error(403, "IOTDA.021105", "The content reported in a single request cannot exceed 1 MB.")
        else:
            resp = alink.reply(alink.PARAM_ERROR, "param error: body exceeds the 128 KB limit")
        return metrics.http_refusal(path, resp, "body_too_large")

    def bad_request(self, path: str, reason: str) -> Response:
        status, limit = (431, "header_too_large") if reason == HEADER_TOO_LARGE else (400, "malformed_http")
        if _is_iotda(path):
            resp = iotda.error(status, "IOTDA.000006", f"Invalid input data: {reason}")
        else:
            resp = Response(status, alink.reply(alink.PARAM_ERROR, f"param error: {reason}").body)
        return metrics.http_refusal(path, resp, limit)

    def timeout(self, path: str, reason: str, limit: str) -> Response:
        """A request not received in time (header_timeout_s / body_timeout_s): 408 in the dialect's shape."""
        if _is_iotda(path):
            resp = iotda.error(408, "IOTDA.000006", f"Invalid input data: {reason}")
        else:
            resp = Response(408, alink.reply(alink.PARAM_ERROR, f"param error: {reason}").body)
        return metrics.http_refusal(path, resp, limit)

    def failure(self, path: str) -> Response:
        if _is_iotda(path):
            return iotda.error(503, "IOTDA.000001", "Service temporarily unavailable; retry later.")
        return Response(503, alink.reply(alink.COMMON_ERROR, "common error: server unavailable, retry later").body)

    async def handle(self, req: Request) -> Response:
        try:
            try:
                step = self._route(req)
                if isinstance(step, Pending):  # the hot path: a report submitted without a coroutine
                    for fut in step.futures:
                        await fut
                    metrics.device_ok(req, step.reply, step.metric)
                    return step.reply
                if isinstance(step, Response):
                    resp = step
                else:
                    resp = await step
            except ShuttingDown:
                resp = self.failure(req.path)
        except Exception:
            metrics.device_reply(req, self.failure(req.path))
            raise
        metrics.device_reply(req, resp)
        return resp

    def _route(self, req: Request) -> Response | Pending | Awaitable[Response]:
        path = req.path
        if req.method != b"POST":
            if _is_iotda(path):
                return iotda.error(405, "IOTDA.000006", f"Invalid input data: {req.method.decode()} is not allowed")
            return Response(405, alink.reply(alink.PARAM_ERROR, "param error: only POST is supported").body)
        if path == "/auth":
            return self.alink.auth(req)
        if path.startswith("/topic/"):
            return self.alink.topic_now(req) or self.alink.topic(req)
        if _is_iotda(path):
            return self.iotda.report_now(req) or self.iotda.handle(req)
        return Response(404, alink.reply(alink.PARAM_ERROR, f"param error: no such endpoint {path}").body)
