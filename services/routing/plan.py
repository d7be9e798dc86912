"""What routing decides for a case: the referrals to make, those withheld, and the trace of every rule."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from contracts.events import CaseId, ReferralId, ReferralRequestedData, RuleReason
from contracts.records import (
    AlreadyReferred,
    DecisionRecord,
    ReferralEntry,
    RuleTrace,
    WithheldReferral,
)
from contracts.vocab import AgencyType, Priority, Regency, Service

__all__ = ["AlreadyReferred", "Decision", "PlannedReferral", "RuleTrace", "WithheldReferral", "referral_id"]


def referral_id(case_id: str, agency_type: AgencyType | str, service: Service | str, *more: str) -> str:
    """`ref-` + 20 hex of sha256 over the keys: stable, so a replay or follow-up never refers twice.

    A reroute adds the new agency's id to the keys, so it gets an id of its own.
    """
    keys = [case_id, str(agency_type), str(service), *more]
    return "ref-" + hashlib.sha256("\x1f".join(keys).encode()).hexdigest()[:20]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PlannedReferral(Model):
    """A referral to publish. `agency_type` is the type the rules asked for (it keys `referral_id`);
    the agency may be of `receiving_type` when a fallback or the secretariat takes it (see `resolution`).
    """

    referral_id: ReferralId
    case_id: CaseId
    agency: str
    agency_type: AgencyType
    receiving_type: AgencyType
    service: Service
    priority: Priority
    due: AwareDatetime
    reasons: list[RuleReason] = Field(min_length=1)
    case: dict[str, Any]
    regency: Regency | None
    resolution: str
    sla_hours: float | None = None
    statutory_clock: str | None = None
    replaces: ReferralId | None = None
    requested_at: AwareDatetime

    @property
    def overridden(self) -> bool:
        """Whether the referral was made against the victim's consent because the law requires it."""
        return any(r.override for r in self.reasons)

    def entry(self, ruleset_version: str) -> ReferralEntry:
        """The referral as routing records it for the case: everything but the case view."""
        return ReferralEntry.model_validate(
            {**self.model_dump(exclude={"case"}), "ruleset_version": ruleset_version}
        )

    def to_event_data(self, ruleset_version: str) -> ReferralRequestedData:
        """The `data` of `alur.referral.requested.v1`."""
        return ReferralRequestedData(
            referral_id=self.referral_id,
            case_id=self.case_id,
            agency=self.agency,
            agency_type=self.agency_type,
            service=self.service,
            priority=self.priority,
            due=self.due,
            reasons=self.reasons,
            ruleset_version=ruleset_version,
            case=self.case,
            regency=self.regency,
            sla_hours=self.sla_hours,
            statutory_clock=self.statutory_clock,
            replaces=self.replaces,
            resolution=self.resolution,
            requested_at=self.requested_at,
        )


class Decision(Model):
    """Routing's decision for one case under one rule pack; `input_hash` ties it to what the rules saw."""

    case_id: CaseId
    ruleset_version: str
    ruleset_digest: str
    input_hash: str
    decided_at: datetime
    referrals: list[PlannedReferral] = Field(default_factory=list)
    withheld: list[WithheldReferral] = Field(default_factory=list)
    unroutable: list[WithheldReferral] = Field(default_factory=list)
    already_referred: list[AlreadyReferred] = Field(default_factory=list)
    trace: list[RuleTrace] = Field(default_factory=list)

    def record(self, *, case_version: int, trigger: str) -> DecisionRecord:
        """The decision record to keep: everything but the case views, which hold personal data."""
        return DecisionRecord(
            case_id=self.case_id, case_version=case_version, trigger=trigger, decided_at=self.decided_at,
            ruleset_version=self.ruleset_version, ruleset_digest=self.ruleset_digest, input_hash=self.input_hash,
            referrals=[r.entry(self.ruleset_version) for r in self.referrals], withheld=self.withheld,
            unroutable=self.unroutable, already_referred=self.already_referred, trace=self.trace,
        )

    @property
    def fired(self) -> list[str]:
        """Ids of the rules that fired, in pack order."""
        return [t.rule_id for t in self.trace if t.fired]

    @property
    def errors(self) -> list[RuleTrace]:
        """Rules whose condition failed at run time (treated as not fired; alert on these)."""
        return [t for t in self.trace if t.error]
