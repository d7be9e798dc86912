"""What notify keeps per referral (KV bucket `referrals`, key = referral id), and the pure steps that change it.

A `ReferralState` holds no victim data: the case view of the request stays in the REFERRALS stream.
Every change goes through a function here (`apply`, `record_attempt`, `record_escalation`), which bumps
`version` and, when the escalation picture changes, `escalation.generation`: a timer armed under an
older generation is stale. These functions never plan timers; after any change the caller re-arms with
`escalation.arm(state, now)` (kept there so this module does not depend on the planner).
`fold` rebuilds the state from the REFERRALS events of one referral when KV is lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.events import EscalationData, ReferralRequestedData, ReferralStatusData
from contracts.vocab import AgencyType, Channel, Priority, ReferralStatus, Service
from services.notify.lifecycle import (
    POST_ACCEPTANCE,
    Actor,
    Transition,
    Verdict,
    check_transition,
    reason_problem,
)
from services.notify.policy import EscalationPolicy, Ladder

MAX_ATTEMPTS_KEPT = 100

AttemptOutcome = Literal["delivered", "failed", "gone", "refused", "circuit_open"]


class _Record(BaseModel):
    """Stored records read back tolerantly, so a newer notify's extra fields never break an older one."""

    model_config = ConfigDict(extra="ignore")


class HistoryEntry(_Record):
    """One recorded status (or, with the status unchanged, one progress note from the agency)."""

    status: ReferralStatus
    at: AwareDatetime
    actor: Actor
    reason: str | None = None
    note: str | None = None
    redirect_to: str | None = None


class DeliveryAttempt(_Record):
    """One try to reach the agency: transport facts only, never the payload."""

    at: AwareDatetime
    attempt: int = Field(ge=1)
    channel: Channel
    outcome: AttemptOutcome
    event_id: str | None = None
    http_status: int | None = None
    error_class: str | None = None
    duration_ms: float | None = None


class Outcome(HistoryEntry):
    """How the referral closed (its terminal history entry), for the coordinator's closed loop."""


class Progress(_Record):
    """The highest escalation level fired for one purpose against the deadline `due`."""

    level: int = Field(ge=1)
    due: AwareDatetime


class ClockRun(_Record):
    """A statutory clock running on this referral, resolved from the policy at creation."""

    name: str
    due: AwareDatetime
    legal_basis: str
    stops_on: list[ReferralStatus]
    ladder: Ladder


class Timer(BaseModel):
    """One planned escalation step; stale once the referral's `escalation.generation` moved on."""

    model_config = ConfigDict(frozen=True)

    referral_id: str
    purpose: str
    level: int = Field(ge=1)
    fire_at: AwareDatetime
    due: AwareDatetime
    generation: int = Field(ge=0)

    @property
    def token(self) -> str:
        """Unique per step and generation: a dedup key for the schedule and the events it causes."""
        return f"{self.referral_id}:{self.purpose}:{self.level}:{self.generation}"


class EscalationTrack(_Record):
    """The policy snapshot this referral runs under, how far each ladder went, and the armed timer."""

    policy: EscalationPolicy
    generation: int = 0
    progress: dict[str, Progress] = Field(default_factory=dict)
    clocks: list[ClockRun] = Field(default_factory=list)
    timer: Timer | None = None


class ReferralState(_Record):
    """Notify's record of one referral."""

    referral_id: str
    case_id: str
    agency: str
    agency_type: AgencyType
    service: Service
    priority: Priority
    status: ReferralStatus
    requested_at: AwareDatetime
    due: AwareDatetime
    sla_hours: float | None = None
    statutory_clock: str | None = None
    replaces: str | None = None
    history: list[HistoryEntry]
    attempts: list[DeliveryAttempt] = Field(default_factory=list)
    escalation: EscalationTrack
    outcome: Outcome | None = None
    version: int = 1

    def entered(self, status: ReferralStatus) -> datetime | None:
        """When the referral last entered `status`, if it did."""
        return next((h.at for h in reversed(self.history) if h.status is status), None)

    def reached(self, statuses: Iterable[ReferralStatus]) -> bool:
        """Whether the referral has ever been in any of `statuses`."""
        wanted = set(statuses)
        return any(h.status in wanted for h in self.history)

    def last_agency_word(self) -> datetime | None:
        """When the agency last said anything (a status or a progress note)."""
        return next((h.at for h in reversed(self.history) if h.actor == "agency"), None)


class TransitionRefused(ValueError):
    """`apply` was asked for a change the lifecycle does not allow; `transition.reason` says why."""

    def __init__(self, transition: Transition) -> None:
        super().__init__(transition.reason)
        self.transition = transition


def _clock_runs(req: ReferralRequestedData, policy: EscalationPolicy, requested_at: datetime) -> list[ClockRun]:
    runs = [
        ClockRun(
            name=clock.name,
            due=requested_at + policy.scaled(clock.within),
            legal_basis=clock.legal_basis,
            stops_on=clock.stops_on,
            ladder=clock.ladder,
        )
        for clock in policy.clocks_for(req.service, req.agency_type, req.statutory_clock)
    ]
    named_unknown = req.statutory_clock is not None and policy.clock(req.statutory_clock) is None
    if named_unknown and req.sla_hours and policy.default_statutory_ladder is not None:
        runs.append(
            ClockRun(
                name=str(req.statutory_clock),
                due=requested_at + policy.scaled(timedelta(hours=req.sla_hours)),
                legal_basis="named by the referral's rule",
                stops_on=[ReferralStatus.IN_PROGRESS],
                ladder=policy.default_statutory_ladder,
            )
        )
    return runs


def new_state(req: ReferralRequestedData, policy: EscalationPolicy, now: datetime) -> ReferralState:
    """The state of a just-requested referral under a snapshot of `policy` (timer not yet armed).

    The acknowledgement deadline is the request's `due`: what the agency was told. Statutory clocks run
    from `requested_at` (else `now`).
    """
    requested_at = req.requested_at or now
    return ReferralState(
        referral_id=req.referral_id,
        case_id=req.case_id,
        agency=req.agency,
        agency_type=req.agency_type,
        service=req.service,
        priority=req.priority,
        status=ReferralStatus.REQUESTED,
        requested_at=requested_at,
        due=req.due,
        sla_hours=req.sla_hours,
        statutory_clock=req.statutory_clock,
        replaces=req.replaces,
        history=[HistoryEntry(status=ReferralStatus.REQUESTED, at=requested_at, actor="referrer")],
        escalation=EscalationTrack(policy=policy, clocks=_clock_runs(req, policy, requested_at)),
    )


def _changed(state: ReferralState, **update: object) -> ReferralState:
    escalation = state.escalation.model_copy(update={"generation": state.escalation.generation + 1, "timer": None})
    return state.model_copy(update={**update, "escalation": escalation, "version": state.version + 1})


def _is_progress_note(state: ReferralState, actor: Actor, reason: str | None, note: str | None) -> bool:
    last = state.history[-1]
    return (
        actor == "agency"
        and state.status in POST_ACCEPTANCE
        and bool(reason or note)
        and (reason, note) != (last.reason, last.note)
    )


def apply(
    state: ReferralState,
    new_status: ReferralStatus,
    actor: Actor,
    *,
    at: datetime,
    reason: str | None = None,
    note: str | None = None,
    redirect_to: str | None = None,
) -> ReferralState:
    """`state` moved to `new_status` by `actor` at `at`; raises `TransitionRefused` when not allowed.

    A duplicate returns `state` itself (compare `version`), except an agency repeating an open
    post-acceptance status with a new reason or note: that is a progress note, recorded, and it
    restarts the progress-update clock.
    """
    transition = check_transition(state.status, new_status, actor)
    if transition.refused:
        raise TransitionRefused(transition)
    entry = HistoryEntry(status=new_status, at=at, actor=actor, reason=reason, note=note, redirect_to=redirect_to)
    if transition.duplicate:
        if new_status is state.status and _is_progress_note(state, actor, reason, note):
            return _changed(state, history=[*state.history, entry])
        return state
    if problem := reason_problem(new_status, reason, note, redirect_to):
        raise TransitionRefused(Transition(state.status, new_status, actor, Verdict.REFUSED, problem))
    outcome = (
        Outcome(status=new_status, at=at, actor=actor, reason=reason, note=note, redirect_to=redirect_to)
        if new_status.terminal
        else None
    )
    return _changed(state, status=new_status, history=[*state.history, entry], outcome=outcome)


def record_attempt(state: ReferralState, attempt: DeliveryAttempt) -> ReferralState:
    """`state` with one more delivery attempt (the oldest dropped past `MAX_ATTEMPTS_KEPT`)."""
    attempts = [*state.attempts, attempt][-MAX_ATTEMPTS_KEPT:]
    return state.model_copy(update={"attempts": attempts, "version": state.version + 1})


def record_escalation(state: ReferralState, purpose: str, level: int, due: datetime) -> ReferralState:
    """`state` after escalation level `level` fired for `purpose` against deadline `due`."""
    progress = {**state.escalation.progress, purpose: Progress(level=level, due=due)}
    escalation = state.escalation.model_copy(
        update={"progress": progress, "generation": state.escalation.generation + 1, "timer": None}
    )
    return state.model_copy(update={"escalation": escalation, "version": state.version + 1})


ReferralEvent = ReferralRequestedData | ReferralStatusData | EscalationData

_STATUS_ACTOR: dict[ReferralStatus, Actor] = {
    ReferralStatus.DELIVERED: "system",
    ReferralStatus.EXPIRED: "system",
    ReferralStatus.CANCELLED: "referrer",
}


def fold(events: Iterable[ReferralEvent], policy: EscalationPolicy) -> ReferralState:
    """Rebuild a referral's state from its REFERRALS events, in stream order, under `policy`.

    The first event must be the request. A status event the lifecycle refuses (e.g. a cancel that
    raced a completion) is skipped, as it was when it happened. A request without `requested_at`
    starts at `due` minus the policy's acknowledgement window. Delivery attempts are not events and
    are not rebuilt; the caller re-arms the timer with `escalation.arm`.
    """
    stream = iter(events)
    first = next(stream, None)
    if not isinstance(first, ReferralRequestedData):
        raise ValueError("fold needs the referral's requested event first")
    start = first.requested_at or first.due - policy.scaled(policy.ack.within[first.priority])
    state = new_state(first, policy, start)
    for event in stream:
        if isinstance(event, ReferralStatusData):
            at = event.at or state.history[-1].at
            actor = _STATUS_ACTOR.get(event.status, "agency")
            try:
                state = apply(
                    state,
                    event.status,
                    actor,
                    at=at,
                    reason=event.reason,
                    note=event.note,
                    redirect_to=event.redirect_to,
                )
            except TransitionRefused:
                continue
        elif isinstance(event, EscalationData):
            state = record_escalation(state, event.overdue, event.level, event.due)
    return state
