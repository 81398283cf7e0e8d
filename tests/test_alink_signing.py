"""`iotgate.auth.signing` for Alibaba's `/auth` against the test vectors of protocols.md §1.2."""

from __future__ import annotations

import pytest

from iotgate.auth.signing import alink_auth_body, alink_sign, alink_sign_content, hex_equal

SECRET = "SECRET0123456789abcdefSECRET0123"
PK, DN, CLIENT_ID = "a1TestPK001", "dev01", "a1TestPK001.dev01"
CONTENT = "clientIda1TestPK001.dev01deviceNamedev01productKeya1TestPK001"
PARAMS = {"productKey": PK, "deviceName": DN, "clientId": CLIENT_ID}


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("hmacsha256", "e891480434b2fbff73176b9781114f4331c402b5de01196146e5dd7494007eb5"),
        ("hmacsha1", "7bc44b61c670d95914e296d28d97e4a16838531f"),
        ("hmacmd5", "23d5be7bdeec3e95d5773eaf8d024e85"),
        ("HmacSHA1", "7bc44b61c670d95914e296d28d97e4a16838531f"),
    ],
)
def test_vectors(method: str, expected: str) -> None:
    assert alink_sign_content(PARAMS) == CONTENT
    assert alink_sign(PARAMS, SECRET, method) == expected


def test_vector_with_timestamp() -> None:
    params = {**PARAMS, "timestamp": "1501668289957"}
    assert alink_sign_content(params) == CONTENT + "timestamp1501668289957"
    assert alink_sign(params, SECRET, "hmacsha1") == "59bd05b94f805138b16c7d2cc10d036d295f6d7f"


def test_sign_version_and_signmethod_are_not_signed() -> None:
    params = {**PARAMS, "sign": "x", "signmethod": "hmacsha1", "version": "default"}
    assert alink_sign_content(params) == CONTENT
    assert alink_sign(params, SECRET, "hmacsha1") == "7bc44b61c670d95914e296d28d97e4a16838531f"


def test_auth_body_matches_the_link_sdk_request() -> None:
    """The body Link SDK C 4.1.0 sent in the [RUN] capture, field for field (its sign is UPPER)."""
    body = alink_auth_body(PK, DN, SECRET)
    assert body == {
        "productKey": PK,
        "deviceName": DN,
        "clientId": CLIENT_ID,
        "signmethod": "hmacsha256",
        "sign": "e891480434b2fbff73176b9781114f4331c402b5de01196146e5dd7494007eb5",
    }
    timed = alink_auth_body(PK, DN, SECRET, sign_method="hmacsha1", timestamp_ms=1501668289957)
    assert timed["timestamp"] == "1501668289957"
    assert timed["sign"] == "59bd05b94f805138b16c7d2cc10d036d295f6d7f"


def test_hex_equal_ignores_case_only() -> None:
    lower = "e891480434b2fbff73176b9781114f4331c402b5de01196146e5dd7494007eb5"
    assert hex_equal(lower, lower.upper())
    assert hex_equal(lower, lower)
    assert not hex_equal(lower, lower[:-1] + "4")
    assert not hex_equal(lower, lower[:-2])
    assert not hex_equal(lower, "")
    assert not hex_equal(lower, "é" * 64)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="signmethod"):
        alink_sign(PARAMS, SECRET, "hmacsha512")
