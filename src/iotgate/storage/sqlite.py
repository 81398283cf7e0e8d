"""SQLite backend (the embedded default): WAL, one writer thread, a small pool of readers.

Exactly one connection writes, on its own thread, so that ingest batches and admin writes never
fight over SQLite's single write lock, and the event loop never blocks on fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from iotgate.auth.secretbox import SecretBox
from iotgate.clock import now_ms
from iotgate.forward.rows import OutboxBatch
from iotgate.forward.store_sqlite import ForwardSqlite, write_outbox
from iotgate.ingest.ids import first_id_at
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
from iotgate.storage.history_index import MIGRATION as HISTORY_INDEX_MIGRATION
from iotgate.storage.history_index import PROPERTY_HISTORY, HistoryIndex, newest_rowid
from iotgate.storage.migrations import MIGRATIONS, render
from iotgate.storage.running_status import RunningStatus, history_record, overlay_latest, overlay_seen

T = TypeVar("T")
log = logging.getLogger("iotgate.storage")
CHECKPOINT_S = 2.0  # how often latest values and last-seen times are written out (a crash replays this much history)
CHECKPOINT_ROWS = 1000  # rows per checkpoint transaction, so that ingest batches wait for one small step at most
# WAL pages reach the database file through a thread of its own, once WAL_CHECKPOINT_ROWS rows
# were committed since the last time (_wal_checkpoint), so that the copy and its fsync overlap the
# next batches instead of delaying one. The writer copies them itself (SQLite's autocheckpoint) only
# past WAL_AUTOCHECKPOINT_PAGES. Measured when a history row still dirtied about one page of a
# (device_id, ts) index in every commit (before storage/history_index.py), gateway load on a grown
# database, batches of 1,000 rows committed per second: writer
# checkpointing at 1,000 pages (SQLite's default) 39-41 at 19-20 ms CPU per batch; WAL thread after
# every commit 47-50 at 22-23 ms; after every fourth 55-59 at 17-18 ms (a page that several commits
# changed is copied once). Counted in rows, not commits, so that small batches do not checkpoint
# more often than before. The WAL file then grows to ~35 MB instead of ~6.
WAL_CHECKPOINT_ROWS = 4000
WAL_AUTOCHECKPOINT_PAGES = 8000
_json_encode = msgspec.json.encode
_json_decode = msgspec.json.decode


class SqliteStorage(ForwardSqlite, Storage):
    # write_batch submits to the writer thread before its first await: the Ingestor may start
    # commits from inside a loop pass (ingest/pipeline.py, _drive)
    eager_commit = True

    def __init__(
        self, path: Path, synchronous: str = "FULL", secret_box: SecretBox | None = None, follower: bool = False
    ) -> None:
        self.path = path
        # follower: a device-worker process (--workers N). It reads the registry and models from the
        # file; its reports are committed by the main process (ingest/remote.py), which alone runs
        # migrations, recovery, checkpoints and ingest batches. A follower still writes a few small
        # transactions of its own: at start-up (meta keys, already set by the main process) and the
        # token epoch of a device re-authenticating over IoTDA (Registry.note_token_issued).
        self.follower = follower
        self.synchronous = synchronous.upper()
        self.box = secret_box
        self._writer_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._reader_pool = ThreadPoolExecutor(2, thread_name_prefix="sqlite-reader")
        self._wal_pool = ThreadPoolExecutor(1, thread_name_prefix="sqlite-wal")
        self._wal_con: sqlite3.Connection | None = None
        self._wal_queued = False
        self._wal_rows = 0  # rows committed since the last WAL checkpoint was queued
        self._local = threading.local()
        self._writer: sqlite3.Connection | None = None
        self._all_conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        # Latest values and last-seen times change with every report. Instead of an upsert per
        # property per commit they live here (touched by the writer thread only) and reach the
        # `latest`/`device_seen` tables every CHECKPOINT_S (`_checkpoint`). An acknowledged
        # report is durable in `history`/`messages`; `open()` replays rows after the checkpoint.
        self._status = RunningStatus()  # touched by the writer thread; readers copy (running_status.py)
        self._checkpoint_at = 0.0
        self._checkpoint_rows: list[tuple] = []  # latest rows of the snapshot still to write
        # newest history/messages rowids the snapshot covers (see _set_watermarks)
        self._checkpoint_marks: tuple[int, int] = (0, 0)
        self._history_index = HistoryIndex()  # written behind ingest (storage/history_index.py)

    # -- plumbing -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(f"PRAGMA synchronous={self.synchronous}")
        con.execute("PRAGMA foreign_keys=ON")
        con.execute("PRAGMA busy_timeout=30000")
        con.execute("PRAGMA cache_size=-65536")
        # every connection: a device worker's occasional small write would otherwise copy the WAL
        con.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")
        with self._conns_lock:
            self._all_conns.append(con)
        return con

    def _reader(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = self._connect()
        return con

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            assert self._writer is not None
            return fn(self._writer)

        return await asyncio.get_running_loop().run_in_executor(self._writer_pool, run)

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader_pool, lambda: fn(self._reader()))

    @staticmethod
    def _tx(con: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        con.execute("BEGIN IMMEDIATE")
        try:
            result = fn(con)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        return result

    # -- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def setup() -> None:
            self._writer = self._connect()
            if not self.follower:
                self._migrate(self._writer)
                self._history_index.open(self._writer)
                self._recover(self._writer)

        await asyncio.get_running_loop().run_in_executor(self._writer_pool, setup)

    def _migrate(self, con: sqlite3.Connection) -> None:
        con.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        done = {r[0] for r in con.execute("SELECT key FROM meta WHERE key LIKE 'migration:%'")}
        for name, statements in [*MIGRATIONS, HISTORY_INDEX_MIGRATION]:
            if f"migration:{name}" in done:
                continue

            def apply(c: sqlite3.Connection, stmts: list[str] = statements, n: str = name) -> None:
                for stmt in stmts:
                    c.execute(render(stmt, "sqlite"))
                c.execute("INSERT INTO meta(key, value) VALUES(?, ?)", (f"migration:{n}", str(now_ms())))

            self._tx(con, apply)

    async def close(self) -> None:
        def close_all() -> None:
            with self._conns_lock:
                for con in self._all_conns:
                    with contextlib.suppress(sqlite3.Error):
                        con.close()
                self._all_conns.clear()

        self._reader_pool.shutdown(wait=True)
        if self._writer is not None and not self.follower:
            with contextlib.suppress(sqlite3.Error):
                await self._write(self._checkpoint)
            with contextlib.suppress(sqlite3.Error):  # the next start finds no tail to index
                await self._write(self._history_index.catch_up)
        self._wal_pool.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(self._writer_pool, close_all)
        self._writer_pool.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._read(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except sqlite3.Error:
            return False

    # -- audit ----------------------------------------------------------------------------
    async def write_audit(self, entry: AuditEntry) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO admin_audit(at, actor, method, path, target, status, client) VALUES(?,?,?,?,?,?,?)",
                (entry.at, entry.actor, entry.method, entry.path, entry.target, entry.status, entry.client),
            )
        )

    async def list_audit(self, before_id: int | None, limit: int) -> list[AuditEntry]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {AUDIT_COLS} FROM admin_audit WHERE id < ? ORDER BY id DESC LIMIT ?",
                (before_id if before_id is not None else 2**63 - 1, limit),
            ).fetchall()
        )
        return [AuditEntry.from_row(r) for r in rows]

    # -- meta -----------------------------------------------------------------------------
    async def get_meta(self, key: str) -> str | None:
        row = await self._read(lambda c: c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone())
        return row[0] if row else None

    async def set_meta_if_absent(self, key: str, value: str) -> str:
        def run(c: sqlite3.Connection) -> str:
            c.execute("INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO NOTHING", (key, value))
            return str(c.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

        return await self._write(lambda c: self._tx(c, run))

    # -- products -------------------------------------------------------------------------
    async def insert_product(self, row: ProductRow) -> None:
        def run(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    f"INSERT INTO products({PRODUCT_COLS}) VALUES(?,?,?,?,?,?,?,?,?)",
                    (
                        row.product_key,
                        row.name,
                        row.node_type,
                        row.data_format,
                        row.auth_type,
                        row.description,
                        row.rate_per_s,
                        row.created_at,
                        row.updated_at,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise Conflict(f"product {row.product_key} exists") from exc

        await self._write(run)

    async def get_product(self, product_key: str) -> ProductRow | None:
        r = await self._read(
            lambda c: c.execute(f"SELECT {PRODUCT_COLS} FROM products WHERE product_key=?", (product_key,)).fetchone()
        )
        return ProductRow.from_row(r) if r else None

    async def list_products(self, offset: int, limit: int) -> tuple[list[ProductRow], int]:
        def run(c: sqlite3.Connection) -> tuple[list[ProductRow], int]:
            rows = c.execute(
                f"SELECT {PRODUCT_COLS} FROM products ORDER BY created_at, product_key LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            total = c.execute("SELECT COUNT(*) FROM products").fetchone()[0]
            return [ProductRow.from_row(r) for r in rows], total

        return await self._read(run)

    async def update_product(self, product_key: str, fields: dict[str, Any]) -> ProductRow | None:
        cols = {k: v for k, v in fields.items() if k in PRODUCT_FIELDS}

        def run(c: sqlite3.Connection) -> tuple | None:
            if cols:
                sets = ", ".join(f"{k}=?" for k in cols)
                c.execute(
                    f"UPDATE products SET {sets}, updated_at=? WHERE product_key=?",
                    (*cols.values(), now_ms(), product_key),
                )
            return c.execute(f"SELECT {PRODUCT_COLS} FROM products WHERE product_key=?", (product_key,)).fetchone()

        r = await self._write(run)
        return ProductRow.from_row(r) if r else None

    async def delete_product(self, product_key: str) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            if c.execute("SELECT 1 FROM devices WHERE product_key=? LIMIT 1", (product_key,)).fetchone():
                raise Conflict(f"product {product_key} still has devices; delete them first")
            return c.execute("DELETE FROM products WHERE product_key=?", (product_key,)).rowcount > 0

        return await self._write(lambda c: self._tx(c, run))

    # -- thing models ---------------------------------------------------------------------
    async def get_draft(self, product_key: str) -> dict[str, Any] | None:
        r = await self._read(
            lambda c: c.execute("SELECT document FROM model_drafts WHERE product_key=?", (product_key,)).fetchone()
        )
        return _json_decode(r[0]) if r else None

    async def put_draft(self, product_key: str, document: dict[str, Any]) -> None:
        doc = _json_encode(document).decode()
        await self._write(
            lambda c: c.execute(
                "INSERT INTO model_drafts(product_key, document, updated_at) VALUES(?,?,?) "
                "ON CONFLICT(product_key) DO UPDATE SET document=excluded.document, updated_at=excluded.updated_at",
                (product_key, doc, now_ms()),
            )
        )

    async def publish_model(self, product_key: str, document: dict[str, Any], at: int) -> int:
        doc = _json_encode(document).decode()

        def run(c: sqlite3.Connection) -> int:
            version = c.execute(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM model_versions WHERE product_key=?", (product_key,)
            ).fetchone()[0]
            c.execute(
                "INSERT INTO model_versions(product_key, version, document, published_at) VALUES(?,?,?,?)",
                (product_key, version, doc, at),
            )
            return int(version)

        return await self._write(lambda c: self._tx(c, run))

    async def get_model_version(self, product_key: str, version: int | None) -> ModelVersionRow | None:
        def run(c: sqlite3.Connection) -> tuple | None:
            if version is None:
                return c.execute(
                    f"SELECT {MODEL_VERSION_COLS} FROM model_versions WHERE product_key=? ORDER BY version DESC LIMIT 1",
                    (product_key,),
                ).fetchone()
            return c.execute(
                f"SELECT {MODEL_VERSION_COLS} FROM model_versions WHERE product_key=? AND version=?",
                (product_key, version),
            ).fetchone()

        r = await self._read(run)
        return ModelVersionRow.from_row(product_key, r) if r else None

    async def list_model_versions(self, product_key: str) -> list[tuple[int, int]]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT version, published_at FROM model_versions WHERE product_key=? ORDER BY version",
                (product_key,),
            ).fetchall()
        )
        return [(r[0], r[1]) for r in rows]

    # -- devices --------------------------------------------------------------------------
    def _seal(self, secret: str) -> str:
        return self.box.seal(secret) if self.box else secret

    def _device(self, r: tuple) -> DeviceRow:
        return DeviceRow.from_row(r, self.box)

    async def insert_devices(self, rows: list[DeviceRow]) -> list[DeviceRow]:
        sealed = [self._seal(r.secret) for r in rows]

        def run(c: sqlite3.Connection) -> list[DeviceRow]:
            out = []
            for row, secret in zip(rows, sealed, strict=True):
                try:
                    cur = c.execute(
                        "INSERT INTO devices(product_key, device_name, secret, enabled, generation, gateway_id, "
                        "nickname, token_epoch_ms, created_at, updated_at) VALUES(?,?,?,?,?,?,?,?,?,?)",
                        (
                            row.product_key,
                            row.device_name,
                            secret,
                            row.enabled,
                            row.generation,
                            row.gateway_id,
                            row.nickname,
                            0,
                            row.created_at,
                            row.updated_at,
                        ),
                    )
                except sqlite3.IntegrityError as exc:
                    raise Conflict(f"device {row.product_key}/{row.device_name} exists") from exc
                device_id = int(cur.lastrowid or 0)
                c.execute(
                    "INSERT INTO registry_events(device_id, change, at) VALUES(?, 'created', ?)",
                    (device_id, row.created_at),
                )
                out.append(msgspec.structs.replace(row, id=device_id))
            return out

        return await self._write(lambda c: self._tx(c, run))

    async def get_device(self, product_key: str, device_name: str) -> DeviceRow | None:
        r = await self._read(
            lambda c: c.execute(
                f"SELECT {DEVICE_COLS} FROM devices WHERE product_key=? AND device_name=?",
                (product_key, device_name),
            ).fetchone()
        )
        return self._device(r) if r else None

    async def get_device_by_id(self, device_id: int) -> DeviceRow | None:
        r = await self._read(
            lambda c: c.execute(f"SELECT {DEVICE_COLS} FROM devices WHERE id=?", (device_id,)).fetchone()
        )
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
            where.append("product_key=?")
            args.append(product_key)
        if search:
            where.append("(device_name LIKE ? ESCAPE '\\' OR nickname LIKE ? ESCAPE '\\')")
            pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            args += [pattern, pattern]
        if gateway_id is not None:
            where.append("gateway_id=?")
            args.append(gateway_id)
        clause = ("WHERE " + " AND ".join(where)) if where else ""

        def run(c: sqlite3.Connection) -> tuple[list[DeviceRow], int]:
            rows = c.execute(
                f"SELECT {DEVICE_COLS} FROM devices {clause} ORDER BY id LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
            total = c.execute(f"SELECT COUNT(*) FROM devices {clause}", args).fetchone()[0]
            return [self._device(r) for r in rows], total

        return await self._read(run)

    async def update_device(self, device_id: int, fields: dict[str, Any], change: str) -> DeviceRow | None:
        cols = {k: v for k, v in fields.items() if k in DEVICE_FIELDS}
        if "secret" in cols:
            cols["secret"] = self._seal(cols["secret"])

        def run(c: sqlite3.Connection) -> tuple | None:
            at = now_ms()
            if cols:
                sets = ", ".join(f"{k}=?" for k in cols)
                c.execute(f"UPDATE devices SET {sets}, updated_at=? WHERE id=?", (*cols.values(), at, device_id))
            row = c.execute(f"SELECT {DEVICE_COLS} FROM devices WHERE id=?", (device_id,)).fetchone()
            if row:
                c.execute(
                    "INSERT INTO registry_events(device_id, change, at) VALUES(?,?,?)",
                    (device_id, change, at),
                )
            return row

        r = await self._write(lambda c: self._tx(c, run))
        return self._device(r) if r else None

    async def delete_device(self, device_id: int) -> bool:
        def run(c: sqlite3.Connection) -> bool:
            if c.execute("DELETE FROM devices WHERE id=?", (device_id,)).rowcount == 0:
                return False
            self._status.drop(device_id)
            self._checkpoint_rows = [r for r in self._checkpoint_rows if r[0] != device_id]
            self._history_index.delete_device(c, device_id)
            for table in ("latest", "messages", "device_seen"):
                c.execute(f"DELETE FROM {table} WHERE device_id=?", (device_id,))
            self._keep_watermarks_below_new_rows(c)
            c.execute(
                "INSERT INTO registry_events(device_id, change, at) VALUES(?, 'deleted', ?)",
                (device_id, now_ms()),
            )
            return True

        return await self._write(lambda c: self._tx(c, run))

    async def count_devices(self, product_key: str | None = None) -> int:
        if product_key is None:
            return int(await self._read(lambda c: c.execute("SELECT COUNT(*) FROM devices").fetchone()[0]))
        return int(
            await self._read(
                lambda c: c.execute("SELECT COUNT(*) FROM devices WHERE product_key=?", (product_key,)).fetchone()[0]
            )
        )

    async def registry_events_since(self, seq: int, limit: int = 10000) -> list[RegistryEvent]:
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {REGISTRY_EVENT_COLS} FROM registry_events WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, limit),
            ).fetchall()
        )
        return [RegistryEvent.from_row(r) for r in rows]

    async def last_registry_seq(self) -> int:
        return int(
            await self._read(lambda c: c.execute("SELECT COALESCE(MAX(seq), 0) FROM registry_events").fetchone()[0])
        )

    async def log_registry_event(self, device_id: int, change: str) -> None:
        await self._write(
            lambda c: c.execute(
                "INSERT INTO registry_events(device_id, change, at) VALUES(?,?,?)",
                (device_id, change, now_ms()),
            )
        )

    # -- ingest ---------------------------------------------------------------------------
    async def write_batch(self, records: list[Record], outbox: OutboxBatch | None = None) -> None:
        if self.follower:  # a worker's reports go to the main process (IngestLink), never here
            raise RuntimeError("a follower SqliteStorage does not write ingest batches")
        await self._write(lambda c: self._write_batch(c, records, outbox))
        if self._status.flushing or time.monotonic() - self._checkpoint_at >= CHECKPOINT_S:
            if not self._status.flushing:
                self._checkpoint_at = time.monotonic()
            # one step, queued behind this batch on the writer thread; nobody waits for it
            self._writer_pool.submit(self._checkpoint_logged)
        if self._history_index.due():
            self._writer_pool.submit(self._index_step_logged)

    def _write_batch(self, con: sqlite3.Connection, records: list[Record], outbox: OutboxBatch | None = None) -> None:
        history, messages = history_and_messages(records)
        con.execute("BEGIN IMMEDIATE")
        try:
            if outbox is not None:
                write_outbox(con, outbox)
            if history:
                con.executemany("INSERT INTO history(message_id, device_id, ts, data) VALUES(?,?,?,?)", history)
            if messages:
                con.executemany(
                    "INSERT INTO messages(message_id, device_id, kind, ts, received_at, topic, identifier, payload, "
                    "detail) VALUES(?,?,?,?,?,?,?,?,?)",
                    messages,
                )
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        self._wal_checkpoint_soon(len(records))
        self._status.fold(records)

    def _wal_checkpoint_soon(self, rows: int) -> None:
        """Have the WAL thread copy committed pages into the database file (writer thread)."""
        self._wal_rows += rows
        if self._wal_rows >= WAL_CHECKPOINT_ROWS and not self._wal_queued:
            self._wal_rows = 0
            self._wal_queued = True
            with contextlib.suppress(RuntimeError):  # closing
                self._wal_pool.submit(self._wal_checkpoint)

    def _wal_checkpoint(self) -> None:
        """A PASSIVE checkpoint never waits for the writer or readers: it copies what it can (WAL
        thread). Once a checkpoint has copied everything, the writer starts the WAL over."""
        self._wal_queued = False  # commits from now on queue the next one
        try:
            if self._wal_con is None:
                self._wal_con = self._connect()
            self._wal_con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the next commit tries again; the writer's autocheckpoint is the backstop
            log.debug("WAL checkpoint failed: %s", exc)

    def _checkpoint_logged(self) -> None:
        assert self._writer is not None
        try:
            self._checkpoint_step(self._writer)
        except sqlite3.Error as exc:  # retried with the next checkpoint; replayed from history on start
            log.warning("writing latest values failed: %s", exc)

    def _index_step_logged(self) -> bool:
        assert self._writer is not None
        try:
            return self._history_index.step(self._writer)
        except sqlite3.Error as exc:  # the next pass indexes these rows; queries read them from the tail
            log.warning("indexing history failed: %s", exc)
            with contextlib.suppress(sqlite3.Error):
                self._history_index.abort(self._writer)
            return False

    def _checkpoint(self, con: sqlite3.Connection) -> None:
        """Write every pending latest value and last-seen time (writer thread)."""
        while self._checkpoint_step(con):
            pass

    def _checkpoint_step(self, con: sqlite3.Connection) -> bool:
        """Write up to CHECKPOINT_ROWS latest values of the current snapshot (taking one when none
        is in progress); the last step also writes last-seen times and the history/messages message IDs
        the snapshot covers. Returns whether more steps are needed (writer thread)."""
        if not self._status.flushing:
            if not self._status.dirty:
                return False
            # readers overlay the flushing generation until its last row is committed
            self._checkpoint_rows = self._status.begin_flush()
            # batches committed from now on are not in the snapshot: the watermark stops here
            self._checkpoint_marks = (newest_rowid(con, "history"), newest_rowid(con, "messages"))
        chunk = self._checkpoint_rows[:CHECKPOINT_ROWS]
        last = len(self._checkpoint_rows) <= CHECKPOINT_ROWS
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                if chunk:
                    con.executemany(
                        "INSERT INTO latest(device_id, identifier, value, ts, message_id) VALUES(?,?,?,?,?) "
                        "ON CONFLICT(device_id, identifier) DO UPDATE SET value=excluded.value, ts=excluded.ts, "
                        "message_id=excluded.message_id WHERE excluded.ts >= latest.ts",
                        [(d, k, _json_encode(v).decode(), ts, m) for d, k, v, ts, m in chunk],
                    )
                if last:
                    if self._status.flushing_seen:
                        con.executemany(
                            "INSERT INTO device_seen(device_id, last_seen) VALUES(?,?) ON CONFLICT(device_id) "
                            "DO UPDATE SET last_seen=MAX(last_seen, excluded.last_seen)",
                            list(self._status.flushing_seen.items()),
                        )
                    self._set_watermarks(con, *self._checkpoint_marks)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        except BaseException:
            self._status.abort_flush()
            self._checkpoint_rows = []
            raise
        if last:
            self._status.end_flush()
            self._checkpoint_rows = []
            return False
        del self._checkpoint_rows[:CHECKPOINT_ROWS]
        return True

    @staticmethod
    def _set_watermarks(con: sqlite3.Connection, history: int, messages: int) -> None:
        """The newest history/messages rowids the `latest`/`device_seen` tables cover. Rowids, not
        message IDs: SQLite numbers new rows in commit order, while message IDs come from several
        processes (device workers) and reach the writer out of order, so a row committed just after
        a snapshot may have an older ID than one in it."""
        for table, rowid in (("history", history), ("messages", messages)):
            con.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (f"checkpoint-rowid:{table}", str(rowid)),
            )
            con.execute("DELETE FROM meta WHERE key=?", (f"checkpoint:{table}",))  # message-ID marks of old

    def _keep_watermarks_below_new_rows(self, con: sqlite3.Connection) -> None:
        """After deleting rows (inside that transaction, writer thread): SQLite numbers a new row one
        past the largest rowid left, so once the newest rows are gone, later rows could get rowids
        at or below a watermark and would not be replayed after a crash. Lower it to the newest row."""
        history, messages = newest_rowid(con, "history"), newest_rowid(con, "messages")
        self._checkpoint_marks = (min(self._checkpoint_marks[0], history), min(self._checkpoint_marks[1], messages))
        self._history_index.keep_below(con, history)
        stored = dict(con.execute("SELECT key, value FROM meta WHERE key LIKE 'checkpoint-rowid:%'").fetchall())
        if "checkpoint-rowid:history" in stored:
            old_history, old_messages = (int(stored.get(f"checkpoint-rowid:{t}", 0)) for t in ("history", "messages"))
            if history < old_history or messages < old_messages:
                self._set_watermarks(con, min(history, old_history), min(messages, old_messages))

    def _recover(self, con: sqlite3.Connection) -> None:
        """Rebuild latest values and last-seen times committed after the last checkpoint (a crash)."""
        marks = dict(con.execute("SELECT key, value FROM meta WHERE key LIKE 'checkpoint%'").fetchall())
        if "checkpoint-rowid:history" in marks:
            column, prefix = "rowid", "checkpoint-rowid"
        elif "checkpoint:history" in marks:  # written by a version that marked message IDs
            column, prefix = "message_id", "checkpoint"
        else:  # new database, or one whose tables were kept per commit
            history, messages = newest_rowid(con, "history"), newest_rowid(con, "messages")
            self._tx(con, lambda c: self._set_watermarks(c, history, messages))
            return
        for row in con.execute(
            f"SELECT message_id, device_id, ts, data FROM history WHERE {column} > ? ORDER BY {column}",
            (int(marks[f"{prefix}:history"]),),
        ):
            self._status.fold([history_record(*row)])
        for device, received in con.execute(
            f"SELECT device_id, received_at FROM messages WHERE {column} > ? AND kind != 'rejected'",
            (int(marks.get(f"{prefix}:messages", 0)),),
        ):
            self._status.see(device, received)
        if self._status.dirty:
            devices = len(self._status.dirty_latest)
            log.info("rebuilt latest values of %d devices from history after an unclean stop", devices)
        self._checkpoint(con)

    # -- device data ----------------------------------------------------------------------
    async def latest_values(self, device_id: int) -> dict[str, tuple[Any, int]]:
        # values not yet checkpointed, taken before the table is read so that none falls in between
        pending = self._status.pending_latest(device_id)
        rows = await self._read(
            lambda c: c.execute("SELECT identifier, value, ts FROM latest WHERE device_id=?", (device_id,)).fetchall()
        )
        return overlay_latest({r[0]: (_json_decode(r[1]), r[2]) for r in rows}, pending)

    async def property_history(
        self, device_id: int, identifier: str, since: int, until: int, limit: int
    ) -> list[tuple[int, Any]]:
        path = '$."' + identifier.replace('"', "") + '"'
        rows = await self._read(
            lambda c: c.execute(PROPERTY_HISTORY, (path, device_id, since, until, limit)).fetchall()
        )
        return [(r[0], _json_decode(r[1])) for r in rows]

    async def device_messages(
        self, device_id: int, kinds: list[str] | None, before_id: int | None, limit: int
    ) -> list[Record]:
        where: list[str] = ["device_id=?"]
        args: list[Any] = [device_id]
        if kinds:
            where.append(f"kind IN ({','.join('?' * len(kinds))})")
            args += kinds
        if before_id is not None:
            where.append("message_id < ?")
            args.append(before_id)
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {MESSAGE_COLS} FROM messages WHERE {' AND '.join(where)} ORDER BY message_id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        )
        return [Record.from_message_row(r) for r in rows]

    async def last_seen(self, since: int = 0) -> dict[int, int]:
        pending = self._status.pending_seen()
        rows = await self._read(
            lambda c: c.execute("SELECT device_id, last_seen FROM device_seen WHERE last_seen > ?", (since,)).fetchall()
        )
        return overlay_seen({r[0]: r[1] for r in rows}, pending, since)

    # -- housekeeping and retention ---------------------------------------------------------
    async def maintain(self, now: int) -> None:
        # index the tail left by the last batches (passes are otherwise started by ingest batches)
        while await self._write(lambda c: self._index_step_logged()):
            pass
        cutoff = now - REGISTRY_EVENTS_KEEP_MS
        await self._write(
            lambda c: c.execute(
                "DELETE FROM registry_events WHERE seq IN (SELECT seq FROM registry_events WHERE at < ? "
                "AND seq < (SELECT MAX(seq) FROM registry_events) ORDER BY seq LIMIT ?)",
                (cutoff, REGISTRY_PRUNE_ROWS),
            )
        )

    _expire_cursor = 0  # history is walked device by device (history_index); resumes here

    async def expire_step(self, cutoff_ms: int, max_rows: int) -> tuple[int, bool]:
        """Delete at most about max_rows old rows in one short write transaction, so ingest batches
        queued on the writer thread wait for one small step at most."""
        first_live_id = first_id_at(cutoff_ms)

        def run(c: sqlite3.Connection) -> tuple[int, bool]:
            deleted = c.execute(
                "DELETE FROM messages WHERE message_id IN "
                "(SELECT message_id FROM messages WHERE message_id < ? ORDER BY message_id LIMIT ?)",
                (first_live_id, max_rows),
            ).rowcount
            if deleted >= max_rows:
                return deleted, True
            if self._expire_cursor == 0:  # once per pass: the tail is read by rowid, not per device
                deleted += HistoryIndex.expire_tail(c, cutoff_ms, max_rows - deleted)
                if deleted >= max_rows:
                    return deleted, True
            ids = [
                r[0]
                for r in c.execute(
                    "SELECT id FROM devices WHERE id > ? ORDER BY id LIMIT 256", (self._expire_cursor,)
                ).fetchall()
            ]
            for device_id in ids:
                budget = max_rows - deleted
                rows, entries = HistoryIndex.expire_device(c, device_id, cutoff_ms, budget)
                deleted += rows
                if entries >= budget:  # this device may have more: resume with it
                    self._expire_cursor = device_id - 1
                    return deleted, True
                self._expire_cursor = device_id
            if len(ids) == 256:
                return deleted, True
            self._expire_cursor = 0  # the pass over all devices is complete
            return deleted, False

        def run_marked(c: sqlite3.Connection) -> tuple[int, bool]:
            deleted, more = run(c)
            if deleted:
                self._keep_watermarks_below_new_rows(c)
            return deleted, more

        return await self._write(lambda c: self._tx(c, run_marked))


def history_and_messages(records: list[Record]) -> tuple[list[tuple], list[tuple]]:
    """Row tuples of a batch for `history` (property reports) and `messages` (everything else)."""
    history: list[tuple] = []
    messages: list[tuple] = []
    for r in records:
        if r.kind == "property" and r.values is not None:
            history.append((r.message_id, r.device_id, r.ts, _json_encode(r.values).decode()))
        else:
            messages.append(
                (r.message_id, r.device_id, r.kind, r.ts, r.received_at, r.topic, r.identifier, r.payload, r.detail)
            )
    return history, messages
