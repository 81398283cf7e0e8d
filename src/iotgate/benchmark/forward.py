"""The `forward` scenario's side parts: a webhook receiver that counts deliveries, the forwarding
rule under test (MQTT + webhook targets on the property reports), and the outbox figures read
from the rule's stats after a load run (backlog at the end, time to drain)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from iotgate.benchmark.provision import Server

MQTT_URL = "mqtt://127.0.0.1:1883"


def mqtt_reachable(url: str, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to the broker of `url` (mqtt://host[:port]) opens."""
    rest = url.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = rest.partition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port or 1883)), timeout=timeout):
            return True
    except OSError:
        return False


class WebhookReceiver:
    """A minimal HTTP/1.1 keep-alive receiver on 127.0.0.1 in its own thread and event loop.
    Answers every POST with 204 and counts requests and messages (`X-Iotgate-Batch` messages for
    a batch request, else one)."""

    def __init__(self) -> None:
        self.requests = 0
        self.messages = 0
        self.bad = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-webhook", daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def reset(self) -> None:
        with self._lock:
            self.requests = self.messages = 0

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self.requests, self.messages

    def start(self) -> WebhookReceiver:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop)
        self._server = fut.result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if self._server is not None:

            async def close(server: asyncio.AbstractServer) -> None:
                server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(close(self._server), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    name, sep, value = line.partition(":")
                    if sep:
                        headers[name.strip().lower()] = value.strip()
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    self.bad += 1
                    writer.write(b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    return
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                batch = int(headers.get("x-iotgate-batch", "1") or 1)
                with self._lock:
                    self.requests += 1
                    self.messages += batch
                writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return
        finally:
            writer.close()


@dataclass
class ForwardSetup:
    """What the rule under test forwards to."""

    webhook_url: str
    webhook_batch: int
    mqtt_url: str | None  # None: no broker, webhook only


@dataclass
class ForwardFigures:
    """Outbox figures of one iotgate load run with the rule in place."""

    webhook_batch: int
    targets: list[str]
    delivered_during_load: dict[str, int] = field(default_factory=dict)
    deliveries_per_s: dict[str, float] = field(default_factory=dict)  # during the load
    backlog_at_end: dict[str, int] = field(default_factory=dict)  # queued + in flight when wrk stopped
    drain_s: dict[str, float | None] = field(default_factory=dict)  # None: did not drain within the wait
    delivered_total: dict[str, int] = field(default_factory=dict)  # when the outbox drained (or the wait ended)
    deliveries_per_s_with_drain: dict[str, float] = field(default_factory=dict)  # total / (load + drain time)
    matched: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    webhook_messages_received: int = 0
    webhook_requests_received: int = 0
    drain_wait_s: float = 60.0


def _label(target: dict[str, Any]) -> str:
    return f"{target['type']}#{target['targetId']}"


class ForwardRule:
    """The rule under test on `server`: created fresh for each measured run, deleted after it
    (deleting also drops whatever is left in its outbox, so runs do not carry backlog over)."""

    def __init__(self, server: Server, product_key: str, setup: ForwardSetup) -> None:
        self.server = server
        self.product_key = product_key
        self.setup = setup
        self.rule_id: int | None = None
        self.labels: dict[int, str] = {}

    def create(self, name: str) -> None:
        targets: list[dict[str, Any]] = []
        if self.setup.mqtt_url:
            targets.append(
                {
                    "type": "mqtt",
                    "url": self.setup.mqtt_url,
                    "topic": "iotgate-bench/{productKey}/{deviceName}",
                    "qos": 1,
                }
            )
        hook: dict[str, Any] = {"type": "webhook", "url": self.setup.webhook_url}
        if self.setup.webhook_batch > 1:
            hook["batch"] = self.setup.webhook_batch
        targets.append(hook)
        doc = self.server._call(
            "POST",
            "/api/v1/rules",
            json={"name": name, "source": "property", "productKey": self.product_key, "targets": targets},
        )
        self.rule_id = int(doc["id"])

    def stats(self) -> list[dict[str, Any]]:
        assert self.rule_id is not None
        doc = self.server._call("GET", f"/api/v1/rules/{self.rule_id}/stats")
        return list(doc["targets"])

    def delete(self) -> None:
        if self.rule_id is not None:
            self.server._call("DELETE", f"/api/v1/rules/{self.rule_id}")
            self.rule_id = None

    def after_load(
        self, load_s: float, receiver: WebhookReceiver, drain_wait_s: float, poll_s: float = 0.2
    ) -> ForwardFigures:
        """Read the stats right after the load stopped, then poll until every target's outbox is
        empty (or `drain_wait_s` passed)."""
        ended = time.monotonic()
        first = self.stats()
        figures = ForwardFigures(self.setup.webhook_batch, [_label(t) for t in first], drain_wait_s=drain_wait_s)
        for t in first:
            label = _label(t)
            figures.delivered_during_load[label] = int(t["delivered"])
            figures.deliveries_per_s[label] = int(t["delivered"]) / load_s if load_s > 0 else 0.0
            figures.backlog_at_end[label] = int(t["queued"]) + int(t["inFlight"])
            figures.drain_s[label] = 0.0 if figures.backlog_at_end[label] == 0 else None
        pending = {label for label, d in figures.drain_s.items() if d is None}
        last = first
        while pending and time.monotonic() - ended < drain_wait_s:
            time.sleep(poll_s)
            last = self.stats()
            now = time.monotonic()
            for t in last:
                label = _label(t)
                if label in pending and int(t["queued"]) + int(t["inFlight"]) == 0:
                    figures.drain_s[label] = round(now - ended, 2)
                    pending.discard(label)
        for t in last:
            label = _label(t)
            figures.matched[label] = int(t["matched"])
            figures.dead_lettered[label] = int(t["deadLettered"])
            figures.delivered_total[label] = int(t["delivered"])
            drained = figures.drain_s[label]
            spent = load_s + (drained if drained is not None else drain_wait_s)
            figures.deliveries_per_s_with_drain[label] = int(t["delivered"]) / spent if spent > 0 else 0.0
        figures.webhook_requests_received, figures.webhook_messages_received = receiver.counts()
        return figures
