"""Timers: a fired escalation timer is carried out, and an auditor repairs lost timers and facts."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

from faststream.nats import NatsMessage

from alur.bus import publish, publish_raw
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import EscalationData
from contracts.vocab import ReferralStatus
from services.notify.escalation import arm, on_fire
from services.notify.service import AUDIT_EVERY, log, now, registry, service
from services.notify.state import Timer
from services.notify.store import CAS_ATTEMPTS, StateConflict, bucket, load, load_or_rebuild, publish_status, save, schedule

REPUBLISH_WITHIN = timedelta(minutes=5)  # well inside the streams' 10-minute duplicate window


async def _fire(timer: Timer) -> bool:
    """Carry out one fired timer; False when it was stale. A concurrent write makes it decide again."""
    for _ in range(CAS_ATTEMPTS):
        loaded = await load_or_rebuild(timer.referral_id)
        if loaded is None:
            return False
        state, revision = loaded
        secretariat = registry().secretariat()
        step = on_fire(state, timer, now(), coordinators=[secretariat.id] if secretariat else [])
        if step is None:
            return False
        try:
            await save(step.state, revision)
        except StateConflict:
            continue
        break
    else:
        raise StateConflict(f"referral {timer.referral_id} kept changing concurrently")
    event = CloudEvent[EscalationData].build(
        type=f"alur.referral.{step.data.status}.v1", source="alur/notify", subject=state.referral_id,
        data=step.data, id=derived_id("referral.escalation", timer.token),
    )
    await publish(service.js, subjects.referral(step.data.status, state.agency), event)
    service.count(f"escalation_{step.action}")
    log.warning("referral escalated", referral_id=state.referral_id, case_id=state.case_id, agency=state.agency,
                overdue=step.purpose, escalation_level=step.level, action=step.action, target=step.recipient)
    if step.expired:
        await publish_status(step.state)
    await schedule(step.state)
    return True


@service.subscriber("notify-timers")
async def on_timer(msg: NatsMessage) -> None:
    """A timer fired: escalate if the referral still waits for what the timer guards, else do nothing."""
    timer = Timer.model_validate_json(msg.raw_message.data)
    if not await _fire(timer):
        log.info("stale timer ignored", referral_id=timer.referral_id, purpose=timer.purpose)


async def audit_once() -> int:
    """Find open referrals whose timer is missing or overdue and repair them; returns how many."""
    kv = await bucket()
    try:
        keys = await kv.keys()
    except Exception:
        return 0
    repaired = 0
    at = now()
    grace = timedelta(seconds=max(1.0, 5 * AUDIT_EVERY))
    for key in keys:
        loaded = await load(key)
        if loaded is None:
            continue
        state, revision = loaded
        last = state.history[-1]
        if last.status is not ReferralStatus.REQUESTED and at - last.at < REPUBLISH_WITHIN:
            repaired += await publish_status(state, recovering=True)
        if state.status.terminal:
            continue
        planned = arm(state, at)
        timer = state.escalation.timer
        if timer is None and planned.escalation.timer is not None:
            with contextlib.suppress(StateConflict):
                await save(planned, revision)
                await schedule(planned)
                repaired += 1
        elif timer is not None and timer.fire_at + grace < at:
            await publish_raw(service.js, subjects.timer_fired(state.referral_id, timer.purpose),
                              timer.model_dump_json().encode(), msg_id=f"audit:{timer.token}")
            repaired += 1
    if repaired:
        service.count("auditor_repaired", repaired)
        log.warning("auditor repaired referrals (lost timers or facts)", repaired=repaired)
    return repaired


async def run_auditor() -> None:
    """Run `audit_once` every AUDIT_EVERY seconds until cancelled; a failed pass is logged, not fatal."""
    while True:
        await asyncio.sleep(AUDIT_EVERY)
        try:
            await audit_once()
        except Exception as exc:
            log.error("auditor pass failed", error_type=type(exc).__name__)
