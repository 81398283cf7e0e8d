"""PostgreSQL: each process's running status, written once a second, and replayed if it dies.

In a commit, upserting `latest` (one row per property per report) and `device_seen` took about
2 of 3.6 ms per batch of 64 reports (docs/benchmarks.md, "PostgreSQL"). Each process that commits
reports now folds them into a `RunningStatus` in memory and writes it every `flush_s`: one row per
device and property that changed, whatever the number of reports.

What that costs: the process that took a report shows its values at once (its reads overlay its
pending values); other processes and nodes see them when the next flush commits, up to `flush_s`
later. History and messages are committed before the device hears "success", as ever.

Crash replay, across processes and nodes. Each writer:
* holds a session advisory lock on its own random key for as long as it lives, on a connection of
  its own. PostgreSQL releases it however the process ends, so `pg_try_advisory_xact_lock` on that
  key succeeds only once the writer is gone;
* keeps a row in `running_status_writers` (key, `covered_from`), inserted before its first commit
  and moved by every flush: each report it committed that arrived before `covered_from` is in the
  tables. It is the oldest arrival still pending or in flight, less ARRIVAL_SLACK_MS for reports
  waiting between arrival and their commit (queue, validation).
Any writer (every REAP_S, and every process at start) claims the rows of writers that are gone and
folds the history and messages received since their `covered_from` (message IDs carry their
arrival time) into `latest`/`device_seen`. Those rows are shared by every writer, so the replay
also rewrites others' values. That is harmless: the upserts keep the newest event time, so
rewriting a value already there changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

import asyncpg
import msgspec

from iotgate.clock import now_ms
from iotgate.ingest.ids import first_id_at
from iotgate.storage.base import Record
from iotgate.storage.running_status import LatestRow, RunningStatus, history_record

log = logging.getLogger("iotgate.storage")
_json_encode = msgspec.json.encode

LOCK_WRITER_CLASS = 0x696F_7468  # with the writer's key: pg_advisory_lock(int, int)
ARRIVAL_SLACK_MS = 5000  # a report may wait this long between arrival and its commit and still be replayed
REAP_S = 5.0  # how often a writer looks for writers that are gone
REPLAY_ROWS = 5000  # history rows read per step of a replay

UPSERT_LATEST = (
    "INSERT INTO latest(device_id, identifier, value, ts, message_id) "
    "SELECT u.* FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) "
    "AS u(d, k, v, ts, m) WHERE EXISTS (SELECT 1 FROM devices WHERE id = u.d) "  # not a deleted device's
    "ON CONFLICT (device_id, identifier) DO UPDATE SET value=EXCLUDED.value, ts=EXCLUDED.ts, "
    "message_id=EXCLUDED.message_id WHERE EXCLUDED.ts >= latest.ts"
)
UPSERT_SEEN = (
    "INSERT INTO device_seen(device_id, last_seen) SELECT u.* FROM unnest($1::bigint[], $2::bigint[]) AS u(d, at) "
    "WHERE EXISTS (SELECT 1 FROM devices WHERE id = u.d) "
    "ON CONFLICT (device_id) DO UPDATE SET last_seen=GREATEST(device_seen.last_seen, EXCLUDED.last_seen)"
)


async def write_folded(con: asyncpg.Connection, records: list[Record]) -> set[int]:
    """Upsert the newest value per device and property, and last-seen times, of some records;
    returns the devices whose values were written."""
    status = RunningStatus()
    status.fold(records)
    devices = set(status.dirty_latest)
    await write_status(con, status.begin_flush(), list(status.flushing_seen.items()))
    return devices


async def write_status(con: asyncpg.Connection, latest: list[LatestRow], seen: list[tuple[int, int]]) -> None:
    """Upsert running status rows in one lock order (sorted), so writers never deadlock."""
    if latest:
        latest.sort(key=lambda r: (r[0], r[1]))
        await con.execute(
            UPSERT_LATEST, *_columns([(d, k, _json_encode(v).decode(), ts, m) for d, k, v, ts, m in latest])
        )
    if seen:
        seen.sort()
        await con.execute(UPSERT_SEEN, *_columns(seen))


def _columns(rows: list[tuple]) -> list[list]:
    return [list(c) for c in zip(*rows, strict=True)]


class StatusWriter:
    """One process's running status on PostgreSQL: folds its commits, flushes, replays the dead."""

    def __init__(self, pool: asyncpg.Pool, dsn: str, flush_s: float, server_settings: dict[str, str]) -> None:
        self.pool = pool
        self.dsn = dsn
        self.flush_s = flush_s
        self.server_settings = server_settings
        self.status = RunningStatus()
        self.key = 0
        self._lock_con: asyncpg.Connection | None = None
        self._inflight: dict[int, int] = {}  # batch number -> oldest arrival in it
        self._batches = 0
        self._flush_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._registering: asyncio.Lock = asyncio.Lock()

    # -- the commit path ----------------------------------------------------------------
    async def registered(self) -> None:
        """Before this process's first commit: a key, its lock and its row (so that a crash right
        after that commit is replayed)."""
        if self._lock_con is not None and not self._lock_con.is_closed():
            return
        async with self._registering:
            if self._lock_con is not None and not self._lock_con.is_closed():
                return
            con = await asyncpg.connect(self.dsn, server_settings=self.server_settings)
            while True:
                key = secrets.randbits(31)
                if not await con.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_WRITER_CLASS, key):
                    continue  # a live writer's key
                if await con.fetchval(
                    "INSERT INTO running_status_writers(writer, covered_from) VALUES($1, $2) "
                    "ON CONFLICT (writer) DO NOTHING RETURNING writer",
                    key,
                    self._covered_from(),
                ):
                    break
                # a writer that is gone had this key and awaits its replay: leave its row alone
                await con.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_WRITER_CLASS, key)
            self._lock_con, self.key = con, key
            if self._task is None:
                self._task = asyncio.get_running_loop().create_task(self._run(), name="running-status")

    def begin_batch(self, records: list[Record]) -> int:
        self._batches += 1
        self._inflight[self._batches] = min((r.received_at for r in records), default=now_ms())
        return self._batches

    def end_batch(self, batch: int, records: list[Record] | None) -> None:
        """The batch committed (records) or failed (None); called in the same loop step as the
        commit's return, so no flush can start in between."""
        del self._inflight[batch]
        if records is not None:
            self.status.fold(records)

    def _covered_from(self) -> int:
        return min([now_ms(), *self._inflight.values()]) - ARRIVAL_SLACK_MS

    # -- flushing -------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write the pending status and move this writer's mark (one transaction)."""
        async with self._flush_lock:
            if not self.status.dirty or self._lock_con is None:
                return
            covered = self._covered_from()  # taken before the snapshot: everything older is in it
            latest = self.status.begin_flush()
            seen = list(self.status.flushing_seen.items())
            try:
                async with self.pool.acquire() as con, con.transaction():
                    await write_status(con, latest, seen)
                    await con.execute(
                        "INSERT INTO running_status_writers(writer, covered_from) VALUES($1, $2) "
                        "ON CONFLICT (writer) DO UPDATE SET covered_from = EXCLUDED.covered_from",
                        self.key,
                        covered,
                    )
            except BaseException:
                self.status.abort_flush()
                raise
            self.status.end_flush()

    async def _run(self) -> None:
        reaped_at = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                if self._lock_con is None or self._lock_con.is_closed():  # lost: a reaper may have taken our row
                    self._lock_con = None
                    await self.registered()
                await self.flush()
                if loop.time() - reaped_at >= REAP_S:
                    reaped_at = loop.time()
                    await replay_gone_writers(self.pool)
            except Exception as exc:  # never let the flusher die (PostgreSQL restarting, a pool in trouble)
                log.warning(
                    "writing running status failed (retried; replayed from history if this process dies): %r", exc
                )

    async def close(self, flush: bool = True) -> None:
        """Flush, then drop the row and the lock: nothing of this writer needs replaying. With
        flush=False (a simulated crash in tests) the row stays for a reaper."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._lock_con is None:
            return
        if flush:
            try:
                await self.flush()
                await self.pool.execute("DELETE FROM running_status_writers WHERE writer=$1", self.key)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:  # the row stays for a reaper
                log.warning("final running-status flush failed: %s", exc)
            with contextlib.suppress(asyncpg.InterfaceError, OSError):
                await self._lock_con.close()
        else:
            self._lock_con.terminate()
        self._lock_con = None


# -- replay ---------------------------------------------------------------------------------
async def replay_gone_writers(pool: asyncpg.Pool) -> int:
    """Replay the running status of every writer that is gone; returns how many were replayed."""
    replayed = 0
    for writer in [r[0] for r in await pool.fetch("SELECT writer FROM running_status_writers")]:
        async with pool.acquire() as con, con.transaction():
            if not await con.fetchval("SELECT pg_try_advisory_xact_lock($1, $2)", LOCK_WRITER_CLASS, writer):
                continue  # alive (or being replayed by another process right now)
            covered = await con.fetchval(
                "DELETE FROM running_status_writers WHERE writer=$1 RETURNING covered_from", writer
            )
            if covered is None:
                continue  # replayed a moment ago by someone else
            devices = await _replay_since(con, int(covered))
            log.info("replayed the running status of a writer that stopped uncleanly (%d devices)", devices)
            replayed += 1
    return replayed


async def _replay_since(con: asyncpg.Connection, covered_from: int) -> int:
    """Fold history and messages received since a time into latest/device_seen (in con's transaction)."""
    after = first_id_at(covered_from) - 1
    devices: set[int] = set()
    while rows := await con.fetch(
        "SELECT message_id, device_id, ts, data FROM history WHERE message_id > $1 ORDER BY message_id LIMIT $2",
        after,
        REPLAY_ROWS,
    ):
        after = rows[-1][0]
        devices |= await write_folded(con, [history_record(*row) for row in rows])
    seen = await con.fetch(
        "SELECT device_id, MAX(received_at) FROM messages WHERE message_id >= $1 AND kind != 'rejected' "
        "GROUP BY device_id",
        first_id_at(covered_from),
    )
    await write_status(con, [], [(r[0], r[1]) for r in seen])
    return len(devices | {r[0] for r in seen})
