"""Intake's early-warning consumer: counts each registered case into its regency's month and publishes
`alur.region.flagged.<regency>` when that month rises past the six before it (`domain.regions.detect`).

It reads CASES (`intake-regions`, its own facts) and keeps the counters in the `regions` bucket, one
`RegionMonth` per regency and month, written with compare-and-set. A case is counted once, however often
its registration is delivered or replayed (the month records a digest of each case counted), and a group
flags once a month: the figures are those of the case that tripped it. Aggregates only, never a case id.
Each instance holds the bucket's counts in a `RegionBook` (followed, and its own writes taken in at once),
so a case costs a read and a write of its own month rather than eight reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts import subjects
from contracts.buckets import Bucket
from contracts.catalog import REGION_FLAGGED
from contracts.envelope import CloudEvent, derived_id
from contracts.events import Case, CaseEventData, RegionFlaggedData
from contracts.records import RegionMonth
from contracts.vocab import Regency
from domain.regions import BASELINE_MONTHS, case_month, count, detect, month_shift
from runtime.app import ServiceApp
from runtime.bus import SafeError, key_value, publish, together
from runtime.kv_follow import BucketFollower
from runtime.message import Message

SINCE_KEY = "since"
CAS_ATTEMPTS = 10


class CountConflict(SafeError):
    """The regency's month kept changing under us; the redelivery counts again."""


def case_digest(case_id: str) -> str:
    """What a month records of a case it counted: enough to know it again, not its id."""
    return hashlib.sha256(case_id.encode()).hexdigest()[:16]


def month_key(regency: str, month: str) -> str:
    return f"{regency}.{month}"


def counted(record: RegionMonth, case: Case) -> RegionMonth:
    """`record` with `case` counted in (unchanged when it already was)."""
    digest = case_digest(case.case_id)
    if digest in record.seen:
        return record
    counts = dict(record.counts)
    for key in count(case):
        group = key.split(".", 1)[1].rsplit(".", 1)[0]  # <dimension>.<value>
        counts[group] = counts.get(group, 0) + 1
    return record.model_copy(update={"counts": counts, "seen": [*record.seen, digest]})


def counters(records: Sequence[RegionMonth | MonthCounts]) -> dict[str, int]:
    """Month records as the detector's counters (`<regency>.<dimension>.<value>.<YYYY-MM>`)."""
    return {f"{r.regency.value}.{group}.{r.month}": n for r in records for group, n in r.counts.items()}


def flag_event(flag: RegionFlaggedData) -> CloudEvent[RegionFlaggedData]:
    """The flag as an event; its id is the group's month, so a group flags once a month."""
    return CloudEvent[RegionFlaggedData].build(
        type=REGION_FLAGGED, source="intake", subject=flag.regency.value, data=flag,
        id=derived_id("region-flagged", flag.regency.value, flag.month, flag.dimension, flag.value),
    )


async def _update(kv: KeyValue, key: str, change: Callable[[RegionMonth | None], RegionMonth],
                  ) -> tuple[RegionMonth, int]:
    """Apply `change` to the record under `key` with compare-and-set; the record as stored after, and its
    revision."""
    for _ in range(CAS_ATTEMPTS):
        try:
            entry = await kv.get(key)
            current = RegionMonth.model_validate_json(entry.value or b"{}")
            new = change(current)
            if new == current:
                return new, entry.revision
            return new, await kv.update(key, new.model_dump_json().encode(), last=entry.revision)
        except KeyNotFoundError:
            new = change(None)
            try:
                return new, await kv.create(key, new.model_dump_json().encode())
            except KeyWrongLastSequenceError:
                continue
        except KeyWrongLastSequenceError:
            continue
    raise CountConflict(f"regions record {key} kept changing")


async def _since(kv: KeyValue, month: str) -> tuple[str, int]:
    """The first month counted (kept under `since`), moved back to `month` if it is later, and its revision:
    months before it are unknown, not zero."""
    for _ in range(CAS_ATTEMPTS):
        try:
            entry = await kv.get(SINCE_KEY)
            since = (entry.value or b"").decode()
            if since and since <= month:
                return since, entry.revision
            return month, await kv.update(SINCE_KEY, month.encode(), last=entry.revision)
        except KeyNotFoundError:
            try:
                return month, await kv.create(SINCE_KEY, month.encode())
            except KeyWrongLastSequenceError:
                continue
        except KeyWrongLastSequenceError:
            continue
    raise CountConflict("regions `since` kept changing")


async def _month(kv: KeyValue, regency: str, month: str) -> RegionMonth | None:
    try:
        entry = await kv.get(month_key(regency, month))
    except KeyNotFoundError:
        return None
    return RegionMonth.model_validate_json(entry.value) if entry.value else None


class MonthCounts(BaseModel):
    """What a judgement needs of a month: its counts, not the digests of the cases counted."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    regency: Regency
    month: str
    counts: dict[str, int] = Field(default_factory=dict)


class RegionBook:
    """The `regions` bucket's counts as they stand, in memory: followed from the bucket, and this process's
    own writes taken in at once (a write is kept only over an older revision of its key).

    It stands in for reading the six months before a case's month and `since` on every case: the month a
    case counts into is still read and written with compare-and-set."""

    def __init__(self) -> None:
        self.months: dict[str, tuple[int, MonthCounts]] = {}
        self.since: tuple[int, str] | None = None
        self.follower = BucketFollower(Bucket.REGIONS, self.apply)

    def apply(self, key: str, value: bytes | None, revision: int) -> None:
        """Take in one key's value at `revision` (None: deleted); an older revision than the one held is ignored."""
        if key == SINCE_KEY:
            if self.since is None or self.since[0] < revision:
                self.since = (revision, value.decode(errors="replace")) if value else None
            return
        if key in self.months and self.months[key][0] >= revision:
            return
        if not value:
            self.months.pop(key, None)
            return
        try:
            self.months[key] = (revision, MonthCounts.model_validate_json(value))
        except ValidationError:
            self.months.pop(key, None)

    def took(self, key: str, record: RegionMonth, revision: int) -> None:
        """This process stored `record` under `key` at `revision`."""
        if key not in self.months or self.months[key][0] < revision:
            self.months[key] = (revision, MonthCounts(regency=record.regency, month=record.month,
                                                      counts=record.counts))

    def took_since(self, since: str, revision: int) -> None:
        """This process read or stored `since` at `revision` (moving it back, the next case must see it)."""
        if self.since is None or self.since[0] < revision:
            self.since = (revision, since)

    def month(self, regency: str, month: str) -> MonthCounts | None:
        held = self.months.get(month_key(regency, month))
        return held[1] if held else None


async def tally(js: JetStreamContext, case: Case, say: Callable[[RegionFlaggedData], Awaitable[None]],
                book: RegionBook | None = None) -> list[RegionFlaggedData]:
    """Count `case` into its regency's month, judge that month, and `say` each flag not said before.

    The month's count is written with compare-and-set. The months before it and the first month counted
    (`since`) come from `book` when there is one; else they are read, side by side with the count. A
    `since` later than the case's month is moved back either way (`_since`, compare-and-set).

    A flag is recorded as said only after `say` returned, so a crash in between says it again (the
    event id makes JetStream drop the repeat)."""
    kv = await key_value(js, Bucket.REGIONS)
    regency, month = case.regency.value, case_month(case)
    key = month_key(regency, month)
    months = [month_shift(month, -k) for k in range(BASELINE_MONTHS, 0, -1)]
    count = _update(kv, key, lambda r: counted(r or RegionMonth(regency=case.regency, month=month), case))
    earlier: list[MonthCounts | RegionMonth | None]
    if book is None:
        (record, revision), (since, _), *earlier = await together(count, _since(kv, month),
                                                                   *(_month(kv, regency, m) for m in months))
    else:
        known = book.since[1] if book.since else None
        if known is not None and known <= month:
            record, revision = await count
            since = known
        else:
            (record, revision), (since, since_revision) = await together(count, _since(kv, month))
            book.took_since(since, since_revision)
        book.took(key, record, revision)
        earlier = [book.month(regency, m) for m in months]
    history = [r for r in earlier if r is not None]
    flags = detect(counters([*history, record]), since=since, months=[month], regencies=[regency])
    new = [f for f in flags if f"{f.dimension}.{f.value}" not in record.flagged]
    for flag in new:
        await say(flag)
    if new:
        groups = [f"{f.dimension}.{f.value}" for f in new]
        record, revision = await _update(kv, key, lambda r: (r or record).model_copy(
            update={"flagged": sorted({*(r or record).flagged, *groups})}))
        if book is not None:
            book.took(key, record, revision)
    return new


class RegionWatch:
    """The `intake-regions` consumer of one intake instance."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        self.log = app.log
        self.book = RegionBook()

    def register(self) -> None:
        self.app.on_started(self._start)
        self.app.on_stopping(self.book.follower.stop)
        self.app.subscriber("intake-regions", batch_size=1)(self.on_case)
        self.app.states(subjects.region_flagged(subjects.REGENCY_PARAM), REGION_FLAGGED, "A regency's month "
                        "rose past its own baseline (early warning); aggregates only, never a case id.")

    async def on_case(self, msg: Message) -> None:
        """Count one `alur.case.registered.<regency>` (intake's own fact); a body that is not a case event is
        skipped and logged."""
        try:
            case = CloudEvent[CaseEventData].model_validate_json(msg.raw_message.data).data.case
        except ValidationError:
            self.log.warning("region count skipped a message that is not a case event",
                             stream_seq=msg.raw_message.metadata.sequence.stream)
            return
        await tally(self.app.js, case, self._say, self.book)

    async def _start(self) -> None:
        await self.book.follower.start(self.app.js)

    async def _say(self, flag: RegionFlaggedData) -> None:
        ack = await publish(self.app.js, subjects.region_flagged(flag.regency), flag_event(flag))
        self.log.warning("region flagged", regency=flag.regency.value, month=flag.month,
                         dimension=flag.dimension, value=flag.value, cases=flag.cases,
                         upper_bound=flag.upper_bound, duplicate=bool(ack.duplicate))
