"""The referral lifecycle of DOMAIN.md as a transition table, and the checks on an agency's answer.

`TRANSITIONS` is the whole machine: `(from, to) -> actors allowed`. Everything else here reads it.
Choices the table encodes:
- An agency's answer implies delivery: `acknowledged`, `accepted`, `rejected` and `redirected` are
  valid straight from `requested`, and `accepted` (or a refusal) straight from `delivered`.
- `on_hold` may close directly (`completed` or `not_delivered`) as well as resume `in_progress`;
  forcing a resume just to close would add a status nobody means.
- After acceptance an agency cannot `reject` or `redirect`: a service it cannot finish ends as
  `not_delivered` with its reason, so the outcome stays honest.
- The referrer side (routing, the coordinator) may `cancel` any open referral.
- The system may `expire` only before acceptance (`requested`, `delivered`, `acknowledged`). An accepted
  referral has an agency that committed to a victim; expiring it would reroute the victim to a second
  agency while the first may still be working. Silence after acceptance is escalated to the
  coordinator again and again instead (see `escalation.py`), and a human cancels if need be.
- A repeat of the current status is a `duplicate`, not a refusal, and so is a step an open status
  already implies (a late `acknowledged` after `accepted`): redeliveries and races are harmless. Once
  terminal, only an exact repeat and the system's own late `delivered` are duplicates; an agency's
  late `accepted` after `completed` is refused, so the agency learns its view is out of date.
"""

from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from contracts.events import Actor, ResponseData
from contracts.vocab import (
    TERMINAL_STATUSES,
    NotDeliveredReason,
    ReferralStatus,
    RejectionReason,
    ResponseStatus,
)

S = ReferralStatus
AGENCY: frozenset[Actor] = frozenset({"agency"})
REFERRER: frozenset[Actor] = frozenset({"referrer"})
SYSTEM: frozenset[Actor] = frozenset({"system"})

OPEN_STATUSES = frozenset(s for s in ReferralStatus if s not in TERMINAL_STATUSES)
PRE_ACCEPTANCE = frozenset({S.REQUESTED, S.DELIVERED, S.ACKNOWLEDGED})

TRANSITIONS: Mapping[tuple[ReferralStatus, ReferralStatus], frozenset[Actor]] = {
    (S.REQUESTED, S.DELIVERED): SYSTEM,
    (S.REQUESTED, S.ACKNOWLEDGED): AGENCY,
    (S.REQUESTED, S.ACCEPTED): AGENCY,
    (S.REQUESTED, S.REJECTED): AGENCY,
    (S.REQUESTED, S.REDIRECTED): AGENCY,
    (S.DELIVERED, S.ACKNOWLEDGED): AGENCY,
    (S.DELIVERED, S.ACCEPTED): AGENCY,
    (S.DELIVERED, S.REJECTED): AGENCY,
    (S.DELIVERED, S.REDIRECTED): AGENCY,
    (S.ACKNOWLEDGED, S.ACCEPTED): AGENCY,
    (S.ACKNOWLEDGED, S.REJECTED): AGENCY,
    (S.ACKNOWLEDGED, S.REDIRECTED): AGENCY,
    (S.ACCEPTED, S.IN_PROGRESS): AGENCY,
    (S.ACCEPTED, S.ON_HOLD): AGENCY,
    (S.ACCEPTED, S.COMPLETED): AGENCY,
    (S.ACCEPTED, S.NOT_DELIVERED): AGENCY,
    (S.IN_PROGRESS, S.ON_HOLD): AGENCY,
    (S.IN_PROGRESS, S.COMPLETED): AGENCY,
    (S.IN_PROGRESS, S.NOT_DELIVERED): AGENCY,
    (S.ON_HOLD, S.IN_PROGRESS): AGENCY,
    (S.ON_HOLD, S.COMPLETED): AGENCY,
    (S.ON_HOLD, S.NOT_DELIVERED): AGENCY,
    **{(s, S.CANCELLED): REFERRER for s in OPEN_STATUSES},
    **{(s, S.EXPIRED): SYSTEM for s in PRE_ACCEPTANCE},
}
"""Every allowed move: `(from, to) -> the actors that may make it`. Terminal statuses have no exits."""

_ANSWERED = frozenset(
    {S.ACKNOWLEDGED, S.ACCEPTED, S.REJECTED, S.REDIRECTED, S.IN_PROGRESS, S.ON_HOLD, S.COMPLETED, S.NOT_DELIVERED}
)
IMPLIED_BY: Mapping[ReferralStatus, frozenset[ReferralStatus]] = {
    S.DELIVERED: _ANSWERED,
    S.ACKNOWLEDGED: _ANSWERED - {S.ACKNOWLEDGED},
    S.ACCEPTED: frozenset({S.IN_PROGRESS, S.ON_HOLD, S.COMPLETED, S.NOT_DELIVERED}),
}
"""`status -> the current statuses that already imply it`: a late message for it is a duplicate."""


class Verdict(StrEnum):
    OK = "ok"
    DUPLICATE = "duplicate"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Transition:
    """The answer of `check_transition`: what to do with a proposed status change, and why."""

    current: ReferralStatus
    new: ReferralStatus
    actor: Actor
    verdict: Verdict
    reason: str = ""
    problem: Literal["transition", "reason"] = "transition"
    """What a refusal is about: the move itself, or the reason the new status needs."""

    @property
    def ok(self) -> bool:
        return self.verdict is Verdict.OK

    @property
    def duplicate(self) -> bool:
        return self.verdict is Verdict.DUPLICATE

    @property
    def refused(self) -> bool:
        return self.verdict is Verdict.REFUSED


def allowed_next(current: ReferralStatus, actor: Actor) -> list[ReferralStatus]:
    """The statuses `actor` may move a referral to from `current`, in lifecycle order."""
    return [to for (frm, to), actors in TRANSITIONS.items() if frm is current and actor in actors]


def _may_ever_set(new: ReferralStatus, actor: Actor) -> bool:
    return any(to is new and actor in actors for (_, to), actors in TRANSITIONS.items())


def check_transition(current: ReferralStatus, new: ReferralStatus, actor: Actor) -> Transition:
    """Whether `actor` may move a referral from `current` to `new`: ok, duplicate, or refused with why."""

    def verdict(v: Verdict, reason: str = "") -> Transition:
        return Transition(current, new, actor, v, reason)

    if new is S.REQUESTED:
        return verdict(Verdict.REFUSED, "requested is set only when routing creates a referral")
    if not _may_ever_set(new, actor):
        setters = sorted({a for (_, to), actors in TRANSITIONS.items() if to is new for a in actors})
        return verdict(Verdict.REFUSED, f"the {actor} side cannot set {new}; only the {' or '.join(setters)} side can")
    if new is current:
        return verdict(Verdict.DUPLICATE, f"already {current}")
    implied = current in IMPLIED_BY.get(new, frozenset())
    if implied and (new is S.DELIVERED or not current.terminal):
        return verdict(Verdict.DUPLICATE, f"{new} is already implied by {current}")
    if current.terminal:
        return verdict(Verdict.REFUSED, f"cannot go from {current} to {new}: {current} is terminal")
    if actor in TRANSITIONS.get((current, new), frozenset()):
        return verdict(Verdict.OK)
    options = ", ".join(allowed_next(current, actor)) or "nothing"
    return verdict(
        Verdict.REFUSED, f"cannot go from {current} to {new}; from {current} the {actor} side may set: {options}"
    )


def reason_problem(
    status: ReferralStatus, reason: str | None, note: str | None = None, redirect_to: str | None = None
) -> str | None:
    """What is wrong with the reason a status carries, or None: each closing status says why."""
    codes: type[RejectionReason] | type[NotDeliveredReason] | None = {
        S.REJECTED: RejectionReason,
        S.NOT_DELIVERED: NotDeliveredReason,
    }.get(status)
    if codes is not None:
        allowed = ", ".join(c.value for c in codes)
        if reason is None:
            return f"{status} needs a `reason`, one of: {allowed}"
        if reason not in codes._value2member_map_:
            return f"{reason!r} is not a {status} reason; use one of: {allowed}"
        if reason == "other" and not (note and note.strip()):
            return f"{status} with reason `other` needs a `note` saying what happened"
    if status is S.REDIRECTED and not (redirect_to or reason):
        return "redirected needs `redirect_to` (the agency id) or a `reason`"
    return None


RefusalCode = Literal["unknown_referral", "impossible_transition", "bad_body", "note_limit"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why notify refuses an agency's response; `code` is the `ResponseRefusedData.code`."""

    code: RefusalCode
    reason: str

    def __str__(self) -> str:
        return self.reason


def not_held(referral_id: str, sender: str) -> Refusal:
    """The one answer for a referral the sender does not hold, whether it exists or not: telling the two
    apart (or naming the holder) would let any agency learn which referrals exist and who holds them."""
    return Refusal("unknown_referral", f"no referral {referral_id} is held by {sender}")


def check_response(
    resp: ResponseData, current: ReferralStatus, *, sender: str, holder: str, agencies: Container[str]
) -> Refusal | Transition:
    """Whether an agency's answer may be recorded: a `Refusal` saying why not, else its `Transition`
    (ok, or a duplicate to drop as a no-op). The one check an answer gets; `state.enact` trusts it.

    `sender` is who the transport says sent it (NATS subject or bearer token, never the body);
    `holder` is the agency the referral was sent to; `agencies` the ids of the enabled agencies of the
    registry (a redirect must name one).
    """
    if sender != holder:
        return not_held(resp.referral_id, sender)
    new = ReferralStatus(resp.status.value)
    if resp.redirect_to is not None:
        if resp.status is not ResponseStatus.REDIRECTED:
            return Refusal("bad_body", f"`redirect_to` goes only with status redirected, not {resp.status}")
        if resp.redirect_to == holder:
            return Refusal("bad_body", "`redirect_to` names the agency that holds the referral")
        if resp.redirect_to not in agencies:
            return Refusal("bad_body", f"`redirect_to` names {resp.redirect_to}, which is no enabled agency of the "
                                       "registry; name one (`alur agency list`), or redirect with a `reason` only")
    transition = checked(current, new, "agency", resp.reason, resp.note, resp.redirect_to)
    if transition.refused:
        code: Literal["impossible_transition", "bad_body"] = (
            "bad_body" if transition.problem == "reason" else "impossible_transition"
        )
        return Refusal(code, transition.reason)
    return transition


def checked(
    current: ReferralStatus, new: ReferralStatus, actor: Actor, reason: str | None = None, note: str | None = None,
    redirect_to: str | None = None,
) -> Transition:
    """`check_transition`, and for a real move (not a duplicate) also the reason the new status needs."""
    transition = check_transition(current, new, actor)
    if transition.ok and (problem := reason_problem(new, reason, note, redirect_to)):
        return Transition(current, new, actor, Verdict.REFUSED, problem, problem="reason")
    return transition
