"""Early warning of vulnerable areas: the detector over synthetic history (no broker), and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from alur.regions_plot import plot_regions
from contracts.buckets import Bucket
from contracts.events import RegionFlaggedData
from contracts.records import RegionMonth
from domain.regions import (
    MIN_GROUP,
    GroupTooSmall,
    detect,
    month_shift,
    months_between,
    poisson_quantile,
)
from runtime.provision import provision
from services.intake.regions import RegionBook, tally
from tests.conftest import synthetic_case
from tests.support import wait_for

MONTHS = months_between("2026-01", "2026-12")


def history(regency: str, monthly: list[int], dimension: str = "cases", value: str = "all") -> dict[str, int]:
    return {f"{regency}.{dimension}.{value}.{m}": n for m, n in zip(MONTHS, monthly, strict=False) if n}


def test_poisson_quantile_is_the_upper_bound_of_the_central_95_interval() -> None:
    assert poisson_quantile(0) == 0
    assert poisson_quantile(10) == 17  # P(X <= 16 | 10) = 0.973, P(X <= 17 | 10) = 0.986
    assert poisson_quantile(2.5) == 6
    assert poisson_quantile(500) > 540  # large means do not underflow


def test_a_regency_rising_past_its_baseline_flags_with_its_figures_and_a_steady_one_does_not() -> None:
    rising = [12, 10, 14, 11, 13, 12, 30]  # mean 12, bound 19: July's 30 trips it
    steady = [15, 17, 14, 16, 15, 16, 19]  # mean 15.5, bound 24: 19 is within it
    counters = {**history("6371", rising), **history("6372", steady),
                **history("6371", [0, 0, 0, 0, 0, 0, 12], "modus", "social_media_job_offer")}

    flags = detect(counters, since="2026-01")

    assert [(f.regency.value, f.dimension, f.value, f.month) for f in flags] == [
        ("6371", "cases", "all", "2026-07"), ("6371", "modus", "social_media_job_offer", "2026-07")]
    total, modus = flags
    assert (total.cases, total.baseline_cases, total.baseline_mean, total.upper_bound) == (30, 72, 12.0, 19)
    assert total.baseline_months == MONTHS[:6] and total.regency_name == "Kota Banjarmasin"
    # a new modus: its baseline (no case in six months) is below 10, so its figures are withheld
    assert (modus.cases, modus.baseline_cases, modus.baseline_mean, modus.upper_bound) == (12, None, None, None)


def test_no_group_under_ten_ever_flags_however_sharp_the_rise() -> None:
    counters = history("6309", [0, 0, 0, 0, 0, 0, 9, 1, 0, 0, 0, 0])

    assert detect(counters, since="2026-01") == []


def test_a_month_without_six_months_of_history_before_it_is_not_judged() -> None:
    counters = history("6371", [0, 0, 0, 0, 0, 40, 40, 0, 0, 0, 0, 0])

    assert detect(counters, since="2026-02") == []  # June's and July's baselines reach before February
    assert [f.month for f in detect(counters, since="2026-01")] == ["2026-07"]


def test_detect_can_be_asked_for_one_regency_and_month() -> None:
    counters = {**history("6371", [0] * 6 + [20]), **history("6372", [0] * 6 + [20])}

    flags = detect(counters, since="2026-01", months=["2026-07"], regencies=["6372"])

    assert [(f.regency.value, f.month) for f in flags] == [("6372", "2026-07")]


def test_the_minimum_group_cannot_go_below_ten() -> None:
    with pytest.raises(GroupTooSmall, match="at least 10"):
        detect({}, since="2026-01", min_group=9)


def test_month_arithmetic_crosses_years() -> None:
    assert month_shift("2026-01", -6) == "2025-07"
    assert month_shift("2025-12", 1) == "2026-01"
    assert months_between("2025-11", "2026-02") == ["2025-11", "2025-12", "2026-01", "2026-02"]


@given(st.lists(st.integers(0, 60), min_size=7, max_size=12), st.integers(MIN_GROUP, 20))
def test_every_flag_rises_past_its_bound_and_shows_no_group_under_the_minimum(
    monthly: list[int], min_group: int,
) -> None:
    counters = history("6371", monthly)

    flags = detect(counters, since="2026-01", min_group=min_group)

    for flag in flags:
        i = MONTHS.index(flag.month)
        baseline = sum(monthly[i - 6:i])
        assert flag.cases == monthly[i] >= min_group
        assert monthly[i] > poisson_quantile(baseline / 6)
        shown = [flag.cases, *(v for v in (flag.baseline_cases,) if v is not None)]
        assert all(n >= min_group for n in shown)
        assert (flag.baseline_cases is None) == (baseline < min_group) == (flag.upper_bound is None)
        RegionFlaggedData.model_validate(json.loads(flag.model_dump_json()))
    judged = {f.month for f in flags}
    for i in range(6, len(monthly)):
        expected = monthly[i] >= min_group and monthly[i] > poisson_quantile(sum(monthly[i - 6:i]) / 6)
        assert (MONTHS[i] in judged) == expected


# ---------------------------------------------------------------- intake's consumer side, against a real broker

@pytest.mark.parametrize(("with_book", "another_instance_wrote_the_history"),
                         [(False, False), (True, False), (True, True)],
                         ids=["reading-the-bucket", "with-a-book", "with-a-book-following-another-instance"])
async def test_tally_counts_each_case_once_and_flags_a_group_once_a_month(
    nc: Client, with_book: bool, another_instance_wrote_the_history: bool,
) -> None:
    """The same judgement whether the months before are read on each case or held in a `RegionBook`, and
    whether the book took them in as this process wrote them or from the bucket (another instance)."""
    js = nc.jetstream(timeout=10)
    await provision(js)
    said: list[RegionFlaggedData] = []
    book = RegionBook() if with_book else None
    if book:
        await book.follower.start(js)
    history_book = None if another_instance_wrote_the_history else book

    async def say(flag: RegionFlaggedData) -> None:
        said.append(flag)

    try:
        for month, n in zip(MONTHS[:6], [11, 12, 10, 13, 11, 12], strict=True):  # a steady Banjarmasin
            for i in range(n):
                await tally(js, synthetic_case(i, "6371", month), say, history_book)
        for i in range(12):  # and a steady Banjarbaru that stays within its bound in July
            for month in MONTHS[:7]:
                await tally(js, synthetic_case(i, "6372", month, modus="sponsor_calo"), say, history_book)
        assert said == []
        if book and another_instance_wrote_the_history:
            await wait_for(lambda: (m := book.month("6371", MONTHS[5])) is not None and m.counts["cases.all"] == 12)

        july = [synthetic_case(i, "6371", "2026-07") for i in range(30)]
        for case in july:
            await tally(js, case, say, book)
        for case in july[:5]:  # redelivered or replayed registrations count nothing and flag nothing again
            assert await tally(js, case, say, book) == []
    finally:
        if book:
            await book.follower.stop()

    assert {(f.regency.value, f.dimension, f.value) for f in said} == {
        ("6371", "cases", "all"), ("6371", "exploitation", "online_scam"),
        ("6371", "modus", "social_media_job_offer")}
    assert all(f.month == "2026-07" and f.upper_bound == 19 for f in said)
    assert [f.cases for f in said] == [20, 20, 20]  # the figures of the case that tripped each group
    record = RegionMonth.model_validate_json((await (await js.key_value(Bucket.REGIONS)).get("6371.2026-07")).value)
    assert record.counts["cases.all"] == 30 and len(record.seen) == 30
    assert not any(case.case_id in record.model_dump_json() for case in july)


def test_the_plot_draws_regencies_with_groups_of_ten_and_marks_the_flags(tmp_path: Path) -> None:
    counters = {**history("6371", [12, 10, 14, 11, 13, 12, 30]), **history("6372", [15, 17, 14, 16, 15, 16, 19]),
                **history("6309", [3, 1, 0, 2, 4, 1, 9])}  # Tabalong never has ten in a month: not drawn
    flags = detect(counters, since="2026-01")
    out = tmp_path / "regions.png"

    drawn = plot_regions(out, counters, flags)

    assert drawn == 2 and [f.regency.value for f in flags] == ["6371"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(GroupTooSmall):
        plot_regions(tmp_path / "small.png", counters, flags, min_group=5)


def test_a_book_keeps_the_latest_revision_of_each_month() -> None:
    book = RegionBook()
    newer = RegionMonth(regency="6371", month="2026-07", counts={"cases.all": 3})
    book.took("6371.2026-07", newer, 9)
    book.apply("6371.2026-07", newer.model_copy(update={"counts": {"cases.all": 2}}).model_dump_json().encode(), 8)
    assert book.month("6371", "2026-07").counts == {"cases.all": 3}, "an older revision arriving late is ignored"
    book.apply("6371.2026-07", None, 10)
    assert book.month("6371", "2026-07") is None
    book.apply("since", b"2026-01", 4)
    book.apply("since", b"2026-03", 3)
    assert book.since == (4, "2026-01")


async def test_a_book_that_moves_since_back_knows_it_before_its_follow_does(nc: Client) -> None:
    """A later case must be judged from the `since` an earlier-month case just moved back, even when the
    bucket's follow has not delivered that write yet (here the book follows nothing)."""
    js = nc.jetstream(timeout=10)
    await provision(js)
    book = RegionBook()

    async def say(flag: RegionFlaggedData) -> None:
        raise AssertionError(f"nothing flags here: {flag}")

    await tally(js, synthetic_case(0, "6371", "2026-05"), say, book)
    assert book.since is not None and book.since[1] == "2026-05"
    await tally(js, synthetic_case(1, "6371", "2026-03"), say, book)
    stored = await (await js.key_value(Bucket.REGIONS)).get("since")
    assert stored.value == b"2026-03" and book.since == (stored.revision, "2026-03")
