"""Security of the admin side and of data at rest, against real server processes: every /api route
needs the key, the key rotates (API and CLI), mutating requests are audited, device secrets are
encrypted in the database file, the device listener speaks TLS 1.2 or newer only."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess, api_routes
from iotgate.admin.app import PUBLIC_API_PATHS
from iotgate.admin.ops_api import key_id
from iotgate.auth.secretbox import SecretBox
from iotgate.gateway.tls import server_context
from iotgate.storage.base import AuditEntry
from iotgate.storage.sqlite import SqliteStorage


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("ops-sec") / "data").start()
    yield proc
    proc.stop()


def fill(path: str) -> str:
    return path.replace("{product_key}", "pk0000000001").replace("{", "").replace("}", "")


def test_every_api_route_refuses_without_the_key(srv: ServerProcess) -> None:
    routes = api_routes()
    protected = [(m, p) for m, p in routes if p not in PUBLIC_API_PATHS]
    assert len(protected) >= 25  # the management API, the audit log, key rotation, the console's API
    with httpx.Client(base_url=srv.admin_url, timeout=10) as anon:
        for method, path in protected:
            url = fill(path)
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {srv.admin_key}"}):
                r = anon.request(method, url, headers=headers, content=b"{}")
                assert r.status_code == 401, (method, url, headers, r.status_code, r.text)
                if method != "HEAD":
                    assert r.json()["error"]["code"] == "unauthorized"
            # the same path with the key is served (anything but 401)
            r = anon.request(method, url, headers={"Authorization": f"Bearer {srv.admin_key}"}, content=b"{}")
            assert r.status_code != 401, (method, url)
        # public: health, OpenAPI document and docs page; prefix tricks do not open anything
        for path in ("/healthz", "/readyz", "/metrics", "/api/v1/openapi.json", "/api/v1/docs"):
            assert anon.get(path).status_code == 200, path
        for path in ("/api/v1/docs/../products", "/api/v1/openapi.json/x", "/api/v1/docsx"):
            assert anon.get(path).status_code == 401, path


def test_rotate_key_via_api_then_cli(srv: ServerProcess) -> None:
    old = srv.admin_key
    with httpx.Client(base_url=srv.admin_url, timeout=10) as c:
        r = c.post("/api/v1/admin/rotate-key", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 200, r.text
        new = r.json()["adminKey"]
        assert new != old and new.startswith("iga_") and r.json()["keyId"] == key_id(new)
        assert r.json()["previousKeyId"] == key_id(old)
        assert (srv.data_dir / "admin-key").read_text().strip() == new
        assert (srv.data_dir / "admin-key").stat().st_mode & 0o777 == 0o600
        assert c.get("/api/v1/products", headers={"Authorization": f"Bearer {old}"}).status_code == 401
        assert c.get("/api/v1/products", headers={"Authorization": f"Bearer {new}"}).status_code == 200
        # a console session opened with the old key ends with it
        login = c.post("/console/session", json={"adminKey": new})
        assert login.status_code == 200, login.text
        assert c.get("/api/v1/products").status_code == 200  # the session cookie works
    # the CLI reads the key from the data dir, rotates it, and the server wrote the new one there
    out = subprocess.run(
        [sys.executable, "-m", "iotgate.cli", "admin", "rotate-key", "--data-dir", str(srv.data_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "IOTGATE_ADMIN_KEY"},
    )
    assert out.returncode == 0, out.stderr
    newer = json.loads(out.stdout)["adminKey"]
    assert (srv.data_dir / "admin-key").read_text().strip() == newer
    with httpx.Client(base_url=srv.admin_url, timeout=10) as c:
        assert c.get("/api/v1/products", headers={"Authorization": f"Bearer {new}"}).status_code == 401
        assert c.get("/api/v1/products", headers={"Authorization": f"Bearer {newer}"}).status_code == 200
    with httpx.Client(base_url=srv.admin_url, timeout=10, cookies=login.cookies) as c:
        assert c.get("/api/v1/products").status_code == 401  # the console session died with its key


def test_mutating_requests_are_audited(srv: ServerProcess) -> None:
    key = srv.admin_key
    with srv.admin() as client:
        adm = Admin(client)
        pk = adm.product(SEED_MODEL)
        adm.device(pk, "audited-1")
        assert client.patch(f"/api/v1/products/{pk}/devices/audited-1", json={"enabled": False}).status_code == 200
        assert client.post(f"/api/v1/products/{pk}/devices/audited-1/reset-secret").status_code == 200
        assert client.delete(f"/api/v1/products/{pk}/devices/nosuch").status_code == 404
        client.get("/api/v1/products")  # reads are not audited
        # unauthenticated writes are refused before they reach anything, and not audited
        assert httpx.post(srv.admin_url + "/api/v1/products", json={"name": "x"}).status_code == 401
        # a console session is named as such
        with httpx.Client(base_url=srv.admin_url, timeout=10) as browser:
            login = browser.post("/console/session", json={"adminKey": key})
            csrf = login.json()["csrfToken"]
            r = browser.patch(
                f"/api/v1/products/{pk}/devices/audited-1", json={"nickname": "n"}, headers={"X-CSRF-Token": csrf}
            )
            assert r.status_code == 200, r.text
            sid = browser.cookies["iotgate_console"]

        r = client.get("/api/v1/audit", params={"limit": 7})
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        ours = [i for i in items if pk in i["path"] or i["target"].startswith(pk)]
        steps = [(i["method"], i["path"].replace(pk, "PK"), i["status"], i["target"].replace(pk, "PK")) for i in ours]
        assert steps[:5] == [
            ("PATCH", "/api/v1/products/PK/devices/audited-1", 200, "PK/audited-1"),
            ("DELETE", "/api/v1/products/PK/devices/nosuch", 404, "PK/nosuch"),
            ("POST", "/api/v1/products/PK/devices/audited-1/reset-secret", 200, "PK/audited-1"),
            ("PATCH", "/api/v1/products/PK/devices/audited-1", 200, "PK/audited-1"),
            ("POST", "/api/v1/products/PK/devices", 201, "PK/audited-1"),
        ], steps
        from iotgate.admin.ops_api import session_id

        assert ours[0]["actor"] == session_id(sid)
        assert all(i["actor"] == key_id(key) for i in ours[1:])
        assert all(i["client"] == "127.0.0.1" and i["at"] > 0 for i in ours)
        assert not any(i["method"] == "GET" for i in items)
        # paging: `next` continues where the page ended, without overlap
        page2 = client.get("/api/v1/audit", params={"limit": 7, "before": r.json()["next"]}).json()
        assert page2["items"] and max(i["id"] for i in page2["items"]) < min(i["id"] for i in items)
        assert client.get("/api/v1/audit", params={"limit": 0}).status_code == 422
        assert client.get("/api/v1/audit", params={"before": "x"}).status_code == 422
        # no secret in the audit log
        text = json.dumps(items)
        assert key not in text


def test_device_secrets_are_encrypted_at_rest(srv: ServerProcess) -> None:
    with srv.admin() as client:
        adm = Admin(client)
        pk = adm.product(SEED_MODEL)
        secrets = [adm.device(pk, f"rest-{i:03d}")["deviceSecret"] for i in range(20)]
    files = [p for p in srv.data_dir.iterdir() if p.name.startswith("iotgate.db")]  # db, -wal, -shm
    assert files
    blob = b"".join(p.read_bytes() for p in files)
    assert pk.encode() in blob  # the rows are there...
    for secret in secrets:  # ...their secrets are not, in any form a reader could use
        assert secret.encode() not in blob
    master = srv.data_dir / "master-key"
    assert master.stat().st_mode & 0o777 == 0o600
    assert SecretBox.from_text(master.read_text())  # 32 bytes, url-safe base64


def test_key_and_master_key_from_the_environment(tmp_path: Path) -> None:
    admin_key, master_key = "env-admin-key-0123456789", SecretBox.new_key()
    env = {"IOTGATE_ADMIN_KEY": admin_key, "IOTGATE_MASTER_KEY": master_key}
    proc = ServerProcess(tmp_path / "data", "--device-plain-http", env=env).start()
    try:
        assert not (tmp_path / "data" / "admin-key").exists()
        assert not (tmp_path / "data" / "master-key").exists()  # the master key lives only in the environment
        with proc.admin() as client:
            adm = Admin(client)
            pk = adm.product(SEED_MODEL)
            secret = adm.device(pk, "env-dev")["deviceSecret"]
            r = client.post("/api/v1/admin/rotate-key")
            assert r.status_code == 409 and "IOTGATE_ADMIN_KEY" in r.json()["error"]["message"]
            assert client.get("/api/v1/products").status_code == 200  # still the same key
    finally:
        proc.stop()
    # the secret on disk opens with the environment's master key and nothing else
    with sqlite3_connect(tmp_path / "data" / "iotgate.db") as con:
        (stored,) = con.execute("SELECT secret FROM devices WHERE device_name='env-dev'").fetchone()
    assert secret not in stored and stored.startswith("v1:")
    assert SecretBox.from_text(master_key).open(stored) == secret
    with pytest.raises(ValueError, match="wrong master key"):
        SecretBox.from_text(SecretBox.new_key()).open(stored)


def sqlite3_connect(path: Path):  # type: ignore[no-untyped-def]
    import sqlite3

    return sqlite3.connect(path)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
def test_device_listener_refuses_tls_below_1_2(srv: ServerProcess) -> None:
    def handshake(version: ssl.TLSVersion) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = version
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", srv.device_port), timeout=10) as raw, ctx.wrap_socket(raw) as tls:
            return str(tls.version())

    assert handshake(ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert handshake(ssl.TLSVersion.MAXIMUM_SUPPORTED) == "TLSv1.3"
    for old in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            handshake(old)
    for profile in ("compat", "modern"):
        ctx = server_context(profile, Path(srv.cert), srv.data_dir / "device-key.pem")
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


async def test_audit_storage_contract(tmp_path: Path, pg_url: str) -> None:
    """write_audit/list_audit behave the same on SQLite and PostgreSQL (newest first, keyset pages)."""
    from iotgate.storage.postgres import PostgresStorage

    for store in (SqliteStorage(tmp_path / "a.db"), PostgresStorage(pg_url)):
        await store.open()
        try:
            for i in range(5):
                await store.write_audit(
                    AuditEntry(at=1000 + i, actor="key:abc", method="POST", path=f"/p/{i}", status=200, client="c")
                )
            first = await store.list_audit(None, 3)
            assert [e.path for e in first] == ["/p/4", "/p/3", "/p/2"]
            rest = await store.list_audit(first[-1].id, 3)
            assert [e.path for e in rest] == ["/p/1", "/p/0"]
            assert rest[0].actor == "key:abc" and rest[0].at == 1001 and rest[0].status == 200
        finally:
            await store.close()
