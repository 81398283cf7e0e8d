"""Assembles the platform: storage, registry, ingest, device listener and admin listener."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import secrets
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import msgspec
import uvicorn

from iotgate import metrics
from iotgate.auth.secretbox import SecretBox
from iotgate.auth.tokens import TokenSigner
from iotgate.config import Settings, resolve_workers
from iotgate.core import DeviceCore
from iotgate.gateway.http import DeviceServer, ServerLimits
from iotgate.gateway.router import DeviceRouter
from iotgate.gateway.tls import ensure_self_signed, server_context
from iotgate.gateway.tls_tickets import new_ticket_keys, set_ticket_keys
from iotgate.ingest.ids import MessageIds
from iotgate.ingest.pipeline import Ingestor
from iotgate.ingest.remote import IngestHub, IngestLink
from iotgate.processes import start_child
from iotgate.registry.service import Registry
from iotgate.storage.base import Storage
from iotgate.storage.retention import Housekeeper

log = logging.getLogger("iotgate")
ADMIN_KEY_FILE = "admin-key"
MASTER_KEY_FILE = "master-key"
SERVER_INFO_FILE = "server.json"
WORKER_NICE = 5  # device workers run this much nicer than the main process (see _worker_main)


def _read_or_create(path: Path, make: str) -> tuple[str, bool]:
    if path.exists():
        return path.read_text().strip(), False
    path.write_text(make + "\n")
    path.chmod(0o600)
    return make, True


def open_storage(settings: Settings, box: SecretBox | None, follower: bool = False) -> Storage:
    if settings.uses_postgres:
        from iotgate.storage.postgres import PostgresStorage  # optional backend

        return PostgresStorage(
            settings.database, secret_box=box, running_status_flush_s=settings.running_status_flush_ms / 1000
        )
    from iotgate.storage.sqlite import SqliteStorage

    path = Path(settings.database) if settings.database else settings.data_path / "iotgate.db"
    return SqliteStorage(path, settings.sqlite_synchronous, box, follower=follower)


class EmbeddedUvicorn(uvicorn.Server):
    """uvicorn inside our loop: the platform, not uvicorn, owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Platform:
    def __init__(self, settings: Settings, worker: int = 0, ingest_path: str = "") -> None:
        self.settings = settings = resolve_workers(settings)
        self.worker = worker  # 0: the main process; 1..N: a device-listener process of --workers N
        # SQLite with --workers: the Unix socket on which the main process commits the workers' reports
        self.ingest_path = ingest_path
        self.ingest_hub: IngestHub | None = None
        self.worker_procs: list[BaseProcess] = []
        # --workers N: one set of TLS session-ticket keys, made by the main process and given to every
        # worker, so that a ticket from one worker resumes on the others (gateway/tls_tickets.py)
        self.ticket_keys = b""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
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
        remote_ingest = bool(self.worker) and bool(self.ingest_path)
        self.storage = open_storage(self.settings, box, follower=remote_ingest)
        await self.storage.open()
        await self._check_master_key(box)
        node_id = self.settings.node_id + self.worker
        if not await self.storage.claim_node_id(node_id):
            raise ValueError(
                f"node ID {node_id} is in use by another running iotgate process on this database: give each "
                "node its own --node-id (a node with --workers N also uses node_id+1 .. node_id+N). If that "
                "process is gone with its host, PostgreSQL ends its session within about 25 s"
            )
        key_hex = await self.storage.set_meta_if_absent("token_key", secrets.token_hex(32))
        self.registry = Registry(self.storage, self.settings.registry_poll_s)
        await self.registry.start()
        if remote_ingest:  # a worker on SQLite: the main process commits (ingest/remote.py)
            link = IngestLink(on_lost=self.request_stop)
            await link.connect(self.ingest_path)
            self.ingestor: Ingestor | IngestLink = link
        else:
            self.ingestor = Ingestor(self.storage, self.settings.commit_max_reports, self.settings.commit_max_delay_ms)
        self.ingestor.start()
        self.core = DeviceCore(
            self.settings,
            self.registry,
            self.ingestor,
            TokenSigner(bytes.fromhex(key_hex)),
            MessageIds(self.settings.node_id + self.worker),
            track_seen=not remote_ingest,
        )
        if not remote_ingest:
            self.core.last_seen.update(await self.storage.last_seen())
        from iotgate.forward.engine import Forwarder

        if not remote_ingest:  # a worker on SQLite sends records to the main process, which builds the outbox
            # forwarding rules: outbox rows commit with the reports; the main process delivers them
            self.forwarder = Forwarder(
                self.settings, self.storage, self.registry, self.core, box, deliver=not self.worker
            )
            await self.forwarder.start()
        if self.worker:  # a worker process: the device side only
            await self._start_device_listener(reuse_port=True)
            metrics.bind_platform(self)
            self._tasks.append(metrics.start_worker_snapshots(self.data_dir, self.worker))  # added up in /metrics
            self.ready = True
            return
        if self.settings.workers > 1:
            if not self.settings.uses_postgres:  # one SQLite writer: the workers commit through this process
                assert isinstance(self.ingestor, Ingestor)
                self.ingest_path = _ingest_socket_path()
                self.ingest_hub = IngestHub(self.ingestor, self.ingest_path)
                await self.ingest_hub.start()
            try:
                await self._start_workers()
            except BaseException:
                if self.ingest_hub is not None:
                    await self.ingest_hub.stop()
                raise
        else:
            await self._start_device_listener()
        try:
            await self._start_admin_listener()
        except BaseException:  # e.g. the admin port is taken: do not leave the workers behind
            if self.worker_procs:
                await self._stop_workers()
            if self.ingest_hub is not None:
                await self.ingest_hub.stop()
            raise
        self._write_server_info()
        self._start_background()
        metrics.bind_platform(self)
        metrics.set_access_log(self.settings.access_log)
        self.ready = True

    def _tls_context(self) -> ssl.SSLContext | None:
        ctx = self._new_tls_context()
        if ctx is not None and self.ticket_keys:
            set_ticket_keys(ctx, self.ticket_keys)
        return ctx

    def _new_tls_context(self) -> ssl.SSLContext | None:
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

    async def _check_master_key(self, box: SecretBox) -> None:
        """Every node sharing a database must hold the same master key, or secrets written by one
        cannot be read by another: refuse to start rather than fail device logins later."""
        stored = await self.storage.set_meta_if_absent("master_key_check", box.seal("iotgate"))
        try:
            box.open(stored)
        except ValueError:
            raise ValueError(
                "this database was set up with a different master key: give every node sharing it the same "
                "--master-key (or copy the first node's master-key file into this node's data dir)"
            ) from None

    def _start_background(self) -> None:
        """Main process only: housekeeping (retention, partitions) and, where other processes ingest
        into the same database, the online status they produce."""
        s = self.settings
        self.housekeeper = Housekeeper(self.storage, s.history_retention_days, s.maintenance_interval_s)
        self.housekeeper.start()
        if s.uses_postgres:
            self._tasks.append(asyncio.get_running_loop().create_task(self._follow_last_seen(), name="last-seen"))

    async def _follow_last_seen(self) -> None:
        interval = max(self.settings.registry_poll_s, 1.0) * 5
        mark = int(time.time() * 1000) - 60_000
        while True:
            await asyncio.sleep(interval)
            now = int(time.time() * 1000)
            try:
                seen = await self.storage.last_seen(mark)
            except Exception as exc:
                log.warning("reading device activity failed: %s", exc)
                continue
            mark = now - 60_000  # a report committed late still has its older received_at
            mine = self.core.last_seen
            for device_id, at in seen.items():
                if mine.get(device_id, 0) < at:
                    mine[device_id] = at

    # -- worker processes (--workers N) -----------------------------------------------------
    async def _start_workers(self) -> None:
        """N processes accept device connections on one port (SO_REUSEPORT) and share the database."""
        s = self.settings
        self._tls_context()  # create the self-signed certificate once, before the workers load it
        port, reservation = s.device_port, None
        # the addresses the workers will bind (an empty host: every interface, as create_server does)
        addrs = socket.getaddrinfo(s.device_host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        if port == 0:  # pick the port here, so that every worker binds the same one
            family, kind, proto, _, addr = addrs[0]
            reservation = socket.socket(family, kind, proto)
            reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            reservation.bind(addr)
            port = reservation.getsockname()[1]
        else:  # without SO_REUSEPORT a bind fails if anyone holds the port, even another iotgate's workers
            for family, kind, proto, _, addr in addrs:
                with socket.socket(family, kind, proto) as probe:
                    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio binds it
                    try:
                        probe.bind(addr)
                    except OSError as exc:
                        raise OSError(exc.errno, f"device listener: {exc.strerror}") from None
        self._worker_settings = msgspec.structs.replace(s, device_port=port)
        self.ticket_keys = self.ticket_keys or new_ticket_keys()  # a replaced worker gets the same ones
        try:
            for index in range(1, s.workers + 1):
                self.worker_procs.append(self._spawn_worker(index))
            for proc in self.worker_procs:
                await _until_ready(proc)
        except RuntimeError as exc:  # one did not start (its own error is logged): stop the others
            await self._stop_workers()
            raise ValueError(f"{exc}; its error is logged above") from None
        finally:
            if reservation is not None:
                reservation.close()
        self.device_addresses = [(s.device_host, port)]
        self._tasks.append(asyncio.get_running_loop().create_task(self._supervise_workers(), name="workers"))
        log.info("%d device workers on port %d", s.workers, port)

    def _spawn_worker(self, index: int) -> BaseProcess:
        ctx = multiprocessing.get_context("spawn")
        ready = ctx.Event()
        proc = ctx.Process(
            target=_worker_main,
            args=(self._worker_settings, index, ready, self.ingest_path, self.ticket_keys),
            name=f"iotgate-worker-{index}",
            daemon=True,  # terminated if this process exits without stopping them
        )
        proc.start()
        proc.ready = ready  # type: ignore[attr-defined]
        return proc

    async def _supervise_workers(self) -> None:
        """Replace a worker that died (its connections are lost; devices reconnect to the others)."""
        while True:
            await asyncio.sleep(1.0)
            for i, proc in enumerate(self.worker_procs):
                if proc.is_alive() or self._stopping:
                    continue
                log.error("device worker %d exited with code %s; starting a new one", i + 1, proc.exitcode)
                self.worker_procs[i] = self._spawn_worker(i + 1)
                try:
                    await _until_ready(self.worker_procs[i])
                except RuntimeError as exc:
                    log.error("%s", exc)

    async def _stop_workers(self) -> None:
        self._stopping = True
        for proc in self.worker_procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)  # each finishes its in-flight requests and commits
        loop = asyncio.get_running_loop()
        for proc in self.worker_procs:
            await loop.run_in_executor(None, proc.join, 30)
            if proc.is_alive():
                log.error("device worker %s did not stop in 30 s; killing it", proc.name)
                proc.kill()
                await loop.run_in_executor(None, proc.join, 5)

    def device_listener_ok(self) -> bool:
        if self.worker_procs:
            return not self._stopping and all(p.is_alive() and p.ready.is_set() for p in self.worker_procs)  # type: ignore[attr-defined]
        server = getattr(self, "device_server", None)
        return bool(self.device_addresses) and server is not None and not server.closing

    async def _start_device_listener(self, reuse_port: bool = False) -> None:
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
        self.device_server.on_refused = lambda client: metrics.limit_hit("connections_per_ip")
        self.device_addresses = await self.device_server.listen(
            s.device_host, s.device_port, self._tls_context(), reuse_port=reuse_port
        )
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
        # Bind here: uvicorn would log a bind error and sys.exit(3) inside the task (a traceback, no clean error).
        host, port = self.settings.admin_host, self.settings.admin_port
        try:
            admin_sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        except OSError as exc:
            raise OSError(exc.errno, f"admin listener: {exc.strerror}") from None
        self._admin_task = asyncio.get_running_loop().create_task(self.admin_server.serve(sockets=[admin_sock]))
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
        if self.worker_procs:
            await self._stop_workers()
        else:
            await self.device_server.shutdown()
        if self.ingest_hub is not None:  # the workers have committed their last reports through it
            await self.ingest_hub.stop()
        for task in self._tasks:
            task.cancel()
        if hasattr(self, "housekeeper"):
            await self.housekeeper.stop()
        await self.ingestor.stop()
        if hasattr(self, "forwarder"):
            await self.forwarder.stop()  # after the last commit: finish delivery rounds in progress
        if not self.worker:
            self.admin_server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._admin_task, 10)
        await self.registry.stop()
        await self.storage.close()
        if not self.worker:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / SERVER_INFO_FILE).unlink()


def _ingest_socket_path() -> str:
    """Where the workers reach the writer: a Linux abstract socket (no file to clean up; peers are
    checked by uid), elsewhere a socket file in a fresh 0700 directory."""
    if sys.platform.startswith("linux"):
        return f"\0iotgate-ingest-{os.getpid()}-{secrets.token_hex(4)}"
    return os.path.join(tempfile.mkdtemp(prefix="iotgate-"), "ingest.sock")


async def _until_ready(proc: BaseProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not proc.ready.is_set():  # type: ignore[attr-defined]
        if not proc.is_alive():
            raise RuntimeError(f"device worker {proc.name} exited with code {proc.exitcode} while starting")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"device worker {proc.name} did not start within {timeout:.0f} s")
        await asyncio.sleep(0.05)


def _worker_main(settings: Settings, index: int, ready: Any, ingest_path: str = "", ticket_keys: bytes = b"") -> None:
    """Entry point of a device-worker process (multiprocessing spawn)."""
    # When cores are short, the main process (the SQLite writer, the admin API) gets the CPU first: a
    # commit that waits behind request handling holds up every device in its batch. Interleaved
    # alink-post runs: 11.9k vs 10.5k msgs/s (median of 4) with workers at nice +5 (docs/benchmarks.md).
    start_child(settings.log_level, settings.log_format, WORKER_NICE)  # the parent sends SIGTERM
    try:
        asyncio.run(_serve_worker(settings, index, ready, ingest_path, ticket_keys))
    except (OSError, ValueError) as exc:  # e.g. the port was taken after the parent's check
        log.error("device worker %d could not start: %s", index, exc)
        sys.exit(1)


def tune_gc() -> None:
    """After start-up: keep what is loaded so far (modules, models, caches) out of every garbage
    collection, and collect less often. A full collection of the start-up heap took ~25 ms, paused
    the event loop and set the p99 latency (docs/benchmarks.md); request garbage is freed by
    reference counting, the collector only has cycles to find."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def _serve_worker(settings: Settings, index: int, ready: Any, ingest_path: str, ticket_keys: bytes) -> None:
    platform = Platform(settings, worker=index, ingest_path=ingest_path)
    platform.ticket_keys = ticket_keys
    parent = os.getppid()
    await platform.start()
    tune_gc()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, platform.request_stop)
    ready.set()

    async def orphaned() -> None:  # the parent was killed: do not serve on without it
        while os.getppid() == parent:
            await asyncio.sleep(0.5)
        log.warning("device worker %d: parent process is gone; stopping", index)
        platform.request_stop()

    watchdog = loop.create_task(orphaned())
    await platform.wait_stopped()
    watchdog.cancel()
    await platform.stop()


async def serve(settings: Settings) -> None:
    platform = Platform(settings)
    await platform.start()
    tune_gc()
    if platform.admin_key_created and sys.stdout.isatty():
        print(
            f"\n  Admin API key (shown once, stored in {platform.data_dir / ADMIN_KEY_FILE}):\n  {platform.admin_key}\n",
            flush=True,
        )
    elif platform.admin_key_created:  # stdout is a log (journald, a file): never write the key there
        print(f"Admin API key created in {platform.data_dir / ADMIN_KEY_FILE} (not printed: stdout is not a terminal)")
    print(f"iotgate ready: devices {platform.device_url}  admin {platform.admin_url}", flush=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, platform.request_stop)
    await platform.wait_stopped()
    log.info("shutting down: finishing in-flight requests and flushing commits")
    await platform.stop()
    log.info("stopped")
