"""MQTT: publish to a broker (aiomqtt), topic from a template, QoS 1 by default (await PUBACK).

With MQTT 5 the names travel as user properties as well (productKey, deviceName, messageId, ...).

A round is pipelined: every row is handed to the client at once (each device's rows in order, on
the one connection, so the broker receives them in order) and the round waits once for all the
PUBACKs, instead of one publish awaited after the other. The publish properties are encoded here
once per row rather than by paho's generic (and slow) property writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, metadata, tls_context
from iotgate.forward.targets import MqttTarget, Template

# aiomqtt warns "There are N pending publish calls" whenever more than 10 publishes await their
# PUBACK; delivering devices in parallel does exactly that on purpose
_client_log = logging.getLogger("iotgate.forward.mqtt.client")
_client_log.setLevel(logging.ERROR)

# messages in flight (sent, PUBACK outstanding) on the connection; paho queues the rest in order.
# Not more: paho walks its whole table of unconfirmed messages on every PUBACK
WINDOW = 128

YIELD_EVERY = 100  # publishes handed to the client between two turns of the event loop
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

# row states within a pipelined round
_UNSENT, _REFUSED, _PENDING, _ACKED = 0, 1, 2, 3


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def pack_properties(content_type: str, pairs: list[tuple[str, str]]) -> bytes:
    """MQTT 5 PUBLISH properties: Content Type (0x03) and User Properties (0x26), length-prefixed."""
    body = b"\x03" + _utf8(content_type) + b"".join(b"\x26" + _utf8(k) + _utf8(v) for k, v in pairs)
    return _varint(len(body)) + body


class PackedProperties(Properties):
    """Properties already encoded (`pack_properties`): paho only calls pack() on a PUBLISH's
    properties (and str() in debug logs). Skips Properties.__init__, whose setup is per instance."""

    packed: bytes

    def __init__(self, packed: bytes) -> None:  # no super().__init__(), on purpose
        object.__setattr__(self, "packetType", PacketTypes.PUBLISH)
        object.__setattr__(self, "packed", packed)

    def pack(self) -> bytes:
        return self.packed

    def __str__(self) -> str:
        return f"[{len(self.packed)} bytes of properties]"

    __repr__ = __str__


class _Round:
    """PUBACKs of one pipelined round: aiomqtt's on_publish callback calls `set()` on what it
    finds in its pending-publish table for the message ID (normally an asyncio.Event)."""

    __slots__ = ("done", "left", "sending", "sock", "state")

    def __init__(self, size: int, sock: socket.socket | None) -> None:
        self.state = [_UNSENT] * size
        self.left = 0
        self.done = asyncio.get_running_loop().create_future()
        self.sock = sock
        self.sending = True  # rows are still being handed to the client: not done yet


class _Ack:
    __slots__ = ("i", "round")

    def __init__(self, round_: _Round, i: int) -> None:
        self.round = round_
        self.i = i

    def set(self) -> None:
        r = self.round
        if r.sock is not None:
            # ACK what we just read at once: a broker without TCP_NODELAY (Mosquitto's default)
            # holds its next PUBACKs until then, and Linux delays that ACK by up to ~40 ms
            with contextlib.suppress(OSError):
                r.sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK or 0, 1)
        if r.state[self.i] == _PENDING:
            r.state[self.i] = _ACKED
            r.left -= 1
            if r.left == 0 and not r.sending and not r.done.done():
                r.done.set_result(None)


class ReadBuffer:
    """paho reads each packet with several recv() calls of a few bytes (command, length, rest): a
    system call each, for a 4-byte PUBACK. This serves them from one large read. aiomqtt's reader
    keeps calling paho while `pending()` says bytes are buffered (as it does for TLS sockets)."""

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self._data = b""
        self._at = 0

    def recv(self, size: int) -> bytes:
        if self._at >= len(self._data):
            data = self.raw.recv(65536)  # BlockingIOError when there is nothing: paho expects that
            if not data:
                return data
            self._data, self._at = data, 0
        chunk = self._data[self._at : self._at + size]
        self._at += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self._data) - self._at

    def __getattr__(self, name: str) -> Any:  # send, fileno, close, setblocking, ...
        return getattr(self.raw, name)


def _raw_socket(paho_client: Any) -> socket.socket | None:
    sock = paho_client.socket() if isinstance(paho_client, paho.Client) else None
    sock = sock.raw if isinstance(sock, ReadBuffer) else sock
    return sock if isinstance(sock, socket.socket) else None


def _tune(client: aiomqtt.Client, tls: bool) -> None:
    """TCP_NODELAY on the client's socket (paho does not set it): a pipelined round writes many
    small PUBLISH packets, and Nagle's algorithm would hold them back until the broker's delayed ACK
    (~40 ms on Linux) instead of sending them at once (measured: 100 publishes 8 -> 5.5 ms). And,
    without TLS, reads through a `ReadBuffer`."""
    paho_client: Any = getattr(client, "_client", None)
    sock = _raw_socket(paho_client)
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buffered = ReadBuffer(sock)
    if not tls and getattr(paho_client, "_sock", None) is sock:  # TLS sockets buffer already
        paho_client._sock = buffered


def outcomes(
    devices: list[list[OutboxRow]], states: list[int], errors: dict[int, str], unconfirmed: str, lost: str
) -> list[tuple[int, DeliveryError | None]]:
    """Per device: how many rows arrived in order, and the error that stopped it. Rows sent after
    the failed one (pipelined) are its `sent_after`: delivered again, counted as possible duplicates."""
    out: list[tuple[int, DeliveryError | None]] = []
    at = 0
    for group in devices:
        mine = states[at : at + len(group)]
        done = 0
        while done < len(mine) and mine[done] == _ACKED:
            done += 1
        if done == len(mine):
            out.append((done, None))
        else:
            sent_after = 0
            for st in mine[done + 1 :]:
                if st not in (_PENDING, _ACKED):
                    break
                sent_after += 1
            if mine[done] == _PENDING:  # sent: it may have arrived
                error = DeliveryError(f"publish unconfirmed: {unconfirmed}", True, sent_after)
            elif mine[done] == _REFUSED:
                error = DeliveryError(errors[at + done], False, sent_after)
            else:
                error = DeliveryError(f"not sent: {lost or 'an earlier message failed'}", False, sent_after)
            out.append((done, error))
        at += len(group)
    return out


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
                    max_inflight_messages=max(WINDOW, self.concurrency),
                    logger=_client_log,
                )
                try:
                    await asyncio.wait_for(client.__aenter__(), self.spec.timeout_s)
                except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                    raise DeliveryError(f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}") from None
                _tune(client, self.tls)
                self._client = client
        assert self._client is not None
        return self._client

    async def _drop(self, client: aiomqtt.Client) -> None:
        if self._client is client:
            self._client = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.__aexit__(None, None, None), 5)

    def _properties(self, row: OutboxRow) -> Properties | None:
        if not (self.v5 and self.spec.user_properties):
            return None
        return PackedProperties(pack_properties(row.content_type, list(metadata(row, self.rule_id).items())))

    async def send(self, row: OutboxRow) -> None:
        client = await self._connected()
        topic = self.topic.render(row, self.rule_id)
        try:
            await client.publish(
                topic,
                row.body,
                qos=self.spec.qos,
                retain=self.spec.retain,
                properties=self._properties(row),
                timeout=self.spec.timeout_s,
            )
        except aiomqtt.MqttCodeError as exc:  # refused before sending (e.g. not connected)
            await self._drop(client)
            raise DeliveryError(f"publish to {topic} refused: {exc}") from None
        except aiomqtt.MqttError as exc:  # timed out waiting for PUBACK: may have arrived
            await self._drop(client)
            raise DeliveryError(f"publish to {topic} unconfirmed: {exc}", True) from None

    async def send_round(self, devices: list[list[OutboxRow]]) -> list[tuple[int, DeliveryError | None]]:
        try:
            client = await self._connected()
        except DeliveryError as exc:
            return [(0, exc)] * len(devices)
        paho_client: Any = getattr(client, "_client", None)
        pending: Any = getattr(client, "_pending_publishes", None)
        if not isinstance(paho_client, paho.Client) or not isinstance(pending, dict):
            return await super().send_round(devices)  # an aiomqtt without the internals used below
        return await self._pipelined(client, paho_client, pending, devices)

    async def _pipelined(
        self, client: aiomqtt.Client, paho_client: paho.Client, pending: dict[int, Any], devices: list[list[OutboxRow]]
    ) -> list[tuple[int, DeliveryError | None]]:
        s = self.spec
        state = _Round(sum(len(g) for g in devices), _raw_socket(paho_client) if _QUICKACK is not None else None)
        states = state.state
        errors: dict[int, str] = {}  # row index -> why it was refused
        lost = ""  # the client refused a publish (not connected): nothing more goes out this round
        mids: list[int] = []
        start = 0
        next_pause = YIELD_EVERY
        try:
            for group in devices:  # each device's rows in order, on the one connection
                if len(mids) >= next_pause:  # let ingest's callbacks run between chunks of a big round
                    next_pause += YIELD_EVERY
                    await asyncio.sleep(0)
                for i, row in enumerate(group, start):
                    topic = self.topic.render(row, self.rule_id)
                    try:
                        info = paho_client.publish(topic, row.body, s.qos, s.retain, self._properties(row))
                    except ValueError as exc:  # this message cannot go out (a topic paho refuses)
                        states[i], errors[i] = _REFUSED, f"publish to {topic} refused: {exc}"
                        break  # the device's later rows wait behind it
                    if info.rc != paho.MQTT_ERR_SUCCESS:
                        states[i] = _REFUSED
                        errors[i] = lost = f"publish to {topic} refused: {paho.error_string(info.rc)}"
                        break
                    if info.is_published():  # on_publish ran before publish() returned
                        states[i] = _ACKED
                        continue
                    states[i] = _PENDING
                    state.left += 1
                    pending[info.mid] = _Ack(state, i)
                    mids.append(info.mid)
                start += len(group)
                if lost:
                    break
            state.sending = False
            unconfirmed = ""
            if state.left:
                gone = getattr(client, "_disconnected", None)
                waits: set[asyncio.Future[Any]] = {state.done}
                if isinstance(gone, asyncio.Future):
                    waits.add(gone)
                await asyncio.wait(waits, timeout=s.timeout_s, return_when=asyncio.FIRST_COMPLETED)
                if state.left:
                    dropped = isinstance(gone, asyncio.Future) and gone.done()
                    unconfirmed = "connection lost" if dropped else f"no PUBACK within {s.timeout_s:g} s"
        finally:
            for mid in mids:
                if isinstance(pending.get(mid), _Ack):
                    del pending[mid]
        if lost or state.left:
            await self._drop(client)
        return outcomes(devices, states, errors, unconfirmed, lost)

    async def close(self) -> None:
        if self._client is not None:
            await self._drop(self._client)
