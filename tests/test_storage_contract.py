"""The storage contract: every `Storage` method behaves the same on SQLite and on PostgreSQL.

Each test runs against both backends (a fresh PostgreSQL database per module, see `pg_url`) and uses
its own product keys, so tests share the module's database without seeing each other's rows.
"""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from iotgate.auth.secretbox import SecretBox
from iotgate.ingest.ids import EPOCH_MS, NODE_BITS, SEQ_BITS
from iotgate.storage.base import Conflict, DeviceRow, ProductRow, Record, Storage
from iotgate.storage.migrations import MIGRATIONS
from iotgate.storage.postgres import PG_MIGRATIONS, PostgresStorage, month_start
from iotgate.storage.sqlite import SqliteStorage

BOX = SecretBox.from_text(SecretBox.new_key())
NOW = int(time.time() * 1000)
DAY = 24 * 3600 * 1000


@pytest.fixture(scope="module")
def sqlite_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("contract") / "iotgate.db"


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, sqlite_path: Path) -> AsyncIterator[Storage]:
    s: Storage
    if request.param == "sqlite":
        s = SqliteStorage(sqlite_path, "NORMAL", BOX)
    else:
        s = PostgresStorage(request.getfixturevalue("pg_url"), secret_box=BOX)
    await s.open()
    yield s
    await s.close()


async def raw(s: Storage, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Read the database behind the interface (to check what is stored, e.g. encryption at rest)."""
    if isinstance(s, SqliteStorage):
        with sqlite3.connect(s.path) as con:
            return [tuple(r) for r in con.execute(sql.replace("$1", "?").replace("$2", "?"), args).fetchall()]
    assert isinstance(s, PostgresStorage)
    return [tuple(r) for r in await s.pool.fetch(sql, *args)]


def msg_id(at_ms: int, seq: int = 0) -> int:
    """A message ID as the ingest path makes it at time at_ms."""
    return ((at_ms - EPOCH_MS) << (NODE_BITS + SEQ_BITS)) | seq


async def product(s: Storage, created_at: int = NOW, **kw: Any) -> str:
    pk = secrets.token_hex(5) + "x"
    row = ProductRow(
        product_key=pk,
        name=kw.get("name", "meter"),
        node_type=kw.get("node_type", "direct"),
        data_format="alink-json",
        auth_type="device-secret",
        created_at=created_at,
        updated_at=created_at,
    )
    await s.insert_product(row)
    return pk


async def devices(s: Storage, pk: str, *names: str, **kw: Any) -> list[DeviceRow]:
    rows = [
        DeviceRow(id=0, product_key=pk, device_name=n, secret=f"secret-{n}", created_at=NOW, updated_at=NOW, **kw)
        for n in names
    ]
    return await s.insert_devices(rows)


def prop(mid: int, device: int, ts: int, values: dict[str, Any], received: int = NOW) -> Record:
    return Record(message_id=mid, device_id=device, kind="property", ts=ts, received_at=received, values=values)


def raw_msg(mid: int, device: int, kind: str, received: int = NOW, **kw: Any) -> Record:
    return Record(message_id=mid, device_id=device, kind=kind, ts=kw.pop("ts", received), received_at=received, **kw)


_ids = iter(range(1, 1 << 40))


def next_id() -> int:
    return msg_id(NOW + 100_000) + next(_ids)  # clear of the IDs tests build with msg_id(NOW, n)


# -- lifecycle and meta -------------------------------------------------------------------------
async def test_open_is_idempotent_and_records_migrations(store: Storage) -> None:
    assert await store.ping()
    for name, _ in MIGRATIONS:
        assert await store.get_meta(f"migration:{name}") is not None
    assert await store.get_meta("no-such-key") is None
    key = "k-" + secrets.token_hex(4)
    assert await store.set_meta_if_absent(key, "first") == "first"
    assert await store.set_meta_if_absent(key, "second") == "first"
    assert await store.get_meta(key) == "first"


# -- products -------------------------------------------------------------------------------------
async def test_products_crud(store: Storage) -> None:
    pk = await product(store, name="alpha")
    row = await store.get_product(pk)
    assert row is not None and row.name == "alpha" and row.node_type == "direct" and row.rate_per_s is None
    with pytest.raises(Conflict):
        await store.insert_product(row)
    assert await store.get_product("missing-pk") is None

    updated = await store.update_product(pk, {"name": "beta", "rate_per_s": 2.5, "product_key": "hijack"})
    assert updated is not None and updated.name == "beta" and updated.rate_per_s == 2.5
    assert updated.product_key == pk and updated.updated_at >= row.updated_at
    assert await store.update_product("missing-pk", {"name": "x"}) is None

    await devices(store, pk, "dev-0001")
    with pytest.raises(Conflict):
        await store.delete_product(pk)
    empty = await product(store)
    await store.put_draft(empty, {"properties": []})
    assert await store.delete_product(empty) is True
    assert await store.get_product(empty) is None and await store.get_draft(empty) is None
    assert await store.delete_product(empty) is False


async def test_list_products_order_and_pages(store: Storage) -> None:
    base = 10**12 + secrets.randbelow(10**9) * 10  # an old creation time: these sort first, in order
    made = [await product(store, created_at=base + i) for i in range(5)]
    rows, total = await store.list_products(0, 3)
    assert [r.product_key for r in rows] == made[:3] and total >= 5
    rows, _ = await store.list_products(3, 2)
    assert [r.product_key for r in rows] == made[3:5]


# -- thing models ---------------------------------------------------------------------------------
async def test_drafts_and_versions(store: Storage) -> None:
    pk = await product(store)
    assert await store.get_draft(pk) is None
    await store.put_draft(pk, {"properties": [{"identifier": "a"}]})
    await store.put_draft(pk, {"properties": [{"identifier": "b"}], "name": "ü"})
    assert await store.get_draft(pk) == {"properties": [{"identifier": "b"}], "name": "ü"}

    assert await store.get_model_version(pk, None) is None
    assert await store.publish_model(pk, {"v": 1}, 1000) == 1
    assert await store.publish_model(pk, {"v": 2}, 2000) == 2
    newest = await store.get_model_version(pk, None)
    assert newest is not None and (newest.version, newest.document, newest.published_at) == (2, {"v": 2}, 2000)
    first = await store.get_model_version(pk, 1)
    assert first is not None and first.document == {"v": 1}
    assert await store.get_model_version(pk, 3) is None
    assert await store.list_model_versions(pk) == [(1, 1000), (2, 2000)]
    assert await store.list_model_versions("missing-pk") == []


async def test_concurrent_publish_gets_consecutive_versions(store: Storage) -> None:
    pk = await product(store)
    versions = await asyncio.gather(*(store.publish_model(pk, {"n": i}, i) for i in range(6)))
    assert sorted(versions) == [1, 2, 3, 4, 5, 6]


# -- devices --------------------------------------------------------------------------------------
async def test_insert_devices_assigns_ids_logs_events_and_encrypts(store: Storage) -> None:
    pk = await product(store)
    seq = await store.last_registry_seq()
    made = await devices(store, pk, "dev-a001", "dev-a002")
    assert len({d.id for d in made}) == 2 and all(d.id > 0 for d in made)
    got = await store.get_device(pk, "dev-a001")
    assert got is not None and got.id == made[0].id and got.secret == "secret-dev-a001"
    assert got.enabled is True and got.generation == 1 and got.gateway_id is None and got.token_epoch_ms == 0
    by_id = await store.get_device_by_id(made[1].id)
    assert by_id is not None and by_id.device_name == "dev-a002"
    assert await store.get_device(pk, "nope") is None and await store.get_device_by_id(10**12) is None

    stored = await raw(store, "SELECT secret FROM devices WHERE id=$1", made[0].id)
    assert stored[0][0].startswith("v1:") and "secret-dev-a001" not in stored[0][0]

    events = await store.registry_events_since(seq)
    assert [(e.device_id, e.change) for e in events] == [(made[0].id, "created"), (made[1].id, "created")]
    assert events[0].seq < events[1].seq and await store.last_registry_seq() == events[1].seq


async def test_insert_devices_is_all_or_nothing(store: Storage) -> None:
    pk = await product(store)
    await devices(store, pk, "dev-b001")
    seq = await store.last_registry_seq()
    with pytest.raises(Conflict):
        await devices(store, pk, "dev-b002", "dev-b001")
    with pytest.raises(Conflict):
        await devices(store, pk, "dev-b003", "dev-b003")
    assert await store.get_device(pk, "dev-b002") is None and await store.get_device(pk, "dev-b003") is None
    assert await store.count_devices(pk) == 1
    assert await store.registry_events_since(seq) == []


async def test_list_and_count_devices(store: Storage) -> None:
    pk = await product(store)
    other = await product(store)
    made = await devices(store, pk, "Alpha_1x", "alpha%2x", "beta-003", "gamma-04")
    await devices(store, other, "alpha-99")
    rows, total = await store.list_devices(pk, None, 0, 2)
    assert [r.device_name for r in rows] == ["Alpha_1x", "alpha%2x"] and total == 4
    rows, total = await store.list_devices(pk, None, 2, 10)
    assert [r.device_name for r in rows] == ["beta-003", "gamma-04"] and total == 4
    rows, total = await store.list_devices(pk, "ALPHA", 0, 10)  # case-insensitive on both backends
    assert {r.device_name for r in rows} == {"Alpha_1x", "alpha%2x"} and total == 2
    rows, _ = await store.list_devices(pk, "a%", 0, 10)  # % and _ are literal, not wildcards
    assert [r.device_name for r in rows] == ["alpha%2x"]
    rows, _ = await store.list_devices(pk, "_1", 0, 10)
    assert [r.device_name for r in rows] == ["Alpha_1x"]
    rows, total = await store.list_devices(None, "alpha", 0, 100)
    assert {r.device_name for r in rows} >= {"Alpha_1x", "alpha%2x", "alpha-99"}
    await store.update_device(made[3].id, {"nickname": "Kitchen"}, "updated")
    rows, _ = await store.list_devices(pk, "kitch", 0, 10)
    assert [r.device_name for r in rows] == ["gamma-04"]
    assert await store.count_devices(pk) == 4 and await store.count_devices(other) == 1
    assert await store.count_devices() >= 5


async def test_update_device_and_events(store: Storage) -> None:
    pk = await product(store)
    [dev] = await devices(store, pk, "dev-c001")
    seq = await store.last_registry_seq()
    row = await store.update_device(dev.id, {"enabled": False, "generation": 2, "bogus": 1}, "disabled")
    assert row is not None and row.enabled is False and row.generation == 2 and row.updated_at >= dev.updated_at
    row = await store.update_device(dev.id, {"secret": "new-secret", "token_epoch_ms": 1234}, "secret-reset")
    assert row is not None and row.secret == "new-secret" and row.token_epoch_ms == 1234
    stored = await raw(store, "SELECT secret FROM devices WHERE id=$1", dev.id)
    assert stored[0][0].startswith("v1:") and BOX.open(stored[0][0]) == "new-secret"
    assert await store.update_device(10**12, {"enabled": True}, "enabled") is None
    events = await store.registry_events_since(seq)
    assert [(e.device_id, e.change) for e in events] == [(dev.id, "disabled"), (dev.id, "secret-reset")]
    await store.log_registry_event(0, f"model:{pk}")
    [last] = await store.registry_events_since(events[-1].seq)
    assert (last.device_id, last.change) == (0, f"model:{pk}") and last.at > 0
    assert len(await store.registry_events_since(seq, limit=2)) == 2


async def test_gateway_topology(store: Storage) -> None:
    gw_pk = await product(store, node_type="gateway")
    pk = await product(store, node_type="sub-device")
    [gw] = await devices(store, gw_pk, "gw-00001")
    children = await devices(store, pk, "child-01", "child-02", "child-03")
    for child in children[:2]:
        await store.update_device(child.id, {"gateway_id": gw.id}, "updated")
    rows, total = await store.list_devices(None, None, 0, 10, gateway_id=gw.id)
    assert [r.device_name for r in rows] == ["child-01", "child-02"] and total == 2
    assert await store.delete_device(gw.id) is True
    child = await store.get_device_by_id(children[0].id)
    assert child is not None and child.gateway_id is None


async def test_maintain_prunes_old_registry_events_but_never_the_newest(store: Storage) -> None:
    pk = await product(store)
    seq = await store.last_registry_seq()
    month_ago = NOW - 30 * DAY
    rows = [
        DeviceRow(id=0, product_key=pk, device_name=f"old-{i:04d}", secret="s", created_at=month_ago, updated_at=0)
        for i in range(3)
    ]
    old = await store.insert_devices(rows)  # their "created" events carry the old creation time
    await store.log_registry_event(0, f"model:{pk}")
    newest = await store.last_registry_seq()
    await store.maintain(NOW)
    events = await store.registry_events_since(seq)
    assert [(e.device_id, e.change) for e in events] == [(0, f"model:{pk}")]
    assert await store.last_registry_seq() == newest
    for d in old:  # only the log is pruned
        assert await store.get_device_by_id(d.id) is not None
    # the newest event stays even when it is old: sequence numbers must never start over
    await store.insert_devices([DeviceRow(id=0, product_key=pk, device_name="old-last", secret="s", created_at=1)])
    last = await store.last_registry_seq()
    await store.maintain(NOW)
    assert await store.last_registry_seq() == last
    [new] = await devices(store, pk, "after-prune")
    events = await store.registry_events_since(last)
    assert [(e.device_id, e.change) for e in events] == [(new.id, "created")] and events[0].seq > last


# -- ingest and device data -------------------------------------------------------------------
async def test_write_batch_latest_history_messages_seen(store: Storage) -> None:
    pk = await product(store)
    a, b = await devices(store, pk, "dev-d001", "dev-d002")
    ids = [next_id() for _ in range(8)]
    await store.write_batch(
        [
            prop(ids[0], a.id, 1000, {"t": 20, "h": 50}, received=NOW),
            prop(ids[1], a.id, 3000, {"t": 22}, received=NOW + 1),
            prop(ids[2], a.id, 2000, {"t": 21, "s": "x"}, received=NOW + 2),  # older ts: not the latest t
            raw_msg(ids[3], a.id, "event", identifier="alarm", topic="/e", payload=b"\x00\xffbin"),
            raw_msg(ids[4], b.id, "rejected", received=NOW + 50, detail="temperature above max 50", payload=b"{}"),
        ]
    )
    latest = await store.latest_values(a.id)
    assert latest == {"t": (22, 3000), "h": (50, 1000), "s": ("x", 2000)}
    assert await store.latest_values(b.id) == {}
    # a later batch with an older report does not overwrite a newer value
    await store.write_batch([prop(ids[5], a.id, 2500, {"t": 99, "h": 51})])
    latest = await store.latest_values(a.id)
    assert latest["t"] == (22, 3000) and latest["h"] == (51, 2500)

    history = await store.property_history(a.id, "t", 0, 10**13, 100)
    assert history == [(3000, 22), (2500, 99), (2000, 21), (1000, 20)]
    assert await store.property_history(a.id, "s", 0, 10**13, 100) == [(2000, "x")]
    assert await store.property_history(a.id, "missing", 0, 10**13, 100) == []

    msgs = await store.device_messages(a.id, None, None, 10)
    assert len(msgs) == 1 and msgs[0].kind == "event" and msgs[0].payload == b"\x00\xffbin"
    assert (msgs[0].identifier, msgs[0].topic, msgs[0].message_id) == ("alarm", "/e", ids[3])
    [rejected] = await store.device_messages(b.id, ["rejected"], None, 10)
    assert rejected.detail == "temperature above max 50" and rejected.received_at == NOW + 50

    seen = await store.last_seen()
    assert seen[a.id] == NOW + 2  # the newest received_at of the device's accepted reports
    assert b.id not in seen  # rejected reports do not count as seen
    assert a.id in await store.last_seen(NOW + 1) and a.id not in await store.last_seen(NOW + 2)


async def test_write_batch_is_atomic(store: Storage) -> None:
    pk = await product(store)
    [a] = await devices(store, pk, "dev-e001")
    dup = next_id()  # the same report committed twice (PostgreSQL: unique per partition key, message_id + ts)
    await store.write_batch([prop(dup, a.id, 1000, {"t": 1})])
    with pytest.raises(Exception):  # noqa: B017 - each driver raises its own integrity error
        await store.write_batch(
            [
                prop(next_id(), a.id, 5000, {"t": 5}),
                raw_msg(next_id(), a.id, "message"),
                prop(dup, a.id, 1000, {"t": 6}),
            ]
        )
    assert await store.latest_values(a.id) == {"t": (1, 1000)}
    assert await store.property_history(a.id, "t", 0, 10**13, 10) == [(1000, 1)]
    assert await store.device_messages(a.id, None, None, 10) == []
    await store.write_batch([])  # an empty batch is fine


async def test_history_query_window_limit_and_ties(store: Storage) -> None:
    pk = await product(store)
    [a] = await devices(store, pk, "dev-f001")
    first, second = next_id(), next_id()
    records = [prop(next_id(), a.id, 1000 + i * 10, {"t": i}) for i in range(20)]
    records += [prop(second, a.id, 5000, {"t": 101}), prop(first, a.id, 5000, {"t": 100})]
    await store.write_batch(records)
    window = await store.property_history(a.id, "t", 1050, 1100, 100)  # both ends inclusive
    assert [ts for ts, _ in window] == [1100, 1090, 1080, 1070, 1060, 1050]
    assert await store.property_history(a.id, "t", 0, 10**13, 3) == [(5000, 101), (5000, 100), (1190, 19)]
    assert await store.property_history(a.id, "t", 6000, 7000, 10) == []


async def test_device_messages_filters_and_paging(store: Storage) -> None:
    pk = await product(store)
    [a] = await devices(store, pk, "dev-g001")
    kinds = ["message", "event", "rejected", "deviceinfo", "ota"] * 3
    ids = [next_id() for _ in kinds]
    await store.write_batch([raw_msg(i, a.id, k, payload=k.encode()) for i, k in zip(ids, kinds, strict=True)])
    page = await store.device_messages(a.id, None, None, 4)
    assert [m.message_id for m in page] == sorted(ids, reverse=True)[:4]
    more = await store.device_messages(a.id, None, page[-1].message_id, 100)
    assert [m.message_id for m in more] == sorted(ids, reverse=True)[4:]
    events = await store.device_messages(a.id, ["event", "ota"], None, 100)
    assert {m.kind for m in events} == {"event", "ota"} and len(events) == 6
    assert all(m.payload == m.kind.encode() for m in events)


async def test_delete_device_cascades(store: Storage) -> None:
    pk = await product(store)
    a, b = await devices(store, pk, "dev-h001", "dev-h002")
    await store.write_batch(
        [prop(next_id(), d.id, 1000, {"t": 1}) for d in (a, b)] + [raw_msg(next_id(), d.id, "event") for d in (a, b)]
    )
    seq = await store.last_registry_seq()
    assert await store.delete_device(a.id) is True
    assert await store.get_device_by_id(a.id) is None
    assert await store.latest_values(a.id) == {} and await store.property_history(a.id, "t", 0, 10**13, 10) == []
    assert await store.device_messages(a.id, None, None, 10) == [] and a.id not in await store.last_seen()
    assert await store.latest_values(b.id) == {"t": (1, 1000)} and b.id in await store.last_seen()
    assert [(e.device_id, e.change) for e in await store.registry_events_since(seq)] == [(a.id, "deleted")]
    assert await store.delete_device(a.id) is False


# -- retention --------------------------------------------------------------------------------
async def test_expire_removes_old_history_and_messages_in_bounded_steps(store: Storage) -> None:
    pk = await product(store)
    a, b = await devices(store, pk, "dev-i001", "dev-i002")
    old, fresh = NOW - 400 * DAY, NOW - DAY  # old: before every partition, into the default one
    records = [prop(next_id(), d.id, old + i, {"t": i}) for d in (a, b) for i in range(30)]
    records += [prop(next_id(), d.id, fresh, {"t": 7}) for d in (a, b)]
    records += [raw_msg(msg_id(old, i), a.id, "event", received=old) for i in range(25)]
    records += [raw_msg(msg_id(fresh, 1), a.id, "event", received=fresh)]
    await store.write_batch(records)

    cutoff = NOW - 30 * DAY
    steps, removed = 0, 0
    more = True
    while more:
        n, more = await store.expire_step(cutoff, 10)
        steps, removed = steps + 1, removed + n
        assert n <= 10 and steps < 100
    assert steps >= 8 and removed >= 85  # 60 history + 25 messages, at most ~10 per step
    for d in (a, b):
        assert await store.property_history(d.id, "t", 0, 10**13, 100) == [(fresh, 7)]
    assert [m.received_at for m in await store.device_messages(a.id, None, None, 100)] == [fresh]
    assert await store.latest_values(a.id) == {"t": (7, fresh)}  # running status is not history
    assert await store.expire_step(cutoff, 10) == (0, False)


async def test_expire_is_exact_not_per_partition(store: Storage) -> None:
    """Rows just past the cutoff go, rows just inside stay, even within one (PostgreSQL) month."""
    pk = await product(store)
    [a] = await devices(store, pk, "dev-i101")
    cutoff = NOW - 3600_000
    await store.write_batch(
        [
            prop(next_id(), a.id, cutoff - 60_000, {"t": 1}),
            prop(next_id(), a.id, cutoff + 60_000, {"t": 2}),
            raw_msg(msg_id(cutoff - 60_000, 7), a.id, "message", received=cutoff - 60_000),
            raw_msg(msg_id(cutoff + 60_000, 7), a.id, "message", received=cutoff + 60_000),
        ]
    )
    more = True
    for _ in range(100):
        if not more:
            break
        _, more = await store.expire_step(cutoff, 1000)
    assert await store.property_history(a.id, "t", 0, 10**13, 10) == [(cutoff + 60_000, 2)]
    assert [m.received_at for m in await store.device_messages(a.id, None, None, 10)] == [cutoff + 60_000]


# -- PostgreSQL specifics -----------------------------------------------------------------------
@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresStorage]:
    s = PostgresStorage(pg_url, secret_box=BOX)
    await s.open()
    yield s
    await s.close()


def _suffix(ms: int) -> str:
    return time.strftime("%Y%m", time.gmtime(ms / 1000))


async def test_pg_partitions_created_ahead_and_dropped_by_retention(pg: PostgresStorage) -> None:
    assert pg.layout == "partitioned"
    for table in ("history", "messages"):
        names = await pg.partitions(table)
        assert f"{table}_default" in names and f"{table}_p{_suffix(NOW)}" in names
        assert f"{table}_p{_suffix(NOW + 45 * DAY)}" in names  # created ahead

    pk = await product(pg)
    [a] = await devices(pg, pk, "dev-j001")
    past = NOW - 200 * DAY  # a month with no partition yet: its rows go to the default partition
    await pg.write_batch([prop(msg_id(past, 1), a.id, past, {"t": 1})])
    await pg.maintain(past)  # creating that month's partition moves its rows out of the default one
    month = f"history_p{_suffix(past)}"
    assert month in await pg.partitions("history")
    assert await raw(pg, f"SELECT count(*) FROM {month}") == [(1,)]
    assert await raw(pg, "SELECT count(*) FROM history_default WHERE device_id=$1", a.id) == [(0,)]

    # retention drops whole months older than the cutoff, and never the current one
    n, more = await pg.expire_step(NOW - 30 * DAY, 1000)
    assert n >= 1 and more
    while more:
        _, more = await pg.expire_step(NOW - 30 * DAY, 1000)
    assert month not in await pg.partitions("history")
    assert f"history_p{_suffix(NOW)}" in await pg.partitions("history")
    assert await pg.property_history(a.id, "t", 0, 10**13, 10) == []


async def test_pg_nodes_starting_together_migrate_once(pg_url: str) -> None:
    nodes = [PostgresStorage(pg_url, secret_box=BOX) for _ in range(3)]
    await asyncio.gather(*(n.open() for n in nodes))
    try:
        rows = await raw(nodes[0], "SELECT count(*) FROM meta WHERE key LIKE 'migration:%'")
        assert rows == [(len(MIGRATIONS) + len(PG_MIGRATIONS),)]
    finally:
        await asyncio.gather(*(n.close() for n in nodes))


async def test_pg_registry_poller_never_skips_a_late_commit(pg_url: str) -> None:
    """Writers on several connections: a poller following `seq > last` must see every event."""
    writers = [PostgresStorage(pg_url, max_pool=4) for _ in range(2)]
    reader = PostgresStorage(pg_url)
    for s in (*writers, reader):
        await s.open()
    start = await reader.last_registry_seq()
    seen: list[int] = []
    done = asyncio.Event()

    async def poll() -> None:
        cursor = start
        while True:
            finished = done.is_set()
            for event in await reader.registry_events_since(cursor):
                cursor = event.seq
                seen.append(event.seq)
            if finished:
                return
            await asyncio.sleep(0)

    async def write(s: PostgresStorage, n: int) -> None:
        for i in range(n):
            await s.log_registry_event(i, "updated")

    poller = asyncio.create_task(poll())
    try:
        await asyncio.gather(*(write(w, 60) for w in writers for _ in range(4)))
        done.set()
        await asyncio.wait_for(poller, 30)
        committed = [r[0] for r in await raw(reader, "SELECT seq FROM registry_events WHERE seq > $1", start)]
        assert sorted(seen) == sorted(committed) and len(seen) == 480
    finally:
        for s in (*writers, reader):
            await s.close()


async def test_pg_concurrent_batches_on_the_same_devices(pg_url: str) -> None:
    """Two writers (nodes) upserting the same latest rows in opposite orders neither deadlock nor lose."""
    nodes = [PostgresStorage(pg_url) for _ in range(2)]
    for n in nodes:
        await n.open()
    try:
        pk = await product(nodes[0])
        devs = await devices(nodes[0], pk, *[f"dev-k{i:03d}" for i in range(20)])

        def batch(node: int, round_: int) -> list[Record]:
            order = devs if node == 0 else list(reversed(devs))
            return [
                prop(msg_id(NOW, 2000 + node * 1000 + round_ * 40 + i), d.id, 10_000 + round_, {"t": round_, "h": node})
                for i, d in enumerate(order)
            ]

        await asyncio.gather(*(nodes[n].write_batch(batch(n, r)) for r in range(10) for n in (0, 1)))
        for d in devs:
            latest = await nodes[1].latest_values(d.id)
            assert latest["t"] == (9, 10_009)
            assert len(await nodes[1].property_history(d.id, "t", 0, 10**13, 100)) == 20
    finally:
        for n in nodes:
            await n.close()


def test_month_start_rolls_over_years() -> None:
    assert month_start(2026, 13) == month_start(2027, 1)
    assert month_start(2026, 12) < month_start(2026, 13)
    assert time.strftime("%Y-%m-%d", time.gmtime(month_start(2024, 3) / 1000)) == "2024-03-01"
