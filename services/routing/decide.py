"""The routing decision: a pure function from a case, the rules, the registry and the views to referrals.

Every rule is evaluated (collect-all); the targets of the fired rules are grouped by (agency type,
service) into one referral each; consent filters every group unless a mandatory rule in it overrides;
each referral goes to the agency that `resolution` finds and carries that agency type's view.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from datetime import datetime, timedelta

from alur.registry import AgencyRegistry
from contracts.events import Case, RuleReason
from contracts.vocab import AgencyType, Priority, Service
from services.routing.conditions import evaluate
from services.routing.decision import (
    AlreadyReferred,
    Decision,
    PlannedReferral,
    RuleTrace,
    WithheldReferral,
    referral_id,
)
from services.routing.facts import Facts, consent_code, facts_of
from services.routing.resolution import resolve_agency
from services.routing.rules import ReferralTarget, Rule, RulePack
from services.routing.views import ViewCatalog

Contribution = tuple[Rule, ReferralTarget]


def input_hash(case_id: str, facts: Facts, pack: RulePack) -> str:
    """sha256 over the case id, its (non-identifying) facts and the pack version and digest."""
    canonical = json.dumps(
        {"case_id": case_id, "facts": facts, "ruleset_version": pack.version, "ruleset_digest": pack.digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def acknowledgement_due(pack: RulePack, priority: Priority, now: datetime, sla_scale: float) -> datetime:
    """When the agency must acknowledge: now + the pack's hours for the priority, times the SLA scale."""
    return now + timedelta(hours=pack.acknowledgement_hours[priority] * sla_scale)


def rule_reason(rule: Rule, override: bool) -> RuleReason:
    """A rule as the reason of a referral; an override states the law that overrides consent."""
    basis = f"{rule.legal_basis}; consent overridden: {rule.mandatory_basis}" if override else rule.legal_basis
    return RuleReason(rule_id=rule.id, description=rule.description, legal_basis=basis, override=override)


def _group(pack: RulePack, fired: list[str]) -> dict[tuple[AgencyType, Service], list[Contribution]]:
    groups: dict[tuple[AgencyType, Service], list[Contribution]] = {}
    for rule_id in fired:
        rule = pack.rule(rule_id)
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
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    facts = facts_of(case)
    outcomes = evaluate(pack.compiled, facts)
    trace = [RuleTrace.model_construct(rule_id=o.rule_id, fired=o.fired, why=o.why, error=o.error) for o in outcomes]
    fired = [o.rule_id for o in outcomes if o.fired]

    referrals: list[PlannedReferral] = []
    withheld: list[WithheldReferral] = []
    unroutable: list[WithheldReferral] = []
    already: list[AlreadyReferred] = []
    dumped = case.model_dump(mode="json")
    consent = case.consent

    for (agency_type, service), group in _group(pack, fired).items():
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
        priority = max((target.priority_for(case.risk) for _, target in basis), key=lambda p: p.rank)
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
        reasons = {rule.id: rule_reason(rule, override) for rule, _ in basis}
        referrals.append(
            PlannedReferral(
                referral_id=rid,
                case_id=case.case_id,
                agency=resolution.agency.id,
                agency_type=agency_type,
                receiving_type=resolution.agency.type,
                service=service,
                priority=priority,
                due=acknowledgement_due(pack, priority, now, sla_scale),
                reasons=list(reasons.values()),
                case=views.project(dumped, resolution.agency.type),
                regency=case.regency,
                resolution=resolution.text,
                sla_hours=clock.sla_hours if clock else None,
                statutory_clock=clock.statutory_clock if clock else None,
                requested_at=now,
            )
        )

    return Decision(
        case_id=case.case_id,
        ruleset_version=pack.version,
        ruleset_digest=pack.digest,
        input_hash=input_hash(case.case_id, facts, pack),
        decided_at=now,
        referrals=referrals,
        withheld=withheld,
        unroutable=unroutable,
        already_referred=already,
        trace=trace,
    )
