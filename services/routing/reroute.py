"""Rerouting: when an agency rejects, redirects or lets a referral expire, the same service goes to
another agency, never back to one that declined, and finally to the task-force secretariat.

Who may hold a rerouted referral (issue 17). A referral is the rules' answer for one agency type and
service (its `agency_type`); consent, or the law overriding it, was checked for that type only. So the
new holder, whether a redirect names it or the next-agency search finds it, is one of:

1. an agency of that same type, if the victim's consent covers the type or the referral carried a legal
   override (a child to UPTD PPA or the police): the override covers the type the law names, no other;
2. an agency of another type T, only if the victim's consent covers T on its own (an override never
   reaches T) AND the rules could have referred this service to T: some rule of the pack refers the
   service to T, as its target or as its declared fallback (`RulePack.receivers_of`);
3. the task-force secretariat, the last resort, whose view holds neither identity nor narrative.

A redirect to an agency of a type it may not hold goes to the secretariat, whatever else is available:
the holder asked for something the victim's consent or the rules do not allow, and the coordinator must
see it. A redirect to an agency that merely cannot take it (unknown, disabled, already declined) goes on
as a rejection would: the next agency of the type, the fallback type, the secretariat. Either way the new
referral's `resolution` says why the named agency was not used; it names agencies, types and the consent
code, never the victim.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from contracts.events import Case
from contracts.records import Agency, ReferralEntry
from contracts.vocab import AgencyType, Service
from domain.registry import AgencyRegistry
from services.routing.facts import consent_code
from services.routing.plan import PlannedReferral, referral_id
from services.routing.resolution import Resolution, resolve_agency, to_secretariat
from services.routing.rules import RulePack
from services.routing.views import ViewCatalog

REROUTED_STATUSES = frozenset({"rejected", "redirected", "expired"})


@dataclass(frozen=True, slots=True)
class Holders:
    """Which agency types may hold one rerouted referral (rules 1 to 3 of the module docstring)."""

    asked: AgencyType
    service: Service
    overridden: bool
    case: Case
    receivers: frozenset[AgencyType]

    @classmethod
    def of(cls, previous: ReferralEntry, case: Case, pack: RulePack) -> Holders:
        return cls(
            asked=previous.agency_type,
            service=previous.service,
            overridden=any(reason.override for reason in previous.reasons),
            case=case,
            receivers=pack.receivers_of(previous.service),
        )

    def refusal(self, agency_type: AgencyType) -> str | None:
        """None if an agency of `agency_type` may hold the referral, else why not."""
        if agency_type is AgencyType.GT_SECRETARIAT:
            return None
        consent = self.case.consent
        if agency_type is self.asked:
            if self.overridden or consent.covers(agency_type):
                return None
            return f"consent (share_with: {consent_code(self.case)}) no longer covers {agency_type.value}"
        why = []
        if not consent.covers(agency_type):
            override = f"; the legal override covers {self.asked.value} only" if self.overridden else ""
            why.append(f"consent (share_with: {consent_code(self.case)}) does not cover {agency_type.value}{override}")
        if agency_type not in self.receivers:
            why.append(f"no rule refers {self.service.value} to {agency_type.value}")
        return "; ".join(why) or None

    def allows(self, agency_type: AgencyType) -> bool:
        return self.refusal(agency_type) is None


def _unavailable(named: Agency | None, redirect_to: str, excluded: frozenset[str]) -> str | None:
    """Why the agency a redirect names cannot take the referral at all, whoever it is; None if it can."""
    if named is None:
        return f"{redirect_to} is not in the registry"
    if not named.enabled:
        return f"{named.id} is disabled"
    if named.id in excluded:
        return f"{named.id} already declined this service"
    return None


def _holder(
    previous: ReferralEntry,
    status: str,
    redirect_to: str | None,
    excluded: frozenset[str],
    holders: Holders,
    case: Case,
    registry: AgencyRegistry,
    pack: RulePack,
) -> Resolution:
    """The new holder and how it was found, in words (the referral's `resolution`)."""
    by = f"{status} by {previous.agency}"
    if status == "redirected" and redirect_to:
        by = f"redirected by {previous.agency} to {redirect_to}"
        named = registry.get(redirect_to)
        unavailable = _unavailable(named, redirect_to, excluded)
        if unavailable is None:
            assert named is not None
            refused = holders.refusal(named.type)
            if refused is None:
                return Resolution(named, by)
            return to_secretariat(registry, f"{by} refused: {refused}", excluded)
        by = f"{by}, not used ({unavailable})"
    refused = holders.refusal(previous.agency_type)
    if refused is not None:
        found = to_secretariat(registry, refused, excluded)
    else:
        found = resolve_agency(
            registry,
            previous.agency_type,
            case.regency,
            fallback=pack.fallback_for(previous.agency_type, previous.service),
            allowed=holders.allows,
            exclude=excluded,
        )
    return Resolution(found.agency, f"{by}: {found.text}")


def reroute(
    previous: ReferralEntry,
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
    in `redirect_to` when it may hold it (module docstring), else as the docstring says; `rejected` and
    `expired` go to the next agency of the same type, its fallback type, then the secretariat.
    """
    if status not in REROUTED_STATUSES:
        raise ValueError(f"status must be one of {', '.join(sorted(REROUTED_STATUSES))}, not {status!r}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    excluded = frozenset(declined) | {previous.agency}
    resolution = _holder(previous, status, redirect_to, excluded, Holders.of(previous, case, pack), case, registry, pack)
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
