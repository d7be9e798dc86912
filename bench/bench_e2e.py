"""End-to-end benchmark: reports through the real intake, routing and notify (each its own process) until every
case has all its referrals, against a bare nats-py pipeline of the same shape on the same broker, same run.

- burst: N reference-like reports published at once (`publish_async`); the time from the first publish to
  the last referral stored gives cases/s and referrals/s. "Delivered" is when notify has tracked all of
  them (each Kalsel agency reads its own consumer, so tracking marks it delivered).
- bare: report → case → K referrals through two JetStream hops (a pull consumer each, JSON parse, every
  publish awaited for its ack, then the message acked), K being the number Alur makes for that report.
- steady: reports paced at a rate for some seconds; latency per case = its last referral's stored time
  minus the report's send time (one machine, one clock): p50, p99. A ladder of rates finds the highest
  one with p99 under the target.

Times come from the broker's own stored timestamps (JetStream metadata), not from when this process read
them. Run: `.venv/bin/python -m bench.bench_e2e [--reports N]`. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

from bench.bench_messaging import REPORTER, bench_report
from bench.stack import CASE_KEY, Broker, Services, broker, cpu_seconds, services
from domain.cases import case_id_for
from runtime.profile import load_registry_file, profile_dir
from services.routing.decide import decide
from services.routing.pack_tests import build_case
from services.routing.rules import load_pack
from services.routing.views import load_views

P99_TARGET = 0.250
BARE_STREAM = "BENCH"


def e2e_report(i: int, tag: str) -> dict[str, Any]:
    """A valid reference-like report with its own ids and invented identity (`tag` keeps runs apart)."""
    report = bench_report(i)
    report["data"]["victim"]["age"] = 16 + i % 30
    report["data"]["report_ref"] = f"E2E-{tag}-{i:06d}"
    return report


class Expected:
    """How many referrals Alur makes for each report: the pure `decide` on the case intake would build."""

    def __init__(self) -> None:
        self.pack = load_pack(profile_dir())
        self.registry = load_registry_file()
        self.views = load_views(profile_dir())
        self._memo: dict[tuple[Any, ...], int] = {}

    def referrals(self, report: dict[str, Any]) -> int:
        data = report["data"]
        shape = (data["location"]["regency"], data["victim"]["age"], data["victim"]["sex"])
        if shape not in self._memo:
            case = build_case(report)
            self._memo[shape] = len(decide(case, self.pack, self.registry, self.views, now=datetime.now(UTC)).referrals)
        return self._memo[shape]


def case_of(report: dict[str, Any]) -> str:
    return case_id_for(REPORTER, report["data"]["report_ref"], key=CASE_KEY.encode())


@dataclass
class Progress:
    """Referrals seen per case (by stored time) until each case has as many as expected."""

    expected: dict[str, int]
    seen: dict[str, int] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    complete: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, case_id: str, stored: float) -> None:
        if case_id not in self.expected:
            return
        count = self.seen.get(case_id, 0) + 1
        self.seen[case_id] = count
        self.last[case_id] = max(self.last.get(case_id, 0.0), stored)
        if count == self.expected[case_id]:
            self.complete += 1
            if self.complete == len(self.expected):
                self.done.set()

    def status(self) -> str:
        return f"{self.complete}/{len(self.expected)} cases complete, {sum(self.seen.values())} referrals seen"


async def watch(js: JetStreamContext, subject: str, stream: str, on_msg: Callable[[str, float], None]) -> Any:
    """An ordered consumer on new messages of `subject`, calling `on_msg(case_id, stored unix time)`."""

    async def handle(msg: Msg) -> None:
        data = json.loads(msg.data).get("data", {})
        on_msg(data.get("case_id", ""), msg.metadata.timestamp.timestamp())

    return await js.subscribe(subject, stream=stream, cb=handle, ordered_consumer=True,
                              deliver_policy=DeliverPolicy.NEW)


async def until_done(progress: Progress, timeout: float, what: str, alive: Callable[[], str | None], *,
                     required: bool = True) -> bool:
    """Whether every case completed within `timeout`; if not and `required`, raise saying how far it got."""
    deadline = time.monotonic() + timeout
    while not progress.done.is_set():
        if (dead := alive()) is not None:
            raise RuntimeError(f"{what}: {dead} died; {progress.status()}")
        if time.monotonic() > deadline:
            if required:
                raise RuntimeError(f"{what}: not done after {timeout:.0f} s; {progress.status()}")
            print(f"{what}: not done after {timeout:.0f} s; {progress.status()}", file=sys.stderr)
            return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(progress.done.wait(), 1.0)
    return True


@dataclass
class Burst:
    what: str
    cases: int
    referrals: int
    seconds: float
    delivered_seconds: float | None = None
    """When notify had tracked (delivered) every referral; None if it had not within the timeout."""
    delivered_cases: int | None = None
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds (user + system) each process spent from the first publish until the run was over (Alur:
    every referral delivered, or the timeout): the services, the bench's own process, the broker."""

    @property
    def cases_per_s(self) -> float:
        return self.cases / self.seconds

    @property
    def referrals_per_s(self) -> float:
        return self.referrals / self.seconds


@dataclass
class Steady:
    rate: float
    seconds: float
    cases: int
    p50: float
    p99: float


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def publish_burst(js: JetStreamContext, subject: str, reports: Sequence[dict[str, Any]]) -> float:
    """Publish every report at once (acks collected at the end); the wall time just before the first."""
    started = time.time()
    for report in reports:
        await js.publish_async(subject, json.dumps(report).encode(), headers={"Nats-Msg-Id": report["id"]})
    await js.publish_async_completed()
    return started


class CpuMeter:
    """CPU seconds spent since it was made, by the services (if any), this process and the broker."""

    def __init__(self, b: Broker, running: Services | None = None) -> None:
        self.b, self.running = b, running
        self.start = self._now()

    def _now(self) -> dict[str, float]:
        own = time.process_time()
        services = self.running.cpu_s() if self.running else {}
        server = self.b.server.process
        assert server is not None, "the broker runs"
        return {**services, "bench process": own, "nats-server": cpu_seconds(server.pid)}

    def spent(self) -> dict[str, float]:
        now = self._now()
        return {name: round(now[name] - self.start[name], 2) for name in now}


class Alur:
    """The real services on a broker, with watches on what they state."""

    def __init__(self, b: Broker, running: Services, expected: Expected) -> None:
        self.b, self.running, self.expected = b, running, expected

    async def run(self, reports: Sequence[dict[str, Any]], send: Callable[[], Any], what: str,
                  timeout: float) -> tuple[Progress, Progress]:
        counts = {case_of(r): self.expected.referrals(r) for r in reports}
        requested, delivered = Progress(counts), Progress(dict(counts))
        subs = [await watch(self.b.js, "alur.referral.requested.*", "REFERRALS", requested.add),
                await watch(self.b.js, "alur.referral.delivered.*", "REFERRALS", delivered.add)]
        try:
            await send()
            await until_done(requested, timeout, what, self.running.dead)
            await until_done(delivered, timeout, what + " (delivered)", self.running.dead, required=False)
        finally:
            for sub in subs:
                await sub.unsubscribe()
        return requested, delivered

    async def burst(self, reports: Sequence[dict[str, Any]], timeout: float) -> Burst:
        started: list[float] = []

        async def send() -> None:
            started.append(await publish_burst(self.b.js, f"alur.report.{REPORTER}", reports))

        cpu = CpuMeter(self.b, self.running)
        requested, delivered = await self.run(reports, send, "alur burst", timeout)
        all_delivered = delivered.done.is_set()
        return Burst("alur", len(reports), sum(requested.seen.values()), max(requested.last.values()) - started[0],
                     max(delivered.last.values()) - started[0] if all_delivered else None,
                     delivered_cases=delivered.complete, cpu=cpu.spent())

    async def steady(self, rate: float, seconds: float, tag: str, timeout: float) -> Steady:
        reports = [e2e_report(i, tag) for i in range(max(1, round(rate * seconds)))]
        sent: dict[str, float] = {}

        async def send() -> None:
            start = time.monotonic()
            for i, report in enumerate(reports):
                if (wait := start + i / rate - time.monotonic()) > 0:
                    await asyncio.sleep(wait)  # pacing the load, not waiting for an outcome
                sent[case_of(report)] = time.time()
                await self.b.js.publish_async(f"alur.report.{REPORTER}", json.dumps(report).encode(),
                                              headers={"Nats-Msg-Id": report["id"]})
            await self.b.js.publish_async_completed()

        requested, _ = await self.run(reports, send, f"alur steady {rate}/s", timeout)
        latencies = [requested.last[c] - sent[c] for c in sent]
        return Steady(rate, seconds, len(reports), percentile(latencies, 0.5), percentile(latencies, 0.99))


async def bare_pipeline(b: Broker, reports: Sequence[dict[str, Any]], expected: Expected, timeout: float,
                        tag: str) -> Burst:
    """The same shape in bare nats-py: report → case → K referrals, two hops, each publish awaited."""
    js = b.js
    with contextlib.suppress(Exception):
        await js.add_stream(StreamConfig(name=BARE_STREAM, subjects=["bench.>"], duplicate_window=600))
    fanout = {r["data"]["report_ref"]: expected.referrals(r) for r in reports}
    counts = {case_of(r): fanout[r["data"]["report_ref"]] for r in reports}
    progress = Progress(counts)

    async def stage(durable: str, subject: str, work: Callable[[dict[str, Any], bytes], Any]) -> None:
        await js.add_consumer(BARE_STREAM, ConsumerConfig(
            durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL, max_ack_pending=10_000))
        sub = await js.pull_subscribe_bind(durable, BARE_STREAM)
        while True:
            try:
                msgs = await sub.fetch(100, timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                await work(json.loads(msg.data), msg.data)
                await msg.ack()

    async def to_case(event: dict[str, Any], _: bytes) -> None:
        data = event["data"]
        case_id = case_id_for(REPORTER, data["report_ref"], key=CASE_KEY.encode())
        case = {**event, "id": f"case-{event['id']}", "data": {"case_id": case_id, "case": data,
                                                               "referrals": fanout[data["report_ref"]]}}
        await js.publish(f"bench.case.{data['location']['regency']}", json.dumps(case).encode(),
                         headers={"Nats-Msg-Id": case["id"]}, timeout=5)

    async def to_referrals(event: dict[str, Any], _: bytes) -> None:
        data = event["data"]
        for k in range(data["referrals"]):
            referral = {**event, "id": f"ref-{k}-{event['id']}", "data": {"case_id": data["case_id"], "k": k,
                                                                        "case": data["case"]}}
            await js.publish(f"bench.referral.requested.a{k}", json.dumps(referral).encode(),
                             headers={"Nats-Msg-Id": referral["id"]}, timeout=5)

    sub = await watch(js, "bench.referral.requested.*", BARE_STREAM, progress.add)
    cpu = CpuMeter(b)
    stages = [asyncio.create_task(stage(f"bare-case-{tag}", "bench.report.*", to_case)),
              asyncio.create_task(stage(f"bare-ref-{tag}", "bench.case.*", to_referrals))]
    try:
        started = await publish_burst(js, f"bench.report.{REPORTER}", reports)
        await until_done(progress, timeout, "bare pipeline",
                         lambda: next((f"stage {t.get_name()}" for t in stages if t.done()), None))
    finally:
        for task in stages:
            task.cancel()
        await asyncio.gather(*stages, return_exceptions=True)
        await sub.unsubscribe()
    return Burst("bare nats-py", len(reports), sum(progress.seen.values()), max(progress.last.values()) - started,
                 cpu=cpu.spent())


@dataclass
class E2EResult:
    """Everything one end-to-end run measured (what `bench/results.json` holds under `e2e`)."""

    reports: int
    bare: Burst
    alur: Burst
    steady: list[Steady]
    highest_rate_p99_ok: float | None
    sync_always: dict[str, Burst] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.alur.cases_per_s / self.bare.cases_per_s

    def to_json(self) -> dict[str, Any]:
        def burst(b: Burst) -> dict[str, Any]:
            return asdict(b) | {"cases_per_s": b.cases_per_s, "referrals_per_s": b.referrals_per_s}

        return {"reports": self.reports, "bare": burst(self.bare), "alur": burst(self.alur), "ratio": self.ratio,
                "steady": [asdict(s) for s in self.steady], "p99_target_s": P99_TARGET,
                "highest_rate_p99_ok": self.highest_rate_p99_ok,
                "sync_always": {k: burst(v) for k, v in self.sync_always.items()}}


async def measure(b: Broker, count: int, expected: Expected, *, rates: Sequence[float], seconds: float,
                  ladder: Sequence[float], ladder_seconds: float, timeout: float, tag: str,
                  wrap: dict[str, list[str]] | None = None) -> tuple[Burst, Burst, list[Steady]]:
    """Bare pipeline, then Alur's burst and steady loads, all on the broker `b`."""
    bare = await bare_pipeline(b, [e2e_report(i, f"{tag}b") for i in range(count)], expected, timeout, tag)
    steady: list[Steady] = []
    async with services(b, wrap=wrap) as running:
        alur = Alur(b, running, expected)
        burst = await alur.burst([e2e_report(i, f"{tag}a") for i in range(count)], timeout)
        for n, rate in enumerate(rates):
            steady.append(await alur.steady(rate, seconds, f"{tag}s{n}", timeout))
        for n, rate in enumerate(ladder):
            if steady and steady[-1].p99 >= P99_TARGET:
                break
            steady.append(await alur.steady(rate, ladder_seconds, f"{tag}l{n}", timeout))
    return bare, burst, steady


async def run(count: int = 2000, *, rates: Sequence[float] = (20, 100), seconds: float = 30.0,
              ladder: Sequence[float] = (150, 200, 300, 400, 600), ladder_seconds: float = 10.0,
              timeout: float = 300.0, sync_always: bool = True,
              wrap: dict[str, list[str]] | None = None) -> E2EResult:
    """The whole end-to-end table; with `sync_always`, the bursts again on a `sync_interval: always` broker."""
    expected = Expected()
    async with broker() as b:
        bare, alur, steady = await measure(b, count, expected, rates=rates, seconds=seconds, ladder=ladder,
                                           ladder_seconds=ladder_seconds, timeout=timeout, tag="d", wrap=wrap)
    ok = [s.rate for s in steady if s.p99 < P99_TARGET]
    result = E2EResult(count, bare, alur, steady, max(ok) if ok else None)
    if sync_always:
        async with broker(sync_always=True) as b:
            bare_sync, alur_sync, _ = await measure(b, count, expected, rates=(), seconds=0, ladder=(),
                                                    ladder_seconds=0, timeout=timeout, tag="s")
        result.sync_always = {"bare": bare_sync, "alur": alur_sync}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--no-sync", action="store_true", help="skip the sync_interval: always runs")
    args = parser.parse_args()
    result = asyncio.run(run(args.reports, seconds=args.seconds, sync_always=not args.no_sync))
    print(json.dumps(result.to_json(), indent=2))
    print(f"ratio {result.ratio:.2f}; medians of steady p99: {statistics.median(s.p99 for s in result.steady):.3f}")


if __name__ == "__main__":
    main()
