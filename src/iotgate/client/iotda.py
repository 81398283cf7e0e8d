"""Huawei Cloud IoTDA HTTPS devices and gateways, blocking and asyncio.

:class:`IotdaDevice` / :class:`AsyncIotdaDevice` report properties and messages for themselves;
:class:`IotdaGateway` / :class:`AsyncIotdaGateway` also report for their sub-devices, 50 per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from iotgate.client._http import AsyncDriver, DeviceBase, SyncDriver, Verify
from iotgate.client.protocol import (
    MAX_SUB_DEVICES,
    IotdaSession,
    RetryPolicy,
    ServiceProperties,
    SubDeviceProperties,
)

__all__ = ["AsyncIotdaDevice", "AsyncIotdaGateway", "IotdaDevice", "IotdaGateway"]

EventTime = datetime | float | str | None


class _IotdaBase(DeviceBase):
    """What both flavours share: the arguments, the session (sans-IO protocol state), its properties.
    Each flavour adds its driver (`_connect`) and the blocking or awaitable calls."""

    _session: IotdaSession

    def __init__(
        self,
        device_id: str,
        secret: str,
        endpoint: str,
        sign_type: int = 0,
        *,
        renew_before_s: float | None = None,
        verify: Verify = True,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.2,
    ) -> None:
        self._session = IotdaSession(
            device_id,
            secret,
            sign_type=sign_type,
            retry=RetryPolicy(retries=retries, backoff_s=backoff_s),
            renew_before_s=renew_before_s,
        )
        self._connect(endpoint, verify, timeout)

    @property
    def device_id(self) -> str:
        return self._session.device_id


class IotdaDevice(_IotdaBase):
    """A device speaking Huawei IoTDA's HTTPS protocol, with blocking calls (thread-safe).

    ``device_id`` is ``{product_id}_{node_id}`` (on iotgate: ``{ProductKey}_{DeviceName}``).
    ``sign_type=1`` asks the server to also check the timestamp against its clock. Authentication
    is automatic and the token is renewed before its ``expires_in`` runs out; a token refused with
    403 IOTDA.000004 is replaced and the request re-sent once. Failures raise
    :class:`~iotgate.client.IotdaError` (``code`` such as ``"IOTDA.000006"``, ``status``) or
    :class:`~iotgate.client.DeviceConnectionError`.

    Example::

        from iotgate.client import IotdaDevice

        with IotdaDevice("a1TestPK001_dev01", "SECRET...", "https://iot.example.com:8443",
                         verify="device-cert.pem") as device:
            device.report_properties("default", {"temperature": 21, "humidity": 48})
            device.send_message({"note": "door opened"}, name="door")
    """

    def _connect(self, endpoint: str, verify: Verify, timeout: float) -> None:
        self._driver = SyncDriver(self._session, endpoint, verify, timeout)

    def auth(self) -> str:
        """Authenticate now (``POST /v5/device-auth``) and return the access token."""
        return self._driver.authenticate()

    def report_properties(self, service_id: str, properties: Mapping[str, Any], event_time: EventTime = None) -> None:
        """Report one service's values. ``event_time``: datetime, ms since the epoch, or an IoTDA time string;
        ``None`` = the server's time."""
        self._driver.run(self._session.report_properties(service_id, properties, event_time))

    def report_services(self, services: Iterable[ServiceProperties]) -> None:
        """Report several services in one request."""
        self._driver.run(self._session.report_services(services))

    def send_message(
        self,
        content: Any,
        *,
        name: str | None = None,
        message_id: str | None = None,
        object_device_id: str | None = None,
    ) -> None:
        """Send a free-format message (``messages/up``); ``content`` is any JSON value."""
        self._driver.run(
            self._session.send_message(content, name=name, message_id=message_id, object_device_id=object_device_id)
        )

    def close(self) -> None:
        self._driver.close()

    def __enter__(self) -> IotdaDevice:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class IotdaGateway(IotdaDevice):
    """A gateway device: everything an :class:`IotdaDevice` does, plus reports for its sub-devices.

    Example::

        from iotgate.client import IotdaGateway, ServiceProperties, SubDeviceProperties

        with IotdaGateway(gateway_id, secret, endpoint, verify="device-cert.pem") as gw:
            sizes = gw.report_sub_properties(
                SubDeviceProperties(child_id, [ServiceProperties("default", {"temperature": t})])
                for child_id, t in readings.items()
            )   # 120 children -> [50, 50, 20]
    """

    def report_sub_properties(
        self,
        devices: Iterable[SubDeviceProperties | Mapping[str, Any]],
        chunk_size: int = MAX_SUB_DEVICES,
    ) -> list[int]:
        """Report for sub-devices, ``chunk_size`` (≤ 50) per request, in order; returns the chunk sizes.
        If a chunk fails, :class:`~iotgate.client.GatewayBatchError` says how many entries were stored."""
        return self._driver.run(self._session.report_sub_properties(devices, chunk_size))


class AsyncIotdaDevice(_IotdaBase):
    """The asyncio twin of :class:`IotdaDevice` (same arguments; ``await`` the calls).

    Example::

        async with AsyncIotdaDevice(device_id, secret, endpoint, verify=ca) as device:
            await device.report_properties("default", {"temperature": 21})
    """

    def _connect(self, endpoint: str, verify: Verify, timeout: float) -> None:
        self._driver = AsyncDriver(self._session, endpoint, verify, timeout)

    async def auth(self) -> str:
        return await self._driver.authenticate()

    async def report_properties(
        self, service_id: str, properties: Mapping[str, Any], event_time: EventTime = None
    ) -> None:
        await self._driver.run(self._session.report_properties(service_id, properties, event_time))

    async def report_services(self, services: Iterable[ServiceProperties]) -> None:
        await self._driver.run(self._session.report_services(services))

    async def send_message(
        self,
        content: Any,
        *,
        name: str | None = None,
        message_id: str | None = None,
        object_device_id: str | None = None,
    ) -> None:
        await self._driver.run(
            self._session.send_message(content, name=name, message_id=message_id, object_device_id=object_device_id)
        )

    async def aclose(self) -> None:
        await self._driver.aclose()

    async def __aenter__(self) -> AsyncIotdaDevice:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncIotdaGateway(AsyncIotdaDevice):
    """The asyncio twin of :class:`IotdaGateway`."""

    async def report_sub_properties(
        self,
        devices: Iterable[SubDeviceProperties | Mapping[str, Any]],
        chunk_size: int = MAX_SUB_DEVICES,
    ) -> list[int]:
        return await self._driver.run(self._session.report_sub_properties(devices, chunk_size))
