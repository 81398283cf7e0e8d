"""SQLite keeps latest values and last-seen times in memory and checkpoints them; nothing acknowledged is lost.

A batch is durable when `write_batch` returns (history/messages rows); the `latest` and
`device_seen` tables follow at checkpoints. Reads overlay what is not checkpointed yet, and a
storage opened after an unclean stop rebuilds the rest from history.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import abandon, property_report, table_latest
from iotgate.ingest.ids import MessageIds
from iotgate.storage import sqlite as sqlite_mod
from iotgate.storage.base import DeviceRow, ProductRow, Record
from iotgate.storage.sqlite import SqliteStorage

IDS = MessageIds(7)


def prop(device: int, ts: int, **values: object) -> Record:
    return property_report(IDS.next(), device, ts, **values)


async def make_device(storage: SqliteStorage) -> int:
    await storage.insert_product(
        ProductRow(product_key="pkCheckpt01", name="p", node_type="direct", data_format="alink-json", auth_type="x")
    )
    rows = await storage.insert_devices([DeviceRow(id=0, product_key="pkCheckpt01", device_name="dev1", secret="s")])
    return rows[0].id


async def test_reads_see_values_before_the_checkpoint_and_the_newest_time_wins(
    tmp_path: Path, no_timed_checkpoints: None
) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    try:
        storage._checkpoint_at = time.monotonic()
        dev = await make_device(storage)
        await storage.write_batch([prop(dev, 1000, t=20, h=50)])
        await storage.write_batch([prop(dev, 500, t=99)])  # older event time: not the latest value
        await storage.write_batch([prop(dev, 2000, h=55)])
        assert await storage.latest_values(dev) == {"t": (20, 1000), "h": (55, 2000)}
        assert table_latest(storage.path, dev) == {}  # nothing checkpointed yet
        seen = await storage.last_seen()
        assert seen[dev] > 0
    finally:
        await storage.close()
    # a clean stop writes everything out
    assert table_latest(tmp_path / "db.sqlite", dev) == {"t": ("20", 1000), "h": ("55", 2000)}


async def test_unclean_stop_rebuilds_latest_values_and_last_seen_from_history(
    tmp_path: Path, no_timed_checkpoints: None
) -> None:
    path = tmp_path / "db.sqlite"
    first = SqliteStorage(path)
    await first.open()
    dev = await make_device(first)
    await first.write_batch([prop(dev, 1000, t=20, h=50)])
    await first.close()  # checkpointed: latest t=20, h=50
    crashed = SqliteStorage(path)
    await crashed.open()
    crashed._checkpoint_at = time.monotonic()
    await crashed.write_batch([prop(dev, 3000, t=21)])
    await crashed.write_batch([prop(dev, 2500, h=60), prop(dev, 100, t=-5)])
    message = Record(
        message_id=IDS.next(), device_id=dev, kind="message", ts=1, received_at=int(time.time() * 1000) + 60_000
    )
    await crashed.write_batch([message])
    assert table_latest(path, dev) == {"t": ("20", 1000), "h": ("50", 1000)}
    # no close(): the process "dies" here, its connections simply stay behind
    reopened = SqliteStorage(path)
    await reopened.open()
    try:
        assert table_latest(path, dev) == {"t": ("21", 3000), "h": ("60", 2500)}
        assert await reopened.latest_values(dev) == {"t": (21, 3000), "h": (60, 2500)}
        assert (await reopened.last_seen())[dev] == message.received_at
    finally:
        await reopened.close()
        abandon(crashed)


async def test_checkpoint_in_small_steps_and_deleted_devices_are_not_written_back(
    tmp_path: Path, no_timed_checkpoints: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "CHECKPOINT_ROWS", 3)
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    try:
        storage._checkpoint_at = time.monotonic()
        dev = await make_device(storage)
        other = (
            await storage.insert_devices([DeviceRow(id=0, product_key="pkCheckpt01", device_name="dev2", secret="s")])
        )[0].id
        await storage.write_batch([prop(dev, 10, a=1, b=2, c=3, d=4), prop(other, 10, a=9, b=9, c=9, d=9)])
        assert await storage._write(storage._checkpoint_step) is True  # 3 of 8 rows written, snapshot still overlaid
        assert await storage.latest_values(dev) == {"a": (1, 10), "b": (2, 10), "c": (3, 10), "d": (4, 10)}
        assert await storage.delete_device(other)
        await storage._write(storage._checkpoint)
        assert table_latest(storage.path, other) == {}
        assert set(table_latest(storage.path, dev)) == {"a", "b", "c", "d"}
        assert await storage.latest_values(dev) == {"a": (1, 10), "b": (2, 10), "c": (3, 10), "d": (4, 10)}
    finally:
        await storage.close()
    assert len(table_latest(tmp_path / "db.sqlite", dev)) == 4
