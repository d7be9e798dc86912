"""ReferralState: apply, attempts, no victim data, fold(events) == the state built by apply, and the auditor's
glance at a stored state."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import (
    HistoryEntry,
    ReferralRequestedData,
    ReferralStatusData,
    ResponseData,
)
from contracts.vocab import (
    Channel,
    ReferralStatus,
    ResponseStatus,
)
from domain.escalation_policy import EscalationPolicy, load_policy
from domain.lifecycle import Actor, Refusal, check_response
from services.notify.escalation import arm
from services.notify.state import (
    MAX_ATTEMPTS_KEPT,
    MAX_PROGRESS_NOTES,
    DeliveryAttempt,
    ReferralState,
    StateGlance,
    TransitionRefused,
    apply,
    compact,
    enact,
    fold,
    new_state,
    note_limit,
    record_attempt,
)
from services.notify.store import MAX_STATE_BYTES
from services.notify.timers import REPUBLISH_WITHIN, may_need_repair
from tests.referral_support import MARKER, POLICY_FILE, T0, request

S = ReferralStatus
def test_state_keeps_no_victim_data_and_survives_kv(policy: EscalationPolicy) -> None:
    state = arm(new_state(request(policy), policy, T0), T0)
    stored = state.model_dump_json()
    assert MARKER not in stored
    assert ReferralState.model_validate_json(stored) == state


def test_apply_records_history_and_outcome(policy: EscalationPolicy) -> None:
    state = new_state(request(policy), policy, T0)
    state = apply(state, S.ACCEPTED, "agency", at=T0 + timedelta(minutes=5))
    state = apply(state, S.NOT_DELIVERED, "agency", at=T0 + timedelta(days=1), reason="could_not_contact")
    assert [h.status for h in state.history] == [S.REQUESTED, S.ACCEPTED, S.NOT_DELIVERED]
    assert state.outcome is not None and state.outcome.reason == "could_not_contact"
    assert state.version == 3


def test_apply_refuses_with_the_reason(policy: EscalationPolicy) -> None:
    state = new_state(request(policy), policy, T0)
    with pytest.raises(TransitionRefused, match="needs a `reason`"):
        apply(state, S.REJECTED, "agency", at=T0)
    with pytest.raises(TransitionRefused, match="only the agency side"):
        apply(state, S.ACCEPTED, "referrer", at=T0)


def test_duplicate_is_a_no_op_but_a_progress_note_is_kept(policy: EscalationPolicy) -> None:
    state = apply(new_state(request(policy), policy, T0), S.ACKNOWLEDGED, "agency", at=T0)
    assert apply(state, S.ACKNOWLEDGED, "agency", at=T0 + timedelta(minutes=1)) is state
    state = apply(state, S.ACCEPTED, "agency", at=T0 + timedelta(hours=1))
    noted = apply(state, S.ACCEPTED, "agency", at=T0 + timedelta(days=2), note="placed in safe house")
    assert noted.version == state.version + 1 and noted.status is S.ACCEPTED
    assert noted.escalation.generation == state.escalation.generation + 1
    assert apply(noted, S.ACCEPTED, "agency", at=T0 + timedelta(days=3), note="placed in safe house") is noted


def test_attempts_are_bounded(policy: EscalationPolicy) -> None:
    state = new_state(request(policy), policy, T0)
    for n in range(1, MAX_ATTEMPTS_KEPT + 6):
        attempt = DeliveryAttempt(at=T0, attempt=n, channel=Channel.WEBHOOK, outcome="failed", http_status=503)
        state = record_attempt(state, attempt)
    assert len(state.attempts) == MAX_ATTEMPTS_KEPT
    assert state.attempts[-1].attempt == MAX_ATTEMPTS_KEPT + 5


def test_fold_needs_the_request_first(policy: EscalationPolicy) -> None:
    with pytest.raises(ValueError, match="requested event first"):
        fold([], policy)


REASONS = {
    S.REJECTED: st.sampled_from(["out_of_mandate", "no_capacity_waitlist", "bogus"]),
    S.NOT_DELIVERED: st.sampled_from(["could_not_contact", "declined_by_victim", "bogus"]),
}
ACTOR_OF: dict[S, Actor] = {S.DELIVERED: "system", S.EXPIRED: "system", S.CANCELLED: "referrer"}


@st.composite
def status_events(draw: st.DrawFn) -> list[tuple[S, Actor, str | None, str | None, str | None]]:
    steps = []
    for _ in range(draw(st.integers(0, 12))):
        status = draw(st.sampled_from([s for s in S if s is not S.REQUESTED]))
        actor = ACTOR_OF.get(status, "agency") if draw(st.booleans()) else draw(st.sampled_from(["agency", "system"]))
        reason = draw(REASONS[status]) if status in REASONS else draw(st.sampled_from([None, "other"]))
        note = draw(st.sampled_from([None, "called twice", "waiting for documents"]))
        redirect_to = draw(st.sampled_from([None, "dinsos-banjarmasin"])) if status is S.REDIRECTED else None
        steps.append((status, actor, reason, note, redirect_to))
    return steps


@settings(max_examples=200)
@given(status_events())
def test_fold_of_published_events_equals_applied_state(
    steps: list[tuple[S, Actor, str | None, str | None, str | None]],
) -> None:
    policy = load_policy(POLICY_FILE, scale=0.001)
    req = request(policy)
    state = new_state(req, policy, T0)
    published: list[ReferralRequestedData | ReferralStatusData] = [req]
    for i, (status, actor, reason, note, redirect_to) in enumerate(steps, start=1):
        at = T0 + timedelta(minutes=i)
        try:
            moved = apply(state, status, actor, at=at, reason=reason, note=note, redirect_to=redirect_to)
        except TransitionRefused:
            continue
        if moved.version != state.version:
            published.append(
                ReferralStatusData(
                    referral_id=state.referral_id,
                    case_id=state.case_id,
                    agency=state.agency,
                    status=status,
                    reason=reason,
                    note=note,
                    redirect_to=redirect_to,
                    at=at,
                )
            )
        if state.status.terminal:
            assert moved.status is state.status
        state = moved
    assert fold(published, policy) == state
    assert arm(fold(published, policy), T0) == arm(state, T0)


# --------------------------------------------------------------- notes cannot freeze a referral (issue 17.7)

LONG_A, LONG_B = "a" * 2000, "b" * 2000  # the longest note an answer may carry, twice, to alternate


def answer(state: ReferralState, status: ResponseStatus, at: datetime, limit: int = MAX_PROGRESS_NOTES,
           **fields: str) -> ReferralState | Refusal:
    """What the notify-responses consumer does with one answer from the holder: check, note limit, enact."""
    response = ResponseData(referral_id=state.referral_id, status=status, **fields)  # type: ignore[arg-type]
    checked = check_response(response, state.status, sender=state.agency, holder=state.agency,
                             agencies={state.agency})
    if isinstance(checked, Refusal):
        return checked
    if full := note_limit(state, checked, response.reason, response.note, limit):
        return Refusal("note_limit", full)
    return enact(state, checked, at=at, reason=response.reason, note=response.note)


def test_alternating_long_notes_are_capped_and_a_later_completion_is_still_recorded(policy: EscalationPolicy) -> None:
    state = apply(new_state(request(policy), policy, T0), S.ACCEPTED, "agency", at=T0)
    state = apply(state, S.IN_PROGRESS, "agency", at=T0)
    refused = repeats = 0
    for n in range(720):  # the issue: 700 posts of two alternating 2,000-character notes froze the referral
        moved = answer(state, ResponseStatus.IN_PROGRESS, T0 + timedelta(minutes=n), note=(LONG_A, LONG_B)[n % 2])
        if isinstance(moved, Refusal):
            refused += 1
            assert moved.code == "note_limit" and f"{MAX_PROGRESS_NOTES} progress notes" in moved.reason
            assert "status change" in moved.reason
            continue
        if moved is state:  # the same note as the last one: a duplicate, nothing to record
            repeats += 1
            continue
        assert moved.version == state.version + 1
        state = moved
        assert len(state.model_dump_json()) < MAX_STATE_BYTES
    assert state.progress_notes == MAX_PROGRESS_NOTES
    assert refused == repeats == (720 - MAX_PROGRESS_NOTES) / 2, "past the cap: every new note refused"
    # Status changes are always recorded, however long the referral's life: 700 holds and resumptions, each
    # with the longest note, then the outcome.
    for n in range(700):
        status = (ResponseStatus.ON_HOLD, ResponseStatus.IN_PROGRESS)[n % 2]
        moved = answer(state, status, T0 + timedelta(days=1, minutes=n), note=(LONG_A, LONG_B)[n % 2])
        assert isinstance(moved, ReferralState) and moved.status.value == status.value
        state = moved
        assert len(state.model_dump_json()) < MAX_STATE_BYTES
    closed = answer(state, ResponseStatus.COMPLETED, T0 + timedelta(days=2), note="service given")
    assert isinstance(closed, ReferralState) and closed.status is S.COMPLETED
    assert closed.outcome is not None and closed.outcome.note == "service given"
    assert len(closed.model_dump_json()) < MAX_STATE_BYTES / 2
    # The working copy kept what the clocks read and counted what it let go (the facts stay in REFERRALS).
    assert closed.history[0].status is S.REQUESTED and closed.history[-1].status is S.COMPLETED
    assert {h.status for h in closed.history} >= {S.REQUESTED, S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD, S.COMPLETED}
    assert closed.entered(S.ACCEPTED) == T0
    assert closed.steps == 3 + MAX_PROGRESS_NOTES + 700 + 1 and closed.compacted > 0


def test_the_note_limit_is_the_callers(policy: EscalationPolicy) -> None:
    state = apply(new_state(request(policy), policy, T0), S.ACCEPTED, "agency", at=T0)
    for n in range(3):
        moved = answer(state, ResponseStatus.ACCEPTED, T0, limit=3, note=f"update {n}")
        assert isinstance(moved, ReferralState)
        state = moved
    full = answer(state, ResponseStatus.ACCEPTED, T0, limit=3, note="update 3")
    assert isinstance(full, Refusal) and full.code == "note_limit"
    assert answer(state, ResponseStatus.ACCEPTED, T0, limit=3) is state, "a plain repeat is still a duplicate"
    assert isinstance(answer(state, ResponseStatus.IN_PROGRESS, T0, limit=3, note="update 3"), ReferralState)


@settings(max_examples=50)
@given(st.lists(st.tuples(st.sampled_from(list(S)), st.text(max_size=2000)), min_size=1, max_size=400))
def test_compaction_keeps_the_first_entry_the_last_of_each_status_and_the_newest(
    entries: list[tuple[S, str]],
) -> None:
    history = [HistoryEntry(status=S.REQUESTED, at=T0, actor="referrer")] + [
        HistoryEntry(status=status, at=T0 + timedelta(seconds=i), actor="agency", note=note)
        for i, (status, note) in enumerate(entries, start=1)
    ]
    budget = 64 * 1024
    kept = compact(history, budget)
    assert kept[0] == history[0] and kept[-1] == history[-1]
    assert {h.status for h in kept} == {h.status for h in history}
    for status in {h.status for h in history}:
        assert next(h for h in reversed(kept) if h.status is status) == next(
            h for h in reversed(history) if h.status is status)
    assert [h for h in history if h in kept] == kept, "order kept, nothing invented"
    pinned = {0, *{h.status: i for i, h in enumerate(history)}.values()}
    unpinned = sum(len(h.model_dump_json()) for i, h in enumerate(history) if h in kept and i not in pinned)
    assert kept == history or unpinned <= budget


# --------------------------------------------------------------- the auditor's glance (issue 15)


@settings(max_examples=200)
@given(status_events(), st.booleans(), st.integers(0, 3 * 24 * 60), st.integers(1, 600))
def test_the_auditors_glance_never_skips_a_referral_its_full_state_would_repair(
    steps: list[tuple[S, Actor, str | None, str | None, str | None]], timer_lost: bool, audit_minute: int,
    grace_s: int,
) -> None:
    policy = load_policy(POLICY_FILE, scale=0.001)
    state = new_state(request(policy), policy, T0)
    for i, (status, actor, reason, note, redirect_to) in enumerate(steps, start=1):
        with contextlib.suppress(TransitionRefused):
            state = apply(state, status, actor, at=T0 + timedelta(minutes=i), reason=reason, note=note,
                          redirect_to=redirect_to)
    state = arm(state, T0 + timedelta(minutes=len(steps)))
    if timer_lost:
        state = state.model_copy(update={"escalation": state.escalation.model_copy(update={"timer": None})})
    at, grace = T0 + timedelta(minutes=audit_minute), timedelta(seconds=grace_s)

    glance = StateGlance.model_validate_json(state.model_dump_json())
    assert (glance.referral_id, glance.status, glance.escalation.timer) == (
        state.referral_id, state.status, state.escalation.timer)
    assert (glance.history[-1].status, glance.history[-1].at) == (state.history[-1].status, state.history[-1].at)
    last, timer = state.history[-1], state.escalation.timer
    repairs = (last.status is not S.REQUESTED and at - last.at < REPUBLISH_WITHIN) or not state.status.terminal and (
        (timer is None and arm(state, at).escalation.timer is not None)
        or (timer is not None and timer.fire_at + grace < at))
    assert may_need_repair(glance, at, grace) or not repairs
