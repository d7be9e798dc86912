"""Rerouting: when an agency rejects, redirects or lets a referral expire, the same service goes to the
next eligible agency, never back to one that declined, and finally to the task-force secretariat."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from alur.registry import AgencyRegistry
from contracts.events import Case, ReferralRequestedData
from contracts.vocab import AgencyType
from services.routing.decision import PlannedReferral, referral_id
from services.routing.resolution import Resolution, resolve_agency
from services.routing.rules import RulePack
from services.routing.views import ViewCatalog

REROUTED_STATUSES = frozenset({"rejected", "redirected", "expired"})


def reroute(
    previous: ReferralRequestedData,
    *,
    status: str,
    redirect_to: str | None,
    declined: Collection[str],
    case: Case,
    registry: AgencyRegistry,
    views: ViewCatalog,
    pack: RulePack,
    now: datetime,
    sla_scale: float = 1.0,
) -> PlannedReferral | None:
    """The referral that replaces `previous`, or None when no agency is left, not even the secretariat.

    `declined` holds the agencies that already rejected or let expire this service for this case; the
    agency of `previous` is never chosen again either. A `redirected` referral goes to the agency named
    in `redirect_to` when it exists, is enabled, has not declined and the victim's consent covers its
    type; otherwise, like `rejected` and `expired`, to the next agency of the same type.
    """
    if status not in REROUTED_STATUSES:
        raise ValueError(f"status must be one of {', '.join(sorted(REROUTED_STATUSES))}, not {status!r}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    excluded = frozenset(declined) | {previous.agency}
    overridden = any(reason.override for reason in previous.reasons)

    def allowed(agency_type: AgencyType) -> bool:
        return agency_type is previous.agency_type or overridden or case.consent.covers(agency_type)

    named = registry.get(redirect_to) if status == "redirected" and redirect_to else None
    if named is not None and not (named.enabled and named.id not in excluded and allowed(named.type)):
        named = None
    if named is not None:
        resolution = Resolution(named, f"redirected by {previous.agency} to {named.id}")
    else:
        resolution = resolve_agency(
            registry,
            previous.agency_type,
            case.regency,
            fallback=pack.fallback_for(previous.agency_type, previous.service),
            allowed=allowed,
            exclude=excluded,
        )
        resolution = Resolution(resolution.agency, f"{status} by {previous.agency}: {resolution.text}")
    agency = resolution.agency
    if agency is None:
        return None
    return PlannedReferral(
        referral_id=referral_id(case.case_id, previous.agency_type, previous.service, agency.id),
        case_id=case.case_id,
        agency=agency.id,
        agency_type=previous.agency_type,
        receiving_type=agency.type,
        service=previous.service,
        priority=previous.priority,
        due=pack.acknowledgement_due(previous.priority, now, sla_scale),
        reasons=list(previous.reasons),
        case=views.view_of(case, agency.type),
        regency=case.regency,
        resolution=resolution.text,
        sla_hours=previous.sla_hours,
        statutory_clock=previous.statutory_clock,
        replaces=previous.referral_id,
        requested_at=now,
    )
