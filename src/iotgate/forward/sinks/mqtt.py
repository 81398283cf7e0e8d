"""MQTT: publish to a broker (aiomqtt), topic from a template, QoS 1 by default (await PUBACK).

With MQTT 5 the names travel as user properties as well (productKey, deviceName, messageId, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from urllib.parse import unquote, urlsplit

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, metadata, tls_context
from iotgate.forward.targets import MqttTarget, Template

# aiomqtt warns "There are N pending publish calls" whenever more than 10 publishes await their
# PUBACK; delivering devices in parallel does exactly that on purpose
_client_log = logging.getLogger("iotgate.forward.mqtt.client")
_client_log.setLevel(logging.ERROR)


class MqttSink(Sink):
    spec: MqttTarget

    def __init__(self, spec: MqttTarget, target_id: int, rule_id: int, concurrency: int) -> None:
        super().__init__(spec, target_id, rule_id, concurrency)
        self.topic = Template(spec.topic, "topic")
        url = urlsplit(spec.url)
        self.host = url.hostname or "127.0.0.1"
        self.tls = url.scheme == "mqtts"
        self.port = url.port or (8883 if self.tls else 1883)
        self.username = spec.username or (unquote(url.username) if url.username else None)
        self.password = spec.password or (unquote(url.password) if url.password else None)
        self.v5 = spec.protocol == "5"
        self.client_id = spec.client_id or f"iotgate-fwd-{target_id}-{secrets.token_hex(4)}"
        self._client: aiomqtt.Client | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> aiomqtt.Client:
        client = self._client
        if client is not None:
            gone = getattr(client, "_disconnected", None)  # aiomqtt does not reconnect by itself
            if not (isinstance(gone, asyncio.Future) and gone.done()):
                return client
            await self._drop(client)
        async with self._lock:
            if self._client is None:
                s = self.spec
                client = aiomqtt.Client(
                    self.host,
                    self.port,
                    username=self.username,
                    password=self.password,
                    identifier=self.client_id,
                    protocol=aiomqtt.ProtocolVersion.V5 if self.v5 else aiomqtt.ProtocolVersion.V311,
                    tls_context=tls_context(s.verify_tls, s.ca_file) if self.tls else None,
                    timeout=s.timeout_s,
                    keepalive=30,
                    max_inflight_messages=max(20, self.concurrency),
                    logger=_client_log,
                )
                try:
                    await asyncio.wait_for(client.__aenter__(), self.spec.timeout_s)
                except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                    raise DeliveryError(f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}") from None
                self._client = client
        assert self._client is not None
        return self._client

    async def _drop(self, client: aiomqtt.Client) -> None:
        if self._client is client:
            self._client = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5)

    async def send(self, row: OutboxRow) -> None:
        client = await self._connected()
        topic = self.topic.render(row, self.rule_id)
        props = None
        if self.v5 and self.spec.user_properties:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = list(metadata(row, self.rule_id).items())
            props.ContentType = row.content_type
        try:
            await client.publish(
                topic,
                row.body,
                qos=self.spec.qos,
                retain=self.spec.retain,
                properties=props,
                timeout=self.spec.timeout_s,
            )
        except aiomqtt.MqttCodeError as exc:  # refused before sending (e.g. not connected)
            await self._drop(client)
            raise DeliveryError(f"publish to {topic} refused: {exc}") from None
        except aiomqtt.MqttError as exc:  # timed out waiting for PUBACK: may have arrived
            await self._drop(client)
            raise DeliveryError(f"publish to {topic} unconfirmed: {exc}", True) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._drop(self._client)
