"""A live view of one KV bucket in a service's memory: walked whole at start, then every change followed.

`BucketFollower` hands each key's value (None once deleted or purged) and revision to the reader's
`apply`, first for every key the bucket holds (`runtime.bus.kv_entries`, one entry at a time), then for
every later write in the order the bucket's stream stored it (an ordered consumer from the sequence after
the walk). What the reader keeps of each value is its own choice. Started from an `on_started` hook, the
walk is done before any subscriber of the service consumes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from runtime.bus import KV_OPERATION, kv_entries, kv_last_seq

Apply = Callable[[str, bytes | None, int], None]
"""What the reader does with one key's latest value (None: the key was deleted or purged) and the stream
sequence (the KV revision) it was stored at."""


class BucketFollower:
    """Walks bucket `bucket` into `apply`, then follows it until stopped."""

    def __init__(self, bucket: str, apply: Apply) -> None:
        self.bucket = bucket
        self.apply = apply
        self._task: asyncio.Task[None] | None = None

    async def start(self, js: JetStreamContext) -> None:
        """Read the bucket whole, then follow it in the background (from the write after the last one read)."""
        last = await kv_last_seq(js, self.bucket)
        async for entry in kv_entries(js, self.bucket):
            self.apply(entry.key, entry.value, entry.seq)
            last = max(last, entry.seq)
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1)
        sub = await js.subscribe(f"$KV.{self.bucket}.>", stream=f"KV_{self.bucket}", ordered_consumer=True,
                                 config=config)
        self._task = asyncio.create_task(self._follow(sub))

    async def _follow(self, sub: Any) -> None:
        prefix = f"$KV.{self.bucket}."
        try:
            async for msg in sub.messages:
                deleted = (msg.headers or {}).get(KV_OPERATION) in ("DEL", "PURGE")
                key, value = msg.subject[len(prefix):], None if deleted else msg.data
                self.apply(key, value, msg.metadata.sequence.stream)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def stop(self) -> None:
        """Stop following (what was read stays as it was)."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
