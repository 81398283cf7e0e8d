"""Webhook: one JSON POST per message, or a JSON array of up to `batch` messages (httpx), optionally
signed with HMAC-SHA256 over the body."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import ssl

import httpx

from iotgate import __version__
from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, metadata, tls_context
from iotgate.forward.targets import WebhookTarget

# httpx logs every request at INFO: one line per forwarded message is noise in a server log
logging.getLogger("httpx").setLevel(logging.WARNING)

JSON = "application/json"
USER_AGENT = f"iotgate/{__version__}"
HEADER_NAMES = {
    "productKey": "X-Iotgate-Product-Key",
    "deviceName": "X-Iotgate-Device-Name",
    "deviceId": "X-Iotgate-Device-Id",
    "messageId": "X-Iotgate-Message-Id",
    "deliveryId": "X-Iotgate-Delivery-Id",
    "source": "X-Iotgate-Source",
    "ruleId": "X-Iotgate-Rule-Id",
    "identifier": "X-Iotgate-Identifier",
    "topic": "X-Iotgate-Topic",
}


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` + lower-case hex HMAC-SHA256(secret, body)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSink(Sink):
    spec: WebhookTarget

    def __init__(self, spec: WebhookTarget, target_id: int, rule_id: int, concurrency: int) -> None:
        super().__init__(spec, target_id, rule_id, concurrency)
        self._url = httpx.URL(spec.url)
        timeout = httpx.Timeout(spec.timeout_s)
        self._extensions = {"timeout": timeout.as_dict()}
        # One transport per connection, handed out from a free list: httpx's pool walks all its
        # connections (and polls each socket) on every request and every response, which cost
        # more CPU than the request itself; a pool of one connection does neither.
        self._lanes: list[httpx.AsyncHTTPTransport] = []
        self._free: asyncio.Queue[httpx.AsyncHTTPTransport] = asyncio.Queue()
        self._ssl: ssl.SSLContext | None = None

    def _lane(self) -> httpx.AsyncHTTPTransport:
        s = self.spec
        if self._ssl is None:  # one context for all lanes: loading the CA bundle takes ~50 ms
            self._ssl = tls_context(s.verify_tls, s.ca_file)
        return httpx.AsyncHTTPTransport(
            verify=self._ssl,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
        )

    async def _take(self) -> httpx.AsyncHTTPTransport:
        if self._free.empty() and len(self._lanes) < self.spec.max_connections:
            lane = self._lane()
            self._lanes.append(lane)
            return lane
        return await self._free.get()

    async def _post(self, body: bytes, headers: dict[str, str]) -> None:
        """One request straight on a transport: a webhook needs none of the client's cookies,
        redirects or auth flows, and skipping them saves a good part of httpx's CPU per request."""
        s = self.spec
        headers.update(s.headers)
        headers["User-Agent"] = USER_AGENT
        if s.secret:
            headers[s.signature_header] = signature(s.secret, body)
        request = httpx.Request("POST", self._url, content=body, headers=headers, extensions=self._extensions)
        lane = await self._take()
        try:
            resp = await lane.handle_async_request(request)
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise DeliveryError(f"cannot connect to {s.url}: {exc or type(exc).__name__}") from None
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"no answer from {s.url} within {s.timeout_s:g} s ({type(exc).__name__})", True
            ) from None
        except httpx.HTTPError as exc:  # connection lost mid-request: it may have arrived
            raise DeliveryError(f"{s.url}: {type(exc).__name__}: {exc}", True) from None
        finally:
            if lane in self._lanes:  # not closed meanwhile
                self._free.put_nowait(lane)
        if not 200 <= resp.status_code < 300:
            text = content[:200].decode("utf-8", "replace").replace("\n", " ")
            raise DeliveryError(f"{s.url} answered HTTP {resp.status_code}: {text}")

    async def send(self, row: OutboxRow) -> None:
        headers = {"Content-Type": row.content_type}
        for key, value in metadata(row, self.rule_id).items():
            if value.isascii() and value.isprintable():  # names are ASCII; a header cannot carry more
                headers[HEADER_NAMES[key]] = value
        await self._post(row.body, headers)

    async def send_round(self, devices: list[list[OutboxRow]]) -> list[tuple[int, DeliveryError | None]]:
        """With `batch` > 1: JSON arrays of up to `batch` messages. A device's messages of the round
        go in one request (or, beyond `batch`, in requests sent one after the other), so its order
        holds while requests for different devices run in parallel."""
        size = self.spec.batch
        if size <= 1:
            return await super().send_round(devices)
        outcome: list[tuple[int, DeliveryError | None]] = [(0, None)] * len(devices)
        chains: list[list[list[tuple[int, list[OutboxRow]]]]] = []  # chains of requests of (device, rows)
        packed: list[tuple[int, list[OutboxRow]]] = []
        count = 0
        for i, rows in enumerate(devices):
            if any(r.content_type != JSON for r in rows):  # raw payloads cannot join an array
                chains.append([[(i, [r])] for r in rows])
                continue
            if len(rows) > size:
                chains.append([[(i, rows[k : k + size])] for k in range(0, len(rows), size)])
                continue
            if count + len(rows) > size:
                chains.append([packed])
                packed, count = [], 0
            packed.append((i, rows))
            count += len(rows)
        if packed:
            chains.append([packed])

        async def run(chain: list[list[tuple[int, list[OutboxRow]]]]) -> None:
            for request in chain:
                rows = [r for _, part in request for r in part]
                try:
                    if len(rows) == 1 and rows[0].content_type != JSON:
                        await self.send(rows[0])
                    else:
                        await self._post(
                            b"[" + b",".join(r.body for r in rows) + b"]",
                            {
                                "Content-Type": JSON,
                                "X-Iotgate-Batch": str(len(rows)),
                                "X-Iotgate-Rule-Id": str(self.rule_id),
                            },
                        )
                except DeliveryError as exc:
                    for i, _ in request:
                        outcome[i] = (outcome[i][0], exc)
                    return
                for i, part in request:
                    outcome[i] = (outcome[i][0] + len(part), None)

        await asyncio.gather(*(run(chain) for chain in chains))
        return outcome

    async def close(self) -> None:
        lanes, self._lanes = self._lanes, []
        self._free = asyncio.Queue()
        for lane in lanes:
            await lane.aclose()
