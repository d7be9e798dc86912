"""The layout's arrows point one way (issue 9): read from the import statements of the whole tree.

    alur (the operator's command) ─▶ services ─▶ runtime ─▶ domain ─▶ contracts
                     └──────────────────────────▲ (alur also uses runtime, domain, contracts directly)

No service imports another service, the runtime never imports the command, the domain needs no broker,
and the wire contract imports nothing of ours.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("alur", "runtime", "domain", "contracts", "services", "examples")
MAY_IMPORT: dict[str, set[str]] = {
    "contracts": set(),
    "domain": {"contracts"},
    "runtime": {"domain", "contracts"},
    "services": {"runtime", "domain", "contracts"},
    "examples": set(),
    "alur": {"runtime", "domain", "contracts", "services", "examples"},
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" and len(parts) > 1 else parts[0]


def _imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _edges() -> set[tuple[str, str]]:
    edges = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            source = _unit(".".join(path.relative_to(REPO).with_suffix("").parts))
            for module in _imports(path):
                target = _unit(module)
                if target.split(".")[0] in PACKAGES and target != source:
                    edges.add((source, target))
    return edges


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_what_it_may(package: str) -> None:
    wrong = sorted(
        (source, target) for source, target in _edges()
        if source.split(".")[0] == package and target.split(".")[0] not in MAY_IMPORT[package]
    )
    assert not wrong, f"{package} imports what it may not: {wrong}"


def test_no_service_imports_another() -> None:
    crossing = sorted((s, t) for s, t in _edges() if s.startswith("services.") and t.startswith("services."))
    assert not crossing, crossing


def test_no_test_imports_another_test_module() -> None:
    for path in (REPO / "tests").glob("test_*.py"):
        imported = [m for m in _imports(path) if m.split(".")[-1].startswith("test_")]
        assert not imported, f"{path.name} imports {imported}: shared helpers belong in tests/conftest.py"
