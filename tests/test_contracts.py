"""The wire contract: committed JSON Schemas match the models; events and subjects round-trip."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import (
    CaseRejectedData,
    DeadLetterData,
    EscalationData,
    ReferralRequestedData,
    ReferralStatusData,
    ReportData,
    ResponseData,
    ResponseRefusedData,
)
from contracts.schema_gen import SCHEMA_DIR, render
from contracts.vocab import Regency
from tests.conftest import REFERENCE_REPORT

REF = "ref-0123456789abcdef0123"
CASE = "case-0123456789abcdef0123"
NOW = datetime(2026, 11, 20, 8, 15, tzinfo=UTC)


def test_committed_schemas_match_the_models() -> None:
    rendered = render()
    committed = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    assert committed.keys() == rendered.keys(), "run `make schemas` and commit contracts/schemas"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} drifted from its model: run `make schemas` and commit"


def test_reference_report_round_trips() -> None:
    event = CloudEvent[ReportData].model_validate(REFERENCE_REPORT)
    again = CloudEvent[ReportData].model_validate_json(event.to_bytes())
    assert again == event
    assert again.data.victim.age_group.value == "child"


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (ReferralRequestedData, {"referral_id": REF, "case_id": CASE, "agency": "polda-kalsel", "agency_type": "police",
                                 "service": "investigation", "priority": "high", "due": NOW.isoformat(),
                                 "reasons": [{"rule_id": "r1", "description": "d", "legal_basis": "UU 21/2007"}],
                                 "ruleset_version": "v1", "case": {"case_id": CASE}}),
        (ReferralStatusData, {"referral_id": REF, "case_id": CASE, "agency": "polda-kalsel", "status": "accepted"}),
        (ResponseData, {"referral_id": REF, "status": "rejected", "reason": "no_capacity_waitlist"}),
        (ResponseRefusedData, {"agency": "polda-kalsel", "reason": "not yours", "code": "wrong_agency"}),
        (CaseRejectedData, {"reporter": "bp3mi-kalsel", "reasons": ["data.victim: field required"]}),
        (EscalationData, {"referral_id": REF, "case_id": CASE, "agency": "polda-kalsel", "status": "escalated",
                          "level": 2, "action": "raise", "target": "coordinator", "overdue": "ack",
                          "due": NOW.isoformat(), "reason": "acknowledgement overdue"}),
        (DeadLetterData, {"stream": "REPORTS", "consumer": "intake", "subject": "alur.report.x", "stream_seq": 4,
                          "deliveries": 10, "error": "KeyError", "service": "intake", "failed_at": NOW.isoformat()}),
    ],
)
def test_events_round_trip(model: type, data: dict) -> None:
    event = CloudEvent[model].build(type="alur.test.v1", source="alur/test", subject="s", data=model.model_validate(data))
    parsed = CloudEvent[model].model_validate_json(event.to_bytes())
    assert parsed.data == event.data
    body = json.loads(event.to_bytes())
    assert body["specversion"] == "1.0" and body["datacontenttype"] == "application/json"


def test_derived_ids_are_stable_and_distinct() -> None:
    assert derived_id("a", "b") == derived_id("a", "b")
    assert derived_id("a", "b") != derived_id("ab")


@given(st.sampled_from(["bp3mi-kalsel", "polda-kalsel", "gt-kalsel", "x1"]),
       st.sampled_from(list(Regency)))
def test_subjects_build_and_parse(agency: str, regency: Regency) -> None:
    assert subjects.parse(subjects.report(agency)) == subjects.Parsed("report", None, agency)
    assert subjects.parse(subjects.response(agency)).key == agency
    assert subjects.parse(subjects.case_registered(regency)) == subjects.Parsed("case", "registered", regency.value)
    assert subjects.parse(subjects.referral("acknowledged", agency)) == subjects.Parsed("referral", "acknowledged", agency)


@pytest.mark.parametrize("bad", ["Polda", "a.b", "a*", "a>", "", "x" * 70])
def test_subject_builders_refuse_what_is_not_an_agency_id(bad: str) -> None:
    with pytest.raises(ValueError):
        subjects.report(bad)
    assert subjects.case_rejected(bad) == "alur.case.rejected.unknown"


def test_topology_declares_exactly_the_contract_buckets_and_streams() -> None:
    from contracts.buckets import Bucket
    from runtime.provision import load_topology

    topology = load_topology()
    assert set(topology.kv) == {b.value for b in Bucket}
    assert set(topology.streams) == {subjects.REPORTS_STREAM, subjects.CASES_STREAM, subjects.REFERRALS_STREAM,
                                     subjects.DLQ_STREAM, subjects.TIMERS_STREAM, subjects.ADVISORIES_STREAM}


def test_every_catalogued_type_has_a_schema_that_pins_it() -> None:
    from contracts.catalog import EVENTS

    for name in EVENTS:
        schema = json.loads((SCHEMA_DIR / f"{name}.json").read_text())
        assert schema["properties"]["type"]["const"] == name
