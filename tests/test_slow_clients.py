"""Slowloris: 1,000 connections trickle their headers in one byte at a time while a device reports
normally. The device is unaffected (every report is committed) and the server cuts every slow
connection at --header-timeout-s (2 s here) with a 408. Bounded: the slow clients give up after 20 s."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body
from test_ops_util import scrape

SLOW = 1000
GIVE_UP_S = 20.0


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("slow") / "data", "--device-plain-http", "--header-timeout-s", "2"
    ).start()
    yield proc
    proc.stop()


async def slow_client(port: int, stop: asyncio.Event) -> tuple[str, float]:
    """Send a header one byte per 0.3 s; return how the connection ended and after how long."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /auth HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
        await writer.drain()
        read = asyncio.ensure_future(reader.read(4096))
        while time.monotonic() - started < GIVE_UP_S and not stop.is_set():
            done, _ = await asyncio.wait({read}, timeout=0.3)
            if done:
                try:
                    data = read.result()
                    if not data:
                        return "closed", time.monotonic() - started
                    rest = await asyncio.wait_for(reader.read(), 5)  # the reply, then EOF
                except ConnectionError:
                    return "reset", time.monotonic() - started
                return (data + rest).split(b"\r\n", 1)[0].decode(), time.monotonic() - started
            try:
                writer.write(b"a")
                await writer.drain()
            except ConnectionError:
                return "reset", time.monotonic() - started
        read.cancel()
        return "still open", time.monotonic() - started
    finally:
        writer.close()


def report_loop(srv: ServerProcess, pk: str, secret: str, stop_after: float) -> list[int]:
    """A normal device: authenticate, then report until the slow clients are done; return codes."""
    codes = []
    with httpx.Client(base_url=srv.device_url, timeout=30) as c:
        token = c.post("/auth", json=alink_auth_body(pk, "steady", secret)).json()["info"]["token"]
        deadline = time.monotonic() + stop_after
        i = 0
        while time.monotonic() < deadline and i < 400:
            body = json.dumps({"id": str(i), "params": {"temperature": i % 40, "humidity": 50}})
            r = c.post(
                f"/topic/sys/{pk}/steady/thing/event/property/post",
                content=body,
                headers={"password": token, "Content-Type": "application/octet-stream"},
            )
            codes.append(r.json()["code"])
            i += 1
            time.sleep(0.05)
    return codes


async def run_slowloris(srv: ServerProcess, pk: str, secret: str) -> tuple[list[tuple[str, float]], list[int]]:
    stop = asyncio.Event()
    clients = []
    for _ in range(SLOW // 100):  # open them in waves, as an attacker's script would
        clients += [asyncio.ensure_future(slow_client(srv.device_port, stop)) for _ in range(100)]
        await asyncio.sleep(0.05)
    device = asyncio.get_running_loop().run_in_executor(None, report_loop, srv, pk, secret, 4.0)
    results = await asyncio.gather(*clients)
    codes = await device
    return list(results), codes


@pytest.mark.timeout(120)
def test_slow_headers_do_not_hurt_a_reporting_device(srv: ServerProcess) -> None:
    with srv.admin() as client:
        adm = Admin(client)
        pk = adm.product(SEED_MODEL)
        secret = adm.device(pk, "steady")["deviceSecret"]
    before = scrape(srv).value("iotgate_device_limit_events_total", limit="header_timeout")

    results, codes = asyncio.run(run_slowloris(srv, pk, secret))

    # the device: every report answered with success while 1,000 slow connections were open
    assert len(codes) >= 10 and set(codes) == {0}, codes
    # every slow connection was cut by the server with a 408, none outlived the bound
    outcomes: dict[str, int] = {}
    for how, _ in results:
        outcomes[how] = outcomes.get(how, 0) + 1
    assert outcomes == {"HTTP/1.1 408 Request Timeout": SLOW}, outcomes
    assert all(after < GIVE_UP_S for _, after in results)
    # ...and counted
    assert scrape(srv).value("iotgate_device_limit_events_total", limit="header_timeout") - before == SLOW
    # the device's reports are all stored
    with srv.admin() as client:
        r = client.get(f"/api/v1/products/{pk}/devices/steady/properties/temperature/history", params={"limit": 1000})
        assert len(r.json()["items"]) == len(codes)
