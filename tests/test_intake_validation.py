"""Admission of reports: the reference report passes; every bad input is refused with reasons that name
the field and never repeat the victim's identity or narrative."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import CaseRejectedData, FollowUpData, ReportData
from domain.validation import (
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
NOW = datetime(2026, 11, 20, 0, 20, tzinfo=UTC)
"""When intake received the reference report (sent 2026-11-20T08:15+08:00): the date checks' clock."""


def reference() -> dict[str, Any]:
    return copy.deepcopy(REFERENCE)


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def parse(raw: bytes, reporter: str = REPORTER) -> ParsedReport | Rejection:
    return parse_report(raw, reporter=reporter, known_agencies=AGENCIES, now=NOW)


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
    outcome = parse(mutated(_set("source", "ngo-unknown")), reporter="ngo-unknown")

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


def test_source_that_is_not_the_sender_is_refused() -> None:
    """Issue 10.5: a report naming another agency as `source` was filed under the sender without a word.
    (This test used to assert a warning; the issue asks for a refusal.)"""
    outcome = parse(encode(reference()), reporter="polda-kalsel")

    assert isinstance(outcome, Rejection)
    assert outcome.http_status == 422
    assert outcome.reasons == [
        "source: must be the sending agency 'polda-kalsel': the transport (the NATS subject, or the HTTP token) "
        "decides who reports, and a report is never filed under another"
    ]
    assert outcome.report_ref == "BP3MI-KS-2026-0412"


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


# ---------------------------------------------------------------- implausible data (issue 10.5)

IMPLAUSIBLE: list[Any] = [
    pytest.param(mutated(_set("data.victim.identity.birth_date", "2099-01-01")), "data.victim.identity.birth_date",
                 "is in the future", id="birth-date-2099"),
    pytest.param(mutated(_set("data.consent.recorded_at", "2099-01-01T00:00:00+07:00")), "data.consent.recorded_at",
                 "is in the future (more than 10 minutes after intake received it)", id="consent-recorded-2099"),
    pytest.param(mutated(_set("time", "2099-01-01T00:00:00+08:00")), "time",
                 "is in the future (more than 10 minutes after intake received it)", id="time-2099"),
    pytest.param(mutated(_set("time", "2026-11-20T00:31:00+00:00")), "time",
                 "is in the future (more than 10 minutes after intake received it)", id="time-past-the-skew"),
    pytest.param(mutated(_set("data.victim.identity.birth_date", "1950-03-01")), "data.victim.age",
                 "does not match data.victim.identity.birth_date (more than a year apart); correct whichever is wrong",
                 id="born-1950-aged-16"),
    pytest.param(mutated(_set("data.victim.identity.birth_date", "2008-11-20")), "data.victim.age",
                 "does not match data.victim.identity.birth_date (more than a year apart); correct whichever is wrong",
                 id="eighteen-today-said-sixteen"),
    pytest.param(mutated(_set("data.victim.identity.name", "Siti\x00A.")), "data.victim.identity.name",
                 "must not contain a control character (U+0000)", id="nul-in-name"),
    pytest.param(mutated(_set("data.victim.pseudonym", "KS-\u202e2140")), "data.victim.pseudonym",
                 "must not contain a bidirectional formatting character (U+202E)", id="rtl-override-in-pseudonym"),
    pytest.param(mutated(_set("data.victim.pseudonym", "KS\u20660412\u2069")), "data.victim.pseudonym",
                 "must not contain a bidirectional formatting character (U+2066)", id="bidi-isolate-in-pseudonym"),
    pytest.param(mutated(_set("data.consent.recorded_by", "officer\u200f-17")), "data.consent.recorded_by",
                 "must not contain a bidirectional formatting character (U+200F)", id="rlm-in-recorded-by"),
    pytest.param(mutated(_set("data.victim.disabilities", ["low vision", "deaf\x1b[2J"])),
                 "data.victim.disabilities[1]", "must not contain a control character (U+001B)",
                 id="escape-sequence-in-disability"),
    pytest.param(mutated(_set("data.narrative", NARRATIVE + "\x85more")), "data.narrative",
                 "must not contain a control character (U+0085)", id="c1-control-in-narrative"),
    pytest.param(mutated(_set("data.narrative", "line\x7f")), "data.narrative",
                 "must not contain a control character (U+007F)", id="del-in-narrative"),
    pytest.param(mutated(_set("data.victim.identity.nik", "\u0666" * 16)), "data.victim.identity.nik",
                 "must be 16 digits", id="arabic-indic-digits-in-nik"),
    pytest.param(followup({"victim": {"pseudonym": "FU\u202e1"}}), "data.victim.pseudonym",
                 "must not contain a bidirectional formatting character (U+202E)", id="followup-rtl-override"),
    pytest.param(followup({"victim": {"identity": {"birth_date": "2099-01-01"}}}), "data.victim.identity.birth_date",
                 "is in the future", id="followup-birth-date-2099"),
    pytest.param(followup({"consent": {"share_with": "all", "recorded_by": "x", "recorded_at": "2099-01-01T00:00Z"}}),
                 "data.consent.recorded_at", "is in the future (more than 10 minutes after intake received it)",
                 id="followup-consent-2099"),
    pytest.param(followup({"victim": {"age": 16, "identity": {"birth_date": "1950-03-01"}}}), "data.victim.age",
                 "does not match data.victim.identity.birth_date (more than a year apart); correct whichever is wrong",
                 id="followup-age-and-birth-date-disagree"),
    pytest.param(followup({"narrative": "note\x00"}), "data.narrative", "must not contain a control character (U+0000)",
                 id="followup-nul-in-narrative"),
]


@pytest.mark.parametrize(("raw", "field", "problem"), IMPLAUSIBLE)
def test_implausible_data_is_refused_naming_the_field(raw: bytes, field: str, problem: str) -> None:
    outcome = parse(raw)

    assert isinstance(outcome, Rejection), outcome
    assert outcome.http_status == 422
    assert outcome.reasons == [f"{field}: {problem}"]
    assert_no_secrets(outcome)


PLAUSIBLE: list[Any] = [
    pytest.param(_set("data.narrative", "line one\n\tline two\r\nline three"), id="narrative-lines-and-tabs"),
    pytest.param(_set("time", "2026-11-20T00:29:00+00:00"), id="time-within-the-skew"),
    pytest.param(_set("data.victim.identity.birth_date", "2010-11-20"), id="sixteen-today"),
    pytest.param(_set("data.victim.identity.birth_date", "2010-11-21"), id="turns-sixteen-tomorrow"),
    pytest.param(_set("data.victim.identity.birth_date", "2009-11-21"), id="turns-seventeen-tomorrow"),
    pytest.param(_set("data.consent.recorded_at", "2026-11-20T08:00:00+08:00"), id="consent-before-report"),
    pytest.param(_set("data.victim.pseudonym", "Nur \u0627\u0644\u0639\u0631\u0628\u064a\u0629"),
                 id="right-to-left-script-without-controls"),
]


@pytest.mark.parametrize("change", PLAUSIBLE)
def test_plausible_data_is_accepted_without_warnings(change: Callable[[dict[str, Any]], None]) -> None:
    outcome = parse(mutated(change))

    assert isinstance(outcome, ParsedReport), outcome
    assert outcome.warnings == []


def test_an_old_report_is_kept_with_a_warning_naming_time() -> None:
    outcome = parse(mutated(_set("time", "2026-08-01T09:00:00+08:00")))

    assert isinstance(outcome, ParsedReport)
    assert outcome.warnings == [
        "time: is more than 90 days before intake received the report; kept, check the date with the reporting agency"
    ]


def test_duplicate_keys_are_refused_on_both_forms_of_the_http_door() -> None:
    """The data-only form used to let the last key win, while the NATS path refused the same bytes."""
    data = json.dumps(REFERENCE["data"])
    twice = data[:-1] + ', "report_ref": "OTHER-REF"}'
    event = encode(reference())[:-1] + b', "data": {}}'

    for raw in (twice.encode(), event):
        for outcome in (parse_http_report(raw, reporter=REPORTER, known_agencies=AGENCIES), parse(raw)):
            assert isinstance(outcome, Rejection)
            assert outcome.http_status == 400
            assert len(outcome.reasons) == 1 and outcome.reasons[0].startswith("body: has a key more than once")


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


@settings(max_examples=300)
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


@settings(max_examples=400)
@given(mutated_reports())
def test_mutated_reference_never_raises_nor_leaks(event: dict[str, Any]) -> None:
    for raw in (encode(event), encode(event.get("data", {})) if isinstance(event.get("data"), dict) else b"{}"):
        outcome = parse_http_report(raw, reporter=REPORTER, known_agencies=AGENCIES)
        _outcome_is_sound(outcome)
        if isinstance(outcome, Rejection):
            assert_no_secrets(outcome)
