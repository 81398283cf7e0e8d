"""Payload formats of forwarded messages: iotgate's own JSON, Alibaba's server-side subscription
JSON (protocols.md §1.8) and Huawei IoTDA's push notification JSON (protocols.md §2.9).

Each renderer returns (body, content type). Examples of every format are in docs/forwarding.md.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from iotgate.forward.message import ForwardMessage

FORMATS = ("iotgate", "alibaba", "huawei")
JSON = "application/json"
RAW = "application/octet-stream"
DEFAULT_SERVICE = "default"  # Huawei service of properties outside any module
HUAWEI_APP_ID = "iotgate"
_encode = msgspec.json.encode


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def huawei_time(ms: int) -> str:
    """`yyyyMMdd'T'HHmmss'Z'` (IoTDA's event_time)."""
    return _utc(ms).strftime("%Y%m%dT%H%M%SZ")


def iso_ms(ms: int) -> str:
    """`yyyy-MM-dd'T'HH:mm:ss.SSS'Z'`."""
    return _utc(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def alibaba_time(ms: int) -> str:
    """`yyyy-MM-dd HH:mm:ss.SSS` (Alibaba's status `time`; UTC here, see docs/forwarding.md)."""
    return _utc(ms).strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def split_identifier(full: str) -> tuple[str, str]:
    """`battery:level` -> (battery, level); `temperature` -> (default, temperature)."""
    module, sep, ident = full.partition(":")
    return (module, ident) if sep else (DEFAULT_SERVICE, full)


# -- iotgate -----------------------------------------------------------------------------------------
def render_iotgate(m: ForwardMessage, rule_id: int, rule_name: str) -> tuple[bytes, str]:
    doc: dict[str, Any] = {
        "messageId": str(m.message_id),
        "source": m.source,
        "productKey": m.product_key,
        "deviceName": m.device_name,
        "deviceId": m.iot_id,
        "time": m.ts,
        "receivedAt": m.received_at,
    }
    if m.gateway:
        doc["gateway"] = {"productKey": m.gateway[0], "deviceName": m.gateway[1], "deviceId": m.gateway_iot_id}
    if m.source == "property":
        doc["topic"] = m.topic
        doc["values"] = m.values or {}
    elif m.source == "event":
        doc["topic"] = m.topic
        doc["identifier"] = m.identifier
        doc["values"] = m.values or {}
    elif m.source == "message":
        value, encoding = m.payload_value()
        doc["topic"] = m.topic
        doc["kind"] = m.kind
        doc["payload"] = value
        doc["payloadEncoding"] = encoding
    else:
        doc["event"] = m.lifecycle
        if m.lifecycle in ("online", "offline"):
            doc["lastSeen"] = m.last_seen
    doc["rule"] = {"id": rule_id, "name": rule_name}
    return _encode(doc), JSON


# -- Alibaba ----------------------------------------------------------------------------------------
ALIBABA_ACTIONS = {"created": "create", "deleted": "delete", "enabled": "enable", "disabled": "disable"}


def render_alibaba(m: ForwardMessage, rule_id: int, rule_name: str) -> tuple[bytes, str]:
    if m.source == "property":
        items = {k: {"value": v, "time": m.ts} for k, v in (m.values or {}).items()}
        return _encode(
            {
                "deviceType": "CustomCategory",
                "iotId": m.iot_id,
                "requestId": m.request_id,
                "checkFailedData": {},
                "productKey": m.product_key,
                "gmtCreate": m.received_at,
                "deviceName": m.device_name,
                "items": items,
            }
        ), JSON
    if m.source == "event":
        return _encode(
            {
                "identifier": m.identifier,
                "name": m.event_name or m.identifier,
                "type": m.event_type or "info",
                "iotId": m.iot_id,
                "requestId": m.request_id,
                "productKey": m.product_key,
                "deviceName": m.device_name,
                "gmtCreate": m.received_at,
                "value": m.values or {},
                "checkFailedData": {},
                "time": m.ts,
            }
        ), JSON
    if m.source == "message":  # custom topics are forwarded unchanged; names travel as metadata
        return m.payload, RAW
    if m.lifecycle in ("online", "offline"):
        last = m.last_seen if m.last_seen is not None else m.ts
        return _encode(
            {
                "status": m.lifecycle,
                "iotId": m.iot_id,
                "productKey": m.product_key,
                "deviceName": m.device_name,
                "time": alibaba_time(m.ts),
                "utcTime": iso_ms(m.ts),
                "lastTime": alibaba_time(last),
                "utcLastTime": iso_ms(last),
                "clientIp": "",
            }
        ), JSON
    return _encode(
        {
            "action": ALIBABA_ACTIONS[m.lifecycle],
            "iotId": m.iot_id,
            "productKey": m.product_key,
            "deviceName": m.device_name,
            "messageCreateTime": m.ts,
        }
    ), JSON


# -- Huawei ------------------------------------------------------------------------------------------
def _huawei(m: ForwardMessage, resource: str, event: str, body: dict[str, Any]) -> tuple[bytes, str]:
    return _encode(
        {
            "resource": resource,
            "event": event,
            "event_time": huawei_time(m.received_at),
            "event_time_ms": iso_ms(m.received_at),
            "request_id": m.request_id,
            "notify_data": {
                "header": {
                    "app_id": HUAWEI_APP_ID,
                    "device_id": m.iot_id,
                    "node_id": m.device_name,
                    "product_id": m.product_key,
                    "gateway_id": m.gateway_iot_id or m.iot_id,
                    "tags": [],
                },
                "body": body,
            },
        }
    ), JSON


def render_huawei(m: ForwardMessage, rule_id: int, rule_name: str) -> tuple[bytes, str]:
    if m.source == "property":
        services: dict[str, dict[str, Any]] = {}
        for full, value in (m.values or {}).items():
            service, name = split_identifier(full)
            services.setdefault(service, {})[name] = value
        when = huawei_time(m.ts)
        return _huawei(
            m,
            "device.property",
            "report",
            {
                "services": [
                    {"service_id": sid, "properties": props, "event_time": when} for sid, props in services.items()
                ]
            },
        )
    if m.source == "event":
        service, name = split_identifier(m.identifier)
        return _huawei(
            m,
            "device.event",
            "report",
            {
                "services": [
                    {
                        "service_id": service,
                        "event_type": name,
                        "event_time": huawei_time(m.ts),
                        "paras": m.values or {},
                    }
                ]
            },
        )
    if m.source == "message":
        value, encoding = m.payload_value()
        body: dict[str, Any] = {"topic": m.topic, "content": value}
        if encoding == "base64":
            body["content_encoding"] = "base64"
        return _huawei(m, "device.message", "report", body)
    if m.lifecycle in ("online", "offline"):
        last = m.last_seen if m.last_seen is not None else m.ts
        presence = {"status": m.lifecycle.upper(), "last_online_time": huawei_time(last)}
        return _huawei(m, "device.status", "update", presence)
    device = {"device_id": m.iot_id, "node_id": m.device_name, "product_id": m.product_key}
    if m.lifecycle == "created":
        return _huawei(m, "device", "create", device)
    if m.lifecycle == "deleted":
        return _huawei(m, "device", "delete", device)
    status = "FROZEN" if m.lifecycle == "disabled" else ("ONLINE" if m.online else "OFFLINE")
    return _huawei(m, "device.status", "update", {**device, "status": status})


Renderer = Callable[[ForwardMessage, int, str], tuple[bytes, str]]
RENDERERS: dict[str, Renderer] = {"iotgate": render_iotgate, "alibaba": render_alibaba, "huawei": render_huawei}
