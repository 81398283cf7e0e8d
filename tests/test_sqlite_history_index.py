"""SQLite's history index, written behind ingest (storage/history_index.py).

A device's property history is the same whether its rows are indexed, being indexed or not yet
indexed, after a crash in the middle of a pass, after deletes and retention, and on a database made
before the index table existed. Every history row ends up with exactly one index entry."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import abandon, property_report
from iotgate.ingest.ids import MessageIds
from iotgate.storage import history_index
from iotgate.storage.base import DeviceRow, ProductRow, Record
from iotgate.storage.sqlite import SqliteStorage

IDS = MessageIds(11)
DAY_MS = 24 * 3600 * 1000


@pytest.fixture(autouse=True)
def passes_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No timed passes: the test decides what is indexed. Small steps, so a pass has several."""
    monkeypatch.setattr(history_index, "INDEX_WINDOW_S", 1e9)
    monkeypatch.setattr(history_index, "INDEX_STEP_ROWS", 7)


def prop(device: int, ts: int, **values: Any) -> Record:
    return property_report(IDS.next(), device, ts, **values)


async def opened(path: Path, n_devices: int = 0) -> tuple[SqliteStorage, list[int]]:
    storage = SqliteStorage(path)
    await storage.open()
    if not n_devices:
        return storage, []
    await storage.insert_product(
        ProductRow(product_key="pkIndex0001", name="p", node_type="direct", data_format="alink-json", auth_type="x")
    )
    rows = [DeviceRow(id=0, product_key="pkIndex0001", device_name=f"d{i}", secret="s") for i in range(n_devices)]
    return storage, [r.id for r in await storage.insert_devices(rows)]


def expected(reports: list[Record], device: int, key: str, since: int, until: int, limit: int) -> list[tuple[int, Any]]:
    hits = [
        (r.ts, r.message_id, r.values[key])
        for r in reports
        if r.device_id == device and r.values and key in r.values and since <= r.ts <= until
    ]
    return [(ts, v) for ts, _, v in sorted(hits, reverse=True)[:limit]]


async def step(storage: SqliteStorage) -> bool:
    return bool(await storage._write(lambda c: storage._index_step_logged()))


async def stage_then_move(storage: SqliteStorage, chunks: int) -> None:
    """Run a pass until its rows are staged and `chunks` of them moved into the index."""
    assert await step(storage)
    while storage._history_index._staged < storage._history_index._target:
        await step(storage)
    for _ in range(chunks):
        assert await step(storage)


async def index_all(storage: SqliteStorage) -> None:
    """Passes until one finds nothing new."""
    mark = -1
    while mark != storage._history_index.mark:
        mark = storage._history_index.mark
        while await step(storage):
            pass


def index_state(path: Path) -> tuple[set[tuple[int, int, int]], set[tuple[int, int, int]], int, int]:
    """(history rows, index entries, the mark, the newest rowid) as stored."""
    with sqlite3.connect(path) as con:
        rows = set(con.execute("SELECT device_id, ts, message_id FROM history"))
        entries = set(con.execute("SELECT device_id, ts, message_id FROM history_index"))
        mark = int(con.execute("SELECT value FROM meta WHERE key=?", (history_index.MARK_KEY,)).fetchone()[0])
        newest = int(con.execute("SELECT COALESCE(MAX(rowid), 0) FROM history").fetchone()[0])
    return rows, entries, mark, newest


async def assert_history(storage: SqliteStorage, reports: list[Record], devices: list[int]) -> None:
    for dev in devices:
        for key, since, until, limit in (("a", 0, 10**6, 1000), ("a", 15, 40, 3), ("b", 0, 10**6, 5)):
            got = await storage.property_history(dev, key, since, until, limit)
            assert got == expected(reports, dev, key, since, until, limit), (dev, key, since, until, limit)


def reports_for(devices: list[int], start: int, n: int) -> list[Record]:
    """n reports per device; `b` in every third one; times out of order within a device."""
    out = []
    for i in range(start, start + n):
        for dev in devices:
            ts = 10 + (i * 7) % 50
            out.append(prop(dev, ts, a=i, **({"b": -i} if i % 3 == 0 else {})))
    return out


async def test_history_is_the_same_indexed_not_indexed_and_half_way(tmp_path: Path) -> None:
    storage, devs = await opened(tmp_path / "db.sqlite", 3)
    try:
        reports = reports_for(devs, 0, 12)
        for i in range(0, len(reports), 5):
            await storage.write_batch(reports[i : i + 5])
        await assert_history(storage, reports, devs)  # all of it in the tail
        await stage_then_move(storage, 1)
        rows, entries, mark, _ = index_state(tmp_path / "db.sqlite")
        assert entries and entries < rows and mark == 0
        await assert_history(storage, reports, devs)  # moved rows are in both parts, returned once
        await index_all(storage)
        rows, entries, mark, newest = index_state(tmp_path / "db.sqlite")
        assert entries == rows and mark == newest
        later = reports_for(devs, 12, 4)
        await storage.write_batch(later)
        await assert_history(storage, reports + later, devs)  # index and tail together
    finally:
        await storage.close()
    rows, entries, mark, newest = index_state(tmp_path / "db.sqlite")
    assert entries == rows and mark == newest  # a clean stop leaves nothing to index


async def test_a_crash_in_the_middle_of_a_pass_loses_and_doubles_nothing(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    storage, devs = await opened(path, 2)
    reports = reports_for(devs, 0, 20)
    await storage.write_batch(reports)
    await stage_then_move(storage, 2)
    assert index_state(path)[1]
    # no close(): a crash; the stage (a temporary table) is gone with the connection
    reopened, _ = await opened(path)
    try:
        await assert_history(reopened, reports, devs)
        await index_all(reopened)
        rows, entries, mark, newest = index_state(path)
        assert entries == rows and mark == newest
        await assert_history(reopened, reports, devs)
    finally:
        await reopened.close()
        abandon(storage)


async def test_deleting_a_device_takes_its_indexed_staged_and_tail_rows(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    storage, (gone, kept) = await opened(path, 2)
    try:
        first = reports_for([gone, kept], 0, 10)
        await storage.write_batch(first)
        await index_all(storage)
        second = reports_for([gone, kept], 10, 10)
        await storage.write_batch(second)
        assert await step(storage)  # staged, not moved
        third = reports_for([gone, kept], 20, 3)
        await storage.write_batch(third)  # the tail beyond the pass
        assert await storage.delete_device(gone)
        await index_all(storage)
        rows, entries, mark, newest = index_state(path)
        assert entries == rows and mark == newest
        assert {d for d, _, _ in rows} == {kept}
        assert await storage.property_history(gone, "a", 0, 10**6, 100) == []
        await assert_history(storage, [r for r in first + second + third if r.device_id == kept], [kept])
    finally:
        await storage.close()


async def test_rows_after_the_newest_rows_were_deleted_are_indexed(tmp_path: Path) -> None:
    """A new row gets one past the largest rowid left: once the newest rows are deleted, the mark
    must come down with them, or the next rows would never be indexed."""
    path = tmp_path / "db.sqlite"
    storage, (dev, gone) = await opened(path, 2)
    try:
        await storage.write_batch(reports_for([dev], 0, 3))
        await storage.write_batch(reports_for([gone], 0, 9))
        await index_all(storage)
        assert await storage.delete_device(gone)
        later = reports_for([dev], 3, 5)
        await storage.write_batch(later)
        await index_all(storage)
        rows, entries, mark, newest = index_state(path)
        assert entries == rows and mark == newest and len(rows) == 8
    finally:
        await storage.close()


async def test_retention_removes_old_rows_indexed_or_not(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    storage, devs = await opened(path, 2)
    try:
        now = int(time.time() * 1000)
        old = [prop(d, now - 40 * DAY_MS + i, a=i) for i in range(6) for d in devs]
        young = [prop(d, now - DAY_MS + i, a=i) for i in range(6) for d in devs]
        await storage.write_batch(old[:6] + young[:6])
        await index_all(storage)
        await storage.write_batch(old[6:] + young[6:])  # not indexed yet
        cutoff, removed, more = now - 30 * DAY_MS, 0, True
        while more:
            n, more = await storage.expire_step(cutoff, 4)
            removed += n
        assert removed == len(old)
        await index_all(storage)
        rows, entries, mark, newest = index_state(path)
        assert entries == rows and mark == newest
        assert {m for _, _, m in rows} == {r.message_id for r in young}
    finally:
        await storage.close()


async def test_a_database_made_with_the_plain_index_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    storage, devs = await opened(path, 2)
    reports = reports_for(devs, 0, 10)
    await storage.write_batch(reports)
    await storage.close()
    with sqlite3.connect(path) as con:  # as a database of the versions before the index table
        con.execute("DROP TABLE history_index")
        con.execute("CREATE INDEX history_device_ts ON history (device_id, ts)")
        con.execute(
            "DELETE FROM meta WHERE key IN (?, 'migration:0004-sqlite-history-index')", (history_index.MARK_KEY,)
        )
    reopened, _ = await opened(path)
    try:
        rows, entries, mark, newest = index_state(path)
        assert entries == rows and mark == newest and len(rows) == len(reports)
        with sqlite3.connect(path) as con:
            assert con.execute("SELECT COUNT(*) FROM sqlite_master WHERE name='history_device_ts'").fetchone()[0] == 0
        await assert_history(reopened, reports, devs)
    finally:
        await reopened.close()


def test_a_history_query_reads_the_index_and_the_tail_by_range(tmp_path: Path) -> None:
    """The plan, not a timing: neither part may scan all of history, and the indexed part comes
    out in order (merged with the tail, no sort of everything in range)."""
    import asyncio

    async def make() -> None:
        storage = SqliteStorage(tmp_path / "db.sqlite")
        await storage.open()
        await storage.close()

    asyncio.run(make())
    with sqlite3.connect(tmp_path / "db.sqlite") as con:
        plan = [r[3] for r in con.execute("EXPLAIN QUERY PLAN " + history_index.PROPERTY_HISTORY, ("$.a", 1, 0, 9, 5))]
    assert "MERGE (UNION)" in plan
    assert any(p.startswith("SEARCH i USING PRIMARY KEY (device_id=?") for p in plan)
    assert "SEARCH history USING INTEGER PRIMARY KEY (rowid>?)" in plan
    assert not any(p.startswith("SCAN") for p in plan)
    assert plan.count("USE TEMP B-TREE FOR ORDER BY") == 1  # the tail's, which is small
