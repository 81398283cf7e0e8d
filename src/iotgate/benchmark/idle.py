"""Idle keep-alive TLS connections: open many, send one report on each, keep them open, read RSS."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass
class IdleResult:
    connections: int  # open and answered when RSS was read
    failed: int
    rss_before: int
    rss_after: int
    open_seconds: float

    @property
    def per_connection_kib(self) -> float:
        return (self.rss_after - self.rss_before) / 1024 / self.connections if self.connections else 0.0


def raise_nofile(wanted: int) -> int:
    """Lift this process's open-files soft limit towards `wanted` (as far as the hard limit allows)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    body = await reader.readexactly(length) if length else b""
    return head + body


async def hold_idle(
    url: str,
    requests: list[bytes],
    count: int,
    server_rss: Callable[[], int],
    concurrency: int = 100,
    settle_s: float = 2.0,
    on_open: object = None,
) -> IdleResult:
    """Open `count` TLS connections to `url`, send one request on each (round-robin over
    `requests`), keep them all open and idle, then read the server's RSS (`server_rss()`, bytes)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    ctx: ssl.SSLContext | None = None
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    raise_nofile(count + 1000)
    await asyncio.sleep(settle_s)
    rss_before = server_rss()
    writers: list[asyncio.StreamWriter] = []
    failed = 0
    gate = asyncio.Semaphore(concurrency)
    started = time.monotonic()

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            try:
                reader, writer = await asyncio.open_connection(host, port, ssl=ctx, limit=4096)
                writer.write(requests[i % len(requests)])
                reply = await asyncio.wait_for(_read_reply(reader), 30)
                if not reply.startswith(b"HTTP/1.1 200") or b'"code":0' not in reply:
                    failed += 1
                    writer.close()
                    return
                writers.append(writer)
                if callable(on_open):
                    on_open()
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
                failed += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    opened = time.monotonic() - started
    await asyncio.sleep(settle_s)
    rss_after = server_rss()
    held = len(writers)
    for w in writers:
        w.close()
    for w in writers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(w.wait_closed(), 1)
    return IdleResult(held, failed, rss_before, rss_after, opened)
