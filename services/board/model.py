"""The board's read model: what the coordinator sees of every case and referral, folded from the facts on
CASES and REFERRALS (and the withheld referrals routing keeps per case).

Pure: `BoardModel.apply(subject, body)` takes one stored event, `withheld(case_id, record)` one
case-referrals record; nothing here does I/O. The model is rebuilt from the streams on every start
and is never written anywhere: the streams stay the one source of truth.

Need-to-know: only allowlisted fields are copied out of an event (ids, codes, agencies, times,
pseudonyms). A case event carries the whole case, identity and narrative included, and a request
carries the receiving agency's view of it; neither object is kept.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from contracts.events import (
    CaseEventData,
    EscalationData,
    OutcomeData,
    ReferralRequestedData,
    ReferralStatusData,
    RegionFlaggedData,
)
from contracts.records import CaseReferrals
from contracts.vocab import AgencyType, Priority, ReferralStatus, Service
from domain import regions

ANSWERS = frozenset({ReferralStatus.ACKNOWLEDGED, ReferralStatus.ACCEPTED, ReferralStatus.REJECTED,
                     ReferralStatus.REDIRECTED})
"""An agency's answers that show it has seen the referral (an answer implies acknowledgement)."""
DECISIONS = frozenset({ReferralStatus.ACCEPTED, ReferralStatus.REJECTED, ReferralStatus.REDIRECTED})
AGENCY_WORDS = frozenset({ReferralStatus.ACCEPTED, ReferralStatus.IN_PROGRESS, ReferralStatus.ON_HOLD,
                          ReferralStatus.COMPLETED, ReferralStatus.NOT_DELIVERED})
OUTCOMES = frozenset({ReferralStatus.COMPLETED, ReferralStatus.NOT_DELIVERED})
"""Statuses that are a structured outcome of the service (the closed loop), not a refusal or a timeout."""
DECLINES = frozenset({ReferralStatus.REJECTED, ReferralStatus.REDIRECTED})


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule behind a referral, with its legal basis."""

    rule_id: str
    description: str
    legal_basis: str
    override: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """One line of a case's timeline."""

    at: datetime
    kind: str
    """reported, updated, referred, withheld, rerouted, reminded, escalated, outcome, or a referral status."""
    agency: str | None = None
    referral_id: str | None = None
    service: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    """Codes only: rule ids and legal bases, reason codes, levels, the deadline missed."""

    def as_dict(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "kind": self.kind, "agency": self.agency,
                "referral_id": self.referral_id, "service": self.service, **self.detail}


@dataclass(slots=True)
class ReferralView:
    """One referral as the board knows it."""

    referral_id: str
    case_id: str
    agency: str
    agency_type: AgencyType
    service: Service
    priority: Priority
    due: datetime
    requested_at: datetime
    status: ReferralStatus = ReferralStatus.REQUESTED
    rules: list[Rule] = field(default_factory=list)
    statutory_clock: str | None = None
    sla_hours: float | None = None
    replaces: str | None = None
    rerouted_to: str | None = None
    entered: dict[ReferralStatus, datetime] = field(default_factory=dict)
    """When each status was first reached."""
    last_agency_word: datetime | None = None
    escalation_level: int = 0
    escalation_action: str | None = None
    escalation_overdue: str | None = None
    """The deadline that was missed (`ack`, `decision`, `update`, `statutory-<name>`)."""
    escalated_at: datetime | None = None
    reason: str | None = None
    """The reason code of a rejection, redirection, expiry or a failed delivery."""
    redirect_to: str | None = None
    request_seq: int | None = None
    """Where the request lies on REFERRALS: the inbox reads the agency's view of the case from it when the
    agency's officer opens the inbox (the view itself is never kept here)."""

    @property
    def open(self) -> bool:
        return not self.status.terminal

    @property
    def acknowledged_at(self) -> datetime | None:
        """When the agency first showed it had seen the referral (any answer implies it)."""
        times = [t for s, t in self.entered.items() if s in ANSWERS]
        return min(times) if times else None


@dataclass(slots=True)
class CaseView:
    """A case as the board may show it: codes and a pseudonym, never identity or narrative."""

    case_id: str
    reporter: str
    regency: str
    registered_at: datetime
    pseudonym: str
    age_group: str
    risk: str
    exploitation: list[str]
    needs: list[str]
    report_refs: list[str]
    possible_duplicates: list[str] = field(default_factory=list)
    version: int = 1
    recruitment_modus: str = "unknown"
    steps: list[Step] = field(default_factory=list)
    withheld: list[dict[str, Any]] = field(default_factory=list)
    referral_ids: list[str] = field(default_factory=list)


class BoardModel:
    """Every case and referral the streams hold, folded; `version` counts the changes applied."""

    def __init__(self) -> None:
        self.cases: dict[str, CaseView] = {}
        self.referrals: dict[str, ReferralView] = {}
        self.regions: Counter[str] = Counter()
        """Cases by regency, exploitation type and modus per month (`domain.regions.count`), each case once."""
        self.region_flags: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        """Intake's early warnings (`alur.region.flagged`): a regency's month that rose past its baseline."""
        self.version = 0
        self.skipped = 0
        """Events that did not read as their contract (counted, never fatal)."""

    # ---------------------------------------------------------------- folding

    def apply(self, subject: str, body: bytes, seq: int | None = None) -> bool:
        """Fold one stored event (by its subject; `seq`: its stream sequence); returns whether the model changed."""
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != "alur":
            return False
        try:
            event = json.loads(body)
            data, at = event["data"], datetime.fromisoformat(event["time"])
            if parts[1] == "region":
                changed = parts[2] == "flagged" and self._flagged(RegionFlaggedData.model_validate(data))
            elif parts[1] == "case":
                changed = self._case(parts[2], data, at)
            else:
                changed = self._referral(parts[2], data, at, seq)
        except (ValueError, KeyError, TypeError, ValidationError):
            self.skipped += 1
            return False
        if changed:
            self.version += 1
        return changed

    def withheld(self, case_id: str, body: bytes) -> bool:
        """Take the withheld referrals of routing's case record (bucket `case-referrals`)."""
        try:
            record = CaseReferrals.model_validate_json(body)
        except ValidationError:
            self.skipped += 1
            return False
        gaps = [{"agency_type": w.agency_type.value, "service": w.service.value, "reason": w.reason,
                 "rules": list(w.rule_ids)} for w in record.withheld]
        case = self.cases.get(case_id)
        if case is None:
            self.cases[case_id] = case = _placeholder(case_id)
        if case.withheld == gaps:
            return False
        case.withheld = gaps
        self.version += 1
        return True

    def _flagged(self, flag: RegionFlaggedData) -> bool:
        key = (flag.month, flag.regency.value, flag.dimension, flag.value)
        if key in self.region_flags:
            return False
        self.region_flags[key] = flag.model_dump(mode="json")
        return True

    def _case(self, verb: str, data: dict[str, Any], at: datetime) -> bool:
        if verb not in ("registered", "updated"):
            return False
        fact = CaseEventData.model_validate(data)
        case = fact.case
        known = self.cases.get(case.case_id)
        if known is not None and known.version >= case.version and known.reporter:
            return False
        view = CaseView(
            case_id=case.case_id, reporter=case.reporter, regency=case.regency.value,
            registered_at=case.registered_at, pseudonym=case.victim.pseudonym, age_group=case.age_group.value,
            risk=case.risk.value, exploitation=[e.value for e in case.exploitation],
            needs=[n.value for n in case.needs], report_refs=list(case.report_refs),
            possible_duplicates=list(case.possible_duplicates), version=case.version,
            recruitment_modus=case.recruitment_modus.value,
        )
        if known is not None:
            view.steps, view.withheld, view.referral_ids = known.steps, known.withheld, known.referral_ids
        if verb == "registered" and (known is None or not known.reporter):
            self.regions.update(regions.count(case))
        kind = "reported" if verb == "registered" else "updated"
        view.steps.append(Step(at, kind, agency=fact.reporter, detail={
            "report_ref": fact.report_ref, "changed": list(fact.changed), "risk": case.risk.value}))
        self.cases[case.case_id] = view
        return True

    def _referral(self, verb: str, data: dict[str, Any], at: datetime, seq: int | None = None) -> bool:
        if verb == "requested":
            return self._requested(ReferralRequestedData.model_validate(data), at, seq)
        if verb in ("reminded", "escalated"):
            return self._escalated(EscalationData.model_validate(data), at)
        if verb == "outcome":
            return self._outcome(OutcomeData.model_validate(data), at)
        if verb in {s.value for s in ReferralStatus}:
            return self._status(ReferralStatusData.model_validate(data), at)
        return False

    def _requested(self, req: ReferralRequestedData, at: datetime, seq: int | None = None) -> bool:
        if req.referral_id in self.referrals:
            return False
        view = ReferralView(
            referral_id=req.referral_id, case_id=req.case_id, agency=req.agency, agency_type=req.agency_type,
            service=req.service, priority=req.priority, due=req.due, requested_at=req.requested_at or at,
            rules=[Rule(r.rule_id, r.description, r.legal_basis, r.override) for r in req.reasons],
            statutory_clock=req.statutory_clock, sla_hours=req.sla_hours, replaces=req.replaces, request_seq=seq,
        )
        view.entered[ReferralStatus.REQUESTED] = view.requested_at
        self.referrals[req.referral_id] = view
        case = self._case_of(req.case_id)
        case.referral_ids.append(req.referral_id)
        detail: dict[str, Any] = {
            "priority": req.priority.value, "due": req.due.isoformat(),
            "rules": [{"rule_id": r.rule_id, "legal_basis": r.legal_basis} for r in req.reasons],
        }
        if req.replaces:
            detail["replaces"] = req.replaces
            previous = self.referrals.get(req.replaces)
            if previous is not None:
                previous.rerouted_to = req.referral_id
        case.steps.append(Step(at, "rerouted" if req.replaces else "referred", agency=req.agency,
                               referral_id=req.referral_id, service=req.service.value, detail=detail))
        return True

    def _status(self, fact: ReferralStatusData, at: datetime) -> bool:
        view = self.referrals.get(fact.referral_id)
        when = fact.at or at
        if view is None or (fact.status in view.entered and fact.status not in AGENCY_WORDS):
            return False
        if fact.status not in view.entered:
            view.entered[fact.status] = when
        if not view.status.terminal:
            view.status = fact.status
        if fact.status in AGENCY_WORDS:
            view.last_agency_word = when
        if fact.reason and fact.status in (*DECLINES, ReferralStatus.EXPIRED, ReferralStatus.NOT_DELIVERED,
                                           ReferralStatus.CANCELLED, ReferralStatus.COMPLETED):
            view.reason = fact.reason
        view.redirect_to = fact.redirect_to or view.redirect_to
        detail = {k: v for k, v in (("reason", fact.reason), ("redirect_to", fact.redirect_to)) if v}
        self._case_of(view.case_id).steps.append(Step(when, fact.status.value, agency=view.agency,
                                                      referral_id=view.referral_id, service=view.service.value,
                                                      detail=detail))
        return True

    def _escalated(self, fact: EscalationData, at: datetime) -> bool:
        view = self.referrals.get(fact.referral_id)
        if view is None:
            return False
        view.escalation_level = max(view.escalation_level, fact.level)
        view.escalation_action, view.escalation_overdue, view.escalated_at = fact.action, fact.overdue, at
        self._case_of(view.case_id).steps.append(Step(at, fact.status, agency=view.agency,
                                                      referral_id=view.referral_id, service=view.service.value,
                                                      detail={"level": fact.level, "action": fact.action,
                                                              "target": fact.target, "overdue": fact.overdue,
                                                              "due": fact.due.isoformat()}))
        return True

    def _outcome(self, fact: OutcomeData, at: datetime) -> bool:
        view = self.referrals.get(fact.referral_id)
        if view is None:
            return False
        detail: dict[str, Any] = {"status": fact.status.value, "all_referrals_terminal": fact.all_referrals_terminal}
        if fact.outcome is not None and fact.outcome.reason:
            detail["reason"] = fact.outcome.reason
        self._case_of(view.case_id).steps.append(Step(at, "outcome", agency=view.agency,
                                                      referral_id=view.referral_id, service=view.service.value,
                                                      detail=detail))
        return True

    def _case_of(self, case_id: str) -> CaseView:
        if case_id not in self.cases:
            self.cases[case_id] = _placeholder(case_id)
        return self.cases[case_id]

    # ---------------------------------------------------------------- reading

    def case_referrals(self, case_id: str) -> list[ReferralView]:
        case = self.cases.get(case_id)
        return [self.referrals[r] for r in case.referral_ids if r in self.referrals] if case else []

    def duplicates(self) -> list[list[str]]:
        """Groups of cases intake flagged as possibly the same victim, for the coordinator's review."""
        groups = {tuple(sorted({c.case_id, *c.possible_duplicates})) for c in self.cases.values()
                  if c.possible_duplicates}
        return [list(g) for g in sorted(groups)]


def _placeholder(case_id: str) -> CaseView:
    """A case heard of (a referral, a record) before its own event arrived: filled in when it does."""
    return CaseView(case_id=case_id, reporter="", regency="", registered_at=datetime.min.replace(tzinfo=UTC),
                    pseudonym="", age_group="", risk="", exploitation=[], needs=[], report_refs=[], version=0)
