"""Webhook: one JSON POST per message (httpx), optionally signed with HMAC-SHA256 over the body."""

from __future__ import annotations

import hashlib
import hmac
import logging

import httpx

from iotgate import __version__
from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks.base import DeliveryError, Sink, metadata, tls_context
from iotgate.forward.targets import WebhookTarget

# httpx logs every request at INFO: one line per forwarded message is noise in a server log
logging.getLogger("httpx").setLevel(logging.WARNING)

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
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            s = self.spec
            verify: bool | object = tls_context(s.verify_tls, s.ca_file) if s.url.startswith("https") else True
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(s.timeout_s),
                verify=verify,  # type: ignore[arg-type]
                limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
                follow_redirects=False,
                headers={"User-Agent": f"iotgate/{__version__}"},
            )
        return self._client

    async def send(self, row: OutboxRow) -> None:
        s = self.spec
        headers = {"Content-Type": row.content_type}
        for key, value in metadata(row, self.rule_id).items():
            if value.isascii() and value.isprintable():  # names are ASCII; a header cannot carry more
                headers[HEADER_NAMES[key]] = value
        headers.update(s.headers)
        if s.secret:
            headers[s.signature_header] = signature(s.secret, row.body)
        try:
            resp = await self._http().post(s.url, content=row.body, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise DeliveryError(f"cannot connect to {s.url}: {exc or type(exc).__name__}") from None
        except httpx.TimeoutException as exc:
            raise DeliveryError(
                f"no answer from {s.url} within {s.timeout_s:g} s ({type(exc).__name__})", True
            ) from None
        except httpx.HTTPError as exc:  # connection lost mid-request: it may have arrived
            raise DeliveryError(f"{s.url}: {type(exc).__name__}: {exc}", True) from None
        if not 200 <= resp.status_code < 300:
            text = resp.text[:200].replace("\n", " ")
            raise DeliveryError(f"{s.url} answered HTTP {resp.status_code}: {text}")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()
