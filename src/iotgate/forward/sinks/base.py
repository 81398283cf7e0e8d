"""The one interface every target implements.

A sink delivers outbox rows to one external system. `send` delivers one row and returns only
when the system has accepted it (HTTP 2xx, MQTT PUBACK, JetStream ack, publisher confirm, XADD
reply). It raises `DeliveryError`; `uncertain=True` says the message may have arrived anyway
(a timeout after sending, a connection lost mid-request), so a retry may duplicate it.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import ssl
from typing import Any

from iotgate.forward.rows import OutboxRow

log = logging.getLogger("iotgate.forward")


class DeliveryError(Exception):
    """`sent_after`: of the device's rows after the failed one, how many were sent anyway (a sink
    that pipelines); they are delivered again after it, and counted as possible duplicates."""

    def __init__(self, message: str, uncertain: bool = False, sent_after: int = 0) -> None:
        super().__init__(message)
        self.uncertain = uncertain
        self.sent_after = sent_after


def delivery_id(row: OutboxRow) -> str:
    """Unique per (message, target) and stable across retries: receivers can drop duplicates by it."""
    return f"{row.message_id}-{row.target_id}"


def metadata(row: OutboxRow, rule_id: int) -> dict[str, str]:
    """Names every forwarded message carries besides its body (headers, properties, fields)."""
    meta = {
        "productKey": row.product_key,
        "deviceName": row.device_name,
        "deviceId": f"{row.product_key}_{row.device_name}",
        "messageId": str(row.message_id),
        "deliveryId": delivery_id(row),
        "source": row.source,
        "ruleId": str(rule_id),
    }
    if row.identifier and row.identifier != row.source:
        meta["identifier"] = row.identifier
    if row.topic:
        meta["topic"] = row.topic
    return meta


def tls_context(verify: bool, ca_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Sink(abc.ABC):
    def __init__(self, spec: Any, target_id: int, rule_id: int, concurrency: int) -> None:
        self.spec = spec
        self.target_id = target_id
        self.rule_id = rule_id
        self.concurrency = concurrency

    @abc.abstractmethod
    async def send(self, row: OutboxRow) -> None:
        """Deliver one row (connecting first when needed); DeliveryError when it fails."""

    async def send_round(self, devices: list[list[OutboxRow]]) -> list[tuple[int, DeliveryError | None]]:
        """Deliver one round: for each device's rows (each list in order), how many arrived and the
        error that stopped that device. Default: devices in parallel (up to `concurrency`), each in
        order; a sink that can batch across devices (webhook `batch`) overrides this."""
        gate = asyncio.Semaphore(self.concurrency)

        async def lane(rows: list[OutboxRow]) -> tuple[int, DeliveryError | None]:
            async with gate:
                try:
                    return await self.send_ordered(rows)
                except Exception as exc:  # a sink bug must not lose the round's bookkeeping
                    log.exception("%s: sink failed unexpectedly", self.describe())
                    return 0, DeliveryError(f"{type(exc).__name__}: {exc}", uncertain=True)

        return list(await asyncio.gather(*(lane(rows) for rows in devices)))

    async def send_ordered(self, rows: list[OutboxRow]) -> tuple[int, DeliveryError | None]:
        """Deliver rows of one device in order: how many arrived, and the error that stopped it.

        Sinks that can pipeline (Redis) override this; the order must hold either way."""
        for i, row in enumerate(rows):
            try:
                await self.send(row)
            except DeliveryError as exc:
                return i, exc
        return len(rows), None

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the sink may be used again afterwards (it reconnects)."""

    def describe(self) -> str:
        return f"{type(self).__name__} of target {self.target_id}"
