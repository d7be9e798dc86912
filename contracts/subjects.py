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

REFERRAL_EVENT_STATUSES = (*(s.value for s in ReferralStatus), "reminded", "escalated", "response_refused", "outcome")


def _agency(agency: str) -> str:
    if not AGENCY_ID_RE.match(agency):
        raise ValueError(f"not an agency id: {agency!r}")
    return agency


def report(agency: str) -> str:
    return f"{PREFIX}.report.{_agency(agency)}"


def response(agency: str) -> str:
    return f"{PREFIX}.response.{_agency(agency)}"


def case_registered(regency: Regency | str) -> str:
    return f"{PREFIX}.case.registered.{Regency(regency).value}"


def case_updated(regency: Regency | str) -> str:
    return f"{PREFIX}.case.updated.{Regency(regency).value}"


def case_rejected(agency: str) -> str:
    return f"{PREFIX}.case.rejected.{agency if AGENCY_ID_RE.match(agency) else 'unknown'}"


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


ALL_REPORTS = f"{PREFIX}.report.*"
ALL_RESPONSES = f"{PREFIX}.response.*"
ALL_CASE_CHANGES = [f"{PREFIX}.case.registered.*", f"{PREFIX}.case.updated.*"]
ALL_TIMERS_FIRED = f"{PREFIX}.timer.fired.>"


@dataclass(frozen=True, slots=True)
class Parsed:
    """A subject split into its kind (`report`, `response`, `case`, `referral`, `dlq`) and parts."""

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
    if kind in ("case", "referral") and len(parts) == 4:
        return Parsed(kind, parts[2], parts[3])
    if kind == "dlq" and len(parts) == 3:
        return Parsed(kind, None, parts[2])
    if kind == "timer" and len(parts) == 5:
        return Parsed(kind, parts[2], f"{parts[3]}.{parts[4]}")
    raise ValueError(f"not an Alur subject: {subject!r}")
