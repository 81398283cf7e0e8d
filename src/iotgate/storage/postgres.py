"""PostgreSQL backend (asyncpg): several processes and hosts share one database.

Behaves like `sqlite.py` method for method. What differs, and why:

* **Migrations** are the shared named ones (`migrations.py`, rendered for Postgres), applied under a
  session advisory lock so nodes starting together do not race; each is recorded in `meta` as
  `migration:<name>`.
* **Group commit** (`write_batch`): one transaction per batch; history and messages go in by binary
  COPY (a deadlock is retried, the batch is all or nothing). The running status (latest values,
  device_seen) is kept per process and written once a second, with crash replay across processes
  and nodes (`pg_running_status.py`); `running_status_flush_s=0` upserts it in every commit instead.
* **Time partitions**: `history` is range-partitioned on `ts` (event time) and `messages` on
  `received_at`, one partition per UTC month, created ahead by `maintain()`; rows outside every
  partition (old backfills) land in a `*_default` partition. Retention drops whole months, then
  trims the month that straddles the cutoff (and the default partition) in small batches found
  through a BRIN index on the time column. When the TimescaleDB extension can be created, both
  tables become hypertables instead and retention uses `drop_chunks` (chunk granularity).
* **Registry change log**: a transaction that writes a `registry_events` row takes a transaction
  advisory lock first, so sequence numbers become visible in commit order and a node polling
  `seq > last` can never skip an event that commits late.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import msgspec

from iotgate.auth.secretbox import SecretBox
from iotgate.clock import now_ms
from iotgate.forward.rows import OutboxBatch
from iotgate.forward.store_postgres import ForwardPostgres, write_outbox
from iotgate.storage.base import (
    AUDIT_COLS,
    DEVICE_COLS,
    DEVICE_FIELDS,
    MESSAGE_COLS,
    MODEL_VERSION_COLS,
    PRODUCT_COLS,
    PRODUCT_FIELDS,
    REGISTRY_EVENT_COLS,
    REGISTRY_EVENTS_KEEP_MS,
    REGISTRY_PRUNE_ROWS,
    AuditEntry,
    Conflict,
    DeviceRow,
    ModelVersionRow,
    ProductRow,
    Record,
    RegistryEvent,
    Storage,
)
from iotgate.storage.migrations import MIGRATIONS, render
from iotgate.storage.pg_running_status import StatusWriter, replay_gone_writers, write_folded
from iotgate.storage.running_status import overlay_latest, overlay_seen
from iotgate.storage.sqlite import history_and_messages

log = logging.getLogger("iotgate.storage")
T = TypeVar("T")
_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode

# advisory lock keys (64-bit, arbitrary but fixed): "iotgate" + purpose
LOCK_MIGRATE = 0x696F_7467_6174_6501
LOCK_MAINTAIN = 0x696F_7467_6174_6502
LOCK_REGISTRY = 0x696F_7467_6174_6503
LOCK_NODE_CLASS = 0x696F_7467  # with the node ID as second key: pg_try_advisory_lock(int, int)
NODE_CLAIM_WAIT_S = 3.0  # a killed predecessor's session takes a moment to end
# server-side keepalive on the node-claim session: a vanished host frees its node ID in ~25 s
KEEPALIVE = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}

# partitioned tables: table -> (partition column, primary key, secondary index)
PARTITIONED: dict[str, tuple[str, str, str]] = {
    "history": ("ts", "message_id, ts", "CREATE INDEX history_device_ts ON history (device_id, ts)"),
    "messages": (
        "received_at",
        "message_id, received_at",
        "CREATE INDEX messages_device ON messages (device_id, message_id)",
    ),
}
PARTITION_RE = re.compile(r"^(history|messages)_p(\d{4})(\d{2})$")
MONTHS_AHEAD = 2
HYPERTABLE_CHUNK_MS = 7 * 24 * 3600 * 1000
RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
# applied after the shared MIGRATIONS (storage/migrations.py): tables only this backend has
PG_MIGRATIONS: list[tuple[str, list[str]]] = [
    (
        "0005-pg-running-status-writers",  # pg_running_status.py: each committing process's replay mark
        ["CREATE TABLE running_status_writers (writer BIGINT PRIMARY KEY, covered_from BIGINT NOT NULL)"],
    ),
]


def month_start(year: int, month: int) -> int:
    """The first millisecond of a UTC month (month may overflow past 12)."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() * 1000)


def _placeholders(start: int, count: int) -> str:
    return ", ".join(f"${i}" for i in range(start, start + count))


class PostgresStorage(ForwardPostgres, Storage):
    def __init__(
        self,
        dsn: str,
        secret_box: SecretBox | None = None,
        min_pool: int = 2,
        max_pool: int = 10,
        command_timeout: float = 60.0,
        running_status_flush_s: float = 1.0,
    ) -> None:
        self.dsn = dsn
        self.box = secret_box
        self.min_pool = min_pool
        self.max_pool = max_pool
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._node_con: asyncpg.Connection | None = None
        self.layout = "partitioned"  # or "timescaledb"
        self.running_status_flush_s = running_status_flush_s
        self._status: StatusWriter | None = None  # None: running status upserted in every commit

    # -- plumbing -------------------------------------------------------------------------
    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("storage is not open")
        return self._pool

    async def _tx(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run fn in one transaction; retry (all of it) when Postgres chose it as a deadlock victim."""
        for attempt in range(4):
            try:
                async with self.pool.acquire() as con, con.transaction():
                    return await fn(con)
            except RETRYABLE:
                if attempt == 3:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    async def _log_event(con: asyncpg.Connection, device_ids: list[int], change: str, at: int) -> None:
        # Serialise the writers of registry_events until commit: seq order == commit order.
        await con.execute("SELECT pg_advisory_xact_lock($1)", LOCK_REGISTRY)
        await con.execute(
            "INSERT INTO registry_events(device_id, change, at) SELECT d, $2, $3 FROM unnest($1::bigint[]) AS d",
            device_ids,
            change,
            at,
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn,
            min_size=self.min_pool,
            max_size=self.max_pool,
            command_timeout=self.command_timeout,
        )
        async with self.pool.acquire() as con:
            await con.execute("SELECT pg_advisory_lock($1)", LOCK_MIGRATE)
            try:
                await self._migrate(con)
            finally:
                await con.execute("SELECT pg_advisory_unlock($1)", LOCK_MIGRATE)
        await self.maintain(now_ms())
        await replay_gone_writers(self.pool)  # e.g. this node's own previous process, killed
        if self.running_status_flush_s > 0:
            self._status = StatusWriter(self.pool, self.dsn, self.running_status_flush_s, KEEPALIVE)

    async def _migrate(self, con: asyncpg.Connection) -> None:
        await con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        done = {r[0] for r in await con.fetch("SELECT key FROM meta WHERE key LIKE 'migration:%'")}
        for name, statements in [*MIGRATIONS, *PG_MIGRATIONS]:
            if f"migration:{name}" in done:
                continue
            async with con.transaction():
                for stmt in statements:
                    await con.execute(render(stmt, "postgres"))
                if name == "0001-core":  # the tables were just created, empty: give them their time layout
                    await self._time_layout(con)
                await con.execute("INSERT INTO meta(key, value) VALUES($1, $2)", f"migration:{name}", str(now_ms()))
            log.info("applied migration %s", name)
        self.layout = await con.fetchval("SELECT value FROM meta WHERE key='pg:layout'") or "partitioned"

    async def _time_layout(self, con: asyncpg.Connection) -> None:
        """Turn the freshly created, empty history and messages tables into time-partitioned ones."""
        layout = "partitioned"
        if await con.fetchval("SELECT 1 FROM pg_available_extensions WHERE name='timescaledb'"):
            try:
                async with con.transaction():  # a savepoint: the extension may exist but not be preloaded
                    await con.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
                    for table, (column, pkey, _) in PARTITIONED.items():
                        await con.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
                        await con.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({pkey})")
                        await con.execute(
                            f"SELECT create_hypertable('{table}', '{column}', "
                            f"chunk_time_interval => {HYPERTABLE_CHUNK_MS}::bigint)"
                        )
                layout = "timescaledb"
            except asyncpg.PostgresError as exc:
                log.info("TimescaleDB is installed but not usable (%s); using native partitions", exc)
        if layout == "partitioned":
            for table, (column, pkey, index) in PARTITIONED.items():
                await con.execute(
                    f"CREATE TABLE {table}_new (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS) "
                    f"PARTITION BY RANGE ({column})"
                )
                await con.execute(f"DROP TABLE {table}")
                await con.execute(f"ALTER TABLE {table}_new RENAME TO {table}")
                await con.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({pkey})")
                await con.execute(index)
                # BRIN on time: a few pages per partition, nearly free on time-ordered inserts; lets
                # retention find the old rows of the month it trims without reading the whole month
                await con.execute(f"CREATE INDEX {table}_{column}_brin ON {table} USING brin ({column})")
                await con.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        await con.execute("INSERT INTO meta(key, value) VALUES('pg:layout', $1)", layout)
        self.layout = layout

    async def claim_node_id(self, node_id: int) -> bool:
        """Hold a session advisory lock on the node ID for as long as this process (its connection)
        lives; PostgreSQL releases it when the process dies, however it dies."""
        con = await asyncpg.connect(self.dsn, server_settings=KEEPALIVE)
        deadline = time.monotonic() + NODE_CLAIM_WAIT_S
        while not await con.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_NODE_CLASS, node_id):
            if time.monotonic() > deadline:
                await con.close()
                return False
            log.warning("node ID %d is held by another database session; waiting for it to end", node_id)
            await asyncio.sleep(0.5)
        self._node_con = con
        return True

    async def close(self) -> None:
        if self._status is not None:
            await self._status.close()
            self._status = None
        if self._node_con is not None:
            await self._node_con.close()
            self._node_con = None
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), 10)
            except TimeoutError:
                self._pool.terminate()
            self._pool = None

    async def ping(self) -> bool:
        try:
            return bool(await self.pool.fetchval("SELECT 1", timeout=5) == 1)
        except (asyncpg.PostgresError, OSError, TimeoutError, RuntimeError):
            return False

    # -- maintenance: partitions ahead, retention -----------------------------------------
    async def maintain(self, now: int) -> None:
        """Prune the registry change log (see Storage.maintain); create the monthly partitions from
        now's month to MONTHS_AHEAD months ahead."""
        await self.pool.execute(
            "DELETE FROM registry_events WHERE seq IN (SELECT seq FROM registry_events WHERE at < $1 "
            "AND seq < (SELECT MAX(seq) FROM registry_events) ORDER BY seq LIMIT $2)",
            now - REGISTRY_EVENTS_KEEP_MS,
            REGISTRY_PRUNE_ROWS,
        )
        if self.layout != "partitioned":
            return
        day = dt.datetime.fromtimestamp(now / 1000, dt.UTC)
        for ahead in range(MONTHS_AHEAD + 1):
            lo = month_start(day.year, day.month + ahead)
            hi = month_start(day.year, day.month + ahead + 1)
            suffix = dt.datetime.fromtimestamp(lo / 1000, dt.UTC).strftime("%Y%m")
            for table, (column, _, _) in PARTITIONED.items():
                await self._ensure_partition(table, column, f"{table}_p{suffix}", lo, hi)

    async def _ensure_partition(self, table: str, column: str, name: str, lo: int, hi: int) -> None:
        if await self.pool.fetchval("SELECT to_regclass($1)", name):
            return

        async def run(con: asyncpg.Connection) -> None:
            await con.execute("SELECT pg_advisory_xact_lock($1)", LOCK_MAINTAIN)
            await con.execute("SET LOCAL lock_timeout = '5s'")
            if await con.fetchval("SELECT to_regclass($1)", name):
                return
            stray = await con.fetchval(
                f"SELECT 1 FROM {table}_default WHERE {column} >= $1 AND {column} < $2 LIMIT 1", lo, hi
            )
            if not stray:
                await con.execute(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({lo}) TO ({hi})")
                return
            # rows for this month already sit in the default partition: move them into the new one
            await con.execute(f"ALTER TABLE {table} DETACH PARTITION {table}_default")
            await con.execute(f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM ({lo}) TO ({hi})")
            await con.execute(
                f"WITH moved AS (DELETE FROM {table}_default WHERE {column} >= $1 AND {column} < $2 RETURNING *) "
                f"INSERT INTO {table} SELECT * FROM moved",
                lo,
                hi,
            )
            await con.execute(f"ALTER TABLE {table} ATTACH PARTITION {table}_default DEFAULT")

        try:
            await self._tx(run)
            log.info("created partition %s", name)
        except asyncpg.exceptions.DuplicateTableError:
            pass  # another node created it a moment ago
        except asyncpg.exceptions.LockNotAvailableError:
            log.warning("partition %s not created: table busy; retrying at the next maintenance run", name)

    async def partitions(self, table: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = $1::regclass ORDER BY c.relname",
            table,
        )
        return [r[0] for r in rows]

    async def expire_step(self, cutoff_ms: int, max_rows: int) -> tuple[int, bool]:
        """One bounded step of retention; returns (rows or partitions removed, more to do)."""
        if self.layout == "timescaledb":
            dropped = 0
            for table in PARTITIONED:
                dropped += len(
                    await self.pool.fetch(
                        "SELECT drop_chunks($1::regclass, older_than => $2::bigint)", table, cutoff_ms
                    )
                )
            return dropped, False
        trim: list[tuple[str, str]] = []  # (partition, time column) holding rows on both sides of the cutoff
        for table, (column, _, _) in PARTITIONED.items():
            for name in await self.partitions(table):
                m = PARTITION_RE.match(name)
                if m is None:
                    trim.append((name, column))  # the default partition: stray old (or odd) rows
                elif month_start(int(m[2]), int(m[3]) + 1) <= cutoff_ms:  # a whole month: drop it
                    if await self._drop_partition(table, name):
                        return 1, True
                elif month_start(int(m[2]), int(m[3])) < cutoff_ms:
                    trim.append((name, column))
        deleted = 0  # then the old rows of partitions that straddle the cutoff, a few at a time
        for name, column in trim:
            status = await self.pool.execute(
                f"DELETE FROM {name} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {name} WHERE {column} < $1 LIMIT $2))",
                cutoff_ms,
                max_rows - deleted,
            )
            deleted += int(status.split()[-1])
            if deleted >= max_rows:
                return deleted, True
        return deleted, False

    async def _drop_partition(self, table: str, name: str) -> bool:
        async def run(con: asyncpg.Connection) -> None:
            await con.execute("SET LOCAL lock_timeout = '2s'")  # never queue ingest behind a long wait
            await con.execute(f"ALTER TABLE {table} DETACH PARTITION {name}")
            await con.execute(f"DROP TABLE {name}")

        try:
            await self._tx(run)
        except asyncpg.exceptions.LockNotAvailableError:
            log.warning("retention: %s is busy; will retry at the next run", name)
            return False
        log.info("retention: dropped partition %s", name)
        return True

    # -- audit ----------------------------------------------------------------------------
    async def write_audit(self, entry: AuditEntry) -> None:
        await self.pool.execute(
            "INSERT INTO admin_audit(at, actor, method, path, target, status, client) VALUES($1,$2,$3,$4,$5,$6,$7)",
            entry.at,
            entry.actor,
            entry.method,
            entry.path,
            entry.target,
            entry.status,
            entry.client,
        )

    async def list_audit(self, before_id: int | None, limit: int) -> list[AuditEntry]:
        rows = await self.pool.fetch(
            f"SELECT {AUDIT_COLS} FROM admin_audit WHERE id < $1 ORDER BY id DESC LIMIT $2",
            before_id if before_id is not None else 2**63 - 1,
            limit,
        )
        return [AuditEntry.from_row(r) for r in rows]

    # -- meta -----------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        value = await self.pool.fetchval("SELECT value FROM meta WHERE key=$1", key)
        return None if value is None else str(value)

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        async def run(con: asyncpg.Connection) -> str:
            await con.execute("INSERT INTO meta(key, value) VALUES($1, $2) ON CONFLICT (key) DO NOTHING", key, value)
            return str(await con.fetchval("SELECT value FROM meta WHERE key=$1", key))

        return await self._tx(run)

    # -- products -------------------------------------------------------------------------
    async def insert_product(self, row: ProductRow) -> None:
        try:
            await self.pool.execute(
                f"INSERT INTO products({PRODUCT_COLS}) VALUES({_placeholders(1, 9)})",
                row.product_key,
                row.name,
                row.node_type,
                row.data_format,
                row.auth_type,
                row.description,
                row.rate_per_s,
                row.created_at,
                row.updated_at,
            )
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise Conflict(f"product {row.product_key} exists") from exc

    async def get_product(self, product_key: str) -> ProductRow | None:
        r = await self.pool.fetchrow(f"SELECT {PRODUCT_COLS} FROM products WHERE product_key=$1", product_key)
        return ProductRow.from_row(r) if r else None

    async def list_products(self, offset: int, limit: int) -> tuple[list[ProductRow], int]:
        async with self.pool.acquire() as con:
            rows = await con.fetch(
                f"SELECT {PRODUCT_COLS} FROM products ORDER BY created_at, product_key LIMIT $1 OFFSET $2",
                limit,
                offset,
            )
            total = await con.fetchval("SELECT COUNT(*) FROM products")
        return [ProductRow.from_row(r) for r in rows], int(total)

    async def update_product(self, product_key: str, fields: dict[str, Any]) -> ProductRow | None:
        cols = {k: v for k, v in fields.items() if k in PRODUCT_FIELDS}
        if not cols:
            return await self.get_product(product_key)
        sets = ", ".join(f"{k}=${i}" for i, k in enumerate(cols, start=3))
        r = await self.pool.fetchrow(
            f"UPDATE products SET {sets}, updated_at=$2 WHERE product_key=$1 RETURNING {PRODUCT_COLS}",
            product_key,
            now_ms(),
            *cols.values(),
        )
        return ProductRow.from_row(r) if r else None

    async def delete_product(self, product_key: str) -> bool:
        async def run(con: asyncpg.Connection) -> bool:
            if not await con.fetchval("SELECT 1 FROM products WHERE product_key=$1 FOR UPDATE", product_key):
                return False
            if await con.fetchval("SELECT 1 FROM devices WHERE product_key=$1 LIMIT 1", product_key):
                raise Conflict(f"product {product_key} still has devices; delete them first")
            await con.execute("DELETE FROM products WHERE product_key=$1", product_key)
            return True

        try:
            return await self._tx(run)
        except asyncpg.exceptions.ForeignKeyViolationError as exc:
            raise Conflict(f"product {product_key} still has devices; delete them first") from exc

    # -- thing models ---------------------------------------------------------------------
    async def get_draft(self, product_key: str) -> dict[str, Any] | None:
        doc = await self.pool.fetchval("SELECT document FROM model_drafts WHERE product_key=$1", product_key)
        return _json_decode(doc) if doc is not None else None

    async def put_draft(self, product_key: str, document: dict[str, Any]) -> None:
        await self.pool.execute(
            "INSERT INTO model_drafts(product_key, document, updated_at) VALUES($1, $2, $3) "
            "ON CONFLICT (product_key) DO UPDATE SET document=EXCLUDED.document, updated_at=EXCLUDED.updated_at",
            product_key,
            _json_encode(document).decode(),
            now_ms(),
        )

    async def publish_model(self, product_key: str, document: dict[str, Any], at: int) -> int:
        doc = _json_encode(document).decode()

        async def run(con: asyncpg.Connection) -> int:
            # lock the product so two nodes publishing at once get consecutive versions
            await con.execute("SELECT 1 FROM products WHERE product_key=$1 FOR UPDATE", product_key)
            version = await con.fetchval(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE product_key=$1", product_key
            )
            await con.execute(
                "INSERT INTO model_versions(product_key, version, document, published_at) VALUES($1, $2, $3, $4)",
                product_key,
                version,
                doc,
                at,
            )
            return int(version)

        return await self._tx(run)

    async def get_model_version(self, product_key: str, version: int | None) -> ModelVersionRow | None:
        if version is None:
            r = await self.pool.fetchrow(
                f"SELECT {MODEL_VERSION_COLS} FROM model_versions WHERE product_key=$1 ORDER BY version DESC LIMIT 1",
                product_key,
            )
        else:
            r = await self.pool.fetchrow(
                f"SELECT {MODEL_VERSION_COLS} FROM model_versions WHERE product_key=$1 AND version=$2",
                product_key,
                version,
            )
        return ModelVersionRow.from_row(product_key, r) if r else None

    async def list_model_versions(self, product_key: str) -> list[tuple[int, int]]:
        rows = await self.pool.fetch(
            "SELECT version, published_at FROM model_versions WHERE product_key=$1 ORDER BY version", product_key
        )
        return [(r[0], r[1]) for r in rows]

    # -- devices --------------------------------------------------------------------------
    def _seal(self, secret: str) -> str:
        return self.box.seal(secret) if self.box else secret

    def _device(self, r: asyncpg.Record) -> DeviceRow:
        return DeviceRow.from_row(r, self.box)

    async def insert_devices(self, rows: list[DeviceRow]) -> list[DeviceRow]:
        if not rows:
            return []
        columns = (
            [r.product_key for r in rows],
            [r.device_name for r in rows],
            [self._seal(r.secret) for r in rows],
            [r.enabled for r in rows],
            [r.generation for r in rows],
            [r.gateway_id for r in rows],
            [r.nickname for r in rows],
            [r.created_at for r in rows],
            [r.updated_at for r in rows],
        )

        async def run(con: asyncpg.Connection) -> list[DeviceRow]:
            inserted = await con.fetch(
                "INSERT INTO devices(product_key, device_name, secret, enabled, generation, gateway_id, nickname, "
                "token_epoch_ms, created_at, updated_at) "
                "SELECT pk, dn, s, e, g, gw, nn, 0, c, u FROM unnest($1::text[], $2::text[], $3::text[], "
                "$4::boolean[], $5::int[], $6::bigint[], $7::text[], $8::bigint[], $9::bigint[]) "
                "AS t(pk, dn, s, e, g, gw, nn, c, u) RETURNING id, product_key, device_name",
                *columns,
            )
            ids = {(r[1], r[2]): int(r[0]) for r in inserted}
            out = [msgspec.structs.replace(r, id=ids[(r.product_key, r.device_name)]) for r in rows]
            by_time: dict[int, list[int]] = {}
            for r in out:
                by_time.setdefault(r.created_at, []).append(r.id)
            for at, device_ids in by_time.items():
                await self._log_event(con, device_ids, "created", at)
            return out

        try:
            return await self._tx(run)
        except asyncpg.exceptions.UniqueViolationError as exc:
            detail = getattr(exc, "detail", "") or ""
            m = re.search(r"=\((.*), (.*)\) already exists", detail)
            which = f"{m[1]}/{m[2]}" if m else f"{rows[0].product_key}/…"
            raise Conflict(f"device {which} exists") from exc

    async def get_device(self, product_key: str, device_name: str) -> DeviceRow | None:
        r = await self.pool.fetchrow(
            f"SELECT {DEVICE_COLS} FROM devices WHERE product_key=$1 AND device_name=$2", product_key, device_name
        )
        return self._device(r) if r else None

    async def get_device_by_id(self, device_id: int) -> DeviceRow | None:
        r = await self.pool.fetchrow(f"SELECT {DEVICE_COLS} FROM devices WHERE id=$1", device_id)
        return self._device(r) if r else None

    async def list_devices(
        self,
        product_key: str | None,
        search: str | None,
        offset: int,
        limit: int,
        gateway_id: int | None = None,
    ) -> tuple[list[DeviceRow], int]:
        where: list[str] = []
        args: list[Any] = []
        if product_key:
            args.append(product_key)
            where.append(f"product_key=${len(args)}")
        if search:
            # ILIKE: SQLite's LIKE is case-insensitive for ASCII, and the behaviour must match
            args.append("%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
            n = len(args)
            where.append(f"(device_name ILIKE ${n} ESCAPE '\\' OR nickname ILIKE ${n} ESCAPE '\\')")
        if gateway_id is not None:
            args.append(gateway_id)
            where.append(f"gateway_id=${len(args)}")
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        n = len(args)
        async with self.pool.acquire() as con:
            rows = await con.fetch(
                f"SELECT {DEVICE_COLS} FROM devices {clause} ORDER BY id LIMIT ${n + 1} OFFSET ${n + 2}",
                *args,
                limit,
                offset,
            )
            total = await con.fetchval(f"SELECT COUNT(*) FROM devices {clause}", *args)
        return [self._device(r) for r in rows], int(total)

    async def update_device(self, device_id: int, fields: dict[str, Any], change: str) -> DeviceRow | None:
        cols = {k: v for k, v in fields.items() if k in DEVICE_FIELDS}
        if "secret" in cols:
            cols["secret"] = self._seal(cols["secret"])

        async def run(con: asyncpg.Connection) -> asyncpg.Record | None:
            at = now_ms()
            if cols:
                sets = ", ".join(f"{k}=${i}" for i, k in enumerate(cols, start=3))
                row = await con.fetchrow(
                    f"UPDATE devices SET {sets}, updated_at=$2 WHERE id=$1 RETURNING {DEVICE_COLS}",
                    device_id,
                    at,
                    *cols.values(),
                )
            else:
                row = await con.fetchrow(f"SELECT {DEVICE_COLS} FROM devices WHERE id=$1", device_id)
            if row:
                await self._log_event(con, [device_id], change, at)
            return row

        r = await self._tx(run)
        return self._device(r) if r else None

    async def delete_device(self, device_id: int) -> bool:
        async def run(con: asyncpg.Connection) -> bool:
            if await con.execute("DELETE FROM devices WHERE id=$1", device_id) == "DELETE 0":
                return False
            for table in ("history", "latest", "messages", "device_seen"):
                await con.execute(f"DELETE FROM {table} WHERE device_id=$1", device_id)
            await self._log_event(con, [device_id], "deleted", now_ms())
            return True

        deleted = await self._tx(run)
        if deleted and self._status is not None:  # other processes' flushes skip devices that are gone
            self._status.status.drop(device_id)
        return deleted

    async def count_devices(self, product_key: str | None = None) -> int:
        if product_key is None:
            return int(await self.pool.fetchval("SELECT COUNT(*) FROM devices"))
        return int(await self.pool.fetchval("SELECT COUNT(*) FROM devices WHERE product_key=$1", product_key))

    async def registry_events_since(self, seq: int, limit: int = 10000) -> list[RegistryEvent]:
        rows = await self.pool.fetch(
            f"SELECT {REGISTRY_EVENT_COLS} FROM registry_events WHERE seq > $1 ORDER BY seq LIMIT $2", seq, limit
        )
        return [RegistryEvent.from_row(r) for r in rows]

    async def last_registry_seq(self) -> int:
        return int(await self.pool.fetchval("SELECT COALESCE(MAX(seq), 0) FROM registry_events"))

    async def log_registry_event(self, device_id: int, change: str) -> None:
        async def run(con: asyncpg.Connection) -> None:
            await self._log_event(con, [device_id], change, now_ms())

        await self._tx(run)

    # -- ingest ---------------------------------------------------------------------------
    async def write_batch(self, records: list[Record], outbox: OutboxBatch | None = None) -> None:
        if self._status is None:
            await self._write_batch_with_status(records, outbox)
            return
        await self._status.registered()  # before the first commit: a crash after it is replayed
        batch = self._status.begin_batch(records)
        history, messages = history_and_messages(records)
        try:
            await self._tx(lambda con: self._write_rows(con, history, messages, outbox))
        except BaseException:
            self._status.end_batch(batch, None)
            raise
        self._status.end_batch(batch, records)

    async def _write_batch_with_status(self, records: list[Record], outbox: OutboxBatch | None) -> None:
        """running_status_flush_s = 0: latest values and device_seen upserted in the batch's transaction."""
        history, messages = history_and_messages(records)

        async def run(con: asyncpg.Connection) -> None:
            await self._write_rows(con, history, messages, outbox)
            await write_folded(con, records)

        await self._tx(run)

    @staticmethod
    async def _write_rows(
        con: asyncpg.Connection, history: list[tuple], messages: list[tuple], outbox: OutboxBatch | None
    ) -> None:
        if history:
            await con.copy_records_to_table(
                "history", records=history, columns=("message_id", "device_id", "ts", "data")
            )
        if messages:
            await con.copy_records_to_table(
                "messages",
                records=messages,
                columns=(
                    "message_id",
                    "device_id",
                    "kind",
                    "ts",
                    "received_at",
                    "topic",
                    "identifier",
                    "payload",
                    "detail",
                ),
            )
        if outbox is not None:  # forwarding: committed with the reports that produced it
            await write_outbox(con, outbox)

    async def flush_running_status(self) -> None:
        """Write this process's pending running status now (tests; other nodes see it after this)."""
        if self._status is not None:
            await self._status.flush()

    # -- device data ----------------------------------------------------------------------
    async def latest_values(self, device_id: int) -> dict[str, tuple[Any, int]]:
        pending = self._status.status.pending_latest(device_id) if self._status else []
        rows = await self.pool.fetch("SELECT identifier, value, ts FROM latest WHERE device_id=$1", device_id)
        return overlay_latest({r[0]: (_json_decode(r[1]), r[2]) for r in rows}, pending)

    async def property_history(
        self, device_id: int, identifier: str, since: int, until: int, limit: int
    ) -> list[tuple[int, Any]]:
        rows = await self.pool.fetch(
            "SELECT ts, v FROM (SELECT ts, message_id, data::jsonb -> $2 AS v FROM history "
            "WHERE device_id=$1 AND ts >= $3 AND ts <= $4) AS h WHERE v IS NOT NULL "
            "ORDER BY ts DESC, message_id DESC LIMIT $5",
            device_id,
            identifier,
            since,
            until,
            limit,
        )
        return [(r[0], _json_decode(r[1])) for r in rows]

    async def device_messages(
        self, device_id: int, kinds: list[str] | None, before_id: int | None, limit: int
    ) -> list[Record]:
        where = ["device_id=$1"]
        args: list[Any] = [device_id]
        if kinds:
            args.append(kinds)
            where.append(f"kind = ANY(${len(args)}::text[])")
        if before_id is not None:
            args.append(before_id)
            where.append(f"message_id < ${len(args)}")
        args.append(limit)
        rows = await self.pool.fetch(
            f"SELECT {MESSAGE_COLS} FROM messages WHERE {' AND '.join(where)} ORDER BY message_id DESC LIMIT ${len(args)}",
            *args,
        )
        return [Record.from_message_row(r) for r in rows]

    async def last_seen(self, since: int = 0) -> dict[int, int]:
        pending = self._status.status.pending_seen() if self._status else []
        rows = await self.pool.fetch("SELECT device_id, last_seen FROM device_seen WHERE last_seen > $1", since)
        return overlay_seen({r[0]: r[1] for r in rows}, pending, since)
