"""PostgreSQL: running status kept per process, flushed, and replayed after a crash (pg_running_status.py).

Several `PostgresStorage` objects on one database stand for processes or nodes. A "crash" drops a
storage's connections without its final flush, as SIGKILL would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iotgate.ingest.ids import MessageIds
from iotgate.storage import pg_running_status
from iotgate.storage.base import Record
from iotgate.storage.postgres import PostgresStorage
from test_storage_contract import devices, product

IDS = MessageIds(node_id=7)


def report(device: int, ts: int, **values: Any) -> Record:
    """A property report received now, with a real message ID (replay finds rows by ID time)."""
    return Record(
        message_id=IDS.next(),
        device_id=device,
        kind="property",
        ts=ts,
        received_at=int(time.time() * 1000),
        values=values,
    )


async def crash(storage: PostgresStorage) -> None:
    """End a storage as SIGKILL would: no final flush; its connections (and advisory lock) drop."""
    assert storage._status is not None
    await storage._status.close(flush=False)
    storage._status = None
    storage.pool.terminate()
    storage._pool = None


async def table_latest(storage: PostgresStorage, device: int) -> dict[str, tuple[str, int]]:
    rows = await storage.pool.fetch("SELECT identifier, value, ts FROM latest WHERE device_id=$1", device)
    return {r[0]: (r[1], r[2]) for r in rows}


async def writers(storage: PostgresStorage) -> list[int]:
    return [r[0] for r in await storage.pool.fetch("SELECT writer FROM running_status_writers ORDER BY writer")]


@pytest.fixture
async def nodes(pg_url: str) -> AsyncIterator[list[PostgresStorage]]:
    """Two processes on one database; the timed flush is off (3600 s) so tests flush when they mean to."""
    opened = [PostgresStorage(pg_url, running_status_flush_s=3600) for _ in range(2)]
    for s in opened:
        await s.open()
    yield opened
    for s in opened:
        if s._pool is not None:
            await s.close()


async def test_a_process_sees_its_reports_at_once_others_after_its_flush(nodes: list[PostgresStorage]) -> None:
    a, b = nodes
    pk = await product(a)
    (dev,) = await devices(a, pk, "flush-01")
    await a.write_batch([report(dev.id, 1000, t=1, h=50), report(dev.id, 2000, t=2)])
    assert await a.latest_values(dev.id) == {"t": (2, 2000), "h": (50, 1000)}  # its own: at once
    assert await table_latest(a, dev.id) == {}  # not upserted by the commit
    assert await b.latest_values(dev.id) == {}  # another process: not yet
    assert dev.id in await a.last_seen() and dev.id not in await b.last_seen()
    assert len(await b.property_history(dev.id, "t", 0, 10**13, 10)) == 2  # history: at once, everywhere

    await a.flush_running_status()
    assert await b.latest_values(dev.id) == {"t": (2, 2000), "h": (50, 1000)}
    assert dev.id in await b.last_seen()
    assert await table_latest(a, dev.id) == {"t": ("2", 2000), "h": ("50", 1000)}


async def test_an_older_report_flushed_later_does_not_replace_a_newer_value(nodes: list[PostgresStorage]) -> None:
    a, b = nodes
    pk = await product(a)
    (dev,) = await devices(a, pk, "order-01")
    await a.write_batch([report(dev.id, 5000, t=5)])
    await a.flush_running_status()
    await b.write_batch([report(dev.id, 4000, t=4, h=1)])  # another node, an older event time
    await b.flush_running_status()
    assert await a.latest_values(dev.id) == {"t": (5, 5000), "h": (1, 4000)}


async def test_a_killed_writer_is_replayed_by_the_next_process_to_start(
    nodes: list[PostgresStorage], pg_url: str
) -> None:
    a, b = nodes
    pk = await product(a)
    dev, quiet = await devices(a, pk, "crash-01", "crash-02")
    await a.write_batch([report(dev.id, 1000, t=1), report(quiet.id, 1000, t=9)])
    await a.flush_running_status()
    await a.write_batch([report(dev.id, 3000, t=3, h=30)])  # committed, acknowledged, not flushed
    await a.write_batch(
        [Record(message_id=IDS.next(), device_id=quiet.id, kind="event", ts=1, received_at=int(time.time() * 1000))]
    )
    seen_before = (await a.last_seen())[quiet.id]
    key = a._status.key if a._status else 0
    await crash(a)
    assert key in await writers(b)
    assert await b.latest_values(dev.id) == {"t": (1, 1000)}  # the crash lost the pending values

    restarted = PostgresStorage(pg_url, running_status_flush_s=3600)
    await restarted.open()  # every process replays writers that are gone when it starts
    try:
        assert await b.latest_values(dev.id) == {"t": (3, 3000), "h": (30, 3000)}
        assert await b.latest_values(quiet.id) == {"t": (9, 1000)}
        assert (await b.last_seen())[quiet.id] == seen_before  # from the event in `messages`
        assert key not in await writers(b)
    finally:
        await restarted.close()


async def test_a_live_writer_is_not_replayed_and_a_clean_close_leaves_nothing(nodes: list[PostgresStorage]) -> None:
    a, b = nodes
    pk = await product(a)
    (dev,) = await devices(a, pk, "live-01")
    await a.write_batch([report(dev.id, 1000, t=1)])
    assert a._status is not None
    key = a._status.key
    assert await pg_running_status.replay_gone_writers(b.pool) == 0  # a holds its lock: alive
    assert key in await writers(b) and await b.latest_values(dev.id) == {}
    await a.close()  # flushes, then drops its row
    assert key not in await writers(b)
    assert await b.latest_values(dev.id) == {"t": (1, 1000)}


async def test_a_device_deleted_elsewhere_is_not_written_back(nodes: list[PostgresStorage]) -> None:
    a, b = nodes
    pk = await product(a)
    gone, kept = await devices(a, pk, "del-01", "del-02")
    await a.write_batch([report(gone.id, 1000, t=1), report(kept.id, 1000, t=2)])
    assert await b.delete_device(gone.id)  # another process deletes it while a holds its values
    await a.flush_running_status()
    assert await table_latest(a, gone.id) == {}
    assert gone.id not in await b.last_seen()
    assert await table_latest(a, kept.id) == {"t": ("2", 1000)}


async def test_a_failed_flush_keeps_the_values_for_the_next(
    nodes: list[PostgresStorage], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = nodes
    pk = await product(a)
    (dev,) = await devices(a, pk, "retry-01")
    await a.write_batch([report(dev.id, 1000, t=1, h=10)])

    async def broken(*_: object) -> None:
        raise OSError("connection reset")

    monkeypatch.setattr(pg_running_status, "write_status", broken)
    with pytest.raises(OSError):
        await a.flush_running_status()
    monkeypatch.undo()
    await a.write_batch([report(dev.id, 2000, t=2)])  # folded while the snapshot was out
    assert await a.latest_values(dev.id) == {"t": (2, 2000), "h": (10, 1000)}
    await a.flush_running_status()
    assert await b.latest_values(dev.id) == {"t": (2, 2000), "h": (10, 1000)}


async def test_flush_interval_zero_upserts_in_every_commit(pg_url: str) -> None:
    a = PostgresStorage(pg_url, running_status_flush_s=0)
    await a.open()
    try:
        pk = await product(a)
        (dev,) = await devices(a, pk, "direct-01")
        await a.write_batch([report(dev.id, 1000, t=1), report(dev.id, 2000, t=2, h=5)])
        assert await table_latest(a, dev.id) == {"t": ("2", 2000), "h": ("5", 2000)}
        assert dev.id in await a.last_seen()
        assert await writers(a) == []
    finally:
        await a.close()


async def test_the_timed_flush_outlives_an_unexpected_error(pg_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    a = PostgresStorage(pg_url, running_status_flush_s=0.05)
    await a.open()
    try:
        pk = await product(a)
        (dev,) = await devices(a, pk, "timed-01")
        failures = 0
        real_write = pg_running_status.write_status

        async def flaky(*args: Any) -> None:
            nonlocal failures
            if failures < 2:  # e.g. asyncpg's InterfaceError while a pool reconnects
                failures += 1
                raise RuntimeError("pool in trouble")
            await real_write(*args)

        monkeypatch.setattr(pg_running_status, "write_status", flaky)
        await a.write_batch([report(dev.id, 1000, t=1)])
        deadline = time.monotonic() + 5
        while await table_latest(a, dev.id) == {} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert failures == 2 and await table_latest(a, dev.id) == {"t": ("1", 1000)}
    finally:
        await a.close()
