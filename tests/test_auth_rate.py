"""Authentication is rate limited per device in both dialects (a looping or leaked client is bounded)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body, iotda_auth_body


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data: Path = tmp_path_factory.mktemp("authrate") / "data"
    proc = ServerProcess(data, "--auth-rate-per-s", "0.01", "--auth-rate-burst", "2").start()
    yield proc
    proc.stop()


def test_alink_auth_rate_limit(limited: ServerProcess) -> None:
    with limited.admin() as client:
        admin = Admin(client)
        pk = admin.product(SEED_MODEL)
        dev, other = admin.device(pk, "auth-rate-1"), admin.device(pk, "auth-rate-2")
    with limited.device_client() as c:
        codes = [
            c.post("/auth", json=alink_auth_body(pk, dev["deviceName"], dev["deviceSecret"])).json()["code"]
            for _ in range(3)
        ]
        assert codes == [0, 0, 40000]
        # the limit is per device: another device still authenticates
        assert c.post("/auth", json=alink_auth_body(pk, other["deviceName"], other["deviceSecret"])).json()["code"] == 0


def test_iotda_auth_rate_limit(limited: ServerProcess) -> None:
    with limited.admin() as client:
        admin = Admin(client)
        pk = admin.product(SEED_MODEL)
        dev = admin.device(pk, "auth-rate-3")
    with limited.device_client() as c:
        replies = [
            c.post("/v5/device-auth", json=iotda_auth_body(dev["deviceId"], dev["deviceSecret"])) for _ in range(3)
        ]
        assert [r.status_code for r in replies] == [200, 200, 403]
        assert replies[2].json()["error_code"] == "IOTDA.021101"
