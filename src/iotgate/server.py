"""Assembles the platform: storage, registry, ingest, device listener and admin listener."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import msgspec
import uvicorn

from iotgate.auth.secretbox import SecretBox
from iotgate.auth.tokens import TokenSigner
from iotgate.config import Settings
from iotgate.core import DeviceCore
from iotgate.gateway.http import DeviceServer, ServerLimits
from iotgate.gateway.router import DeviceRouter
from iotgate.gateway.tls import ensure_self_signed, server_context
from iotgate.ingest.ids import MessageIds
from iotgate.ingest.pipeline import Ingestor
from iotgate.registry.service import Registry
from iotgate.storage.base import Storage

log = logging.getLogger("iotgate")
ADMIN_KEY_FILE = "admin-key"
MASTER_KEY_FILE = "master-key"
SERVER_INFO_FILE = "server.json"


def _read_or_create(path: Path, make: str) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    path.write_text(make + "\n")
    path.chmod(0o600)
    return make, True


def open_storage(settings: Settings, box: SecretBox | None) -> Storage:
    if settings.database.startswith(("postgres://", "postgresql://")):
        from iotgate.storage.postgres import PostgresStorage  # optional backend

        return PostgresStorage(settings.database, secret_box=box)
    from iotgate.storage.sqlite import SqliteStorage

    path = Path(settings.database) if settings.database else settings.data_path / "iotgate.db"
    return SqliteStorage(path, settings.sqlite_synchronous, box)


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the platform, not uvicorn, owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Platform:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = settings.data_path
        self.admin_key = ""
        self.admin_key_created = False
        self.device_addresses: list[tuple[str, int]] = []
        self.admin_address: tuple[str, int] | None = None
        self.cert_path: Path | None = None
        self.ready = False
        self._stop = asyncio.Event()

    # -- start ----------------------------------------------------------------------------
    def prepare_data_dir(self) -> SecretBox:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.admin_key, self.admin_key_created = (
            (self.settings.admin_key, False)
            if self.settings.admin_key
            else _read_or_create(self.data_dir / ADMIN_KEY_FILE, "iga_" + secrets.token_urlsafe(32))
        )
        master = self.settings.master_key or _read_or_create(self.data_dir / MASTER_KEY_FILE, SecretBox.new_key())[0]
        return SecretBox.from_text(master)

    async def start(self) -> None:
        box = self.prepare_data_dir()
        self.storage = open_storage(self.settings, box)
        await self.storage.open()
        key_hex = await self.storage.set_meta_if_absent("token_key", secrets.token_hex(32))
        self.registry = Registry(self.storage, self.settings.registry_poll_s)
        await self.registry.start()
        self.ingestor = Ingestor(self.storage, self.settings.commit_max_reports, self.settings.commit_max_delay_ms)
        self.ingestor.start()
        self.core = DeviceCore(
            self.settings,
            self.registry,
            self.ingestor,
            TokenSigner(bytes.fromhex(key_hex)),
            MessageIds(self.settings.node_id),
        )
        self.core.last_seen.update(await self.storage.last_seen())
        await self._start_device_listener()
        await self._start_admin_listener()
        self._write_server_info()
        self.ready = True

    def _tls_context(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.device_plain_http:
            log.warning(
                "!!! DEVICE LISTENER RUNS WITHOUT TLS (--device-plain-http): credentials and data travel "
                "in clear text. Use this for local testing only. !!!"
            )
            return None
        if s.tls_cert:
            self.cert_path = Path(s.tls_cert)
            return server_context(s.tls_profile, Path(s.tls_cert), Path(s.tls_key))
        rsa_cert, rsa_key, ec_cert, ec_key = ensure_self_signed(self.data_dir)
        self.cert_path = rsa_cert
        return server_context(s.tls_profile, rsa_cert, rsa_key, ec_cert, ec_key)

    async def _start_device_listener(self) -> None:
        s = self.settings
        self.router = DeviceRouter(self.core)
        limits = ServerLimits(
            s.header_timeout_s,
            s.body_timeout_s,
            s.idle_timeout_s,
            s.max_header_bytes,
            s.max_connections_per_ip,
        )
        self.device_server = DeviceServer(self.router, limits)
        self.device_addresses = await self.device_server.listen(s.device_host, s.device_port, self._tls_context())
        scheme = "http" if s.device_plain_http else "https"
        for host, port in self.device_addresses:
            log.info("device listener on %s://%s:%d", scheme, host, port)

    async def _start_admin_listener(self) -> None:
        from iotgate.admin.app import create_admin_app

        app = create_admin_app(self)
        config = uvicorn.Config(
            app,
            host=self.settings.admin_host,
            port=self.settings.admin_port,
            log_level="warning",
            access_log=self.settings.access_log,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self.admin_server = EmbeddedUvicorn(config)
        self._admin_task = asyncio.get_running_loop().create_task(self.admin_server.serve())
        while not self.admin_server.started:
            if self._admin_task.done():
                self._admin_task.result()  # raises the bind error
                raise RuntimeError("admin listener did not start")
            await asyncio.sleep(0.01)
        sock = self.admin_server.servers[0].sockets[0]
        self.admin_address = sock.getsockname()[:2]
        log.info("admin API and console on http://%s:%d", *self.admin_address)

    @property
    def admin_url(self) -> str:
        assert self.admin_address is not None
        host, port = self.admin_address
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"http://{host}:{port}"

    @property
    def device_url(self) -> str:
        host, port = self.device_addresses[0]
        host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        return f"{'http' if self.settings.device_plain_http else 'https'}://{host}:{port}"

    def _write_server_info(self) -> None:
        info = {"adminUrl": self.admin_url, "deviceUrl": self.device_url, "pid": os.getpid()}
        if self.cert_path:
            info["deviceCert"] = str(self.cert_path.resolve())
        (self.data_dir / SERVER_INFO_FILE).write_bytes(msgspec.json.encode(info))

    # -- stop -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        self._stop.set()

    async def wait_stopped(self) -> None:
        await self._stop.wait()

    async def stop(self) -> None:
        """Graceful: stop accepting, finish in-flight requests, flush commits, close."""
        self.ready = False
        await self.device_server.shutdown()
        await self.ingestor.stop()
        self.admin_server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._admin_task, 10)
        await self.registry.stop()
        await self.storage.close()
        with contextlib.suppress(FileNotFoundError):
            (self.data_dir / SERVER_INFO_FILE).unlink()


async def serve(settings: Settings) -> None:
    platform = Platform(settings)
    await platform.start()
    if platform.admin_key_created:
        print(
            f"\n  Admin API key (shown once, stored in {platform.data_dir / ADMIN_KEY_FILE}):\n  {platform.admin_key}\n",
            flush=True,
        )
    print(f"iotgate ready: devices {platform.device_url}  admin {platform.admin_url}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, platform.request_stop)
    await platform.wait_stopped()
    log.info("shutting down: finishing in-flight requests and flushing commits")
    await platform.stop()
    log.info("stopped")
