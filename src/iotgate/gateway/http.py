"""The device listener's HTTP/1.x server: asyncio Protocol + httptools, bytes written by hand.

Why not uvicorn/h11/aiohttp: Alibaba's Link SDK C does a case-sensitive `memcmp` for
`Content-Length: ` and rejects `HTTP/1.0` status lines and chunked replies (protocols.md §1.5),
while ASGI stacks lower-case header names. Owning the bytes also makes this the cheapest
stack measured on this machine (perfstack.md §3.1: ≈15 µs/request with TLS against ≈43 µs for
uvicorn with bare ASGI), lets an oversized body be refused from its Content-Length without
reading it, and gives one place for header/body/idle timeouts and per-address connection caps.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol as TypingProtocol

import httptools

from iotgate import metrics
from iotgate.gateway.tls_transport import ADDRESS_COUNTED, CLIENT_ADDRESS, TlsListener

log = logging.getLogger("iotgate.gateway")

REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
MAX_PIPELINED = 16
DISCARD_LIMIT = 4 * 1024 * 1024
LINGER_S = 2.0
# Stands in for the parser of a kept-alive connection between requests: ~1 KB less per idle
# connection; data_received makes a new parser for the next request (~0.4 µs).
_IDLE_PARSER = httptools.HttpRequestParser(object())
# Between requests a connection holds these shared, never-written empties instead of a dict and a
# list of its own (~120 B per idle connection); on_message_begin gives each request fresh ones.
_NO_HEADERS: dict[str, str] = {}
_NO_BODY: list[bytes] = []


class Request:
    __slots__ = ("body", "client", "headers", "keep_alive", "method", "path", "query", "version")

    def __init__(self) -> None:
        self.method = b""
        self.path = ""
        self.query = ""
        self.headers: dict[str, str] = {}
        self.body = b""
        self.version = "1.1"
        self.keep_alive = True
        self.client = ""


class Response:
    __slots__ = ("body", "close", "content_type", "status")

    def __init__(self, status: int, body: bytes, content_type: bytes = b"application/json", close: bool = False):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.close = close


class DeviceApp(TypingProtocol):
    """What the server needs from the protocol layer."""

    def body_limit(self, path: str) -> int: ...
    def too_large(self, path: str) -> Response: ...
    def bad_request(self, path: str, reason: str) -> Response: ...
    def timeout(self, path: str, reason: str, limit: str) -> Response: ...
    def failure(self, path: str) -> Response: ...
    async def handle(self, request: Request) -> Response: ...


def render(resp: Response, keep_alive: bool, http10: bool) -> bytes:
    """Status line always HTTP/1.1, `Content-Length: ` spelled as the C SDKs memcmp it, never chunked."""
    head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
        resp.status,
        REASONS.get(resp.status, b"Unknown"),
        resp.content_type,
        len(resp.body),
    )
    if not keep_alive:
        head += b"Connection: close\r\n"
    elif http10:
        head += b"Connection: keep-alive\r\n"
    return head + b"\r\n" + resp.body


class ServerLimits:
    def __init__(
        self,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        idle_timeout_s: float = 300.0,
        max_header_bytes: int = 16384,
        max_connections_per_ip: int = 20000,
    ) -> None:
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_header_bytes = max_header_bytes
        self.max_connections_per_ip = max_connections_per_ip


class HttpConnection(asyncio.Protocol):
    """One device connection. Requests are parsed as bytes arrive, queued, and answered strictly
    in arrival order (pipelining). An error found while parsing (malformed HTTP, oversized header
    or body) is queued behind the requests already parsed, answered with `Connection: close`, and
    the rest of the input is swallowed (up to DISCARD_LIMIT) so the client reads the reply
    instead of a connection reset."""

    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_discard_left",
        "_error_sent",
        "_failed",
        "_header_bytes",
        "_headers",
        "_in_message",
        "_limit",
        "_paused",
        "_queue",
        "_target",
        "_url",
        "address_counted",
        "client",
        "closed",
        "deadline",
        "parser",
        "server",
        "transport",
    )

    def __init__(self, server: DeviceServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        # a parser is made when the first bytes come (data_received): ~1 KB less for a connection
        # that has done its handshake but not sent a request yet; _IDLE_PARSER between requests
        self.parser = _IDLE_PARSER
        self.client = ""
        self.address_counted = False
        self._queue: list[Request | Response] = []  # a Response is a final error reply; list: 0.7 KB < deque
        self._busy = False
        self.closed = False
        self.deadline = 0.0
        self._failed = False  # an error reply is queued or sent: input is no longer parsed
        self._error_sent = False
        self._discard_left = 0  # input bytes still swallowed after an error reply
        self._in_message = False
        self._paused = False  # we paused reading (pipelining limit, swallowing): resume only then
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._target: tuple[str, str] | None = None  # (path, query) once parsed at the header's end
        self._headers = _NO_HEADERS
        self._header_bytes = 0
        self._body = _NO_BODY
        self._body_size = 0
        self._limit = 0

    @property
    def in_flight(self) -> bool:
        """A request is being received, processed or answered."""
        return self._busy or bool(self._queue) or (self._in_message and not self._failed)

    # -- connection events ----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport
        client = transport.get_extra_info(CLIENT_ADDRESS)  # the TLS layer's: one string, no second getpeername
        if client is None:
            peer = transport.get_extra_info("peername")
            client = peer[0] if peer else ""
        self.client = client
        self.address_counted = bool(transport.get_extra_info(ADDRESS_COUNTED))  # by the TLS layer
        if not self.server.admit(self):
            assert self.transport is not None
            self.transport.abort()
            return
        self.deadline = self.server.now() + self.server.limits.header_timeout_s

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.release(self)

    def data_received(self, data: bytes) -> None:
        if self._failed:
            self._swallow(len(data))
            return
        if self.parser is _IDLE_PARSER:
            self.parser = httptools.HttpRequestParser(self)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(self.server.app.bad_request(self._path(), "protocol upgrade is not supported"))
        except httptools.HttpParserError as exc:
            # a refusal raised in a callback arrives here wrapped; it has been answered already
            if not self._failed:
                self._fail(self.server.app.bad_request(self._path(), f"malformed HTTP request: {exc}"))
        except _Refused:
            pass

    def eof_received(self) -> bool | None:
        if not self._busy and not self._queue:
            self.close()
            return None
        # plain TCP: keep the write side open until queued replies are sent (TLS cannot half-close)
        return None if self.transport and self.transport.get_extra_info("sslcontext") else True

    # -- parser callbacks -----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._headers = {}
        self._body = []
        self._in_message = True
        # the whole header must arrive within header_timeout_s of its first byte (slowloris)
        self.deadline = self.server.now() + self.server.limits.header_timeout_s

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        self._check_header_size()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._check_header_size()
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else previous + ", " + text

    def on_headers_complete(self) -> None:
        # the URL is complete now: parse it once, for the body limit and for the Request
        target = self._target = _parse_target(self._url)
        path = target[0] if target is not None else "/"
        self._limit = self.server.app.body_limit(path)
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self._limit:
            # refused from the header alone: the body is never read into memory
            self._fail(self.server.app.too_large(path), discard=int(length))
            raise _Refused
        self.deadline = self.server.now() + self.server.limits.body_timeout_s
        expect = self._headers.get("expect")
        if expect is not None and expect.lower() == "100-continue" and self.transport is not None:
            # never to HTTP/1.0 (RFC 9110 §10.1.1), never ahead of an earlier pipelined reply
            if self.parser.get_http_version() == "1.1" and not self._busy and not self._queue:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limit:  # chunked body over the limit
            self._fail(self.server.app.too_large(self._path()), discard=DISCARD_LIMIT)
            raise _Refused
        self._body.append(body)

    def on_message_complete(self) -> None:
        target = self._target
        if target is None:  # not a valid URL (on_headers_complete always ran before this)
            self._fail(self.server.app.bad_request("/", "the request target is not a valid URL path"))
            raise _Refused
        req = Request()
        req.method = self.parser.get_method()
        req.path, req.query = target
        req.headers = self._headers
        req.body = b"".join(self._body)
        req.version = self.parser.get_http_version()
        req.keep_alive = self.parser.should_keep_alive()
        req.client = self.client
        self._reset()
        self._in_message = False
        self._queue.append(req)
        self.deadline = self.server.now() + self.server.limits.idle_timeout_s
        if len(self._queue) >= MAX_PIPELINED and self.transport:
            self._paused = True
            self.transport.pause_reading()
        self._kick()

    # -- replies --------------------------------------------------------------------------
    def _kick(self) -> None:
        if not self._busy:
            self._busy = True
            self.server.loop.create_task(self._process())

    async def _process(self) -> None:
        try:
            while self._queue and not self.closed:
                item = self._queue.pop(0)
                if isinstance(item, Response):  # the final error reply of a refused request
                    self._send_error(item)
                    return
                try:
                    resp = await self.server.app.handle(item)
                except Exception:
                    log.exception("device request %s failed", item.path)
                    resp = self.server.app.failure(item.path)
                if self.transport is None or self.closed:
                    return
                keep = item.keep_alive and not resp.close and not self.server.closing
                if self._failed and not self._queue:
                    keep = False
                self.transport.write(render(resp, keep, item.version == "1.0"))
                if not keep:
                    self.close()
                    return
                if self._paused and len(self._queue) < MAX_PIPELINED and not self._failed:
                    # only when paused: a call down through the TLS layer per reply otherwise
                    self._paused = False
                    self.transport.resume_reading()
                self.deadline = self.server.now() + self.server.limits.idle_timeout_s
            if not self._in_message:  # idle until the next request: no parser held meanwhile
                self.parser = _IDLE_PARSER
        finally:
            self._busy = False

    def _fail(self, resp: Response, discard: int = 0) -> None:
        """Stop parsing; answer `resp` after the replies already owed, then close. Swallow up
        to `discard` more input bytes so the client gets to read the reply."""
        if self._failed or self.transport is None or self.closed:
            return
        self._failed = True
        self._in_message = False
        self._discard_left = min(discard, DISCARD_LIMIT)
        if self._busy or self._queue:
            self._queue.append(resp)
            self._kick()
        else:
            self._send_error(resp)

    def _send_error(self, resp: Response) -> None:
        if self.transport is None or self.closed:
            return
        self.transport.write(render(resp, False, False))
        self._error_sent = True
        self._queue.clear()
        if self._discard_left > 0:
            self._paused = False
            self.transport.resume_reading()
            self.deadline = self.server.now() + LINGER_S
        else:
            self.close()

    def _swallow(self, size: int) -> None:
        self._discard_left -= size
        if self._discard_left <= 0:
            if self._error_sent:
                self.close()
            elif self.transport is not None:
                self._paused = True
                self.transport.pause_reading()  # the reply is still queued; stop reading until it is sent

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()

    def timed_out(self) -> None:
        if self._busy:  # a reply is being computed: the handler owns the deadline
            return
        if self._in_message and not self._failed:  # part of a request came, the rest did not (slowloris)
            limits = self.server.limits
            if self._limit:  # the header was complete: the body is late
                reason, limit = f"request body not received within {limits.body_timeout_s:g} s", "body_timeout"
            else:
                reason, limit = f"request header not received within {limits.header_timeout_s:g} s", "header_timeout"
            # linger (LINGER_S) swallowing what still trickles in, so the client reads the 408, not a reset
            self._fail(self.server.app.timeout(self._path(), reason, limit), discard=DISCARD_LIMIT)
            return
        if not self._failed:
            metrics.limit_hit("idle_timeout")
        self.close()

    def _check_header_size(self) -> None:
        if self._header_bytes > self.server.limits.max_header_bytes:
            self._fail(self.server.app.bad_request(self._path(), "request header is too large"))
            raise _Refused

    def _path(self) -> str:
        target = self._target or (_parse_target(self._url) if self._url else None)
        return target[0] if target is not None else "/"


def _parse_target(url: bytes) -> tuple[str, str] | None:
    """(path, query) of a request target; None: not a valid URL."""
    try:
        parsed = httptools.parse_url(url)
    except httptools.HttpParserInvalidURLError:
        return None
    path, query = parsed.path, parsed.query
    return (path.decode("latin-1") if path else "/", query.decode("latin-1") if query else "")


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing a refused request."""


class DeviceServer:
    def __init__(self, app: DeviceApp, limits: ServerLimits) -> None:
        self.app = app
        self.limits = limits
        self.loop = asyncio.get_event_loop()
        self.connections: set[HttpConnection] = set()
        self.per_ip: dict[str, int] = {}
        self.closing = False
        self.refused = 0
        self._servers: list[asyncio.AbstractServer] = []
        self._tls_listeners: list[TlsListener] = []
        self._sweeper: asyncio.Task[None] | None = None
        self.on_refused: Callable[[str], None] | None = None

    def now(self) -> float:
        return self.loop.time()

    def take_address(self, client: str) -> bool:
        """Count a new connection from `client` against max_connections_per_ip; False: refused.
        Over TLS the listener calls this when the TCP connection arrives, before the handshake."""
        count = self.per_ip.get(client, 0)
        if self.closing or count >= self.limits.max_connections_per_ip:
            self.refused += 1
            if self.on_refused:
                self.on_refused(client)
            return False
        self.per_ip[client] = count + 1
        return True

    def give_back_address(self, client: str) -> None:
        left = self.per_ip.get(client, 1) - 1
        if left > 0:
            self.per_ip[client] = left
        else:
            self.per_ip.pop(client, None)

    def admit(self, conn: HttpConnection) -> bool:
        if self.closing or (not conn.address_counted and not self.take_address(conn.client)):
            conn.closed = True
            return False
        self.connections.add(conn)
        return True

    def release(self, conn: HttpConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            if not conn.address_counted:
                self.give_back_address(conn.client)

    async def listen(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None, reuse_port: bool = False
    ) -> list[tuple[str, int]]:
        def connection() -> asyncio.Protocol:
            return HttpConnection(self)

        factory: Callable[[], asyncio.Protocol] = connection
        if ssl_context is not None:
            # TLS in our own layer on the TCP transport, not the loop's SSL transport: ~7 KiB less
            # per idle connection at the same CPU per request (tls_transport.py, docs/benchmarks.md)
            listener = TlsListener(ssl_context, connection, self.limits.header_timeout_s, self.loop, gate=self)
            self._tls_listeners.append(listener)
            factory = listener
        server = await self.loop.create_server(
            factory, host=host, port=port, reuse_port=reuse_port or None, backlog=2048
        )
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = self.loop.create_task(self._sweep())
        return [s.getsockname()[:2] for s in server.sockets]

    async def _sweep(self) -> None:
        """Close connections past their deadline; one pass a second is cheaper than a timer per request."""
        while True:
            await asyncio.sleep(0.5)
            now = self.now()
            for conn in [c for c in self.connections if c.deadline < now]:
                conn.timed_out()
            for listener in self._tls_listeners:  # ~3 KB of TLS buffers per connection that went quiet
                listener.release_idle_buffers()

    async def shutdown(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish, then close what is left."""
        self.closing = True
        for server in self._servers:
            server.close()
        deadline = self.now() + grace_s
        # requests being received, processed or answered finish (bounded by grace_s and by the
        # header/body timeouts the sweeper keeps enforcing); idle keep-alive connections just close
        for conn in [c for c in self.connections if not c.in_flight]:
            conn.close()
        while any(c.in_flight for c in self.connections) and self.now() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()
        if self._sweeper:
            self._sweeper.cancel()
        for server in self._servers:
            await server.wait_closed()


AppHandler = Callable[[Request], Awaitable[Response]]
