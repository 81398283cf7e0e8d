"""Property-based tests of the thing model (hypothesis)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from iotgate.model import (
    CompiledModel,
    export_alibaba,
    export_huawei,
    import_alibaba,
    import_huawei,
    model_to_dict,
    parse_model,
)
from iotgate.model.validate import RULES

INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}

# --------------------------------------------------------------------------------------------- specs + values


@st.composite
def int_specs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    t = draw(st.sampled_from(["int32", "int64"]))
    lo_b, hi_b = INT_BOUNDS[t]
    lo = draw(st.integers(lo_b, hi_b))
    hi = draw(st.integers(lo, hi_b))
    specs: dict[str, Any] = {"min": lo, "max": hi}
    if draw(st.booleans()):
        specs["step"] = draw(st.integers(1, max(1, min(hi - lo, 10**6)) if hi > lo else 1))
    return t, specs


@st.composite
def float_specs(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    t = draw(st.sampled_from(["float", "double"]))
    lo = draw(st.floats(-1e6, 1e6))
    hi = draw(st.floats(lo, 1e6 + 1))
    specs: dict[str, Any] = {"min": lo, "max": hi}
    if draw(st.booleans()):
        specs["step"] = draw(st.sampled_from([0.001, 0.01, 0.1, 0.25, 0.5, 1, 2.5, 10]))
    return t, specs


def _single(t: str, specs: dict[str, Any]) -> CompiledModel:
    return CompiledModel(parse_model({"properties": [{"identifier": "p", "dataType": {"type": t, "specs": specs}}]}))


@given(int_specs(), st.data())
def test_valid_ints_accepted_unchanged(ts: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    t, specs = ts
    lo, hi, step = specs["min"], specs["max"], specs.get("step", 1)
    k = data.draw(st.integers(0, (hi - lo) // step))
    value = lo + k * step
    assert _single(t, specs).validate_properties({"p": value}) == ({"p": value}, [])


@given(float_specs(), st.data())
def test_valid_floats_accepted(ts: tuple[str, dict[str, Any]], data: st.DataObject) -> None:
    t, specs = ts
    lo, hi = specs["min"], specs["max"]
    step = specs.get("step")
    if step is None:
        value = data.draw(st.floats(lo, hi))
    else:
        n = math.floor((hi - lo) / step)
        assume(n >= 0)
        value = lo + data.draw(st.integers(0, n)) * step
        assume(lo <= value <= hi)
    accepted, issues = _single(t, specs).validate_properties({"p": value})
    assert issues == []
    assert accepted == {"p": value}


@given(int_specs(), st.integers(1, 2**70), st.booleans())
def test_ints_out_of_range_rejected(ts: tuple[str, dict[str, Any]], delta: int, above: bool) -> None:
    t, specs = ts
    value = specs["max"] + delta if above else specs["min"] - delta
    accepted, issues = _single(t, specs).validate_properties({"p": value})
    assert accepted == {}
    assert [i.rule for i in issues] == ["max" if above else "min"]


@given(float_specs(), st.floats(1e-3, 1e300), st.booleans())
def test_floats_out_of_range_rejected(ts: tuple[str, dict[str, Any]], delta: float, above: bool) -> None:
    t, specs = ts
    value = specs["max"] + delta if above else specs["min"] - delta
    assume(value > specs["max"] if above else value < specs["min"])
    accepted, issues = _single(t, specs).validate_properties({"p": value})
    assert accepted == {}
    assert [i.rule for i in issues] == ["max" if above else "min"]


@given(st.integers(1, 10240), st.text(max_size=300))
def test_text_length(length: int, value: str) -> None:
    cm = _single("text", {"length": length})
    accepted, issues = cm.validate_properties({"p": value})
    if len(value.encode("utf-8", "surrogatepass")) <= length:
        assert (accepted, issues) == ({"p": value}, [])
    else:
        assert accepted == {} and [i.rule for i in issues] == ["length"]


# --------------------------------------------------------------------------------------------- never raises

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)

EVERYTHING: dict[str, Any] = {
    "properties": [
        {"identifier": "i32", "dataType": {"type": "int32", "specs": {"min": -5, "max": 5, "step": 1}}},
        {"identifier": "i64", "dataType": {"type": "int64", "specs": {}}},
        {"identifier": "f", "dataType": {"type": "float", "specs": {"step": 0.1}}},
        {"identifier": "d", "dataType": {"type": "double", "specs": {"min": 0}}},
        {"identifier": "t", "dataType": {"type": "text", "specs": {"length": 5}}},
        {"identifier": "b", "dataType": {"type": "bool", "specs": {}}},
        {"identifier": "e", "dataType": {"type": "enum", "specs": {"1": "a", "x": "b"}}},
        {"identifier": "ts", "dataType": {"type": "date", "specs": {}}},
        {
            "identifier": "s",
            "dataType": {
                "type": "struct",
                "specs": [
                    {"identifier": "a", "dataType": {"type": "int32", "specs": {}}},
                    {"identifier": "b", "dataType": {"type": "enum", "specs": {"0": "z"}}},
                ],
            },
        },
        {"identifier": "j", "dataType": {"type": "struct", "specs": []}},
        {
            "identifier": "a",
            "dataType": {"type": "array", "specs": {"size": 3, "item": {"type": "double", "specs": {"max": 1}}}},
        },
        {
            "identifier": "as",
            "dataType": {
                "type": "array",
                "specs": {
                    "size": 2,
                    "item": {"type": "struct", "specs": [{"identifier": "x", "dataType": {"type": "text"}}]},
                },
            },
        },
    ],
    "events": [{"identifier": "ev", "outputData": [{"identifier": "x", "dataType": {"type": "int32"}}]}],
    "modules": [{"identifier": "m", "properties": [{"identifier": "i32", "dataType": {"type": "int32"}}]}],
}
CM = CompiledModel(parse_model(EVERYTHING))
KEYS = st.sampled_from([p["identifier"] for p in EVERYTHING["properties"]] + ["m:i32", "nope"]) | st.text(max_size=5)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, JSON, max_size=8))
def test_validation_never_raises(values: dict[str, Any]) -> None:
    accepted, issues = CM.validate_properties(values)
    assert set(accepted) <= set(values)
    for issue in issues:
        assert issue.rule in RULES
        assert isinstance(issue.message, str) and issue.message
    # every rejected key has an issue naming it
    for key in set(values) - set(accepted):
        assert any(i.identifier == key or i.identifier.startswith((key + ".", key + "[")) for i in issues)


@given(JSON, JSON, st.sampled_from([None, "default", "m", "zz"]))
def test_validation_never_raises_any_shape(values: Any, params: Any, module: str | None) -> None:
    CM.validate_properties(values, module)
    CM.validate_event("ev", params)
    CM.validate_event("nope", params)
    CM.missing_required(values if isinstance(values, dict) else {})


# --------------------------------------------------------------------------------------------- model round trips

IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
NAME = st.text(min_size=1, max_size=6)


def _number_dt(t: str) -> st.SearchStrategy[dict[str, Any]]:
    if t in INT_BOUNDS:
        lo_b, hi_b = INT_BOUNDS[t]
        num: st.SearchStrategy[Any] = st.integers(lo_b, hi_b)
        steps: st.SearchStrategy[Any] = st.integers(1, 100)
    else:
        num = st.integers(-1000, 1000) | st.floats(-1e6, 1e6).map(lambda x: round(x, 3))
        steps = st.sampled_from([0.01, 0.5, 1, 2])

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        specs: dict[str, Any] = {}
        a, b = sorted([draw(num), draw(num)])
        if draw(st.booleans()):
            specs["min"] = a
        if draw(st.booleans()):
            specs["max"] = b
        if draw(st.booleans()):
            specs["step"] = draw(steps)
        if draw(st.booleans()):
            specs["unit"] = draw(st.sampled_from(["°C", "%", "V"]))
        if draw(st.booleans()):
            specs["unitName"] = draw(NAME)
        return {"type": t, "specs": specs}

    return build()


SIMPLE_DT = st.one_of(
    *[_number_dt(t) for t in ("int32", "int64", "float", "double")],
    st.builds(
        lambda n: {"type": "text", "specs": {} if n is None else {"length": n}}, st.none() | st.integers(1, 10240)
    ),
    st.builds(lambda d: {"type": "bool", "specs": d}, st.sampled_from([{}, {"0": "off", "1": "on"}])),
    st.builds(
        lambda d: {"type": "enum", "specs": d},
        st.dictionaries(st.integers(0, 9).map(str) | IDENT, NAME, min_size=1, max_size=4),
    ),
    st.just({"type": "date", "specs": {}}),
)


def _params(dt: st.SearchStrategy[dict[str, Any]], max_size: int = 3) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.fixed_dictionaries({"identifier": IDENT, "name": NAME, "dataType": dt}),
        max_size=max_size,
        unique_by=lambda p: p["identifier"],
    )


STRUCT_DT = st.builds(lambda ms: {"type": "struct", "specs": ms}, _params(SIMPLE_DT))
ITEM_DT = st.one_of(
    *[_number_dt(t) for t in ("int32", "int64", "float", "double")],
    st.builds(lambda n: {"type": "text", "specs": {} if n is None else {"length": n}}, st.none() | st.integers(1, 99)),
    STRUCT_DT,
)
ARRAY_DT = st.builds(
    lambda size, item: {"type": "array", "specs": {"size": size, "item": item}}, st.integers(1, 512), ITEM_DT
)
ANY_DT = st.one_of(SIMPLE_DT, STRUCT_DT, ARRAY_DT)


@st.composite
def features(draw: st.DrawFn) -> dict[str, Any]:
    idents = draw(st.lists(IDENT, max_size=6, unique=True))
    out: dict[str, Any] = {"properties": [], "events": [], "services": []}
    for ident in idents:
        kind = draw(st.sampled_from(["properties", "properties", "events", "services"]))
        if kind == "properties":
            out[kind].append(
                {
                    "identifier": ident,
                    "name": draw(NAME),
                    "accessMode": draw(st.sampled_from(["r", "rw"])),
                    "required": draw(st.booleans()),
                    "description": draw(st.sampled_from(["", "desc"])),
                    "dataType": draw(ANY_DT),
                }
            )
        elif kind == "events":
            out[kind].append(
                {
                    "identifier": ident,
                    "name": draw(NAME),
                    "type": draw(st.sampled_from(["info", "alert", "error"])),
                    "description": draw(st.sampled_from(["", "d"])),
                    "outputData": draw(_params(ANY_DT)),
                }
            )
        else:
            out[kind].append(
                {
                    "identifier": ident,
                    "name": draw(NAME),
                    "callType": draw(st.sampled_from(["async", "sync"])),
                    "description": draw(st.sampled_from(["", "d"])),
                    "inputData": draw(_params(ANY_DT)),
                    "outputData": draw(_params(ANY_DT)),
                }
            )
    return out


@st.composite
def models(draw: st.DrawFn) -> dict[str, Any]:
    doc = draw(features())
    mods = draw(st.lists(IDENT.filter(lambda s: s != "default"), max_size=2, unique=True))
    doc["modules"] = [
        {"identifier": m, "name": draw(NAME), "description": draw(st.sampled_from(["", "x"])), **draw(features())}
        for m in mods
    ]
    return doc


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(models())
def test_model_round_trips(doc: dict[str, Any]) -> None:
    m = parse_model(doc)
    assert model_to_dict(m) == doc
    assert import_alibaba(export_alibaba(m, "pk")) == m
    assert import_huawei(export_huawei(m, "pid")) == m
    # vendor -> vendor chains stay lossless thanks to the iotgate stash
    assert import_huawei(export_huawei(import_alibaba(export_alibaba(m, "pk")), "pid")) == m
    assert import_alibaba(export_alibaba(import_huawei(export_huawei(m, "pid")), "pk")) == m
