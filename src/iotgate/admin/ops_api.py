"""Operations endpoints of the admin listener: `/metrics`, the audit log, admin key rotation.

Also the ASGI middleware that counts management requests and writes one audit row for every
mutating `/api` request that passed authentication (who, what, when; never a body).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotgate import metrics
from iotgate.admin.api import int_param, json, platform
from iotgate.admin.errors import ApiError
from iotgate.logs import clean
from iotgate.storage.base import AuditEntry

if TYPE_CHECKING:
    from iotgate.server import Platform

log = logging.getLogger("iotgate.admin")
ADMIN_KEY_FILE = "admin-key"
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ACTOR_KEY = "iotgate.actor"  # scope key set by AdminKeyAuth when a request is authorized
MAX_AUDIT_PAGE = 1000
CONSOLE_COOKIE = "iotgate_console"  # admin/console.py's session cookie


def key_id(key: str) -> str:
    """A short public fingerprint of the admin key (who did it), never the key itself."""
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:12]


def session_id(sid: str) -> str:
    return "console:" + hashlib.sha256(sid.encode()).hexdigest()[:12]


def console_actor(scope: Scope) -> str:
    """The console session a request came with, as a fingerprint of its cookie."""
    from starlette.requests import cookie_parser

    for name, value in scope["headers"]:
        if name == b"cookie":
            sid = cookie_parser(value.decode("latin-1")).get(CONSOLE_COOKIE)
            if sid:
                return session_id(sid)
    return "console:unknown"


def new_admin_key() -> str:
    return "iga_" + secrets.token_urlsafe(32)


def write_key_file(path: Path, key: str) -> None:
    """Atomically replace the key file, readable by the owner only."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# -- endpoints -------------------------------------------------------------------------------
async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text exposition (unauthenticated, like /healthz; the admin listener is loopback by default)."""
    forwarder = getattr(platform(request), "forwarder", None)
    if forwarder is not None and forwarder.deliver:
        try:
            await forwarder.refresh_metrics()  # the forwarding counters are read from the database
        except Exception as exc:  # a scrape still answers with everything else
            log.warning("forwarding counters unavailable for /metrics: %s", exc)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


async def rotate_key(request: Request) -> Response:
    """Replace the admin key: the new key is stored in the data dir's admin-key file and returned once;
    the old key stops working at once."""
    p = platform(request)
    if p.settings.admin_key:
        raise ApiError(
            409,
            "conflict",
            "the admin key is set by IOTGATE_ADMIN_KEY, --admin-key or the config file; change it there and restart",
        )
    key = new_admin_key()
    write_key_file(p.data_dir / ADMIN_KEY_FILE, key)
    old = key_id(p.admin_key)
    p.admin_key = key
    _end_console_sessions(p)
    log.warning("admin key rotated: %s replaced by %s", old, key_id(key))
    return json({"adminKey": key, "keyId": key_id(key), "previousKeyId": old})


def _end_console_sessions(p: Platform) -> None:
    """Console sessions were opened with the old key: they end with it."""
    console = getattr(p, "console", None)  # admin/console.py's ConsoleApp, when the console is installed
    if console is not None:
        console.sessions.clear()


def audit_json(e: AuditEntry) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at,
        "actor": e.actor,
        "method": e.method,
        "path": e.path,
        "target": e.target,
        "status": e.status,
        "client": e.client,
    }


async def list_audit(request: Request) -> Response:
    """Admin actions, newest first; page with `before` = the previous page's `next`."""
    limit = int_param(request, "limit", 100, 1, MAX_AUDIT_PAGE)
    before = int_param(request, "before", 0, 1) if request.query_params.get("before") else None
    entries = await platform(request).storage.list_audit(before, limit)
    nxt = entries[-1].id if len(entries) == limit else None
    return json({"items": [audit_json(e) for e in entries], "next": nxt})


def ops_routes() -> list[Route]:
    return [
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/api/v1/admin/rotate-key", rotate_key, methods=["POST"]),
        Route("/api/v1/audit", list_audit, methods=["GET"]),
    ]


# -- middleware ------------------------------------------------------------------------------
def audit_target(path: str, response_ids: dict[str, str]) -> str:
    """What a request acted on: product key, device, sub-device, from the path (or, for a create,
    the identifiers in the reply)."""
    parts = [p for p in path.split("/") if p]  # api v1 products {pk} devices {dn} ...
    target = ""
    if len(parts) >= 4 and parts[2] == "products":
        target = parts[3]
        if len(parts) >= 6 and parts[4] == "devices":
            target += "/" + parts[5]
            if len(parts) >= 9 and parts[6] == "sub-devices":
                target += " sub-device " + parts[7] + "/" + parts[8]
    if response_ids.get("productKey") and "/" not in target:
        pk = response_ids["productKey"]
        target = f"{pk}/{response_ids['deviceName']}" if response_ids.get("deviceName") else pk
    return clean(target, 300)


class OpsMiddleware:
    """Outermost layer of the admin app: counts every request (metrics) and audits mutating /api
    requests that AdminKeyAuth let through (it sets scope["iotgate.actor"])."""

    def __init__(self, app: ASGIApp, platform: Platform) -> None:
        self.app = app
        self.platform = platform

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        audited = method in MUTATING and path.startswith("/api/")
        status = 500
        ids: dict[str, str] = {}
        held: Message | None = None  # an audited reply's start, sent once its audit row is written
        written = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, held, written
            kind = message["type"]
            if kind == "http.response.start":
                status = message["status"]
                if audited and scope.get(ACTOR_KEY):
                    held = message
                    return
            elif kind == "http.response.body" and held is not None:
                # the row is written before the client sees the reply: what was acknowledged is audited
                if not written:
                    if any(k == b"content-type" and v.startswith(b"application/json") for k, v in held["headers"]):
                        _reply_ids(message.get("body", b""), ids)
                    await self._audit(scope, scope[ACTOR_KEY], method, path, status, ids)
                    written = True
                    await send(held)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics.admin_request(method if method in _METHODS else "OTHER", status)
            if audited and scope.get(ACTOR_KEY) and not written:  # the app failed before replying
                await self._audit(scope, scope[ACTOR_KEY], method, path, status, ids)

    async def _audit(self, scope: Scope, actor: str, method: str, path: str, status: int, ids: dict[str, str]) -> None:
        client = scope.get("client")
        entry = AuditEntry(
            at=int(time.time() * 1000),
            actor=actor,
            method=method,
            path=clean(path, 500),
            target=audit_target(path, ids),
            status=status,
            client=client[0] if client else "",
        )
        try:
            await self.platform.storage.write_audit(entry)
        except Exception:  # the action happened; losing its audit row must be loud, not fatal
            log.exception("could not write the audit entry for %s %s by %s", method, path, actor)


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def _reply_ids(body: bytes, out: dict[str, str]) -> None:
    """productKey/deviceName of a create reply (top level only; bodies of batches are not kept)."""
    if len(body) > 65536 or not body.startswith(b"{"):
        return
    try:
        doc = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return
    if isinstance(doc, dict):
        for key in ("productKey", "deviceName"):
            if isinstance(doc.get(key), str):
                out[key] = doc[key]
