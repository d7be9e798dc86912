"""The routing decision: a pure function from a case, the rules, the registry and the views to referrals.

Every rule is evaluated (collect-all); the targets of the fired rules are grouped by (agency type,
service) into one referral each; consent filters every group unless a mandatory rule in it overrides;
each referral goes to the agency that `resolution` finds and carries that agency type's view.

Consent is checked for the agency type the rules ask for, and for a fallback type before it is used.
The task-force secretariat, the last resort, takes a referral whatever the consent: its view holds
neither identity nor narrative. A mandatory rule overrides consent wherever it fires; the Kalsel pack
marks only the child rows of UPTD PPA and police so (its tests pin that).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from datetime import datetime

from alur.registry import AgencyRegistry
from contracts.events import Case
from contracts.vocab import AgencyType, Priority, Service
from services.routing.conditions import evaluate
from services.routing.decision import (
    AlreadyReferred,
    Decision,
    PlannedReferral,
    WithheldReferral,
    referral_id,
)
from services.routing.facts import Facts, consent_code, facts_of
from services.routing.reroute import reroute
from services.routing.resolution import resolve_agency
from services.routing.rules import ReferralTarget, Rule, RulePack
from services.routing.views import ViewCatalog

__all__ = [
    "AlreadyReferred",
    "Decision",
    "PlannedReferral",
    "WithheldReferral",
    "decide",
    "input_hash",
    "referral_id",
    "reroute",
]

Contribution = tuple[Rule, ReferralTarget]
URGENCY: dict[Priority, int] = {p: p.rank for p in Priority}


def input_hash(case_id: str, facts: Facts, pack: RulePack) -> str:
    """sha256 over the case id, its (non-identifying) facts and the pack version and digest."""
    canonical = json.dumps(
        {"case_id": case_id, "facts": facts, "ruleset_version": pack.version, "ruleset_digest": pack.digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _view(
    projected: dict[AgencyType, dict[str, object]], views: ViewCatalog, dumped: dict[str, object], agency_type: AgencyType
) -> dict[str, object]:
    if agency_type not in projected:
        projected[agency_type] = views.project(dumped, agency_type)
    return dict(projected[agency_type])


def _group(rules: list[Rule], fired: list[int]) -> dict[tuple[AgencyType, Service], list[Contribution]]:
    groups: dict[tuple[AgencyType, Service], list[Contribution]] = {}
    for position in fired:
        rule = rules[position]
        for target in rule.refer:
            groups.setdefault((target.agency_type, target.service), []).append((rule, target))
    return groups


def decide(
    case: Case,
    pack: RulePack,
    registry: AgencyRegistry,
    views: ViewCatalog,
    *,
    now: datetime,
    sla_scale: float = 1.0,
    existing: Collection[str] = frozenset(),
) -> Decision:
    """Decide the referrals of a case. Pure and deterministic for the same inputs.

    `existing` holds the referral ids already issued for the case: those are reported in
    `already_referred` instead of `referrals`, so a follow-up yields only the new ones.
    Referrals of one decision to the same agency type share their view's nested values (read-only).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    facts = facts_of(case)
    evaluation = evaluate(pack.compiled, facts)
    rule_reasons = pack.reasons

    referrals: list[PlannedReferral] = []
    withheld: list[WithheldReferral] = []
    unroutable: list[WithheldReferral] = []
    already: list[AlreadyReferred] = []
    dumped = case.model_dump(mode="json")
    projected: dict[AgencyType, dict[str, object]] = {}
    consent = case.consent

    for (agency_type, service), group in _group(pack.rules, evaluation.fired).items():
        rule_ids = list(dict.fromkeys(rule.id for rule, _ in group))
        override = not consent.covers(agency_type)
        basis = [c for c in group if c[0].mandatory] if override else group
        if not basis:
            withheld.append(
                WithheldReferral(
                    agency_type=agency_type,
                    service=service,
                    reason=f"consent does not cover {agency_type.value} (share_with: {consent_code(case)})",
                    rule_ids=rule_ids,
                )
            )
            continue
        rid = referral_id(case.case_id, agency_type, service)
        if rid in existing:
            already.append(AlreadyReferred(referral_id=rid, agency_type=agency_type, service=service))
            continue
        priority = max((target.priority_for(case.risk) for _, target in basis), key=URGENCY.__getitem__)
        clocks = [target for _, target in basis if target.sla_hours is not None]
        clock = min(clocks, key=lambda t: t.sla_hours or 0.0) if clocks else None
        fallback = next((t.fallback_agency_type for _, t in basis if t.fallback_agency_type), None)
        resolution = resolve_agency(
            registry,
            agency_type,
            case.regency,
            fallback=fallback,
            allowed=lambda t: override or consent.covers(t),
        )
        if resolution.agency is None:
            unroutable.append(
                WithheldReferral(agency_type=agency_type, service=service, reason=resolution.text, rule_ids=rule_ids)
            )
            continue
        reasons = {rule.id: rule_reasons[(rule.id, override)] for rule, _ in basis}
        referrals.append(
            PlannedReferral(
                referral_id=rid,
                case_id=case.case_id,
                agency=resolution.agency.id,
                agency_type=agency_type,
                receiving_type=resolution.agency.type,
                service=service,
                priority=priority,
                due=pack.acknowledgement_due(priority, now, sla_scale),
                reasons=list(reasons.values()),
                case=_view(projected, views, dumped, resolution.agency.type),
                regency=case.regency,
                resolution=resolution.text,
                sla_hours=clock.sla_hours if clock else None,
                statutory_clock=clock.statutory_clock if clock else None,
                requested_at=now,
            )
        )

    return Decision.model_construct(
        case_id=case.case_id,
        ruleset_version=pack.version,
        ruleset_digest=pack.digest,
        input_hash=input_hash(case.case_id, facts, pack),
        decided_at=now,
        referrals=referrals,
        withheld=withheld,
        unroutable=unroutable,
        already_referred=already,
        trace=evaluation.traces,
    )
