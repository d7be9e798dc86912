"""The referral lifecycle: every (from, to, actor) against a table written from DOMAIN.md, plus properties."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.events import ResponseData
from contracts.vocab import TERMINAL_STATUSES, ReferralStatus, ResponseStatus
from domain.lifecycle import (
    Refusal,
    Transition,
    Verdict,
    check_response,
    check_transition,
    not_held,
    reason_problem,
)

S = ReferralStatus
ACTORS = ("agency", "referrer", "system")
OPEN = [s for s in S if s not in TERMINAL_STATUSES]

# Written from DOMAIN.md "Referral lifecycle", independently of the module's table.
EXPECTED_MOVES = """
requested     -> delivered                                                   : system
requested     -> acknowledged accepted rejected redirected                   : agency
delivered     -> acknowledged accepted rejected redirected                   : agency
acknowledged  -> accepted rejected redirected                                : agency
accepted      -> in_progress on_hold completed not_delivered                 : agency
in_progress   -> on_hold completed not_delivered                             : agency
on_hold       -> in_progress completed not_delivered                         : agency
requested delivered acknowledged accepted in_progress on_hold -> cancelled   : referrer
requested delivered acknowledged -> expired                                  : system
"""

# A late message for a step an open status already implies is a harmless duplicate; once terminal,
# only the system's late `delivered` still is.
EXPECTED_IMPLIED = {
    S.DELIVERED: {
        S.ACKNOWLEDGED, S.ACCEPTED, S.REJECTED, S.REDIRECTED, S.IN_PROGRESS, S.ON_HOLD, S.COMPLETED, S.NOT_DELIVERED
    },
    S.ACKNOWLEDGED: {S.ACCEPTED, S.REJECTED, S.REDIRECTED, S.IN_PROGRESS, S.ON_HOLD, S.COMPLETED, S.NOT_DELIVERED},
    S.ACCEPTED: {S.IN_PROGRESS, S.ON_HOLD, S.COMPLETED, S.NOT_DELIVERED},
}


def _moves() -> set[tuple[S, S, str]]:
    moves = set()
    for line in filter(None, map(str.strip, EXPECTED_MOVES.splitlines())):
        pair, actor = line.rsplit(":", 1)
        froms, tos = pair.split("->")
        for frm, to in itertools.product(froms.split(), tos.split()):
            moves.add((S(frm), S(to), actor.strip()))
    return moves


MOVES = _moves()
SETTERS = {(to, actor) for _, to, actor in MOVES}


@pytest.mark.parametrize(("current", "new", "actor"), list(itertools.product(S, S, ACTORS)))
def test_every_pair_and_actor_matches_the_table(current: S, new: S, actor: str) -> None:
    result = check_transition(current, new, actor)  # type: ignore[arg-type]
    if (new, actor) not in SETTERS:
        expected = Verdict.REFUSED
    elif new is current or (
        current in EXPECTED_IMPLIED.get(new, set()) and (new is S.DELIVERED or current not in TERMINAL_STATUSES)
    ):
        expected = Verdict.DUPLICATE
    elif (current, new, actor) in MOVES:
        expected = Verdict.OK
    else:
        expected = Verdict.REFUSED
    assert result.verdict is expected, result.reason
    assert result.refused == bool(result.reason) or result.duplicate


def test_refusals_say_why() -> None:
    assert check_transition(S.COMPLETED, S.ACCEPTED, "agency").reason == (
        "cannot go from completed to accepted: completed is terminal"
    )
    assert "only the referrer side" in check_transition(S.ACCEPTED, S.CANCELLED, "agency").reason
    skip = check_transition(S.ACKNOWLEDGED, S.COMPLETED, "agency")
    assert skip.refused and "accepted, rejected, redirected" in skip.reason


def test_expiry_only_before_acceptance() -> None:
    for status in (S.REQUESTED, S.DELIVERED, S.ACKNOWLEDGED):
        assert check_transition(status, S.EXPIRED, "system").ok
    for status in (S.ACCEPTED, S.IN_PROGRESS, S.ON_HOLD):
        assert check_transition(status, S.EXPIRED, "system").refused


def test_repeats_and_late_implied_steps_are_duplicates() -> None:
    assert check_transition(S.ACKNOWLEDGED, S.ACKNOWLEDGED, "agency").duplicate
    assert check_transition(S.ACCEPTED, S.DELIVERED, "system").duplicate
    assert check_transition(S.IN_PROGRESS, S.ACKNOWLEDGED, "agency").duplicate
    assert check_transition(S.COMPLETED, S.COMPLETED, "agency").duplicate
    assert check_transition(S.REJECTED, S.DELIVERED, "system").duplicate


@given(st.lists(st.tuples(st.sampled_from(list(S)), st.sampled_from(ACTORS)), max_size=40))
def test_random_walks_never_leave_a_terminal_status(steps: list[tuple[S, str]]) -> None:
    status = S.REQUESTED
    closed_at: S | None = None
    for new, actor in steps:
        result = check_transition(status, new, actor)  # type: ignore[arg-type]
        if result.ok:
            assert closed_at is None
            status = new
        if status.terminal:
            closed_at = status
    if closed_at is not None:
        assert status is closed_at


def _response(status: ResponseStatus, **kw: object) -> ResponseData:
    return ResponseData(referral_id="ref-" + "0" * 20, status=status, **kw)  # type: ignore[arg-type]


AGENCIES = frozenset({"dinsos-kalsel", "dinsos-banjarmasin", "polda-kalsel"})


def test_response_from_another_agency_is_refused_without_naming_the_holder() -> None:
    # Issue 10.2: the same refusal as for a referral that does not exist (`not_held`), never the holder.
    refusal = check_response(
        _response(ResponseStatus.ACCEPTED), S.DELIVERED, sender="polda-kalsel", holder="dinsos-kalsel",
        agencies=AGENCIES,
    )
    assert refusal == not_held("ref-" + "0" * 20, "polda-kalsel")
    assert isinstance(refusal, Refusal) and refusal.code == "unknown_referral"
    assert refusal.reason == f"no referral ref-{'0' * 20} is held by polda-kalsel"
    assert "dinsos-kalsel" not in refusal.reason


def test_a_redirect_must_name_an_enabled_agency_of_the_registry() -> None:
    # Issue 10.5: a redirect to no registered agency was accepted, then silently rerouted to the secretariat.
    answer = _response(ResponseStatus.REDIRECTED, redirect_to="dinsos-nowhere")
    refusal = check_response(answer, S.DELIVERED, sender="dinsos-kalsel", holder="dinsos-kalsel", agencies=AGENCIES)
    assert isinstance(refusal, Refusal) and refusal.code == "bad_body"
    assert refusal.reason.startswith("`redirect_to` names dinsos-nowhere, which is no enabled agency")
    fine = check_response(_response(ResponseStatus.REDIRECTED, redirect_to="dinsos-banjarmasin"), S.DELIVERED,
                          sender="dinsos-kalsel", holder="dinsos-kalsel", agencies=AGENCIES)
    assert isinstance(fine, Transition) and fine.ok
    reason_only = check_response(_response(ResponseStatus.REDIRECTED, reason="out_of_mandate"), S.DELIVERED,
                                 sender="dinsos-kalsel", holder="dinsos-kalsel", agencies=AGENCIES)
    assert isinstance(reason_only, Transition) and reason_only.ok


@pytest.mark.parametrize(
    ("status", "current", "fields", "code"),
    [
        (ResponseStatus.ACCEPTED, S.DELIVERED, {}, None),
        (ResponseStatus.ACKNOWLEDGED, S.ACKNOWLEDGED, {}, None),
        (ResponseStatus.REJECTED, S.ACKNOWLEDGED, {}, "bad_body"),
        (ResponseStatus.REJECTED, S.ACKNOWLEDGED, {"reason": "too_busy"}, "bad_body"),
        (ResponseStatus.REJECTED, S.ACKNOWLEDGED, {"reason": "no_capacity_waitlist"}, None),
        (ResponseStatus.REJECTED, S.ACKNOWLEDGED, {"reason": "other"}, "bad_body"),
        (ResponseStatus.REJECTED, S.ACKNOWLEDGED, {"reason": "other", "note": "building flooded"}, None),
        (ResponseStatus.NOT_DELIVERED, S.IN_PROGRESS, {"reason": "out_of_mandate"}, "bad_body"),
        (ResponseStatus.NOT_DELIVERED, S.IN_PROGRESS, {"reason": "could_not_contact"}, None),
        (ResponseStatus.REDIRECTED, S.DELIVERED, {"redirect_to": "dinsos-banjarmasin"}, None),
        (ResponseStatus.REDIRECTED, S.DELIVERED, {"redirect_to": "dinsos-kalsel"}, "bad_body"),
        (ResponseStatus.ACCEPTED, S.DELIVERED, {"redirect_to": "dinsos-banjarmasin"}, "bad_body"),
        (ResponseStatus.COMPLETED, S.ACKNOWLEDGED, {}, "impossible_transition"),
        (ResponseStatus.ACCEPTED, S.CANCELLED, {}, "impossible_transition"),
    ],
)
def test_response_checks(status: ResponseStatus, current: S, fields: dict[str, str], code: str | None) -> None:
    refusal = check_response(_response(status, **fields), current, sender="dinsos-kalsel", holder="dinsos-kalsel",
                             agencies=AGENCIES)
    assert (refusal.code if isinstance(refusal, Refusal) else None) == code, refusal


def test_reason_requirements() -> None:
    assert reason_problem(S.REDIRECTED, None) is not None
    assert reason_problem(S.REDIRECTED, "out_of_mandate") is None
    assert reason_problem(S.COMPLETED, None) is None
    assert "could_not_contact" in str(reason_problem(S.NOT_DELIVERED, None))
