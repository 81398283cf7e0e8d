"""`iotgate simulate`: value generation against the real validator, and CLI runs against a real server."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import SEED_MODEL, Admin, ServerProcess
from iotgate.model import CompiledModel, ThingModel, import_alibaba, import_huawei, parse_model
from iotgate.simulate import SIM_PRODUCT_NAME, Dashboard, Stats, ValueGenerator

FIXTURES = Path(__file__).parent / "fixtures" / "models"

AWKWARD_MODEL: dict[str, Any] = {
    "properties": [
        {
            "identifier": "t",
            "name": "t",
            "dataType": {"type": "float", "specs": {"min": -0.3, "max": 0.4, "step": 0.1}},
        },
        {"identifier": "big", "name": "b", "dataType": {"type": "int64", "specs": {"min": 9007199254740000}}},
        {"identifier": "neg", "name": "n", "dataType": {"type": "int32", "specs": {"max": -5, "step": 5}}},
        {"identifier": "open", "name": "o", "dataType": {"type": "double", "specs": {}}},
        {"identifier": "tiny", "name": "t", "dataType": {"type": "int32", "specs": {"min": 3, "max": 3}}},
        {"identifier": "mode", "name": "m", "dataType": {"type": "enum", "specs": {"auto": "Auto", "7": "Seven"}}},
        {"identifier": "on", "name": "on", "dataType": {"type": "bool", "specs": {}}},
        {"identifier": "label", "name": "l", "dataType": {"type": "text", "specs": {"length": 3}}},
        {"identifier": "since", "name": "s", "dataType": {"type": "date", "specs": {}}},
        {
            "identifier": "pos",
            "name": "p",
            "dataType": {
                "type": "array",
                "specs": {
                    "size": 2,
                    "item": {
                        "type": "struct",
                        "specs": [
                            {"identifier": "x", "name": "x", "dataType": {"type": "float", "specs": {"step": 0.25}}},
                            {"identifier": "ok", "name": "ok", "dataType": {"type": "bool", "specs": {}}},
                        ],
                    },
                },
            },
        },
        {"identifier": "blob", "name": "b", "dataType": {"type": "struct", "specs": []}},
    ],
    "modules": [
        {
            "identifier": "battery",
            "name": "Battery",
            "properties": [
                {"identifier": "level", "name": "l", "dataType": {"type": "int32", "specs": {"min": 0, "max": 100}}}
            ],
        }
    ],
}


def models() -> list[tuple[str, ThingModel]]:
    out = [("seed", parse_model(SEED_MODEL)), ("awkward", parse_model(AWKWARD_MODEL))]
    for path in sorted(FIXTURES.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        out.append((path.stem, import_huawei(doc) if path.stem.startswith("huawei") else import_alibaba(doc)))
    return out


@pytest.mark.parametrize(("name", "model"), models(), ids=[n for n, _ in models()])
def test_generated_values_pass_the_thing_model_and_broken_ones_fail(name: str, model: ThingModel) -> None:
    compiled = CompiledModel(model)
    for seed in range(3):
        gen = ValueGenerator(model, random.Random(seed))
        previous: dict[str, Any] = {}
        for _ in range(150):
            report = gen.report()
            for module, values in report.items():
                accepted, issues = compiled.validate_properties(values, module)
                assert not issues, (name, module, values, issues)
                assert len(accepted) == len(values)
                assert not compiled.missing_required(accepted, module)
            previous = report
        broken = {m: dict(v) for m, v in previous.items()}
        what = gen.invalidate(broken)
        problems = [issue for m, v in broken.items() for issue in compiled.validate_properties(v, m)[1]]
        assert problems, (name, what)


def test_numbers_walk_within_range_on_the_step_grid() -> None:
    model = parse_model(AWKWARD_MODEL)
    gen = ValueGenerator(model, random.Random(1))
    seen: set[float] = set()
    for _ in range(300):
        value = gen.report()["default"]["t"]
        assert -0.3 <= value <= 0.4 and isinstance(value, float)
        seen.add(value)
    assert seen == {-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4}  # the walk visits the whole grid
    levels = [gen.report()["battery"]["level"] for _ in range(100)]
    assert max(abs(a - b) for a, b in itertools.pairwise(levels)) <= 2  # a walk, not noise


def test_live_view_shows_counts_and_latency() -> None:
    stats = Stats(devices=4, connected=3)
    console = Console(record=True, width=120, force_terminal=False)
    dashboard = Dashboard(stats, {"protocol": "iotda", "devices": 4}, total=80, duration=None)
    console.print(dashboard)
    assert "connecting 3/4 devices" in console.export_text()

    stats.connected, stats.running = 4, True
    stats.sent, stats.accepted, stats.expected_rejections, stats.unexpected_rejections = 40, 37, 1, 2
    for ms in range(1, 101):
        stats.latency(ms / 1000)
    console.print(dashboard)
    text = console.export_text()
    assert "4 × iotda devices" in text and "50%" in text
    row = next(line for line in text.splitlines() if line.startswith("│"))
    cells = [c.strip() for c in row.strip("│").split("│")]
    assert cells[:5] == ["40", "37", "3", "2", "0"]  # sent, accepted, rejected, unexpected, errors
    assert cells[6:] == ["50.0", "99.0"]  # p50 / p99 in ms


# -- the CLI against a server ----------------------------------------------------------------------
def simulate(server: ServerProcess, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iotgate.cli", "simulate", "--data-dir", str(server.data_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_simulate_alink_default_product_then_reuse(server: ServerProcess, admin: Admin) -> None:
    out = simulate(server, "-n", "3", "--count", "4", "--rate", "20", "--json")
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert (summary["sent"], summary["accepted"], summary["rejected"], summary["ok"]) == (12, 12, 0, True)
    assert summary["latencyMs"]["p50"] is not None
    pk = summary["productKey"]
    product = admin.c.get(f"/api/v1/products/{pk}").json()
    assert product["name"] == SIM_PRODUCT_NAME and product["deviceCount"] == 3
    assert [len(admin.history(pk, f"sim-{i:04d}")) for i in range(3)] == [4, 4, 4]

    # again, through the other dialect: the product and the devices are reused
    out = simulate(server, "-n", "3", "--count", "2", "--rate", "20", "--protocol", "iotda", "--json")
    assert out.returncode == 0, out.stderr
    again = json.loads(out.stdout)
    assert (again["productKey"], again["accepted"]) == (pk, 6)
    assert admin.c.get(f"/api/v1/products/{pk}").json()["deviceCount"] == 3
    assert [len(admin.history(pk, f"sim-{i:04d}")) for i in range(3)] == [6, 6, 6]


def test_simulate_iotda_rich_model_with_expected_rejections(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(AWKWARD_MODEL, name="awkward")
    out = simulate(
        server,
        *("--product", pk, "-n", "2", "--count", "15", "--rate", "50", "--protocol", "iotda"),
        *("--invalid-ratio", "0.3", "--seed", "7", "--prefix", "rich-", "--json"),
    )
    assert out.returncode == 0, out.stderr + out.stdout
    summary = json.loads(out.stdout)
    assert summary["sent"] == 30 and summary["expectedRejections"] > 0
    assert summary["accepted"] + summary["expectedRejections"] == 30
    assert summary["unexpectedRejections"] == summary["invalidAccepted"] == summary["errors"] == 0
    status = admin.properties(pk, "rich-0000")
    assert all(status[p]["value"] is not None for p in ("t", "big", "mode", "pos", "battery:level")), status
    rejected = admin.messages(pk, "rich-0000", "rejected") + admin.messages(pk, "rich-0001", "rejected")
    assert len(rejected) == summary["expectedRejections"]


def test_simulate_exits_nonzero_on_unexpected_rejections(server: ServerProcess, admin: Admin) -> None:
    pk = admin.product(SEED_MODEL, name="throttled")
    assert admin.c.patch(f"/api/v1/products/{pk}", json={"ratePerSecond": 0.01}).status_code == 200
    out = simulate(server, "--product", pk, "-n", "1", "--count", "3", "--rate", "50", "--json")
    assert out.returncode == 1, out.stderr
    summary = json.loads(out.stdout)
    assert summary["accepted"] == 1 and summary["unexpectedRejections"] == 2 and summary["ok"] is False
    assert "40000" in summary["problems"][0]

    plain = simulate(server, "--product", pk, "-n", "1", "--count", "2", "--rate", "50")
    assert plain.returncode == 1 and "FAILED" in plain.stderr


def test_simulate_setup_errors_are_clear(server: ServerProcess, admin: Admin) -> None:
    out = simulate(server, "--product", "NoSuchProdu", "--count", "1")
    assert out.returncode == 1 and "not found" in out.stderr
    draft_only = admin.product(None, name="unpublished")
    out = simulate(server, "--product", draft_only, "--count", "1")
    assert out.returncode == 1 and "no published thing model" in out.stderr
    disabled = admin.product(SEED_MODEL, name="disabled")
    admin.device(disabled, "off-0000")
    admin.c.patch(f"/api/v1/products/{disabled}/devices/off-0000", json={"enabled": False})
    out = simulate(server, "--product", disabled, "--prefix", "off-", "-n", "1", "--count", "1")
    assert out.returncode == 1 and "disabled" in out.stderr
