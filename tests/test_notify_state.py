"""ReferralState: apply, attempts, no victim data, and fold(events) == the state built by apply."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import ReferralRequestedData, ReferralStatusData, RuleReason
from contracts.vocab import AgencyType, Channel, Priority, ReferralStatus, Service
from services.notify.escalation import arm
from services.notify.lifecycle import Actor
from services.notify.policy import EscalationPolicy, load_policy
from services.notify.state import (
    MAX_ATTEMPTS_KEPT,
    DeliveryAttempt,
    ReferralState,
    TransitionRefused,
    apply,
    fold,
    new_state,
    record_attempt,
)

S = ReferralStatus
POLICY_FILE = Path(__file__).resolve().parents[1] / "deploy" / "kalsel" / "escalation.yaml"
T0 = datetime(2026, 11, 20, 8, 15, tzinfo=UTC)
MARKER = "PSEUDONYM-MUST-NOT-LEAK"


@pytest.fixture(scope="module")
def policy() -> EscalationPolicy:
    return load_policy(POLICY_FILE, scale=0.001)


def request(policy: EscalationPolicy, **overrides: object) -> ReferralRequestedData:
    fields: dict[str, object] = {
        "referral_id": "ref-" + "1" * 20,
        "case_id": "case-" + "2" * 20,
        "agency": "dinsos-kalsel",
        "agency_type": AgencyType.SOCIAL_SERVICES,
        "service": Service.SHELTER,
        "priority": Priority.MEDIUM,
        "due": policy.ack_due(Priority.MEDIUM, T0),
        "reasons": [RuleReason(rule_id="shelter", description="needs shelter", legal_basis="UU 21/2007 Pasal 51")],
        "ruleset_version": "test",
        "case": {"victim": {"pseudonym": MARKER}, "narrative": MARKER},
        "requested_at": T0,
    }
    return ReferralRequestedData.model_validate({**fields, **overrides})


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


@settings(max_examples=200, deadline=None)
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
