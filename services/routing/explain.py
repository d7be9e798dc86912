"""A decision explained for a coordinator: each referral with the rules and law behind it, each gap,
and why every other rule did not fire. Views are not shown, only which fields each agency receives."""

from __future__ import annotations

from typing import Any

from services.routing.plan import Decision, PlannedReferral


def _view_fields(view: dict[str, Any], prefix: str = "") -> list[str]:
    fields: list[str] = []
    for key, value in view.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            fields.extend(_view_fields(value, path + "."))
        else:
            fields.append(path)
    return fields


def _referral_json(referral: PlannedReferral) -> dict[str, Any]:
    data = referral.model_dump(mode="json", exclude={"case"})
    data["view_fields"] = _view_fields(referral.case)
    return data


def explain_json(decision: Decision) -> dict[str, Any]:
    """The decision as JSON for tools, with each view replaced by the list of fields it carries."""
    data = decision.model_dump(mode="json", exclude={"referrals"})
    data["referrals"] = [_referral_json(r) for r in decision.referrals]
    data["not_fired"] = [t.rule_id for t in decision.trace if not t.fired]
    return data


def _referral_lines(referral: PlannedReferral) -> list[str]:
    clock = (
        f"; statutory clock {referral.statutory_clock} {referral.sla_hours:g} h"
        if referral.statutory_clock and referral.sla_hours
        else ""
    )
    lines = [
        f"  • {referral.agency_type.value} / {referral.service.value} → {referral.agency} ({referral.resolution})",
        f"    priority {referral.priority.value}, acknowledge by {referral.due.isoformat()}{clock}",
        f"    referral {referral.referral_id}"
        + (f", replaces {referral.replaces}" if referral.replaces else ""),
    ]
    for reason in referral.reasons:
        marker = " [CONSENT OVERRIDDEN]" if reason.override else ""
        lines.append(f"    - {reason.rule_id}{marker}: {reason.description}")
        lines.append(f"      legal basis: {reason.legal_basis}")
    return lines


def explain(decision: Decision) -> str:
    """The decision as text a coordinator can read."""
    lines = [
        f"Case {decision.case_id} under rule pack {decision.ruleset_version} ({decision.ruleset_digest[:12]})",
        f"Input {decision.input_hash}, decided at {decision.decided_at.isoformat()}",
        "",
        f"Referrals ({len(decision.referrals)}):",
    ]
    for referral in decision.referrals:
        lines.extend(_referral_lines(referral))
    if not decision.referrals:
        lines.append("  (none)")
    if decision.withheld:
        lines += ["", f"Withheld for want of consent ({len(decision.withheld)}):"]
        lines += [
            f"  • {w.agency_type.value} / {w.service.value}: {w.reason} (rules: {', '.join(w.rule_ids)})"
            for w in decision.withheld
        ]
    if decision.unroutable:
        lines += ["", f"Not routable ({len(decision.unroutable)}):"]
        lines += [
            f"  • {u.agency_type.value} / {u.service.value}: {u.reason} (rules: {', '.join(u.rule_ids)})"
            for u in decision.unroutable
        ]
    if decision.already_referred:
        lines += ["", f"Already referred ({len(decision.already_referred)}):"]
        lines += [
            f"  • {a.agency_type.value} / {a.service.value}: {a.referral_id}" for a in decision.already_referred
        ]
    if decision.errors:
        lines += ["", f"Rules that failed at run time ({len(decision.errors)}):"]
        lines += [f"  • {t.rule_id}: {t.error}" for t in decision.errors]
    fired = [t for t in decision.trace if t.fired]
    lines += ["", f"Rules that fired ({len(fired)}):"]
    lines += [f"  • {t.rule_id}: {t.why}" for t in fired]
    not_fired = [t for t in decision.trace if not t.fired and not t.error]
    lines += ["", f"Rules that did not fire ({len(not_fired)}):"]
    lines += [f"  • {t.rule_id}: {t.why}" for t in not_fired]
    return "\n".join(lines)
