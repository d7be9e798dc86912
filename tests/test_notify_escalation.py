"""Escalation: the policy as data, timers at priority × scale, stale timers, ladders, statutory clocks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.events import (
    EscalationData,
    ReferralRequestedData,
    ReferralStatusData,
    RuleReason,
)
from contracts.vocab import AgencyType, Priority, ReferralStatus, Service
from domain.escalation_policy import (
    EscalationPolicy,
    load_policy,
    parse_policy,
)
from runtime.settings import Settings
from services.notify.escalation import (
    EscalationStep,
    arm,
    deadlines,
    next_timer,
    on_fire,
)
from services.notify.state import ReferralState, TransitionRefused, apply, fold, new_state

S = ReferralStatus
POLICY_FILE = Path(__file__).resolve().parents[1] / "deploy" / "kalsel" / "escalation.yaml"
SCALE = 0.001
T0 = datetime(2026, 11, 20, 8, 15, tzinfo=UTC)
GT = ["gt-kalsel"]
HOURS = {Priority.HIGH: 1, Priority.MEDIUM: 6, Priority.LOW: 24}


@pytest.fixture(scope="module")
def policy() -> EscalationPolicy:
    return load_policy(POLICY_FILE, scale=SCALE)


def h(hours: float) -> timedelta:
    """Policy hours in wall-clock time at the test scale."""
    return timedelta(hours=hours) * SCALE


def request(policy: EscalationPolicy, **overrides: object) -> ReferralRequestedData:
    priority = Priority(str(overrides.get("priority", Priority.MEDIUM)))
    fields: dict[str, object] = {
        "referral_id": "ref-" + "3" * 20,
        "case_id": "case-" + "4" * 20,
        "agency": "uptd-ppa-banjarmasin",
        "agency_type": AgencyType.UPTD_PPA,
        "service": Service.CASE_MANAGEMENT,
        "priority": priority,
        "due": T0 + h(HOURS[priority]),
        "reasons": [RuleReason(rule_id="child", description="a child victim", legal_basis="UU 21/2007")],
        "ruleset_version": "test",
        "case": {},
        "requested_at": T0,
    }
    return ReferralRequestedData.model_validate({**fields, **overrides})


def started(policy: EscalationPolicy, **overrides: object) -> ReferralState:
    return arm(new_state(request(policy, **overrides), policy, T0), T0)


def fire(state: ReferralState) -> EscalationStep:
    timer = state.escalation.timer
    assert timer is not None
    step = on_fire(state, timer, timer.fire_at, coordinators=GT)
    assert step is not None
    return step


def test_shipped_policy_loads_and_scale_comes_from_env(policy: EscalationPolicy) -> None:
    assert policy.scale == SCALE
    assert {c.name for c in policy.statutory} >= {"rehab_request_7d", "first_aid_7d", "lpsk_decision_7d"}
    assert Settings.from_env({"ALUR_SLA_SCALE": "0.01"}).sla_scale == 0.01
    assert Settings.from_env({}).sla_scale == 1.0
    with pytest.raises(ValueError, match="ALUR_SLA_SCALE"):
        Settings.from_env({"ALUR_SLA_SCALE": "-1"})


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("update", "ladder"), {"levels": [{"action": "remind"}, {"action": "expire"}]}, "never expired"),
        (("ack", "ladder"), {"levels": [{"action": "remind"}]}, "sit silent"),
        (("ack", "within"), {"high": "1h", "medium": "6h", "low": "24h"}, "ack.within"),
        (("decision", "ladder", "levels"), [{"action": "expire"}, {"action": "remind", "after": "1h"}], "last level"),
        (("decision", "ladder", "levels", 0, "afterr"), "1h", "afterr"),
        (("decision", "within"), "soon", "within"),
    ],
)
def test_policy_is_validated_whole(path: tuple[str | int, ...], value: object, message: str) -> None:
    data = yaml.safe_load(POLICY_FILE.read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ValidationError, match=message):
        parse_policy(data)


@pytest.mark.parametrize("priority", list(Priority))
def test_ack_timer_is_due_at_priority_times_scale(policy: EscalationPolicy, priority: Priority) -> None:
    state = started(policy, priority=priority)
    timer = state.escalation.timer
    assert timer is not None
    assert (timer.purpose, timer.level) == ("ack", 1)
    assert timer.fire_at == timer.due == T0 + h(HOURS[priority])


def test_ack_ladder_reminds_raises_then_expires(policy: EscalationPolicy) -> None:
    state = started(policy, priority=Priority.HIGH)
    remind = fire(state)
    assert (remind.action, remind.level, remind.recipient) == ("remind", 1, "agency")
    assert remind.data.status == "reminded" and remind.data.notify == ["uptd-ppa-banjarmasin"]
    assert remind.next_timer is not None and remind.next_timer.fire_at == T0 + h(1) + h(1)
    raised = fire(remind.state)
    assert (raised.action, raised.level, raised.data.notify) == ("raise", 2, GT)
    assert raised.data.status == "escalated" and raised.state.status is S.REQUESTED
    expired = fire(raised.state)
    assert expired.expired and expired.level == 3
    assert expired.state.status is S.EXPIRED and expired.next_timer is None
    assert expired.state.outcome is not None and expired.state.outcome.reason == "ack_overdue"


def test_delivery_does_not_restart_the_ack_ladder(policy: EscalationPolicy) -> None:
    reminded = fire(started(policy)).state
    delivered = arm(apply(reminded, S.DELIVERED, "system", at=T0 + h(6.5)), T0 + h(6.5))
    timer = delivered.escalation.timer
    assert timer is not None and (timer.purpose, timer.level) == ("ack", 2)


def test_a_timer_for_a_referral_that_moved_on_is_stale(policy: EscalationPolicy) -> None:
    state = started(policy)
    timer = state.escalation.timer
    assert timer is not None
    moved = arm(apply(state, S.ACKNOWLEDGED, "agency", at=T0 + h(1)), T0 + h(1))
    assert on_fire(moved, timer, timer.fire_at) is None
    step = fire(state)
    assert on_fire(step.state, timer, timer.fire_at) is None, "the same timer delivered twice fires once"
    closed = apply(state, S.CANCELLED, "referrer", at=T0 + h(1))
    assert on_fire(closed, timer, timer.fire_at) is None


def test_decision_is_due_after_acknowledgement(policy: EscalationPolicy) -> None:
    acked_at = T0 + h(2)
    state = arm(apply(started(policy), S.ACKNOWLEDGED, "agency", at=acked_at), acked_at)
    timer = state.escalation.timer
    assert timer is not None and timer.purpose == "decision" and timer.fire_at == acked_at + h(48)
    actions = []
    while state.escalation.timer is not None:
        step = fire(state)
        actions.append(step.action)
        state = step.state
    assert actions == ["remind", "raise", "expire"] and state.status is S.EXPIRED


def test_silence_after_acceptance_escalates_but_never_expires(policy: EscalationPolicy) -> None:
    accepted_at = T0 + h(3)
    state = arm(apply(started(policy), S.ACCEPTED, "agency", at=accepted_at), accepted_at)
    timer = state.escalation.timer
    assert timer is not None and timer.purpose == "update" and timer.fire_at == accepted_at + h(168)
    steps = []
    for _ in range(12):
        step = fire(state)
        steps.append(step)
        state = step.state
    assert [s.action for s in steps] == ["remind"] + ["raise"] * 11
    assert [s.level for s in steps] == list(range(1, 13))
    assert state.status is S.ACCEPTED and state.escalation.timer is not None
    assert steps[3].state.escalation.timer is not None
    assert steps[3].next_timer.fire_at - steps[2].next_timer.fire_at == h(72)  # type: ignore[union-attr]

    word_at = steps[-1].data.due + h(1000)
    noted = arm(apply(state, S.ACCEPTED, "agency", at=word_at, note="victim in safe house"), word_at)
    timer = noted.escalation.timer
    assert timer is not None and (timer.level, timer.fire_at) == (1, word_at + h(168))


def test_repeats_missed_during_an_outage_collapse_into_one(policy: EscalationPolicy) -> None:
    accepted_at = T0 + h(3)
    state = arm(apply(started(policy), S.ACCEPTED, "agency", at=accepted_at), accepted_at)
    state = fire(fire(state).state).state
    timer = state.escalation.timer
    assert timer is not None and timer.level == 3
    late = timer.fire_at + h(72) * 4 + h(1)
    step = on_fire(state, timer, late, coordinators=GT)
    assert step is not None and step.level == 7
    assert step.next_timer is not None and step.next_timer.fire_at > late


@pytest.mark.parametrize(
    ("service", "agency_type", "named", "clocks"),
    [
        (Service.SOCIAL_REHABILITATION, AgencyType.SOCIAL_SERVICES, None, {"rehab_request_7d"}),
        (Service.REPATRIATION, AgencyType.MIGRANT_WORKER_PROTECTION, None, {"rehab_request_7d"}),
        (Service.REINTEGRATION, AgencyType.SOCIAL_SERVICES, None, {"rehab_request_7d"}),
        (Service.MEDICAL, AgencyType.HEALTH, None, {"first_aid_7d"}),
        (Service.PROTECTION, AgencyType.WITNESS_VICTIM_PROTECTION, None, {"lpsk_decision_7d"}),
        (Service.PROTECTION, AgencyType.POLICE, None, set()),
        (Service.INVESTIGATION, AgencyType.POLICE, None, set()),
        (Service.INVESTIGATION, AgencyType.POLICE, "tpks_temp_protection_24h", {"tpks_temp_protection_24h"}),
        (Service.CASE_MANAGEMENT, AgencyType.UPTD_PPA, "tpks_report_to_police_72h", {"tpks_report_to_police_72h"}),
    ],
)
def test_statutory_clocks_run_where_they_apply(
    policy: EscalationPolicy, service: Service, agency_type: AgencyType, named: str | None, clocks: set[str]
) -> None:
    state = started(policy, service=service, agency_type=agency_type, statutory_clock=named)
    running = {d.purpose.removeprefix("statutory-") for d in deadlines(state) if d.purpose.startswith("statutory-")}
    assert running == clocks
    for run in state.escalation.clocks:
        clock = policy.clock(run.name)
        assert clock is not None and run.due == T0 + clock.within * SCALE


def test_an_unknown_named_clock_with_sla_hours_still_runs(policy: EscalationPolicy) -> None:
    state = started(policy, statutory_clock="pdp_breach_notice_72h", sla_hours=72)
    (run,) = state.escalation.clocks
    assert (run.name, run.due) == ("pdp_breach_notice_72h", T0 + h(72))


def test_statutory_clock_raises_beside_progress_and_stops_when_service_starts(policy: EscalationPolicy) -> None:
    accepted_at = T0 + h(1)
    state = started(policy, service=Service.SOCIAL_REHABILITATION, agency_type=AgencyType.SOCIAL_SERVICES)
    state = arm(apply(state, S.ACCEPTED, "agency", at=accepted_at), accepted_at)
    timer = state.escalation.timer
    assert timer is not None and timer.purpose == "statutory-rehab_request_7d" and timer.fire_at == T0 + h(168)
    step = fire(state)
    assert (step.action, step.recipient, step.state.status) == ("raise", "coordinator", S.ACCEPTED)
    assert "UU 21/2007 Pasal 52" in step.data.reason
    started_at = T0 + h(170)
    running = arm(apply(step.state, S.IN_PROGRESS, "agency", at=started_at), started_at)
    assert [d.purpose for d in deadlines(running)] == ["update"]


def test_running_escalations_keep_their_policy_snapshot(policy: EscalationPolicy) -> None:
    state = started(policy, priority=Priority.LOW)
    data = yaml.safe_load(POLICY_FILE.read_text())
    data["version"] = "kalsel-next"
    data["ack"]["ladder"]["levels"][1]["after"] = "3h"
    stricter = parse_policy(data, scale=SCALE)
    stored = ReferralState.model_validate_json(state.model_dump_json())
    assert stored.escalation.policy == policy.snapshot() and stored.escalation.policy.version == "kalsel-2026.1"
    step = fire(stored)
    assert step.next_timer is not None and step.next_timer.fire_at == T0 + h(24) + h(1)
    fresh = fire(started(stricter, priority=Priority.LOW))
    assert fresh.next_timer is not None and fresh.next_timer.fire_at == T0 + h(24) + h(3)


def test_the_snapshot_leaves_the_statutory_clocks_to_the_referrals_own_runs(policy: EscalationPolicy) -> None:
    snapshot = policy.snapshot()
    assert policy.statutory and policy.default_statutory_ladder is not None
    assert snapshot.statutory == [] and snapshot.default_statutory_ladder is None
    assert (snapshot.version, snapshot.scale, snapshot.ack, snapshot.decision, snapshot.update) == (
        policy.version, policy.scale, policy.ack, policy.decision, policy.update)
    assert len(snapshot.model_dump_json()) < len(policy.model_dump_json()) / 3
    state = started(policy, service=Service.SOCIAL_REHABILITATION, agency_type=AgencyType.SOCIAL_SERVICES)
    assert [run.name for run in state.escalation.clocks] == ["rehab_request_7d"]
    assert state.escalation.clocks[0].ladder == policy.clock("rehab_request_7d").ladder  # type: ignore[union-attr]


def test_a_state_stored_with_the_whole_policy_runs_as_one_with_the_snapshot(policy: EscalationPolicy) -> None:
    """States written before the snapshot left the statutory clocks out still read, and escalate the same."""
    accepted_at = T0 + h(1)
    state = started(policy, service=Service.SOCIAL_REHABILITATION, agency_type=AgencyType.SOCIAL_SERVICES)
    state = arm(apply(state, S.ACCEPTED, "agency", at=accepted_at), accepted_at)
    older = state.model_copy(update={"escalation": state.escalation.model_copy(update={"policy": policy})})
    stored = ReferralState.model_validate_json(older.model_dump_json())
    assert stored.escalation.policy == policy
    assert arm(stored, accepted_at).escalation.timer == state.escalation.timer
    mine, theirs = fire(state), fire(stored)
    assert (theirs.action, theirs.recipient, theirs.next_timer) == (mine.action, mine.recipient, mine.next_timer)


WALK = st.lists(st.tuples(st.sampled_from([s for s in S if s is not S.REQUESTED]), st.integers(1, 400)),
                max_size=8)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(list(Service)), st.sampled_from(list(AgencyType)),
       st.sampled_from([None, "rehab_request_7d", "lpsk_decision_7d", "tpks_report_to_police_72h", "not_in_policy"]),
       st.sampled_from([None, 24, 72]), WALK, st.integers(0, 4))
def test_a_referral_escalates_the_same_under_the_snapshot_as_under_the_whole_policy(
    service: Service, agency_type: AgencyType, clock: str | None, sla_hours: int | None,
    walk: list[tuple[S, int]], fires: int,
) -> None:
    """Whatever the referral, its clocks and its answers: the same deadlines, timers and escalation steps
    whether its state carries the snapshot or the whole policy (as states stored before the snapshot do)."""
    policy = load_policy(POLICY_FILE, scale=SCALE)
    slim = started(policy, service=service, agency_type=agency_type, statutory_clock=clock, sla_hours=sla_hours)
    whole = slim.model_copy(update={"escalation": slim.escalation.model_copy(update={"policy": policy})})
    at = T0
    for status, minutes in walk:
        at += timedelta(minutes=minutes) * SCALE * 60
        actor = {S.DELIVERED: "system", S.EXPIRED: "system", S.CANCELLED: "referrer"}.get(status, "agency")
        reason = {S.REJECTED: "out_of_mandate", S.NOT_DELIVERED: "could_not_contact"}.get(status)
        try:
            slim = arm(apply(slim, status, actor, at=at, reason=reason), at)  # type: ignore[arg-type]
        except TransitionRefused:
            continue
        whole = arm(apply(whole, status, actor, at=at, reason=reason), at)  # type: ignore[arg-type]
    for _ in range(fires):
        assert deadlines(whole) == deadlines(slim)
        assert whole.escalation.timer == slim.escalation.timer
        timer = slim.escalation.timer
        if timer is None:
            break
        mine = on_fire(slim, timer, timer.fire_at, coordinators=GT)
        theirs = on_fire(whole, timer, timer.fire_at, coordinators=GT)
        assert (mine is None) == (theirs is None)
        if mine is None or theirs is None:
            break
        assert (theirs.action, theirs.recipient, theirs.data, theirs.next_timer) == (
            mine.action, mine.recipient, mine.data, mine.next_timer)
        slim, whole = mine.state, theirs.state


def test_fold_with_escalation_events_rebuilds_the_running_ladder(policy: EscalationPolicy) -> None:
    req = request(policy, service=Service.MEDICAL, agency_type=AgencyType.HEALTH, agency="dinkes-banjarmasin")
    state = arm(new_state(req, policy, T0), T0)
    events: list[ReferralRequestedData | ReferralStatusData | EscalationData] = [req]

    def status(new: ReferralStatus, at: datetime, **kw: str) -> None:
        nonlocal state
        state = arm(apply(state, new, "agency", at=at, **kw), at)
        events.append(ReferralStatusData(referral_id=req.referral_id, case_id=req.case_id, agency=req.agency,
                                         status=new, at=at, **kw))  # fmt: skip

    step = fire(state)
    state = step.state
    events.append(step.data)
    status(S.ACKNOWLEDGED, T0 + h(7))
    status(S.ACCEPTED, T0 + h(8))
    for _ in range(3):
        step = fire(state)
        state = step.state
        events.append(step.data)
    rebuilt = arm(fold(events, policy), state.escalation.timer.fire_at)  # type: ignore[union-attr]
    assert rebuilt == state
    assert next_timer(rebuilt, T0) == state.escalation.timer
