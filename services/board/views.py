"""What the board shows, as pure functions of the read model and the clock: the open referrals (overdue
and escalated first, with the deadline that is running), a case's timeline, each agency's record.

The deadlines follow notify's escalation policy (`deploy/kalsel/escalation.yaml`, the one place they are
written): acknowledge by the request's `due`; once acknowledged, decide within `decision.within`; once
accepted, a word at least every `update.every`; beside them the statutory clocks the law sets.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from contracts.vocab import REGENCY_NAMES, ReferralStatus, Regency
from domain.escalation_policy import POST_ACCEPTANCE, EscalationPolicy
from domain.regions import DIMENSION_ALL, MIN_GROUP, parse_key
from services.board.model import DECLINES, OUTCOMES, BoardModel, CaseView, ReferralView

ACKNOWLEDGE, DECIDE, UPDATE, STATUTORY = "acknowledge", "decide", "update", "statutory"


@dataclass(frozen=True, slots=True)
class Deadline:
    """A deadline running on a referral: its kind, when it is due, and the statutory clock's name."""

    kind: str
    due: datetime
    clock: str | None = None


def running_deadlines(ref: ReferralView, policy: EscalationPolicy) -> list[Deadline]:
    """The deadlines running on an open referral now, the agency's step first, then statutory clocks."""
    if ref.status.terminal:
        return []
    running: list[Deadline] = []
    if ref.status in (ReferralStatus.REQUESTED, ReferralStatus.DELIVERED):
        running.append(Deadline(ACKNOWLEDGE, ref.due))
    elif ref.status is ReferralStatus.ACKNOWLEDGED:
        running.append(Deadline(DECIDE, (ref.acknowledged_at or ref.requested_at) + policy.scaled(policy.decision.within)))
    elif ref.status in POST_ACCEPTANCE:
        running.append(Deadline(UPDATE, (ref.last_agency_word or ref.requested_at) + policy.scaled(policy.update.every)))
    for clock in policy.clocks_for(ref.service, ref.agency_type, ref.statutory_clock):
        if not any(s in ref.entered for s in clock.stops_on):
            running.append(Deadline(STATUTORY, ref.requested_at + policy.scaled(clock.within), clock.name))
    if ref.statutory_clock and policy.clock(ref.statutory_clock) is None and ref.sla_hours:
        running.append(Deadline(STATUTORY, ref.requested_at + policy.scaled(timedelta(hours=ref.sla_hours)),
                                ref.statutory_clock))
    return running


def open_referral(ref: ReferralView, policy: EscalationPolicy, now: datetime) -> dict[str, Any]:
    """One row of `GET /api/referrals`: DESIGN.md's fields, the running deadlines and the referral's age."""
    deadlines = running_deadlines(ref, policy)
    first = min(deadlines, key=lambda d: d.due) if deadlines else None
    return {
        "referral_id": ref.referral_id, "case_id": ref.case_id, "agency": ref.agency,
        "agency_type": ref.agency_type.value, "service": ref.service.value, "status": ref.status.value,
        "priority": ref.priority.value, "due": ref.due.isoformat(),
        "overdue": any(d.due < now for d in deadlines),
        "escalation_level": ref.escalation_level,
        "escalation_action": ref.escalation_action,
        "deadline": {"kind": first.kind, "due": first.due.isoformat(), "clock": first.clock} if first else None,
        "deadlines": [{"kind": d.kind, "due": d.due.isoformat(), "clock": d.clock} for d in deadlines],
        "requested_at": ref.requested_at.isoformat(),
        "age_seconds": round(max(0.0, (now - ref.requested_at).total_seconds()), 1),
        "replaces": ref.replaces,
    }


def open_referrals(model: BoardModel, policy: EscalationPolicy, now: datetime) -> list[dict[str, Any]]:
    """Every open referral: overdue first, then escalated (highest level first), then by agency and age."""
    rows = [open_referral(r, policy, now) for r in model.referrals.values() if r.open]
    return sorted(rows, key=lambda r: (not r["overdue"], -r["escalation_level"], r["agency"], -r["age_seconds"]))


def timeline(model: BoardModel, case_id: str) -> dict[str, Any] | None:
    """A case's timeline across agencies, in time order, with its referrals and withheld referrals."""
    case = model.cases.get(case_id)
    if case is None:
        return None
    steps = sorted(case.steps, key=lambda s: s.at)
    return {
        **case_summary(case),
        "events": [s.as_dict() for s in steps],
        "withheld": list(case.withheld),
        "referrals": [
            {"referral_id": r.referral_id, "agency": r.agency, "agency_type": r.agency_type.value,
             "service": r.service.value, "status": r.status.value, "priority": r.priority.value,
             "replaces": r.replaces, "rerouted_to": r.rerouted_to, "reason": r.reason,
             "rules": [{"rule_id": x.rule_id, "description": x.description, "legal_basis": x.legal_basis,
                        "override": x.override} for x in r.rules]}
            for r in model.case_referrals(case_id)
        ],
        "all_referrals_terminal": bool(case.referral_ids) and all(
            r.status.terminal for r in model.case_referrals(case_id)),
    }


def case_summary(case: CaseView) -> dict[str, Any]:
    return {
        "case_id": case.case_id, "pseudonym": case.pseudonym, "reporter": case.reporter, "regency": case.regency,
        "registered_at": case.registered_at.isoformat() if case.reporter else None, "age_group": case.age_group,
        "risk": case.risk, "exploitation": case.exploitation, "needs": case.needs, "report_refs": case.report_refs,
        "possible_duplicates": case.possible_duplicates,
    }


def percentile(values: Sequence[float], q: float) -> float | None:
    """The `q`-th percentile (0-100) by the nearest-rank method; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def agency_records(model: BoardModel) -> list[dict[str, Any]]:
    """Each agency's record: time to acknowledge (median, 90th percentile), share of its referrals with an
    outcome (completed or not delivered, with a reason), rejections and redirections by reason."""
    by_agency: dict[str, list[ReferralView]] = {}
    for ref in model.referrals.values():
        by_agency.setdefault(ref.agency, []).append(ref)
    rows = []
    for agency, refs in sorted(by_agency.items()):
        waits = [(r.acknowledged_at - r.requested_at).total_seconds() for r in refs if r.acknowledged_at]
        declined = Counter(r.reason or "unspecified" for r in refs if r.status in DECLINES)
        rows.append({
            "agency": agency, "agency_type": refs[0].agency_type.value, "referrals": len(refs),
            "open": sum(1 for r in refs if r.open),
            "acknowledged": len(waits),
            "ack_median_seconds": _round(percentile(waits, 50)),
            "ack_p90_seconds": _round(percentile(waits, 90)),
            "with_outcome": sum(1 for r in refs if r.status in OUTCOMES),
            "outcome_share": round(sum(1 for r in refs if r.status in OUTCOMES) / len(refs), 3),
            "expired": sum(1 for r in refs if r.status is ReferralStatus.EXPIRED),
            "rejections": dict(sorted(declined.items())),
        })
    return rows


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def region_rows(model: BoardModel, min_group: int = MIN_GROUP) -> list[dict[str, Any]]:
    """The regions view: groups (a regency's month, in all or one exploitation type or modus) of at least
    `min_group` cases; smaller groups are left out (DOMAIN.md)."""
    rows = []
    for key, n in model.regions.items():
        parsed = parse_key(key)
        if parsed is None or n < min_group:
            continue
        group, month = parsed
        rows.append({"month": month, "regency": group.regency, "regency_name": REGENCY_NAMES[Regency(group.regency)],
                     "dimension": group.dimension, "value": group.value, "cases": n})
    return sorted(rows, key=lambda r: (r["month"], r["regency"], r["dimension"] != DIMENSION_ALL, r["dimension"],
                                       r["value"]))
