"""Helpers for the device-listener tests: a raw TLS socket that sends exact bytes and parses the
replies byte for byte, and the request bytes Alibaba's Link SDK C 4.1.0 sends (protocols.md §1.2,
§1.3). No tests live here."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import time
from typing import Any

from iotgate.auth.signing import alink_sign

REPLY_TIMEOUT_S = 15.0


def client_context(
    cafile: str | None = None,
    max_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
) -> ssl.SSLContext:
    """A TLS client context; without cafile it does not verify (like the tests' httpx clients)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cafile:
        ctx.load_verify_locations(cafile)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


class RawResponse:
    def __init__(self, head: bytes, body: bytes) -> None:
        self.head = head
        lines = head.split(b"\r\n")
        self.status_line = lines[0]
        self.header_lines = lines[1:]
        self.headers: dict[str, str] = {}
        for line in self.header_lines:
            name, _, value = line.decode("latin-1").partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self.body = body

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ")[1])

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> int:
        return int(self.json()["code"])


class Wire:
    """One raw connection to the device listener (TLS unless plain)."""

    def __init__(
        self,
        port: int,
        ctx: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
        plain: bool = False,
        server_hostname: str | None = None,
    ) -> None:
        raw = socket.create_connection((host, port), timeout=REPLY_TIMEOUT_S)
        if plain:
            self.sock: socket.socket = raw
        else:
            ctx = ctx or client_context()
            self.sock = ctx.wrap_socket(raw, server_hostname=server_hostname or host)
        self.buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tls(self) -> ssl.SSLSocket:
        assert isinstance(self.sock, ssl.SSLSocket)
        return self.sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        self.sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return time.monotonic() < deadline
        except (ConnectionError, ssl.SSLError):
            return False
        if not data:
            return False
        self.buf += data
        return True

    def response(self, timeout: float = REPLY_TIMEOUT_S) -> RawResponse:
        """The next reply; the body is read by its Content-Length (spelled exactly so)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buf:
            if not self._fill(deadline):
                raise AssertionError(f"no complete reply head; got {self.buf!r}")
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        length = None
        for line in head.split(b"\r\n")[1:]:
            if line.startswith(b"Content-Length: "):
                length = int(line[len(b"Content-Length: ") :])
        assert length is not None, f"reply has no 'Content-Length: ' header: {head!r}"
        self.buf = rest
        while len(self.buf) < length:
            if not self._fill(deadline):
                raise AssertionError(f"reply body cut short: {head!r} {self.buf!r}")
        body, self.buf = self.buf[:length], self.buf[length:]
        return RawResponse(head, body)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (EOF or reset) within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return False
            except (ConnectionError, ssl.SSLError, OSError):
                return True
            if not data:
                return True
            self.buf += data
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def sdk_auth_bytes(pk: str, dn: str, secret: str, extra_query: str = "") -> bytes:
    """`POST /auth` exactly as Link SDK C 4.1.0 writes it, with an UPPER-case hmacsha256 sign."""
    client_id = f"{pk}.{dn}"
    sign = alink_sign({"clientId": client_id, "deviceName": dn, "productKey": pk}, secret, "hmacsha256").upper()
    body = (
        f'{{"clientId":"{client_id}","signmethod":"hmacsha256","deviceName":"{dn}",'
        f'"productKey":"{pk}","sign":"{sign}"}}'
    ).encode()
    return (
        f"POST /auth?_v=sdk-c-4.1.0&{extra_query} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body


def sdk_post_bytes(topic: str, token: str, body: bytes, version: str = "1.1", extra: str = "") -> bytes:
    """`POST /topic/...` exactly as Link SDK C 4.1.0 writes it."""
    return (
        f"POST /topic{topic} HTTP/{version}\r\n"
        "Host: 127.0.0.1\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"Password: {token}\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body


def property_topic(pk: str, dn: str) -> str:
    return f"/sys/{pk}/{dn}/thing/event/property/post"


def alink_json(params: Any, **extra: Any) -> bytes:
    return json.dumps({"id": "1", "version": "1.0", "params": params, **extra}).encode()
