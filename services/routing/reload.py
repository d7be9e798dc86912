"""Hot reload: vet a new pack and its tests in a worker, and only then swap it in; a bad pack keeps the old.

The pack a service starts with is checked in-process (`from_dir`: nothing is consumed yet, and the
load-time bounds of `limits` apply). A new pack is vetted in a child process with a timeout
(`vetting`), so neither a slow condition nor a slow test file can hold routing; only after the child
says yes is the same text compiled here, without running it, and swapped in.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from domain.registry import AgencyRegistry
from runtime.profile import load_registry_file
from services.routing.pack_tests import (
    PackTest,
    load_pack_tests,
    parse_pack_tests,
    run_pack_tests,
)
from services.routing.rules import RulePack, RulePackError, load_pack, pack_from_text
from services.routing.vetting import Candidate, vet
from services.routing.views import ViewCatalog, load_views

PackSource = Path | str | bytes | Mapping[str, object]
"""A `Path` to a rules file (or profile directory), YAML text (`str`/`bytes`), or already parsed data."""

RULES_FILE = "rules.yaml"
TESTS_FILE = "rules_tests.yaml"
VALIDATION_TIMEOUT = 30.0
"""Seconds a new pack's vetting (compile, sample facts, its tests) may take before it is refused."""


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
        validation_timeout: float = VALIDATION_TIMEOUT,
    ) -> None:
        self._active: tuple[RulePack, str] = (pack, pack.version)
        self._tests: tuple[PackTest, ...] = tuple(tests)
        self._lock = threading.Lock()
        self.registry = registry
        self.views = views
        self.directory = directory
        self.validation_timeout = validation_timeout
        self._seen = _fingerprint(directory) if directory else ""

    @classmethod
    def from_dir(
        cls,
        directory: Path | str,
        *,
        registry: AgencyRegistry | None = None,
        views: ViewCatalog | None = None,
        validation_timeout: float = VALIDATION_TIMEOUT,
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
        return cls(pack, tests=tests, registry=registry, views=views, directory=root,
                   validation_timeout=validation_timeout)

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
        """Vet `source` and its tests in a worker, swap atomically if all pass; return (swapped, problems).

        Tests come from `tests`, else from `rules_tests.yaml` beside a `Path` source, else the current ones.
        A pack with the active version but different content is refused: bump `version` with every change.
        Blocks for up to `validation_timeout` seconds: call it off the event loop.
        """
        try:
            rules_text = _text_of(source)
            tests_text = _tests_text_beside(source) if tests is None else None
        except OSError as exc:
            return False, [f"cannot read: {exc.strerror or exc}"]
        given = tuple(tests) if tests is not None else self._tests
        verdict = vet(
            Candidate.of(rules_text, tests=tests_text, test_cases=given, registry=self.registry, views=self.views,
                         active=self.pack),
            timeout=self.validation_timeout,
        )
        if not verdict.ok:
            return False, verdict.problems
        if verdict.unchanged:
            return True, []
        try:  # the text the worker vetted: compiled here, not run again
            pack = pack_from_text(rules_text, run_samples=False)
            beside = tuple(parse_pack_tests(yaml.safe_load(tests_text))) if tests_text is not None else ()
            new_tests = beside or given
        except (RulePackError, ValueError, yaml.YAMLError) as exc:
            return False, [f"the vetted pack does not load here: {str(exc)[:300]}"]
        if pack.digest != verdict.digest:
            return False, ["the vetted pack and the loaded one differ: refused"]
        with self._lock:
            self._tests = new_tests
            self._active = (pack, pack.version)
        return True, []

    def changed(self) -> bool:
        """Whether the rules or tests files of `directory` changed since the last look. The change is then
        taken: a refused change is reported once, not at every look."""
        if self.directory is None:
            return False
        seen = _fingerprint(self.directory)
        if seen == self._seen:
            return False
        self._seen = seen
        return True

    def reload(self) -> tuple[bool, list[str]]:
        """`try_swap` the rules file of `directory` (and the tests beside it)."""
        assert self.directory is not None, "a book without a directory has nothing to reload"
        return self.try_swap(self.directory / RULES_FILE)

    def reload_if_changed(self) -> tuple[bool, list[str]] | None:
        """`reload` if the files `changed`; None when nothing changed."""
        return self.reload() if self.changed() else None


def _text_of(source: PackSource) -> str:
    """The pack as text for the worker (and, once vetted, for loading here)."""
    if isinstance(source, Path):
        return (source / RULES_FILE if source.is_dir() else source).read_text(encoding="utf-8")
    if isinstance(source, bytes):
        return source.decode("utf-8", errors="replace")
    if isinstance(source, str):
        return source
    return yaml.safe_dump(dict(source), sort_keys=False, allow_unicode=True)


def _tests_text_beside(source: PackSource) -> str | None:
    if not isinstance(source, Path):
        return None
    tests_file = (source if source.is_dir() else source.parent) / TESTS_FILE
    return tests_file.read_text(encoding="utf-8") if tests_file.exists() else None


def _tests_beside(source: Path) -> tuple[PackTest, ...]:
    tests_file = (source if source.is_dir() else source.parent) / TESTS_FILE
    return tuple(load_pack_tests(tests_file)) if tests_file.exists() else ()
