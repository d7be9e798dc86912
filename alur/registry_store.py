"""The agency registry and agency credentials in NATS KV, watched live by the services."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from alur.logs import get_logger
from alur.registry import Agency, AgencyRegistry
from alur.security import token_digest

REGISTRY_BUCKET = "registry"
CREDENTIALS_BUCKET = "credentials"
log = get_logger("alur.registry")

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
            self._kv = await self.js.key_value(REGISTRY_BUCKET)
        return self._kv

    async def load(self) -> AgencyRegistry:
        kv = await self.kv()
        agencies = []
        try:
            keys = await kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            keys = []
        for key in keys:
            with contextlib.suppress(KeyNotFoundError):
                entry = await kv.get(key)
                if entry.value:
                    agencies.append(Agency.model_validate_json(entry.value))
        self.current = AgencyRegistry.of(agencies)
        return self.current

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
        """Follow the bucket in the background; an invalid entry is logged and skipped, never applied."""
        kv = await self.kv()
        watcher = await kv.watchall()
        self._task = asyncio.create_task(self._follow(watcher))
        await asyncio.wait_for(self.ready.wait(), timeout=10)

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        agencies: dict[str, Agency] = {}
        async for entry in watcher:
            if entry is None:
                await self._publish(agencies)
                self.ready.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                agencies.pop(entry.key, None)
            else:
                try:
                    agencies[entry.key] = Agency.model_validate_json(entry.value)
                except ValueError:
                    log.error("invalid registry entry ignored", agency=entry.key)
                    continue
            if self.ready.is_set():
                await self._publish(agencies)

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
            self._kv = await self.js.key_value(CREDENTIALS_BUCKET)
        return self._kv

    async def put(self, agency_id: str, public: dict[str, str]) -> None:
        """Record an agency's public NKey and the digest of its token, indexed both ways."""
        kv = await self.kv()
        await kv.put(f"agency.{agency_id}", json.dumps(public).encode())
        await kv.put(f"token.{public['token_sha256']}", agency_id.encode())

    async def agency_for_token(self, token: str, registry: AgencyRegistry) -> str | None:
        """The enabled agency whose HTTP token this is, or None."""
        try:
            entry = await (await self.kv()).get(f"token.{token_digest(token)}")
        except KeyNotFoundError:
            return None
        agency = registry.get(entry.value.decode()) if entry.value else None
        return agency.id if agency and agency.enabled else None
