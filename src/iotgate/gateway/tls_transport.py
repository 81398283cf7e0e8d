"""TLS for the device listener on top of a plain TCP transport, kept small for idle connections.

A device keeps its connection open and sends a report every few seconds or minutes, so the
listener holds many idle TLS connections. Measured per idle connection (OpenSSL 3.0, uvloop
0.23; docs/benchmarks.md, "Idle TLS connections"):

* OpenSSL itself holds ~17 KB after the handshake: the `SSL` structure (7.6 KB in 3.0), the
  record ciphers and MACs, the session, and the grown buffers of the two memory BIOs (~3 KB,
  freed once the connection is quiet: see the end of this docstring). CPython
  already sets `SSL_MODE_RELEASE_BUFFERS` on every context, so the 2 x ~17 KB record buffers are
  freed between records; nothing more can be released through the `ssl` module.
* uvloop's SSL transport adds ~7 KiB on top: a 256 KiB receive buffer malloc'ed per
  connection (only its touched pages count, but they do), its protocol, transport and extra-info
  objects, and each chunk read from the socket is written whole into the incoming BIO, whose
  buffer never shrinks (one 10 KB gateway report leaves a 13 KB buffer for the connection's life).

This module is that layer again, in Python, without the per-connection extras: one object
is the protocol of the TCP transport and the transport of the HTTP protocol; socket reads land
in uvloop's shared read buffer; input is fed to the incoming BIO in slices of at most
`FEED_BYTES`, so its buffer stays small. Per request it makes the same `ssl` calls uvloop's
Cython layer makes (BIO write, `SSLObject.read` until the BIO is empty, `SSLObject.write`,
BIO read), so CPU per request stays the same (measured in docs/benchmarks.md).

Behaviour, as uvloop's SSL transport for a server:

* The HTTP protocol is created only when the handshake has completed; a handshake that takes
  longer than `handshake_timeout_s` is aborted. A failed handshake sends OpenSSL's alert and
  closes (uvloop dropped the alert).
* A TCP EOF without close_notify closes the connection (no `eof_received()` to the app);
  a close_notify calls the app's `eof_received()` and then closes gracefully.
* `close()` sends close_notify after what was written, then keeps reading (and discarding)
  until the peer answers with its close_notify or EOF, at most `SHUTDOWN_TIMEOUT_S`, so a
  client still sending does not get a reset before it has read the reply.

The two memory BIOs keep the size of the most bytes they ever held (the handshake's flights:
~3 KB of an idle connection's ~20). A connection that has moved bytes is remembered by its
listener; one that then stays quiet for a sweep period (DeviceServer calls
`TlsListener.release_idle_buffers()` every 0.5 s) gets both buffers freed (tls_buffers.py),
so this costs nothing per request on a busy connection and ~2 µs once per quiet spell.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Any, Protocol

from iotgate.gateway import tls_buffers

log = logging.getLogger("iotgate.gateway")

FEED_BYTES = 4096  # largest slice written to the incoming BIO at once (its buffer keeps the largest size)
READ_BYTES = 16384  # one TLS record's plaintext at most
SHUTDOWN_TIMEOUT_S = 10.0  # after our close_notify: wait this long for the peer's (uvloop: 30 s)
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLSyscallError)  # as uvloop: not fatal

_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)
ADDRESS_COUNTED = "iotgate_address_counted"  # extra info: this transport counted its client address
CLIENT_ADDRESS = "iotgate_client_address"  # extra info: the client's IP address, when this layer read it


class AddressGate(Protocol):
    """Counts connections per client address (DeviceServer): refused ones cost no TLS handshake."""

    def take_address(self, client: str) -> bool: ...
    def give_back_address(self, client: str) -> None: ...


class TlsListener:
    """What every connection of one listener shares: context, app protocol factory, timeout."""

    __slots__ = ("_previous", "_recent", "app_factory", "context", "gate", "handshake_timeout_s", "loop")

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: Callable[[], asyncio.Protocol],
        handshake_timeout_s: float,
        loop: asyncio.AbstractEventLoop,
        gate: AddressGate | None = None,
    ) -> None:
        self.context = context
        self.app_factory = app_factory
        self.handshake_timeout_s = handshake_timeout_s
        self.loop = loop
        self.gate = gate
        # connections that moved bytes since the last sweep, and in the sweep before it (a closed
        # one stays until the next sweep drops it: cheaper than removing it at every close)
        self._recent: set[TlsConnection] = set()
        self._previous: set[TlsConnection] = set()

    def __call__(self) -> TlsConnection:
        """Protocol factory for `loop.create_server(..., ssl=None)`."""
        return TlsConnection(self)

    def release_idle_buffers(self) -> None:
        """Free the BIO buffers of the connections that moved bytes in the period before last and
        none in the last one; called once a period (DeviceServer's sweep)."""
        quiet = self._previous - self._recent
        self._previous, self._recent = self._recent, set()
        if tls_buffers.available():
            for conn in quiet:
                conn.release_buffers()


class TlsConnection(asyncio.Transport, asyncio.Protocol):
    """Server side of one TLS connection: protocol of the TCP transport below, transport of the
    app protocol above."""

    __slots__ = ("_app", "_client", "_counted", "_in", "_listener", "_out", "_ssl", "_state", "_tcp", "_timer")

    def __init__(self, listener: TlsListener) -> None:
        self._listener = listener
        self._client = ""
        self._counted = False  # taken from the listener's AddressGate: given back when the connection ends
        self._state = _HANDSHAKE
        self._tcp: asyncio.Transport | None = None
        self._app: asyncio.Protocol | None = None
        self._ssl: ssl.SSLObject | None = None
        self._in: ssl.MemoryBIO | None = None
        self._out: ssl.MemoryBIO | None = None
        self._timer: asyncio.TimerHandle | None = None

    # -- protocol of the TCP transport ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tcp = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not asyncio.Transport
        listener = self._listener
        if listener.gate is not None:
            # the per-address cap is applied before the handshake: an address over its cap cannot
            # make the server spend a handshake's CPU (~0.5 ms) on each connection it opens
            peer = transport.get_extra_info("peername")
            self._client = peer[0] if peer else ""
            if not listener.gate.take_address(self._client):
                self._state = _CLOSED
                transport.abort()  # type: ignore[attr-defined]
                return
            self._counted = True
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = listener.context.wrap_bio(self._in, self._out, server_side=True)
        self._timer = listener.loop.call_later(listener.handshake_timeout_s, self._timed_out)

    def data_received(self, data: bytes) -> None:
        incoming = self._in
        if incoming is None:
            return
        self._listener._recent.add(self)  # the BIO buffers may grow: free them once quiet
        if len(data) <= FEED_BYTES:
            incoming.write(data)
            self._process()
            return
        view = memoryview(data)
        for start in range(0, len(view), FEED_BYTES):
            if self._state == _CLOSED:  # failed or aborted while processing an earlier slice
                return
            incoming.write(view[start : start + FEED_BYTES])
            self._process()

    def eof_received(self) -> bool | None:
        # a TCP EOF without close_notify is not a graceful end: close, as uvloop does
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        app, self._app = self._app, None
        self._ssl = self._in = self._out = None  # frees OpenSSL's per-connection state now
        self._tcp = None
        if self._counted:
            self._counted = False
            gate = self._listener.gate
            if gate is not None:
                gate.give_back_address(self._client)
        if app is not None:
            app.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    # -- TLS --------------------------------------------------------------------------------
    def _process(self) -> None:
        """Handle what is in the incoming BIO."""
        sslobj = self._ssl
        if sslobj is None or self._state == _CLOSED:
            return
        if self._state == _HANDSHAKE:
            try:
                sslobj.do_handshake()
            except _AGAIN:
                self._flush()
                return
            except ssl.SSLError as exc:
                log.debug("device TLS handshake failed: %s", exc)
                self._flush()  # OpenSSL's alert, so the client learns why
                self._close_tcp()
                return
            self._flush()  # the last flight (TLS 1.3: the session tickets)
            self._cancel_timer()
            self._state = _OPEN
            self._app = self._listener.app_factory()
            self._app.connection_made(self)
            if self._state != _OPEN:  # refused in connection_made
                return
        chunks: list[bytes] = []
        eof = False
        incoming = self._in
        assert incoming is not None
        try:
            while incoming.pending or sslobj.pending():
                chunk = sslobj.read(READ_BYTES)
                if not chunk:  # close_notify
                    eof = True
                    break
                chunks.append(chunk)
        except _AGAIN:
            pass
        except ssl.SSLZeroReturnError:
            eof = True
        except ssl.SSLError as exc:
            log.debug("device TLS connection failed: %s", exc)
            self._flush()
            self._close_tcp()
            return
        if self._out is not None and self._out.pending:  # e.g. a TLS 1.3 KeyUpdate answer
            self._flush()
        if self._state == _CLOSING:  # input after our close_notify is discarded
            if eof:
                self._close_tcp()
            return
        app = self._app
        if chunks and app is not None:
            app.data_received(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        if eof and self._state == _OPEN and self._app is not None:
            self._app.eof_received()
            self.close()

    def _flush(self) -> None:
        out, tcp = self._out, self._tcp
        if out is not None and tcp is not None and out.pending:
            tcp.write(out.read())

    def release_buffers(self) -> None:
        """Free the memory BIOs' buffers that are empty (an idle connection's are): ~3 KB after a
        handshake; they grow again as the next bytes come or go."""
        if self._state in (_HANDSHAKE, _OPEN) and self._in is not None and self._out is not None:
            tls_buffers.release(self._in)
            tls_buffers.release(self._out)

    def _timed_out(self) -> None:
        self._timer = None
        if self._state == _HANDSHAKE:
            log.debug("device TLS handshake not completed within %g s", self._listener.handshake_timeout_s)
            self.abort()
        elif self._state == _CLOSING and self._tcp is not None:
            # the peer did not answer our close_notify: close, dropping what it does not read
            if self._tcp.get_write_buffer_size():
                self._tcp.abort()
            else:
                self._tcp.close()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_tcp(self) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        if self._tcp is not None:
            self._tcp.close()  # sends what is queued, then closes

    # -- transport of the app protocol ------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._state != _OPEN or self._ssl is None:
            return
        self._listener._recent.add(self)  # the outgoing BIO may grow (see data_received)
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            log.debug("device TLS write failed: %s", exc)
            self.abort()
            return
        self._flush()

    def close(self) -> None:
        """Send close_notify after what was written; linger for the peer's (SHUTDOWN_TIMEOUT_S)."""
        if self._state != _OPEN or self._ssl is None:
            if self._state == _HANDSHAKE:
                self.abort()
            return
        self._state = _CLOSING
        try:
            self._ssl.unwrap()
        except (*_AGAIN, ssl.SSLError):
            pass  # close_notify is in the outgoing BIO; the peer's has not come (yet)
        self._flush()
        if self._tcp is not None:
            self._timer = self._listener.loop.call_later(SHUTDOWN_TIMEOUT_S, self._timed_out)

    def abort(self) -> None:
        self._state = _CLOSED
        self._cancel_timer()
        if self._tcp is not None:
            self._tcp.abort()

    def is_closing(self) -> bool:
        return self._state != _OPEN

    def pause_reading(self) -> None:
        if self._tcp is not None:
            self._tcp.pause_reading()

    def resume_reading(self) -> None:
        if self._tcp is not None:
            self._tcp.resume_reading()

    def is_reading(self) -> bool:
        return self._tcp is not None and self._tcp.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._tcp is not None:
            self._tcp.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._tcp.get_write_buffer_size() if self._tcp is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._tcp.get_write_buffer_limits() if self._tcp is not None else (0, 0)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("TLS does not support half-closing the write side")

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app  # type: ignore[return-value]

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        sslobj = self._ssl
        if name == "sslcontext":
            return self._listener.context
        if name == "ssl_object":
            return sslobj
        if name == ADDRESS_COUNTED:
            return self._counted
        if name == CLIENT_ADDRESS:
            return self._client or default
        if sslobj is not None and self._state != _HANDSHAKE:
            if name == "cipher":
                return sslobj.cipher()
            if name == "peercert":
                return sslobj.getpeercert()
            if name == "compression":
                return sslobj.compression()
        return self._tcp.get_extra_info(name, default) if self._tcp is not None else default
