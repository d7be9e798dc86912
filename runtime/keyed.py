"""One handler at a time per key (a case, a referral) inside one process."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class KeyedLocks:
    """An `asyncio.Lock` per key, made on first use and dropped when no handler holds or waits for it.

    Compare-and-set on the shared record stays the guard between processes and instances; this only
    keeps the concurrent handlers of one process (a fetched batch runs concurrently) from colliding on
    the same record and spending their deliveries on retries.
    """

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)
