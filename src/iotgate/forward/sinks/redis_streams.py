"""Redis Streams: XADD with MAXLEN (redis-py asyncio); one pipelined round trip per device batch.

Entry fields: `data` (the body) plus the names (productKey, deviceName, messageId, ...).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, metadata
from iotgate.forward.targets import RedisTarget, Template


class RedisSink(Sink):
    spec: RedisTarget

    def __init__(self, spec: RedisTarget, target_id: int, rule_id: int, concurrency: int) -> None:
        super().__init__(spec, target_id, rule_id, concurrency)
        self.stream = Template(spec.stream, "stream")
        self._redis: aioredis.Redis | None = None

    def _client(self) -> aioredis.Redis:
        if self._redis is None:
            s = self.spec
            self._redis = aioredis.Redis.from_url(
                s.url,
                socket_timeout=s.timeout_s,
                socket_connect_timeout=s.timeout_s,
                max_connections=self.concurrency,
            )
        return self._redis

    def _fields(self, row: OutboxRow) -> dict[Any, Any]:
        fields: dict[Any, Any] = {"data": row.body, "contentType": row.content_type}
        fields.update(metadata(row, self.rule_id))
        return fields

    async def send(self, row: OutboxRow) -> None:
        _, error = await self.send_ordered([row])
        if error is not None:
            raise error

    async def send_ordered(self, rows: list[OutboxRow]) -> tuple[int, DeliveryError | None]:
        s = self.spec
        maxlen = s.maxlen or None
        pipe = self._client().pipeline(transaction=False)
        for row in rows:
            pipe.xadd(
                self.stream.render(row, self.rule_id), self._fields(row), maxlen=maxlen, approximate=s.approximate
            )
        try:
            results = await pipe.execute(raise_on_error=False)
        except redis.exceptions.ConnectionError as exc:
            text = str(exc)
            return 0, DeliveryError(f"redis: {text}", uncertain="connecting" not in text)
        except (redis.exceptions.TimeoutError, TimeoutError) as exc:
            return 0, DeliveryError(f"redis: no reply within {s.timeout_s:g} s ({exc})", True)
        except redis.exceptions.RedisError as exc:
            return 0, DeliveryError(f"redis: {exc}", True)
        for i, result in enumerate(results):
            if isinstance(result, Exception):
                # the pipeline ran the later XADDs too: they go again after this one (possible duplicates)
                return i, DeliveryError(f"redis refused XADD: {result}", sent_after=len(rows) - i - 1)
        return len(rows), None

    async def close(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()
