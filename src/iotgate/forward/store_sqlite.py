"""The forwarding tables (iotgate.forward) on SQLite: mixed into SqliteStorage.

Runs on SqliteStorage's single writer thread (`_write`) and reader pool (`_read`); the SQL is
shared with PostgreSQL (iotgate/forward/sql.py).
"""

from __future__ import annotations

import sqlite3
from typing import Any

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
from iotgate.storage.base import Conflict

_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


def write_outbox(con: sqlite3.Connection, batch: OutboxBatch) -> None:
    if batch.rows:
        con.executemany(fsql.INSERT_OUTBOX, [fsql.outbox_params(r) for r in batch.rows])
    if batch.counts:
        con.executemany(fsql.COUNT_MATCHED, [(c.matched, c.filtered, c.target_id) for c in batch.counts])


class ForwardSqlite:
    """The forwarding tables (iotgate.forward) on SQLite; mixed into SqliteStorage."""

    _write: Any
    _read: Any
    _tx: Any
    synchronous: str

    async def forward_rules(self) -> list[ForwardRuleRow]:
        def run(c: sqlite3.Connection) -> tuple[list[tuple], list[tuple]]:
            return c.execute(fsql.SELECT_RULES).fetchall(), c.execute(fsql.SELECT_TARGETS).fetchall()

        rules, targets = await self._read(run)
        return _rules_from_rows(rules, targets)

    async def forward_save_rule(self, rule: ForwardRuleRow) -> ForwardRuleRow | None:
        def run(c: sqlite3.Connection) -> ForwardRuleRow | None:
            at = now_ms()
            try:
                if rule.id == 0:
                    rule_id = c.execute(
                        fsql.INSERT_RULE,
                        (rule.name, rule.source, rule.product_key, rule.where, rule.format, rule.enabled, at, at),
                    ).fetchone()[0]
                    created = at
                else:
                    rule_id = rule.id
                    cur = c.execute(
                        fsql.UPDATE_RULE,
                        (rule.name, rule.source, rule.product_key, rule.where, rule.format, rule.enabled, at, rule_id),
                    )
                    if cur.rowcount == 0:
                        return None
                    created = rule.created_at
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"a rule named {rule.name!r} exists") from exc
            old = {r[0] for r in c.execute(fsql.RULE_TARGET_IDS, (rule_id,))}
            targets = []
            for pos, t in enumerate(rule.targets):
                spec = _json_encode(t.spec).decode()
                if t.id and t.id in old:
                    c.execute(fsql.UPDATE_TARGET, (pos, spec, t.id, rule_id))
                    target_id = t.id
                else:
                    target_id = c.execute(fsql.INSERT_TARGET, (rule_id, pos, spec)).fetchone()[0]
                targets.append(ForwardTargetRow(id=target_id, rule_id=rule_id, position=pos, spec=t.spec))
            for gone in old - {t.id for t in targets}:
                for stmt, args in fsql.delete_target_rows(gone):
                    c.execute(stmt, args)
            c.execute(fsql.SET_REV, (fsql.REV_KEY, f"{at}-{rule_id}"))
            return msgspec.structs.replace(rule, id=rule_id, created_at=created, updated_at=at, targets=targets)

        result: ForwardRuleRow | None = await self._write(lambda c: self._tx(c, run))
        return result

    async def forward_delete_rule(self, rule_id: int) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            for (target_id,) in c.execute(fsql.RULE_TARGET_IDS, (rule_id,)).fetchall():
                for stmt, args in fsql.delete_target_rows(target_id):
                    c.execute(stmt, args)
            gone = c.execute(fsql.DELETE_RULE, (rule_id,)).rowcount > 0
            c.execute(fsql.SET_REV, (fsql.REV_KEY, f"{now_ms()}-{rule_id}-deleted"))
            return gone

        return bool(await self._write(lambda c: self._tx(c, run)))

    async def forward_enqueue(self, batch: OutboxBatch) -> None:
        await self._write(lambda c: self._tx(c, lambda c2: write_outbox(c2, batch)))

    async def forward_cycle(
        self, target_id: int, node_id: int, settle: Settlement | None, claim: int
    ) -> list[OutboxRow]:
        def run(c: sqlite3.Connection) -> list[OutboxRow]:
            if settle is not None:
                _settle(c, target_id, settle)
            if claim <= 0:
                return []
            rows = [fsql.claimed_row(r) for r in c.execute(fsql.CLAIM, (target_id, node_id, claim))]
            if rows:
                c.execute(fsql.CLAIM_MARK, (fsql.claim_mark_key(target_id, node_id), str(rows[-1].id)))
            return rows

        def relaxed(c: sqlite3.Connection) -> list[OutboxRow]:
            # Bookkeeping needs no fsync of its own: in WAL mode the next FULL commit (the next ingest
            # batch) makes it durable too, and a settle lost to a power cut only means the message is
            # delivered again. It keeps the writer thread free for ingest commits.
            strict = self.synchronous in ("FULL", "EXTRA")
            if strict:
                c.execute("PRAGMA synchronous=NORMAL")
            try:
                return list(self._tx(c, run))
            finally:
                if strict:
                    c.execute(f"PRAGMA synchronous={self.synchronous}")

        result: list[OutboxRow] = await self._write(relaxed)
        return result

    async def forward_pending(self, target_id: int, node_id: int) -> bool:
        return bool(await self._read(lambda c: c.execute(fsql.PENDING, (target_id, node_id)).fetchone()))

    async def forward_expire(self, target_id: int, node_id: int, created_before: int, now: int) -> int:
        def run(c: sqlite3.Connection) -> int:
            c.execute(fsql.BURY_EXPIRED, (now, target_id, node_id, created_before))
            return int(c.execute(fsql.DELETE_EXPIRED, (target_id, node_id, created_before)).rowcount)

        return int(await self._write(lambda c: self._tx(c, run)))

    async def forward_release(self, node_id: int) -> int:
        return int(await self._write(lambda c: c.execute(fsql.RELEASE, (node_id,)).rowcount))

    async def forward_claim_marks(self, node_id: int) -> dict[int, int]:
        rows = await self._read(lambda c: c.execute(fsql.CLAIM_MARKS, (fsql.claim_marks_pattern(node_id),)).fetchall())
        return fsql.claim_marks(rows)

    async def forward_queue_sizes(self, node_id: int) -> dict[int, int]:
        rows = await self._read(lambda c: c.execute(fsql.QUEUE_SIZES, (node_id,)).fetchall())
        return {r[0]: r[1] for r in rows}

    async def forward_stats(self, rule_id: int | None = None) -> list[TargetStats]:
        query = fsql.STATS
        args: tuple[int, ...] = ()
        if rule_id is not None:
            query, args = query + " WHERE t.rule_id=?", (rule_id,)
        rows = await self._read(lambda c: c.execute(query + " ORDER BY t.rule_id, t.pos", args).fetchall())
        return [_stats(r) for r in rows]

    async def forward_dead_letters(self, target_ids: list[int], after_id: int, limit: int) -> list[DeadLetterRow]:
        if not target_ids:
            return []
        query, args = fsql.dead_letter_query(target_ids, after_id, limit)
        rows = await self._read(lambda c: c.execute(query, args).fetchall())
        return [_dead_letter(r) for r in rows]

    async def forward_replay(self, target_ids: list[int], ids: list[int] | None, node_id: int, now: int) -> int:
        if not target_ids or ids == []:
            return 0
        count_q, copy_q, delete_q = fsql.replay_statements(target_ids, ids, node_id, now)

        def run(c: sqlite3.Connection) -> int:
            counts = c.execute(*count_q).fetchall()
            c.execute(*copy_q)
            c.execute(*delete_q)
            c.executemany("UPDATE forward_targets SET replayed=replayed+? WHERE id=?", [(n, t) for t, n in counts])
            return sum(n for _, n in counts)

        return int(await self._write(lambda c: self._tx(c, run)))

    async def forward_purge_orphans(self) -> int:
        def run(c: sqlite3.Connection) -> int:
            return sum(c.execute(stmt).rowcount for stmt in fsql.PURGE_ORPHANS)

        return int(await self._write(lambda c: self._tx(c, run)))


def _settle(c: sqlite3.Connection, target_id: int, s: Settlement) -> None:
    if s.delivered:
        c.executemany(fsql.DELIVERED, [(i, target_id) for i in s.delivered])
    if s.failed:
        c.executemany(fsql.FAILED, [(known, s.now, error[:1000], i, target_id) for i, known, error in s.failed])
    if s.unsure:
        c.executemany(fsql.UNSURE, [(i, target_id) for i in s.unsure])
    if s.dead:
        c.executemany(fsql.BURY_ONE, [(s.now, i, target_id) for i in s.dead])
        c.executemany(fsql.DELIVERED, [(i, target_id) for i in s.dead])
    query, args = fsql.target_counters(s)
    c.execute(query, (*args, target_id))


def _rules_from_rows(rules: list[Any], targets: list[Any]) -> list[ForwardRuleRow]:
    by_rule: dict[int, list[ForwardTargetRow]] = {}
    for t in targets:
        by_rule.setdefault(t[1], []).append(
            ForwardTargetRow(id=t[0], rule_id=t[1], position=t[2], spec=_json_decode(t[3]))
        )
    return [
        ForwardRuleRow(
            id=r[0],
            name=r[1],
            source=r[2],
            product_key=r[3],
            where=r[4],
            format=r[5],
            enabled=bool(r[6]),
            created_at=r[7],
            updated_at=r[8],
            targets=by_rule.get(r[0], []),
        )
        for r in rules
    ]


def _stats(r: Any) -> TargetStats:
    return TargetStats(
        target_id=r[0],
        rule_id=r[1],
        matched=r[2],
        filtered=r[3],
        delivered=r[4],
        redelivered=r[5],
        retries=r[6],
        replayed=r[7],
        last_error=r[8],
        last_error_at=r[9],
        last_delivered_at=r[10],
        outbox=r[11],
        dead=r[12],
    )


def _dead_letter(r: Any) -> DeadLetterRow:
    return DeadLetterRow(
        id=r[0],
        target_id=r[1],
        device_id=r[2],
        message_id=r[3],
        product_key=r[4],
        device_name=r[5],
        source=r[6],
        identifier=r[7],
        topic=r[8],
        content_type=r[9],
        body=bytes(r[10]),
        created_at=r[11],
        dead_at=r[12],
        tries=r[13],
        failures=r[14],
        last_error=r[15],
    )
