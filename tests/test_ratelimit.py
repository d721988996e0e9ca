"""Token buckets and keyed limiters: refill, give back, all-or-nothing takes, bounded keys."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service import ratelimit
from service.ratelimit import KeyedLimiter, RateLimited, TokenBucket, give_back_all, take_all


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The buckets' clock, moved by hand: `clock.now += seconds`."""
    fake = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(ratelimit, "time", SimpleNamespace(monotonic=lambda: fake.now))
    return fake


def test_a_bucket_refills_at_its_rate_up_to_its_burst(clock: SimpleNamespace) -> None:
    """Two tokens, one a second: two takes pass, the third waits 1000 ms; half a second
    later it waits 500 ms; an hour idle refills to the burst, not beyond."""
    bucket = TokenBucket(rate=1, burst=2)
    assert (bucket.take(), bucket.take()) == (0, 0)
    assert bucket.take() == 1000
    clock.now += 0.5
    assert bucket.wait_ms() == 500
    clock.now += 3600
    assert [bucket.take() for _ in range(3)] == [0, 0, 1000]


def test_giving_back_never_passes_the_burst(clock: SimpleNamespace) -> None:
    """A token given back can be taken again; giving back to a full bucket adds nothing."""
    bucket = TokenBucket(rate=1, burst=2)
    bucket.give_back()
    assert [bucket.take() for _ in range(3)] == [0, 0, 1000]
    bucket.give_back()
    assert bucket.take() == 0


def test_a_rate_of_zero_is_no_limit_and_keeps_no_keys() -> None:
    """Rate 0 lets everything through and remembers nobody."""
    limiter = KeyedLimiter(0, 1)
    assert all(limiter.take(f"user{i}") == 0 for i in range(1000))
    limiter.give_back("user1")
    assert len(limiter) == 0


def test_per_spreads_a_count_over_a_period(clock: SimpleNamespace) -> None:
    """`per(3, 3600)`: three at once, then one every 20 minutes."""
    limiter = KeyedLimiter.per(3, 3600)
    assert [limiter.take("k") for _ in range(4)] == [0, 0, 0, 1_200_000]
    clock.now += 1200
    assert limiter.take("k") == 0


def test_keys_are_bounded_the_least_recently_used_forgotten(clock: SimpleNamespace) -> None:
    """Past `max_keys` the least recently used key goes (and starts afresh if it returns)."""
    limiter = KeyedLimiter(1, 1, max_keys=3)
    for key in ("a", "b", "c"):
        assert limiter.take(key) == 0
    assert limiter.wait_ms("a") > 0  # "a" is now the most recently used
    assert limiter.take("d") == 0
    assert len(limiter) == 3
    assert limiter.wait_ms("a") > 0 and limiter.wait_ms("c") > 0
    assert limiter.take("b") == 0  # forgotten, so a fresh bucket


def test_take_all_takes_from_every_limiter_or_from_none(clock: SimpleNamespace) -> None:
    """When one limit refuses, no token is taken from the others, and limiters after the
    refusing one do not even learn the key."""
    first, second, third = KeyedLimiter(1, 2), KeyedLimiter(1, 1), KeyedLimiter(1, 5)
    limits = [(first, "a"), (second, "b"), (third, "c")]
    assert take_all(limits) == 0
    assert take_all(limits) == 1000  # `second` is empty
    assert first.take("a") == 0  # its second token was not taken by the refused call
    assert len(third) == 1
    assert take_all([(second, "b"), (third, "new")]) == 1000
    assert len(third) == 1  # "new" was never looked at
    give_back_all([(second, "b")])
    assert take_all([(second, "b"), (third, "c")]) == 0


@pytest.mark.parametrize(
    ("ms", "seconds"), [(1, 1), (999, 1), (1000, 1), (1001, 2), (59_999, 60), (60_000, 60)]
)
def test_retry_after_rounds_up_to_whole_seconds(ms: int, seconds: int) -> None:
    """A Retry-After never invites the client back before its token is there."""
    assert RateLimited(ms).retry_after_seconds == seconds
