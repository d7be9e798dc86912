"""The rule index: which facts must hold for a condition to be true, found from its text.

`guard_of` reads a condition conservatively. It returns a set of atoms such that the condition can be
true only when at least one atom holds for the case, or None when it cannot tell. An atom is
`("needs", "medical")` (a code in a list fact) or `("child", True)` (a true boolean fact). A rule whose
guard shares no atom with the case is skipped without evaluation: it could not have fired.
The reading is sound for CEL: `a || b` is true only if one side is, `a && b` only if both are; a
conditional (`?:`) is never read.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence

from services.routing.facts import BOOL_FACTS, LIST_FACTS, Facts

Atom = tuple[str, object]
Guard = frozenset[Atom]

_MEMBER = re.compile(r'^"([A-Za-z0-9_]+)"\s+in\s+(' + "|".join(LIST_FACTS) + r")$")
_BOOL = re.compile(r"^(" + "|".join(BOOL_FACTS) + r")$")


def scan_code(expr: str) -> Iterator[tuple[int, int]]:
    """(index, bracket depth after it) of every character outside string literals."""
    depth, quote, i = 0, "", 0
    while i < len(expr):
        ch = expr[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        else:
            depth += (ch in "([{") - (ch in ")]}")
            yield i, depth
        i += 1


def _split_top(expr: str, operator: str) -> list[str]:
    """Split on `operator` where it is outside brackets and string literals."""
    parts: list[str] = []
    start = 0
    for i, depth in scan_code(expr):
        if depth == 0 and i >= start and expr.startswith(operator, i):
            parts.append(expr[start:i])
            start = i + len(operator)
    parts.append(expr[start:])
    return [p.strip() for p in parts]


def _closing(expr: str) -> int:
    """Index of the bracket closing the one that opens `expr`, or -1."""
    return next((i for i, depth in scan_code(expr) if depth == 0 and expr[i] in ")]}"), -1)


def _strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and _closing(expr) == len(expr) - 1:
        expr = expr[1:-1].strip()
    return expr


def _selectivity(guard: Guard) -> tuple[int, int]:
    """Lower is more selective: a code in a list rarely holds, a boolean such as `adult` often does."""
    return sum(1 for _, value in guard if value is True), len(guard)


def guard_of(expr: str) -> Guard | None:
    """Atoms of which at least one must hold for `expr` to be true; None if the text does not say."""
    if "?" in expr:
        return None
    expr = _strip_parens(expr)
    alternatives = _split_top(expr, "||")
    if len(alternatives) > 1:
        guards = [guard_of(a) for a in alternatives]
        if any(g is None for g in guards):
            return None
        return frozenset().union(*guards)  # type: ignore[arg-type]
    conjuncts = _split_top(expr, "&&")
    if len(conjuncts) > 1:
        known = [g for g in (guard_of(c) for c in conjuncts) if g is not None]
        return min(known, key=_selectivity) if known else None
    if match := _MEMBER.match(expr):
        return frozenset({(match.group(2), match.group(1))})
    if match := _BOOL.match(expr):
        return frozenset({(match.group(1), True)})
    return None


def atoms_of(facts: Facts) -> set[Atom]:
    """The atoms that hold for a case."""
    present: set[Atom] = {(name, True) for name in BOOL_FACTS if facts.get(name) is True}
    for name in LIST_FACTS:
        present.update((name, code) for code in facts.get(name) or ())
    return present


def describe_guard(guard: Iterable[Atom]) -> str:
    """`needs has none of medical, psychological; child is false`: why a skipped rule cannot fire."""
    members: dict[str, list[str]] = {}
    flags: list[str] = []
    for name, value in sorted(guard, key=lambda a: (a[0], str(a[1]))):
        if value is True:
            flags.append(f"{name} is false")
        else:
            members.setdefault(name, []).append(str(value))
    parts = [f"{name} has none of {', '.join(codes)}" for name, codes in members.items()]
    return "; ".join(parts + flags)


def invert(guards: Sequence[Guard | None]) -> tuple[dict[Atom, tuple[int, ...]], tuple[int, ...]]:
    """(atom → positions of the rules it may fire, positions of the rules without a guard)."""
    by_atom: dict[Atom, list[int]] = {}
    unguarded: list[int] = []
    for position, guard in enumerate(guards):
        if guard is None:
            unguarded.append(position)
        else:
            for atom in guard:
                by_atom.setdefault(atom, []).append(position)
    return {atom: tuple(positions) for atom, positions in by_atom.items()}, tuple(unguarded)


def candidates(
    by_atom: dict[Atom, tuple[int, ...]], unguarded: tuple[int, ...], present: Iterable[Atom]
) -> list[int]:
    """Positions of the rules that may fire for a case, in pack order."""
    found = set(unguarded)
    for atom in present:
        positions = by_atom.get(atom)
        if positions:
            found.update(positions)
    return sorted(found)
