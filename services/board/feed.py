"""The board's I/O edge on the bus: replay CASES, REFERRALS and routing's case records into the read model
on start, then follow them live, and tell the open pages (`Changes`) whenever the model moved.

Ordered consumers (ephemeral, server-side flow control) read each stream from its first message; nothing
is acknowledged and nothing is written, so a restart simply reads the streams again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from contracts import subjects
from contracts.buckets import Bucket
from runtime.bus import KV_OPERATION, when_available
from runtime.logs import get_logger
from services.board.model import BoardModel

log = get_logger("board.feed")


class Changes:
    """A counter that open pages wait on: each change to the model bumps it and wakes them."""

    def __init__(self) -> None:
        self.version = 0
        self._event = asyncio.Event()

    def bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def after(self, version: int, timeout: float) -> int:
        """Wait until the version passes `version` (or `timeout` seconds); returns the current version."""
        if self.version == version:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        return self.version


@dataclass
class Source:
    """One stream the board follows, and whether its backlog at start has been read."""

    stream: str
    filter_subject: str
    on_message: Callable[[Any], bool]
    deliver_policy: DeliverPolicy = DeliverPolicy.ALL
    target: int = 0
    """The stream's last sequence at start: the backlog is read once a message at or past it arrived."""
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    subscription: Any = None


class Feed:
    """Follows the sources into `model`; `ready` once every backlog was read."""

    def __init__(self, js: JetStreamContext, model: BoardModel, changes: Changes) -> None:
        self.js = js
        self.model = model
        self.changes = changes
        kv_prefix = f"$KV.{Bucket.CASE_REFERRALS.value}."
        self.sources = [
            Source(subjects.CASES_STREAM, "alur.case.>", lambda m: model.apply(m.subject, m.data)),
            Source(subjects.REFERRALS_STREAM, "alur.referral.>",
                   lambda m: model.apply(m.subject, m.data, m.metadata.sequence.stream)),
            Source(f"KV_{Bucket.CASE_REFERRALS.value}", kv_prefix + ">", self._record(kv_prefix),
                   DeliverPolicy.LAST_PER_SUBJECT),
        ]

    def _record(self, prefix: str) -> Callable[[Any], bool]:
        def take(msg: Any) -> bool:
            if (msg.headers or {}).get(KV_OPERATION) in ("DEL", "PURGE") or not msg.data:
                return False
            return self.model.withheld(msg.subject[len(prefix):], msg.data)
        return take

    @property
    def ready(self) -> bool:
        return all(s.caught_up.is_set() for s in self.sources)

    async def start(self) -> None:
        for source in self.sources:
            await self._follow(source)

    async def wait_caught_up(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.caught_up.wait() for s in self.sources)), timeout)
        return self.ready

    async def _follow(self, source: Source) -> None:
        info = await when_available(lambda: self.js.stream_info(source.stream))
        source.target = info.state.last_seq
        if info.state.messages == 0:
            source.caught_up.set()

        async def on_msg(msg: Any) -> None:
            try:
                changed = source.on_message(msg)
            except Exception as exc:  # noqa: BLE001 - one unreadable message must not stop the board
                log.warning("event skipped", stream=source.stream, error_type=type(exc).__name__)
                changed = False
            meta = msg.metadata
            if not source.caught_up.is_set() and (meta.sequence.stream >= source.target or meta.num_pending == 0):
                source.caught_up.set()
                log.info("backlog read", stream=source.stream, last_seq=meta.sequence.stream)
            if changed:
                self.changes.bump()

        source.subscription = await when_available(lambda: self.js.subscribe(
            source.filter_subject, stream=source.stream, ordered_consumer=True,
            deliver_policy=source.deliver_policy, cb=on_msg,
        ))
        if not source.caught_up.is_set():
            asyncio.get_running_loop().create_task(self._check_empty_filter(source))

    async def _check_empty_filter(self, source: Source) -> None:
        """A stream whose messages all lie outside the filter sends nothing: caught up as soon as the
        consumer says nothing is pending."""
        with contextlib.suppress(Exception):
            info = await source.subscription.consumer_info()
            if info.num_pending == 0 and not (info.delivered and info.delivered.stream_seq):
                source.caught_up.set()

    async def stop(self) -> None:
        for source in self.sources:
            if source.subscription is not None:
                with contextlib.suppress(Exception):
                    await source.subscription.unsubscribe()
