"""Portable SQL of the forwarding tables, shared by the SQLite and PostgreSQL backends.

Statements use `?` placeholders; `numbered()` rewrites them as `$1, $2, ...` for asyncpg. Only
constructs both databases accept are used (RETURNING, ON CONFLICT, INSERT ... SELECT).
"""

from __future__ import annotations

import re
from typing import Any

from iotgate.forward.rows import OutboxRow, Settlement

REV_KEY = "forward:rev"  # meta key: changes whenever rules change (other processes reload)

RULE_COLS = "id, name, source, product_key, where_text, format, enabled, created_at, updated_at"
TARGET_COLS = "id, rule_id, pos, spec"
MESSAGE_COLS = (
    "target_id, node_id, device_id, message_id, product_key, device_name, source, identifier, topic, "
    "content_type, body, created_at"
)
CLAIM_COLS = (
    "id, target_id, node_id, device_id, message_id, product_key, device_name, source, identifier, topic, "
    "content_type, body, created_at, tries, failures, first_failed_at, last_error"
)
DEAD_COLS = (
    "id, target_id, device_id, message_id, product_key, device_name, source, identifier, topic, content_type, "
    "body, created_at, dead_at, tries, failures, last_error"
)

SET_REV = "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value"
SELECT_RULES = f"SELECT {RULE_COLS} FROM forward_rules ORDER BY id"
SELECT_TARGETS = f"SELECT {TARGET_COLS} FROM forward_targets ORDER BY rule_id, pos"
INSERT_RULE = (
    "INSERT INTO forward_rules(name, source, product_key, where_text, format, enabled, created_at, updated_at) "
    "VALUES(?,?,?,?,?,?,?,?) RETURNING id"
)
UPDATE_RULE = (
    "UPDATE forward_rules SET name=?, source=?, product_key=?, where_text=?, format=?, enabled=?, updated_at=? "
    "WHERE id=?"
)
RULE_TARGET_IDS = "SELECT id FROM forward_targets WHERE rule_id=?"
INSERT_TARGET = "INSERT INTO forward_targets(rule_id, pos, spec) VALUES(?,?,?) RETURNING id"
UPDATE_TARGET = "UPDATE forward_targets SET pos=?, spec=? WHERE id=? AND rule_id=?"


def delete_target_rows(target_id: int) -> list[tuple[str, tuple[object, ...]]]:
    """A deleted target's queue, dead letters, claim marks and row."""
    return [
        ("DELETE FROM forward_outbox WHERE target_id=?", (target_id,)),
        ("DELETE FROM forward_dead_letters WHERE target_id=?", (target_id,)),
        ("DELETE FROM meta WHERE key LIKE ?", (claim_mark_key(target_id, "%"),)),
        ("DELETE FROM forward_targets WHERE id=?", (target_id,)),
    ]


DELETE_RULE = "DELETE FROM forward_rules WHERE id=?"

INSERT_OUTBOX = f"INSERT INTO forward_outbox({MESSAGE_COLS}) VALUES(?,?,?,?,?,?,?,?,?,?,?,?)"
COUNT_MATCHED = "UPDATE forward_targets SET matched=matched+?, filtered=filtered+? WHERE id=?"

# A claim only reads: a target runs one round at a time, and the round's outcome is settled in the
# same transaction as the next claim, so whatever is in the outbox when claiming waits for delivery.
# The highest ID claimed is kept per target and node (CLAIM_MARK, one row per round instead of a
# write per message): after a crash, rows up to it may have been sent already (`redelivered`).
CLAIM = f"SELECT {CLAIM_COLS} FROM forward_outbox WHERE target_id=? AND node_id=? ORDER BY id LIMIT ?"
CLAIM_MARK = SET_REV  # meta key claim_mark_key(target, node)
CLAIM_MARKS = "SELECT key, value FROM meta WHERE key LIKE ?"


def claim_mark_key(target_id: int | str, node_id: int | str) -> str:
    """The meta key of a target's claim mark on a node; with "%" for either, a LIKE pattern."""
    return f"forward:claimed:{target_id}:{node_id}"


def claim_marks_pattern(node_id: int) -> str:
    return claim_mark_key("%", node_id)


def claim_marks(rows: list[Any]) -> dict[int, int]:
    """target ID -> highest ID of its last claim, from (key, value) rows of CLAIM_MARKS."""
    return {int(key.split(":")[2]): int(value) for key, value in rows}


PENDING = "SELECT 1 FROM forward_outbox WHERE target_id=? AND node_id=? LIMIT 1"
DELIVERED = "DELETE FROM forward_outbox WHERE id=? AND target_id=?"
FAILED = (
    "UPDATE forward_outbox SET tries=tries+1, failures=failures+?, "
    "first_failed_at=CASE WHEN first_failed_at=0 THEN ? ELSE first_failed_at END, last_error=? "
    "WHERE id=? AND target_id=?"
)
# sent (it may have arrived) but behind a failed message of its device: its try counts and it is not a
# known failure, so delivering it again counts as a possible duplicate (`redelivered`). Rows claimed
# but not sent (skipped) are not written at all.
UNSURE = "UPDATE forward_outbox SET tries=tries+1 WHERE id=? AND target_id=?"
_DEAD_SELECT = f"SELECT {MESSAGE_COLS}, tries, failures, last_error, CAST(? AS BIGINT) FROM forward_outbox"
_DEAD_INSERT = f"INSERT INTO forward_dead_letters({MESSAGE_COLS}, tries, failures, last_error, dead_at) "
BURY_ONE = _DEAD_INSERT + _DEAD_SELECT + " WHERE id=? AND target_id=?"
BURY_EXPIRED = _DEAD_INSERT + _DEAD_SELECT + " WHERE target_id=? AND node_id=? AND created_at<=? ORDER BY id"
DELETE_EXPIRED = "DELETE FROM forward_outbox WHERE target_id=? AND node_id=? AND created_at<=?"
# rows an earlier version marked in flight when claiming them: they wait again at start
RELEASE = "UPDATE forward_outbox SET inflight=0 WHERE node_id=? AND inflight=1"
QUEUE_SIZES = "SELECT target_id, COUNT(*) FROM forward_outbox WHERE node_id=? GROUP BY target_id"
STATS = (
    "SELECT t.id, t.rule_id, t.matched, t.filtered, t.delivered, t.redelivered, t.retries, t.replayed, "
    "t.last_error, t.last_error_at, t.last_delivered_at, "
    "(SELECT COUNT(*) FROM forward_outbox o WHERE o.target_id=t.id), "
    "(SELECT COUNT(*) FROM forward_dead_letters d WHERE d.target_id=t.id) "
    "FROM forward_targets t"
)
PURGE_ORPHANS = [
    "DELETE FROM forward_outbox WHERE target_id NOT IN (SELECT id FROM forward_targets)",
    "DELETE FROM forward_dead_letters WHERE target_id NOT IN (SELECT id FROM forward_targets)",
]


def target_counters(s: Settlement) -> tuple[str, list[object]]:
    """The UPDATE of a target's counters for a settlement (SET clause built from what happened)."""
    sets = ["delivered=delivered+?", "redelivered=redelivered+?", "retries=retries+?"]
    args: list[object] = [len(s.delivered), s.redelivered, len(s.failed)]
    if s.error:
        sets += ["last_error=?", "last_error_at=?"]
        args += [s.error[:1000], s.now]
    if s.delivered:
        sets.append("last_delivered_at=?")
        args.append(s.now)
    return f"UPDATE forward_targets SET {', '.join(sets)} WHERE id=?", args


def dead_letter_query(target_ids: list[int], after_id: int, limit: int) -> tuple[str, list[object]]:
    marks = ",".join("?" * len(target_ids))
    return (
        f"SELECT {DEAD_COLS} FROM forward_dead_letters WHERE target_id IN ({marks}) AND id > ? ORDER BY id LIMIT ?",
        [*target_ids, after_id, limit],
    )


def replay_statements(
    target_ids: list[int], ids: list[int] | None, node_id: int, now: int
) -> list[tuple[str, list[object]]]:
    """Count per target, copy back into the outbox (in dead-letter order), delete: one transaction."""
    where = f"target_id IN ({','.join('?' * len(target_ids))})"
    args: list[object] = list(target_ids)
    if ids is not None:
        where += f" AND id IN ({','.join('?' * len(ids))})"
        args += ids
    cols = MESSAGE_COLS.replace("node_id, ", "").replace(", created_at", "")
    return [
        (f"SELECT target_id, COUNT(*) FROM forward_dead_letters WHERE {where} GROUP BY target_id", args),
        (
            f"INSERT INTO forward_outbox(node_id, created_at, {cols}) "
            f"SELECT CAST(? AS INTEGER), CAST(? AS BIGINT), {cols} FROM forward_dead_letters WHERE {where} ORDER BY id",
            [node_id, now, *args],
        ),
        (f"DELETE FROM forward_dead_letters WHERE {where}", args),
    ]


def outbox_params(r: OutboxRow) -> tuple[object, ...]:
    return (
        r.target_id,
        r.node_id,
        r.device_id,
        r.message_id,
        r.product_key,
        r.device_name,
        r.source,
        r.identifier,
        r.topic,
        r.content_type,
        r.body,
        r.created_at,
    )


def claimed_row(r: Any) -> OutboxRow:
    v = tuple(r)
    return OutboxRow(
        id=v[0],
        target_id=v[1],
        node_id=v[2],
        device_id=v[3],
        message_id=v[4],
        product_key=v[5],
        device_name=v[6],
        source=v[7],
        identifier=v[8],
        topic=v[9],
        content_type=v[10],
        body=bytes(v[11]),
        created_at=v[12],
        tries=v[13],
        failures=v[14],
        first_failed_at=v[15],
        last_error=v[16],
    )


_MARK = re.compile(r"\?")


def numbered(sql: str) -> str:
    """`?` placeholders -> `$1, $2, ...` (asyncpg). The statements here have no `?` inside literals."""
    counter = iter(range(1, 10_000))
    return _MARK.sub(lambda _: f"${next(counter)}", sql)
