"""Screening: what the coded indicators of a report say, mapped onto what police and prosecutors must prove.

Indicators are coded observations: the ILO forced-labour indicators FL01–FL11 and the three legal
elements of UU 21/2007 art. 1 (act, means, purpose). Screening is indicative, never a finding:
services never wait for it (DOMAIN.md, identification status).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

from contracts.events import CHILD_AGE_LIMIT, Screening, Victim
from contracts.vocab import ExploitationType, IdentificationStatus, Indicator, Risk

ACT = frozenset(i for i in Indicator if i.value.startswith("act_"))
MEANS = frozenset(i for i in Indicator if i.value.startswith("means_"))
PURPOSE = frozenset({Indicator.PURPOSE_EXPLOITATION})
FORCED_LABOUR = frozenset(i for i in Indicator if i.value.startswith("FL"))

ILO_MEANS: dict[Indicator, Indicator] = {
    Indicator.FL01: Indicator.MEANS_ABUSE_OF_VULNERABILITY,
    Indicator.FL02: Indicator.MEANS_DECEPTION,
    Indicator.FL03: Indicator.MEANS_CONFINEMENT,
    Indicator.FL05: Indicator.MEANS_VIOLENCE,
    Indicator.FL06: Indicator.MEANS_THREAT,
    Indicator.FL09: Indicator.MEANS_DEBT_BONDAGE,
}
"""ILO indicators that are themselves a coercive means of UU 21/2007 art. 1."""

POSSIBLE_MIN_FORCED_LABOUR = 2

ScreeningResult = Literal["likely_trafficking", "possible_trafficking", "insufficient_information"]

RAISED_CHILD = "child"
RAISED_STILL_IN_EXPLOITATION = "still_in_exploitation"
RAISED_INJURED = "injured"


class Screenable(Protocol):
    """The fields screening reads; a `ReportData` and a `Case` both have them."""

    @property
    def victim(self) -> Victim: ...
    @property
    def indicators(self) -> Sequence[Indicator]: ...
    @property
    def exploitation(self) -> Sequence[ExploitationType]: ...
    @property
    def risk(self) -> Risk: ...
    @property
    def injured(self) -> bool: ...
    @property
    def still_in_exploitation(self) -> bool: ...


def legal_elements(indicators: Sequence[Indicator], exploitation: Sequence[ExploitationType]) -> dict[str, bool]:
    """Which elements of UU 21/2007 art. 1 the record shows: `act`, `means`, `purpose`.

    A listed exploitation type is the purpose; an ILO indicator that is a coercive means counts as means.
    """
    codes = set(indicators)
    return {
        "act": bool(codes & ACT),
        "means": bool(codes & MEANS) or any(i in ILO_MEANS for i in codes),
        "purpose": bool(codes & PURPOSE) or bool(exploitation),
    }


def screen(report: Screenable) -> Screening:
    """The screening result and the derived risk of a report or case.

    `risk_raised_because` lists every condition that requires high risk (a child, still in
    exploitation, injured), whether or not the reported risk was already high.
    """
    child = report.victim.age < CHILD_AGE_LIMIT
    elements = legal_elements(report.indicators, report.exploitation)
    forced_labour = sum(1 for i in report.indicators if i in FORCED_LABOUR)
    result: ScreeningResult
    if elements["act"] and elements["purpose"] and (elements["means"] or child):
        result = "likely_trafficking"
    elif forced_labour >= POSSIBLE_MIN_FORCED_LABOUR or any(elements.values()):
        result = "possible_trafficking"
    else:
        result = "insufficient_information"
    raised = [
        name
        for name, present in (
            (RAISED_CHILD, child),
            (RAISED_STILL_IN_EXPLOITATION, report.still_in_exploitation),
            (RAISED_INJURED, report.injured),
        )
        if present
    ]
    return Screening(
        indicators=list(report.indicators),
        forced_labour_indicators=forced_labour,
        legal_elements=elements,
        result=result,
        risk=Risk.HIGH if raised else report.risk,
        risk_raised_because=raised,
    )


def initial_status(
    given: IdentificationStatus | None, indicators: Sequence[Indicator]
) -> IdentificationStatus:
    """`reported`, or `suspected` once indicators are recorded, unless the reporter said which."""
    if given is not None:
        return given
    return IdentificationStatus.SUSPECTED if indicators else IdentificationStatus.REPORTED
