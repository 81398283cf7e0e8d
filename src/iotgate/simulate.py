"""`iotgate simulate`: N devices of a product reporting at a rate, through either device dialect.

Values come from the product's published thing model, fetched through the admin API: numbers take a
random walk inside their min/max on their step grid, bools and enums change now and then, text/date/
struct/array values are generated to fit their specs. Devices named ``{prefix}0000``... are created
through the admin API when missing (existing ones are reused). Each simulated device is an
:class:`~iotgate.client.AsyncAlinkDevice` or :class:`~iotgate.client.AsyncIotdaDevice` with its own
kept-alive connection. ``--invalid-ratio`` mixes in deliberately invalid reports, which the server must
reject. The command exits 1 if any report was rejected unexpectedly, an invalid one was accepted, or a
device could not talk to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from iotgate import cli
from iotgate.client import (
    AsyncAlinkDevice,
    AsyncIotdaDevice,
    DeviceConnectionError,
    DeviceError,
    ServiceProperties,
)
from iotgate.client._http import Verify
from iotgate.model import (
    DEFAULT_MODULE,
    ArraySpecs,
    BoolSpecs,
    DataType,
    DateSpecs,
    EnumSpecs,
    ModelError,
    NumberSpecs,
    StructSpecs,
    TextSpecs,
    ThingModel,
    parse_model,
)
from iotgate.model.types import TYPE_BOUNDS

SIM_PRODUCT_NAME = "iotgate-sim collector"
SEED_COLLECTOR_MODEL: dict[str, Any] = {
    "properties": [
        {
            "identifier": "temperature",
            "name": "Temperature",
            "accessMode": "r",
            "dataType": {"type": "int32", "specs": {"min": -10, "max": 50, "step": 1, "unit": "°C"}},
        },
        {
            "identifier": "humidity",
            "name": "Humidity",
            "accessMode": "r",
            "dataType": {"type": "int32", "specs": {"min": 1, "max": 100, "step": 1, "unit": "%"}},
        },
    ]
}
RESERVOIR = 20_000
MAX_ERRORS_KEPT = 10
CONNECT_CONCURRENCY = 64
err = Console(stderr=True)


# -- values ----------------------------------------------------------------------------------------
def _number_range(dt: DataType) -> tuple[float, float, float, float]:
    """(low, high, step, grid base) of a numeric type, with sensible defaults for open ranges."""
    assert isinstance(dt.specs, NumberSpecs)
    s = dt.specs
    is_int = dt.type in ("int32", "int64")
    lo, hi = s.min, s.max
    if lo is None and hi is None:
        lo, hi = 0, 100
    elif lo is None:
        lo = hi - 100  # type: ignore[operator]
    elif hi is None:
        hi = lo + 100
    tlo, thi = TYPE_BOUNDS[dt.type]
    lo, hi = max(float(lo), float(tlo)), min(float(hi), float(thi))  # type: ignore[arg-type]
    step = float(s.step) if s.step is not None else (1.0 if is_int else max((hi - lo) / 100, 1e-6))
    base = float(s.min) if s.min is not None else 0.0
    return lo, hi, step, base


class ValueGenerator:
    """Plausible values for one device: a random walk per numeric property, kept between reports."""

    def __init__(self, model: ThingModel, rng: random.Random) -> None:
        self.rng = rng
        self.state: dict[str, Any] = {}
        self.modules: list[tuple[str, list[tuple[str, DataType]]]] = []
        default = [(p.identifier, p.data_type) for p in model.properties]
        if default:
            self.modules.append((DEFAULT_MODULE, default))
        for m in model.modules:
            if m.properties:
                self.modules.append((m.identifier, [(p.identifier, p.data_type) for p in m.properties]))
        if not self.modules:
            raise ValueError("the product's thing model has no properties to report")

    def report(self) -> dict[str, dict[str, Any]]:
        """module -> {identifier: value}, every property of the model."""
        return {
            module: {ident: self.value(f"{module}:{ident}", dt) for ident, dt in props}
            for module, props in self.modules
        }

    def value(self, path: str, dt: DataType) -> Any:
        s, rng = dt.specs, self.rng
        if isinstance(s, NumberSpecs):
            lo, hi, step, base = _number_range(dt)
            current = self.state.get(path)
            if current is None:
                current = lo + (hi - lo) * rng.uniform(0.3, 0.7)
            else:
                current += step * rng.choice((-2, -1, 0, 0, 1, 2))
            value = self._snap(min(max(current, lo), hi), lo, hi, step, base)
            self.state[path] = value
            if dt.type in ("int32", "int64"):
                tlo, thi = TYPE_BOUNDS[dt.type]
                return max(int(tlo), min(int(thi), round(value)))
            return float(value)
        if isinstance(s, BoolSpecs):
            flag = self.state.get(path, rng.random() < 0.5)
            if rng.random() < 0.1:
                flag = not flag
            self.state[path] = flag
            return 1 if flag else 0
        if isinstance(s, EnumSpecs):
            keys = list(s.values)
            key = self.state.get(path)
            if key is None or rng.random() < 0.1:
                key = rng.choice(keys)
            self.state[path] = key
            return int(key) if key.lstrip("-").isdigit() and str(int(key)) == key else key
        if isinstance(s, TextSpecs):
            limit = s.length or 32
            return f"sim-{rng.randrange(10**6):06d}"[:limit]
        if isinstance(s, DateSpecs):
            return int(time.time() * 1000)
        if isinstance(s, StructSpecs):
            if not s.members:
                return {"n": rng.randrange(100)}
            return {m.identifier: self.value(f"{path}.{m.identifier}", m.data_type) for m in s.members}
        if isinstance(s, ArraySpecs):
            return [self.value(f"{path}[{i}]", s.item) for i in range(min(s.size, 3))]
        raise ValueError(f"{path}: cannot generate values of type {dt.type}")  # pragma: no cover

    @staticmethod
    def _snap(value: float, lo: float, hi: float, step: float, base: float) -> float:
        snapped = base + round((value - base) / step) * step
        if step >= 1e-4:
            snapped = round(snapped, 6)
        slack = step * 1e-6  # float noise: 0.4 arrives as 0.4000000000000001
        if snapped > hi:
            snapped = hi if snapped - hi <= slack else snapped - step
        if snapped < lo:
            snapped = lo if lo - snapped <= slack else snapped + step
        return min(max(snapped, lo), hi)

    def invalidate(self, report: dict[str, dict[str, Any]]) -> str:
        """Break one value of the report so the thing model must reject it; returns what was done."""
        for module, props in self.modules:
            for ident, dt in props:
                broken = self._broken(dt)
                if broken is not None:
                    report[module][ident] = broken
                    return f"{module}:{ident}={broken!r}"
        raise ValueError("no property of the model can be made invalid")  # pragma: no cover

    @staticmethod
    def _broken(dt: DataType) -> Any:
        s = dt.specs
        if isinstance(s, NumberSpecs):
            if s.max is not None and s.max < TYPE_BOUNDS[dt.type][1]:
                return s.max + (s.step or 1)
            if s.min is not None and s.min > TYPE_BOUNDS[dt.type][0]:
                return s.min - (s.step or 1)
            return "not a number"
        if isinstance(s, BoolSpecs):
            return 7
        if isinstance(s, EnumSpecs):
            return "not-an-enum-value-" + "x" * 8
        if isinstance(s, TextSpecs):
            return 12345
        if isinstance(s, DateSpecs):
            return "yesterday"
        return "not an object"


# -- statistics ------------------------------------------------------------------------------------
@dataclass
class Stats:
    started: float = field(default_factory=time.monotonic)
    sent: int = 0
    accepted: int = 0
    expected_rejections: int = 0
    unexpected_rejections: int = 0
    invalid_accepted: int = 0
    errors: int = 0
    auth_failures: int = 0
    devices: int = 0
    connected: int = 0
    running: bool = False  # all devices have authenticated (or failed to); the clock runs
    renewals: int = 0
    reauths: int = 0
    latencies: list[float] = field(default_factory=list)
    samples: int = 0
    problems: list[str] = field(default_factory=list)
    rng: random.Random = field(default_factory=random.Random)

    @property
    def rejected(self) -> int:
        return self.expected_rejections + self.unexpected_rejections

    @property
    def failed(self) -> bool:
        problems = self.unexpected_rejections or self.invalid_accepted or self.errors or self.auth_failures
        return bool(problems) or self.sent == 0  # a run that sent nothing verified nothing

    def latency(self, seconds: float) -> None:
        self.samples += 1
        if len(self.latencies) < RESERVOIR:
            self.latencies.append(seconds)
        else:  # reservoir sampling keeps memory bounded on long runs
            slot = self.rng.randrange(self.samples)
            if slot < RESERVOIR:
                self.latencies[slot] = seconds

    def problem(self, text: str) -> None:
        if len(self.problems) < MAX_ERRORS_KEPT:
            self.problems.append(text)

    @staticmethod
    def percentile(ordered: list[float], q: float) -> float | None:
        if not ordered:
            return None
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def summary(self, info: dict[str, Any]) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        ordered = sorted(self.latencies)
        p50, p99 = self.percentile(ordered, 0.50), self.percentile(ordered, 0.99)
        return {
            **info,
            "sent": self.sent,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "expectedRejections": self.expected_rejections,
            "unexpectedRejections": self.unexpected_rejections,
            "invalidAccepted": self.invalid_accepted,
            "errors": self.errors,
            "authFailures": self.auth_failures,
            "tokenRenewals": self.renewals,
            "reauths": self.reauths,
            "elapsedS": round(elapsed, 3),
            "messagesPerS": round(self.sent / elapsed, 1) if elapsed > 0 else 0.0,
            "latencyMs": {
                "p50": None if p50 is None else round(p50 * 1000, 2),
                "p99": None if p99 is None else round(p99 * 1000, 2),
            },
            "problems": self.problems,
            "ok": not self.failed,
        }


class Dashboard:
    """The live view: progress plus counters, rebuilt on every refresh."""

    def __init__(self, stats: Stats, info: dict[str, Any], total: int | None, duration: float | None) -> None:
        self.stats, self.info = stats, info
        self.total, self.duration = total, duration
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
        )
        self.label = f"{info['devices']} × {info['protocol']} devices"
        self.task = self.progress.add_task(self.label, total=total or duration or None)

    def __rich__(self) -> Group:
        s = self.stats
        if not s.running:
            self.progress.update(self.task, description=f"connecting {s.connected}/{s.devices} devices")
        else:
            self.progress.update(self.task, description=self.label)
        if self.total:
            self.progress.update(self.task, completed=s.sent)
        elif self.duration:
            self.progress.update(self.task, completed=min(self.duration, time.monotonic() - s.started))
        table = Table(show_header=True, header_style="bold")
        for col in ("sent", "accepted", "rejected", "unexpected", "errors", "msg/s", "p50 ms", "p99 ms"):
            table.add_column(col, justify="right")
        summary = s.summary(self.info)
        latency = summary["latencyMs"]
        unexpected = s.unexpected_rejections + s.invalid_accepted
        table.add_row(
            str(s.sent),
            f"[green]{s.accepted}[/green]",
            str(s.rejected),
            f"[red]{unexpected}[/red]" if unexpected else "0",
            f"[red]{s.errors + s.auth_failures}[/red]" if s.errors or s.auth_failures else "0",
            f"{summary['messagesPerS']:.1f}",
            "-" if latency["p50"] is None else f"{latency['p50']:.1f}",
            "-" if latency["p99"] is None else f"{latency['p99']:.1f}",
        )
        return Group(self.progress, table)


# -- devices ---------------------------------------------------------------------------------------
@dataclass
class SimDevice:
    product_key: str
    device_name: str
    device_id: str
    secret: str


def list_all(api: cli.AdminClient, path: str, params: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every item of a paged list endpoint, a page of 1000 at a time."""
    offset = 0
    while True:
        page = api.call("GET", path, params={**(params or {}), "limit": 1000, "offset": offset})
        yield from page["items"]
        offset += len(page["items"])
        if not page["items"] or offset >= page["total"]:
            return


def resolve_product(api: cli.AdminClient, product_key: str | None) -> str:
    """The given product, or the simulator's own seed-collector product (created on first use)."""
    if product_key:
        api.call("GET", f"/api/v1/products/{product_key}")
        return product_key
    for item in list_all(api, "/api/v1/products"):
        if item["name"] == SIM_PRODUCT_NAME:
            return str(item["productKey"])
    created = api.call(
        "POST",
        "/api/v1/products",
        json={"name": SIM_PRODUCT_NAME, "description": "created by iotgate simulate"},
    )
    pk = str(created["productKey"])
    api.call("PUT", f"/api/v1/products/{pk}/thing-model", json=SEED_COLLECTOR_MODEL)
    api.call("POST", f"/api/v1/products/{pk}/thing-model/publish")
    err.print(f"created product {pk} ({SIM_PRODUCT_NAME}) with the temperature/humidity model")
    return pk


def fetch_model(api: cli.AdminClient, product_key: str) -> ThingModel:
    try:
        doc = api.call("GET", f"/api/v1/products/{product_key}/thing-model", params={"version": "latest"})
    except cli.CliError as exc:
        if "404" in str(exc):
            raise cli.CliError(f"product {product_key} has no published thing model; publish one first") from None
        raise
    try:
        return parse_model(doc)
    except ModelError as exc:
        raise cli.CliError(f"the published thing model of {product_key} does not parse: {exc}") from None


def ensure_devices(api: cli.AdminClient, product_key: str, prefix: str, count: int) -> list[SimDevice]:
    """Devices {prefix}0000..: existing ones are reused (their secret read back), missing ones created."""
    width = max(4, len(str(count - 1)))
    names = [f"{prefix}{i:0{width}d}" for i in range(count)]
    existing = {d["deviceName"] for d in list_all(api, f"/api/v1/products/{product_key}/devices", {"search": prefix})}
    wanted = set(names)
    missing = [n for n in names if n not in existing]
    found: dict[str, SimDevice] = {}
    for start in range(0, len(missing), 1000):
        chunk = missing[start : start + 1000]
        result = api.call("POST", f"/api/v1/products/{product_key}/devices:batch", json={"devices": chunk})
        for d in result["devices"]:
            found[d["deviceName"]] = SimDevice(d["productKey"], d["deviceName"], d["deviceId"], d["deviceSecret"])
    for name in sorted(existing & wanted):
        d = api.call("GET", f"/api/v1/products/{product_key}/devices/{name}")
        if not d.get("enabled", True):
            raise cli.CliError(f"device {product_key}/{name} is disabled; enable it or choose another --prefix")
        found[name] = SimDevice(d["productKey"], d["deviceName"], d["deviceId"], d["deviceSecret"])
    if missing:
        err.print(f"created {len(missing)} device(s); reusing {len(names) - len(missing)}")
    return [found[n] for n in names]


# -- running ---------------------------------------------------------------------------------------
@dataclass
class Plan:
    protocol: str
    endpoint: str
    verify: Verify
    rate: float
    count: int | None
    duration: float | None
    invalid_ratio: float
    seed: int | None


class StartGate:
    """Devices authenticate first; the clock starts once every one of them has (or has failed)."""

    def __init__(self, devices: int, stats: Stats) -> None:
        self.pending = devices
        self.stats = stats
        self.go = asyncio.Event()
        self.start = 0.0

    def arrived(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.start = self.stats.started = time.monotonic()
            self.stats.running = True
            self.go.set()


async def _first(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_device(
    index: int,
    device: SimDevice,
    model: ThingModel,
    plan: Plan,
    stats: Stats,
    gate: StartGate,
    connecting: asyncio.Semaphore,
    stop: asyncio.Event,
) -> None:
    rng = random.Random(None if plan.seed is None else plan.seed * 1_000_003 + index)
    values = ValueGenerator(model, rng)
    client: AsyncAlinkDevice | AsyncIotdaDevice
    if plan.protocol == "alink":
        client = AsyncAlinkDevice(
            device.product_key, device.device_name, device.secret, plan.endpoint, verify=plan.verify
        )
    else:
        client = AsyncIotdaDevice(device.device_id, device.secret, plan.endpoint, verify=plan.verify)
    async with client:
        try:
            async with connecting:  # bounded: a thousand TLS handshakes at once help nobody
                if not stop.is_set():
                    await client.auth()
                    stats.connected += 1
        except DeviceError as exc:
            stats.auth_failures += 1
            stats.problem(f"{device.device_name}: auth failed: {exc}")
            return
        finally:
            gate.arrived()
        await _first(gate.go, stop)
        if stop.is_set():
            return
        interval = 1.0 / plan.rate
        first = gate.start + interval * index / gate.stats.devices  # spread the devices over one interval
        deadline = gate.start + plan.duration if plan.duration is not None else math.inf
        k = 0
        while not stop.is_set() and (plan.count is None or k < plan.count):
            due = first + k * interval
            now = time.monotonic()
            if due >= deadline or now >= deadline:  # no catching up on a backlog past the end
                break
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), due - now)
                if stop.is_set():
                    break
            k += 1
            await send_one(client, device, values, rng, plan, stats)
        stats.renewals += client.stats.renewals
        stats.reauths += client.stats.reauths


async def send_one(
    client: AsyncAlinkDevice | AsyncIotdaDevice,
    device: SimDevice,
    values: ValueGenerator,
    rng: random.Random,
    plan: Plan,
    stats: Stats,
) -> None:
    report = values.report()
    invalid = rng.random() < plan.invalid_ratio
    broken = values.invalidate(report) if invalid else ""
    stats.sent += 1
    sent_at = time.monotonic()
    try:
        if isinstance(client, AsyncAlinkDevice):
            flat = {
                (ident if module == DEFAULT_MODULE else f"{module}:{ident}"): v
                for module, props in report.items()
                for ident, v in props.items()
            }
            await client.post_properties(flat)
        else:
            await client.report_services([ServiceProperties(m, props) for m, props in report.items()])
    except DeviceConnectionError as exc:
        stats.errors += 1
        stats.problem(f"{device.device_name}: {exc}")
        return
    except DeviceError as exc:
        stats.latency(time.monotonic() - sent_at)
        if invalid and exc.rejected:
            stats.expected_rejections += 1
        else:
            stats.unexpected_rejections += 1
            stats.problem(f"{device.device_name}: rejected: {exc}")
        return
    stats.latency(time.monotonic() - sent_at)
    if invalid:
        stats.invalid_accepted += 1
        stats.problem(f"{device.device_name}: invalid report accepted ({broken})")
    else:
        stats.accepted += 1


async def run_all(
    devices: list[SimDevice],
    model: ThingModel,
    plan: Plan,
    stats: Stats,
    live: bool,
    info: dict[str, Any],
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    stats.devices = len(devices)
    stats.started = time.monotonic()
    gate = StartGate(len(devices), stats)
    connecting = asyncio.Semaphore(CONNECT_CONCURRENCY)
    tasks = [
        asyncio.create_task(run_device(i, d, model, plan, stats, gate, connecting, stop)) for i, d in enumerate(devices)
    ]
    total = plan.count * len(devices) if plan.count is not None else None
    dashboard = Dashboard(stats, info, total, plan.duration)
    with Live(dashboard, console=err, refresh_per_second=4, transient=False) if live else contextlib.nullcontext():
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            stats.errors += 1
            stats.problem(f"simulated device crashed: {type(result).__name__}: {result}")
    if stats.sent == 0:
        stats.problem("no report was sent")
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)


def _server_info(args: argparse.Namespace) -> dict[str, Any]:
    data_dir = Path(args.data_dir or os.environ.get("IOTGATE_DATA_DIR", "./iotgate-data"))
    info_file = data_dir / "server.json"
    if info_file.exists():
        try:
            doc = json.loads(info_file.read_text())
            return doc if isinstance(doc, dict) else {}
        except ValueError:
            return {}
    return {}


def _verify(args: argparse.Namespace, info: dict[str, Any]) -> Verify:
    if args.insecure:
        return False
    if args.cacert:
        return str(args.cacert)
    cert = info.get("deviceCert")
    if cert and Path(cert).exists():
        return str(cert)
    return True


def simulate_cmd(args: argparse.Namespace) -> None:
    try:
        _simulate(args)
    except cli.CliError as exc:  # caught here: `python -m iotgate.cli` imports cli twice
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


def _simulate(args: argparse.Namespace) -> None:
    if args.devices < 1:
        raise cli.CliError("--devices must be ≥ 1")
    if args.rate <= 0:
        raise cli.CliError("--rate must be > 0")
    if args.count is not None and args.count < 1:
        raise cli.CliError("--count must be ≥ 1")
    if args.duration is not None and args.duration <= 0:
        raise cli.CliError("--duration must be > 0")
    if not 0 <= args.invalid_ratio <= 1:
        raise cli.CliError("--invalid-ratio must be between 0 and 1")
    api = cli.AdminClient(args)
    server = _server_info(args)
    endpoint = (
        args.endpoint or os.environ.get("IOTGATE_DEVICE_URL") or server.get("deviceUrl") or "https://127.0.0.1:8443"
    )
    product_key = resolve_product(api, args.product)
    model = fetch_model(api, product_key)
    try:
        ValueGenerator(model, random.Random())
    except ValueError as exc:
        raise cli.CliError(f"product {product_key}: {exc}") from None
    devices = ensure_devices(api, product_key, args.prefix, args.devices)
    plan = Plan(
        protocol=args.protocol,
        endpoint=endpoint,
        verify=_verify(args, server),
        rate=args.rate,
        count=args.count,
        duration=args.duration,
        invalid_ratio=args.invalid_ratio,
        seed=args.seed,
    )
    info = {
        "protocol": args.protocol,
        "productKey": product_key,
        "devices": len(devices),
        "endpoint": endpoint,
        "targetPerS": round(len(devices) * args.rate, 3),  # messagesPerS below it: server or simulator saturated
    }
    stats = Stats()
    live = not args.json and err.is_terminal
    if not live and not args.json:
        until = f"{args.count} report(s) each" if args.count else f"{args.duration} s" if args.duration else "Ctrl-C"
        err.print(
            f"simulating {len(devices)} {args.protocol} device(s) of {product_key} at {args.rate}/s until {until}"
        )
    asyncio.run(run_all(devices, model, plan, stats, live, info))
    summary = stats.summary(info)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    if stats.failed:
        sys.exit(1)


def _print_summary(summary: dict[str, Any]) -> None:
    table = Table(title="simulation", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key in (
        "protocol",
        "productKey",
        "devices",
        "sent",
        "accepted",
        "expectedRejections",
        "unexpectedRejections",
        "invalidAccepted",
        "errors",
        "authFailures",
        "tokenRenewals",
        "reauths",
        "elapsedS",
        "targetPerS",
        "messagesPerS",
    ):
        table.add_row(key, str(summary[key]))
    latency = summary["latencyMs"]
    table.add_row("latency p50 / p99 (ms)", f"{latency['p50']} / {latency['p99']}")
    err.print(table)
    for problem in summary["problems"]:
        err.print(f"[red]•[/red] {problem}")
    err.print("[green]ok[/green]" if summary["ok"] else "[red]FAILED: unexpected outcomes (see above)[/red]")


def register(subparsers: Any) -> None:
    """Hook `iotgate simulate` into the CLI (called by `iotgate.cli._extra_commands`)."""
    p = subparsers.add_parser(
        "simulate",
        help="simulate devices reporting thing-model values through the Alink or IoTDA dialect",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--product", help="ProductKey (default: an 'iotgate-sim collector' temperature/humidity product)")
    p.add_argument("-n", "--devices", type=int, default=10, help="number of devices (default 10)")
    p.add_argument("--protocol", choices=["alink", "iotda"], default="alink", help="device dialect (default alink)")
    p.add_argument("--rate", type=float, default=1.0, help="reports per second per device (default 1)")
    until = p.add_mutually_exclusive_group()
    until.add_argument("--count", type=int, help="reports per device, then stop")
    until.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--prefix", default="sim-", help="DeviceName prefix (default sim-; names sim-0000, ...)")
    p.add_argument("--endpoint", help="device endpoint URL (default: the server's, from the data dir)")
    p.add_argument("--cacert", help="CA/certificate file to verify the device endpoint (default: the server's)")
    p.add_argument("--insecure", action="store_true", help="do not verify the device endpoint's TLS certificate")
    p.add_argument(
        "--invalid-ratio",
        type=float,
        default=0.0,
        help="fraction of reports made deliberately invalid; the server must reject them (default 0)",
    )
    p.add_argument("--seed", type=int, help="random seed for reproducible values")
    cli.add_client_flags(p)
    p.set_defaults(func=simulate_cmd)
