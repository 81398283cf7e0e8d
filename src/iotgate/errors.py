"""Errors of the core. Dialects and the admin API map them onto their own wire formats."""

from __future__ import annotations

from typing import Any

from iotgate.storage.base import Conflict

__all__ = [
    "AuthFailed",
    "Conflict",
    "CoreError",
    "DeviceDisabled",
    "Invalid",
    "NotFound",
    "RateLimited",
    "ReportRejected",
    "TokenExpired",
    "TokenInvalid",
    "TopicNotAllowed",
]


class CoreError(Exception):
    """Base of errors a client can cause."""


class NotFound(CoreError):
    pass


class Invalid(CoreError):
    """Input failed validation; `details` lists what and why."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class AuthFailed(CoreError):
    """Credentials did not match (or the device is unknown: the two are not told apart)."""


class DeviceDisabled(AuthFailed):
    pass


class TokenExpired(CoreError):
    pass


class TokenInvalid(CoreError):
    pass


class RateLimited(CoreError):
    pass


class TopicNotAllowed(CoreError):
    pass


class ReportRejected(CoreError):
    """Values broke the thing model; the rejection has been recorded for the console."""

    def __init__(self, message: str, issues: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.issues = issues
