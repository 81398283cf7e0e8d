"""`iotgate bench`: throughput, latency and CPU of the device listener against nginx (see bench/README.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from iotgate.benchmark.forward import MQTT_URL
from iotgate.benchmark.runner import Options, render, run_bench, write_json
from iotgate.benchmark.scenarios import FORWARD, SCENARIOS

ALL = [*SCENARIOS, FORWARD, "idle"]


def _scenarios(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if names == ["all"]:
        return list(SCENARIOS)
    for name in names:
        if name not in ALL:
            raise argparse.ArgumentTypeError(f"unknown scenario {name!r}; choose from {', '.join(ALL)} or all")
    return names


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(not 1 <= v <= 1000 for v in values):
        raise argparse.ArgumentTypeError("webhook batch sizes must be 1..1000")
    return values


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark the device listener with wrk over TLS, against nginx",
        description=(
            "Start (or --target) an iotgate server, provision devices through the admin API, authenticate them "
            "and drive load with wrk over TLS keep-alive; nginx with the same certificate answers the same "
            "requests with a fixed reply, alternating iotgate/nginx per round. Needs wrk and nginx "
            "(Debian: apt-get install wrk nginx)."
        ),
    )
    p.add_argument(
        "-s",
        "--scenario",
        dest="scenarios",
        type=_scenarios,
        default=list(SCENARIOS),
        help=f"comma-separated: {', '.join(ALL)}; default: all wrk scenarios (forward and idle only when named)",
    )
    p.add_argument("-d", "--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    p.add_argument("-r", "--rounds", type=int, default=2, help="rounds of iotgate-then-nginx per scenario (default 2)")
    p.add_argument("--warmup", type=float, default=2.0, help="unrecorded warm-up seconds per server and scenario")
    p.add_argument("-t", "--threads", type=int, default=1, help="wrk threads (method of record: 1)")
    p.add_argument("-c", "--connections", type=int, default=64, help="wrk connections (method of record: 64)")
    p.add_argument("--devices", type=int, default=64, help="authenticated devices (or gateways) to rotate over")
    p.add_argument("--variants", type=int, default=8, help="payload variants per device")
    p.add_argument("--gateway-children", type=int, default=50, help="sub-devices per gateway request (max 50)")
    p.add_argument("--no-nginx", dest="nginx", action="store_false", help="measure iotgate only")
    p.add_argument("--target", help="device URL of a running server instead of starting one")
    p.add_argument("--data-dir", type=Path, help="with --target: the server's data dir (admin URL/key, pid, certs)")
    p.add_argument("--admin-url", help="with --target: admin API URL")
    p.add_argument("--admin-key", help="with --target: admin API key")
    p.add_argument("--server-pid", type=int, help="with --target: pid of the server, for CPU and RSS figures")
    p.add_argument(
        "--registered",
        type=int,
        default=0,
        help="registered devices in total: bulk-insert filler devices into SQLite before the server starts",
    )
    p.add_argument(
        "--server-arg",
        dest="server_args",
        action="append",
        default=[],
        help="extra `iotgate serve` argument (repeatable, e.g. --server-arg=--sqlite-synchronous=NORMAL)",
    )
    p.add_argument(
        "--forward-batch",
        dest="forward_batches",
        type=_batches,
        default=[1, 100],
        help="forward: webhook `batch` of each variant, comma-separated (default 1,100: per message and batched)",
    )
    p.add_argument("--mqtt-url", default=MQTT_URL, help=f"forward: the MQTT target's broker (default {MQTT_URL})")
    p.add_argument(
        "--drain-wait",
        type=float,
        default=60.0,
        help="forward: seconds to wait for the outbox to drain after each run (default 60)",
    )
    p.add_argument("--idle-connections", type=int, default=10_000, help="connections the idle scenario holds")
    p.add_argument("--workdir", type=Path, help="keep server data, nginx config and Lua scripts here")
    p.add_argument("--keep", action="store_true", help="do not delete the temporary work directory")
    p.add_argument("--json", dest="json_path", type=Path, help="also write the full report as JSON to this file")
    p.set_defaults(func=bench_cmd)


def bench_cmd(args: argparse.Namespace) -> None:
    if args.gateway_children > 50 or args.gateway_children < 1:
        raise ValueError("--gateway-children must be 1..50 (IoTDA's per-request limit)")
    opts = Options(
        scenarios=args.scenarios,
        duration_s=args.duration,
        rounds=max(1, args.rounds),
        warmup_s=args.warmup,
        threads=args.threads,
        connections=args.connections,
        devices=args.devices,
        variants=max(1, args.variants),
        gateway_children=args.gateway_children,
        nginx=args.nginx,
        target=args.target,
        data_dir=args.data_dir,
        admin_url=args.admin_url,
        admin_key=args.admin_key,
        server_pid=args.server_pid,
        registered=args.registered,
        server_args=list(args.server_args),
        idle_connections=args.idle_connections,
        workdir=args.workdir,
        keep=args.keep,
        forward_batches=args.forward_batches,
        mqtt_url=args.mqtt_url,
        forward_drain_s=args.drain_wait,
    )
    err = Console(stderr=True)
    try:
        report = run_bench(opts, err)
    except RuntimeError as exc:
        err.print(f"[red]bench failed:[/red] {exc}")
        sys.exit(1)
    out = Console()
    render(report, out if out.is_terminal else Console(width=180))
    if args.json_path:
        write_json(report, args.json_path)
        err.print(f"wrote {args.json_path}")
