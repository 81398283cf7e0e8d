"""Forwarding end to end through the real `iotgate serve` process: rules over the API and the CLI,
reports from devices, deliveries to a local webhook receiver and the real brokers.

Covered: N reports -> N deliveries in per-device order (webhook + MQTT); a filter selects exactly
the matching messages; a target down under load gets everything once it is back; dead letters are
listed and replayed; lifecycle events; events and raw messages to NATS, RabbitMQ and Redis; the
server SIGKILLed mid-stream delivers everything acknowledged after a restart (duplicates counted);
counters add up.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body
from test_forward_receiver import WebhookReceiver, free_port, service_up, wait_for

MODEL: dict[str, Any] = {
    "properties": [
        {"identifier": "seq", "name": "Seq", "accessMode": "r", "dataType": {"type": "int32", "specs": {"min": 0, "max": 2000000000}}},
        {"identifier": "temperature", "name": "Temperature", "accessMode": "r", "dataType": {"type": "float", "specs": {"min": -100, "max": 200}}},
    ],
    "events": [
        {
            "identifier": "overheat",
            "name": "Overheat",
            "type": "alert",
            "outputData": [{"identifier": "temp", "name": "Temp", "dataType": {"type": "float", "specs": {"min": 0, "max": 500}}}],
        }
    ],
}  # fmt: skip
QUICK = [
    "--device-plain-http",
    "--forward-retry-initial-s",
    "0.1",
    "--forward-retry-max-s",
    "0.5",
    "--forward-poll-s",
    "0.2",
]


# -- fixtures and helpers ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("fwd") / "data", *QUICK).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Admin]:
    with server.admin() as client:
        yield Admin(client)


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    r = WebhookReceiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def dl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Short dead-letter time and online window."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("fwd-dl") / "data",
        *QUICK,
        "--forward-dead-letter-after-s",
        "1",
        "--online-window-s",
        "1.5",
        "--forward-outbox-warn-size",
        "5",
    ).start()
    yield proc
    proc.stop()


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotgate.cli", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def create_rule(admin: Admin, **doc: Any) -> dict[str, Any]:
    r = admin.c.post("/api/v1/rules", json={"name": f"rule-{secrets.token_hex(4)}", **doc})
    assert r.status_code == 201, r.text
    return dict(r.json())


def stats(admin: Admin, rule_id: int) -> dict[str, Any]:
    r = admin.c.get(f"/api/v1/rules/{rule_id}/stats")
    assert r.status_code == 200, r.text
    doc = dict(r.json())
    for t in doc["targets"]:  # the invariant, at every read
        assert t["matched"] == t["delivered"] + t["deadLettered"] + t["inFlight"] + t["queued"] + t["filteredOut"], t
    return doc


class Device:
    """An Alink device over plain HTTP (asyncio)."""

    def __init__(self, server: ServerProcess, pk: str, creds: dict[str, Any]) -> None:
        self.pk, self.dn, self.secret = pk, creds["deviceName"], creds["deviceSecret"]
        self.http = httpx.AsyncClient(base_url=server.device_url, timeout=30)
        self.token = ""

    async def connect(self) -> Device:
        r = await self.http.post("/auth", json=alink_auth_body(self.pk, self.dn, self.secret))
        assert r.json()["code"] == 0, r.text
        self.token = r.json()["info"]["token"]
        return self

    async def post(self, topic: str, doc: Any) -> int:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        r = await self.http.post(
            f"/topic{topic}", content=body, headers={"password": self.token, "Content-Type": "application/octet-stream"}
        )
        assert r.json()["code"] == 0, r.text
        return int(r.json()["info"]["messageId"])

    async def report(self, **values: Any) -> int:
        return await self.post(f"/sys/{self.pk}/{self.dn}/thing/event/property/post", {"id": "1", "params": values})

    async def close(self) -> None:
        await self.http.aclose()


async def devices(server: ServerProcess, admin: Admin, pk: str, names: list[str]) -> list[Device]:
    return [await Device(server, pk, admin.device(pk, n)).connect() for n in names]


def per_device(bodies: list[dict[str, Any]], pk: str) -> dict[str, list[int]]:
    """seq values per device, in arrival order, first arrival of each message only."""
    seen: set[str] = set()
    out: dict[str, list[int]] = {}
    for b in bodies:
        if b.get("productKey") != pk or b["messageId"] in seen:
            continue
        seen.add(b["messageId"])
        out.setdefault(b["deviceName"], []).append(b["values"]["seq"])
    return out


# -- the rules API ---------------------------------------------------------------------------------------
def test_rules_api_validates_and_masks_secrets(admin: Admin) -> None:
    pk = admin.product(MODEL)
    hook = {"type": "webhook", "url": "http://127.0.0.1:9/hook"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "x", "source": "property", "targets": [hook], "color": "red"}, "unknown field(s): color"),
        ({"source": "property", "targets": [hook]}, "name: is required"),
        ({"name": "x", "source": "telemetry", "targets": [hook]}, "source: must be one of"),
        ({"name": "x", "source": "property", "format": "xml", "targets": [hook]}, "format: must be one of"),
        ({"name": "x", "source": "property", "targets": []}, "targets: must be a non-empty list"),
        ({"name": "x", "source": "property", "targets": [{"type": "ftp"}]}, "targets[0].type must be one of"),
        ({"name": "x", "source": "property", "targets": [{**hook, "verbose": True}]}, "unknown field `verbose`"),
        ({"name": "x", "source": "property", "targets": [{"type": "mqtt", "url": "mqtt://h", "topic": "a/{x}"}]}, "unknown placeholder {x}"),
        ({"name": "x", "source": "property", "targets": [{"type": "webhook", "url": "gopher://h"}]}, "url must start with http"),
        ({"name": "x", "source": "property", "productKey": "nonexistent", "targets": [hook]}, "does not exist"),
        ({"name": "x", "source": "lifecycle", "where": "temperature > 1", "targets": [hook]}, "unknown field 'temperature'"),
    ]  # fmt: skip
    for doc, message in cases:
        r = admin.c.post("/api/v1/rules", json=doc)
        assert r.status_code == 422, (doc, r.text)
        assert message in r.json()["error"]["message"], (message, r.text)
    r = admin.c.post(
        "/api/v1/rules", json={"name": "x", "source": "property", "where": "temperature >> 40", "targets": [hook]}
    )
    assert r.status_code == 422
    assert r.json()["error"]["details"] == [
        {"field": "where", "reason": "expected a field name or a value, found '>'", "position": 14}
    ]
    assert admin.c.post("/api/v1/rules", content=b"[1]").status_code == 422

    rule = create_rule(
        admin,
        source="property",
        productKey=pk,
        targets=[
            {**hook, "secret": "s3cret"},
            {"type": "amqp", "url": "amqp://guest:guest@127.0.0.1:5672/", "routingKey": "k"},
        ],
    )
    assert rule["targets"][0]["secret"] == "***"
    assert rule["targets"][1]["url"] == "amqp://guest:***@127.0.0.1:5672/"
    shown = admin.c.get(f"/api/v1/rules/{rule['id']}").json()
    assert shown == rule
    assert (
        admin.c.post("/api/v1/rules", json={"name": rule["name"], "source": "event", "targets": [hook]}).status_code
        == 409
    )
    # PATCH: name and filter change; targets sent back masked keep their secrets and identity
    patched = admin.c.patch(
        f"/api/v1/rules/{rule['id']}", json={"where": "seq > 5", "targets": rule["targets"], "enabled": False}
    )
    assert patched.status_code == 200, patched.text
    assert [t["id"] for t in patched.json()["targets"]] == [t["id"] for t in rule["targets"]]
    assert patched.json()["where"] == "seq > 5" and patched.json()["enabled"] is False
    bad_id = admin.c.patch(f"/api/v1/rules/{rule['id']}", json={"targets": [{**hook, "id": 999999}]})
    assert bad_id.status_code == 422 and "targets[0].id" in bad_id.text
    for method, path in [
        ("GET", "/api/v1/rules/999999"),
        ("PATCH", "/api/v1/rules/999999"),
        ("DELETE", "/api/v1/rules/999999"),
        ("GET", "/api/v1/rules/abc"),
        ("GET", "/api/v1/rules/999999/stats"),
        ("GET", "/api/v1/rules/999999/dead-letters"),
    ]:
        r = admin.c.request(method, path, json={} if method == "PATCH" else None)
        assert r.status_code == 404, (method, path, r.text)
    r = admin.c.post(f"/api/v1/rules/{rule['id']}/dead-letters:replay", json={"ids": ["a"]})
    assert r.status_code == 422
    r = admin.c.get(f"/api/v1/rules/{rule['id']}/dead-letters", params={"target": 999999})
    assert r.status_code == 404
    assert admin.c.delete(f"/api/v1/rules/{rule['id']}").status_code == 204
    assert admin.c.get(f"/api/v1/rules/{rule['id']}").status_code == 404


# -- N reports, N deliveries, per-device order -----------------------------------------------------------
async def test_every_report_is_forwarded_in_device_order(
    server: ServerProcess, admin: Admin, receiver: WebhookReceiver
) -> None:
    if not service_up(1883):
        pytest.skip("Mosquitto is not running on 127.0.0.1:1883")
    import aiomqtt

    pk = admin.product(MODEL)
    prefix = f"fwtest-{secrets.token_hex(4)}"
    rule = create_rule(
        admin,
        source="property",
        productKey=pk,
        targets=[
            {"type": "webhook", "url": receiver.url},
            {"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": prefix + "/{productKey}/{deviceName}"},
        ],
    )
    n_devices, n_reports = 5, 60
    devs = await devices(server, admin, pk, [f"order-{i}" for i in range(n_devices)])
    acked: set[str] = set()
    mqtt_got: list[dict[str, Any]] = []
    async with aiomqtt.Client("127.0.0.1", 1883) as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)

        async def read() -> None:
            async for m in sub.messages:
                mqtt_got.append(json.loads(bytes(m.payload)))  # type: ignore[arg-type]
                if len(mqtt_got) >= n_devices * n_reports:
                    return

        reader = asyncio.create_task(read())

        async def run(d: Device) -> None:
            for i in range(n_reports):
                acked.add(str(await d.report(seq=i, temperature=20.5)))

        await asyncio.gather(*(run(d) for d in devs))
        await asyncio.wait_for(reader, 30)
    total = n_devices * n_reports
    await asyncio.to_thread(
        wait_for, lambda: len([b for b in receiver.bodies() if b["productKey"] == pk]) >= total, 30, what="webhook"
    )
    hooks = [b for b in receiver.bodies() if b["productKey"] == pk]
    for got in (hooks, mqtt_got):
        assert {b["messageId"] for b in got} == acked
        assert len(got) == total  # nothing lost, nothing twice
        assert per_device(got, pk) == {d.dn: list(range(n_reports)) for d in devs}
    doc = wait_for(lambda: (s := stats(admin, rule["id"]))["delivered"] == 2 * total and s, 10, what="stats")
    for t in doc["targets"]:
        assert (t["matched"], t["delivered"], t["filteredOut"], t["queued"], t["redelivered"]) == (
            total,
            total,
            0,
            0,
            0,
        )
    for d in devs:
        await d.close()


async def test_filter_selects_exactly_and_alibaba_format(
    server: ServerProcess, admin: Admin, receiver: WebhookReceiver
) -> None:
    pk = admin.product(MODEL)
    rule = create_rule(
        admin,
        source="property",
        productKey=pk,
        format="alibaba",
        where="temperature > 40 AND deviceName LIKE 'hot-%' OR seq IN (3, 7) AND NOT deviceName = 'cold-1'",
        targets=[{"type": "webhook", "url": receiver.url, "secret": "sig-key"}],
    )
    hot, cold, cold2 = await devices(server, admin, pk, ["hot-1", "cold-1", "cold-2"])
    expected: set[str] = set()
    for i in range(10):
        for d in (hot, cold, cold2):
            temperature = 35.5 + i
            mid = await d.report(seq=i, temperature=temperature)
            if (temperature > 40 and d.dn.startswith("hot-")) or (i in (3, 7) and d.dn != "cold-1"):
                expected.add(str(mid))

    def mine() -> list[tuple[dict[str, str], dict[str, Any]]]:
        return [(h, json.loads(b)) for h, b in list(receiver.records) if h.get("x-iotgate-rule-id") == str(rule["id"])]

    wait_for(lambda: len(mine()) >= len(expected), 20, what="filtered deliveries")
    doc = wait_for(lambda: (s := stats(admin, rule["id"]))["queued"] + s["inFlight"] == 0 and s, 10, what="idle")
    got = mine()
    assert {h["x-iotgate-message-id"] for h, _ in got} == expected  # exactly the matching ones
    assert (doc["matched"], doc["filteredOut"], doc["delivered"]) == (30, 30 - len(expected), len(expected))
    for headers, body in got:  # Alibaba's forwarded property message, signed
        assert set(body) == {
            "deviceType",
            "iotId",
            "requestId",
            "checkFailedData",
            "productKey",
            "gmtCreate",
            "deviceName",
            "items",
        }
        assert body["productKey"] == pk and body["iotId"] == f"{pk}_{body['deviceName']}" and body["requestId"] == "1"
        assert set(body["items"]) == {"seq", "temperature"} and set(body["items"]["seq"]) == {"value", "time"}
        raw = json.dumps(body, separators=(",", ":")).encode()
        assert headers["x-iotgate-signature"] == "sha256=" + hmac.new(b"sig-key", raw, hashlib.sha256).hexdigest()
    for d in (hot, cold, cold2):
        await d.close()


# -- a target that is down for a while under load ------------------------------------------------------------
async def test_webhook_down_then_up_under_load(server: ServerProcess, admin: Admin) -> None:
    target = WebhookReceiver(delay=0.002).start()
    pk = admin.product(MODEL)
    rule = create_rule(
        admin, source="property", productKey=pk, targets=[{"type": "webhook", "url": target.url, "timeoutS": 2}]
    )
    devs = await devices(server, admin, pk, [f"load-{i}" for i in range(4)])
    acked: set[str] = set()
    n = 50

    async def run(d: Device) -> None:
        for i in range(n):
            acked.add(str(await d.report(seq=i, temperature=1.5)))
            await asyncio.sleep(0.002)

    senders = asyncio.gather(*(run(d) for d in devs))
    await asyncio.to_thread(wait_for, lambda: target.count() >= 20, 20, what="first deliveries")
    await asyncio.to_thread(target.stop)  # down in the middle of the stream
    await senders
    failing = await asyncio.to_thread(
        wait_for, lambda: (s := stats(admin, rule["id"]))["targets"][0]["failing"] and s, 20, 0.1, "failing"
    )
    assert failing["queued"] + failing["inFlight"] > 0 and failing["targets"][0]["lastError"]
    await asyncio.sleep(0.5)  # a few retries against a closed port
    target.start()
    await asyncio.to_thread(wait_for, lambda: {b["messageId"] for b in target.bodies()} >= acked, 30, what="catch-up")
    assert per_device(target.bodies(), pk) == {d.dn: list(range(n)) for d in devs}
    doc = wait_for(lambda: (s := stats(admin, rule["id"]))["queued"] + s["inFlight"] == 0 and s, 10, what="drained")
    t = doc["targets"][0]
    assert t["matched"] == 4 * n and t["delivered"] == 4 * n and t["deadLettered"] == 0 and t["retries"] > 0
    assert not t["failing"]
    duplicates = len(target.bodies()) - len({b["messageId"] for b in target.bodies()})
    assert duplicates <= t["redelivered"]
    target.stop()
    for d in devs:
        await d.close()


# -- a stalled target does not hold back another ------------------------------------------------------------
async def test_stalled_webhook_does_not_hold_back_mqtt(server: ServerProcess, admin: Admin) -> None:
    """Two targets of one rule: the webhook answers nothing (its requests hang) while devices keep
    reporting; MQTT still gets the reports, in device order. Once the webhook answers, it gets all."""
    if not service_up(1883):
        pytest.skip("Mosquitto is not running on 127.0.0.1:1883")
    import aiomqtt

    stalled = WebhookReceiver()
    stalled.paused = True
    stalled.start()
    pk = admin.product(MODEL)
    prefix = f"fwtest-{secrets.token_hex(4)}"
    rule = create_rule(
        admin,
        source="property",
        productKey=pk,
        targets=[
            {"type": "webhook", "url": stalled.url, "timeoutS": 120},
            {"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": prefix + "/{productKey}/{deviceName}"},
        ],
    )
    devs = await devices(server, admin, pk, [f"stall-{i}" for i in range(4)])
    acked: set[str] = set()
    got: list[dict[str, Any]] = []
    reporting = asyncio.Event()
    reporting.set()
    async with aiomqtt.Client("127.0.0.1", 1883) as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)

        async def read() -> None:
            async for m in sub.messages:
                got.append(json.loads(bytes(m.payload)))  # type: ignore[arg-type]

        reader = asyncio.create_task(read())

        async def run(d: Device) -> None:
            i = 0
            while reporting.is_set() and i < 5000:  # until MQTT has shown it delivers, bounded
                acked.add(str(await d.report(seq=i, temperature=1.5)))
                i += 1

        senders = asyncio.gather(*(run(d) for d in devs))
        # devices are still reporting and the webhook holds its requests: MQTT delivers regardless
        await asyncio.to_thread(wait_for, lambda: len(got) >= 100 or not reporting.is_set(), 60, what="MQTT")
        assert len(got) >= 100
        reporting.clear()
        await senders
        await asyncio.to_thread(wait_for, lambda: len(got) >= len(acked), 30, what="MQTT, all")
        reader.cancel()
    assert stalled.count() == 0 and stalled.waiting > 0  # the webhook delivered nothing meanwhile
    assert {b["messageId"] for b in got} == acked
    n = {d.dn: len([b for b in got if b["deviceName"] == d.dn]) for d in devs}
    assert per_device(got, pk) == {dn: list(range(k)) for dn, k in n.items()}
    doc = stats(admin, rule["id"])
    hook, mqtt = doc["targets"]
    assert hook["delivered"] == 0 and hook["inFlight"] > 0 and mqtt["delivered"] == len(acked)
    stalled.paused = False
    await asyncio.to_thread(wait_for, lambda: stalled.count() >= len(acked), 60, what="webhook catch-up")
    assert per_device(stalled.bodies(), pk) == per_device(got, pk)
    doc = wait_for(lambda: (s := stats(admin, rule["id"]))["queued"] + s["inFlight"] == 0 and s, 30, what="drained")
    assert doc["delivered"] == 2 * len(acked) and doc["deadLettered"] == 0
    stalled.stop()
    for d in devs:
        await d.close()


# -- events and raw messages to NATS, RabbitMQ and Redis -----------------------------------------------------
async def test_events_and_messages_to_brokers(server: ServerProcess, admin: Admin) -> None:
    for port, name in ((4222, "NATS"), (5672, "RabbitMQ"), (6379, "Redis")):
        if not service_up(port):
            pytest.skip(f"{name} is not running on 127.0.0.1:{port}")
    import aio_pika
    import nats
    import redis.asyncio as aioredis

    pk = admin.product(MODEL)
    tag = secrets.token_hex(4)
    stream, exchange, key = f"FWE2E_{tag.upper()}", f"fwe2e-{tag}", f"fwe2e:{tag}"
    conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    ch = await conn.channel()
    ex = await ch.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, auto_delete=True)
    queue = await ch.declare_queue(exclusive=True)
    await queue.bind(ex, "alarm.#")
    events = create_rule(
        admin,
        source="event",
        productKey=pk,
        format="huawei",
        where="temp >= 90",
        targets=[
            {"type": "nats", "url": "nats://127.0.0.1:4222", "subject": f"fwe2e{tag}.{{productKey}}.{{identifier}}", "stream": stream, "createStream": True},
            {"type": "amqp", "url": "amqp://guest:guest@127.0.0.1:5672/", "exchange": exchange, "routingKey": "alarm.{deviceName}"},
        ],
    )  # fmt: skip
    messages = create_rule(
        admin,
        source="message",
        productKey=pk,
        where="payload.door = 'open'",
        targets=[{"type": "redis", "url": "redis://127.0.0.1:6379/0", "stream": key + ":{deviceName}", "maxlen": 0}],
    )
    [d] = await devices(server, admin, pk, ["broker-1"])
    hot_ids = []
    for temp in (85.5, 90.5, 95.5):
        mid = await d.post(
            f"/sys/{pk}/broker-1/thing/event/overheat/post", {"id": "9", "params": {"value": {"temp": temp}}}
        )
        if temp >= 90:
            hot_ids.append(str(mid))
    door_ids = []
    for state in ("open", "closed", "open"):
        mid = await d.post(f"/{pk}/broker-1/user/door", {"door": state})
        if state == "open":
            door_ids.append(str(mid))
    await d.post(f"/{pk}/broker-1/user/raw", b"\x00binary")  # not JSON: payload.door is NULL

    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()

    async def nats_count() -> int:
        try:
            return int((await js.stream_info(stream)).state.messages)
        except Exception:
            return 0

    r = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        for _ in range(200):
            if await nats_count() == 2 and await r.xlen(f"{key}:broker-1") == 2:
                break
            await asyncio.sleep(0.05)
        sub = await js.pull_subscribe(f"fwe2e{tag}.>", stream=stream)
        nats_msgs = await sub.fetch(2, timeout=5)
        notes = [json.loads(m.data) for m in nats_msgs]
        assert [n["request_id"] for n in notes] == ["9", "9"]
        assert [n["notify_data"]["body"]["services"][0]["paras"]["temp"] for n in notes] == [90.5, 95.5]
        assert {n["resource"] for n in notes} == {"device.event"}
        assert [m.subject for m in nats_msgs] == [f"fwe2e{tag}.{pk}.overheat"] * 2
        assert [m.headers["Iotgate-Message-Id"] for m in nats_msgs if m.headers] == hot_ids
        amqp_msgs = []
        for _ in range(200):
            m = await queue.get(fail=False)
            if m is not None:
                amqp_msgs.append(m)
            if len(amqp_msgs) == 2:
                break
            await asyncio.sleep(0.02)
        assert [m.headers["messageId"] for m in amqp_msgs] == hot_ids
        assert [m.routing_key for m in amqp_msgs] == ["alarm.broker-1"] * 2
        entries = await r.xrange(f"{key}:broker-1")
        assert [e[1][b"messageId"].decode() for e in entries] == door_ids
        doc = json.loads(entries[0][1][b"data"])
        assert (doc["source"], doc["kind"], doc["payload"], doc["payloadEncoding"]) == (
            "message",
            "message",
            {"door": "open"},
            "json",
        )
        assert doc["topic"] == f"/{pk}/broker-1/user/door"
        for rule, matched, selected in ((events, 3, 2), (messages, 4, 2)):
            s = wait_for(lambda rid=rule["id"]: (x := stats(admin, rid))["queued"] + x["inFlight"] == 0 and x, 10)
            for t in s["targets"]:
                assert (t["matched"], t["filteredOut"], t["delivered"]) == (matched, matched - selected, selected)
    finally:
        await js.delete_stream(stream)
        await nc.close()
        await r.delete(f"{key}:broker-1")
        await r.aclose()
        await conn.close()
        await d.close()


# -- dead letters, replay, lifecycle -------------------------------------------------------------------------
async def test_dead_letters_listed_and_replayed(dl_server: ServerProcess) -> None:
    port = free_port()
    with dl_server.admin() as client:
        admin = Admin(client)
        pk = admin.product(MODEL)
        rule = create_rule(
            admin,
            source="property",
            productKey=pk,
            targets=[{"type": "webhook", "url": f"http://127.0.0.1:{port}/hook"}],
        )
        devs = await devices(dl_server, admin, pk, ["dl-1", "dl-2"])
        acked = [str(await d.report(seq=i, temperature=2.5)) for i in range(5) for d in devs]
        doc = await asyncio.to_thread(
            wait_for, lambda: (s := stats(admin, rule["id"]))["deadLettered"] == 10 and s, 30, 0.1, "dead letters"
        )
        assert doc["delivered"] == 0 and doc["queued"] == 0
        # the backlog passed forward_outbox_warn_size: logged by rule and target, and on /metrics
        target_id = rule["targets"][0]["id"]
        warnings = [
            json.loads(line)
            for line in dl_server.log_path.read_text().splitlines()
            if "wait in the outbox" in line and line.startswith("{")
        ]
        assert any(w["rule_id"] == rule["id"] and w["target_id"] == target_id for w in warnings), warnings
        metrics = admin.c.get("/metrics").text
        assert f'iotgate_outbox_depth{{target="{rule["name"]}/{target_id}-webhook"}} 0.0' in metrics
        page = admin.c.get(f"/api/v1/rules/{rule['id']}/dead-letters", params={"limit": 6}).json()
        assert len(page["items"]) == 6 and page["next"]
        rest = admin.c.get(f"/api/v1/rules/{rule['id']}/dead-letters", params={"after": page["next"]}).json()
        letters = page["items"] + rest["items"]
        assert sorted(x["messageId"] for x in letters) == sorted(acked)
        first = letters[0]
        assert first["tries"] >= 1 and "cannot connect" in first["lastError"] and first["productKey"] == pk
        assert json.loads(first["body"])["messageId"] == first["messageId"]
        out = cli(dl_server, "rule", "dead-letters", str(rule["id"]), "--json")
        assert out.returncode == 0 and len(json.loads(out.stdout)["items"]) == 10

        receiver = WebhookReceiver(port=port).start()
        try:
            one = admin.c.post(f"/api/v1/rules/{rule['id']}/dead-letters:replay", json={"ids": [first["id"]]})
            assert one.json() == {"replayed": 1}
            wait_for(lambda: receiver.count() == 1, 20, what="one replayed")
            out = cli(dl_server, "rule", "replay", str(rule["id"]))
            assert out.returncode == 0 and "replayed 9" in out.stdout, out.stdout + out.stderr
            wait_for(lambda: receiver.count() >= 10, 20, what="all replayed")
            assert {b["messageId"] for b in receiver.bodies()} == set(acked)
            doc = wait_for(lambda: (s := stats(admin, rule["id"]))["delivered"] == 10 and s, 10, what="stats")
            t = doc["targets"][0]
            assert (t["deadLettered"], t["replayed"], t["queued"], t["matched"]) == (0, 10, 0, 10)
            assert admin.c.get(f"/api/v1/rules/{rule['id']}/dead-letters").json()["items"] == []
        finally:
            receiver.stop()
        for d in devs:
            await d.close()


async def test_lifecycle_events(dl_server: ServerProcess) -> None:
    receiver = WebhookReceiver().start()
    try:
        with dl_server.admin() as client:
            admin = Admin(client)
            pk = admin.product(MODEL)
            rule = create_rule(
                admin,
                source="lifecycle",
                productKey=pk,
                format="alibaba",
                targets=[{"type": "webhook", "url": receiver.url}],
            )
            creds = admin.device(pk, "life-1")
            d = await Device(dl_server, pk, creds).connect()
            await d.report(seq=1, temperature=3.5)  # online
            await d.report(seq=2, temperature=3.5)  # still online: no event
            wait_for(lambda: any(b.get("status") == "offline" for b in receiver.bodies()), 20, what="offline")
            base = f"/api/v1/products/{pk}/devices/life-1"
            assert admin.c.patch(base, json={"enabled": False}).status_code == 200
            assert admin.c.patch(base, json={"enabled": True}).status_code == 200
            assert admin.c.delete(base).status_code == 204
            wait_for(lambda: len(receiver.bodies()) >= 6, 20, what="lifecycle events")
            bodies = receiver.bodies()
            kinds = [b.get("action") or b.get("status") for b in bodies]
            assert kinds == ["create", "online", "offline", "disable", "enable", "delete"]
            assert all(b["productKey"] == pk and b["deviceName"] == "life-1" for b in bodies)
            online, offline = bodies[1], bodies[2]
            assert online["utcTime"] == online["utcLastTime"]  # the first report
            last, went = (datetime.fromisoformat(offline[k].replace("Z", "+00:00")) for k in ("utcLastTime", "utcTime"))
            assert last > datetime.fromisoformat(online["utcTime"].replace("Z", "+00:00"))  # the second report
            assert (went - last).total_seconds() == 1.5  # offline: online_window_s after the last report
            doc = stats(admin, rule["id"])
            assert (doc["matched"], doc["delivered"]) == (6, 6)
            await d.close()
    finally:
        receiver.stop()


# -- the server killed mid-stream --------------------------------------------------------------------------
def test_sigkill_mid_stream_delivers_everything_acknowledged(tmp_path: Path) -> None:
    receiver = WebhookReceiver(delay=0.003).start()
    srv = ServerProcess(tmp_path / "data", *QUICK).start()
    try:
        with srv.admin() as client:
            admin = Admin(client)
            pk = admin.product(MODEL)
            rule = create_rule(
                admin, source="property", productKey=pk, targets=[{"type": "webhook", "url": receiver.url}]
            )
            creds = [admin.device(pk, f"kill-{i}") for i in range(4)]
        acked: set[str] = set()
        lock = threading.Lock()
        stop = threading.Event()

        def send(c: dict[str, Any]) -> None:
            with httpx.Client(base_url=srv.device_url, timeout=10) as http:
                token = http.post("/auth", json=alink_auth_body(pk, c["deviceName"], c["deviceSecret"])).json()["info"][
                    "token"
                ]
                for i in range(400):
                    if stop.is_set():
                        return
                    body = json.dumps({"id": str(i), "params": {"seq": i, "temperature": 4.5}})
                    try:
                        r = http.post(
                            f"/topic/sys/{pk}/{c['deviceName']}/thing/event/property/post",
                            content=body,
                            headers={"password": token, "Content-Type": "application/octet-stream"},
                        )
                    except httpx.TransportError:
                        return  # the server is gone: this report was not acknowledged
                    if r.json().get("code") == 0:
                        with lock:
                            acked.add(str(r.json()["info"]["messageId"]))

        threads = [threading.Thread(target=send, args=(c,)) for c in creds]
        for t in threads:
            t.start()
        wait_for(lambda: receiver.count() >= 150, 30, what="deliveries before the kill")
        assert srv.stop(signal.SIGKILL) == -signal.SIGKILL
        stop.set()
        for t in threads:
            t.join(30)
        assert len(acked) >= 150
        srv.start()
        wait_for(lambda: {b["messageId"] for b in receiver.bodies()} >= acked, 60, 0.1, "everything acknowledged")
        with srv.admin() as client:
            admin = Admin(client)
            # also reports committed but not answered before the kill: delivered too
            doc = wait_for(lambda: (s := stats(admin, rule["id"]))["queued"] + s["inFlight"] == 0 and s, 30)
        bodies = receiver.bodies()
        for seqs in per_device(bodies, pk).values():
            assert seqs == list(range(len(seqs)))  # in order, no gaps
        duplicates = len(bodies) - len({b["messageId"] for b in bodies})
        t = doc["targets"][0]
        assert duplicates <= t["redelivered"], (duplicates, t)
        assert t["delivered"] == t["matched"] == len({b["messageId"] for b in bodies})
    finally:
        srv.stop()
        receiver.stop()


# -- the CLI ---------------------------------------------------------------------------------------------
def test_cli_rule_verbs(server: ServerProcess, admin: Admin, receiver: WebhookReceiver) -> None:
    pk = admin.product(MODEL)
    out = cli(server, "rule", "create", "--name", "cli-rule", "--product-key", pk, "--where", "seq > 2",
              "--webhook", receiver.url, "--secret", "k", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    rule = json.loads(out.stdout)
    assert rule["where"] == "seq > 2" and rule["targets"][0]["secret"] == "***" and rule["source"] == "property"
    listed = cli(server, "rule", "list")
    assert listed.returncode == 0 and "cli-rule" in listed.stdout
    assert json.loads(cli(server, "rule", "show", str(rule["id"]), "--json").stdout)["id"] == rule["id"]
    updated = cli(server, "rule", "update", str(rule["id"]), "--where", "seq > 3", "--json")
    assert json.loads(updated.stdout)["where"] == "seq > 3"
    assert json.loads(cli(server, "rule", "disable", str(rule["id"]), "--json").stdout)["enabled"] is False
    assert json.loads(cli(server, "rule", "enable", str(rule["id"]), "--json").stdout)["enabled"] is True
    table = cli(server, "rule", "stats", str(rule["id"]))
    assert table.returncode == 0 and "matched" in table.stdout
    bad = cli(server, "rule", "create", "--name", "bad", "--where", "seq >", "--webhook", receiver.url)
    assert bad.returncode == 1 and "422" in bad.stderr and "position 6" in bad.stderr
    missing = cli(server, "rule", "show", "999999")
    assert missing.returncode == 1 and "404" in missing.stderr
    assert cli(server, "rule", "delete", str(rule["id"])).returncode == 0
    assert cli(server, "rule", "show", str(rule["id"])).returncode == 1


# -- PostgreSQL, reports taken by device-worker processes ------------------------------------------------
async def test_postgres_with_device_workers(tmp_path: Path, pg_url: str) -> None:
    """Worker processes write the outbox rows with their batches; the main process delivers them."""
    receiver = WebhookReceiver().start()
    srv = ServerProcess(
        tmp_path / "data", *QUICK, "--database", pg_url, "--workers", "2", "--node-id", "20", "--registry-poll-s", "0.3"
    ).start()
    try:
        with srv.admin() as client:
            admin = Admin(client)
            pk = admin.product(MODEL)
            rule = create_rule(
                admin, source="property", productKey=pk, targets=[{"type": "webhook", "url": receiver.url}]
            )
            await asyncio.sleep(1.5)  # the workers pick up the new rule within registry_poll_s
            devs = await devices(srv, admin, pk, [f"pg-{i}" for i in range(3)])
            acked = set()
            for i in range(20):
                for d in devs:
                    acked.add(str(await d.report(seq=i, temperature=5.5)))
            await asyncio.to_thread(wait_for, lambda: receiver.count() >= 60, 30, 0.1, "deliveries")
            assert {b["messageId"] for b in receiver.bodies()} == acked
            assert per_device(receiver.bodies(), pk) == {d.dn: list(range(20)) for d in devs}
            doc = wait_for(lambda: (s := stats(admin, rule["id"]))["delivered"] == 60 and s, 10, what="stats")
            assert (doc["matched"], doc["queued"], doc["inFlight"]) == (60, 0, 0)
            for d in devs:
                await d.close()
    finally:
        srv.stop()
        receiver.stop()


# -- metrics ------------------------------------------------------------------------------------------------
async def test_counters_per_rule_and_target_in_metrics(
    server: ServerProcess, admin: Admin, receiver: WebhookReceiver
) -> None:
    pk = admin.product(MODEL)
    rule = create_rule(
        admin,
        name=f"metrics-{secrets.token_hex(3)}",
        source="property",
        productKey=pk,
        where="seq >= 2",
        targets=[{"type": "webhook", "url": receiver.url}],
    )
    [d] = await devices(server, admin, pk, ["metrics-1"])
    for i in range(5):
        await d.report(seq=i, temperature=1.0)
    await d.close()
    wait_for(lambda: stats(admin, rule["id"])["delivered"] == 3, 20, what="deliveries")
    target = f"{rule['targets'][0]['id']}-webhook"
    labels = f'rule="{rule["name"]}",rule_id="{rule["id"]}",target="{target}"'
    text = admin.c.get("/metrics").text
    want = {
        "iotgate_forward_matched_total": 5,
        "iotgate_forward_filtered_out_total": 2,
        "iotgate_forward_delivered_total": 3,
        "iotgate_forward_dead_letters": 0,
        "iotgate_forward_queued": 0,
        "iotgate_forward_in_flight": 0,
    }
    for name, value in want.items():
        assert f"{name}{{{labels}}} {float(value)}" in text, (name, [ln for ln in text.splitlines() if name in ln])
