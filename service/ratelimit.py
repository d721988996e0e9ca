"""Token buckets: per socket for sends; per key (a client address, a name, a user) for
logins, registrations, REST writes and room creations."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence


class RateLimited(Exception):
    """Refused by a limit; nothing was done. Try again after `retry_after_ms`."""

    def __init__(
        self, retry_after_ms: int, detail: str = "too many requests; try again later"
    ) -> None:
        super().__init__(f"{detail} (retry after {retry_after_ms} ms)")
        self.retry_after_ms = retry_after_ms
        self.detail = detail

    @property
    def retry_after_seconds(self) -> int:
        """For a `Retry-After` header: whole seconds, rounded up, at least 1."""
        return max(1, -(-self.retry_after_ms // 1000))


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

    def give_back(self) -> None:
        """Return a token taken for work that then did not happen (never above the burst)."""
        if self.rate > 0:
            self.tokens = min(self.burst, self.tokens + 1)


class KeyedLimiter:
    """One bucket per key, the least recently used forgotten past `max_keys` (bounded memory).

    Work whose cost is known only afterwards (a login that fails, a room that turns out to
    exist) takes its token *before* it starts and gives it back when it did not count: a
    check before and a take after would let any number of concurrent requests pass the
    check together."""

    def __init__(self, rate: float, burst: int, max_keys: int = 100_000) -> None:
        """`rate` tokens a second up to `burst`; a rate of 0 turns limiting off."""
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @classmethod
    def per(cls, count: int, seconds: float, max_keys: int = 100_000) -> KeyedLimiter:
        """`count` every `seconds` per key, all of them at once if need be."""
        return cls(count / seconds, count, max_keys)

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def __len__(self) -> int:
        return len(self._buckets)

    def wait_ms(self, key: str) -> int:
        return self._bucket(key).wait_ms() if self.enabled else 0

    def take(self, key: str) -> int:
        return self._bucket(key).take() if self.enabled else 0

    def give_back(self, key: str) -> None:
        if self.enabled:
            self._bucket(key).give_back()


Limits = Sequence[tuple[KeyedLimiter, str]]


def take_all(limits: Limits) -> int:
    """Take one token from each (limiter, key), or from none: 0 when all were taken, else
    the wait of the first that refused (the ones after it are not even looked at, so a
    refused request adds no key to them)."""
    for limiter, key in limits:
        wait = limiter.wait_ms(key)
        if wait:
            return wait
    for limiter, key in limits:
        limiter.take(key)
    return 0


def give_back_all(limits: Limits) -> None:
    for limiter, key in limits:
        limiter.give_back(key)
