"""Which agency takes a referral: the regency's own, else the province's, else a fallback type, else
the task-force secretariat."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from contracts.records import Agency
from contracts.vocab import AgencyType, Regency
from domain.registry import AgencyRegistry


@dataclass(frozen=True, slots=True)
class Resolution:
    """The agency found (None if not even the secretariat is left) and how, in words."""

    agency: Agency | None
    text: str


def _where(agency: Agency, regency: Regency | str | None) -> str:
    return "regency agency" if regency is not None and regency in agency.regions else "provincial agency"


def resolve_agency(
    registry: AgencyRegistry,
    agency_type: AgencyType,
    regency: Regency | str | None,
    *,
    fallback: AgencyType | None = None,
    allowed: Callable[[AgencyType], bool] = lambda _: True,
    exclude: Iterable[str] = (),
) -> Resolution:
    """Resolve in order: `agency_type` (regency first, then provincial; disabled and excluded agencies
    skipped), then `fallback` if `allowed` (consent) permits it, then the secretariat."""
    excluded = frozenset(exclude)
    agency = registry.resolve(agency_type, regency, excluded)
    if agency is not None:
        return Resolution(agency, _where(agency, regency))
    if fallback is not None and allowed(fallback):
        agency = registry.resolve(fallback, regency, excluded)
        if agency is not None:
            return Resolution(
                agency, f"no agency of type {agency_type.value}: fallback to {fallback.value} ({_where(agency, regency)})"
            )
    return to_secretariat(registry, f"no agency of type {agency_type.value}", excluded)


def to_secretariat(registry: AgencyRegistry, why: str, exclude: Iterable[str] = ()) -> Resolution:
    """The last resort, with `why` no other agency takes the referral: the task-force secretariat (its
    view holds neither identity nor narrative), or None when it too is excluded or absent."""
    secretariat = registry.secretariat(exclude)
    if secretariat is not None:
        return Resolution(secretariat, f"{why}: sent to the task-force secretariat")
    return Resolution(None, f"{why} and no task-force secretariat left")


class Resolver:
    """`resolve_agency` for one case's regency, remembering each answer for the life of one decision.

    The cache is keyed by (agency type, fallback): the caller passes the fallback only when consent
    allows it, so the answer depends on nothing else while the registry and regency stay fixed. Make a
    new `Resolver` per decision, so a registry update is seen by the next one.
    """

    def __init__(self, registry: AgencyRegistry, regency: Regency | str | None) -> None:
        self._registry = registry
        self._regency = regency
        self._answers: dict[tuple[AgencyType, AgencyType | None], Resolution] = {}

    def resolve(self, agency_type: AgencyType, fallback: AgencyType | None) -> Resolution:
        """`resolve_agency(registry, agency_type, regency, fallback=fallback)`, computed once per key."""
        key = (agency_type, fallback)
        answer = self._answers.get(key)
        if answer is None:
            answer = self._answers[key] = resolve_agency(self._registry, agency_type, self._regency, fallback=fallback)
        return answer
