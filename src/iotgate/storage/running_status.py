"""A device's running status (newest value of each property, last-seen time) held in memory.

Both backends keep it here between checkpoints instead of upserting `latest` and `device_seen`
in every ingest commit: a report changes one row per property, and those upserts were most of a
commit's cost (SQLite: docs/benchmarks.md section 2; PostgreSQL: ~1.8 of 3.6 ms per batch of 64).
Written out every second or two, a busy device costs one row per property per checkpoint instead
of one per report. Acknowledged reports are durable in `history`/`messages`; each backend
replays the rows committed after its last checkpoint when that checkpoint was lost (a crash).

Two generations: `dirty` (folded since the last checkpoint began) and `flushing` (the snapshot
being written). Readers overlay both on the tables, `flushing` first, so no value is missing
while it is in flight. Not thread-safe by itself: SQLite folds on its writer thread and readers
copy a device's dicts before reading the table; PostgreSQL uses it from the event loop only.
"""

from __future__ import annotations

from typing import Any

import msgspec

from iotgate.ingest.ids import id_time_ms
from iotgate.storage.base import Record

LatestEntry = tuple[Any, int, int]  # (value, ts, message_id)
LatestRow = tuple[int, str, Any, int, int]  # (device_id, identifier, value, ts, message_id)


def history_record(message_id: int, device_id: int, ts: int, data: str | bytes) -> Record:
    """A `history` row as the property report it stored, received when its message ID was made:
    what crash replay folds back into the running status."""
    return Record(
        message_id=message_id,
        device_id=device_id,
        kind="property",
        ts=ts,
        received_at=id_time_ms(message_id),
        values=msgspec.json.decode(data),
    )


class RunningStatus:
    __slots__ = ("dirty_latest", "dirty_seen", "flushing_latest", "flushing_seen")

    def __init__(self) -> None:
        self.dirty_latest: dict[int, dict[str, LatestEntry]] = {}  # device -> identifier -> entry
        self.dirty_seen: dict[int, int] = {}  # device -> last received_at
        self.flushing_latest: dict[int, dict[str, LatestEntry]] = {}
        self.flushing_seen: dict[int, int] = {}

    # -- writing ------------------------------------------------------------------------
    def fold(self, records: list[Record]) -> None:
        """Fold committed records in: the newest event time wins per property (ties: the later)."""
        dirty, seen = self.dirty_latest, self.dirty_seen
        for r in records:
            values, device = r.values, r.device_id
            if values is not None and r.kind == "property":
                ts, message_id = r.ts, r.message_id
                current = dirty.get(device)
                if current is None:  # the device's first report since the last checkpoint
                    dirty[device] = {key: (value, ts, message_id) for key, value in values.items()}
                else:
                    known = current.get
                    for key, value in values.items():
                        prev = known(key)
                        if prev is None or ts >= prev[1]:
                            current[key] = (value, ts, message_id)
            if r.kind != "rejected" and seen.get(device, 0) < r.received_at:
                seen[device] = r.received_at

    def see(self, device_id: int, at: int) -> None:
        if self.dirty_seen.get(device_id, 0) < at:
            self.dirty_seen[device_id] = at

    @property
    def dirty(self) -> bool:
        return bool(self.dirty_latest or self.dirty_seen)

    @property
    def flushing(self) -> bool:
        return bool(self.flushing_latest or self.flushing_seen)

    def begin_flush(self) -> list[LatestRow]:
        """Move what is dirty into the flushing generation; return its latest rows to write."""
        self.flushing_latest, self.dirty_latest = self.dirty_latest, {}
        self.flushing_seen, self.dirty_seen = self.dirty_seen, {}
        return [
            (device, key, value, ts, message_id)
            for device, values in self.flushing_latest.items()
            for key, (value, ts, message_id) in values.items()
        ]

    def end_flush(self) -> None:
        """The snapshot is in the tables."""
        self.flushing_latest, self.flushing_seen = {}, {}

    def abort_flush(self) -> None:
        """Writing the snapshot failed: it goes back under the values folded since."""
        for device, values in self.flushing_latest.items():
            current = self.dirty_latest.setdefault(device, {})
            for key, entry in values.items():
                newer = current.get(key)
                if newer is None or entry[1] > newer[1]:
                    current[key] = entry
        for device, at in self.flushing_seen.items():
            self.see(device, at)
        self.end_flush()

    def drop(self, device_id: int) -> None:
        """A deleted device: never write its status back."""
        for pending in (self.dirty_latest, self.dirty_seen, self.flushing_latest, self.flushing_seen):
            pending.pop(device_id, None)

    # -- reading ------------------------------------------------------------------------
    def pending_latest(self, device_id: int) -> list[dict[str, LatestEntry]]:
        """Copies of a device's pending values, oldest generation first; take them before reading
        the table, so that a value checkpointed in between is seen in one place or the other."""
        return [dict(p) for p in (self.flushing_latest.get(device_id), self.dirty_latest.get(device_id)) if p]

    def pending_seen(self) -> list[dict[int, int]]:
        return [dict(self.flushing_seen), dict(self.dirty_seen)]


def overlay_latest(
    table: dict[str, tuple[Any, int]], pending: list[dict[str, LatestEntry]]
) -> dict[str, tuple[Any, int]]:
    """The stored values of a device with its pending ones on top (newest event time wins)."""
    for values in pending:
        for key, (value, ts, _) in values.items():
            known = table.get(key)
            if known is None or ts >= known[1]:
                table[key] = (value, ts)
    return table


def overlay_seen(table: dict[int, int], pending: list[dict[int, int]], since: int) -> dict[int, int]:
    for seen in pending:
        for device, at in seen.items():
            if at > since and table.get(device, 0) < at:
                table[device] = at
    return table
