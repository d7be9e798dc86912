"""Messages a consumer is sure to drop, acked where they are fetched, before FastStream's path.

A consumer whose filter brings it every event of a kind though it acts on few (notify's webhook deliveries
and email notices see every new referral) would pay FastStream's whole per-message path for each one it
drops unread: a worker slot and task, the context scopes, every middleware, the parse, the dependency
injection, then the ack. A `Skip` test looks at the raw message (its subject, nothing parsed); a message
it skips is acked at once, as the handler's return would have acked it, and never enters that path. Every
other message takes the path unchanged: its ack, nak with delay, redelivery, `max_deliver` and dead letter.
A test that raises hands the message on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from faststream._internal.endpoint.subscriber.mixins import ConcurrentMixin
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

Skip = Callable[[Msg], bool]
"""True for a raw message the consumer's handler would drop at once, without reading or writing anything."""


def handover_attribute(subscriber: Any) -> str:
    """The subscriber's method that its pull loop hands each fetched message to: the worker queue's
    `_put_msg` for a subscriber with `max_workers`, else `consume` (FastStream 0.7's pull subscribers)."""
    name = "_put_msg" if isinstance(subscriber, ConcurrentMixin) else "consume"
    if not callable(getattr(subscriber, name, None)):
        raise TypeError(f"{type(subscriber).__name__} has no {name}: FastStream's pull loop changed")
    return name


def skip_before_handling(subscriber: Any, skip: Skip) -> None:
    """Make `subscriber` ack the messages `skip` says it drops, before FastStream handles them. Call it
    before the broker starts (the pull loop takes its handover when the subscription is created)."""
    name = handover_attribute(subscriber)
    handover = getattr(subscriber, name)

    async def take(msg: Msg) -> Any:
        try:
            skipped = skip(msg)
        except Exception:
            skipped = False
        if not skipped:
            return await handover(msg)
        with contextlib.suppress(NatsError):  # not acked: it comes back after `ack_wait` and is skipped then
            await msg.ack()
        return None

    setattr(subscriber, name, take)
