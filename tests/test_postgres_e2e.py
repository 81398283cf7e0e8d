"""The seed flow end to end on PostgreSQL, served by two device-worker processes (`--workers 2`).

The seed test of test_e2e_seed.py is imported so it runs again here, against this module's `server`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.secretbox import SecretBox
from iotgate.auth.signing import alink_auth_body
from iotgate.ingest.ids import NODE_BITS, SEQ_BITS
from test_e2e_seed import test_seed_collector_end_to_end

__all__ = ["test_seed_collector_end_to_end"]  # collected here too
MASTER_KEY = SecretBox.new_key()  # every process on this module's database shares it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("pg") / "data"
    proc = ServerProcess(
        data, "--database", pg_url, "--workers", "2", "--node-id", "10", env={"IOTGATE_MASTER_KEY": MASTER_KEY}
    ).start()
    yield proc
    proc.stop()


def worker_pids(parent: int) -> list[int]:
    """The device-worker children of the server process (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    out = []
    for pid in children:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(int(pid))
    return out


def node_of(message_id: int) -> int:
    return (message_id >> SEQ_BITS) & ((1 << NODE_BITS) - 1)


def report_on_fresh_connections(server: ServerProcess, pk: str, dn: str, secret: str, n: int) -> set[int]:
    """n reports, each on a new connection (the kernel spreads connections over the workers)."""
    nodes = set()
    topic = f"/topic/sys/{pk}/{dn}/thing/event/property/post"
    with server.device_client() as first:
        token = first.post("/auth", json=alink_auth_body(pk, dn, secret)).json()["info"]["token"]
    for i in range(n):
        with server.device_client() as device:
            body = json.dumps({"id": str(i), "params": {"temperature": i % 40}})
            r = device.post(topic, content=body, headers={"password": token})
            assert r.json()["code"] == 0, r.text
            nodes.add(node_of(r.json()["info"]["messageId"]))
    return nodes


def test_workers_share_the_port_and_each_has_its_node_id(server: ServerProcess, admin: Admin) -> None:
    assert server.proc is not None
    assert len(worker_pids(server.proc.pid)) == 2
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "spread-01")
    nodes = report_on_fresh_connections(server, pk, "spread-01", dev["deviceSecret"], 32)
    assert nodes == {11, 12}  # --node-id 10: workers are 11 and 12 (P(all 32 on one worker) ≈ 5e-10)
    history = admin.c.get(f"/api/v1/products/{pk}/devices/spread-01/properties/temperature/history").json()
    assert len(history["items"]) == 32


def replace_a_killed_worker(server: ServerProcess) -> None:
    """SIGKILL one device worker; return once the main process has started another and is ready."""
    assert server.proc is not None
    victim = worker_pids(server.proc.pid)[0]
    subprocess.run(["kill", "-KILL", str(victim)], check=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = worker_pids(server.proc.pid)
        ready = httpx.get(server.admin_url + "/readyz", timeout=5)
        if len(now) == 2 and victim not in now and ready.status_code == 200:
            return
        time.sleep(0.2)
    pytest.fail(f"worker was not replaced: {worker_pids(server.proc.pid)}")


def stop_with_sigterm_and_check_the_workers_went_too(server: ServerProcess) -> None:
    assert server.proc is not None
    pids = worker_pids(server.proc.pid)
    assert len(pids) == 2
    assert server.stop(signal.SIGTERM) == 0
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def test_a_dead_worker_is_replaced(server: ServerProcess, admin: Admin) -> None:
    replace_a_killed_worker(server)
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "after-kill")
    assert report_on_fresh_connections(server, pk, "after-kill", dev["deviceSecret"], 24) == {11, 12}


def test_a_killed_workers_running_status_is_replayed_by_its_successor(
    tmp_path: Path, pg_url: str, server: ServerProcess, admin: Admin
) -> None:
    """Values a worker committed but never flushed (its flush is an hour away) reach the admin API
    once the worker is SIGKILLed and its successor starts (storage/pg_running_status.py)."""
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "replay-01")
    slow = ServerProcess(
        tmp_path / "data", "--database", pg_url, "--workers", "2", "--node-id", "40",
        "--running-status-flush-ms", "3600000", env={"IOTGATE_MASTER_KEY": MASTER_KEY},
    ).start()  # fmt: skip
    try:
        topic = f"/topic/sys/{pk}/replay-01/thing/event/property/post"
        with slow.device_client() as device:
            token = device.post("/auth", json=alink_auth_body(pk, "replay-01", dev["deviceSecret"])).json()
            for t in (30, 31, 32):
                body = json.dumps({"id": str(t), "params": {"temperature": t, "humidity": t + 10}})
                r = device.post(topic, content=body, headers={"password": token["info"]["token"]})
                assert r.json()["code"] == 0, r.text
        with slow.admin() as c:
            slow_admin = Admin(c)
            assert [v for _, v in slow_admin.history(pk, "replay-01")] == [32, 31, 30]  # history: at once
            before = slow_admin.properties(pk, "replay-01")
            assert before["temperature"].get("value") is None  # committed, not yet flushed
            assert slow.proc is not None
            for pid in worker_pids(slow.proc.pid):
                subprocess.run(["kill", "-KILL", str(pid)], check=True)
            status = slow_admin.properties_when(pk, "replay-01", within_s=30, temperature=32, humidity=42)
            assert status["temperature"]["value"] == 32 and status["humidity"]["value"] == 42
    finally:
        slow.stop()


def test_sigterm_stops_the_workers_with_the_server(server: ServerProcess) -> None:
    """Last in this module: it stops the module's server."""
    stop_with_sigterm_and_check_the_workers_went_too(server)
