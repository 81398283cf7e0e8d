"""Device-listener hygiene and TLS, against real server processes: timeouts (slowloris), header
size, per-address connection cap, malformed input, TLS profiles and certificates (protocols.md
§1.5b), graceful shutdown."""

from __future__ import annotations

import ipaddress
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from conftest import SEED_MODEL, Admin, ServerProcess
from test_listener_support import (
    Wire,
    alink_json,
    client_context,
    property_topic,
    sdk_auth_bytes,
    sdk_post_bytes,
)

HEADER_TIMEOUT_S = 2
MAX_CONNECTIONS = 4
NOPE = b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


@pytest.fixture(scope="module")
def hygiene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("hygiene") / "data",
        "--header-timeout-s",
        str(HEADER_TIMEOUT_S),
        "--idle-timeout-s",
        "3",
        "--max-connections-per-ip",
        str(MAX_CONNECTIONS),
        "--max-header-bytes",
        "2048",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def device(hygiene: ServerProcess) -> tuple[str, str, str]:
    with hygiene.admin() as client:
        admin = Admin(client)
        pk = admin.product(SEED_MODEL)
        return pk, "hyg-dev", admin.device(pk, "hyg-dev")["deviceSecret"]


def _serves(hygiene: ServerProcess) -> bool:
    """A fresh connection gets an answer (it was admitted)."""
    try:
        with Wire(hygiene.device_port) as w:
            w.send(NOPE)
            return w.response(timeout=5).status == 404
    except (AssertionError, OSError):
        return False


# -- timeouts -----------------------------------------------------------------------------------
def test_slowloris_header_is_cut_off(hygiene: ServerProcess) -> None:
    """Headers trickling in at 1 byte/s: closed once --header-timeout-s has passed since the first byte."""
    with Wire(hygiene.device_port) as w:
        w.send(b"POST /auth HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sent = 0
        closed = False
        for _ in range(15):  # 15 s at most; the limit is 2 s
            try:
                w.send(b"a")
            except OSError:
                closed = True
                break
            sent += 1
            if w.closed_by_server(timeout=1.0):
                closed = True
                break
        assert closed and sent < 15
        # never served: at most a 408 before the close
        assert w.buf == b"" or w.buf.startswith(b"HTTP/1.1 408 "), w.buf


def test_silent_and_idle_connections_are_closed(hygiene: ServerProcess) -> None:
    with Wire(hygiene.device_port) as silent:
        assert silent.closed_by_server(timeout=15)
    with Wire(hygiene.device_port) as idle:
        idle.send(NOPE)
        assert idle.response().status == 404
        assert idle.closed_by_server(timeout=15)  # --idle-timeout-s 3 after the reply


def test_header_size_limit(hygiene: ServerProcess) -> None:
    with Wire(hygiene.device_port) as w:
        w.send(b"POST /nope HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 1500 + b"\r\nContent-Length: 0\r\n\r\n")
        assert w.response().status == 404  # under the limit
    with Wire(hygiene.device_port) as w:
        w.send(b"POST /auth HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 3000 + b"\r\nContent-Length: 0\r\n\r\n")
        resp = w.response()
        assert resp.status in (400, 431) and resp.code == 10001 and "header" in resp.json()["message"]
        assert resp.headers["connection"] == "close" and w.closed_by_server()


def test_expect_100_continue(hygiene: ServerProcess, device: tuple[str, str, str]) -> None:
    """curl sends `Expect: 100-continue` for large bodies: go on at once, or refuse before the body."""
    pk, dn, secret = device
    auth = sdk_auth_bytes(pk, dn, secret)
    head, body = auth.split(b"\r\n\r\n", 1)
    with Wire(hygiene.device_port) as w:
        w.send(head + b"\r\nExpect: 100-continue\r\n\r\n")
        deadline = time.monotonic() + 10
        while len(w.buf) < 25 and w._fill(deadline):
            pass
        assert w.buf == b"HTTP/1.1 100 Continue\r\n\r\n"
        w.buf = b""
        w.send(body)
        assert w.response().code == 0
    with Wire(hygiene.device_port) as w:
        w.send(
            b"POST /topic/%s/%s/user/x HTTP/1.1\r\nHost: x\r\nPassword: t\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % (pk.encode(), dn.encode(), 128 * 1024 + 1)
        )
        resp = w.response()
        assert resp.code == 10001 and resp.headers["connection"] == "close"
        assert not resp.head.startswith(b"HTTP/1.1 100")


# -- connection cap -----------------------------------------------------------------------------
def test_connections_per_address_are_capped(hygiene: ServerProcess) -> None:
    held: list[Wire] = []
    try:
        for _ in range(40):  # connections of earlier tests may take a moment to be released
            if len(held) == MAX_CONNECTIONS:
                break
            w = Wire(hygiene.device_port)
            w.send(NOPE)
            try:
                assert w.response(timeout=5).status == 404
                held.append(w)
            except AssertionError:
                w.close()
                time.sleep(0.2)
        assert len(held) == MAX_CONNECTIONS
        # one more from the same address: refused before the TLS handshake (the server spends none on it)
        assert _handshake_refused(hygiene)
        # the held connections still work; closing one frees a slot
        held[0].send(NOPE)
        assert held[0].response().status == 404
        held.pop(0).close()
        assert any(_serves(hygiene) or time.sleep(0.2) for _ in range(25))
    finally:
        for w in held:
            w.close()


def _handshake_refused(hygiene: ServerProcess) -> bool:
    try:
        Wire(hygiene.device_port).close()
    except (ssl.SSLError, OSError):  # reset or EOF instead of a ServerHello
        return True
    return False


def test_connections_still_handshaking_count_against_the_cap(hygiene: ServerProcess) -> None:
    """TCP connections that never start TLS hold their address's slots: a flood of bare connections
    from one address cannot make the server handshake more than the cap at once."""
    bare: list[socket.socket] = []
    try:
        for _ in range(40):  # slots of earlier tests may take a moment to be released
            bare.append(socket.create_connection(("127.0.0.1", hygiene.device_port), timeout=5))
            if len(bare) >= MAX_CONNECTIONS and _handshake_refused(hygiene):
                break
        assert len(bare) >= MAX_CONNECTIONS and _handshake_refused(hygiene)
    finally:
        for sock in bare:
            sock.close()
    assert any(_serves(hygiene) or time.sleep(0.2) for _ in range(25))  # slots given back


# -- malformed input ----------------------------------------------------------------------------
def _json_post(body: bytes, path: str = "/auth") -> bytes:
    return b"POST %s HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        path.encode(),
        len(body),
        body,
    )


ODD_REQUESTS: list[tuple[bytes, set[int]]] = [
    (b"GARBAGE\r\n\r\n", {400}),
    (b"POST /auth HTTP/1.1\r\nContent-Length: -1\r\n\r\n", {400}),
    (b"POST /auth HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", {400}),
    (b"POST /auth HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", {400}),
    (b"POST /auth HTTP/1.1\r\nBad Header\r\n\r\n", {400}),
    (b"POST /auth\x00 HTTP/1.1\r\n\r\n", {400}),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400, 405}),
    (b"POST /auth HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n", {400, 200}),
    (b"GET /auth HTTP/1.1\r\n\r\n", {405}),
    (b"DELETE /topic/a HTTP/1.1\r\n\r\n", {405}),
    (b"POST /nope HTTP/1.1\r\nContent-Length: 0\r\n\r\n", {404}),
    (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", {404}),
    (b"POST http://example.com/auth HTTP/1.1\r\nContent-Length: 0\r\n\r\n", {200}),
    (b"POST /topic/%zz%00 HTTP/1.1\r\nContent-Length: 0\r\n\r\n", {200}),
    (b"POST /topic HTTP/1.1\r\nContent-Length: 0\r\n\r\n", {404}),
    (b"POST /auth HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\n\xff\xfe\x00\x01", {200}),
    (_json_post(b"{}"), {200}),
    (_json_post(b"[" * 100_000, "/topic/sys/a/b/thing/event/property/post"), {200}),
    (_json_post(b'{"productKey":1e999,"deviceName":[],"clientId":{"a":null},"sign":"\\ud800","timestamp":-1}'), {200}),
    (b"POST /auth HTTP/1.1\r\nContent-Type: \xff\xfe\r\nContent-Length: 0\r\n\r\n", {200}),
]


def test_odd_requests_get_4xx_or_a_code_never_500(hygiene: ServerProcess, device: tuple[str, str, str]) -> None:
    for raw, statuses in ODD_REQUESTS:
        with Wire(hygiene.device_port) as w:
            w.send(raw)
            resp = w.response()
            assert resp.status in statuses, (raw[:60], resp.head, resp.body)
            doc = resp.json()
            assert doc["code"] != 0 and doc["code"] != 10000 and doc["message"], (raw[:60], doc)
    # the server is alive and serves devices
    pk, dn, secret = device
    with Wire(hygiene.device_port) as w:
        w.send(sdk_auth_bytes(pk, dn, secret))
        assert w.response().code == 0
    assert "Traceback" not in hygiene.log_path.read_text()


# -- TLS ----------------------------------------------------------------------------------------
def test_default_certificate_is_rsa_2048_with_loopback_names(hygiene: ServerProcess) -> None:
    cert = x509.load_pem_x509_certificate(Path(hygiene.cert).read_bytes())
    key = cert.public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert cert.issuer == cert.subject


def _peer_key(w: Wire) -> object:
    der = w.tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).public_key()


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_modern_clients_verify_against_the_device_cert(hygiene: ServerProcess, hostname: str) -> None:
    """TLS 1.3 and 1.2 clients get the cheaper ECDSA certificate, and it chains to device-cert.pem."""
    for max_version, expected in [(None, "TLSv1.3"), (ssl.TLSVersion.TLSv1_2, "TLSv1.2")]:
        ctx = client_context(cafile=hygiene.cert, max_version=max_version)
        with Wire(hygiene.device_port, ctx, server_hostname=hostname) as w:
            assert w.tls.version() == expected
            assert isinstance(_peer_key(w), ec.EllipticCurvePublicKey)
            if expected == "TLSv1.2":
                assert w.tls.cipher()[0].startswith("ECDHE-ECDSA-AES")
                assert "GCM" in w.tls.cipher()[0]
            w.send(NOPE)
            assert w.response().status == 404


def test_link_sdk_c_tls_suite_handshakes_and_authenticates(
    hygiene: ServerProcess, device: tuple[str, str, str]
) -> None:
    """Link SDK C's mbedtls: TLS 1.2, static RSA, AES-CBC, RSA certificates only."""
    pk, dn, secret = device
    ctx = client_context(cafile=hygiene.cert, max_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA256")
    with Wire(hygiene.device_port, ctx) as w:
        assert w.tls.version() == "TLSv1.2" and w.tls.cipher()[0] == "AES128-SHA256"
        assert isinstance(_peer_key(w), rsa.RSAPublicKey)
        w.send(sdk_auth_bytes(pk, dn, secret))
        token = w.response().json()["info"]["token"]
        w.send(sdk_post_bytes(property_topic(pk, dn), token, alink_json({"temperature": 12})))
        assert w.response().code == 0


@pytest.mark.parametrize(
    ("client_ciphers", "expected", "key_type"),
    [
        # the client lists the static-RSA suite first; the server's preference picks ECDHE + AEAD
        ("AES128-SHA256:AES256-SHA:ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", rsa.RSAPublicKey),
        ("AES128-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256", ec.EllipticCurvePublicKey),
        ("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-AES256-GCM-SHA384", ec.EllipticCurvePublicKey),
    ],
)
def test_tls12_suite_and_certificate_choice(
    hygiene: ServerProcess, client_ciphers: str, expected: str, key_type: type
) -> None:
    ctx = client_context(cafile=hygiene.cert, max_version=ssl.TLSVersion.TLSv1_2, ciphers=client_ciphers)
    with Wire(hygiene.device_port, ctx) as w:
        assert w.tls.cipher()[0] == expected
        assert isinstance(_peer_key(w), key_type)


# -- graceful shutdown --------------------------------------------------------------------------
def test_sigterm_lets_in_flight_requests_finish(tmp_path_factory: pytest.TempPathFactory) -> None:
    data = tmp_path_factory.mktemp("shutdown") / "data"
    # b's request is still being received when SIGTERM arrives; a's may or may not be committed by then
    # (group commit starts at once under light load), so only b's reply must carry Connection: close
    proc = ServerProcess(data, "--commit-max-delay-ms", "1500").start()
    try:
        with proc.admin() as client:
            admin = Admin(client)
            pk = admin.product(SEED_MODEL)
            secret = admin.device(pk, "term-dev")["deviceSecret"]
        topic = property_topic(pk, "term-dev")
        with Wire(proc.device_port) as a, Wire(proc.device_port) as b:
            a.send(sdk_auth_bytes(pk, "term-dev", secret))
            token = a.response().json()["info"]["token"]
            full = sdk_post_bytes(topic, token, alink_json({"temperature": 30}))
            half = sdk_post_bytes(topic, token, alink_json({"humidity": 70}))
            a.send(full)  # waiting for its commit
            b.send(half[:-10])  # still being received
            time.sleep(0.5)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            with pytest.raises(OSError):  # shutdown has begun once new connections are refused
                for _ in range(100):
                    Wire(proc.device_port).close()
                    time.sleep(0.05)
            b.send(half[-10:])
            ra, rb = a.response(), b.response()
            assert ra.code == 0 and rb.code == 0
            assert rb.headers["connection"] == "close"
        assert proc.stop(timeout=30) == 0
    finally:
        proc.stop()
    again = ServerProcess(data).start()
    try:
        with again.admin() as client:
            status = Admin(client).properties(pk, "term-dev")
        assert status["temperature"]["value"] == 30 and status["humidity"]["value"] == 70
    finally:
        again.stop()
