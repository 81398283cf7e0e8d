"""MQTT: publish to a broker (aiomqtt), topic from a template, QoS 1 by default (await PUBACK).

With MQTT 5 the names travel as user properties as well (productKey, deviceName, messageId, ...).

A round is pipelined: the rows are handed to the client at once (each device's rows in order, on
the one connection, so the broker receives them in order; at most WINDOW unconfirmed) and the
round waits once for all the PUBACKs, instead of one publish awaited after the other. A PUBACK with
a failure reason code (MQTT 5) fails its row. Per message, the CPU goes mostly to paho; what is
done here to keep it low (measured with bench/mqtt_sink.py):
- topic and properties prepared once per device and kind of message, encoded by us rather than by
  paho's generic (and slow) property writer;
- without TLS, `BufferedSocket`: one recv() for many PUBACKs, one send() for all the PUBLISH
  packets paho writes in one pass, TCP_QUICKACK once per read;
- short PUBACKs handled without paho's decoding (`_Conn`), the in-flight window kept by the round
  instead of by paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, delivery_id, metadata, tls_context
from iotgate.forward.targets import MqttTarget, Template

# aiomqtt warns "There are N pending publish calls" whenever more than 10 publishes await their
# PUBACK; delivering devices in parallel does exactly that on purpose
_client_log = logging.getLogger("iotgate.forward.mqtt.client")
_client_log.setLevel(logging.ERROR)

# messages of pipelined rounds in flight (sent, PUBACK outstanding) on the connection. Kept by us,
# not by paho's max_inflight_messages (unlimited here): paho walks its whole table of unconfirmed
# messages on every PUBACK to find a queued one to send. A round that has WINDOW in flight waits
# until half of them are confirmed, then hands over the next ones.
WINDOW = 128

YIELD_EVERY = 100  # publishes handed to the client between two turns of the event loop
_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only

# row states within a pipelined round: not handed to the client, refused by the client, sent
# (PUBACK outstanding), confirmed, refused by the broker (PUBACK with a failure reason code)
_UNSENT, _REFUSED, _PENDING, _ACKED, _REJECTED = 0, 1, 2, 3, 4

# what paho passes on_publish for a PUBACK of just a message ID; nothing keeps or changes them
_PUBACK_OK = ReasonCode(PacketTypes.PUBACK)
_NO_PROPERTIES = Properties(PacketTypes.PUBACK)
_PUBACK_REASONS = {
    code: ReasonCode(PacketTypes.PUBACK, identifier=code)
    for code, names in ReasonCode.names.items()
    if any(PacketTypes.PUBACK in types for types in names.values())
}


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


def _pairs(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(b"\x26" + _utf8(k) + _utf8(v) for k, v in pairs)


def pack_properties(content_type: str, pairs: list[tuple[str, str]]) -> bytes:
    """MQTT 5 PUBLISH properties: Content Type (0x03) and User Properties (0x26), length-prefixed."""
    body = b"\x03" + _utf8(content_type) + _pairs(pairs)
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
    """The rows of one pipelined round and their states; `ack()` is called from paho's on_publish
    (through `_Conn`) with the PUBACK's reason code."""

    __slots__ = ("done", "errors", "left", "sending", "state")

    def __init__(self, size: int) -> None:
        self.state = [_UNSENT] * size
        self.errors: dict[int, str] = {}  # row index -> why it was refused
        self.left = 0
        self.done = asyncio.get_running_loop().create_future()
        self.sending = True  # rows are still being handed to the client: not done yet

    def ack(self, i: int, topic: str, reason: ReasonCode) -> None:
        if self.state[i] != _PENDING:
            return
        if reason.is_failure:  # MQTT 5: the broker did not take it (not authorized, quota, ...)
            self.state[i] = _REJECTED
            self.errors[i] = f"publish to {topic} refused by the broker: {reason} ({reason.value:#04x})"
        else:
            self.state[i] = _ACKED
        self.left -= 1
        if self.left == 0 and not self.sending and not self.done.done():
            self.done.set_result(None)


class BufferedSocket:
    """A plain TCP socket as paho sees it, with fewer system calls.

    Reads: paho reads each packet with several recv() calls of a few bytes (command, length, rest):
    a system call each, for a 4-byte PUBACK. They are served from one large read. aiomqtt's reader
    keeps calling paho while `pending()` says bytes are buffered (as it does for TLS sockets). After
    each read, TCP_QUICKACK: ACK what was just read at once, because a broker without TCP_NODELAY
    (Mosquitto's default) holds its next PUBACKs until then, and Linux delays that ACK by up to
    ~40 ms.

    Writes: paho sends each queued packet with its own send(), and on loopback every send() also
    runs the broker's TCP receive path. `send()` only appends (up to `limit` bytes waiting, then it
    says "would block" and paho keeps the packet); `flush()`, called once after paho's loop_write
    has handed over all its packets (`_Conn`), writes them with one send(), keeping what the kernel
    did not take for the next time the socket is writable.
    """

    limit = 256 * 1024

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self.data = b""
        self.at = 0
        self.out = bytearray()  # written by paho, not yet sent
        # one read per pass of the reader (`_Conn._loop_read`): paho reads until "would block",
        # which costs a system call more each time. epoll reports what is left on the next turn
        self.may_read = True

    def recv(self, size: int) -> bytes:
        if self.at >= len(self.data):
            if not self.may_read:
                raise BlockingIOError
            self.may_read = False
            data = self.raw.recv(65536)  # BlockingIOError when there is nothing: paho expects that
            if not data:
                return data
            if _QUICKACK is not None:
                with contextlib.suppress(OSError):
                    self.raw.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            self.data, self.at = data, 0
        chunk = self.data[self.at : self.at + size]
        self.at += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self.data) - self.at

    def send(self, data: bytes | bytearray) -> int:
        if len(self.out) >= self.limit and not self.flush():
            raise BlockingIOError  # paho keeps the packet and waits until the socket is writable
        self.out += data
        return len(data)

    def flush(self) -> bool:
        """Send what is buffered; True when all of it went. OSError when the connection is broken."""
        if self.out:
            try:
                sent = self.raw.send(self.out)
            except BlockingIOError:
                return False
            del self.out[:sent]
        return not self.out

    def close(self) -> None:
        with contextlib.suppress(OSError):  # paho's last packet (DISCONNECT), if it goes at once
            self.flush()
        self.raw.close()

    def __getattr__(self, name: str) -> Any:  # fileno, setblocking, setsockopt, ...
        return getattr(self.raw, name)


class _Conn:
    """One connection: the aiomqtt client, its paho client, and the hooks installed on the paho
    client (instance attributes, so other clients are unaffected)."""

    def __init__(self, client: aiomqtt.Client, tls: bool) -> None:
        self.client = client
        self.paho: Any = getattr(client, "_client", None)
        pending = getattr(client, "_pending_publishes", None)
        # the internals used below: else publish one by one through aiomqtt's API
        self.pipelines = isinstance(self.paho, paho.Client) and isinstance(pending, dict)
        # message ID -> (round, row index, topic): the pipelined messages in flight
        self.acks: dict[int, tuple[_Round, int, str]] = {}
        self.space: asyncio.Future[None] | None = None  # a round waits for the window to drain
        self.ack_sock: socket.socket | None = None  # TLS: TCP_QUICKACK per PUBACK
        # the longest PUBACK without properties
        self.short_puback = 3 if getattr(self.paho, "_protocol", None) == paho.MQTTv5 else 2
        if not self.pipelines:
            return
        p: Any = self.paho
        self._aiomqtt_on_publish = p.on_publish
        p.on_publish = self._on_publish
        self._paho_puback = p._handle_pubackcomp
        p._handle_pubackcomp = self._handle_pubackcomp
        sock = p.socket()
        if not isinstance(sock, socket.socket):
            return
        with contextlib.suppress(OSError):
            # paho does not set it: a pipelined round writes many small PUBLISH packets, and Nagle's
            # algorithm would hold them back until the broker's delayed ACK (~40 ms on Linux)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls:  # TLS sockets buffer reads already; writes stay one send() per packet
            self.ack_sock = sock if _QUICKACK is not None else None
            return
        self.buffered = BufferedSocket(sock)
        p._sock = self.buffered
        self._paho_loop_write = p.loop_write
        p.loop_write = self._loop_write
        p.want_write = self._want_write
        self._paho_loop_read = p.loop_read
        p.loop_read = self._loop_read
        self._paho_packet_read = p._packet_read
        p._packet_read = self._packet_read

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        entry = self.acks.pop(mid, None)
        if entry is None:  # a publish made through aiomqtt (`MqttSink.send`)
            self._aiomqtt_on_publish(client, userdata, mid, reason, properties)
            return
        if self.ack_sock is not None:
            with contextlib.suppress(OSError):
                self.ack_sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK or 0, 1)
        entry[0].ack(entry[1], entry[2], reason)
        if self.space is not None and len(self.acks) <= WINDOW // 2 and not self.space.done():
            self.space.set_result(None)

    async def window(self, timeout: float) -> bool:
        """Wait until at most half the window is in flight; False if the connection is lost or
        that takes longer than `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while len(self.acks) > WINDOW // 2:
            gone = getattr(self.client, "_disconnected", None)
            left = deadline - time.monotonic()
            if left <= 0 or (isinstance(gone, asyncio.Future) and gone.done()):
                return False
            if self.space is None or self.space.done():
                self.space = asyncio.get_running_loop().create_future()
            waits: set[asyncio.Future[Any]] = {self.space}
            if isinstance(gone, asyncio.Future):
                waits.add(gone)
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        return True

    def _handle_pubackcomp(self, cmd: Any) -> MQTTErrorCode:
        """paho's PUBACK handling, without decoding the short forms (message ID, and with MQTT 5 a
        reason code byte: Mosquitto's "no matching subscribers") into new ReasonCode and Properties
        objects: paho copies a table of all reason names into every ReasonCode. PUBACKs with
        properties, and unknown reason codes (paho rejects those), go to paho as they are."""
        p: Any = self.paho
        packet = p._in_packet["packet"]
        size = len(packet)
        if cmd != "PUBACK" or not 2 <= size <= self.short_puback:
            return self._paho_puback(cmd)
        reason = _PUBACK_OK if size == 2 else _PUBACK_REASONS.get(packet[2])
        if reason is None:
            return self._paho_puback(cmd)
        mid = packet[0] << 8 | packet[1]
        with p._out_message_mutex:
            if mid in p._out_messages:
                return p._do_on_publish(mid, reason, _NO_PROPERTIES)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        self.buffered.may_read = True
        rc: MQTTErrorCode = self._paho_loop_read(max_packets)
        return rc

    def _packet_read(self) -> MQTTErrorCode:
        """A whole short PUBACK (as in `_handle_pubackcomp`) straight from the read buffer, with
        paho's bookkeeping (time of the last bytes received, on_publish, its table of unconfirmed
        messages); anything else, or a PUBACK split between two reads, goes through paho."""
        p: Any = self.paho
        buf = self.buffered
        data, at = buf.data, buf.at
        if p._in_packet["command"] == 0 and len(data) - at >= 4 and data[at] == 0x40:
            size = data[at + 1]
            if size == 2:
                reason: ReasonCode | None = _PUBACK_OK
            elif size == 3 == self.short_puback and len(data) - at >= 5:
                reason = _PUBACK_REASONS.get(data[at + 4])
            else:
                reason = None
            if reason is not None:
                buf.at = at + 2 + size
                mid = data[at + 2] << 8 | data[at + 3]
                with p._msgtime_mutex:
                    p._last_bytes_received = paho.time_func()
                with p._out_message_mutex:
                    if mid in p._out_messages:
                        rc: MQTTErrorCode = p._do_on_publish(mid, reason, _NO_PROPERTIES)
                        return rc
                return MQTTErrorCode.MQTT_ERR_SUCCESS
        rc = self._paho_packet_read()
        return rc

    def _want_write(self) -> bool:
        return bool(self.paho._out_packet) or bool(self.buffered.out)

    def _loop_write(self) -> MQTTErrorCode:
        """paho's loop_write (its queued packets into the buffer), then one send() for all of them.
        The writer stays registered while bytes are left (`_want_write`)."""
        p: Any = self.paho
        rc: MQTTErrorCode = self._paho_loop_write()
        if rc or p._sock is not self.buffered:  # failed or closed (close() flushed what it could)
            return rc
        try:
            done = self.buffered.flush()
        except OSError:  # as paho handles a failed send()
            return p._loop_rc_handle(MQTTErrorCode.MQTT_ERR_CONN_LOST)
        if done and not p._out_packet:
            p._call_socket_unregister_write()
        return MQTTErrorCode.MQTT_ERR_SUCCESS


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
                if st not in (_PENDING, _ACKED, _REJECTED):
                    break
                sent_after += 1
            if mine[done] == _PENDING:  # sent: it may have arrived
                error = DeliveryError(f"publish unconfirmed: {unconfirmed}", True, sent_after)
            elif mine[done] in (_REFUSED, _REJECTED):
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
        self._conn: _Conn | None = None
        self._lock = asyncio.Lock()
        # per device and kind of message: its topic and its properties but the message's own IDs
        self._shapes: dict[tuple[str, ...], tuple[str, bytes, bytes]] = {}

    async def _connected(self) -> _Conn:
        conn = self._conn
        if conn is not None:
            gone = getattr(conn.client, "_disconnected", None)  # aiomqtt does not reconnect by itself
            if not (isinstance(gone, asyncio.Future) and gone.done()):
                return conn
            await self._drop(conn)
        async with self._lock:
            if self._conn is None:
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
                    max_inflight_messages=0,  # unlimited: the pipelined rounds keep to WINDOW
                    logger=_client_log,
                )
                try:
                    await asyncio.wait_for(client.__aenter__(), self.spec.timeout_s)
                except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                    raise DeliveryError(f"cannot connect to {self.host}:{self.port}: {exc or 'timeout'}") from None
                self._conn = _Conn(client, self.tls)
        assert self._conn is not None
        return self._conn

    async def _drop(self, conn: _Conn) -> None:
        if self._conn is conn:
            self._conn = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.client.__aexit__(None, None, None), 5)
            gone = getattr(conn.client, "_disconnected", None)
            if isinstance(gone, asyncio.Future) and gone.done() and not gone.cancelled():
                # a lost connection: the rounds' outcomes say so; unretrieved, asyncio logs it again
                gone.exception()

    def _shape(self, row: OutboxRow) -> tuple[str, bytes, bytes]:
        """The row's topic, and its encoded properties (`pack_properties`) before and after the two
        that name the message itself (messageId, deliveryId): the same for all messages of a device
        and kind, so computed once. A test checks the result against `metadata()`."""
        key = (row.product_key, row.device_name, row.source, row.identifier, row.topic, row.content_type)
        shape = self._shapes.get(key)
        if shape is None:
            if len(self._shapes) >= 10_000:  # bounded: devices come and go
                self._shapes.clear()
            head = tail = b""
            if self.v5 and self.spec.user_properties:
                pairs = list(metadata(row, self.rule_id).items())
                at = [name for name, _ in pairs].index("messageId")
                assert pairs[at + 1][0] == "deliveryId"
                head = b"\x03" + _utf8(row.content_type) + _pairs(pairs[:at])
                tail = _pairs(pairs[at + 2 :])
            shape = self._shapes[key] = (self.topic.render(row, self.rule_id), head, tail)
        return shape

    @staticmethod
    def _properties(row: OutboxRow, head: bytes, tail: bytes) -> Properties | None:
        if not head:
            return None
        ids = (
            b"\x26\x00\x09messageId" + _utf8(str(row.message_id)) + b"\x26\x00\x0adeliveryId" + _utf8(delivery_id(row))
        )
        return PackedProperties(_varint(len(head) + len(ids) + len(tail)) + head + ids + tail)

    async def send(self, row: OutboxRow) -> None:
        conn = await self._connected()
        topic, head, tail = self._shape(row)
        try:
            await conn.client.publish(
                topic,
                row.body,
                qos=self.spec.qos,
                retain=self.spec.retain,
                properties=self._properties(row, head, tail),
                timeout=self.spec.timeout_s,
            )
        except aiomqtt.MqttCodeError as exc:  # refused before sending (e.g. not connected)
            await self._drop(conn)
            raise DeliveryError(f"publish to {topic} refused: {exc}") from None
        except aiomqtt.MqttError as exc:  # timed out waiting for PUBACK: may have arrived
            await self._drop(conn)
            raise DeliveryError(f"publish to {topic} unconfirmed: {exc}", True) from None

    async def send_round(self, devices: list[list[OutboxRow]]) -> list[tuple[int, DeliveryError | None]]:
        try:
            conn = await self._connected()
        except DeliveryError as exc:
            return [(0, exc)] * len(devices)
        if not conn.pipelines:
            return await super().send_round(devices)  # an aiomqtt without the internals used here
        return await self._pipelined(conn, devices)

    async def _pipelined(self, conn: _Conn, devices: list[list[OutboxRow]]) -> list[tuple[int, DeliveryError | None]]:
        s = self.spec
        publish = conn.paho.publish
        acks = conn.acks
        state = _Round(sum(len(g) for g in devices))
        states, errors = state.state, state.errors
        lost = ""  # the client refused a publish (not connected): nothing more goes out this round
        mids: list[int] = []
        start = 0
        next_pause = YIELD_EVERY
        stalled = False  # the window did not drain (no PUBACKs, connection lost): the rest is not sent
        try:
            for group in devices:  # each device's rows in order, on the one connection
                if len(mids) >= next_pause:  # let ingest's callbacks run between chunks of a big round
                    next_pause += YIELD_EVERY
                    await asyncio.sleep(0)
                for i, row in enumerate(group, start):
                    if len(acks) >= WINDOW and not await conn.window(s.timeout_s):
                        stalled = True
                        break
                    topic, head, tail = self._shape(row)
                    try:
                        info = publish(topic, row.body, s.qos, s.retain, self._properties(row, head, tail))
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
                    acks[info.mid] = (state, i, topic)
                    mids.append(info.mid)
                start += len(group)
                if lost or stalled:
                    break
            state.sending = False
            unconfirmed = ""
            gone = getattr(conn.client, "_disconnected", None)
            if state.left and not stalled:
                waits: set[asyncio.Future[Any]] = {state.done}
                if isinstance(gone, asyncio.Future):
                    waits.add(gone)
                await asyncio.wait(waits, timeout=s.timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if state.left:
                dropped = isinstance(gone, asyncio.Future) and gone.done()
                unconfirmed = "connection lost" if dropped else f"no PUBACK within {s.timeout_s:g} s"
                if stalled:  # why the rest was not sent
                    lost = unconfirmed
        finally:
            for mid in mids:
                entry = acks.get(mid)
                if entry is not None and entry[0] is state:
                    del acks[mid]
        if lost or state.left:
            await self._drop(conn)
        return outcomes(devices, states, errors, unconfirmed, lost)

    async def close(self) -> None:
        if self._conn is not None:
            await self._drop(self._conn)
