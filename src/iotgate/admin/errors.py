"""JSON errors of the management API: `{"error": {"code", "message", "details"?}}`."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from iotgate.errors import Conflict, CoreError, Invalid, NotFound
from iotgate.model import ModelError

log = logging.getLogger("iotgate.admin")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None) -> Response:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return Response(msgspec.json.encode({"error": body}), status, media_type="application/json")


async def handle_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, str(exc), exc.details)
    if isinstance(exc, NotFound):
        return error_response(404, "not_found", str(exc))
    if isinstance(exc, Conflict):
        return error_response(409, "conflict", str(exc))
    if isinstance(exc, Invalid):
        return error_response(422, "invalid", str(exc), exc.details)
    if isinstance(exc, ModelError):
        return error_response(422, "invalid_model", str(exc))
    if isinstance(exc, CoreError):
        return error_response(400, "bad_request", str(exc))
    if isinstance(exc, HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail))
    log.exception("admin request %s %s failed", request.method, request.url.path)
    return error_response(500, "internal", "internal error; see the server log")
