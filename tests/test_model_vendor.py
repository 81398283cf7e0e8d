"""Alibaba TSL / Huawei product-model import and export."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from iotgate.model import (
    ArraySpecs,
    EnumSpecs,
    ModelError,
    NumberSpecs,
    StructSpecs,
    TextSpecs,
    ThingModel,
    export_alibaba,
    export_huawei,
    import_alibaba,
    import_huawei,
    model_to_dict,
    parse_model,
)
from iotgate.model.alibaba import export_alibaba_module

FIXTURES = Path(__file__).parent / "fixtures" / "models"


def _fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


ALIBABA = [
    ("alibaba_th_collector.json", "a1THcollect"),
    ("alibaba_rich.json", "a1RichDemo"),
    ("alibaba_function_block.json", "a1THcollect"),
]
HUAWEI = [("huawei_smoke_detector.json", "64f8a1c2e1b2c3d4e5f60001_smoke")]


# --------------------------------------------------------------------------------------------- Alibaba


def test_alibaba_seed_import() -> None:
    m = import_alibaba(_fixture("alibaba_th_collector.json"))
    assert [p.identifier for p in m.properties] == ["temperature", "humidity"]
    assert m.events == [] and m.services == []  # auto post/set/get are skipped
    t = m.properties[0]
    assert t.data_type.type == "int32" and t.access_mode == "r"
    assert t.data_type.specs == NumberSpecs(min=-10, max=50, step=1, unit="°C", unit_name="摄氏度")
    h = m.properties[1].data_type.specs
    assert isinstance(h, NumberSpecs) and (h.min, h.max, h.step, h.unit) == (1, 100, 1, "%RH")
    assert m.extensions is None and t.extensions is None


def test_alibaba_rich_import() -> None:
    m = import_alibaba(_fixture("alibaba_rich.json"))
    types = {p.identifier: p.data_type.type for p in m.properties}
    assert types == {
        "PowerSwitch": "bool",
        "TargetTemperature": "float",
        "Voltage": "double",
        "DeviceNickName": "text",
        "LastMaintenance": "date",
        "WorkMode": "enum",
        "GeoLocation": "struct",
        "HourlyTemperatures": "array",
        "Tags": "array",
        "Schedules": "array",
    }
    by_id = {p.identifier: p for p in m.properties}
    assert by_id["PowerSwitch"].required is True
    assert by_id["Voltage"].description == "电源电压"
    assert by_id["TargetTemperature"].data_type.specs == NumberSpecs(
        min=16.0, max=30.0, step=0.5, unit="°C", unit_name="摄氏度"
    )
    assert by_id["DeviceNickName"].data_type.specs == TextSpecs(length=255)
    assert isinstance(by_id["WorkMode"].data_type.specs, EnumSpecs)
    geo = by_id["GeoLocation"].data_type.specs
    assert isinstance(geo, StructSpecs) and [x.identifier for x in geo.members][:2] == ["Longitude", "Latitude"]
    sched = by_id["Schedules"].data_type.specs
    assert isinstance(sched, ArraySpecs) and sched.size == 5 and sched.item.type == "struct"
    assert [e.identifier for e in m.events] == ["HighTemperatureAlarm", "Error"]
    assert m.events[0].type == "alert" and len(m.events[0].output_data) == 2
    assert [s.identifier for s in m.services] == ["StartSelfCheck", "Reboot"]
    assert m.services[1].call_type == "sync"


def test_alibaba_function_block_import() -> None:
    m = import_alibaba(_fixture("alibaba_function_block.json"))
    assert m.properties == [] and len(m.modules) == 1
    mod = m.modules[0]
    assert (mod.identifier, mod.name) == ("battery", "电池")
    assert [p.identifier for p in mod.properties] == ["level", "charging"]
    assert [e.identifier for e in mod.events] == ["lowBattery"]


@pytest.mark.parametrize(("name", "key"), ALIBABA)
def test_alibaba_vendor_round_trip(name: str, key: str) -> None:
    doc = _fixture(name)
    assert export_alibaba(import_alibaba(doc), key) == doc


@pytest.mark.parametrize(("name", "key"), ALIBABA + HUAWEI)
def test_iotgate_alibaba_iotgate(name: str, key: str) -> None:
    m = _import(name)
    again = import_alibaba(export_alibaba(m, "pk"))
    assert again == m
    # and the exported document survives JSON serialisation
    assert import_alibaba(json.dumps(export_alibaba(m, "pk"), ensure_ascii=False)) == m


def test_alibaba_auto_entries() -> None:
    m = parse_model(
        {
            "properties": [
                {"identifier": "a", "accessMode": "rw", "dataType": {"type": "int32", "specs": {"min": 0}}},
                {"identifier": "b", "accessMode": "r", "dataType": {"type": "text", "specs": {"length": 5}}},
            ]
        }
    )
    doc = export_alibaba(m, "pk1")
    assert doc["profile"] == {"version": "1.0", "productKey": "pk1"}
    post = doc["events"][0]
    assert post["identifier"] == "post" and post["method"] == "thing.event.property.post"
    assert [p["identifier"] for p in post["outputData"]] == ["a", "b"]
    set_, get = doc["services"][:2]
    assert set_["method"] == "thing.service.property.set"
    assert [p["identifier"] for p in set_["inputData"]] == ["a"]
    assert get["method"] == "thing.service.property.get" and get["inputData"] == ["a", "b"]
    assert [p["identifier"] for p in get["outputData"]] == ["a", "b"]
    assert doc["properties"][0]["dataType"] == {"type": "int", "specs": {"min": "0"}}


def test_alibaba_int64_and_modules_export() -> None:
    m = parse_model(
        {
            "properties": [
                {"identifier": "big", "dataType": {"type": "int64", "specs": {"min": 0, "max": 2**40}}},
                {"identifier": "small", "dataType": {"type": "double", "specs": {"step": 0.00001}}},
            ],
            "modules": [
                {
                    "identifier": "battery",
                    "name": "Battery",
                    "properties": [{"identifier": "level", "dataType": {"type": "int32"}}],
                    "services": [{"identifier": "calibrate", "callType": "sync"}],
                }
            ],
        }
    )
    doc = export_alibaba(m, "pk")
    big = doc["properties"][0]
    assert big["dataType"]["type"] == "int" and big["dataType"]["specs"]["max"] == str(2**31 - 1)
    assert big["extensions"]["iotgate"]["dataType"]["type"] == "int64"
    assert doc["properties"][1]["dataType"]["specs"] == {"step": "0.00001"}
    fb = doc["functionBlocks"]
    assert [b["functionBlockId"] for b in fb] == ["battery"]
    assert fb[0]["functionBlockName"] == "Battery"
    assert fb[0]["services"][0]["method"] == "thing.service.calibrate"
    assert import_alibaba(doc) == m
    single = export_alibaba_module(m, "battery", "pk")
    assert single["functionBlockId"] == "battery"
    again = import_alibaba(single)
    assert again.modules[0].properties == m.modules[0].properties
    with pytest.raises(ModelError):
        export_alibaba_module(m, "nope", "pk")


def test_alibaba_keeps_unknown_fields() -> None:
    doc = _fixture("alibaba_th_collector.json")
    doc["properties"][0]["customFlag"] = "x"
    doc["events"].append(
        {
            "identifier": "odd",
            "name": "odd",
            "type": "info",
            "required": True,
            "method": "thing.event.custom.odd",
            "outputData": [],
        }
    )
    m = import_alibaba(doc)
    assert m.properties[0].extensions == {"alibaba": {"customFlag": "x"}}
    assert m.events[0].extensions == {"alibaba": {"required": True, "method": "thing.event.custom.odd"}}
    assert export_alibaba(m, "a1THcollect") == doc


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["properties"][0]["dataType"].update(type="long"), r"properties\[0\]\.dataType\.type"),
        (lambda d: d["properties"][0]["dataType"]["specs"].update(min="abc"), r"specs\.min: must be a number"),
        (lambda d: d["properties"][0]["dataType"]["specs"].update(min="60"), r"min 60 is greater than max 50"),
        (lambda d: d["properties"][0]["dataType"]["specs"].update(step="0"), r"step: must be > 0"),
        (lambda d: d["properties"][0]["dataType"]["specs"].update(max="3000000000"), r"out of the int32 range"),
        (lambda d: d["properties"][1].update(identifier="temperature"), r"duplicate identifier"),
        (lambda d: d.update(properties={}), r"properties: must be an array"),
        (lambda d: d["properties"][0].update(accessMode="w"), r"accessMode"),
    ],
)
def test_alibaba_bad_documents(mutate: Any, message: str) -> None:
    doc = _fixture("alibaba_th_collector.json")
    mutate(doc)
    with pytest.raises(ModelError, match=message):
        import_alibaba(doc)
    with pytest.raises(ModelError):
        import_alibaba([])
    with pytest.raises(ModelError):
        import_alibaba("{")


# --------------------------------------------------------------------------------------------- Huawei


def test_huawei_import() -> None:
    m = import_huawei(_fixture("huawei_smoke_detector.json"))
    assert m.properties == [] and [x.identifier for x in m.modules] == ["smokeDetector", "battery"]
    smoke = m.modules[0]
    assert smoke.name == "SmokeDetector" and smoke.description == "烟感服务"
    assert smoke.extensions == {"huawei": {"option": "Mandatory"}}
    by_id = {p.identifier: p for p in smoke.properties}
    assert {k: p.data_type.type for k, p in by_id.items()} == {
        "alarm": "int32",
        "smokeConcentration": "double",
        "temperature": "double",
        "status": "enum",
        "alarmThreshold": "int32",
        "muted": "bool",
        "lastTestTime": "date",
        "firmwareVersion": "text",
        "sensorDetail": "struct",
        "tags": "array",
    }
    assert by_id["alarm"].access_mode == "r" and by_id["alarmThreshold"].access_mode == "rw"
    assert by_id["alarm"].extensions == {"huawei": {"method": "RE"}}
    assert by_id["alarmThreshold"].extensions == {"huawei": {"method": "RWE", "default_value": 30}}
    assert by_id["muted"].extensions is None
    assert by_id["smokeConcentration"].data_type.specs == NumberSpecs(min=0, max=100, step=0.1, unit="%obs/m")
    assert by_id["status"].data_type.specs == EnumSpecs(values={"normal": "normal", "fault": "fault", "muted": "muted"})
    assert by_id["sensorDetail"].data_type.specs == StructSpecs(members=[])
    assert by_id["sensorDetail"].extensions == {"huawei": {"data_type": "jsonObject", "method": "RE"}}
    tags = by_id["tags"].data_type.specs
    assert isinstance(tags, ArraySpecs) and tags.item.specs == TextSpecs(length=32)
    cmd = smoke.services[0]
    assert cmd.identifier == "selfTest"
    assert [p.identifier for p in cmd.input_data] == ["level", "timeout"]
    assert [p.identifier for p in cmd.output_data] == ["result", "detail"]
    assert cmd.extensions == {"huawei": {"response_name": "selfTestResult"}}
    assert smoke.services[1].output_data == []
    assert [e.identifier for e in smoke.events] == ["smokeAlarm"]
    battery = {p.identifier: p for p in m.modules[1].properties}
    assert battery["totalEnergy"].data_type.type == "int64"
    assert battery["lowBattery"].data_type.type == "enum"
    assert m.extensions is not None and m.extensions["huawei"]["manufacturer_name"] == "iotgate-demo"


@pytest.mark.parametrize(("name", "key"), HUAWEI)
def test_huawei_vendor_round_trip(name: str, key: str) -> None:
    doc = _fixture(name)
    assert export_huawei(import_huawei(doc), key) == doc


@pytest.mark.parametrize(("name", "key"), ALIBABA + HUAWEI)
def test_iotgate_huawei_iotgate(name: str, key: str) -> None:
    m = _import(name)
    assert import_huawei(export_huawei(m, "pid")) == m
    assert import_huawei(json.dumps(export_huawei(m, "pid"), ensure_ascii=False)) == m


def test_huawei_default_service() -> None:
    m = parse_model(
        {
            "properties": [
                {"identifier": "temperature", "accessMode": "rw", "dataType": {"type": "float", "specs": {"max": 9}}}
            ],
            "services": [
                {
                    "identifier": "reboot",
                    "inputData": [{"identifier": "delay", "dataType": {"type": "int32"}}],
                    "outputData": [{"identifier": "ok", "dataType": {"type": "bool"}}],
                }
            ],
        }
    )
    doc = export_huawei(m, "pid")
    assert doc["product_id"] == "pid"
    svc = doc["service_capabilities"][0]
    assert svc["service_id"] == "default"
    prop = svc["properties"][0]
    assert (prop["property_name"], prop["data_type"], prop["max"], prop["method"]) == (
        "temperature",
        "decimal",
        "9",
        "RW",
    )
    cmd = svc["commands"][0]
    assert cmd["command_name"] == "reboot" and cmd["paras"][0]["para_name"] == "delay"
    assert cmd["responses"][0]["paras"][0]["data_type"] == "boolean"
    assert import_huawei(doc) == m


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["service_capabilities"][1]["properties"][0].update(data_type="float"), r"unsupported Huawei"),
        (lambda d: d["service_capabilities"][1]["properties"][0].update(min="x"), r"properties\[0\]\.min: must be a"),
        (lambda d: d["service_capabilities"][1]["properties"][0].update(min="200"), r"greater than max"),
        (lambda d: d["service_capabilities"][0]["properties"][3].update(enum_list=[]), r"non-empty enum_list"),
        (lambda d: d["service_capabilities"][1].update(service_id="default!"), r"invalid identifier"),
        (lambda d: d["service_capabilities"][1].update(service_id="smokeDetector"), r"duplicate module"),
        (lambda d: d.update(service_capabilities={}), r"service_capabilities: must be an array"),
    ],
)
def test_huawei_bad_documents(mutate: Any, message: str) -> None:
    doc = _fixture("huawei_smoke_detector.json")
    mutate(doc)
    with pytest.raises(ModelError, match=message):
        import_huawei(doc)


def test_huawei_long_string_is_capped() -> None:
    doc = _fixture("huawei_smoke_detector.json")
    doc["service_capabilities"][0]["properties"][7]["max_length"] = 65535
    m = import_huawei(doc)
    p = m.modules[0].properties[7]
    assert p.data_type.specs == TextSpecs(length=10240)
    assert p.extensions == {"huawei": {"method": "RE", "max_length": 65535}}
    assert export_huawei(m, "64f8a1c2e1b2c3d4e5f60001_smoke") == doc


# --------------------------------------------------------------------------------------------- cross vendor


def _import(name: str) -> ThingModel:
    doc = _fixture(name)
    return import_huawei(doc) if name.startswith("huawei") else import_alibaba(doc)


def _essentials(m: ThingModel) -> list[tuple[str, str, str, object]]:
    out = []
    for mod, props in [("default", m.properties)] + [(x.identifier, x.properties) for x in m.modules]:
        for p in props:
            s = p.data_type.specs
            rng = (s.min, s.max, s.step, s.unit) if isinstance(s, NumberSpecs) else None
            out.append((mod, p.identifier, p.data_type.type, rng))
    return out


@pytest.mark.parametrize("name", ["alibaba_th_collector.json", "alibaba_rich.json", "alibaba_function_block.json"])
def test_alibaba_to_huawei_keeps_properties(name: str) -> None:
    m = _import(name)
    hw = export_huawei(m, "pid")
    # strip iotgate's stash: what a real Huawei platform would keep
    plain = export_huawei(m, "pid", extensions=False)
    assert plain == _strip_extensions(hw)
    m2 = import_huawei(plain)
    assert len(_essentials(m2)) == len(_essentials(m))
    for (mod1, id1, t1, r1), (mod2, id2, t2, r2) in zip(_essentials(m), _essentials(m2), strict=True):
        assert (mod1, id1) == (mod2, id2)
        if t1 == "float":
            assert t2 == "double"  # Huawei only has decimal
        elif t1 == "enum" or t1 == "bool":
            assert t2 == t1
        else:
            assert t2 == t1
        assert r1 == r2
    # with the stash the model survives completely
    assert import_alibaba(export_alibaba(import_huawei(hw), "pk")) == m


def test_huawei_to_alibaba_keeps_properties() -> None:
    m = _import("huawei_smoke_detector.json")
    ali = export_alibaba(m, "pk")
    assert export_alibaba(m, "pk", extensions=False) == _strip_extensions(ali)
    m2 = import_alibaba(export_alibaba(m, "pk", extensions=False))
    for (mod1, id1, t1, r1), (mod2, id2, t2, r2) in zip(_essentials(m), _essentials(m2), strict=True):
        assert (mod1, id1) == (mod2, id2)
        if t1 == "int64":  # TSL has no 64-bit int: exported as int with the range clamped to int32
            assert t2 == "int32"
            assert isinstance(r1, tuple) and isinstance(r2, tuple)
            assert r2[0] == max(r1[0], -(2**31)) and r2[1] == min(r1[1], 2**31 - 1)
        else:
            assert (t2, r2) == (t1, r1)
    assert import_huawei(export_huawei(import_alibaba(ali), "64f8a1c2e1b2c3d4e5f60001_smoke")) == m


def _strip_extensions(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _strip_extensions(v) for k, v in x.items() if k != "extensions"}
    if isinstance(x, list):
        return [_strip_extensions(v) for v in x]
    return x


def test_export_does_not_mutate_model() -> None:
    m = _import("huawei_smoke_detector.json")
    before = copy.deepcopy(model_to_dict(m))
    export_alibaba(m, "pk")
    export_huawei(m, "pid")
    assert model_to_dict(m) == before


@pytest.mark.parametrize("load", [parse_model, import_alibaba, import_huawei])
@pytest.mark.parametrize(
    "text",
    [b"{nope", b'{"properties": "\xd8\xff"}', b"[" * 100_000 + b"]" * 100_000, "{nope"],
    ids=["syntax", "invalid-utf8", "deep-nesting", "str"],
)
def test_undecodable_documents_are_model_errors(load: Any, text: str | bytes) -> None:
    """Every importer decodes JSON text the same way; bytes no JSON parser accepts are a ModelError too."""
    with pytest.raises(ModelError, match="not valid JSON"):
        load(text)
