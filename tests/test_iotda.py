"""Huawei IoTDA HTTPS dialect, end to end through the real `iotgate serve` process over TLS.

Three servers: the module's default one (`server` fixture), one with 1 s tokens, and one with a 2 s
re-auth grace and a 2/s device rate limit (different devices, so the two do not interfere).
"""

from __future__ import annotations

import json
import socket
import ssl
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body, iotda_password

MODEL: dict[str, Any] = {
    **SEED_MODEL,
    "modules": [
        {
            "identifier": "battery",
            "name": "Battery",
            "properties": [
                {
                    "identifier": "level",
                    "name": "Level",
                    "accessMode": "r",
                    "dataType": {"type": "int32", "specs": {"min": 0, "max": 100, "step": 1, "unit": "%"}},
                }
            ],
        }
    ],
}


def hour_stamp(offset_h: int = 0) -> str:
    """UTC YYYYMMDDHH of the current hour plus offset_h."""
    return (datetime.now(UTC) + timedelta(hours=offset_h)).strftime("%Y%m%d%H")


def away_from_hour_boundary(margin_s: float = 10.0) -> None:
    """Wait (at most margin_s + 1 s) until the next hour change is at least margin_s away, so an
    hour stamp computed now is still the server's current hour when the request arrives."""
    left = 3600 - time.time() % 3600
    if left < margin_s:
        time.sleep(left + 0.5)


def auth_body(device_id: str, secret: str, sign_type: int = 0, timestamp: str | None = None) -> dict[str, Any]:
    ts = timestamp or hour_stamp()
    return {"device_id": device_id, "sign_type": sign_type, "timestamp": ts, "password": iotda_password(secret, ts)}


def auth(
    client: httpx.Client, device: dict[str, Any], sign_type: int = 0, timestamp: str | None = None
) -> httpx.Response:
    return client.post(
        "/v5/device-auth", json=auth_body(device["deviceId"], device["deviceSecret"], sign_type, timestamp)
    )


def token(client: httpx.Client, device: dict[str, Any]) -> str:
    r = auth(client, device)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def report(client: httpx.Client, device_id: str, tok: str, services: list[dict[str, Any]]) -> httpx.Response:
    return client.post(
        f"/v5/devices/{device_id}/sys/properties/report",
        json={"services": services},
        headers={"access_token": tok},
    )


def assert_error(r: httpx.Response, status: int, code: str, *needles: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    doc = r.json()
    assert set(doc) == {"error_code", "error_msg"}, doc
    assert doc["error_code"] == code, doc
    for needle in needles:
        assert needle in doc["error_msg"], doc
    return str(doc["error_msg"])


def tls_socket(server: ServerProcess) -> ssl.SSLSocket:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = socket.create_connection(("127.0.0.1", server.device_port), timeout=15)
    return ctx.wrap_socket(sock)


def read_response(sock: ssl.SSLSocket) -> tuple[str, dict[str, str], bytes]:
    """One HTTP response: status line, headers (lower-cased names), body of Content-Length bytes."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the response head: {buf!r}"
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the response body"
        rest += chunk
    return status, headers, rest[:length]


def raw_post(path: str, body: bytes, headers: dict[str, str], version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_bytes(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pk(admin: Admin) -> str:
    return admin.product(MODEL, name="iotda-direct")


@pytest.fixture(scope="module")
def device_client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.device_client() as client:
        yield client


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, *flags: str) -> ServerProcess:
    return ServerProcess(tmp_path_factory.mktemp(name) / "data", *flags).start()


@pytest.fixture(scope="module")
def short_tokens(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = _start(tmp_path_factory, "ttl1", "--iotda-token-ttl-s", "1")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = _start(
        tmp_path_factory,
        "limited",
        "--iotda-reauth-grace-s",
        "2",
        "--device-rate-per-s",
        "2",
        "--device-rate-burst",
        "2",
    )
    yield proc
    proc.stop()


def new_device(admin: Admin, pk: str, name: str) -> dict[str, Any]:
    return admin.device(pk, name)


# -- /v5/device-auth --------------------------------------------------------------------------------
def test_auth_sign_type_0_accepts_any_well_formed_timestamp(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    dev = new_device(admin, pk, "auth-st0")
    for stamp in ("2019120219", hour_stamp(-30), hour_stamp(+30)):  # the Go SDK's fixed stamp, far past, far future
        r = auth(device_client, dev, sign_type=0, timestamp=stamp)
        assert r.status_code == 200, r.text
        doc = r.json()
        assert set(doc) == {"access_token", "expires_in"} and doc["expires_in"] == 24 * 3600
        assert 32 <= len(doc["access_token"]) <= 256
    # the protocols.md test vector: the password is lowercase hex HMAC-SHA256(key=timestamp, msg=secret)
    assert (
        iotda_password("31a9a9a247177daeb6ac9462ac03b700", "2019120219")
        == "d8e26f0b8b9c7d1e6d619e02b74dfcfbc5ed63e31e266fa8d0da61e9ef225f48"
    )
    r = report(
        device_client,
        dev["deviceId"],
        doc["access_token"],
        [{"service_id": "default", "properties": {"temperature": 7}}],
    )
    assert r.status_code == 200 and r.content == b"", r.text
    assert admin.properties(pk, "auth-st0")["temperature"]["value"] == 7


def test_auth_sign_type_1_window_is_one_hour_each_way(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    dev = new_device(admin, pk, "auth-st1")
    away_from_hour_boundary()
    for offset in (0, -1, +1):  # some instant of each of these hours is within 1 h of now
        r = auth(device_client, dev, sign_type=1, timestamp=hour_stamp(offset))
        assert r.status_code == 200, (offset, r.text)
    # two hours ahead: every instant of that hour is more than 1 h away (the old check let it in)
    stamp = hour_stamp(+2)
    assert_error(auth(device_client, dev, sign_type=1, timestamp=stamp), 401, "IOTDA.000002", stamp, "3600 s")
    # stale: refused with sign_type 1, accepted with sign_type 0 (password only)
    stale = hour_stamp(-3)
    msg = assert_error(auth(device_client, dev, sign_type=1, timestamp=stale), 401, "IOTDA.000002", stale)
    assert "sign_type 0" in msg
    assert auth(device_client, dev, sign_type=0, timestamp=stale).status_code == 200
    # sign_type may come as the string "1" too
    body = auth_body(dev["deviceId"], dev["deviceSecret"], 1, hour_stamp())
    assert device_client.post("/v5/device-auth", json={**body, "sign_type": "1"}).status_code == 200


def test_auth_failures(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    dev = new_device(admin, pk, "auth-bad")
    good = auth_body(dev["deviceId"], dev["deviceSecret"])
    wrong = auth_body(dev["deviceId"], "not-the-secret-not-the-secret-00")
    msg = assert_error(device_client.post("/v5/device-auth", json=wrong), 401, "IOTDA.000002", "password is wrong")
    # the password is checked against the timestamp it was made with
    other_hour = {**good, "timestamp": "2019120219"}
    assert_error(device_client.post("/v5/device-auth", json=other_hour), 401, "IOTDA.000002", "password is wrong")
    # an unknown device gets the same answer as a wrong password: device ids cannot be probed
    unknown = auth_body(f"{pk}_no-such-device", dev["deviceSecret"])
    assert assert_error(device_client.post("/v5/device-auth", json=unknown), 401, "IOTDA.000002") == msg
    no_product = auth_body("nounderscoreid", dev["deviceSecret"])
    assert assert_error(device_client.post("/v5/device-auth", json=no_product), 401, "IOTDA.000002") == msg
    assert admin.c.patch(f"/api/v1/products/{pk}/devices/auth-bad", json={"enabled": False}).status_code == 200
    assert_error(device_client.post("/v5/device-auth", json=good), 401, "IOTDA.000002", "disabled")
    disabled_wrong = auth_body(dev["deviceId"], "not-the-secret-not-the-secret-00")
    assert assert_error(device_client.post("/v5/device-auth", json=disabled_wrong), 401, "IOTDA.000002") == msg
    assert admin.c.patch(f"/api/v1/products/{pk}/devices/auth-bad", json={"enabled": True}).status_code == 200
    assert device_client.post("/v5/device-auth", json=good).status_code == 200


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"device_id": None}, "device_id"),
        ({"device_id": "bad id/with slash"}, "device_id"),
        ({"device_id": "x" * 129}, "device_id"),
        ({"sign_type": None}, "sign_type"),
        ({"sign_type": 2}, "sign_type"),
        ({"sign_type": True}, "sign_type"),
        ({"sign_type": 0.0}, "sign_type"),
        ({"timestamp": None}, "timestamp"),
        ({"timestamp": 2019120219}, "timestamp"),
        ({"timestamp": "2019-12-02"}, "timestamp"),
        ({"timestamp": "2019023019"}, "timestamp"),  # 30 February
        ({"timestamp": "2019120225"}, "timestamp"),  # hour 25
        ({"password": None}, "password"),
        ({"password": "abc"}, "password"),
        ({"password": "z" * 64}, "password"),
    ],
)
def test_auth_malformed_fields_are_400_naming_the_field(
    admin: Admin, pk: str, device_client: httpx.Client, change: dict[str, Any], field: str
) -> None:
    body = {**auth_body(f"{pk}_whatever", "secret"), **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = device_client.post("/v5/device-auth", json=body)
    assert_error(r, 400, "IOTDA.000006", "Invalid input data", field)


def test_auth_body_must_be_a_json_object(device_client: httpx.Client) -> None:
    assert_error(device_client.post("/v5/device-auth", content=b"{not json"), 400, "IOTDA.000006", "not valid JSON")
    assert_error(device_client.post("/v5/device-auth", json=[1, 2]), 400, "IOTDA.000006", "JSON object")
    assert_error(device_client.get("/v5/device-auth"), 405, "IOTDA.000006", "GET")


# -- tokens -----------------------------------------------------------------------------------------
def test_token_errors(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    a, b = new_device(admin, pk, "tok-a"), new_device(admin, pk, "tok-b")
    ta = token(device_client, a)
    props = [{"service_id": "default", "properties": {"humidity": 5}}]
    path_a = f"/v5/devices/{a['deviceId']}/sys/properties/report"
    r = device_client.post(path_a, json={"services": props})
    assert_error(r, 403, "IOTDA.000004", "access_token header is missing")
    assert_error(report(device_client, a["deviceId"], "garbage", props), 403, "IOTDA.000004", "malformed")
    forged = ta[:-4] + ("AAAA" if not ta.endswith("AAAA") else "BBBB")
    assert_error(report(device_client, a["deviceId"], forged, props), 403, "IOTDA.000004")
    # a token speaks only for its own device
    assert_error(report(device_client, b["deviceId"], ta, props), 403, "IOTDA.000004", a["deviceId"])
    # an Alibaba token is not an IoTDA token
    alink = device_client.post("/auth", json=alink_auth_body(pk, "tok-a", a["deviceSecret"]))
    alink_token = alink.json()["info"]["token"]
    assert_error(report(device_client, a["deviceId"], alink_token, props), 403, "IOTDA.000004", "other protocol")
    # resetting the secret revokes outstanding tokens
    assert report(device_client, a["deviceId"], ta, props).status_code == 200
    assert admin.c.post(f"/api/v1/products/{pk}/devices/tok-a/reset-secret").status_code == 200
    assert_error(report(device_client, a["deviceId"], ta, props), 403, "IOTDA.000004", "revoked")
    assert admin.messages(pk, "tok-b", "rejected") == []  # token failures are not device data


def test_token_expiry(short_tokens: ServerProcess) -> None:
    with short_tokens.admin() as c:
        adm = Admin(c)
        pk = adm.product(MODEL)
        dev = adm.device(pk, "short-01")
    with short_tokens.device_client() as client:
        r = auth(client, dev)
        assert r.status_code == 200 and r.json()["expires_in"] == 1
        tok = r.json()["access_token"]
        time.sleep(1.5)
        r = report(client, dev["deviceId"], tok, [{"service_id": "default", "properties": {"temperature": 1}}])
        assert_error(r, 403, "IOTDA.000004", "expired", "/v5/device-auth")
        r = client.post(f"/v5/devices/{dev['deviceId']}/sys/messages/up", content=b"x", headers={"access_token": tok})
        assert_error(r, 403, "IOTDA.000004", "expired")


def test_reauth_keeps_the_previous_token_for_the_grace_period(
    admin: Admin, pk: str, device_client: httpx.Client
) -> None:
    dev = new_device(admin, pk, "grace-30")
    first, second = token(device_client, dev), token(device_client, dev)
    assert first != second
    props = [{"service_id": "default", "properties": {"temperature": 30}}]
    assert report(device_client, dev["deviceId"], first, props).status_code == 200  # within the 30 s overlap
    assert report(device_client, dev["deviceId"], second, props).status_code == 200


def test_reauth_grace_ends(limited: ServerProcess) -> None:
    with limited.admin() as c:
        adm = Admin(c)
        pk = adm.product(MODEL)
        dev = adm.device(pk, "grace-02")
    props = [{"service_id": "default", "properties": {"temperature": 2}}]
    with limited.device_client() as client:
        first, second = token(client, dev), token(client, dev)
        time.sleep(2.5)  # --iotda-reauth-grace-s 2
        r = report(client, dev["deviceId"], first, props)
        assert_error(r, 403, "IOTDA.000004", "replaced by a newer one")
        assert report(client, dev["deviceId"], second, props).status_code == 200
    with limited.admin() as c:
        assert Admin(c).properties(pk, "grace-02")["temperature"]["value"] == 2


def test_rate_limit(limited: ServerProcess) -> None:
    with limited.admin() as c:
        adm = Admin(c)
        pk = adm.product(MODEL)
        dev = adm.device(pk, "rate-01")
        with limited.device_client() as client:
            tok = token(client, dev)
            codes = []
            for i in range(20):  # 2/s with a burst of 2: refused long before 20 unless each takes > 0.5 s
                r = client.post(
                    f"/v5/devices/{dev['deviceId']}/sys/messages/up", content=b"m%d" % i, headers={"access_token": tok}
                )
                codes.append(r.status_code)
                if r.status_code == 403:
                    assert_error(r, 403, "IOTDA.021101", "maximum rate limit")
                    break
            assert codes[-1] == 403 and codes[:2] == [200, 200], codes
        stored = adm.messages(pk, "rate-01", "message")
        assert len(stored) == codes.count(200)  # a refused message is not stored


# -- messages/up ------------------------------------------------------------------------------------
def test_messages_up_stores_the_raw_body(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    dev = new_device(admin, pk, "msg-01")
    tok = token(device_client, dev)
    path = f"/v5/devices/{dev['deviceId']}/sys/messages/up"
    bodies = [
        b'{"name":"name","id":"id","content":"messageUp"}',
        b"plain text, not JSON <>&",
        b'{"content": {"nested": [1, 2]}}',
    ]
    for body in bodies:
        r = device_client.post(path, content=body, headers={"access_token": tok, "Content-Type": "application/json"})
        assert r.status_code == 200 and r.content == b"", r.text
    stored = admin.messages(pk, "msg-01", "message")
    assert [m["payload"] for m in reversed(stored)] == [b.decode() for b in bodies]
    assert {m["topic"] for m in stored} == {path}
    r = device_client.post(path, content=b"", headers={"access_token": tok})
    assert_error(r, 400, "IOTDA.000006", "empty")


def test_body_over_1mb_is_refused_before_it_is_sent(admin: Admin, pk: str, server: ServerProcess) -> None:
    dev = new_device(admin, pk, "big-01")
    with server.device_client() as client:
        tok = token(client, dev)
        exactly = b"x" * (1024 * 1024)
        r = client.post(
            f"/v5/devices/{dev['deviceId']}/sys/messages/up", content=exactly, headers={"access_token": tok}
        )
        assert r.status_code == 200, r.text
    path = f"/v5/devices/{dev['deviceId']}/sys/messages/up"
    with tls_socket(server) as sock:
        # only the head: the server answers from Content-Length without waiting for the 2 MB
        head = raw_post(path, b"", {"access_token": tok})
        sock.sendall(head.replace(b"Content-Length: 0", b"Content-Length: %d" % (2 * 1024 * 1024)))
        status, headers, body = read_response(sock)
    assert status.startswith("HTTP/1.1 403"), status
    assert headers["connection"] == "close"
    doc = json.loads(body)
    assert doc["error_code"] == "IOTDA.021105" and "1 MB" in doc["error_msg"]
    with tls_socket(server) as sock:  # chunked, so no Content-Length to refuse from: counted as it arrives
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\naccess_token: {tok}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"y" * (256 * 1024)
        for _ in range(5):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, _, body = read_response(sock)
    assert status.startswith("HTTP/1.1 403") and json.loads(body)["error_code"] == "IOTDA.021105"
    assert len(admin.messages(pk, "big-01", "message")) == 1


# -- properties/report ------------------------------------------------------------------------------
def test_properties_report_event_time_formats(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    cases = [
        ("2021-08-13T10:10:10.555Z", 1628849410555),
        ("20210813T101010Z", 1628849410000),
    ]
    for i, (event_time, expected) in enumerate(cases):
        dev = new_device(admin, pk, f"time-{i}")
        tok = token(device_client, dev)
        services = [{"service_id": "default", "properties": {"temperature": 11 + i}, "event_time": event_time}]
        assert report(device_client, dev["deviceId"], tok, services).status_code == 200
        status = admin.properties(pk, f"time-{i}")["temperature"]
        assert (status["value"], status["time"]) == (11 + i, expected)
    # absent, empty or not in either format: server time
    for j, extra in enumerate([{}, {"event_time": ""}, {"event_time": "13/08/2021 10:10"}, {"event_time": 1628849410}]):
        name = f"time-now-{j}"
        dev = new_device(admin, pk, name)
        tok = token(device_client, dev)
        before = int(time.time() * 1000)
        r = report(
            device_client, dev["deviceId"], tok, [{"service_id": "default", "properties": {"humidity": 40}, **extra}]
        )
        after = int(time.time() * 1000)
        assert r.status_code == 200, r.text
        assert before - 1000 <= admin.properties(pk, name)["humidity"]["time"] <= after + 1000


def test_properties_report_modules(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    dev = new_device(admin, pk, "mod-01")
    tok = token(device_client, dev)
    services = [
        {"service_id": "default", "properties": {"temperature": 21, "humidity": 61}},
        {"service_id": "battery", "properties": {"level": 88}},
    ]
    assert report(device_client, dev["deviceId"], tok, services).status_code == 200
    status = admin.properties(pk, "mod-01")
    assert status["temperature"]["value"] == 21 and status["humidity"]["value"] == 61
    assert status["battery:level"]["value"] == 88
    # an unknown service_id, and a property that is not in the named module
    r = report(device_client, dev["deviceId"], tok, [{"service_id": "engine", "properties": {"rpm": 1}}])
    assert_error(r, 400, "IOTDA.000006", "engine", "unknown module")
    r = report(device_client, dev["deviceId"], tok, [{"service_id": "battery", "properties": {"temperature": 1}}])
    assert_error(r, 400, "IOTDA.000006", "battery:temperature", "unknown property")
    # several services are all-or-nothing: the valid one is not stored either
    services = [
        {"service_id": "battery", "properties": {"level": 50}},
        {"service_id": "default", "properties": {"temperature": 99}},
    ]
    assert_error(report(device_client, dev["deviceId"], tok, services), 400, "IOTDA.000006", "temperature")
    assert admin.properties(pk, "mod-01")["battery:level"]["value"] == 88
    rejected = admin.messages(pk, "mod-01", "rejected")
    assert len(rejected) == 3 and any("above max 50" in m["reason"] for m in rejected)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"not json", "not valid JSON"),
        (b"[1]", "JSON object"),
        (b"{}", "services must be a non-empty list"),
        (b'{"services": []}', "services must be a non-empty list"),
        (b'{"services": [1]}', "services[0] must be an object"),
        (b'{"services": [{"properties": {"temperature": 1}}]}', "services[0].service_id is missing"),
        (b'{"services": [{"service_id": "default"}]}', "services[0].properties must be a non-empty object"),
        (b'{"services": [{"service_id": "default", "properties": {}}]}', "services[0].properties"),
        (b'{"services": [{"service_id": "default", "properties": {"temperature": "hot"}}]}', "temperature"),
        (b'{"services": [{"service_id": "default", "properties": {"pressure": 1}}]}', "pressure: unknown property"),
    ],
)
def test_properties_report_rejections(
    admin: Admin, pk: str, device_client: httpx.Client, body: bytes, needle: str
) -> None:
    name = f"rej-{zlib.crc32(body):08x}"
    dev = new_device(admin, pk, name)
    tok = token(device_client, dev)
    r = device_client.post(
        f"/v5/devices/{dev['deviceId']}/sys/properties/report", content=body, headers={"access_token": tok}
    )
    assert_error(r, 400, "IOTDA.000006", "Invalid input data", needle)
    rejected = admin.messages(pk, name, "rejected")
    assert len(rejected) == 1 and needle in rejected[0]["reason"] and rejected[0]["payload"] == body.decode()
    assert admin.properties(pk, name)["temperature"]["value"] is None


def test_unknown_api_and_method(device_client: httpx.Client) -> None:
    assert_error(
        device_client.post("/v5/devices/x_y/sys/commands/up", content=b"{}"), 404, "IOTDA.000006", "no such API"
    )
    assert_error(device_client.post("/v5/iot/x", content=b"{}"), 404, "IOTDA.000006", "no such API")
    assert_error(device_client.get("/v5/devices/x_y/sys/messages/up"), 405, "IOTDA.000006")


# -- one device, both dialects ----------------------------------------------------------------------
def test_one_device_through_both_dialects(admin: Admin, pk: str, device_client: httpx.Client) -> None:
    dev = new_device(admin, pk, "dual-01")
    a = device_client.post("/auth", json=alink_auth_body(pk, "dual-01", dev["deviceSecret"]))
    headers = {"password": a.json()["info"]["token"], "Content-Type": "application/octet-stream"}
    topic = f"/topic/sys/{pk}/dual-01/thing/event/property/post"
    alink_body = {"id": "1", "version": "1.0", "params": {"temperature": 10, "battery:level": 70}}
    r = device_client.post(topic, content=json.dumps(alink_body), headers=headers)
    assert r.json()["code"] == 0, r.text
    tok = token(device_client, dev)
    r = report(
        device_client,
        dev["deviceId"],
        tok,
        [{"service_id": "default", "properties": {"temperature": 12, "humidity": 33}}],
    )
    assert r.status_code == 200, r.text
    r = report(device_client, dev["deviceId"], tok, [{"service_id": "battery", "properties": {"level": 71}}])
    assert r.status_code == 200, r.text
    r = device_client.post(f"/topic/{pk}/dual-01/user/update", content=b"from alink", headers=headers)
    assert r.json()["code"] == 0
    r = device_client.post(
        f"/v5/devices/{dev['deviceId']}/sys/messages/up", content=b"from iotda", headers={"access_token": tok}
    )
    assert r.status_code == 200
    status = admin.properties(pk, "dual-01")
    assert (status["temperature"]["value"], status["humidity"]["value"], status["battery:level"]["value"]) == (
        12,
        33,
        71,
    )
    hist = admin.c.get(f"/api/v1/products/{pk}/devices/dual-01/properties/temperature/history").json()["items"]
    assert [p["value"] for p in hist] == [12, 10]
    hist = admin.c.get(f"/api/v1/products/{pk}/devices/dual-01/properties/battery:level/history").json()["items"]
    assert [p["value"] for p in hist] == [71, 70]
    assert sorted(m["payload"] for m in admin.messages(pk, "dual-01", "message")) == ["from alink", "from iotda"]
    shown = admin.c.get(f"/api/v1/products/{pk}/devices/dual-01").json()
    assert shown["online"] is True


# -- HTTP/1.0 ---------------------------------------------------------------------------------------
def test_http_1_0(admin: Admin, pk: str, server: ServerProcess) -> None:
    dev = new_device(admin, pk, "http10-1")
    with tls_socket(server) as sock:
        sock.sendall(
            raw_post(
                "/v5/device-auth",
                json_bytes(auth_body(dev["deviceId"], dev["deviceSecret"])),
                {"Content-Type": "application/json"},
                version="1.0",
            )
        )
        status, headers, body = read_response(sock)
        assert status == "HTTP/1.1 200 OK" and headers["connection"] == "close"
        assert sock.recv(1) == b""  # HTTP/1.0 without keep-alive: the server closes
    tok = json.loads(body)["access_token"]
    report_body = json_bytes({"services": [{"service_id": "default", "properties": {"temperature": 10}}]})
    path = f"/v5/devices/{dev['deviceId']}/sys/properties/report"
    with tls_socket(server) as sock:  # HTTP/1.0 with keep-alive: two requests on one connection
        for value in (10, 11):
            report_body = json_bytes({"services": [{"service_id": "default", "properties": {"temperature": value}}]})
            sock.sendall(raw_post(path, report_body, {"access_token": tok, "Connection": "keep-alive"}, version="1.0"))
            status, headers, body = read_response(sock)
            assert status == "HTTP/1.1 200 OK" and body == b"" and headers["content-length"] == "0"
            assert headers["connection"] == "keep-alive"
    assert admin.properties(pk, "http10-1")["temperature"]["value"] == 11


# -- gateway batch ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateways(admin: Admin, pk: str) -> dict[str, Any]:
    """A gateway with 50 sub-devices, a second gateway with one, and a detached sub-device."""
    gw_pk = admin.product(None, node_type="gateway", name="iotda-gw")
    sub_pk = admin.product(MODEL, node_type="sub-device", name="iotda-sub")
    gw, other = admin.device(gw_pk, "gw-0001"), admin.device(gw_pk, "gw-0002")
    names = [f"child-{i:02d}" for i in range(50)] + ["foreign-01", "loose-01"]
    r = admin.c.post(f"/api/v1/products/{sub_pk}/devices:batch", json={"devices": names})
    assert r.status_code == 201, r.text
    pairs = [{"productKey": sub_pk, "deviceName": n} for n in names[:50]]
    r = admin.c.post(f"/api/v1/products/{gw_pk}/devices/gw-0001/sub-devices", json={"devices": pairs})
    assert r.status_code == 200, r.text
    r = admin.c.post(
        f"/api/v1/products/{gw_pk}/devices/gw-0002/sub-devices",
        json={"devices": [{"productKey": sub_pk, "deviceName": "foreign-01"}]},
    )
    assert r.status_code == 200, r.text
    return {"gw_pk": gw_pk, "sub_pk": sub_pk, "gw": gw, "other": other, "children": names[:50]}


def gateway_report(client: httpx.Client, gw: dict[str, Any], tok: str, devices: list[dict[str, Any]]) -> httpx.Response:
    return client.post(
        f"/v5/devices/{gw['deviceId']}/sys/gateway/sub-devices/properties/report",
        json={"devices": devices},
        headers={"access_token": tok},
    )


def child_entry(sub_pk: str, name: str, **props: Any) -> dict[str, Any]:
    return {"device_id": f"{sub_pk}_{name}", "services": [{"service_id": "default", "properties": props}]}


def test_gateway_batch_of_50_is_stored_for_each_child(
    admin: Admin, gateways: dict[str, Any], device_client: httpx.Client
) -> None:
    g, sub_pk = gateways, gateways["sub_pk"]
    tok = token(device_client, g["gw"])
    devices = [child_entry(sub_pk, n, temperature=i - 10, humidity=i + 1) for i, n in enumerate(g["children"])]
    devices[0]["services"].append(
        {"service_id": "battery", "properties": {"level": 42}, "event_time": "20240101T000000Z"}
    )
    r = gateway_report(device_client, g["gw"], tok, devices)
    assert r.status_code == 200 and r.content == b"", r.text
    for i, name in enumerate(g["children"]):
        status = admin.properties(sub_pk, name)
        assert (status["temperature"]["value"], status["humidity"]["value"]) == (i - 10, i + 1), name
    level = admin.properties(sub_pk, g["children"][0])["battery:level"]
    assert (level["value"], level["time"]) == (42, 1704067200000)
    assert admin.c.get(f"/api/v1/products/{sub_pk}/devices/child-07").json()["online"] is True
    # again, now that every child is cached (the one-pass path): stored for each child too
    devices = [child_entry(sub_pk, n, temperature=i - 9, humidity=i + 1) for i, n in enumerate(g["children"])]
    assert gateway_report(device_client, g["gw"], tok, devices).status_code == 200
    for i, name in enumerate(g["children"]):
        status = admin.properties(sub_pk, name)
        assert (status["temperature"]["value"], status["humidity"]["value"]) == (i - 9, i + 1), name


def test_gateway_batch_of_51_is_refused(admin: Admin, gateways: dict[str, Any], device_client: httpx.Client) -> None:
    g, sub_pk = gateways, gateways["sub_pk"]
    tok = token(device_client, g["gw"])
    devices = [child_entry(sub_pk, n, temperature=49) for n in g["children"]]
    devices.append(child_entry(sub_pk, g["children"][0], temperature=49))
    r = gateway_report(device_client, g["gw"], tok, devices)
    assert_error(r, 400, "IOTDA.000006", "51 entries", "at most 50")
    assert all(admin.properties(sub_pk, n)["temperature"]["value"] != 49 for n in g["children"][:3])


def test_gateway_batch_refuses_children_it_does_not_own(
    admin: Admin, gateways: dict[str, Any], device_client: httpx.Client
) -> None:
    g, sub_pk = gateways, gateways["sub_pk"]
    tok = token(device_client, g["gw"])
    before = admin.properties(sub_pk, "child-01")["temperature"]["value"]
    cases = {
        "foreign-01": f"{sub_pk}_foreign-01",  # a sub-device of the other gateway
        "loose-01": f"{sub_pk}_loose-01",  # exists, attached to no gateway
        "unknown": f"{sub_pk}_no-such-child",
        "malformed": "no-product-key",
    }
    for child_id in cases.values():
        devices = [
            child_entry(sub_pk, "child-01", temperature=1),
            {**child_entry(sub_pk, "x", temperature=1), "device_id": child_id},
        ]
        r = gateway_report(device_client, g["gw"], tok, devices)
        assert_error(r, 400, "IOTDA.021104", f"devices[1] {child_id}", g["gw"]["deviceId"])
    assert admin.properties(sub_pk, "child-01")["temperature"]["value"] == before  # nothing stored
    assert admin.messages(sub_pk, "foreign-01", "rejected") == []  # not written into another gateway's child
    gw_rejections = admin.messages(g["gw_pk"], "gw-0001", "rejected")
    assert len(gw_rejections) >= 4 and any("foreign-01" in m["reason"] for m in gw_rejections)
    # the other gateway may report its own child
    tok2 = token(device_client, g["other"])
    assert (
        gateway_report(device_client, g["other"], tok2, [child_entry(sub_pk, "foreign-01", temperature=3)]).status_code
        == 200
    )
    assert admin.properties(sub_pk, "foreign-01")["temperature"]["value"] == 3


def test_gateway_batch_is_all_or_nothing(admin: Admin, gateways: dict[str, Any], device_client: httpx.Client) -> None:
    g, sub_pk = gateways, gateways["sub_pk"]
    tok = token(device_client, g["gw"])
    names = g["children"][10:14]
    before = {n: admin.properties(sub_pk, n)["temperature"]["value"] for n in names}
    devices = [
        child_entry(sub_pk, names[0], temperature=5),  # fine
        child_entry(sub_pk, names[1], temperature=500),  # above max
        {"device_id": f"{sub_pk}_{names[2]}", "services": [{"service_id": "engine", "properties": {"rpm": 1}}]},
        {"device_id": f"{sub_pk}_{names[3]}", "services": []},  # malformed
        "junk",  # not even an object: named by its index
    ]
    r = gateway_report(device_client, g["gw"], tok, devices)
    msg = assert_error(r, 400, "IOTDA.000006", "4 of 5 sub-devices rejected, nothing stored")
    for needle in (
        names[1],
        "temperature: 500 is above max 50",
        names[2],
        "engine",
        names[3],
        "services",
        "devices[4]",
    ):
        assert needle in msg, needle
    assert names[0] not in msg
    assert any(names[1] in m["reason"] for m in admin.messages(g["gw_pk"], "gw-0001", "rejected"))
    assert {n: admin.properties(sub_pk, n)["temperature"]["value"] for n in names} == before
    assert admin.messages(sub_pk, names[0], "rejected") == []
    for name in names[1:]:  # every bad child's rejection is recorded on the child
        rejected = admin.messages(sub_pk, name, "rejected")
        assert len(rejected) == 1 and g["gw"]["deviceId"] in rejected[0]["reason"], name
        assert json.loads(rejected[0]["payload"])["device_id"] == f"{sub_pk}_{name}"
    # model problems only (no malformed entry) take the same all-or-nothing path
    # (children known by now: the one-pass path); a child's recorded payload is its entry as sent
    bad = {**child_entry(sub_pk, names[1], humidity=0), "note": "kept as sent"}
    devices = [child_entry(sub_pk, names[0], temperature=6), bad]
    msg = assert_error(gateway_report(device_client, g["gw"], tok, devices), 400, "IOTDA.000006", "1 of 2", "humidity")
    assert names[1] in msg and names[0] not in msg
    assert admin.properties(sub_pk, names[0])["temperature"]["value"] == before[names[0]]
    rejected = admin.messages(sub_pk, names[1], "rejected")
    assert len(rejected) == 2 and bad in [json.loads(m["payload"]) for m in rejected]


def test_gateway_api_needs_a_gateway(
    admin: Admin, pk: str, gateways: dict[str, Any], device_client: httpx.Client
) -> None:
    dev = new_device(admin, pk, "not-a-gw")
    tok = token(device_client, dev)
    r = gateway_report(device_client, dev, tok, [child_entry(gateways["sub_pk"], "child-00", temperature=1)])
    assert_error(r, 400, "IOTDA.021104", "not a gateway")
    # a gateway's token does not speak for its children's own endpoints
    gw_tok = token(device_client, gateways["gw"])
    child_id = f"{gateways['sub_pk']}_child-00"
    r = report(device_client, child_id, gw_tok, [{"service_id": "default", "properties": {"temperature": 1}}])
    assert_error(r, 403, "IOTDA.000004")
    r = device_client.post(
        f"/v5/devices/{gateways['gw']['deviceId']}/sys/gateway/sub-devices/properties/report",
        content=b'{"devices": "all"}',
        headers={"access_token": gw_tok},
    )
    assert_error(r, 400, "IOTDA.000006", "devices must be a non-empty list")
