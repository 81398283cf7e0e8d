"""The ingest link between device workers and the one SQLite writer (ingest/remote.py), in-process:
a real IngestHub on a real Unix socket in front of a real Ingestor and SqliteStorage."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sqlite3
import struct
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from iotgate.framing import FramedProtocol
from iotgate.ingest import remote
from iotgate.ingest.ids import MessageIds
from iotgate.ingest.pipeline import Ingestor, ShuttingDown
from iotgate.ingest.remote import CommitFailed, IngestHub, IngestLink
from iotgate.storage.base import Record
from iotgate.storage.sqlite import SqliteStorage

IDS = MessageIds(5)


def record(device: int, message_id: int | None = None, **values: object) -> Record:
    now = int(time.time() * 1000)
    return Record(
        message_id=message_id or IDS.next(),
        device_id=device,
        kind="property",
        ts=now,
        received_at=now,
        values=values or {"t": 1},
        payload=b'{"params":{"t":1}}',
    )


def stored_ids(path: Path) -> list[int]:
    with sqlite3.connect(path) as con:
        return [r[0] for r in con.execute("SELECT message_id FROM history ORDER BY message_id")]


class Collector(FramedProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[bytes] = []

    def frame_received(self, frame: memoryview) -> None:
        self.frames.append(bytes(frame))


def framed(*bodies: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(b)) + b for b in bodies)


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096, 1 << 20])
def test_frames_survive_any_split_of_the_stream(chunk: int) -> None:
    bodies = [b"", b"x", secrets.token_bytes(5000), b"tail" * 10, secrets.token_bytes(70_000)]
    stream = framed(*bodies)
    collector = Collector()
    for start in range(0, len(stream), chunk):
        collector.data_received(stream[start : start + chunk])
    assert collector.frames == bodies
    assert not collector._buffer  # nothing left over


@dataclass
class Link:
    storage: SqliteStorage
    ingestor: Ingestor
    hub: IngestHub
    link: IngestLink


async def wire(tmp_path: Path, on_lost: Callable[[], None] | None = None) -> Link:
    """A writer (storage, Ingestor, IngestHub on an abstract Unix socket) and a worker's link to it."""
    storage = SqliteStorage(tmp_path / "db.sqlite")
    await storage.open()
    ingestor = Ingestor(storage)
    ingestor.start()
    hub = IngestHub(ingestor, f"\0iotgate-test-{secrets.token_hex(6)}")
    await hub.start()
    link = IngestLink(on_lost=on_lost)
    await link.connect(hub.path)
    return Link(storage, ingestor, hub, link)


async def unwire(w: Link) -> None:
    await w.link.stop(timeout=5)
    await w.hub.stop()
    await w.ingestor.stop()
    await w.storage.close()


@pytest.fixture
async def wired(tmp_path: Path) -> AsyncIterator[Link]:
    w = await wire(tmp_path)
    yield w
    await unwire(w)


async def test_records_are_acknowledged_after_the_writer_commits_them(wired: Link) -> None:
    seen_by_worker: list[int] = []
    seen_by_writer: list[int] = []
    wired.link.after_commit.append(lambda rs: seen_by_worker.extend(r.message_id for r in rs))
    wired.ingestor.after_commit.append(lambda rs: seen_by_writer.extend(r.message_id for r in rs))
    requests = [[record(d, t=i) for i in range(1 + d % 3)] for d in range(200)]  # one loop pass of requests
    futures = [wired.link.submit_many(rs) for rs in requests]
    assert all(len(f) == len(rs) for f, rs in zip(futures, requests, strict=True))
    for group in futures:
        for fut in group:
            await fut
    sent = sorted(r.message_id for rs in requests for r in rs)
    assert stored_ids(wired.storage.path) == sent  # every acknowledged record is in history, once
    assert sorted(seen_by_worker) == sent and sorted(seen_by_writer) == sent
    assert wired.link.committed == len(sent)
    # the writer process holds the running status of what workers sent
    assert (await wired.storage.latest_values(199))["t"][0] == 1


async def test_a_failed_commit_reaches_the_worker_as_commit_failed(wired: Link) -> None:
    duplicate = IDS.next()
    await wired.link.submit(record(1, duplicate))
    failing = wired.link.submit(record(1, duplicate))  # same message ID: the batch's INSERT fails
    with pytest.raises(CommitFailed):
        await failing
    await wired.link.submit(record(2))  # the link and the writer go on
    assert len(stored_ids(wired.storage.path)) == 2


async def test_losing_the_writer_fails_what_is_in_flight_and_refuses_more(tmp_path: Path) -> None:
    lost = asyncio.Event()
    w = await wire(tmp_path, on_lost=lost.set)
    try:
        await w.link.submit(record(1))
        await w.hub.stop()  # the main process goes away
        await asyncio.wait_for(lost.wait(), 5)
        with pytest.raises(ShuttingDown):
            w.link.submit(record(1))
    finally:
        await unwire(w)


async def test_a_worker_stopping_waits_for_its_answers(wired: Link) -> None:
    futures = wired.link.submit_many([record(d) for d in range(50)])
    await wired.link.stop(timeout=10)  # flushes and waits: nothing sent is left unanswered
    assert all(f.done() and f.exception() is None for f in futures)
    assert len(stored_ids(wired.storage.path)) == 50
    with pytest.raises(ShuttingDown):
        wired.link.submit(record(1))


def test_frames_carry_records_losslessly() -> None:
    r = record(7, t=1.5, s="x", b=True, n=None, o={"a": [1, 2]})
    body = msgspec.msgpack.encode((3, [r]))
    assert msgspec.msgpack.decode(body, type=tuple[int, list[Record]]) == (3, [r])


async def test_an_undecodable_frame_closes_the_link_instead_of_leaving_it_waiting(wired: Link) -> None:
    lost = asyncio.Event()
    wired.link.on_lost = lost.set
    pending = wired.link.submit(record(1))
    wired.link.send(b"\xc1 not msgpack")  # what a broken worker might send
    await asyncio.wait_for(lost.wait(), 5)
    with pytest.raises((ShuttingDown, CommitFailed)):  # answered or failed, never left hanging
        await asyncio.wait_for(pending, 5)


async def test_large_messages_do_not_wait_in_one_huge_frame(wired: Link) -> None:
    """While a frame is out, records queue; a queue of big payloads is sent anyway at FRAME_BYTES."""
    big = b"x" * (1024 * 1024)

    def message(device: int) -> Record:
        now = int(time.time() * 1000)
        return Record(message_id=IDS.next(), device_id=device, kind="message", ts=now, received_at=now, payload=big)

    futures = [wired.link.submit(message(d)) for d in range(40)]  # 40 MB in one loop pass
    assert wired.link._pending_bytes < 9 * 1024 * 1024  # sent in ~8 MB frames, not held back
    await asyncio.gather(*futures)
    with sqlite3.connect(wired.storage.path) as con:
        assert con.execute("SELECT COUNT(*), SUM(LENGTH(payload)) FROM messages").fetchone() == (40, 40 * len(big))


class SilentWriter:
    """A Unix socket that accepts a link and reads its frames but answers only when told to (a stuck
    or slow writer)."""

    def __init__(self) -> None:
        self.path = f"\0iotgate-test-{secrets.token_hex(6)}"
        self.received = 0
        self.writer: asyncio.StreamWriter | None = None

    def answer(self, seq: int) -> None:
        """Tell the link that its frame `seq` is committed, as the hub does."""
        assert self.writer is not None
        body = msgspec.msgpack.encode((seq, ""))
        self.writer.write(struct.pack(">I", len(body)) + body)

    async def start(self) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writer = writer
            while data := await reader.read(65536):
                self.received += len(data)

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)
        self.server = await asyncio.start_unix_server(serve, sock=sock)


async def test_frames_in_flight_are_bounded_and_the_rest_waits_for_an_answer() -> None:
    silent = SilentWriter()
    await silent.start()
    link = IngestLink()
    await link.connect(silent.path)
    assert link.max_inflight == remote.MAX_INFLIGHT == 2
    try:
        link.submit(record(1))  # sent at the end of the loop pass...
        link.submit_many([record(2) for _ in range(16)])  # ...unless a busy pass sends first: frame 1
        link.submit(record(3))  # a small frame waits for the answer to frame 1
        await asyncio.sleep(0.05)
        assert len(link._inflight) == 1 and len(link._pending) == 1
        link.submit_many([record(4) for _ in range(16)])  # a busy pass may send a second one: frame 2
        await asyncio.sleep(0.05)
        assert len(link._inflight) == 2 and not link._pending
        link.submit_many([record(5) for _ in range(16)])  # never a third, however busy
        await asyncio.sleep(0.05)
        assert len(link._inflight) == 2 and len(link._pending) == 16
    finally:
        link.transport.close()  # type: ignore[union-attr]
        silent.server.close()


async def test_a_small_frame_waits_for_the_answer_then_goes_at_once() -> None:
    """Under light load (a few reports per loop pass, e.g. a new TLS connection per report) a worker
    keeps one frame out: what queues meanwhile goes in one frame when the answer comes, instead of a
    frame (a write, a wake-up and a read in both processes) per loop pass."""
    silent = SilentWriter()
    await silent.start()
    link = IngestLink()
    await link.connect(silent.path)
    try:
        first = link.submit(record(1))
        await asyncio.sleep(0.05)
        assert list(link._inflight) == [1]
        later = [link.submit(record(2)) for _ in range(3)]
        await asyncio.sleep(0.05)  # several loop passes: still waiting for the answer to frame 1
        assert list(link._inflight) == [1] and len(link._pending) == 3
        silent.answer(1)
        await asyncio.wait_for(first, 5)
        await asyncio.sleep(0.05)
        assert list(link._inflight) == [2] and not link._pending  # the three, in one frame
        silent.answer(2)
        await asyncio.wait_for(asyncio.gather(*later), 5)
    finally:
        link.transport.close()  # type: ignore[union-attr]
        silent.server.close()


async def test_an_unanswered_frame_closes_the_link(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "ANSWER_TIMEOUT_S", 0.3)
    silent = SilentWriter()
    await silent.start()
    lost = asyncio.Event()
    link = IngestLink(on_lost=lost.set)
    await link.connect(silent.path)
    try:
        waiting = link.submit(record(1))
        await asyncio.wait_for(lost.wait(), 5)  # the worker stops and is replaced...
        with pytest.raises(ShuttingDown):  # ...and its device hears an error instead of waiting for ever
            await waiting
    finally:
        silent.server.close()


def test_a_process_of_another_user_cannot_hand_records_to_the_writer(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("acting as another user needs root")
    # an interpreter the other user may run (this venv's lives under /root); the client is stdlib only
    other_python = next((p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)), None)
    if other_python is None:
        pytest.skip("no system python3 for the other user")

    async def scenario() -> tuple[int, bytes]:
        w = await wire(tmp_path)
        try:
            frame = msgspec.msgpack.encode((1, [record(4242)]))
            code = (
                "import socket, struct, sys\n"
                "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
                f"s.connect({w.hub.path!r})\n"
                "try:\n"
                f"    s.sendall(struct.pack('>I', {len(frame)}) + bytes.fromhex({frame.hex()!r}))\n"
                "    s.settimeout(5)\n"
                "    sys.stdout.buffer.write(s.recv(100) or b'CLOSED')\n"
                "except OSError:\n"
                "    sys.stdout.buffer.write(b'CLOSED')\n"
            )
            proc = await asyncio.create_subprocess_exec(
                other_python, "-c", code, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, user=65534
            )
            out, err = await proc.communicate()
            assert proc.returncode == 0, err  # it connected
            await asyncio.sleep(0.2)
            return len(stored_ids(w.storage.path)), out
        finally:
            await unwire(w)

    stored, answer = asyncio.run(scenario())
    assert stored == 0 and answer == b"CLOSED"  # closed without an answer, nothing committed


async def test_answers_of_one_commit_go_out_in_one_write(wired: Link) -> None:
    """Two frames that one commit holds are answered with one write (one syscall in the writer,
    one wake-up and read in the worker), each answer still its own frame."""
    encode = msgspec.msgpack.Encoder().encode
    loop = asyncio.get_running_loop()
    before = set(wired.hub.links)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, wired.hub.path)
    try:
        for _ in range(100):  # the hub registers the connection when it has accepted it
            if wired.hub.links - before:
                break
            await asyncio.sleep(0.01)
        (hub_side,) = wired.hub.links - before
        writes: list[bytes] = []
        transport = hub_side.transport
        assert transport is not None
        real_write = transport.write
        transport.write = lambda data: (writes.append(bytes(data)), real_write(data))[1]  # type: ignore[method-assign]
        await loop.sock_sendall(sock, framed(encode((1, [record(1)])), encode((2, [record(2), record(3)]))))
        received = b""
        while len(received) < 2 * (4 + len(encode((1, "")))):
            received += await asyncio.wait_for(loop.sock_recv(sock, 4096), 5)
        collector = Collector()
        collector.data_received(received)
        assert sorted(msgspec.msgpack.decode(f) for f in collector.frames) == [[1, ""], [2, ""]]
        assert len(writes) == 1
        assert len(stored_ids(wired.storage.path)) == 3
    finally:
        sock.close()
