"""Background housekeeping: storage upkeep (time partitions ahead) and history retention.

Retention removes history older than `history_retention_days` (by event time) and messages received
before that, in small steps (`Storage.expire_step`) with a pause between them, so ingest batches
never queue behind a long delete: on SQLite each step is one short transaction on the writer thread,
on PostgreSQL whole monthly partitions are dropped and only stray old rows are deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from iotgate.storage.base import Storage

log = logging.getLogger("iotgate.retention")
DAY_MS = 24 * 3600 * 1000


class Housekeeper:
    def __init__(
        self,
        storage: Storage,
        retention_days: int,
        interval_s: float = 600.0,
        step_rows: int = 2000,
        pause_s: float = 0.02,
    ) -> None:
        self.storage = storage
        self.retention_days = retention_days
        self.interval_s = interval_s
        self.step_rows = step_rows
        self.pause_s = pause_s
        self.removed = 0  # rows (or partitions) removed since start
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="housekeeping")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database may be briefly away; try again next time
                log.warning("housekeeping failed: %s", exc)
            await asyncio.sleep(self.interval_s)

    async def run_once(self, now: int | None = None) -> int:
        """One pass: upkeep, then retention until nothing older than the cutoff is left."""
        now = int(time.time() * 1000) if now is None else now
        await self.storage.maintain(now)
        removed = 0
        if self.retention_days > 0:
            cutoff = now - self.retention_days * DAY_MS
            more = True
            while more:
                n, more = await self.storage.expire_step(cutoff, self.step_rows)
                removed += n
                if more:
                    await asyncio.sleep(self.pause_s)  # let queued ingest batches commit first
            if removed:
                log.info("retention: removed %d rows/partitions older than %d days", removed, self.retention_days)
        self.removed += removed
        self.runs += 1
        return removed
