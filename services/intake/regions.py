"""Early detection of vulnerable areas: cases by regency, exploitation type and recruitment modus, per month.

`count(case)` names the counters one case adds to (the service may keep them in KV); `report(...)`
turns cases or counters into rows, leaving out every group smaller than `min_group` (DOMAIN.md:
aggregate reports suppress groups smaller than 10). No row names a case or a victim.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta, timezone

from contracts.events import Case
from contracts.vocab import REGENCY_NAMES, Regency

MIN_GROUP = 10
WITA = timezone(timedelta(hours=8), "WITA")
"""Kalimantan Selatan time (UTC+8, no daylight saving): months are counted as the province sees them."""

DIMENSION_ALL = "cases"
DIMENSION_EXPLOITATION = "exploitation"
DIMENSION_MODUS = "modus"
ALL = "all"
UNSPECIFIED = "unspecified"


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


def count(case: Case) -> list[str]:
    """The counter keys one case adds to: `<regency>.<dimension>.<value>.<YYYY-MM>`.

    e.g. `6371.cases.all.2026-11`, `6371.exploitation.forced_labour.2026-11`,
    `6371.modus.social_media_job_offer.2026-11`; the month is the registration month in WITA.
    """
    month = case.registered_at.astimezone(WITA).strftime("%Y-%m")
    regency = case.regency.value
    exploitation = [e.value for e in case.exploitation] or [UNSPECIFIED]
    return [
        f"{regency}.{DIMENSION_ALL}.{ALL}.{month}",
        *(f"{regency}.{DIMENSION_EXPLOITATION}.{e}.{month}" for e in exploitation),
        f"{regency}.{DIMENSION_MODUS}.{case.recruitment_modus.value}.{month}",
    ]


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
    valid: list[Case] = []
    for case in cases:
        if isinstance(case, Case):
            valid.append(case)
            continue
        try:
            valid.append(Case.model_validate(case))
        except ValueError:
            continue
    return [row.as_dict() for row in report(valid, min_group=min_group)]
