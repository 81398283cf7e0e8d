"""Per-device rate limiting: a token bucket per device, kept in memory."""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}  # device -> (tokens, last refill)
        self._default_burst = max(self.burst, rate_per_s)  # the bucket size at the default rate

    def allow(self, device_id: int, rate: float | None = None) -> bool:
        if rate is None or rate == self.rate:
            rate = self.rate
            burst = self._default_burst
        else:
            burst = max(rate * 2, 1.0)
        if rate <= 0:
            return True
        now = time.monotonic()
        buckets = self._buckets
        bucket = buckets.get(device_id)
        if bucket is None:
            tokens = burst
        else:
            tokens = bucket[0] + (now - bucket[1]) * rate
            if tokens > burst:
                tokens = burst
        if tokens < 1.0:
            buckets[device_id] = (tokens, now)
            return False
        buckets[device_id] = (tokens - 1.0, now)
        if len(buckets) > 200_000:
            self._evict(now)
        return True

    def _evict(self, now: float) -> None:
        """Forget devices idle long enough that their bucket is full again."""
        stale = [d for d, (_, last) in self._buckets.items() if now - last > 60]
        for d in stale:
            del self._buckets[d]
