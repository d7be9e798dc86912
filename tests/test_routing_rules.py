"""The rule pack: validation with every problem named, pack tests, hot reload, explain and the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from alur.cli_rules import rules_app
from runtime.profile import profile_dir
from runtime.settings import Settings, SettingsError
from services.routing.explain import explain, explain_json
from services.routing.index import guard_of
from services.routing.pack_tests import (
    CaseDataError,
    build_case,
    load_pack_tests,
    parse_pack_tests,
    run_pack_tests,
)
from services.routing.reload import RuleBook
from services.routing.rules import RulePackError, load_pack, pack_from_text, parse_pack
from tests.routing_cases import (
    REFERENCE_DATA,
    REFERENCE_EVENT,
    SECRET_NAME,
    SECRET_NIK,
    decision_for,
    pack,
    registry,
    views,
)

RULES_FILE = profile_dir() / "rules.yaml"


def raw_pack() -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text())


def problems_of(data: Any) -> list[str]:
    with pytest.raises(RulePackError) as caught:
        parse_pack(data)
    return caught.value.problems


def test_the_kalsel_pack_loads() -> None:
    loaded = load_pack(profile_dir())
    assert loaded.version == "kalsel-2026.1"
    assert len(loaded.rules) == len(loaded.compiled)


def test_every_problem_is_listed_naming_its_rule() -> None:
    data = raw_pack()
    data["rules"][0]["colour"] = "red"
    data["rules"][1]["when"] = "female &&"
    data["rules"][2]["refer"][0]["agency_type"] = "fire_brigade"
    data["rules"][3]["refer"][0]["service"] = "massage"
    data["rules"][4]["id"] = data["rules"][5]["id"]
    data["rules"][6]["when"] = "shoe_size > 40"
    data["rules"][7]["when"] = "age"
    data["rules"][8]["mandatory"] = True
    problems = problems_of(data)
    joined = "\n".join(problems)
    assert "rule uptd-ppa-child: unknown field `colour`" in joined
    assert "rule uptd-ppa-female: `when` does not compile" in joined
    assert "rule police-investigation: `refer.0.agency_type`: unknown code 'fire_brigade'" in joined
    assert "rule police-child: `refer.0.service`: unknown code 'massage'" in joined
    assert f"rule {data['rules'][5]['id']}: duplicate id" in joined
    assert "rule health-medical: `when` uses unknown facts: shoe_size" in joined
    assert "rule health-first-aid: `when` must be a boolean, got int" in joined
    assert "rule health-psychological: " in joined and "mandatory_basis" in joined
    assert len(problems) == 8


def test_type_errors_in_conditions_are_caught_at_load() -> None:
    data = raw_pack()
    data["rules"][0]["when"] = 'age > "ten"'
    assert any("rule uptd-ppa-child: `when` fails on sample facts" in p for p in problems_of(data))


def test_pack_level_problems() -> None:
    assert problems_of({"rules": []})[0].startswith("pack:")
    assert problems_of([1, 2])
    with pytest.raises(RulePackError, match="not valid YAML"):
        pack_from_text("version: [")
    data = raw_pack()
    data["acknowledgement_hours"] = {"high": 1}
    assert any("acknowledgement_hours lacks medium, low" in p for p in problems_of(data))


def test_statutory_clock_needs_hours_and_fallback_must_differ() -> None:
    data = raw_pack()
    data["rules"][0]["refer"][0]["statutory_clock"] = "uu21_art52"
    data["rules"][1]["refer"][0]["fallback_agency_type"] = "uptd_ppa"
    problems = problems_of(data)
    assert any(p.startswith("rule uptd-ppa-child:") and "needs sla_hours" in p for p in problems)
    assert any(p.startswith("rule uptd-ppa-female:") and "must differ" in p for p in problems)


# ---------------------------------------------------------------- a condition's cost is bounded at load (issue 17)


LOOP_NAMES = ["age", "sex", "risk", "male", "child", "adult", "female", "abroad", "country", "channel"]
"""Fact names reused as the macros' loop variables (CEL lists those as the condition's variables)."""


def nested_exists(levels: int, elements: int = 10) -> str:
    """`levels` comprehension macros one inside another, each over a literal list of `elements`: false."""
    items = "[" + ",".join("1" for _ in range(elements)) + "]"
    expression = "age < 0"
    for level in range(levels):
        expression = f"{items}.exists({LOOP_NAMES[level]}, {expression})"
    return expression


def test_a_pathological_nested_exists_is_refused_at_load_naming_the_rule() -> None:
    """Ten levels of ten elements (issue 17: about 350 characters that would run for hours)."""
    expression = nested_exists(10)
    assert len(expression) < 400
    data = raw_pack()
    data["rules"][4]["when"] = expression
    assert problems_of(data) == [
        "rule tpks-report-to-police: `when` nests comprehension macros (all, exists, existsOne, exists_one, filter, "
        "map) 10 deep, more than 2: each level multiplies the cost by the length of a list"
    ]


@pytest.mark.parametrize(
    ("expression", "problem"),
    [
        (nested_exists(3), "nests comprehension macros (all, exists, existsOne, exists_one, filter, map) 3 deep, more than 2"),
        ("size([1].map(sex, size([2].filter(risk, [3].all(age, age > 0))))) > 0", "nests comprehension macros"),
        ('"x" in needs || ' * 30 + "child", "characters long, more than 400: split it into simpler rules"),
        ("(" * 11 + "child" + ")" * 11, "nests brackets 11 deep, more than 10"),
    ],
    ids=["three exists", "map filter all", "too long", "brackets"],
)
def test_conditions_beyond_the_bounds_are_refused(expression: str, problem: str) -> None:
    data = raw_pack()
    data["rules"][0]["when"] = expression
    [found] = problems_of(data)
    assert found.startswith("rule uptd-ppa-child: `when` ") and problem in found


@pytest.mark.parametrize(
    "expression",
    [nested_exists(2), 'needs.exists(sex, sex == "medical") && indicators.all(risk, risk != "FL01")',
     '[1].map(age, age).exists(age, age > 1) && "exists(exists(exists(" != channel', "(" * 10 + "child" + ")" * 10],
    ids=["two levels", "side by side", "chained, and macros in a string", "ten brackets"],
)
def test_conditions_within_the_bounds_load(expression: str) -> None:
    data = raw_pack()
    data["rules"][0]["when"] = expression
    data["version"] = "bounds"
    parse_pack(data)


SLOW = nested_exists(2, elements=90)
assert len(SLOW) <= 400
"""The slowest condition the bounds allow: about 8,000 steps, a few milliseconds a run."""


def slow_pack(version: str, count: int) -> dict[str, Any]:
    data = raw_pack()
    data["version"] = version
    data["rules"] += [
        {"id": f"slow-{i}", "description": "Slow but within the bounds.", "legal_basis": "test", "when": SLOW,
         "refer": [{"agency_type": "police", "service": "investigation"}]}
        for i in range(count)
    ]
    return data


def test_a_pack_whose_vetting_outlasts_the_timeout_is_refused_and_the_old_one_kept() -> None:
    assert problems_of_or_none(slow_pack("slow", 1)) is None  # each rule is within the bounds
    rules = RuleBook(pack(), tests=load_pack_tests(profile_dir()), registry=registry(), views=views(),
                     validation_timeout=0.5)
    started = time.monotonic()
    ok, errors = rules.try_swap(slow_pack("kalsel-2026.2-slow", 60))  # about 60 x 40 runs: seconds
    assert (ok, errors) == (False, ["validation took longer than 0.5 s: the pack is refused"])
    assert rules.version == "kalsel-2026.1" and rules.pack is pack()
    assert time.monotonic() - started < 30  # the worker was stopped, not waited for


def test_the_vetting_timeout_comes_from_the_environment() -> None:
    assert Settings.from_env({}).rules_validation_timeout == 30.0
    assert Settings.from_env({"ALUR_RULES_VALIDATION_TIMEOUT": "2.5"}).rules_validation_timeout == 2.5
    with pytest.raises(SettingsError, match="ALUR_RULES_VALIDATION_TIMEOUT"):
        Settings.from_env({"ALUR_RULES_VALIDATION_TIMEOUT": "0"})


def problems_of_or_none(data: Any) -> list[str] | None:
    try:
        parse_pack(data)
    except RulePackError as exc:
        return exc.problems
    return None


# ---------------------------------------------------------------- the index is sound


@pytest.mark.parametrize(
    ("expression", "guard"),
    [
        ('"medical" in needs', {("needs", "medical")}),
        ('"medical" in needs || injured', {("needs", "medical"), ("injured", True)}),
        ('adult && male && !has_case_manager', {("adult", True)}),
        ('child && "education" in needs', {("needs", "education")}),
        ('("a" in needs || "b" in exploitation) && abroad', {("needs", "a"), ("exploitation", "b")}),
        ("!child", None),
        ('child ? true : "x" in needs', None),
        ('child || age > 3', None),
        ("true", None),
    ],
)
def test_guards(expression: str, guard: set | None) -> None:
    found = guard_of(expression)
    assert (set(found) if found is not None else None) == guard


# ---------------------------------------------------------------- pack tests


def test_kalsel_pack_tests_pass_and_cover_every_rule() -> None:
    report = run_pack_tests(pack(), load_pack_tests(profile_dir()), registry(), views())
    assert report.ok, report.summary()
    assert report.uncovered_rules == []
    assert len(report.passed) >= 30


def test_a_failing_expectation_is_reported_with_its_difference() -> None:
    tests = parse_pack_tests({
        "base": {k: v for k, v in REFERENCE_DATA.items() if k != "report_ref"},
        "tests": [
            {"name": "wrong", "case": {},
             "expect": [{"agency_type": "labour", "service": "labour_inspection"},
                        {"agency_type": "uptd_ppa", "service": "case_management", "priority": "low"}],
             "withheld": [{"agency_type": "police", "service": "investigation"}],
             "must_not": [{"agency_type": "health"}]},
        ],
    })
    report = run_pack_tests(pack(), tests, registry(), views())
    assert not report.ok
    problems = report.failed[0].problems
    assert "expected referral labour/labour_inspection: not made" in problems
    assert "uptd_ppa/case_management: priority expected low, got high" in problems
    assert "expected withheld police/investigation: not withheld" in problems
    assert any(p.startswith("must not refer health/*") for p in problems)
    assert "education-child-need" in report.uncovered_rules


def test_a_test_case_that_does_not_build_fails_without_echoing_identity() -> None:
    bad = {**REFERENCE_DATA, "victim": {**REFERENCE_DATA["victim"], "identity": {"nik": "12345"}}}
    report = run_pack_tests(pack(), parse_pack_tests({"tests": [{"name": "bad", "case": bad}]}), registry(), views())
    assert report.failed and "victim.identity.nik" in report.failed[0].problems[0]
    assert "12345" not in " ".join(report.summary())


def test_build_case_errors_name_fields_not_values() -> None:
    with pytest.raises(CaseDataError) as caught:
        build_case({**REFERENCE_DATA, "victim": {**REFERENCE_DATA["victim"], "age": 300}})
    assert "victim.age" in str(caught.value)
    assert SECRET_NAME not in str(caught.value)


# ---------------------------------------------------------------- hot reload


def book() -> RuleBook:
    return RuleBook(pack(), tests=load_pack_tests(profile_dir()), registry=registry(), views=views())


def test_a_bad_pack_is_refused_and_the_old_one_kept() -> None:
    rules = book()
    data = raw_pack()
    data["version"] = "kalsel-2026.2"
    data["rules"][3]["when"] = "chld"
    ok, errors = rules.try_swap(yaml.safe_dump(data))
    assert not ok
    assert errors == ["rule police-child: `when` uses unknown facts: chld"]
    assert rules.version == "kalsel-2026.1" and rules.pack is pack()


def test_a_pack_failing_its_tests_is_refused() -> None:
    rules = book()
    data = raw_pack()
    data["version"] = "kalsel-2026.2"
    data["rules"] = [r for r in data["rules"] if r["id"] != "police-child"]
    ok, errors = rules.try_swap(data)
    assert not ok
    assert any("police/investigation" in e for e in errors)
    assert rules.version == "kalsel-2026.1"


def test_a_good_pack_is_swapped_in(tmp_path: Path) -> None:
    rules = book()
    data = raw_pack()
    data["version"] = "kalsel-2026.2"
    data["rules"][0]["description"] = "A child victim always goes to UPTD PPA."
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "rules_tests.yaml").write_text((profile_dir() / "rules_tests.yaml").read_text())
    assert rules.try_swap(tmp_path / "rules.yaml") == (True, [])
    assert rules.version == "kalsel-2026.2"
    assert rules.active == (rules.pack, "kalsel-2026.2")


def test_same_version_with_other_rules_is_refused_and_same_pack_is_a_no_op() -> None:
    rules = book()
    assert rules.try_swap(RULES_FILE) == (True, [])
    data = raw_pack()
    data["rules"][0]["description"] = "changed"
    ok, errors = rules.try_swap(data)
    assert not ok and "bump `version`" in errors[0]


# ---------------------------------------------------------------- explain


def test_explain_names_rules_law_gaps_and_non_firing_without_identity() -> None:
    decision = decision_for({**REFERENCE_DATA, "consent": {"share_with": ["uptd_ppa", "police"], "recorded_by": "x"}})
    text = explain(decision)
    assert "uptd_ppa / case_management → uptd-ppa-banjarmasin (regency agency)" in text
    assert "legal basis: UU 35/2014" in text
    assert "Withheld for want of consent" in text and "consent does not cover health" in text
    assert "lpsk-protection: condition false: needs has none of protection" in text
    assert SECRET_NIK not in text and SECRET_NAME not in text
    data = explain_json(decision)
    assert "victim.identity.nik" in data["referrals"][0]["view_fields"]
    assert SECRET_NIK not in json.dumps(data)
    assert "lpsk-protection" in data["not_fired"]


# ---------------------------------------------------------------- CLI


def test_cli_check_test_and_explain(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(rules_app, ["check"]).exit_code == 0
    result = runner.invoke(rules_app, ["test"])
    assert result.exit_code == 0, result.output
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps(REFERENCE_EVENT))
    result = runner.invoke(rules_app, ["explain", str(case_file)])
    assert result.exit_code == 0 and "migrant_worker_protection" in result.output
    result = runner.invoke(rules_app, ["explain", str(case_file), "--json"])
    assert json.loads(result.output)["ruleset_version"] == "kalsel-2026.1"


def test_cli_check_lists_errors_and_fails(tmp_path: Path) -> None:
    data = raw_pack()
    data["rules"][0]["when"] = "nope"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "views.yaml").write_text((profile_dir() / "views.yaml").read_text())
    (tmp_path / "rules_tests.yaml").write_text((profile_dir() / "rules_tests.yaml").read_text())
    result = CliRunner().invoke(rules_app, ["check", "--pack", str(tmp_path)])
    assert result.exit_code == 1
    assert "rule uptd-ppa-child: `when` uses unknown facts: nope" in result.output


def test_from_dir_and_reload_if_changed(tmp_path: Path) -> None:
    for name in ("rules.yaml", "rules_tests.yaml", "views.yaml", "agencies.yaml"):
        (tmp_path / name).write_text((profile_dir() / name).read_text())
    rules = RuleBook.from_dir(tmp_path)
    assert rules.reload_if_changed() is None
    data = raw_pack()
    data["version"] = "kalsel-2026.3"
    data["rules"][0]["when"] = "chld"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data))
    ok, errors = rules.reload_if_changed() or (None, None)
    assert ok is False and errors and "chld" in errors[0]
    assert rules.reload_if_changed() is None
    data["rules"][0]["when"] = "child"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data))
    assert rules.reload_if_changed() == (True, [])
    assert rules.version == "kalsel-2026.3"


def test_from_dir_refuses_a_pack_failing_its_tests(tmp_path: Path) -> None:
    for name in ("rules_tests.yaml", "views.yaml", "agencies.yaml"):
        (tmp_path / name).write_text((profile_dir() / name).read_text())
    data = raw_pack()
    data["rules"] = [r for r in data["rules"] if r["id"] != "legal-aid"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(RulePackError, match="legal_aid/legal_aid"):
        RuleBook.from_dir(tmp_path)


def test_decision_record_has_no_views() -> None:
    record = decision_for(REFERENCE_DATA).record(case_version=1, trigger="test").model_dump(mode="json")
    assert SECRET_NIK not in json.dumps(record)
    assert record["referrals"] and "case" not in record["referrals"][0]
