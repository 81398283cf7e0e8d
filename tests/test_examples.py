"""The examples/ collectors (Python SDK and curl+openssl, both dialects) run against a real TLS server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SEED_MODEL, Admin, ServerProcess

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def points(admin: Admin, pk: str, dn: str, identifier: str) -> list[object]:
    return [value for _, value in admin.history(pk, dn, identifier)]


@pytest.fixture(scope="module")
def product(admin: Admin) -> str:
    return admin.product(SEED_MODEL)


def test_python_alink_collector(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "py-alink")
    out = run(
        [
            *(sys.executable, str(EXAMPLES / "collector_alink.py"), "--endpoint", server.device_url),
            *("--product-key", product, "--device-name", "py-alink", "--device-secret", dev["deviceSecret"]),
            *("--ca", server.cert, "--count", "3", "--interval", "0.05"),
        ],
        {},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("messageId") == 3
    assert len(points(admin, product, "py-alink", "temperature")) == 3
    assert len(points(admin, product, "py-alink", "humidity")) == 3

    wrong = run(
        [sys.executable, str(EXAMPLES / "collector_alink.py"), "--count", "1"],
        {
            "IOTGATE_DEVICE_URL": server.device_url,
            "IOTGATE_PRODUCT_KEY": product,
            "IOTGATE_DEVICE_NAME": "py-alink",
            "IOTGATE_DEVICE_SECRET": "not-the-secret",
            "IOTGATE_CA_FILE": server.cert,
        },
    )
    assert wrong.returncode == 1 and "20000" in wrong.stderr


def test_python_iotda_collector_from_environment(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "py-iotda")
    env = {
        "IOTGATE_DEVICE_URL": server.device_url,
        "IOTGATE_DEVICE_ID": dev["deviceId"],
        "IOTGATE_DEVICE_SECRET": dev["deviceSecret"],
        "IOTGATE_CA_FILE": server.cert,
    }
    out = run([sys.executable, str(EXAMPLES / "collector_iotda.py"), "--count", "3", "--interval", "0.05"], env)
    assert out.returncode == 0, out.stderr
    assert len(points(admin, product, "py-iotda", "humidity")) == 3


needs_tools = pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("curl") and shutil.which("openssl")),
    reason="the shell examples need bash, curl and openssl",
)


@needs_tools
def test_shell_alink_collector(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "sh-alink")
    env = {"IOTGATE_CA_FILE": server.cert, "COUNT": "3", "INTERVAL": "0"}
    args = [server.device_url, product, "sh-alink", dev["deviceSecret"]]
    out = run(["bash", str(EXAMPLES / "collector_alink.sh"), *args], env)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.count("messageId") == 3
    temperatures = points(admin, product, "sh-alink", "temperature")
    assert len(temperatures) == 3 and all(isinstance(t, int) for t in temperatures)

    wrong = run(["bash", str(EXAMPLES / "collector_alink.sh"), *args[:3], "bad-secret"], env)
    assert wrong.returncode == 1 and "auth failed" in wrong.stderr and "20000" in wrong.stderr


@needs_tools
def test_shell_iotda_collector_from_environment(server: ServerProcess, admin: Admin, product: str) -> None:
    dev = admin.device(product, "sh-iotda")
    env = {
        "IOTGATE_DEVICE_URL": server.device_url,
        "IOTGATE_DEVICE_ID": dev["deviceId"],
        "IOTGATE_DEVICE_SECRET": dev["deviceSecret"],
        "IOTGATE_CA_FILE": server.cert,
        "COUNT": "3",
        "INTERVAL": "0",
    }
    out = run(["bash", str(EXAMPLES / "collector_iotda.sh")], env)
    assert out.returncode == 0, out.stderr + out.stdout
    assert out.stdout.count("reported") == 3
    assert len(points(admin, product, "sh-iotda", "humidity")) == 3

    wrong = run(["bash", str(EXAMPLES / "collector_iotda.sh")], {**env, "IOTGATE_DEVICE_SECRET": "bad"})
    assert wrong.returncode == 1 and "IOTDA.000002" in wrong.stderr
