"""Delivery of one target's outbox: claim a batch, deliver it device by device, settle, repeat.

Rounds start at most every `forward_batch_delay_ms`, so that under load a round carries many
messages and the bookkeeping costs one transaction per round (its outcome and the next claim).

Per-device order: a round delivers each device's rows in outbox order and stops at the first
failure of that device, leaving its later rows for the next round; devices run in parallel
(`forward_concurrency`). A round in which nothing arrived is a target failure: the pause before
the next round doubles (`forward_retry_initial_s` .. `forward_retry_max_s`). A round with some
failures pauses `forward_retry_initial_s`. Rows failing for `forward_dead_letter_after_s`, and rows
that old while the target has been failing that long, move to the dead-letter store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from iotgate.clock import now_ms
from iotgate.forward.rows import OutboxRow, Settlement
from iotgate.forward.sinks import DeliveryError, Sink

if TYPE_CHECKING:
    from iotgate.forward.engine import Forwarder
    from iotgate.forward.rules import CompiledRule

log = logging.getLogger("iotgate.forward")
WARN_EVERY_S = 60.0


class TargetWorker:
    def __init__(self, engine: Forwarder, rule: CompiledRule, target_id: int, kind: str, sink: Sink) -> None:
        self.engine = engine
        self.rule = rule
        self.target_id = target_id
        self.kind = kind
        self.sink = sink
        s = engine.settings
        self.batch_size = s.forward_batch_size
        self.retry_initial = s.forward_retry_initial_s
        self.retry_max = s.forward_retry_max_s
        self.dead_after_ms = int(s.forward_dead_letter_after_s * 1000)
        self.poll_s = s.forward_poll_s
        self.batch_delay = s.forward_batch_delay_ms / 1000
        self.inflight = 0
        # rows up to this ID were claimed by the previous run when it stopped: they may have been sent
        self.restart_mark = engine.claim_marks.get(target_id, 0)
        self.failing_since: float | None = None  # monotonic time of the first failure of this streak
        self.last_error = ""
        self._backoff = self.retry_initial
        self._last_warning = 0.0
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def label(self) -> str:
        return f"rule {self.rule.id} ({self.rule.name}) target {self.target_id} ({self.kind})"

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"forward-{self.target_id}")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, timeout: float) -> None:
        """Finish the round in progress (bounded by `timeout`), settle it, close the sink."""
        self._stop.set()
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:  # rows stay in flight; the next start releases them
                log.warning("%s: delivery did not finish within %.0f s; stopping it", self.label, timeout)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
        with contextlib.suppress(Exception):
            await self.sink.close()

    # -- the loop ---------------------------------------------------------------------------
    async def _run(self) -> None:
        settle: Settlement | None = None
        round_started = 0.0
        while True:
            stopping = self._stop.is_set()
            if not stopping and self.batch_delay > 0:
                # pace rounds: messages committed meanwhile join this round, and a round's outcome
                # is settled in the same transaction as the next claim
                pause = round_started + self.batch_delay - time.monotonic()
                if pause > 0:
                    await self._sleep(pause)
            round_started = time.monotonic()
            # Each target paces itself: no shared gate, so a target waiting on a slow endpoint never
            # holds back another one, and under sustained load delivery keeps up with the reports
            # (their CPU cost is shared with ingest instead of postponed into a growing backlog).
            settle, rows, go_on = await self._round(settle, stopping)
            if not go_on:
                return
            if rows is None:
                continue
            if not rows:
                await self._idle()
                continue
            assert settle is not None
            if settle.failed:
                await self._after_failure(settle)
                settle = None
            else:
                self._recovered()

    async def _round(
        self, settle: Settlement | None, stopping: bool
    ) -> tuple[Settlement | None, list[OutboxRow] | None, bool]:
        """Settle the last round and claim the next in one transaction, deliver what was claimed.
        Returns (outcome to settle, rows claimed or None after an error, whether to go on)."""
        self._wake.clear()  # before looking: a commit after this point wakes the next wait
        try:
            rows = await self.engine.storage.forward_cycle(
                self.target_id, self.engine.node_id, settle, 0 if stopping else self.batch_size
            )
        except Exception as exc:  # the database is away: keep the outcome, try again
            log.error("%s: outbox unavailable: %s", self.label, exc)
            if stopping:
                return settle, None, False
            await self._sleep(1.0)
            return settle, None, True
        if settle is not None:
            self.engine.settled(self.target_id, settle)
        if stopping:
            return None, [], False
        if not rows:
            return None, [], True
        self.inflight = len(rows)
        try:
            return await self._deliver(rows), rows, True
        finally:
            self.inflight = 0

    async def _idle(self) -> None:
        """Wait for a commit to wake us. Rows other processes write (device workers, other nodes
        of this node ID) are found by a cheap read every `forward_poll_s`, not by claiming."""
        while True:
            if self.failing_since is not None:
                await self._expire()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_s)
                return
            except TimeoutError:
                pass
            if self._stop.is_set():
                return
            try:
                if await self.engine.storage.forward_pending(self.target_id, self.engine.node_id):
                    return
            except Exception as exc:
                log.warning("%s: outbox unavailable: %s", self.label, exc)

    async def _sleep(self, seconds: float) -> None:
        """Pause; only stopping ends it early (a new message must not cut a retry pause short)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _deliver(self, rows: list[OutboxRow]) -> Settlement:
        now = now_ms()
        settle = Settlement(now=now)
        devices: dict[int, list[OutboxRow]] = {}
        for row in rows:
            devices.setdefault(row.device_id, []).append(row)
        groups = list(devices.values())
        try:
            outcomes = await self.sink.send_round(groups)
        except Exception as exc:  # a sink bug must not lose the round's bookkeeping
            log.exception("%s: sink failed unexpectedly", self.label)
            outcomes = [(0, DeliveryError(f"{type(exc).__name__}: {exc}", uncertain=True))] * len(groups)
        errors: list[str] = []
        for device_rows, (done, error) in zip(groups, outcomes, strict=True):
            for row in device_rows[:done]:
                settle.delivered.append(row.id)
                if row.maybe_delivered_before or row.id <= self.restart_mark:
                    settle.redelivered += 1
            if error is None:
                continue
            failed = device_rows[done]
            message = str(error)
            errors.append(message)
            settle.failed.append((failed.id, 0 if error.uncertain else 1, message))
            started = failed.first_failed_at or now
            if self.dead_after_ms and now - started >= self.dead_after_ms:
                settle.dead.append(failed.id)
            sent = done + 1 + error.sent_after
            settle.unsure.extend(r.id for r in device_rows[done + 1 : sent])  # the rest wait, untouched
        if errors:
            settle.error = errors[-1]
        return settle

    async def _after_failure(self, settle: Settlement) -> None:
        storage = self.engine.storage
        while True:
            try:
                await storage.forward_cycle(self.target_id, self.engine.node_id, settle, 0)
                break
            except Exception as exc:
                log.error("%s: outbox unavailable: %s", self.label, exc)
                if self._stop.is_set():
                    return
                await self._sleep(1.0)
        self.engine.settled(self.target_id, settle)
        self.last_error = settle.error
        whole = not settle.delivered  # nothing arrived: the target itself is failing
        mono = time.monotonic()
        if whole:
            if self.failing_since is None:
                self.failing_since = mono
                log.warning("%s: delivery failing: %s", self.label, settle.error)
                self._last_warning = mono
            elif mono - self._last_warning >= WARN_EVERY_S:
                log.warning("%s: still failing after %.0f s: %s", self.label, mono - self.failing_since, settle.error)
                self._last_warning = mono
            if settle.dead:
                log.warning("%s: %d message(s) moved to the dead letters", self.label, len(settle.dead))
            await self._expire()
            pause = self._backoff
            self._backoff = min(self._backoff * 2, self.retry_max)
        else:
            log.info(
                "%s: %d message(s) failed, %d delivered this round: %s",
                self.label,
                len(settle.failed),
                len(settle.delivered),
                settle.error,
            )
            pause = self.retry_initial
        await self._sleep(pause)

    async def _expire(self) -> None:
        """While the target has failed for the dead-letter time, messages that old leave the outbox."""
        if self.failing_since is None or not self.dead_after_ms:
            return
        if (time.monotonic() - self.failing_since) * 1000 < self.dead_after_ms:
            return
        now = now_ms()
        try:
            moved = await self.engine.storage.forward_expire(
                self.target_id, self.engine.node_id, now - self.dead_after_ms, now
            )
        except Exception as exc:
            log.error("%s: outbox unavailable: %s", self.label, exc)
            return
        if moved:
            self.engine.expired(self.target_id, moved)
            log.warning("%s: %d waiting message(s) moved to the dead letters", self.label, moved)

    def _recovered(self) -> None:
        if self.failing_since is not None:
            log.info("%s: delivering again after %.0f s", self.label, time.monotonic() - self.failing_since)
        self.failing_since = None
        self._backoff = self.retry_initial
