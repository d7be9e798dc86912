"""Early warning of vulnerable areas: monthly case counters by regency, and the detector that flags a rise.

A case adds to the counters `count(case)` names: `<regency>.<dimension>.<value>.<YYYY-MM>`, one for all
the regency's cases, one per exploitation type and one for the recruitment modus. `detect` reads them
as history: a group's month flags when it holds more cases than its own baseline explains — more than
the 97.5% quantile of a Poisson distribution whose mean is the group's average over the six months
before. A month with fewer than `MIN_GROUP` cases never flags, and a flag withholds its baseline figures
when the six months hold fewer than `MIN_GROUP` together (DOMAIN.md: aggregates never show a group
smaller than 10). Nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta, timezone

from contracts.events import Case, RegionFlaggedData
from contracts.vocab import REGENCY_NAMES, Regency

MIN_GROUP = 10
BASELINE_MONTHS = 6
LEVEL = 0.975
WITA = timezone(timedelta(hours=8), "WITA")
"""Kalimantan Selatan time (UTC+8, no daylight saving): months are counted as the province sees them."""

DIMENSION_ALL = "cases"
DIMENSION_EXPLOITATION = "exploitation"
DIMENSION_MODUS = "modus"
DIMENSIONS = (DIMENSION_ALL, DIMENSION_EXPLOITATION, DIMENSION_MODUS)
ALL = "all"
UNSPECIFIED = "unspecified"


class GroupTooSmall(ValueError):
    """A minimum group below `MIN_GROUP` was asked for: it would show groups the law keeps hidden."""

    def __init__(self, given: int) -> None:
        super().__init__(f"the smallest group shown must be at least {MIN_GROUP} (got {given}); smaller groups "
                         "could identify victims")


def checked_min_group(min_group: int) -> int:
    """`min_group` itself, or `GroupTooSmall` when it would turn the small-group suppression off."""
    if min_group < MIN_GROUP:
        raise GroupTooSmall(min_group)
    return min_group


def case_month(case: Case) -> str:
    """The month (`YYYY-MM`, WITA) a case counts in: the month it was registered."""
    return case.registered_at.astimezone(WITA).strftime("%Y-%m")


def count(case: Case) -> list[str]:
    """The counter keys one case adds to: `<regency>.<dimension>.<value>.<YYYY-MM>`.

    e.g. `6371.cases.all.2026-11`, `6371.exploitation.forced_labour.2026-11`,
    `6371.modus.social_media_job_offer.2026-11`; the month is the registration month in WITA.
    """
    month = case_month(case)
    regency = case.regency.value
    exploitation = [e.value for e in case.exploitation] or [UNSPECIFIED]
    return [
        f"{regency}.{DIMENSION_ALL}.{ALL}.{month}",
        *(f"{regency}.{DIMENSION_EXPLOITATION}.{e}.{month}" for e in exploitation),
        f"{regency}.{DIMENSION_MODUS}.{case.recruitment_modus.value}.{month}",
    ]


@dataclass(frozen=True, slots=True, order=True)
class Group:
    """One counted group: a regency, and all its cases or one exploitation type or modus there."""

    regency: str
    dimension: str
    value: str


def parse_key(key: str) -> tuple[Group, str] | None:
    """A counter key split into its group and month; None for a key that is not one."""
    parts = key.split(".")
    if len(parts) != 4 or parts[1] not in DIMENSIONS or not _is_month(parts[3]):
        return None
    try:
        regency = Regency(parts[0]).value
    except ValueError:
        return None
    return Group(regency, parts[1], parts[2]), parts[3]


def histories(counters: Mapping[str, int]) -> dict[Group, dict[str, int]]:
    """Counters regrouped: each group's cases by month."""
    out: dict[Group, dict[str, int]] = {}
    for key, n in counters.items():
        if (parsed := parse_key(key)) is not None:
            group, month = parsed
            out.setdefault(group, {})[month] = out.get(group, {}).get(month, 0) + n
    return out


def month_shift(month: str, by: int) -> str:
    """`month` moved by `by` months (negative: earlier)."""
    year, mon = int(month[:4]), int(month[5:7])
    index = year * 12 + (mon - 1) + by
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def months_between(first: str, last: str) -> list[str]:
    """Every month from `first` to `last`, both included."""
    months, month = [], first
    while month <= last:
        months.append(month)
        month = month_shift(month, 1)
    return months


def poisson_quantile(mean: float, level: float = LEVEL) -> int:
    """The smallest n with P(X ≤ n) ≥ `level` for X ~ Poisson(`mean`): the upper bound of its interval."""
    if mean <= 0:
        return 0
    cdf, n = 0.0, 0
    while True:
        cdf += math.exp(n * math.log(mean) - mean - math.lgamma(n + 1))
        if cdf >= level:
            return n
        n += 1


def flag_month(
    group: Group, history: Mapping[str, int], month: str, *, since: str, min_group: int = MIN_GROUP,
    level: float = LEVEL,
) -> RegionFlaggedData | None:
    """The flag of one group's month, or None: no baseline (history starts later than six months before
    `month`), fewer than `min_group` cases, or no more than the baseline explains."""
    checked_min_group(min_group)
    cases = history.get(month, 0)
    baseline = [month_shift(month, -k) for k in range(BASELINE_MONTHS, 0, -1)]
    if cases < min_group or baseline[0] < since:
        return None
    total = sum(history.get(m, 0) for m in baseline)
    mean = total / BASELINE_MONTHS
    upper = poisson_quantile(mean, level)
    if cases <= upper:
        return None
    shown = total >= min_group
    return RegionFlaggedData(
        regency=Regency(group.regency), regency_name=REGENCY_NAMES[Regency(group.regency)], month=month,
        dimension=group.dimension, value=group.value, cases=cases,  # type: ignore[arg-type]
        baseline_months=baseline,
        baseline_cases=total if shown else None,
        baseline_mean=round(mean, 2) if shown else None,
        upper_bound=upper if shown else None,
        level=level, min_group=min_group,
    )


def detect(
    counters: Mapping[str, int], *, since: str, months: Iterable[str] | None = None,
    regencies: Iterable[str] | None = None, min_group: int = MIN_GROUP, level: float = LEVEL,
) -> list[RegionFlaggedData]:
    """Every flag the counters hold: each group's months (or only `months`, only in `regencies`) that rose
    past their baseline. `since` is the first month the history covers; earlier months are unknown, not
    zero, so a month whose baseline reaches before it is never judged. Ordered by month, regency, group."""
    checked_min_group(min_group)
    wanted_months = set(months) if months is not None else None
    wanted_regencies = set(regencies) if regencies is not None else None
    flags = []
    for group, history in sorted(histories(counters).items()):
        if wanted_regencies is not None and group.regency not in wanted_regencies:
            continue
        for month in sorted(history):
            if wanted_months is not None and month not in wanted_months:
                continue
            flag = flag_month(group, history, month, since=since, min_group=min_group, level=level)
            if flag is not None:
                flags.append(flag)
    return sorted(flags, key=lambda f: (f.month, f.regency.value, f.dimension != DIMENSION_ALL, f.dimension,
                                        f.value))


def first_month(counters: Mapping[str, int]) -> str | None:
    """The earliest month the counters hold, or None when they hold none."""
    months = [parsed[1] for key in counters if (parsed := parse_key(key)) is not None]
    return min(months) if months else None


def _is_month(text: str) -> bool:
    return len(text) == 7 and text[4] == "-" and text[:4].isdigit() and text[5:].isdigit() and 1 <= int(text[5:]) <= 12
