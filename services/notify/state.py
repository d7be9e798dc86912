"""What notify keeps per referral (KV bucket `referrals`, key = referral id), and the pure steps that change it.

A `ReferralState` holds no victim data: the case view of the request stays in the REFERRALS stream.
Every change goes through a function here (`apply`, `record_attempt`, `record_escalation`), which bumps
`version` and, when the escalation picture changes, `escalation.generation`: a timer armed under an
older generation is stale. These functions never plan timers; after any change the caller re-arms with
`escalation.arm(state, now)` (kept there so this module does not depend on the planner).
`fold` rebuilds the state from the REFERRALS events of one referral when KV is lost.

A state always fits in one KV value: attempts are capped (`MAX_ATTEMPTS_KEPT`), an agency may add at most
`MAX_PROGRESS_NOTES` progress notes (`note_limit` says when it may not: the answer is refused, never
dropped), and the history kept in KV is compacted to `HISTORY_BUDGET` bytes: the first entry, the last
entry of each status (what the escalation clocks read) and as many of the newest as fit. Status changes
are always recorded; what compaction drops from the working copy stays in REFERRALS, where every status
and note was published as a fact.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.events import (
    Actor,
    EscalationData,
    HistoryEntry,
    Outcome,
    ReferralRequestedData,
    ReferralStatusData,
)
from contracts.records import ReferralRecord
from contracts.vocab import Channel, ReferralStatus
from domain.escalation_policy import POST_ACCEPTANCE, EscalationPolicy, Ladder
from domain.lifecycle import Transition, checked

MAX_ATTEMPTS_KEPT = 100
MAX_PROGRESS_NOTES = 100
"""Progress notes (an open status repeated with a new note) one referral takes; settings may lower it."""
HISTORY_BUDGET = 256 * 1024
"""Bytes of history (as JSON) a state keeps beyond its pinned entries; see `compact`."""

AttemptOutcome = Literal["delivered", "failed", "gone", "refused", "circuit_open"]
NoticeOutcome = Literal["sent", "retry", "bounced", "given_up"]
"""An email notice attempt: sent; failed for now (retried); refused for good by the recipient's server;
failed until the retry schedule ran out. All but `retry` are final for that event and recipient."""
FINAL_NOTICE_OUTCOMES: frozenset[str] = frozenset({"sent", "bounced", "given_up"})


class _Record(BaseModel):
    """Stored records read back tolerantly, so a newer notify's extra fields never break an older one."""

    model_config = ConfigDict(extra="ignore")


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


class NoticeAttempt(_Record):
    """One try to mail an agency a notice of one event (`services.notify.notices`): never the address or
    the message, only who it was for, what came of it and the SMTP reply code."""

    at: AwareDatetime
    event_id: str
    recipient: str
    """The agency id the notice was for."""
    attempt: int = Field(ge=1)
    outcome: NoticeOutcome
    smtp_code: int | None = None
    error_class: str | None = None


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
    agency: str | None = None
    """The agency holding the referral: where to rebuild the state from if KV lost it."""

    @property
    def token(self) -> str:
        """Unique per step and generation: a dedup key for the schedule and the events it causes."""
        return f"{self.referral_id}:{self.purpose}:{self.level}:{self.generation}"


class EscalationTrack(_Record):
    """The policy snapshot this referral runs under (`EscalationPolicy.snapshot`: the statutory clocks are in
    `clocks`), how far each ladder went, and the armed timer."""

    policy: EscalationPolicy
    generation: int = 0
    progress: dict[str, Progress] = Field(default_factory=dict)
    clocks: list[ClockRun] = Field(default_factory=list)
    timer: Timer | None = None


class ReferralState(ReferralRecord):
    """Notify's record of one referral: what others may read (`ReferralRecord`), plus delivery and escalation."""

    attempts: list[DeliveryAttempt] = Field(default_factory=list)
    notices: list[NoticeAttempt] = Field(default_factory=list)
    """Email notice attempts, per event and recipient agency (`record_notice`)."""
    escalation: EscalationTrack
    progress_notes: int = Field(default=0, ge=0)
    """Progress notes recorded so far (compaction does not lower it)."""
    compacted: int = Field(default=0, ge=0)
    """History entries dropped from this working copy by `compact` (they stay in REFERRALS)."""

    @property
    def steps(self) -> int:
        """History entries ever recorded: numbers each fact, whatever compaction dropped."""
        return self.compacted + len(self.history)

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

    def notice_attempts(self, event_id: str, recipient: str) -> list[NoticeAttempt]:
        """The recorded attempts to mail `recipient` the notice of event `event_id`, oldest first."""
        return [n for n in self.notices if n.event_id == event_id and n.recipient == recipient]

    def notice_settled(self, event_id: str, recipient: str) -> bool:
        """Whether that notice needs no further attempt: it was sent, bounced or given up."""
        return any(n.outcome in FINAL_NOTICE_OUTCOMES for n in self.notice_attempts(event_id, recipient))


class Mark(_Record):
    """A history entry as a glance reads it: which status, and when."""

    status: ReferralStatus
    at: AwareDatetime


class TimerGlance(_Record):
    """The escalation track as a glance reads it: only the armed timer."""

    timer: Timer | None = None


class StateGlance(_Record):
    """The few fields of a stored `ReferralState` that tell whether it may need the auditor (its status, when
    its history last moved, its armed timer): parsed from the same bytes at a fraction of the full state's
    cost, which carries the whole policy snapshot."""

    referral_id: str
    status: ReferralStatus
    history: list[Mark]
    escalation: TimerGlance


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
        escalation=EscalationTrack(policy=policy.snapshot(), clocks=_clock_runs(req, policy, requested_at)),
    )


def _changed(state: ReferralState, **update: object) -> ReferralState:
    escalation = state.escalation.model_copy(update={"generation": state.escalation.generation + 1, "timer": None})
    return state.model_copy(update={**update, "escalation": escalation, "version": state.version + 1})


def compact(history: list[HistoryEntry], budget: int = HISTORY_BUDGET) -> list[HistoryEntry]:
    """`history` within `budget` bytes: the first entry and the last entry of each status always (what
    `entered`, `reached` and the clocks read), then the newest entries while they fit."""
    sizes = [len(entry.model_dump_json()) for entry in history]
    if sum(sizes) <= budget:
        return history
    last_of_status = {entry.status: i for i, entry in enumerate(history)}
    keep = {0, *last_of_status.values()}
    used = 0
    for i in range(len(history) - 1, -1, -1):
        if i in keep:
            continue
        if used + sizes[i] > budget:
            break
        keep.add(i)
        used += sizes[i]
    return [entry for i, entry in enumerate(history) if i in keep]


def _appended(state: ReferralState, entry: HistoryEntry) -> dict[str, object]:
    """The update that records `entry`: history compacted, the count of dropped entries carried on."""
    history = [*state.history, entry]
    kept = compact(history)
    return {"history": kept, "compacted": state.compacted + len(history) - len(kept)}


def note_limit(state: ReferralState, transition: Transition, reason: str | None, note: str | None,
               limit: int = MAX_PROGRESS_NOTES) -> str | None:
    """Why a checked answer may not be recorded as one more progress note, or None (not a note, or room)."""
    if not transition.duplicate or transition.new is not state.status:
        return None
    if not _is_progress_note(state, transition.actor, reason, note) or state.progress_notes < limit:
        return None
    return (f"referral {state.referral_id} already has {state.progress_notes} progress notes, the most it keeps; "
            "a status change (in_progress, on_hold, completed, not_delivered) is still recorded")


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

    `lifecycle.checked` decides, `enact` records; a caller that has already checked (an agency's answer,
    through `lifecycle.check_response`) calls `enact` with that verdict instead.
    """
    transition = checked(state.status, new_status, actor, reason, note, redirect_to)
    if transition.refused:
        raise TransitionRefused(transition)
    return enact(state, transition, at=at, reason=reason, note=note, redirect_to=redirect_to)


def enact(
    state: ReferralState,
    transition: Transition,
    *,
    at: datetime,
    reason: str | None = None,
    note: str | None = None,
    redirect_to: str | None = None,
) -> ReferralState:
    """Record an already checked, not refused `transition` of `state`.

    A duplicate returns `state` itself (compare `version`), except an agency repeating an open
    post-acceptance status with a new reason or note: that is a progress note, recorded, and it
    restarts the progress-update clock.
    """
    assert not transition.refused and transition.current is state.status, "enact only what was checked against it"
    new_status, actor = transition.new, transition.actor
    entry = HistoryEntry(status=new_status, at=at, actor=actor, reason=reason, note=note, redirect_to=redirect_to)
    if transition.duplicate:
        if new_status is state.status and _is_progress_note(state, actor, reason, note):
            return _changed(state, **_appended(state, entry), progress_notes=state.progress_notes + 1)
        return state
    outcome = (
        Outcome(status=new_status, at=at, actor=actor, reason=reason, note=note, redirect_to=redirect_to)
        if new_status.terminal
        else None
    )
    return _changed(state, status=new_status, **_appended(state, entry), outcome=outcome)


def record_attempt(state: ReferralState, attempt: DeliveryAttempt) -> ReferralState:
    """`state` with one more delivery attempt (the oldest dropped past `MAX_ATTEMPTS_KEPT`)."""
    attempts = [*state.attempts, attempt][-MAX_ATTEMPTS_KEPT:]
    return state.model_copy(update={"attempts": attempts, "version": state.version + 1})


def record_notice(state: ReferralState, attempt: NoticeAttempt) -> ReferralState:
    """`state` with one more email notice attempt (the oldest dropped past `MAX_ATTEMPTS_KEPT`, the final
    outcomes kept before the retries: they are what keeps a notice from going out twice)."""
    notices = [*state.notices, attempt]
    while len(notices) > MAX_ATTEMPTS_KEPT:
        drop = next((i for i, n in enumerate(notices) if n.outcome == "retry"), 0)
        del notices[drop]
    return state.model_copy(update={"notices": notices, "version": state.version + 1})


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
    start = first.requested_at or first.due
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
