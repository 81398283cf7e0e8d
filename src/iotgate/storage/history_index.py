"""SQLite: the per-device index of `history`, written behind ingest in key order.

Why not a plain index on history(device_id, ts): every ingest commit would change one index page
per device it holds a report of, because each device's newest entries sit on a leaf page of their
own. At 64 devices that was ~70 pages (~280 KB of WAL) per commit of 64 reports, and for gateway
batches about one page per report: most of what a COMMIT wrote, fsynced and later copied into the
database file. Here the index is a table of its own (`history_index`), filled every INDEX_WINDOW_S
with the rows committed since, sorted by (device, time), so that a device's new entries share pages.

Rows not indexed yet (the *tail*: `history` rowids above the mark in `meta`, in commit order) are
read by rowid range; queries read both and `UNION` drops a row found in both (a crash between the
steps of one pass leaves rows indexed whose mark did not move yet; they are indexed again with
`INSERT OR IGNORE`). All of it runs on the storage's writer thread, one short step per job, so an
ingest batch waits for one step at most.
"""

from __future__ import annotations

import sqlite3
import time

INDEX_WINDOW_S = 4.0  # how often the tail is indexed; a device's history query reads at most ~this much tail
INDEX_STEP_ROWS = 4000  # rows staged or indexed per step (one writer job, a few milliseconds)
MARK_KEY = "history-index-rowid"  # meta: every history row up to this rowid is in history_index

# The `history_device_ts` index of migration 0001 becomes a table written in key order (see above).
MIGRATION = (
    "0004-sqlite-history-index",
    [
        """CREATE TABLE history_index (
            device_id INTEGER NOT NULL,
            ts INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            PRIMARY KEY (device_id, ts, message_id)) WITHOUT ROWID""",
        "INSERT INTO history_index SELECT device_id, ts, message_id FROM history ORDER BY device_id, ts, message_id",
        "DROP INDEX history_device_ts",
        f"INSERT INTO meta(key, value) SELECT '{MARK_KEY}', COALESCE(MAX(rowid), 0) FROM history",
    ],
)

_TAIL = f"rowid > COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key='{MARK_KEY}'), 0)"

# Newest first over both parts. Each arm comes out in (ts, message_id) order (the index arm by its
# key, the tail arm sorted), and SQLite merges the two instead of sorting everything in range.
PROPERTY_HISTORY = (
    "SELECT i.ts, h.data -> ?1 AS v, i.message_id FROM history_index i JOIN history h ON h.message_id = i.message_id "
    "WHERE i.device_id = ?2 AND i.ts >= ?3 AND i.ts <= ?4 AND v IS NOT NULL "
    "UNION "
    f"SELECT ts, data -> ?1 AS v, message_id FROM history WHERE {_TAIL} AND device_id = ?2 AND ts >= ?3 AND ts <= ?4 "
    "AND v IS NOT NULL "
    "ORDER BY 1 DESC, 3 DESC LIMIT ?5"
)


def newest_rowid(con: sqlite3.Connection, table: str) -> int:
    """The rowid of `table`'s last committed row (SQLite numbers rows in commit order)."""
    return int(con.execute(f"SELECT COALESCE(MAX(rowid), 0) FROM {table}").fetchone()[0])


class HistoryIndex:
    """The indexing pass and its state; every method runs on the writer thread."""

    def __init__(self) -> None:
        self.mark = 0  # as stored in meta
        self.started_at = 0.0  # of the last pass; the first starts with the first batch (a crash's tail)
        self._target = 0  # the running pass indexes rows up to here (0: no pass running)
        self._staged = 0  # rows up to here are in temp.history_stage

    def open(self, con: sqlite3.Connection) -> None:
        con.execute("PRAGMA temp_store=MEMORY")
        con.execute(
            "CREATE TEMP TABLE IF NOT EXISTS history_stage (device_id INTEGER NOT NULL, ts INTEGER NOT NULL, "
            "message_id INTEGER NOT NULL, PRIMARY KEY (device_id, ts, message_id)) WITHOUT ROWID"
        )
        row = con.execute("SELECT value FROM meta WHERE key=?", (MARK_KEY,)).fetchone()
        self.mark = int(row[0]) if row else 0

    @property
    def running(self) -> bool:
        return self._target != 0

    def due(self) -> bool:
        return self.running or time.monotonic() - self.started_at >= INDEX_WINDOW_S

    def step(self, con: sqlite3.Connection) -> bool:
        """One step of the pass (starting one if none runs): stage up to INDEX_STEP_ROWS tail rows,
        or move that many staged entries, lowest keys first, into history_index; the last move also
        advances the mark. Returns whether the pass has more steps."""
        if not self._target:
            newest = newest_rowid(con, "history")
            self.started_at = time.monotonic()
            if newest <= self.mark:
                return False
            con.execute("DELETE FROM temp.history_stage")
            self._target, self._staged = newest, self.mark
        if self._staged < self._target:
            upto = min(self._target, self._staged + INDEX_STEP_ROWS)
            con.execute(
                "INSERT OR IGNORE INTO temp.history_stage SELECT device_id, ts, message_id FROM main.history "
                "WHERE rowid > ? AND rowid <= ?",
                (self._staged, upto),
            )
            self._staged = upto
            return True
        return self._move(con)

    def catch_up(self, con: sqlite3.Connection) -> None:
        """Index every committed row (a clean stop: no ingest any more)."""
        while self.step(con) or newest_rowid(con, "history") > self.mark:
            pass

    def _move(self, con: sqlite3.Connection) -> bool:
        split = con.execute(
            "SELECT device_id, ts, message_id FROM temp.history_stage ORDER BY 1, 2, 3 LIMIT 1 OFFSET ?",
            (INDEX_STEP_ROWS,),
        ).fetchone()
        below = "WHERE (device_id, ts, message_id) < (?, ?, ?)" if split else ""
        con.execute("BEGIN IMMEDIATE")
        try:
            con.execute(f"INSERT OR IGNORE INTO history_index SELECT * FROM temp.history_stage {below}", split or ())
            con.execute(f"DELETE FROM temp.history_stage {below}", split or ())
            if split is None:
                self._store_mark(con, self._target)
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")
        if split is None:
            self.mark, self._target = self._target, 0
        return split is not None

    def abort(self, con: sqlite3.Connection) -> None:
        """After a failed step: start over with the next pass (what was moved stays, ignored twice)."""
        self._target = 0
        con.execute("DELETE FROM temp.history_stage")

    @staticmethod
    def _store_mark(con: sqlite3.Connection, rowid: int) -> None:
        con.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (MARK_KEY, str(rowid)),
        )

    def keep_below(self, con: sqlite3.Connection, newest: int) -> None:
        """After deleting rows (inside that transaction): new rows are numbered one past the largest
        rowid left, so a mark above it would hide them from the index for good."""
        if self.mark > newest:
            self.mark = newest
            self._store_mark(con, newest)
        self._target, self._staged = min(self._target, newest), min(self._staged, newest)
        if self._target and self._target <= self.mark:  # everything the pass was for is gone
            self._target = 0

    def delete_device(self, con: sqlite3.Connection, device_id: int) -> None:
        """A device's history, indexed or not (inside the caller's transaction)."""
        con.execute(
            "DELETE FROM history WHERE message_id IN (SELECT message_id FROM history_index WHERE device_id=?)",
            (device_id,),
        )
        con.execute(f"DELETE FROM history WHERE {_TAIL} AND device_id=?", (device_id,))
        con.execute("DELETE FROM history_index WHERE device_id=?", (device_id,))
        con.execute("DELETE FROM temp.history_stage WHERE device_id=?", (device_id,))

    @staticmethod
    def expire_device(con: sqlite3.Connection, device_id: int, cutoff_ms: int, limit: int) -> tuple[int, int]:
        """Delete up to `limit` indexed history rows of a device older than the cutoff: (rows, entries)."""
        oldest = "SELECT {} FROM history_index WHERE device_id=?1 AND ts<?2 ORDER BY ts, message_id LIMIT ?3"
        deleted = con.execute(
            f"DELETE FROM history WHERE message_id IN ({oldest.format('message_id')})", (device_id, cutoff_ms, limit)
        ).rowcount
        # the same entries (the index did not change in between); an entry whose row is gone goes too
        entries = con.execute(
            f"DELETE FROM history_index WHERE (device_id, ts, message_id) IN "
            f"({oldest.format('device_id, ts, message_id')})",
            (device_id, cutoff_ms, limit),
        ).rowcount
        return int(deleted), int(entries)

    @staticmethod
    def expire_tail(con: sqlite3.Connection, cutoff_ms: int, limit: int) -> int:
        """Old rows not indexed yet (a device sending old times). A staged entry of one is left
        behind; the next retention pass deletes it through expire_device."""
        return int(
            con.execute(
                f"DELETE FROM history WHERE rowid IN (SELECT rowid FROM history WHERE {_TAIL} AND ts<? LIMIT ?)",
                (cutoff_ms, limit),
            ).rowcount
        )
