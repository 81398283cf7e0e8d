"""A message on its way to the rules: one committed record (or lifecycle change), with names.

`ForwardMessage` is what a rule's `where` filter reads and what the payload formats render.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from typing import Any

import msgspec

SOURCES = ("property", "event", "message", "lifecycle")
LIFECYCLE_EVENTS = ("created", "deleted", "enabled", "disabled", "online", "offline")
KIND_SOURCE = {
    "property": "property",
    "event": "event",
    "message": "message",
    "deviceinfo": "message",
    "ota": "message",
}

_MISSING = object()


class _RequestId(msgspec.Struct):
    id: str | int | None = None


_request_id = msgspec.json.Decoder(_RequestId)


class ForwardMessage:
    __slots__ = (
        "_json",
        "_request_id",
        "device_id",
        "device_name",
        "event_name",
        "event_type",
        "gateway",
        "identifier",
        "kind",
        "last_seen",
        "lifecycle",
        "message_id",
        "online",
        "payload",
        "product_key",
        "received_at",
        "source",
        "topic",
        "ts",
        "values",
    )

    def __init__(
        self,
        *,
        source: str,
        message_id: int,
        device_id: int,
        product_key: str,
        device_name: str,
        ts: int,
        received_at: int,
        kind: str = "",
        topic: str = "",
        identifier: str = "",
        values: dict[str, Any] | None = None,
        payload: bytes = b"",
        lifecycle: str = "",
        last_seen: int | None = None,
        gateway: tuple[str, str] | None = None,
        online: bool = False,
    ) -> None:
        self.source = source
        self.message_id = message_id
        self.device_id = device_id
        self.product_key = product_key
        self.device_name = device_name
        self.ts = ts
        self.received_at = received_at
        self.kind = kind or source
        self.topic = topic
        self.identifier = identifier
        self.values = values
        self.payload = payload
        self.lifecycle = lifecycle
        self.last_seen = last_seen
        self.gateway = gateway  # (productKey, deviceName) of the gateway of a sub-device
        self.online = online
        self.event_name = ""
        self.event_type = ""
        self._json: Any = _MISSING
        self._request_id: str | None = None

    @property
    def iot_id(self) -> str:
        """The device's platform-wide ID: `{productKey}_{deviceName}` (Huawei's device_id)."""
        return f"{self.product_key}_{self.device_name}"

    @property
    def gateway_iot_id(self) -> str | None:
        return f"{self.gateway[0]}_{self.gateway[1]}" if self.gateway else None

    @property
    def request_id(self) -> str:
        """The device's own request ID (Alink `id`), else the message ID."""
        if self._request_id is None:
            rid: str | int | None = None
            if self.payload and self.topic.startswith("/sys/"):
                try:
                    rid = _request_id.decode(self.payload).id
                except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                    rid = None
            self._request_id = str(rid) if rid is not None and rid != "" else str(self.message_id)
        return self._request_id

    @property
    def payload_json(self) -> Any:
        """The payload as JSON, or _MISSING when it is not JSON."""
        if self._json is _MISSING:
            with contextlib.suppress(msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                self._json = msgspec.json.decode(self.payload) if self.payload else _MISSING
        return self._json

    def payload_value(self) -> tuple[Any, str]:
        """The payload for a JSON document: (value, encoding json | text | base64)."""
        doc = self.payload_json
        if doc is not _MISSING:
            return doc, "json"
        try:
            return self.payload.decode("utf-8"), "text"
        except UnicodeDecodeError:
            return base64.b64encode(self.payload).decode(), "base64"

    def payload_text(self) -> str | None:
        try:
            return self.payload.decode("utf-8")
        except UnicodeDecodeError:
            return None


# -- fields a `where` filter can read -------------------------------------------------------------------
Getter = Callable[[ForwardMessage], Any]

COMMON_FIELDS: dict[str, Getter] = {
    "productKey": lambda m: m.product_key,
    "deviceName": lambda m: m.device_name,
    "deviceId": lambda m: m.iot_id,
    "source": lambda m: m.source,
    "messageId": lambda m: m.message_id,
    "time": lambda m: m.ts,
    "receivedAt": lambda m: m.received_at,
}
SOURCE_FIELDS: dict[str, dict[str, Getter]] = {
    "property": {"topic": lambda m: m.topic},
    "event": {"topic": lambda m: m.topic, "identifier": lambda m: m.identifier},
    "message": {
        "topic": lambda m: m.topic,
        "kind": lambda m: m.kind,
        "payload": lambda m: (lambda d: m.payload_text() if d is _MISSING else d)(m.payload_json),
    },
    "lifecycle": {"event": lambda m: m.lifecycle, "lastSeen": lambda m: m.last_seen},
}
VALUE_SOURCES = ("property", "event")  # bare names are reported values


def field_names(source: str) -> list[str]:
    names = [*COMMON_FIELDS, *SOURCE_FIELDS[source]]
    if source in VALUE_SOURCES:
        names.append("values")
    return names


class UnknownField(ValueError):
    pass


def _walk(value: Any, rest: list[str]) -> Any:
    for key in rest:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit():
            i = int(key)
            value = value[i] if i < len(value) else None
        else:
            return None
    return value


def resolver(source: str) -> Callable[[list[str]], Getter]:
    """Field path -> getter for messages of `source`; UnknownField for a name that cannot exist."""
    fields = {**COMMON_FIELDS, **SOURCE_FIELDS[source]}

    def resolve(path: list[str]) -> Getter:
        head, rest = path[0], path[1:]
        if head in fields:
            get = fields[head]
            if not rest:
                return get
            if head != "payload":
                raise UnknownField(f"{'.'.join(path)}: {head} has no members")
            return lambda m: _walk(get(m), rest)
        if source in VALUE_SOURCES:
            if head == "values":
                if not rest:
                    return lambda m: m.values
                return lambda m: _walk(m.values, rest)
            key = head
            if not rest:
                return lambda m: m.values.get(key) if m.values else None
            return lambda m: _walk(m.values.get(key) if m.values else None, rest)
        raise UnknownField(f"unknown field {head!r} for source {source}; fields: {', '.join(field_names(source))}")

    return resolve
