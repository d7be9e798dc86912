"""Messaging benchmark: the real intake service (FastStream) against a bare nats-py consumer, same broker,
same run, same stored reports.

A throw-away nats-server (JetStream, no auth, no fsync per write) is provisioned from deploy/topology.yaml
and the profile's registry; N reference-like reports (every tenth invalid, so rejections are in the mix)
are stored in REPORTS with `publish_async`. Then:

1. bare nats-py: a pull consumer of its own drains them — fetch, JSON parse, ack — the floor of the
   broker round trips, with no work done;
2. bare nats-py doing intake's I/O shape minimally: fetch, parse, validate (pydantic), publish one event
   and wait for its ack, then ack — one JetStream round trip per message;
3. the real intake (`python -m alur.serve intake`, its own process, logs at INFO as in production)
   drains the same backlog into `alur.case.registered` / `alur.case.rejected`; its rate is measured from
   the first case event to the last, so process start-up is not counted.

Run: `.venv/bin/python -m bench.bench_messaging [--reports N]`. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from alur.embedded import EmbeddedServer, free_port  # noqa: E402
from contracts.events import ReportData  # noqa: E402
from runtime.nats_auth import accounts  # noqa: E402
from runtime.nats_door import NatsDoor  # noqa: E402
from runtime.profile import load_registry_file  # noqa: E402
from runtime.provision import load_topology, provision  # noqa: E402
from runtime.registry_store import RegistryStore  # noqa: E402
from runtime.security import SecretStore, agency_inbox_prefix, service_inbox_prefix  # noqa: E402

REPORTER = "bp3mi-kalsel"
BARE = "bare nats-py: fetch+parse+ack"


@dataclass(frozen=True, slots=True)
class Result:
    what: str
    messages: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else float("inf")


def bench_report(i: int) -> dict[str, Any]:
    """A report like DESIGN.md's reference one, with its own ids and invented identity; every tenth is invalid."""
    data: dict[str, Any] = {
        "report_ref": f"BENCH-{i:06d}",
        "channel": "bp3mi",
        "victim": {"pseudonym": f"B-{i}", "age": 16 + i % 30, "sex": ("female", "male")[i % 2], "nationality": "wni",
                   "migration_profile": "pmi_non_procedural", "disabilities": [],
                   "identity": {"name": f"Bench Person {i}", "nik": f"6371{i:012d}", "phone": f"+62811{i:07d}"}},
        "location": {"regency": ("6371", "6372", "6303")[i % 3], "exploitation_location": "abroad", "country": "MY"},
        "exploitation": ["forced_labour", "domestic_servitude"],
        "indicators": ["FL02", "FL07", "FL08"],
        "needs": ["medical", "psychological", "shelter", "repatriation", "legal_aid"],
        "risk": "high",
        "consent": {"share_with": "all", "recorded_by": f"{REPORTER}/officer-17"},
        "narrative": "Invented narrative for the benchmark.",
    }
    if i % 10 == 9:
        data["victim"]["age"] = -3
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": REPORTER, "type": "alur.report.submitted.v1",
            "time": "2026-11-20T08:15:00+08:00", "datacontenttype": "application/json", "data": data}


async def store_reports(js: JetStreamContext, count: int) -> Result:
    bodies = [bench_report(i) for i in range(count)]
    start = time.perf_counter()
    for body in bodies:
        await js.publish_async(f"alur.report.{REPORTER}", json.dumps(body).encode(),
                               headers={"Nats-Msg-Id": body["id"]})
    await js.publish_async_completed()
    return Result("store: publish_async", count, time.perf_counter() - start)


async def bare_consumer(js: JetStreamContext, count: int, *, durable: str, work: bool) -> Result:
    """Drain the stored reports with a pull consumer of our own; with `work`, validate and publish one event each."""
    await js.add_consumer("REPORTS", ConsumerConfig(
        durable_name=durable, filter_subject="alur.report.*", ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL, max_ack_pending=10_000))
    sub = await js.pull_subscribe_bind(durable, "REPORTS")
    done = 0
    start = time.perf_counter()
    while done < count:
        for msg in await sub.fetch(100, timeout=5):
            event = json.loads(msg.data)
            if work:
                valid = True
                try:
                    ReportData.model_validate(event["data"])
                except ValueError:
                    valid = False
                kind = "registered" if valid else "rejected"
                await js.publish(f"bench.{durable}.{kind}", msg.data,
                                 headers={"Nats-Msg-Id": f"{durable}:{event['id']}"})
            await msg.ack()
            done += 1
    seconds = time.perf_counter() - start
    await sub.unsubscribe()
    what = "bare nats-py: fetch+parse+validate+publish+ack" if work else BARE
    return Result(what, done, seconds)


async def real_intake(js: JetStreamContext, url: str, data_dir: Path, count: int, timeout: float) -> Result:
    """Start the real intake on the stored backlog; time from its first case event to its last."""
    cases = await js.subscribe("alur.case.>", stream="CASES", ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")} | {
        "ALUR_NATS_URL": url, "ALUR_DATA_DIR": str(data_dir), "ALUR_INTAKE_HTTP": f"127.0.0.1:{free_port()}",
        "ALUR_MATCH_KEY": "bench-match-key-0123456789abcdef", "ALUR_CASE_KEY": "bench-case-key-0123456789abcdef",
        "PYTHONUNBUFFERED": "1",
    }
    log = open(data_dir / "intake.log", "wb")  # noqa: SIM115
    launched = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "alur.serve", "intake"], env=env, cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    kinds = {"registered": 0, "rejected": 0}
    first = last = 0.0
    try:
        deadline = time.perf_counter() + timeout
        while sum(kinds.values()) < count:
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or process.poll() is not None:
                raise RuntimeError(f"intake produced {sum(kinds.values())}/{count} case events "
                                   f"(see {data_dir / 'intake.log'})")
            msg = await cases.next_msg(timeout=remaining)
            last = time.perf_counter()
            first = first or last
            kinds["registered" if msg.subject.startswith("alur.case.registered") else "rejected"] += 1
    finally:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(20)
        if process.poll() is None:
            process.kill()
            process.wait(5)
        log.close()
        await cases.unsubscribe()
    invalid = sum(1 for i in range(count) if i % 10 == 9)
    if kinds["rejected"] != invalid:  # a correctness check, not a timing: every valid report makes a case
        raise RuntimeError(f"intake rejected {kinds['rejected']} reports, expected {invalid} (see the rejections)")
    return Result("alur intake (FastStream): first→last case event", count - 1, last - first,
                  note=f"{kinds['registered']} cases, {kinds['rejected']} rejected; "
                       f"start-up {first - launched:.1f} s excluded")


async def _timed_store(js: JetStreamContext, bodies: list[bytes], msg_id: Any) -> float:
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        await js.publish_async(f"alur.report.{REPORTER}", body, headers={"Nats-Msg-Id": msg_id(i)})
    await js.publish_async_completed()
    return time.perf_counter() - start


async def through_the_door(count: int) -> list[Result]:
    """The NATS door's cost (runtime.nats_door): on a server with Alur's accounts, the same reports stored
    by the admin straight into REPORTS, and by the reporting agency's own user through intake's door (its
    code, on intake's user, in this process)."""
    root = Path(tempfile.mkdtemp(prefix="alur-bench-door-"))
    secrets, registry = SecretStore(root / "data"), load_registry_file()
    server = EmbeddedServer(data_dir=root / "data", port=free_port(), sync_always=False)
    server.start(accounts(secrets, registry))
    connections = []
    try:
        admin = await nats.connect(server.url, nkeys_seed_str=secrets.service_seed("admin"))
        intake = await nats.connect(server.url, nkeys_seed_str=secrets.service_seed("intake"),
                                    inbox_prefix=service_inbox_prefix("intake"))
        agency = await nats.connect(server.url, nkeys_seed_str=secrets.agency(REPORTER).nkey_seed,
                                    inbox_prefix=agency_inbox_prefix(REPORTER))
        connections = [admin, intake, agency]
        await provision(admin.jetstream(timeout=10), registry=registry)
        await NatsDoor("intake", "report").start(intake)
        bodies = [json.dumps(bench_report(i)).encode() for i in range(count)]
        direct = await _timed_store(admin.jetstream(timeout=10), bodies, lambda i: f"{REPORTER}:direct-{i}")
        door = await _timed_store(agency.jetstream(timeout=10), bodies, lambda i: f"door-{i}")
        return [Result("store, Alur's accounts: admin straight into REPORTS", count, direct),
                Result("store, Alur's accounts: the agency through intake's NATS door", count, door,
                       note=f"{door / direct:.2f} × the time straight in")]
    finally:
        for nc in connections:
            await nc.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


async def run(count: int = 2000, timeout: float = 120.0) -> list[Result]:
    root = Path(tempfile.mkdtemp(prefix="alur-bench-"))
    server = EmbeddedServer(data_dir=root / "nats", port=free_port(), sync_always=False)
    server.start(accounts=None)
    try:
        nc = await nats.connect(server.url)
        try:
            js = nc.jetstream(timeout=10)
            topology = load_topology()
            await provision(js, topology)
            store = RegistryStore(js)
            await store.seed(load_registry_file())
            await provision(js, topology, await store.load())
            await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"], duplicate_window=600))
            results = [await store_reports(js, count)]
            results.append(await bare_consumer(js, count, durable="bench-bare", work=False))
            results.append(await bare_consumer(js, count, durable="bench-bare-work", work=True))
            results.append(await real_intake(js, server.url, root, count, timeout))
            return results + await through_the_door(count)
        finally:
            await nc.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=2000)
    args = parser.parse_args()
    for r in asyncio.run(run(args.reports)):
        print(f"{r.what:<60} {r.messages:>6} {r.seconds:>8.2f} s {r.rate:>10.0f} msg/s  {r.note}")


if __name__ == "__main__":
    main()
