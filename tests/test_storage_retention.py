"""History retention through the real server: `--history-retention-days` removes old history in the
background while devices keep reporting (SQLite: small delete batches; PostgreSQL: dropped months
and batches from the default partition). The step-level behaviour is in test_storage_contract.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body

DAY_MS = 24 * 3600 * 1000


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    flags = ["--history-retention-days", "2", "--maintenance-interval-s", "0.3"]
    if request.param == "postgres":
        flags += ["--database", request.getfixturevalue("pg_url")]
    proc = ServerProcess(tmp_path_factory.mktemp("retention") / "data", *flags).start()
    yield proc
    proc.stop()


def history(admin: Admin, pk: str, dn: str) -> list[int]:
    return [t for t, _ in admin.history(pk, dn)]


def test_old_history_goes_fresh_history_stays(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "keeper-01")
    now = int(time.time() * 1000)
    old_times = [now - d * DAY_MS for d in (3, 10, 400)]  # older than 2 days, one far before any partition
    fresh_times = [now - DAY_MS, now - 60_000]
    topic = f"/topic/sys/{pk}/keeper-01/thing/event/property/post"

    def post(device: httpx.Client, token: str, ts: int, value: int) -> None:
        body = {"id": "1", "params": {"temperature": {"value": value, "time": ts}}}
        r = device.post(topic, content=json.dumps(body), headers={"password": token})
        assert r.json()["code"] == 0, r.text

    with server.device_client() as device:
        token = device.post("/auth", json=alink_auth_body(pk, "keeper-01", dev["deviceSecret"])).json()["info"]["token"]
        for i, ts in enumerate(old_times + fresh_times):
            post(device, token, ts, i)
        # old rows disappear in the background while the device keeps reporting
        deadline = time.monotonic() + 30
        sent = 0
        while time.monotonic() < deadline and set(history(admin, pk, "keeper-01")) & set(old_times):
            post(device, token, int(time.time() * 1000), 20)
            sent += 1
            time.sleep(0.1)
    left = history(admin, pk, "keeper-01")
    assert not set(left) & set(old_times), "history older than the retention period is still there"
    assert set(fresh_times) <= set(left) and len(left) == len(fresh_times) + sent
    status = admin.properties(pk, "keeper-01")
    assert status["temperature"]["value"] is not None  # running status is kept whatever its age
