"""The forwarding tables (iotgate.forward) on PostgreSQL: mixed into PostgresStorage.

Same statements as SQLite (iotgate/forward/sql.py, `?` rewritten to `$n`); outbox rows of an
ingest batch go in by binary COPY inside the batch's transaction.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import msgspec

from iotgate.clock import now_ms
from iotgate.forward import sql as fsql
from iotgate.forward.rows import (
    DeadLetterRow,
    ForwardRuleRow,
    ForwardTargetRow,
    OutboxBatch,
    OutboxRow,
    Settlement,
    TargetStats,
)
from iotgate.forward.store_sqlite import _dead_letter, _rules_from_rows, _stats
from iotgate.storage.base import Conflict

_json_encode = msgspec.json.encode
_n = fsql.numbered
OUTBOX_COLUMNS = tuple(c.strip() for c in fsql.MESSAGE_COLS.split(","))


async def write_outbox(con: asyncpg.Connection, batch: OutboxBatch) -> None:
    if batch.rows:
        await con.copy_records_to_table(
            "forward_outbox", records=[fsql.outbox_params(r) for r in batch.rows], columns=OUTBOX_COLUMNS
        )
    if batch.counts:
        # one lock order (target id) for every writer: concurrent batches cannot deadlock here
        counts = sorted(batch.counts, key=lambda c: c.target_id)
        await con.executemany(_n(fsql.COUNT_MATCHED), [(c.matched, c.filtered, c.target_id) for c in counts])


async def _settle(con: asyncpg.Connection, target_id: int, s: Settlement) -> None:
    if s.delivered:
        await con.executemany(_n(fsql.DELIVERED), [(i, target_id) for i in s.delivered])
    if s.failed:
        await con.executemany(
            _n(fsql.FAILED), [(known, s.now, error[:1000], i, target_id) for i, known, error in s.failed]
        )
    if s.unsure:
        await con.executemany(_n(fsql.UNSURE), [(i, target_id) for i in s.unsure])
    if s.dead:
        await con.executemany(_n(fsql.BURY_ONE), [(s.now, i, target_id) for i in s.dead])
        await con.executemany(_n(fsql.DELIVERED), [(i, target_id) for i in s.dead])
    query, args = fsql.target_counters(s)
    await con.execute(_n(query), *args, target_id)


class ForwardPostgres:
    pool: Any
    _tx: Any

    async def forward_rules(self) -> list[ForwardRuleRow]:
        async with self.pool.acquire() as con, con.transaction(isolation="repeatable_read", readonly=True):
            rules = await con.fetch(fsql.SELECT_RULES)
            targets = await con.fetch(fsql.SELECT_TARGETS)
        return _rules_from_rows(list(rules), list(targets))

    async def forward_save_rule(self, rule: ForwardRuleRow) -> ForwardRuleRow | None:
        async def run(con: asyncpg.Connection) -> ForwardRuleRow | None:
            at = now_ms()
            try:
                if rule.id == 0:
                    rule_id = await con.fetchval(
                        _n(fsql.INSERT_RULE),
                        rule.name,
                        rule.source,
                        rule.product_key,
                        rule.where,
                        rule.format,
                        rule.enabled,
                        at,
                        at,
                    )
                    created = at
                else:
                    rule_id = rule.id
                    status = await con.execute(
                        _n(fsql.UPDATE_RULE),
                        rule.name,
                        rule.source,
                        rule.product_key,
                        rule.where,
                        rule.format,
                        rule.enabled,
                        at,
                        rule_id,
                    )
                    if status.endswith(" 0"):
                        return None
                    created = rule.created_at
            except asyncpg.UniqueViolationError as exc:
                raise Conflict(f"a rule named {rule.name!r} exists") from exc
            old = {r[0] for r in await con.fetch(_n(fsql.RULE_TARGET_IDS), rule_id)}
            targets = []
            for pos, t in enumerate(rule.targets):
                spec = _json_encode(t.spec).decode()
                if t.id and t.id in old:
                    await con.execute(_n(fsql.UPDATE_TARGET), pos, spec, t.id, rule_id)
                    target_id = t.id
                else:
                    target_id = await con.fetchval(_n(fsql.INSERT_TARGET), rule_id, pos, spec)
                targets.append(ForwardTargetRow(id=target_id, rule_id=rule_id, position=pos, spec=t.spec))
            for gone in sorted(old - {t.id for t in targets}):
                for stmt, args in fsql.delete_target_rows(gone):
                    await con.execute(_n(stmt), *args)
            await con.execute(_n(fsql.SET_REV), fsql.REV_KEY, f"{at}-{rule_id}")
            return msgspec.structs.replace(rule, id=rule_id, created_at=created, updated_at=at, targets=targets)

        result: ForwardRuleRow | None = await self._tx(run)
        return result

    async def forward_delete_rule(self, rule_id: int) -> bool:
        async def run(con: asyncpg.Connection) -> bool:
            for (target_id,) in await con.fetch(_n(fsql.RULE_TARGET_IDS), rule_id):
                for stmt, args in fsql.delete_target_rows(target_id):
                    await con.execute(_n(stmt), *args)
            status = await con.execute(_n(fsql.DELETE_RULE), rule_id)
            await con.execute(_n(fsql.SET_REV), fsql.REV_KEY, f"{now_ms()}-{rule_id}-deleted")
            return not status.endswith(" 0")

        return bool(await self._tx(run))

    async def forward_enqueue(self, batch: OutboxBatch) -> None:
        async def run(con: asyncpg.Connection) -> None:
            await write_outbox(con, batch)

        await self._tx(run)

    async def forward_cycle(
        self, target_id: int, node_id: int, settle: Settlement | None, claim: int
    ) -> list[OutboxRow]:
        async def run(con: asyncpg.Connection) -> list[OutboxRow]:
            # bookkeeping only: a settle lost in a server crash means a redelivery, not a lost message
            await con.execute("SET LOCAL synchronous_commit TO OFF")
            if settle is not None:
                await _settle(con, target_id, settle)
            if claim <= 0:
                return []
            rows = [fsql.claimed_row(r) for r in await con.fetch(_n(fsql.CLAIM), target_id, node_id, claim)]
            if rows:
                await con.execute(_n(fsql.CLAIM_MARK), fsql.claim_mark_key(target_id, node_id), str(rows[-1].id))
            return rows

        result: list[OutboxRow] = await self._tx(run)
        return result

    async def forward_pending(self, target_id: int, node_id: int) -> bool:
        return bool(await self.pool.fetchval(_n(fsql.PENDING), target_id, node_id))

    async def forward_expire(self, target_id: int, node_id: int, created_before: int, now: int) -> int:
        async def run(con: asyncpg.Connection) -> int:
            await con.execute(_n(fsql.BURY_EXPIRED), now, target_id, node_id, created_before)
            status = await con.execute(_n(fsql.DELETE_EXPIRED), target_id, node_id, created_before)
            return int(status.rsplit(" ", 1)[1])

        return int(await self._tx(run))

    async def forward_release(self, node_id: int) -> int:
        status = await self.pool.execute(_n(fsql.RELEASE), node_id)
        return int(status.rsplit(" ", 1)[1])

    async def forward_claim_marks(self, node_id: int) -> dict[int, int]:
        return fsql.claim_marks(await self.pool.fetch(_n(fsql.CLAIM_MARKS), fsql.claim_marks_pattern(node_id)))

    async def forward_queue_sizes(self, node_id: int) -> dict[int, int]:
        rows = await self.pool.fetch(_n(fsql.QUEUE_SIZES), node_id)
        return {r[0]: r[1] for r in rows}

    async def forward_stats(self, rule_id: int | None = None) -> list[TargetStats]:
        if rule_id is None:
            rows = await self.pool.fetch(fsql.STATS + " ORDER BY t.rule_id, t.pos")
        else:
            rows = await self.pool.fetch(_n(fsql.STATS + " WHERE t.rule_id=? ORDER BY t.rule_id, t.pos"), rule_id)
        return [_stats(r) for r in rows]

    async def forward_dead_letters(self, target_ids: list[int], after_id: int, limit: int) -> list[DeadLetterRow]:
        if not target_ids:
            return []
        query, args = fsql.dead_letter_query(target_ids, after_id, limit)
        return [_dead_letter(r) for r in await self.pool.fetch(_n(query), *args)]

    async def forward_replay(self, target_ids: list[int], ids: list[int] | None, node_id: int, now: int) -> int:
        if not target_ids or ids == []:
            return 0
        count_q, copy_q, delete_q = fsql.replay_statements(target_ids, ids, node_id, now)

        async def run(con: asyncpg.Connection) -> int:
            counts = [(r[0], r[1]) for r in await con.fetch(_n(count_q[0]), *count_q[1])]
            await con.execute(_n(copy_q[0]), *copy_q[1])
            await con.execute(_n(delete_q[0]), *delete_q[1])
            await con.executemany(
                "UPDATE forward_targets SET replayed=replayed+$1 WHERE id=$2", [(n, t) for t, n in sorted(counts)]
            )
            return sum(n for _, n in counts)

        return int(await self._tx(run))

    async def forward_purge_orphans(self) -> int:
        async def run(con: asyncpg.Connection) -> int:
            total = 0
            for stmt in fsql.PURGE_ORPHANS:
                total += int((await con.execute(stmt)).rsplit(" ", 1)[1])
            return total

        return int(await self._tx(run))
