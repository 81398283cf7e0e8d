"""Settings: defaults < TOML file (`--config`) < `IOTGATE_*` environment < command-line flags.

Every field of `Settings` is settable in all three places: the TOML key and the flag are the
field name (`device_port` / `--device-port`), the variable is `IOTGATE_` + the upper-cased name.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

SECRET_FIELDS = frozenset({"admin_key", "master_key", "database"})


class Settings(msgspec.Struct, kw_only=True):
    data_dir: str = "./iotgate-data"
    database: str = ""  # empty: SQLite file in the data dir; or postgresql://...
    node_id: int = 0  # 0..1023, part of every message ID; give each node sharing a database its own

    device_host: str = "0.0.0.0"
    device_port: int = 8443
    device_plain_http: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    tls_profile: str = "compat"  # compat: also static-RSA AES-CBC suites for Alibaba's C SDK; modern: ECDHE+AEAD
    admin_host: str = "127.0.0.1"
    admin_port: int = 8080
    admin_key: str = ""
    master_key: str = ""

    # ingest: group commit
    commit_max_reports: int = 1000
    commit_max_delay_ms: float = 2.0
    sqlite_synchronous: str = "FULL"
    running_status_flush_ms: float = 1000.0  # PostgreSQL: how often each process writes latest values

    # tokens
    alink_token_ttl_s: int = 7 * 24 * 3600
    iotda_token_ttl_s: int = 24 * 3600
    iotda_reauth_grace_s: int = 30
    iotda_timestamp_skew_s: int = 3600
    alink_timestamp_skew_s: int = 15 * 60

    # limits
    device_rate_per_s: float = 1000.0
    device_rate_burst: int = 2000
    auth_rate_per_s: float = 2.0
    auth_rate_burst: int = 30
    max_connections_per_ip: int = 20000
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 300.0
    max_header_bytes: int = 16384
    registry_poll_s: float = 2.0
    online_window_s: float = 600.0  # a device is online while its last report is younger than this

    # forwarding (docs/forwarding.md)
    forward_batch_size: int = 500  # outbox rows one delivery round claims per target
    forward_concurrency: int = 32  # devices delivered in parallel per target (each device in order)
    forward_retry_initial_s: float = 0.5  # first pause after a failed delivery round; doubles
    forward_retry_max_s: float = 60.0  # longest pause between retries
    forward_dead_letter_after_s: float = 3600.0  # failing this long moves a message to the dead letters
    forward_outbox_warn_size: int = 100_000  # log a warning while a target has more waiting messages
    forward_poll_s: float = 1.0  # how often an idle target looks for rows written by other processes
    forward_batch_delay_ms: float = 10.0  # a target starts a delivery round at most this often
    forward_sink_process: bool = True  # run the targets' clients in a process of their own

    # scaling and housekeeping (docs/scaling.md)
    workers: int = 0  # device-listener processes sharing the port (SO_REUSEPORT); 0: one per core (auto)
    history_retention_days: int = 0  # 0: keep history and messages forever
    maintenance_interval_s: float = 600.0  # how often retention and partition upkeep run

    log_level: str = "info"
    log_format: str = "auto"  # auto: JSON lines unless stderr is a terminal; json; text
    access_log: bool = False

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def uses_postgres(self) -> bool:
        return self.database.startswith(("postgres://", "postgresql://"))

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets hidden (for `iotgate config show`)."""
        out = msgspec.structs.asdict(self)
        for name in SECRET_FIELDS:
            value = out.get(name)
            if value and not (name == "database" and "://" not in str(value)):
                out[name] = _mask(str(value))
        return out


# One line per setting for `--help`, `iotgate config show` readers and docs/configuration.md
# (tests/test_ops_config.py fails when a field has none, or when the document is out of date).
DESCRIPTIONS: dict[str, str] = {
    "data_dir": "Directory for the SQLite database, the admin key, the master key and the default TLS certificates.",
    "database": "Empty: SQLite file `iotgate.db` in the data dir. Or a `postgresql://user:pass@host/db` URL.",
    "node_id": "0..1023, part of every message ID; give each node sharing one database its own.",
    "device_host": "Address the device listener binds to.",
    "device_port": "Port of the device listener (Alink `/auth`, `/topic/...` and IoTDA `/v5/...` share it).",
    "device_plain_http": "Serve devices over plain HTTP instead of TLS. Local testing only: secrets travel in clear.",
    "tls_cert": "PEM certificate (chain) for the device listener; empty: a self-signed RSA + ECDSA pair in the data dir.",
    "tls_key": "PEM private key of `tls_cert` (both or neither).",
    "tls_profile": "`compat`: also the static-RSA AES-CBC suites Alibaba's C SDK needs; `modern`: ECDHE+AEAD only. "
    "TLS 1.2 is the minimum either way.",
    "admin_host": "Address of the admin listener (API, console, /metrics, /healthz). Keep it on loopback "
    "or a private network.",
    "admin_port": "Port of the admin listener.",
    "admin_key": "Admin API key. Empty: the data dir's `admin-key` file (created on first start; rotatable). "
    "Set here or by IOTGATE_ADMIN_KEY, it wins over the file and cannot be rotated by the API.",
    "master_key": "Key (32 bytes, url-safe base64) that encrypts device secrets at rest. Empty: the data dir's "
    "`master-key` file (created on first start).",
    "commit_max_reports": "Most reports per group commit (one database transaction).",
    "commit_max_delay_ms": "Longest wait for more reports before a commit with PostgreSQL; 0: commit as soon as the writer is "
    "free. SQLite commits as soon as its writer is free and batches what arrives meanwhile, except that a batch of "
    "fewer than 16 reports waits up to 2 ms (at most this) for more, or until 16 are pending; 0: never.",
    "running_status_flush_ms": "PostgreSQL: how often each process writes the running status (newest property "
    "values, last-seen times) of the reports it committed; other processes and nodes see a device's newest values "
    "up to this late (history and messages at once). 0: upsert them in every commit (fresh everywhere; "
    "alink-post ingest ~30 % slower). SQLite keeps them in its one writer process and every read sees them at once.",
    "sqlite_synchronous": "SQLite `synchronous` pragma: FULL (durable on power loss), NORMAL, OFF or EXTRA.",
    "alink_token_ttl_s": "Lifetime of an Alink `/auth` token (Alibaba: 7 days).",
    "iotda_token_ttl_s": "Lifetime of an IoTDA `/v5/device-auth` access token.",
    "iotda_reauth_grace_s": "How long an IoTDA token keeps working after the device got a newer one.",
    "iotda_timestamp_skew_s": "Allowed device clock error for IoTDA `sign_type` 1.",
    "alink_timestamp_skew_s": "Allowed age of an Alink `/auth` `timestamp` (Alibaba: 15 min).",
    "device_rate_per_s": "Requests per second each device may make (token bucket); a product's `ratePerSecond` "
    "overrides it. 0: unlimited.",
    "device_rate_burst": "Bucket size for `device_rate_per_s` (requests a device may send at once).",
    "auth_rate_per_s": "Authentications per second each device may make (Alibaba 40000, Huawei IOTDA.021101 beyond it); "
    "0 disables the limit.",
    "auth_rate_burst": "Bucket size for `auth_rate_per_s` (authentications a device may make at once).",
    "max_connections_per_ip": "Most open device connections from one client address; more are refused (reset).",
    "header_timeout_s": "A request's header must arrive within this many seconds of its first byte "
    "(also: the TLS handshake, and the first byte of a new connection); else 408 and close.",
    "body_timeout_s": "A request's body must arrive within this many seconds after its header; else 408 and close.",
    "idle_timeout_s": "A kept-alive device connection with no request for this long is closed.",
    "max_header_bytes": "Largest request line + headers of a device request; larger: 431 in the dialect's format.",
    "registry_poll_s": "How often the registry picks up changes made by other nodes or workers.",
    "workers": "Device-listener processes sharing the port (SO_REUSEPORT). 0: on Linux, one per CPU core (at most "
    "8) on a machine with 2 or more cores, else 1, which serves devices from the main process itself. With SQLite the "
    "main process commits what every worker accepts (one writer per file); with PostgreSQL each worker commits "
    "its own.",
    "history_retention_days": "Delete history and messages older than this many days; 0: keep forever.",
    "maintenance_interval_s": "How often retention and partition upkeep run.",
    "online_window_s": "A device counts as online while its last report is younger than this (Alibaba: 10 min).",
    "forward_batch_size": "Outbox rows one forwarding delivery round claims per target.",
    "forward_concurrency": "Devices delivered in parallel per forwarding target (each device stays in order).",
    "forward_retry_initial_s": "First pause after a failed delivery round; doubles up to `forward_retry_max_s`.",
    "forward_retry_max_s": "Longest pause between forwarding retries.",
    "forward_dead_letter_after_s": "A message failing this long moves to the target's dead letters.",
    "forward_outbox_warn_size": "Log a warning while a target has more messages than this waiting.",
    "forward_poll_s": "How often an idle forwarding target looks for rows written by other processes.",
    "forward_batch_delay_ms": "A forwarding target starts a delivery round at most this often, so that under load "
    "a round carries many messages (one bookkeeping transaction per round).",
    "forward_sink_process": "Run the forwarding targets' clients (MQTT, HTTP, NATS, AMQP, Redis) in a process of "
    "their own, started with the first rule; the main process keeps the outbox, retries and counters.",
    "log_level": "debug, info, warning, error or critical.",
    "log_format": "`auto`: JSON lines unless stderr is a terminal; `json`; `text`.",
    "access_log": "Log every request: device requests (dialect, endpoint, result, client) and admin requests.",
}


def markdown_table() -> str:
    """The settings table of docs/configuration.md, generated from `Settings` and DESCRIPTIONS."""
    defaults = Settings()
    lines = ["| Setting (TOML key) | Flag | Environment | Default | Description |", "|---|---|---|---|---|"]
    for name in field_names():
        default = getattr(defaults, name)
        shown = "(secret)" if name in SECRET_FIELDS and default else repr(default).replace("'", '"')
        if isinstance(default, bool):
            shown = str(default).lower()
        desc = DESCRIPTIONS.get(name, "").replace("|", "\\|")
        flag = "--" + name.replace("_", "-")
        lines.append(f"| `{name}` | `{flag}` | `IOTGATE_{name.upper()}` | `{shown}` | {desc} |")
    return "\n".join(lines) + "\n"


def _mask(value: str) -> str:
    if "://" in value and "@" in value:  # keep the host of a database URL, hide its credentials
        scheme, rest = value.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return "***" if value else ""


def field_names() -> list[str]:
    return list(Settings.__struct_fields__)


def _coerce(name: str, raw: Any) -> Any:
    default = getattr(Settings(), name)
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"1", "true", "yes", "on"}:
            return True
        if text in {"0", "false", "no", "off", ""}:
            return False
        raise ValueError(f"{name}: expected a boolean, got {raw!r}")
    if isinstance(default, int):
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected an integer, got {raw!r}") from None
    if isinstance(default, float):
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    return str(raw)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers; unknown keys in the TOML file are an error, not silently ignored."""
    values: dict[str, Any] = {}
    names = set(field_names())
    if config_file:
        with open(config_file, "rb") as fh:
            doc = tomllib.load(fh)
        section = doc.get("iotgate", doc)
        for key, raw in section.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ValueError(f"{config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, raw)
    env = os.environ if environ is None else environ
    for name in names:
        raw = env.get("IOTGATE_" + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw)
    settings = resolve_workers(Settings(**values))
    validate_settings(settings)
    return settings


MAX_AUTO_WORKERS = 8  # beyond this the one SQLite writer, not request handling, sets the pace


def resolve_workers(s: Settings) -> Settings:
    """workers = 0 (auto): one device process per usable core, none apart from the main one on 1 core."""
    if s.workers != 0:
        return s
    if not sys.platform.startswith("linux"):  # only Linux's SO_REUSEPORT spreads connections over processes
        return msgspec.structs.replace(s, workers=1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return msgspec.structs.replace(s, workers=min(cores, MAX_AUTO_WORKERS) if cores >= 2 else 1)


def validate_settings(s: Settings) -> None:
    if s.forward_batch_size < 1 or s.forward_concurrency < 1 or s.forward_outbox_warn_size < 1:
        raise ValueError("forward_batch_size, forward_concurrency and forward_outbox_warn_size must be ≥ 1")
    if not 0 < s.forward_retry_initial_s <= s.forward_retry_max_s:
        raise ValueError("forward_retry_initial_s must be > 0 and ≤ forward_retry_max_s")
    if s.forward_dead_letter_after_s < 0 or s.forward_batch_delay_ms < 0:
        raise ValueError("forward_dead_letter_after_s and forward_batch_delay_ms must be ≥ 0")
    if s.forward_poll_s <= 0 or s.online_window_s <= 0:
        raise ValueError("forward_poll_s and online_window_s must be > 0")
    if not 0 <= s.workers <= 64:
        raise ValueError("workers: expected 0 (auto) .. 64")
    if s.workers > 1 and s.node_id + s.workers > 1023:
        raise ValueError("node_id: worker processes use node_id+1 .. node_id+workers, which must stay ≤ 1023")
    if s.history_retention_days < 0 or s.maintenance_interval_s <= 0:
        raise ValueError("history_retention_days must be ≥ 0 and maintenance_interval_s > 0")
    if s.log_level.lower() not in {"debug", "info", "warning", "error", "critical"}:
        raise ValueError("log_level: expected debug, info, warning, error or critical")
    if s.log_format not in {"auto", "json", "text"}:
        raise ValueError("log_format: expected auto, json or text")
    if min(s.header_timeout_s, s.body_timeout_s, s.idle_timeout_s) <= 0:
        raise ValueError("header_timeout_s, body_timeout_s and idle_timeout_s must be > 0")
    if s.max_header_bytes < 1024 or s.max_connections_per_ip < 1:
        raise ValueError("max_header_bytes must be ≥ 1024 and max_connections_per_ip ≥ 1")
    if s.tls_profile not in {"compat", "modern"}:
        raise ValueError("tls_profile: expected 'compat' or 'modern'")
    if bool(s.tls_cert) != bool(s.tls_key):
        raise ValueError("tls_cert and tls_key must be given together")
    if not 0 <= s.node_id <= 1023:
        raise ValueError("node_id: expected 0..1023")
    if s.sqlite_synchronous.upper() not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError("sqlite_synchronous: expected OFF, NORMAL, FULL or EXTRA")
    if s.running_status_flush_ms < 0:
        raise ValueError("running_status_flush_ms must be ≥ 0")
    if s.commit_max_reports < 1 or s.commit_max_delay_ms < 0:
        raise ValueError("commit_max_reports must be ≥ 1 and commit_max_delay_ms ≥ 0")
    for port in (s.device_port, s.admin_port):
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")


if __name__ == "__main__":  # python -m iotgate.config: the settings table for docs/configuration.md
    print(markdown_table(), end="")
