"""The device listener's own TLS layer (gateway/tls_transport.py), in a platform running in this
process on uvloop so that its live OpenSSL objects can be inspected:

* SSL_MODE_RELEASE_BUFFERS (OpenSSL frees an idle connection's record buffers) is set on the
  listener's SSL_CTX and on the SSL of every live connection, read through ctypes from the very
  libssl the `_ssl` module uses (Python's `ssl` has no getter for it);
* an ECDHE client (TLS 1.3 and 1.2) and the Link SDK C suite (TLS 1.2, static RSA, AES128-SHA256)
  authenticate and report, and what they report is committed;
* pipelined input far larger than one BIO feed slice, with records split across slices;
* a handshake the server refuses is answered with a TLS alert, not a reset;
* close_notify both ways;
* a connection that has gone quiet gives back its memory BIOs' buffers (they keep the size of the
  handshake's flights otherwise) and goes on working, and holds no HTTP parser or per-request
  containers of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import socket
import ssl
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from conftest import SEED_MODEL, Admin
from iotgate.config import Settings
from iotgate.gateway import http, tls_buffers, tls_transport
from iotgate.server import Platform
from test_listener_support import Wire, alink_json, client_context, property_topic, sdk_auth_bytes, sdk_post_bytes

uvloop = pytest.importorskip("uvloop")
T = TypeVar("T")

SSL_CTRL_MODE = 33  # SSL_get_mode(s) == SSL_ctrl(s, SSL_CTRL_MODE, 0, NULL); likewise for SSL_CTX
SSL_MODE_RELEASE_BUFFERS = 0x10
BIO_TYPE_MEM = 0x0401
BIO_CTRL_PENDING = 10
BIO_C_GET_BUF_MEM_PTR = 115  # BIO_get_mem_ptr()


class BufMem(ctypes.Structure):
    """OpenSSL's BUF_MEM (include/openssl/buffer.h): `max` is the allocated size."""

    _fields_ = (
        ("length", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("max", ctypes.c_size_t),
        ("flags", ctypes.c_ulong),
    )


# -- OpenSSL through ctypes, verified at every step ----------------------------------------------
class OpenSSL:
    """SSL_CTX / SSL getters called in the libssl `_ssl` is linked against (a dlopen handle of the
    `_ssl` extension searches its own dependencies first), on pointers read from CPython's
    `PySSLContext` (first field after PyObject_HEAD: `SSL_CTX *ctx`) and `PySSLSocket` (`Socket`,
    `SSL *ssl`, `PySSLContext *ctx`). Each pointer is cross-checked before it is used."""

    def __init__(self) -> None:
        if sys.implementation.name != "cpython":
            pytest.skip("reads CPython's _ssl object layout")
        import _ssl

        try:
            lib = ctypes.CDLL(_ssl.__file__)
            self.version = lib.OpenSSL_version_num
            self.ctx_ctrl = lib.SSL_CTX_ctrl
            self.ssl_ctrl = lib.SSL_ctrl
            self.ctx_options = lib.SSL_CTX_get_options
            self.ssl_ctx_of = lib.SSL_get_SSL_CTX
            self.bio_ctrl = lib.BIO_ctrl
            self.bio_type = lib.BIO_method_type
        except (OSError, AttributeError) as exc:
            pytest.skip(f"OpenSSL functions not reachable through {_ssl.__file__}: {exc}")
        self.version.restype, self.version.argtypes = ctypes.c_ulong, []
        assert self.version() == ssl.OPENSSL_VERSION_NUMBER, "ctypes reached another OpenSSL than the ssl module"
        void, long_ = ctypes.c_void_p, ctypes.c_long
        self.ctx_ctrl.restype, self.ctx_ctrl.argtypes = long_, [void, ctypes.c_int, long_, void]
        self.ssl_ctrl.restype, self.ssl_ctrl.argtypes = long_, [void, ctypes.c_int, long_, void]
        self.ctx_options.restype, self.ctx_options.argtypes = ctypes.c_uint64, [void]
        self.ssl_ctx_of.restype, self.ssl_ctx_of.argtypes = void, [void]
        self.bio_ctrl.restype, self.bio_ctrl.argtypes = long_, [void, ctypes.c_int, long_, void]
        self.bio_type.restype, self.bio_type.argtypes = ctypes.c_int, [void]

    @staticmethod
    def _field(obj: object, index: int) -> int:
        """Pointer-sized field `index` after PyObject_HEAD."""
        address = id(obj) + object.__basicsize__ + index * ctypes.sizeof(ctypes.c_void_p)
        return ctypes.c_void_p.from_address(address).value or 0

    def ctx_pointer(self, ctx: ssl.SSLContext) -> int:
        pointer = self._field(ctx, 0)
        assert pointer, "no SSL_CTX pointer where PySSLContext keeps it"
        assert self.ctx_options(pointer) == ctx.options, "pointer is not this context's SSL_CTX"
        return pointer

    def ssl_pointer(self, sslobj: ssl.SSLObject, ctx_pointer: int) -> int:
        inner = sslobj._sslobj  # type: ignore[attr-defined]  # the _ssl._SSLSocket
        assert self._field(inner, 2) == id(sslobj.context), "unexpected PySSLSocket layout"
        pointer = self._field(inner, 1)
        assert pointer and self.ssl_ctx_of(pointer) == ctx_pointer, "pointer is not an SSL of this SSL_CTX"
        return pointer

    def bio_capacity(self, bio: ssl.MemoryBIO) -> int:
        """Bytes allocated for a MemoryBIO's buffer (PySSLMemoryBIO: `BIO *bio` after the header)."""
        pointer = self._field(bio, 0)
        assert pointer and self.bio_type(pointer) == BIO_TYPE_MEM, "not a memory BIO"
        assert self.bio_ctrl(pointer, BIO_CTRL_PENDING, 0, None) == bio.pending, "not this MemoryBIO's BIO"
        buf = ctypes.POINTER(BufMem)()
        assert self.bio_ctrl(pointer, BIO_C_GET_BUF_MEM_PTR, 0, ctypes.byref(buf)) == 1
        return int(buf.contents.max)

    def ctx_mode(self, ctx_pointer: int) -> int:
        return int(self.ctx_ctrl(ctx_pointer, SSL_CTRL_MODE, 0, None))

    def ssl_mode(self, ssl_pointer: int) -> int:
        return int(self.ssl_ctrl(ssl_pointer, SSL_CTRL_MODE, 0, None))


# -- a platform on uvloop in a thread of this process -------------------------------------------
class LivePlatform:
    def __init__(self, data_dir: Path) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="platform", daemon=True)
        self.platform = Platform(
            Settings(data_dir=str(data_dir), device_host="127.0.0.1", device_port=0, admin_port=0, workers=1)
        )

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> LivePlatform:
        self.thread.start()
        self.run(self.platform.start())
        return self

    def stop(self) -> None:
        try:
            self.run(self.platform.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)
            self.loop.close()

    @property
    def port(self) -> int:
        return self.platform.device_addresses[0][1]

    @property
    def cert(self) -> str:
        return str(self.platform.cert_path)

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.platform.admin_url,
            headers={"Authorization": f"Bearer {self.platform.admin_key}"},
            timeout=30,
        )

    def connections(self) -> list[tuple[ssl.SSLContext, ssl.SSLObject, Any]]:
        """(context, SSL object, transport) of every live device connection, read inside the loop."""

        async def read() -> list[tuple[ssl.SSLContext, ssl.SSLObject, Any]]:
            out = []
            for conn in self.platform.device_server.connections:
                transport = conn.transport
                out.append((transport.get_extra_info("sslcontext"), transport.get_extra_info("ssl_object"), transport))
            return out

        return self.run(read())

    def wait_connections(self, count: int, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        while len(self.connections()) != count and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.connections())


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePlatform]:
    platform = LivePlatform(tmp_path_factory.mktemp("tls-memory") / "data").start()
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def device(live: LivePlatform) -> tuple[str, str, str]:
    with live.admin() as client:
        admin = Admin(client)
        pk = admin.product(SEED_MODEL)
        return pk, "tls-dev", admin.device(pk, "tls-dev")["deviceSecret"]


CLIENTS = {
    # name: (max TLS version, cipher list, expected version, expected cipher prefix)
    "ecdhe-tls13": (None, None, "TLSv1.3", "TLS_"),
    "ecdhe-tls12": (ssl.TLSVersion.TLSv1_2, None, "TLSv1.2", "ECDHE-"),
    "link-sdk-c": (ssl.TLSVersion.TLSv1_2, "AES128-SHA256", "TLSv1.2", "AES128-SHA256"),
}


def _report(w: Wire, device: tuple[str, str, str], temperature: int) -> None:
    pk, dn, secret = device
    w.send(sdk_auth_bytes(pk, dn, secret))
    auth = w.response()
    assert auth.code == 0, auth.body
    w.send(
        sdk_post_bytes(property_topic(pk, dn), auth.json()["info"]["token"], alink_json({"temperature": temperature}))
    )
    assert w.response().code == 0


def test_release_buffers_on_the_listener_context_and_every_live_connection(
    live: LivePlatform, device: tuple[str, str, str]
) -> None:
    openssl = OpenSSL()
    pk, dn, _ = device
    with contextlib.ExitStack() as stack:
        wires = {}
        for i, (name, (max_version, ciphers, version, cipher)) in enumerate(CLIENTS.items()):
            w = stack.enter_context(Wire(live.port, client_context(live.cert, max_version, ciphers), host="127.0.0.1"))
            assert w.tls.version() == version, name
            assert w.tls.cipher()[0].startswith(cipher), (name, w.tls.cipher())
            _report(w, device, 20 + i)
            wires[name] = w
        with live.admin() as client:
            assert Admin(client).properties(pk, dn)["temperature"]["value"] == 20 + len(CLIENTS) - 1  # committed

        conns = live.connections()
        assert len(conns) == len(CLIENTS)
        client_ciphers = sorted(w.tls.cipher()[0] for w in wires.values())
        assert sorted(sslobj.cipher()[0] for _, sslobj, _ in conns) == client_ciphers
        for ctx, sslobj, transport in conns:
            assert isinstance(transport, tls_transport.TlsConnection)  # not the event loop's SSL transport
            ctx_pointer = openssl.ctx_pointer(ctx)
            assert openssl.ctx_mode(ctx_pointer) & SSL_MODE_RELEASE_BUFFERS
            ssl_pointer = openssl.ssl_pointer(sslobj, ctx_pointer)
            assert openssl.ssl_mode(ssl_pointer) & SSL_MODE_RELEASE_BUFFERS
        assert len({id(ctx) for ctx, _, _ in conns}) == 1  # one context for the listener


def test_pipelined_input_far_larger_than_a_feed_slice(live: LivePlatform, device: tuple[str, str, str]) -> None:
    """~28 KB of pipelined requests in one write: TLS records larger than FEED_BYTES, split
    across slices, and more requests than MAX_PIPELINED (reading pauses and resumes)."""
    pk, dn, secret = device
    with live.admin() as client:
        stored_before = len(Admin(client).history(pk, dn))
    with Wire(live.port, client_context(live.cert)) as w:
        w.send(sdk_auth_bytes(pk, dn, secret))
        token = w.response().json()["info"]["token"]
        values = [i % 50 for i in range(100)]
        batch = b"".join(sdk_post_bytes(property_topic(pk, dn), token, alink_json({"temperature": v})) for v in values)
        assert len(batch) > 4 * tls_transport.FEED_BYTES
        w.send(batch)
        replies = [w.response() for _ in values]
        assert [r.code for r in replies] == [0] * len(values)
        message_ids = [int(r.json()["info"]["messageId"]) for r in replies]
        assert message_ids == sorted(set(message_ids))  # one reply per request, in request order
        w.send(sdk_post_bytes(property_topic(pk, dn), token, alink_json({"temperature": 7})))
        assert w.response().code == 0  # the connection goes on after the burst
    with live.admin() as client:
        assert len(Admin(client).history(pk, dn)) == stored_before + len(values) + 1  # all committed


def test_a_refused_handshake_gets_an_alert_not_a_reset(live: LivePlatform) -> None:
    ctx = client_context(max_version=ssl.TLSVersion.TLSv1_2, ciphers="DHE-RSA-AES128-GCM-SHA256")  # not offered
    raw = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    with pytest.raises(ssl.SSLError) as caught, contextlib.closing(raw):
        ctx.wrap_socket(raw, server_hostname="127.0.0.1")
    assert caught.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE", caught.value


def test_close_notify_both_ways(live: LivePlatform, device: tuple[str, str, str]) -> None:
    pk, dn, secret = device
    before = len(live.connections())
    ctx = client_context(live.cert)
    # the server closes (Connection: close): the reply, then a clean close_notify, not a bare FIN
    raw = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    with contextlib.closing(ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False)) as tls:
        body = b'{"productKey":"x"}'
        tls.sendall(
            b"POST /auth HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        received = b""
        while True:
            chunk = tls.recv(65536)  # a ragged EOF would raise SSLEOFError here
            if not chunk:
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 ") and b"Connection: close\r\n" in received
    # the client closes an idle connection with close_notify: the server answers it and lets go
    with Wire(live.port, ctx) as w:
        _report(w, (pk, dn, secret), 30)
        assert live.wait_connections(before + 1) == before + 1
        w.tls.settimeout(10)
        w.tls.unwrap()  # sends close_notify and waits for the server's
        assert live.wait_connections(before) == before


def test_release_frees_an_empty_bio_buffer_and_the_bio_goes_on() -> None:
    openssl = OpenSSL()
    assert tls_buffers.available()
    bio = ssl.MemoryBIO()
    bio.write(b"x" * 5000)
    assert not tls_buffers.release(bio)  # holds bytes: left alone
    assert bio.pending == 5000
    assert openssl.bio_capacity(bio) >= 5000
    assert bio.read() == b"x" * 5000
    assert openssl.bio_capacity(bio) >= 5000  # read out, still allocated: BIO_s_mem never shrinks
    assert tls_buffers.release(bio)
    assert openssl.bio_capacity(bio) == 0
    bio.write(b"abc")
    assert bio.read() == b"abc"
    bio.write_eof()  # the EOF flag lives in the BIO, not in its buffer
    assert bio.eof


def _bio_capacities(live: LivePlatform, openssl: OpenSSL) -> list[tuple[int, int]]:
    """(incoming, outgoing) buffer sizes of every live TLS connection, read inside the loop."""

    async def read() -> list[tuple[int, int]]:
        out = []
        for conn in live.platform.device_server.connections:
            tls = conn.transport
            assert isinstance(tls, tls_transport.TlsConnection)
            assert tls._in is not None and tls._out is not None
            out.append((openssl.bio_capacity(tls._in), openssl.bio_capacity(tls._out)))
        return out

    return live.run(read())


def _wait_released(live: LivePlatform, openssl: OpenSSL, timeout: float = 10) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    sizes = _bio_capacities(live, openssl)
    while any(size != (0, 0) for size in sizes) and time.monotonic() < deadline:
        time.sleep(0.1)
        sizes = _bio_capacities(live, openssl)
    return sizes


def test_a_quiet_connection_gives_back_its_bio_buffers(live: LivePlatform, device: tuple[str, str, str]) -> None:
    openssl = OpenSSL()
    pk, dn, secret = device
    live.wait_connections(0)
    with contextlib.ExitStack() as stack:
        wires = []
        for i, (max_version, ciphers, _, _) in enumerate(CLIENTS.values()):
            w = stack.enter_context(Wire(live.port, client_context(live.cert, max_version, ciphers)))
            _report(w, device, 10 + i)
            wires.append(w)
        assert live.wait_connections(len(CLIENTS)) == len(CLIENTS)
        # quiet for a sweep period (0.5 s): both buffers freed, ClientHello and certificate flight included
        assert _wait_released(live, openssl) == [(0, 0)] * len(CLIENTS)
        for w in wires:  # the connections go on: a report, then a pipelined burst across feed slices
            w.send(sdk_auth_bytes(pk, dn, secret))
            token = w.response().json()["info"]["token"]
            batch = b"".join(
                sdk_post_bytes(property_topic(pk, dn), token, alink_json({"temperature": v})) for v in range(40)
            )
            assert len(batch) > 2 * tls_transport.FEED_BYTES
            w.send(batch)
            assert [w.response().code for _ in range(40)] == [0] * 40
        assert any(size != (0, 0) for size in _bio_capacities(live, openssl))  # they grew again ...
        assert _wait_released(live, openssl) == [(0, 0)] * len(CLIENTS)  # ... and are given back again


def test_an_idle_connection_holds_no_parser_or_request_containers(
    live: LivePlatform, device: tuple[str, str, str]
) -> None:
    live.wait_connections(0)

    def idle_state() -> list[tuple[bool, bool, bool]]:
        async def read() -> list[tuple[bool, bool, bool]]:
            return [
                (c.parser is http._IDLE_PARSER, c._headers is http._NO_HEADERS, c._body is http._NO_BODY)
                for c in live.platform.device_server.connections
            ]

        return live.run(read())

    with Wire(live.port, client_context(live.cert)) as w:
        assert live.wait_connections(1) == 1
        assert idle_state() == [(True, True, True)]  # handshake done, no request yet: no parser made
        _report(w, device, 33)
        deadline = time.monotonic() + 5
        while idle_state() != [(True, True, True)] and time.monotonic() < deadline:
            time.sleep(0.05)  # the reply is written before the request's task ends
        assert idle_state() == [(True, True, True)]
        assert http._NO_HEADERS == {} and http._NO_BODY == []  # the shared empties were never written
