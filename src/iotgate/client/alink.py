"""Alibaba Cloud IoT HTTPS ("Alink") devices: :class:`AlinkDevice` (blocking) and :class:`AsyncAlinkDevice`.

Both work against iotgate and against Alibaba Cloud's own endpoint (``https://iot-as-http.cn-shanghai.aliyuncs.com``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from iotgate.client._http import AsyncDriver, DeviceBase, SyncDriver, Verify
from iotgate.client.protocol import ALINK_DEFAULT_TOKEN_TTL_S, AlinkSession, RetryPolicy

__all__ = ["AlinkDevice", "AsyncAlinkDevice"]


class _AlinkBase(DeviceBase):
    """What both flavours share: the arguments, the session (sans-IO protocol state), its properties.
    Each flavour adds its driver (`_connect`) and the blocking or awaitable calls."""

    _session: AlinkSession

    def __init__(
        self,
        product_key: str,
        device_name: str,
        device_secret: str,
        endpoint: str,
        sign_method: str = "hmacsha256",
        *,
        client_id: str | None = None,
        token_ttl_s: float = ALINK_DEFAULT_TOKEN_TTL_S,
        renew_before_s: float | None = None,
        send_timestamp: bool = False,
        verify: Verify = True,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        self._session = AlinkSession(
            product_key,
            device_name,
            device_secret,
            sign_method=sign_method,
            client_id=client_id,
            token_ttl_s=token_ttl_s,
            send_timestamp=send_timestamp,
            retry=RetryPolicy(retries=retries, backoff_s=backoff_s),
            renew_before_s=renew_before_s,
        )
        self._connect(endpoint, verify, timeout)

    @property
    def product_key(self) -> str:
        return self._session.product_key

    @property
    def device_name(self) -> str:
        return self._session.device_name


class AlinkDevice(_AlinkBase):
    """A device speaking Alibaba's HTTPS protocol, with blocking calls (thread-safe).

    Authentication is automatic: the first call authenticates, the token is renewed before it
    expires (``token_ttl_s``: 7 days unless your server says otherwise), and a token the server
    refuses (codes 20001/20002/20003) is replaced and the request re-sent once. Network failures
    are retried ``retries`` times with exponential backoff from ``backoff_s``. Failures raise
    :class:`~iotgate.client.AlinkError` (with the vendor ``code``) or
    :class:`~iotgate.client.DeviceConnectionError`.

    Example::

        from iotgate.client import AlinkDevice

        with AlinkDevice("a1TestPK001", "dev01", "SECRET...", "https://iot.example.com:8443",
                         verify="device-cert.pem") as device:
            message_id = device.post_properties({"temperature": 21, "humidity": 48})
            device.post_event("overheat", {"temperature": 61})
            device.publish("/a1TestPK001/dev01/user/update", b"raw bytes")

    ``sign_method``: ``hmacsha256`` (Link SDK 4.x), ``hmacsha1`` (iotkit-embedded) or ``hmacmd5``.
    ``client_id`` defaults to ``"{product_key}.{device_name}"``. ``verify``: ``True`` (system CAs),
    a CA file path such as the server's self-signed ``device-cert.pem``, a list of them, an
    ``ssl.SSLContext``, or ``False`` (no verification — testing only).
    """

    def _connect(self, endpoint: str, verify: Verify, timeout: float) -> None:
        self._driver = SyncDriver(self._session, endpoint, verify, timeout)

    def auth(self) -> str:
        """Authenticate now (``POST /auth``) and return the token. Optional: other calls do it when needed."""
        return self._driver.authenticate()

    def post_properties(self, values: Mapping[str, Any], time: datetime | float | None = None) -> int:
        """Report property values (``{"temperature": 21}``); ``time`` (datetime or ms) stamps them all,
        else the server's receive time is used. Returns the server's messageId."""
        return self._driver.run(self._session.post_properties(values, time))

    def post_event(self, identifier: str, values: Mapping[str, Any], time: datetime | float | None = None) -> int:
        """Report event ``identifier`` with its output values. Returns the messageId."""
        return self._driver.run(self._session.post_event(identifier, values, time))

    def publish(self, topic: str, payload: bytes) -> int:
        """Upload raw bytes to a full topic, e.g. ``/{pk}/{dn}/user/update``. Returns the messageId."""
        return self._driver.run(self._session.publish(topic, payload))

    def close(self) -> None:
        """Close the kept-alive connection."""
        self._driver.close()

    def __enter__(self) -> AlinkDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncAlinkDevice(_AlinkBase):
    """The asyncio twin of :class:`AlinkDevice` (same arguments, same behaviour, ``await`` the calls).

    Concurrent tasks may share one device; they share its token and connection pool.

    Example::

        async with AsyncAlinkDevice(pk, dn, secret, "https://iot.example.com:8443", verify=ca) as device:
            await device.post_properties({"temperature": 21})
    """

    def _connect(self, endpoint: str, verify: Verify, timeout: float) -> None:
        self._driver = AsyncDriver(self._session, endpoint, verify, timeout)

    async def auth(self) -> str:
        """Authenticate now and return the token."""
        return await self._driver.authenticate()

    async def post_properties(self, values: Mapping[str, Any], time: datetime | float | None = None) -> int:
        """Report property values; returns the messageId."""
        return await self._driver.run(self._session.post_properties(values, time))

    async def post_event(self, identifier: str, values: Mapping[str, Any], time: datetime | float | None = None) -> int:
        """Report event ``identifier``; returns the messageId."""
        return await self._driver.run(self._session.post_event(identifier, values, time))

    async def publish(self, topic: str, payload: bytes) -> int:
        """Upload raw bytes to a full topic; returns the messageId."""
        return await self._driver.run(self._session.publish(topic, payload))

    async def aclose(self) -> None:
        await self._driver.aclose()

    async def __aenter__(self) -> AsyncAlinkDevice:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
