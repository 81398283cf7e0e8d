"""Each sink against the real service on this machine: webhook (local receiver), Mosquitto, NATS
JetStream, RabbitMQ, Redis. Delivery, order, metadata, and how failures are classified."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks import DeliveryError, Sink, make_sink
from iotgate.forward.targets import parse_target
from test_forward_receiver import WebhookReceiver, free_port, service_up


def rows(n: int, devices: int = 2, target: int = 7) -> list[OutboxRow]:
    return [
        OutboxRow(
            target_id=target,
            device_id=i % devices,
            message_id=1000 + i,
            product_key="a1B2c3D4e5F",
            device_name=f"hall.{i % devices:02d}",
            source="property",
            identifier="property",
            topic=f"/sys/a1B2c3D4e5F/hall.{i % devices:02d}/thing/event/property/post",
            content_type="application/json",
            body=json.dumps({"seq": i, "device": i % devices}).encode(),
            created_at=0,
        )
        for i in range(n)
    ]


def sink(doc: dict[str, Any]) -> Sink:
    return make_sink(parse_target(doc, "target"), 7, 3, 8)


async def deliver_all(s: Sink, batch: list[OutboxRow]) -> None:
    """As the worker does: devices in parallel, each device in order."""
    by_device: dict[int, list[OutboxRow]] = {}
    for r in batch:
        by_device.setdefault(r.device_id, []).append(r)
    results = await asyncio.gather(*(s.send_ordered(v) for v in by_device.values()))
    for (done, error), v in zip(results, by_device.values(), strict=True):
        assert error is None and done == len(v), error


def need(port: int, name: str) -> None:
    if not service_up(port):
        pytest.skip(f"{name} is not running on 127.0.0.1:{port}")


# -- webhook --------------------------------------------------------------------------------------
@pytest.fixture
def receiver() -> Any:
    r = WebhookReceiver().start()
    yield r
    r.stop()


async def test_webhook_posts_signed_json_in_order(receiver: WebhookReceiver) -> None:
    s = sink({"type": "webhook", "url": receiver.url, "secret": "k3y", "headers": {"X-Tenant": "blue"}})
    batch = rows(40)
    await deliver_all(s, batch)
    await s.close()
    assert receiver.count() == 40
    for device in (0, 1):
        seqs = [b["seq"] for b in receiver.bodies() if b["device"] == device]
        assert seqs == sorted(seqs) and len(seqs) == 20
    headers, body = receiver.records[0]
    expected = "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(headers["x-iotgate-signature"], expected)
    first = next(r for r in batch if r.body == body)
    assert headers["content-type"] == "application/json"
    assert headers["x-iotgate-product-key"] == "a1B2c3D4e5F"
    assert headers["x-iotgate-device-name"] == first.device_name
    assert headers["x-iotgate-delivery-id"] == f"{first.message_id}-7"
    assert headers["x-iotgate-rule-id"] == "3" and headers["x-tenant"] == "blue"


async def test_webhook_batches_keep_device_order(receiver: WebhookReceiver) -> None:
    s = make_sink(parse_target({"type": "webhook", "url": receiver.url, "batch": 10, "secret": "k"}, "t"), 7, 3, 8)
    many = rows(15, devices=1)  # one device with more than a batch: two requests, one after the other
    few = [msgspec.structs.replace(r, device_id=5 + i % 3, device_name=f"d{5 + i % 3}") for i, r in enumerate(rows(9))]
    raw = [
        msgspec.structs.replace(r, device_id=9, content_type="application/octet-stream", body=b"\x01") for r in rows(2)
    ]
    groups = [many, *[[r for r in few if r.device_id == d] for d in (5, 6, 7)], raw]
    outcome = await s.send_round(groups)
    assert outcome == [(15, None), (3, None), (3, None), (3, None), (2, None)]
    arrays = [(h, json.loads(b)) for h, b in receiver.records if h["content-type"] == "application/json"]
    assert sorted(len(a) for _, a in arrays) == [5, 9, 10]  # 10 + 5 for the big device, 9 packed together
    for headers, array in arrays:
        assert headers["x-iotgate-batch"] == str(len(array)) and headers["x-iotgate-rule-id"] == "3"
    big = [a for _, a in arrays if len(a) in (5, 10)]
    assert [m["seq"] for m in big[0] + big[1]] == list(range(15))  # the first request arrived first
    raw_posts = [b for h, b in receiver.records if h["content-type"] == "application/octet-stream"]
    assert raw_posts == [b"\x01", b"\x01"]
    headers, body = next((h, b) for h, b in receiver.records if h.get("x-iotgate-batch") == "9")
    assert headers["x-iotgate-signature"] == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
    await s.close()

    down = WebhookReceiver(status=500).start()
    try:
        s = make_sink(parse_target({"type": "webhook", "url": down.url, "batch": 10}, "t"), 7, 3, 8)
        outcome = await s.send_round([many, few[:3]])
        assert [done for done, _ in outcome] == [0, 0] and all(
            e is not None and "HTTP 500" in str(e) for _, e in outcome
        )
        await s.close()
    finally:
        down.stop()


async def test_webhook_failures_are_classified() -> None:
    refused = sink({"type": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook", "timeoutS": 2})
    with pytest.raises(DeliveryError) as info:
        await refused.send(rows(1)[0])
    assert not info.value.uncertain and "cannot connect" in str(info.value)
    await refused.close()

    rejecting = WebhookReceiver(status=503).start()
    try:
        s = sink({"type": "webhook", "url": rejecting.url})
        done, error = await s.send_ordered(rows(3, devices=1))
        assert done == 0 and error is not None and not error.uncertain and "HTTP 503" in str(error)
        await s.close()
    finally:
        rejecting.stop()

    slow = WebhookReceiver(delay=1.5).start()
    try:
        s = sink({"type": "webhook", "url": slow.url, "timeoutS": 0.3})
        with pytest.raises(DeliveryError) as info:
            await s.send(rows(1)[0])
        assert info.value.uncertain  # it may well have arrived
        await s.close()
    finally:
        slow.stop()


# -- MQTT -----------------------------------------------------------------------------------------
async def test_mqtt_publishes_qos1_with_user_properties() -> None:
    need(1883, "Mosquitto")
    import aiomqtt

    prefix = f"fwtest-{secrets.token_hex(4)}"
    s = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": prefix + "/{productKey}/{deviceName}"})
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        await deliver_all(s, rows(30))

        async def read() -> None:
            async for m in sub.messages:
                got.append(m)
                if len(got) == 30:
                    return

        await asyncio.wait_for(read(), 10)
    await s.close()
    for device in (0, 1):
        seqs = [json.loads(bytes(m.payload))["seq"] for m in got if str(m.topic).endswith(f"hall.{device:02d}")]  # type: ignore[arg-type]
        assert seqs == list(range(device, 30, 2))
    first = got[0]
    assert str(first.topic).startswith(f"{prefix}/a1B2c3D4e5F/hall.0")
    assert first.qos == 1
    props = dict(first.properties.UserProperty)  # type: ignore[union-attr]
    assert props["productKey"] == "a1B2c3D4e5F" and props["source"] == "property"
    assert props["deliveryId"].endswith("-7")


async def test_mqtt_unreachable_broker() -> None:
    s = sink({"type": "mqtt", "url": f"mqtt://127.0.0.1:{free_port()}", "topic": "x", "timeoutS": 2})
    with pytest.raises(DeliveryError) as info:
        await s.send(rows(1)[0])
    assert not info.value.uncertain
    await s.close()


# -- NATS JetStream ----------------------------------------------------------------------------------
@pytest.fixture
async def nats_stream() -> AsyncIterator[tuple[str, str]]:
    need(4222, "NATS")
    import nats

    name = f"FWTEST_{secrets.token_hex(4).upper()}"
    prefix = f"fwtest{secrets.token_hex(3)}"
    yield name, prefix
    nc = await nats.connect("nats://127.0.0.1:4222")
    with contextlib.suppress(Exception):
        await nc.jetstream().delete_stream(name)
    await nc.close()


async def test_nats_creates_the_stream_and_is_acked(nats_stream: tuple[str, str]) -> None:
    import nats

    stream, prefix = nats_stream
    s = sink(
        {
            "type": "nats",
            "url": "nats://127.0.0.1:4222",
            "subject": prefix + ".{productKey}.{deviceName}",
            "stream": stream,
            "createStream": True,
        }
    )
    batch = rows(20)
    await deliver_all(s, batch)
    await s.send(batch[0])  # a redelivery within the duplicate window: JetStream keeps one copy
    await s.close()
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    info = await js.stream_info(stream)
    assert info.config.subjects == [f"{prefix}.*.*"]
    assert info.state.messages == 20
    sub = await js.pull_subscribe(f"{prefix}.>", durable=None, stream=stream)
    msgs = await sub.fetch(20, timeout=5)
    await nc.close()
    # "hall.00": the dot in a value becomes _ so the subject keeps its tokens
    by_subject: dict[str, list[int]] = {}
    for m in msgs:
        by_subject.setdefault(m.subject, []).append(json.loads(m.data)["seq"])
    assert by_subject == {
        f"{prefix}.a1B2c3D4e5F.hall_00": list(range(0, 20, 2)),
        f"{prefix}.a1B2c3D4e5F.hall_01": list(range(1, 20, 2)),
    }
    assert msgs[0].headers is not None and msgs[0].headers["Iotgate-Product-Key"] == "a1B2c3D4e5F"


async def test_nats_without_a_stream_fails() -> None:
    need(4222, "NATS")
    s = sink(
        {"type": "nats", "url": "nats://127.0.0.1:4222", "subject": f"nostream{secrets.token_hex(4)}.x", "timeoutS": 2}
    )
    with pytest.raises(DeliveryError) as info:
        await s.send(rows(1)[0])
    assert "no JetStream stream" in str(info.value) and not info.value.uncertain
    await s.close()


# -- RabbitMQ -------------------------------------------------------------------------------------
async def test_amqp_publisher_confirms_and_unroutable() -> None:
    need(5672, "RabbitMQ")
    import aio_pika

    exchange = f"fwtest-{secrets.token_hex(4)}"
    s = sink(
        {
            "type": "amqp",
            "url": "amqp://guest:guest@127.0.0.1:5672/",
            "exchange": exchange,
            "declareExchange": True,
            "routingKey": "iot.{productKey}.{deviceName}",
        }
    )
    conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    try:
        ch = await conn.channel()
        # nothing bound yet: mandatory publishing reports the message as not routable
        with pytest.raises(DeliveryError) as info:
            await s.send(rows(1)[0])
        assert "NO_ROUTE" in str(info.value) and not info.value.uncertain
        ex = await ch.get_exchange(exchange)
        queue = await ch.declare_queue(exclusive=True)
        await queue.bind(ex, "iot.a1B2c3D4e5F.*")
        await deliver_all(s, rows(20))
        got: list[aio_pika.abc.AbstractIncomingMessage] = []
        for _ in range(200):
            m = await queue.get(fail=False)
            if m is None:
                if len(got) == 20:
                    break
                await asyncio.sleep(0.02)
                continue
            got.append(m)
        assert len(got) == 20
        keys: dict[str, list[int]] = {}
        for m in got:
            keys.setdefault(m.routing_key or "", []).append(json.loads(m.body)["seq"])
        assert keys == {
            "iot.a1B2c3D4e5F.hall_00": list(range(0, 20, 2)),
            "iot.a1B2c3D4e5F.hall_01": list(range(1, 20, 2)),
        }
        first = next(m for m in got if m.message_id == "1000-7")  # devices run in parallel
        assert first.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert first.message_id == "1000-7" and first.content_type == "application/json"
        assert first.headers["deviceName"] == "hall.00"
        await ch.exchange_delete(exchange)
    finally:
        await s.close()
        await conn.close()


async def test_amqp_missing_exchange_and_bad_credentials() -> None:
    need(5672, "RabbitMQ")
    s = sink(
        {
            "type": "amqp",
            "url": "amqp://guest:guest@127.0.0.1:5672/",
            "exchange": "nope-" + secrets.token_hex(4),
            "routingKey": "x",
        }
    )
    with pytest.raises(DeliveryError, match="NOT_FOUND"):
        await s.send(rows(1)[0])
    await s.close()
    s = sink({"type": "amqp", "url": "amqp://guest:wrong@127.0.0.1:5672/", "routingKey": "x", "timeoutS": 5})
    with pytest.raises(DeliveryError) as info:
        await s.send(rows(1)[0])
    assert "cannot connect" in str(info.value) and "wrong" not in str(info.value)  # the password stays out of logs
    await s.close()


# -- Redis Streams --------------------------------------------------------------------------------
async def test_redis_xadd_in_order_and_trimmed() -> None:
    need(6379, "Redis")
    import redis.asyncio as aioredis

    key = f"fwtest:{secrets.token_hex(4)}"
    s = sink({"type": "redis", "url": "redis://127.0.0.1:6379/0", "stream": key + ":{productKey}"})
    trimmed = sink(
        {
            "type": "redis",
            "url": "redis://127.0.0.1:6379/0",
            "stream": key + ":small",
            "maxlen": 5,
            "approximate": False,
        }
    )
    r = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        await deliver_all(s, rows(20))
        entries = await r.xrange(f"{key}:a1B2c3D4e5F")
        assert len(entries) == 20
        seqs = {0: [], 1: []}  # type: dict[int, list[int]]
        for _, fields in entries:
            doc = json.loads(fields[b"data"])
            seqs[doc["device"]].append(doc["seq"])
        assert seqs == {0: list(range(0, 20, 2)), 1: list(range(1, 20, 2))}
        fields = next(f for _, f in entries if f[b"messageId"] == b"1000")  # devices run in parallel
        assert fields[b"productKey"] == b"a1B2c3D4e5F" and fields[b"deviceName"] == b"hall.00"
        assert fields[b"deliveryId"] == b"1000-7" and fields[b"contentType"] == b"application/json"
        done, error = await trimmed.send_ordered(rows(12, devices=1))
        assert (done, error) == (12, None)
        assert await r.xlen(f"{key}:small") == 5
    finally:
        await r.delete(f"{key}:a1B2c3D4e5F", f"{key}:small")
        await r.aclose()
        await s.close()
        await trimmed.close()


async def test_redis_refusal_and_unreachable() -> None:
    need(6379, "Redis")
    import redis.asyncio as aioredis

    key = f"fwtest:{secrets.token_hex(4)}"
    r = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    await r.set(key, "not a stream")  # XADD to a string key: WRONGTYPE for that one entry
    s = sink({"type": "redis", "url": "redis://127.0.0.1:6379/0", "stream": key})
    try:
        done, error = await s.send_ordered(rows(3, devices=1))
        assert done == 0 and error is not None and "WRONGTYPE" in str(error) and not error.uncertain
    finally:
        await r.delete(key)
        await r.aclose()
        await s.close()
    down = sink({"type": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "stream": "x", "timeoutS": 2})
    done, error = await down.send_ordered(rows(1))
    assert done == 0 and error is not None and not error.uncertain
    await down.close()


# -- MQTT: pipelined rounds -----------------------------------------------------------------------
async def test_mqtt_pipelined_round_keeps_device_order() -> None:
    """send_round hands a whole round to the client at once and waits once for the PUBACKs; every
    device's messages still arrive in order, with the metadata as MQTT 5 properties."""
    need(1883, "Mosquitto")
    import aiomqtt

    prefix = f"fwtest-{secrets.token_hex(4)}"
    s = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": prefix + "/{productKey}/{deviceName}"})
    # more than the in-flight window (paho queues the rest, in order), less than Mosquitto's default
    # queue of 1000 messages per subscriber
    n_devices, total = 40, 800
    batch = rows(total, devices=n_devices)
    groups: dict[int, list[OutboxRow]] = {}
    for r in batch:
        groups.setdefault(r.device_id, []).append(r)
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client("127.0.0.1", 1883, protocol=aiomqtt.ProtocolVersion.V5) as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)

        async def read() -> None:
            async for m in sub.messages:
                got.append(m)
                if len(got) == total:
                    return

        reader = asyncio.create_task(read())
        outcome = await s.send_round(list(groups.values()))
        await asyncio.wait_for(reader, 20)
    await s.close()
    assert outcome == [(total // n_devices, None)] * n_devices
    for device in range(n_devices):
        seqs = [json.loads(bytes(m.payload))["seq"] for m in got if str(m.topic).endswith(f"hall.{device:02d}")]  # type: ignore[arg-type]
        assert seqs == list(range(device, total, n_devices))
    props = got[0].properties
    assert props is not None and props.ContentType == "application/json"  # type: ignore[attr-defined]
    meta = dict(props.UserProperty)  # type: ignore[attr-defined]
    first = next(r for r in batch if r.body == bytes(got[0].payload))  # type: ignore[arg-type]
    assert meta == {
        "productKey": "a1B2c3D4e5F",
        "deviceName": first.device_name,
        "deviceId": f"a1B2c3D4e5F_{first.device_name}",
        "messageId": str(first.message_id),
        "deliveryId": f"{first.message_id}-7",
        "source": "property",
        "ruleId": "3",
        "topic": first.topic,
    }


async def test_mqtt_pipelined_round_refused_topic_stops_only_its_device() -> None:
    """A message whose topic the client refuses (a device name with a wildcard) fails on its own:
    its device's later rows wait behind it, the other devices are delivered."""
    need(1883, "Mosquitto")
    prefix = f"fwtest-{secrets.token_hex(4)}"
    s = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": prefix + "/{deviceName}"})
    good = rows(6, devices=2)
    bad = [msgspec.structs.replace(r, device_id=9, device_name="hall#9") for r in rows(3, devices=1)]
    outcome = await s.send_round([[r for r in good if r.device_id == 0], bad, [r for r in good if r.device_id == 1]])
    assert outcome[0] == (3, None) and outcome[2] == (3, None)
    done, error = outcome[1]
    assert done == 0 and error is not None and not error.uncertain and error.sent_after == 0
    assert "refused" in str(error)
    assert await s.send_round([good[:1]]) == [(1, None)]  # the connection is still good
    await s.close()


def test_mqtt_round_outcomes_count_rows_sent_behind_a_failure() -> None:
    """How a pipelined round's row states become per-device outcomes (the worker settles rows
    after the failed one as `unsure` when they were sent, else as not sent)."""
    from iotgate.forward.sinks import mqtt

    a, b, c = rows(4, devices=1), rows(3, devices=1), rows(2, devices=1)
    acked, pending, refused, unsent = mqtt._ACKED, mqtt._PENDING, mqtt._REFUSED, mqtt._UNSENT
    states = [acked, pending, acked, pending, refused, unsent, unsent, acked, acked]  # a | b | c
    out = mqtt.outcomes([a, b, c], states, {4: "publish to t refused: bad"}, "no PUBACK within 10 s", "")
    (done_a, err_a), (done_b, err_b), (done_c, err_c) = out
    assert done_a == 1 and err_a is not None and err_a.uncertain and err_a.sent_after == 2
    assert done_b == 0 and err_b is not None and not err_b.uncertain and err_b.sent_after == 0
    assert "refused: bad" in str(err_b)
    assert (done_c, err_c) == (2, None)


def test_mqtt_round_outcomes_broker_refusal() -> None:
    """A row the broker refused (MQTT 5 PUBACK with a failure reason code) stops its device and is
    not uncertain; rows sent behind it, refused or not, count as sent."""
    from iotgate.forward.sinks import mqtt

    a = rows(4, devices=1)
    acked, rejected = mqtt._ACKED, mqtt._REJECTED
    states = [acked, rejected, rejected, acked]
    (done, error) = mqtt.outcomes([a], states, {1: "publish to t refused by the broker: Not authorized"}, "", "")[0]
    assert done == 1 and error is not None and not error.uncertain and error.sent_after == 2
    assert "Not authorized" in str(error)


# -- MQTT: fewer system calls and objects per message ----------------------------------------------
def test_mqtt_prepared_topic_and_properties_match_metadata() -> None:
    """The topic and properties prepared once per device and kind of message give, for every row,
    exactly the topic template's rendering and the encoding of `metadata()`."""
    from iotgate.forward.sinks import metadata, mqtt

    s = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": "t/{productKey}/{deviceName}/{identifier}"})
    assert isinstance(s, mqtt.MqttSink)
    base = rows(1)[0]
    variants = [
        base,
        msgspec.structs.replace(base, message_id=5),
        msgspec.structs.replace(base, source="event", identifier="alarm", message_id=2**62),
        msgspec.structs.replace(base, topic="", content_type="text/plain"),
        msgspec.structs.replace(base, device_name="hällo-ünï", target_id=9),
        msgspec.structs.replace(base, source="lifecycle", identifier="online", topic=""),
    ]
    for row in variants * 2:  # the second time from the cache
        topic, head, tail = s._shape(row)
        assert topic == s.topic.render(row, 3)
        props = s._properties(row, head, tail)
        assert props is not None
        assert props.pack() == mqtt.pack_properties(row.content_type, list(metadata(row, 3).items()))
    for doc in ({"protocol": "3.1.1"}, {"userProperties": False}):
        plain = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": "t/{deviceName}", **doc})
        assert isinstance(plain, mqtt.MqttSink)
        assert plain._properties(base, *plain._shape(base)[1:]) is None


def test_mqtt_buffered_socket_keeps_what_the_kernel_did_not_take() -> None:
    """Writes are kept until flushed; a flush sends what the kernel takes and keeps the rest; past
    `limit` bytes waiting, send() says "would block" (paho then keeps the packet). Nothing is lost
    or reordered."""
    import socket

    from iotgate.forward.sinks import mqtt

    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    buf = mqtt.BufferedSocket(a)
    sent = bytearray()
    partial = False
    n = 0
    with pytest.raises(BlockingIOError):
        while True:  # as paho's loop_write, then our flush, over and over, the peer not reading
            for _ in range(10):
                packet = n.to_bytes(4, "big") * 250
                assert buf.send(packet) == len(packet)
                sent += packet
                n += 1
            partial = partial or not buf.flush()
    assert partial and len(buf.out) >= buf.limit
    got = bytearray()
    while len(got) < len(sent):
        buf.flush()
        with contextlib.suppress(BlockingIOError):
            got += b.recv(1 << 20)
    assert not buf.out and got == sent
    buf.close()
    b.close()


def _by_device(batch: list[OutboxRow]) -> list[list[OutboxRow]]:
    groups: dict[int, list[OutboxRow]] = {}
    for r in batch:
        groups.setdefault(r.device_id, []).append(r)
    return list(groups.values())


async def _round_as_received(
    s: Sink, batch: list[OutboxRow], prefix: str, port: int = 1883, protocol: str = "5"
) -> tuple[list[tuple[int, DeliveryError | None]], list[Any]]:
    """send_round while a subscriber on `prefix/#` collects the messages."""
    import aiomqtt

    version = aiomqtt.ProtocolVersion.V5 if protocol == "5" else aiomqtt.ProtocolVersion.V311
    got: list[aiomqtt.Message] = []
    async with aiomqtt.Client("127.0.0.1", port, protocol=version) as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)

        async def read() -> None:
            async for m in sub.messages:
                got.append(m)
                if len(got) == len(batch):
                    return

        reader = asyncio.create_task(read())
        outcome = await s.send_round(_by_device(batch))
        await asyncio.wait_for(reader, 30)
    return outcome, got


def _assert_in_order(got: list[Any], n_devices: int, total: int) -> None:
    for device in range(n_devices):
        seqs = [json.loads(bytes(m.payload))["seq"] for m in got if str(m.topic).endswith(f"hall.{device:02d}")]
        assert seqs == list(range(device, total, n_devices))


async def test_mqtt_round_larger_than_the_socket_buffer() -> None:
    """A round of 16 MB: the write buffer goes out in parts as the socket becomes writable; every
    message is confirmed and arrives once, in order per device."""
    need(1883, "Mosquitto")
    prefix = f"fwtest-{secrets.token_hex(4)}"
    s = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": prefix + "/{productKey}/{deviceName}"})
    n_devices, total = 8, 160
    batch = [
        msgspec.structs.replace(r, body=json.dumps({"seq": i, "pad": "x" * 100_000}).encode())
        for i, r in enumerate(rows(total, devices=n_devices))
    ]
    outcome, got = await _round_as_received(s, batch, prefix)
    await s.close()
    assert outcome == [(total // n_devices, None)] * n_devices
    assert len(got) == total
    _assert_in_order(got, n_devices, total)


async def test_mqtt_311_pipelined_round() -> None:
    """MQTT 3.1.1: no properties, PUBACKs of just the message ID."""
    need(1883, "Mosquitto")
    prefix = f"fwtest-{secrets.token_hex(4)}"
    topic = prefix + "/{productKey}/{deviceName}"
    s = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": topic, "protocol": "3.1.1"})
    n_devices, total = 10, 300
    outcome, got = await _round_as_received(s, rows(total, devices=n_devices), prefix, protocol="3.1.1")
    assert outcome == [(total // n_devices, None)] * n_devices
    _assert_in_order(got, n_devices, total)
    assert await s.send_round([rows(1)]) == [(1, None)]  # the next round on the same connection
    await s.close()


async def test_mqtt_broker_refusal_fails_only_its_device() -> None:
    """MQTT 5: a PUBACK with a failure reason code (Mosquitto answers "Not authorized" to a publish
    under $SYS) is not a delivery: that device stops there, not uncertain, the rows sent behind it
    counted; the other devices are delivered and the connection stays up."""
    need(1883, "Mosquitto")
    prefix = f"fwtest-{secrets.token_hex(4)}"
    s = sink({"type": "mqtt", "url": "mqtt://127.0.0.1:1883", "topic": "{deviceName}/" + prefix})
    good = rows(6, devices=2)
    bad = [msgspec.structs.replace(r, device_id=9, device_name="$SYS") for r in rows(3, devices=1)]
    outcome = await s.send_round([[r for r in good if r.device_id == 0], bad, [r for r in good if r.device_id == 1]])
    assert outcome[0] == (3, None) and outcome[2] == (3, None)
    done, error = outcome[1]
    assert done == 0 and error is not None and not error.uncertain and error.sent_after == 2
    assert "refused by the broker: Not authorized" in str(error)
    assert await s.send_round([good[:1]]) == [(1, None)]
    await s.close()


@pytest.fixture
def tls_broker(tmp_path: Any) -> Iterator[tuple[int, int, str]]:
    """A Mosquitto of our own: a TLS listener (the server certificate iotgate makes for itself) and
    a plain one for the subscriber. Yields (TLS port, plain port, CA file)."""
    import shutil
    import subprocess
    import time

    from iotgate.gateway.tls import ensure_self_signed

    if not shutil.which("mosquitto"):
        pytest.skip("mosquitto is not installed")
    cert, key, _, _ = ensure_self_signed(tmp_path)
    tls_port, plain_port = free_port(), free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"per_listener_settings false\nallow_anonymous true\npersistence false\nuser root\n"
        f"listener {plain_port} 127.0.0.1\nlistener {tls_port} 127.0.0.1\ncertfile {cert}\nkeyfile {key}\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if service_up(tls_port) and service_up(plain_port):
                break
            time.sleep(0.05)
        else:
            pytest.fail("mosquitto did not start")
        yield tls_port, plain_port, str(cert)
    finally:
        proc.terminate()
        proc.wait(10)


async def test_mqtts_pipelined_round(tls_broker: tuple[int, int, str]) -> None:
    """mqtts://: the same pipelined round over TLS (no write buffer there, TCP_QUICKACK per PUBACK)."""
    tls_port, plain_port, ca = tls_broker
    prefix = f"fwtest-{secrets.token_hex(4)}"
    url = f"mqtts://127.0.0.1:{tls_port}"
    s = sink({"type": "mqtt", "url": url, "topic": prefix + "/{productKey}/{deviceName}", "caFile": ca})
    n_devices, total = 10, 300
    outcome, got = await _round_as_received(s, rows(total, devices=n_devices), prefix, port=plain_port)
    assert outcome == [(total // n_devices, None)] * n_devices
    _assert_in_order(got, n_devices, total)
    await s.close()


class SilentBroker:
    """Accepts MQTT connections, answers CONNECT with a CONNACK (MQTT 5) and then never answers
    again; counts the PUBLISH packets it receives. With `split_acks`, it confirms every QoS 1
    PUBLISH instead, in PUBACKs cut into pieces written one after the other (alternately just the
    message ID and with the reason code "no matching subscribers"), so that the client reads
    PUBACKs split between two reads. With `drop_after`, the first connection is closed once that
    many PUBLISH packets arrived on it."""

    def __init__(self, split_acks: bool = False, drop_after: int = 0) -> None:
        self.port = free_port()
        self.publishes = 0
        self.split_acks = split_acks
        self.drop_after = drop_after
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> SilentBroker:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop_at = self.publishes + self.drop_after if self.drop_after and self.connections == 1 else 0
        acks = bytearray()
        more = asyncio.Event()

        async def send_acks() -> None:  # pieces of 3 to 11 bytes, each written on its own
            size = 3
            while True:
                await more.wait()
                more.clear()
                while acks:
                    writer.write(bytes(acks[:size]))
                    del acks[:size]
                    await writer.drain()
                    await asyncio.sleep(0.001)
                    size = 3 + (size + 4) % 9

        sender = asyncio.create_task(send_acks())
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                first = (await reader.readexactly(1))[0]
                size, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    size |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(size)
                if first >> 4 == 1:  # CONNECT
                    writer.write(b"\x20\x03\x00\x00\x00")
                    await writer.drain()
                elif first >> 4 == 3:  # PUBLISH
                    self.publishes += 1
                    if self.publishes == drop_at:
                        break
                    if self.split_acks:
                        at = 2 + int.from_bytes(body[:2], "big")
                        mid = body[at : at + 2]
                        acks += b"\x40\x02" + mid if self.publishes % 2 else b"\x40\x03" + mid + b"\x10"
                        more.set()
        sender.cancel()
        writer.close()


async def test_mqtt_window_bounds_messages_in_flight() -> None:
    """Against a broker that never confirms: exactly WINDOW messages go out, then the round stops
    after timeoutS; those are uncertain (sent), the rest not sent."""
    from iotgate.forward.sinks import mqtt

    async with SilentBroker() as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        s = sink({"type": "mqtt", "url": url, "topic": "t/{deviceName}", "timeoutS": 1})
        n_devices, total = 4, 4 * mqtt.WINDOW
        outcome = await s.send_round(_by_device(rows(total, devices=n_devices)))
        await s.close()
    assert broker.publishes == mqtt.WINDOW
    assert all(done == 0 and error is not None for done, error in outcome)
    sent = sum(1 + error.sent_after for _, error in outcome if error is not None and error.uncertain)
    assert sent == mqtt.WINDOW
    first, *others = [str(error) for _, error in outcome]
    assert first == "publish unconfirmed: no PUBACK within 1 s"  # the window is the first device's rows
    assert others == ["not sent: no PUBACK within 1 s"] * (n_devices - 1)


async def test_mqtt_puback_split_between_reads() -> None:
    """PUBACKs that arrive in pieces (a packet's start at the end of one read, its rest in the
    next; with and without a reason code) are all matched: the whole round is confirmed."""
    async with SilentBroker(split_acks=True) as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        s = sink({"type": "mqtt", "url": url, "topic": "t/{deviceName}", "timeoutS": 5})
        n_devices, total = 5, 400
        outcome = await s.send_round(_by_device(rows(total, devices=n_devices)))
        assert outcome == [(total // n_devices, None)] * n_devices
        assert await s.send_round([rows(3, devices=1)]) == [(3, None)]
        await s.close()
    assert broker.publishes == total + 3


async def test_mqtt_connection_lost_mid_round() -> None:
    """The broker closes the connection in the middle of a round: what was sent is uncertain, the
    rest not sent; the next round connects again and is delivered."""
    async with SilentBroker(split_acks=True, drop_after=50) as broker:
        url = f"mqtt://127.0.0.1:{broker.port}"
        s = sink({"type": "mqtt", "url": url, "topic": "t/{deviceName}", "timeoutS": 5})
        batch = _by_device(rows(400, devices=2))
        outcome = await s.send_round(batch)
        assert all(done < len(group) and error is not None for (done, error), group in zip(outcome, batch, strict=True))
        assert any(error is not None and error.uncertain and "connection lost" in str(error) for _, error in outcome)
        assert await s.send_round(batch) == [(200, None), (200, None)]
        await s.close()
    assert broker.connections == 2
