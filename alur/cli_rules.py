"""`alur rules check|test|explain`: the rule pack from the command line, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from domain.registry import AgencyRegistry
from runtime.profile import load_registry_file, profile_dir
from services.routing.decide import decide
from services.routing.explain import explain, explain_json
from services.routing.pack_tests import (
    CaseDataError,
    PackTest,
    build_case,
    load_pack_tests,
    run_pack_tests,
)
from services.routing.rules import RulePack, RulePackError, load_pack
from services.routing.views import ViewCatalog, ViewCatalogError, load_views

rules_app = typer.Typer(
    help="Validate the rule pack, run its test cases, and explain the referrals of a case.",
    no_args_is_help=True,
)
console = Console()
errors = Console(stderr=True)

PackOption = Annotated[
    Path | None,
    typer.Option("--pack", help="rules.yaml, or the profile directory holding it (default: the profile's)."),
]


def _profile(pack: Path | None) -> tuple[Path, Path]:
    """(rules file, directory holding views.yaml and rules_tests.yaml)."""
    path = pack or profile_dir()
    return (path / "rules.yaml", path) if path.is_dir() else (path, path.parent)


def _fail(title: str, problems: list[str]) -> typer.Exit:
    errors.print(f"[bold red]{title}[/]")
    for problem in problems:
        errors.print(f"  - {problem}", markup=False, highlight=False)
    return typer.Exit(1)


def _load(pack: Path | None) -> tuple[RulePack, ViewCatalog, Path]:
    rules_file, directory = _profile(pack)
    try:
        rule_pack = load_pack(rules_file)
    except RulePackError as exc:
        raise _fail(f"rule pack {rules_file} refused ({len(exc.problems)} problems):", exc.problems) from None
    try:
        views = load_views(directory / "views.yaml")
    except (ViewCatalogError, OSError) as exc:
        raise _fail("views refused:", getattr(exc, "problems", [str(exc)])) from None
    return rule_pack, views, directory


def _registry(directory: Path) -> AgencyRegistry:
    beside = directory / "agencies.yaml"
    return load_registry_file(beside if beside.exists() else None)


def _tests(directory: Path) -> list[PackTest]:
    try:
        return load_pack_tests(directory / "rules_tests.yaml")
    except (OSError, ValueError) as exc:
        raise _fail("rule tests refused:", [str(exc)]) from None


@rules_app.command()
def check(pack: PackOption = None) -> None:
    """Validate the rule pack, the views and the test file; exit 1 listing every problem."""
    rule_pack, _, directory = _load(pack)
    tests = _tests(directory)
    console.print(
        f"[green]ok[/] rule pack {rule_pack.version} ({rule_pack.digest[:12]}): {len(rule_pack.rules)} rules, "
        f"views for every agency type, {len(tests)} test cases"
    )


@rules_app.command("test")
def run_tests(pack: PackOption = None) -> None:
    """Run the pack's test cases (rules_tests.yaml); list rules no test fires; exit 1 on any failure."""
    rule_pack, views, directory = _load(pack)
    report = run_pack_tests(rule_pack, _tests(directory), _registry(directory), views)
    table = Table(title=f"rule pack {rule_pack.version}: tests")
    table.add_column("test")
    table.add_column("result")
    table.add_column("differences")
    for name in report.passed:
        table.add_row(name, "[green]pass[/]", "")
    for failure in report.failed:
        table.add_row(failure.name, "[red]FAIL[/]", "\n".join(failure.problems))
    console.print(table)
    if report.uncovered_rules:
        console.print(f"[yellow]rules no test fires:[/] {', '.join(report.uncovered_rules)}")
    console.print(f"{len(report.passed)} passed, {len(report.failed)} failed")
    if not report.ok:
        raise typer.Exit(1)


@rules_app.command("explain")
def explain_case(
    case_json: Annotated[Path, typer.Argument(help="A report CloudEvent, or only its `data`, as JSON.")],
    pack: PackOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the decision as JSON.")] = False,
) -> None:
    """Which rules fire for a case and why the others do not, with the referrals they make."""
    rule_pack, views, directory = _load(pack)
    try:
        data = json.loads(case_json.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise _fail(f"cannot read {case_json}:", [str(exc)]) from None
    if not isinstance(data, dict):
        raise _fail(f"cannot read {case_json}:", ["expected a JSON object"])
    try:
        case = build_case(data)
    except CaseDataError as exc:
        raise _fail("the case does not validate:", exc.problems) from None
    decision = decide(case, rule_pack, _registry(directory), views, now=datetime.now(UTC))
    if as_json:
        print(json.dumps(explain_json(decision), indent=2, ensure_ascii=False))
    else:
        console.print(explain(decision), markup=False, highlight=False)
