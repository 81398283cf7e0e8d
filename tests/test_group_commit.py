"""Group commit over SQLite: commits start from submit(), every caller learns its batch's fate."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from iotgate.ingest import pipeline
from iotgate.ingest.ids import MessageIds
from iotgate.ingest.pipeline import Ingestor, ShuttingDown
from iotgate.storage.base import Record
from iotgate.storage.sqlite import SqliteStorage

IDS = MessageIds(3)


def record(device: int, message_id: int | None = None) -> Record:
    now = int(time.time() * 1000)
    return Record(
        message_id=message_id or IDS.next(), device_id=device, kind="property", ts=now, received_at=now, values={"t": 1}
    )


def history_count(path: Path) -> int:
    with sqlite3.connect(path) as con:
        return int(con.execute("SELECT COUNT(*) FROM history").fetchone()[0])


async def test_reports_of_one_loop_pass_commit_while_the_pass_goes_on(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage)
    ingestor.start()
    committed: list[int] = []
    ingestor.after_commit.append(lambda records: committed.extend(r.message_id for r in records))
    try:
        futures = [ingestor.submit(record(i % 7)) for i in range(300)]  # one loop pass
        assert ingestor._draining  # the first EAGER_BATCH reports are being committed already
        assert ingestor.batches == 0  # nothing is acknowledged before its COMMIT
        await asyncio.gather(*futures)
        assert ingestor.committed == 300 and ingestor.batches >= 2  # the rest waited for the first COMMIT
        assert history_count(storage.path) == 300 and len(committed) == 300
        assert committed == sorted(committed)  # batches commit in submission order
    finally:
        await ingestor.stop()
        await storage.close()


async def test_a_failed_batch_fails_exactly_its_reports(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage)
    ingestor.start()
    try:
        duplicate = IDS.next()
        await ingestor.submit(record(1, duplicate))
        first = ingestor.submit(record(1))
        while ingestor._pending:  # end of the loop pass, then at most SMALL_BATCH_WAIT_S: its commit starts
            await asyncio.sleep(0.0002)
        clash = [ingestor.submit(record(2)), ingestor.submit(record(2, duplicate))]  # the next batch
        await first
        results = await asyncio.gather(*clash, return_exceptions=True)
        assert all(isinstance(r, sqlite3.IntegrityError) for r in results)
        await ingestor.submit(record(3))  # the pipeline goes on
        assert history_count(storage.path) == 3
    finally:
        await ingestor.stop()
        await storage.close()


async def test_a_few_reports_wait_for_the_end_of_the_pass_then_commit_together(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage)
    ingestor.start()
    try:
        futures = [ingestor.submit(record(1)) for _ in range(3)]
        assert not ingestor._draining
        await asyncio.gather(*futures)
        assert ingestor.batches == 1
    finally:
        await ingestor.stop()
        await storage.close()


@pytest.mark.parametrize(("max_delay_ms", "batches"), [(2000.0, 1), (0.0, 2)])
async def test_a_small_batch_waits_a_moment_for_more_unless_told_not_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_delay_ms: float, batches: int
) -> None:
    """Fewer than EAGER_BATCH reports wait up to SMALL_BATCH_WAIT_S (at most max_delay) for company:
    one commit (a hand-off, WAL writes, an fsync) instead of several. (The wait is stretched here so
    that the test does not depend on the speed of the machine.)"""
    monkeypatch.setattr(pipeline, "SMALL_BATCH_WAIT_S", 0.5)
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage, max_delay_ms=max_delay_ms)
    ingestor.start()
    try:
        first = [ingestor.submit(record(1)) for _ in range(2)]
        await asyncio.sleep(0.05)  # several loop passes later, within the wait
        later = [ingestor.submit(record(2)) for _ in range(2)]
        await asyncio.gather(*first, *later)
        assert ingestor.batches == batches
        assert history_count(storage.path) == 4
    finally:
        await ingestor.stop()
        await storage.close()


async def test_a_small_batch_stops_waiting_once_enough_company_came(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The small-batch wait ends as soon as EAGER_BATCH reports are pending: a busy moment commits
    at once, as a busy loop pass does, instead of waiting out the rest of the wait."""
    monkeypatch.setattr(pipeline, "SMALL_BATCH_WAIT_S", 30.0)
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage, max_delay_ms=60_000.0)
    ingestor.start()
    try:
        first = [ingestor.submit(record(1)) for _ in range(2)]
        await asyncio.sleep(0.05)  # the two are waiting for company now
        assert ingestor._draining and ingestor.batches == 0
        later = ingestor.submit_many([record(100 + i) for i in range(pipeline.EAGER_BATCH)])
        await asyncio.wait_for(asyncio.gather(*first, *later), 10)  # not the 30 s wait
        assert ingestor.batches == 1
        assert history_count(storage.path) == 2 + pipeline.EAGER_BATCH
    finally:
        await ingestor.stop()
        await storage.close()


async def test_the_records_of_one_request_share_a_batch(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage)
    ingestor.start()
    sizes: list[int] = []
    ingestor.after_commit.append(lambda records: sizes.append(len(records)))
    try:
        single = [ingestor.submit(record(1)) for _ in range(3)]
        gateway = ingestor.submit_many([record(100 + i) for i in range(40)])  # more than EAGER_BATCH
        await asyncio.gather(*single, *gateway)
        assert sizes == [43]  # started once all 40 were queued, none of them split off
    finally:
        await ingestor.stop()
        await storage.close()


async def test_stop_commits_what_is_pending_then_refuses(tmp_path: Path) -> None:
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage)
    ingestor.start()
    futures = [ingestor.submit(record(1)) for _ in range(50)]
    await ingestor.stop()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(ShuttingDown):
        ingestor.submit(record(1))
    await storage.close()
    assert history_count(tmp_path / "db.sqlite") == 50


async def test_a_group_commits_in_one_transaction_and_resolves_once(tmp_path: Path) -> None:
    """submit_group (a worker's frame): one future, and never cut in two by max_reports, so the
    requests in it - a gateway report's children among them - are all or nothing."""
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage, max_reports=10)
    ingestor.start()
    batches: list[int] = []
    ingestor.after_commit.append(lambda records: batches.append(len(records)))
    try:
        singles = [ingestor.submit(record(1)) for _ in range(5)]
        group = ingestor.submit_group([record(i % 5) for i in range(35)])  # the cut at 10 falls inside it
        await asyncio.gather(group, *singles)
        assert batches == [40] and history_count(storage.path) == 40
        assert await ingestor.submit_group([]) is None  # nothing to wait for
        # a failing record fails its whole group, and nothing of the group is stored
        duplicate = IDS.next()
        await ingestor.submit(record(1, duplicate))
        failing = ingestor.submit_group([record(2) for _ in range(15)] + [record(1, duplicate)])
        with pytest.raises(sqlite3.IntegrityError):
            await failing
        assert history_count(storage.path) == 41
    finally:
        await ingestor.stop()
        await storage.close()
