"""Open and overdue referrals per agency type, from notify's state in KV (not from what this process did).

`ReferralGauges` walks the whole `referrals` bucket at start (one entry at a time, keeping only each open
referral's standing) and then follows every change to it (`runtime.kv_follow`), so the gauges are right
after a restart and the same on every instance of notify. What counts is decided by the pure `standing`
(one referral) and `tally` (all of them, at a moment). A state this process has just written comes back
through the bucket as the same bytes: `Written` keeps its standing by those bytes, so following the
bucket does not parse it again.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError

from contracts.buckets import Bucket
from runtime.kv_follow import BucketFollower
from services.notify.context import NotifyContext
from services.notify.escalation import deadlines
from services.notify.state import ReferralState


@dataclass(frozen=True, slots=True)
class Standing:
    """What the gauges need of one open referral: its agency type and its earliest running deadline."""

    agency_type: str
    due: datetime | None


def standing(state: ReferralState) -> Standing | None:
    """The referral's standing, or None once it is terminal (it counts nowhere)."""
    if state.status.terminal:
        return None
    running = [d.due for d in deadlines(state)]
    return Standing(state.agency_type.value, min(running) if running else None)


def tally(standings: Iterable[Standing], now: datetime) -> tuple[dict[str, int], dict[str, int]]:
    """(open, overdue) referrals by agency type at `now`: overdue once a running deadline has passed."""
    open_by: Counter[str] = Counter()
    overdue_by: Counter[str] = Counter()
    for item in standings:
        open_by[item.agency_type] += 1
        if item.due is not None and item.due < now:
            overdue_by[item.agency_type] += 1
    return dict(open_by), dict(overdue_by)


class Written:
    """The standings of states this process just wrote, by key and exact bytes (a bounded, oldest-first map).

    A standing is a function of the state's bytes, so one found here for the same bytes is the standing a
    parse would give, whether or not that write was the one stored; a miss only costs the parse."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._by_key: OrderedDict[str, tuple[bytes, Standing | None]] = OrderedDict()

    def add(self, key: str, payload: bytes, state: ReferralState) -> None:
        """Remember the standing of `state`, about to be written under `key` as `payload`."""
        self._by_key[key] = (payload, standing(state))
        self._by_key.move_to_end(key)
        while len(self._by_key) > self.capacity:
            self._by_key.popitem(last=False)

    def take(self, key: str, value: bytes) -> tuple[bool, Standing | None]:
        """(True, its standing) when `value` is what this process wrote under `key` last; else (False, None)."""
        known = self._by_key.get(key)
        if known is None or known[0] != value:
            return False, None
        del self._by_key[key]
        return True, known[1]


class ReferralGauges:
    """Follows the `referrals` bucket and sets `alur_referrals_open` / `alur_referrals_overdue` at each scrape."""

    def __init__(self, ctx: NotifyContext, written: Written | None = None) -> None:
        self.ctx = ctx
        self.written = written or Written()
        self.standings: dict[str, Standing] = {}
        self.follower = BucketFollower(Bucket.REFERRALS, self._apply)

    def register(self) -> None:
        self.ctx.app.on_started(self._start)
        self.ctx.app.on_stopping(self.follower.stop)
        self.ctx.app.on_scrape(self._refresh)

    def _apply(self, key: str, value: bytes | None, _revision: int = 0) -> None:
        if not value:
            self.standings.pop(key, None)
            return
        known, found = self.written.take(key, value)
        if not known:
            try:
                found = standing(ReferralState.model_validate_json(value))
            except ValidationError:
                return
        if found is None:
            self.standings.pop(key, None)
        else:
            self.standings[key] = found

    async def _start(self) -> None:
        await self.follower.start(self.ctx.js)

    async def _refresh(self) -> None:
        self.ctx.app.metrics.referrals_now(*tally(self.standings.values(), self.ctx.now()))
