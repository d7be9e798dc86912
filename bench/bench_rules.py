"""Rule-engine benchmark: CEL (common-expression-language) vs zen-engine on Alur's cases.

Times, per case, the evaluation of every rule (with and without the rule index) for the Kalimantan
Selatan pack and for 1,000 synthetic rules of the same shape, and the whole `decide` on the production
path. Run: `.venv/bin/python bench/bench_rules.py [--cases N] [--rules N]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import zen

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contracts.events import Case  # noqa: E402
from contracts.vocab import ExploitationType, MigrationProfile, Need  # noqa: E402
from runtime.profile import load_registry_file, profile_dir  # noqa: E402
from services.routing.conditions import (  # noqa: E402
    CEL,
    CompiledRule,
    CompiledRules,
    ConditionEngine,
    compile_condition,
    evaluate,
)
from services.routing.decide import decide  # noqa: E402
from services.routing.facts import BOOL_FACTS, FACT_NAMES, Facts, facts_of  # noqa: E402
from services.routing.pack_tests import build_case  # noqa: E402
from services.routing.rules import RulePack, load_pack, parse_pack  # noqa: E402
from services.routing.views import load_views  # noqa: E402

_IDENT = re.compile(r"\b[a-z_][a-z0-9_]*\b")
_STRING = re.compile(r'"[^"]*"')


def to_zen(expression: str) -> str:
    """Our CEL subset in zen syntax: `&&` → and, `||` → or, `!x` → not x (membership `in` is the same)."""
    return (
        expression.replace("&&", " and ").replace("||", " or ").replace("!=", "\x00").replace("!", "not ")
        .replace("\x00", "!=")
    )


class ZenEngine:
    """zen-engine expressions behind the same protocol as `CelEngine` (facts passed as a dict per call)."""

    name = "zen"

    def compile(self, expression: str) -> Any:
        return zen.compile_expression(to_zen(expression))

    def variables(self, compiled: Any) -> set[str]:
        return set()

    def bind(self, facts: Facts) -> Any:
        return facts

    def run(self, compiled: Any, bound: Any) -> object:
        return compiled.evaluate(bound)


def zen_compile(rule_id: str, expression: str) -> CompiledRule:
    compiled, problems = compile_condition(rule_id, expression, ZenEngine())
    if compiled is None:
        raise SystemExit(f"zen cannot compile {rule_id}: {problems}")
    names = tuple(sorted(set(_IDENT.findall(_STRING.sub("", expression))) & FACT_NAMES))
    return dataclasses.replace(compiled, variables=names)


def synthetic_pack(count: int, seed: int = 7) -> RulePack:
    """`count` rules shaped like the real ones (need/exploitation tests, booleans, ages, a few unindexable),
    referring to the (agency type, service) pairs of the Kalsel pack."""
    rng = random.Random(seed)
    needs = [n.value for n in Need]
    kinds = [e.value for e in ExploitationType]
    bools = list(BOOL_FACTS)
    targets = sorted({(t.agency_type.value, t.service.value) for r in load_pack(profile_dir()).rules for t in r.refer})
    shapes: list[Callable[[], str]] = [
        lambda: f'"{rng.choice(needs)}" in needs && {rng.choice(bools)}',
        lambda: f'("{rng.choice(needs)}" in needs || "{rng.choice(needs)}" in needs) && !{rng.choice(bools)}',
        lambda: f'("{rng.choice(kinds)}" in exploitation || "{rng.choice(kinds)}" in exploitation) && in_indonesia',
        lambda: f'"{rng.choice(needs)}" in needs && age < {rng.randint(10, 60)}',
        lambda: f"{rng.choice(bools)} && {rng.choice(bools)}",
        lambda: f'risk == "high" && age >= {rng.randint(10, 60)}',
    ]
    weights = [30, 20, 15, 20, 10, 5]
    rules = [
        {
            "id": f"synthetic-{i:04d}",
            "description": "synthetic",
            "legal_basis": "bench",
            "when": rng.choices(shapes, weights)[0](),
            "refer": [dict(zip(("agency_type", "service"), rng.choice(targets), strict=True))],
        }
        for i in range(count)
    ]
    return parse_pack({"version": f"synthetic-{count}", "rules": rules}, "synthetic")


def sample_cases(count: int, seed: int = 11) -> list[Case]:
    """Varied cases around the DESIGN.md reference report."""
    rng = random.Random(seed)
    cases = []
    for i in range(count):
        abroad = rng.random() < 0.4
        cases.append(
            build_case(
                {
                    "report_ref": f"BENCH-{i:05d}",
                    "channel": "hotline",
                    "victim": {
                        "pseudonym": f"B-{i}",
                        "age": rng.randint(9, 55),
                        "sex": rng.choice(["female", "male", "other_unknown"]),
                        "nationality": rng.choices(["wni", "wna", "stateless_unknown"], [90, 8, 2])[0],
                        "migration_profile": rng.choice([m.value for m in MigrationProfile]),
                    },
                    "location": {
                        "regency": rng.choice(["6371", "6372", "6303", "6309"]),
                        "exploitation_location": "abroad" if abroad else rng.choice(["in_province", "other_province"]),
                        "country": "MY" if abroad else None,
                    },
                    "exploitation": rng.sample([e.value for e in ExploitationType], rng.randint(1, 3)),
                    "needs": rng.sample([n.value for n in Need], rng.randint(0, 6)),
                    "risk": rng.choice(["high", "medium", "low"]),
                    "injured": rng.random() < 0.2,
                    "has_case_manager": rng.random() < 0.5,
                    "consent": {"share_with": rng.choice(["all", "all", "none"]), "recorded_by": "bench"},
                }
            )
        )
    return cases


def timed(run: Callable[[Any], object], inputs: Sequence[Any], repeat: int) -> tuple[float, float]:
    """(median, p99) microseconds per input over `repeat` passes."""
    samples: list[float] = []
    for _ in range(repeat):
        for item in inputs:
            start = time.perf_counter_ns()
            run(item)
            samples.append((time.perf_counter_ns() - start) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def unindexed(rules: CompiledRules) -> CompiledRules:
    return CompiledRules.of(rules.rules, indexed=False)


Row = tuple[str, str, str, float, float]
"""(rule pack, engine, what, median µs, p99 µs)"""


def run(cases: int = 300, rules: int = 1000, repeat: int = 5) -> tuple[str, list[Row]]:
    """Time every engine and path; (a one-line note on the run, the rows)."""
    kalsel = load_pack(profile_dir())
    synthetic = synthetic_pack(rules)
    registry, views = load_registry_file(), load_views(profile_dir())
    sample = sample_cases(cases)
    facts = [facts_of(c) for c in sample]
    now = datetime(2026, 11, 20, tzinfo=UTC)
    zen_engine = ZenEngine()

    rows: list[Row] = []
    for label, pack in ((f"kalsel ({len(kalsel.rules)})", kalsel), (f"synthetic ({len(synthetic.rules)})", synthetic)):
        cel_rules = pack.compiled
        zen_rules = CompiledRules.of([zen_compile(r.id, r.when) for r in pack.rules])
        for engine, compiled, name in ((CEL, cel_rules, "cel"), (zen_engine, zen_rules, "zen")):
            assert_same(cel_rules, compiled, facts, engine)
            for index_label, compiled_rules in (("indexed", compiled), ("no index", unindexed(compiled))):
                median, p99 = timed(lambda f, r=compiled_rules, e=engine: evaluate(r, f, e), facts, repeat)
                rows.append((label, name, f"evaluate, {index_label}", median, p99))
        median, p99 = timed(lambda c, p=pack: decide(c, p, registry, views, now=now), sample, repeat)
        rows.append((label, "cel", "decide (production path)", median, p99))
    indexed = sum(1 for r in synthetic.compiled if r.guard is not None)
    return f"{cases} cases x {repeat} passes; synthetic rules indexed: {indexed}/{len(synthetic.rules)}", rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    note, rows = run(args.cases, args.rules, args.repeat)
    print(note)
    print(f"{'rule pack':<18} {'engine':<7} {'what':<26} {'median µs':>10} {'p99 µs':>10}")
    for label, name, what, median, p99 in rows:
        print(f"{label:<18} {name:<7} {what:<26} {median:>10.1f} {p99:>10.1f}")


def assert_same(
    reference: CompiledRules, compiled: CompiledRules, facts: Sequence[Facts], engine: ConditionEngine
) -> None:
    """Both engines, indexed or not, must fire the same rules on every case."""
    for case_facts in facts:
        expected = evaluate(unindexed(reference), case_facts, CEL).fired
        for rules in (compiled, unindexed(compiled)):
            if evaluate(rules, case_facts, engine).fired != expected:
                raise SystemExit(f"{engine.name} disagrees with CEL on a case")


if __name__ == "__main__":
    main()
