"""Hypothesis against the device listener of a real server, both dialects: random paths, headers and
bodies (raw bytes, arbitrary JSON, and mutations of valid requests with valid tokens, so that the
fuzzer gets past authentication). Every request must get an HTTP/1.1 reply that is never a 5xx and
is shaped like its protocol's answer (Alink `{"code", "message"}`, IoTDA `{"error_code", "error_msg"}`
or an IoTDA success); the server must stay up and log no traceback."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import hypothesis
import pytest
from hypothesis import strategies as st

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body, iotda_auth_body
from test_ops_util import alink_token

EXAMPLES = int(os.environ.get("IOTGATE_FUZZ_EXAMPLES", "150"))
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    derandomize=not os.environ.get("IOTGATE_FUZZ_RANDOM"),
    database=None,
)


class Device:
    def __init__(self, srv: ServerProcess, pk: str, dn: str, secret: str, device_id: str, gateway: bool) -> None:
        self.pk, self.dn, self.secret, self.device_id = pk, dn, secret, device_id
        with srv.device_client() as c:
            self.alink = alink_token(c, pk, dn, secret)
            r = c.post("/v5/device-auth", json=iotda_auth_body(device_id, secret))
            assert r.status_code == 200, r.text
            self.iotda = r.json()["access_token"]
        self.gateway = gateway


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, list[Device]]]:
    srv = ServerProcess(tmp_path_factory.mktemp("fuzz-dev") / "data", "--device-plain-http").start()
    with srv.admin() as client:
        adm = Admin(client)
        pk = adm.product(SEED_MODEL)
        gw_pk = adm.product(SEED_MODEL, node_type="gateway", name="gw")
        sub_pk = adm.product(SEED_MODEL, node_type="sub-device", name="sub")
        direct = adm.device(pk, "fuzz-direct")
        gw = adm.device(gw_pk, "fuzz-gw")
        adm.device(sub_pk, "fuzz-sub")
        r = client.post(
            f"/api/v1/products/{gw_pk}/devices/fuzz-gw/sub-devices",
            json={"devices": [{"productKey": sub_pk, "deviceName": "fuzz-sub"}]},
        )
        assert r.status_code == 200, r.text
    devices = [
        Device(srv, pk, "fuzz-direct", direct["deviceSecret"], direct["deviceId"], False),
        Device(srv, gw_pk, "fuzz-gw", gw["deviceSecret"], gw["deviceId"], True),
    ]
    devices[1].sub_id = f"{sub_pk}_fuzz-sub"  # type: ignore[attr-defined]
    yield srv, devices
    log = srv.log_path.read_text(errors="replace")
    srv.stop()
    assert "Traceback" not in log and '"level":"error"' not in log, log[-4000:]


# -- strategies --------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=12,
)
idents = st.sampled_from(["temperature", "humidity", "nosuch", "", "temperature.x", "a" * 70])
values = st.one_of(json_values, st.integers(-20, 120))
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)


@st.composite
def alink_request(draw: st.DrawFn, devices: list[Device]) -> tuple[str, dict[str, str], bytes]:
    d = draw(st.sampled_from(devices))
    kind = draw(st.sampled_from(["auth", "prop", "event", "batch", "custom", "ota", "info", "other"]))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "application/octet-stream", "text/plain"]))}
    if kind == "auth":
        base: dict[str, Any] = alink_auth_body(
            d.pk, d.dn, d.secret, sign_method=draw(st.sampled_from(["hmacsha1", "hmacmd5", "hmacsha256"]))
        )
        body_doc = draw(mutate(base))
        return "/auth" + draw(st.sampled_from(["", "?_v=sdk-c-4.1.0&", "?x"])), headers, encode(draw, body_doc)
    headers["password"] = draw(st.sampled_from([d.alink] * 6 + [d.alink[:-2] + "xx", "", "garbage"]) | header_text)
    pk, dn = draw(st.sampled_from([(d.pk, d.dn)] * 6 + [(d.pk, "other"), ("x", d.dn)]))
    if kind == "prop":
        params = draw(
            st.dictionaries(idents, values | st.fixed_dictionaries({"value": values, "time": json_values}), max_size=4)
        )
        doc = {"id": "1", "version": "1.0", "params": params}
        return f"/topic/sys/{pk}/{dn}/thing/event/property/post", headers, encode(draw, draw(mutate(doc)))
    if kind == "event":
        ident = draw(st.sampled_from(["alarm", "nosuch", ""]))
        doc = {
            "id": "2",
            "params": draw(st.sampled_from([{"value": {}, "time": 1}, {}]))
            | draw(st.dictionaries(idents, values, max_size=3)),
        }
        return f"/topic/sys/{pk}/{dn}/thing/event/{ident}/post", headers, encode(draw, draw(mutate(doc)))
    if kind == "batch":
        props = draw(
            st.dictionaries(
                idents, st.lists(st.fixed_dictionaries({"value": values, "time": json_values}), max_size=3), max_size=3
            )
        )
        doc = {
            "id": "3",
            "params": {"properties": props, "events": draw(st.dictionaries(idents, json_values, max_size=2))},
        }
        return f"/topic/sys/{pk}/{dn}/thing/event/property/batch/post", headers, encode(draw, draw(mutate(doc)))
    if kind == "custom":
        return (
            f"/topic/{pk}/{dn}/user/{draw(st.sampled_from(['up', '', 'a/b']))}",
            headers,
            draw(st.binary(max_size=200)),
        )
    if kind == "ota":
        return (
            f"/topic/ota/device/inform/{pk}/{dn}",
            headers,
            encode(draw, draw(mutate({"id": "1", "params": {"version": "1.0"}}))),
        )
    if kind == "info":
        doc = {
            "id": "1",
            "params": [{"attrKey": "SYS_SDK_LANGUAGE", "attrValue": "C"}],
            "method": "thing.deviceinfo.update",
        }
        return f"/topic/sys/{pk}/{dn}/thing/deviceinfo/update", headers, encode(draw, draw(mutate(doc)))
    path = "/topic" + draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60))
    return path, headers, draw(st.binary(max_size=100))


@st.composite
def iotda_request(draw: st.DrawFn, devices: list[Device]) -> tuple[str, dict[str, str], bytes]:
    d = draw(st.sampled_from(devices))
    kind = draw(st.sampled_from(["auth", "props", "msg", "gateway", "other"]))
    headers = {"Content-Type": "application/json"}
    if kind == "auth":
        doc = draw(mutate(iotda_auth_body(d.device_id, d.secret, sign_type=draw(st.sampled_from([0, 1])))))
        return "/v5/device-auth", headers, encode(draw, doc)
    headers[draw(st.sampled_from(["access_token", "access-token", "Access_Token"]))] = draw(
        st.sampled_from([d.iotda] * 6 + [d.iotda[:-1], ""]) | header_text
    )
    device_id = draw(st.sampled_from([d.device_id] * 6 + [d.device_id + "x", "%00", "a/b"]))
    if kind == "props":
        services = draw(
            st.lists(
                st.fixed_dictionaries(
                    {
                        "service_id": st.sampled_from(["default", "x", ""]),
                        "properties": st.dictionaries(idents, values, max_size=3),
                    },
                    optional={"event_time": st.sampled_from(["20240101T000000Z", "bad", "2024-01-01T00:00:00.000Z"])},
                ),
                max_size=3,
            )
        )
        return (
            f"/v5/devices/{device_id}/sys/properties/report",
            headers,
            encode(draw, draw(mutate({"services": services}))),
        )
    if kind == "msg":
        return f"/v5/devices/{device_id}/sys/messages/up", headers, draw(st.binary(max_size=200))
    if kind == "gateway":
        sub = getattr(d, "sub_id", "nobody_x")
        entry = {
            "device_id": draw(st.sampled_from([sub, d.device_id, "nobody_x"])),
            "services": [{"service_id": "default", "properties": draw(st.dictionaries(idents, values, max_size=2))}],
        }
        doc = {"devices": draw(st.lists(st.just(entry) | json_values, max_size=3))}
        return (
            f"/v5/devices/{device_id}/sys/gateway/sub-devices/properties/report",
            headers,
            encode(draw, draw(mutate(doc))),
        )
    path = "/v5/" + draw(st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=60))
    return path, headers, draw(st.binary(max_size=100))


def mutate(doc: dict[str, Any]) -> st.SearchStrategy[Any]:
    """The document, or it with one field dropped, replaced by any JSON value, or one added; or any JSON."""
    keys = sorted(doc)

    @st.composite
    def changed(draw: st.DrawFn) -> Any:
        out = dict(doc)
        how = draw(st.sampled_from(["same", "same", "same", "drop", "replace", "add", "any"]))
        if how == "drop" and keys:
            out.pop(draw(st.sampled_from(keys)))
        elif how == "replace" and keys:
            out[draw(st.sampled_from(keys))] = draw(json_values)
        elif how == "add":
            out[draw(st.text(max_size=10))] = draw(json_values)
        elif how == "any":
            return draw(json_values)
        return out

    return changed()


def encode(draw: st.DrawFn, doc: Any) -> bytes:
    raw = json.dumps(doc).encode()
    how = draw(st.sampled_from(["json", "json", "json", "nul", "truncate", "bytes", "badutf8", "deep"]))
    if how == "badutf8":  # invalid UTF-8 inside a JSON string
        return raw.replace(b'"', b'"\xd8\xff', 1) if b'"' in raw else b'"\xc3"'
    if how == "deep":  # nesting deeper than any decoder's recursion limit
        depth = draw(st.sampled_from([1000, 20000]))
        return b'{"params":' + b"[" * depth + b"]" * depth + b"}"
    if how == "nul":
        return raw + b"\x00"
    if how == "truncate":
        return raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    if how == "bytes":
        return draw(st.binary(max_size=100))
    return raw


# -- the wire ----------------------------------------------------------------------------------
def exchange(port: int, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    head = f"{method} {path} HTTP/1.1\r\nHost: fuzz\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode("latin-1", "replace") + b"\r\n" + body)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            assert chunk, f"connection closed without a reply to {method} {path!r}"
            buf += chunk
        head_bytes, _, rest = buf.partition(b"\r\n\r\n")
        lines = head_bytes.split(b"\r\n")
        assert lines[0].startswith(b"HTTP/1.1 "), lines[0]
        length = next(int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"Content-Length: "))
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk
            rest += chunk
        return int(lines[0].split()[1]), rest[:length]


def check_shape(path: str, status: int, body: bytes) -> None:
    assert status < 500, (path, status, body)
    if path.startswith("/v5/"):
        if status == 200:
            assert body == b"" or "access_token" in json.loads(body), body
            return
        doc = json.loads(body)
        assert doc["error_code"].startswith("IOTDA.") and doc["error_msg"], doc
    else:
        doc = json.loads(body)
        assert isinstance(doc["code"], int) and isinstance(doc["message"], str) and doc["message"], doc
        assert (doc["code"] == 0) == (
            status == 200 and ("token" in doc.get("info", {}) or "messageId" in doc.get("info", {}))
        ), doc


# -- tests -------------------------------------------------------------------------------------
def test_alink_dialect_never_fails(env: tuple[ServerProcess, list[Device]]) -> None:
    srv, devices = env

    @SETTINGS
    @hypothesis.given(req=alink_request(devices), method=st.sampled_from(["POST"] * 9 + ["GET", "PUT"]))
    def run(req: tuple[str, dict[str, str], bytes], method: str) -> None:
        path, headers, body = req
        status, reply = exchange(srv.device_port, method, path, headers, body)
        check_shape(path.split("?")[0], status, reply)

    run()
    assert srv.proc is not None and srv.proc.poll() is None


def test_iotda_dialect_never_fails(env: tuple[ServerProcess, list[Device]]) -> None:
    srv, devices = env

    @SETTINGS
    @hypothesis.given(req=iotda_request(devices), method=st.sampled_from(["POST"] * 9 + ["GET", "DELETE"]))
    def run(req: tuple[str, dict[str, str], bytes], method: str) -> None:
        path, headers, body = req
        status, reply = exchange(srv.device_port, method, path, headers, body)
        check_shape(path, status, reply)

    run()
    assert srv.proc is not None and srv.proc.poll() is None


def test_raw_bytes_never_crash_the_listener(env: tuple[ServerProcess, list[Device]]) -> None:
    """Arbitrary bytes after a plausible request line: a reply in Alink's shape or a plain close."""
    srv, _ = env

    @SETTINGS
    @hypothesis.given(
        start=st.sampled_from(
            [b"POST /auth HTTP/1.1\r\n", b"POST /v5/device-auth HTTP/1.1\r\n", b"", b"GET / HTTP/1.0\r\n"]
        ),
        junk=st.binary(max_size=300),
    )
    def run(start: bytes, junk: bytes) -> None:
        with socket.create_connection(("127.0.0.1", srv.device_port), timeout=30) as s:
            s.sendall(start + junk + b"\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            buf = b""
            while chunk := s.recv(65536):
                buf += chunk
        if buf:
            assert buf.startswith(b"HTTP/1.1 ") and not buf.startswith(b"HTTP/1.1 5"), buf[:200]

    run()
    with srv.device_client() as c:  # still serving
        assert c.post("/auth", json={}).json()["code"] == 10001
