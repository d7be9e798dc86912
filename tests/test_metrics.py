"""The pure parts of the metrics: closed label sets whatever the input, subject patterns, the catalogue's
consistency, and which referrals count as open and overdue (no broker)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from contracts import subjects
from contracts.vocab import ReferralStatus
from domain.reasons import REJECTION_CODES, reason_code
from runtime.metrics import (
    ALUR_METRICS,
    LEVELS,
    ServiceMetrics,
    catalogue,
    level_label,
    subject_pattern,
)
from services.notify.gauges import ReferralGauges, Standing, Written, standing, tally
from services.notify.state import ReferralState, apply, new_state
from tests.referral_support import T0, request

S = ReferralStatus


@given(st.text(max_size=80))
def test_every_reason_counts_under_a_code_of_the_closed_set(text: str) -> None:
    assert reason_code(text) in REJECTION_CODES


def test_reason_codes_name_the_field_at_fault() -> None:
    assert reason_code("data.victim.identity.nik: must be 16 digits") == "data.victim"
    assert reason_code("data.needs[2]: unknown need 'x'") == "data.needs"
    assert reason_code("body: is not valid JSON (UTF-8)") == "body"
    assert reason_code("data.6371015507100003: unknown field") == "other"
    assert reason_code("data.<unnamed field>: unknown field") == "other"


@given(st.integers(min_value=1, max_value=10_000))
def test_escalation_levels_stay_in_their_set(level: int) -> None:
    assert level_label(level) in LEVELS


def test_subject_patterns_carry_no_key() -> None:
    referral = "ref-" + "a" * 20
    assert subject_pattern(subjects.timer_fired(referral, "ack")) == "alur.timer.fired.*.*"
    assert subject_pattern(subjects.report("bp3mi-kalsel")) == "alur.report.*"
    assert subject_pattern(subjects.referral("requested", "polda-kalsel")) == "alur.referral.requested.*"
    assert subject_pattern(subjects.case_registered("6371")) == "alur.case.registered.*"
    assert subject_pattern(subjects.retention_expired(42)) == "alur.retention.expired.*"
    assert subject_pattern("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.CASES.routing").endswith("CASES.routing")


def test_the_catalogue_gives_every_domain_metric_the_service_label() -> None:
    specs = catalogue()
    assert all(specs[name].labels[0] == "service" for name in ALUR_METRICS)
    assert "alur_decisions" not in specs and "up" in specs
    for spec in specs.values():
        assert set(spec.values) <= set(spec.labels)


def test_a_label_value_outside_its_set_is_dropped_not_raised() -> None:
    metrics = ServiceMetrics("notify")
    metrics.referral("police", "made-up")
    metrics.referral("police", "acknowledged")
    text = generate_latest(metrics.registry).decode()
    assert 'status="acknowledged"' in text and "made-up" not in text


def test_open_and_overdue_follow_the_running_deadline(policy) -> None:
    state = new_state(request(policy), policy, T0)
    before, after = state.due - timedelta(seconds=1), state.due + timedelta(seconds=1)
    waiting = standing(state)
    assert waiting == Standing("social_services", state.due)
    assert tally([waiting], before) == ({"social_services": 1}, {})
    assert tally([waiting], after) == ({"social_services": 1}, {"social_services": 1})
    acknowledged = apply(state, S.ACKNOWLEDGED, "agency", at=T0)
    later = standing(acknowledged)
    assert later is not None and later.due > state.due, "acknowledged: the decision deadline runs now"
    assert tally([later], after) == ({"social_services": 1}, {})
    closed = apply(acknowledged, S.REJECTED, "agency", at=T0, reason="no_capacity_waitlist")
    assert standing(closed) is None


def _states(policy) -> list[ReferralState]:
    state = new_state(request(policy), policy, T0)
    acknowledged = apply(state, S.ACKNOWLEDGED, "agency", at=T0)
    return [state, acknowledged, apply(acknowledged, S.REJECTED, "agency", at=T0, reason="no_capacity_waitlist")]


def test_a_written_standing_is_found_only_for_the_same_bytes(policy) -> None:
    first, second, _ = _states(policy)
    written = Written(capacity=2)
    written.add("r1", first.model_dump_json().encode(), first)
    assert written.take("r1", second.model_dump_json().encode()) == (False, None), "other bytes: parse them"
    assert written.take("r1", first.model_dump_json().encode()) == (True, standing(first))
    assert written.take("r1", first.model_dump_json().encode()) == (False, None), "taken once"
    for key in ("a", "b", "c"):
        written.add(key, b"x", first)
    assert written.take("a", b"x") == (False, None), "the oldest is dropped past the capacity"
    assert written.take("c", b"x") == (True, standing(first))


@given(st.lists(st.tuples(st.sampled_from(["r1", "r2", "r3"]), st.integers(0, 2), st.booleans(),
                          st.booleans()), max_size=30))
def test_the_gauges_count_the_same_whether_a_write_was_this_process_or_another(policy, writes) -> None:
    """Own writes skip the parse; the standings come out as if every write had been parsed."""
    states = _states(policy)
    parsed, cached = ReferralGauges(None, Written(capacity=2)), ReferralGauges(None, Written(capacity=2))  # type: ignore[arg-type]
    for key, n, own, stored in writes:
        payload = states[n].model_dump_json().encode()
        if own:
            cached.written.add(key, payload, states[n])
        if stored:
            parsed._apply(key, payload)
            cached._apply(key, payload)
    assert cached.standings == parsed.standings
