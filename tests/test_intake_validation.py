"""Admission of reports: the reference report passes; every bad input is refused with reasons that name
the field and never repeat the victim's identity or narrative."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.events import CaseRejectedData, FollowUpData, ReportData
from services.intake.validation import (
    ParsedReport,
    Rejection,
    parse_http_report,
    parse_report,
    parse_report_data,
    rejected_event,
)
from tests.conftest import REFERENCE_REPORT

REPORTER = "bp3mi-kalsel"
AGENCIES = frozenset({"bp3mi-kalsel", "polda-kalsel", "uptd-ppa-kalsel"})
NAME = REFERENCE_REPORT["data"]["victim"]["identity"]["name"]
NIK = REFERENCE_REPORT["data"]["victim"]["identity"]["nik"]
PHONE = REFERENCE_REPORT["data"]["victim"]["identity"]["phone"]
NARRATIVE = REFERENCE_REPORT["data"]["narrative"]
SECRETS = (NAME, "Siti", NIK, PHONE, PHONE.lstrip("+"), "restaurant job", "passport held")

REFERENCE: dict[str, Any] = copy.deepcopy(REFERENCE_REPORT)
CASE_ID = "case-0123456789abcdef0123"


def reference() -> dict[str, Any]:
    return copy.deepcopy(REFERENCE)


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def parse(raw: bytes, reporter: str = REPORTER) -> ParsedReport | Rejection:
    return parse_report(raw, reporter=reporter, known_agencies=AGENCIES)


def assert_no_secrets(rejection: Rejection) -> None:
    for text in rejection.reasons:
        for secret in SECRETS:
            assert secret not in text, f"reason repeats victim data: {text!r}"


def mutated(change: Callable[[dict[str, Any]], None]) -> bytes:
    event = reference()
    change(event)
    return encode(event)


def followup(data: dict[str, Any]) -> bytes:
    event = reference()
    event["data"] = {"report_ref": "BP3MI-KS-2026-0412-F1", "case_id": CASE_ID, **data}
    return encode(event)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = event
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(event: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = event
        for part in parents:
            node = node[part]
        del node[last]

    return change


BAD: list[Any] = [
    pytest.param(b"Siti A. 6371015507100003", 400, "body", id="not-json"),
    pytest.param(b"\xff\xfe{\x00", 400, "body", id="not-utf8"),
    pytest.param(b'[{"name": "Siti A."}]', 400, "body", id="json-array"),
    pytest.param(b'"Siti A. 6371015507100003"', 400, "body", id="json-string"),
    pytest.param(b'{"specversion": "1.0", "age": NaN}', 400, "body", id="json-nan"),
    pytest.param(b'{"data": {"name": "Siti A."}, "data": {}}', 400, "body", id="duplicate-key"),
    pytest.param(b"[" * 5000 + b"]" * 5000, 400, "body", id="deeply-nested"),
    pytest.param(mutated(_set("data.narrative", NARRATIVE * 1000)), 413, "body", id="oversized-body"),
    pytest.param(mutated(_drop("specversion")), 422, "specversion", id="no-specversion"),
    pytest.param(mutated(_drop("id")), 422, "id", id="no-id"),
    pytest.param(mutated(_drop("type")), 422, "type", id="no-type"),
    pytest.param(mutated(_set("specversion", "0.3")), 422, "specversion", id="wrong-specversion"),
    pytest.param(mutated(_set("type", "alur.report.deleted.v1")), 422, "type", id="wrong-type"),
    pytest.param(mutated(_set("time", "2026-11-20T08:15:00")), 422, "time", id="time-without-offset"),
    pytest.param(mutated(_set("data", NARRATIVE)), 422, "data", id="data-not-object"),
    pytest.param(mutated(_drop("data.victim")), 422, "data.victim", id="no-victim"),
    pytest.param(mutated(_set("data.victim.age", "sixteen")), 422, "data.victim.age", id="age-not-number"),
    pytest.param(mutated(_set("data.victim.age", "16")), 422, "data.victim.age", id="age-as-string"),
    pytest.param(mutated(_set("data.victim.age", True)), 422, "data.victim.age", id="age-bool"),
    pytest.param(mutated(_set("data.victim.age", 16.5)), 422, "data.victim.age", id="age-fraction"),
    pytest.param(mutated(_set("data.victim.age", -3)), 422, "data.victim.age", id="age-negative"),
    pytest.param(mutated(_set("data.victim.age", 10**30)), 422, "data.victim.age", id="age-absurd"),
    pytest.param(mutated(_set("data.victim.pseudonym", "   ")), 422, "data.victim.pseudonym", id="pseudonym-blank"),
    pytest.param(mutated(_set("data.location.regency", "9999")), 422, "data.location.regency", id="regency-unknown"),
    pytest.param(mutated(_set("data.location.regency", NIK)), 422, "data.location.regency", id="nik-in-regency"),
    pytest.param(mutated(_set("data.location.country", "my")), 422, "data.location.country", id="country-lowercase"),
    pytest.param(
        mutated(_set("data.needs", ["medical", "massage"])), 422, "data.needs[1]", id="need-unknown"
    ),
    pytest.param(mutated(_set("data.needs", [NAME])), 422, "data.needs[0]", id="name-in-needs"),
    pytest.param(mutated(_set("data.needs", "medical")), 422, "data.needs", id="needs-not-list"),
    pytest.param(
        mutated(_set("data.exploitation", ["fishing"])), 422, "data.exploitation[0]", id="exploitation-unknown"
    ),
    pytest.param(
        mutated(_set("data.indicators", ["FL02", "FL12"])), 422, "data.indicators[1]", id="indicator-unknown"
    ),
    pytest.param(mutated(_set("data.channel", PHONE)), 422, "data.channel", id="phone-in-channel"),
    pytest.param(mutated(_set("data.narrative", NARRATIVE * 70)), 422, "data.narrative", id="narrative-too-long"),
    pytest.param(
        mutated(_set("data.victim.identity.name", NAME * 40)), 422, "data.victim.identity.name", id="name-too-long"
    ),
    pytest.param(
        mutated(_set("data.victim.identity.nik", NIK + "9")), 422, "data.victim.identity.nik", id="nik-malformed"
    ),
    pytest.param(
        mutated(_set("data.victim.identity.phone", "call " + PHONE)),
        422,
        "data.victim.identity.phone",
        id="phone-malformed",
    ),
    pytest.param(
        mutated(_set("data.victim.identity.birth_date", "2010-02-30")),
        422,
        "data.victim.identity.birth_date",
        id="birth-date-impossible",
    ),
    pytest.param(mutated(_set("data.victim.identity", NIK)), 422, "data.victim.identity", id="identity-not-object"),
    pytest.param(mutated(_set("data.nickname", NAME)), 422, "data.nickname", id="extra-field"),
    pytest.param(mutated(_set("data.victim.religion", "x")), 422, "data.victim.religion", id="extra-victim-field"),
    pytest.param(mutated(_set("data.injured", "yes")), 422, "data.injured", id="flag-not-bool"),
    pytest.param(
        mutated(_set("data.identification_status", "confirmed_by_court")),
        422,
        "data.identification_status",
        id="status-not-for-new-report",
    ),
    pytest.param(mutated(_drop("data.consent")), 422, "data.consent", id="consent-missing"),
    pytest.param(
        mutated(_set("data.consent.share_with", "some")), 422, "data.consent.share_with", id="consent-share-unknown"
    ),
    pytest.param(
        mutated(_set("data.consent.share_with", [])), 422, "data.consent.share_with", id="consent-share-empty"
    ),
    pytest.param(
        mutated(_set("data.consent.share_with", ["police", "astrologer"])),
        422,
        "data.consent.share_with[1]",
        id="consent-agency-type-unknown",
    ),
    pytest.param(mutated(_drop("data.consent.recorded_by")), 422, "data.consent.recorded_by", id="consent-no-recorder"),
    pytest.param(
        mutated(_set("data.consent.recorded_at", "yesterday")), 422, "data.consent.recorded_at", id="consent-bad-time"
    ),
    pytest.param(
        followup({"report_ref": None, "needs": ["education"]}), 422, "data.report_ref", id="followup-ref-null"
    ),
    pytest.param(
        mutated(_set("data", {"case_id": CASE_ID, "needs": ["education"]})),
        422,
        "data.report_ref",
        id="followup-without-ref",
    ),
    pytest.param(
        followup({"case_id": "case-XYZ", "needs": ["education"]}), 422, "data.case_id", id="case-id-malformed"
    ),
    pytest.param(followup({"case_id": NIK, "needs": ["education"]}), 422, "data.case_id", id="case-id-is-nik"),
    pytest.param(followup({}), 422, "data", id="followup-changes-nothing"),
    pytest.param(followup({"victim": {"age": None}}), 422, "data.victim.age", id="followup-clears-age"),
    pytest.param(followup({"risk": None}), 422, "data.risk", id="followup-clears-risk"),
    pytest.param(followup({"victim": {"name": NAME}}), 422, "data.victim.name", id="followup-identity-misplaced"),
    pytest.param(
        mutated(lambda e: (e.update(type="alur.report.followup.v1"))), 422, "data.case_id", id="followup-type-no-case"
    ),
]


@pytest.mark.parametrize(("raw", "status", "field"), BAD)
def test_bad_input_is_rejected_naming_the_field(raw: bytes, status: int, field: str) -> None:
    outcome = parse(raw)

    assert isinstance(outcome, Rejection)
    assert outcome.http_status == status
    assert any(r.startswith(f"{field}: ") for r in outcome.reasons), outcome.reasons
    assert_no_secrets(outcome)


def test_unknown_reporting_agency_is_rejected() -> None:
    outcome = parse(encode(reference()), reporter="ngo-unknown")

    assert isinstance(outcome, Rejection)
    assert outcome.http_status == 422
    assert outcome.reasons == ["reporter: the sending agency 'ngo-unknown' is not in the registry"]
    assert outcome.report_ref == "BP3MI-KS-2026-0412"


def test_every_problem_is_listed_with_its_own_words() -> None:
    event = reference()
    event["data"]["victim"]["age"] = 130
    event["data"]["needs"] = ["medical", "psychological", "massage"]
    event["data"]["location"]["regency"] = "9999"
    event["data"]["victim"]["identity"]["nik"] = "63710155071000"
    del event["data"]["channel"]

    outcome = parse(encode(event))

    assert isinstance(outcome, Rejection)
    assert outcome.reasons == [
        "data.channel: required",
        "data.victim.age: must be between 0 and 120",
        "data.victim.identity.nik: must be 16 digits",
        "data.location.regency: unknown regency code '9999'; expected one of "
        "6301, 6302, 6303, 6304, 6305, 6306, 6307, 6308, 6309, 6310, 6311, 6371, 6372",
        "data.needs[2]: unknown need 'massage'; expected one of medical, psychological, legal_aid, shelter, "
        "social_rehabilitation, repatriation, reintegration, restitution, protection, documents, education, "
        "livelihood, investigation",
    ]
    assert outcome.event_id == REFERENCE["id"]
    assert outcome.report_ref == "BP3MI-KS-2026-0412"


def test_report_ref_is_kept_only_when_it_is_a_clean_code() -> None:
    event = reference()
    event["data"]["report_ref"] = NAME
    event["id"] = f"{NAME} {NIK}"

    outcome = parse(encode(event))

    assert isinstance(outcome, Rejection)
    assert outcome.report_ref is None and outcome.event_id is None
    assert_no_secrets(outcome)


def test_reference_report_is_accepted() -> None:
    outcome = parse(encode(reference()))

    assert isinstance(outcome, ParsedReport)
    assert outcome.report_ref == "BP3MI-KS-2026-0412"
    assert outcome.event_id == REFERENCE["id"]
    assert outcome.reporter == REPORTER
    assert not outcome.is_followup and isinstance(outcome.data, ReportData)
    assert outcome.warnings == []


def test_source_that_is_not_the_sender_is_a_warning_not_a_rejection() -> None:
    outcome = parse(encode(reference()), reporter="polda-kalsel")

    assert isinstance(outcome, ParsedReport)
    assert outcome.reporter == "polda-kalsel"
    assert [w.split(":")[0] for w in outcome.warnings] == ["source"]


def test_followup_is_recognised_by_case_id() -> None:
    outcome = parse(followup({"needs": ["education"], "victim": {"identity": {"phone": "+62811999000"}}}))

    assert isinstance(outcome, ParsedReport)
    assert outcome.is_followup and isinstance(outcome.data, FollowUpData)
    assert outcome.data.needs == ["education"]


def test_http_body_may_be_the_event_or_only_its_data() -> None:
    whole = parse_http_report(encode(reference()), reporter=REPORTER, known_agencies=AGENCIES)
    short = parse_http_report(encode(REFERENCE["data"]), reporter=REPORTER, known_agencies=AGENCIES)
    direct = parse_report_data(REFERENCE["data"], reporter=REPORTER, known_agencies=AGENCIES)

    assert isinstance(whole, ParsedReport) and isinstance(short, ParsedReport) and isinstance(direct, ParsedReport)
    assert whole.data == short.data == direct.data
    assert short.event_id is None


def test_http_short_form_reports_data_paths() -> None:
    data = copy.deepcopy(REFERENCE["data"])
    data["victim"]["age"] = -1

    outcome = parse_http_report(encode(data), reporter=REPORTER, known_agencies=AGENCIES)

    assert isinstance(outcome, Rejection)
    assert outcome.reasons == ["data.victim.age: must be between 0 and 120"]


def test_rejection_event_is_stable_and_carries_reasons() -> None:
    outcome = parse(mutated(_set("data.victim.age", -1)))
    assert isinstance(outcome, Rejection)

    first = rejected_event(outcome, reporter=REPORTER, stream_seq=7)
    again = rejected_event(outcome, reporter=REPORTER, stream_seq=7)

    assert first.id == again.id
    assert first.type == "alur.case.rejected.v1"
    assert CaseRejectedData.model_validate(json.loads(first.to_bytes())["data"]).reasons == outcome.reasons


# ---------------------------------------------------------------- never raises

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)
SECRET_VALUES = st.sampled_from([NAME, NIK, PHONE, NARRATIVE])


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


REFERENCE_PATHS = _paths(REFERENCE)


@st.composite
def mutated_reports(draw: st.DrawFn) -> dict[str, Any]:
    event = reference()
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(REFERENCE_PATHS))
        node: Any = event
        try:
            for part in path[:-1]:
                node = node[part]
            action = draw(st.sampled_from(["set", "secret", "delete", "extra"]))
            if action == "set":
                node[path[-1]] = draw(json_values)
            elif action == "secret":
                node[path[-1]] = draw(SECRET_VALUES)
            elif action == "delete" and isinstance(node, dict):
                del node[path[-1]]
            elif action == "extra" and isinstance(node, dict):
                node[draw(st.text(max_size=10))] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue
    return event


def _outcome_is_sound(outcome: ParsedReport | Rejection) -> None:
    assert isinstance(outcome, (ParsedReport, Rejection))
    if isinstance(outcome, Rejection):
        assert outcome.reasons
        assert outcome.http_status in (400, 413, 422)
        assert all(isinstance(r, str) and ": " in r for r in outcome.reasons)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_raises(value: Any) -> None:
    raw = json.dumps(value).encode()
    _outcome_is_sound(parse(raw))
    _outcome_is_sound(parse_http_report(raw, reporter=REPORTER, known_agencies=AGENCIES))
    _outcome_is_sound(parse_report_data(value, reporter=REPORTER, known_agencies=AGENCIES))


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    _outcome_is_sound(parse(raw))


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_reports())
def test_mutated_reference_never_raises_nor_leaks(event: dict[str, Any]) -> None:
    for raw in (encode(event), encode(event.get("data", {})) if isinstance(event.get("data"), dict) else b"{}"):
        outcome = parse_http_report(raw, reporter=REPORTER, known_agencies=AGENCIES)
        _outcome_is_sound(outcome)
        if isinstance(outcome, Rejection):
            assert_no_secrets(outcome)
