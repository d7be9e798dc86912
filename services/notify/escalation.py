"""The escalation planner: which deadline a referral is waiting on, when the next step fires, what it does.

Pure functions over `ReferralState` and the policy snapshot it carries (`policy.py`). The wiring keeps
one JetStream schedule per referral and purpose (`contracts.subjects.timer_schedule`):

    state = arm(new_state(req, policy, now), now)      # and after every apply / record_*:
    state = arm(apply(state, ...), now)                # schedule state.escalation.timer, if any
    step = on_fire(state, timer, now, coordinators=[...])
    # None: stale timer, drop it. Else publish step.data, store step.state, schedule step.next_timer.

Deadlines (purposes): `ack` while requested/delivered, due at the request's `due`; `decision` while
acknowledged, due `decision.within` after acknowledgement; `update` while accepted/in_progress/on_hold,
due `update.every` after the agency's last word; `statutory-<name>` from the request until the clock's
`stops_on`. Level `n` of a ladder fires `levels[n].after` past the deadline; repeats follow the last
level every `repeat.every`. Only the earliest pending step is armed; firing it arms the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from contracts.events import EscalationData
from contracts.vocab import ReferralStatus
from domain.escalation_policy import POST_ACCEPTANCE, Action, Ladder, Recipient
from services.notify.state import ReferralState, Timer, apply, record_escalation

__all__ = ["Deadline", "EscalationStep", "Timer", "arm", "deadlines", "next_timer", "on_fire", "overdue_by"]

ACK = "ack"
DECISION = "decision"
UPDATE = "update"
STATUTORY_PREFIX = "statutory-"


@dataclass(frozen=True, slots=True)
class Deadline:
    """A target the referral is currently waiting on."""

    purpose: str
    due: datetime
    ladder: Ladder
    label: str


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """What a fired timer does: the event to publish, the state to store, and the next timer to arm."""

    purpose: str
    level: int
    action: Action
    recipient: Recipient
    data: EscalationData
    state: ReferralState
    next_timer: Timer | None

    @property
    def expired(self) -> bool:
        """The referral is now expired: publish `expired` too, and reroute."""
        return self.action == "expire"


def deadlines(state: ReferralState) -> list[Deadline]:
    """The deadlines running on the referral now (none once it is terminal)."""
    if state.status.terminal:
        return []
    policy = state.escalation.policy
    running: list[Deadline] = []
    if state.status in (ReferralStatus.REQUESTED, ReferralStatus.DELIVERED):
        running.append(Deadline(ACK, state.due, policy.ack.ladder, "acknowledgement"))
    elif state.status is ReferralStatus.ACKNOWLEDGED:
        acknowledged = state.entered(ReferralStatus.ACKNOWLEDGED) or state.requested_at
        due = acknowledged + policy.scaled(policy.decision.within)
        running.append(Deadline(DECISION, due, policy.decision.ladder, "decision (accept, reject or redirect)"))
    elif state.status in POST_ACCEPTANCE:
        last_word = state.last_agency_word() or state.requested_at
        due = last_word + policy.scaled(policy.update.every)
        running.append(Deadline(UPDATE, due, policy.update.ladder, "progress update"))
    for clock in state.escalation.clocks:
        if not state.reached(clock.stops_on):
            label = f"statutory clock {clock.name} ({clock.legal_basis})"
            running.append(Deadline(STATUTORY_PREFIX + clock.name, clock.due, clock.ladder, label))
    return running


def _slot(state: ReferralState, deadline: Deadline, level: int) -> datetime | None:
    """When `level` of the deadline's ladder is due; None past the ladder's end."""
    policy, ladder = state.escalation.policy, deadline.ladder
    if level <= len(ladder.levels):
        return deadline.due + policy.scaled(ladder.levels[level - 1].after)
    repeat = ladder.repeat
    nth = level - len(ladder.levels)
    if repeat is None or (repeat.max is not None and nth > repeat.max):
        return None
    return deadline.due + policy.scaled(ladder.levels[-1].after) + nth * policy.scaled(repeat.every)


def _pending_level(state: ReferralState, deadline: Deadline) -> int:
    progress = state.escalation.progress.get(deadline.purpose)
    fired = progress.level if progress is not None and progress.due == deadline.due else 0
    return fired + 1


def next_timer(state: ReferralState, now: datetime) -> Timer | None:
    """The earliest pending escalation step, or None when nothing is running; a past step fires `now`."""
    best: tuple[datetime, Deadline, int] | None = None
    for deadline in deadlines(state):
        level = _pending_level(state, deadline)
        slot = _slot(state, deadline, level)
        if slot is not None and (best is None or slot < best[0]):
            best = (slot, deadline, level)
    if best is None:
        return None
    slot, deadline, level = best
    return Timer(
        referral_id=state.referral_id,
        purpose=deadline.purpose,
        level=level,
        fire_at=max(slot, now),
        due=deadline.due,
        generation=state.escalation.generation,
        agency=state.agency,
    )


def arm(state: ReferralState, now: datetime) -> ReferralState:
    """`state` with its next timer planned into `escalation.timer` (the one to schedule)."""
    escalation = state.escalation.model_copy(update={"timer": next_timer(state, now)})
    return state.model_copy(update={"escalation": escalation})


def _rung(ladder: Ladder, level: int) -> tuple[Action, Recipient]:
    if level <= len(ladder.levels):
        rung = ladder.levels[level - 1]
        return rung.action, rung.recipient
    if ladder.repeat is None:
        raise ValueError(f"level {level} is past the end of a ladder that does not repeat")
    return ladder.repeat.action, ladder.repeat.recipient


def _caught_up(state: ReferralState, deadline: Deadline, level: int, now: datetime) -> int:
    """After an outage, repeats already overdue collapse into one step instead of firing back to back."""
    while level > len(deadline.ladder.levels) and (slot := _slot(state, deadline, level + 1)) and slot <= now:
        level += 1
    return level


def _reason(deadline: Deadline, level: int, action: Action, recipient: Recipient) -> str:
    missed = f"{deadline.label} was due {deadline.due.isoformat()} and has not come"
    doing = {
        "remind": f"level {level}: reminding the {recipient}",
        "raise": f"level {level}: raised to the {recipient}",
        "expire": f"level {level}: the escalation policy ran out, the referral expires and is rerouted",
    }[action]
    return f"{missed}; {doing}"


def on_fire(
    state: ReferralState, timer: Timer, now: datetime, *, coordinators: Sequence[str] = ()
) -> EscalationStep | None:
    """Carry out a fired timer, or None if it is stale (the referral moved on, or it already fired).

    `coordinators` are the agency ids a raise goes to (the task-force secretariat).
    """
    if timer.referral_id != state.referral_id or timer.generation != state.escalation.generation:
        return None
    deadline = next((d for d in deadlines(state) if d.purpose == timer.purpose), None)
    if deadline is None or deadline.due != timer.due or _pending_level(state, deadline) != timer.level:
        return None
    level = _caught_up(state, deadline, timer.level, now)
    action, recipient = _rung(deadline.ladder, level)
    data = EscalationData(
        referral_id=state.referral_id,
        case_id=state.case_id,
        agency=state.agency,
        status="reminded" if action == "remind" else "escalated",
        level=level,
        action=action,
        target=recipient,
        overdue=deadline.purpose,
        due=deadline.due,
        notify=[state.agency] if recipient == "agency" else list(coordinators),
        reason=_reason(deadline, level, action, recipient),
    )
    moved = record_escalation(state, deadline.purpose, level, deadline.due)
    if action == "expire":
        moved = apply(
            moved, ReferralStatus.EXPIRED, "system", at=now, reason=f"{deadline.purpose}_overdue", note=data.reason
        )
    moved = arm(moved, now)
    return EscalationStep(
        purpose=deadline.purpose,
        level=level,
        action=action,
        recipient=recipient,
        data=data,
        state=moved,
        next_timer=moved.escalation.timer,
    )


def overdue_by(state: ReferralState, now: datetime) -> timedelta | None:
    """How long the most overdue running deadline is past due, for status views; None if none is."""
    late = [now - d.due for d in deadlines(state) if d.due < now]
    return max(late) if late else None
