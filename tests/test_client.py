"""The device SDK against the real server process over TLS (verified with the server's certificate)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from conftest import SEED_MODEL, Admin, ServerProcess, free_port
from iotgate.client import (
    AlinkDevice,
    AlinkError,
    AsyncAlinkDevice,
    AsyncIotdaDevice,
    AsyncIotdaGateway,
    DeviceConnectionError,
    DeviceError,
    GatewayBatchError,
    IotdaDevice,
    IotdaError,
    IotdaGateway,
    ServiceProperties,
    SubDeviceProperties,
)

MODULE_MODEL: dict[str, Any] = {
    **SEED_MODEL,
    "events": [
        {
            "identifier": "overheat",
            "name": "Overheat",
            "type": "alert",
            "outputData": [
                {"identifier": "temperature", "name": "T", "dataType": {"type": "int32", "specs": {"max": 100}}}
            ],
        }
    ],
    "modules": [
        {
            "identifier": "battery",
            "name": "Battery",
            "properties": [
                {
                    "identifier": "level",
                    "name": "Level",
                    "accessMode": "r",
                    "dataType": {"type": "float", "specs": {"min": 0, "max": 100, "step": 0.5}},
                }
            ],
        }
    ],
}


@pytest.fixture(scope="module")
def product(admin: Admin) -> str:
    return admin.product(MODULE_MODEL)


def alink(server: ServerProcess, dev: dict[str, Any], **kw: Any) -> AlinkDevice:
    return AlinkDevice(
        dev["productKey"], dev["deviceName"], dev["deviceSecret"], server.device_url, verify=server.cert, **kw
    )


def iotda(server: ServerProcess, dev: dict[str, Any], **kw: Any) -> IotdaDevice:
    return IotdaDevice(dev["deviceId"], dev["deviceSecret"], server.device_url, verify=server.cert, **kw)


# -- Alink -----------------------------------------------------------------------------------------
def test_alink_sync_auth_and_every_report_type(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "alink-sync")
    at = datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)
    with alink(server, dev) as device:
        token = device.auth()
        assert token and device.token == token
        assert device.token_expires_in is not None and device.token_expires_in > 6 * 24 * 3600
        first = device.post_properties({"temperature": 21, "humidity": 40})
        second = device.post_properties({"temperature": 22, "battery:level": 87.5}, time=at)
        assert isinstance(first, int) and isinstance(second, int) and second > first > 0
        event_id = device.post_event("overheat", {"temperature": 90})
        custom_id = device.publish(f"/{product}/alink-sync/user/update", b"\x01raw bytes")
        assert event_id > 0 and custom_id > 0
        assert device.stats.auths == 1 and device.stats.token_rejections == 0

    status = admin.properties(product, "alink-sync")
    assert status["temperature"]["value"] == 21 and status["humidity"]["value"] == 40  # newest time wins
    assert status["battery:level"]["value"] == 87.5
    assert (int(at.timestamp() * 1000), 22) in admin.history(product, "alink-sync", "temperature")
    events = admin.messages(product, "alink-sync", "event")
    assert [(e["identifier"], e["messageId"]) for e in events] == [("overheat", str(event_id))]
    custom = admin.messages(product, "alink-sync", "message")
    assert custom[0]["topic"] == f"/{product}/alink-sync/user/update" and custom[0]["messageId"] == str(custom_id)


@pytest.mark.parametrize("method", ["hmacsha1", "hmacmd5", "HMACSHA256"])
def test_alink_sign_methods_and_signed_timestamp(
    server: ServerProcess, admin: Admin, product: str, method: str
) -> None:
    dev = admin.device(product)
    with alink(server, dev, sign_method=method, send_timestamp=True, client_id="sn-0042") as device:
        assert device.post_properties({"humidity": 55}) > 0
    assert admin.properties(product, dev["deviceName"])["humidity"]["value"] == 55


async def test_alink_async_reports_share_one_token(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "alink-async")
    async with AsyncAlinkDevice(
        product, "alink-async", dev["deviceSecret"], server.device_url, verify=server.cert
    ) as device:
        base = 1_700_000_000_000
        ids = await asyncio.gather(*(device.post_properties({"temperature": i}, time=base + i) for i in range(20)))
        assert len(set(ids)) == 20
        assert device.stats.auths == 1  # 20 concurrent first calls, one /auth
        assert await device.post_event("overheat", {"temperature": 70}) > 0
        assert await device.publish(f"/{product}/alink-async/user/x", b"hi") > 0
    points = admin.history(product, "alink-async", "temperature")
    assert sorted(points) == [(base + i, i) for i in range(20)]
    assert len(admin.messages(product, "alink-async", "event,message")) == 2


# -- IoTDA -----------------------------------------------------------------------------------------
def test_iotda_sync_auth_and_every_report_type(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "iotda-sync")
    at = datetime(2024, 5, 1, 12, 0, 0, 555000, tzinfo=UTC)
    with iotda(server, dev) as device:
        assert device.auth() == device.token
        assert device.token_expires_in is not None and device.token_expires_in > 3600
        device.report_properties("default", {"temperature": 30, "humidity": 60}, event_time=at)
        device.report_services(
            [ServiceProperties("default", {"temperature": 31}), ServiceProperties("battery", {"level": 12.5})]
        )
        device.send_message({"door": "open"}, name="door", message_id="m-1")
        assert device.stats.auths == 1
    status = admin.properties(product, "iotda-sync")
    assert status["temperature"]["value"] == 31 and status["battery:level"]["value"] == 12.5
    assert (int(at.timestamp() * 1000), 30) in admin.history(product, "iotda-sync", "temperature")
    [message] = admin.messages(product, "iotda-sync", "message")
    assert json.loads(message["payload"]) == {"name": "door", "id": "m-1", "content": {"door": "open"}}


async def test_iotda_async_reports(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "iotda-async")
    async with AsyncIotdaDevice(dev["deviceId"], dev["deviceSecret"], server.device_url, verify=server.cert) as device:
        await asyncio.gather(
            *(
                device.report_properties("default", {"humidity": 10 + i}, event_time=1_700_000_000_000 + i)
                for i in range(10)
            )
        )
        assert device.stats.auths == 1
        await device.report_services([ServiceProperties("battery", {"level": 99.0})])
        await device.send_message("plain text content")
    assert sorted(v for _, v in admin.history(product, "iotda-async", "humidity")) == list(range(10, 20))
    assert admin.properties(product, "iotda-async")["battery:level"]["value"] == 99.0
    assert json.loads(admin.messages(product, "iotda-async", "message")[0]["payload"]) == {
        "content": "plain text content"
    }


# -- typed errors ----------------------------------------------------------------------------------
def test_alink_errors_carry_vendor_codes(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "alink-errors")
    with AlinkDevice(product, "alink-errors", "wrong-secret", server.device_url, verify=server.cert) as device:
        with pytest.raises(AlinkError) as bad_auth:
            device.post_properties({"temperature": 1})
        assert bad_auth.value.code == 20000 and bad_auth.value.auth_failed and isinstance(bad_auth.value, DeviceError)
        assert device.token is None

    with alink(server, dev) as device:
        with pytest.raises(AlinkError) as rejected:
            device.post_properties({"temperature": 51})
        assert rejected.value.code == 30001 and rejected.value.rejected and "temperature" in rejected.value.message
        with pytest.raises(AlinkError) as foreign:
            device.publish(f"/sys/{product}/someone-else/thing/event/property/post", b'{"params":{"temperature":1}}')
        assert foreign.value.code == 30001
        with pytest.raises(AlinkError) as unknown_event:
            device.post_event("no_such_event", {})
        assert unknown_event.value.code == 30001
        with pytest.raises(ValueError):
            device.publish(f"/{product}/alink-errors/user/big", b"x" * (128 * 1024 + 1))
        assert device.stats.token_rejections == 0
    rejections = admin.messages(product, "alink-errors", "rejected")
    assert any("above max 50" in r["reason"] for r in rejections)


def test_iotda_errors_carry_vendor_codes(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "iotda-errors")
    with IotdaDevice(dev["deviceId"], "wrong-secret", server.device_url, verify=server.cert) as device:
        with pytest.raises(IotdaError) as bad_auth:
            device.auth()
        assert (bad_auth.value.code, bad_auth.value.status) == ("IOTDA.000002", 401) and bad_auth.value.auth_failed

    with iotda(server, dev) as device:
        with pytest.raises(IotdaError) as rejected:
            device.report_properties("default", {"temperature": -11})
        assert (rejected.value.code, rejected.value.status) == ("IOTDA.000006", 400) and rejected.value.rejected
        with pytest.raises(IotdaError) as unknown_service:
            device.report_properties("no_such_service", {"temperature": 1})
        assert unknown_service.value.code == "IOTDA.000006"
    # a direct device is not a gateway; a gateway batch through it is refused
    with IotdaGateway(dev["deviceId"], dev["deviceSecret"], server.device_url, verify=server.cert) as gw:
        with pytest.raises(GatewayBatchError) as batch:
            gw.report_sub_properties(
                [SubDeviceProperties(f"{product}_x1234", [ServiceProperties("default", {"humidity": 5})])]
            )
        assert batch.value.code.startswith("IOTDA.") and batch.value.status == 400
        assert (batch.value.accepted, batch.value.chunk) == (0, 0)


def test_rate_limit_is_typed(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL, name="slow")
    r = admin.c.patch(f"/api/v1/products/{pk}", json={"ratePerSecond": 0.01})  # burst 1, then one per 100 s
    assert r.status_code == 200, r.text
    dev = admin.device(pk)
    with alink(server, dev) as device:
        device.post_properties({"temperature": 1})
        with pytest.raises(AlinkError) as limited:
            device.post_properties({"temperature": 2})
        assert limited.value.code == 40000 and limited.value.rate_limited
    with iotda(server, admin.device(pk)) as device:
        device.report_properties("default", {"temperature": 1})
        with pytest.raises(IotdaError) as limited2:
            device.report_properties("default", {"temperature": 2})
        assert (limited2.value.code, limited2.value.status) == ("IOTDA.021101", 403) and limited2.value.rate_limited


def test_revoked_token_is_replaced_and_the_report_resent(server: ServerProcess, admin: Admin, product: str) -> None:
    """Disable + enable revokes outstanding tokens: the SDK re-authenticates and nothing is lost."""
    dev = admin.device(product, "revoked")
    with alink(server, dev) as a, iotda(server, dev) as h:
        a.post_properties({"temperature": 1}, time=1_700_000_000_001)
        h.report_properties("default", {"temperature": 2}, event_time=1_700_000_000_002)
        for enabled in (False, True):
            r = admin.c.patch(f"/api/v1/products/{product}/devices/revoked", json={"enabled": enabled})
            assert r.status_code == 200, r.text
        a.post_properties({"temperature": 3}, time=1_700_000_000_003)
        h.report_properties("default", {"temperature": 4}, event_time=1_700_000_000_004)
        assert (a.stats.token_rejections, a.stats.reauths, a.stats.auths) == (1, 1, 2)
        assert (h.stats.token_rejections, h.stats.reauths, h.stats.auths) == (1, 1, 2)

        # disabled for good: the token is refused, and so is the re-auth
        admin.c.patch(f"/api/v1/products/{product}/devices/revoked", json={"enabled": False})
        with pytest.raises(AlinkError) as alink_disabled:
            a.post_properties({"temperature": 5})
        assert alink_disabled.value.code == 20000
        with pytest.raises(IotdaError) as iotda_disabled:
            h.report_properties("default", {"temperature": 6})
        assert iotda_disabled.value.code == "IOTDA.000002"
    assert sorted(admin.history(product, "revoked", "temperature")) == [(1_700_000_000_000 + i, i) for i in range(1, 5)]


def test_connection_failures_are_retried_then_typed(server: ServerProcess) -> None:
    closed = f"https://127.0.0.1:{free_port()}"
    with AlinkDevice("a1TestPK001", "dev01", "s", closed, retries=2, backoff_s=0.01) as device:
        with pytest.raises(DeviceConnectionError) as refused:
            device.auth()
        assert refused.value.code is None and refused.value.retryable
        assert (device.stats.requests, device.stats.retries) == (3, 2)
    # the server's self-signed certificate is not in the system store: no retry can fix that
    with IotdaDevice("pk_dev", "s", server.device_url, verify=True, retries=5) as h:
        with pytest.raises(DeviceConnectionError) as untrusted:
            h.auth()
        assert not untrusted.value.retryable and "verify" in str(untrusted.value)
        assert h.stats.requests == 1
    # verify=False: TLS without verification reaches the server, which does not know the device
    with (
        AlinkDevice("a1TestPK001", "dev01", "s", server.device_url, verify=False) as insecure,
        pytest.raises(AlinkError),
    ):
        insecure.auth()


def test_bad_arguments_fail_early(server: ServerProcess) -> None:
    with pytest.raises(ValueError):
        AlinkDevice("pk", "dn", "s", server.device_url, sign_method="hmacsha512")
    with pytest.raises(ValueError):
        IotdaDevice("pk_dn", "s", server.device_url, sign_type=2)
    with pytest.raises(ValueError):
        AlinkDevice("pk", "dn", "s", "ftp://example.com")
    with pytest.raises(FileNotFoundError):
        AlinkDevice("pk", "dn", "s", server.device_url, verify="/nonexistent/ca.pem")


# -- gateway ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gateway_setup(server: ServerProcess, admin: Admin) -> Iterator[tuple[dict[str, Any], str, list[str]]]:
    gw_pk = admin.product(SEED_MODEL, node_type="gateway", name="gateway")
    gateway = admin.device(gw_pk, "gw-0001")
    sub_pk = admin.product(SEED_MODEL, node_type="sub-device", name="sensor")
    names = [f"child-{i:04d}" for i in range(120)]
    r = admin.c.post(f"/api/v1/products/{sub_pk}/devices:batch", json={"devices": names})
    assert r.status_code == 201, r.text
    r = admin.c.post(
        f"/api/v1/products/{gw_pk}/devices/gw-0001/sub-devices",
        json={"devices": [{"productKey": sub_pk, "deviceName": n} for n in names]},
    )
    assert r.status_code == 200, r.text
    yield gateway, sub_pk, names


def test_gateway_batch_of_120_goes_out_as_50_50_20(
    server: ServerProcess, admin: Admin, gateway_setup: tuple[dict[str, Any], str, list[str]]
) -> None:
    gateway, sub_pk, names = gateway_setup
    with IotdaGateway(gateway["deviceId"], gateway["deviceSecret"], server.device_url, verify=server.cert) as gw:
        gw.auth()
        before = gw.stats.requests
        sizes = gw.report_sub_properties(
            SubDeviceProperties(
                f"{sub_pk}_{n}", [ServiceProperties("default", {"temperature": i % 50, "humidity": 1 + i % 99})]
            )
            for i, n in enumerate(names)
        )
        assert sizes == [50, 50, 20]
        assert gw.stats.requests - before == 3
    for i, n in enumerate(names):
        status = admin.properties(sub_pk, n)
        assert (status["temperature"]["value"], status["humidity"]["value"]) == (i % 50, 1 + i % 99), n


async def test_async_gateway_batch_and_partial_failure(
    server: ServerProcess, admin: Admin, gateway_setup: tuple[dict[str, Any], str, list[str]]
) -> None:
    gateway, sub_pk, names = gateway_setup
    at = 1_700_000_100_000
    entries: list[Any] = [
        {
            "device_id": f"{sub_pk}_{n}",
            "services": [
                {"service_id": "default", "properties": {"temperature": 7}, "event_time": "2023-11-14T22:15:00.000Z"}
            ],
        }
        for n in names
    ]
    async with AsyncIotdaGateway(
        gateway["deviceId"], gateway["deviceSecret"], server.device_url, verify=server.cert
    ) as gw:
        assert await gw.report_sub_properties(entries, chunk_size=40) == [40, 40, 40]
        # a child that is not attached to this gateway fails its chunk; the chunk before it is stored
        stranger = admin.device(sub_pk)
        late = [
            SubDeviceProperties(f"{sub_pk}_{n}", [ServiceProperties("default", {"humidity": 3}, at)])
            for n in names[:60]
        ]
        late.insert(55, SubDeviceProperties(stranger["deviceId"], [ServiceProperties("default", {"humidity": 3}, at)]))
        with pytest.raises(GatewayBatchError) as failed:
            await gw.report_sub_properties(late)
        assert (failed.value.code, failed.value.status) == ("IOTDA.021104", 400)
        assert (failed.value.accepted, failed.value.chunk) == (50, 1)
    assert (1_700_000_100_000, 7) in admin.history(sub_pk, names[0], "temperature")
    assert (at, 3) in admin.history(sub_pk, names[49], "humidity")
    assert (at, 3) not in admin.history(sub_pk, names[50], "humidity")
