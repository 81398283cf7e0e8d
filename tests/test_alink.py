"""Alibaba-compatible device access (`/auth`, `/topic/...`) through the real server over TLS:
protocols.md §1.2-§1.6 and the wire bytes of Link SDK C 4.1.0 (§1.5)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth import tokens
from iotgate.auth.signing import alink_auth_body, alink_sign, iotda_auth_body
from test_listener_support import (
    Wire,
    alink_json,
    property_topic,
    sdk_auth_bytes,
    sdk_post_bytes,
)

MODEL: dict[str, Any] = {
    "properties": [
        *SEED_MODEL["properties"],
        {
            "identifier": "voltage",
            "name": "Voltage",
            "accessMode": "r",
            "dataType": {"type": "float", "specs": {"min": 0, "max": 400}},
        },
    ],
    "events": [
        {
            "identifier": "overheat",
            "name": "Overheat",
            "type": "alert",
            "outputData": [
                {"identifier": "temp", "name": "Temp", "dataType": {"type": "int32", "specs": {"min": 0, "max": 200}}},
                {"identifier": "note", "name": "Note", "dataType": {"type": "text", "specs": {"length": 16}}},
            ],
        }
    ],
}
OCTET = {"Content-Type": "application/octet-stream"}


class Dev:
    """One device of the test product, with an httpx client on the device listener."""

    def __init__(self, server: ServerProcess, admin: Admin, pk: str, name: str) -> None:
        self.admin = admin
        self.pk = pk
        self.dn = name
        self.secret = admin.device(pk, name)["deviceSecret"]
        self.http = server.device_client()
        self.token = ""

    def auth(self, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        r = self.http.post("/auth", json=body or alink_auth_body(self.pk, self.dn, self.secret, **kw))
        assert r.status_code == 200, r.text
        doc = dict(r.json())
        if doc["code"] == 0:
            self.token = doc["info"]["token"]
        return doc

    def post(self, topic: str, body: bytes, token: str | None = None, **headers: str) -> dict[str, Any]:
        hdrs = {**OCTET, "password": self.token if token is None else token, **headers}
        r = self.http.post("/topic" + topic, content=body, headers=hdrs)
        assert r.status_code == 200, r.text
        return dict(r.json())

    def props(self, params: Any, **extra: Any) -> dict[str, Any]:
        return self.post(property_topic(self.pk, self.dn), alink_json(params, **extra))

    def values(self) -> dict[str, Any]:
        return {k: v["value"] for k, v in self.admin.properties(self.pk, self.dn).items()}

    def messages(self, kind: str) -> list[dict[str, Any]]:
        return self.admin.messages(self.pk, self.dn, kind)


@pytest.fixture(scope="module")
def pk(admin: Admin) -> str:
    return admin.product(MODEL)


@pytest.fixture()
def make(server: ServerProcess, admin: Admin, pk: str) -> Iterator[Any]:
    made: list[Dev] = []
    counter = iter(range(1000))

    def _make(name: str | None = None) -> Dev:
        dev = Dev(server, admin, pk, name or f"dev-{time.monotonic_ns() % 10**9}-{next(counter)}")
        made.append(dev)
        return dev

    yield _make
    for dev in made:
        dev.http.close()


@pytest.fixture()
def dev(make: Any) -> Dev:
    d: Dev = make()
    assert d.auth()["code"] == 0
    return d


# -- /auth --------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["hmacmd5", "hmacsha1", "hmacsha256"])
@pytest.mark.parametrize("upper", [False, True])
def test_auth_sign_methods_and_hex_case(make: Any, method: str, upper: bool) -> None:
    d: Dev = make()
    body = alink_auth_body(d.pk, d.dn, d.secret, sign_method=method)
    if upper:
        body["sign"] = body["sign"].upper()
    doc = d.auth(body)
    assert set(doc) == {"code", "message", "info"} and doc["code"] == 0 and doc["message"] == "success"
    assert set(doc["info"]) == {"token"} and 0 < len(doc["info"]["token"]) <= 192


def test_token_lives_seven_days_by_default(dev: Dev) -> None:
    """The token is opaque to devices; its claims (read without the server key) carry the expiry."""
    raw = base64.urlsafe_b64decode(dev.token + "=" * (-len(dev.token) % 4))
    _, _, dialect, issued_ms, expires_ms = tokens._LAYOUT.unpack(raw[: tokens._LAYOUT.size])
    assert dialect == tokens.DIALECT_ALINK
    assert expires_ms - issued_ms == 7 * 24 * 3600 * 1000
    assert abs(issued_ms - time.time() * 1000) < 600_000


def test_auth_defaults_to_hmacmd5_and_ignores_version(make: Any) -> None:
    d: Dev = make()
    body = alink_auth_body(d.pk, d.dn, d.secret, sign_method="hmacmd5")
    del body["signmethod"]
    body["version"] = "default"
    assert d.auth(body)["code"] == 0
    # iotkit-embedded v3: version field, lower-case hmacsha1
    body = alink_auth_body(d.pk, d.dn, d.secret, sign_method="hmacsha1")
    body["version"] = "default"
    assert d.auth(body)["code"] == 0


def test_auth_timestamp_window(make: Any) -> None:
    d: Dev = make()
    now = int(time.time() * 1000)
    assert d.auth(alink_auth_body(d.pk, d.dn, d.secret, timestamp_ms=now))["code"] == 0
    assert d.auth(alink_auth_body(d.pk, d.dn, d.secret, timestamp_ms=now - 14 * 60_000))["code"] == 0
    stale = d.auth(alink_auth_body(d.pk, d.dn, d.secret, timestamp_ms=now - 16 * 60_000))
    assert stale["code"] == 20000 and "timestamp" in stale["message"] and "info" not in stale
    future = d.auth(alink_auth_body(d.pk, d.dn, d.secret, timestamp_ms=now + 16 * 60_000))
    assert future["code"] == 20000 and "timestamp" in future["message"]
    # the signed content includes the timestamp: changing it breaks the sign
    body = alink_auth_body(d.pk, d.dn, d.secret, timestamp_ms=now)
    body["timestamp"] = str(now + 1)
    assert d.auth(body)["code"] == 20000


def test_auth_query_string_is_ignored(make: Any) -> None:
    d: Dev = make()
    body = alink_auth_body(d.pk, d.dn, d.secret)
    for query in ("?_v=sdk-c-4.1.0&", "?_v=sdk-c-4.1.0&pid=xxx&mid=xxx", "?x"):
        r = d.http.post("/auth" + query, json=body)
        assert r.json()["code"] == 0, (query, r.text)


def test_auth_signs_every_param_but_sign_signmethod_version(make: Any) -> None:
    d: Dev = make()
    body: dict[str, Any] = {"productKey": d.pk, "deviceName": d.dn, "clientId": "SN-0042", "extra": "x"}
    body["sign"] = alink_sign(body, d.secret, "hmacsha1")
    body["signmethod"] = "HMACSHA1"
    assert d.auth(body)["code"] == 0
    body.pop("extra")  # sign no longer covers exactly the params sent
    assert d.auth(body)["code"] == 20000


def _post_auth(d: Dev, content: bytes, ctype: str = "application/json") -> dict[str, Any]:
    r = d.http.post("/auth", content=content, headers={"Content-Type": ctype})
    assert r.status_code == 200
    assert len(r.content) < 256  # iotkit reads /auth replies into 256 bytes
    return dict(r.json())


def test_auth_param_errors(make: Any) -> None:
    d: Dev = make()
    good = alink_auth_body(d.pk, d.dn, d.secret)
    cases: list[tuple[bytes, str, str]] = [
        (b"{not json", "application/json", "JSON"),
        (b"[1, 2]", "application/json", "object"),
        (json.dumps(good).encode(), "application/x-www-form-urlencoded", "Content-Type"),
        (json.dumps(good).encode(), "text/plain" + "x" * 400, "Content-Type"),
        (json.dumps({**good, "clientId": "c" * 65}).encode(), "application/json", "clientId"),
        (json.dumps({**good, "signmethod": "hmacsha512"}).encode(), "application/json", "signmethod"),
        (json.dumps({**good, "timestamp": "yesterday"}).encode(), "application/json", "timestamp"),
        (json.dumps({**good, "timestamp": None}).encode(), "application/json", "timestamp"),
    ]
    for field in ("productKey", "deviceName", "clientId", "sign"):
        cases.append((json.dumps({k: v for k, v in good.items() if k != field}).encode(), "application/json", field))
        cases.append((json.dumps({**good, field: 42}).encode(), "application/json", field))
    for content, ctype, word in cases:
        doc = _post_auth(d, content, ctype)
        assert doc["code"] == 10001 and word in doc["message"], (content[:80], doc)
        assert "info" not in doc
    # a clientId of exactly 64 characters is fine
    body = alink_auth_body(d.pk, d.dn, d.secret, client_id="c" * 64)
    assert d.auth(body)["code"] == 0
    # a charset parameter on the content type is fine
    assert _post_auth(d, json.dumps(good).encode(), "application/json; charset=utf-8")["code"] == 0


def test_auth_wrong_secret_and_unknown_device_answer_alike(make: Any) -> None:
    d: Dev = make()
    wrong = d.auth(alink_auth_body(d.pk, d.dn, "x" * 32))
    unknown = d.auth(alink_auth_body(d.pk, "no-such-device", d.secret))
    other_product = d.auth(alink_auth_body("aaaaaaaaaaa", d.dn, d.secret))
    # HTTP 200, a code and a message, no token: what Link SDK expects of a failed auth
    for doc in (wrong, unknown, other_product):
        assert doc["code"] == 20000 and "token" not in json.dumps(doc)
    assert wrong["message"] == unknown["message"] == other_product["message"]


# -- uploads ------------------------------------------------------------------------------------
def test_property_post_short_and_long_form(dev: Dev) -> None:
    r = dev.props({"temperature": 21, "humidity": 40})
    assert r["code"] == 0 and r["message"] == "success"
    assert isinstance(r["info"]["messageId"], int) and r["info"]["messageId"] > 2**53
    assert dev.values()["temperature"] == 21
    at = int(time.time() * 1000) + 1000  # the latest value is the one with the newest time
    r = dev.props({"temperature": {"value": 22, "time": at}, "voltage": {"value": 230.5, "time": at}}, sys={"ack": 0})
    assert r["code"] == 0
    status = dev.admin.properties(dev.pk, dev.dn)
    assert status["temperature"]["value"] == 22 and status["temperature"]["time"] == at
    assert status["voltage"]["value"] == 230.5 and status["humidity"]["value"] == 40
    # Link SDK 4.x: no "method"; the documented form: with "method"
    r = dev.props({"humidity": 41}, method="thing.event.property.post")
    assert r["code"] == 0 and dev.values()["humidity"] == 41


def test_message_id_is_a_bare_int64(dev: Dev) -> None:
    r = dev.http.post(
        "/topic" + property_topic(dev.pk, dev.dn),
        content=alink_json({"temperature": 1}),
        headers={**OCTET, "password": dev.token},
    )
    ids = [dev.props({"temperature": 2})["info"]["messageId"] for _ in range(3)]
    raw = r.text
    assert raw.startswith('{"code":0,"message":"success","info":{"messageId":') and raw.endswith("}}")
    first = int(raw.split(":")[-1].rstrip("}"))
    assert 2**53 < first < 2**63
    assert ids == sorted(ids) and len(set([*ids, first])) == 4


def test_invalid_values_are_rejected_recorded_and_never_latest(dev: Dev) -> None:
    assert dev.props({"temperature": 20})["code"] == 0
    bad = dev.props({"temperature": 51, "humidity": 50})
    assert bad["code"] == 30001
    assert "temperature" in bad["message"] and "above max 50" in bad["message"]
    wrong_type = dev.props({"humidity": "wet"})
    assert wrong_type["code"] == 30001 and "humidity" in wrong_type["message"]
    unknown = dev.props({"pressure": 1})
    assert unknown["code"] == 30001 and "pressure" in unknown["message"] and "unknown" in unknown["message"]
    future = dev.props({"temperature": {"value": 1, "time": int(time.time() * 1000) + 25 * 3600_000}})
    assert future["code"] == 30001 and "future" in future["message"]
    values = dev.values()
    assert values["temperature"] == 20 and values["humidity"] is None  # nothing of the bad reports landed
    rejected = dev.messages("rejected")
    assert len(rejected) == 4
    reasons = " | ".join(m["reason"] for m in rejected)
    assert "above max 50" in reasons and "pressure" in reasons and "humidity" in reasons
    assert all(m["topic"] == property_topic(dev.pk, dev.dn) for m in rejected)
    assert any('"temperature": 51' in m["payload"] for m in rejected)


def test_property_post_param_errors(dev: Dev) -> None:
    topic = property_topic(dev.pk, dev.dn)
    for body, word in [
        (b"{oops", "JSON"),
        (b'"a string"', "object"),
        (b'{"id":"1","version":"1.0"}', "params"),
        (b'{"id":"1","params":{}}', "params"),
        (b'{"id":"1","params":[1]}', "params"),
        (b'{"id":"1","params":{"temperature":{"value":1,"time":"soon"}}}', "time"),
        (b"[" * 100_000, "nested"),
        (b'{"params":' * 10_000 + b"1" + b"}" * 10_000, "nested"),
    ]:
        r = dev.post(topic, body)
        assert r["code"] == 10001 and word in r["message"], (body, r)
    r = dev.post(topic, alink_json({"temperature": 3}), **{"Content-Type": "application/x-www-form-urlencoded"})
    assert r["code"] == 10001 and "Content-Type" in r["message"]
    for ctype in ("application/json", "text/plain; charset=utf-8", "application/octet-stream"):
        assert dev.post(topic, alink_json({"temperature": 3}), **{"Content-Type": ctype})["code"] == 0


def test_trailing_nul_is_tolerated(dev: Dev) -> None:
    """iotkit-embedded sends strlen(payload)+1 bytes."""
    r = dev.post(property_topic(dev.pk, dev.dn), alink_json({"temperature": 7}) + b"\x00")
    assert r["code"] == 0 and dev.values()["temperature"] == 7


def test_batch_post_is_all_or_nothing(dev: Dev) -> None:
    topic = f"/sys/{dev.pk}/{dev.dn}/thing/event/property/batch/post"
    t0 = int(time.time() * 1000) - 10_000
    body = alink_json(
        {
            "properties": {
                "temperature": [{"value": 10, "time": t0}, {"value": 11, "time": t0 + 1000}],
                "humidity": [{"value": 60, "time": t0}],
            },
            "events": {"overheat": [{"value": {"temp": 90, "note": "hot"}, "time": t0 + 500}]},
        },
        method="thing.event.property.batch.post",
    )
    r = dev.post(topic, body)
    assert r["code"] == 0, r
    history = dev.admin.c.get(f"/api/v1/products/{dev.pk}/devices/{dev.dn}/properties/temperature/history").json()[
        "items"
    ]
    assert [p["value"] for p in history] == [11, 10]
    assert [(e["identifier"], e["time"]) for e in dev.messages("event")] == [("overheat", t0 + 500)]
    # one bad event: nothing of the batch is stored, the rejection is recorded
    bad = alink_json(
        {
            "properties": {"temperature": [{"value": 12, "time": t0 + 2000}]},
            "events": {"overheat": [{"value": {"temp": 999}, "time": t0 + 2000}]},
        }
    )
    r = dev.post(topic, bad)
    assert r["code"] == 30001 and "temp" in r["message"] and "above max 200" in r["message"]
    assert dev.values()["temperature"] == 11 and len(dev.messages("event")) == 1
    # one bad property: likewise
    r = dev.post(topic, alink_json({"properties": {"humidity": [{"value": 0}]}, "events": {}}))
    assert r["code"] == 30001 and "humidity" in r["message"] and "below min 1" in r["message"]
    assert len(dev.messages("rejected")) == 2
    for params, word in [({}, "no properties"), ({"properties": {"humidity": []}}, "humidity"), ([], "params")]:
        r = dev.post(topic, alink_json(params))
        assert r["code"] == 10001 and word in r["message"], (params, r)


def test_event_post_long_and_short_form(dev: Dev) -> None:
    topic = f"/sys/{dev.pk}/{dev.dn}/thing/event/overheat/post"
    at = int(time.time() * 1000) - 5000
    r = dev.post(
        topic, alink_json({"value": {"temp": 80, "note": "fan"}, "time": at}, method="thing.event.overheat.post")
    )
    assert r["code"] == 0 and isinstance(r["info"]["messageId"], int)
    assert dev.post(topic, alink_json({"temp": 81}))["code"] == 0  # Link SDK 4.x sends the values themselves
    events = dev.messages("event")
    assert [e["identifier"] for e in events] == ["overheat", "overheat"]
    assert events[1]["time"] == at and '"fan"' in events[1]["payload"]
    bad = dev.post(topic, alink_json({"value": {"temp": -1}}))
    assert bad["code"] == 30001 and "temp" in bad["message"] and "below min 0" in bad["message"]
    long_note = dev.post(topic, alink_json({"note": "n" * 17}))
    assert long_note["code"] == 30001 and "note" in long_note["message"]
    unknown = dev.post(f"/sys/{dev.pk}/{dev.dn}/thing/event/explosion/post", alink_json({"value": {}}))
    assert unknown["code"] == 30001 and "explosion" in unknown["message"]
    assert len(dev.messages("event")) == 2 and len(dev.messages("rejected")) == 3
    assert dev.post(topic, alink_json("x"))["code"] == 10001


def test_deviceinfo_ota_and_custom_topics_are_stored(dev: Dev) -> None:
    info = {
        "id": "1",
        "version": "1.0",
        "params": [
            {"attrKey": "SYS_LP_SDK_VERSION", "attrValue": "3.0.1", "domain": "SYSTEM"},
            {"attrKey": "SYS_SDK_LANGUAGE", "attrValue": "C", "domain": "SYSTEM"},
        ],
        "method": "thing.deviceinfo.update",
    }
    r = dev.post(f"/sys/{dev.pk}/{dev.dn}/thing/deviceinfo/update", json.dumps(info).encode() + b"\x00")
    assert r["code"] == 0
    r = dev.post(f"/ota/device/inform/{dev.pk}/{dev.dn}", b'{"id":"2","params":{"version":"1.2.3"}}')
    assert r["code"] == 0
    raw = b"\x01\x02 raw \xff\x00"
    r = dev.post(f"/{dev.pk}/{dev.dn}/user/update", raw)
    assert r["code"] == 0
    r = dev.post(f"/{dev.pk}/{dev.dn}/user/a/b/c", b"nested")
    assert r["code"] == 0
    deviceinfo = dev.messages("deviceinfo")
    assert len(deviceinfo) == 1 and json.loads(deviceinfo[0]["payload"]) == info
    ota = dev.messages("ota")
    assert [json.loads(m["payload"])["params"]["version"] for m in ota] == ["1.2.3"]
    custom = dev.messages("message")
    assert [m["topic"] for m in custom] == [f"/{dev.pk}/{dev.dn}/user/a/b/c", f"/{dev.pk}/{dev.dn}/user/update"]
    assert custom[1]["payload"] == raw.decode("utf-8", "replace")  # as sent, trailing NUL included
    assert dev.post(f"/sys/{dev.pk}/{dev.dn}/thing/deviceinfo/update", b'{"params":{}}')["code"] == 10001
    assert dev.post(f"/ota/device/inform/{dev.pk}/{dev.dn}", b'{"params":{}}')["code"] == 10001


def test_topics_must_belong_to_the_token_device(dev: Dev, make: Any) -> None:
    other: Dev = make()
    body = alink_json({"temperature": 5})
    for topic in [
        property_topic(other.pk, other.dn),
        property_topic("aaaaaaaaaaa", dev.dn),
        f"/sys/{other.pk}/{other.dn}/thing/event/overheat/post",
        f"/ota/device/inform/{other.pk}/{other.dn}",
        f"/{other.pk}/{other.dn}/user/update",
        f"/{dev.pk}/{dev.dn}/get",  # not under /user
        f"/{dev.pk}/{dev.dn}/user/",  # empty topic level
        f"/sys/{dev.pk}/{dev.dn}/thing/service/property/set",
        "/broadcast/all",
    ]:
        r = dev.post(topic, body)
        assert r["code"] == 30001, (topic, r)
    assert other.messages("message") == [] and other.values()["temperature"] is None
    assert dev.values()["temperature"] is None


def test_body_limit_128_kb(dev: Dev, server: ServerProcess) -> None:
    topic = f"/{dev.pk}/{dev.dn}/user/blob"
    r = dev.post(topic, b"a" * (128 * 1024))
    assert r["code"] == 0
    # one byte more: refused from the Content-Length alone, before the body is sent
    with Wire(server.device_port) as w:
        w.send(
            f"POST /topic{topic} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Password: {dev.token}\r\nContent-Length: {128 * 1024 + 1}\r\n\r\n".encode()
        )
        resp = w.response()
        assert resp.code == 10001 and "128 KB" in resp.json()["message"]
        assert resp.headers.get("connection") == "close"
    assert len(dev.messages("message")) == 1
    # a body that turns out larger than announced-by-chunks is refused as well
    with Wire(server.device_port) as w:
        chunk = b"b" * 65536
        head = (
            f"POST /topic{topic} HTTP/1.1\r\nHost: x\r\nPassword: {dev.token}\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        w.send(head + (b"10000\r\n" + chunk + b"\r\n") * 3)
        resp = w.response()
        assert resp.code == 10001 and "128 KB" in resp.json()["message"]
    assert len(dev.messages("message")) == 1


# -- tokens -------------------------------------------------------------------------------------
def test_token_header_errors(dev: Dev) -> None:
    topic = property_topic(dev.pk, dev.dn)
    body = alink_json({"temperature": 4})
    r = dev.http.post("/topic" + topic, content=body, headers=OCTET)
    assert r.json()["code"] == 20002
    assert dev.post(topic, body, token="")["code"] == 20002
    for garbage in ("garbage", "6944e5bfb92e4d4ea3918d1eda3942f6", dev.token[:-2] + "AA", dev.token + "x"):
        r2 = dev.post(topic, body, token=garbage)
        assert r2["code"] == 20003, (garbage, r2)
    for name in ("password", "Password", "PASSWORD"):
        r = dev.http.post("/topic" + topic, content=body, headers={**OCTET, name: dev.token})
        assert r.json()["code"] == 0, name
    assert dev.values()["temperature"] == 4


def test_token_of_another_dialect_is_refused(dev: Dev) -> None:
    """A Huawei access_token is not an Alibaba token."""
    iotda = dev.http.post(
        "/v5/device-auth",
        json={"device_id": f"{dev.pk}_{dev.dn}", "sign_type": 0, "timestamp": "2019120219", "password": "x"},
    )
    assert iotda.status_code in (400, 401)
    ok = dev.http.post("/v5/device-auth", json=iotda_auth_body(f"{dev.pk}_{dev.dn}", dev.secret))
    assert ok.status_code == 200
    r = dev.post(property_topic(dev.pk, dev.dn), alink_json({"temperature": 4}), token=ok.json()["access_token"])
    assert r["code"] == 20003


def _admin_ok(r: httpx.Response) -> None:
    assert r.status_code in (200, 204), r.text


def test_disabling_a_device_kills_its_token(dev: Dev) -> None:
    topic, body = property_topic(dev.pk, dev.dn), alink_json({"temperature": 9})
    assert dev.post(topic, body)["code"] == 0
    old = dev.token
    _admin_ok(dev.admin.c.patch(f"/api/v1/products/{dev.pk}/devices/{dev.dn}", json={"enabled": False}))
    r = dev.post(topic, body)
    assert r["code"] == 20003 and "disabled" in r["message"]
    auth = dev.auth()
    assert auth["code"] == 20000 and "disabled" in auth["message"]
    # a stranger without the secret does not learn that the device exists, let alone is disabled
    assert "disabled" not in dev.auth(alink_auth_body(dev.pk, dev.dn, "y" * 32))["message"]
    _admin_ok(dev.admin.c.patch(f"/api/v1/products/{dev.pk}/devices/{dev.dn}", json={"enabled": True}))
    assert dev.post(topic, body, token=old)["code"] == 20003  # re-enabling does not revive old tokens
    assert dev.auth()["code"] == 0 and dev.post(topic, body)["code"] == 0


def test_secret_reset_kills_tokens_and_the_old_secret(dev: Dev) -> None:
    topic, body = property_topic(dev.pk, dev.dn), alink_json({"temperature": 9})
    old_token, old_secret = dev.token, dev.secret
    r = dev.admin.c.post(f"/api/v1/products/{dev.pk}/devices/{dev.dn}/reset-secret")
    _admin_ok(r)
    dev.secret = r.json()["deviceSecret"]
    assert dev.post(topic, body, token=old_token)["code"] == 20003
    assert dev.auth(alink_auth_body(dev.pk, dev.dn, old_secret))["code"] == 20000
    assert dev.auth()["code"] == 0 and dev.post(topic, body)["code"] == 0


def test_deleting_a_device_kills_its_token(dev: Dev) -> None:
    topic, body = property_topic(dev.pk, dev.dn), alink_json({"temperature": 9})
    assert dev.post(topic, body)["code"] == 0
    _admin_ok(dev.admin.c.delete(f"/api/v1/products/{dev.pk}/devices/{dev.dn}"))
    assert dev.post(topic, body)["code"] == 20003
    assert dev.auth()["code"] == 20000


# -- wire bytes (protocols.md §1.5) ------------------------------------------------------------
def test_link_sdk_c_bytes_on_one_connection(server: ServerProcess, admin: Admin, pk: str) -> None:
    secret = admin.device(pk, "sdk-c-dev01")["deviceSecret"]
    with Wire(server.device_port) as w:
        w.send(sdk_auth_bytes(pk, "sdk-c-dev01", secret))
        auth = w.response()
        assert auth.status_line == b"HTTP/1.1 200 OK"
        assert len(auth.body) < 256
        token = auth.json()["info"]["token"]
        body = b'{"id":"1","version":"1.0","params":{"temperature":23}}'
        w.send(sdk_post_bytes(property_topic(pk, "sdk-c-dev01"), token, body))
        post = w.response()  # same connection: the server kept it open
        assert post.status_line == b"HTTP/1.1 200 OK" and post.code == 0
        w.send(sdk_post_bytes(property_topic(pk, "sdk-c-dev01"), token, body.replace(b"23", b"24")))
        assert w.response().code == 0
        for resp in (auth, post):
            assert any(line.startswith(b"Content-Length: ") for line in resp.header_lines)
            assert all(len(line) + 2 < 128 for line in resp.header_lines)
            assert "transfer-encoding" not in resp.headers and "connection" not in resp.headers
            assert resp.headers["content-type"] == "application/json"
    assert admin.properties(pk, "sdk-c-dev01")["temperature"]["value"] == 24


def test_iotkit_style_requests(server: ServerProcess, admin: Admin, pk: str) -> None:
    """iotkit-embedded v3: `Connection: Keep-Alive`, `password:` with no space, body + NUL."""
    dn = "iotkit-dev01"
    secret = admin.device(pk, dn)["deviceSecret"]
    body = alink_auth_body(pk, dn, secret, sign_method="hmacsha1")
    auth = ('{"version":"default", ' + json.dumps(body)[1:]).encode()
    with Wire(server.device_port) as w:
        w.send(
            b"POST /auth HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(auth) + auth
        )
        token = w.response().json()["info"]["token"]
        payload = b'{"id":"2","params":{"version":"1.0.0"}}\x00'
        w.send(
            b"POST /topic/ota/device/inform/%s/%s HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive\r\n"
            b"Content-Type: application/octet-stream\r\npassword:%s\r\nContent-Length: %d\r\n\r\n"
            % (pk.encode(), dn.encode(), token.encode(), len(payload))
            + payload
        )
        assert w.response().code == 0


@pytest.mark.parametrize("keep_alive", [False, True])
def test_http_1_0(server: ServerProcess, admin: Admin, pk: str, keep_alive: bool) -> None:
    dn = f"http10-{int(keep_alive)}"
    secret = admin.device(pk, dn)["deviceSecret"]
    extra = "Connection: keep-alive\r\n" if keep_alive else ""
    req = sdk_auth_bytes(pk, dn, secret).replace(b" HTTP/1.1\r\n", f" HTTP/1.0\r\n{extra}".encode(), 1)
    with Wire(server.device_port) as w:
        w.send(req)
        auth = w.response()
        assert auth.status_line == b"HTTP/1.1 200 OK" and auth.code == 0
        if not keep_alive:
            assert auth.headers["connection"] == "close" and w.closed_by_server()
            return
        assert auth.headers["connection"] == "keep-alive"
        body = alink_json({"humidity": 33})
        w.send(sdk_post_bytes(property_topic(pk, dn), auth.json()["info"]["token"], body, "1.0", extra))
        assert w.response().code == 0
    assert admin.properties(pk, dn)["humidity"]["value"] == 33


def test_pipelined_requests_are_answered_in_order(server: ServerProcess, admin: Admin, pk: str) -> None:
    dn = "pipeline-dev"
    secret = admin.device(pk, dn)["deviceSecret"]
    with Wire(server.device_port) as w:
        w.send(sdk_auth_bytes(pk, dn, secret))
        token = w.response().json()["info"]["token"]
        topic = property_topic(pk, dn)
        batch = b"".join(sdk_post_bytes(topic, token, alink_json({"temperature": t})) for t in range(10))
        bad = sdk_post_bytes(topic, token, alink_json({"temperature": 99}))
        w.send(batch + bad + sdk_auth_bytes(pk, dn, "wrong" * 4) + sdk_post_bytes(topic, token, b"{"))
        replies = [w.response() for _ in range(13)]
    codes = [r.code for r in replies]
    assert codes == [0] * 10 + [30001, 20000, 10001]
    ids = [r.json()["info"]["messageId"] for r in replies[:10]]
    assert ids == sorted(ids)
    history = admin.c.get(f"/api/v1/products/{pk}/devices/{dn}/properties/temperature/history").json()["items"]
    assert [p["value"] for p in history] == list(range(9, -1, -1))


def test_pipelined_request_then_garbage(server: ServerProcess, admin: Admin, pk: str) -> None:
    """The good request is answered first, then the 400 for the garbage, then the connection closes."""
    dn = "pipeline-garbage"
    secret = admin.device(pk, dn)["deviceSecret"]
    with Wire(server.device_port) as w:
        w.send(sdk_auth_bytes(pk, dn, secret) + b"BLAH /\x01 HTTP/9\r\n\r\n")
        first, second = w.response(), w.response()
        assert first.code == 0 and "connection" not in first.headers
        assert second.status == 400 and second.code == 10001 and second.headers["connection"] == "close"
        assert w.closed_by_server()


def test_more_pipelined_requests_than_the_read_limit(server: ServerProcess, admin: Admin, pk: str) -> None:
    """Past MAX_PIPELINED queued requests the listener stops reading; it must resume once replies
    go out (reading is resumed only when it was paused), and the connection stays usable."""
    dn = "pipeline-many"
    secret = admin.device(pk, dn)["deviceSecret"]
    with Wire(server.device_port) as w:
        w.send(sdk_auth_bytes(pk, dn, secret))
        token = w.response().json()["info"]["token"]
        topic = property_topic(pk, dn)
        w.send(b"".join(sdk_post_bytes(topic, token, alink_json({"temperature": t % 50})) for t in range(40)))
        assert [w.response().code for _ in range(40)] == [0] * 40
        w.send(sdk_post_bytes(topic, token, alink_json({"temperature": 7})))
        reply = w.response()
        assert reply.code == 0 and "connection" not in reply.headers
    assert admin.properties(pk, dn)["temperature"]["value"] == 7


def test_invalid_request_target_after_a_good_request(server: ServerProcess, admin: Admin, pk: str) -> None:
    """A target the URL parser refuses gets the 400 (after the reply owed to the request before
    it), and a query string never reaches the topic path."""
    dn = "bad-target"
    secret = admin.device(pk, dn)["deviceSecret"]
    with Wire(server.device_port) as w:
        w.send(sdk_auth_bytes(pk, dn, secret))
        token = w.response().json()["info"]["token"]
        topic = property_topic(pk, dn)
        good = sdk_post_bytes(topic, token, alink_json({"temperature": 21})).replace(
            topic.encode() + b" HTTP", topic.encode() + b"?_v=sdk-c-4.1.0 HTTP", 1
        )
        bad = b"POST http://h:x/ HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}"
        w.send(good + bad)
        first, second = w.response(), w.response()
        assert first.code == 0 and "connection" not in first.headers
        assert second.status == 400 and second.code == 10001 and second.headers["connection"] == "close"
        assert "not a valid URL path" in second.json()["message"]
        assert w.closed_by_server()
    assert admin.properties(pk, dn)["temperature"]["value"] == 21
