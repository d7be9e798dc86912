"""An agency's web inbox, as pure functions of the read model: its own open referrals, what is due when on
each, the answers the lifecycle lets it give now, and the agency's view of the case as plain lines.

Need-to-know: the rows come only from referrals held by the viewing agency (`holder`), and the case
details only from the request routing made for that agency, which already carries that agency type's
view and nothing more (`services/routing/views.py`). The read model never holds the view; the board reads
it from the stored request when the officer looks, and it is not cached.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.vocab import (
    NotDeliveredReason,
    ReferralStatus,
    RejectionReason,
    ResponseStatus,
)
from domain.escalation_policy import EscalationPolicy
from domain.lifecycle import allowed_next
from services.board.model import BoardModel
from services.board.views import open_referral

R = ResponseStatus
ACTION_ORDER = (R.ACKNOWLEDGED, R.ACCEPTED, R.IN_PROGRESS, R.ON_HOLD, R.COMPLETED, R.NOT_DELIVERED, R.REJECTED,
                R.REDIRECTED)
"""The answers in the order an officer meets them."""
REASONS: dict[ResponseStatus, tuple[str, ...]] = {
    R.REJECTED: tuple(r.value for r in RejectionReason),
    R.NOT_DELIVERED: tuple(r.value for r in NotDeliveredReason),
}
"""The answers that need a reason code, and the codes (`domain.lifecycle.reason_problem` checks them)."""
INBOX_FIELDS = ("referral_id", "case_id", "agency", "service", "priority", "status", "due", "overdue", "deadline",
                "deadlines", "requested_at", "age_seconds")
"""What an inbox row takes of the board's row: not the escalation, the agency type, nor `replaces` (a referral
this one replaces names, by its hash, the agency that held the victim's referral before)."""
PROGRESS = frozenset({R.IN_PROGRESS, R.ON_HOLD})
"""Answers an agency may give again and again, each with a note (a progress update)."""


@dataclass(frozen=True, slots=True)
class Action:
    """One answer the officer may give now: its status, and what it asks for."""

    status: ResponseStatus
    reasons: tuple[str, ...] = ()
    """Reason codes to choose from (rejected, not delivered); empty: no reason asked."""
    redirect: bool = False
    """Asks for the agency to redirect to."""

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status.value, "reasons": list(self.reasons), "redirect": self.redirect}


def actions(status: ReferralStatus) -> list[Action]:
    """The answers the agency may give from `status` (the lifecycle's table); a progress answer stays
    offered while it is current, since each one carries a new note."""
    allowed = {s.value for s in allowed_next(status, "agency")}
    if status.value in {p.value for p in PROGRESS}:
        allowed.add(status.value)
    return [Action(s, REASONS.get(s, ()), s is R.REDIRECTED) for s in ACTION_ORDER if s.value in allowed]


def inbox_rows(model: BoardModel, policy: EscalationPolicy, holder: str, now: datetime) -> list[dict[str, Any]]:
    """`GET /api/inbox`: the open referrals `holder` holds, soonest deadline first, each with the answers it
    may give now. The case view is added by the caller (`with_case`)."""
    rows = []
    for ref in model.referrals.values():
        if ref.agency != holder or not ref.open:
            continue
        board_row = open_referral(ref, policy, now)
        row = {key: board_row[key] for key in INBOX_FIELDS}
        row["actions"] = [a.as_dict() for a in actions(ref.status)]
        row["rules"] = [{"rule_id": r.rule_id, "legal_basis": r.legal_basis} for r in ref.rules]
        rows.append(row)
    return sorted(rows, key=lambda r: (not r["overdue"], r["deadline"]["due"] if r["deadline"] else r["due"]))


def case_lines(view: Any, path: str = "") -> Iterator[tuple[str, str | bool]]:
    """The agency's view of the case as (dotted field, value) lines, in the order the view gives them: a
    list of plain values joined, a yes/no kept as a bool; empty values are left out."""
    if isinstance(view, dict):
        for key, value in view.items():
            yield from case_lines(value, f"{path}.{key}" if path else str(key))
    elif isinstance(view, list):
        if view and all(not isinstance(v, (dict, list)) for v in view):
            yield path, ", ".join(str(v) for v in view)
        else:
            for i, item in enumerate(view, 1):
                yield from case_lines(item, f"{path}.{i}")
    elif isinstance(view, bool):
        yield path, view
    elif view not in (None, ""):
        yield path, str(view)
