"""Which agency takes a referral: the regency's own, else the province's, else a fallback type, else
the task-force secretariat."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from alur.registry import Agency, AgencyRegistry
from contracts.vocab import AgencyType, Regency


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
    secretariat = registry.secretariat(excluded)
    if secretariat is not None:
        return Resolution(secretariat, f"no agency of type {agency_type.value}: sent to the task-force secretariat")
    return Resolution(None, f"no agency of type {agency_type.value} and no task-force secretariat left")
