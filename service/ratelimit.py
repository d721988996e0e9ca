"""Token buckets: per socket for sends, per client and per name for login attempts."""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBucket:
    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = float(burst)
        self.stamp = time.monotonic()

    def wait_ms(self) -> int:
        """0 when a token is there; else how many milliseconds until one is.

        A rate of 0 turns limiting off."""
        if self.rate <= 0:
            return 0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            return 0
        return max(1, int((1 - self.tokens) / self.rate * 1000))

    def take(self) -> int:
        """Like `wait_ms`, but takes the token when there is one."""
        wait = self.wait_ms()
        if wait == 0 and self.rate > 0:
            self.tokens -= 1
        return wait


class KeyedLimiter:
    """One bucket per key, the least recently used forgotten past `max_keys` (bounded memory).

    For login attempts: `wait_ms` before trying, `take` after a failure, so that only
    failures are counted."""

    def __init__(self, per_minute: int, max_keys: int = 100_000) -> None:
        self._rate = per_minute / 60.0
        self._burst = per_minute
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def wait_ms(self, key: str) -> int:
        return self._bucket(key).wait_ms()

    def take(self, key: str) -> int:
        return self._bucket(key).take()
