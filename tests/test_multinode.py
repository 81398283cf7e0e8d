"""Two `iotgate serve` nodes on one PostgreSQL database are one platform.

Tokens issued by either node work on both (the token key lives in the database), admin changes on
one node reach the other's registry within the poll interval (disable / secret reset kill tokens
everywhere within 5 s), and either admin API sees all data.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import SEED_MODEL, Admin, ServerProcess, until
from iotgate.auth.secretbox import SecretBox
from iotgate.auth.signing import alink_auth_body, iotda_auth_body

MASTER_KEY = SecretBox.new_key()
ADMIN_KEY = "iga_" + secrets.token_urlsafe(24)
ENV = {"IOTGATE_MASTER_KEY": MASTER_KEY, "IOTGATE_ADMIN_KEY": ADMIN_KEY}
REVOKE_WITHIN_S = 5.0  # the promise: a revocation reaches every node within 5 s


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    root = tmp_path_factory.mktemp("multinode")
    flags = ("--database", pg_url, "--registry-poll-s", "0.5")
    a = ServerProcess(root / "a", *flags, "--node-id", "1", env=ENV)
    b = ServerProcess(root / "b", *flags, "--node-id", "2", env=ENV)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # both migrate the empty database at once
        started = [pool.submit(n.start) for n in (a, b)]
        errors = [f.exception() for f in started]
    try:
        if any(errors):
            raise RuntimeError(f"a node did not start: {errors}")
        yield a, b
    finally:
        a.stop()
        b.stop()


@pytest.fixture(scope="module")
def admins(nodes: tuple[ServerProcess, ServerProcess]) -> Iterator[tuple[Admin, Admin]]:
    with nodes[0].admin() as ca, nodes[1].admin() as cb:
        yield Admin(ca), Admin(cb)


def alink_token(node: ServerProcess, pk: str, dn: str, secret: str) -> str:
    with node.device_client() as c:
        r = c.post("/auth", json=alink_auth_body(pk, dn, secret))
        assert r.json()["code"] == 0, r.text
        return str(r.json()["info"]["token"])


def alink_post(node: ServerProcess, pk: str, dn: str, token: str, temperature: int) -> dict[str, object]:
    with node.device_client() as c:
        r = c.post(
            f"/topic/sys/{pk}/{dn}/thing/event/property/post",
            content=json.dumps({"id": "1", "params": {"temperature": temperature}}),
            headers={"password": token},
        )
        return dict(r.json())


def test_one_platform_across_nodes(nodes: tuple[ServerProcess, ServerProcess], admins: tuple[Admin, Admin]) -> None:
    a, b = nodes
    admin_a, admin_b = admins
    pk = admin_a.product(SEED_MODEL)  # product and model on A
    dev = admin_b.device(pk, "shared-01")  # device on B
    assert admin_a.c.get(f"/api/v1/products/{pk}/devices/shared-01").status_code == 200

    token = alink_token(a, pk, "shared-01", dev["deviceSecret"])  # issued by A ...
    assert alink_post(b, pk, "shared-01", token, 21)["code"] == 0  # ... accepted by B
    assert alink_post(a, pk, "shared-01", token, 22)["code"] == 0

    with b.device_client() as c:  # an IoTDA token from B works on A
        auth = c.post("/v5/device-auth", json=iotda_auth_body(dev["deviceId"], dev["deviceSecret"]))
        assert auth.status_code == 200, auth.text
        iotda_token = auth.json()["access_token"]
    with a.device_client() as c:
        r = c.post(
            f"/v5/devices/{dev['deviceId']}/sys/properties/report",
            json={"services": [{"service_id": "default", "properties": {"humidity": 61}}]},
            headers={"access_token": iotda_token},
        )
        assert r.status_code == 200, r.text

    for admin in admins:  # either admin API sees everything, whichever node took the data
        # (running status: once the node that took a report has flushed it, within running_status_flush_ms)
        status = admin.properties_when(pk, "shared-01", temperature=22, humidity=61)
        assert status["temperature"]["value"] == 22 and status["humidity"]["value"] == 61
        history = admin.c.get(f"/api/v1/products/{pk}/devices/shared-01/properties/temperature/history").json()
        assert [p["value"] for p in history["items"]] == [22, 21]
    # online status follows reports taken by the other node (B refreshes device activity periodically)
    assert until(lambda: admin_b.c.get(f"/api/v1/products/{pk}/devices/shared-01").json()["online"], 15)


def test_disable_on_one_node_kills_tokens_on_every_node(
    nodes: tuple[ServerProcess, ServerProcess], admins: tuple[Admin, Admin]
) -> None:
    a, b = nodes
    admin_a, _ = admins
    pk = admin_a.product(SEED_MODEL)
    dev = admin_a.device(pk, "revoke-01")
    token = alink_token(a, pk, "revoke-01", dev["deviceSecret"])
    assert alink_post(b, pk, "revoke-01", token, 20)["code"] == 0  # B now has the device cached

    r = admin_a.c.patch(f"/api/v1/products/{pk}/devices/revoke-01", json={"enabled": False})
    assert r.status_code == 200, r.text
    assert alink_post(a, pk, "revoke-01", token, 20)["code"] == 20003  # at once on the node that disabled it
    assert until(lambda: alink_post(b, pk, "revoke-01", token, 20)["code"] == 20003, REVOKE_WITHIN_S)

    # enabling it again does not bring the old token back (its generation is gone), on either node
    r = admin_a.c.patch(f"/api/v1/products/{pk}/devices/revoke-01", json={"enabled": True})
    assert r.status_code == 200, r.text
    fresh = alink_token(b, pk, "revoke-01", dev["deviceSecret"])
    assert until(lambda: alink_post(b, pk, "revoke-01", fresh, 20)["code"] == 0, REVOKE_WITHIN_S)  # B: enabled
    assert alink_post(b, pk, "revoke-01", token, 20)["code"] == 20003
    assert alink_post(a, pk, "revoke-01", token, 20)["code"] == 20003
    assert alink_post(a, pk, "revoke-01", fresh, 20)["code"] == 0


def test_secret_reset_on_one_node_kills_tokens_on_every_node(
    nodes: tuple[ServerProcess, ServerProcess], admins: tuple[Admin, Admin]
) -> None:
    a, b = nodes
    admin_a, admin_b = admins
    pk = admin_a.product(SEED_MODEL)
    dev = admin_a.device(pk, "reset-001")
    token = alink_token(b, pk, "reset-001", dev["deviceSecret"])
    assert alink_post(a, pk, "reset-001", token, 20)["code"] == 0  # A has the device cached

    r = admin_b.c.post(f"/api/v1/products/{pk}/devices/reset-001/reset-secret")
    assert r.status_code == 200, r.text
    new_secret = r.json()["deviceSecret"]
    assert until(lambda: alink_post(a, pk, "reset-001", token, 20)["code"] == 20003, REVOKE_WITHIN_S)
    with a.device_client() as c:  # the old secret no longer signs in anywhere; the new one does
        assert c.post("/auth", json=alink_auth_body(pk, "reset-001", dev["deviceSecret"])).json()["code"] != 0
    new_token = alink_token(a, pk, "reset-001", new_secret)
    assert alink_post(b, pk, "reset-001", new_token, 23)["code"] == 0


def test_model_published_on_one_node_is_used_by_the_other(
    nodes: tuple[ServerProcess, ServerProcess], admins: tuple[Admin, Admin]
) -> None:
    _, b = nodes
    admin_a, admin_b = admins
    pk = admin_a.product(SEED_MODEL)
    dev = admin_a.device(pk, "model-001")
    token = alink_token(b, pk, "model-001", dev["deviceSecret"])
    assert alink_post(b, pk, "model-001", token, 45)["code"] == 0  # B compiled max 50
    wider = json.loads(json.dumps(SEED_MODEL))
    wider["properties"][0]["dataType"]["specs"]["max"] = 80
    assert admin_a.c.put(f"/api/v1/products/{pk}/thing-model", json=wider).status_code == 200
    assert admin_a.c.post(f"/api/v1/products/{pk}/thing-model/publish").status_code == 200
    assert until(lambda: alink_post(b, pk, "model-001", token, 70)["code"] == 0, REVOKE_WITHIN_S)
    assert admin_b.properties(pk, "model-001")["temperature"]["value"] == 70


def test_a_node_with_another_master_key_refuses_to_start(tmp_path: Path, pg_url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "iotgate.cli", "serve", "--data-dir", str(tmp_path / "c"), "--database", pg_url],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **ENV, "IOTGATE_MASTER_KEY": SecretBox.new_key()},
    )
    assert out.returncode == 2
    assert "different master key" in out.stderr.replace("\n", " ")


@pytest.mark.parametrize(("node_id", "workers"), [("2", "1"), ("0", "2")])
def test_a_node_reusing_a_live_node_id_refuses_to_start(
    nodes: tuple[ServerProcess, ServerProcess], tmp_path: Path, pg_url: str, node_id: str, workers: str
) -> None:
    """Nodes A and B hold node IDs 1 and 2: a third node may not make message IDs with either, not
    even through a worker (--node-id 0 --workers 2 would use 1 and 2)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotgate.cli",
            "serve",
            "--data-dir",
            str(tmp_path / "c"),
            "--database",
            pg_url,
            "--node-id",
            node_id,
            "--workers",
            workers,
            "--device-port",
            "0",
            "--admin-port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **ENV},
    )
    assert out.returncode == 2, out.stderr[-2000:]
    assert "is in use by another running iotgate process" in out.stderr.replace("\n", " ")


def test_health_of_each_node(nodes: tuple[ServerProcess, ServerProcess]) -> None:
    for node in nodes:
        r = httpx.get(node.admin_url + "/readyz", timeout=5)
        assert r.status_code == 200 and r.json()["checks"]["database"] is True
