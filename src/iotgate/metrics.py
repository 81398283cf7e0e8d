"""Prometheus metrics, served at `/metrics` on the admin listener.

Hot-path cost is one dict update per count: the counters are plain integers in dicts keyed by
their label values, bumped on the event loop's thread (every caller runs there) and turned into
Prometheus families only when /metrics is scraped. prometheus_client's own Counter takes a lock
and validates on every `inc()` (≈0.8 µs here), which is too much for a ≈15-40 µs request. The
device request counter is classified from the reply bytes the dialects already produced. The
histograms (one observation per group commit, not per request) use prometheus_client. Gauges that
mirror live state (open connections, pending commits, outbox depth) are read only at scrape time.

Metric names and labels are documented in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from iotgate import __version__
from iotgate.logs import clean, log_rejection

if TYPE_CHECKING:
    from iotgate.gateway.http import Request, Response
    from iotgate.server import Platform

log = logging.getLogger("iotgate.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Counters(Collector):
    """A labelled counter kept as {label values: int}; exposed as `<name>_total`."""

    def __init__(self, name: str, documentation: str, labels: list[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.values: dict[Any, int] = {}  # key: a str (one label), a tuple (several) or () (none)
        REGISTRY.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, value in sorted(self.values.items()):
            family.add_metric([key] if isinstance(key, str) else list(key), value)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labels)

    def inc(self, *labels: str, amount: int = 1) -> None:
        key = labels[0] if len(labels) == 1 else labels
        self.values[key] = self.values.get(key, 0) + amount

    def value(self, *labels: str) -> int:
        return self.values.get(labels[0] if len(labels) == 1 else labels, 0)


DEVICE_REQUESTS = Counters(
    "iotgate_device_requests",
    "Device requests answered, by dialect, endpoint and result code (Alink `code`, IoTDA `error_code` or 200)",
    ["dialect", "endpoint", "result"],
)
DEVICE_AUTH = Counters(
    "iotgate_device_auth",
    "Device authentications (/auth, /v5/device-auth) by dialect and outcome (success, failure)",
    ["dialect", "outcome"],
)
TOKEN_VERIFICATIONS = Counters(
    "iotgate_token_verifications",
    "Device token checks by dialect and result (ok, expired, invalid)",
    ["dialect", "result"],
)
REPORTS_ACCEPTED = Counters(
    "iotgate_reports_accepted",
    "Committed device records by kind (property, event, message, deviceinfo, ota)",
    ["kind"],
)
REPORTS_REJECTED = Counters(
    "iotgate_reports_rejected",
    "Rejected device reports by reason: the thing-model rule that failed (type, min, max, unknown, ...) "
    "or `malformed` for a payload of the wrong shape; a report breaking several rules counts once per rule",
    ["reason"],
)
DATA_POINTS = Counters(
    "iotgate_data_points", "Property values committed (one report of 3 properties is 3 data points)", []
)
COMMIT_FAILURES = Counters(
    "iotgate_commit_failures", "Group commits that failed (every device in the batch was told to retry)", []
)
LIMIT_EVENTS = Counters(
    "iotgate_device_limit_events",
    "Device-listener protections that fired: connections_per_ip (connection refused), header_timeout, "
    "body_timeout, idle_timeout (connection closed), header_too_large, body_too_large, malformed_http, rate_limited",
    ["limit"],
)
ADMIN_REQUESTS = Counters(
    "iotgate_admin_requests",
    "Management API requests by method and status class (2xx, 4xx, 5xx)",
    ["method", "status"],
)
COMMIT_BATCH = Histogram(
    "iotgate_commit_batch_size",
    "Records per group commit (one database transaction)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096),
    registry=REGISTRY,
)
COMMIT_SECONDS = Histogram(
    "iotgate_commit_seconds",
    "Duration of one group commit (write and COMMIT)",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
    registry=REGISTRY,
)

_requests = DEVICE_REQUESTS.values
_auth = DEVICE_AUTH.values
_tokens = TOKEN_VERIFICATIONS.values
_limits = LIMIT_EVENTS.values
_accepted = REPORTS_ACCEPTED.values
_rejected = REPORTS_REJECTED.values
_admin = ADMIN_REQUESTS.values
_points = DATA_POINTS.values
_CODE = re.compile(rb'\{"(?:code|error_code)":"?([A-Za-z0-9_.\-]{1,32})')
IOTDA_ACTIONS = frozenset({"messages/up", "properties/report", "gateway/sub-devices/properties/report"})
_TOKEN_DIALECT = {1: "alink", 2: "iotda"}  # iotgate.auth.tokens.DIALECT_*


# -- device listener ---------------------------------------------------------------------------
def classify(path: str) -> tuple[str, str]:
    """(dialect, endpoint) of a device request path; the endpoint set is small and fixed."""
    if path == "/auth":
        return "alink", "auth"
    if path.startswith("/topic/"):
        return "alink", "topic"
    if path.startswith("/v5/"):
        if path == "/v5/device-auth":
            return "iotda", "device-auth"
        parts = path.split("/", 5)
        if len(parts) == 6 and parts[2] == "devices" and parts[4] == "sys" and parts[5] in IOTDA_ACTIONS:
            return "iotda", parts[5]
        return "iotda", "other"
    return "alink", "other"


def result_code(resp: Response) -> str:
    """The business result of a reply: Alink's `code`, IoTDA's `error_code`, else the HTTP status."""
    body = resp.body
    if body.startswith(b'{"code":0,'):
        return "0"
    if not body and resp.status == 200:
        return "200"
    m = _CODE.match(body, 0, 64)
    return m.group(1).decode() if m else str(resp.status)


def device_request(path: str, resp: Response) -> str:
    """Count one answered device request; returns its result code."""
    dialect, endpoint = classify(path)
    result = result_code(resp)
    key = (dialect, endpoint, result)
    _requests[key] = _requests.get(key, 0) + 1
    if endpoint == "auth" or endpoint == "device-auth":
        ok = result == "0" if dialect == "alink" else resp.status == 200
        key2 = (dialect, "success" if ok else "failure")
        _auth[key2] = _auth.get(key2, 0) + 1
    return result


# (dialect, endpoint, result) of the hot path's successes (gateway/pending.Pending), as
# device_request classifies them: counted without classifying the path and the reply again
ALINK_TOPIC_OK = ("alink", "topic", "0")
IOTDA_REPORT_OK = ("iotda", "properties/report", "200")


def device_ok(req: Request, resp: Response, key: tuple[str, str, str]) -> None:
    """device_reply for a success whose key the caller knows (ALINK_TOPIC_OK, IOTDA_REPORT_OK)."""
    _requests[key] = _requests.get(key, 0) + 1
    if _access is not None:
        _log_access(req, resp, key[2])


def device_reply(req: Request, resp: Response) -> None:
    """Count an answered device request and log it when it was refused (one line, no secrets)."""
    path = req.path
    result = device_request(path, resp)
    if _access is not None:
        _log_access(req, resp, result)
    if result == "0" or (resp.status == 200 and not resp.body.startswith(b'{"code":')):
        return
    dialect, endpoint = classify(path)
    log_rejection(dialect, endpoint, _device_of(req, dialect, endpoint), result, _reason(resp), req.client)


def _log_access(req: Request, resp: Response, result: str) -> None:
    assert _access is not None
    path = clean(req.path, 200)
    _access.info(
        "%s %s %d %s",
        req.client or "-",
        path,
        resp.status,
        result,
        extra={"client": req.client, "path": path, "status": resp.status, "result": result},
    )


_access: logging.Logger | None = None


def set_access_log(enabled: bool) -> None:
    """--access-log: one `iotgate.access` line per device request (client, path, status, result; no headers)."""
    global _access
    _access = logging.getLogger("iotgate.access") if enabled else None


def http_refusal(path: str, resp: Response, limit: str) -> Response:
    """A request the HTTP layer refused before routing (malformed, too large, too slow)."""
    result = device_request(path, resp)
    limit_hit(limit)
    dialect, endpoint = classify(path)
    log_rejection(dialect, endpoint, "", result, _reason(resp), "")
    return resp


def _reason(resp: Response) -> str:
    try:
        doc = msgspec.json.decode(resp.body)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return clean(resp.body.decode("utf-8", "replace"), 300)
    text = (doc.get("message") or doc.get("error_msg") or "") if isinstance(doc, dict) else ""
    return clean(str(text), 300)


def _device_of(req: Request, dialect: str, endpoint: str) -> str:
    """The device a refused request claimed to be (path or auth body): for the log line only."""
    path = req.path
    if endpoint == "topic":
        parts = path.split("/")  # ['', 'topic', 'sys', pk, dn, ...] or ['', 'topic', pk, dn, 'user', ...]
        if len(parts) >= 5 and parts[2] == "sys":
            return clean(f"{parts[3]}/{parts[4]}")
        if len(parts) >= 8 and parts[2:5] == ["ota", "device", "inform"]:
            return clean(f"{parts[6]}/{parts[7]}")
        if len(parts) >= 4:
            return clean(f"{parts[2]}/{parts[3]}")
        return ""
    if dialect == "iotda" and endpoint != "device-auth":
        parts = path.split("/")
        return clean(unquote(parts[3])) if len(parts) > 3 and parts[2] == "devices" else ""
    if endpoint in ("auth", "device-auth"):
        try:
            doc = msgspec.json.decode(req.body.rstrip(b"\x00"))
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            return ""
        if not isinstance(doc, dict):
            return ""
        if endpoint == "auth":
            pk, dn = doc.get("productKey"), doc.get("deviceName")
            return clean(f"{pk}/{dn}") if isinstance(pk, str) and isinstance(dn, str) else ""
        device_id = doc.get("device_id")
        return clean(device_id) if isinstance(device_id, str) else ""
    return ""


def token_checked(dialect_id: int, result: str) -> None:
    """dialect_id: iotgate.auth.tokens.DIALECT_*; result: ok, expired or invalid."""
    key = (_TOKEN_DIALECT.get(dialect_id, "other"), result)
    _tokens[key] = _tokens.get(key, 0) + 1


def limit_hit(limit: str) -> None:
    _limits[limit] = _limits.get(limit, 0) + 1


# -- reports -----------------------------------------------------------------------------------
def reports_rejected(rules: Iterable[str]) -> None:
    for rule in set(rules) or {"malformed"}:
        _rejected[rule] = _rejected.get(rule, 0) + 1


def committed(records: Collection[Any], seconds: float) -> None:
    """A group commit finished: batch size, latency, accepted records by kind, data points."""
    COMMIT_BATCH.observe(len(records))
    COMMIT_SECONDS.observe(seconds)
    kinds: dict[str, int] = {}
    points = 0
    for r in records:
        kind = r.kind
        if kind == "rejected":
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
        if r.values:
            points += len(r.values)
    for kind, n in kinds.items():
        _accepted[kind] = _accepted.get(kind, 0) + n
    if points:
        _points[()] = _points.get((), 0) + points


def admin_request(method: str, status: int) -> None:
    key = (method, f"{status // 100}xx")
    _admin[key] = _admin.get(key, 0) + 1


# -- live state, read at scrape time -----------------------------------------------------------
class PlatformCollector(Collector):
    """Gauges of the running platform: connections, pending commits, online devices, outbox depth."""

    def __init__(self) -> None:
        self._platform: Callable[[], Platform | None] = lambda: None
        self.started = time.time()

    def bind(self, platform: Platform) -> None:
        self._platform = weakref.ref(platform)
        self.started = time.time()

    def collect(self) -> Iterator[Any]:
        info = InfoMetricFamily("iotgate_build", "iotgate version")
        info.add_metric([], {"version": __version__})
        yield info
        yield GaugeMetricFamily("iotgate_start_time_seconds", "Unix time the server started", value=self.started)
        p = self._platform()
        if p is None:
            return
        server = getattr(p, "device_server", None)
        if server is not None:
            yield GaugeMetricFamily(
                "iotgate_device_connections", "Open device connections", value=len(server.connections)
            )
            yield GaugeMetricFamily(
                "iotgate_device_client_addresses",
                "Client addresses with at least one open device connection",
                value=len(server.per_ip),
            )
        ingestor = getattr(p, "ingestor", None)
        if ingestor is not None:
            yield GaugeMetricFamily(
                "iotgate_ingest_pending", "Records waiting for the next group commit", value=len(ingestor._pending)
            )
        core = getattr(p, "core", None)
        if core is not None:
            window_ms = float(getattr(p.settings, "online_window_s", 600.0)) * 1000
            now = time.time() * 1000
            online = sum(1 for seen in list(core.last_seen.values()) if now - seen < window_ms)
            yield GaugeMetricFamily(
                "iotgate_devices_online",
                "Devices that reported within the online window (online_window_s)",
                value=online,
            )
        depths = outbox_depths(p)
        if depths is not None:
            family = GaugeMetricFamily(
                "iotgate_outbox_depth", "Forwarding records not yet delivered, per target", labels=["target"]
            )
            for target, depth in sorted(depths.items()):
                family.add_metric([str(target)], float(depth))
            yield family
        yield from forward_families(p)


FORWARD_COUNTERS = {  # stats field -> (metric, help); counters only grow (until a target is deleted)
    "matched": ("iotgate_forward_matched", "Messages in a forwarding rule's scope, per target"),
    "filteredOut": ("iotgate_forward_filtered_out", "Matched messages the rule's filter did not select"),
    "delivered": ("iotgate_forward_delivered", "Messages the target confirmed"),
    "redelivered": ("iotgate_forward_redelivered", "Deliveries after an attempt that may have arrived too"),
    "retries": ("iotgate_forward_retries", "Failed delivery attempts"),
    "replayed": ("iotgate_forward_replayed", "Dead letters sent back to the outbox"),
}
FORWARD_GAUGES = {
    "deadLettered": ("iotgate_forward_dead_letters", "Messages in the target's dead-letter store"),
    "inFlight": ("iotgate_forward_in_flight", "Messages being delivered"),
    "queued": ("iotgate_forward_queued", "Messages waiting in the outbox"),
}


def forward_families(p: Platform) -> Iterator[Metric]:
    """Counters per rule and target (they add up: matched = delivered + dead_letters + in_flight +
    queued + filtered_out), as read by the forwarder when /metrics was requested."""
    rows = list(getattr(getattr(p, "forwarder", None), "metric_stats", None) or [])
    if not rows:
        return
    labels = ["rule", "rule_id", "target"]
    for key, (name, doc) in {**FORWARD_COUNTERS, **FORWARD_GAUGES}.items():
        family: CounterMetricFamily | GaugeMetricFamily = (
            CounterMetricFamily(name, doc, labels=labels)
            if key in FORWARD_COUNTERS
            else GaugeMetricFamily(name, doc, labels=labels)
        )
        for r in rows:
            family.add_metric([str(r["rule"]), str(r["ruleId"]), f"{r['targetId']}-{r['type']}"], float(r[key]))
        yield family


def outbox_depths(p: Platform) -> dict[str, int] | None:
    """Outbox depth per forwarding target, when the forwarding engine is running and exposes it
    (`outbox_depths()` returning {target: depth}); None otherwise."""
    for name in ("forwarder", "forwarding", "forward"):
        engine = getattr(p, name, None)
        fn = getattr(engine, "outbox_depths", None) if engine is not None else None
        if callable(fn):
            try:
                depths = fn()
            except Exception:  # a scrape must not fail because an optional component did
                log.exception("outbox depth unavailable")
                return None
            return dict(depths) if depths is not None else None
    return None


PLATFORM = PlatformCollector()
REGISTRY.register(PLATFORM)


def bind_platform(platform: Platform) -> None:
    PLATFORM.bind(platform)
    workers = int(getattr(platform.settings, "workers", 1))
    if workers > 1 and not getattr(platform, "worker", 0):  # the main process of --workers N
        MERGED.directory, MERGED.workers = platform.data_dir / SNAPSHOT_DIR, workers


# -- --workers N: each worker process writes its figures, the main process adds them up ---------
SNAPSHOT_DIR = "metrics"
SNAPSHOT_EVERY_S = 1.0
# per-process facts, not sums: the main process's own value stands
NOT_ADDED = frozenset({"iotgate_build", "iotgate_start_time_seconds", "iotgate_devices_online", "iotgate_outbox_depth"})


def snapshot() -> bytes:
    """This process's samples (counters, histograms, additive gauges) for the main process to add."""
    out = []
    for family in REGISTRY.collect():
        if family.name in NOT_ADDED:
            continue
        samples = [[s.name, s.labels, s.value] for s in family.samples if not s.name.endswith("_created")]
        out.append([family.name, family.type, family.documentation, samples])
    return msgspec.json.encode(out)


def write_snapshot(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(snapshot())
    os.replace(tmp, path)


def start_worker_snapshots(data_dir: Path, worker: int) -> asyncio.Task[None]:
    """In worker process `worker`: write the figures to <data dir>/metrics/worker-<n>.json every second."""
    directory = data_dir / SNAPSHOT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"worker-{worker}.json"
    write_snapshot(path)  # at once: replaces what a previous worker of this number left

    async def loop() -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY_S)
            try:
                write_snapshot(path)
            except OSError as exc:
                log.warning("cannot write metrics snapshot %s: %s", path, exc)

    return asyncio.get_running_loop().create_task(loop(), name="metrics-snapshot")


class MergedRegistry:
    """What /metrics exposes: this process's registry plus, for --workers N, the workers' snapshots
    (at most SNAPSHOT_EVERY_S old) added sample by sample."""

    def __init__(self) -> None:
        self.directory: Path | None = None
        self.workers = 0

    def collect(self) -> list[Metric]:
        families = list(REGISTRY.collect())
        if self.directory is None:
            return families
        by_name = {f.name: f for f in families}
        for n in range(1, self.workers + 1):
            try:
                doc = msgspec.json.decode((self.directory / f"worker-{n}.json").read_bytes())
            except (OSError, ValueError, msgspec.DecodeError):
                continue  # not written yet (starting), or being replaced
            for name, kind, documentation, samples in doc:
                family = by_name.get(name)
                if family is None:
                    family = by_name[name] = Metric(name, documentation, kind)
                    families.append(family)
                index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(family.samples)}
                for sample_name, labels, value in samples:
                    key = (sample_name, tuple(sorted(labels.items())))
                    i = index.get(key)
                    if i is None:
                        index[key] = len(family.samples)
                        family.samples.append(Sample(sample_name, labels, value))
                    else:
                        family.samples[i] = family.samples[i]._replace(value=family.samples[i].value + value)
        return families


MERGED = MergedRegistry()


def exposition() -> bytes:
    return generate_latest(MERGED)  # anything with collect() will do
