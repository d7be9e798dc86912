"""Test cases kept as data beside the rules (`rules_tests.yaml`), run at `alur rules test` and at reload.

A test gives a report-like case and what must come out: referrals (agency type + service, optionally
priority and override), referrals withheld for want of consent, and referrals that must not be made.
The report also lists the rules no test fires.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.events import Case
from contracts.vocab import AgencyType, Priority, Service
from domain.cases import new_case
from domain.registry import AgencyRegistry
from domain.validation import Rejection, parse_report_data
from services.routing.decide import decide
from services.routing.plan import Decision
from services.routing.rules import RulePack
from services.routing.views import ViewCatalog

TEST_TIME = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
EXPLAIN_CASE_KEY = b"alur rules test/explain: not intake's key"
"""The case-id key of the cases built here: intake's key is secret, so these ids are never a real case's."""


class CaseDataError(ValueError):
    """Report data that does not make a case; `problems` name fields, never their values."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("case data: " + "; ".join(problems))


def build_case(data: Mapping[str, Any], *, reporter: str = "unknown-reporter", at: datetime | None = None) -> Case:
    """The `Case` intake would make of a report's `data` (or of a whole report CloudEvent, whose `source`
    is the reporter): the same validation and screening, so a test or an explanation sees what routing
    will see. `case_id` comes from `data["case_id"]` if given, else it is derived as intake derives it,
    under `EXPLAIN_CASE_KEY`. Dates are checked against `at` (the event's time), else against now.
    """
    if "specversion" in data and isinstance(data.get("data"), Mapping):
        reporter = str(data.get("source") or reporter)
        at = at or _parse_time(data.get("time"))
        data = data["data"]
    body = dict(data)
    case_id = body.pop("case_id", None)
    parsed = parse_report_data(body, reporter=reporter, known_agencies={reporter}, now=at)
    if isinstance(parsed, Rejection):
        raise CaseDataError(parsed.reasons)
    case = new_case(parsed, at or TEST_TIME, key=EXPLAIN_CASE_KEY)
    return case.model_copy(update={"case_id": case_id}) if case_id else case


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExpectedReferral(Strict):
    """A referral that must be made (or withheld): type and service, optionally priority and override."""

    agency_type: AgencyType
    service: Service
    priority: Priority | None = None
    override: bool | None = None

    def label(self) -> str:
        return f"{self.agency_type.value}/{self.service.value}"


class ForbiddenReferral(Strict):
    """A referral that must not be made: an agency type, and a service if only that one is forbidden."""

    agency_type: AgencyType
    service: Service | None = None

    def label(self) -> str:
        return f"{self.agency_type.value}/{self.service.value if self.service else '*'}"


class PackTest(Strict):
    """One test: a case in, expectations out."""

    name: str = Field(min_length=1)
    case: dict[str, Any]
    expect: list[ExpectedReferral] = Field(default_factory=list)
    withheld: list[ExpectedReferral] = Field(default_factory=list)
    must_not: list[ForbiddenReferral] = Field(default_factory=list)
    only: bool = False


class TestFailure(BaseModel):
    """A failed test and every difference found."""

    __test__ = False

    name: str
    problems: list[str]


class TestReport(BaseModel):
    """The outcome of a pack's tests and which rules no test fires."""

    __test__ = False

    passed: list[str] = Field(default_factory=list)
    failed: list[TestFailure] = Field(default_factory=list)
    uncovered_rules: list[str] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> list[str]:
        """The failures as lines, for a reload error or a CLI message."""
        return [f"test {f.name!r}: {p}" for f in self.failed for p in f.problems]


def _merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_pack_tests(data: object) -> list[PackTest]:
    """Tests from parsed YAML: `{base: <report data>, tests: [...]}`; each test's case is merged over
    `base` (mappings deep-merged, lists replaced) and gets `report_ref` TEST-<n> unless it sets one."""
    if not isinstance(data, Mapping) or not isinstance(data.get("tests"), list):
        raise ValueError("a tests file is a mapping with `tests` (a list) and optionally `base`")
    base = data.get("base") or {}
    tests: list[PackTest] = []
    problems: list[str] = []
    for position, raw in enumerate(data["tests"], start=1):
        if not isinstance(raw, Mapping):
            problems.append(f"test #{position}: not a mapping")
            continue
        case = _merge({"report_ref": f"TEST-{position:03d}", **base}, raw.get("case") or {})
        try:
            tests.append(PackTest.model_validate({**raw, "case": case}))
        except ValidationError as exc:
            name = raw.get("name", f"#{position}")
            problems.extend(f"test {name}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    if problems:
        raise ValueError("; ".join(problems))
    return tests


def load_pack_tests(path: Path | str) -> list[PackTest]:
    """Tests from a YAML file (`rules_tests.yaml`, or a profile directory holding one)."""
    source = Path(path)
    if source.is_dir():
        source = source / "rules_tests.yaml"
    return parse_pack_tests(yaml.safe_load(source.read_text(encoding="utf-8")))


def check_decision(test: PackTest, decision: Decision) -> list[str]:
    """Every difference between what the test expects and what the decision says."""
    problems: list[str] = []
    made = {(r.agency_type, r.service): r for r in decision.referrals}
    held = {(w.agency_type, w.service): w for w in decision.withheld}
    for expected in test.expect:
        referral = made.get((expected.agency_type, expected.service))
        if referral is None:
            where = "withheld" if (expected.agency_type, expected.service) in held else "not made"
            problems.append(f"expected referral {expected.label()}: {where}")
            continue
        if expected.priority and referral.priority is not expected.priority:
            problems.append(
                f"{expected.label()}: priority expected {expected.priority.value}, got {referral.priority.value}"
            )
        if expected.override is not None and referral.overridden is not expected.override:
            problems.append(f"{expected.label()}: override expected {expected.override}, got {referral.overridden}")
    for expected in test.withheld:
        if (expected.agency_type, expected.service) not in held:
            problems.append(f"expected withheld {expected.label()}: not withheld")
    for forbidden in test.must_not:
        for agency_type, service in made:
            if agency_type is forbidden.agency_type and forbidden.service in (None, service):
                problems.append(f"must not refer {forbidden.label()}: referred {agency_type.value}/{service.value}")
    if test.only:
        wanted = {(e.agency_type, e.service) for e in test.expect}
        extra = sorted(f"{t.value}/{s.value}" for t, s in made if (t, s) not in wanted)
        if extra:
            problems.append(f"unexpected referrals: {', '.join(extra)}")
    for trace in decision.errors:
        problems.append(f"rule {trace.rule_id} failed at run time: {trace.error}")
    return problems


def run_pack_tests(
    pack: RulePack, tests: Sequence[PackTest], registry: AgencyRegistry, views: ViewCatalog
) -> TestReport:
    """Run every test against the pack; collect failures with their differences and rule coverage."""
    report = TestReport()
    covered: set[str] = set()
    for test in tests:
        try:
            case = build_case(test.case, reporter="rules-test")
        except CaseDataError as exc:
            report.failed.append(TestFailure(name=test.name, problems=[f"case does not build: {p}" for p in exc.problems]))
            continue
        decision = decide(case, pack, registry, views, now=TEST_TIME)
        covered.update(decision.fired)
        problems = check_decision(test, decision)
        if problems:
            report.failed.append(TestFailure(name=test.name, problems=problems))
        else:
            report.passed.append(test.name)
    report.uncovered_rules = [rule.id for rule in pack.rules if rule.id not in covered]
    return report
