"""Per-device rate limiting: a token bucket per device, kept in memory."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}  # device -> (tokens, last refill)

    def allow(self, device_id: int, rate: float | None = None) -> bool:
        rate = self.rate if rate is None else rate
        if rate <= 0:
            return True
        burst = max(self.burst, rate) if rate == self.rate else max(rate * 2, 1.0)
        now = time.monotonic()
        tokens, last = self._buckets.get(device_id, (burst, now))
        tokens = min(burst, tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[device_id] = (tokens, now)
            return False
        self._buckets[device_id] = (tokens - 1.0, now)
        if len(self._buckets) > 200_000:
            self._evict(now)
        return True

    def _evict(self, now: float) -> None:
        """Forget devices idle long enough that their bucket is full again."""
        stale = [d for d, (_, last) in self._buckets.items() if now - last > 60]
        for d in stale:
            del self._buckets[d]
