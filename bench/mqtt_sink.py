"""The MQTT forwarding sink alone against a local broker: messages/s, CPU per message, round latency.

    flock /tmp/iotgate-bench.lock python bench/mqtt_sink.py [--round 100] [--devices 64] [--duration 10]

Feeds an `MqttSink` rounds of outbox rows as the forward worker does (grouped per device, one
`send_round` after the other, ~300-byte JSON bodies, target defaults: QoS 1, MQTT 5 with user
properties) for `--duration` seconds and prints messages/s, this process's CPU µs per message
(time.process_time, so the broker's CPU is not in it; the broker's is printed separately when its
/proc entry is readable) and round latency p50/p99. To compare two versions of the sink in one
session, run this script with PYTHONPATH pointing at the other tree's src (the import path used is
printed). On a busy machine, instructions are steadier than time: `--rounds N` under
`perf stat -e instructions:u`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import iotgate
from iotgate.forward.rows import OutboxRow
from iotgate.forward.sinks import make_sink
from iotgate.forward.targets import parse_target


def make_rounds(count: int, size: int, devices: int, start_id: int) -> list[list[list[OutboxRow]]]:
    """`count` rounds of `size` rows over `devices` devices, each round grouped per device."""
    rounds = []
    mid = start_id
    for _ in range(count):
        groups: dict[int, list[OutboxRow]] = {}
        for _ in range(size):
            d = mid % devices
            body = {
                "id": str(mid),
                "version": "1.0",
                "params": {"temperature": 21.5 + d % 7, "humidity": 40 + d % 13, "power": "on", "mode": 2},
                "method": "thing.event.property.post",
                "ts": 1_700_000_000_000 + mid,
                "pad": "x" * 120,
            }
            groups.setdefault(d, []).append(
                OutboxRow(
                    target_id=1,
                    device_id=d,
                    message_id=mid,
                    product_key="a1B2c3D4e5F",
                    device_name=f"bench-{d:04d}",
                    source="property",
                    identifier="property",
                    topic=f"/sys/a1B2c3D4e5F/bench-{d:04d}/thing/event/property/post",
                    content_type="application/json",
                    body=json.dumps(body).encode(),
                    created_at=0,
                    id=mid,
                )
            )
            mid += 1
        rounds.append(list(groups.values()))
    return rounds


def broker_cpu() -> float | None:
    """Mosquitto's CPU seconds (utime + stime), if its /proc entry can be read."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "mosquitto":
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            continue
    return None


async def main(args: argparse.Namespace) -> None:
    doc = {
        "type": "mqtt",
        "url": args.url,
        "topic": "iotgate-bench/{productKey}/{deviceName}",
        "protocol": args.protocol,
        "userProperties": not args.no_user_properties,
        "qos": args.qos,
    }
    sink = make_sink(parse_target(doc, "target"), 1, 1, 8)
    rounds = make_rounds(50, args.round, args.devices, 1)
    print(f"iotgate from {Path(iotgate.__file__).parent}", file=sys.stderr)
    # warm up: connect, first rounds
    for r in rounds[:5]:
        out = await sink.send_round(r)
        assert all(e is None for _, e in out), out
    latencies: list[float] = []
    sent = 0
    b0 = broker_cpu()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    i = 0
    while (i < args.rounds) if args.rounds else (time.perf_counter() - wall0 < args.duration):
        r = rounds[i % len(rounds)]
        i += 1
        t = time.perf_counter()
        out = await sink.send_round(r)
        latencies.append(time.perf_counter() - t)
        for (done, error), group in zip(out, r, strict=True):
            if error is not None or done != len(group):
                raise SystemExit(f"round failed: {error}")
            sent += done
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    b1 = broker_cpu()
    await sink.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    result = {
        "round": args.round,
        "devices": args.devices,
        "protocol": args.protocol,
        "user_properties": not args.no_user_properties,
        "messages": sent,
        "msgs_per_s": round(sent / wall),
        "cpu_us_per_msg": round(cpu / sent * 1e6, 1),
        "round_ms_p50": round(statistics.median(latencies) * 1e3, 2),
        "round_ms_p99": round(p99 * 1e3, 2),
        "broker_cpu_us_per_msg": round((b1 - b0) / sent * 1e6, 1) if b0 is not None and b1 is not None else None,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="mqtt://127.0.0.1:1883")
    p.add_argument("--round", type=int, default=100, help="rows per round (the worker's forward batch)")
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=0, help="run this many rounds instead (e.g. under perf stat)")
    p.add_argument("--protocol", default="5", choices=["5", "3.1.1"])
    p.add_argument("--qos", type=int, default=1)
    p.add_argument("--no-user-properties", action="store_true")
    asyncio.run(main(p.parse_args()))
