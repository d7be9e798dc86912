"""Refused inputs get a bounded life: once the reporter has been told why (the rejection event), the raw
input (identity and all) is deleted from REPORTS after `retention.refused_inputs` (deploy/topology.yaml).

The deadline is a JetStream message schedule in TIMERS, so it survives restarts like every other timer;
when it fires, intake deletes that one message. Accepted inputs live as long as REPORTS keeps them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from nats.js.errors import NotFoundError

from contracts import subjects
from runtime.app import ServiceApp
from runtime.bus import PUBLISH_TIMEOUT
from runtime.message import Message


class Retention:
    """Schedules and carries out the deletion of refused inputs."""

    def __init__(self, app: ServiceApp, keep_for: timedelta) -> None:
        self.app = app
        self.keep_for = keep_for

    def register(self) -> None:
        self.app.subscriber("intake-retention")(self.on_expired)

    async def forget_later(self, stream_seq: int) -> None:
        """Delete the refused input at REPORTS sequence `stream_seq` after its retention."""
        fire_at = (datetime.now(UTC) + self.keep_for).astimezone(UTC)
        headers = {
            "Nats-Schedule": f"@at {fire_at.isoformat()}",
            "Nats-Schedule-Target": subjects.retention_expired(stream_seq),
            "Nats-Msg-Id": f"forget:{stream_seq}",
        }
        await self.app.js.publish(subjects.retention_schedule(stream_seq), b"{}", headers=headers,
                                  timeout=PUBLISH_TIMEOUT)

    async def on_expired(self, msg: Message) -> None:
        """A refused input's retention ended: delete it (already gone with REPORTS' own max age is fine)."""
        stream_seq = int(msg.raw_message.subject.rsplit(".", 1)[1])
        try:
            await self.app.js.delete_msg(subjects.REPORTS_STREAM, stream_seq)
        except NotFoundError:
            return
        self.app.log.info("refused input deleted at the end of its retention", stream_seq=stream_seq)
