"""The rule pack: referral rules as data, validated whole at load.

A pack is refused with one `RulePackError` listing every problem, each naming the rule: unknown fields,
conditions that do not compile, use unknown facts or break the cost bounds of `limits`, unknown agency
types or services, duplicate ids.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    model_validator,
)

from contracts.events import RuleReason
from contracts.vocab import AgencyType, Priority, Risk, Service
from services.routing.conditions import (
    CEL,
    CompiledRule,
    CompiledRules,
    ConditionEngine,
    compile_condition,
)

RuleId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
ClockName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,64}$")]
PriorityChoice = Literal["high", "medium", "low", "from_risk"]

DEFAULT_ACKNOWLEDGEMENT_HOURS: dict[Priority, float] = {Priority.HIGH: 1.0, Priority.MEDIUM: 6.0, Priority.LOW: 24.0}
RISK_PRIORITY: dict[Risk, Priority] = {Risk.HIGH: Priority.HIGH, Risk.MEDIUM: Priority.MEDIUM, Risk.LOW: Priority.LOW}
_FIXED_PRIORITY: dict[str, Priority] = {p.value: p for p in Priority}


class RulePackError(Exception):
    """A rule pack that cannot be used; `problems` lists every one, each naming its rule."""

    def __init__(self, problems: list[str], source: str = "rule pack") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReferralTarget(Strict):
    """What a fired rule asks for: an agency type, a service, a priority and any statutory clock."""

    agency_type: AgencyType
    service: Service
    priority: PriorityChoice = "from_risk"
    sla_hours: PositiveFloat | None = None
    statutory_clock: ClockName | None = None
    fallback_agency_type: AgencyType | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ReferralTarget:
        if self.statutory_clock and self.sla_hours is None:
            raise ValueError(f"statutory_clock {self.statutory_clock} needs sla_hours")
        if self.fallback_agency_type is self.agency_type:
            raise ValueError("fallback_agency_type must differ from agency_type")
        if self.fallback_agency_type is AgencyType.GT_SECRETARIAT:
            raise ValueError("the secretariat is always the last resort: do not name it as fallback_agency_type")
        return self


class Rule(Strict):
    """One referral rule: when its condition holds, the case is referred to every target."""

    id: RuleId
    description: Text
    legal_basis: Text
    when: Text
    refer: list[ReferralTarget] = Field(min_length=1)
    mandatory: bool = False
    mandatory_basis: Text | None = None

    @model_validator(mode="after")
    def _mandate_has_basis(self) -> Rule:
        if self.mandatory and not self.mandatory_basis:
            raise ValueError("mandatory: true needs mandatory_basis (the law that overrides consent)")
        if self.mandatory_basis and not self.mandatory:
            raise ValueError("mandatory_basis without mandatory: true")
        return self


@dataclass(frozen=True, slots=True)
class Contribution:
    """One target of one rule, flattened at load for `decide`: the referral it adds to (`key`), the terms
    it sets there, and the rule's reason (`override_reason` states the law that overrides consent; only
    mandatory rules have one)."""

    key: tuple[AgencyType, Service]
    rule_id: str
    mandatory: bool
    priority: Priority | None
    """The fixed priority, or None for the case's risk (`RISK_PRIORITY`)."""
    sla_hours: float | None
    statutory_clock: str | None
    fallback: AgencyType | None
    reason: RuleReason
    override_reason: RuleReason | None


class _PackHead(Strict):
    version: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.+-]{1,64}$")]
    description: str = ""
    acknowledgement_hours: dict[Priority, PositiveFloat] = Field(
        default_factory=lambda: dict(DEFAULT_ACKNOWLEDGEMENT_HOURS)
    )
    rules: list[Any] = Field(min_length=1)

    @model_validator(mode="after")
    def _every_priority(self) -> _PackHead:
        missing = [p.value for p in Priority if p not in self.acknowledgement_hours]
        if missing:
            raise ValueError(f"acknowledgement_hours lacks {', '.join(missing)}")
        return self


class RulePack(Strict):
    """A validated pack with its conditions compiled; build it with `load_pack` or `parse_pack`."""

    version: str
    description: str = ""
    acknowledgement_hours: dict[Priority, float]
    rules: list[Rule]
    digest: str
    _compiled: CompiledRules = PrivateAttr(default_factory=lambda: CompiledRules.of(()))
    _by_id: dict[str, Rule] = PrivateAttr(default_factory=dict)
    _reasons: dict[tuple[str, bool], RuleReason] = PrivateAttr(default_factory=dict)
    _contributions: tuple[tuple[Contribution, ...], ...] = PrivateAttr(default=())
    _receivers: dict[Service, frozenset[AgencyType]] = PrivateAttr(default_factory=dict)

    @property
    def compiled(self) -> CompiledRules:
        """The rules' conditions, in pack order and indexed, ready for `conditions.evaluate`."""
        return self._compiled

    def rule(self, rule_id: str) -> Rule:
        return self._by_id[rule_id]

    @property
    def reasons(self) -> dict[tuple[str, bool], RuleReason]:
        """(rule id, override) → the rule as the reason of a referral (shared; do not mutate). An
        override reason states the law that overrides consent; only mandatory rules have one."""
        return self._reasons

    @property
    def contributions(self) -> tuple[tuple[Contribution, ...], ...]:
        """Per rule, in pack order (the positions of `compiled`), its targets as `Contribution`s."""
        return self._contributions

    def acknowledgement_due(self, priority: Priority, now: datetime, sla_scale: float = 1.0) -> datetime:
        """When the agency must acknowledge: now + the pack's hours for the priority, times the SLA scale."""
        return now + timedelta(hours=self.acknowledgement_hours[priority] * sla_scale)

    def fallback_for(self, agency_type: AgencyType, service: Service) -> AgencyType | None:
        """The fallback agency type some rule declares for this agency type and service, if any."""
        for rule in self.rules:
            for target in rule.refer:
                if target.agency_type is agency_type and target.service is service and target.fallback_agency_type:
                    return target.fallback_agency_type
        return None

    def receivers_of(self, service: Service) -> frozenset[AgencyType]:
        """Every agency type some rule of the pack refers `service` to, as its target or its fallback:
        the types the rules could have chosen for that service (a reroute goes nowhere else)."""
        return self._receivers.get(service, frozenset())


def _receivers(rules: list[Rule]) -> dict[Service, frozenset[AgencyType]]:
    found: dict[Service, set[AgencyType]] = {}
    for rule in rules:
        for target in rule.refer:
            types = found.setdefault(target.service, set())
            types.add(target.agency_type)
            if target.fallback_agency_type is not None:
                types.add(target.fallback_agency_type)
    return {service: frozenset(types) for service, types in found.items()}


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "rule"


def _problems_of(error: ValidationError, prefix: str) -> list[str]:
    problems = []
    for item in error.errors():
        where = _field(item["loc"])
        if item["type"] == "extra_forbidden":
            problems.append(f"{prefix}: unknown field `{where}`")
        elif item["type"] == "enum":
            problems.append(f"{prefix}: `{where}`: unknown code {item['input']!r}")
        elif item["type"] == "missing":
            problems.append(f"{prefix}: `{where}` is required")
        else:
            problems.append(f"{prefix}: `{where}`: {item['msg']}")
    return problems


def _reason(rule: Rule, override: bool) -> RuleReason:
    basis = f"{rule.legal_basis}; consent overridden: {rule.mandatory_basis}" if override else rule.legal_basis
    return RuleReason(rule_id=rule.id, description=rule.description, legal_basis=basis, override=override)


def _contribution(rule: Rule, target: ReferralTarget, reasons: Mapping[tuple[str, bool], RuleReason]) -> Contribution:
    return Contribution(
        key=(target.agency_type, target.service),
        rule_id=rule.id,
        mandatory=rule.mandatory,
        priority=None if target.priority == "from_risk" else _FIXED_PRIORITY[target.priority],
        sla_hours=target.sla_hours,
        statutory_clock=target.statutory_clock,
        fallback=target.fallback_agency_type,
        reason=reasons[(rule.id, False)],
        override_reason=reasons.get((rule.id, True)),
    )


def parse_pack(
    data: object, source: str = "rule pack", engine: ConditionEngine = CEL, *, run_samples: bool = True
) -> RulePack:
    """Validate parsed YAML data as a rule pack and compile every condition; raise with all problems.

    `run_samples=False` skips running the conditions on sample facts (see `compile_condition`)."""
    if not isinstance(data, Mapping):
        raise RulePackError(["the pack must be a mapping with `version` and `rules`"], source)
    problems: list[str] = []
    try:
        head = _PackHead.model_validate(data)
    except ValidationError as exc:
        raise RulePackError(_problems_of(exc, "pack"), source) from None
    rules: list[Rule] = []
    compiled: list[CompiledRule] = []
    seen: set[str] = set()
    for position, raw in enumerate(head.rules, start=1):
        rule_id = raw.get("id") if isinstance(raw, Mapping) and isinstance(raw.get("id"), str) else f"#{position}"
        prefix = f"rule {rule_id}"
        if rule_id in seen:
            problems.append(f"{prefix}: duplicate id (rule #{position})")
        seen.add(rule_id)
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            problems.extend(_problems_of(exc, prefix))
            if isinstance(raw, Mapping) and isinstance(raw.get("when"), str):
                problems.extend(compile_condition(rule_id, raw["when"], engine, run_samples=run_samples)[1])
            continue
        condition, condition_problems = compile_condition(rule.id, rule.when, engine, run_samples=run_samples)
        problems.extend(condition_problems)
        if condition is not None:
            rules.append(rule)
            compiled.append(condition)
    if problems:
        raise RulePackError(problems, source)
    canonical = json.dumps(
        {"version": head.version, "ack": {k.value: v for k, v in head.acknowledgement_hours.items()},
         "rules": [r.model_dump(mode="json") for r in rules]},
        sort_keys=True,
        separators=(",", ":"),
    )
    pack = RulePack(
        version=head.version,
        description=head.description,
        acknowledgement_hours=dict(head.acknowledgement_hours),
        rules=rules,
        digest=hashlib.sha256(canonical.encode()).hexdigest(),
    )
    pack._compiled = CompiledRules.of(compiled)
    pack._by_id = {r.id: r for r in rules}
    pack._reasons = {(r.id, override): _reason(r, override) for r in rules for override in {False, r.mandatory}}
    pack._contributions = tuple(tuple(_contribution(r, t, pack._reasons) for t in r.refer) for r in rules)
    pack._receivers = _receivers(rules)
    return pack


def pack_from_text(text: str | bytes, source: str = "rule pack", *, run_samples: bool = True) -> RulePack:
    """A pack from YAML text."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RulePackError([f"not valid YAML: {exc}"], source) from None
    return parse_pack(data, source, run_samples=run_samples)


def load_pack(path: Path | str) -> RulePack:
    """A pack from a YAML file (`rules.yaml`, or a profile directory holding one)."""
    source = Path(path)
    if source.is_dir():
        source = source / "rules.yaml"
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulePackError([f"cannot read: {exc.strerror}"], str(source)) from None
    return pack_from_text(text, str(source))
