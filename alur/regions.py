"""Early detection of vulnerable areas: cases by regency, exploitation type and recruitment modus, per month.

`count(case)` names the counters one case adds to (the service may keep them in KV); `report(...)`
turns cases or counters into rows, leaving out every group smaller than `min_group` (DOMAIN.md:
aggregate reports suppress groups smaller than 10). No row names a case or a victim.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass

from contracts.events import Case, RegionFlaggedData
from contracts.vocab import REGENCY_NAMES, Regency
from domain.regions import (  # noqa: F401 - the counters' names, read here by the report
    ALL,
    DIMENSION_ALL,
    DIMENSION_EXPLOITATION,
    DIMENSION_MODUS,
    MIN_GROUP,
    UNSPECIFIED,
    WITA,
    checked_min_group,
    count,
    detect,
    first_month,
)


@dataclass(frozen=True, slots=True)
class RegionRow:
    """One group of the regions report: how many cases a regency had in a month, in one category."""

    month: str
    regency: str
    regency_name: str
    dimension: str
    value: str
    cases: int

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class RegionCounts:
    """Counters keyed as `count` names them; built from cases or from stored counters."""

    def __init__(self, counters: Mapping[str, int] | None = None) -> None:
        self.counters: Counter[str] = Counter(dict(counters or {}))

    @classmethod
    def of(cls, cases: Iterable[Case]) -> RegionCounts:
        counts = cls()
        for case in cases:
            counts.add(case)
        return counts

    def add(self, case: Case) -> None:
        self.counters.update(count(case))

    def rows(self, min_group: int = MIN_GROUP) -> list[RegionRow]:
        """Groups of at least `min_group` cases, by month, regency, dimension and value."""
        checked_min_group(min_group)
        rows = [row for key, n in self.counters.items() if n >= min_group and (row := _row(key, n)) is not None]
        return sorted(rows, key=lambda r: (r.month, r.regency, r.dimension != DIMENSION_ALL, r.dimension, r.value))


def report(source: Iterable[Case] | Mapping[str, int], min_group: int = MIN_GROUP) -> list[RegionRow]:
    """The rows of `alur report regions` from cases or from counters, small groups suppressed."""
    counts = RegionCounts(source) if isinstance(source, Mapping) else RegionCounts.of(source)
    return counts.rows(min_group)


def _row(key: str, cases: int) -> RegionRow | None:
    parts = key.split(".")
    if len(parts) != 4:
        return None
    code, dimension, value, month = parts
    try:
        regency = Regency(code)
    except ValueError:
        return None
    return RegionRow(
        month=month,
        regency=regency.value,
        regency_name=REGENCY_NAMES[regency],
        dimension=dimension,
        value=value,
        cases=cases,
    )


def regions_report(cases: Iterable[Case | Mapping[str, object]], min_group: int = MIN_GROUP) -> list[dict[str, object]]:
    """`alur report regions`: rows (as dicts) from registered cases as CASES holds them, small groups suppressed.

    A record that is not a valid case (an older or foreign shape) is left out rather than failing the report.
    """
    return [row.as_dict() for row in report(valid_cases(cases), min_group=min_group)]


def valid_cases(cases: Iterable[Case | Mapping[str, object]]) -> list[Case]:
    """The records that read as cases; any other shape is left out."""
    valid: list[Case] = []
    for case in cases:
        if isinstance(case, Case):
            valid.append(case)
            continue
        try:
            valid.append(Case.model_validate(case))
        except ValueError:
            continue
    return valid


def region_flags(cases: Iterable[Case], min_group: int = MIN_GROUP) -> list[RegionFlaggedData]:
    """The detector over these cases' history (it starts with the month of the earliest case)."""
    counts = RegionCounts.of(cases)
    since = first_month(counts.counters)
    return detect(counts.counters, since=since, min_group=min_group) if since else []
