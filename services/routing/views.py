"""Need-to-know views: which fields of a case each agency type may see (DOMAIN.md, UU 27/2022 PDP).

The profile's `views.yaml` declares the allowed field paths per agency type; a view copies those paths
and nothing else. Loading refuses a catalogue that misses an agency type, names a path the case does
not have, or breaks one of the `NEVER` limits below, which DOMAIN.md sets and no profile may lift.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.events import Case
from contracts.vocab import AgencyType, Need

IDENTITY = "victim.identity"
NARRATIVE = "narrative"

NEVER: dict[AgencyType, frozenset[str]] = {
    AgencyType.EDUCATION: frozenset({IDENTITY, NARRATIVE}),
    AgencyType.LABOUR: frozenset({IDENTITY, NARRATIVE}),
    AgencyType.GT_SECRETARIAT: frozenset({IDENTITY, NARRATIVE}),
    AgencyType.HEALTH: frozenset({NARRATIVE}),
}
"""Paths (and everything under them) an agency type may never see, whatever the profile says."""

ALWAYS_FORBIDDEN = frozenset({IDENTITY, NARRATIVE})
"""Paths that may not be in the `always` list: they are granted per agency type only."""


class ViewCatalogError(Exception):
    """A views file that cannot be used; `problems` lists every one."""

    def __init__(self, problems: list[str], source: str = "views") -> None:
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


class View(BaseModel):
    """One agency type's view: the case paths it may see, and optionally which needs it is shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fields: list[str] = Field(default_factory=list)
    needs_only: list[Need] | None = None


class ViewCatalog(BaseModel):
    """Every agency type's view, plus the paths every view carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    always: list[str]
    views: dict[AgencyType, View]

    def paths_for(self, agency_type: AgencyType) -> list[str]:
        """The paths an agency type sees, `always` first, without repeats."""
        return list(dict.fromkeys([*self.always, *self.views[agency_type].fields]))

    def view_of(self, case: Case, agency_type: AgencyType) -> dict[str, Any]:
        """The case as this agency type may see it: only the declared paths."""
        return self.project(case.model_dump(mode="json"), agency_type)

    def project(self, dumped: Mapping[str, Any], agency_type: AgencyType) -> dict[str, Any]:
        """`view_of` on an already dumped case (`case.model_dump(mode="json")`), to dump once per decision.

        The view shares nested values with `dumped`: treat both as read-only, or `clone` the view.
        """
        view: dict[str, Any] = {}
        for path in self.paths_for(agency_type):
            _copy_path(dumped, view, path.split("."))
        needs_only = self.views[agency_type].needs_only
        if needs_only is not None and isinstance(view.get("needs"), list):
            allowed = {n.value for n in needs_only}
            view["needs"] = [n for n in view["needs"] if n in allowed]
        return view


def clone(value: Any) -> Any:
    """A copy of JSON-like data (dicts, lists, scalars), faster than `copy.deepcopy`."""
    if isinstance(value, dict):
        return {key: clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clone(item) for item in value]
    return value


def _copy_path(source: Mapping[str, Any], target: dict[str, Any], parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head not in source:
        return
    value = source[head]
    if not rest:
        target[head] = value
    elif isinstance(value, Mapping):
        _copy_path(value, target.setdefault(head, {}), rest)
    elif value is None:
        target.setdefault(head, None)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [m for m in map(_model_of, typing.get_args(annotation)) if m is not None]
        return models[0] if len(models) == 1 else None
    return None


def path_exists(path: str, model: type[BaseModel] = Case) -> bool:
    """Whether a dotted path names a field of the case model (nested models included)."""
    current: type[BaseModel] | None = model
    for part in path.split("."):
        if current is None or part not in current.model_fields:
            return False
        current = _model_of(current.model_fields[part].annotation)
    return True


def _covers(path: str, forbidden: str) -> bool:
    """Whether granting `path` reveals `forbidden` (the same path, a parent, or a child of it)."""
    return path == forbidden or forbidden.startswith(path + ".") or path.startswith(forbidden + ".")


def _problems(catalog: ViewCatalog) -> list[str]:
    problems: list[str] = []
    for agency_type in AgencyType:
        if agency_type not in catalog.views:
            problems.append(f"no view for agency type {agency_type.value}")
    for path in catalog.always:
        if not path_exists(path):
            problems.append(f"always: unknown case path `{path}`")
        for forbidden in ALWAYS_FORBIDDEN:
            if _covers(path, forbidden):
                problems.append(f"always: `{path}` reveals `{forbidden}`; grant it per agency type")
    for agency_type, view in catalog.views.items():
        for path in view.fields:
            if not path_exists(path):
                problems.append(f"{agency_type.value}: unknown case path `{path}`")
            for forbidden in NEVER.get(agency_type, ()):
                if _covers(path, forbidden):
                    problems.append(f"{agency_type.value}: may never see `{forbidden}` (granted by `{path}`)")
    return problems


def parse_views(data: object, source: str = "views") -> ViewCatalog:
    """Validate parsed YAML data as a view catalogue; raise with every problem."""
    try:
        catalog = ViewCatalog.model_validate(data)
    except ValidationError as exc:
        raise ViewCatalogError(
            [f"{'.'.join(map(str, e['loc'])) or 'views'}: {e['msg']}" for e in exc.errors()], source
        ) from None
    problems = _problems(catalog)
    if problems:
        raise ViewCatalogError(problems, source)
    return catalog


def load_views(path: Path | str) -> ViewCatalog:
    """The view catalogue from a YAML file (`views.yaml`, or a profile directory holding one)."""
    source = Path(path)
    if source.is_dir():
        source = source / "views.yaml"
    return parse_views(yaml.safe_load(source.read_text(encoding="utf-8")), str(source))


@lru_cache(maxsize=1)
def _profile_views() -> ViewCatalog:
    from alur.profile import profile_dir

    return load_views(profile_dir())


def view_of(case: Case, agency_type: AgencyType, catalog: ViewCatalog | None = None) -> dict[str, Any]:
    """The case as this agency type may see it, by `catalog` or else the profile's `views.yaml`."""
    return (catalog or _profile_views()).view_of(case, agency_type)
