"""The edge of a referral's state: KV bucket `referrals` (compare-and-set), its facts on REFERRALS, its timer.

Every change goes through `update`: read, decide on that revision, write with compare-and-set, and on a
conflict read and decide again, so no two writers lose each other's change. Every fact goes out once,
with a `Nats-Msg-Id` derived from referral and transition; timers are JetStream message schedules (one
schedule subject per referral, so a new plan replaces the old).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from datetime import UTC, timedelta
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue
from pydantic import ValidationError

from contracts import subjects
from contracts.buckets import Bucket
from contracts.catalog import REFERRAL_ESCALATED, REFERRAL_OUTCOME, referral_status_type
from contracts.envelope import CloudEvent, derived_id
from contracts.events import (
    EscalationData,
    OutcomeData,
    ReferralRequestedData,
    ReferralStatusData,
)
from contracts.records import CaseReferrals
from contracts.vocab import ReferralStatus
from domain.lifecycle import Actor
from runtime.bus import SafeError, key_value, publish, scan, together
from services.notify.context import NotifyContext
from services.notify.escalation import arm
from services.notify.gauges import Written
from services.notify.state import ReferralEvent, ReferralState, apply, fold, new_state

CAS_ATTEMPTS = 5
MAX_STATE_BYTES = 768 * 1024
"""The largest state written: under nats-server's default 1 MiB message limit with room for headers. The
caps in `state` keep a state far below it; this is the last guard, never a truncation."""
REROUTED = frozenset({ReferralStatus.REJECTED, ReferralStatus.REDIRECTED, ReferralStatus.EXPIRED})
_STATUS_VERBS = frozenset(s.value for s in ReferralStatus) - {ReferralStatus.REQUESTED.value}

Change = Callable[[ReferralState], ReferralState | None]
"""What to do to a referral, decided on the revision just read: the new state, or None to change nothing."""


class StateConflict(SafeError):
    """The referral kept changing while we wrote it; the redelivery reads it again."""


class StateTooLarge(SafeError):
    """A state past `MAX_STATE_BYTES`: not written (the change is not applied, and not reported applied)."""


class ReferralStore:
    """Notify's referral states, their facts and their timers."""

    def __init__(self, ctx: NotifyContext, written: Written | None = None) -> None:
        self.ctx = ctx
        self.log = ctx.log
        self.written = written

    async def bucket(self) -> KeyValue:
        """The KV bucket `referrals`, keyed by referral id."""
        return await key_value(self.ctx.js, Bucket.REFERRALS)

    async def load(self, referral_id: str) -> tuple[ReferralState, int] | None:
        """The referral's state and its KV revision (for compare-and-set), or None if KV does not hold it."""
        try:
            entry = await (await self.bucket()).get(referral_id)
        except KeyNotFoundError:
            return None
        return ReferralState.model_validate_json(entry.value), entry.revision

    async def save(self, state: ReferralState, revision: int | None) -> None:
        """Create (revision None) or compare-and-set the state; `StateConflict` if it changed meanwhile."""
        kv = await self.bucket()
        payload = state.model_dump_json().encode()
        if len(payload) > MAX_STATE_BYTES:
            raise StateTooLarge(
                f"referral {state.referral_id} state would be {len(payload)} bytes, over {MAX_STATE_BYTES}")
        if self.written is not None:
            self.written.add(state.referral_id, payload, state)
        try:
            if revision is None:
                await kv.create(state.referral_id, payload)
            else:
                await kv.update(state.referral_id, payload, last=revision)
        except KeyWrongLastSequenceError:
            raise StateConflict(f"referral {state.referral_id} changed concurrently") from None

    async def update(self, referral_id: str, change: Change, *, holder: str | None = None) -> ReferralState | None:
        """Apply `change` with compare-and-set and return the stored state, or None when it changed nothing.

        With `holder` (the agency an answer comes from), a state missing from KV is rebuilt from that
        agency's REFERRALS events first. `change` may raise to refuse; it is called again after a conflict.
        """
        for _ in range(CAS_ATTEMPTS):
            loaded = await (self.load_or_rebuild(referral_id, holder) if holder else self.load(referral_id))
            if loaded is None:
                return None
            state, revision = loaded
            moved = change(state)
            if moved is None or moved is state:
                return None
            try:
                await self.save(moved, revision)
            except StateConflict:
                continue
            return moved
        raise StateConflict(f"referral {referral_id} kept changing concurrently")

    # -------------------------------------------------------------- rebuild

    @staticmethod
    def _event_data(msg: Any, referral_id: str) -> dict[str, Any] | None:
        with contextlib.suppress(ValueError, AttributeError):
            data = json.loads(msg.data).get("data")
            if isinstance(data, dict) and data.get("referral_id") == referral_id:
                return data
        return None

    async def rebuild(self, referral_id: str, agency: str) -> tuple[ReferralState, int] | None:
        """The state of a referral missing from KV, folded from the REFERRALS events of `agency` (the one it
        was sent to) and stored again; None if no request to that agency has this id. Its timer is re-armed."""
        js = self.ctx.js
        events: list[ReferralEvent] = []
        async with contextlib.aclosing(scan(js, subjects.REFERRALS_STREAM, f"{subjects.PREFIX}.referral.*.{agency}")) as msgs:
            async for msg in msgs:
                data = self._event_data(msg, referral_id)
                if data is None:
                    continue
                verb = subjects.parse(msg.subject).verb
                with contextlib.suppress(ValidationError):
                    if verb == "requested":
                        events = [ReferralRequestedData.model_validate(data)]
                    elif not events:
                        continue
                    elif verb in ("reminded", "escalated"):
                        events.append(EscalationData.model_validate(data))
                    elif verb in _STATUS_VERBS:
                        events.append(ReferralStatusData.model_validate(data))
        if not events:
            return None
        state = arm(fold(events, self.ctx.policy), self.ctx.now())
        try:
            await self.save(state, None)
        except StateConflict:
            return await self.load(referral_id)
        await self.schedule(state)
        self.log.warning("referral state rebuilt from REFERRALS", referral_id=referral_id, case_id=state.case_id,
                         agency=state.agency, status=state.status.value, events=len(events))
        return await self.load(referral_id)

    async def load_or_rebuild(self, referral_id: str, agency: str) -> tuple[ReferralState, int] | None:
        """The referral's state from KV, else rebuilt from REFERRALS (KV lost or purged), else None."""
        return await self.load(referral_id) or await self.rebuild(referral_id, agency)

    # -------------------------------------------------------------- facts and timers

    async def publish_status(
        self, state: ReferralState, *, recovering: bool = False, response_id: str | None = None
    ) -> bool:
        """Publish the fact of the state's latest transition, once (the id derives from referral and step).

        Returns whether the fact is new to the stream. `recovering` is the auditor's pass over recent
        transitions: a fact lost in a crash between saving the state and publishing it goes out then,
        and one already published is dropped by JetStream's duplicate window.
        """
        last = state.history[-1]
        data = ReferralStatusData(
            referral_id=state.referral_id, case_id=state.case_id, agency=state.agency, status=last.status,
            reason=last.reason, note=last.note, redirect_to=last.redirect_to, service=state.service,
            agency_type=state.agency_type, at=last.at, response_id=response_id,
        )
        step = f"{state.referral_id}:{last.status.value}:{state.steps}"
        event = CloudEvent[ReferralStatusData].build(
            type=referral_status_type(last.status), source="alur/notify", subject=state.referral_id,
            data=data, id=derived_id("referral.status", step), time=last.at,
        )
        ack = await publish(self.ctx.js, subjects.referral(last.status.value, state.agency), event)
        if ack.duplicate:
            return False
        self._measure(state)
        self.log.info(f"referral {last.status.value}", referral_id=state.referral_id, case_id=state.case_id,
                      agency=state.agency, reason=last.reason, recovered=recovering)
        if last.status.terminal:
            await self._publish_outcome(state)
        return True

    def _measure(self, state: ReferralState) -> None:
        """Count a fact just stated; the agency's first word also times how long it took to answer."""
        last = state.history[-1]
        metrics = self.ctx.app.metrics
        metrics.referral(state.agency_type.value, last.status.value)
        if last.actor == "agency" and sum(1 for h in state.history if h.actor == "agency") == 1:
            metrics.acknowledged(state.agency_type.value, (last.at - state.requested_at).total_seconds())

    async def _publish_outcome(self, state: ReferralState) -> None:
        """Tell the coordinator the referral's structured outcome, and whether the case's loop is closed."""
        secretariat = self.ctx.registry().secretariat()
        if secretariat is None:
            return
        open_left = await self._open_referrals_of(state.case_id)
        data = OutcomeData(
            referral_id=state.referral_id, case_id=state.case_id, agency=state.agency, service=state.service,
            status=state.status, outcome=state.outcome, all_referrals_terminal=not open_left,
            open_referrals=open_left,
        )
        event = CloudEvent[OutcomeData].build(
            type=REFERRAL_OUTCOME, source="alur/notify", subject=state.referral_id, data=data,
            id=derived_id("referral.outcome", state.referral_id, state.status.value),
        )
        await publish(self.ctx.js, subjects.referral("outcome", secretariat.id), event)
        if not open_left:
            self.log.info("case loop closed: every referral has an outcome", case_id=state.case_id)

    async def _open_referrals_of(self, case_id: str) -> list[str]:
        """The case's referrals without an outcome yet: open ones, and closed ones routing has yet to reroute."""
        try:
            entry = await (await key_value(self.ctx.js, Bucket.CASE_REFERRALS)).get(case_id)
        except (KeyNotFoundError, NotFoundError):
            return []
        record = CaseReferrals.model_validate_json(entry.value)
        open_ids = []
        for referral_id in record.referrals:
            loaded = await self.load(referral_id)
            if loaded is None or not loaded[0].status.terminal:
                open_ids.append(referral_id)
            elif loaded[0].status in REROUTED and record.awaiting_reroute(referral_id):
                open_ids.append(referral_id)
        return sorted(open_ids)

    async def schedule(self, state: ReferralState) -> None:
        """Arm the referral's next timer as a JetStream message schedule; it replaces any earlier one."""
        timer = state.escalation.timer
        if timer is None:
            return
        fire_at = max(timer.fire_at, self.ctx.now() + timedelta(milliseconds=50)).astimezone(UTC)
        headers = {
            "Nats-Schedule": f"@at {fire_at.isoformat()}",
            "Nats-Schedule-Target": subjects.timer_fired(state.referral_id, timer.purpose),
            "Nats-Msg-Id": f"timer:{timer.token}",
        }
        await self.ctx.js.publish(
            subjects.timer_schedule(state.referral_id, "next"), timer.model_dump_json().encode(), headers=headers,
            timeout=5,
        )

    async def raise_to_coordinator(self, state: ReferralState, reason: str, *, overdue: str, key: str) -> bool:
        """Tell the coordinator that the agency could not be reached (`overdue` says by what: `delivery`, a
        webhook; `email`, a notice): `alur.referral.escalated.<agency>`, level 2, with `reason`. Its id
        derives from the referral, `overdue` and `key`, so each such problem is raised once however often
        it recurs. Returns whether it was raised now (not a duplicate)."""
        data = EscalationData(
            referral_id=state.referral_id, case_id=state.case_id, agency=state.agency, status="escalated", level=2,
            action="raise", target="coordinator", overdue=overdue, due=state.due,
            notify=self.ctx.secretariat_ids(), reason=reason,
        )
        event = CloudEvent[EscalationData].build(
            type=REFERRAL_ESCALATED, source="alur/notify", subject=state.referral_id, data=data,
            id=derived_id(f"referral.escalated.{overdue}", state.referral_id, key),
        )
        ack = await publish(self.ctx.js, subjects.referral("escalated", state.agency), event)
        if not ack.duplicate:
            self.ctx.app.metrics.escalation(state.agency_type.value, data.level, "raise")
        self.log.warning("raised to the coordinator", referral_id=state.referral_id, agency=state.agency,
                         reason=reason)
        return not ack.duplicate

    async def commit(self, moved: ReferralState, *, response_id: str | None = None) -> None:
        """After a stored change: publish its fact (if the status or history moved) and re-arm its timer."""
        await self.publish_status(moved, response_id=response_id)
        await self.schedule(moved)

    # -------------------------------------------------------------- the system's own steps

    async def transition(
        self, referral_id: str, status: ReferralStatus, actor: Actor, *, reason: str | None = None,
        note: str | None = None,
    ) -> ReferralState | None:
        """A status the system or the referrer side sets (delivered, cancelled): checked by `apply`, stored,
        stated and re-armed; None when it changed nothing. Raises `TransitionRefused` when not allowed."""
        now = self.ctx.now()
        moved = await self.update(
            referral_id, lambda state: arm(apply(state, status, actor, at=now, reason=reason, note=note), now)
        )
        if moved is not None:
            await self.commit(moved)
        return moved

    async def track(self, request: ReferralRequestedData, *, delivered: bool) -> ReferralState:
        """The referral's state, created if notify does not track it yet: with its first timer armed and, when
        the request already sits where the agency reads it (`delivered`), in status delivered at once.

        The state is created without a read first (a request is new nearly always); a create that finds
        it tracked already returns the stored state. Its fact and its timer then go out side by side."""
        now = self.ctx.now()
        state = new_state(request, self.ctx.policy, now)
        if delivered:
            state = apply(state, ReferralStatus.DELIVERED, "system", at=now)
        state = arm(state, now)
        try:
            await self.save(state, None)
        except StateConflict:
            return (await self.load(request.referral_id))[0]  # type: ignore[index]
        # at DEBUG: the referral's line at INFO is its fact, `referral delivered` (a webhook's once the POST succeeds)
        self.log.debug("tracking referral", referral_id=state.referral_id, case_id=state.case_id, agency=state.agency,
                       due=state.due.isoformat(), status=state.status.value,
                       timer=state.escalation.timer.purpose if state.escalation.timer else None)
        await together(*([self.publish_status(state)] if delivered else []), self.schedule(state))
        return state
