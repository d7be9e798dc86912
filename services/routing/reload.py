"""Hot reload: validate a new pack, run its tests, and only then swap it in; a bad pack keeps the old."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from alur.profile import load_registry_file
from alur.registry import AgencyRegistry
from services.routing.pack_tests import PackTest, load_pack_tests, run_pack_tests
from services.routing.rules import RulePack, RulePackError, load_pack, pack_from_text, parse_pack
from services.routing.views import ViewCatalog, load_views

PackSource = Path | str | bytes | Mapping[str, object]
"""A `Path` to a rules file (or profile directory), YAML text (`str`/`bytes`), or already parsed data."""

RULES_FILE = "rules.yaml"
TESTS_FILE = "rules_tests.yaml"


def _fingerprint(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in (RULES_FILE, TESTS_FILE):
        try:
            digest.update((directory / name).read_bytes())
        except OSError:
            digest.update(b"\x00missing")
        digest.update(b"\x1f")
    return digest.hexdigest()


class RuleBook:
    """The active rule pack and its tests; `try_swap` replaces them only with a pack that passes."""

    def __init__(
        self,
        pack: RulePack,
        *,
        tests: Sequence[PackTest],
        registry: AgencyRegistry,
        views: ViewCatalog,
        directory: Path | None = None,
    ) -> None:
        self._active: tuple[RulePack, str] = (pack, pack.version)
        self._tests: tuple[PackTest, ...] = tuple(tests)
        self._lock = threading.Lock()
        self.registry = registry
        self.views = views
        self.directory = directory
        self._seen = _fingerprint(directory) if directory else ""

    @classmethod
    def from_dir(
        cls, directory: Path | str, *, registry: AgencyRegistry | None = None, views: ViewCatalog | None = None
    ) -> RuleBook:
        """The book of a profile directory (rules.yaml, rules_tests.yaml, views.yaml, agencies.yaml).

        Raises `RulePackError` when the pack is invalid or fails its tests: a service must not start
        without a pack it can trust.
        """
        root = Path(directory)
        pack = load_pack(root / RULES_FILE)
        tests = _tests_beside(root)
        registry = registry or load_registry_file(root / "agencies.yaml")
        views = views or load_views(root)
        report = run_pack_tests(pack, tests, registry, views)
        if not report.ok:
            raise RulePackError(report.summary(), str(root / RULES_FILE))
        return cls(pack, tests=tests, registry=registry, views=views, directory=root)

    @property
    def pack(self) -> RulePack:
        return self._active[0]

    @property
    def version(self) -> str:
        return self._active[1]

    @property
    def active(self) -> tuple[RulePack, str]:
        """The pack and its version, read together (one reference, so never a torn pair)."""
        return self._active

    def try_swap(self, source: PackSource, *, tests: Sequence[PackTest] | None = None) -> tuple[bool, list[str]]:
        """Validate `source`, run the tests, swap atomically if all pass; return (swapped, problems).

        Tests come from `tests`, else from `rules_tests.yaml` beside a `Path` source, else the current ones.
        A pack with the active version but different content is refused: bump `version` with every change.
        """
        try:
            pack = _parse(source)
        except RulePackError as exc:
            return False, list(exc.problems)
        try:
            new_tests = tuple(tests) if tests is not None else _tests_beside(source) or self._tests
        except (OSError, ValueError, yaml.YAMLError) as exc:
            return False, [f"tests: {exc}"]
        current = self.pack
        if pack.digest == current.digest:
            return True, []
        if pack.version == current.version:
            return False, [f"version {pack.version} is already active with other rules: bump `version`"]
        report = run_pack_tests(pack, new_tests, self.registry, self.views)
        if not report.ok:
            return False, report.summary()
        with self._lock:
            self._tests = new_tests
            self._active = (pack, pack.version)
        return True, []

    def reload_if_changed(self) -> tuple[bool, list[str]] | None:
        """If the rules or tests files of `directory` changed since the last look, `try_swap` them;
        None when nothing changed (a refused change is reported once, not at every look)."""
        if self.directory is None:
            return None
        seen = _fingerprint(self.directory)
        if seen == self._seen:
            return None
        self._seen = seen
        return self.try_swap(self.directory / RULES_FILE)


def _parse(source: PackSource) -> RulePack:
    if isinstance(source, Path):
        return load_pack(source)
    if isinstance(source, str | bytes):
        return pack_from_text(source)
    return parse_pack(source)


def _tests_beside(source: PackSource) -> tuple[PackTest, ...]:
    if not isinstance(source, Path):
        return ()
    tests_file = (source if source.is_dir() else source.parent) / TESTS_FILE
    return tuple(load_pack_tests(tests_file)) if tests_file.exists() else ()
