"""Configuration: defaults < TOML file < IOTGATE_* environment < flags, secrets masked in
`iotgate config show`, every setting described, docs/configuration.md generated from `Settings`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from iotgate.config import DESCRIPTIONS, SECRET_FIELDS, Settings, field_names, load_settings, markdown_table

ROOT = Path(__file__).resolve().parents[1]


def config_show(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean_env = {k: v for k, v in os.environ.items() if not k.startswith("IOTGATE_")}
    return subprocess.run(
        [sys.executable, "-m", "iotgate.cli", "config", "show", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean_env, **(env or {})},
    )


def test_three_layers_and_their_precedence(tmp_path: Path) -> None:
    toml = tmp_path / "iotgate.toml"
    toml.write_text(
        "[iotgate]\n"
        "device_port = 1000\n"
        "admin_port = 1001\n"
        "header_timeout_s = 3.5\n"
        'tls_profile = "modern"\n'
        "access-log = true\n"  # dashes work like in the flag
    )
    env = {"IOTGATE_DEVICE_PORT": "2000", "IOTGATE_ADMIN_PORT": "2001", "IOTGATE_NODE_ID": "7"}
    out = config_show("--config", str(toml), "--device-port", "3000", env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["device_port"] == 3000  # flag beats environment and file
    assert doc["admin_port"] == 2001  # environment beats file
    assert doc["node_id"] == 7  # environment alone
    assert doc["header_timeout_s"] == 3.5 and doc["tls_profile"] == "modern" and doc["access_log"] is True  # file
    assert doc["idle_timeout_s"] == Settings().idle_timeout_s  # default
    assert set(doc) == set(field_names())

    # the config file may also come from IOTGATE_CONFIG; a flag can switch a boolean off again
    out = config_show("--no-access-log", env={"IOTGATE_CONFIG": str(toml)})
    doc = json.loads(out.stdout)
    assert doc["device_port"] == 1000 and doc["access_log"] is False


def test_secrets_are_masked(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('master_key = "bWFzdGVyLWtleS0wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc="\n')
    env = {
        "IOTGATE_ADMIN_KEY": "admin-key-from-env-123",
        "IOTGATE_DATABASE": "postgresql://iot:pg-password-456@db.example:5432/iot",
    }
    out = config_show("--config", str(toml), env=env)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["admin_key"] == "***" and doc["master_key"] == "***"
    assert doc["database"] == "postgresql://***@db.example:5432/iot"  # where, not who
    for secret in ("admin-key-from-env-123", "pg-password-456", "bWFzdGVyLWtleS0wMTIz", "iot:"):
        assert secret not in out.stdout and secret not in out.stderr
    # an SQLite path is not a secret; a URL without credentials is hidden whole
    assert load_settings(environ={"IOTGATE_DATABASE": "/var/lib/iot.db"}).masked()["database"] == "/var/lib/iot.db"
    assert load_settings(environ={"IOTGATE_DATABASE": "postgresql:///iot?password=x"}).masked()["database"] == "***"
    assert set(field_names()) >= SECRET_FIELDS


@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        ({"IOTGATE_DEVICE_PORT": "eighty"}, "", "device_port: expected an integer"),
        ({"IOTGATE_DEVICE_PLAIN_HTTP": "maybe"}, "", "device_plain_http: expected a boolean"),
        ({"IOTGATE_HEADER_TIMEOUT_S": "0"}, "", "header_timeout_s"),
        ({"IOTGATE_LOG_LEVEL": "chatty"}, "", "log_level"),
        ({}, "no_such_setting = 1\n", "unknown setting 'no_such_setting'"),
        ({}, "device_port = [1]\n", "device_port: expected an integer"),
        ({}, "tls_profile = 'weak'\n", "tls_profile"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path: Path, env: dict[str, str], toml: str, message: str) -> None:
    args: list[str] = []
    if toml:
        (tmp_path / "c.toml").write_text(toml)
        args = ["--config", str(tmp_path / "c.toml")]
    out = config_show(*args, env=env)
    assert out.returncode == 2, out.stdout
    assert message in " ".join(out.stderr.split()), out.stderr
    assert "Traceback" not in out.stderr


def test_every_setting_is_described_and_documented() -> None:
    missing = set(field_names()) - set(DESCRIPTIONS)
    assert not missing, f"add a line to iotgate.config.DESCRIPTIONS for {sorted(missing)}"
    assert all(len(d) > 15 for d in DESCRIPTIONS.values())
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    stale = [row for row in markdown_table().splitlines() if row not in doc]
    assert not stale, f"docs/configuration.md is out of date (regenerate with `python -m iotgate.config`): {stale}"


def test_flags_show_the_descriptions() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "iotgate.cli", "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    text = " ".join(out.stdout.split())
    assert "--header-timeout-s" in text and "--no-device-plain-http" in text
    assert "A request's header must arrive within this many seconds" in text
