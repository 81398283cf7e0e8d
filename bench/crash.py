"""Crash safety: kill the server under load, restart it, and check every acknowledged report.

Many devices report continuously over several keep-alive connections (a minimal asyncio HTTP/1.1
client, so that nothing retries behind our back). Each report carries a per-device sequence number
`seq`; a device never re-sends one. At a random moment the whole server (all its processes) gets
SIGKILL, is restarted on the same data and ports, and the load carries on. At the end the database
is read directly and, for every report answered with success:

* exactly one history row holds its (device, seq), and
* that row's message_id is the one the device was told.

Reports that got no answer (the connection died with the server) may be stored once or not at
all, never twice. A final phase sends SIGTERM under load: the server must exit 0, every reply it
sent must be a success, and every acknowledged report must be stored.

    python bench/crash.py --kills 10                          # SQLite and PostgreSQL
    python bench/crash.py --backend postgres --workers 2 --kills 10
    python bench/crash.py --backend sqlite --workers 2 --kills 10   # workers commit through the main process
    python bench/crash.py --backend sqlite --kills 3 --json   # what tests/test_crash.py runs

PostgreSQL: a fresh database is created on --pg-admin (and dropped after) unless --database is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from iotgate.auth.secretbox import SecretBox
from iotgate.auth.signing import alink_auth_body

MODEL = {
    "properties": [
        {
            "identifier": "seq",
            "name": "Sequence",
            "accessMode": "r",
            "dataType": {"type": "int32", "specs": {"min": 0, "max": 2147483647, "step": 1}},
        },
        {
            "identifier": "temperature",
            "name": "Temperature",
            "accessMode": "r",
            "dataType": {"type": "int32", "specs": {"min": -10, "max": 50, "step": 1}},
        },
    ]
}
ADMIN_KEY = "iga_crash_" + secrets.token_urlsafe(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the server under test ------------------------------------------------------------------------
class Server:
    """`iotgate serve` in its own process group (SIGKILL takes the workers down with it)."""

    def __init__(self, data_dir: Path, database: str | None, workers: int) -> None:
        self.data_dir = data_dir
        self.database = database
        self.workers = workers
        self.device_port = free_port()
        self.admin_port = free_port()
        self.master_key = SecretBox.new_key()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / "serve.log"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until healthy; returns the seconds it took."""
        began = time.monotonic()
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
            "--device-plain-http",
            "--device-rate-per-s",
            "100000",
            "--device-rate-burst",
            "100000",
        ]
        cmd += ["--workers", str(self.workers)]
        if self.database:
            cmd += ["--database", self.database]
        env = {**os.environ, "IOTGATE_ADMIN_KEY": ADMIN_KEY, "IOTGATE_MASTER_KEY": self.master_key}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        while time.monotonic() - began < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.admin_url + "/readyz", timeout=1).status_code == 200:
                    return time.monotonic() - began
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not become ready: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group: the server and any worker processes, at once."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.proc = None

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9
        self.proc = None
        return code

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""


def provision(server: Server, devices: int) -> tuple[str, list[tuple[str, str]]]:
    with httpx.Client(base_url=server.admin_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30) as c:
        r = c.post(
            "/api/v1/products",
            json={"name": "crash", "nodeType": "direct", "dataFormat": "alink-json", "authType": "device-secret"},
        )
        r.raise_for_status()
        pk = r.json()["productKey"]
        c.put(f"/api/v1/products/{pk}/thing-model", json=MODEL).raise_for_status()
        c.post(f"/api/v1/products/{pk}/thing-model/publish").raise_for_status()
        names = [{"deviceName": f"crash-{i:04d}"} for i in range(devices)]
        r = c.post(f"/api/v1/products/{pk}/devices:batch", json={"devices": names})
        r.raise_for_status()
        return pk, [(d["deviceName"], d["deviceSecret"]) for d in r.json()["devices"]]


# -- the load -------------------------------------------------------------------------------------
class Reply:
    __slots__ = ("body", "close", "status")

    def __init__(self, status: int, close: bool, body: bytes) -> None:
        self.status, self.close, self.body = status, close, body


class Connection:
    """HTTP/1.1 keep-alive over asyncio streams; one request at a time; no retries, ever."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: dict[str, str], sent: asyncio.Event | None = None) -> Reply:
        assert self.reader is not None and self.writer is not None
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()
        if sent is not None:
            sent.set()
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 30)
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        payload = await asyncio.wait_for(self.reader.readexactly(int(fields.get("content-length", "0"))), 30)
        return Reply(status, fields.get("connection", "").lower() == "close", payload)


@dataclass
class Device:
    name: str
    secret: str
    token: str = ""
    next_seq: int = 0


@dataclass
class Ledger:
    """What the devices were told."""

    acked: dict[tuple[str, int], int] = field(default_factory=dict)  # (device, seq) -> messageId
    unanswered: set[tuple[str, int]] = field(default_factory=set)  # sent (at least partly), no reply
    error_replies: list[str] = field(default_factory=list)  # the server answered, but not with success
    sent: int = 0
    refused: int = 0  # connection attempts refused (server down or shutting down)


class Load:
    def __init__(self, port: int, pk: str, devices: list[Device], connections: int, ledger: Ledger) -> None:
        self.port, self.pk, self.devices, self.connections = port, pk, devices, connections
        self.ledger = ledger
        self._next = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.connections)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def _device(self) -> Device:
        device = self.devices[self._next % len(self.devices)]
        self._next += 1
        return device

    async def _auth(self, conn: Connection, device: Device) -> bool:
        reply = await conn.post(
            "/auth",
            json.dumps(alink_auth_body(self.pk, device.name, device.secret)).encode(),
            {"Content-Type": "application/json"},
        )
        doc = json.loads(reply.body)
        if doc.get("code") != 0:
            self.ledger.error_replies.append(f"/auth {device.name}: {reply.body[:200]!r}")
            return False
        device.token = doc["info"]["token"]
        return True

    async def _run(self) -> None:
        conn = Connection(self.port)
        while not self._stop.is_set():
            if conn.writer is None:
                try:
                    await conn.open()
                except (OSError, TimeoutError):
                    self.ledger.refused += 1
                    await asyncio.sleep(0.05)
                    continue
            device = self._device()
            key: tuple[str, int] | None = None
            try:
                if not device.token and not await self._auth(conn, device):
                    continue
                key = (device.name, device.next_seq)
                device.next_seq += 1
                body = json.dumps({"id": str(key[1]), "params": {"seq": key[1], "temperature": key[1] % 40}})
                sent = asyncio.Event()
                self.ledger.sent += 1
                reply = await conn.post(
                    f"/topic/sys/{self.pk}/{device.name}/thing/event/property/post",
                    body.encode(),
                    {"password": device.token, "Content-Type": "application/json"},
                    sent,
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError, IndexError):
                if key is not None:
                    self.ledger.unanswered.add(key)
                conn.close()
                continue
            doc = json.loads(reply.body)
            if reply.status == 200 and doc.get("code") == 0:
                self.ledger.acked[key] = int(doc["info"]["messageId"])
            else:
                self.ledger.error_replies.append(f"{key}: HTTP {reply.status} {reply.body[:200]!r}")
            if reply.close:
                conn.close()
        conn.close()

    async def until_acked(self, count: int, within_s: float) -> None:
        goal = len(self.ledger.acked) + count
        deadline = time.monotonic() + within_s
        while len(self.ledger.acked) < goal and time.monotonic() < deadline:
            await asyncio.sleep(0.02)


# -- checking the database ------------------------------------------------------------------------
async def stored_reports(data_dir: Path, database: str | None) -> list[tuple[str, int, int]]:
    """(device name, seq, message_id) of every history row."""
    query = "SELECT d.device_name, h.message_id, h.data FROM history h JOIN devices d ON d.id = h.device_id"
    if database is None:
        with sqlite3.connect(data_dir / "iotgate.db") as con:
            rows = con.execute(query).fetchall()
    else:
        import asyncpg

        con = await asyncpg.connect(database)
        try:
            rows = [tuple(r) for r in await con.fetch(query)]
        finally:
            await con.close()
    return [(name, int(json.loads(data)["seq"]), int(mid)) for name, mid, data in rows]


def history_index_problems(data_dir: Path) -> list[str]:
    """SQLite after a clean stop: every history row has its history_index entry, every entry its
    row, and the mark covers them all (storage/history_index.py, written behind ingest)."""
    with sqlite3.connect(data_dir / "iotgate.db") as con:
        unindexed = con.execute(
            "SELECT COUNT(*) FROM history h WHERE NOT EXISTS (SELECT 1 FROM history_index i "
            "WHERE i.device_id = h.device_id AND i.ts = h.ts AND i.message_id = h.message_id)"
        ).fetchone()[0]
        dangling = con.execute(
            "SELECT COUNT(*) FROM history_index i WHERE NOT EXISTS (SELECT 1 FROM history h WHERE h.message_id = i.message_id)"
        ).fetchone()[0]
        mark = con.execute("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'history-index-rowid'").fetchone()[0]
        newest = con.execute("SELECT COALESCE(MAX(rowid), 0) FROM history").fetchone()[0]
    problems = [f"{unindexed} history rows without an index entry"] if unindexed else []
    problems += [f"{dangling} index entries without a history row"] if dangling else []
    return problems + ([f"index mark {mark} below the newest row {newest}"] if mark < newest else [])


async def running_status_problems(data_dir: Path, database: str | None) -> list[str]:
    """After a clean stop: each device's `latest` rows hold the newest event time of each property
    in its history (the running status is written behind ingest and replayed after a kill)."""
    history_q, latest_q = "SELECT device_id, ts, data FROM history", "SELECT device_id, identifier, ts FROM latest"
    if database is None:
        with sqlite3.connect(data_dir / "iotgate.db") as con:
            history, latest = con.execute(history_q).fetchall(), con.execute(latest_q).fetchall()
    else:
        import asyncpg

        con = await asyncpg.connect(database)
        try:
            history, latest = await con.fetch(history_q), await con.fetch(latest_q)
        finally:
            await con.close()
    newest: dict[tuple[int, str], int] = {}
    for device, ts, data in history:
        for key in json.loads(data):
            newest[(device, key)] = max(ts, newest.get((device, key), ts))
    stored = {(device, key): ts for device, key, ts in latest}
    return [
        f"device {d} {k}: history {ts}, latest {stored.get((d, k))}"
        for (d, k), ts in newest.items()
        if stored.get((d, k)) != ts
    ]


@dataclass
class Verdict:
    backend: str
    kills: int
    sent: int
    acked: int
    unanswered: int
    unanswered_stored: int
    error_replies: list[str]
    missing: list[str]  # acknowledged, not stored
    duplicated: list[str]  # stored more than once
    wrong_id: list[str]  # stored under another message ID than the device was told
    restart_s: list[float]
    index_problems: list[str] = field(default_factory=list)  # SQLite's history_index after the clean stop
    status_problems: list[str] = field(default_factory=list)  # latest values against history after it
    sigterm_exit: int | None = None
    sigterm_acked_during: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        clean = not (self.error_replies or self.missing or self.duplicated or self.wrong_id)
        clean = clean and not (self.index_problems or self.status_problems)
        return clean and self.sigterm_exit in (None, 0)


def judge(backend: str, kills: int, ledger: Ledger, stored: list[tuple[str, int, int]]) -> Verdict:
    rows: dict[tuple[str, int], list[int]] = {}
    for name, seq, mid in stored:
        rows.setdefault((name, seq), []).append(mid)
    missing = [f"{k} -> {mid}" for k, mid in ledger.acked.items() if k not in rows]
    duplicated = [f"{k}: {ids}" for k, ids in rows.items() if len(ids) > 1]
    wrong = [f"{k}: told {mid}, stored {rows[k]}" for k, mid in ledger.acked.items() if k in rows and rows[k] != [mid]]
    return Verdict(
        backend=backend,
        kills=kills,
        sent=ledger.sent,
        acked=len(ledger.acked),
        unanswered=len(ledger.unanswered),
        unanswered_stored=sum(1 for k in ledger.unanswered if k in rows),
        error_replies=ledger.error_replies[:20],
        missing=missing[:20],
        duplicated=duplicated[:20],
        wrong_id=wrong[:20],
        restart_s=[],
    )


# -- the scenario ---------------------------------------------------------------------------------
async def run(
    work_dir: Path,
    database: str | None,
    kills: int = 3,
    devices: int = 40,
    connections: int = 8,
    run_s: tuple[float, float] = (0.5, 2.0),
    workers: int = 1,
    sigterm: bool = True,
    seed: int | None = None,
) -> Verdict:
    """Kill the server `kills` times under load, then SIGTERM it under load; judge the database."""
    rng = random.Random(seed)
    backend = "sqlite" if database is None else f"postgres (workers={workers})"
    began = time.monotonic()
    server = Server(work_dir / "data", database, workers)
    restarts: list[float] = []
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, server.start)
    try:
        pk, creds = await loop.run_in_executor(None, provision, server, devices)
        ledger = Ledger()
        load = Load(server.device_port, pk, [Device(n, s) for n, s in creds], connections, ledger)
        load.start()
        for _ in range(kills):
            await load.until_acked(50, 30)  # the server is taking load
            await asyncio.sleep(rng.uniform(*run_s))
            server.kill()
            restarts.append(await loop.run_in_executor(None, server.start))
        await load.until_acked(50, 30)  # and takes it again after the last restart
        acked_before = len(ledger.acked)
        exit_code: int | None = None
        if sigterm:
            await asyncio.sleep(rng.uniform(*run_s))
            exit_code = await loop.run_in_executor(None, server.terminate)
        await load.stop()
        if not sigterm:
            await loop.run_in_executor(None, server.terminate)
        verdict = judge(backend, kills, ledger, await stored_reports(server.data_dir, database))
        verdict.restart_s = [round(s, 2) for s in restarts]
        if database is None:
            verdict.index_problems = history_index_problems(server.data_dir)
        verdict.status_problems = (await running_status_problems(server.data_dir, database))[:20]
        verdict.sigterm_exit = exit_code
        verdict.sigterm_acked_during = len(ledger.acked) - acked_before
        verdict.seconds = round(time.monotonic() - began, 1)
        return verdict
    finally:
        server.kill()


async def create_database(admin_url: str) -> str:
    import asyncpg

    name = "iotgate_crash_" + secrets.token_hex(4)
    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f"CREATE DATABASE {name}")
    finally:
        await con.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin_url: str, url: str) -> None:
    import asyncpg

    con = await asyncpg.connect(admin_url)
    try:
        await con.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")
    finally:
        await con.close()


async def main_async(args: argparse.Namespace) -> list[Verdict]:
    verdicts = []
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        with tempfile.TemporaryDirectory(prefix="iotgate-crash-") as tmp:
            database, created = None, False
            if backend == "postgres":
                database = args.database
                if not database:
                    database, created = await create_database(args.pg_admin), True
            try:
                verdict = await run(
                    Path(tmp),
                    database,
                    kills=args.kills,
                    devices=args.devices,
                    connections=args.connections,
                    run_s=(args.min_run, args.max_run),
                    workers=args.workers,
                    seed=args.seed,
                )
            finally:
                if created and database:
                    await drop_database(args.pg_admin, database)
        verdicts.append(verdict)
        if not args.json:
            print(report(verdict), flush=True)
    return verdicts


def report(v: Verdict) -> str:
    lines = [
        f"{v.backend}: {'OK' if v.ok else 'FAILED'} in {v.seconds} s",
        f"  kills {v.kills}, restart to ready {v.restart_s} s",
        f"  reports sent {v.sent}, acknowledged {v.acked}, unanswered {v.unanswered} "
        f"(of which stored {v.unanswered_stored})",
        f"  acknowledged but missing {len(v.missing)}, stored twice {len(v.duplicated)}, "
        f"stored under another ID {len(v.wrong_id)}, error replies {len(v.error_replies)}",
    ]
    if v.sigterm_exit is not None:
        lines.append(f"  SIGTERM under load: exit {v.sigterm_exit}, {v.sigterm_acked_during} acknowledged meanwhile")
    for label, items in (
        ("missing", v.missing),
        ("duplicated", v.duplicated),
        ("wrong id", v.wrong_id),
        ("errors", v.error_replies),
        ("history index", v.index_problems),
        ("running status", v.status_problems),
    ):
        lines += [f"  {label}: {item}" for item in items[:5]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--min-run", type=float, default=0.5, help="seconds of load before a kill (minimum)")
    parser.add_argument("--max-run", type=float, default=3.0, help="seconds of load before a kill (maximum)")
    parser.add_argument(
        "--workers", type=int, default=1, help="device worker processes (SQLite: committed by the main process)"
    )
    parser.add_argument("--database", help="PostgreSQL URL to use (default: a fresh database)")
    parser.add_argument("--pg-admin", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    verdicts = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps([{**asdict(v), "ok": v.ok} for v in verdicts], indent=2))
    sys.exit(0 if all(v.ok for v in verdicts) else 1)


if __name__ == "__main__":
    main()
