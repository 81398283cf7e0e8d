"""The rule filter language: tokenizer, recursive-descent parser, three-valued evaluation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotgate.forward.message import ForwardMessage, resolver
from iotgate.forward.where import MAX_DEPTH, WhereError, compile_where, parse


def prop(values: dict[str, Any], device: str = "hall-01", pk: str = "a1B2c3D4e5F") -> ForwardMessage:
    return ForwardMessage(
        source="property",
        message_id=7,
        device_id=1,
        product_key=pk,
        device_name=device,
        ts=1000,
        received_at=1001,
        topic=f"/sys/{pk}/{device}/thing/event/property/post",
        values=values,
    )


def check(text: str, m: ForwardMessage) -> bool | None:
    return compile_where(text, resolver(m.source))(m)


@pytest.mark.parametrize(
    ("text", "values", "expected"),
    [
        ("temperature > 40 AND deviceName LIKE 'hall-%'", {"temperature": 41}, True),
        ("temperature > 40 AND deviceName LIKE 'hall-%'", {"temperature": 40}, False),
        ("temperature >= 40.5", {"temperature": 40.5}, True),
        ("temperature = 40", {"temperature": 40.0}, True),  # int and float compare as numbers
        ("temperature == 40 OR temperature <> 40", {"temperature": 1}, True),
        ("temperature != 1", {"temperature": 1}, False),
        ("temperature < -5", {"temperature": -6}, True),
        ("mode IN ('eco', 'boost')", {"mode": "eco"}, True),
        ("mode NOT IN ('eco', 'boost')", {"mode": "off"}, True),
        ("mode IN (1, 2)", {"mode": 2}, True),
        ("temperature BETWEEN 10 AND 20", {"temperature": 20}, True),
        ("temperature NOT BETWEEN 10 AND 20", {"temperature": 21}, True),
        ("humidity IS NULL", {"temperature": 1}, True),
        ("humidity IS NOT NULL", {"humidity": 0}, True),
        ("NOT (temperature > 40)", {"temperature": 10}, True),
        ("NOT temperature > 40 AND humidity > 50", {"temperature": 10, "humidity": 60}, True),
        # AND binds tighter than OR
        ("a = 1 OR a = 2 AND b = 3", {"a": 1, "b": 0}, True),
        ("(a = 1 OR a = 2) AND b = 3", {"a": 1, "b": 0}, False),
        ("door", {"door": True}, True),
        ("door = FALSE", {"door": False}, True),
        ("TRUE", {}, True),
        ('"battery:level" < 20', {"battery:level": 15}, True),
        ("pos.lat > 30 AND pos.lng < 0", {"pos": {"lat": 31.2, "lng": -1.5}}, True),
        ("values.deviceName = 'x'", {"deviceName": "x"}, True),  # a property that shadows a field name
        ("samples.0 = 5", {"samples": [5, 6]}, True),
        ("name LIKE 'h_ll%'", {"name": "hall-9"}, True),
        ("name LIKE 'a\\%' ESCAPE '\\'", {"name": "a%"}, True),
        ("name LIKE 'a\\%' ESCAPE '\\'", {"name": "ab"}, False),
        ("name LIKE '100%'", {"name": "100 percent"}, True),
        ("note = 'it''s'", {"note": "it's"}, True),
        ("productKey = 'a1B2c3D4e5F' AND source = 'property'", {}, True),
        ("time < receivedAt", {}, True),
        ("topic LIKE '/sys/%/property/post'", {}, True),
        ("x = 1e3", {"x": 1000}, True),
        ("x = .5", {"x": 0.5}, True),
    ],
)
def test_selects(text: str, values: dict[str, Any], expected: bool) -> None:
    assert check(text, prop(values)) is expected


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("temperature > 40", {}),  # missing: NULL
        ("temperature > 40", {"temperature": None}),
        ("temperature > 40", {"temperature": "41"}),  # a string is not a number
        ("name > 3", {"name": "abc"}),
        ("door > TRUE", {"door": True}),  # booleans only compare for equality
        ("NOT temperature > 40", {}),  # NOT UNKNOWN is UNKNOWN
        ("temperature NOT IN (1, 2)", {}),
        ("mode NOT IN ('a', 1)", {"mode": "b"}),  # a comparison in the list is unknown
        ("x BETWEEN 1 AND 5", {"x": "3"}),
        ("name LIKE 'a%'", {"name": 5}),
        ("pos.lat > 1", {"pos": 3}),
        ("door", {"door": 1}),  # only a boolean is a condition
        ("x = 0", {"x": float("nan")}),
    ],
)
def test_unknown_never_selects(text: str, values: dict[str, Any]) -> None:
    assert check(text, prop(values)) is None


def test_three_valued_connectives() -> None:
    m = prop({"a": 1})
    assert check("missing > 1 OR a = 1", m) is True  # UNKNOWN OR TRUE
    assert check("missing > 1 OR a = 2", m) is None  # UNKNOWN OR FALSE
    assert check("missing > 1 AND a = 2", m) is False  # UNKNOWN AND FALSE
    assert check("missing > 1 AND a = 1", m) is None  # UNKNOWN AND TRUE


def test_fields_of_other_sources() -> None:
    msg = ForwardMessage(
        source="message",
        message_id=1,
        device_id=1,
        product_key="pk",
        device_name="d1",
        ts=1,
        received_at=1,
        kind="message",
        topic="/pk/d1/user/update",
        payload=b'{"level": 7, "tags": ["a"]}',
    )
    assert check("payload.level = 7 AND kind = 'message' AND topic LIKE '%/user/%'", msg) is True
    raw = ForwardMessage(
        source="message", message_id=1, device_id=1, product_key="pk", device_name="d1", ts=1, received_at=1,
        payload=b"plain text",
    )  # fmt: skip
    assert check("payload = 'plain text'", raw) is True
    event = ForwardMessage(
        source="event", message_id=1, device_id=1, product_key="pk", device_name="d1", ts=1, received_at=1,
        identifier="alarm", values={"code": 3},
    )  # fmt: skip
    assert check("identifier = 'alarm' AND code = 3", event) is True
    life = ForwardMessage(
        source="lifecycle", message_id=1, device_id=1, product_key="pk", device_name="d1", ts=1, received_at=1,
        lifecycle="online",
    )  # fmt: skip
    assert check("event IN ('online', 'offline')", life) is True


@pytest.mark.parametrize(
    ("source", "text", "position", "reason"),
    [
        ("lifecycle", "event = 'online' AND temperature > 1", 22, "unknown field 'temperature' for source lifecycle"),
        ("message", "deviceName.x = 1", 1, "deviceName has no members"),
    ],
)
def test_unknown_fields_are_errors(source: str, text: str, position: int, reason: str) -> None:
    with pytest.raises(WhereError) as info:
        compile_where(text, resolver(source))
    assert info.value.position == position
    assert reason in info.value.reason


@pytest.mark.parametrize(
    ("text", "position", "reason"),
    [
        ("", 1, "the filter is empty"),
        ("   ", 1, "the filter is empty"),
        ("temperature >", 14, "expected a field name or a value, found the end of the filter"),
        ("temperature >> 40", 14, "expected a field name or a value, found '>'"),
        ("temperature > 40 AND", 21, "expected a field name or a value"),
        ("a = 'x", 5, "unterminated string"),
        ('"a = 1', 1, "unterminated quoted name"),
        ('"" = 1', 1, "empty quoted name"),
        ("a ! b", 3, "unexpected character '!'"),
        ("a = 1;", 6, "unexpected character ';'"),
        ("(a = 1", 7, "expected ')'"),
        ("a = 1)", 6, "expected AND, OR or the end of the filter, found ')'"),
        ("12abc = 1", 1, "malformed number"),
        ("a NOT = 1", 7, "expected LIKE, IN or BETWEEN after NOT"),
        ("42", 1, "42 is a value, not a condition"),
        ("a LIKE b", 8, "expected a quoted pattern after LIKE"),
        ("a IN ()", 7, "expected a literal in the IN list"),
        ("a IN (b)", 7, "expected a literal in the IN list"),
        ("a IN (1 2)", 9, "expected ')'"),
        ("a.=1", 3, "expected a name after '.'"),
        ("a BETWEEN 1 OR 2", 13, "expected AND"),
        ("a IS 1", 6, "expected NULL"),
        ("a = - 'x'", 7, "expected a number after '-'"),
        ("x LIKE 'a' ESCAPE 'ab'", 19, "ESCAPE takes exactly one character"),
        ("a = 1 b = 2", 7, "expected AND, OR or the end of the filter, found 'b'"),
    ],
)
def test_errors_name_the_position(text: str, position: int, reason: str) -> None:
    with pytest.raises(WhereError) as info:
        parse(text)
    assert info.value.position == position, str(info.value)
    assert reason in info.value.reason
    assert str(info.value).endswith(f"at position {position}")


def test_nesting_and_length_are_bounded() -> None:
    deep = "(" * (MAX_DEPTH + 1) + "a = 1" + ")" * (MAX_DEPTH + 1)
    with pytest.raises(WhereError, match="nests deeper"):
        parse(deep)
    nots = "NOT " * (MAX_DEPTH + 1) + "a = 1"
    with pytest.raises(WhereError, match="nests deeper"):
        parse(nots)
    assert check("(" * 20 + "a = 1" + ")" * 20, prop({"a": 1})) is True
    with pytest.raises(WhereError, match="longer than"):
        parse("a = 1 OR " * 600 + "a = 1")


def test_keywords_are_case_insensitive_and_names_are_not() -> None:
    m = prop({"Temp": 5, "temp": 50})
    assert check("Temp < 10 and temp > 10 Or false", m) is True
    assert check("temp is not null", m) is True


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab()'\"=<>!.,-%_ 01 ANDORNOTLIKEINISNUL\\", max_size=40))
def test_any_text_parses_or_fails_cleanly(text: str) -> None:
    """Whatever a user types, the answer is a filter or a WhereError with a position in range."""
    try:
        pred = compile_where(text, resolver("property"))
    except WhereError as exc:
        assert 1 <= exc.position <= len(text) + 1
        return
    assert pred(prop({"a": 1, "b": "x"})) in (True, False, None)
