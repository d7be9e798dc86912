"""Need-to-know views: which fields of a case each agency type may see (DOMAIN.md, UU 27/2022 PDP).

The profile's `views.yaml` declares the allowed field paths per agency type; a view copies those paths
and nothing else. Loading refuses a catalogue that misses an agency type, names a path the case does
not have, or breaks one of the `NEVER` limits below, which DOMAIN.md sets and no profile may lift
(`COORDINATOR_ONLY` paths are in every type's limits).
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from contracts.events import Case
from contracts.vocab import AgencyType, Need

IDENTITY = "victim.identity"
NARRATIVE = "narrative"
POSSIBLE_DUPLICATES = "possible_duplicates"

COORDINATOR_ONLY = frozenset({POSSIBLE_DUPLICATES})
"""Paths no agency type's view may carry, nor `always`. Duplicate flags link a victim's cases across
agencies by NIK: in a view they would tell any agency that can make up a report which other agencies hold
cases for a NIK (issue 17). They are for the coordinator's review only, whose tools (`alur status`, the
board) read intake's `matches` bucket, never a referral."""

_NEVER_PER_TYPE: dict[AgencyType, frozenset[str]] = {
    AgencyType.EDUCATION: frozenset({IDENTITY, NARRATIVE}),
    AgencyType.LABOUR: frozenset({IDENTITY, NARRATIVE}),
    AgencyType.GT_SECRETARIAT: frozenset({IDENTITY, NARRATIVE}),
    AgencyType.HEALTH: frozenset({NARRATIVE}),
}

NEVER: dict[AgencyType, frozenset[str]] = {t: COORDINATOR_ONLY | _NEVER_PER_TYPE.get(t, frozenset()) for t in AgencyType}
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


def _parents_and_leaf(path: str) -> tuple[tuple[str, ...], str]:
    *parents, leaf = path.split(".")
    return tuple(parents), leaf


@dataclass(frozen=True, slots=True)
class _Plan:
    """How `project` builds one agency type's view: the paths split once (parents, leaf), the needs it
    may show."""

    paths: tuple[tuple[tuple[str, ...], str], ...]
    needs_only: frozenset[str] | None


class ViewCatalog(BaseModel):
    """Every agency type's view, plus the paths every view carries."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    always: list[str]
    views: dict[AgencyType, View]
    _plans: dict[AgencyType, _Plan] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any, /) -> None:
        """Derive each view's `_Plan` once, as the catalogue is frozen."""
        self._plans = {
            agency_type: _Plan(
                paths=tuple(_parents_and_leaf(path) for path in self.paths_for(agency_type)),
                needs_only=None if view.needs_only is None else frozenset(n.value for n in view.needs_only),
            )
            for agency_type, view in self.views.items()
        }

    @property
    def plans(self) -> Mapping[AgencyType, _Plan]:
        """Per agency type, how `project` builds its view (read once per decision by `CaseViews`)."""
        return self._plans

    def paths_for(self, agency_type: AgencyType) -> list[str]:
        """The paths an agency type sees, `always` first, without repeats."""
        return list(dict.fromkeys([*self.always, *self.views[agency_type].fields]))

    def view_of(self, case: Case, agency_type: AgencyType) -> dict[str, Any]:
        """The case as this agency type may see it: only the declared paths."""
        return self.project(case.model_dump(mode="json"), agency_type)

    def project(self, dumped: Mapping[str, Any], agency_type: AgencyType) -> dict[str, Any]:
        """`view_of` on an already dumped case (`case.model_dump(mode="json")`), to dump once per decision.

        The view shares nested values with `dumped`: treat both as read-only.
        """
        return _project(dumped, self._plans[agency_type])


class CaseViews:
    """One case's views for one decision: the case is dumped on first use and each agency type's view
    projected once, however many referrals go to that type.

    Each `of` is a fresh top-level dict; nested values are shared with the other referrals of the
    decision (read-only, as `ViewCatalog.project` says).
    """

    def __init__(self, catalog: ViewCatalog, case: Case) -> None:
        self._plans = catalog.plans
        self._case = case
        self._dumped: dict[str, Any] | None = None
        self._projected: dict[AgencyType, dict[str, Any]] = {}

    def of(self, agency_type: AgencyType) -> dict[str, Any]:
        """The case as `agency_type` may see it."""
        view = self._projected.get(agency_type)
        if view is None:
            if self._dumped is None:
                self._dumped = self._case.model_dump(mode="json")
            view = self._projected[agency_type] = _project(self._dumped, self._plans[agency_type])
        return dict(view)


def _project(dumped: Mapping[str, Any], plan: _Plan) -> dict[str, Any]:
    view: dict[str, Any] = {}
    for parents, leaf in plan.paths:
        if parents:
            _copy_path(dumped, view, parents, leaf)
        elif leaf in dumped:  # a top-level path, most of them: `_copy_path` without the call
            view[leaf] = dumped[leaf]
    if plan.needs_only is not None and isinstance(view.get("needs"), list):
        view["needs"] = [n for n in view["needs"] if n in plan.needs_only]
    return view


def _copy_path(source: Mapping[str, Any], target: dict[str, Any], parents: tuple[str, ...], leaf: str) -> None:
    """Copy `parents.leaf` from `source` into `target`, creating the parent dicts; a missing part copies
    nothing, a null parent is copied as null."""
    for part in parents:
        if part not in source:
            return
        value = source[part]
        if not isinstance(value, Mapping):
            if value is None:
                target.setdefault(part, None)
            return
        source, target = value, target.setdefault(part, {})
    if leaf in source:
        target[leaf] = source[leaf]


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
        for forbidden in COORDINATOR_ONLY:
            if _covers(path, forbidden):
                problems.append(f"always: no view may carry `{forbidden}` (the coordinator's review reads it)")
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
