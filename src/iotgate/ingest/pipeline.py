"""Group commit: reports gather while the previous batch commits; callers wake after COMMIT.

A report is acknowledged to its device only when the future returned by `submit` resolves,
which happens after the batch holding it is durable (ThingsBoard's ack-after-queue, with the
database itself as the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from itertools import repeat
from typing import Any, Protocol

from iotgate import metrics
from iotgate.forward.rows import OutboxBatch
from iotgate.storage.base import Record, Storage

log = logging.getLogger("iotgate.ingest")

CommitHook = Callable[[list[Record]], None]
BatchEnricher = Callable[[list[Record]], Awaitable[None] | None]


EAGER_BATCH = 16  # reports of one loop pass after which a commit starts at once (SQLite)
# SQLite: a smaller batch waits this long (from its first report's arrival, at most max_delay) for
# more, or until EAGER_BATCH reports are pending. Every commit costs a hand-off to the writer thread,
# WAL writes and an fsync whatever its size; under light and mixed load (new connections, a few
# reports per pass) batches of 2-3 were common. 1 ms, alternated alink-post runs: CPU per report
# -20 %, p99 13.1-14.6 -> 11.6-12.6 ms, same throughput (docs/benchmarks.md, section 15). 2 ms, with
# device workers keeping one small frame out (ingest/remote.py): paced 1.8k reports/s, 3.3 -> 5.2
# reports per commit, main-process CPU per report -29 %, p99 +2-3 ms (section 17).
SMALL_BATCH_WAIT_S = 0.002


class ShuttingDown(Exception):
    """The pipeline no longer accepts reports."""


class IngestQueue(Protocol):
    """What DeviceCore needs to commit reports: the `Ingestor` here, or a device worker's link to
    the main process's (ingest/remote.py)."""

    after_commit: list[CommitHook]
    outbox: OutboxSource | None  # set by the Forwarder where this process builds outbox rows

    def submit(self, record: Record) -> asyncio.Future[None]: ...

    def submit_many(self, records: list[Record]) -> list[asyncio.Future[None]]: ...


class OutboxSource(Protocol):
    """Builds the forwarding outbox rows of a batch, committed in the batch's own transaction
    (iotgate.forward.engine.Forwarder): an acknowledged report is always eventually forwarded."""

    async def build(self, records: list[Record]) -> OutboxBatch | None: ...

    def committed(self, batch: OutboxBatch) -> None: ...


# What a pending record's submitter waits on: its own future (submit_many), or the future it
# shares with the rest of its group (submit_group), which _take_batch never cuts in two.
Waiter = asyncio.Future[None]


class Ingestor:
    def __init__(self, storage: Storage, max_reports: int = 1000, max_delay_ms: float = 2.0) -> None:
        self.storage = storage
        self.max_reports = max_reports
        self.max_delay = max_delay_ms / 1000
        self._pending: list[tuple[Record, Waiter]] = []
        self._first_at = 0.0  # loop time the oldest pending report arrived
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self.after_commit: list[CommitHook] = []
        self.outbox: OutboxSource | None = None
        self.batches = 0
        self.committed = 0
        # storage whose write_batch hands the batch to its writer thread at once (SQLite): commits
        # start from submit() and overlap the rest of the loop pass (see _start_drain)
        self._eager = bool(getattr(storage, "eager_commit", False))
        self._draining = False
        self._kick_soon = False
        # set while a small batch waits for company (_drain): resolved early once EAGER_BATCH
        # reports are pending, so that a busy moment never waits out the whole small-batch wait
        self._company: asyncio.Future[None] | None = None

    def start(self) -> None:
        if not self._eager:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="ingest-writer")

    def submit(self, record: Record) -> asyncio.Future[None]:
        return self.submit_many([record])[0]

    def submit_many(self, records: list[Record]) -> list[asyncio.Future[None]]:
        """Queue the records of one request together: they commit in the same batch (unless it
        would exceed max_reports), and each future resolves once its record is committed."""
        if self._closing:
            raise ShuttingDown("server is shutting down")
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[None]] = [loop.create_future() for _ in records]
        if not self._pending:
            self._first_at = loop.time()
        self._pending.extend(zip(records, futures, strict=True))
        self._queued(loop)
        return futures

    def submit_group(self, records: list[Record]) -> asyncio.Future[None]:
        """Queue records like submit_many, with one future that resolves once all are committed
        (or fails with the first failed batch holding any of them)."""
        if self._closing:
            raise ShuttingDown("server is shutting down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not records:
            future.set_result(None)
            return future
        if not self._pending:
            self._first_at = loop.time()
        self._pending.extend(zip(records, repeat(future)))
        self._queued(loop)
        return future

    def _queued(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._eager:
            if not self._draining:
                if len(self._pending) >= EAGER_BATCH:  # a busy pass: commit these now, mid-pass
                    self._start_drain()
                elif not self._kick_soon:  # otherwise once this pass's handlers have run
                    self._kick_soon = True
                    loop.call_soon(self._kick)
            elif self._company is not None and len(self._pending) >= EAGER_BATCH:
                _resolve(self._company)  # company came: commit now, as a busy pass would
            return
        self._wake.set()
        if len(self._pending) >= self.max_reports:
            self._full.set()

    async def commit(self, record: Record) -> None:
        await self.submit(record)

    async def stop(self) -> None:
        """Refuse new reports, flush what is pending, then end."""
        self._closing = True
        self._wake.set()
        if self._company is not None:  # a small batch waiting for company: commit it now
            _resolve(self._company)
        if self._task is not None:
            await self._task
        while self._draining or self._pending:
            if not self._draining:
                self._start_drain()
            await asyncio.sleep(0.005)

    def _kick(self) -> None:
        self._kick_soon = False
        if self._pending and not self._draining:
            self._start_drain()

    def _start_drain(self) -> None:
        """Commit what is pending now. From submit() (EAGER_BATCH reports into a busy loop pass)
        the writer thread's COMMIT (fsync) then overlaps the handling of the rest of the pass,
        which queues up as the next batch. Natural group commit: the writer is never idle while
        reports wait, batches grow with the fsync time, and no delay is needed."""
        self._draining = True
        _drive(self._drain())

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        small_wait = min(self.max_delay, SMALL_BATCH_WAIT_S)
        try:
            while self._pending:
                wait = small_wait - (loop.time() - self._first_at)
                if wait > 0 and len(self._pending) < EAGER_BATCH and not self._closing:
                    await self._wait_for_company(loop, wait)
                batch = self._take_batch()
                if self._pending:  # they arrived during the last commit: their wait starts now
                    self._first_at = loop.time()
                await self._commit(batch)
        finally:
            self._draining = False

    async def _wait_for_company(self, loop: asyncio.AbstractEventLoop, wait: float) -> None:
        """Up to `wait` seconds, or until EAGER_BATCH reports are pending (see _queued)."""
        self._company = company = loop.create_future()
        timer = loop.call_later(wait, _resolve, company)
        try:
            await company
        finally:
            self._company = None
            timer.cancel()

    def _take_batch(self) -> list[tuple[Record, Waiter]]:
        """The next batch: at most max_reports, except that a group (a worker's frame) is never cut
        in two - its requests (a gateway report's children among them) commit in one transaction."""
        pending, cut = self._pending, self.max_reports
        if cut < len(pending):
            waiter = pending[cut - 1][1]  # a future only one group's records share
            while cut < len(pending) and pending[cut][1] is waiter:
                cut += 1
        batch = pending[:cut]
        del pending[:cut]
        return batch

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # a report waits at most max_delay for batch-mates, counted from its arrival: under load
            # the handlers of one loop pass have already queued theirs, and waiting more only adds latency
            wait = self.max_delay - (asyncio.get_running_loop().time() - self._first_at)
            if wait > 0 and len(self._pending) < self.max_reports and not self._closing:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), wait)
            batch = self._take_batch()
            if self._pending:
                self._first_at = asyncio.get_running_loop().time()
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[Record, Waiter]]) -> None:
        records = [r for r, _ in batch]
        started = time.perf_counter()
        outbox = None
        try:
            if self.outbox is not None:
                outbox = await self.outbox.build(records)
            if outbox is None:
                await self.storage.write_batch(records)
            else:
                await self.storage.write_batch(records, outbox)
        except Exception as exc:  # the database failed: every caller in the batch learns it
            metrics.COMMIT_FAILURES.inc()
            log.error("commit of %d reports failed: %s", len(records), exc)
            for fut in _waiters(batch):
                if not fut.done():
                    fut.set_exception(exc)
            return
        metrics.committed(records, time.perf_counter() - started)
        self.batches += 1
        self.committed += len(records)
        for fut in _waiters(batch):
            if not fut.done():
                fut.set_result(None)
        if outbox is not None and self.outbox is not None:
            try:
                self.outbox.committed(outbox)  # wakes the delivery tasks
            except Exception:
                log.exception("outbox hook failed")
        for hook in self.after_commit:
            try:
                hook(records)
            except Exception:  # a broken observer must never undo an acknowledged commit
                log.exception("after-commit hook failed")


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _waiters(batch: list[tuple[Record, Waiter]]) -> list[Waiter]:
    """Each waiter of a batch once: a group's records are adjacent and share one future."""
    waiters: list[Waiter] = []
    last = None
    for _, fut in batch:
        if fut is not last:
            waiters.append(fut)
            last = fut
    return waiters


def _drive(coro: Coroutine[Any, Any, None]) -> None:
    """Run a coroutine's first step now rather than at the end of the loop pass, as a Task would
    (Python 3.11 has no eager tasks), then step it as the futures it awaits complete. Only for
    code that awaits plain futures, with no timeouts or current_task(): the SQLite commit path."""
    loop = asyncio.get_running_loop()

    def step(_: object = None) -> None:
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except BaseException:
            log.exception("group commit failed")
            return
        if waiting is None:  # a bare yield (asyncio.sleep(0))
            loop.call_soon(step)
        else:  # an asyncio future: go on when it is done
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(step)

    step()
