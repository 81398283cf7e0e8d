"""TLS session tickets resume on every device worker: the workers share one set of ticket keys.

Without it each worker's OpenSSL context had random keys of its own, and with two workers about
half of a client's reconnections fell back to a full handshake (gateway/tls_tickets.py).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body
from iotgate.gateway.tls import ensure_self_signed, server_context
from iotgate.gateway.tls_tickets import TICKET_KEYS_BYTES, new_ticket_keys, set_ticket_keys, ticket_keys
from test_postgres_e2e import node_of


class EchoServer:
    """A TLS server on a real socket (a thread): answers each connection's first bytes with b"ok"."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(16)
                    tls.sendall(b"ok")
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    return ensure_self_signed(tmp_path_factory.mktemp("tickets"))


def resumed_in_turn(ports: list[int], cafile: Path, version: ssl.TLSVersion) -> list[bool]:
    """Connect to each port in turn, each time offering the session of the connection before."""
    client = ssl.create_default_context(cafile=str(cafile))
    client.maximum_version = version
    session: ssl.SSLSession | None = None
    reused = []
    for port in ports:
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            client.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls,
        ):
            tls.sendall(b"hi")
            assert tls.recv(16) == b"ok"  # TLS 1.3: the tickets come after the handshake, before this
            reused.append(tls.session_reused)
            session = tls.session
    return reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
def test_a_ticket_resumes_on_another_context_with_the_same_keys(
    certs: tuple[Path, Path, Path, Path], version: ssl.TLSVersion
) -> None:
    rsa_cert, rsa_key, ec_cert, ec_key = certs
    keys = new_ticket_keys()
    servers = []
    for _ in range(2):
        context = server_context("compat", rsa_cert, rsa_key, ec_cert, ec_key)
        assert set_ticket_keys(context, keys)
        assert ticket_keys(context) == keys
        servers.append(EchoServer(context))
    a, b = (s.port for s in servers)
    try:
        assert resumed_in_turn([a, b, a, b, b], rsa_cert, version) == [False, True, True, True, True]
    finally:
        for s in servers:
            s.close()


def test_contexts_keep_their_own_keys_without_it(certs: tuple[Path, Path, Path, Path]) -> None:
    """What the workers did before: a ticket resumes only on the context that issued it."""
    rsa_cert, rsa_key, ec_cert, ec_key = certs
    servers = [EchoServer(server_context("compat", rsa_cert, rsa_key, ec_cert, ec_key)) for _ in range(2)]
    a, b = (s.port for s in servers)
    try:
        assert resumed_in_turn([a, b, b, a], rsa_cert, ssl.TLSVersion.TLSv1_3) == [False, False, True, False]
    finally:
        for s in servers:
            s.close()


def test_ticket_keys_have_one_size(certs: tuple[Path, Path, Path, Path]) -> None:
    context = server_context("compat", certs[0], certs[1])
    with pytest.raises(ValueError, match="80 bytes"):
        set_ticket_keys(context, b"\0" * (TICKET_KEYS_BYTES - 1))
    assert ticket_keys(context) != b"\0" * TICKET_KEYS_BYTES  # OpenSSL's own random keys until then


# -- the server with two device workers --------------------------------------------------------
@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("tickets-workers") / "data", "--workers", "2").start()
    yield proc
    proc.stop()


def post_on_new_connection(
    server: ServerProcess, client: ssl.SSLContext, session: ssl.SSLSession | None, request: bytes
) -> tuple[bytes, ssl.SSLSession | None, bool]:
    """One request with `Connection: close` on a new TLS connection; the whole reply up to the
    server's close_notify, the session to resume next, and whether this one was resumed."""
    with (
        socket.create_connection(("127.0.0.1", server.device_port)) as raw,
        client.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls,
    ):
        tls.sendall(request)
        reply = b""
        while chunk := tls.recv(4096):  # b"": the server's close_notify
            reply += chunk
        return reply, tls.session, tls.session_reused


def test_every_worker_resumes_the_sessions_of_the_others(workers: ServerProcess) -> None:
    with workers.admin() as client:
        admin = Admin(client)
        pk = admin.product(SEED_MODEL)
        secret = admin.device(pk, "resume-01")["deviceSecret"]
    with workers.device_client() as first:
        token = first.post("/auth", json=alink_auth_body(pk, "resume-01", secret)).json()["info"]["token"]
    context = ssl.create_default_context(cafile=workers.cert)
    session: ssl.SSLSession | None = None
    reused, nodes = [], set()
    for i in range(24):
        body = json.dumps({"id": str(i), "params": {"temperature": i}}).encode()
        request = (
            f"POST /topic/sys/{pk}/resume-01/thing/event/property/post HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"password: {token}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode() + body
        reply, session, was_reused = post_on_new_connection(workers, context, session, request)
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nConnection: close" in head, reply
        nodes.add(node_of(json.loads(payload)["info"]["messageId"]))
        reused.append(was_reused)
    assert nodes == {1, 2}  # both workers answered (P(all 24 on one worker) ≈ 1e-7)
    assert reused == [False] + [True] * 23
