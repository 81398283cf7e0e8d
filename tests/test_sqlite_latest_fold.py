"""SQLite's writer: in-memory latest values, their checkpoint watermarks and the WAL.

Latest values are the newest value per property (of equal times, the later commit), before a
checkpoint, after it and after a crash, also for rows that commit after a checkpoint with an older
message ID (device workers make IDs in parallel). Committed WAL pages reach the database file
through a thread of their own."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import abandon, property_report, table_latest
from iotgate.ingest.ids import MessageIds
from iotgate.storage import sqlite as sqlite_mod
from iotgate.storage.base import DeviceRow, ProductRow, Record
from iotgate.storage.sqlite import SqliteStorage

IDS = MessageIds(9)


def prop(device: int, ts: int, **values: Any) -> Record:
    return property_report(IDS.next(), device, ts, **values)


def newest(reports: list[Record]) -> dict[str, tuple[Any, int]]:
    """The reference: one property at a time, in commit order."""
    out: dict[str, tuple[Any, int]] = {}
    for r in reports:
        assert r.values is not None
        for key, value in r.values.items():
            if key not in out or r.ts >= out[key][1]:
                out[key] = (value, r.ts)
    return out


async def devices(storage: SqliteStorage, n: int) -> list[int]:
    await storage.insert_product(
        ProductRow(product_key="pkFold00001", name="p", node_type="direct", data_format="alink-json", auth_type="x")
    )
    rows = [DeviceRow(id=0, product_key="pkFold00001", device_name=f"d{i}", secret="s") for i in range(n)]
    return [r.id for r in await storage.insert_devices(rows)]


# Each case: the reports of one device, committed one batch each (and once all in one batch).
CASES: dict[str, list[tuple[int, dict[str, Any]]]] = {
    "each report supersedes the last": [(10, {"a": 1, "b": 2}), (20, {"a": 3, "b": 4}), (20, {"a": 5, "b": 6})],
    "more properties, then fewer": [(10, {"a": 1, "b": 2, "c": 3}), (20, {"a": 4}), (30, {"b": 5, "a": 6})],
    "an older event time loses per property": [(50, {"a": 1}), (40, {"a": 2, "b": 3}), (60, {"b": 4})],
    "an older report with more properties": [(50, {"a": 1}), (10, {"a": 2, "b": 3, "c": 4})],
    "equal times: the later commit wins": [(10, {"a": 1, "b": 1}), (10, {"a": 2}), (10, {"a": 3, "b": 3})],
    "an empty report changes nothing": [(10, {"a": 1}), (20, {}), (5, {"a": 9})],
}


@pytest.mark.parametrize("one_batch", [False, True])
@pytest.mark.parametrize("case", list(CASES))
async def test_latest_values_are_the_newest_per_property(
    tmp_path: Path, no_timed_checkpoints: None, case: str, one_batch: bool
) -> None:
    path = tmp_path / "db.sqlite"
    storage = SqliteStorage(path)
    await storage.open()
    storage._checkpoint_at = time.monotonic()
    (dev,) = await devices(storage, 1)
    reports = [prop(dev, ts, **values) for ts, values in CASES[case]]
    if one_batch:
        await storage.write_batch(reports)
    else:
        for r in reports:
            await storage.write_batch([r])
    expected = newest(reports)
    assert await storage.latest_values(dev) == expected
    # no close(): after this "crash" the reopened storage replays history into the table
    reopened = SqliteStorage(path)
    await reopened.open()
    try:
        assert await reopened.latest_values(dev) == expected
        assert table_latest(path, dev) == {k: (str(v), ts) for k, (v, ts) in expected.items()}
    finally:
        await reopened.close()
        abandon(storage)


async def test_reports_after_a_snapshot_overlay_it_and_a_failed_checkpoint_keeps_both(
    tmp_path: Path, no_timed_checkpoints: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_mod, "CHECKPOINT_ROWS", 2)
    path = tmp_path / "db.sqlite"
    storage = SqliteStorage(path)
    await storage.open()
    try:
        storage._checkpoint_at = time.monotonic()
        dev, other = await devices(storage, 2)
        first = [prop(dev, 10, a=1, b=2, c=3), prop(other, 10, x=1)]
        await storage.write_batch(first)
        # steps run on the writer thread, as the server runs them: write_batch queues a step of its
        # own there, and one run from this thread could overlap it on the same connection
        assert await storage._write(storage._checkpoint_step) is True  # a snapshot is being written: 2 of 4 rows
        later = [prop(dev, 20, b=20), prop(dev, 5, c=30, d=40), prop(other, 30, x=2, y=3)]
        await storage.write_batch(later)
        assert await storage.latest_values(dev) == newest([r for r in first + later if r.device_id == dev])
        assert await storage.latest_values(other) == newest([r for r in first + later if r.device_id == other])

        # the next step fails: the snapshot goes back into the pending values, under the newer ones
        def broken(*_: object) -> None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(storage, "_set_watermarks", broken)
        with pytest.raises(sqlite3.OperationalError):
            while await storage._write(storage._checkpoint_step):
                pass
        monkeypatch.undo()
        assert not storage._status.flushing
        assert await storage.latest_values(dev) == newest([r for r in first + later if r.device_id == dev])
        assert await storage.latest_values(other) == newest([r for r in first + later if r.device_id == other])
        await storage._write(storage._checkpoint)
        assert table_latest(path, dev) == {
            k: (str(v), ts) for k, (v, ts) in newest([r for r in first + later if r.device_id == dev]).items()
        }
        assert table_latest(path, other) == {"x": ("2", 30), "y": ("3", 30)}
    finally:
        await storage.close()


async def test_the_wal_thread_copies_ingest_commits_into_the_database_file(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite"
    storage = SqliteStorage(path)
    await storage.open()
    try:
        (dev,) = await devices(storage, 1)
        rows = sqlite_mod.WAL_CHECKPOINT_ROWS // 2  # two commits
        for ts in range(2):
            await storage.write_batch([prop(dev, ts, a=i) for i in range(rows)])
        # the checkpoint queued by the last commit has run once a later task on the WAL thread has
        await asyncio.get_running_loop().run_in_executor(None, lambda: storage._wal_pool.submit(lambda: None).result())
        shutil.copy(path, tmp_path / "file-only.sqlite")  # without the -wal file: only what was copied
        with sqlite3.connect(tmp_path / "file-only.sqlite") as con:
            count = con.execute("SELECT COUNT(*) FROM history WHERE device_id=?", (dev,)).fetchone()[0]
            assert count == 2 * rows
        assert storage._writer is not None
        pages = storage._writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages == sqlite_mod.WAL_AUTOCHECKPOINT_PAGES  # the writer copies only when that thread falls behind
    finally:
        await storage.close()


async def test_a_row_committed_after_a_checkpoint_with_an_older_id_is_replayed_after_a_crash(
    tmp_path: Path, no_timed_checkpoints: None
) -> None:
    """Device workers make message IDs in parallel: a report can commit after a checkpoint although
    its ID is older than one the checkpoint covered. Recovery must still replay it."""
    path = tmp_path / "db.sqlite"
    storage = SqliteStorage(path)
    await storage.open()
    (dev,) = await devices(storage, 1)
    early = prop(dev, 2000, t=2)  # its ID is made first (one worker) ...
    late = prop(dev, 1000, t=1, h=1)  # ... this one's later (the other worker), but it commits first
    assert early.message_id < late.message_id
    await storage.write_batch([late])
    await storage._write(storage._checkpoint)  # on the writer thread, like the timed ones
    await storage.write_batch([early])
    # no close(): a crash
    reopened = SqliteStorage(path)
    await reopened.open()
    try:
        assert await reopened.latest_values(dev) == {"t": (2, 2000), "h": (1, 1000)}
        assert table_latest(path, dev) == {"t": ("2", 2000), "h": ("1", 1000)}
    finally:
        await reopened.close()
        abandon(storage)


async def test_rows_after_the_newest_rows_were_deleted_are_replayed_after_a_crash(
    tmp_path: Path, no_timed_checkpoints: None
) -> None:
    """SQLite numbers a new row one past the largest rowid left: once a device with the newest rows
    is deleted, the next rows reuse rowids the watermark covers unless it is lowered."""
    path = tmp_path / "db.sqlite"
    storage = SqliteStorage(path)
    await storage.open()
    dev, gone = await devices(storage, 2)
    await storage.write_batch([prop(dev, 10, t=1)])
    await storage.write_batch([prop(gone, 10, t=5), prop(gone, 11, t=6)])
    await storage._write(storage._checkpoint)  # on the writer thread, like the timed ones
    assert await storage.delete_device(gone)
    await storage.write_batch([prop(dev, 20, t=2)])
    # no close(): a crash
    reopened = SqliteStorage(path)
    await reopened.open()
    try:
        assert await reopened.latest_values(dev) == {"t": (2, 20)}
        assert table_latest(path, dev) == {"t": ("2", 20)}
    finally:
        await reopened.close()
        abandon(storage)


async def test_a_database_with_message_id_watermarks_is_recovered_by_them(
    tmp_path: Path, no_timed_checkpoints: None
) -> None:
    path = tmp_path / "db.sqlite"
    storage = SqliteStorage(path)
    await storage.open()
    (dev,) = await devices(storage, 1)
    first = prop(dev, 10, t=1)
    await storage.write_batch([first])
    await storage._write(storage._checkpoint)
    await storage.write_batch([prop(dev, 20, t=2)])
    with sqlite3.connect(path) as con:  # the meta keys an older version wrote at that checkpoint
        con.execute("DELETE FROM meta WHERE key LIKE 'checkpoint-rowid:%'")
        con.execute("INSERT INTO meta(key, value) VALUES('checkpoint:history', ?)", (str(first.message_id),))
        con.execute("INSERT INTO meta(key, value) VALUES('checkpoint:messages', '0')")
    reopened = SqliteStorage(path)
    await reopened.open()
    try:
        assert table_latest(path, dev) == {"t": ("2", 20)}
        with sqlite3.connect(path) as con:
            keys = {r[0] for r in con.execute("SELECT key FROM meta WHERE key LIKE 'checkpoint%'")}
        assert keys == {"checkpoint-rowid:history", "checkpoint-rowid:messages"}
    finally:
        await reopened.close()
        abandon(storage)
