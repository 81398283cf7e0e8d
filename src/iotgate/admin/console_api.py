"""Management-API endpoints the console needs: live stats, a per-device event stream, connection tools.

* ``GET /api/v1/stats/overview`` — devices total/online, messages/s and rejected/s now and per bucket
  over the last hour (in-memory counters fed by an ``Ingestor.after_commit`` hook; they start empty at
  server start and count this node only).
* ``GET /api/v1/products/{pk}/devices/{dn}/events`` — Server-Sent Events of the device's committed
  reports (``property``), raw messages/events and rejections (``message``), fed by the same hook.
* ``GET /api/v1/tools/connection`` — device-listener endpoints of both dialects and certificate facts.
* ``GET /api/v1/tools/device-cert`` — the device listener's certificate as PEM, for device trust stores.
* ``POST /api/v1/tools/sign`` — the Alibaba ``/auth`` body with its sign and the Huawei
  ``/v5/device-auth`` body with its password, from a device's credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from iotgate.admin.api import body_object, json, message_json, unknown_fields
from iotgate.admin.errors import ApiError
from iotgate.auth.signing import ALINK_SIGN_METHODS, alink_auth_body, alink_sign_content, iotda_auth_body
from iotgate.registry.service import device_id_of
from iotgate.storage.base import Record

if TYPE_CHECKING:
    from iotgate.server import Platform

HOUR_S = 3600
RATE_WINDOW_S = 10
HEARTBEAT_S = 15.0
MAX_STREAMS = 200
STREAM_QUEUE = 1000
POLL_S = 1.0  # live views read from the database this often when other processes ingest
POLL_MESSAGES = 50
log = logging.getLogger("iotgate.console")
IOTDA_TS_RE = re.compile(r"\d{10}")


class RateCounter:
    """Committed records per second (rejected ones apart) over a sliding hour: one ring slot per second."""

    def __init__(self, horizon_s: int = HOUR_S) -> None:
        self.horizon = horizon_s
        self._second = [-1] * horizon_s
        self._messages = [0] * horizon_s
        self._rejected = [0] * horizon_s
        self.total_messages = 0
        self.total_rejected = 0
        self.started_ms = int(time.time() * 1000)

    def add(self, second: int, messages: int, rejected: int) -> None:
        i = second % self.horizon
        if self._second[i] != second:
            self._second[i] = second
            self._messages[i] = 0
            self._rejected[i] = 0
        self._messages[i] += messages
        self._rejected[i] += rejected
        self.total_messages += messages
        self.total_rejected += rejected

    def _at(self, second: int) -> tuple[int, int]:
        i = second % self.horizon
        if self._second[i] != second:
            return 0, 0
        return self._messages[i], self._rejected[i]

    def rate(self, now_s: int, window_s: int = RATE_WINDOW_S) -> tuple[float, float]:
        """Average per second over the `window_s` complete seconds before `now_s`."""
        m = r = 0
        for s in range(now_s - window_s, now_s):
            a, b = self._at(s)
            m += a
            r += b
        return m / window_s, r / window_s

    def series(self, now_s: int, bucket_s: int) -> tuple[int, list[float], list[float]]:
        """Per-second rates in buckets covering the last hour up to now; returns (first second, ...)."""
        buckets = self.horizon // bucket_s
        end = now_s - now_s % bucket_s + bucket_s  # the current, partial bucket is the last one
        start = end - buckets * bucket_s
        msgs: list[float] = []
        rejs: list[float] = []
        for b in range(buckets):
            m = r = 0
            first = start + b * bucket_s
            for s in range(first, min(first + bucket_s, now_s + 1)):
                a, c = self._at(s)
                m += a
                r += c
            span = max(1, min(bucket_s, now_s + 1 - first))
            msgs.append(round(m / span, 3))
            rejs.append(round(r / span, 3))
        return start, msgs, rejs


class _Stream:
    __slots__ = ("device_id", "overflowed", "queue")

    def __init__(self, device_id: int) -> None:
        self.device_id = device_id
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(STREAM_QUEUE)
        self.overflowed = False


def sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


def record_event(r: Record) -> bytes:
    if r.kind == "property":
        return sse(
            "property",
            {"messageId": str(r.message_id), "time": r.ts, "receivedAt": r.received_at, "values": r.values or {}},
        )
    return sse("message", message_json(r))


class LiveFeed:
    """Fan-out of committed records to the console's event streams (one set of streams per device)."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.max_streams = max_streams
        self._streams: dict[int, set[_Stream]] = {}
        self.count = 0

    def check_capacity(self) -> None:
        """503 once max_streams streams are open (pushed from here or polled from the database)."""
        if self.count >= self.max_streams:
            raise ApiError(503, "too_many_streams", f"at most {self.max_streams} live streams; close some tabs")

    def open(self, device_id: int) -> _Stream:
        self.check_capacity()
        stream = _Stream(device_id)
        self._streams.setdefault(device_id, set()).add(stream)
        self.count += 1
        return stream

    def close(self, stream: _Stream) -> None:
        streams = self._streams.get(stream.device_id)
        if streams and stream in streams:
            streams.discard(stream)
            self.count -= 1
            if not streams:
                del self._streams[stream.device_id]

    def publish(self, records: list[Record]) -> None:
        if not self._streams:
            return
        for r in records:
            streams = self._streams.get(r.device_id)
            if not streams:
                continue
            event = record_event(r)
            for stream in streams:
                if stream.overflowed:
                    continue
                try:
                    stream.queue.put_nowait(event)
                except asyncio.QueueFull:  # a stalled reader: end its stream, it reconnects and reloads
                    stream.overflowed = True


# (method, path, ConsoleApi handler): a table, so that admin/openapi.py documents these without a Platform
API_ROUTES = (
    ("GET", "/api/v1/stats/overview", "overview"),
    ("GET", "/api/v1/products/{product_key}/devices/{device_name}/events", "events"),
    ("GET", "/api/v1/tools/connection", "connection"),
    ("GET", "/api/v1/tools/device-cert", "device_cert"),
    ("POST", "/api/v1/tools/sign", "sign"),
)


class ConsoleApi:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.counter = RateCounter()
        self.feed = LiveFeed()
        ingestor = getattr(platform, "ingestor", None)
        if ingestor is not None:
            ingestor.after_commit.append(self.on_commit)

    def routes(self) -> list[Route]:
        return [Route(path, getattr(self, handler), methods=[method]) for method, path, handler in API_ROUTES]

    # -- the after-commit hook ------------------------------------------------------------
    def on_commit(self, records: list[Record]) -> None:
        rejected = 0
        for r in records:
            if r.kind == "rejected":
                rejected += 1
        self.counter.add(int(time.time()), len(records) - rejected, rejected)
        self.feed.publish(records)

    # -- overview -------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        """Devices total/online, messages/s and rejected/s now and over the last hour."""
        raw = request.query_params.get("bucket", "10")
        if not raw.isdigit() or int(raw) not in (1, 5, 10, 30, 60, 300):
            raise ApiError(422, "invalid", "bucket must be one of 1, 5, 10, 30, 60, 300 (seconds)")
        bucket = int(raw)
        p = self.platform
        now = time.time()
        now_ms = int(now * 1000)
        now_s = int(now)
        window_ms = p.settings.online_window_s * 1000
        online = sum(1 for t in p.core.last_seen.values() if now_ms - t < window_ms)
        total = await p.storage.count_devices()
        _, products = await p.storage.list_products(0, 1)
        msg_rate, rej_rate = self.counter.rate(now_s)
        start, msgs, rejs = self.counter.series(now_s, bucket)
        return json(
            {
                "time": now_ms,
                "products": products,
                "devices": {
                    "total": total,
                    "online": min(online, total),
                    "onlineWindowSeconds": p.settings.online_window_s,
                },
                "rate": {
                    "windowSeconds": RATE_WINDOW_S,
                    "messagesPerSecond": round(msg_rate, 3),
                    "rejectedPerSecond": round(rej_rate, 3),
                },
                "lastHour": {"start": start * 1000, "bucketSeconds": bucket, "messages": msgs, "rejected": rejs},
                "totals": {
                    "messages": self.counter.total_messages,
                    "rejected": self.counter.total_rejected,
                    "since": self.counter.started_ms,
                },
                "ratesScope": "this-process" if self.shared_ingest else "server",
            }
        )

    # -- live events ----------------------------------------------------------------------
    @property
    def shared_ingest(self) -> bool:
        """Whether other processes commit reports too (nodes or --workers sharing PostgreSQL): then this
        process's commit hook misses theirs, and live views and rates must come from the database. With
        SQLite, workers' reports are committed here (ingest/remote.py), so the hook sees them all."""
        return self.platform.settings.uses_postgres

    async def events(self, request: Request) -> Response:
        """Server-Sent Events: `property` and `message` events of one device as they commit."""
        p = self.platform
        row = await p.registry.device(request.path_params["product_key"], request.path_params["device_name"])
        ready = b"retry: 3000\n" + sse("ready", {"deviceId": device_id_of(row.product_key, row.device_name)})
        if self.shared_ingest:
            self.feed.check_capacity()
            return _event_stream(self._polled(row.id, ready))
        stream = self.feed.open(row.id)

        async def body() -> AsyncIterator[bytes]:
            try:
                yield ready
                idle = 0.0
                while p.ready:
                    try:
                        yield await asyncio.wait_for(stream.queue.get(), 1.0)
                        idle = 0.0
                    except TimeoutError:
                        if stream.overflowed:
                            yield sse("overflow", {"message": "too many events; reload"})
                            return
                        idle += 1.0
                        if idle >= HEARTBEAT_S:
                            idle = 0.0
                            yield b": keep-alive\n\n"
            finally:
                self.feed.close(stream)

        return _event_stream(body())

    async def _polled(self, device_id: int, ready: bytes) -> AsyncIterator[bytes]:
        """The event stream read from the database every POLL_S: new latest values, new messages."""
        storage = self.platform.storage
        self.feed.count += 1
        try:
            latest = await storage.latest_values(device_id)
            seen = {m.message_id for m in await storage.device_messages(device_id, None, None, POLL_MESSAGES)}
            yield ready
            idle = 0.0
            while self.platform.ready:
                await asyncio.sleep(POLL_S)
                idle += POLL_S
                try:
                    now = await storage.latest_values(device_id)
                    recent = await storage.device_messages(device_id, None, None, POLL_MESSAGES)
                except Exception as exc:  # the database hiccuped: try again next round
                    log.warning("live view of device %d: %s", device_id, exc)
                    continue
                groups: dict[int, dict[str, Any]] = {}
                for ident, (value, ts) in now.items():
                    old = latest.get(ident)
                    if old is None or ts > old[1] or (ts == old[1] and value != old[0]):
                        groups.setdefault(ts, {})[ident] = value
                latest = now
                received = int(time.time() * 1000)
                out = [
                    sse("property", {"time": ts, "receivedAt": received, "values": v})
                    for ts, v in sorted(groups.items())
                ]
                floor = min(seen) if len(seen) >= POLL_MESSAGES else -1
                fresh = [m for m in recent if m.message_id not in seen and m.message_id > floor]
                seen = {m.message_id for m in recent}
                out += [record_event(m) for m in reversed(fresh)]
                if out:
                    idle = 0.0
                    yield b"".join(out)
                elif idle >= HEARTBEAT_S:
                    idle = 0.0
                    yield b": keep-alive\n\n"
        finally:
            self.feed.count -= 1

    # -- connection info and tools --------------------------------------------------------
    def device_base_url(self, request: Request) -> str:
        """The device listener as the console's user reaches this machine."""
        p = self.platform
        host, port = p.device_addresses[0] if p.device_addresses else ("127.0.0.1", p.settings.device_port)
        if host in ("0.0.0.0", "::", ""):
            host = request.url.hostname or "127.0.0.1"
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"{'http' if p.settings.device_plain_http else 'https'}://{host}:{port}"

    def presented_certs(self) -> list[Path]:
        """Files of the certificates the listener presents: the configured/RSA one, and the ECDSA leaf
        the default self-signed setup also serves (issued by the RSA one, which devices trust)."""
        p = self.platform
        if p.cert_path is None or not p.cert_path.exists():
            return []
        files = [p.cert_path]
        if not p.settings.tls_cert:
            from iotgate.gateway.tls import EC_CERT

            ec = p.cert_path.parent / EC_CERT
            if ec.exists():
                files.append(ec)
        return files

    async def connection(self, request: Request) -> Response:
        """Device endpoints of both dialects and the device listener's certificate."""
        p = self.platform
        base = self.device_base_url(request)
        certs = [_cert_facts(path) for path in self.presented_certs()]
        return json(
            {
                "baseUrl": base,
                "tls": not p.settings.device_plain_http,
                "tlsProfile": p.settings.tls_profile,
                "listeners": [{"host": h, "port": port} for h, port in p.device_addresses],
                "alink": {
                    "auth": f"{base}/auth",
                    "propertyPost": f"{base}/topic/sys/{{productKey}}/{{deviceName}}/thing/event/property/post",
                    "eventPost": f"{base}/topic/sys/{{productKey}}/{{deviceName}}/thing/event/{{identifier}}/post",
                    "customTopic": f"{base}/topic/{{productKey}}/{{deviceName}}/user/{{name}}",
                    "tokenHeader": "password",
                },
                "iotda": {
                    "auth": f"{base}/v5/device-auth",
                    "propertiesReport": f"{base}/v5/devices/{{deviceId}}/sys/properties/report",
                    "messagesUp": f"{base}/v5/devices/{{deviceId}}/sys/messages/up",
                    "gatewayReport": f"{base}/v5/devices/{{deviceId}}/sys/gateway/sub-devices/properties/report",
                    "tokenHeader": "access_token",
                },
                "certificates": certs,
            }
        )

    async def device_cert(self, request: Request) -> Response:
        """The device listener's certificate (PEM): the trust anchor to install on devices."""
        p = self.platform
        if p.cert_path is None or not p.cert_path.exists():
            raise ApiError(
                404,
                "not_found",
                "the device listener has no certificate (it runs without TLS: --device-plain-http)",
            )
        return Response(
            p.cert_path.read_bytes(),
            media_type="application/x-pem-file",
            headers={"Content-Disposition": 'attachment; filename="iotgate-device-ca.pem"'},
        )

    async def sign(self, request: Request) -> Response:
        """The Alibaba /auth body (with sign) and the Huawei /v5/device-auth body (with password)."""
        doc = await body_object(request)
        unknown_fields(
            doc, {"productKey", "deviceName", "deviceSecret", "signMethod", "clientId", "timestamp", "iotdaTimestamp"}
        )
        details: list[dict[str, Any]] = []

        def text(name: str, required: bool) -> str:
            value = doc.get(name)
            if value is None or value == "":
                if required:
                    details.append({"field": name, "reason": "required", "message": f"{name} is required"})
                return ""
            if not isinstance(value, str):
                details.append({"field": name, "reason": "type", "message": f"{name} must be a string"})
                return ""
            return value.strip()

        pk, dn = text("productKey", True), text("deviceName", True)
        secret = text("deviceSecret", False)
        method = text("signMethod", False) or "hmacsha256"
        client_id = text("clientId", False) or None
        if method.lower() not in ALINK_SIGN_METHODS:
            details.append(
                {
                    "field": "signMethod",
                    "reason": "choice",
                    "message": f"signMethod must be one of {', '.join(ALINK_SIGN_METHODS)}",
                }
            )
        ts_raw = doc.get("timestamp")
        timestamp: int | None = None
        if ts_raw not in (None, ""):
            if isinstance(ts_raw, int) and not isinstance(ts_raw, bool) and ts_raw > 0:
                timestamp = ts_raw
            elif isinstance(ts_raw, str) and ts_raw.strip().isdigit():
                timestamp = int(ts_raw.strip())
            else:
                details.append(
                    {"field": "timestamp", "reason": "type", "message": "timestamp must be milliseconds since 1970"}
                )
        when: datetime | None = None
        hw_raw = text("iotdaTimestamp", False)
        if hw_raw:
            try:
                if not IOTDA_TS_RE.fullmatch(hw_raw):
                    raise ValueError
                when = datetime.strptime(hw_raw, "%Y%m%d%H").replace(tzinfo=UTC)
            except ValueError:
                details.append(
                    {"field": "iotdaTimestamp", "reason": "format", "message": "iotdaTimestamp must be UTC YYYYMMDDHH"}
                )
        if details:
            raise ApiError(422, "invalid", "; ".join(d["message"] for d in details), details)
        if not secret:  # a registered device: use its current secret
            secret = (await self.platform.registry.device(pk, dn)).secret
        alink = alink_auth_body(pk, dn, secret, sign_method=method.lower(), client_id=client_id, timestamp_ms=timestamp)
        device_id = device_id_of(pk, dn)
        base = self.device_base_url(request)
        return json(
            {
                "alink": {"url": f"{base}/auth", "body": alink, "signContent": alink_sign_content(alink)},
                "iotda": {"url": f"{base}/v5/device-auth", "body": iotda_auth_body(device_id, secret, when=when)},
            }
        )


def _event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(
        body, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


def _cert_facts(path: Path) -> dict[str, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pem = path.read_bytes()
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return {"file": path.name, "error": "not a PEM certificate"}
    names: list[str] = []
    with contextlib.suppress(x509.ExtensionNotFound):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n.value) for n in san]
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "file": path.name,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "notAfter": int(cert.not_valid_after_utc.timestamp() * 1000),
        "keyType": _key_type(cert.public_key()),
        "names": names,
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def _key_type(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"ECDSA {key.curve.name}"
    return type(key).__name__
