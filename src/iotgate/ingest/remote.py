"""Group commit across processes: device workers hand their records to the one process that writes.

With SQLite and `--workers N`, N device-listener processes parse HTTP, check tokens and validate
(the CPU-heavy part, now spread over the cores), while the main process owns the only write
connection (an SQLite file must have exactly one writer) and commits what every worker sends.
A worker's `IngestLink` stands in for the `Ingestor`: it queues records, sends what queued as one
frame over a Unix socket (at the end of a loop pass if no frame is out, else when the answer comes;
only a busy pass sends a second frame while one is out), and resolves each request's future when
the main process's `IngestHub` says the batches holding the frame's records are committed. Acknowledged still means durable: a device
hears "success" only after that answer, which comes after COMMIT.

Frames are a 4-byte big-endian length and a msgpack body (msgspec): worker to main
`[seq, [Record, ...]]`, main to worker `[seq, error]` with error "" on success. Hand-framed
because asyncio streams cost a Task and several awaits per frame on this hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

import msgspec

from iotgate.framing import FramedProtocol, frame
from iotgate.ingest.pipeline import EAGER_BATCH, Ingestor, OutboxSource, ShuttingDown
from iotgate.storage.base import Record

log = logging.getLogger("iotgate.ingest")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
CommitHook = Callable[[list[Record]], None]
# Frames a worker has sent and not yet heard back about. While that many are out, new records wait
# for an answer: fewer, larger frames (each costs a write and a read in both processes: ~20 % of a
# worker's CPU with one frame per loop pass) that still meet the writer's next batch. Unbounded vs
# at most two: 0.121 / 0.123 vs 0.113 / 0.111 CPU ms per report; strictly one vs two: within noise
# (median 9.7k vs 10.0k msgs/s over six interleaved pairs; docs/benchmarks.md). The second frame is
# only for a busy pass (EAGER_BATCH records): a trickle of a few records per pass (light load, a new
# TLS connection per report) waits for the answer instead of sending a frame - and waking the main
# process - per pass. Paced 1.8k reports/s (docs/benchmarks.md, section 17): with the longer
# small-batch wait, context switches per report 3.0 -> 1.9 (main) and 1.6 -> 1.2 (workers).
MAX_INFLIGHT = 2
FRAME_RECORDS = 1000  # a frame is sent at this size even while others are out
FRAME_BYTES = 8 * 1024 * 1024  # or at this much payload (IoTDA messages may be 1 MB each)
ANSWER_TIMEOUT_S = 60.0  # a frame unanswered this long closes the link (see IngestLink._check_answers)


class CommitFailed(Exception):
    """The main process could not commit a batch (its database error, as text)."""


# -- main process -------------------------------------------------------------------------------
class IngestHub:
    """Listens on a Unix socket; commits what workers send through the main process's Ingestor
    (which also builds the forwarding outbox and runs the after-commit hooks) and answers each
    frame once all of its records are committed."""

    def __init__(self, ingestor: Ingestor, path: str) -> None:
        self.ingestor = ingestor
        self.path = path  # a Linux abstract socket name ("\0...") or a file path
        self._server: asyncio.AbstractServer | None = None
        self.links: set[_HubConnection] = set()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.path)  # bound here: uvloop does not take abstract names ("\0...") as a path
        sock.listen(64)
        self._server = await asyncio.get_running_loop().create_unix_server(lambda: _HubConnection(self), sock=sock)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for link in list(self.links):
                if link.transport is not None:
                    link.transport.close()
            await self._server.wait_closed()
            if not self.path.startswith("\0"):  # a socket file (not Linux): remove it and its directory
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
                    os.rmdir(os.path.dirname(self.path))


class _HubConnection(FramedProtocol):
    _decode = msgspec.msgpack.Decoder(tuple[int, list[Record]]).decode
    _encode = msgspec.msgpack.Encoder().encode

    def __init__(self, hub: IngestHub) -> None:
        super().__init__()
        self.hub = hub
        # answers due in this loop pass, written together: a commit usually answers both of a
        # worker's frames in flight, and each write is a syscall here plus a wake-up and a read
        # in the worker
        self._answers: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # An abstract socket has no file permissions and its name is listed in /proc/net/unix:
        # only processes of our own user may hand records to the writer (another user's process
        # could otherwise commit reports for any device, skipping authentication and validation).
        # A process of the same user can read the data dir's keys anyway.
        uid = _peer_uid(transport)
        if uid != os.getuid():
            log.error("ingest link: refused a connection from uid %s (not this server's user)", uid)
            transport.close()
            return
        self.hub.links.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.hub.links.discard(self)

    def frame_received(self, frame: memoryview) -> None:
        try:
            seq, records = self._decode(frame)
        except msgspec.DecodeError as exc:
            # a bug, not device input. Unanswered, the worker would wait for this frame forever:
            # close its link instead, so it fails what is in flight, stops and is replaced
            log.error("ingest link: undecodable frame from a device worker (%s); closing its link", exc)
            if self.transport is not None:
                self.transport.close()
            return
        try:
            committed = self.hub.ingestor.submit_group(records)
        except ShuttingDown as exc:
            self.send(self._encode((seq, f"shutting down: {exc}")))
            return
        committed.add_done_callback(lambda fut: self._answer(seq, fut))

    def _answer(self, seq: int, fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        body = self._encode((seq, "" if exc is None else str(exc) or type(exc).__name__))
        if not self._answers:
            # after the other done-callbacks of the same commit, which run in this pass
            asyncio.get_running_loop().call_soon(self._send_answers)
        self._answers.append(frame(body))

    def _send_answers(self) -> None:
        answers, self._answers = self._answers, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(answers[0] if len(answers) == 1 else b"".join(answers))


def _peer_uid(transport: asyncio.BaseTransport) -> int | None:
    sock = transport.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    except (AttributeError, OSError):  # not Linux: no peer credentials to check
        return os.getuid()
    return int(_PEERCRED.unpack(creds)[1])


# -- device worker ------------------------------------------------------------------------------
class IngestLink(FramedProtocol):
    """The worker side: the `Ingestor` interface DeviceCore uses, committing in the main process."""

    _decode = msgspec.msgpack.Decoder(tuple[int, str]).decode
    _encode = msgspec.msgpack.Encoder().encode

    def __init__(self, on_lost: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.after_commit: list[CommitHook] = []
        self.outbox: OutboxSource | None = None  # unused: the main process builds the outbox rows
        self.on_lost = on_lost
        self._pending: list[Record] = []
        self._pending_futs: list[asyncio.Future[None]] = []
        self._pending_bytes = 0
        self._inflight: dict[int, tuple[list[Record], list[asyncio.Future[None]]]] = {}
        self._sent_at: dict[int, float] = {}  # loop time each in-flight frame was sent
        self._watchdog: asyncio.TimerHandle | None = None
        self._seq = 0
        self.max_inflight = MAX_INFLIGHT
        self._flush_soon = False
        self._closing = False
        self._lost = False
        self.committed = 0  # records acknowledged by the main process

    async def connect(self, path: str) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, path)
        await asyncio.get_running_loop().create_unix_connection(lambda: self, sock=sock)

    def start(self) -> None:
        pass

    # -- Ingestor interface -----------------------------------------------------------------
    def submit(self, record: Record) -> asyncio.Future[None]:
        return self.submit_many([record])[0]

    def submit_many(self, records: list[Record]) -> list[asyncio.Future[None]]:
        """One future for the request's records: they travel in one frame and commit together."""
        if self._closing or self._lost:
            raise ShuttingDown("server is shutting down")
        if not records:
            return []
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._pending.extend(records)
        self._pending_futs.append(fut)
        size = 0
        for r in records:  # a loop, not sum() over a generator: most requests hold one record
            size += len(r.payload)
        self._pending_bytes += size
        if len(self._inflight) >= self.max_inflight:  # sent when an answer comes back (frame_received)
            if len(self._pending) >= FRAME_RECORDS or self._pending_bytes >= FRAME_BYTES:
                self._flush()
        elif len(self._pending) >= EAGER_BATCH:  # a busy pass: send now, so the commit overlaps the rest
            self._flush()
        elif not self._inflight and not self._flush_soon:  # else the answer sends these (frame_received)
            self._flush_soon = True
            loop.call_soon(self._flush_if_free)
        return [fut] * len(records)

    async def stop(self, timeout: float = 30.0) -> None:
        """Refuse new records; wait (bounded) until what was sent is answered."""
        self._closing = True
        self._flush()
        deadline = asyncio.get_running_loop().time() + timeout
        while self._inflight and not self._lost and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        if self.transport is not None:
            self.transport.close()

    # -- frames ----------------------------------------------------------------------------------
    def _flush_if_free(self) -> None:
        """End of a loop pass: send what queued if no frame is out; otherwise the answer to it
        sends this. Only a busy pass (EAGER_BATCH records, submit_many) sends a second frame
        while one is out."""
        self._flush_soon = False
        if not self._inflight:
            self._flush()

    def _flush(self) -> None:
        self._flush_soon = False
        if not self._pending:
            return
        records, futs = self._pending, self._pending_futs
        self._pending, self._pending_futs, self._pending_bytes = [], [], 0
        if self._lost:
            _fail(futs, ShuttingDown("the main process is gone"))
            return
        self._seq += 1
        self._inflight[self._seq] = (records, futs)
        self._sent_at[self._seq] = loop_time = asyncio.get_running_loop().time()
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_at(loop_time + ANSWER_TIMEOUT_S, self._check_answers)
        self.send(self._encode((self._seq, records)))

    def _check_answers(self) -> None:
        """A frame unanswered for ANSWER_TIMEOUT_S means the writer is stuck or a frame was lost
        (a bug): close the link, which fails what is in flight and stops this worker (it is
        replaced), rather than leave its devices waiting for ever."""
        self._watchdog = None
        if not self._sent_at or self.transport is None:
            return
        loop = asyncio.get_running_loop()
        oldest = min(self._sent_at.values())
        if loop.time() - oldest >= ANSWER_TIMEOUT_S:
            log.error("ingest link: no answer from the main process for %.0f s; closing the link", ANSWER_TIMEOUT_S)
            self.transport.close()
            return
        self._watchdog = loop.call_at(oldest + ANSWER_TIMEOUT_S, self._check_answers)

    def frame_received(self, frame: memoryview) -> None:
        seq, error = self._decode(frame)
        batch = self._inflight.pop(seq, None)
        self._sent_at.pop(seq, None)
        if batch is None:
            return
        records, futs = batch
        if self._pending and not self._flush_soon:  # what queued while this frame was out goes next
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush_if_free)
        if error:
            _fail(futs, CommitFailed(error))
            return
        self.committed += len(records)
        for fut in futs:
            if not fut.done():
                fut.set_result(None)
        for hook in self.after_commit:
            try:
                hook(records)
            except Exception:  # an observer must never undo an acknowledged commit
                log.exception("after-commit hook failed")

    def connection_lost(self, exc: Exception | None) -> None:
        """The main process is gone: nothing in flight can be confirmed (devices get an error and
        retry), and a worker without its writer must stop rather than keep accepting."""
        self._lost = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._sent_at.clear()
        for _, futs in self._inflight.values():
            _fail(futs, ShuttingDown("the main process is gone"))
        self._inflight.clear()
        _fail(self._pending_futs, ShuttingDown("the main process is gone"))
        self._pending, self._pending_futs, self._pending_bytes = [], [], 0
        if self.on_lost is not None and not self._closing:
            log.error("ingest link to the main process lost; this worker stops")
            self.on_lost()


def _fail(futs: list[asyncio.Future[None]], exc: Exception) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_exception(exc)
            with contextlib.suppress(Exception):
                fut.exception()  # retrieved: a request already gone must not log "never retrieved"
