"""`alur report regions --plot FILE.png`: cases per regency over months, with the detector's flags marked.

The picture the task force shows at its meeting, so it keeps the report's rule: a month with fewer than
`min_group` cases in a regency is not drawn as a number (the shaded band says "fewer than 10"), and a
flag names its group, never a case. Drawn with matplotlib's headless Agg backend: no display needed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from contracts.events import RegionFlaggedData
from contracts.vocab import REGENCY_NAMES, Regency
from domain.regions import (
    DIMENSION_ALL,
    MIN_GROUP,
    checked_min_group,
    histories,
    months_between,
)


def plot_regions(path: Path, counters: Mapping[str, int], flags: list[RegionFlaggedData],
                 min_group: int = MIN_GROUP) -> int:
    """Write the PNG to `path`; returns how many regencies it draws (those with a month of `min_group`+)."""
    checked_min_group(min_group)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    totals = {g.regency: h for g, h in histories(counters).items() if g.dimension == DIMENSION_ALL}
    shown = {r: h for r, h in sorted(totals.items()) if any(n >= min_group for n in h.values())}
    all_months = sorted({m for h in totals.values() for m in h})
    months = months_between(all_months[0], all_months[-1]) if all_months else []
    fig, ax = plt.subplots(figsize=(max(8.0, 0.6 * len(months) + 4), 5.5), dpi=110)
    try:
        ax.axhspan(0, min_group, color="0.92", zorder=0, label=f"fewer than {min_group} cases (not shown)")
        for regency, history in shown.items():
            # a hidden month is a gap in the line, not a point drawn between its neighbours
            ys = [float(n) if (n := history.get(m, 0)) >= min_group else math.nan for m in months]
            ax.plot(range(len(months)), ys, marker="o", linewidth=1.5,
                    label=f"{regency} {REGENCY_NAMES[Regency(regency)]}")
            for flag in (f for f in flags if f.regency.value == regency and f.month in months):
                x = months.index(flag.month)
                y = history.get(flag.month, flag.cases) if flag.dimension == DIMENSION_ALL else flag.cases
                ax.scatter([x], [y], marker="^", s=140, color="crimson", edgecolors="black", zorder=5)
                what = "all cases" if flag.dimension == DIMENSION_ALL else f"{flag.value}"
                ax.annotate(f"flag: {what} ({flag.cases})", (x, y), textcoords="offset points", xytext=(6, 8),
                            fontsize=7, color="crimson")
        ax.scatter([], [], marker="^", s=140, color="crimson", edgecolors="black", label="flagged: above baseline")
        ax.set_xticks(range(len(months)), months, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel("cases registered in the month")
        ax.set_ylim(bottom=0)
        ax.set_title("TPPO cases per regency by month, with early-warning flags")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return len(shown)
