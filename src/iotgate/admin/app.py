"""The admin listener: management API, health, OpenAPI document; separate from the device port."""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from iotgate.admin import api, ops_api, rules_api
from iotgate.admin.errors import ApiError, error_response, handle_error
from iotgate.errors import Conflict, CoreError
from iotgate.model import ModelError

if TYPE_CHECKING:
    from iotgate.server import Platform

PUBLIC_API_PATHS = ("/api/v1/openapi.json", "/api/v1/docs")  # the only /api paths served without a key


class AdminKeyAuth:
    """Bearer admin key on /api/*; the console adds its own session check (admin/console.py)."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/api/") and path not in PUBLIC_API_PATHS:  # exact: no prefix tricks
                if not self.authorized(scope):
                    if scope.get("iotgate.csrf_failed"):  # a console session without its CSRF token
                        resp = error_response(403, "csrf_failed", "the X-CSRF-Token header is missing or wrong")
                        await resp(scope, receive, send)
                        return
                    resp = error_response(401, "unauthorized", "send the admin key as 'Authorization: Bearer <key>'")
                    resp.headers["WWW-Authenticate"] = "Bearer"
                    await resp(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    def authorized(self, scope: Scope) -> bool:
        """Also names the caller in scope["iotgate.actor"] for the audit log (admin/ops_api.py)."""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, key = value.decode("latin-1").partition(" ")
                ok = scheme.lower() == "bearer" and self.key_matches(key.strip())
                if ok:
                    scope[ops_api.ACTOR_KEY] = ops_api.key_id(key.strip())
                return ok
        console = getattr(self.platform, "console", None)  # admin/console.py's ConsoleApp, when installed
        ok = console is not None and console.sessions.check(scope)
        if ok:
            scope[ops_api.ACTOR_KEY] = ops_api.console_actor(scope)
        return ok

    def key_matches(self, key: str) -> bool:
        return hmac.compare_digest(key.encode(), self.platform.admin_key.encode())


async def healthz(request: Request) -> Response:
    p: Platform = request.app.state.platform
    if not p.ready:
        return JSONResponse({"status": "starting"}, 503)
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    p: Platform = request.app.state.platform
    checks = {
        "database": await p.storage.ping(),
        "deviceListener": p.device_listener_ok(),
        "ingest": not p.ingestor._closing,
    }
    ok = p.ready and all(checks.values())
    return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks}, 200 if ok else 503)


def create_admin_app(platform: Platform) -> ASGIApp:
    from iotgate.admin.openapi import openapi_routes

    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        *openapi_routes(),
        *ops_api.ops_routes(),
        *api.ROUTES,
        *rules_api.ROUTES,
    ]
    try:
        from iotgate.admin.console import console_routes  # the web console, when installed

        routes += console_routes(platform)
    except ImportError:
        pass
    app = Starlette(
        routes=routes,
        exception_handlers={
            CoreError: handle_error,
            Conflict: handle_error,
            ApiError: handle_error,
            ModelError: handle_error,
            HTTPException: handle_error,
            Exception: handle_error,
        },
    )
    app.state.platform = platform
    return ops_api.OpsMiddleware(AdminKeyAuth(app, platform), platform)
