"""Admission of a report: bytes from an agency become a validated report, or a rejection with reasons.

The transport (the NATS subject, or the HTTP token) decides who the reporter is; a body whose `source`
names another agency is refused, never silently filed under the sender. Bytes are read by
`domain.jsonbody` (bounded before any decoder runs), fields by the models of `contracts.events`, dates by
`domain.plausibility`. Nothing here raises on bad input: every outcome is a `ParsedReport` (with the
warnings of what was kept but doubted) or a `Rejection` whose reasons name each field and what is wrong,
never what the victim's record says.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from contracts.catalog import CASE_REJECTED, REPORT_FOLLOWUP, REPORT_SUBMITTED
from contracts.envelope import CloudEvent, derived_id
from contracts.events import CaseRejectedData, FollowUpData, ReportData
from contracts.vocab import AGENCY_ID_RE
from domain.jsonbody import HTTP_BAD_REQUEST, BodyRefused, load_json
from domain.plausibility import report_findings
from domain.reasons import reason, reasons_from, safe_code, unique

MAX_REPORT_BYTES = 64 * 1024
REPORT_TYPES = frozenset({REPORT_SUBMITTED, REPORT_FOLLOWUP})
INTAKE_SOURCE = "alur/intake"

REPORT_REF_RE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")
EVENT_ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
LONG_DIGITS = re.compile(r"\d{10,}")
"""A run of digits that could be a NIK (16) or a phone number: never echoed, and refused in a report_ref,
because a report_ref travels in case events, rejection subjects and logs."""

HTTP_UNPROCESSABLE = 422


@dataclass(frozen=True, slots=True)
class ParsedReport:
    """A report that passed validation: a new case (`ReportData`) or a follow-up (`FollowUpData`)."""

    event_id: str | None
    report_ref: str
    reporter: str
    data: ReportData | FollowUpData
    is_followup: bool
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused report: what could be read of its identity, and every reason it was refused."""

    reasons: list[str]
    http_status: int = HTTP_UNPROCESSABLE
    report_ref: str | None = None
    event_id: str | None = None

    def to_data(self, reporter: str, stream_seq: int | None = None) -> CaseRejectedData:
        """The `data` of `alur.case.rejected.<agency>`."""
        return CaseRejectedData(
            report_ref=self.report_ref,
            reporter=reporter,
            event_id=self.event_id,
            reasons=self.reasons,
            stream_seq=stream_seq,
        )


def parse_report(
    raw: bytes,
    *,
    reporter: str,
    known_agencies: Collection[str],
    max_bytes: int = MAX_REPORT_BYTES,
    now: datetime | None = None,
) -> ParsedReport | Rejection:
    """A whole CloudEvent from `alur.report.<reporter>` (or an HTTP body holding one), received at `now`."""
    body = load_report_body(raw, max_bytes)
    if isinstance(body, Rejection):
        return body
    return parse_report_event(body, reporter=reporter, known_agencies=known_agencies, now=now)


def parse_http_report(
    raw: bytes,
    *,
    reporter: str,
    known_agencies: Collection[str],
    max_bytes: int = MAX_REPORT_BYTES,
    now: datetime | None = None,
) -> ParsedReport | Rejection:
    """An HTTP `POST /v1/reports` body: either a whole CloudEvent or only its `data` object."""
    body = load_report_body(raw, max_bytes)
    if isinstance(body, Rejection):
        return body
    if is_event(body):
        return parse_report_event(body, reporter=reporter, known_agencies=known_agencies, now=now)
    return parse_report_data(body, reporter=reporter, known_agencies=known_agencies, now=now)


def is_event(body: Mapping[str, Any]) -> bool:
    """Whether an HTTP body is a whole CloudEvent (else it is only the `data` of one)."""
    return "specversion" in body or "data" in body


def load_report_body(raw: bytes, max_bytes: int = MAX_REPORT_BYTES) -> dict[str, Any] | Rejection:
    """The JSON object in `raw` (through the bounded loader), or the rejection that names `body`."""
    body = load_json(raw, max_bytes=max_bytes)
    if isinstance(body, BodyRefused):
        return Rejection(reasons=[body.reason], http_status=body.http_status)
    if not isinstance(body, dict):
        return Rejection(reasons=[reason(["body"], "must be a JSON object")], http_status=HTTP_BAD_REQUEST)
    return body


def parse_report_event(
    event: Mapping[str, Any], *, reporter: str, known_agencies: Collection[str], now: datetime | None = None
) -> ParsedReport | Rejection:
    """A decoded CloudEvent: its envelope, then its `data`."""
    reasons: list[str] = []
    sent_at: datetime | None = None
    if "specversion" not in event:
        reasons.append(reason(["specversion"], "required (a CloudEvents 1.0 event)"))
    try:
        sent_at = CloudEvent[Any].model_validate(event).time
    except ValidationError as error:
        reasons += reasons_from(error, prefix=())
    kind = event.get("type")
    if isinstance(kind, str) and kind not in REPORT_TYPES and not any(r.startswith("type:") for r in reasons):
        reasons.append(reason(["type"], f"must be {REPORT_SUBMITTED}" + _quoted(kind, "not")))
    event_id = _clean(event.get("id"), EVENT_ID_RE)
    data = event.get("data")
    if "data" in event and not isinstance(data, Mapping):
        reasons.append(reason(["data"], "must be an object"))
    source = event.get("source")
    if isinstance(source, str) and source != reporter:
        reasons.append(_foreign_source(reporter))
    if isinstance(data, Mapping):
        if kind == REPORT_FOLLOWUP and "case_id" not in data:
            reasons.append(reason(["data", "case_id"], f"required for {REPORT_FOLLOWUP}"))
        outcome = parse_report_data(data, reporter=reporter, known_agencies=known_agencies, event_id=event_id,
                                    sent_at=sent_at, now=now)
        if isinstance(outcome, Rejection):
            reasons += outcome.reasons
        elif not reasons:
            return outcome
    elif reporter not in known_agencies:
        reasons.append(_unknown_reporter(reporter))
    return Rejection(
        reasons=unique(reasons),
        report_ref=_report_ref_of(data),
        event_id=event_id,
    )


def parse_report_data(
    data: object,
    *,
    reporter: str,
    known_agencies: Collection[str],
    event_id: str | None = None,
    sent_at: datetime | None = None,
    now: datetime | None = None,
) -> ParsedReport | Rejection:
    """Only the `data` of a report (the HTTP short form): a new report, or a follow-up when it has `case_id`.

    `sent_at` is the event's `time` and `now` when intake received it (default: this instant).
    """
    if not isinstance(data, Mapping):
        return Rejection(reasons=[reason(["data"], "must be a JSON object")], http_status=HTTP_BAD_REQUEST)
    reasons: list[str] = []
    warnings: list[str] = []
    if reporter not in known_agencies:
        reasons.append(_unknown_reporter(reporter))
    is_followup = "case_id" in data
    model: type[ReportData] | type[FollowUpData] = FollowUpData if is_followup else ReportData
    try:
        parsed = model.model_validate(data)
    except ValidationError as error:
        reasons += reasons_from(error, prefix=("data",))
        parsed = None
    if parsed is not None:
        if LONG_DIGITS.search(parsed.report_ref):
            reasons.append(reason(["data", "report_ref"],
                                  "must not contain 10 or more digits in a row (it could be a NIK or a phone number)"))
        refused, warnings = report_findings(parsed, sent_at=sent_at, now=now or datetime.now(UTC))
        reasons += refused
    if parsed is None or reasons:
        return Rejection(reasons=unique(reasons), report_ref=_report_ref_of(data), event_id=event_id)
    return ParsedReport(
        event_id=event_id,
        report_ref=parsed.report_ref,
        reporter=reporter,
        data=parsed,
        is_followup=is_followup,
        warnings=warnings,
    )


def rejected_event(
    rejection: Rejection,
    *,
    reporter: str,
    stream_seq: int | None = None,
    time: datetime | None = None,
) -> CloudEvent[CaseRejectedData]:
    """`alur.case.rejected.v1`; its id derives from the stored input so a redelivery repeats it.

    The anchor is the input's REPORTS sequence when known, else its event id: two different stored inputs
    that reuse one event id (a sloppy sender, a corrected report) each get their own rejection, which an
    anchor on the event id alone would drop as a JetStream duplicate.
    """
    anchor = f"seq:{stream_seq}" if stream_seq is not None else rejection.event_id
    return CloudEvent[CaseRejectedData].build(
        type=CASE_REJECTED,
        source=INTAKE_SOURCE,
        subject=rejection.report_ref,
        data=rejection.to_data(reporter, stream_seq),
        id=derived_id("case.rejected", reporter, anchor) if anchor else None,
        time=time,
    )


def _quoted(value: object, verb: str) -> str:
    code = safe_code(value)
    return f" ({verb} '{code}')" if code else ""


def _clean(value: object, pattern: re.Pattern[str]) -> str | None:
    if isinstance(value, str) and pattern.fullmatch(value) and not LONG_DIGITS.search(value):
        return value
    return None


def _report_ref_of(data: object) -> str | None:
    return _clean(data.get("report_ref"), REPORT_REF_RE) if isinstance(data, Mapping) else None


def _shown(reporter: str) -> str:
    return f" '{reporter}'" if AGENCY_ID_RE.match(reporter) else ""


def _unknown_reporter(reporter: str) -> str:
    return reason(["reporter"], f"the sending agency{_shown(reporter)} is not in the registry")


def _foreign_source(reporter: str) -> str:
    return reason(["source"], f"must be the sending agency{_shown(reporter)}: the transport (the NATS subject, "
                              "or the HTTP token) decides who reports, and a report is never filed under another")
