"""Limits of the device listener, each answered in the protocol's own shape and counted in /metrics:
per-device rate limits (per product), header/body read timeouts, header size, connections per address.

The server takes its limits from a TOML file and the environment, so this also shows those layers
reaching a running server."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import iotda_auth_body
from test_ops_util import Scrape, alink_token, post_props, scrape

MAX_CONN = 6


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("ops-limits")
    toml = base / "iotgate.toml"
    toml.write_text("[iotgate]\nheader_timeout_s = 2\nbody_timeout_s = 2\nmax_header_bytes = 2048\n")
    env = {"IOTGATE_MAX_CONNECTIONS_PER_IP": str(MAX_CONN)}
    proc = ServerProcess(base / "data", "--device-plain-http", "--config", str(toml), env=env).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def adm(srv: ServerProcess) -> Iterator[Admin]:
    with srv.admin() as client:
        yield Admin(client)


class Raw:
    """A plain socket to the device port that reads one reply (head + Content-Length body)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def __enter__(self) -> Raw:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def reply(self, timeout: float = 10) -> tuple[int, dict[str, str], dict[str, Any]]:
        self.sock.settimeout(timeout)
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed without a reply; got {self.buf!r}"
            self.buf += chunk
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        size = int(headers["content-length"])
        while len(rest) < size:
            chunk = self.sock.recv(65536)
            assert chunk
            rest += chunk
        return int(lines[0].split()[1]), headers, json.loads(rest[:size])

    def closed(self, timeout: float = 10) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionError, OSError):
            return True


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


def test_rate_limit_per_product(srv: ServerProcess, adm: Admin) -> None:
    slow_pk = adm.product(SEED_MODEL, name="slow")
    r = adm.c.patch(f"/api/v1/products/{slow_pk}", json={"ratePerSecond": 1})
    assert r.status_code == 200 and r.json()["ratePerSecond"] == 1
    fast_pk = adm.product(SEED_MODEL, name="fast")  # the default: 1000/s
    slow, fast = adm.device(slow_pk, "slow-dev"), adm.device(fast_pk, "fast-dev")
    before = scrape(srv)
    with srv.device_client() as device:
        slow_token = alink_token(device, slow_pk, "slow-dev", slow["deviceSecret"])
        fast_token = alink_token(device, fast_pk, "fast-dev", fast["deviceSecret"])
        slow_codes = [post_props(device, slow_token, slow_pk, "slow-dev", {"temperature": 1}) for _ in range(10)]
        fast_codes = [post_props(device, fast_token, fast_pk, "fast-dev", {"temperature": 1}) for _ in range(10)]
        # the same bucket holds for the device's other dialect: IoTDA's 403 IOTDA.021101
        auth = device.post("/v5/device-auth", json=iotda_auth_body(slow["deviceId"], slow["deviceSecret"]))
        iotda_statuses = []
        for _ in range(5):
            r = device.post(
                f"/v5/devices/{slow['deviceId']}/sys/messages/up",
                content=b"x",
                headers={"access_token": auth.json()["access_token"]},
            )
            iotda_statuses.append((r.status_code, r.json().get("error_code") if r.content else None))
    limited = [c for c in slow_codes if c["code"] == 40000]
    assert limited and all("request too many" in c["message"] for c in limited)
    assert any(c["code"] == 0 for c in slow_codes)
    assert all(c["code"] == 0 for c in fast_codes)
    assert (403, "IOTDA.021101") in iotda_statuses
    after = scrape(srv)
    assert delta(before, after, "iotgate_device_limit_events_total", limit="rate_limited") == len(limited) + sum(
        1 for s in iotda_statuses if s[0] == 403
    )
    assert delta(before, after, "iotgate_device_requests_total", endpoint="topic", result="40000") == len(limited)


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/auth", "alink"), ("/v5/device-auth", "iotda")],
)
def test_header_timeout_is_a_408_in_the_dialects_shape(srv: ServerProcess, path: str, shape: str) -> None:
    before = scrape(srv)
    with Raw(srv.device_port) as w:
        w.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode())
        for _ in range(20):  # one byte every 0.2 s: the whole header never arrives within 2 s
            try:
                w.sock.sendall(b"a")
            except OSError:
                break
            time.sleep(0.2)
            if w.buf or _readable(w.sock):
                break
        status, headers, body = w.reply()
        assert status == 408 and headers["connection"] == "close"
        if shape == "alink":
            assert body["code"] == 10001 and "header not received within 2 s" in body["message"]
        else:
            assert body["error_code"] == "IOTDA.000006" and "header not received within 2 s" in body["error_msg"]
        assert w.closed()
    assert delta(before, scrape(srv), "iotgate_device_limit_events_total", limit="header_timeout") == 1


def test_body_timeout(srv: ServerProcess) -> None:
    before = scrape(srv)
    with Raw(srv.device_port) as w:
        w.sock.sendall(
            b"POST /auth HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        status, _, body = w.reply(timeout=15)
        assert status == 408 and body["code"] == 10001 and "body not received within 2 s" in body["message"]
        assert w.closed()
    assert delta(before, scrape(srv), "iotgate_device_limit_events_total", limit="body_timeout") == 1


def test_header_size_limit(srv: ServerProcess) -> None:
    before = scrape(srv)
    for path, code_key in (("/topic/a/b/user/c", "code"), ("/v5/devices/x/sys/messages/up", "error_code")):
        with Raw(srv.device_port) as w:
            w.sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Pad: {'p' * 3000}\r\n\r\n".encode())
            status, headers, body = w.reply()
            assert status == 431 and headers["connection"] == "close"
            assert body[code_key] in (10001, "IOTDA.000006") and "header is too large" in json.dumps(body)
    assert delta(before, scrape(srv), "iotgate_device_limit_events_total", limit="header_too_large") == 2


def test_connections_per_address(srv: ServerProcess) -> None:
    before = scrape(srv)
    held = [socket.create_connection(("127.0.0.1", srv.device_port), timeout=10) for _ in range(MAX_CONN)]
    try:
        # wait until the server has admitted all of them, then one more is refused
        deadline = time.monotonic() + 5
        while scrape(srv).value("iotgate_device_connections") < MAX_CONN and time.monotonic() < deadline:
            time.sleep(0.02)
        extra = Raw(srv.device_port)
        extra.sock.sendall(b"POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert extra.closed(timeout=5) and extra.buf == b""
        extra.sock.close()
    finally:
        for s in held:
            s.close()
    assert delta(before, scrape(srv), "iotgate_device_limit_events_total", limit="connections_per_ip") >= 1
    # with the connections gone, the address is served again
    deadline = time.monotonic() + 5
    while scrape(srv).value("iotgate_device_connections") > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    with Raw(srv.device_port) as w:
        w.sock.sendall(b"POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert w.reply()[0] == 404


def _readable(sock: socket.socket) -> bool:
    import select

    return bool(select.select([sock], [], [], 0)[0])
