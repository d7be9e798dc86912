"""The routing decision: a pure function from a case, the rules, the registry and the views to referrals.

Every rule is evaluated (collect-all); the targets of the fired rules are grouped by (agency type,
service) into one referral each; consent filters every group unless a mandatory rule in it overrides;
each referral goes to the agency that `resolution` finds and carries that agency type's view.

Consent is checked for the agency type the rules ask for, and for a fallback type before it is used.
The task-force secretariat, the last resort, takes a referral whatever the consent: its view holds
neither identity nor narrative. A mandatory rule overrides consent wherever it fires, for its own agency
type only: a fallback type always needs the victim's consent on its own (reroutes follow the same rule,
see `reroute`). The Kalsel pack marks only the child rows of UPTD PPA and police so (its tests pin that).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from contracts.events import Case, RuleReason
from contracts.vocab import AgencyType, Priority, Risk, Service
from domain.registry import AgencyRegistry
from services.routing.conditions import evaluate
from services.routing.facts import Facts, consent_code, facts_of
from services.routing.plan import (
    AlreadyReferred,
    Decision,
    PlannedReferral,
    WithheldReferral,
    referral_id,
)
from services.routing.reroute import reroute
from services.routing.resolution import Resolver
from services.routing.rules import RISK_PRIORITY, Contribution, RulePack
from services.routing.views import CaseViews, ViewCatalog

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

GroupKey = tuple[AgencyType, Service]
URGENCY: dict[Priority, int] = {p: p.rank for p in Priority}


def input_hash(case_id: str, facts: Facts, pack: RulePack) -> str:
    """sha256 over the case id, its (non-identifying) facts and the pack version and digest."""
    canonical = json.dumps(
        {"case_id": case_id, "facts": facts, "ruleset_version": pack.version, "ruleset_digest": pack.digest},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class _Terms:
    """What the contributions behind one referral set for it (see `_terms`)."""

    priority: Priority
    clock: Contribution | None
    fallback: AgencyType | None
    reasons: list[RuleReason]


def _terms(basis: list[Contribution], risk: Risk, override: bool) -> _Terms:
    """In one pass over the basis, in pack order: the most urgent priority, the first of the shortest
    clocks, the first fallback type declared, and each rule's reason once (its override reason when
    consent is overridden, which leaves only mandatory rules in the basis)."""
    from_risk = RISK_PRIORITY[risk]
    priority: Priority | None = None
    clock: Contribution | None = None
    shortest = math.inf
    fallback: AgencyType | None = None
    reasons: dict[str, RuleReason] = {}
    for contribution in basis:
        candidate = from_risk if contribution.priority is None else contribution.priority
        if priority is None or URGENCY[candidate] > URGENCY[priority]:
            priority = candidate
        if contribution.sla_hours is not None and contribution.sla_hours < shortest:
            clock, shortest = contribution, contribution.sla_hours
        if fallback is None:
            fallback = contribution.fallback
        if contribution.rule_id not in reasons:
            reason = contribution.override_reason if override else contribution.reason
            assert reason is not None, "only mandatory rules override consent"
            reasons[contribution.rule_id] = reason
    assert priority is not None, "a basis is never empty"
    return _Terms(priority, clock, fallback, list(reasons.values()))


def _rule_ids(group: list[Contribution]) -> list[str]:
    return list(dict.fromkeys(c.rule_id for c in group))


def _group(contributions: Sequence[tuple[Contribution, ...]], fired: list[int]) -> dict[GroupKey, list[Contribution]]:
    """The fired rules' contributions by (agency type, service), each group in pack order."""
    groups: dict[GroupKey, list[Contribution]] = {}
    for position in fired:
        for contribution in contributions[position]:
            groups.setdefault(contribution.key, []).append(contribution)
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
    Within the decision, each agency resolution and each receiving type's view is computed once.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    facts = facts_of(case)
    evaluation = evaluate(pack.compiled, facts)

    referrals: list[PlannedReferral] = []
    withheld: list[WithheldReferral] = []
    unroutable: list[WithheldReferral] = []
    already: list[AlreadyReferred] = []
    consent = case.consent
    resolver = Resolver(registry, case.regency)
    case_views = CaseViews(views, case)

    for (agency_type, service), group in _group(pack.contributions, evaluation.fired).items():
        override = not consent.covers(agency_type)
        basis = [c for c in group if c.mandatory] if override else group
        if not basis:
            withheld.append(
                WithheldReferral(
                    agency_type=agency_type,
                    service=service,
                    reason=f"consent does not cover {agency_type.value} (share_with: {consent_code(case)})",
                    rule_ids=_rule_ids(group),
                )
            )
            continue
        rid = referral_id(case.case_id, agency_type, service)
        if rid in existing:
            already.append(AlreadyReferred(referral_id=rid, agency_type=agency_type, service=service))
            continue
        terms = _terms(basis, case.risk, override)
        fallback = terms.fallback  # used only if consent covers it: an override covers the type the law names only
        if fallback is not None and not consent.covers(fallback):
            fallback = None
        resolution = resolver.resolve(agency_type, fallback)
        if resolution.agency is None:
            unroutable.append(
                WithheldReferral(
                    agency_type=agency_type, service=service, reason=resolution.text, rule_ids=_rule_ids(group)
                )
            )
            continue
        clock = terms.clock
        referrals.append(
            PlannedReferral(
                referral_id=rid,
                case_id=case.case_id,
                agency=resolution.agency.id,
                agency_type=agency_type,
                receiving_type=resolution.agency.type,
                service=service,
                priority=terms.priority,
                due=pack.acknowledgement_due(terms.priority, now, sla_scale),
                reasons=terms.reasons,
                case=case_views.of(resolution.agency.type),
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
