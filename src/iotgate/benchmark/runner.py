"""The bench run: a server, nginx beside it, and rounds of wrk alternating A B A B per scenario."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from iotgate.benchmark import scenarios as sc
from iotgate.benchmark.forward import MQTT_URL, ForwardRule, ForwardSetup, WebhookReceiver, mqtt_reachable
from iotgate.benchmark.idle import IdleResult, hold_idle, raise_nofile
from iotgate.benchmark.nginx import Nginx, nginx_binary
from iotgate.benchmark.procstat import children, rss_bytes, steal_ticks, tree_cpu_seconds
from iotgate.benchmark.provision import Server, attach_server, bulk_register, free_port, start_server
from iotgate.benchmark.wrk import WrkResult, render_script, run_wrk, wrk_binary

IOTGATE, NGINX = "iotgate", "nginx"


@dataclass
class Options:
    scenarios: list[str]
    duration_s: float = 10.0
    rounds: int = 2
    warmup_s: float = 2.0
    threads: int = 1
    connections: int = 64
    devices: int = 64
    variants: int = 8
    gateway_children: int = 50
    nginx: bool = True
    target: str | None = None
    data_dir: Path | None = None
    admin_url: str | None = None
    admin_key: str | None = None
    server_pid: int | None = None
    registered: int = 0
    server_args: list[str] = field(default_factory=list)
    idle_connections: int = 10_000
    workdir: Path | None = None
    keep: bool = False
    forward_batches: list[int] = field(default_factory=lambda: [1, 100])  # webhook `batch` per forward variant
    mqtt_url: str = MQTT_URL
    forward_drain_s: float = 60.0  # how long to wait for the outbox to drain after a forward run


@dataclass
class Run:
    server: str
    round: int
    requests: int
    duration_s: float
    rate: float
    points_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    failures: int
    socket_errors: int
    timeouts: int
    cpu_s: float | None
    cpu_s_per_1k: float | None
    steal_pct: float
    rss_mb: float | None
    load1: float = 0.0  # the machine's 1-minute load average after the run (other work on the box)
    sample: str = ""
    forward: dict[str, Any] | None = None  # forward scenario: deliveries, backlog, drain time (iotgate runs)

    @property
    def errors(self) -> int:
        return self.failures + self.socket_errors + self.timeouts


@dataclass
class ScenarioResult:
    name: str
    description: str
    points_per_request: float
    runs: list[Run] = field(default_factory=list)

    def of(self, server: str) -> list[Run]:
        return [r for r in self.runs if r.server == server]

    def median(self, server: str, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.of(server) if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    @property
    def ratio(self) -> float | None:
        ours, theirs = self.median(IOTGATE, "rate"), self.median(NGINX, "rate")
        return ours / theirs if ours is not None and theirs else None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scenario": self.name, "pointsPerRequest": self.points_per_request}
        for server in (IOTGATE, NGINX):
            if not self.of(server):
                continue
            out[server] = {
                "msgsPerS": self.median(server, "rate"),
                "pointsPerS": self.median(server, "points_per_s"),
                "p50Ms": self.median(server, "p50_ms"),
                "p99Ms": self.median(server, "p99_ms"),
                "maxMs": max(r.max_ms for r in self.of(server)),
                "errors": sum(r.errors for r in self.of(server)),
                "cpuSPer1kMsgs": self.median(server, "cpu_s_per_1k"),
                "rounds": [asdict(r) for r in self.of(server)],
            }
            if server == IOTGATE and any(r.forward for r in self.of(server)):
                out[server]["forward"] = [r.forward for r in self.of(server)]
        out["ratio"] = self.ratio
        return out


@dataclass
class Report:
    started: str
    options: dict[str, Any]
    scenarios: list[ScenarioResult] = field(default_factory=list)
    idle: dict[str, dict[str, Any]] | None = None  # server -> idle-connection figures
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "options": self.options,
            "scenarios": [s.summary() for s in self.scenarios],
            "idle": self.idle,
            "notes": self.notes,
        }


def check_tools(need_nginx: bool) -> list[str]:
    missing = []
    if wrk_binary() is None:
        missing.append("wrk")
    if need_nginx and nginx_binary() is None:
        missing.append("nginx")
    return missing


def measure(
    label: str,
    url: str,
    script: Path,
    opts: Options,
    duration_s: float,
    cpu: Callable[[], float] | None,
    rss: Callable[[], int] | None,
    points_per_request: float,
    round_no: int,
) -> Run:
    cpu0 = cpu() if cpu else None
    steal0, total0 = steal_ticks()
    result: WrkResult = run_wrk(url, script, duration_s, opts.threads, opts.connections)
    steal1, total1 = steal_ticks()
    cpu_used = cpu() - cpu0 if cpu and cpu0 is not None else None
    steal_pct = 100.0 * (steal1 - steal0) / (total1 - total0) if total1 > total0 else 0.0
    return Run(
        server=label,
        round=round_no,
        requests=result.requests,
        duration_s=result.duration_s,
        rate=result.rate,
        points_per_s=result.rate * points_per_request,
        p50_ms=result.p50_ms,
        p90_ms=result.p90_ms,
        p99_ms=result.p99_ms,
        max_ms=result.max_ms,
        failures=result.failures,
        socket_errors=result.socket_errors,
        timeouts=result.timeouts,
        cpu_s=cpu_used,
        cpu_s_per_1k=(cpu_used / result.requests * 1000) if cpu_used is not None and result.requests else None,
        steal_pct=steal_pct,
        rss_mb=rss() / 2**20 if rss else None,
        load1=os.getloadavg()[0],
        sample=result.sample,
    )


def run_bench(opts: Options, console: Console | None = None) -> Report:
    console = console or Console(stderr=True)
    missing = check_tools(opts.nginx)
    if missing:
        raise RuntimeError(f"{' and '.join(missing)} not installed; on Debian: apt-get install {' '.join(missing)}")
    for name in opts.scenarios:
        if name not in sc.SCENARIOS and name not in (sc.FORWARD, "idle"):
            raise ValueError(f"unknown scenario {name!r}; choose from {', '.join([*sc.SCENARIOS, sc.FORWARD, 'idle'])}")
    raise_nofile(max(opts.idle_connections + 1000, 4096))
    workdir = Path(opts.workdir) if opts.workdir else Path(tempfile.mkdtemp(prefix="iotgate-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(time.strftime("%Y-%m-%dT%H:%M:%S%z"), {k: str(v) for k, v in asdict(opts).items()})
    server: Server | None = None
    nginx: Nginx | None = None
    try:
        if opts.target:
            server = attach_server(opts.target, opts.data_dir, opts.admin_url, opts.admin_key)
            if opts.server_pid:
                server.pid = opts.server_pid
        else:
            data_dir = workdir / "iotgate-data"
            if opts.registered > 0:
                filler = max(0, opts.registered - opts.devices)
                with console.status(f"inserting {filler:,} registered devices into SQLite"):
                    took = bulk_register(data_dir, filler)
                report.notes.append(f"bulk-inserted {filler:,} filler devices in {took:.1f} s")
            with console.status("starting iotgate serve"):
                server = start_server(data_dir, opts.server_args)
        if server.pid is None:
            report.notes.append("server pid unknown (pass --server-pid or --data-dir): no CPU figures for iotgate")
        if opts.nginx:
            certs = server.certificates()
            if not certs:
                from iotgate.gateway.tls import ensure_self_signed

                rsa_cert, rsa_key, ec_cert, ec_key = ensure_self_signed(workdir / "nginx-certs")
                certs = [(rsa_cert, rsa_key), (ec_cert, ec_key)]
                report.notes.append("nginx uses a self-signed certificate of its own (server's not readable)")
            nginx = Nginx(workdir / "nginx", free_port(), certs).start()
        _run_scenarios(opts, server, nginx, workdir, report, console)
    finally:
        if nginx is not None:
            nginx.stop()
        if server is not None:
            if opts.target:
                server.close()
            else:
                server.stop()
        if not opts.keep and not opts.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def _run_scenarios(
    opts: Options, server: Server, nginx: Nginx | None, workdir: Path, report: Report, console: Console
) -> None:
    wrk_names = [n for n in opts.scenarios if n not in ("idle", sc.FORWARD)]
    servers = 2 if nginx else 1
    total = len(wrk_names) * opts.rounds * servers
    if sc.FORWARD in opts.scenarios:
        total += opts.rounds * (len(opts.forward_batches) + (1 if nginx else 0))
    pid = server.pid
    # the server and its device workers (--workers N), as nginx's master and workers are summed
    ours_cpu = (lambda: tree_cpu_seconds([pid, *children(pid)])) if pid else None
    ours_rss = (lambda: sum(rss_bytes(p) for p in [pid, *children(pid)])) if pid else None
    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("preparing", total=total)
        for name in wrk_names:
            scenario = sc.SCENARIOS[name]
            progress.update(task, description=f"{name}: provisioning devices and tokens")
            workload = sc.build(name, server, opts.devices, opts.variants, opts.gateway_children)
            script = workdir / f"{name}.lua"
            script.write_text(render_script(workload.requests, workload.must_contain, workload.must_not_contain))
            result = ScenarioResult(name, scenario.description, workload.points_per_request)
            report.scenarios.append(result)
            targets: list[tuple[str, str, Callable[[], float] | None, Callable[[], int] | None]] = [
                (IOTGATE, server.device_url, ours_cpu, ours_rss)
            ]
            if nginx is not None:
                targets.append((NGINX, nginx.url, nginx.cpu_seconds, None))
            if opts.warmup_s > 0:
                for label, url, _, _ in targets:
                    progress.update(task, description=f"{name}: warming up {label}")
                    run_wrk(url, script, opts.warmup_s, opts.threads, opts.connections)
            for round_no in range(1, opts.rounds + 1):
                for label, url, cpu, rss in targets:
                    progress.update(task, description=f"{name}: round {round_no}/{opts.rounds}, {label}")
                    run = measure(
                        label, url, script, opts, opts.duration_s, cpu, rss, workload.points_per_request, round_no
                    )
                    result.runs.append(run)
                    progress.advance(task)
        if sc.FORWARD in opts.scenarios:
            _run_forward(opts, server, nginx, workdir, report, progress, task, ours_cpu, ours_rss)
        if "idle" in opts.scenarios:
            if pid is None:
                report.notes.append("idle: skipped, the server's pid is unknown")
                return
            direct = server.direct_devices(opts.devices)
            server.alink_auth(direct)
            workload = sc.alink_posts(server, direct, 1, close=False)
            assert ours_rss is not None
            sides: list[tuple[str, str, Callable[[], int]]] = [(IOTGATE, server.device_url, ours_rss)]
            if nginx is not None:
                sides.append((NGINX, nginx.url, lambda: sum(rss_bytes(p) for p in nginx.pids())))
            report.idle = {}
            for label, url, rss in sides:
                count = opts.idle_connections
                idle_task = progress.add_task(f"idle: {count:,} TLS connections to {label}", total=count)
                res: IdleResult = asyncio.run(
                    hold_idle(url, workload.requests, count, rss, on_open=lambda t=idle_task: progress.advance(t))
                )
                report.idle[label] = {
                    "connections": res.connections,
                    "failed": res.failed,
                    "rssBeforeMb": round(res.rss_before / 2**20, 1),
                    "rssAfterMb": round(res.rss_after / 2**20, 1),
                    "perConnectionKib": round(res.per_connection_kib, 2),
                    "openSeconds": round(res.open_seconds, 1),
                }


def _run_forward(
    opts: Options,
    server: Server,
    nginx: Nginx | None,
    workdir: Path,
    report: Report,
    progress: Progress,
    task: Any,
    ours_cpu: Callable[[], float] | None,
    ours_rss: Callable[[], int] | None,
) -> None:
    """`alink-post` load while a rule forwards every property report to MQTT and a webhook; one
    variant per webhook `batch`. Per round: nginx once (shared by the variants' ratios), then each
    variant on iotgate with a fresh rule, its outbox figures read after the load, the rule deleted."""
    progress.update(task, description="forward: provisioning devices and tokens")
    direct = server.direct_devices(opts.devices)
    server.alink_auth(direct)
    workload = sc.alink_posts(server, direct, opts.variants, close=False)
    script = workdir / "forward.lua"
    script.write_text(render_script(workload.requests, workload.must_contain, workload.must_not_contain))
    mqtt_url: str | None = opts.mqtt_url
    if not mqtt_reachable(opts.mqtt_url):
        report.notes.append(f"forward: no MQTT broker at {opts.mqtt_url}: webhook target only")
        mqtt_url = None
    receiver = WebhookReceiver().start()
    try:
        results: list[tuple[int, ScenarioResult]] = []
        for batch in opts.forward_batches:
            name = sc.FORWARD if batch == 1 else f"{sc.FORWARD}-batch{batch}"
            targets = ("MQTT QoS 1 + " if mqtt_url else "") + (
                "webhook, one POST per message" if batch == 1 else f"webhook, batch {batch}"
            )
            result = ScenarioResult(name, f"alink-post with a forwarding rule: {targets}", workload.points_per_request)
            report.scenarios.append(result)
            results.append((batch, result))
        if opts.warmup_s > 0:  # ingest warm-up without a rule: nothing queued before the first measured run
            progress.update(task, description="forward: warming up iotgate")
            run_wrk(server.device_url, script, opts.warmup_s, opts.threads, opts.connections)
            if nginx is not None:
                progress.update(task, description="forward: warming up nginx")
                run_wrk(nginx.url, script, opts.warmup_s, opts.threads, opts.connections)
        pk = direct[0].product_key
        for round_no in range(1, opts.rounds + 1):
            if nginx is not None:
                progress.update(task, description=f"forward: round {round_no}/{opts.rounds}, nginx")
                nrun = measure(
                    NGINX, nginx.url, script, opts, opts.duration_s, nginx.cpu_seconds, None,
                    workload.points_per_request, round_no,
                )  # fmt: skip
                for _, result in results:
                    result.runs.append(nrun)
                progress.advance(task)
            for batch, result in results:
                setup = ForwardSetup(receiver.url, batch, mqtt_url)
                rule = ForwardRule(server, pk, setup)
                receiver.reset()
                rule.create(f"bench-forward-b{batch}-r{round_no}-{os.getpid()}")
                try:
                    progress.update(task, description=f"forward: round {round_no}/{opts.rounds}, {result.name}")
                    run = measure(
                        IOTGATE, server.device_url, script, opts, opts.duration_s, ours_cpu, ours_rss,
                        workload.points_per_request, round_no,
                    )  # fmt: skip
                    progress.update(task, description=f"forward: {result.name}: waiting for the outbox to drain")
                    run.forward = asdict(rule.after_load(run.duration_s, receiver, opts.forward_drain_s))
                    result.runs.append(run)
                finally:
                    rule.delete()
                progress.advance(task)
    finally:
        receiver.stop()


# -- rendering ---------------------------------------------------------------------------------
def _k(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.1f}k" if value >= 10_000 else f"{value:,.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render(report: Report, console: Console) -> None:
    table = Table(title="iotgate bench (medians over rounds; ratio = iotgate / nginx msgs/s)")
    for col in ("scenario", "server", "msgs/s", "points/s", "rounds msgs/s", "p50 ms", "p99 ms", "max ms", "errors"):
        table.add_column(col, justify="left" if col in ("scenario", "server") else "right")
    table.add_column("CPU s/1k msgs", justify="right")
    table.add_column("ratio", justify="right")
    for s in report.scenarios:
        for server in (IOTGATE, NGINX):
            runs = s.of(server)
            if not runs:
                continue
            cpu = s.median(server, "cpu_s_per_1k")
            table.add_row(
                s.name if server == IOTGATE else "",
                server,
                _k(s.median(server, "rate")),
                _k(s.median(server, "points_per_s")),
                " / ".join(_k(r.rate) for r in runs),
                _ms(s.median(server, "p50_ms")),
                _ms(s.median(server, "p99_ms")),
                _ms(max(r.max_ms for r in runs)),
                str(sum(r.errors for r in runs)),
                "-" if cpu is None else f"{cpu:.3f}",
                (f"{s.ratio:.2f}" if s.ratio is not None else "-") if server == IOTGATE else "",
            )
    console.print(table)
    for s in report.scenarios:
        for r in s.runs:
            if r.errors:
                console.print(
                    f"[yellow]{s.name} {r.server} round {r.round}: {r.failures} non-success replies, "
                    f"{r.socket_errors} socket errors, {r.timeouts} timeouts; first bad reply: {r.sample!r}[/yellow]"
                )
    steal = [r.steal_pct for s in report.scenarios for r in s.runs]
    if steal and max(steal) > 5:
        console.print(f"[yellow]CPU steal up to {max(steal):.0f} % during some runs: treat those as noisy[/yellow]")
    load = [r.load1 for s in report.scenarios for r in s.runs]
    if load and max(load) > 3:
        console.print(
            f"[yellow]load average up to {max(load):.1f} on {os.cpu_count()} CPUs: other work shared the machine; "
            "compare ratios and CPU per message, not absolute rates[/yellow]"
        )
    for label, i in (report.idle or {}).items():
        console.print(
            f"idle {label}: {i['connections']:,} kept-alive TLS connections ({i['failed']} failed) — RSS "
            f"{i['rssBeforeMb']} MB → {i['rssAfterMb']} MB ({i['perConnectionKib']} KiB per connection; "
            f"opened in {i['openSeconds']} s)"
        )
    for s in report.scenarios:
        for r in s.of(IOTGATE):
            f = r.forward
            if not f:
                continue
            parts = []
            for label in f["targets"]:
                drain = f["drain_s"][label]
                parts.append(
                    f"{label}: {f['deliveries_per_s'][label]:,.0f} deliveries/s during load, backlog "
                    f"{f['backlog_at_end'][label]:,} at the end, "
                    + (
                        f"drained in {drain:.1f} s"
                        if drain is not None
                        else f"did not drain in {f['drain_wait_s']:.0f} s"
                    )
                    + f" ({f['deliveries_per_s_with_drain'][label]:,.0f}/s over load + drain)"
                )
            console.print(
                f"{s.name} round {r.round}: ingest {r.rate:,.0f} msgs/s; "
                + "; ".join(parts)
                + f"; webhook received {f['webhook_messages_received']:,} messages in "
                f"{f['webhook_requests_received']:,} requests"
            )
    for note in report.notes:
        console.print(f"note: {note}")


def write_json(report: Report, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
