"""The sans-IO core of the device SDK: request building, token lifetime, retries and error mapping.

Nothing here does I/O. An operation is a generator ("flow") that *yields* what it needs done and
receives the outcome:

* :class:`HttpRequest` → the driver sends it and replies with an :class:`HttpResponse`, or with a
  :class:`TransportFailure` if no response arrived;
* :class:`Sleep` → the driver waits (backoff between retries) and replies ``None``;
* :class:`Authenticate` → the driver runs :meth:`AlinkSession.auth_flow` / :meth:`IotdaSession.auth_flow`
  unless another caller already renewed the token (``session.token_due()`` is false again), then replies
  ``None``. Drivers serialise authentication with a lock so concurrent callers share one token.

The flow finally *returns* its result (``StopIteration.value``) or raises a
:class:`~iotgate.client.errors.DeviceError`. :mod:`iotgate.client.alink` and :mod:`iotgate.client.iotda`
drive these flows with ``httpx.Client`` (sync) and ``httpx.AsyncClient`` (asyncio); any other HTTP stack
can drive them the same way::

    session = AlinkSession("a1TestPK001", "dev01", secret)
    flow = session.post_properties({"temperature": 21})
    reply = None
    while True:
        try:
            step = flow.send(reply)
        except StopIteration as done:
            message_id = done.value
            break
        reply = my_driver(step)   # send / sleep / authenticate, as described above

Token lifetime: a token is renewed *before* it expires (when less than ``renew_before_s`` is left;
default 10 % of its lifetime, at most 5 minutes) and, should the server still refuse it (Alibaba
20001/20002/20003, Huawei 403 IOTDA.000004), the request is re-authenticated and re-sent once.
Network failures and 502/503/504 answers are retried ``RetryPolicy.retries`` times with exponential
backoff and jitter. A retried upload whose first attempt reached the server before the connection broke
may be stored twice: delivery is at-least-once.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from iotgate.auth.signing import ALINK_SIGN_METHODS, alink_auth_body, iotda_auth_body
from iotgate.client.errors import (
    ALINK_AUTH_ERROR,
    ALINK_COMMON_ERROR,
    IOTDA_AUTH_FAILED,
    IOTDA_INVALID_TOKEN,
    AlinkError,
    DeviceConnectionError,
    DeviceError,
    GatewayBatchError,
    IotdaError,
)

__all__ = [
    "ALINK_BODY_LIMIT",
    "ALINK_DEFAULT_TOKEN_TTL_S",
    "IOTDA_BODY_LIMIT",
    "IOTDA_DEFAULT_TOKEN_TTL_S",
    "MAX_SUB_DEVICES",
    "AlinkSession",
    "Authenticate",
    "DeviceStats",
    "Flow",
    "HttpRequest",
    "HttpResponse",
    "IotdaSession",
    "RetryPolicy",
    "ServiceProperties",
    "Sleep",
    "SubDeviceProperties",
    "TransportFailure",
]

T = TypeVar("T")

ALINK_DEFAULT_TOKEN_TTL_S = 7 * 24 * 3600  # current Alibaba docs (protocols.md §1.1)
IOTDA_DEFAULT_TOKEN_TTL_S = 24 * 3600  # used only if a server omits expires_in
ALINK_BODY_LIMIT = 128 * 1024
IOTDA_BODY_LIMIT = 1024 * 1024
MAX_SUB_DEVICES = 50  # per gateway request (protocols.md §2.6)
RETRY_STATUSES = frozenset({502, 503, 504})
MAX_RENEW_MARGIN_S = 300.0

_encode = msgspec.json.encode
_decode = msgspec.json.decode


# -- the steps a flow yields and the replies it receives --------------------------------------------
@dataclass(frozen=True, slots=True)
class HttpRequest:
    """POST ``path`` (relative to the endpoint) with these headers and body."""

    path: str
    headers: Mapping[str, str]
    body: bytes
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes


@dataclass(frozen=True, slots=True)
class TransportFailure:
    """No response: ``retryable`` is false for failures a retry cannot fix (TLS verification)."""

    message: str
    retryable: bool = True


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Authenticate:
    """Get a fresh token if ``session.token_due()``. ``reason``: initial, renew (before expiry) or
    rejected (the server refused the token)."""

    reason: str


Step = HttpRequest | Sleep | Authenticate
Reply = HttpResponse | TransportFailure | None
Flow = Generator[Step, Reply, T]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Bounded exponential backoff: attempt n (0-based) waits ``backoff_s * 2**n`` capped at
    ``max_backoff_s``, scaled by a random factor in [0.5, 1)."""

    retries: int = 3
    backoff_s: float = 0.2
    max_backoff_s: float = 5.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("retries, backoff_s and max_backoff_s must be ≥ 0")

    def delay(self, attempt: int, rand: float) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + rand / 2)


@dataclass(slots=True)
class DeviceStats:
    """Counters of one device session (read them to monitor a device, or in tests)."""

    requests: int = 0  # HTTP requests sent, including auth and retries
    auths: int = 0  # successful authentications
    renewals: int = 0  # ... of them made because the token was about to expire
    reauths: int = 0  # ... of them made because the server refused the token
    token_rejections: int = 0  # requests the server answered with a token error
    retries: int = 0  # requests repeated after a network failure or 502/503/504


class _TokenRejected(Exception):
    def __init__(self, error: DeviceError) -> None:
        super().__init__(str(error))
        self.error = error


def _snippet(body: bytes) -> str:
    text = body[:200].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def epoch_ms(when: datetime | float | None) -> int | None:
    """Milliseconds since the epoch of a datetime (naive = local time) or a number of ms."""
    if when is None:
        return None
    if isinstance(when, datetime):
        return int(when.timestamp() * 1000)
    if isinstance(when, bool) or not isinstance(when, int | float) or when < 0:
        raise ValueError(f"time must be a datetime or milliseconds since the epoch, not {when!r}")
    return int(when)


def iotda_event_time(when: datetime | float | str | None) -> str | None:
    """Huawei's ``yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`` of a datetime, a number of ms, or a string (kept as is)."""
    if when is None or isinstance(when, str):
        return when
    ms = epoch_ms(when)
    assert ms is not None
    at = datetime.fromtimestamp(ms / 1000, UTC)
    return at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# -- the session: token state and the generic call flow ---------------------------------------------
class _Session:
    def __init__(
        self,
        *,
        retry: RetryPolicy | None,
        renew_before_s: float | None,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        if renew_before_s is not None and renew_before_s < 0:
            raise ValueError("renew_before_s must be ≥ 0")
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.wall_clock = wall_clock
        self.token: str | None = None
        self.expires_at: float | None = None  # in `clock` time
        self.lifetime_s: float | None = None
        self.stats = DeviceStats()
        self._renew_before = renew_before_s
        self._random = random.Random()

    # token lifetime
    def renew_margin(self) -> float:
        if self._renew_before is not None:
            return self._renew_before
        return min(MAX_RENEW_MARGIN_S, 0.1 * (self.lifetime_s or 0.0))

    def token_due(self) -> bool:
        """True if there is no token or it is about to expire."""
        if self.token is None:
            return True
        return self.expires_at is not None and self.clock() >= self.expires_at - self.renew_margin()

    def expires_in(self) -> float | None:
        """Seconds the current token has left (None: no token)."""
        if self.token is None or self.expires_at is None:
            return None
        return max(0.0, self.expires_at - self.clock())

    def forget_token(self) -> None:
        self.token = self.expires_at = None

    # flows
    def auth_flow(self, reason: str = "explicit") -> Flow[str]:
        """Authenticate; on success the session holds the new token, which the flow returns."""
        request = self._auth_request()
        started = self.clock()
        response = yield from self._send(request)
        token, lifetime = self._auth_result(response)
        self.token, self.lifetime_s = token, lifetime
        self.expires_at = started + lifetime
        self.stats.auths += 1
        if reason == "renew":
            self.stats.renewals += 1
        elif reason == "rejected":
            self.stats.reauths += 1
        return token

    def _send(self, request: HttpRequest) -> Flow[HttpResponse]:
        """One request with bounded retries on network failures and 502/503/504."""
        attempt = 0
        while True:
            reply = yield request
            if isinstance(reply, HttpResponse):
                if reply.status not in RETRY_STATUSES or attempt >= self.retry.retries:
                    return reply
            elif isinstance(reply, TransportFailure):
                if not reply.retryable or attempt >= self.retry.retries:
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise DeviceConnectionError(f"{reply.message}{tries}", retryable=reply.retryable)
            else:
                raise TypeError(f"the driver answered an HttpRequest with {reply!r}")
            self.stats.retries += 1
            yield Sleep(self.retry.delay(attempt, self._random.random()))
            attempt += 1

    def _call(self, build: Callable[[str], HttpRequest], interpret: Callable[[HttpResponse], T]) -> Flow[T]:
        """Send with a valid token; renew it before expiry, and re-auth + resend once if refused."""
        reason: str | None = None
        while True:
            if self.token_due():
                yield Authenticate(reason or ("initial" if self.token is None else "renew"))
            token = self.token
            if token is None:
                raise RuntimeError("the driver did not authenticate on an Authenticate step")
            response = yield from self._send(build(token))
            try:
                return interpret(response)
            except _TokenRejected as rejected:
                self.stats.token_rejections += 1
                if self.token == token:
                    self.forget_token()
                if reason == "rejected":  # refused right after a fresh auth: give up
                    raise rejected.error from None
                reason = "rejected"

    # dialect hooks
    def _auth_request(self) -> HttpRequest:
        raise NotImplementedError

    def _auth_result(self, response: HttpResponse) -> tuple[str, float]:
        raise NotImplementedError


# -- Alibaba ("Alink") ------------------------------------------------------------------------------
class AlinkSession(_Session):
    """Alibaba Cloud IoT HTTPS device: ``POST /auth`` then ``POST /topic/<topic>`` with ``password: <token>``.

    ``token_ttl_s`` is how long the server's tokens live (Alibaba: 7 days; the response does not say);
    ``send_timestamp`` adds the optional signed ``timestamp`` (the request is then valid for 15 minutes).
    """

    def __init__(
        self,
        product_key: str,
        device_name: str,
        device_secret: str,
        *,
        sign_method: str = "hmacsha256",
        client_id: str | None = None,
        token_ttl_s: float = ALINK_DEFAULT_TOKEN_TTL_S,
        send_timestamp: bool = False,
        retry: RetryPolicy | None = None,
        renew_before_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(retry=retry, renew_before_s=renew_before_s, clock=clock, wall_clock=wall_clock)
        if sign_method.lower() not in ALINK_SIGN_METHODS:
            raise ValueError(f"sign_method must be one of {', '.join(ALINK_SIGN_METHODS)}, not {sign_method!r}")
        if token_ttl_s <= 0:
            raise ValueError("token_ttl_s must be > 0")
        if client_id is not None and not 0 < len(client_id) <= 64:
            raise ValueError("client_id must be 1-64 characters")
        self.product_key = product_key
        self.device_name = device_name
        self._secret = device_secret
        self.sign_method = sign_method.lower()
        self.client_id = client_id
        self.token_ttl_s = float(token_ttl_s)
        self.send_timestamp = send_timestamp
        self._ids = itertools.count(1)

    def _auth_request(self) -> HttpRequest:
        body = alink_auth_body(
            self.product_key,
            self.device_name,
            self._secret,
            sign_method=self.sign_method,
            client_id=self.client_id,
            timestamp_ms=int(self.wall_clock() * 1000) if self.send_timestamp else None,
        )
        return HttpRequest("/auth", {"Content-Type": "application/json"}, _encode(body))

    @staticmethod
    def _reply(response: HttpResponse) -> dict[str, Any]:
        try:
            doc = _decode(response.body.rstrip(b"\x00"))
        except msgspec.DecodeError:
            doc = None
        if not isinstance(doc, dict) or "code" not in doc:
            raise AlinkError(
                ALINK_COMMON_ERROR,
                f"unexpected response: HTTP {response.status}: {_snippet(response.body)}",
                status=response.status,
            )
        return doc

    @staticmethod
    def _error(doc: dict[str, Any], status: int, default: int) -> AlinkError:
        code = doc.get("code")
        code = code if isinstance(code, int) and not isinstance(code, bool) and code else default
        return AlinkError(code, str(doc.get("message") or "no message"), status=status)

    def _auth_result(self, response: HttpResponse) -> tuple[str, float]:
        doc = self._reply(response)
        info = doc.get("info")
        token = info.get("token") if isinstance(info, dict) else None
        if doc.get("code") == 0 and isinstance(token, str) and token:
            return token, self.token_ttl_s
        if doc.get("code") == 0:  # the real server answers a bad secret with 200 and no token
            raise AlinkError(ALINK_AUTH_ERROR, "auth check error: no token in the response", status=response.status)
        raise self._error(doc, response.status, ALINK_AUTH_ERROR)

    def _publish_result(self, response: HttpResponse) -> int:
        doc = self._reply(response)
        if doc.get("code") == 0:
            info = doc.get("info")
            message_id = info.get("messageId") if isinstance(info, dict) else None
            if isinstance(message_id, str) and message_id.isdigit():
                return int(message_id)
            return message_id if isinstance(message_id, int) and not isinstance(message_id, bool) else 0
        error = self._error(doc, response.status, ALINK_COMMON_ERROR)
        if error.token_invalid:
            raise _TokenRejected(error)
        raise error

    # payload builders
    def next_id(self) -> str:
        """The Alink ``id`` of the next message: a decimal string in 0..4294967295."""
        return str(next(self._ids) % 4294967296)

    def property_payload(self, values: Mapping[str, Any], time: datetime | float | None = None) -> bytes:
        if not values:
            raise ValueError("values must name at least one property")
        ms = epoch_ms(time)
        params = dict(values) if ms is None else {k: {"value": v, "time": ms} for k, v in values.items()}
        doc = {
            "id": self.next_id(),
            "version": "1.0",
            "sys": {"ack": 0},
            "params": params,
            "method": "thing.event.property.post",
        }
        return _encode(doc)

    def event_payload(self, identifier: str, values: Mapping[str, Any], time: datetime | float | None = None) -> bytes:
        if not identifier or "/" in identifier:
            raise ValueError(f"invalid event identifier {identifier!r}")
        params: dict[str, Any] = {"value": dict(values)}
        ms = epoch_ms(time)
        if ms is not None:
            params["time"] = ms
        doc = {
            "id": self.next_id(),
            "version": "1.0",
            "sys": {"ack": 0},
            "params": params,
            "method": f"thing.event.{identifier}.post",
        }
        return _encode(doc)

    # operations
    def publish(self, topic: str, payload: bytes) -> Flow[int]:
        """Upload raw bytes to a topic (``/sys/...`` or a custom ``/{pk}/{dn}/user/...``)."""
        if not topic.startswith("/") or "?" in topic or "#" in topic:
            raise ValueError(f"topic must be a full topic starting with '/', without ? or #: {topic!r}")
        if len(payload) > ALINK_BODY_LIMIT:
            raise ValueError(f"payload of {len(payload)} bytes exceeds the 128 KB limit of Alibaba HTTPS uploads")
        path = "/topic" + topic

        def build(token: str) -> HttpRequest:
            return HttpRequest(path, {"Content-Type": "application/octet-stream", "password": token}, payload)

        return self._call(build, self._publish_result)

    def post_properties(self, values: Mapping[str, Any], time: datetime | float | None = None) -> Flow[int]:
        topic = f"/sys/{self.product_key}/{self.device_name}/thing/event/property/post"
        return self.publish(topic, self.property_payload(values, time))

    def post_event(self, identifier: str, values: Mapping[str, Any], time: datetime | float | None = None) -> Flow[int]:
        topic = f"/sys/{self.product_key}/{self.device_name}/thing/event/{identifier}/post"
        return self.publish(topic, self.event_payload(identifier, values, time))


# -- Huawei IoTDA -----------------------------------------------------------------------------------
@dataclass(slots=True)
class ServiceProperties:
    """Property values of one service (``service_id`` = a module of the thing model; ``"default"`` for
    top-level properties). ``event_time``: datetime, ms since the epoch, a preformatted string, or None
    (server time)."""

    service_id: str
    properties: Mapping[str, Any]
    event_time: datetime | float | str | None = None

    def to_wire(self) -> dict[str, Any]:
        if not self.service_id:
            raise ValueError("service_id must not be empty")
        if not self.properties:
            raise ValueError(f"service {self.service_id}: properties must not be empty")
        out: dict[str, Any] = {"service_id": self.service_id, "properties": dict(self.properties)}
        stamp = iotda_event_time(self.event_time)
        if stamp is not None:
            out["event_time"] = stamp
        return out


@dataclass(slots=True)
class SubDeviceProperties:
    """A sub-device's entry in a gateway batch: its ``device_id`` and its services' values."""

    device_id: str
    services: Sequence[ServiceProperties] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        if not self.services:
            raise ValueError(f"sub-device {self.device_id}: services must not be empty")
        return {"device_id": self.device_id, "services": [s.to_wire() for s in self.services]}


class IotdaSession(_Session):
    """Huawei IoTDA HTTPS device: ``POST /v5/device-auth``, then ``/v5/devices/{id}/sys/...`` with an
    ``access_token`` header. The token's lifetime is the response's ``expires_in``."""

    def __init__(
        self,
        device_id: str,
        secret: str,
        *,
        sign_type: int = 0,
        retry: RetryPolicy | None = None,
        renew_before_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(retry=retry, renew_before_s=renew_before_s, clock=clock, wall_clock=wall_clock)
        if sign_type not in (0, 1) or isinstance(sign_type, bool):
            raise ValueError("sign_type must be 0 (password only) or 1 (also check the timestamp)")
        if not device_id or "/" in device_id:
            raise ValueError(f"invalid device_id {device_id!r}")
        self.device_id = device_id
        self._secret = secret
        self.sign_type = sign_type

    def _auth_request(self) -> HttpRequest:
        when = datetime.fromtimestamp(self.wall_clock(), UTC)
        body = iotda_auth_body(self.device_id, self._secret, sign_type=self.sign_type, when=when)
        return HttpRequest("/v5/device-auth", {"Content-Type": "application/json"}, _encode(body))

    @staticmethod
    def _error(response: HttpResponse) -> IotdaError:
        try:
            doc = _decode(response.body)
        except msgspec.DecodeError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("error_code"), str):
            return IotdaError(doc["error_code"], str(doc.get("error_msg") or "no message"), status=response.status)
        return IotdaError(
            f"HTTP.{response.status}",
            f"unexpected response: HTTP {response.status}: {_snippet(response.body)}",
            status=response.status,
        )

    def _auth_result(self, response: HttpResponse) -> tuple[str, float]:
        if not 200 <= response.status < 300:
            raise self._error(response)
        try:
            doc = _decode(response.body)
        except msgspec.DecodeError:
            doc = None
        token = doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(doc, dict) or not isinstance(token, str) or not token:
            raise IotdaError(
                IOTDA_AUTH_FAILED, f"no access_token in the response: {_snippet(response.body)}", status=response.status
            )
        expires_in = doc.get("expires_in")
        ok = isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0
        return token, float(expires_in) if ok else IOTDA_DEFAULT_TOKEN_TTL_S  # type: ignore[arg-type]

    def _call_result(self, response: HttpResponse) -> None:
        if 200 <= response.status < 300:
            return None
        error = self._error(response)
        if response.status == 403 and error.code == IOTDA_INVALID_TOKEN:
            raise _TokenRejected(error)
        raise error

    # operations
    def request(self, action: str, document: Any) -> Flow[None]:
        """POST a JSON document to ``/v5/devices/{device_id}/sys/{action}``."""
        body = _encode(document)
        if len(body) > IOTDA_BODY_LIMIT:
            raise ValueError(f"request of {len(body)} bytes exceeds the 1 MB limit of IoTDA HTTPS")
        path = f"/v5/devices/{self.device_id}/sys/{action}"

        def build(token: str) -> HttpRequest:
            return HttpRequest(path, {"Content-Type": "application/json", "access_token": token}, body)

        return self._call(build, self._call_result)

    def report_services(self, services: Iterable[ServiceProperties]) -> Flow[None]:
        wire = [s.to_wire() for s in services]
        if not wire:
            raise ValueError("services must not be empty")
        return self.request("properties/report", {"services": wire})

    def report_properties(
        self,
        service_id: str,
        properties: Mapping[str, Any],
        event_time: datetime | float | str | None = None,
    ) -> Flow[None]:
        return self.report_services([ServiceProperties(service_id, properties, event_time)])

    def send_message(
        self,
        content: Any,
        *,
        name: str | None = None,
        message_id: str | None = None,
        object_device_id: str | None = None,
    ) -> Flow[None]:
        doc: dict[str, Any] = {}
        if object_device_id is not None:
            doc["object_device_id"] = object_device_id
        if name is not None:
            doc["name"] = name
        if message_id is not None:
            doc["id"] = message_id
        doc["content"] = content
        return self.request("messages/up", doc)

    def report_sub_properties(
        self,
        devices: Iterable[SubDeviceProperties | Mapping[str, Any]],
        chunk_size: int = MAX_SUB_DEVICES,
    ) -> Flow[list[int]]:
        """Report for sub-devices through this gateway, ``chunk_size`` (≤ 50) entries per request.
        Returns the chunk sizes sent, e.g. ``[50, 50, 20]`` for 120 sub-devices."""
        if not 1 <= chunk_size <= MAX_SUB_DEVICES:
            raise ValueError(f"chunk_size must be 1..{MAX_SUB_DEVICES}")
        entries = [d.to_wire() if isinstance(d, SubDeviceProperties) else dict(d) for d in devices]
        if not entries:
            raise ValueError("devices must not be empty")
        return self._sub_flow(entries, chunk_size)

    def _sub_flow(self, entries: list[dict[str, Any]], chunk_size: int) -> Flow[list[int]]:
        sizes: list[int] = []
        for index, start in enumerate(range(0, len(entries), chunk_size)):
            chunk = entries[start : start + chunk_size]
            try:
                yield from self.request("gateway/sub-devices/properties/report", {"devices": chunk})
            except IotdaError as exc:
                raise GatewayBatchError(exc, sum(sizes), index) from exc
            sizes.append(len(chunk))
        return sizes
