"""The web console: a single-page app on the admin listener, signed in with the admin key.

Sessions live in server memory (a restart signs everyone out). The browser holds only a random session
id in an ``HttpOnly; SameSite=Strict`` cookie; every unsafe request authenticated by that cookie must also
carry the session's CSRF token in ``X-CSRF-Token`` (the page reads it from ``GET /console/session``).
Bearer-key API clients are unaffected: ``AdminKeyAuth`` consults :meth:`ConsoleSessions.check` only for
``/api/*`` requests without an ``Authorization`` header.

Routes: ``/`` → ``/console/``; ``/console/`` (the page), ``/console/static/*`` (assets shipped in the
package), ``/console/session`` (GET state, POST sign in, DELETE sign out), plus the console's API
endpoints from :mod:`iotgate.admin.console_api`.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request, cookie_parser
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iotgate.admin.api import body_json
from iotgate.admin.errors import error_response

if TYPE_CHECKING:
    from iotgate.server import Platform

STATIC_DIR = Path(__file__).parent / "static"
COOKIE = "iotgate_console"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDLE_TIMEOUT_S = 12 * 3600
ABSOLUTE_TIMEOUT_S = 7 * 24 * 3600
MAX_SESSIONS = 1000
LOGIN_FAILURES = 10  # per client address ...
LOGIN_WINDOW_S = 300  # ... within this window, then 429 until the oldest failure ages out

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class Session(msgspec.Struct):
    csrf: str
    created: float
    last_used: float


class ConsoleSessions:
    """Random server-side sessions (id → CSRF token, times), bounded in number and age."""

    def __init__(self, idle_s: float = IDLE_TIMEOUT_S, absolute_s: float = ABSOLUTE_TIMEOUT_S) -> None:
        self.idle_s = idle_s
        self.absolute_s = absolute_s
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> tuple[str, Session]:
        now = time.monotonic()
        sid = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), created=now, last_used=now)
        self._sessions[sid] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)  # the oldest sign-in goes first
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._sessions.get(sid)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_used > self.idle_s or now - session.created > self.absolute_s:
            del self._sessions[sid]
            return None
        session.last_used = now
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._sessions.pop(sid, None)

    def clear(self) -> None:
        """End every session (the admin key they were opened with was replaced)."""
        self._sessions.clear()

    def check(self, scope: Scope) -> bool:
        """AdminKeyAuth's hook: a live session, and for unsafe methods the matching CSRF header."""
        sid = None
        token = None
        for name, value in scope["headers"]:
            if name == b"cookie":
                sid = cookie_parser(value.decode("latin-1")).get(COOKIE) or sid
            elif name == CSRF_HEADER.encode():
                token = value.decode("latin-1")
        session = self.get(sid)
        if session is None:
            return False
        if scope.get("method", "GET") in SAFE_METHODS:
            return True
        if token and hmac.compare_digest(token.encode(), session.csrf.encode()):
            return True
        scope["iotgate.csrf_failed"] = True  # AdminKeyAuth answers 403 csrf_failed instead of 401
        return False


class LoginThrottle:
    """At most LOGIN_FAILURES wrong keys per client address per LOGIN_WINDOW_S."""

    def __init__(self, limit: int = LOGIN_FAILURES, window_s: float = LOGIN_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, client: str, now: float | None = None) -> int:
        """Seconds until the client may try again (0: now)."""
        now = time.monotonic() if now is None else now
        q = self._failures.get(client)
        if not q:
            return 0
        while q and now - q[0] >= self.window_s:
            q.popleft()
        if not q:
            del self._failures[client]
            return 0
        return int(self.window_s - (now - q[0])) + 1 if len(q) >= self.limit else 0

    def failed(self, client: str, now: float | None = None) -> None:
        if len(self._failures) > 10000:  # many addresses: forget the idle ones
            self._failures = {k: v for k, v in self._failures.items() if v and len(v) >= self.limit}
        self._failures.setdefault(client, deque(maxlen=self.limit)).append(time.monotonic() if now is None else now)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        msgspec.json.encode(data),
        status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


class ConsoleApp:
    """Handlers of the console's own (non-API) routes."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.sessions = ConsoleSessions()
        self.throttle = LoginThrottle()

    def _sid(self, request: Request) -> str | None:
        return request.cookies.get(COOKIE)

    async def index(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={**SECURITY_HEADERS, "Cache-Control": "no-cache"})

    async def session_state(self, request: Request) -> Response:
        session = self.sessions.get(self._sid(request))
        if session is None:
            return _json({"authenticated": False})
        return _json({"authenticated": True, "csrfToken": session.csrf})

    async def login(self, request: Request) -> Response:
        client = request.client.host if request.client else "?"
        wait = self.throttle.retry_after(client)
        if wait:
            return error_response(429, "too_many_attempts", f"too many wrong admin keys; try again in {wait} s")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return error_response(415, "unsupported_media_type", "send the admin key as a JSON body")
        doc = await body_json(request)
        key = doc.get("adminKey") if isinstance(doc, dict) else None
        if not isinstance(key, str) or not key.strip():
            return error_response(422, "invalid", "enter the admin key", [{"field": "adminKey", "reason": "required"}])
        if not hmac.compare_digest(key.strip().encode(), self.platform.admin_key.encode()):
            self.throttle.failed(client)
            return error_response(
                401, "wrong_admin_key", "that is not the admin key", [{"field": "adminKey", "reason": "wrong"}]
            )
        self.throttle.succeeded(client)
        self.sessions.drop(self._sid(request))  # a fresh id on every sign-in (no session fixation)
        sid, session = self.sessions.create()
        resp = _json({"authenticated": True, "csrfToken": session.csrf})
        resp.set_cookie(
            COOKIE,
            sid,
            max_age=ABSOLUTE_TIMEOUT_S,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return resp

    async def logout(self, request: Request) -> Response:
        sid = self._sid(request)
        session = self.sessions.get(sid)
        if session is not None:
            token = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(token.encode(), session.csrf.encode()):
                return error_response(403, "csrf_failed", "the X-CSRF-Token header is missing or wrong")
            self.sessions.drop(sid)
        resp = _json({"authenticated": False})
        resp.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return resp


class _StaticWithHeaders:
    """StaticFiles plus the console's security headers and revalidation on every load."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                headers.append((b"cache-control", b"no-cache"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _to_console(request: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)


def console_routes(platform: Platform) -> list[Any]:
    """Routes of the console (Route and Mount objects). Sets `platform.console`, whose sessions AdminKeyAuth
    and key rotation use; the console API hooks itself into the ingestor for live data."""
    from iotgate.admin.console_api import ConsoleApi

    app = ConsoleApp(platform)
    api = ConsoleApi(platform)
    platform.console = app  # type: ignore[attr-defined]
    return [
        Route("/", _to_console, methods=["GET"]),
        Route("/console", _to_console, methods=["GET"]),
        Route("/console/", app.index, methods=["GET"]),
        Route("/console/session", app.session_state, methods=["GET"]),
        Route("/console/session", app.login, methods=["POST"]),
        Route("/console/session", app.logout, methods=["DELETE"]),
        Mount("/console/static", app=_StaticWithHeaders(StaticFiles(directory=STATIC_DIR)), name="console-static"),
        *api.routes(),
    ]
