"""Timers: a fired escalation timer is carried out, and an auditor repairs lost timers and facts."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

from pydantic import ValidationError

from contracts import subjects
from contracts.buckets import Bucket
from contracts.catalog import REFERRAL_ESCALATED, REFERRAL_REMINDED
from contracts.envelope import CloudEvent, derived_id
from contracts.events import EscalationData
from contracts.vocab import ReferralStatus
from runtime.bus import kv_entries, publish, publish_raw
from runtime.message import Message
from services.notify.context import NotifyContext
from services.notify.escalation import EscalationStep, arm, on_fire
from services.notify.state import ReferralState, StateGlance, Timer
from services.notify.store import ReferralStore, StateConflict

REPUBLISH_WITHIN = timedelta(minutes=5)  # well inside the streams' 10-minute duplicate window


def fact_may_be_lost(state: StateGlance | ReferralState, at: datetime) -> bool:
    """Its last transition is recent enough that its fact may not be on the stream yet."""
    last = state.history[-1]
    return last.status is not ReferralStatus.REQUESTED and at - last.at < REPUBLISH_WITHIN


def timer_overdue(state: StateGlance | ReferralState, at: datetime, grace: timedelta) -> bool:
    """Its armed timer should have fired more than `grace` ago."""
    timer = state.escalation.timer
    return timer is not None and timer.fire_at + grace < at


def may_need_repair(glance: StateGlance, at: datetime, grace: timedelta) -> bool:
    """Whether the auditor must look at this referral's full state: its fact may have been lost, or it is
    open with no timer armed or one overdue. False means the full state would need no repair either."""
    if fact_may_be_lost(glance, at):
        return True
    return not glance.status.terminal and (glance.escalation.timer is None or timer_overdue(glance, at, grace))


class Timers:
    """Fired timers, and the auditor that finds lost ones."""

    def __init__(self, ctx: NotifyContext, store: ReferralStore) -> None:
        self.ctx = ctx
        self.store = store
        self.log = ctx.log
        self._auditor: asyncio.Task[None] | None = None

    def register(self) -> None:
        self.ctx.app.subscriber("notify-timers")(self.on_timer)
        self.ctx.app.on_started(self._start_auditor)
        self.ctx.app.on_stopping(self._stop_auditor)

    async def on_timer(self, msg: Message) -> None:
        """A timer fired: escalate if the referral still waits for what the timer guards, else do nothing."""
        timer = Timer.model_validate_json(msg.raw_message.data)
        if msg.raw_message.metadata.num_delivered == 1:
            self.ctx.app.metrics.timer_late((self.ctx.now() - timer.fire_at).total_seconds())
        if not await self.fire(timer):
            self.log.info("stale timer ignored", referral_id=timer.referral_id, purpose=timer.purpose)

    async def fire(self, timer: Timer) -> bool:
        """Carry out one fired timer; False when it was stale. A concurrent write makes it decide again."""
        steps: list[EscalationStep] = []

        def escalate(state: ReferralState) -> ReferralState | None:
            step = on_fire(state, timer, self.ctx.now(), coordinators=self.ctx.secretariat_ids())
            steps[:] = [step] if step else []
            return step.state if step else None

        moved = await self.store.update(timer.referral_id, escalate, holder=timer.agency)
        if moved is None:
            return False
        step = steps[0]
        event = CloudEvent[EscalationData].build(
            type=REFERRAL_REMINDED if step.data.status == "reminded" else REFERRAL_ESCALATED, source="alur/notify",
            subject=moved.referral_id, data=step.data, id=derived_id("referral.escalation", timer.token),
        )
        await publish(self.ctx.js, subjects.referral(step.data.status, moved.agency), event)
        self.ctx.app.metrics.escalation(moved.agency_type.value, step.level, step.action)
        self.log.warning("referral escalated", referral_id=moved.referral_id, case_id=moved.case_id,
                         agency=moved.agency, overdue=step.purpose, escalation_level=step.level, action=step.action,
                         target=step.recipient)
        if step.expired:
            await self.store.publish_status(moved)
        await self.store.schedule(moved)
        return True

    async def audit_once(self) -> int:
        """Find open referrals whose timer is missing or overdue, and recent facts not on the stream, and
        repair them; returns how many. One pass walks the whole bucket once, entry by entry: it holds one
        state at a time, and parses a state in full only when its glance says it may need a repair."""
        facts = timers = 0
        grace = timedelta(seconds=max(1.0, 5 * self.ctx.audit_every))
        async with contextlib.aclosing(kv_entries(self.ctx.js, Bucket.REFERRALS)) as entries:
            async for entry in entries:
                if entry.value is None:
                    continue
                at = self.ctx.now()
                try:
                    if not may_need_repair(StateGlance.model_validate_json(entry.value), at, grace):
                        continue
                    state = ReferralState.model_validate_json(entry.value)
                except ValidationError:
                    continue
                fact, timer = await self._repair(state, at, grace)
                facts, timers = facts + fact, timers + timer
        if facts or timers:
            self.ctx.app.metrics.repaired("fact", facts)
            self.ctx.app.metrics.repaired("timer", timers)
            self.log.warning("auditor repaired referrals (lost timers or facts)", repaired=facts + timers,
                             facts=facts, timers=timers)
        return facts + timers

    async def _repair(self, state: ReferralState, at: datetime, grace: timedelta) -> tuple[int, int]:
        """Repair one referral: state its recent fact again, arm a missing timer or fire an overdue one;
        returns (facts, timers) repaired."""
        facts = timers = 0
        if fact_may_be_lost(state, at):
            facts += await self.store.publish_status(state, recovering=True)
        if state.status.terminal:
            return facts, timers
        timer = state.escalation.timer
        if timer is None and arm(state, at).escalation.timer is not None:
            with contextlib.suppress(StateConflict):
                moved = await self.store.update(state.referral_id, lambda s: arm(s, at)
                                                if s.escalation.timer is None else None)
                if moved is not None:
                    await self.store.schedule(moved)
                    timers += 1
        elif timer is not None and timer_overdue(state, at, grace):
            await publish_raw(self.ctx.js, subjects.timer_fired(state.referral_id, timer.purpose),
                              timer.model_dump_json().encode(), msg_id=f"audit:{timer.token}")
            timers += 1
        return facts, timers

    async def _run_auditor(self) -> None:
        """Run `audit_once` every `audit_every` seconds until cancelled; a failed pass is logged, not fatal."""
        while True:
            await asyncio.sleep(self.ctx.audit_every)
            try:
                await self.audit_once()
            except Exception as exc:
                self.log.error("auditor pass failed", error_type=type(exc).__name__)

    async def _start_auditor(self) -> None:
        self._auditor = asyncio.create_task(self._run_auditor())

    async def _stop_auditor(self) -> None:
        if self._auditor:
            self._auditor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._auditor
