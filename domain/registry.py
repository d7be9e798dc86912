"""The agency registry: who the agencies are, where they work, and which one takes a referral.

Seeded from the profile (`deploy/<profile>/agencies.yaml`), kept in the NATS KV bucket `registry`
(one key per agency) and watched live by the services. Resolution is a pure function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pydantic import BaseModel, Field

from contracts.records import Agency
from contracts.vocab import AgencyType, Regency

__all__ = ["Agency", "AgencyRegistry", "registry_from_mapping"]

class AgencyRegistry(BaseModel):
    """All agencies by id, with resolution by type and regency."""

    agencies: dict[str, Agency] = Field(default_factory=dict)

    @classmethod
    def of(cls, agencies: Iterable[Agency]) -> AgencyRegistry:
        return cls(agencies={a.id: a for a in agencies})

    def get(self, agency_id: str) -> Agency | None:
        return self.agencies.get(agency_id)

    def with_agency(self, agency: Agency) -> AgencyRegistry:
        return AgencyRegistry(agencies={**self.agencies, agency.id: agency})

    def candidates(self, agency_type: AgencyType, regency: Regency | str | None) -> list[Agency]:
        """Enabled agencies of a type in resolution order: the regency's own, then provincial ones."""
        of_type = sorted(
            (a for a in self.agencies.values() if a.type is agency_type and a.enabled), key=lambda a: a.id
        )
        local = [a for a in of_type if regency is not None and regency in a.regions]
        provincial = [a for a in of_type if a.provincial]
        return local + provincial

    def resolve(
        self, agency_type: AgencyType, regency: Regency | str | None, exclude: Iterable[str] = ()
    ) -> Agency | None:
        """The agency that should act: the regency's own first, else the province's; None if none is left."""
        excluded = set(exclude)
        return next((a for a in self.candidates(agency_type, regency) if a.id not in excluded), None)

    def secretariat(self, exclude: Iterable[str] = ()) -> Agency | None:
        """The task-force secretariat, where escalations and unresolved referrals end."""
        return self.resolve(AgencyType.GT_SECRETARIAT, None, exclude)


def registry_from_mapping(entries: Mapping[str, Mapping[str, object]] | list[Mapping[str, object]]) -> AgencyRegistry:
    """Build a registry from YAML data (a list of agencies, or a mapping id → fields)."""
    items = (
        [{"id": key, **value} for key, value in entries.items()] if isinstance(entries, Mapping) else list(entries)
    )
    return AgencyRegistry.of(Agency.model_validate(item) for item in items)
