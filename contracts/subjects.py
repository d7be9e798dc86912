"""Subject names of DESIGN.md: builders and parsers, so no service formats a subject by hand."""

from __future__ import annotations

from dataclasses import dataclass

from contracts.vocab import AGENCY_ID_RE, ReferralStatus, Regency

PREFIX = "alur"

REPORTS_STREAM = "REPORTS"
CASES_STREAM = "CASES"
REFERRALS_STREAM = "REFERRALS"
DLQ_STREAM = "DLQ"
TIMERS_STREAM = "TIMERS"
ADVISORIES_STREAM = "ADVISORIES"

REFERRAL_EVENT_STATUSES = (
    *(s.value for s in ReferralStatus), "reminded", "escalated", "response_refused", "outcome", "report_rejected",
    "test",
)
"""The verbs of `alur.referral.<verb>.<agency>`: the referral statuses, and what else reaches an agency on
its own channel (`report_rejected`: its report was refused; `test`: a conformance check's test event)."""


AGENCY_PARAM = "{agency}"
REGENCY_PARAM = "{regency}"
STREAM_PARAM = "{stream}"
"""Placeholders the builders accept in place of a value: subject templates for documents (AsyncAPI)."""


def _agency(agency: str) -> str:
    if agency != AGENCY_PARAM and not AGENCY_ID_RE.match(agency):
        raise ValueError(f"not an agency id: {agency!r}")
    return agency


def report(agency: str) -> str:
    return f"{PREFIX}.report.{_agency(agency)}"


def response(agency: str) -> str:
    return f"{PREFIX}.response.{_agency(agency)}"


def _regency(regency: Regency | str) -> str:
    return REGENCY_PARAM if regency == REGENCY_PARAM else Regency(regency).value


def case_registered(regency: Regency | str) -> str:
    return f"{PREFIX}.case.registered.{_regency(regency)}"


def case_updated(regency: Regency | str) -> str:
    return f"{PREFIX}.case.updated.{_regency(regency)}"


def case_rejected(agency: str) -> str:
    known = agency == AGENCY_PARAM or AGENCY_ID_RE.match(agency)
    return f"{PREFIX}.case.rejected.{agency if known else 'unknown'}"


def region_flagged(regency: Regency | str) -> str:
    return f"{PREFIX}.region.flagged.{_regency(regency)}"


def report_rejected(agency: str) -> str:
    """Where the reporter itself hears that its report was refused: on its own consumer's subjects.

    `alur.case.rejected.<agency>` lives in CASES, which no agency may read; intake states the same event
    here too, in REFERRALS, which the agency's consumer `agency-<agency>` and its webhook carry.
    """
    return referral("report_rejected", agency)


def test_event(agency: str) -> str:
    """The subject of `alur check`'s test event for one agency: carried by its consumer, read by no service."""
    return referral("test", agency)


def referral(status: str, agency: str) -> str:
    if status not in REFERRAL_EVENT_STATUSES:
        raise ValueError(f"not a referral event status: {status!r}")
    return f"{PREFIX}.referral.{status}.{_agency(agency)}"


def dlq(stream: str) -> str:
    return f"{PREFIX}.dlq.{stream}"


def timer_schedule(referral_id: str, purpose: str) -> str:
    """The schedule subject of one timer: one per referral and purpose (trap 5)."""
    return f"{PREFIX}.timer.schedule.{referral_id}.{purpose}"


def timer_fired(referral_id: str, purpose: str) -> str:
    return f"{PREFIX}.timer.fired.{referral_id}.{purpose}"


def retention_schedule(stream_seq: int) -> str:
    """The schedule subject that ends the retention of one refused input (REPORTS sequence)."""
    return f"{PREFIX}.retention.schedule.{int(stream_seq)}"


def retention_expired(stream_seq: int) -> str:
    return f"{PREFIX}.retention.expired.{int(stream_seq)}"




@dataclass(frozen=True, slots=True)
class Parsed:
    """A subject split into its kind (`report`, `response`, `case`, `referral`, `region`, `dlq`) and parts."""

    kind: str
    verb: str | None
    key: str


def parse(subject: str) -> Parsed:
    """Split an Alur subject; raises ValueError for anything that is not one."""
    parts = subject.split(".")
    if len(parts) < 3 or parts[0] != PREFIX:
        raise ValueError(f"not an Alur subject: {subject!r}")
    kind = parts[1]
    if kind in ("report", "response") and len(parts) == 3:
        return Parsed(kind, None, parts[2])
    if kind in ("case", "referral", "region") and len(parts) == 4:
        return Parsed(kind, parts[2], parts[3])
    if kind == "dlq" and len(parts) == 3:
        return Parsed(kind, None, parts[2])
    if kind == "timer" and len(parts) == 5:
        return Parsed(kind, parts[2], f"{parts[3]}.{parts[4]}")
    raise ValueError(f"not an Alur subject: {subject!r}")
