"""The forwarding tables on both backends: rules and targets, the outbox written with a batch,
claim/settle cycles, dead letters, replay, and counters that always add up."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from iotgate.errors import Conflict
from iotgate.forward.rows import (
    ForwardRuleRow,
    ForwardTargetRow,
    OutboxBatch,
    OutboxRow,
    Settlement,
    TargetCount,
    TargetStats,
)
from iotgate.storage.base import Record, Storage
from iotgate.storage.postgres import PostgresStorage
from iotgate.storage.sqlite import SqliteStorage

NOW = int(time.time() * 1000)
_names = iter(range(10**6))


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("forward-storage") / "iotgate.db"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, sqlite_path: Path) -> AsyncIterator[Storage]:
    s: Storage
    if request.param == "sqlite":
        s = SqliteStorage(sqlite_path, "NORMAL")
    else:
        s = PostgresStorage(request.getfixturevalue("pg_url"))
    await s.open()
    yield s
    await s.close()


def rule(n_targets: int = 1, **kw: object) -> ForwardRuleRow:
    return ForwardRuleRow(
        name=f"rule-{next(_names)}",
        source=str(kw.get("source", "property")),
        where=str(kw.get("where", "")),
        targets=[
            ForwardTargetRow(spec={"type": "webhook", "url": f"http://127.0.0.1:9/{i}"}) for i in range(n_targets)
        ],
    )


def row(target: int, device: int, message: int, node: int = 0) -> OutboxRow:
    return OutboxRow(
        target_id=target,
        node_id=node,
        device_id=device,
        message_id=message,
        product_key="pk",
        device_name=f"d{device}",
        source="property",
        identifier="property",
        topic="/t",
        content_type="application/json",
        body=b'{"m":%d}' % message,
        created_at=NOW,
    )


def adds_up(s: TargetStats) -> bool:
    return s.matched == s.delivered + s.dead + s.outbox + s.filtered


async def stats_of(store: Storage, target: int) -> TargetStats:
    return next(s for s in await store.forward_stats() if s.target_id == target)


async def test_rules_are_saved_updated_and_deleted(store: Storage) -> None:
    saved = await store.forward_save_rule(rule(2, where="temperature > 1"))
    assert saved is not None and saved.id > 0 and saved.created_at > 0
    a, b = saved.targets
    assert a.id and b.id and a.id != b.id and (a.position, b.position) == (0, 1)
    rev = await store.get_meta("forward:rev")
    loaded = next(r for r in await store.forward_rules() if r.id == saved.id)
    assert loaded.where == "temperature > 1" and [t.spec for t in loaded.targets] == [a.spec, b.spec]

    with pytest.raises(Conflict):
        await store.forward_save_rule(ForwardRuleRow(name=saved.name, source="event"))

    # keep target a with new options, drop b, add c
    await store.write_batch([], OutboxBatch(rows=[row(b.id, 1, 1)], counts=[TargetCount(b.id, 1, 0)]))
    new_spec = {"type": "webhook", "url": "http://127.0.0.1:9/changed"}
    changed = await store.forward_save_rule(
        ForwardRuleRow(
            id=saved.id,
            name=saved.name,
            source="event",
            enabled=False,
            created_at=saved.created_at,
            targets=[ForwardTargetRow(id=a.id, spec=new_spec), ForwardTargetRow(spec={"type": "webhook", "url": "x"})],
        )
    )
    assert changed is not None and changed.targets[0].id == a.id and changed.targets[1].id not in (a.id, b.id)
    assert await store.get_meta("forward:rev") != rev
    loaded = next(r for r in await store.forward_rules() if r.id == saved.id)
    assert (loaded.source, loaded.enabled, loaded.targets[0].spec) == ("event", False, new_spec)
    assert b.id not in {s.target_id for s in await store.forward_stats()}
    assert await store.forward_queue_sizes(0) == {} or b.id not in await store.forward_queue_sizes(0)

    missing = ForwardRuleRow(id=10**9, name="nope", source="event")
    assert await store.forward_save_rule(missing) is None
    assert await store.forward_delete_rule(saved.id) is True
    assert await store.forward_delete_rule(saved.id) is False
    assert saved.id not in {r.id for r in await store.forward_rules()}


async def test_outbox_commits_with_its_batch_and_counters_add_up(store: Storage) -> None:
    saved = await store.forward_save_rule(rule(1))
    assert saved is not None
    tid = saved.targets[0].id
    record = Record(message_id=NOW << 22, device_id=1, kind="property", ts=NOW, received_at=NOW, values={"t": 1})
    batch = OutboxBatch(rows=[row(tid, 1, 1), row(tid, 2, 2), row(tid, 1, 3)], counts=[TargetCount(tid, 5, 2)])
    await store.write_batch([record], batch)
    s = await stats_of(store, tid)
    assert (s.matched, s.filtered, s.outbox) == (5, 2, 3) and adds_up(s)

    claimed = await store.forward_cycle(tid, 0, None, 2)
    assert [r.message_id for r in claimed] == [1, 2]  # oldest first
    assert all(r.tries == 0 and r.failures == 0 and r.id for r in claimed)
    # a claim writes no row, only the target's claim mark (what a crash may have sent)
    assert (await store.forward_claim_marks(0))[tid] == claimed[-1].id
    assert (await stats_of(store, tid)).outbox == 3
    assert await store.forward_cycle(tid, 1, None, 10) == []  # another node's rows are not ours

    # message 1 delivered, message 2 failed (known): its row waits again with the error
    first, second = claimed
    settle = Settlement(now=NOW, delivered=[first.id], failed=[(second.id, 1, "HTTP 500")], error="HTTP 500")
    rest = await store.forward_cycle(tid, 0, settle, 10)
    assert [r.message_id for r in rest] == [2, 3]
    assert rest[0].failures == 1 and rest[0].first_failed_at == NOW and rest[0].last_error == "HTTP 500"
    assert rest[0].tries == 1 and not rest[0].maybe_delivered_before
    s = await stats_of(store, tid)
    assert (s.delivered, s.retries, s.outbox, s.last_error, s.last_delivered_at) == (1, 1, 2, "HTTP 500", NOW)
    assert adds_up(s)

    # 2 times out (unknown outcome), 3 is skipped (device order): only 2's try stays counted
    settle = Settlement(now=NOW + 1, failed=[(rest[0].id, 0, "timeout")], error="timeout")
    again = await store.forward_cycle(tid, 0, settle, 10)
    assert [(r.message_id, r.tries, r.failures) for r in again] == [(2, 2, 1), (3, 0, 0)]
    assert again[0].maybe_delivered_before and not again[1].maybe_delivered_before

    # 2 arrives (a possible duplicate), 3 goes to the dead letters
    settle = Settlement(now=NOW + 2, delivered=[again[0].id], redelivered=1, failed=[(again[1].id, 1, "400")])
    settle.dead.append(again[1].id)
    assert await store.forward_cycle(tid, 0, settle, 10) == []
    s = await stats_of(store, tid)
    assert (s.delivered, s.redelivered, s.dead, s.outbox) == (2, 1, 1, 0) and adds_up(s)
    [dead] = await store.forward_dead_letters([tid], 0, 10)
    assert (dead.message_id, dead.tries, dead.failures, dead.last_error, dead.body) == (3, 1, 1, "400", b'{"m":3}')

    assert await store.forward_replay([tid], None, 0, NOW + 3) == 1
    s = await stats_of(store, tid)
    assert (s.dead, s.outbox, s.replayed) == (0, 1, 1) and adds_up(s)
    [back] = await store.forward_cycle(tid, 0, None, 10)
    assert (back.message_id, back.tries, back.failures, back.created_at) == (3, 0, 0, NOW + 3)
    await store.forward_cycle(tid, 0, Settlement(now=NOW + 4, delivered=[back.id]), 0)
    s = await stats_of(store, tid)
    assert (s.delivered, s.matched - s.filtered) == (3, 3) and adds_up(s)


async def test_release_expire_replay_selected_and_orphans(store: Storage) -> None:
    saved = await store.forward_save_rule(rule(2))
    assert saved is not None
    t1, t2 = (t.id for t in saved.targets)
    old = [row(t1, 1, 10), row(t1, 2, 11)]
    for r in old:
        r.created_at = NOW - 60_000
    await store.forward_enqueue(
        OutboxBatch(rows=[*old, row(t1, 1, 12), row(t2, 1, 10)], counts=[TargetCount(t1, 3, 0), TargetCount(t2, 1, 0)])
    )
    claimed = await store.forward_cycle(t1, 0, None, 1)
    assert [r.message_id for r in claimed] == [10]
    # a restart: the claimed row was never marked, only the claim mark tells it may have been sent
    assert await store.forward_release(0) == 0
    marks = await store.forward_claim_marks(0)
    assert marks[t1] == claimed[0].id and t2 not in marks and t1 not in await store.forward_claim_marks(5)
    assert await store.forward_pending(t1, 0) and await store.forward_pending(t2, 0)
    assert not await store.forward_pending(t1, 5)

    assert await store.forward_expire(t1, 0, NOW - 30_000, NOW) == 2  # the two old ones
    s = await stats_of(store, t1)
    assert (s.dead, s.outbox) == (2, 1) and adds_up(s)
    dead = await store.forward_dead_letters([t1], 0, 10)
    assert [d.message_id for d in dead] == [10, 11]
    assert dead[0].tries == 0  # expired without a known attempt (the crashed one is in the claim mark)
    assert [d.message_id for d in await store.forward_dead_letters([t1], dead[0].id, 10)] == [11]
    assert await store.forward_replay([t1], [dead[1].id], 0, NOW) == 1
    assert [d.message_id for d in await store.forward_dead_letters([t1], 0, 10)] == [10]
    assert await store.forward_replay([t2], [dead[0].id], 0, NOW) == 0  # not t2's
    assert await store.forward_replay([t1], [], 0, NOW) == 0

    sizes = await store.forward_queue_sizes(0)
    assert sizes[t1] == 2 and sizes[t2] == 1
    # a batch built just before its rule was deleted leaves rows behind: the sweep removes them
    assert await store.forward_delete_rule(saved.id)
    await store.forward_enqueue(OutboxBatch(rows=[row(t1, 1, 99)], counts=[TargetCount(t1, 1, 0)]))
    assert await store.forward_purge_orphans() >= 1
    assert t1 not in await store.forward_queue_sizes(0)
    assert t1 not in await store.forward_claim_marks(0)  # deleted with its target


async def test_unsure_rows_wait_again_and_count_as_possible_duplicates(store: Storage) -> None:
    """A pipelining sink sent rows behind one that failed: they are released for the next round
    (after the failed one, in order) with their try kept, so their next delivery is `redelivered`."""
    saved = await store.forward_save_rule(rule(1))
    assert saved is not None
    tid = saved.targets[0].id
    batch = OutboxBatch(rows=[row(tid, 1, m) for m in (1, 2, 3, 4)], counts=[TargetCount(tid, 4, 0)])
    await store.forward_enqueue(batch)
    first = await store.forward_cycle(tid, 0, None, 10)
    settle = Settlement(
        now=NOW,
        delivered=[first[0].id],
        failed=[(first[1].id, 0, "no PUBACK")],
        unsure=[first[2].id],
        error="no PUBACK",
    )
    again = await store.forward_cycle(tid, 0, settle, 10)
    assert [(r.message_id, r.tries, r.failures) for r in again] == [(2, 1, 0), (3, 1, 0), (4, 0, 0)]
    assert [r.maybe_delivered_before for r in again] == [True, True, False]
    s = await stats_of(store, tid)
    assert (s.delivered, s.retries, s.outbox) == (1, 1, 3) and adds_up(s)
