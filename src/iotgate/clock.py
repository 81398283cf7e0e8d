"""Wall-clock time in the unit every stored timestamp uses."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Milliseconds since the Unix epoch."""
    return int(time.time() * 1000)
