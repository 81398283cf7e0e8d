"""NATS JetStream: publish with an ack from the stream (nats-py); the stream is created on request.

Every message carries `Nats-Msg-Id` = the delivery ID, so JetStream drops a redelivery that
arrives within the stream's duplicate window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from urllib.parse import unquote, urlsplit

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, metadata, tls_context
from iotgate.forward.targets import NatsTarget, Template

log = logging.getLogger("iotgate.forward.nats")

HEADER_NAMES = {
    "productKey": "Iotgate-Product-Key",
    "deviceName": "Iotgate-Device-Name",
    "deviceId": "Iotgate-Device-Id",
    "messageId": "Iotgate-Message-Id",
    "deliveryId": "Nats-Msg-Id",
    "source": "Iotgate-Source",
    "ruleId": "Iotgate-Rule-Id",
    "identifier": "Iotgate-Identifier",
    "topic": "Iotgate-Topic",
}


_SUBJECT_UNSAFE = str.maketrans(".*> \t", "_____")


def subject_token(value: str) -> str:
    """A value inside one subject token: dots (token separators), wildcards and spaces become _."""
    return value.translate(_SUBJECT_UNSAFE)


def stream_subjects(template: str) -> list[str]:
    """The subjects a stream needs to capture what a subject template produces."""
    tokens = template.split(".")
    return [".".join("*" if "{" in t else t for t in tokens)]


class NatsSink(Sink):
    spec: NatsTarget

    def __init__(self, spec: NatsTarget, target_id: int, rule_id: int, concurrency: int) -> None:
        super().__init__(spec, target_id, rule_id, concurrency)
        self.subject = Template(spec.subject, "subject")
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> JetStreamContext:
        if self._js is not None and self._nc is not None and not self._nc.is_closed:
            return self._js
        async with self._lock:
            if self._js is None or self._nc is None or self._nc.is_closed:
                s = self.spec
                url = urlsplit(s.url)

                async def on_error(exc: Exception) -> None:
                    log.debug("nats target %d: %s", self.target_id, exc)

                options: dict[str, object] = {
                    "connect_timeout": max(1, int(s.timeout_s)),
                    "allow_reconnect": True,
                    "max_reconnect_attempts": -1,
                    "reconnect_time_wait": 1,
                    "error_cb": on_error,
                    "name": f"iotgate-forward-{self.target_id}",
                }
                if s.user or url.username:
                    options["user"] = s.user or unquote(url.username or "")
                    options["password"] = s.password or unquote(url.password or "")
                if s.token:
                    options["token"] = s.token
                if url.scheme == "tls":
                    options["tls"] = tls_context(s.verify_tls, s.ca_file)
                server = f"{'tls' if url.scheme == 'tls' else 'nats'}://{url.hostname}:{url.port or 4222}"
                try:
                    nc = await asyncio.wait_for(nats.connect(server, **options), s.timeout_s + 1)
                except (nats.errors.Error, OSError, TimeoutError) as exc:
                    raise DeliveryError(f"cannot connect to {server}: {exc or type(exc).__name__}") from None
                js = nc.jetstream(timeout=s.timeout_s)
                if s.create_stream:
                    try:
                        await self._ensure_stream(js)
                    except (nats.errors.Error, nats.js.errors.Error, TimeoutError) as exc:
                        await nc.close()
                        raise DeliveryError(f"cannot create stream {s.stream}: {exc}") from None
                self._nc, self._js = nc, js
        assert self._js is not None
        return self._js

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        s = self.spec
        try:
            await js.stream_info(s.stream)
        except nats.js.errors.NotFoundError:
            subjects = s.stream_subjects or stream_subjects(s.subject)
            await js.add_stream(name=s.stream, subjects=subjects)
            log.info("created JetStream stream %s for %s", s.stream, ", ".join(subjects))

    async def send(self, row: OutboxRow) -> None:
        js = await self._connected()
        subject = self.subject.render(row, self.rule_id, subject_token)
        headers = {HEADER_NAMES[k]: v for k, v in metadata(row, self.rule_id).items() if v.isascii()}
        headers["Content-Type"] = row.content_type
        try:
            await js.publish(
                subject, row.body, timeout=self.spec.timeout_s, stream=self.spec.stream or None, headers=headers
            )
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError):
            raise DeliveryError(f"no JetStream stream captures {subject}") from None
        except nats.errors.TimeoutError:
            raise DeliveryError(f"no ack for {subject} within {self.spec.timeout_s:g} s", True) from None
        except nats.js.errors.APIError as exc:
            raise DeliveryError(f"JetStream refused {subject}: {exc}") from None
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            raise DeliveryError(f"publish to {subject} not sent: {type(exc).__name__}") from None
        except nats.errors.Error as exc:
            raise DeliveryError(f"publish to {subject}: {exc}", True) from None

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 5)
