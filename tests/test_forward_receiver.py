"""A local HTTP receiver for webhook tests (Starlette on uvicorn in a thread), and helpers shared by
the forwarding test modules. It can be stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until check() is truthy (bounded in time); its value, or AssertionError."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or check}")
        time.sleep(interval)


class WebhookReceiver:
    """Records every POST (headers, body); answers `status` after `delay` seconds. While `paused`,
    requests wait (counted in `waiting`) and are answered once it is cleared."""

    def __init__(self, port: int | None = None, delay: float = 0.0, status: int = 200) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.status = status
        self.records: list[tuple[dict[str, str], bytes]] = []
        self.paused = False
        self.waiting = 0
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        if self.paused:
            self.waiting += 1
            while self.paused:
                await asyncio.sleep(0.01)
            self.waiting -= 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if 200 <= self.status < 300:
            with self._lock:
                self.records.append((dict(request.headers), body))
        return Response(b"ok" if self.status < 300 else b"refused", self.status)

    def start(self) -> WebhookReceiver:
        app = Starlette(routes=[Route("/hook", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="error", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_for(lambda: self._server is not None and self._server.started, 10, what="receiver start")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self._server = self._thread = None

    def bodies(self) -> list[Any]:
        with self._lock:
            return [json.loads(b) for _, b in self.records]

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def clear(self) -> None:
        with self._lock:
            self.records.clear()
