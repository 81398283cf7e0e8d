"""The forwarding sink process (`forward_sink_process`): rounds go to a real child process and come
back as the same outcomes a sink gives in-process; a host that dies mid-round makes that round's
rows possibly-sent (redelivered), and a new host takes over. End to end: the sink process of a
running server SIGKILLed under load loses nothing and keeps per-device order."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body
from iotgate.forward import sinkhost
from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinkhost import RemoteSink, SinkHost
from iotgate.forward.targets import parse_target
from test_forward_e2e import MODEL, QUICK, create_rule, per_device, stats
from test_forward_receiver import WebhookReceiver, wait_for
from test_forward_storage import row as outbox_row


def row(device: int, n: int) -> OutboxRow:
    return outbox_row(7, device, n)  # body {"m": n}


def spawned_children(pid: int) -> list[int]:
    """Child processes started by multiprocessing spawn (not its resource tracker)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"spawn_main" in cmdline:
            out.append(int(child))
    return out


async def test_rounds_go_through_the_sink_process_and_survive_its_death() -> None:
    receiver = WebhookReceiver().start()
    host = SinkHost("warning")
    try:
        await host.start()
        spec = parse_target({"type": "webhook", "url": receiver.url}, "target")
        sink = RemoteSink(host, spec, 7, 3, 4)
        first_pid = host.pid
        assert first_pid and first_pid != os.getpid()

        outcomes = await sink.send_round([[row(1, 1), row(1, 2)], [row(2, 3)]])
        assert [(done, err) for done, err in outcomes] == [(2, None), (1, None)]
        got = [json.loads(b)["m"] for _, b in receiver.records]
        assert sorted(got) == [1, 2, 3] and got.index(1) < got.index(2)  # devices in parallel, each in order
        assert all(h["x-iotgate-rule-id"] == "3" for h, _ in receiver.records)

        # a target that refuses: the host reports the error as the in-process sink would
        receiver.status = 500
        [(done, err)] = await sink.send_round([[row(3, 4), row(3, 5)]])
        assert done == 0 and err is not None and "HTTP 500" in str(err) and not err.uncertain
        receiver.status = 200

        # the host killed while a round waits on a slow target: every row may have been sent
        receiver.paused = True
        pending = asyncio.ensure_future(sink.send_round([[row(4, 6), row(4, 7)], [row(5, 8)]]))
        await asyncio.to_thread(wait_for, lambda: receiver.waiting >= 1, 10, what="a request in flight")
        os.kill(first_pid, signal.SIGKILL)
        lost = await asyncio.wait_for(pending, 10)
        assert [(done, bool(err and err.uncertain), err.sent_after if err else 0) for done, err in lost] == [
            (0, True, 1),
            (0, True, 0),
        ]
        receiver.paused = False

        # a new host takes over; until it is up, rounds fail without having sent anything
        async def delivered_again() -> bool:
            [(done, err)] = await sink.send_round([[row(6, 9)]])
            assert err is None or not err.uncertain, err  # never "maybe sent" while no host runs
            return done == 1

        deadline = time.monotonic() + 20
        while not await delivered_again():
            assert time.monotonic() < deadline, "no new sink process"
            await asyncio.sleep(0.2)
        assert host.pid not in (None, first_pid)
        await sink.close()
    finally:
        await host.stop()
        receiver.stop()
    assert host.proc is not None and not host.proc.is_alive()


async def test_large_rounds_go_in_parts_in_device_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sinkhost, "ROUND_BYTES", 16)  # each body is 7-8 bytes: two rows per part
    receiver = WebhookReceiver().start()
    host = SinkHost("warning")
    try:
        await host.start()
        sink = RemoteSink(host, parse_target({"type": "webhook", "url": receiver.url}, "t"), 7, 3, 4)
        devices = [[row(1, n) for n in range(1, 6)], [row(2, n) for n in range(10, 13)]]
        assert await sink.send_round(devices) == [(5, None), (3, None)]
        assert [json.loads(b)["m"] for _, b in receiver.records] == [1, 2, 3, 4, 5, 10, 11, 12]
        receiver.status = 500
        [(done, err)] = await sink.send_round([[row(3, n) for n in range(20, 25)]])
        assert done == 0 and err is not None and "HTTP 500" in str(err)
        assert len(receiver.records) == 8  # refused requests are not recorded
    finally:
        await host.stop()
        receiver.stop()


def test_sink_process_killed_under_load_loses_nothing(tmp_path: Path) -> None:
    receiver = WebhookReceiver(delay=0.002).start()
    srv = ServerProcess(tmp_path / "data", *QUICK).start()
    try:
        with srv.admin() as client:
            admin = Admin(client)
            pk = admin.product(MODEL)
            assert srv.proc is not None and spawned_children(srv.proc.pid) == []  # no rule, no sink process
            rule = create_rule(
                admin, source="property", productKey=pk, targets=[{"type": "webhook", "url": receiver.url}]
            )
            [host_pid] = wait_for(lambda: spawned_children(srv.proc.pid), 20, what="the sink process")
            creds = [admin.device(pk, f"sk-{i}") for i in range(3)]
            acked: set[str] = set()
            lock = threading.Lock()

            def send(c: dict[str, Any]) -> None:
                with httpx.Client(base_url=srv.device_url, timeout=10) as http:
                    auth = alink_auth_body(pk, c["deviceName"], c["deviceSecret"])
                    token = http.post("/auth", json=auth).json()["info"]["token"]
                    for i in range(150):
                        body = json.dumps({"id": str(i), "params": {"seq": i, "temperature": 1.5}})
                        r = http.post(
                            f"/topic/sys/{pk}/{c['deviceName']}/thing/event/property/post",
                            content=body,
                            headers={"password": token},
                        )
                        assert r.json()["code"] == 0, r.text
                        with lock:
                            acked.add(str(r.json()["info"]["messageId"]))

            threads = [threading.Thread(target=send, args=(c,)) for c in creds]
            for t in threads:
                t.start()
            wait_for(lambda: len(receiver.bodies()) >= 60, 30, what="deliveries before the kill")
            os.kill(host_pid, signal.SIGKILL)
            for t in threads:
                t.join(60)
            assert len(acked) == 450  # ingest went on while the sink process was gone
            wait_for(lambda: {b["messageId"] for b in receiver.bodies()} >= acked, 60, 0.1, "everything delivered")
            doc = wait_for(lambda: (s := stats(admin, rule["id"]))["queued"] + s["inFlight"] == 0 and s, 30)
            [new_pid] = spawned_children(srv.proc.pid)
            assert new_pid != host_pid
        bodies = receiver.bodies()
        for seqs in per_device(bodies, pk).values():  # first arrivals: in order, no gaps
            assert seqs == list(range(150))
        duplicates = len(bodies) - len({b["messageId"] for b in bodies})
        t = doc["targets"][0]
        assert duplicates <= t["redelivered"], (duplicates, t)
        assert t["delivered"] == t["matched"] == 450
    finally:
        srv.stop()
        receiver.stop()


def test_sinks_can_run_in_the_main_process(tmp_path: Path) -> None:
    receiver = WebhookReceiver().start()
    srv = ServerProcess(tmp_path / "data", *QUICK, "--no-forward-sink-process").start()
    try:
        with srv.admin() as client:
            admin = Admin(client)
            pk = admin.product(MODEL)
            rule = create_rule(admin, source="property", targets=[{"type": "webhook", "url": receiver.url}])
            c = admin.device(pk, "inproc-1")
            with httpx.Client(base_url=srv.device_url, timeout=10) as http:
                token = http.post("/auth", json=alink_auth_body(pk, "inproc-1", c["deviceSecret"])).json()["info"]
                for i in range(5):
                    r = http.post(
                        f"/topic/sys/{pk}/inproc-1/thing/event/property/post",
                        content=json.dumps({"id": str(i), "params": {"seq": i}}),
                        headers={"password": token["token"]},
                    )
                    assert r.json()["code"] == 0
            wait_for(lambda: stats(admin, rule["id"])["delivered"] == 5, 20, what="deliveries")
            assert srv.proc is not None and spawned_children(srv.proc.pid) == []
        assert [b["values"]["seq"] for b in receiver.bodies()] == [0, 1, 2, 3, 4]
    finally:
        srv.stop()
        receiver.stop()
