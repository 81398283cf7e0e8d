"""Length-prefixed frames over a stream socket between iotgate's own processes: the ingest link
(device workers -> the writer, ingest/remote.py) and the forwarding sink process
(forward/sinkhost.py). A frame is a 4-byte big-endian length and a body (msgpack, by the users).
Hand-framed because asyncio streams cost a Task and several awaits per frame on these hot paths.
"""

from __future__ import annotations

import asyncio
import logging
import struct

log = logging.getLogger("iotgate")

_LENGTH = struct.Struct(">I")  # a frame's length prefix


def frame(body: bytes) -> bytes:
    """A frame on the wire: the body's length, then the body."""
    return _LENGTH.pack(len(body)) + body


MAX_FRAME = 256 * 1024 * 1024  # sanity bound, far above what either link sends in one frame


class FramedProtocol(asyncio.Protocol):
    """Length-prefixed frames in both directions; subclasses handle `frame_received`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        # Frames are decoded straight from the bytes received (memoryview slices, no copies: a
        # gateway frame is tens of KB); only an incomplete tail is kept for the next read.
        buffered = bool(self._buffer)
        if buffered:
            self._buffer += data
        source: bytes | bytearray = self._buffer if buffered else data
        start, end = 0, len(source)
        with memoryview(source) as view:
            while end - start >= 4 and not (self.transport is not None and self.transport.is_closing()):
                (size,) = _LENGTH.unpack_from(view, start)
                if size > MAX_FRAME:
                    log.error("%s: frame of %d bytes refused; closing", type(self).__name__, size)
                    assert self.transport is not None
                    self.transport.close()
                    return
                if end - start - 4 < size:
                    break
                with view[start + 4 : start + 4 + size] as frame:
                    self.frame_received(frame)
                start += 4 + size
            if start == end:
                tail = bytearray()
            elif start == 0 and buffered:
                return  # still one incomplete frame: keep the buffer as it is
            else:
                tail = bytearray(view[start:])
        self._buffer = tail

    def send(self, body: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame(body))

    def frame_received(self, frame: memoryview) -> None:
        raise NotImplementedError
