"""Rows the forwarding engine exchanges with storage (a leaf module: no iotgate imports).

The outbox holds one row per (message, target): each target makes progress on its own, and a
row is deleted in the same transaction that counts it as delivered or moves it to the
dead-letter store, so the counters of a target always add up:

    matched = delivered + deadLettered + inFlight + queued + filteredOut
"""

from __future__ import annotations

from typing import Any

import msgspec


class OutboxRow(msgspec.Struct, kw_only=True):
    """One message waiting for one target. Read back rows also carry id and attempt state."""

    target_id: int
    device_id: int
    message_id: int
    product_key: str
    device_name: str
    source: str  # property, event, message, lifecycle
    identifier: str  # event identifier, lifecycle event name, else the source
    topic: str  # the device topic (or path) the message came on; "" for lifecycle
    content_type: str  # of body
    body: bytes
    created_at: int  # ms
    node_id: int = 0  # the node that delivers it
    id: int = 0
    tries: int = 0  # attempts that did not end delivered (failed or unsure); a crash's is in the claim mark
    failures: int = 0  # attempts known not to have arrived
    first_failed_at: int = 0
    last_error: str = ""

    @property
    def maybe_delivered_before(self) -> bool:
        """An earlier attempt may have arrived (a timeout, or sent behind a failure): delivering again
        may duplicate. Attempts cut off by a crash are known from the target's claim mark instead."""
        return self.tries > self.failures


class TargetCount(msgspec.Struct, array_like=True):
    target_id: int
    matched: int
    filtered: int


class OutboxBatch(msgspec.Struct, kw_only=True):
    """Outbox rows and counter increments, committed with the reports that produced them."""

    rows: list[OutboxRow]
    counts: list[TargetCount]


class ForwardTargetRow(msgspec.Struct, kw_only=True):
    id: int = 0
    rule_id: int = 0
    position: int = 0
    spec: dict[str, Any]  # {"type": ..., options}; secrets sealed


class ForwardRuleRow(msgspec.Struct, kw_only=True):
    id: int = 0
    name: str
    source: str
    product_key: str = ""
    where: str = ""
    format: str = "iotgate"
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0
    targets: list[ForwardTargetRow] = msgspec.field(default_factory=list)


class Settlement(msgspec.Struct, kw_only=True):
    """The outcome of delivering claimed rows, applied in one transaction."""

    now: int
    delivered: list[int] = msgspec.field(default_factory=list)
    redelivered: int = 0  # of delivered: an earlier attempt may also have arrived
    failed: list[tuple[int, int, str]] = msgspec.field(default_factory=list)  # (id, known_failure 0/1, error)
    unsure: list[int] = msgspec.field(default_factory=list)  # sent after a failed one (pipelined): send again
    dead: list[int] = msgspec.field(default_factory=list)  # of failed: move to the dead-letter store
    error: str = ""  # the target's latest error ("" when none in this round)


class TargetStats(msgspec.Struct, kw_only=True):
    target_id: int
    rule_id: int
    matched: int = 0
    filtered: int = 0
    delivered: int = 0
    redelivered: int = 0
    retries: int = 0
    replayed: int = 0
    outbox: int = 0  # rows in the outbox (in flight + queued)
    inflight: int = 0  # of outbox: being delivered by this process (known in memory, not stored)
    dead: int = 0
    last_error: str = ""
    last_error_at: int = 0
    last_delivered_at: int = 0


class DeadLetterRow(msgspec.Struct, kw_only=True):
    id: int
    target_id: int
    device_id: int
    message_id: int
    product_key: str
    device_name: str
    source: str
    identifier: str
    topic: str
    content_type: str
    body: bytes
    created_at: int
    dead_at: int
    tries: int
    failures: int
    last_error: str
