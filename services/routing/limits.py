"""Bounds on a rule condition's cost, checked at load before it is compiled.

A condition runs in Rust (CEL), on routing's event loop, for every case, and nothing can stop it once
started. A comprehension macro (`exists`, `all`, `exists_one`, `map`, `filter`) runs its body once per
element of a list, and a list literal is as long as the text allows, so nested macros multiply: ten
elements nested ten deep (about 350 characters) run for hours. A condition is therefore made cheap by
construction: at most `MAX_LENGTH` characters, brackets at most `MAX_BRACKET_DEPTH` deep, and at most
`MAX_MACRO_DEPTH` macros one inside another (one level of nesting). Together they bound a condition to
about (`MAX_LENGTH` / 2) ** `MAX_MACRO_DEPTH` steps: milliseconds. A rule that needs more is two rules.
"""

from __future__ import annotations

import re

from services.routing.index import scan_code

MAX_LENGTH = 400
MAX_BRACKET_DEPTH = 10
MAX_MACRO_DEPTH = 2
MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})
"""The comprehension macros of CEL and of `common-expression-language`: each loops over a list or map."""

_CALLEE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*$")


def _macro_call(expression: str, paren: int) -> bool:
    """Whether the `(` at `paren` opens a call of a comprehension macro."""
    callee = _CALLEE.search(expression, 0, paren)
    return callee is not None and callee.group(1) in MACROS


def depths(expression: str) -> tuple[int, int]:
    """(deepest bracket nesting, deepest nesting of comprehension macros), outside string literals."""
    opened: list[bool] = []  # per open bracket: is it a macro call's
    deepest = macros = 0
    for i, depth in scan_code(expression):
        char = expression[i]
        if char in "([{":
            opened.append(char == "(" and _macro_call(expression, i))
            deepest = max(deepest, depth)
            macros = max(macros, sum(opened))
        elif char in ")]}" and opened:
            opened.pop()
    return deepest, macros


def limit_problems(rule_id: str, expression: str) -> list[str]:
    """Every bound the condition breaks, each naming the rule (never a case)."""
    prefix = f"rule {rule_id}: `when`"
    if len(expression) > MAX_LENGTH:
        return [f"{prefix} is {len(expression)} characters long, more than {MAX_LENGTH}: split it into simpler rules"]
    problems = []
    brackets, macros = depths(expression)
    if brackets > MAX_BRACKET_DEPTH:
        problems.append(f"{prefix} nests brackets {brackets} deep, more than {MAX_BRACKET_DEPTH}")
    if macros > MAX_MACRO_DEPTH:
        problems.append(
            f"{prefix} nests comprehension macros ({', '.join(sorted(MACROS))}) {macros} deep, more than "
            f"{MAX_MACRO_DEPTH}: each level multiplies the cost by the length of a list"
        )
    return problems
