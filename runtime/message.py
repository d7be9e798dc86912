"""The message a consumer's handler takes: FastStream's `NatsMessage`, handed over inside the event loop.

FastStream's own `NatsMessage` annotation is a `Context("message")` field whose `use` is a plain function,
and FastDepends runs a plain function in a worker thread (anyio `to_thread`): one thread hop per message
for what is a dictionary lookup. `Message` is the same field with an async `use`, which FastDepends
awaits in place. Handlers are async (an async `use` cannot serve a sync handler).
"""

from __future__ import annotations

from typing import Annotated, Any

from faststream._internal.context import Context
from faststream.nats.message import NatsMessage


class InLoopContext(Context):
    """FastStream's `Context` field (the class that the public `faststream.Context()` builds), resolved in the
    event loop instead of a worker thread."""

    async def use(self, /, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return super().use(**kwargs)


Message = Annotated[NatsMessage, InLoopContext("message")]
"""Take the consumed message as `msg: Message` (what `faststream.nats.NatsMessage` gives, without the hop)."""
