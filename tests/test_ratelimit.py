"""The token bucket behind every HTTP door's rate limit (issue 10.6), on a fake clock."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.ratelimit import RateLimiter, retry_after


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_429_with_the_wait_then_it_recovers() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=30, rate=5.0, clock=clock)
    assert [limiter.take("token:a") for _ in range(30)] == [None] * 30
    wait = limiter.take("token:a")
    assert wait == pytest.approx(0.2) and retry_after(wait) == "1"
    assert limiter.take("token:b") is None, "another caller is not affected"
    clock.now += 0.2
    assert limiter.take("token:a") is None and limiter.take("token:a") is not None
    clock.now += 60
    assert [limiter.take("token:a") for _ in range(30)] == [None] * 30, "refills to the burst, not past it"
    assert limiter.take("token:a") is not None


def test_waiting_peeks_without_taking() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=2, rate=0.5, clock=clock)
    assert limiter.waiting("addr:x") is None
    limiter.take("addr:x")
    limiter.take("addr:x")
    assert limiter.waiting("addr:x") == pytest.approx(2.0)
    assert limiter.waiting("addr:x") == pytest.approx(2.0), "peeking spends nothing"
    assert retry_after(2.0) == "2" and retry_after(2.01) == "3" and retry_after(0.0) == "1"


def test_the_table_of_callers_is_bounded() -> None:
    limiter = RateLimiter(burst=1, rate=1.0, max_keys=3, clock=Clock())
    for key in ("a", "b", "c", "d"):
        limiter.take(key)
    assert len(limiter._buckets) == 3 and "a" not in limiter._buckets


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(burst=0, rate=1.0)
    with pytest.raises(ValueError):
        RateLimiter(burst=1, rate=0.0)


@given(st.integers(1, 50), st.floats(0.1, 100.0), st.lists(st.floats(0.0, 5.0), max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(burst: int, rate: float, gaps: list[float]) -> None:
    clock = Clock()
    limiter = RateLimiter(burst=burst, rate=rate, clock=clock)
    allowed = 0
    for gap in gaps:
        clock.now += gap
        wait = limiter.take("k")
        if wait is None:
            allowed += 1
        else:
            assert wait > 0
        assert allowed <= burst + rate * (clock.now - 100.0) + 1e-6
