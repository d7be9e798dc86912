"""The escalation policy as data: what each referral must hear back by when, and what happens if not.

Loaded from `deploy/<profile>/escalation.yaml` and validated whole at load (unknown keys, a level that
expires after acceptance, a ladder that ends in silence: all errors naming the place). Each referral
keeps a snapshot of the policy it started under (`ReferralState.escalation.policy`, `snapshot`), so a
policy change never alters a running escalation. Durations are stored as written and multiplied by `scale`
(`ALUR_SLA_SCALE`) only when used.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts.vocab import AgencyType, ReferralStatus, Service
from domain.durations import Duration

POST_ACCEPTANCE = frozenset({ReferralStatus.ACCEPTED, ReferralStatus.IN_PROGRESS, ReferralStatus.ON_HOLD})
"""Taken on, not yet closed: the statuses in which the progress-update target (`UpdateTarget`) runs."""

Action = Literal["remind", "raise", "expire"]
Recipient = Literal["agency", "coordinator"]




class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Level(_Frozen):
    """One rung of the ladder, `after` the missed deadline; `to` defaults from the action."""

    action: Action
    after: Duration = timedelta(0)
    to: Recipient | None = None

    @property
    def recipient(self) -> Recipient:
        return self.to or ("agency" if self.action == "remind" else "coordinator")


class Repeat(_Frozen):
    """After the last level: keep acting `every` interval, `max` times (None: until the referral moves)."""

    every: Duration
    action: Literal["remind", "raise"] = "raise"
    to: Recipient | None = None
    max: int | None = Field(default=None, ge=1)

    @property
    def recipient(self) -> Recipient:
        return self.to or ("agency" if self.action == "remind" else "coordinator")


class Ladder(_Frozen):
    """What happens once a target is missed: ordered levels, then an optional repeat."""

    levels: list[Level] = Field(min_length=1)
    repeat: Repeat | None = None

    @model_validator(mode="after")
    def _ordered_and_never_silent(self) -> Ladder:
        afters = [level.after for level in self.levels]
        if afters != sorted(afters) or afters[0] < timedelta(0):
            raise ValueError("level `after` delays must be non-negative and non-decreasing")
        expiring = [i for i, level in enumerate(self.levels) if level.action == "expire"]
        if expiring and expiring != [len(self.levels) - 1]:
            raise ValueError("`expire` can only be the last level")
        if expiring and self.repeat:
            raise ValueError("a ladder that ends in `expire` cannot repeat")
        if not expiring and not self.repeat:
            raise ValueError("a ladder must end in `expire` or `repeat`: a referral may sit silent at no step")
        if self.repeat and self.repeat.every <= timedelta(0):
            raise ValueError("`repeat.every` must be positive")
        return self

    @property
    def expires(self) -> bool:
        return self.levels[-1].action == "expire"


class AckTarget(_Frozen):
    """Acknowledgement, due at the referral's own `due`: routing sets it from the rule pack's
    `acknowledgement_hours` (the one place those deadlines are written), the agency is told it."""

    ladder: Ladder


class DecisionTarget(_Frozen):
    """Accept, reject or redirect, due `within` after acknowledgement."""

    within: Duration
    ladder: Ladder


class UpdateTarget(_Frozen):
    """A word from the agency at least `every` interval once accepted, until an outcome."""

    every: Duration
    ladder: Ladder

    @model_validator(mode="after")
    def _never_expires(self) -> UpdateTarget:
        if self.ladder.expires:
            raise ValueError("update: an accepted referral is never expired; raise to the coordinator instead")
        return self


class StatutoryClock(_Frozen):
    """A clock the law sets, running from the request until a status in `stops_on` (or any terminal one).

    It runs on a referral whose `statutory_clock` names it, or whose service (and agency type, when
    listed) matches.
    """

    name: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,48}$")]
    within: Duration
    legal_basis: str = Field(min_length=1)
    services: list[Service] = Field(default_factory=list)
    agency_types: list[AgencyType] = Field(default_factory=list)
    stops_on: list[ReferralStatus] = Field(min_length=1)
    ladder: Ladder

    @model_validator(mode="after")
    def _sane(self) -> StatutoryClock:
        if ReferralStatus.REQUESTED in self.stops_on:
            raise ValueError(f"statutory clock {self.name}: cannot stop on requested, where it starts")
        if self.ladder.expires:
            raise ValueError(f"statutory clock {self.name}: a missed legal deadline is raised, not expired")
        return self

    def applies_to(self, service: Service, agency_type: AgencyType, named: str | None) -> bool:
        if named is not None and named == self.name:
            return True
        return service in self.services and (not self.agency_types or agency_type in self.agency_types)


class EscalationPolicy(_Frozen):
    """The whole policy, as validated at load and snapshotted on every referral."""

    version: str = Field(min_length=1)
    scale: float = Field(default=1.0, gt=0)
    ack: AckTarget
    decision: DecisionTarget
    update: UpdateTarget
    statutory: list[StatutoryClock] = Field(default_factory=list)
    default_statutory_ladder: Ladder | None = None
    """Used for a clock a referral names with `sla_hours` but this policy does not know."""

    @model_validator(mode="after")
    def _unique_clocks(self) -> EscalationPolicy:
        names = [c.name for c in self.statutory]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"statutory clock names repeat: {', '.join(dupes)}")
        if self.default_statutory_ladder is not None and self.default_statutory_ladder.expires:
            raise ValueError("default_statutory_ladder: a missed legal deadline is raised, not expired")
        return self

    def scaled(self, duration: timedelta) -> timedelta:
        """A policy duration in wall-clock time: times `scale`."""
        return duration * self.scale

    def clock(self, name: str) -> StatutoryClock | None:
        return next((c for c in self.statutory if c.name == name), None)

    def clocks_for(self, service: Service, agency_type: AgencyType, named: str | None) -> list[StatutoryClock]:
        """The statutory clocks that run on a referral for this service, agency type and named clock."""
        return [c for c in self.statutory if c.applies_to(service, agency_type, named)]

    def snapshot(self) -> EscalationPolicy:
        """What a referral keeps of the policy it started under: its version, scale, and the acknowledgement,
        decision and update targets with their ladders. The statutory clocks are left out: those that apply
        are resolved into the referral's own clock runs when it starts (with their ladders), and nothing
        reads them from the snapshot after that. They are most of the policy's bytes (2.1 of 2.9 kB for
        Kalsel's), which every state would store and every read of it parse."""
        if not self.statutory and self.default_statutory_ladder is None:
            return self
        return self.model_copy(update={"statutory": [], "default_statutory_ladder": None})


def parse_policy(data: Any, *, scale: float = 1.0) -> EscalationPolicy:
    """Validate a policy mapping (as read from YAML) whole; pydantic's error names the offending path."""
    if not isinstance(data, dict):
        raise ValueError("an escalation policy is a mapping")
    return EscalationPolicy.model_validate({**data, "scale": scale})


def load_policy(path: str | Path, *, scale: float = 1.0) -> EscalationPolicy:
    """Load and validate `escalation.yaml` under an SLA `scale` (`Settings.sla_scale`)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    return parse_policy(data, scale=scale)
