"""Notify: delivers every referral, tracks it to an outcome, and escalates when an agency is silent.

The decisions are pure (`lifecycle`, `state`, `escalation`, `webhook`); the edges are `store` (state
in KV, facts on REFERRALS, timers), `delivery`, `responses` and `timers`. This module wires them into
one service. Run alone: `faststream run services.notify.app:app` or `alur serve notify`.
"""

from __future__ import annotations

import asyncio
import contextlib

from alur.provision import ensure_agency_consumers
from alur.registry import AgencyRegistry
from services.notify.delivery import breakers, close_http, on_delivery, on_requested, open_http
from services.notify.responses import on_response, parse_response, post_response
from services.notify.service import log, policy, service
from services.notify.store import (
    StateConflict,
    load,
    load_or_rebuild,
    mark_delivered,
    publish_status,
    rebuild,
    save,
    schedule,
    track,
    transition,
)
from services.notify.timers import audit_once, on_timer, run_auditor

__all__ = [
    "StateConflict", "app", "audit_once", "breakers", "broker", "load", "load_or_rebuild", "log", "mark_delivered",
    "on_delivery", "on_requested", "on_response", "on_timer", "parse_response", "policy", "post_response",
    "publish_status", "rebuild", "save", "schedule", "service", "track", "transition",
]

broker = service.broker
app = service.app
_tasks: list[asyncio.Task[None]] = []


async def _agencies_changed(registry: AgencyRegistry) -> None:
    """Give every enabled agency its durable consumer, at start and whenever the registry changes."""
    created = await ensure_agency_consumers(service.js, service.topology, [a for a in registry.agencies.values() if a.enabled])
    for durable, what in created.items():
        if what != "unchanged":
            log.info("agency consumer provisioned", consumer=durable, what=what)


@service.on_started
async def _start() -> None:
    await open_http()
    assert service.registry_store is not None
    service.registry_store.on_change(_agencies_changed)
    await _agencies_changed(service.registry_store.current)
    _tasks.append(asyncio.create_task(run_auditor()))


@service.on_stopping
async def _stop() -> None:
    for task in _tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await close_http()
