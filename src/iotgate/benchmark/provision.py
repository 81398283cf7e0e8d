"""The server under test: start one (or find a running one), provision devices, get tokens."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from iotgate.auth.secretbox import SecretBox
from iotgate.auth.signing import alink_auth_body, iotda_auth_body

BENCH_MODEL: dict[str, Any] = {
    "properties": [
        {"identifier": "temperature", "dataType": {"type": "float", "specs": {"min": -40, "max": 120, "unit": "°C"}}},
        {"identifier": "humidity", "dataType": {"type": "int32", "specs": {"min": 0, "max": 100, "unit": "%"}}},
        {"identifier": "pressure", "dataType": {"type": "double", "specs": {"min": 800, "max": 1200}}},
        {"identifier": "voltage", "dataType": {"type": "float", "specs": {"min": 0, "max": 500}}},
        {"identifier": "current", "dataType": {"type": "float", "specs": {"min": 0, "max": 100}}},
        {"identifier": "power", "dataType": {"type": "int32", "specs": {"min": 0, "max": 100000}}},
        {"identifier": "switch", "dataType": {"type": "bool", "specs": {}}},
        {"identifier": "mode", "dataType": {"type": "enum", "specs": {"0": "auto", "1": "manual", "2": "off"}}},
        {"identifier": "status", "dataType": {"type": "text", "specs": {"length": 32}}},
        {"identifier": "counter", "dataType": {"type": "int64", "specs": {"min": 0}}},
    ]
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Device:
    product_key: str
    device_name: str
    secret: str
    device_id: str
    alink_token: str = ""
    iotda_token: str = ""
    children: list[Device] = field(default_factory=list)


class Server:
    """A running iotgate: its URLs, admin key, certificate files and process id."""

    def __init__(
        self,
        device_url: str,
        admin_url: str,
        admin_key: str,
        data_dir: Path | None,
        pid: int | None,
        proc: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.device_url = device_url.rstrip("/")
        self.admin_url = admin_url.rstrip("/")
        self.admin_key = admin_key
        self.data_dir = data_dir
        self.pid = pid
        self.proc = proc
        self.admin = httpx.Client(
            base_url=self.admin_url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120
        )
        self.device = httpx.Client(base_url=self.device_url, verify=False, timeout=60)
        self._products: dict[str, str] = {}
        self._devices: dict[str, list[Device]] = {}

    @property
    def host_header(self) -> str:
        return self.device_url.split("://", 1)[1]

    def certificates(self) -> list[tuple[Path, Path]]:
        """The device listener's certificate/key pairs (RSA first), when they are in the data dir."""
        if self.data_dir is None:
            return []
        pairs = []
        for cert, key in (("device-cert.pem", "device-key.pem"), ("device-cert-ecdsa.pem", "device-key-ecdsa.pem")):
            if (self.data_dir / cert).exists() and (self.data_dir / key).exists():
                pairs.append((self.data_dir / cert, self.data_dir / key))
        return pairs

    def close(self) -> None:
        self.admin.close()
        self.device.close()

    def stop(self) -> None:
        self.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- provisioning --------------------------------------------------------------------
    def _call(self, method: str, path: str, **kw: Any) -> Any:
        resp = self.admin.request(method, path, **kw)
        if resp.status_code >= 400:
            raise RuntimeError(f"admin API {method} {path}: {resp.status_code} {resp.text[:300]}")
        return resp.json() if resp.content else None

    def product(self, role: str, node_type: str, model: dict[str, Any] | None) -> str:
        if role in self._products:
            return self._products[role]
        body = {"name": f"bench-{role}", "nodeType": node_type, "dataFormat": "alink-json", "authType": "device-secret"}
        pk = str(self._call("POST", "/api/v1/products", json=body)["productKey"])
        if model is not None:
            self._call("PUT", f"/api/v1/products/{pk}/thing-model", json=model)
            self._call("POST", f"/api/v1/products/{pk}/thing-model/publish")
        self._products[role] = pk
        return pk

    def create_devices(self, pk: str, prefix: str, count: int) -> list[Device]:
        out: list[Device] = []
        for start in range(0, count, 5000):
            names = [f"{prefix}-{i:05d}" for i in range(start, min(count, start + 5000))]
            doc = self._call("POST", f"/api/v1/products/{pk}/devices:batch", json={"devices": names})
            out += [Device(d["productKey"], d["deviceName"], d["deviceSecret"], d["deviceId"]) for d in doc["devices"]]
        return out

    def direct_devices(self, count: int, prefix: str = "bench") -> list[Device]:
        key = f"direct:{prefix}:{count}"
        if key not in self._devices:
            pk = self.product("direct", "direct", BENCH_MODEL)
            self._devices[key] = self.create_devices(pk, prefix, count)
        return self._devices[key]

    def gateways(self, count: int, children: int) -> list[Device]:
        key = f"gateway:{count}:{children}"
        if key in self._devices:
            return self._devices[key]
        gw_pk = self.product("gateway", "gateway", {"properties": []})
        sub_pk = self.product("sub", "sub-device", BENCH_MODEL)
        gateways = self.create_devices(gw_pk, "gw", count)
        subs = self.create_devices(sub_pk, "sub", count * children)
        for i, gw in enumerate(gateways):
            gw.children = subs[i * children : (i + 1) * children]
            pairs = [{"productKey": c.product_key, "deviceName": c.device_name} for c in gw.children]
            self._call(
                "POST",
                f"/api/v1/products/{gw.product_key}/devices/{gw.device_name}/sub-devices",
                json={"devices": pairs},
            )
        self._devices[key] = gateways
        return gateways

    def alink_auth(self, devices: list[Device]) -> None:
        for d in devices:
            if d.alink_token:
                continue
            r = self.device.post("/auth", json=alink_auth_body(d.product_key, d.device_name, d.secret))
            doc = r.json()
            if doc.get("code") != 0:
                raise RuntimeError(f"/auth of {d.device_name} failed: {r.text[:300]}")
            d.alink_token = doc["info"]["token"]

    def iotda_auth(self, devices: list[Device]) -> None:
        for d in devices:
            if d.iotda_token:
                continue
            r = self.device.post("/v5/device-auth", json=iotda_auth_body(d.device_id, d.secret))
            if r.status_code != 200:
                raise RuntimeError(f"/v5/device-auth of {d.device_id} failed: {r.status_code} {r.text[:300]}")
            d.iotda_token = r.json()["access_token"]


# -- starting a server -----------------------------------------------------------------------
def start_server(
    data_dir: Path, extra_args: list[str], timeout: float = 60.0, launcher: list[str] | None = None
) -> Server:
    """`iotgate serve` on free loopback ports with default settings (SQLite, FULL, TLS).
    `launcher` replaces `python -m iotgate.cli` (e.g. to run the server under a profiler)."""
    device_port, admin_port = free_port(), free_port()
    cmd = [
        *(launcher or [sys.executable, "-m", "iotgate.cli"]),
        "serve",
        "--data-dir",
        str(data_dir),
        "--device-host",
        "127.0.0.1",
        "--device-port",
        str(device_port),
        "--admin-host",
        "127.0.0.1",
        "--admin-port",
        str(admin_port),
        "--log-level",
        "warning",
        *extra_args,
    ]
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / "serve.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log.close()
    admin_url = f"http://127.0.0.1:{admin_port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (data_dir.parent / "serve.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"iotgate serve exited with {proc.returncode}:\n{tail}")
        try:
            if httpx.get(admin_url + "/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("iotgate serve did not become healthy in time")
    scheme = "http" if "--device-plain-http" in extra_args else "https"
    key = (data_dir / "admin-key").read_text().strip()
    return Server(f"{scheme}://127.0.0.1:{device_port}", admin_url, key, data_dir, proc.pid, proc)


def attach_server(target: str, data_dir: Path | None, admin_url: str | None, admin_key: str | None) -> Server:
    """A server somebody else runs: URLs and key from flags or its data dir's server.json/admin-key."""
    info: dict[str, Any] = {}
    if data_dir is not None and (data_dir / "server.json").exists():
        info = json.loads((data_dir / "server.json").read_text())
    admin_url = admin_url or info.get("adminUrl")
    if not admin_key and data_dir is not None and (data_dir / "admin-key").exists():
        admin_key = (data_dir / "admin-key").read_text().strip()
    admin_key = admin_key or os.environ.get("IOTGATE_ADMIN_KEY")
    if not admin_url or not admin_key:
        raise RuntimeError(
            "--target needs the admin API: pass --data-dir of the server, or --admin-url and --admin-key"
        )
    pid = info.get("pid")
    return Server(target, admin_url, admin_key, data_dir, int(pid) if pid else None)


# -- many registered devices -----------------------------------------------------------------
def bulk_register(data_dir: Path, count: int, batch: int = 50_000) -> float:
    """Insert `count` filler devices straight into a fresh data dir's SQLite database (before the
    server starts), with secrets sealed under the data dir's master key. Returns seconds taken."""
    from iotgate.storage.sqlite import SqliteStorage

    started = time.monotonic()
    data_dir.mkdir(parents=True, exist_ok=True)
    key_file = data_dir / "master-key"
    if not key_file.exists():
        key_file.write_text(SecretBox.new_key() + "\n")
        key_file.chmod(0o600)
    box = SecretBox.from_text(key_file.read_text())
    db = data_dir / "iotgate.db"

    async def migrate() -> None:
        storage = SqliteStorage(db, "FULL", box)
        await storage.open()
        await storage.close()

    asyncio.run(migrate())
    sealed = box.seal(secrets.token_hex(16))  # one sealed secret for every filler device: they never log in
    now = int(time.time() * 1000)
    pk = "fill" + secrets.token_hex(4)[:7]
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("BEGIN IMMEDIATE")
        con.execute(
            "INSERT INTO products(product_key, name, node_type, data_format, auth_type, description, created_at, "
            "updated_at) VALUES(?, 'bench-filler', 'direct', 'alink-json', 'device-secret', '', ?, ?)",
            (pk, now, now),
        )
        for start in range(0, count, batch):
            rows = [(pk, f"filler-{i:08d}", sealed, now, now) for i in range(start, min(count, start + batch))]
            con.executemany(
                "INSERT INTO devices(product_key, device_name, secret, enabled, generation, nickname, token_epoch_ms, "
                "created_at, updated_at) VALUES(?, ?, ?, 1, 1, '', 0, ?, ?)",
                rows,
            )
        con.execute("COMMIT")
    finally:
        con.close()
    return time.monotonic() - started
