"""Shared fixtures: a real `iotgate serve` process on free ports, and admin/device helpers."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

# the temperature/humidity model that docs/devices.md and the README call the seed model
from iotgate.simulate import SEED_COLLECTOR_MODEL as SEED_MODEL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`iotgate serve` in a subprocess with its own data dir and ports."""

    def __init__(self, data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.device_port = free_port()
        self.admin_port = free_port()
        self.extra = list(extra)
        # one process unless a test asks for workers: most tests look at one process's behaviour
        # (the default, one worker per core, is covered by test_readme and test_sqlite_workers)
        self.env = {"IOTGATE_WORKERS": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-serve.log"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def plain(self) -> bool:
        return "--device-plain-http" in self.extra

    @property
    def device_url(self) -> str:
        return f"{'http' if self.plain else 'https'}://127.0.0.1:{self.device_port}"

    @property
    def admin_key(self) -> str:
        return self.env.get("IOTGATE_ADMIN_KEY") or (self.data_dir / "admin-key").read_text().strip()

    @property
    def cert(self) -> str:
        return str(self.data_dir / "device-cert.pem")

    def start(self, timeout: float = 30) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "iotgate.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--device-host",
            "127.0.0.1",
            "--device-port",
            str(self.device_port),
            "--admin-port",
            str(self.admin_port),
            *self.extra,
        ]
        env = {**os.environ, **self.env}
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.admin_url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)

    def device_client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.device_url, verify=self.plain, timeout=30, **kw)


def until(check: Callable[[], bool], within_s: float, sleep: float = 0.1) -> bool:
    """Poll check() until it holds or within_s passes; its last answer."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(sleep)
    return check()


class Admin:
    """Small helpers over the management API for tests."""

    def __init__(self, client: httpx.Client) -> None:
        self.c = client

    def product(self, model: dict[str, Any] | None = None, node_type: str = "direct", name: str = "collector") -> str:
        r = self.c.post(
            "/api/v1/products",
            json={"name": name, "nodeType": node_type, "dataFormat": "alink-json", "authType": "device-secret"},
        )
        assert r.status_code == 201, r.text
        pk = str(r.json()["productKey"])
        if model is not None:
            r = self.c.put(f"/api/v1/products/{pk}/thing-model", json=model)
            assert r.status_code == 200, r.text
            r = self.c.post(f"/api/v1/products/{pk}/thing-model/publish")
            assert r.status_code == 200, r.text
        return pk

    def device(self, pk: str, name: str | None = None) -> dict[str, Any]:
        r = self.c.post(f"/api/v1/products/{pk}/devices", json={"deviceName": name} if name else {})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def properties(self, pk: str, dn: str) -> dict[str, Any]:
        r = self.c.get(f"/api/v1/products/{pk}/devices/{dn}/properties")
        assert r.status_code == 200, r.text
        return {p["identifier"]: p for p in r.json()["items"]}

    def properties_when(self, pk: str, dn: str, within_s: float = 5.0, **values: Any) -> dict[str, Any]:
        """The running status once it shows these values. On PostgreSQL the process that committed a
        report writes its running status every `running_status_flush_ms` (1 s), so another process
        (the admin API beside device workers, another node) sees it up to that late."""
        status: dict[str, Any] = {}

        def shows() -> bool:
            nonlocal status
            status = self.properties(pk, dn)
            return all(status.get(k, {}).get("value") == v for k, v in values.items())

        until(shows, within_s)
        return status

    def history(self, pk: str, dn: str, identifier: str = "temperature") -> list[tuple[int, Any]]:
        """(time, value) of every stored point of a property (up to 10,000), newest first."""
        r = self.c.get(f"/api/v1/products/{pk}/devices/{dn}/properties/{identifier}/history", params={"limit": 10000})
        assert r.status_code == 200, r.text
        return [(p["time"], p["value"]) for p in r.json()["items"]]

    def messages(self, pk: str, dn: str, kind: str | None = None) -> list[dict[str, Any]]:
        r = self.c.get(f"/api/v1/products/{pk}/devices/{dn}/messages", params={"kind": kind} if kind else {})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


def api_routes() -> list[tuple[str, str]]:
    """(method, path) of every route under /api/ of the admin app as the server builds it (not started)."""
    from starlette.routing import Route

    from iotgate.admin.app import create_admin_app
    from iotgate.config import Settings
    from iotgate.server import Platform

    app = create_admin_app(Platform(Settings(data_dir="/nonexistent")))
    while not hasattr(app, "routes"):  # unwrap the middleware layers down to Starlette
        app = app.app  # type: ignore[attr-defined]
    out = []
    for route in app.routes:  # type: ignore[attr-defined]
        if isinstance(route, Route) and route.path.startswith("/api/"):
            for method in sorted(route.methods or ()):
                out.append((method, route.path))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One TLS server per test module (the embedded default: SQLite, self-signed certificate)."""
    proc = ServerProcess(tmp_path_factory.mktemp("srv") / "data").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[Admin]:
    with server.admin() as client:
        yield Admin(client)


@pytest.fixture(scope="module")
def seed_product(admin: Admin) -> str:
    return admin.product(SEED_MODEL)


# -- PostgreSQL: a fresh database per test module ---------------------------------------------
PG_SERVER = os.environ.get("IOTGATE_TEST_PG", "postgresql://{user}@127.0.0.1:5432/{db}")


def _run_async(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even where an event loop is running."""
    import asyncio
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _pg_admin_url() -> str | None:
    """A URL that reaches the server's maintenance DB as a role allowed to CREATE DATABASE, or None."""
    import asyncpg

    async def probe(url: str) -> bool:
        try:
            con = await asyncpg.connect(url, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await con.close()
        return True

    for user in ("postgres", os.environ.get("USER") or "root"):
        for db in ("postgres", "test"):
            url = PG_SERVER.format(user=user, db=db)
            if _run_async(probe(url)):
                return url
    return None


def _pg_exec(admin_url: str, sql: str) -> None:
    import asyncpg

    async def run() -> None:
        con = await asyncpg.connect(admin_url, timeout=10)
        try:
            await con.execute(sql)
        finally:
            await con.close()

    _run_async(run())


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty database (`iotgate_t_<random>`), dropped after the module."""
    import secrets

    admin_url = _pg_admin_url()
    if admin_url is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (as postgres or the current user)")
    name = "iotgate_t_" + secrets.token_hex(6)
    _pg_exec(admin_url, f"CREATE DATABASE {name}")
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        _pg_exec(admin_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- SQLite writer tests (test_storage_checkpoint, test_sqlite_latest_fold) ------------------------------
def table_latest(path: Path, device: int) -> dict[str, tuple[str, int]]:
    """The `latest` rows of a device as stored (value text, ts)."""
    with sqlite3.connect(path) as con:
        rows = con.execute("SELECT identifier, value, ts FROM latest WHERE device_id=?", (device,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def property_report(message_id: int, device: int, ts: int, **values: Any) -> Any:
    """A property report as the writer gets it (a storage.base.Record), received now."""
    from iotgate.storage.base import Record

    now = int(time.time() * 1000)
    return Record(message_id=message_id, device_id=device, kind="property", ts=ts, received_at=now, values=values)


def abandon(storage: Any) -> None:
    """After a simulated crash (a SqliteStorage never closed): stop its writer and reader threads."""
    storage._reader_pool.shutdown()
    storage._writer_pool.shutdown()


@pytest.fixture
def no_timed_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints only when asked (close, recovery), so the test sees the in-memory state."""
    from iotgate.storage import sqlite as sqlite_mod

    monkeypatch.setattr(sqlite_mod, "CHECKPOINT_S", 1e9)
