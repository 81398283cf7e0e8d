"""The storage interface: one contract, an SQLite and a PostgreSQL implementation.

Everything is async for the caller. Ingest writes arrive as whole batches (`write_batch`) so
that each backend can commit them in one transaction (group commit).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from iotgate.forward.rows import (
    DeadLetterRow,
    ForwardRuleRow,
    OutboxBatch,
    OutboxRow,
    Settlement,
    TargetStats,
)

if TYPE_CHECKING:
    from iotgate.auth.secretbox import SecretBox

REGISTRY_EVENTS_KEEP_MS = 7 * 24 * 3600 * 1000  # change-log rows older than this are pruned by maintain()
REGISTRY_PRUNE_ROWS = 10_000  # at most this many per maintain() call


# Column lists both backends select, in the order the `from_row` constructors below read them.
PRODUCT_COLS = "product_key, name, node_type, data_format, auth_type, description, rate_per_s, created_at, updated_at"
DEVICE_COLS = (
    "id, product_key, device_name, secret, enabled, generation, gateway_id, nickname, "
    "token_epoch_ms, created_at, updated_at"
)
MESSAGE_COLS = "message_id, device_id, kind, ts, received_at, topic, identifier, payload, detail"
AUDIT_COLS = "id, at, actor, method, path, target, status, client"
REGISTRY_EVENT_COLS = "seq, device_id, change, at"
MODEL_VERSION_COLS = "version, document, published_at"
DEVICE_FIELDS = {"enabled", "generation", "gateway_id", "nickname", "token_epoch_ms", "secret"}  # updatable
PRODUCT_FIELDS = {"name", "node_type", "data_format", "auth_type", "description", "rate_per_s"}  # updatable
Row = Sequence[Any]  # a database row: a tuple (sqlite3) or an asyncpg.Record, read by position


class Conflict(Exception):
    """A unique key already exists, or a row is still referenced."""


class ProductRow(msgspec.Struct, kw_only=True):
    product_key: str
    name: str
    node_type: str
    data_format: str
    auth_type: str
    description: str = ""
    rate_per_s: float | None = None
    created_at: int = 0
    updated_at: int = 0

    @classmethod
    def from_row(cls, r: Row) -> ProductRow:
        """From a row of PRODUCT_COLS."""
        return cls(
            product_key=r[0],
            name=r[1],
            node_type=r[2],
            data_format=r[3],
            auth_type=r[4],
            description=r[5],
            rate_per_s=r[6],
            created_at=r[7],
            updated_at=r[8],
        )


class DeviceRow(msgspec.Struct, kw_only=True):
    id: int
    product_key: str
    device_name: str
    secret: str  # plain text here; encryption at rest happens in the backend
    enabled: bool = True
    generation: int = 1
    gateway_id: int | None = None
    nickname: str = ""
    token_epoch_ms: int = 0  # newest IoTDA token issue time (30 s overlap rule)
    created_at: int = 0
    updated_at: int = 0

    @classmethod
    def from_row(cls, r: Row, box: SecretBox | None) -> DeviceRow:
        """From a row of DEVICE_COLS; `box` opens a secret sealed at rest."""
        return cls(
            id=r[0],
            product_key=r[1],
            device_name=r[2],
            secret=box.open(r[3]) if box else r[3],
            enabled=bool(r[4]),
            generation=r[5],
            gateway_id=r[6],
            nickname=r[7],
            token_epoch_ms=r[8],
            created_at=r[9],
            updated_at=r[10],
        )


class ModelVersionRow(msgspec.Struct, kw_only=True):
    product_key: str
    version: int
    document: dict[str, Any]
    published_at: int

    @classmethod
    def from_row(cls, product_key: str, r: Row) -> ModelVersionRow:
        """From a row of MODEL_VERSION_COLS (the document as JSON text)."""
        return cls(product_key=product_key, version=r[0], document=msgspec.json.decode(r[1]), published_at=r[2])


class Record(msgspec.Struct, kw_only=True, array_like=True, gc=False):
    """One accepted (or rejected) device report, ready to commit.

    kind: "property" (values is a dict identifier -> value), "event", "message" (raw topic
    or messages/up), "deviceinfo", "ota", "rejected" (detail holds the reason).

    gc=False: the garbage collector neither tracks nor scans records (a worker makes 50 per
    gateway request, the main process decodes them by the thousand: 16 % faster frame decode).
    A record is never part of a reference cycle: it holds scalars and decoded JSON values.
    """

    message_id: int
    device_id: int
    kind: str
    ts: int  # event time, ms
    received_at: int  # server time, ms
    topic: str = ""
    identifier: str = ""  # event identifier
    values: dict[str, Any] | None = None
    payload: bytes = b""
    detail: str = ""
    params: dict[str, Any] | None = None  # an event's validated parameters: forwarded, not stored

    @classmethod
    def from_message_row(cls, r: Row) -> Record:
        """From a row of MESSAGE_COLS (table `messages`)."""
        return cls(
            message_id=r[0],
            device_id=r[1],
            kind=r[2],
            ts=r[3],
            received_at=r[4],
            topic=r[5],
            identifier=r[6],
            payload=bytes(r[7]),
            detail=r[8],
        )


class RegistryEvent(msgspec.Struct, kw_only=True):
    seq: int
    device_id: int
    # a device's: created, deleted, enabled, disabled, secret-reset, token-epoch, updated;
    # with device_id 0, a product's: model:<productKey> (published), product:<productKey> (changed)
    change: str
    at: int

    @classmethod
    def from_row(cls, r: Row) -> RegistryEvent:
        """From a row of REGISTRY_EVENT_COLS."""
        return cls(seq=r[0], device_id=r[1], change=r[2], at=r[3])


class AuditEntry(msgspec.Struct, kw_only=True):
    """One mutating management request: never a request body, so never a secret."""

    id: int = 0
    at: int  # ms
    actor: str  # "key:<id>" (admin key fingerprint) or "console:<id>" (console session fingerprint)
    method: str
    path: str
    target: str = ""
    status: int
    client: str = ""

    @classmethod
    def from_row(cls, r: Row) -> AuditEntry:
        """From a row of AUDIT_COLS."""
        return cls(id=r[0], at=r[1], actor=r[2], method=r[3], path=r[4], target=r[5], status=r[6], client=r[7])


class Storage(abc.ABC):
    """Persistence of the registry, thing models and device data."""

    # lifecycle
    @abc.abstractmethod
    async def open(self) -> None: ...
    @abc.abstractmethod
    async def close(self) -> None: ...
    @abc.abstractmethod
    async def ping(self) -> bool: ...

    # audit log of admin actions (table admin_audit, migration 0002-admin-audit)
    async def write_audit(self, entry: AuditEntry) -> None:
        raise NotImplementedError(f"{type(self).__name__} does not keep an audit log")

    async def list_audit(self, before_id: int | None, limit: int) -> list[AuditEntry]:
        """Newest first; `before_id` pages backwards (keyset paging by id)."""
        raise NotImplementedError(f"{type(self).__name__} does not keep an audit log")

    # meta (server keys etc.)
    @abc.abstractmethod
    async def get_meta(self, key: str) -> str | None: ...
    @abc.abstractmethod
    async def set_meta_if_absent(self, key: str, value: str) -> str:
        """Store value unless the key exists; return the stored value (first writer wins)."""

    # products
    @abc.abstractmethod
    async def insert_product(self, row: ProductRow) -> None: ...
    @abc.abstractmethod
    async def get_product(self, product_key: str) -> ProductRow | None: ...
    @abc.abstractmethod
    async def list_products(self, offset: int, limit: int) -> tuple[list[ProductRow], int]: ...
    @abc.abstractmethod
    async def update_product(self, product_key: str, fields: dict[str, Any]) -> ProductRow | None: ...
    @abc.abstractmethod
    async def delete_product(self, product_key: str) -> bool:
        """Delete a product without devices; raises Conflict when it has devices."""

    # thing models
    @abc.abstractmethod
    async def get_draft(self, product_key: str) -> dict[str, Any] | None: ...
    @abc.abstractmethod
    async def put_draft(self, product_key: str, document: dict[str, Any]) -> None: ...
    @abc.abstractmethod
    async def publish_model(self, product_key: str, document: dict[str, Any], at: int) -> int:
        """Freeze a document as the next version; return the version number."""

    @abc.abstractmethod
    async def get_model_version(self, product_key: str, version: int | None) -> ModelVersionRow | None:
        """A version, or the newest when version is None."""

    @abc.abstractmethod
    async def list_model_versions(self, product_key: str) -> list[tuple[int, int]]: ...

    # devices
    @abc.abstractmethod
    async def insert_devices(self, rows: list[DeviceRow]) -> list[DeviceRow]:
        """Insert all or none (Conflict on a duplicate name); ids are assigned."""

    @abc.abstractmethod
    async def get_device(self, product_key: str, device_name: str) -> DeviceRow | None: ...
    @abc.abstractmethod
    async def get_device_by_id(self, device_id: int) -> DeviceRow | None: ...
    @abc.abstractmethod
    async def list_devices(
        self,
        product_key: str | None,
        search: str | None,
        offset: int,
        limit: int,
        gateway_id: int | None = None,
    ) -> tuple[list[DeviceRow], int]: ...
    @abc.abstractmethod
    async def update_device(self, device_id: int, fields: dict[str, Any], change: str) -> DeviceRow | None:
        """Update columns and log a registry event `change` in the same transaction."""

    @abc.abstractmethod
    async def delete_device(self, device_id: int) -> bool:
        """Delete a device with its data; logs a registry event."""

    @abc.abstractmethod
    async def count_devices(self, product_key: str | None = None) -> int: ...
    @abc.abstractmethod
    async def registry_events_since(self, seq: int, limit: int = 10000) -> list[RegistryEvent]: ...
    @abc.abstractmethod
    async def last_registry_seq(self) -> int: ...
    @abc.abstractmethod
    async def log_registry_event(self, device_id: int, change: str) -> None:
        """Log a change other nodes must see (e.g. `model:<productKey>`)."""

    # ingest
    @abc.abstractmethod
    async def write_batch(self, records: list[Record], outbox: OutboxBatch | None = None) -> None:
        """Commit the records in one durable transaction (history, latest, messages), together with
        the forwarding outbox rows and counters they produced (`outbox`, see iotgate.forward)."""

    # forwarding (iotgate.forward; SQL shared by both backends in iotgate/forward/sql.py)
    @abc.abstractmethod
    async def forward_rules(self) -> list[ForwardRuleRow]:
        """Every rule with its targets (spec decoded), ordered by id and target position."""

    @abc.abstractmethod
    async def forward_save_rule(self, rule: ForwardRuleRow) -> ForwardRuleRow | None:
        """Insert (id 0) or update a rule and its targets in one transaction: targets with id 0 are
        added, others updated, missing ones deleted with their outbox rows and dead letters. Returns
        the stored rule with ids (None: no such rule). Conflict when the name is taken. Changes the
        `forward:rev` meta value."""

    @abc.abstractmethod
    async def forward_delete_rule(self, rule_id: int) -> bool:
        """Delete a rule, its targets, their outbox rows and dead letters; changes `forward:rev`."""

    @abc.abstractmethod
    async def forward_enqueue(self, batch: OutboxBatch) -> None:
        """Outbox rows not tied to a report (lifecycle events), with their counters, in one transaction."""

    @abc.abstractmethod
    async def forward_cycle(
        self, target_id: int, node_id: int, settle: Settlement | None, claim: int
    ) -> list[OutboxRow]:
        """One transaction: apply a delivery outcome, then claim up to `claim` of the oldest rows
        of the target that are not in flight (tries+1, in flight), returned in id order."""

    @abc.abstractmethod
    async def forward_pending(self, target_id: int, node_id: int) -> bool:
        """Whether the target has rows waiting (not in flight)."""

    @abc.abstractmethod
    async def forward_expire(self, target_id: int, node_id: int, created_before: int, now: int) -> int:
        """Move the target's waiting rows created at or before `created_before` to the dead letters."""

    @abc.abstractmethod
    async def forward_release(self, node_id: int) -> int:
        """On start: rows an earlier version left marked in flight wait again."""

    @abc.abstractmethod
    async def forward_claim_marks(self, node_id: int) -> dict[int, int]:
        """target_id -> highest outbox ID of the target's last claim on this node: on start, rows up
        to it may have been sent by the previous run (delivering them again counts as `redelivered`)."""

    @abc.abstractmethod
    async def forward_queue_sizes(self, node_id: int) -> dict[int, int]:
        """target_id -> outbox rows of this node."""

    @abc.abstractmethod
    async def forward_stats(self, rule_id: int | None = None) -> list[TargetStats]:
        """Counters of every target (of one rule), all read in one statement so that they add up."""

    @abc.abstractmethod
    async def forward_dead_letters(self, target_ids: list[int], after_id: int, limit: int) -> list[DeadLetterRow]:
        """Dead letters of the targets, oldest first, ids above `after_id`."""

    @abc.abstractmethod
    async def forward_replay(self, target_ids: list[int], ids: list[int] | None, node_id: int, now: int) -> int:
        """Move dead letters (all of the targets', or those ids) back into the outbox; count as replayed."""

    @abc.abstractmethod
    async def forward_purge_orphans(self) -> int:
        """Delete outbox rows and dead letters of targets that no longer exist."""

    # device data
    @abc.abstractmethod
    async def latest_values(self, device_id: int) -> dict[str, tuple[Any, int]]:
        """identifier -> (value, ts)."""

    @abc.abstractmethod
    async def property_history(
        self, device_id: int, identifier: str, since: int, until: int, limit: int
    ) -> list[tuple[int, Any]]:
        """(ts, value) newest first."""

    @abc.abstractmethod
    async def device_messages(
        self, device_id: int, kinds: list[str] | None, before_id: int | None, limit: int
    ) -> list[Record]:
        """Raw messages, events, rejected reports; newest first."""

    @abc.abstractmethod
    async def last_seen(self, since: int = 0) -> dict[int, int]:
        """device_id -> last report time (ms) for devices seen after `since`: rebuilds online status on
        start, and keeps it current where other processes ingest (workers, other nodes)."""

    async def claim_node_id(self, node_id: int) -> bool:
        """Reserve a message-ID node number for this process while it runs (shared databases: two live
        processes with one node ID would make the same message IDs). False: another process holds it.
        Default: nothing to reserve (a single-writer database)."""
        return True

    # housekeeping (storage/retention.py drives these in the background)
    async def maintain(self, now: int) -> None:  # noqa: B027 - optional hook
        """Periodic upkeep: prune the registry change log (nodes need only recent events: a starting node
        begins at the newest, and the newest row always stays so that sequence numbers never restart);
        create time partitions ahead of `now`. Default: nothing to do."""

    @abc.abstractmethod
    async def expire_step(self, cutoff_ms: int, max_rows: int) -> tuple[int, bool]:
        """Retention: remove a bounded amount of history older than cutoff_ms (event time) and of
        messages received before it; return (rows or partitions removed, whether more remains)."""
