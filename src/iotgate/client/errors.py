"""Typed errors of the device SDK.

Every failure a device can meet is a :class:`DeviceError`:

* :class:`AlinkError` carries the Alibaba business ``code`` (an ``int`` such as ``20000``) and ``message``;
* :class:`IotdaError` carries the Huawei ``error_code`` (a ``str`` such as ``"IOTDA.000002"``), ``error_msg``
  and the HTTP status;
* :class:`DeviceConnectionError` means the server could not be reached (after the bounded retries) or its
  TLS certificate did not verify; ``code`` is ``None``.

Example::

    try:
        device.post_properties({"temperature": 99})
    except AlinkError as exc:
        if exc.rejected:          # 30001: the values broke the thing model
            log.warning("dropped a bad reading: %s", exc.message)
        else:
            raise
"""

from __future__ import annotations

__all__ = [
    "ALINK_AUTH_ERROR",
    "ALINK_COMMON_ERROR",
    "ALINK_PARAM_ERROR",
    "ALINK_PUBLISH_ERROR",
    "ALINK_REQUEST_TOO_MANY",
    "ALINK_TOKEN_CHECK_ERROR",
    "ALINK_TOKEN_EXPIRED",
    "ALINK_TOKEN_NULL",
    "ALINK_UPDATE_SESSION_ERROR",
    "IOTDA_AUTH_FAILED",
    "IOTDA_BAD_REQUEST",
    "IOTDA_INVALID_INPUT",
    "IOTDA_INVALID_TOKEN",
    "IOTDA_RATE_LIMITED",
    "IOTDA_SUB_DEVICE_UNKNOWN",
    "IOTDA_TENANT_RATE_LIMITED",
    "IOTDA_TOO_LARGE",
    "IOTDA_UNAVAILABLE",
    "AlinkError",
    "DeviceConnectionError",
    "DeviceError",
    "GatewayBatchError",
    "IotdaError",
]

# Alibaba `/auth` and `/topic` business codes (protocols.md §1.4)
ALINK_COMMON_ERROR = 10000
ALINK_PARAM_ERROR = 10001
ALINK_AUTH_ERROR = 20000
ALINK_TOKEN_EXPIRED = 20001
ALINK_TOKEN_NULL = 20002
ALINK_TOKEN_CHECK_ERROR = 20003
ALINK_UPDATE_SESSION_ERROR = 20004
ALINK_PUBLISH_ERROR = 30001
ALINK_REQUEST_TOO_MANY = 40000

# Huawei IoTDA error codes (protocols.md §2.7)
IOTDA_UNAVAILABLE = "IOTDA.000001"
IOTDA_AUTH_FAILED = "IOTDA.000002"
IOTDA_INVALID_TOKEN = "IOTDA.000004"
IOTDA_INVALID_INPUT = "IOTDA.000006"
IOTDA_BAD_REQUEST = "IOTDA.000008"
IOTDA_RATE_LIMITED = "IOTDA.021101"
IOTDA_TENANT_RATE_LIMITED = "IOTDA.021102"
IOTDA_SUB_DEVICE_UNKNOWN = "IOTDA.021104"
IOTDA_TOO_LARGE = "IOTDA.021105"


class DeviceError(Exception):
    """Base of every SDK error. ``code`` is the vendor code (``None`` for connection failures),
    ``message`` the server's text, ``status`` the HTTP status (``None`` if no response arrived)."""

    code: int | str | None

    def __init__(self, code: int | str | None, message: str, *, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}" if code is not None else message)
        self.code = code
        self.message = message
        self.status = status

    @property
    def auth_failed(self) -> bool:
        """The credentials were refused: check the secret, or whether the device is disabled."""
        return False

    @property
    def token_invalid(self) -> bool:
        """The token was refused (expired, revoked, or missing). The SDK re-authenticates once by itself."""
        return False

    @property
    def rate_limited(self) -> bool:
        """The server throttled this device; send less often."""
        return False

    @property
    def rejected(self) -> bool:
        """The request was understood but its content was refused (e.g. values outside the thing model)."""
        return False


class AlinkError(DeviceError):
    """An Alibaba-dialect business error: HTTP 200 (usually) with a non-zero ``code``."""

    code: int

    def __init__(self, code: int, message: str, *, status: int | None = None) -> None:
        super().__init__(code, message, status=status)

    @property
    def auth_failed(self) -> bool:
        return self.code == ALINK_AUTH_ERROR

    @property
    def token_invalid(self) -> bool:
        return self.code in (ALINK_TOKEN_EXPIRED, ALINK_TOKEN_NULL, ALINK_TOKEN_CHECK_ERROR)

    @property
    def rate_limited(self) -> bool:
        return self.code == ALINK_REQUEST_TOO_MANY

    @property
    def rejected(self) -> bool:
        return self.code in (ALINK_PUBLISH_ERROR, ALINK_PARAM_ERROR)


class IotdaError(DeviceError):
    """A Huawei-dialect error: a non-2xx status with ``{"error_code": ..., "error_msg": ...}``."""

    code: str

    def __init__(self, code: str, message: str, *, status: int | None = None) -> None:
        super().__init__(code, message, status=status)

    @property
    def auth_failed(self) -> bool:
        return self.code == IOTDA_AUTH_FAILED

    @property
    def token_invalid(self) -> bool:
        return self.code == IOTDA_INVALID_TOKEN

    @property
    def rate_limited(self) -> bool:
        return self.code in (IOTDA_RATE_LIMITED, IOTDA_TENANT_RATE_LIMITED)

    @property
    def rejected(self) -> bool:
        return self.code in (IOTDA_INVALID_INPUT, IOTDA_BAD_REQUEST, IOTDA_SUB_DEVICE_UNKNOWN, IOTDA_TOO_LARGE)


class GatewayBatchError(IotdaError):
    """A chunk of a gateway batch failed. Chunks before it were stored: ``accepted`` sub-device entries
    in ``chunk`` (0-based) earlier chunks. The chunk that failed and those after it were not."""

    def __init__(self, cause: IotdaError, accepted: int, chunk: int) -> None:
        super().__init__(cause.code, cause.message, status=cause.status)
        self.accepted = accepted
        self.chunk = chunk


class DeviceConnectionError(DeviceError):
    """No answer from the server: connection refused or reset, timeouts (after the bounded retries),
    or a TLS certificate that did not verify (not retried). ``retryable`` tells the two apart."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = True) -> None:
        super().__init__(None, message, status=status)
        self.retryable = retryable
