"""A token bucket per caller: how fast one caller may use an HTTP door before it is told to wait.

Each key (an agency's token digest, or the address of a caller without a valid token) has a bucket of
`burst` tokens that refills at `rate` per second; a request takes one, and a request that finds none is
refused with the seconds until the next token (`Retry-After`). Pure apart from the clock, which is
injected. The table of buckets is bounded: past `max_keys` the least recently used bucket is forgotten
(it would have refilled by then anyway, unless it is being hammered from very many keys at once).

Starlette has no rate limiting of its own; `limits` (behind `slowapi`) offers fixed and moving windows
with a storage layer and `aiolimiter` waits instead of refusing: a bucket is these forty lines.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """`take(key)`: None if the caller may go on, else the seconds it must wait; `waiting(key)` peeks."""

    def __init__(self, burst: int, rate: float, *, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if burst < 1 or rate <= 0 or max_keys < 1:
            raise ValueError("burst >= 1, rate > 0 and max_keys >= 1 are required")
        self.burst, self.rate, self.max_keys = burst, rate, max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, key: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
            self._buckets.move_to_end(key)
        return bucket

    def _wait(self, bucket: _Bucket) -> float:
        return (1.0 - bucket.tokens) / self.rate

    def waiting(self, key: str) -> float | None:
        """Seconds `key` must wait before its next request, or None if it may go now (takes nothing)."""
        bucket = self._bucket(key)
        return None if bucket.tokens >= 1.0 else self._wait(bucket)

    def take(self, key: str) -> float | None:
        """Take one request's token: None if there was one, else the seconds until there is."""
        bucket = self._bucket(key)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return self._wait(bucket)


def retry_after(seconds: float) -> str:
    """A `Retry-After` header value: whole seconds, at least 1, never sooner than the wait."""
    return str(max(1, math.ceil(seconds)))
