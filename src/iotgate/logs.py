"""Logging: JSON lines when stderr is not a terminal (for collectors), plain text when it is."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import msgspec

SKIP = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in SKIP and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc, enc_hook=str).decode()


def configure(level: str = "info", json_lines: bool | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler.setFormatter(
        JsonFormatter() if json_lines else logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# -- rejected device requests ------------------------------------------------------------------
rejections = logging.getLogger("iotgate.rejected")
REJECTION_LINES_PER_S = 200  # beyond this a flood of bad requests is summarised, not logged line by line
_CONTROL = {c: "?" for c in range(32)} | {127: "?"}


def clean(text: str, size: int = 128) -> str:
    """Client-supplied text made safe for a log line: bounded, no control characters (no log injection)."""
    return text[:size].translate(_CONTROL)


class RejectionLog:
    """One line per rejected device request (device, dialect, endpoint, code, reason, client),
    at most `per_s` lines a second; the rest are counted and summarised once the second is over.
    Callers pass only server-written reasons and identifiers: never a secret, sign, token or password."""

    def __init__(self, per_s: int = REJECTION_LINES_PER_S) -> None:
        self.per_s = per_s
        self._second = 0
        self._lines = 0
        self.suppressed = 0

    def __call__(self, dialect: str, endpoint: str, device: str, code: str, reason: str, client: str) -> None:
        if not rejections.isEnabledFor(logging.INFO):
            return
        second = int(time.monotonic())
        if second != self._second:
            if self.suppressed:
                rejections.warning(
                    "%d more rejected device requests not logged (limit %d lines/s)",
                    self.suppressed,
                    self.per_s,
                    extra={"suppressed": self.suppressed},
                )
            self._second, self._lines, self.suppressed = second, 0, 0
        if self._lines >= self.per_s:
            self.suppressed += 1
            return
        self._lines += 1
        rejections.info(
            "rejected %s %s device=%s code=%s client=%s: %s",
            dialect,
            endpoint,
            device or "-",
            code,
            client or "-",
            reason,
            extra={
                "dialect": dialect,
                "endpoint": endpoint,
                "device": device or None,
                "code": code,
                "reason": reason,
                "client": client or None,
            },
        )


log_rejection = RejectionLog()
