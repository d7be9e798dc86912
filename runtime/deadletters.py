"""Nothing stops silently at `max_deliver`: JetStream's max-deliveries advisories become dead letters.

A handler that fails dead-letters the message itself on its last delivery (`bus.reliability`). One that
never reaches a verdict — its process killed on every delivery, or a hang past `ack_wait` — leaves only
the server's advisory. The ADVISORIES stream keeps those, and each service relays the ones about its own
consumers (its `<service>-advisories` consumer) into `alur.dlq.<stream>`, named the same way, so the
two paths never make two dead letters and `alur dlq replay` brings either back.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError

from runtime.bus import dead_letter
from runtime.message import Message

if TYPE_CHECKING:
    from runtime.app import ServiceApp


class DeadLetterRelay:
    """Turns the max-deliveries advisories of one service's consumers into dead letters."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app

    def register(self) -> None:
        durable = f"{self.app.name}-advisories"
        if any(c.durable == durable for c in self.app.consumers):
            self.app.subscriber(durable)(self.on_advisory)

    async def on_advisory(self, msg: Message) -> None:
        """One `io.nats.jetstream.advisory.v1.max_deliver`: the message it names becomes a dead letter."""
        advisory = json.loads(msg.raw_message.data)
        stream, consumer, seq = advisory["stream"], advisory["consumer"], int(advisory["stream_seq"])
        try:
            subject = (await self.app.js.get_msg(stream, seq)).subject or ""
        except NotFoundError:
            subject = ""  # gone meanwhile (its stream's retention): the dead letter still says where it was
        deliveries = int(advisory.get("deliveries", 0))
        error = f"no verdict after {deliveries} deliveries (the handler crashed or outlived ack_wait each time)"
        await dead_letter(self.app.js, service=self.app.name, stream=stream, consumer=consumer, subject=subject,
                          stream_seq=seq, deliveries=deliveries, error=error)
        self.app.log.error("dead-lettered from a max-deliveries advisory", consumer=consumer, stream_seq=seq,
                           deliveries=deliveries)
