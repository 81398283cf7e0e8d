"""Target options (one msgspec Struct per target type) and topic/subject/key templates.

A target document is `{"type": "webhook" | "mqtt" | "nats" | "amqp" | "redis", ...options}`;
options are camelCase, unknown ones are an error. docs/forwarding.md lists every option.
"""

from __future__ import annotations

import string
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from iotgate.forward.rows import OutboxRow

PLACEHOLDERS = ("productKey", "deviceName", "deviceId", "source", "identifier", "ruleId")
MASK = "***"


class Template:
    """`iotgate/{productKey}/{deviceName}`: literal text and placeholders, checked up front."""

    def __init__(self, text: str, what: str) -> None:
        if not text:
            raise ValueError(f"{what} must not be empty")
        parts: list[tuple[str, str | None]] = []
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ValueError(f"{what} {text!r}: {exc} (write {{{{ and }}}} for literal braces)") from None
        for literal, name, spec, conversion in parsed:
            if name is not None and (name not in PLACEHOLDERS or spec or conversion):
                raise ValueError(f"{what} {text!r}: unknown placeholder {{{name}}}; use {', '.join(PLACEHOLDERS)}")
            parts.append((literal, name))
        self.text = text
        self.parts = parts
        self.names = {n for _, n in parts if n}

    def render(self, row: OutboxRow, rule_id: int, clean: Any = None) -> str:
        out: list[str] = []
        for literal, name in self.parts:
            out.append(literal)
            if name:
                value = _placeholder(row, name, rule_id)
                out.append(clean(value) if clean else value)
        return "".join(out)


def _placeholder(row: OutboxRow, name: str, rule_id: int) -> str:
    if name == "productKey":
        return row.product_key
    if name == "deviceName":
        return row.device_name
    if name == "deviceId":
        return f"{row.product_key}_{row.device_name}"
    if name == "source":
        return row.source
    if name == "identifier":
        return row.identifier or row.source
    return str(rule_id)


def _url(url: str, schemes: tuple[str, ...], what: str = "url") -> None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ValueError(f"{what} {mask_url(url)!r} is not a valid URL: {exc}") from None
    if parts.scheme not in schemes:
        raise ValueError(f"{what} must start with {' or '.join(s + '://' for s in schemes)}")
    if not parts.hostname:
        raise ValueError(f"{what} {mask_url(url)!r} has no host")


def _positive(value: float, what: str, high: float) -> None:
    if not 0 < value <= high:
        raise ValueError(f"{what} must be > 0 and ≤ {high:g}")


class _Spec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, rename="camel", tag_field="type"):
    timeout_s: float = 10.0

    def _check_timeout(self) -> None:
        _positive(self.timeout_s, "timeoutS", 300)


class WebhookTarget(_Spec, tag="webhook"):
    url: str
    secret: str = ""  # HMAC-SHA256 key for the signature header
    signature_header: str = "X-Iotgate-Signature"
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    verify_tls: bool = True
    ca_file: str = ""
    max_connections: int = 8  # parallel requests (connections) to the endpoint
    batch: int = 1  # messages per request; > 1: the body is a JSON array of messages

    def __post_init__(self) -> None:
        _url(self.url, ("http", "https"))
        self._check_timeout()
        if not 1 <= self.max_connections <= 256:
            raise ValueError("maxConnections must be 1..256")
        if not 1 <= self.batch <= 1000:
            raise ValueError("batch must be 1..1000")
        if not self.signature_header.strip() or any(c in self.signature_header for c in ": \r\n"):
            raise ValueError("signatureHeader must be a header name")
        for name, value in self.headers.items():
            if not name or any(c in name for c in ": \r\n") or any(c in value for c in "\r\n"):
                raise ValueError(f"headers: {name!r} is not a valid header")


class MqttTarget(_Spec, tag="mqtt"):
    url: str
    topic: str
    qos: int = 1
    retain: bool = False
    client_id: str = ""
    username: str = ""
    password: str = ""
    protocol: str = "5"  # "5" or "3.1.1"
    user_properties: bool = True  # MQTT 5: the names as user properties (about doubles the CPU per publish)
    verify_tls: bool = True
    ca_file: str = ""

    def __post_init__(self) -> None:
        _url(self.url, ("mqtt", "mqtts"))
        self._check_timeout()
        Template(self.topic, "topic")
        if any(c in self.topic for c in "+#"):
            raise ValueError("topic must not contain the wildcards + or #")
        if self.qos not in (0, 1, 2):
            raise ValueError("qos must be 0, 1 or 2")
        if self.protocol not in ("5", "3.1.1"):
            raise ValueError('protocol must be "5" or "3.1.1"')


class NatsTarget(_Spec, tag="nats"):
    url: str
    subject: str
    stream: str = ""  # expected stream; with createStream, created when missing
    create_stream: bool = False
    stream_subjects: list[str] = msgspec.field(default_factory=list)  # default: from the subject template
    user: str = ""
    password: str = ""
    token: str = ""
    verify_tls: bool = True
    ca_file: str = ""

    def __post_init__(self) -> None:
        _url(self.url, ("nats", "tls"))
        self._check_timeout()
        Template(self.subject, "subject")
        if any(c in self.subject for c in " *>\t") or ".." in self.subject or self.subject.startswith("."):
            raise ValueError("subject must be a NATS subject without wildcards or empty tokens")
        if self.create_stream and not self.stream:
            raise ValueError("createStream needs stream (the stream's name)")
        if self.stream and any(c in self.stream for c in " .*>\t/\\"):
            raise ValueError("stream must be a name without spaces, dots, * or >")


class AmqpTarget(_Spec, tag="amqp"):
    url: str
    routing_key: str
    exchange: str = ""  # "" is the default exchange (routing key = queue name)
    exchange_type: str = "topic"
    declare_exchange: bool = False
    persistent: bool = True
    mandatory: bool = True  # an unroutable message is a failed delivery, not silently dropped
    verify_tls: bool = True
    ca_file: str = ""

    def __post_init__(self) -> None:
        _url(self.url, ("amqp", "amqps"))
        self._check_timeout()
        Template(self.routing_key, "routingKey")
        if self.exchange_type not in ("direct", "fanout", "topic", "headers"):
            raise ValueError("exchangeType must be direct, fanout, topic or headers")
        if self.declare_exchange and not self.exchange:
            raise ValueError("declareExchange needs exchange (the default exchange cannot be declared)")


class RedisTarget(_Spec, tag="redis"):
    url: str
    stream: str  # key template
    maxlen: int = 100_000  # trim the stream to about this many entries; 0 keeps everything
    approximate: bool = True  # MAXLEN ~ (cheap trimming)

    def __post_init__(self) -> None:
        _url(self.url, ("redis", "rediss", "unix"))
        self._check_timeout()
        Template(self.stream, "stream")
        if self.maxlen < 0:
            raise ValueError("maxlen must be ≥ 0")


TargetSpec = WebhookTarget | MqttTarget | NatsTarget | AmqpTarget | RedisTarget
TYPES = ("webhook", "mqtt", "nats", "amqp", "redis")
SECRET_FIELDS = ("secret", "password", "token")


def parse_target(doc: Any, where: str) -> TargetSpec:
    """A target document -> its spec; ValueError naming the option at fault."""
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must be an object with a type")
    kind = doc.get("type")
    if kind not in TYPES:
        raise ValueError(f"{where}.type must be one of {', '.join(TYPES)}")
    body = {k: v for k, v in doc.items() if k != "id"}
    try:
        return msgspec.convert(body, TargetSpec)
    except msgspec.ValidationError as exc:
        text = str(exc).replace("`$.", f"`{where}.").replace("`$`", f"`{where}`")
        raise ValueError(text if f"`{where}" in text else f"{where}: {text}") from None


def spec_to_dict(spec: TargetSpec) -> dict[str, Any]:
    return dict(msgspec.to_builtins(spec))


# -- secrets -----------------------------------------------------------------------------------------
def url_password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:{MASK}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def masked(doc: dict[str, Any]) -> dict[str, Any]:
    """A target document fit to show: secrets replaced by ***."""
    out = dict(doc)
    for name in SECRET_FIELDS:
        if out.get(name):
            out[name] = MASK
    if isinstance(out.get("url"), str):
        out["url"] = mask_url(out["url"])
    return out


def unmask(new: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """A target sent back with *** in place of secrets keeps the stored secrets."""
    out = dict(new)
    for name in SECRET_FIELDS:
        if out.get(name) == MASK:
            out[name] = old.get(name, "")
    url, old_url = out.get("url"), old.get("url")
    if isinstance(url, str) and isinstance(old_url, str) and url_password(url) == MASK:
        old_password = url_password(old_url) or ""
        parts = urlsplit(url)
        netloc = parts.netloc.replace(f":{MASK}@", f":{old_password}@", 1)
        out["url"] = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return out
