"""Timer benchmark (issue 15 e): notify with many open referrals, each with its acknowledgement timer armed.

N delivered referral states are written straight into KV `referrals` with their timers as JetStream
schedules (as notify's own `track` leaves them, one hour out), notify is started on them, then F more
are written whose timers fall due over a few seconds. Measured: notify's resident memory (sampled all
along, auditor passes included), each due timer's lateness (its escalation event's stored time − the
timer's `fire_at`), and one auditor pass's walk of the bucket (each entry read and glanced at as the auditor
does, timed in this process). Run: `.venv/bin/python -m bench.bench_timers [--open N]`. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.js import JetStreamContext

from bench.bench_e2e import Expected, e2e_report, percentile
from bench.stack import broker, services
from contracts import subjects
from contracts.buckets import Bucket
from contracts.events import ReferralRequestedData
from contracts.vocab import ReferralStatus
from domain.escalation_policy import EscalationPolicy, load_policy
from runtime.bus import kv_entries
from runtime.profile import profile_dir
from services.notify.escalation import arm
from services.notify.state import ReferralState, StateGlance, apply, new_state
from services.routing.decide import decide
from services.routing.pack_tests import build_case

SCALE = 0.2
"""Notify's ALUR_SLA_SCALE here: its auditor passes every 12 s (60 s at scale 1), so passes fall in the window."""
AUDIT_PASSES = 2
"""How many auditor periods notify's memory is still sampled after the due timers fired."""


@dataclass
class TimersResult:
    open_referrals: int
    due_timers: int
    fired: int
    lateness_p50: float
    lateness_p99: float
    rss_ready_mb: float
    rss_max_mb: float
    auditor_pass_s: float
    state_bytes: int


class Seeder:
    """Referral states and their schedules, written the way notify's `track` writes them."""

    def __init__(self, js: JetStreamContext, policy: EscalationPolicy, request: ReferralRequestedData) -> None:
        self.js, self.policy, self.request = js, policy, request

    def state(self, i: int, due: datetime, now: datetime) -> ReferralState:
        past = now - timedelta(minutes=15)  # older than the auditor's republish window: no fact to repair
        request = self.request.model_copy(update={"referral_id": f"ref-{i:020x}", "due": due, "requested_at": past})
        return arm(apply(new_state(request, self.policy, past), ReferralStatus.DELIVERED, "system", at=past), now)

    async def write(self, state: ReferralState) -> None:
        timer = state.escalation.timer
        assert timer is not None
        await self.js.publish_async(f"$KV.{Bucket.REFERRALS}.{state.referral_id}", state.model_dump_json().encode())
        await self.js.publish_async(
            subjects.timer_schedule(state.referral_id, "next"), timer.model_dump_json().encode(),
            headers={"Nats-Schedule": f"@at {timer.fire_at.astimezone(UTC).isoformat()}",
                     "Nats-Schedule-Target": subjects.timer_fired(state.referral_id, timer.purpose),
                     "Nats-Msg-Id": f"timer:{timer.token}"})


async def run(open_referrals: int = 100_000, due_timers: int = 500, lead: float = 5.0, spread: float = 10.0,
              timeout: float = 180.0, audit_passes: int = AUDIT_PASSES) -> TimersResult:
    """Seed, start notify, let the due timers fire and the auditor pass `audit_passes` times; what it measured."""
    expected = Expected()
    now = datetime.now(UTC)
    case = build_case(e2e_report(0, "timers"))
    planned = decide(case, expected.pack, expected.registry, expected.views, now=now).referrals[0]
    policy = load_policy(profile_dir() / "escalation.yaml", scale=1.0)
    async with broker() as b:
        seeder = Seeder(b.js, policy, planned.to_event_data(expected.pack.version))
        template = seeder.state(0, now + timedelta(hours=1), now)
        for i in range(open_referrals):
            rid = f"ref-{i:020x}"
            timer = template.escalation.timer.model_copy(update={"referral_id": rid})  # type: ignore[union-attr]
            await seeder.write(template.model_copy(update={
                "referral_id": rid, "escalation": template.escalation.model_copy(update={"timer": timer})}))
        await b.js.publish_async_completed()
        async with services(b, ["notify"], env={"ALUR_SLA_SCALE": str(SCALE)}, timeout=timeout) as running:
            rss = [running.rss_mb("notify")]
            ready = rss[0]
            fired: dict[str, float] = {}

            async def on_escalation(msg: Any) -> None:
                fired.setdefault(json.loads(msg.data)["data"]["referral_id"], msg.metadata.timestamp.timestamp())

            subs = [await b.js.subscribe(f"alur.referral.{verb}.*", stream="REFERRALS", cb=on_escalation,
                                         ordered_consumer=True) for verb in ("reminded", "escalated")]
            start = datetime.now(UTC)
            due: dict[str, float] = {}
            for j in range(due_timers):
                state = seeder.state(open_referrals + j, start + timedelta(seconds=lead + spread * j / due_timers),
                                     datetime.now(UTC))
                due[state.referral_id] = state.escalation.timer.fire_at.timestamp()  # type: ignore[union-attr]
                await seeder.write(state)
            await b.js.publish_async_completed()
            deadline = time.monotonic() + lead + spread + timeout
            while len(fired.keys() & due.keys()) < len(due) and time.monotonic() < deadline:
                rss.append(running.rss_mb("notify"))
                await asyncio.sleep(0.5)  # sampling memory while the timers fire
            settled = time.monotonic() + audit_passes * 60 * SCALE
            while time.monotonic() < settled:  # and through auditor passes, which read the whole bucket
                rss.append(running.rss_mb("notify"))
                await asyncio.sleep(0.5)
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            started = time.perf_counter()
            walked = 0
            async for entry in kv_entries(b.js, Bucket.REFERRALS):  # as the auditor walks it
                if entry.value is not None:
                    StateGlance.model_validate_json(entry.value)
                    walked += 1
            auditor = time.perf_counter() - started
    lateness = [fired[r] - due[r] for r in due if r in fired] or [float("nan")]
    return TimersResult(open_referrals, due_timers, len(fired.keys() & due.keys()), percentile(lateness, 0.5),
                        percentile(lateness, 0.99), ready, max(rss), auditor,
                        len(template.model_dump_json()) if walked else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--open", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=500)
    args = parser.parse_args()
    print(json.dumps(asdict(asyncio.run(run(args.open, args.due))), indent=2))


if __name__ == "__main__":
    main()
