"""Each service instance says every few seconds that it runs, where it answers and whether it is ready.

The bucket `instances` keeps the last word of each instance (`<service>.<instance>`) and drops it once
the instance falls silent for the bucket's age limit; `alur status` lists what it holds. A stopping
instance deletes its own entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from contracts.buckets import Bucket
from contracts.records import InstanceRecord

if TYPE_CHECKING:
    from runtime.app import ServiceApp

HEARTBEAT_EVERY = 5.0


def instance_id(host: str | None = None, pid: int | None = None) -> str:
    """This process as a KV key token: host name and pid, anything else than letters, digits, `_`, `-` dropped."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", host or socket.gethostname())[:48] or "host"
    return f"{name}-{pid or os.getpid()}"


class Heartbeat:
    """Writes this instance's `InstanceRecord` every `HEARTBEAT_EVERY` seconds while the service runs."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        self.instance = instance_id()
        self.key = f"{app.name}.{self.instance}"
        self._task: asyncio.Task[None] | None = None

    def http(self) -> str:
        host, port = getattr(self.app.settings, f"{self.app.name}_http", ("", 0))
        return f"{host}:{port}"

    async def beat(self) -> None:
        problems = await self.app.readiness()
        record = InstanceRecord(service=self.app.name, instance=self.instance, http=self.http(), ready=not problems,
                                problems=problems, at=datetime.now(UTC))
        await (await self.app.js.key_value(Bucket.INSTANCES)).put(self.key, record.model_dump_json().encode())

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # the broker may be away: the next beat tries again
                self.app.log.debug("heartbeat not written", error_type=type(exc).__name__)
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def start(self) -> None:
        """Beat from now on (the service calls it once its subscribers consume)."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop beating and remove this instance's entry."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await asyncio.wait_for((await self.app.js.key_value(Bucket.INSTANCES)).delete(self.key), 2.0)
