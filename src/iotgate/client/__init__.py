"""iotgate device SDK: connect devices over Alibaba Cloud IoT HTTPS ("Alink") or Huawei IoTDA HTTPS.

Works against iotgate and against the vendors' own clouds. Blocking and asyncio flavours share one
sans-IO implementation (:mod:`iotgate.client.protocol`) of signing, request building, token renewal,
retries and error mapping; they differ only in the httpx client that carries the bytes.

Alibaba dialect::

    from iotgate.client import AlinkDevice

    with AlinkDevice(product_key, device_name, device_secret, "https://iot.example.com:8443",
                     verify="device-cert.pem") as device:
        device.post_properties({"temperature": 21, "humidity": 48})

Huawei dialect, asyncio::

    from iotgate.client import AsyncIotdaDevice

    async with AsyncIotdaDevice(f"{product_key}_{device_name}", device_secret, endpoint,
                                verify="device-cert.pem") as device:
        await device.report_properties("default", {"temperature": 21})

Errors: :class:`DeviceError` ← :class:`AlinkError` (int ``code``), :class:`IotdaError` (str ``code``,
HTTP ``status``; :class:`GatewayBatchError`), :class:`DeviceConnectionError` (no answer). See
docs/devices.md for the protocols, signing, token lifetimes and every error code.
"""

from iotgate.client._http import Verify
from iotgate.client.alink import AlinkDevice, AsyncAlinkDevice
from iotgate.client.errors import (
    AlinkError,
    DeviceConnectionError,
    DeviceError,
    GatewayBatchError,
    IotdaError,
)
from iotgate.client.iotda import AsyncIotdaDevice, AsyncIotdaGateway, IotdaDevice, IotdaGateway
from iotgate.client.protocol import (
    AlinkSession,
    DeviceStats,
    IotdaSession,
    RetryPolicy,
    ServiceProperties,
    SubDeviceProperties,
)

__all__ = [
    "AlinkDevice",
    "AlinkError",
    "AlinkSession",
    "AsyncAlinkDevice",
    "AsyncIotdaDevice",
    "AsyncIotdaGateway",
    "DeviceConnectionError",
    "DeviceError",
    "DeviceStats",
    "GatewayBatchError",
    "IotdaDevice",
    "IotdaError",
    "IotdaGateway",
    "IotdaSession",
    "RetryPolicy",
    "ServiceProperties",
    "SubDeviceProperties",
    "Verify",
]
