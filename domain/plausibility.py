"""Is a report believable? Checks that need a clock, on a report the models already accepted.

The models (`contracts.events`) check each field alone; here the dates are held against the time intake
received the report (`now`: the REPORTS timestamp for the consumer, the request time for the HTTP door's
preview, so a redelivery decides the same) and against each other:

- nothing may happen in the future: the event `time`, `consent.recorded_at`, `identity.birth_date` — with
  `CLOCK_SKEW` of slack for an agency's clock (a birth date: up to tomorrow, for time zones);
- the stated age and the birth date must agree within one year (a birthday may fall between when the age
  was noted and now); further apart, one of them is wrong, and routing by age group would be too;
- a report sent more than `STALE_AFTER` ago is kept (an old case is still a victim) with a warning, so the
  coordinator checks the date.

Each result names the field and never repeats what it holds.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta

from contracts.events import (
    Consent,
    FollowUpData,
    Identity,
    ReportData,
    Victim,
    VictimUpdate,
)
from domain.reasons import reason

CLOCK_SKEW = timedelta(minutes=10)
STALE_AFTER = timedelta(days=90)
AGE_TOLERANCE_YEARS = 1

TIME = ("time",)
RECORDED_AT = ("data", "consent", "recorded_at")
BIRTH_DATE = ("data", "victim", "identity", "birth_date")
AGE = ("data", "victim", "age")


def report_findings(
    data: ReportData | FollowUpData, *, sent_at: datetime | None, now: datetime
) -> tuple[list[str], list[str]]:
    """(reasons to refuse, warnings to keep) for a report's dates, held against `now`."""
    reasons: list[str] = []
    warnings: list[str] = []
    if sent_at is not None:
        if sent_at > now + CLOCK_SKEW:
            reasons.append(reason(TIME, _future()))
        elif sent_at < now - STALE_AFTER:
            warnings.append(reason(TIME, f"is more than {STALE_AFTER.days} days before intake received the "
                                         "report; kept, check the date with the reporting agency"))
    reasons += consent_reasons(data.consent, now)
    if data.victim is not None:
        reasons += victim_reasons(data.victim, now)
    return reasons, warnings


def consent_reasons(consent: Consent | None, now: datetime) -> list[str]:
    """A consent recorded in the future is refused."""
    if consent is not None and consent.recorded_at is not None and consent.recorded_at > now + CLOCK_SKEW:
        return [reason(RECORDED_AT, _future())]
    return []


def victim_reasons(victim: Victim | VictimUpdate, now: datetime) -> list[str]:
    """A birth date in the future, or an age that a birth date contradicts (both given), is refused."""
    birth = _birth_date(victim.identity)
    if birth is None:
        return []
    if birth > now.date() + timedelta(days=1):
        return [reason(BIRTH_DATE, "is in the future")]
    if victim.age is not None and abs(victim.age - age_on(birth, now.date())) > AGE_TOLERANCE_YEARS:
        return [reason(AGE, "does not match data.victim.identity.birth_date (more than a year apart); "
                            "correct whichever is wrong")]
    return []


def age_on(birth: date, day: date) -> int:
    """Whole years from `birth` to `day`."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def _birth_date(identity: Identity | None) -> date | None:
    if identity is None or identity.birth_date is None:
        return None
    return date.fromisoformat(identity.birth_date)  # the model checked it is a real date


def _future() -> str:
    return f"is in the future (more than {int(CLOCK_SKEW.total_seconds() // 60)} minutes after intake received it)"
