"""The forwarding engine: rules in memory, outbox rows built at ingest, delivery tasks per target.

At-least-once: the Ingestor asks `build()` for the outbox rows of each batch and commits them in
the batch's own transaction, so a report acknowledged to its device is in the outbox. Delivery
runs in its own tasks (`worker.TargetWorker`), never on the ingest path; a row leaves the outbox
only in the transaction that counts it delivered or moves it to the dead letters.

Lifecycle events: created/deleted/enabled/disabled come from the registry (written to the outbox
right after the change commits); `online` is built with the first report after a silence of
`online_window_s` (same transaction as that report); `offline` when a device's last report gets
older than that (checked every few seconds).

In a device-worker process (`serve --workers N`) the engine only builds outbox rows; the main
process delivers them (rows carry the node ID, so each node delivers its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec

from iotgate.auth.secretbox import SecretBox
from iotgate.clock import now_ms
from iotgate.config import Settings
from iotgate.errors import Invalid, NotFound
from iotgate.forward import sql as fsql
from iotgate.forward.message import KIND_SOURCE, ForwardMessage
from iotgate.forward.rows import (
    DeadLetterRow,
    ForwardRuleRow,
    OutboxBatch,
    OutboxRow,
    Settlement,
    TargetCount,
    TargetStats,
)
from iotgate.forward.rules import CompiledRule, parse_rule, rule_json
from iotgate.forward.sinkhost import RemoteSink, SinkHost
from iotgate.forward.sinks import Sink, make_sink
from iotgate.forward.targets import SECRET_FIELDS, TargetSpec, parse_target, url_password
from iotgate.forward.worker import TargetWorker
from iotgate.storage.base import Record, Storage

if TYPE_CHECKING:
    from iotgate.core import DeviceCore
    from iotgate.registry.service import DeviceInfo, Registry
    from iotgate.storage.base import DeviceRow

log = logging.getLogger("iotgate.forward")
REGISTRY_CHANGES = ("created", "deleted", "enabled", "disabled")
STOP_TIMEOUT_S = 10.0
ORPHAN_SWEEP_S = 300.0
WARN_EVERY_S = 60.0


class Forwarder:
    def __init__(
        self,
        settings: Settings,
        storage: Storage,
        registry: Registry,
        core: DeviceCore,
        box: SecretBox | None = None,
        deliver: bool = True,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.registry = registry
        self.core = core
        self.box = box
        self.deliver = deliver
        self.node_id = settings.node_id
        self.window_ms = int(settings.online_window_s * 1000)
        self._rules: dict[int, CompiledRule] = {}
        self._by_source: dict[str, list[CompiledRule]] = {}
        self._workers: dict[int, TargetWorker] = {}
        self._worker_specs: dict[int, bytes] = {}
        self.queued: dict[int, int] = {}  # this node's outbox rows per target (kept in memory)
        self.claim_marks: dict[int, int] = {}  # target -> last ID the previous run claimed
        self._warned: dict[int, float] = {}
        self._online: set[int] = set()
        self._lifecycle: list[ForwardMessage] = []
        self._lifecycle_wake = asyncio.Event()
        self._closing = False
        self._rev: str | None = None
        self._reload_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._lifecycle_task: asyncio.Task[None] | None = None
        self.sink_host: SinkHost | None = None  # forward_sink_process: the sinks' own process
        self.metric_stats: list[dict[str, Any]] = []  # counters per target, as of the last /metrics scrape

    # -- start / stop ----------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.deliver:  # before the delivery tasks start (reload)
            self.claim_marks = await self.storage.forward_claim_marks(self.node_id)
            await self.storage.forward_release(self.node_id)
        await self.reload()
        if self.deliver:
            await self.storage.forward_purge_orphans()
            self.queued = await self.storage.forward_queue_sizes(self.node_id)
            now = now_ms()
            self._online = {d for d, t in self.core.last_seen.items() if now - t < self.window_ms}
            self.registry.listeners.append(self._on_registry)
            self._lifecycle_task = loop.create_task(self._lifecycle_loop(), name="forward-lifecycle")
            self._tasks += [
                loop.create_task(self._presence_loop(), name="forward-presence"),
                loop.create_task(self._housekeeping_loop(), name="forward-housekeeping"),
            ]
        self._tasks.append(loop.create_task(self._follow_rules(), name="forward-rules"))
        self.core.ingestor.outbox = self

    async def stop(self) -> None:
        """After the ingestor has flushed: write pending lifecycle events, finish delivery rounds."""
        self._closing = True
        if self.core.ingestor.outbox is self:
            self.core.ingestor.outbox = None
        with contextlib.suppress(ValueError):
            self.registry.listeners.remove(self._on_registry)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._lifecycle_task is not None:
            self._lifecycle_wake.set()
            try:
                await asyncio.wait_for(self._lifecycle_task, STOP_TIMEOUT_S)
            except (TimeoutError, Exception):
                self._lifecycle_task.cancel()
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(w.stop(STOP_TIMEOUT_S) for w in workers))
        if self.sink_host is not None:  # after the last rounds
            await self.sink_host.stop()

    # -- rules -----------------------------------------------------------------------------
    async def reload(self) -> None:
        """Load the rules from storage, compile them, and start/stop delivery tasks to match."""
        async with self._reload_lock:
            rev = await self.storage.get_meta(fsql.REV_KEY)
            rows = await self.storage.forward_rules()
            compiled: dict[int, CompiledRule] = {}
            for row in rows:
                try:
                    opened = self._opened(row)
                    specs = {t.id: parse_target(t.spec, f"target {t.id}") for t in opened.targets}
                    compiled[row.id] = CompiledRule(opened, specs)
                except (ValueError, Invalid) as exc:  # stored by another release, or a changed key
                    log.error("forwarding rule %d (%s) is not usable and is skipped: %s", row.id, row.name, exc)
            by_source: dict[str, list[CompiledRule]] = {}
            for rule in compiled.values():
                if rule.row.enabled:
                    by_source.setdefault(rule.source, []).append(rule)
            self._rules, self._by_source, self._rev = compiled, by_source, rev
            if self.deliver and not self._closing:
                await self._reconcile()

    async def _reconcile(self) -> None:
        wanted: dict[int, tuple[CompiledRule, TargetSpec]] = {
            tid: (rule, spec) for rule in self._rules.values() for tid, spec in rule.specs.items()
        }
        stale = []
        for tid, worker in list(self._workers.items()):
            entry = wanted.get(tid)
            if entry is None or self._worker_specs.get(tid) != msgspec.json.encode(entry[1]):
                stale.append(self._workers.pop(tid))
            else:
                worker.rule = entry[0]  # name or filter may have changed; the sink did not
        await asyncio.gather(*(w.stop(STOP_TIMEOUT_S) for w in stale))
        for tid, (rule, spec) in wanted.items():
            if tid not in self._workers:
                sink = await self._make_sink(spec, tid, rule.id)
                worker = TargetWorker(self, rule, tid, str(msgspec.to_builtins(spec)["type"]), sink)
                self._workers[tid] = worker
                self._worker_specs[tid] = msgspec.json.encode(spec)
                self.queued.setdefault(tid, 0)
                worker.start()
        for tid in list(self.queued):
            if tid not in wanted:
                self.queued.pop(tid, None)

    async def _make_sink(self, spec: TargetSpec, target_id: int, rule_id: int) -> Sink:
        concurrency = self.settings.forward_concurrency
        if not self.settings.forward_sink_process:
            return make_sink(spec, target_id, rule_id, concurrency)
        if self.sink_host is None:  # started with the first target: no process while there are no rules
            host = SinkHost(self.settings.log_level, self.settings.log_format)
            try:
                await host.start()
            except Exception as exc:  # e.g. out of processes: deliver from this process instead
                log.error("cannot start the forwarding sink process (%s); sinks run in the main process", exc)
                return make_sink(spec, target_id, rule_id, concurrency)
            self.sink_host = host
        return RemoteSink(self.sink_host, spec, target_id, rule_id, concurrency)

    async def _follow_rules(self) -> None:
        """Rules changed through another process or node reach this one within registry_poll_s."""
        while True:
            await asyncio.sleep(self.settings.registry_poll_s)
            try:
                if await self.storage.get_meta(fsql.REV_KEY) != self._rev:
                    await self.reload()
            except Exception as exc:
                log.warning("reloading forwarding rules failed: %s", exc)

    # secrets are sealed with the master key at rest, like device secrets
    def _seal(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.box is None:
            return spec
        out = dict(spec)
        for name in SECRET_FIELDS:
            if out.get(name):
                out[name] = self.box.seal(out[name])
        if isinstance(out.get("url"), str) and url_password(out["url"]):
            out["url"] = self.box.seal(out["url"])
        return out

    def _open(self, spec: dict[str, Any]) -> dict[str, Any]:
        if self.box is None:
            return spec
        out = dict(spec)
        for name in (*SECRET_FIELDS, "url"):
            if isinstance(out.get(name), str):
                out[name] = self.box.open(out[name])
        return out

    def _opened(self, row: ForwardRuleRow) -> ForwardRuleRow:
        targets = [msgspec.structs.replace(t, spec=self._open(t.spec)) for t in row.targets]
        return msgspec.structs.replace(row, targets=targets)

    def _sealed(self, row: ForwardRuleRow) -> ForwardRuleRow:
        targets = [msgspec.structs.replace(t, spec=self._seal(t.spec)) for t in row.targets]
        return msgspec.structs.replace(row, targets=targets)

    async def _stored(self, rule_id: int) -> ForwardRuleRow:
        for row in await self.storage.forward_rules():
            if row.id == rule_id:
                return self._opened(row)
        raise NotFound(f"rule {rule_id} not found")

    async def _check_product(self, product_key: str) -> None:
        if product_key and await self.storage.get_product(product_key) is None:
            raise Invalid(
                f"productKey: product {product_key!r} does not exist",
                [{"field": "productKey", "reason": "not found"}],
            )

    async def create_rule(self, doc: dict[str, Any]) -> dict[str, Any]:
        rule = parse_rule(doc)
        await self._check_product(rule.product_key)
        saved = await self.storage.forward_save_rule(self._sealed(rule))
        assert saved is not None
        await self.reload()
        return rule_json(self._opened(saved))

    async def update_rule(self, rule_id: int, doc: dict[str, Any]) -> dict[str, Any]:
        current = await self._stored(rule_id)
        rule = parse_rule(doc, current)
        if rule.product_key != current.product_key:
            await self._check_product(rule.product_key)
        saved = await self.storage.forward_save_rule(self._sealed(rule))
        if saved is None:
            raise NotFound(f"rule {rule_id} not found")
        await self.reload()
        return rule_json(self._opened(saved))

    async def delete_rule(self, rule_id: int) -> None:
        if not await self.storage.forward_delete_rule(rule_id):
            raise NotFound(f"rule {rule_id} not found")
        await self.reload()

    async def get_rule(self, rule_id: int) -> dict[str, Any]:
        return rule_json(await self._stored(rule_id))

    async def list_rules(self) -> list[dict[str, Any]]:
        return [rule_json(self._opened(r)) for r in await self.storage.forward_rules()]

    async def stats(self, rule_id: int) -> dict[str, Any]:
        rule = await self._stored(rule_id)
        kinds = {t.id: t.spec.get("type") for t in rule.targets}
        targets = [self._stats_json(s, kinds.get(s.target_id)) for s in await self.storage.forward_stats(rule_id)]
        totals = {
            k: sum(t[k] for t in targets)
            for k in ("matched", "filteredOut", "delivered", "deadLettered", "inFlight", "queued", "redelivered")
        }
        return {"ruleId": rule_id, "name": rule.name, "targets": targets, **totals}

    async def refresh_metrics(self) -> None:
        """Read every target's counters for `/metrics` (called when it is scraped): `metric_stats`."""
        names = {rule_id: rule.row.name for rule_id, rule in self._rules.items()}
        self.metric_stats = [
            {"rule": names.get(s.rule_id, str(s.rule_id)), "ruleId": s.rule_id, **doc}
            for s, doc in await self._every_target_stats()
        ]

    async def all_target_stats(self) -> list[dict[str, Any]]:
        """Counters of every target (one consistent read)."""
        return [doc for _, doc in await self._every_target_stats()]

    async def _every_target_stats(self) -> list[tuple[TargetStats, dict[str, Any]]]:
        kinds = {tid: w.kind for tid, w in self._workers.items()}
        return [(s, self._stats_json(s, kinds.get(s.target_id))) for s in await self.storage.forward_stats(None)]

    def _stats_json(self, s: TargetStats, kind: Any) -> dict[str, Any]:
        worker = self._workers.get(s.target_id)
        # in flight: claimed by this process's round (other nodes' rounds show as queued); never more
        # than the outbox count read just before, so the counters add up
        inflight = min(worker.inflight, s.outbox) if worker else 0
        return {
            "targetId": s.target_id,
            "type": kind,
            "matched": s.matched,
            "filteredOut": s.filtered,
            "delivered": s.delivered,
            "deadLettered": s.dead,
            "inFlight": inflight,
            "queued": s.outbox - inflight,
            "redelivered": s.redelivered,  # deliveries after an attempt that may have arrived too
            "retries": s.retries,
            "replayed": s.replayed,
            "failing": bool(worker and worker.failing_since is not None),
            "lastError": s.last_error or None,
            "lastErrorAt": s.last_error_at or None,
            "lastDeliveredAt": s.last_delivered_at or None,
        }

    async def _target_ids(self, rule_id: int, target_id: int | None) -> list[int]:
        rule = await self._stored(rule_id)
        ids = [t.id for t in rule.targets]
        if target_id is not None:
            if target_id not in ids:
                raise NotFound(f"rule {rule_id} has no target {target_id}")
            return [target_id]
        return ids

    async def dead_letters(self, rule_id: int, target_id: int | None, after_id: int, limit: int) -> list[DeadLetterRow]:
        return await self.storage.forward_dead_letters(await self._target_ids(rule_id, target_id), after_id, limit)

    async def replay(self, rule_id: int, target_id: int | None, ids: list[int] | None) -> int:
        targets = await self._target_ids(rule_id, target_id)
        moved = await self.storage.forward_replay(targets, ids, self.node_id, now_ms())
        if moved:
            self.queued.update(await self.storage.forward_queue_sizes(self.node_id))
            for tid in targets:
                worker = self._workers.get(tid)
                if worker is not None:
                    worker.wake()
            log.info("rule %d: %d dead letter(s) replayed", rule_id, moved)
        return moved

    # -- ingest: outbox rows of a batch ----------------------------------------------------
    async def build(self, records: list[Record]) -> OutboxBatch | None:
        """Outbox rows and counters for a batch about to commit (called by the Ingestor)."""
        by_source = self._by_source
        if not by_source:
            return None
        lifecycle = by_source.get("lifecycle")
        seen = self.core.last_seen
        window = self.window_ms
        now = now_ms()
        rows: list[OutboxRow] = []
        counts: dict[int, list[int]] = {}
        infos: dict[int, tuple[DeviceInfo, tuple[str, str] | None] | None] = {}
        came_online: set[int] = set()
        for r in records:
            kind = r.kind
            if kind == "rejected":
                continue
            source = KIND_SOURCE.get(kind)
            rules = by_source.get(source) if source else None
            online = False
            if lifecycle is not None and r.device_id not in came_online:
                prev = seen.get(r.device_id)
                online = prev is None or r.received_at - prev >= window
            if not rules and not online:
                continue
            if r.device_id not in infos:
                infos[r.device_id] = await self._device(r.device_id)
            entry = infos[r.device_id]
            if entry is None:  # deleted while its report was in flight
                continue
            info, gateway = entry
            if online and lifecycle is not None:
                came_online.add(r.device_id)
                event = ForwardMessage(
                    source="lifecycle",
                    lifecycle="online",
                    message_id=self.core.ids.next(),
                    device_id=r.device_id,
                    product_key=info.product_key,
                    device_name=info.device_name,
                    ts=r.received_at,
                    received_at=r.received_at,
                    last_seen=r.received_at,
                    gateway=gateway,
                    online=True,
                )
                await self._match(event, lifecycle, rows, counts, now)
            if rules and source is not None:
                message = ForwardMessage(
                    source=source,
                    kind=kind,
                    message_id=r.message_id,
                    device_id=r.device_id,
                    product_key=info.product_key,
                    device_name=info.device_name,
                    ts=r.ts,
                    received_at=r.received_at,
                    topic=r.topic,
                    identifier=r.identifier,
                    values=r.values if kind == "property" else r.params,
                    payload=r.payload,
                    gateway=gateway,
                )
                await self._match(message, rules, rows, counts, now)
        if not counts:
            return None
        return OutboxBatch(rows=rows, counts=self._target_counts(counts))

    async def _device(self, device_id: int) -> tuple[DeviceInfo, tuple[str, str] | None] | None:
        info = await self.registry.info(device_id)
        if info is None:
            return None
        gateway = None
        if info.gateway_id:
            gw = await self.registry.info(info.gateway_id)
            if gw is not None:
                gateway = (gw.product_key, gw.device_name)
        return info, gateway

    async def _match(
        self,
        m: ForwardMessage,
        rules: list[CompiledRule],
        rows: list[OutboxRow],
        counts: dict[int, list[int]],
        now: int,
    ) -> None:
        for rule in rules:
            if rule.product_key and rule.product_key != m.product_key:
                continue
            tally = counts.get(rule.id)
            if tally is None:
                tally = counts[rule.id] = [0, 0]
            tally[0] += 1
            if rule.predicate is not None:
                try:
                    selected = rule.predicate(m) is True
                except Exception:  # the evaluator is total; this guards against a bug
                    log.exception("rule %d: filter failed; the message is filtered out", rule.id)
                    selected = False
                if not selected:
                    tally[1] += 1
                    continue
            if m.source == "event" and rule.format == "alibaba" and not m.event_name:
                await self._event_meta(m)
            body, content_type = rule.render(m, rule.id, rule.name)
            identifier = m.identifier if m.source == "event" else m.lifecycle if m.source == "lifecycle" else m.source
            for tid in rule.target_ids:
                rows.append(
                    OutboxRow(
                        target_id=tid,
                        node_id=self.node_id,
                        device_id=m.device_id,
                        message_id=m.message_id,
                        product_key=m.product_key,
                        device_name=m.device_name,
                        source=m.source,
                        identifier=identifier,
                        topic=m.topic,
                        content_type=content_type,
                        body=body,
                        created_at=now,
                    )
                )

    async def _event_meta(self, m: ForwardMessage) -> None:
        model = await self.registry.compiled_model(m.product_key)
        event = model.event(m.identifier) if model else None
        m.event_name = event.name if event else m.identifier
        m.event_type = event.type if event else "info"

    def _target_counts(self, counts: dict[int, list[int]]) -> list[TargetCount]:
        out = []
        for rule_id, (matched, filtered) in counts.items():
            rule = self._rules.get(rule_id)
            for tid in rule.target_ids if rule else []:
                out.append(TargetCount(tid, matched, filtered))
        return out

    def committed(self, batch: OutboxBatch) -> None:
        """The batch is durable: count it and wake the targets' delivery tasks."""
        added: dict[int, int] = {}
        for row in batch.rows:
            added[row.target_id] = added.get(row.target_id, 0) + 1
            if row.source == "lifecycle" and row.identifier == "online":
                self._online.add(row.device_id)
        limit = self.settings.forward_outbox_warn_size
        for tid, n in added.items():
            queued = self.queued[tid] = self.queued.get(tid, 0) + n
            worker = self._workers.get(tid)
            if worker is not None:
                worker.wake()
            if queued > limit and tid not in self._warned:
                self.check_outbox_size()

    def settled(self, target_id: int, settle: Settlement) -> None:
        gone = len(settle.delivered) + len(settle.dead)
        if gone and target_id in self.queued:
            self.queued[target_id] = max(0, self.queued[target_id] - gone)

    def expired(self, target_id: int, count: int) -> None:
        if target_id in self.queued:
            self.queued[target_id] = max(0, self.queued[target_id] - count)

    # -- lifecycle events --------------------------------------------------------------------
    def _on_registry(self, change: str, row: DeviceRow) -> None:
        if change not in REGISTRY_CHANGES or self._closing:
            return
        if change == "deleted":
            self._online.discard(row.id)
        if "lifecycle" not in self._by_source:
            return
        at = now_ms()
        self._queue_lifecycle(
            ForwardMessage(
                source="lifecycle",
                lifecycle=change,
                message_id=self.core.ids.next(),
                device_id=row.id,
                product_key=row.product_key,
                device_name=row.device_name,
                ts=at,
                received_at=at,
                last_seen=self.core.last_seen.get(row.id),
                online=row.id in self._online,
            ),
            row.gateway_id,
        )

    def _queue_lifecycle(self, m: ForwardMessage, gateway_id: int | None = None) -> None:
        if gateway_id:
            gw = self.registry._devices.get(gateway_id)  # the cached view is enough for a name
            if gw is not None:
                m.gateway = (gw.product_key, gw.device_name)
        self._lifecycle.append(m)
        self._lifecycle_wake.set()

    async def _lifecycle_loop(self) -> None:
        while True:
            await self._lifecycle_wake.wait()
            self._lifecycle_wake.clear()
            while self._lifecycle:
                pending, self._lifecycle = self._lifecycle, []
                rules = self._by_source.get("lifecycle")
                if not rules:
                    continue
                rows: list[OutboxRow] = []
                counts: dict[int, list[int]] = {}
                now = now_ms()
                for m in pending:
                    await self._match(m, rules, rows, counts, now)
                if not counts:
                    continue
                batch = OutboxBatch(rows=rows, counts=self._target_counts(counts))
                for attempt in range(30 if not self._closing else 3):
                    try:
                        await self.storage.forward_enqueue(batch)
                        self.committed(batch)
                        break
                    except Exception as exc:
                        log.error(
                            "writing %d lifecycle event(s) failed (attempt %d): %s", len(pending), attempt + 1, exc
                        )
                        await asyncio.sleep(1.0)
                else:
                    log.error("%d lifecycle event(s) were not forwarded: the database is unavailable", len(pending))
            if self._closing:
                return

    async def _presence_loop(self) -> None:
        """Offline events: a device whose last report got older than the online window."""
        interval = max(0.2, min(5.0, self.settings.online_window_s / 4))
        while True:
            await asyncio.sleep(interval)
            now = now_ms()
            seen = self.core.last_seen
            gone: list[tuple[int, int]] = []
            for device_id in list(self._online):
                last = seen.get(device_id)
                if last is None or now - last >= self.window_ms:
                    self._online.discard(device_id)
                    if last is not None:
                        gone.append((device_id, last))
            for device_id, last in list(seen.items()):  # reports other processes committed
                if now - last < self.window_ms:
                    self._online.add(device_id)
            if not gone or "lifecycle" not in self._by_source:
                continue
            for device_id, last in gone:
                info = await self.registry.info(device_id)
                if info is None:
                    continue
                at = last + self.window_ms
                self._queue_lifecycle(
                    ForwardMessage(
                        source="lifecycle",
                        lifecycle="offline",
                        message_id=self.core.ids.next(),
                        device_id=device_id,
                        product_key=info.product_key,
                        device_name=info.device_name,
                        ts=at,
                        received_at=at,
                        last_seen=last,
                    ),
                    info.gateway_id,
                )

    # -- housekeeping and metrics ------------------------------------------------------------
    async def _housekeeping_loop(self) -> None:
        swept = time.monotonic()
        while True:
            await asyncio.sleep(5.0)
            self.check_outbox_size()
            if time.monotonic() - swept >= ORPHAN_SWEEP_S:
                swept = time.monotonic()
                try:
                    if purged := await self.storage.forward_purge_orphans():
                        log.info("removed %d outbox row(s) of deleted rules", purged)
                except Exception as exc:
                    log.warning("outbox sweep failed: %s", exc)

    def check_outbox_size(self) -> None:
        limit = self.settings.forward_outbox_warn_size
        mono = time.monotonic()
        for tid, n in self.queued.items():
            warned = self._warned.get(tid)
            if n > limit:
                if warned is None or mono - warned >= WARN_EVERY_S:
                    worker = self._workers.get(tid)
                    label = worker.label if worker else f"target {tid}"
                    log.warning(
                        "%s: %d messages wait in the outbox (more than forward_outbox_warn_size %d)%s",
                        label,
                        n,
                        limit,
                        f"; last error: {worker.last_error}" if worker and worker.last_error else "",
                        extra={
                            "rule_id": worker.rule.id if worker else None,
                            "rule": worker.rule.name if worker else None,
                            "target_id": tid,
                            "queued": n,
                        },
                    )
                    self._warned[tid] = mono
            elif warned is not None:
                self._warned.pop(tid, None)
                log.info("target %d: outbox back to %d messages", tid, n)

    def outbox_depths(self) -> dict[str, int]:
        """Outbox rows per target of this node, labelled `<rule name>/<target id>-<type>` (metrics)."""
        out = {}
        for tid, n in self.queued.items():
            worker = self._workers.get(tid)
            label = f"{worker.rule.name}/{tid}-{worker.kind}" if worker else str(tid)
            out[label] = n
        return out
