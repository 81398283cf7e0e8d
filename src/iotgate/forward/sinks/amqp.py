"""AMQP 0-9-1 (RabbitMQ): publish to an exchange with publisher confirms (aio-pika).

Messages are persistent and published `mandatory` by default, so an unroutable message (no
queue bound) is a failed delivery rather than silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import aio_pika.abc
import aio_pika.exceptions
import aiormq.exceptions

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, delivery_id, metadata, tls_context
from iotgate.forward.targets import AmqpTarget, Template, mask_url


def routing_token(value: str) -> str:
    """A value inside one routing-key word: dots (word separators) become _."""
    return value.replace(".", "_")


class AmqpSink(Sink):
    spec: AmqpTarget

    def __init__(self, spec: AmqpTarget, target_id: int, rule_id: int, concurrency: int) -> None:
        super().__init__(spec, target_id, rule_id, concurrency)
        self.routing_key = Template(spec.routing_key, "routingKey")
        self.clean = routing_token if spec.exchange_type == "topic" else None
        self._conn: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> aio_pika.abc.AbstractExchange:
        if self._exchange is not None and self._conn is not None and not self._conn.is_closed:
            return self._exchange
        async with self._lock:
            if self._exchange is None or self._conn is None or self._conn.is_closed:
                await self.close()
                s = self.spec
                ssl_context = tls_context(s.verify_tls, s.ca_file) if s.url.startswith("amqps") else None
                try:
                    conn = await aio_pika.connect(s.url, timeout=s.timeout_s, ssl_context=ssl_context)
                except (aiormq.exceptions.AMQPError, OSError, TimeoutError) as exc:
                    raise DeliveryError(f"cannot connect to {mask_url(s.url)}: {exc or type(exc).__name__}") from None
                try:
                    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)
                    if not s.exchange:
                        exchange = channel.default_exchange
                    elif s.declare_exchange:
                        exchange = await channel.declare_exchange(
                            s.exchange, aio_pika.ExchangeType(s.exchange_type), durable=True, timeout=s.timeout_s
                        )
                    else:
                        exchange = await channel.get_exchange(s.exchange, ensure=True)
                except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, TimeoutError) as exc:
                    with contextlib.suppress(Exception):
                        await conn.close()
                    raise DeliveryError(f"exchange {s.exchange!r}: {exc or type(exc).__name__}") from None
                self._conn, self._exchange = conn, exchange
        assert self._exchange is not None
        return self._exchange

    async def send(self, row: OutboxRow) -> None:
        exchange = await self._connected()
        s = self.spec
        key = self.routing_key.render(row, self.rule_id, self.clean)
        message = aio_pika.Message(
            row.body,
            content_type=row.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT if s.persistent else aio_pika.DeliveryMode.NOT_PERSISTENT,
            message_id=delivery_id(row),
            headers=dict(metadata(row, self.rule_id)),
            app_id="iotgate",
        )
        try:
            await exchange.publish(message, routing_key=key, mandatory=s.mandatory, timeout=s.timeout_s)
        except aio_pika.exceptions.DeliveryError as exc:  # nack, or returned as unroutable
            raise DeliveryError(f"{key}: not accepted: {_reason(exc)}") from None
        except aiormq.exceptions.PublishError as exc:
            raise DeliveryError(f"{key}: returned as unroutable: {_reason(exc)}") from None
        except TimeoutError:
            await self.close()
            raise DeliveryError(f"{key}: no confirm within {s.timeout_s:g} s", True) from None
        except (aiormq.exceptions.AMQPError, aio_pika.exceptions.AMQPException, ConnectionError) as exc:
            await self.close()
            raise DeliveryError(f"{key}: connection lost while publishing: {exc or type(exc).__name__}", True) from None

    async def close(self) -> None:
        conn, self._conn, self._exchange = self._conn, None, None
        if conn is not None and not conn.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)


def _reason(exc: Exception) -> str:
    frame = getattr(exc, "frame", None)
    text = getattr(frame, "reply_text", None)
    return str(text) if text else (str(exc) or type(exc).__name__)
