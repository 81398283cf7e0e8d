"""`iotgate bench` end to end, briefly: one scenario for ~2 s against a running server, nginx beside it.

No thresholds: the numbers depend on the machine. The test checks that the report is complete
and sane, and that every reply the load generator checked was a success.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ServerProcess
from iotgate.benchmark.forward import MQTT_URL, mqtt_reachable
from iotgate.benchmark.nginx import nginx_binary
from iotgate.benchmark.wrk import wrk_binary

pytestmark = pytest.mark.skipif(
    wrk_binary() is None or nginx_binary() is None,
    reason="iotgate bench needs wrk and nginx (Debian: apt-get install wrk nginx)",
)


def test_bench_one_scenario_against_a_running_server(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotgate.cli",
            "bench",
            "--scenario",
            "alink-post,idle",
            "--duration",
            "2",
            "--rounds",
            "1",
            "--warmup",
            "0",
            # enough devices that none meets the default rate limit (1,000 requests/s each):
            # with 8, a fast run (over 8k reports/s on 64 connections) was answered 40000
            "--devices",
            "32",
            "--variants",
            "2",
            "--idle-connections",
            "40",
            "--target",
            server.device_url,
            "--data-dir",
            str(server.data_dir),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    assert "alink-post" in run.stdout and "ratio" in run.stdout
    report = json.loads(out.read_text())
    [scenario] = report["scenarios"]
    assert scenario["scenario"] == "alink-post"
    assert 2 <= scenario["pointsPerRequest"] <= 10
    ours, theirs = scenario["iotgate"], scenario["nginx"]
    for side in (ours, theirs):
        assert side["msgsPerS"] > 0 and side["pointsPerS"] > side["msgsPerS"]
        assert 0 < side["p50Ms"] <= side["p99Ms"] <= side["maxMs"]
        assert side["errors"] == 0, side["rounds"][0]["sample"]
        assert side["cpuSPer1kMsgs"] > 0
        assert len(side["rounds"]) == 1 and side["rounds"][0]["requests"] > 0
    assert ours["rounds"][0]["rss_mb"] > 0
    assert scenario["ratio"] == pytest.approx(ours["msgsPerS"] / theirs["msgsPerS"])
    for idle in (report["idle"]["iotgate"], report["idle"]["nginx"]):
        assert idle["connections"] == 40 and idle["failed"] == 0
        assert idle["rssAfterMb"] > 0 and idle["rssBeforeMb"] > 0


def test_bench_refuses_unknown_scenarios() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "iotgate.cli", "bench", "--scenario", "nope"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2 and "unknown scenario" in run.stderr


@pytest.mark.skipif(not mqtt_reachable(MQTT_URL), reason=f"the forward scenario needs Mosquitto at {MQTT_URL}")
def test_bench_forward_scenario_delivers_everything_to_mqtt_and_webhook(server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "forward.json"
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotgate.cli",
            "bench",
            "--scenario",
            "forward",
            "--forward-batch",
            "100",
            "--duration",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--connections",
            "8",
            "--devices",
            "8",
            "--variants",
            "2",
            "--drain-wait",
            "60",
            "--target",
            server.device_url,
            "--data-dir",
            str(server.data_dir),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert run.returncode == 0, run.stderr[-3000:] + run.stdout[-3000:]
    assert "forward-batch100 round 1: ingest" in run.stdout
    [scenario] = json.loads(out.read_text())["scenarios"]
    assert scenario["scenario"] == "forward-batch100"
    ours = scenario["iotgate"]
    assert ours["errors"] == 0, ours["rounds"][0]["sample"]
    assert scenario["nginx"]["errors"] == 0 and scenario["ratio"] > 0
    [fwd] = ours["forward"]
    assert fwd["webhook_batch"] == 100
    assert sorted(label.split("#")[0] for label in fwd["targets"]) == ["mqtt", "webhook"]
    requests = ours["rounds"][0]["requests"]
    for label in fwd["targets"]:
        # every report wrk saw answered is one matched message per target, delivered once the outbox drained
        assert fwd["matched"][label] >= requests > 0
        assert fwd["drain_s"][label] is not None, f"{label}: outbox did not drain"
        assert fwd["delivered_total"][label] == fwd["matched"][label]
        assert fwd["dead_lettered"][label] == 0
        assert fwd["backlog_at_end"][label] >= 0
    [hook] = [label for label in fwd["targets"] if label.startswith("webhook")]
    # at least once: the receiver may count a redelivery, never fewer than were confirmed
    assert fwd["webhook_messages_received"] >= fwd["delivered_total"][hook]
    assert 0 < fwd["webhook_requests_received"] <= fwd["webhook_messages_received"]
