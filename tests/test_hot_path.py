"""The dialects' hot path (AlinkDialect.topic_now, IotdaDialect.report_now) against the full path.

The hot path answers a valid report of a cached device without a coroutine; everything else it
leaves (None) to the full path, before it has counted or consumed anything. In-process, with the
real storage, registry, group commit and core: what a device is told and what is committed must
not depend on the path taken.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iotgate import metrics
from iotgate.auth.tokens import DIALECT_ALINK, DIALECT_IOTDA, TokenSigner
from iotgate.config import Settings
from iotgate.core import DeviceCore
from iotgate.gateway.http import Request, Response
from iotgate.gateway.pending import Pending
from iotgate.gateway.router import DeviceRouter
from iotgate.ingest.ids import MessageIds
from iotgate.ingest.pipeline import Ingestor
from iotgate.model import parse_model
from iotgate.registry.service import Registry
from iotgate.storage.base import Record
from iotgate.storage.sqlite import SqliteStorage

MODEL = {
    "properties": [
        {"identifier": "temperature", "dataType": {"type": "float", "specs": {"min": -40, "max": 120}}},
        {"identifier": "humidity", "dataType": {"type": "int32", "specs": {"min": 0, "max": 100}}},
    ],
    "events": [{"identifier": "overheat", "type": "alert", "outputData": []}],
}


class Rig:
    def __init__(self, router: DeviceRouter, core: DeviceCore, committed: list[Record]) -> None:
        self.router, self.core, self.committed = router, core, committed
        self.pk = ""
        self.names: list[str] = []

    def alink(self, name: str, params: Any, *, topic: str = "", ctype: str = "application/json") -> Request:
        token, _ = self.core.issue_token(self.device(name), DIALECT_ALINK, 3600)
        req = Request()
        req.method = b"POST"
        req.path = "/topic" + (topic or f"/sys/{self.pk}/{name}/thing/event/property/post")
        req.headers = {"password": token, "content-type": ctype}
        req.body = json.dumps({"id": "1", "params": params}).encode()
        return req

    def iotda(self, name: str, services: list[dict[str, Any]]) -> Request:
        token, _ = self.core.issue_token(self.device(name), DIALECT_IOTDA, 3600)
        req = Request()
        req.method = b"POST"
        req.path = f"/v5/devices/{self.pk}_{name}/sys/properties/report"
        req.headers = {"access_token": token, "content-type": "application/json"}
        req.body = json.dumps({"services": services}).encode()
        return req

    def device(self, name: str) -> Any:
        info = self.core.registry.cached_info_by_name(self.pk, name)
        assert info is not None
        return info


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    registry = Registry(storage, 3600)
    await registry.start()
    ingestor = Ingestor(storage)
    ingestor.start()
    committed: list[Record] = []
    ingestor.after_commit.append(committed.extend)
    settings = Settings(data_dir=str(tmp_path), device_rate_per_s=1, device_rate_burst=3)
    core = DeviceCore(settings, registry, ingestor, TokenSigner(b"k" * 32), MessageIds(1))
    rig = Rig(DeviceRouter(core), core, committed)
    product = await registry.create_product("p", "direct", "alink-json", "device-secret")
    await registry.save_draft(product.product_key, parse_model(MODEL))
    await registry.publish(product.product_key)
    rig.pk = product.product_key
    rig.names = [f"dev-{i}" for i in range(8)]
    for row in await registry.add_devices(rig.pk, list[str | None](rig.names)):
        await registry.info(row.id)  # cached, as after a device's first request
    await registry.product_cached(rig.pk)
    try:
        yield rig
    finally:
        await ingestor.stop()
        await registry.stop()
        await storage.close()


def counted() -> tuple[int, int]:
    return sum(metrics.TOKEN_VERIFICATIONS.values.values()), sum(metrics.LIMIT_EVENTS.values.values())


async def test_only_valid_reports_of_cached_devices_take_the_hot_path(rig: Rig) -> None:
    alink, iotda = rig.router.alink, rig.router.iotda
    dev = rig.names[0]
    before = counted()
    left = [
        alink.topic_now(rig.alink(dev, {"temperature": 500})),  # above max: recorded by the full path
        alink.topic_now(rig.alink(dev, {"nope": 1})),
        alink.topic_now(rig.alink(dev, {})),
        alink.topic_now(
            rig.alink(dev, {"temperature": 1}, topic=f"/sys/{rig.pk}/{rig.names[1]}/thing/event/property/post")
        ),
        alink.topic_now(rig.alink(dev, {"value": {}}, topic=f"/sys/{rig.pk}/{dev}/thing/event/overheat/post")),
        iotda.report_now(rig.iotda(dev, [{"service_id": "default", "properties": {"temperature": 500}}])),
        iotda.report_now(rig.iotda(dev, [{"service_id": "default", "properties": {"humidity": 1}}] * 2)),
    ]
    stale = rig.alink(dev, {"temperature": 1})
    rig.core.registry._forget(rig.device(dev).id)  # not cached: the full path loads it
    left += [alink.topic_now(stale)]
    assert left == [None] * len(left)
    assert counted() == before and not rig.core.limiter._buckets  # nothing counted, no rate token used
    taken = [
        alink.topic_now(rig.alink(rig.names[2], {"temperature": 1.5})),
        alink.topic_now(rig.alink(rig.names[2], {"humidity": {"value": 1, "time": 1_700_000_000_000}})),  # long form
        alink.topic_now(rig.alink(rig.names[2], {"humidity": 2}, ctype="application/json; charset=utf-8")),
        iotda.report_now(rig.iotda(rig.names[3], [{"service_id": "default", "properties": {"humidity": 7}}])),
    ]
    for pending in taken:
        assert isinstance(pending, Pending)
        for fut in pending.futures:
            await fut


async def test_both_paths_answer_and_commit_alike(rig: Rig) -> None:
    fast, full = rig.names[4], rig.names[5]
    params = {"temperature": 21.5, "humidity": 40}
    hot = rig.router.alink.topic_now(rig.alink(fast, params))
    assert isinstance(hot, Pending)
    for fut in hot.futures:
        await fut
    slow = await rig.router.alink.topic(rig.alink(full, params))
    ids = [json.loads(r.body)["info"].pop("messageId") for r in (hot.reply, slow)]
    assert (
        hot.reply.status == slow.status == 200
        and hot.reply.body.split(b"messageId")[0] == slow.body.split(b"messageId")[0]
    )
    by_device = {r.device_id: r for r in rig.committed}
    a, b = by_device[rig.device(fast).id], by_device[rig.device(full).id]
    assert [a.message_id, b.message_id] == ids
    assert (a.kind, a.values, a.payload, a.topic.replace(fast, "*")) == (
        b.kind,
        b.values,
        b.payload,
        b.topic.replace(full, "*"),
    )


async def test_rate_limited_alike(rig: Rig) -> None:
    """device_rate_per_s 1, burst 3: a device's fourth report within the second is refused,
    with the same reply either way and nothing committed."""
    fast, full = rig.names[6], rig.names[7]
    for name in (fast, full):
        for _ in range(3):
            first = await rig.router.handle(rig.alink(name, {"humidity": 1}))
            assert json.loads(first.body)["code"] == 0
    fourth = rig.router.alink.topic_now(rig.alink(fast, {"humidity": 2}))
    assert isinstance(fourth, Response)
    replies = [fourth, await rig.router.alink.topic(rig.alink(full, {"humidity": 2}))]
    bodies = [json.loads(r.body) for r in replies]
    assert bodies[0]["code"] == bodies[1]["code"] == 40000
    assert bodies[0]["message"].replace(fast, "*") == bodies[1]["message"].replace(full, "*")
    assert [r.values for r in rig.committed] == [{"humidity": 1}] * 6


async def test_hot_path_successes_are_counted_and_logged_as_any_reply(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """metrics.device_ok (the hot path's count) adds to the same counter and writes the same
    access-log line as device_reply, which classifies the path and the reply itself."""
    alink = rig.alink(rig.names[1], {"humidity": 3})
    iotda = rig.iotda(rig.names[1], [{"service_id": "default", "properties": {"humidity": 3}}])
    success = Response(200, b'{"code":0,"message":"success","info":{"messageId":12}}')
    metrics.set_access_log(True)
    try:
        for req, resp, key in (
            (alink, success, metrics.ALINK_TOPIC_OK),
            (iotda, Response(200, b""), metrics.IOTDA_REPORT_OK),
        ):
            lines = []
            for count in (metrics.device_reply, lambda q, r, k=key: metrics.device_ok(q, r, k)):
                caplog.clear()
                before = dict(metrics.DEVICE_REQUESTS.values)
                with caplog.at_level("INFO", logger="iotgate.access"):
                    count(req, resp)
                after = metrics.DEVICE_REQUESTS.values
                assert {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)} == {key: 1}
                lines.append([(r.getMessage(), r.__dict__["result"], r.__dict__["path"]) for r in caplog.records])
            assert lines[0] == lines[1] and len(lines[0]) == 1
    finally:
        metrics.set_access_log(False)
