"""Rule conditions: compiled once at load with CEL, evaluated per case against its facts.

The engine sits behind a tiny protocol so that `bench/bench_rules.py` can run the same index and loop
with zen-engine; production uses `CEL` (see the benchmark for why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import cel

from services.routing.facts import FACT_NAMES, Facts, sample_facts
from services.routing.index import Guard, atoms_of, describe_guard, guard_of


class ConditionEngine(Protocol):
    """An expression language: compile text once, bind a case's facts once, run many conditions."""

    name: str

    def compile(self, expression: str) -> Any: ...

    def variables(self, compiled: Any) -> set[str]: ...

    def bind(self, facts: Facts) -> Any: ...

    def run(self, compiled: Any, bound: Any) -> object: ...


class CelEngine:
    """CEL through `common-expression-language` (Rust): one `cel.Context` per case, reused by every rule."""

    name = "cel"

    def compile(self, expression: str) -> Any:
        return cel.compile(expression)

    def variables(self, compiled: Any) -> set[str]:
        return set(compiled.variables())

    def bind(self, facts: Facts) -> Any:
        return cel.Context(facts)

    def run(self, compiled: Any, bound: Any) -> object:
        return compiled.execute(bound)


CEL = CelEngine()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule's condition ready to run, with the index guard that lets the loop skip it."""

    rule_id: str
    expression: str
    condition: Any
    variables: tuple[str, ...]
    guard: Guard | None
    skip_reason: str


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """Whether one rule fired for a case, and why (the condition and the non-identifying facts it read)."""

    rule_id: str
    fired: bool
    why: str
    error: str | None = None


def compile_condition(rule_id: str, expression: str, engine: ConditionEngine = CEL) -> tuple[CompiledRule | None, list[str]]:
    """Compile and type-check one condition; the problems name the rule, never a case."""
    try:
        condition = engine.compile(expression)
    except Exception as exc:  # noqa: BLE001 - every engine raises its own type
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, [f"rule {rule_id}: `when` does not compile: {first_line}"]
    variables = engine.variables(condition)
    unknown = sorted(variables - FACT_NAMES)
    if unknown:
        return None, [f"rule {rule_id}: `when` uses unknown facts: {', '.join(unknown)}"]
    problems: list[str] = []
    for sample in sample_facts():
        try:
            result = engine.run(condition, engine.bind(sample))
        except Exception as exc:  # noqa: BLE001
            problems.append(f"rule {rule_id}: `when` fails on sample facts: {type(exc).__name__}: {str(exc)[:160]}")
            break
        if not isinstance(result, bool):
            problems.append(f"rule {rule_id}: `when` must be a boolean, got {type(result).__name__}")
            break
    if problems:
        return None, problems
    guard = guard_of(expression)
    compiled = CompiledRule(
        rule_id=rule_id,
        expression=expression,
        condition=condition,
        variables=tuple(sorted(variables)),
        guard=guard,
        skip_reason=f"condition false: {describe_guard(guard)}" if guard else "",
    )
    return compiled, []


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def evaluate(rules: Sequence[CompiledRule], facts: Facts, engine: ConditionEngine = CEL) -> list[RuleOutcome]:
    """Every rule's outcome, in pack order; indexed rules whose guard fails are not run at all."""
    present = atoms_of(facts)
    bound = engine.bind(facts)
    outcomes: list[RuleOutcome] = []
    for rule in rules:
        if rule.guard is not None and rule.guard.isdisjoint(present):
            outcomes.append(RuleOutcome(rule.rule_id, False, rule.skip_reason))
            continue
        tested = ", ".join(f"{name}={_show(facts.get(name))}" for name in rule.variables)
        try:
            fired = engine.run(rule.condition, bound) is True
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {str(exc)[:160]}"
            outcomes.append(RuleOutcome(rule.rule_id, False, f"condition error: {rule.expression}", error))
            continue
        verdict = "condition true" if fired else "condition false"
        with_facts = f" (with {tested})" if tested else ""
        outcomes.append(RuleOutcome(rule.rule_id, fired, f"{verdict}: {rule.expression}{with_facts}"))
    return outcomes
