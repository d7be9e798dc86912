"""The agency registry: who the agencies are, where they work, and how notify reaches them.

Seeded from the profile (`deploy/<profile>/agencies.yaml`), kept in the NATS KV bucket `registry`
(one key per agency) and watched live by the services. Resolution is a pure function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from contracts.vocab import AGENCY_ID_PATTERN, AgencyType, Channel, Regency

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Agency(BaseModel):
    """One agency of the task force, as the registry holds it."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
    type: AgencyType
    name: str = ""
    regions: list[Regency] = Field(default_factory=list)
    channel: Channel = Channel.NATS
    url: str | None = None
    secret: Annotated[str, StringConstraints(pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")] | None = None
    allow_insecure_http: bool = False
    enabled: bool = True

    @property
    def provincial(self) -> bool:
        """An agency with no regions covers the whole province."""
        return not self.regions

    @model_validator(mode="after")
    def _webhook_is_reachable_and_safe(self) -> Agency:
        if self.channel is Channel.WEBHOOK:
            if not self.url or not self.secret:
                raise ValueError(f"agency {self.id}: a webhook channel needs `url` and a `whsec_` `secret`")
            parts = urlsplit(self.url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"agency {self.id}: url must be an http(s) URL")
            if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS and not self.allow_insecure_http:
                raise ValueError(
                    f"agency {self.id}: plain http to {parts.hostname} is refused; use https "
                    "or set allow_insecure_http explicitly"
                )
        return self

    def public(self) -> dict[str, object]:
        """The registry entry without its webhook secret, for listings."""
        data = self.model_dump(mode="json", exclude={"secret"})
        data["has_secret"] = self.secret is not None
        return data


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
