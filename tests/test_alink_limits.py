"""Alink behaviour that needs non-default server flags, all on one server process:
`--alink-token-ttl-s 1` (20001), `--device-rate-per-s 2 --device-rate-burst 2` (40000) and
`--tls-profile modern` (the Link SDK C cipher suite is refused)."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator

import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from test_listener_support import Wire, alink_json, client_context, property_topic, sdk_auth_bytes, sdk_post_bytes


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("strict") / "data",
        "--alink-token-ttl-s",
        "1",
        "--device-rate-per-s",
        "2",
        "--device-rate-burst",
        "2",
        "--tls-profile",
        "modern",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def strict_admin(strict: ServerProcess) -> Iterator[Admin]:
    with strict.admin() as client:
        yield Admin(client)


@pytest.fixture(scope="module")
def pk(strict_admin: Admin) -> str:
    return strict_admin.product(SEED_MODEL)


def test_expired_token_gets_20001_and_reauth_works(strict: ServerProcess, strict_admin: Admin, pk: str) -> None:
    secret = strict_admin.device(pk, "ttl-dev")["deviceSecret"]
    topic = property_topic(pk, "ttl-dev")
    with Wire(strict.device_port) as w:
        w.send(sdk_auth_bytes(pk, "ttl-dev", secret))
        token = w.response().json()["info"]["token"]
        time.sleep(1.2)  # the token lives 1 s
        w.send(sdk_post_bytes(topic, token, alink_json({"temperature": 5})))
        expired = w.response()
        assert expired.status_line == b"HTTP/1.1 200 OK"
        assert expired.json() == {"code": 20001, "message": "token is expired"}
        # what iotkit-embedded does on 20001: authenticate again at once and resend
        w.send(sdk_auth_bytes(pk, "ttl-dev", secret))
        fresh = w.response().json()["info"]["token"]
        w.send(sdk_post_bytes(topic, fresh, alink_json({"temperature": 6})))
        assert w.response().code == 0
    assert strict_admin.properties(pk, "ttl-dev")["temperature"]["value"] == 6


def test_rate_limit_gets_40000_and_stores_nothing(strict: ServerProcess, strict_admin: Admin, pk: str) -> None:
    dn = "rate-dev"
    secret = strict_admin.device(pk, dn)["deviceSecret"]
    custom = f"/{pk}/{dn}/user/rate"
    with Wire(strict.device_port) as w:
        w.send(sdk_auth_bytes(pk, dn, secret))
        token = w.response().json()["info"]["token"]
        w.send(b"".join(sdk_post_bytes(custom, token, b"m%d" % i) for i in range(8)))  # pipelined
        replies = [w.response() for _ in range(8)]
    codes = [r.code for r in replies]
    assert codes[:2] == [0, 0], codes  # the burst
    limited = [r for r in replies if r.code == 40000]
    assert len(limited) >= 3, codes  # 2 tokens/s refill: at most 3 more pass unless the 8 took > 1.5 s
    assert all(r.json()["message"].startswith("request too many") for r in limited)
    assert len(strict_admin.messages(pk, dn, "message")) == codes.count(0)


def test_modern_profile_refuses_the_link_sdk_suite(strict: ServerProcess, strict_admin: Admin, pk: str) -> None:
    sdk_like = client_context(max_version=ssl.TLSVersion.TLSv1_2, ciphers="AES128-SHA256")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        Wire(strict.device_port, sdk_like).close()
    secret = strict_admin.device(pk, "modern-dev")["deviceSecret"]
    for ctx in (client_context(max_version=ssl.TLSVersion.TLSv1_2), client_context(cafile=strict.cert)):
        with Wire(strict.device_port, ctx) as w:
            version, cipher = w.tls.version(), w.tls.cipher()[0]
            assert (version == "TLSv1.2" and cipher.startswith("ECDHE-")) or version == "TLSv1.3"
            w.send(sdk_auth_bytes(pk, "modern-dev", secret))
            assert w.response().code == 0
