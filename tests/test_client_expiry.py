"""Tokens that expire mid-run (server TTL 2 s): renewed before expiry or after a refusal, no report lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.client import AlinkDevice, AsyncAlinkDevice, AsyncIotdaDevice, IotdaDevice

TTL = "2"
RUN_LIMIT_S = 20.0  # bound on each loop; the condition it waits for takes ~2 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("expiry") / "data", "--alink-token-ttl-s", TTL, "--iotda-token-ttl-s", TTL
    ).start()
    yield proc
    proc.stop()


def test_sync_devices_survive_token_expiry(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "sync-expiry")

    def alink_run() -> list[tuple[int, int]]:
        # Alibaba's /auth does not say how long the token lives; left at the 7-day default the SDK
        # learns of the expiry from code 20001, re-authenticates and re-sends the refused report.
        sent: list[tuple[int, int]] = []
        with AlinkDevice(pk, "sync-expiry", dev["deviceSecret"], server.device_url, verify=server.cert) as device:
            deadline = time.monotonic() + RUN_LIMIT_S
            while device.stats.reauths < 1 and time.monotonic() < deadline:
                sent.append((1_700_000_000_000 + len(sent), len(sent) % 50))
                device.post_properties({"temperature": sent[-1][1]}, time=sent[-1][0])
                time.sleep(0.05)
            for _ in range(3):  # and carries on with the new token
                sent.append((1_700_000_000_000 + len(sent), len(sent) % 50))
                device.post_properties({"temperature": sent[-1][1]}, time=sent[-1][0])
            assert device.stats.reauths == 1 and device.stats.token_rejections == 1
            assert device.stats.renewals == 0
        return sent

    def iotda_run() -> list[tuple[int, int]]:
        # Huawei's expires_in tells the SDK, which renews the token before it runs out.
        sent: list[tuple[int, int]] = []
        with IotdaDevice(dev["deviceId"], dev["deviceSecret"], server.device_url, verify=server.cert) as h:
            deadline = time.monotonic() + RUN_LIMIT_S
            while h.stats.renewals < 1 and time.monotonic() < deadline:
                sent.append((1_600_000_000_000 + len(sent), len(sent) % 50))
                h.report_properties("default", {"temperature": sent[-1][1]}, event_time=sent[-1][0])
                time.sleep(0.05)
            assert h.stats.renewals >= 1
        return sent

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(alink_run), pool.submit(iotda_run)]
        sent = [point for run in runs for point in run.result()]
    assert sorted(admin.history(pk, "sync-expiry")) == sorted(sent)


async def test_async_devices_survive_token_expiry(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "async-expiry")
    base = 1_700_000_000_000
    sent: list[tuple[int, int]] = []

    async def worker(send: Any, renewed: Any, offset: int) -> None:
        deadline = time.monotonic() + RUN_LIMIT_S
        i = 0
        while not renewed() and time.monotonic() < deadline:
            ts, value = base + offset + i, i % 50
            await send(ts, value)
            sent.append((ts, value))
            i += 1
            await asyncio.sleep(0.05)

    # Told the TTL, the Alibaba device renews ahead of time; IoTDA tasks share one device and token.
    async with (
        AsyncAlinkDevice(
            pk, "async-expiry", dev["deviceSecret"], server.device_url, verify=server.cert, token_ttl_s=2
        ) as a,
        AsyncIotdaDevice(dev["deviceId"], dev["deviceSecret"], server.device_url, verify=server.cert) as h,
    ):

        async def alink_send(ts: int, value: int) -> None:
            await a.post_properties({"temperature": value}, time=ts)

        async def iotda_send(ts: int, value: int) -> None:
            await h.report_properties("default", {"temperature": value}, event_time=ts)

        await asyncio.gather(
            worker(alink_send, lambda: a.stats.renewals >= 1, 0),
            *(worker(iotda_send, lambda: h.stats.renewals >= 1, 100_000 * (k + 1)) for k in range(4)),
        )
        assert a.stats.renewals >= 1 and h.stats.renewals >= 1
        # four concurrent IoTDA tasks started together, yet one initial auth (the rest are renewals)
        assert h.stats.auths - h.stats.renewals - h.stats.reauths == 1
    assert sorted(admin.history(pk, "async-expiry")) == sorted(sent)
