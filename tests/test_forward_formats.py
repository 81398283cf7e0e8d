"""Payload formats field by field: Alibaba's forwarded property message (protocols.md §1.8), Huawei's
property-report notification (§2.9), iotgate's own JSON, and the examples in docs/forwarding.md."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from iotgate.forward.formats import (
    RAW,
    alibaba_time,
    huawei_time,
    iso_ms,
    render_alibaba,
    render_huawei,
    render_iotgate,
)
from iotgate.forward.message import ForwardMessage

DOCS = Path(__file__).resolve().parent.parent / "docs" / "forwarding.md"

# protocols.md §1.8 "Forwarded property message"
ALIBABA_PROPERTY = {
    "deviceType": "CustomCategory",
    "iotId": "4z819VQHk6VSLmmBJfrf00107e****",
    "requestId": "2",
    "checkFailedData": {},
    "productKey": "al12345****",
    "gmtCreate": 1510799670074,
    "deviceName": "deviceName1234",
    "items": {"Power": {"value": "on", "time": 1510799670074}},
}
# protocols.md §2.9 "Property-report notification"
HUAWEI_PROPERTY = {
    "resource": "device.property",
    "event": "report",
    "event_time": "20151212T121212Z",
    "event_time_ms": "2015-12-12T12:12:12.000Z",
    "request_id": "...",
    "notify_data": {
        "header": {
            "app_id": "...",
            "device_id": "...",
            "node_id": "...",
            "product_id": "...",
            "gateway_id": "...",
            "tags": [{"tag_key": "k", "tag_value": "v"}],
        },
        "body": {"services": [{"service_id": "...", "properties": {}, "event_time": "20151212T121212Z"}]},
    },
}
T_2015 = int(datetime(2015, 12, 12, 12, 12, 12, tzinfo=UTC).timestamp() * 1000)


def message(**kw: Any) -> ForwardMessage:
    base: dict[str, Any] = {
        "source": "property",
        "message_id": 382651170964897792,
        "device_id": 9,
        "product_key": "al12345****",
        "device_name": "deviceName1234",
        "ts": 1510799670074,
        "received_at": 1510799670074,
        "topic": "/sys/al12345****/deviceName1234/thing/event/property/post",
        "payload": b'{"id":"2","version":"1.0","params":{"Power":"on"}}',
        "values": {"Power": "on"},
    }
    base.update(kw)
    return ForwardMessage(**base)


def decode(rendered: tuple[bytes, str]) -> Any:
    body, ctype = rendered
    assert ctype == "application/json"
    return json.loads(body)


def shape(doc: Any) -> Any:
    """Keys (recursively) and value types of a document, to compare structures."""
    if isinstance(doc, dict):
        return {k: shape(v) for k, v in doc.items()}
    if isinstance(doc, list):
        return [shape(doc[0])] if doc else []
    return type(doc).__name__


def test_alibaba_property_matches_the_documented_message() -> None:
    doc = decode(render_alibaba(message(), 1, "r"))
    assert list(doc) == list(ALIBABA_PROPERTY)  # same fields, same order
    for key, value in ALIBABA_PROPERTY.items():
        if key == "iotId":  # the platform's own device ID: {productKey}_{deviceName} here
            assert doc[key] == "al12345****_deviceName1234"
        else:
            assert doc[key] == value, key


def test_alibaba_request_id_falls_back_to_the_message_id() -> None:
    doc = decode(render_alibaba(message(payload=b"", topic="/v5/devices/x/sys/properties/report"), 1, "r"))
    assert doc["requestId"] == "382651170964897792"
    doc = decode(render_alibaba(message(payload=b'{"id": 17, "params": {}}'), 1, "r"))
    assert doc["requestId"] == "17"
    doc = decode(render_alibaba(message(payload=b"not json"), 1, "r"))
    assert doc["requestId"] == "382651170964897792"


def test_alibaba_event_and_status_and_lifecycle() -> None:
    m = message(
        source="event",
        identifier="BrokenInfo",
        values={"Power": "on", "WF": "2"},
        topic="/sys/al12345****/deviceName1234/thing/event/BrokenInfo/post",
    )
    m.event_name, m.event_type = "Broken rate", "alert"
    doc = decode(render_alibaba(m, 1, "r"))
    assert doc == {
        "identifier": "BrokenInfo",
        "name": "Broken rate",
        "type": "alert",
        "iotId": "al12345****_deviceName1234",
        "requestId": "2",
        "productKey": "al12345****",
        "deviceName": "deviceName1234",
        "gmtCreate": 1510799670074,
        "value": {"Power": "on", "WF": "2"},
        "checkFailedData": {},
        "time": 1510799670074,
    }
    online = decode(
        render_alibaba(message(source="lifecycle", lifecycle="online", ts=T_2015, last_seen=T_2015 - 10), 1, "r")
    )
    assert online == {
        "status": "online",
        "iotId": "al12345****_deviceName1234",
        "productKey": "al12345****",
        "deviceName": "deviceName1234",
        "time": "2015-12-12 12:12:12.000",
        "utcTime": "2015-12-12T12:12:12.000Z",
        "lastTime": "2015-12-12 12:12:11.990",
        "utcLastTime": "2015-12-12T12:12:11.990Z",
        "clientIp": "",
    }
    for change, action in (
        ("created", "create"),
        ("deleted", "delete"),
        ("enabled", "enable"),
        ("disabled", "disable"),
    ):
        doc = decode(render_alibaba(message(source="lifecycle", lifecycle=change, ts=5), 1, "r"))
        assert doc == {
            "action": action,
            "iotId": "al12345****_deviceName1234",
            "productKey": "al12345****",
            "deviceName": "deviceName1234",
            "messageCreateTime": 5,
        }


def test_alibaba_custom_topic_is_forwarded_unchanged() -> None:
    raw = b"\x00\x01binary"
    body, ctype = render_alibaba(message(source="message", kind="message", payload=raw, topic="/pk/dn/user/x"), 1, "r")
    assert body == raw and ctype == RAW


def test_huawei_property_matches_the_documented_notification() -> None:
    m = message(
        product_key="a1B2c3D4e5F",
        device_name="meter-7",
        ts=T_2015,
        received_at=T_2015,
        values={"Height": 124, "Speed": 23.24, "battery:level": 80},
        gateway=("g1G2g3G4g5G", "gw-1"),
    )
    doc = decode(render_huawei(m, 1, "r"))
    documented = shape(HUAWEI_PROPERTY)
    documented["notify_data"]["header"]["tags"] = []
    documented["notify_data"]["body"]["services"][0]["properties"] = {}
    got = shape(doc)
    for service in got["notify_data"]["body"]["services"]:
        service["properties"] = {}
    got["notify_data"]["body"]["services"] = got["notify_data"]["body"]["services"][:1]
    assert got == documented  # every documented field, nothing else, same types
    assert doc["resource"] == "device.property" and doc["event"] == "report"
    assert doc["event_time"] == "20151212T121212Z"
    assert doc["event_time_ms"] == "2015-12-12T12:12:12.000Z"
    assert doc["request_id"] == "2"
    assert doc["notify_data"]["header"] == {
        "app_id": "iotgate",
        "device_id": "a1B2c3D4e5F_meter-7",
        "node_id": "meter-7",
        "product_id": "a1B2c3D4e5F",
        "gateway_id": "g1G2g3G4g5G_gw-1",
        "tags": [],
    }
    assert doc["notify_data"]["body"]["services"] == [
        {"service_id": "default", "properties": {"Height": 124, "Speed": 23.24}, "event_time": "20151212T121212Z"},
        {"service_id": "battery", "properties": {"level": 80}, "event_time": "20151212T121212Z"},
    ]


def test_huawei_other_resources() -> None:
    direct = decode(render_huawei(message(source="message", kind="message", payload=b'{"a": 1}', topic="/t"), 1, "r"))
    assert direct["resource"] == "device.message" and direct["event"] == "report"
    assert direct["notify_data"]["body"] == {"topic": "/t", "content": {"a": 1}}
    assert direct["notify_data"]["header"]["gateway_id"] == direct["notify_data"]["header"]["device_id"]
    binary = decode(render_huawei(message(source="message", payload=b"\xff\xfe", topic="/t"), 1, "r"))
    assert binary["notify_data"]["body"] == {"topic": "/t", "content": "//4=", "content_encoding": "base64"}
    event = decode(render_huawei(message(source="event", identifier="motor:overheat", values={"c": 90}), 1, "r"))
    assert event["resource"] == "device.event"
    assert event["notify_data"]["body"]["services"] == [
        {"service_id": "motor", "event_type": "overheat", "event_time": huawei_time(1510799670074), "paras": {"c": 90}}
    ]
    off = decode(render_huawei(message(source="lifecycle", lifecycle="offline", ts=T_2015, last_seen=T_2015), 1, "r"))
    assert (off["resource"], off["event"]) == ("device.status", "update")
    assert off["notify_data"]["body"] == {"status": "OFFLINE", "last_online_time": "20151212T121212Z"}
    made = decode(render_huawei(message(source="lifecycle", lifecycle="created"), 1, "r"))
    assert (made["resource"], made["event"]) == ("device", "create")
    frozen = decode(render_huawei(message(source="lifecycle", lifecycle="disabled"), 1, "r"))
    assert frozen["notify_data"]["body"]["status"] == "FROZEN"


def test_iotgate_format() -> None:
    doc = decode(render_iotgate(message(values={"temperature": 41}), 3, "hot"))
    assert doc == {
        "messageId": "382651170964897792",
        "source": "property",
        "productKey": "al12345****",
        "deviceName": "deviceName1234",
        "deviceId": "al12345****_deviceName1234",
        "time": 1510799670074,
        "receivedAt": 1510799670074,
        "topic": "/sys/al12345****/deviceName1234/thing/event/property/post",
        "values": {"temperature": 41},
        "rule": {"id": 3, "name": "hot"},
    }
    text = decode(render_iotgate(message(source="message", kind="message", payload=b"hi"), 3, "r"))
    assert (text["payload"], text["payloadEncoding"]) == ("hi", "text")
    js = decode(render_iotgate(message(source="message", kind="ota", payload=b'{"v": 1}'), 3, "r"))
    assert (js["payload"], js["payloadEncoding"], js["kind"]) == ({"v": 1}, "json", "ota")
    b64 = decode(render_iotgate(message(source="message", payload=b"\xff"), 3, "r"))
    assert (b64["payload"], b64["payloadEncoding"]) == ("/w==", "base64")
    sub = decode(render_iotgate(message(gateway=("GW", "gw-1")), 3, "r"))
    assert sub["gateway"] == {"productKey": "GW", "deviceName": "gw-1", "deviceId": "GW_gw-1"}


def test_time_formats() -> None:
    assert huawei_time(T_2015 + 999) == "20151212T121212Z"
    assert iso_ms(T_2015 + 7) == "2015-12-12T12:12:12.007Z"
    assert alibaba_time(T_2015 + 70) == "2015-12-12 12:12:12.070"


# -- docs/forwarding.md: every rendered example is what the code renders ----------------------------
def doc_examples() -> list[tuple[str, dict[str, Any], Any]]:
    """(title, message arguments, documented body) from `<!-- example: {...} -->` + ```json blocks."""
    text = DOCS.read_text(encoding="utf-8")
    found = []
    for m in re.finditer(r"<!-- example (\w+) (\{.*?\}) -->\s*```json\n(.*?)```", text, re.S):
        fmt, args, body = m.group(1), json.loads(m.group(2)), json.loads(m.group(3))
        found.append((fmt, args, body))
    return found


@pytest.mark.parametrize("example", range(len(doc_examples())))
def test_documented_examples_are_rendered_exactly(example: int) -> None:
    fmt, args, body = doc_examples()[example]
    rule = args.pop("rule", {"id": 1, "name": "example"})
    if "payload" in args:
        args["payload"] = args["payload"].encode()
    gateway = args.pop("gateway", None)
    event_meta = args.pop("event", None)
    m = ForwardMessage(**args, gateway=tuple(gateway) if gateway else None)
    if event_meta:
        m.event_name, m.event_type = event_meta
    render = {"iotgate": render_iotgate, "alibaba": render_alibaba, "huawei": render_huawei}[fmt]
    assert decode(render(m, rule["id"], rule["name"])) == body


def test_docs_have_examples_of_every_format_and_source() -> None:
    seen = {(fmt, args["source"]) for fmt, args, _ in doc_examples()}
    for fmt in ("iotgate", "alibaba", "huawei"):
        for source in ("property", "event", "lifecycle"):
            assert (fmt, source) in seen, (fmt, source)


@pytest.mark.parametrize("payload", [b'{"id":"\xff","params":{}}', b"[" * 100_000, b"\xff\xfe raw"])
def test_payload_that_is_not_valid_json_is_forwarded_as_text_or_base64(payload: bytes) -> None:
    msg = ForwardMessage(
        source="message",
        message_id=42,
        device_id=1,
        product_key="a1TestPK001",
        device_name="dev01",
        ts=1,
        received_at=1,
        topic="/sys/a1TestPK001/dev01/thing/model/up_raw",
        payload=payload,
    )
    assert msg.request_id == "42"
    value, encoding = msg.payload_value()
    assert encoding in ("text", "base64") and isinstance(value, str)
