"""Rule conditions: compiled once at load with CEL, evaluated per case against its facts.

The engine sits behind a tiny protocol so that `bench/bench_rules.py` can run the same index and loop
with zen-engine; production uses `CEL` (see the benchmark for why).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import cel

from contracts.records import RuleTrace
from services.routing.facts import FACT_NAMES, LIST_FACTS, Facts, sample_facts
from services.routing.index import (
    Atom,
    Guard,
    atoms_of,
    candidates,
    describe_guard,
    guard_of,
    invert,
)
from services.routing.limits import limit_problems


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


TRACE_CACHE_SIZE = 512


Known = dict[object, object]
"""A case's facts as trace-cache keys see them: each fact name → its value (lists as tuples), and
each tested code as an atom (`("needs", "medical")`) → whether the case has it. Flat, so a rule's
cache key is one `itemgetter` call, made of strings, small ints and booleans that hash and compare
fast (no set is built per rule and case)."""


def known_facts(facts: Facts, tested: Iterable[Atom], present: set[Atom]) -> Known:
    """`Known` for a case: its facts, hashable, plus the presence of every code in `tested`."""
    known: Known = {name: tuple(value) if isinstance(value, list) else value for name, value in facts.items()}
    known.update((atom, atom in present) for atom in tested)
    return known


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule's condition ready to run: its index guard, the codes it tests in each list fact, and a
    cache of its (immutable, shared) traces keyed by the verdict and the facts it read.

    `reads` picks, from a case's `Known` facts, what the trace depends on besides the verdict: the
    scalar facts the rule reads and, per tested code, whether the case has it (None: nothing).
    """

    rule_id: str
    expression: str
    condition: Any
    variables: tuple[str, ...]
    guard: Guard | None
    skipped: RuleTrace | None
    members: dict[str, frozenset[str]]
    traces: dict[tuple[object, ...], RuleTrace] = field(default_factory=dict, compare=False, repr=False)
    reads: Callable[[Known], object] | None = field(default=None, compare=False, repr=False)

    def trace_key(self, fired: bool, known: Known) -> tuple[object, ...]:
        """What the trace depends on: the verdict, the scalar facts read, the tested codes present."""
        return (fired, self.reads(known) if self.reads else None)


def _tested_members(expression: str, variables: set[str]) -> dict[str, frozenset[str]]:
    """Per list fact, the codes the condition tests with `"code" in fact`."""
    tested: dict[str, frozenset[str]] = {}
    for name in variables & set(LIST_FACTS):
        codes = frozenset(re.findall(r'"([A-Za-z0-9_]+)"\s+in\s+' + name + r"\b", expression))
        if codes:
            tested[name] = codes
    return tested


def compile_condition(
    rule_id: str, expression: str, engine: ConditionEngine = CEL, *, run_samples: bool = True
) -> tuple[CompiledRule | None, list[str]]:
    """Check the condition's bounds (`limits`), compile it and type-check it on sample facts; the
    problems name the rule, never a case. `run_samples=False` skips the type check, which evaluates the
    condition: for a pack already checked in a worker (`vetting`)."""
    bounds = limit_problems(rule_id, expression)
    if bounds:
        return None, bounds
    try:
        condition = engine.compile(expression)
    except Exception as exc:  # noqa: BLE001 - every engine raises its own type
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return None, [f"rule {rule_id}: `when` does not compile: {first_line}"]
    variables = engine.variables(condition)
    unknown = sorted(variables - FACT_NAMES)
    if unknown:
        return None, [f"rule {rule_id}: `when` uses unknown facts: {', '.join(unknown)}"]
    for sample in sample_facts() if run_samples else ():
        try:
            result = engine.run(condition, engine.bind(sample))
        except Exception as exc:  # noqa: BLE001
            return None, [f"rule {rule_id}: `when` fails on sample facts: {type(exc).__name__}: {str(exc)[:160]}"]
        if not isinstance(result, bool):
            return None, [f"rule {rule_id}: `when` must be a boolean, got {type(result).__name__}"]
    guard = guard_of(expression)
    skipped = RuleTrace(rule_id=rule_id, fired=False, why=f"condition false: {describe_guard(guard)}") if guard else None
    members = _tested_members(expression, variables)
    read: list[object] = sorted(variables - set(members))
    read += [(name, code) for name, codes in sorted(members.items()) for code in sorted(codes)]
    reads = operator.itemgetter(*read) if read else None
    return CompiledRule(rule_id, expression, condition, tuple(sorted(variables)), guard, skipped, members, {}, reads), []


def _show(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list | frozenset):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def _read(rule: CompiledRule, facts: Facts, held: dict[str, frozenset[str]]) -> tuple[object, ...]:
    """The facts the rule read, hashable: for a list fact, only the tested codes the case has."""
    return tuple(
        rule.members[name] & held[name] if name in rule.members
        else tuple(value) if isinstance(value := facts.get(name), list)
        else value
        for name in rule.variables
    )


def _render(rule: CompiledRule, fired: bool, read: tuple[object, ...]) -> RuleTrace:
    shown = []
    for name, value in zip(rule.variables, read, strict=True):
        if name in rule.members:
            has = sorted(value)  # type: ignore[call-overload]
            shown.append(f"{name} has {', '.join(has)}" if has else f"{name} has none of {', '.join(sorted(rule.members[name]))}")
        else:
            shown.append(f"{name}={_show(value)}")
    tested = f" (with {'; '.join(shown)})" if shown else ""
    verdict = "condition true" if fired else "condition false"
    return RuleTrace(rule_id=rule.rule_id, fired=fired, why=f"{verdict}: {rule.expression}{tested}")


@dataclass(frozen=True, slots=True)
class CompiledRules:
    """A pack's compiled conditions with their inverted index: which rules each fact may fire."""

    rules: tuple[CompiledRule, ...]
    by_atom: dict[Atom, tuple[int, ...]]
    unguarded: tuple[int, ...]
    defaults: tuple[RuleTrace | None, ...]
    tested: tuple[Atom, ...]
    """Every `(list fact, code)` some rule tests: the atoms `known_facts` must answer."""

    @classmethod
    def of(cls, rules: Sequence[CompiledRule], *, indexed: bool = True) -> CompiledRules:
        """Index `rules`; `indexed=False` evaluates every rule for every case (benchmarks, tests)."""
        by_atom, unguarded = invert([r.guard if indexed else None for r in rules])
        defaults = tuple(r.skipped if indexed else None for r in rules)
        tested = sorted({(name, code) for r in rules for name, codes in r.members.items() for code in codes})
        return cls(tuple(rules), by_atom, unguarded, defaults, tuple(tested))

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[CompiledRule]:
        return iter(self.rules)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every rule's trace in pack order, and the positions of the rules that fired."""

    traces: list[RuleTrace]
    fired: list[int]


def evaluate(compiled: CompiledRules, facts: Facts, engine: ConditionEngine = CEL) -> Evaluation:
    """Run the pack on a case's facts. Only the rules the index names for those facts run; the
    others carry their precomputed "condition false" trace."""
    bound = engine.bind(facts)
    present = atoms_of(facts)
    held = {name: frozenset(facts.get(name) or ()) for name in LIST_FACTS}
    known = known_facts(facts, compiled.tested, present)
    traces = list(compiled.defaults)
    fired_at: list[int] = []
    rules = compiled.rules
    run = engine.run
    for position in candidates(compiled.by_atom, compiled.unguarded, present):
        rule = rules[position]
        try:
            fired = run(rule.condition, bound) is True
        except Exception as exc:  # noqa: BLE001
            error = f"{type(exc).__name__}: {str(exc)[:160]}"
            traces[position] = RuleTrace(
                rule_id=rule.rule_id, fired=False, why=f"condition error: {rule.expression}", error=error
            )
            continue
        if fired:
            fired_at.append(position)
        key = rule.trace_key(fired, known)
        trace = rule.traces.get(key)
        if trace is None:
            if len(rule.traces) >= TRACE_CACHE_SIZE:
                rule.traces.clear()
            trace = rule.traces[key] = _render(rule, fired, _read(rule, facts, held))
        traces[position] = trace
    return Evaluation(traces, fired_at)  # type: ignore[arg-type]
