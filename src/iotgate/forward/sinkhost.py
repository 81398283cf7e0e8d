"""Forwarding sinks in a process of their own (`forward_sink_process`, on by default).

The sinks' client libraries (paho/aiomqtt, httpx, nats-py, aio-pika, redis) cost more CPU per
forwarded message than committing it. Run in the main process they competed with the SQLite writer
for one core (the GIL) while the other core had time to spare, and every report waited longer for
its COMMIT. So the main process keeps everything that touches the database - claims, settlements,
counters, retries, dead letters, per-device order (`worker.TargetWorker`) - and hands each round's
rows to this process, which only turns rows into outcomes: for each device, how many arrived and the
error that stopped it, exactly what a sink's `send_round` returns in-process.

One Unix socketpair, length-prefixed msgpack frames (iotgate.framing, as the ingest link): main -> host
`SendRound` / `CloseSink`, host -> main `Reply`. If the host dies mid-round, that round's rows count
as possibly sent (delivered again, counted as `redelivered`) and the main process starts a new host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import sys
from collections.abc import Callable
from multiprocessing.process import BaseProcess

import msgspec

from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks import DeliveryError, Sink, make_sink
from iotgate.forward.targets import TargetSpec
from iotgate.framing import FramedProtocol
from iotgate.processes import start_child

log = logging.getLogger("iotgate.forward")
HOST_NICE = 5  # like the device workers: the main process (the database writer) gets the CPU first
RESTART_PAUSE_S = 1.0
CLOSE_TIMEOUT_S = 10.0
ROUND_BYTES = 32 * 1024 * 1024  # message bytes per request frame (the link refuses frames over 256 MB)


class SendRound(msgspec.Struct, array_like=True, tag="send"):
    seq: int
    target_id: int
    rule_id: int
    concurrency: int
    spec: TargetSpec
    devices: list[list[OutboxRow]]


class CloseSink(msgspec.Struct, array_like=True, tag="close"):
    seq: int
    target_id: int


class Outcome(msgspec.Struct, array_like=True):
    done: int
    error: str | None = None
    uncertain: bool = False
    sent_after: int = 0


class Reply(msgspec.Struct, array_like=True):
    seq: int
    outcomes: list[Outcome]


Request = SendRound | CloseSink


class HostLost(Exception):
    """The sink process exited or its socket closed; `sent`: after the request went out."""

    def __init__(self, message: str, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


# -- main process -------------------------------------------------------------------------------
class SinkHost:
    """The main process's handle on the sink process: started with the first target, replaced when
    it dies, stopped (after the delivery tasks have finished their rounds) with the forwarder."""

    def __init__(self, log_level: str = "info", log_format: str = "auto") -> None:
        self.log_level = log_level
        self.log_format = log_format
        self.proc: BaseProcess | None = None
        self._link: _HostLink | None = None
        self._seq = 0
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        if self._supervisor is None:
            await self._spawn()
            self._supervisor = asyncio.get_running_loop().create_task(self._supervise(), name="forward-sinks")

    async def _spawn(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(
            target=_host_main,
            args=(child, self.log_level, self.log_format),  # the socket's fd is passed to the child as it starts
            name="iotgate-sinks",
            daemon=True,
        )
        try:
            proc.start()
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        _, link = await loop.create_unix_connection(lambda: _HostLink(self), sock=parent)
        self.proc, self._link = proc, link
        log.info("forwarding sinks run in process %d", proc.pid)

    async def _supervise(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            proc = self.proc
            if self._stopping or (proc is not None and proc.is_alive() and self._link is not None):
                continue
            if proc is not None:
                log.error("the forwarding sink process exited (code %s); starting a new one", proc.exitcode)
                if proc.is_alive():
                    proc.kill()
                await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)
            self._lost()
            await asyncio.sleep(RESTART_PAUSE_S)
            try:
                await self._spawn()
            except Exception as exc:
                log.error("starting the forwarding sink process failed: %s", exc)

    def _lost(self) -> None:
        link, self._link = self._link, None
        if link is not None:
            link.fail_all(HostLost("the forwarding sink process exited", True))
            if link.transport is not None:
                link.transport.close()

    async def request(self, make: Callable[[int], SendRound | CloseSink]) -> Reply:
        """Send the frame `make(seq)` and wait for its reply. HostLost when there is no host or it
        goes away before replying."""
        link = self._link
        if link is None or self._stopping:
            raise HostLost("the forwarding sink process is not running", False)
        self._seq += 1
        return await link.request(make(self._seq))

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        link, self._link = self._link, None
        if link is not None and link.transport is not None:
            link.transport.close()  # the host closes its sinks and exits on end of file
        proc = self.proc
        if proc is not None:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, CLOSE_TIMEOUT_S)
            if proc.is_alive():
                log.error("the forwarding sink process did not stop in %.0f s; killing it", CLOSE_TIMEOUT_S)
                proc.kill()
                await asyncio.get_running_loop().run_in_executor(None, proc.join, 5)


class _HostLink(FramedProtocol):
    _encode = msgspec.msgpack.Encoder().encode
    _decode = msgspec.msgpack.Decoder(Reply).decode

    def __init__(self, host: SinkHost) -> None:
        super().__init__()
        self.host = host
        self.waiting: dict[int, asyncio.Future[Reply]] = {}

    async def request(self, frame: SendRound | CloseSink) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.waiting[frame.seq] = fut
        self.send(self._encode(frame))
        try:
            return await fut
        finally:
            self.waiting.pop(frame.seq, None)

    def frame_received(self, frame: memoryview) -> None:
        try:
            reply = self._decode(frame)
        except msgspec.DecodeError as exc:  # a bug: drop the link, the supervisor starts a new host
            log.error("forwarding sink process: undecodable reply (%s); restarting it", exc)
            if self.transport is not None:
                self.transport.close()
            return
        fut = self.waiting.get(reply.seq)
        if fut is not None and not fut.done():
            fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail_all(HostLost("the forwarding sink process exited", True))
        if self.host._link is self:
            self.host._link = None

    def fail_all(self, exc: Exception) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc)


class RemoteSink(Sink):
    """A target's sink as the delivery task sees it: each round goes to the sink process."""

    def __init__(self, host: SinkHost, spec: TargetSpec, target_id: int, rule_id: int, concurrency: int) -> None:
        super().__init__(spec, target_id, rule_id, concurrency)
        self.host = host

    async def send(self, row: OutboxRow) -> None:
        [(_, error)] = await self.send_round([[row]])
        if error is not None:
            raise error

    async def send_round(self, devices: list[list[OutboxRow]]) -> list[tuple[int, DeliveryError | None]]:
        if sum(len(r.body) for rows in devices for r in rows) <= ROUND_BYTES:
            return await self._request(devices)
        # a round of large messages (IoTDA allows 1 MB each): device by device, each device's rows in
        # parts of at most ROUND_BYTES, in order, stopping at its first failure (frames stay bounded)
        outcomes: list[tuple[int, DeliveryError | None]] = []
        for rows in devices:
            done, error = 0, None
            for part in _parts(rows):
                [(n, error)] = await self._request([part])
                done += n
                if error is not None:  # its sent_after counts within the part: later parts were not sent
                    break
            outcomes.append((done, error))
        return outcomes

    async def _request(self, devices: list[list[OutboxRow]]) -> list[tuple[int, DeliveryError | None]]:
        try:
            reply = await self.host.request(
                lambda seq: SendRound(seq, self.target_id, self.rule_id, self.concurrency, self.spec, devices)
            )
        except HostLost as exc:
            if not exc.sent:
                return [(0, DeliveryError(str(exc)))] * len(devices)
            # it may have sent any of them: every row counts as possibly delivered, and is sent again
            return [(0, DeliveryError(str(exc), True, len(rows) - 1)) for rows in devices]
        return [
            (o.done, None if o.error is None else DeliveryError(o.error, o.uncertain, o.sent_after))
            for o in reply.outcomes
        ]

    async def close(self) -> None:
        with contextlib.suppress(HostLost, TimeoutError):
            await asyncio.wait_for(self.host.request(lambda seq: CloseSink(seq, self.target_id)), CLOSE_TIMEOUT_S)


def _parts(rows: list[OutboxRow]) -> list[list[OutboxRow]]:
    parts: list[list[OutboxRow]] = [[]]
    size = 0
    for row in rows:
        if parts[-1] and size + len(row.body) > ROUND_BYTES:
            parts.append([])
            size = 0
        parts[-1].append(row)
        size += len(row.body)
    return parts


# -- the sink process ---------------------------------------------------------------------------
def _host_main(sock: socket.socket, log_level: str, log_format: str) -> None:
    """Entry point of the sink process (multiprocessing spawn)."""
    start_child(log_level, log_format, HOST_NICE)
    # A service manager's SIGTERM reaches the whole process group too: the main process decides when
    # delivery ends (after its last rounds) and closes the socket; this process then exits.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    asyncio.run(_serve(sock))
    sys.exit(0)


async def _serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    _, server = await loop.create_unix_connection(lambda: _SinkServer(ended), sock=sock)
    await ended
    await server.close_all()


class _SinkServer(FramedProtocol):
    _encode = msgspec.msgpack.Encoder().encode
    _decode = msgspec.msgpack.Decoder(Request).decode

    def __init__(self, ended: asyncio.Future[None]) -> None:
        super().__init__()
        self.ended = ended
        self.sinks: dict[int, tuple[bytes, Sink]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def frame_received(self, frame: memoryview) -> None:
        try:
            request = self._decode(frame)
        except msgspec.DecodeError as exc:  # a bug: end, the main process starts a new host
            log.error("forwarding sink process: undecodable request (%s); exiting", exc)
            if self.transport is not None:
                self.transport.close()
            return
        task = asyncio.get_running_loop().create_task(self._handle(request))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _handle(self, request: SendRound | CloseSink) -> None:
        if isinstance(request, CloseSink):
            await self._close(request.target_id)
            self.send(self._encode(Reply(request.seq, [])))
            return
        sink = await self._sink(request)
        try:
            outcomes = await sink.send_round(request.devices)
        except Exception as exc:  # a sink bug must not lose the round: it may have sent any of them
            log.exception("%s: sink failed unexpectedly", sink.describe())
            outcomes = [(0, DeliveryError(f"{type(exc).__name__}: {exc}", True, len(r) - 1)) for r in request.devices]
        self.send(
            self._encode(
                Reply(
                    request.seq,
                    [
                        Outcome(done) if err is None else Outcome(done, str(err), err.uncertain, err.sent_after)
                        for done, err in outcomes
                    ],
                )
            )
        )

    async def _sink(self, request: SendRound) -> Sink:
        key = msgspec.msgpack.encode(request.spec)
        known = self.sinks.get(request.target_id)
        if known is not None and known[0] == key:
            return known[1]
        if known is not None:  # the target's options changed
            await self._close(request.target_id)
        sink = make_sink(request.spec, request.target_id, request.rule_id, request.concurrency)
        self.sinks[request.target_id] = (key, sink)
        return sink

    async def _close(self, target_id: int) -> None:
        known = self.sinks.pop(target_id, None)
        if known is not None:
            with contextlib.suppress(Exception):
                await known[1].close()

    async def close_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for target_id in list(self.sinks):
            await self._close(target_id)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ended.done():
            self.ended.set_result(None)
