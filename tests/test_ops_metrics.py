"""Metrics, health endpoints and logs of a real server: counters move with real traffic, the
rejection log names device, dialect and reason, and no secret, token or password is ever logged."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body, iotda_auth_body
from test_ops_util import alink_token, log_lines, post_props, scrape


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("ops-metrics") / "data", "--device-plain-http").start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def adm(srv: ServerProcess) -> Iterator[Admin]:
    with srv.admin() as client:
        yield Admin(client)


def test_metrics_is_public_and_prometheus_text(srv: ServerProcess) -> None:
    r = httpx.get(srv.admin_url + "/metrics")  # no admin key, like /healthz
    assert r.status_code == 200
    s = scrape(srv)
    assert s.has("iotgate_build_info") and s.has("iotgate_device_connections")
    assert s.has("iotgate_ingest_pending") and s.has("iotgate_start_time_seconds")
    assert "# HELP iotgate_device_requests_total" in s.text
    assert "# TYPE iotgate_commit_seconds histogram" in s.text


def test_healthz_and_readyz(srv: ServerProcess) -> None:
    r = httpx.get(srv.admin_url + "/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = httpx.get(srv.admin_url + "/readyz")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "ready"
    assert doc["checks"]["database"] is True and doc["checks"]["deviceListener"] is True


def test_device_traffic_moves_the_counters(srv: ServerProcess, adm: Admin) -> None:
    pk = adm.product(SEED_MODEL)
    dev = adm.device(pk, "meter1")
    secret = dev["deviceSecret"]
    before = scrape(srv)
    with srv.device_client() as device:
        token = alink_token(device, pk, "meter1", secret)
        bad = alink_auth_body(pk, "meter1", "wrong-secret-0123456789abcdef0000")
        assert device.post("/auth", json=bad).json()["code"] == 20000
        for t in (20, 21, 22):
            assert post_props(device, token, pk, "meter1", {"temperature": t, "humidity": 40})["code"] == 0
        assert post_props(device, token, pk, "meter1", {"temperature": 99})["code"] == 30001  # max
        assert post_props(device, token, pk, "meter1", {"nosuch": 1})["code"] == 30001  # unknown
        assert post_props(device, "garbage-token", pk, "meter1", {"temperature": 1})["code"] == 20003
        # IoTDA: one success, one wrong password
        ok = device.post("/v5/device-auth", json=iotda_auth_body(dev["deviceId"], secret))
        assert ok.status_code == 200
        wrong = device.post("/v5/device-auth", json=iotda_auth_body(dev["deviceId"], "x" * 32))
        assert wrong.status_code == 401
        r = device.post(
            f"/v5/devices/{dev['deviceId']}/sys/properties/report",
            json={"services": [{"service_id": "default", "properties": {"humidity": 41}}]},
            headers={"access_token": ok.json()["access_token"]},
        )
        assert r.status_code == 200, r.text
    after = scrape(srv)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("iotgate_device_auth_total", dialect="alink", outcome="success") == 1
    assert delta("iotgate_device_auth_total", dialect="alink", outcome="failure") == 1
    assert delta("iotgate_device_auth_total", dialect="iotda", outcome="success") == 1
    assert delta("iotgate_device_auth_total", dialect="iotda", outcome="failure") == 1
    assert delta("iotgate_device_requests_total", dialect="alink", endpoint="topic", result="0") == 3
    assert delta("iotgate_device_requests_total", dialect="alink", endpoint="topic", result="30001") == 2
    assert delta("iotgate_device_requests_total", dialect="alink", endpoint="topic", result="20003") == 1
    assert delta("iotgate_device_requests_total", dialect="iotda", endpoint="device-auth", result="IOTDA.000002") == 1
    assert delta("iotgate_device_requests_total", dialect="iotda", endpoint="properties/report", result="200") == 1
    assert delta("iotgate_reports_rejected_total", reason="max") == 1
    assert delta("iotgate_reports_rejected_total", reason="unknown") == 1
    assert delta("iotgate_reports_accepted_total", kind="property") == 4
    assert delta("iotgate_data_points_total") == 3 * 2 + 1
    assert delta("iotgate_token_verifications_total", dialect="alink", result="ok") == 5
    assert delta("iotgate_token_verifications_total", dialect="alink", result="invalid") == 1
    assert delta("iotgate_token_verifications_total", dialect="iotda", result="ok") == 1
    # 4 accepted + 2 rejected records were committed, in at least one batch
    assert delta("iotgate_commit_batch_size_sum") == 6
    assert delta("iotgate_commit_batch_size_count") >= 1
    assert delta("iotgate_commit_seconds_count") == delta("iotgate_commit_batch_size_count")


def test_connection_gauge_follows_open_connections(srv: ServerProcess) -> None:
    base = scrape(srv).value("iotgate_device_connections")
    socks = [socket.create_connection(("127.0.0.1", srv.device_port)) for _ in range(5)]
    try:
        deadline = time.monotonic() + 10
        while scrape(srv).value("iotgate_device_connections") < base + 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scrape(srv).value("iotgate_device_connections") >= base + 5
        assert scrape(srv).value("iotgate_device_client_addresses") >= 1
    finally:
        for s in socks:
            s.close()
    deadline = time.monotonic() + 10
    while scrape(srv).value("iotgate_device_connections") > base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert scrape(srv).value("iotgate_device_connections") == base


def test_admin_requests_are_counted(srv: ServerProcess) -> None:
    before = scrape(srv).value("iotgate_admin_requests_total", method="GET", status="4xx")
    assert httpx.get(srv.admin_url + "/api/v1/products").status_code == 401
    after = scrape(srv).value("iotgate_admin_requests_total", method="GET", status="4xx")
    assert after == before + 1


def test_rejections_are_logged_with_device_dialect_and_reason(srv: ServerProcess, adm: Admin) -> None:
    pk = adm.product(SEED_MODEL)
    dev = adm.device(pk, "logged")
    with srv.device_client() as device:
        token = alink_token(device, pk, "logged", dev["deviceSecret"])
        assert post_props(device, token, pk, "logged", {"temperature": 77})["code"] == 30001
        r = device.post(
            f"/v5/devices/{dev['deviceId']}/sys/properties/report",
            json={"services": []},
            headers={"access_token": "not-a-token"},
        )
        assert r.status_code == 403
    lines = _wait_for_lines(
        srv, lambda d: d.get("logger") == "iotgate.rejected" and "logged" in str(d.get("device")), 2
    )
    alink_line = next(d for d in lines if d["dialect"] == "alink")
    assert alink_line["device"] == f"{pk}/logged" and alink_line["code"] == "30001"
    assert "temperature" in alink_line["reason"] and "above max 50" in alink_line["reason"]
    assert alink_line["endpoint"] == "topic" and alink_line["client"] == "127.0.0.1"
    iotda_line = next(d for d in lines if d["dialect"] == "iotda")
    assert iotda_line["device"] == dev["deviceId"] and iotda_line["code"] == "IOTDA.000004"
    assert iotda_line["endpoint"] == "properties/report"


def test_no_secret_token_or_password_in_the_log(srv: ServerProcess, adm: Admin) -> None:
    pk = adm.product(SEED_MODEL)
    dev = adm.device(pk, "quiet")
    secret = dev["deviceSecret"]
    leaked: list[str] = [secret, srv.admin_key]
    with srv.device_client() as device:
        good = alink_auth_body(pk, "quiet", secret)
        leaked.append(good["sign"])
        token = alink_token(device, pk, "quiet", secret)
        leaked.append(token)
        for body in (
            alink_auth_body(pk, "quiet", secret[::-1]),  # wrong secret
            alink_auth_body(pk, "nobody", secret),  # unknown device
            {**good, "sign": good["sign"][:-2] + "00"},
        ):
            leaked.append(body["sign"])
            assert device.post("/auth", json=body).json()["code"] == 20000
        iot_ok = iotda_auth_body(dev["deviceId"], secret)
        leaked.append(iot_ok["password"])
        r = device.post("/v5/device-auth", json=iot_ok)
        access = r.json()["access_token"]
        leaked.append(access)
        iot_bad = iotda_auth_body(dev["deviceId"], secret + "x")
        leaked.append(iot_bad["password"])
        assert device.post("/v5/device-auth", json=iot_bad).status_code == 401
        # a token sent to the wrong device and a corrupted token
        r = device.post(f"/v5/devices/{pk}_other/sys/messages/up", content=b"hi", headers={"access_token": access})
        assert r.status_code == 403
        r = device.post(
            f"/v5/devices/{dev['deviceId']}/sys/messages/up", content=b"hi", headers={"access_token": access + "A"}
        )
        assert r.status_code == 403
        assert post_props(device, token[:-3] + "AAA", pk, "quiet", {"temperature": 1})["code"] == 20003
    with httpx.Client(base_url=srv.admin_url) as anon:  # wrong admin keys
        for key in ("wrong-key", srv.admin_key + "x", srv.admin_key[:-1]):
            assert anon.get("/api/v1/products", headers={"Authorization": f"Bearer {key}"}).status_code == 401
    _wait_for_lines(srv, lambda d: d.get("logger") == "iotgate.rejected" and "nobody" in str(d.get("device")), 1)
    text = Path(srv.log_path).read_text(errors="replace")
    assert "quiet" in text  # the rejections were logged...
    for value in leaked:  # ...without anything that proves identity
        assert value not in text
        assert value.lower() not in text.lower()


def _wait_for_lines(srv: ServerProcess, match, count: int) -> list[dict]:  # type: ignore[no-untyped-def, type-arg]
    deadline = time.monotonic() + 10
    while True:
        lines = [d for d in log_lines(srv) if match(d)]
        if len(lines) >= count or time.monotonic() > deadline:
            assert len(lines) >= count, json.dumps(log_lines(srv)[-20:], indent=1)
            return lines
        time.sleep(0.1)


def test_outbox_depth_per_forwarding_target(srv: ServerProcess, adm: Admin) -> None:
    """A forwarding target that cannot be reached keeps its messages in the outbox: the gauge shows them."""
    pk = adm.product(SEED_MODEL)
    dev = adm.device(pk, "forwarded")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    r = adm.c.post(
        "/api/v1/rules",
        json={
            "name": "ops-depth",
            "source": "property",
            "productKey": pk,
            "targets": [{"type": "webhook", "url": f"http://127.0.0.1:{dead_port}/hook"}],
        },
    )
    assert r.status_code == 201, r.text
    with srv.device_client() as device:
        token = alink_token(device, pk, "forwarded", dev["deviceSecret"])
        for t in (1, 2, 3):
            assert post_props(device, token, pk, "forwarded", {"temperature": t})["code"] == 0
    deadline = time.monotonic() + 15
    while True:
        depths = [(lab, v) for n, lab, v in scrape(srv).samples if n == "iotgate_outbox_depth"]
        mine = [v for lab, v in depths if lab.get("target", "").startswith("ops-depth/")]
        if (mine and mine[0] >= 3) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert mine == [3.0], depths


def test_workers_requests_are_added_up(tmp_path: Path, pg_url: str) -> None:
    """--workers 2 (PostgreSQL): device requests are answered by the worker processes; the main
    process's /metrics adds their figures up, so every request is counted exactly once."""
    from iotgate.auth.secretbox import SecretBox

    srv = ServerProcess(
        tmp_path / "data",
        "--device-plain-http",
        "--database",
        pg_url,
        "--workers",
        "2",
        env={"IOTGATE_MASTER_KEY": SecretBox.new_key()},
    ).start()
    try:
        with srv.admin() as client:
            adm = Admin(client)
            pk = adm.product(SEED_MODEL)
            dev = adm.device(pk, "worked")
        before = scrape(srv)
        sent = 0
        for _ in range(8):  # new connections: SO_REUSEPORT spreads them over the workers
            with srv.device_client() as device:
                token = alink_token(device, pk, "worked", dev["deviceSecret"])
                for t in range(3):
                    assert post_props(device, token, pk, "worked", {"temperature": t})["code"] == 0
                    sent += 1
        deadline = time.monotonic() + 15
        while True:  # the workers write their figures every second
            after = scrape(srv)
            got = after.value("iotgate_device_requests_total", endpoint="topic", result="0") - before.value(
                "iotgate_device_requests_total", endpoint="topic", result="0"
            )
            if got >= sent or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert got == sent
        assert (
            after.value("iotgate_device_auth_total", outcome="success")
            - before.value("iotgate_device_auth_total", outcome="success")
            == 8
        )
        assert after.value("iotgate_data_points_total") - before.value("iotgate_data_points_total") == sent
        assert after.value("iotgate_commit_batch_size_count") > before.value("iotgate_commit_batch_size_count")
        assert after.has("iotgate_device_connections")
        assert len([n for n, _, _ in after.samples if n == "iotgate_build_info"]) == 1  # not added up
        snapshots = sorted(p.name for p in (srv.data_dir / "metrics").iterdir())
        assert snapshots == ["worker-1.json", "worker-2.json"]
    finally:
        srv.stop()
