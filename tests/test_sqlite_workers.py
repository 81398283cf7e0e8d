"""The embedded default with `--workers 2`: two device processes, one SQLite writer (the main process).

The seed test of test_e2e_seed.py runs again here against this module's server, so the whole seed
flow (auth, reports, history, latest values, rejections) goes through the workers and the ingest link.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body
from test_console_api import COOKIE, AlinkReporter, read_events, sign_in
from test_e2e_seed import test_seed_collector_end_to_end
from test_postgres_e2e import (
    node_of,
    replace_a_killed_worker,
    report_on_fresh_connections,
    stop_with_sigterm_and_check_the_workers_went_too,
    worker_pids,
)

__all__ = ["test_seed_collector_end_to_end"]  # collected here too


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("sqlite-workers") / "data", "--workers", "2").start()
    yield proc
    proc.stop()


def test_workers_report_into_the_one_writer(server: ServerProcess, admin: Admin) -> None:
    assert server.proc is not None
    assert len(worker_pids(server.proc.pid)) == 2
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "spread-01")
    nodes = report_on_fresh_connections(server, pk, "spread-01", dev["deviceSecret"], 32)
    assert nodes == {1, 2}  # node 0's workers are 1 and 2 (P(all 32 on one worker) ≈ 5e-10)
    base = f"/api/v1/products/{pk}/devices/spread-01"
    history = admin.c.get(f"{base}/properties/temperature/history").json()
    assert sorted(p["value"] for p in history["items"]) == sorted(i % 40 for i in range(32))
    # the main process committed them, so its in-memory running status and online state know them
    status = admin.c.get(base).json()
    assert status["online"] is True
    latest = {p["identifier"]: p["value"] for p in admin.c.get(f"{base}/properties").json()["items"]}
    assert latest["temperature"] == 31


def test_a_rejection_in_a_worker_is_recorded(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "bad-01")
    topic = f"/topic/sys/{pk}/bad-01/thing/event/property/post"
    with server.device_client() as device:
        token = device.post("/auth", json=alink_auth_body(pk, "bad-01", dev["deviceSecret"])).json()["info"]["token"]
        r = device.post(topic, content=json.dumps({"params": {"temperature": 999}}), headers={"password": token})
    assert r.json()["code"] == 30001
    messages = admin.c.get(f"/api/v1/products/{pk}/devices/bad-01/messages").json()["items"]
    assert [m["kind"] for m in messages] == ["rejected"]


def test_disabling_a_device_kills_its_token_in_every_worker_within_5_s(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "revoke-01")
    with server.device_client() as device:
        token = device.post("/auth", json=alink_auth_body(pk, "revoke-01", dev["deviceSecret"])).json()["info"]["token"]
    topic = f"/topic/sys/{pk}/revoke-01/thing/event/property/post"

    def codes(n: int) -> tuple[set[int], set[int]]:
        """Reply codes and the workers (message-ID nodes) of n reports on fresh connections."""
        seen, nodes = set(), set()
        for _ in range(n):
            with server.device_client() as device:
                reply = device.post(topic, content=b'{"params":{"temperature":20}}', headers={"password": token}).json()
            seen.add(reply["code"])
            if reply["code"] == 0:
                nodes.add(node_of(reply["info"]["messageId"]))
        return seen, nodes

    assert codes(24) == ({0}, {1, 2})  # both workers have the device cached
    assert admin.c.patch(f"/api/v1/products/{pk}/devices/revoke-01", json={"enabled": False}).status_code == 200
    deadline = time.monotonic() + 5
    while codes(24)[0] != {20003}:  # 24 fresh connections: both workers answer (P(one only) ≈ 1e-7)
        assert time.monotonic() < deadline, "a worker still accepts the disabled device's token"
        time.sleep(0.2)


def test_the_console_sees_what_every_worker_commits(server: ServerProcess, admin: Admin) -> None:
    """The main process commits the workers' reports, so its live event stream and its rates cover
    all of them (no database polling, unlike workers on PostgreSQL)."""
    dev = admin.device(admin.product(SEED_MODEL), "live-01")
    assert admin.c.get("/api/v1/stats/overview").json()["ratesScope"] == "server"
    reporter = AlinkReporter(server, dev)

    def report() -> None:
        assert reporter.post({"temperature": 31, "humidity": 41})["code"] == 0
        assert reporter.post({"temperature": 61})["code"] != 0

    path = f"/api/v1/products/{dev['productKey']}/devices/{dev['deviceName']}/events"
    with (
        httpx.Client(base_url=server.admin_url, timeout=10) as c,
        c.stream("GET", path, headers={"Cookie": f"{COOKIE}={sign_in(server)[0]}"}) as stream,
    ):
        events = read_events(stream, report, lambda events: len(events) >= 3, 10)
    assert [e[0] for e in events] == ["ready", "property", "message"], events
    assert events[1][1]["values"] == {"temperature": 31, "humidity": 41}
    assert events[2][1]["kind"] == "rejected"


def test_a_dead_worker_is_replaced(server: ServerProcess, admin: Admin) -> None:
    replace_a_killed_worker(server)
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "after-kill")
    assert report_on_fresh_connections(server, pk, "after-kill", dev["deviceSecret"], 24) == {1, 2}


def test_sigterm_stops_the_workers_with_the_server(server: ServerProcess) -> None:
    """Last but one: it stops the module's server."""
    stop_with_sigterm_and_check_the_workers_went_too(server)


def test_workers_stop_when_the_main_process_is_killed(tmp_path: Path) -> None:
    """Without the writer a worker could acknowledge nothing: it must not keep the port."""
    server = ServerProcess(tmp_path / "data", "--workers", "2").start()
    assert server.proc is not None
    pids = worker_pids(server.proc.pid)
    assert len(pids) == 2
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in pids)
