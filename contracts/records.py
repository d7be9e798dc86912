"""The records one part of Alur keeps in KV and another reads (`buckets.Bucket` says where each lives).

Each is read tolerantly (`extra="ignore"`), like the facts on the streams: a newer writer's extra fields
never break an older reader. The writer may keep more than the record says (notify's referral state
extends `ReferralRecord`); what is here is all a reader may rely on.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StringConstraints,
    model_validator,
)

from contracts.destinations import host_problem
from contracts.events import (
    AgencyId,
    CaseId,
    HistoryEntry,
    Outcome,
    ReferralId,
    RuleReason,
)
from contracts.vocab import (
    AGENCY_ID_PATTERN,
    AgencyType,
    Channel,
    Priority,
    ReferralStatus,
    Regency,
    Service,
)

EMAIL_PATTERN = r"^[^@\s<>,;]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$"
"""One plain address, local part and domain (no display name, no list): enough to refuse a typo, not RFC 5322."""
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Record(BaseModel):
    """A KV record as its readers see it."""

    model_config = ConfigDict(extra="ignore")


# ---------------------------------------------------------------- registry (written by `alur`)


class Agency(BaseModel):
    """One agency of the task force, as the registry holds it (validated whole: a bad entry is never applied)."""

    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, StringConstraints(pattern=AGENCY_ID_PATTERN)]
    type: AgencyType
    name: str = ""
    regions: list[Regency] = Field(default_factory=list)
    channel: Channel = Channel.NATS
    url: str | None = None
    secret: Annotated[str, StringConstraints(pattern=r"^whsec_[A-Za-z0-9+/=]{16,}$")] | None = None
    allow_insecure_http: bool = False
    allow_private_network: bool = False
    """Allow a webhook to a loopback or private-network host (tests, an on-premises receiver): refused
    otherwise, see `contracts.destinations`."""
    email: Annotated[str, StringConstraints(pattern=EMAIL_PATTERN, max_length=254)] | None = None
    """Where notify sends a notice of each new referral and each escalation (any channel): codes, a deadline
    and a link to the inbox, never a name, NIK, phone or narrative."""
    enabled: bool = True
    credentials_revision: int = Field(default=0, ge=0)
    """Bumped by `alur agency rotate`: the change makes `alur up` reload the server's accounts with the new key."""

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
            try:
                port = parts.port
            except ValueError:
                raise ValueError(f"agency {self.id}: url has an invalid port") from None
            problem = host_problem(parts.hostname, port, allow_private=self.allow_private_network)
            if problem is not None:
                raise ValueError(f"agency {self.id}: webhook {problem}")
        return self

    def public(self) -> dict[str, object]:
        """The registry entry without its webhook secret, for listings."""
        data = self.model_dump(mode="json", exclude={"secret"})
        data["has_secret"] = self.secret is not None
        return data


class AgencyCredential(Record):
    """What a service needs to know who is calling: the agency's public NKey and its HTTP token's SHA-256."""

    nkey: str
    token_sha256: str


# ---------------------------------------------------------------- intake


class CaseIds(RootModel[list[CaseId]]):
    """The cases whose victims share one keyed identity hash (bucket `matches`), for the coordinator's review."""


# ---------------------------------------------------------------- routing


class RuleTrace(BaseModel):
    """One rule's outcome for a case: fired or not, and why (the condition and the non-identifying facts it
    read); `error` when the condition failed at run time (then it counts as not fired)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rule_id: str
    fired: bool
    why: str
    error: str | None = None


class WithheldReferral(Record):
    """A referral the rules asked for but that was not made: for want of consent, or no agency at all."""

    agency_type: AgencyType
    service: Service
    reason: str
    rule_ids: list[str]


class AlreadyReferred(Record):
    """A referral the rules ask for that was already issued for the case."""

    referral_id: ReferralId
    agency_type: AgencyType
    service: Service


class ReferralEntry(Record):
    """One referral routing made, without the case view it carried (which holds personal data).

    `agency_type` is the type the rules asked for; `receiving_type` the type of the agency that got it
    (a fallback or the secretariat); `rerouted_to` the referral that replaced it, or `none` when no
    agency was left.
    """

    referral_id: ReferralId
    case_id: CaseId
    agency: AgencyId
    agency_type: AgencyType
    receiving_type: AgencyType | None = None
    service: Service
    priority: Priority
    due: AwareDatetime
    reasons: list[RuleReason]
    ruleset_version: str | None = None
    regency: Regency | None = None
    resolution: str | None = None
    sla_hours: float | None = None
    statutory_clock: str | None = None
    replaces: ReferralId | None = None
    requested_at: AwareDatetime | None = None
    rerouted_to: str | None = None
    case_version: int | None = None
    """The case version whose decision made this referral (None for a reroute)."""


class DecisionRecord(Record):
    """One routing decision for a case (bucket `decisions`): what it made, withheld, and every rule's trace."""

    case_id: CaseId
    case_version: int
    trigger: str
    decided_at: datetime
    ruleset_version: str
    ruleset_digest: str
    input_hash: str
    referrals: list[ReferralEntry] = Field(default_factory=list)
    withheld: list[WithheldReferral] = Field(default_factory=list)
    unroutable: list[WithheldReferral] = Field(default_factory=list)
    already_referred: list[AlreadyReferred] = Field(default_factory=list)
    trace: list[RuleTrace] = Field(default_factory=list)

    @property
    def fired(self) -> list[str]:
        """Ids of the rules that fired, in pack order."""
        return [t.rule_id for t in self.trace if t.fired]


class CaseReferrals(Record):
    """Every referral of a case and every gap (bucket `case-referrals`), kept by routing with compare-and-set.

    `declined` lists, per `<agency type>:<service>`, the agencies that rejected, redirected or let expire
    that service for this case: a reroute never goes back to them.
    """

    case_id: CaseId
    referrals: dict[str, ReferralEntry] = Field(default_factory=dict)
    withheld: list[WithheldReferral] = Field(default_factory=list)
    declined: dict[str, list[AgencyId]] = Field(default_factory=dict)
    case_version: int = 0
    """The latest case version routing decided: an older version's event, arriving late, decides nothing."""

    def awaiting_reroute(self, referral_id: str) -> bool:
        """Whether routing has yet to send a closed referral's service on (it has not recorded where)."""
        entry = self.referrals.get(referral_id)
        return entry is not None and entry.rerouted_to is None


# ---------------------------------------------------------------- notify


class ReferralRecord(Record):
    """A referral's state as notify keeps it (bucket `referrals`), in the part other readers may rely on."""

    referral_id: ReferralId
    case_id: CaseId
    agency: AgencyId
    agency_type: AgencyType
    service: Service
    priority: Priority
    status: ReferralStatus
    requested_at: AwareDatetime
    due: AwareDatetime
    sla_hours: float | None = None
    statutory_clock: str | None = None
    replaces: str | None = None
    history: list[HistoryEntry]
    outcome: Outcome | None = None
    version: int = 1


class RegionMonth(Record):
    """One regency's month of early-warning counters (`Bucket.REGIONS`, key `<regency>.<YYYY-MM>`).

    `counts` is keyed `<dimension>.<value>` (`cases.all`, `exploitation.forced_labour`, `modus.romance`);
    `seen` holds a digest of each case counted, so a redelivered or replayed registration counts nothing
    twice; `flagged` the groups (`<dimension>.<value>`) already published as flagged this month.
    Aggregates only: never a case id.
    """

    regency: Regency
    month: str
    counts: dict[str, int] = Field(default_factory=dict)
    seen: list[str] = Field(default_factory=list)
    flagged: list[str] = Field(default_factory=list)


# ---------------------------------------------------------------- instances (written by every service)


class InstanceRecord(Record):
    """One running service instance, as it last reported itself (bucket `instances`, key
    `<service>.<instance>`); the bucket's age limit drops an instance that stopped reporting."""

    service: str
    instance: str
    http: str
    """host:port of its health, readiness and metrics endpoints."""
    ready: bool
    problems: list[str] = Field(default_factory=list)
    at: AwareDatetime
