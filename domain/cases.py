"""Cases: a validated report becomes a case; a follow-up is merged into it; each change is an event.

Case ids are an HMAC of (reporter, report_ref) under intake's secret case-id key (`ALUR_CASE_KEY`): a
redelivered or replayed report yields the same case, and nobody without the key can work out the id of a
case from its reporter and report_ref (a bare hash could be). Event ids derive from (case, report) so a
replay yields the same event for JetStream to drop. Who may amend a case is `domain.case_access`.

Follow-up merge rules:
- scalar fields given replace the case's value; `victim` and `location` are merged field by field
  (and `victim.identity` likewise) and re-validated as a whole;
- `needs`, `indicators`, `exploitation` and `victim.disabilities` are unions: a follow-up adds to them,
  and leaving a value out never removes it;
- the identification status only advances (reported → … → confirmed_by_court);
- the case is re-screened; its `risk` is the screened risk, so a raise to high stays until a follow-up
  lowers `risk` explicitly and no condition requiring high remains;
- a follow-up whose report is already on the case (a redelivery) changes nothing;
- the merged victim is held to the same date checks as a report's (`plausibility.victim_reasons`): a
  follow-up cannot bring in a birth date that contradicts the age a report could not;
- the report's warnings are added to `Case.warnings` (kept once each).
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from typing import Any, Literal, TypeVar

from pydantic import ValidationError

from contracts.catalog import CASE_REGISTERED, CASE_UPDATED
from contracts.envelope import CloudEvent, derived_id
from contracts.events import (
    Case,
    CaseEventData,
    FollowUpData,
    Location,
    ReportData,
    Victim,
)
from contracts.vocab import IdentificationStatus, Need
from domain.plausibility import victim_reasons
from domain.reasons import reason, reasons_from
from domain.screening import initial_status, screen
from domain.validation import INTAKE_SOURCE, ParsedReport, Rejection

CASE_ID_HEX = 20
MIN_CASE_KEY_BYTES = 16
UNION_FIELDS = ("exploitation", "indicators", "needs")
REPLACED_FIELDS = (
    "channel",
    "risk",
    "consent",
    "narrative",
    "recruitment_modus",
    "injured",
    "still_in_exploitation",
    "has_case_manager",
)
BOOKKEEPING = frozenset(
    {"case_id", "reporter", "report_refs", "registered_at", "updated_at", "version", "warnings"}
)
IDENTIFICATION_ORDER = list(IdentificationStatus)

CaseEventKind = Literal["registered", "updated"]
Part = TypeVar("Part", Victim, Location)


def case_id_for(reporter: str, report_ref: str, *, key: bytes) -> str:
    """`case-` and 20 hex digits of HMAC-SHA256(key, reporter, report_ref): the same report under the same
    key always names the same case; without the key the id cannot be worked out.

    There is no unkeyed form: a caller without intake's key (a rule-pack test, `alur rules explain`) passes
    a key of its own, and its ids are simply not those of real cases.
    """
    if len(key) < MIN_CASE_KEY_BYTES:
        raise ValueError(f"the case-id key must be a secret of at least {MIN_CASE_KEY_BYTES} bytes (ALUR_CASE_KEY)")
    digest = hmac.new(key, f"{reporter}\x1f{report_ref}".encode(), hashlib.sha256).hexdigest()
    return f"case-{digest[:CASE_ID_HEX]}"


def new_case(parsed: ParsedReport, now: datetime, *, key: bytes) -> Case:
    """The case a new (not follow-up) report opens, screened, with its derived risk; its id under `key`."""
    data = parsed.data
    if not isinstance(data, ReportData):
        raise ValueError("a follow-up does not open a case; use merge_followup")
    screening = screen(data)
    return Case(
        case_id=case_id_for(parsed.reporter, data.report_ref, key=key),
        reporter=parsed.reporter,
        report_refs=[data.report_ref],
        channel=data.channel,
        regency=data.location.regency,
        victim=data.victim,
        age_group=data.victim.age_group,
        location=data.location,
        exploitation=data.exploitation,
        indicators=data.indicators,
        needs=data.needs,
        risk=screening.risk,
        consent=data.consent,
        narrative=data.narrative,
        recruitment_modus=data.recruitment_modus,
        injured=data.injured,
        still_in_exploitation=data.still_in_exploitation,
        has_case_manager=data.has_case_manager,
        identification_status=initial_status(data.identification_status, data.indicators),
        screening=screening,
        warnings=list(dict.fromkeys(parsed.warnings)),
        registered_at=now,
        updated_at=now,
    )


def report_entry(case: Case, reporter: str, report_ref: str) -> str:
    """How a report is listed in `case.report_refs`: its ref, prefixed `<agency>/` when another agency sent it."""
    return report_ref if reporter == case.reporter else f"{reporter}/{report_ref}"


def merge_followup(
    case: Case, followup: FollowUpData, reporter: str, now: datetime, warnings: list[str] | None = None
) -> tuple[Case, list[str], list[Need]] | Rejection:
    """The case with a follow-up merged in, the fields that changed, and the needs that are new.

    A redelivered follow-up returns the case unchanged with no changes; a follow-up that leaves the
    case invalid (or implausible) is a `Rejection`. `warnings` are the follow-up report's own.
    """
    if followup.case_id != case.case_id:
        raise ValueError("the follow-up is for another case")
    entry = report_entry(case, reporter, followup.report_ref)
    if entry in case.report_refs:
        return case, [], []
    given = followup.model_dump(exclude_unset=True, exclude={"report_ref", "case_id"})
    current = case.model_dump()
    reasons: list[str] = []

    victim = _validated(Victim, _merged(current["victim"], given.get("victim", {})), ("data", "victim"), reasons)
    location = _validated(
        Location, _merged(current["location"], given.get("location", {})), ("data", "location"), reasons
    )
    status = given.get("identification_status", case.identification_status)
    if IDENTIFICATION_ORDER.index(status) < IDENTIFICATION_ORDER.index(case.identification_status):
        reasons.append(
            reason(
                ["data", "identification_status"],
                f"cannot go back from {case.identification_status.value} to {status.value}",
            )
        )
    if victim is not None:
        reasons += victim_reasons(victim, now)
    if victim is None or location is None or reasons:
        return Rejection(reasons=reasons, report_ref=followup.report_ref)

    fields: dict[str, Any] = {name: getattr(followup, name) for name in REPLACED_FIELDS if name in given}
    fields.update({name: _union(getattr(case, name), given.get(name, [])) for name in UNION_FIELDS})
    if "identification_status" not in given and case.identification_status is IdentificationStatus.REPORTED:
        status = initial_status(None, fields["indicators"])
    merged = Case.model_validate(
        {
            **dict(case),
            **fields,
            "victim": victim,
            "location": location,
            "regency": location.regency,
            "age_group": victim.age_group,
            "identification_status": status,
            "report_refs": [*case.report_refs, entry],
            "warnings": _union(case.warnings, warnings or []),
            "updated_at": now,
            "version": case.version + 1,
        }
    )
    screening = screen(merged)
    merged = merged.model_copy(update={"screening": screening, "risk": screening.risk})
    new_needs = [need for need in merged.needs if need not in case.needs]
    return merged, changed_fields(case, merged), new_needs


def changed_fields(before: Case, after: Case) -> list[str]:
    """Names of the case fields that differ, `victim.*` and `location.*` by sub-field; bookkeeping left out."""
    changed: list[str] = []
    for name in Case.model_fields:
        if name in BOOKKEEPING:
            continue
        old, new = getattr(before, name), getattr(after, name)
        if name in ("victim", "location"):
            changed += [f"{name}.{sub}" for sub in type(old).model_fields if getattr(old, sub) != getattr(new, sub)]
        elif old != new:
            changed.append(name)
    return changed


def case_event(
    case: Case,
    report_ref: str,
    changed: list[str],
    kind: CaseEventKind,
    *,
    reporter: str | None = None,
    warnings: list[str] | None = None,
) -> CloudEvent[CaseEventData]:
    """`alur.case.registered.v1` or `alur.case.updated.v1` for the report that made this change.

    The id derives from (kind, case, reporter, report) and the time is the case's `updated_at`, so a replay
    of the same report yields the same event. `warnings` are that report's (a registration's default to
    the case's, which are its opening report's).
    """
    sender = reporter or case.reporter
    return CloudEvent[CaseEventData].build(
        type=CASE_REGISTERED if kind == "registered" else CASE_UPDATED,
        source=INTAKE_SOURCE,
        subject=case.case_id,
        id=derived_id("case", kind, case.case_id, sender, report_ref),
        time=case.updated_at,
        data=CaseEventData(
            case_id=case.case_id,
            report_ref=report_ref,
            reporter=sender,
            regency=case.regency,
            case=case,
            changed=changed,
            warnings=case.warnings if warnings is None else warnings,
        ),
    )


def case_not_found(parsed: ParsedReport) -> Rejection:
    """The rejection of a follow-up whose `case_id` names no case, or a case its sender may not amend: one
    answer for both, so a refusal never tells that a case exists (`domain.case_access`)."""
    return Rejection(
        reasons=[reason(["data", "case_id"], "no case has this id")],
        report_ref=parsed.report_ref,
        event_id=parsed.event_id,
    )


def _merged(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(current)
    for key, value in patch.items():
        existing = out.get(key)
        if isinstance(value, dict) and isinstance(existing, dict):
            out[key] = _merged(existing, value)
        elif isinstance(value, list) and isinstance(existing, list):
            out[key] = _union(existing, value)
        else:
            out[key] = value
    return out


def _union(current: list[Any], added: list[Any]) -> list[Any]:
    return list(dict.fromkeys([*current, *added]))


def _validated(model: type[Part], value: dict[str, Any], prefix: tuple[str, ...], reasons: list[str]) -> Part | None:
    try:
        return model.model_validate(value)
    except ValidationError as error:
        reasons += reasons_from(error, prefix=prefix)
        return None
