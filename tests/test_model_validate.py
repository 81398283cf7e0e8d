"""CompiledModel validation rules."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from iotgate.model import (
    CompiledModel,
    Property,
    ValidationIssue,
    import_alibaba,
    import_huawei,
    parse_model,
    validate_properties,
)

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def seed() -> CompiledModel:
    return CompiledModel(import_alibaba(_fixture("alibaba_th_collector.json")))


def _rules(issues: list[ValidationIssue]) -> list[tuple[str, str]]:
    return [(i.identifier, i.rule) for i in issues]


# --------------------------------------------------------------------------------------------- seed model


def test_seed_valid(seed: CompiledModel) -> None:
    assert seed.validate_properties({"temperature": 25, "humidity": 60}) == ({"temperature": 25, "humidity": 60}, [])


@pytest.mark.parametrize(
    ("value", "rules"),
    [(60, {"max"}), (-11, {"min"}), (2.5, {"type", "step"}), ("x", {"type"}), (True, {"type"}), (None, {"type"})],
)
def test_seed_bad_temperature(seed: CompiledModel, value: object, rules: set[str]) -> None:
    accepted, issues = seed.validate_properties({"temperature": value, "humidity": 50})
    assert accepted == {"humidity": 50}  # valid ones are still accepted
    assert len(issues) == 1
    assert issues[0].identifier == "temperature"
    assert issues[0].rule in rules
    assert "temperature" in issues[0].message


def test_seed_messages(seed: CompiledModel) -> None:
    _, issues = seed.validate_properties({"temperature": 60})
    assert issues[0].message == "temperature: 60 is above max 50"
    _, issues = seed.validate_properties({"temperature": -11})
    assert issues[0].message == "temperature: -11 is below min -10"


def test_seed_unknown(seed: CompiledModel) -> None:
    accepted, issues = seed.validate_properties({"pressure": 1013, "temperature": 20})
    assert accepted == {"temperature": 20}
    assert _rules(issues) == [("pressure", "unknown")]


def test_seed_pure_function(seed: CompiledModel) -> None:
    assert validate_properties(seed, {"humidity": 0}) == (
        {},
        [ValidationIssue("humidity", "min", "humidity: 0 is below min 1")],
    )


def test_property_lookup(seed: CompiledModel) -> None:
    p = seed.property("temperature")
    assert isinstance(p, Property)
    assert p.data_type.unit == "°C"
    assert seed.property("nope") is None
    assert [i for i, _ in seed.properties()] == ["temperature", "humidity"]
    assert seed.module_ids() == {"default"}


# --------------------------------------------------------------------------------------------- all rules

RULES_MODEL: dict[str, Any] = {
    "properties": [
        {"identifier": "i", "dataType": {"type": "int32", "specs": {"min": 0, "max": 100, "step": 5}}},
        {"identifier": "n", "dataType": {"type": "int32", "specs": {}}},
        {"identifier": "big", "dataType": {"type": "int64", "specs": {}}},
        {"identifier": "f", "dataType": {"type": "float", "specs": {"min": -1, "max": 1, "step": 0.1}}},
        {"identifier": "d", "dataType": {"type": "double", "specs": {}}},
        {"identifier": "s", "dataType": {"type": "double", "specs": {"step": 0.5}}},
        {"identifier": "t", "dataType": {"type": "text", "specs": {"length": 4}}},
        {"identifier": "b", "dataType": {"type": "bool", "specs": {"0": "off", "1": "on"}}},
        {"identifier": "e", "dataType": {"type": "enum", "specs": {"0": "a", "1": "b", "10": "c"}}},
        {"identifier": "hs", "dataType": {"type": "enum", "specs": {"on": "on", "off": "off"}}},
        {"identifier": "ts", "dataType": {"type": "date", "specs": {}}},
        {
            "identifier": "pos",
            "required": True,
            "dataType": {
                "type": "struct",
                "specs": [
                    {"identifier": "x", "dataType": {"type": "int32", "specs": {"min": 0, "max": 10}}},
                    {"identifier": "label", "dataType": {"type": "text", "specs": {"length": 3}}},
                ],
            },
        },
        {"identifier": "free", "dataType": {"type": "struct", "specs": []}},
        {
            "identifier": "arr",
            "dataType": {"type": "array", "specs": {"size": 3, "item": {"type": "int32", "specs": {"max": 5}}}},
        },
        {
            "identifier": "sarr",
            "dataType": {
                "type": "array",
                "specs": {
                    "size": 2,
                    "item": {"type": "struct", "specs": [{"identifier": "on", "dataType": {"type": "bool"}}]},
                },
            },
        },
    ],
    "events": [
        {
            "identifier": "alarm",
            "type": "alert",
            "outputData": [
                {"identifier": "level", "dataType": {"type": "int32", "specs": {"min": 1, "max": 3}}},
                {"identifier": "msg", "dataType": {"type": "text", "specs": {}}},
            ],
        }
    ],
    "services": [
        {
            "identifier": "reboot",
            "inputData": [{"identifier": "delay", "dataType": {"type": "int32", "specs": {"min": 0}}}],
            "outputData": [{"identifier": "ok", "dataType": {"type": "bool"}}],
        }
    ],
    "modules": [
        {
            "identifier": "battery",
            "properties": [
                {
                    "identifier": "level",
                    "required": True,
                    "dataType": {"type": "int32", "specs": {"min": 0, "max": 100}},
                }
            ],
            "events": [{"identifier": "low", "outputData": [{"identifier": "level", "dataType": {"type": "int32"}}]}],
        }
    ],
}


@pytest.fixture(scope="module")
def cm() -> CompiledModel:
    return CompiledModel(parse_model(RULES_MODEL))


@pytest.mark.parametrize(
    ("key", "value", "normalised"),
    [
        ("i", 95, 95),
        ("n", -(2**31), -(2**31)),
        ("big", 2**62, 2**62),
        ("f", 0.3, 0.3),
        ("f", -1, -1.0),
        ("d", 5, 5.0),
        ("d", -1e300, -1e300),
        ("s", 2.5, 2.5),
        ("t", "abcd", "abcd"),
        ("t", "äb", "äb"),
        ("b", True, 1),
        ("b", False, 0),
        ("b", 1, 1),
        ("e", 10, 10),
        ("e", "1", "1"),
        ("hs", "on", "on"),
        ("ts", 1635839462000, 1635839462000),
        ("ts", "1635839462000", 1635839462000),
        ("pos", {"x": 3, "label": "abc"}, {"x": 3, "label": "abc"}),
        ("pos", {}, {}),
        ("free", {"any": [1, {"x": None}]}, {"any": [1, {"x": None}]}),
        ("arr", [1, 2, 5], [1, 2, 5]),
        ("arr", [], []),
        ("sarr", [{"on": True}, {"on": 0}], [{"on": 1}, {"on": 0}]),
    ],
)
def test_valid_values(cm: CompiledModel, key: str, value: object, normalised: object) -> None:
    accepted, issues = cm.validate_properties({key: value})
    assert issues == []
    assert accepted == {key: normalised}
    assert type(accepted[key]) is type(normalised)


@pytest.mark.parametrize(
    ("key", "value", "issues"),
    [
        ("i", 101, [("i", "max")]),
        ("i", -5, [("i", "min")]),
        ("i", 7, [("i", "step")]),
        ("i", 5.0, [("i", "type")]),
        ("i", True, [("i", "type")]),
        ("i", "5", [("i", "type")]),
        ("n", 2**31, [("n", "max")]),
        ("n", -(2**31) - 1, [("n", "min")]),
        ("big", 2**63, [("big", "max")]),
        ("f", 1.05, [("f", "max")]),
        ("f", 0.35, [("f", "step")]),
        ("f", False, [("f", "type")]),
        ("d", float("nan"), [("d", "type")]),
        ("d", float("inf"), [("d", "type")]),
        ("d", 10**400, [("d", "max")]),
        ("s", 0.3, [("s", "step")]),
        ("t", "abcde", [("t", "length")]),
        ("t", "äää", [("t", "length")]),
        ("t", 5, [("t", "type")]),
        ("b", 2, [("b", "type")]),
        ("b", "1", [("b", "type")]),
        ("b", 1.0, [("b", "type")]),
        ("e", 2, [("e", "enum")]),
        ("e", "01", [("e", "enum")]),
        ("e", 1.0, [("e", "type")]),
        ("e", True, [("e", "type")]),
        ("hs", "ON", [("hs", "enum")]),
        ("ts", -1, [("ts", "time")]),
        ("ts", "12a", [("ts", "time")]),
        ("ts", 1.5, [("ts", "type")]),
        ("pos", [], [("pos", "type")]),
        ("pos", {"x": 11}, [("pos.x", "max")]),
        ("pos", {"x": 1, "z": 2}, [("pos.z", "member")]),
        ("pos", {"label": "abcd", "x": "1"}, [("pos.label", "length"), ("pos.x", "type")]),
        ("free", "x", [("free", "type")]),
        ("arr", [1, 2, 3, 4], [("arr", "size")]),
        ("arr", [1, 6, "x"], [("arr[1]", "max"), ("arr[2]", "type")]),
        ("arr", {"0": 1}, [("arr", "type")]),
        ("sarr", [{"on": 2}], [("sarr[0].on", "type")]),
        ("sarr", [{"off": 1}], [("sarr[0].off", "member")]),
    ],
)
def test_invalid_values(cm: CompiledModel, key: str, value: object, issues: list[tuple[str, str]]) -> None:
    accepted, got = cm.validate_properties({key: value})
    assert accepted == {}
    assert _rules(got) == issues
    for issue in got:
        assert issue.message.startswith(issue.identifier + ": ")


def test_partial_report(cm: CompiledModel) -> None:
    accepted, issues = cm.validate_properties({"i": 10, "t": "toolong", "battery:level": 50, "x": 1})
    assert accepted == {"i": 10, "battery:level": 50}
    assert _rules(issues) == [("t", "length"), ("x", "unknown")]


def test_module_prefix(cm: CompiledModel) -> None:
    assert cm.module_ids() == {"default", "battery"}
    assert cm.validate_properties({"battery:level": 101}) == (
        {},
        [ValidationIssue("battery:level", "max", "battery:level: 101 is above max 100")],
    )
    # bare module identifiers do not leak into the default module
    assert _rules(cm.validate_properties({"level": 1})[1]) == [("level", "unknown")]


def test_huawei_module_form(cm: CompiledModel) -> None:
    # Huawei service_id form: bare keys in, full identifiers out
    assert cm.validate_properties({"level": 42}, module="battery") == ({"battery:level": 42}, [])
    accepted, issues = cm.validate_properties({"level": -1, "volt": 3}, module="battery")
    assert accepted == {}
    assert _rules(issues) == [("battery:level", "min"), ("battery:volt", "unknown")]
    assert cm.validate_properties({"i": 5}, module="default") == ({"i": 5}, [])
    accepted, issues = cm.validate_properties({"i": 5}, module="nosuch")
    assert accepted == {}
    assert _rules(issues) == [("nosuch", "unknown")]


def test_missing_required(cm: CompiledModel) -> None:
    assert _rules(cm.missing_required({"i": 1})) == [("pos", "required"), ("battery:level", "required")]
    assert cm.missing_required({"pos": {}, "battery:level": 1}) == []
    assert _rules(cm.missing_required({}, module="battery")) == [("battery:level", "required")]
    assert cm.missing_required({"level": 1}, module="battery") == []
    # a report is a partial update: validate_properties never complains about missing properties
    assert cm.validate_properties({}) == ({}, [])


def test_validate_event(cm: CompiledModel) -> None:
    assert cm.validate_event("alarm", {"level": 2, "msg": "hot"}) == ({"level": 2, "msg": "hot"}, [])
    accepted, issues = cm.validate_event("alarm", {"level": 4, "msg": "hot", "extra": 1})
    assert accepted == {"msg": "hot"}
    assert _rules(issues) == [("alarm.level", "max"), ("alarm.extra", "unknown")]
    assert cm.validate_event("battery:low", {"level": 1}) == ({"level": 1}, [])
    assert _rules(cm.validate_event("nosuch", {})[1]) == [("nosuch", "unknown")]
    assert _rules(cm.validate_event("alarm", [])[1]) == [("alarm", "type")]  # type: ignore[arg-type]


def test_validate_service(cm: CompiledModel) -> None:
    assert cm.validate_service_input("reboot", {"delay": 5}) == ({"delay": 5}, [])
    assert _rules(cm.validate_service_input("reboot", {"delay": -1})[1]) == [("reboot.delay", "min")]
    assert cm.validate_service_output("reboot", {"ok": True}) == ({"ok": 1}, [])
    assert _rules(cm.validate_service_input("nope", {})[1]) == [("nope", "unknown")]


def test_non_dict_report(cm: CompiledModel) -> None:
    accepted, issues = cm.validate_properties([1, 2])  # type: ignore[arg-type]
    assert accepted == {} and issues[0].rule == "type"


def test_huge_values_do_not_raise(cm: CompiledModel) -> None:
    huge = 10**5000
    for key in ("i", "f", "e", "ts", "t", "b"):
        accepted, issues = cm.validate_properties({key: huge})
        assert accepted == {} and len(issues) == 1
        assert len(issues[0].message) < 200


def test_imported_huawei_model() -> None:
    cm = CompiledModel(import_huawei(_fixture("huawei_smoke_detector.json")))
    assert cm.module_ids() == {"default", "smokeDetector", "battery"}
    ok, issues = cm.validate_properties(
        {"alarm": 1, "status": "fault", "sensorDetail": {"raw": [1, 2]}, "tags": ["a", "b"], "muted": True},
        module="smokeDetector",
    )
    assert issues == []
    assert ok == {
        "smokeDetector:alarm": 1,
        "smokeDetector:status": "fault",
        "smokeDetector:sensorDetail": {"raw": [1, 2]},
        "smokeDetector:tags": ["a", "b"],
        "smokeDetector:muted": 1,
    }
    _, issues = cm.validate_properties({"lowBattery": "maybe", "batteryVoltage": 5.5}, module="battery")
    assert _rules(issues) == [("battery:lowBattery", "enum"), ("battery:batteryVoltage", "max")]
    _, issues = cm.validate_properties({"batteryVoltage": 3.705}, module="battery")
    assert _rules(issues) == [("battery:batteryVoltage", "step")]
    assert cm.validate_properties({"batteryVoltage": 3.7}, module="battery")[1] == []


def test_properties_in_model_order(cm: CompiledModel) -> None:
    ids = [i for i, _ in cm.properties()]
    assert ids[0] == "i" and ids[-1] == "battery:level"
    level = cm.property("battery:level")
    assert level is not None and level.identifier == "level" and level.required
    assert cm.event("battery:low") is not None and cm.service("reboot") is not None
