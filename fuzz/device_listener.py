"""Atheris fuzz target: bytes straight into the device listener's HTTP connection, in-process.

A real platform (SQLite in a temporary data dir, the production wiring of `iotgate.server.Platform`)
is started once; every input is fed to a fresh `HttpConnection` through an in-memory transport, so
the whole path runs: HTTP parsing (httptools), limits, routing, both dialects, token checks, thing-
model validation and the group commit. An input fails when the listener raises, answers with a
5xx, or writes anything that is not a sequence of well-formed HTTP/1.1 replies with the dialect's
JSON body.

The first byte of an input picks a template (a valid request head with a valid token for one
endpoint, or none: raw bytes); the rest is the body or the raw stream. See docs/testing.md:

    pip install atheris
    python fuzz/device_listener.py -max_total_time=600 fuzz/corpus      # fuzz (libFuzzer flags)
    python fuzz/device_listener.py --replay fuzz/corpus/*                 # re-run saved inputs
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from iotgate.auth.signing import alink_auth_body, iotda_auth_body
from iotgate.auth.tokens import DIALECT_ALINK, DIALECT_IOTDA
from iotgate.config import Settings
from iotgate.gateway.http import HttpConnection
from iotgate.model import parse_model
from iotgate.server import Platform
from iotgate.storage.base import ProductRow

PRODUCT_KEY = "a1FuzzPK001"
SECRET = "fuzzSECRET0123456789abcdefSECRET"
MODEL = {
    "properties": [
        {
            "identifier": "temperature",
            "name": "Temperature",
            "accessMode": "r",
            "dataType": {"type": "int32", "specs": {"min": -10, "max": 50, "step": 1}},
        },
        {
            "identifier": "label",
            "name": "Label",
            "accessMode": "rw",
            "dataType": {"type": "text", "specs": {"length": 32}},
        },
    ],
    "events": [
        {
            "identifier": "alarm",
            "name": "Alarm",
            "type": "alert",
            "outputData": [{"identifier": "level", "name": "Level", "dataType": {"type": "int32", "specs": {}}}],
        }
    ],
}


class MemoryTransport:
    """What asyncio would give HttpConnection: a sink for the reply bytes."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.out += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Harness:
    def __init__(self) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="iotgate-fuzz-")
        settings = Settings(
            data_dir=self.tmp.name,
            device_host="127.0.0.1",
            device_port=0,
            admin_port=0,
            device_plain_http=True,
            sqlite_synchronous="OFF",
            workers=1,  # the harness drives this process's own listener
            commit_max_delay_ms=0,
            device_rate_per_s=0,
        )
        self.loop = asyncio.new_event_loop()
        self.platform = Platform(settings)
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        p = self.platform
        await p.start()
        # fixed names and secret, so that saved inputs (signed auth bodies) stay valid across runs
        await p.storage.insert_product(
            ProductRow(
                product_key=PRODUCT_KEY,
                name="fuzz",
                node_type="direct",
                data_format="alink-json",
                auth_type="device-secret",
                created_at=1,
                updated_at=1,
            )
        )
        await p.registry.save_draft(PRODUCT_KEY, parse_model(MODEL))
        await p.registry.publish(PRODUCT_KEY)
        [device] = await p.registry.add_devices(PRODUCT_KEY, ["fuzz-device"])
        device = await p.storage.update_device(device.id, {"secret": SECRET}, "secret-reset") or device
        self.pk, self.dn, self.secret = PRODUCT_KEY, device.device_name, SECRET
        self.device_id = f"{self.pk}_{self.dn}"
        self.alink_token = p.core.issue_token(device, DIALECT_ALINK, 3600)[0]
        self.iotda_token = p.core.issue_token(device, DIALECT_IOTDA, 3600)[0]

    def templates(self) -> list[bytes]:
        """Request heads (without Content-Length) that reach deep into each endpoint."""
        topic = f"/topic/sys/{self.pk}/{self.dn}/thing/event"
        a = f"Content-Type: application/octet-stream\r\nPassword: {self.alink_token}\r\n"
        i = f"Content-Type: application/json\r\naccess_token: {self.iotda_token}\r\n"
        v5 = f"/v5/devices/{self.device_id}/sys"
        heads = [
            "POST /auth HTTP/1.1\r\nContent-Type: application/json\r\n",
            f"POST {topic}/property/post HTTP/1.1\r\n{a}",
            f"POST {topic}/property/batch/post HTTP/1.1\r\n{a}",
            f"POST {topic}/alarm/post HTTP/1.1\r\n{a}",
            f"POST /topic/{self.pk}/{self.dn}/user/up HTTP/1.1\r\n{a}",
            f"POST /topic/ota/device/inform/{self.pk}/{self.dn} HTTP/1.1\r\n{a}",
            "POST /v5/device-auth HTTP/1.1\r\nContent-Type: application/json\r\n",
            f"POST {v5}/properties/report HTTP/1.1\r\n{i}",
            f"POST {v5}/messages/up HTTP/1.1\r\n{i}",
            f"POST {v5}/gateway/sub-devices/properties/report HTTP/1.1\r\n{i}",
        ]
        return [h.encode() for h in heads]

    def seeds(self) -> list[bytes]:
        """One valid input per template (the corpus to start from)."""
        bodies: list[Any] = [
            alink_auth_body(self.pk, self.dn, self.secret),
            {"id": "1", "version": "1.0", "params": {"temperature": 21, "label": "x"}},
            {"id": "2", "params": {"properties": {"temperature": [{"value": 20, "time": 1700000000000}]}}},
            {"id": "3", "params": {"value": {"level": 2}, "time": 1700000000000}},
            "raw bytes",
            {"id": "4", "params": {"version": "1.0.1"}},
            iotda_auth_body(self.device_id, self.secret, when=datetime(2026, 1, 1, tzinfo=UTC)),  # sign_type 0
            {"services": [{"service_id": "default", "properties": {"temperature": 22}}]},
            "hello",
            {"devices": [{"device_id": "x_y", "services": []}]},
        ]
        return [bytes([n]) + (b if isinstance(b, str) else json.dumps(b)).encode() for n, b in enumerate(bodies)]

    def request_bytes(self, data: bytes) -> bytes:
        if not data:
            return b""
        templates = self.templates()
        choice, rest = data[0], data[1:]
        if choice >= len(templates) * 2:  # raw stream
            return rest
        head = templates[choice % len(templates)]
        if choice >= len(templates):  # the same request twice on one connection (pipelining)
            one = head + b"Content-Length: %d\r\n\r\n" % len(rest) + rest
            return one + one
        return head + b"Content-Length: %d\r\n\r\n" % len(rest) + rest

    def fuzz_one(self, data: bytes) -> None:
        self.run(data)

    def run(self, data: bytes) -> bytes:
        return self.loop.run_until_complete(self._one(self.request_bytes(data)))

    def close(self) -> None:
        self.loop.run_until_complete(self.platform.stop())
        self.loop.close()
        self.tmp.cleanup()

    async def _one(self, stream: bytes) -> bytes:
        conn = HttpConnection(self.platform.device_server)
        transport = MemoryTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        for start in range(0, len(stream), 4096):
            conn.data_received(stream[start : start + 4096])
        conn.eof_received()
        for _ in range(10000):  # let the handlers and the group commit finish
            if not conn.in_flight or (transport.closed and not conn._busy):  # answered, or closed unanswered
                break
            await asyncio.sleep(0)
            await asyncio.sleep(0.0005)
        else:
            raise AssertionError("the connection never finished its replies")
        conn.connection_lost(None)
        check_replies(bytes(transport.out))
        return bytes(transport.out)


def check_replies(out: bytes) -> None:
    """A sequence of HTTP/1.1 replies: no 5xx, a Content-Length that matches, a JSON body of the dialect."""
    pos = 0
    while pos < len(out):
        end = out.index(b"\r\n\r\n", pos)
        head = out[pos:end].split(b"\r\n")
        assert head[0].startswith(b"HTTP/1.1 "), head[0]
        status = int(head[0].split()[1])
        if status == 100:
            pos = end + 4
            continue
        assert status < 500, out[pos : pos + 500]
        lengths = [line for line in head if line.startswith(b"Content-Length: ")]
        assert len(lengths) == 1, head
        size = int(lengths[0][16:])
        body = out[end + 4 : end + 4 + size]
        assert len(body) == size, "truncated body"
        if body:
            doc = json.loads(body)
            assert ("code" in doc and "message" in doc) or "error_code" in doc or "access_token" in doc, doc
        pos = end + 4 + size


def main() -> None:
    harness = Harness()
    if len(sys.argv) > 1 and sys.argv[1] == "--replay":
        for name in sys.argv[2:]:
            out = harness.run(Path(name).read_bytes())
            print(name, out.split(b"\r\n\r\n", 2)[1][:100].decode("utf-8", "replace") if out else "(no reply)")
        harness.close()
        print(f"replayed {len(sys.argv) - 2} inputs: ok")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--write-seeds":
        corpus = Path(sys.argv[2])
        corpus.mkdir(parents=True, exist_ok=True)
        for n, seed in enumerate(harness.seeds()):
            (corpus / f"seed-{n:02d}").write_bytes(seed)
        harness.close()
        return
    import atheris  # only needed for fuzzing proper

    atheris.instrument_all()
    atheris.Setup(sys.argv, harness.fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
