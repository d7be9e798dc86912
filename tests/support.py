"""Helpers every integration test shares: waiting for events and conditions, the REFERRALS feed,
publishing reports and responses as an agency would, reading what the services keep in KV, and the
browser that page tests drive."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import uvicorn
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from contracts.envelope import CloudEvent, derived_id
from contracts.events import ReferralRequestedData, RuleReason
from contracts.vocab import AgencyType, Priority, Service
from runtime.bus import kv_snapshot
from tests.conftest import Running


async def next_matching(sub: Any, predicate: Any, timeout: float = 30.0) -> Any:
    """The next message on `sub` for which `predicate(msg)` holds; fails after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError("timed out waiting for a matching message")
        msg = await sub.next_msg(timeout=remaining)
        if predicate(msg):
            return msg


async def wait_for(check: Any, timeout: float = 30.0, every: float = 0.1) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(every)


def data_of(msg: Any) -> dict[str, Any]:
    return json.loads(msg.data)["data"]


def whsec() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


@dataclass
class Seen:
    at: float  # wall clock when the test received it
    subject: str
    data: dict[str, Any]

    @property
    def verb(self) -> str:
        return self.subject.split(".")[2]

    @property
    def agency(self) -> str:
        return self.subject.split(".")[3]


class Feed:
    """Every REFERRALS event from the start, in stream order; `seek` looks at what came already, then waits."""

    def __init__(self, sub: Any) -> None:
        self.sub = sub
        self.seen: list[Seen] = []

    @classmethod
    async def open(cls, js: JetStreamContext) -> Feed:
        return cls(await js.subscribe("alur.referral.>", stream="REFERRALS", ordered_consumer=True,
                                      deliver_policy=DeliverPolicy.ALL))

    async def seek(self, predicate: Callable[[Seen], bool], timeout: float = 30.0, after: int = 0) -> Seen:
        """The first event at index >= `after` matching `predicate`, waiting up to `timeout` for it."""
        for event in self.seen[after:]:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("timed out waiting for a matching referral event")
            msg = await self.sub.next_msg(timeout=remaining)
            event = Seen(time.time(), msg.subject, data_of(msg))
            self.seen.append(event)
            if predicate(event):
                return event

    def index(self, event: Seen) -> int:
        return self.seen.index(event)


def about(verb: str, referral_id: str | None = None, agency: str | None = None, **fields: Any) -> Callable[[Seen], bool]:
    return lambda e: (e.verb == verb and (referral_id is None or e.data.get("referral_id") == referral_id)
                      and (agency is None or e.agency == agency)
                      and all(e.data.get(k) == v for k, v in fields.items()))


async def publish_report(running: Running, report: dict[str, Any]) -> None:
    reporter = await running.agency("bp3mi-kalsel")
    try:
        await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(report).encode(),
                                           headers={"Nats-Msg-Id": report["id"]}, timeout=5)
    finally:
        await reporter.close()


async def case_referrals(
    js: JetStreamContext, timeout: float = 30.0, case_id: str | None = None
) -> tuple[str, dict[str, dict[str, Any]]]:
    """(case id, referral entries by id) of `case_id` (else of the one case routed so far) once routing
    stored them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries, _ = await kv_snapshot(js, "case-referrals")
        for key, value in entries.items():
            record = json.loads(value)
            if record.get("referrals") and case_id in (None, key):
                return key, record["referrals"]
        await asyncio.sleep(0.1)
    raise AssertionError("routing stored no referrals")


async def referral_state(js: JetStreamContext, referral_id: str) -> dict[str, Any] | None:
    kv = await js.key_value("referrals")
    try:
        entry = await kv.get(referral_id)
    except Exception:
        return None
    return json.loads(entry.value) if entry.value else None


def response_event(agency: str, referral_id: str, status: str, **extra: Any) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": agency, "type": "alur.referral.response.v1",
        "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
        "data": {"referral_id": referral_id, "status": status, **extra},
    }).encode()


async def respond(client: Client, agency: str, referral_id: str, status: str, **extra: Any) -> None:
    await client.jetstream().publish(f"alur.response.{agency}", response_event(agency, referral_id, status, **extra),
                                     timeout=5)


async def request_referral(js: JetStreamContext, agency: str, *, due_in: float, case_id: str | None = None,
                           service: Service = Service.INVESTIGATION) -> ReferralRequestedData:
    """Publish `alur.referral.requested.<agency>` as routing would."""
    now = datetime.now(UTC)
    case_id = case_id or "case-" + uuid.uuid4().hex[:20]
    data = ReferralRequestedData(
        referral_id="ref-" + uuid.uuid4().hex[:20], case_id=case_id, agency=agency, agency_type=AgencyType.POLICE,
        service=service, priority=Priority.HIGH, due=now + timedelta(seconds=due_in),
        reasons=[RuleReason(rule_id="test", description="a test referral", legal_basis="none")],
        ruleset_version="test", case={"case_id": case_id, "regency": "6371"}, requested_at=now,
    )
    event = CloudEvent[ReferralRequestedData].build(
        type="alur.referral.requested.v1", source="alur/routing", subject=data.referral_id, data=data,
        id=derived_id("referral.requested", data.referral_id),
    )
    await js.publish(f"alur.referral.requested.{agency}", event.to_bytes(), headers={"Nats-Msg-Id": event.id},
                     timeout=5)
    return data


@contextlib.asynccontextmanager
async def serving(endpoint: Any) -> AsyncIterator[Any]:
    """Serve an ASGI callable with a `port` on 127.0.0.1 (uvicorn) for the block."""
    server = uvicorn.Server(uvicorn.Config(endpoint, host="127.0.0.1", port=endpoint.port, log_config=None,
                                           lifespan="off", access_log=False))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started, timeout=10, every=0.02)
    try:
        yield endpoint
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


def chromium() -> str:
    """The Chromium binary browser tests drive (skips, saying what is missing, without it or Playwright)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("browser tests need Playwright for Python (pip install -e '.[test]'); .ci/run installs it")
    found = os.environ.get("ALUR_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        pytest.skip("browser tests need a Chromium binary (Debian: apt-get install chromium); .ci/run installs it")
    return found


def in_thread(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to its end on a loop of its own (Playwright's sync API holds this thread's loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result(timeout=120)
