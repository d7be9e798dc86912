"""The agency registry and agency credentials in NATS KV, watched live by the services."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts.buckets import Bucket
from contracts.records import Agency, AgencyCredential
from domain.registry import AgencyRegistry
from runtime.bus import KV_OPERATION, kv_snapshot
from runtime.logs import get_logger
from runtime.security import token_digest

log = get_logger("domain.registry")

Listener = Callable[[AgencyRegistry], Awaitable[None] | None]


class RegistryStore:
    """Read, write and watch the `registry` bucket; `current` is always the latest valid registry."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self.current = AgencyRegistry()
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[Listener] = []
        self.ready = asyncio.Event()

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(Bucket.REGISTRY)
        return self._kv

    async def load(self) -> AgencyRegistry:
        """The whole registry as the bucket holds it now (an invalid entry is logged and left out)."""
        await self.kv()
        entries, _ = await kv_snapshot(self.js, Bucket.REGISTRY)
        self.current = AgencyRegistry(agencies=self._valid(entries))
        return self.current

    @staticmethod
    def _valid(entries: dict[str, bytes]) -> dict[str, Agency]:
        agencies = {}
        for key, value in entries.items():
            try:
                agencies[key] = Agency.model_validate_json(value)
            except ValueError:
                log.error("invalid registry entry ignored", agency=key)
        return agencies

    async def put(self, agency: Agency) -> None:
        await (await self.kv()).put(agency.id, agency.model_dump_json().encode())

    async def seed(self, registry: AgencyRegistry) -> list[str]:
        """Add the profile's agencies that the bucket does not hold yet; live changes are never overwritten."""
        kv = await self.kv()
        added = []
        for agency in registry.agencies.values():
            with contextlib.suppress(KeyWrongLastSequenceError):
                await kv.create(agency.id, agency.model_dump_json().encode())
                added.append(agency.id)
        return added

    def on_change(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def start_watch(self) -> None:
        """Load the whole registry, then follow every later change in the background.

        The snapshot is complete before `ready` is set (a service never starts on a partial registry);
        the watch then starts just after the snapshot's last revision. An invalid entry is logged and
        skipped, never applied.
        """
        await self.kv()
        entries, last = await kv_snapshot(self.js, Bucket.REGISTRY)
        agencies = self._valid(entries)
        await self._publish(agencies)
        self.ready.set()
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1)
        sub = await self.js.subscribe(f"$KV.{Bucket.REGISTRY}.>", stream=f"KV_{Bucket.REGISTRY}",
                                      ordered_consumer=True, config=config)
        self._task = asyncio.create_task(self._follow(sub, agencies))

    async def _follow(self, sub: Any, agencies: dict[str, Agency]) -> None:
        prefix = f"$KV.{Bucket.REGISTRY}."
        try:
            async for msg in sub.messages:
                key = msg.subject[len(prefix):]
                if (msg.headers or {}).get(KV_OPERATION) in ("DEL", "PURGE") or not msg.data:
                    agencies.pop(key, None)
                else:
                    try:
                        agencies[key] = Agency.model_validate_json(msg.data)
                    except ValueError:
                        log.error("invalid registry entry ignored", agency=key)
                        continue
                await self._publish(agencies)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _publish(self, agencies: dict[str, Agency]) -> None:
        self.current = AgencyRegistry(agencies=dict(agencies))
        for listener in self._listeners:
            result = listener(self.current)
            if asyncio.iscoroutine(result):
                try:
                    await result
                except Exception as exc:
                    log.error("registry listener failed", error=type(exc).__name__)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


class CredentialStore:
    """Public NKey and token digest per agency: what a service needs to know who is calling."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._kv: KeyValue | None = None

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self.js.key_value(Bucket.CREDENTIALS)
        return self._kv

    async def credential(self, agency_id: str) -> AgencyCredential | None:
        try:
            entry = await (await self.kv()).get(f"agency.{agency_id}")
        except KeyNotFoundError:
            return None
        return AgencyCredential.model_validate_json(entry.value) if entry.value else None

    async def put(self, agency_id: str, credential: AgencyCredential) -> None:
        """Record an agency's public NKey and the digest of its token, indexed both ways; a replaced token's
        index entry is removed, so a rotated token stops working at once."""
        kv = await self.kv()
        previous = await self.credential(agency_id)
        if previous == credential:
            return
        await kv.put(f"agency.{agency_id}", credential.model_dump_json().encode())
        await kv.put(f"token.{credential.token_sha256}", agency_id.encode())
        if previous is not None and previous.token_sha256 != credential.token_sha256:
            with contextlib.suppress(KeyNotFoundError):
                await kv.delete(f"token.{previous.token_sha256}")

    async def agency_for_token(self, token: str, registry: AgencyRegistry) -> str | None:
        """The enabled agency whose current HTTP token this is, or None.

        Looked up by the token's digest (only digests are stored), then checked against the agency's own
        record in constant time: a token index entry left behind by a rotation never opens the door.
        """
        digest = token_digest(token)
        try:
            entry = await (await self.kv()).get(f"token.{digest}")
        except KeyNotFoundError:
            return None
        agency = registry.get(entry.value.decode()) if entry.value else None
        if agency is None or not agency.enabled:
            return None
        current = await self.credential(agency.id)
        return agency.id if current and hmac.compare_digest(current.token_sha256, digest) else None
