"""The seed scenario end to end: a temperature/humidity collector, through the real server process."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.auth.signing import alink_auth_body, iotda_auth_body


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotgate.cli", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_seed_collector_end_to_end(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL)
    dev = admin.device(pk, "collector-01")
    assert dev["deviceId"] == f"{pk}_collector-01" and len(dev["deviceSecret"]) == 32

    with server.device_client() as device:
        auth = device.post("/auth", json=alink_auth_body(pk, "collector-01", dev["deviceSecret"]))
        assert auth.json()["code"] == 0, auth.text
        token = auth.json()["info"]["token"]
        topic = f"/topic/sys/{pk}/collector-01/thing/event/property/post"
        headers = {"password": token, "Content-Type": "application/octet-stream"}
        for t, h in [(20, 50), (21, 52), (22, 55)]:
            body = json.dumps({"id": "1", "version": "1.0", "params": {"temperature": t, "humidity": h}})
            r = device.post(topic, content=body, headers=headers)
            assert r.json()["code"] == 0, r.text
            assert isinstance(r.json()["info"]["messageId"], int)
        bad = device.post(topic, content=json.dumps({"params": {"temperature": 51}}), headers=headers)
        assert bad.json()["code"] == 30001 and "temperature" in bad.json()["message"]

        # the same device through the Huawei dialect lands in the same running status
        auth2 = device.post("/v5/device-auth", json=iotda_auth_body(dev["deviceId"], dev["deviceSecret"]))
        assert auth2.status_code == 200, auth2.text
        r = device.post(
            f"/v5/devices/{dev['deviceId']}/sys/properties/report",
            json={"services": [{"service_id": "default", "properties": {"humidity": 60}}]},
            headers={"access_token": auth2.json()["access_token"]},
        )
        assert r.status_code == 200, r.text

    status = admin.properties_when(pk, "collector-01", temperature=22, humidity=60)
    assert status["temperature"]["value"] == 22 and status["temperature"]["unit"] == "°C"
    assert status["humidity"]["value"] == 60
    history = admin.c.get(f"/api/v1/products/{pk}/devices/collector-01/properties/temperature/history").json()
    assert [p["value"] for p in history["items"]] == [22, 21, 20]
    rejected = admin.messages(pk, "collector-01", "rejected")
    assert len(rejected) == 1 and "above max 50" in rejected[0]["reason"]

    # the CLI reads the same data from the running server
    out = cli(server, "device", "properties", pk, "collector-01", "--json")
    assert out.returncode == 0, out.stderr
    values = {p["identifier"]: p["value"] for p in json.loads(out.stdout)["items"]}
    assert values == {"temperature": 22, "humidity": 60}
    out = cli(server, "device", "history", pk, "collector-01", "temperature", "--json")
    assert [p["value"] for p in json.loads(out.stdout)["items"]] == [22, 21, 20]
    out = cli(server, "product", "list")
    assert out.returncode == 0 and pk in out.stdout


def test_cli_product_and_device_verbs(server: ServerProcess, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = cli(server, "product", "create", "--name", "meter", "--json")
    assert out.returncode == 0, out.stderr
    pk = json.loads(out.stdout)["productKey"]
    model = tmp_path / "model.json"
    model.write_text(json.dumps(SEED_MODEL))
    assert cli(server, "product", "import-model", pk, str(model), "--publish").returncode == 0
    csv_file = tmp_path / "devices.csv"
    csv_file.write_text("deviceName\n" + "\n".join(f"meter-{i:04d}" for i in range(1200)) + "\n")
    creds = tmp_path / "creds.csv"
    out = cli(server, "device", "import", pk, str(csv_file), "-o", str(creds))
    assert out.returncode == 0, out.stderr
    assert len(creds.read_text().strip().splitlines()) == 1201
    out = cli(server, "device", "list", pk, "--json", "--limit", "5")
    assert json.loads(out.stdout)["total"] == 1200
    assert cli(server, "device", "disable", pk, "meter-0001").returncode == 0
    shown = json.loads(cli(server, "device", "show", pk, "meter-0001", "--json").stdout)
    assert shown["enabled"] is False and len(shown["deviceSecret"]) == 32
    reset = json.loads(cli(server, "device", "reset-secret", pk, "meter-0001", "--json").stdout)
    assert reset["deviceSecret"] != shown["deviceSecret"]
    exported = cli(server, "product", "export-model", pk, "--format", "alibaba")
    assert exported.returncode == 0 and "temperature" in exported.stdout
    bad = cli(server, "device", "show", pk, "nope-nope")
    assert bad.returncode == 1 and "404" in bad.stderr
