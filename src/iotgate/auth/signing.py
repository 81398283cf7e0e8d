"""Device signing schemes of both dialects, shared by the server and the device SDK.

Alibaba `/auth`: hex HMAC over every parameter except sign/signmethod/version, sorted by
name and concatenated as name+value (protocols.md §1.2).
Huawei `/v5/device-auth`: lowercase hex HMAC-SHA256 keyed by the UTC `YYYYMMDDHH`
timestamp over the DeviceSecret (protocols.md §2.2).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import UTC, datetime

ALINK_SIGN_METHODS: dict[str, str] = {
    "hmacmd5": "md5",
    "hmacsha1": "sha1",
    "hmacsha256": "sha256",
}
ALINK_UNSIGNED_FIELDS = frozenset({"sign", "signmethod", "version"})


def alink_sign_content(params: Mapping[str, object]) -> str:
    """The string Alibaba signs: sorted name+value pairs, no separators."""
    names = sorted(k for k in params if k not in ALINK_UNSIGNED_FIELDS)
    return "".join(f"{name}{params[name]}" for name in names)


def alink_sign(params: Mapping[str, object], secret: str, method: str = "hmacsha256") -> str:
    """Lower-case hex sign of an Alibaba `/auth` request (servers compare case-insensitively)."""
    digest = ALINK_SIGN_METHODS.get(method.lower())
    if digest is None:
        raise ValueError(f"unknown signmethod {method!r}; expected one of {sorted(ALINK_SIGN_METHODS)}")
    content = alink_sign_content(params).encode()
    return hmac.new(secret.encode(), content, digest).hexdigest()


def alink_auth_body(
    product_key: str,
    device_name: str,
    secret: str,
    *,
    sign_method: str = "hmacsha256",
    client_id: str | None = None,
    timestamp_ms: int | None = None,
) -> dict[str, str]:
    """The JSON body a device posts to `/auth`."""
    body: dict[str, str] = {
        "productKey": product_key,
        "deviceName": device_name,
        "clientId": client_id or f"{product_key}.{device_name}",
    }
    if timestamp_ms is not None:
        body["timestamp"] = str(timestamp_ms)
    body["signmethod"] = sign_method
    body["sign"] = alink_sign(body, secret, sign_method)
    return body


def iotda_timestamp(when: datetime | None = None) -> str:
    """UTC `YYYYMMDDHH`, the key of Huawei's password HMAC."""
    return (when or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%d%H")


def iotda_password(secret: str, timestamp: str) -> str:
    """Lower-case hex HMAC-SHA256 with key = timestamp and message = DeviceSecret."""
    return hmac.new(timestamp.encode(), secret.encode(), hashlib.sha256).hexdigest()


def iotda_auth_body(device_id: str, secret: str, *, sign_type: int = 0, when: datetime | None = None) -> dict:
    """The JSON body a device posts to `/v5/device-auth`."""
    timestamp = iotda_timestamp(when)
    return {
        "device_id": device_id,
        "sign_type": sign_type,
        "timestamp": timestamp,
        "password": iotda_password(secret, timestamp),
    }


def hex_equal(expected_hex: str, given: str) -> bool:
    """Constant-time, case-insensitive comparison of two hex strings."""
    return hmac.compare_digest(expected_hex.lower().encode(), given.strip().lower().encode("utf-8", "replace"))
