"""Webhook delivery against a real `alur up` and a real local HTTP receiver: what `test_notify_webhook`
proves on the pure core, shown end to end through the running notify service.

- a 429 with `Retry-After` is honoured: the next attempt for the event comes no sooner than
  `Retry-After × ALUR_SLA_SCALE` after the 429 (far later than the retry schedule alone would wait), both
  attempts are recorded on the referral in KV `referrals`, and `delivered` is published once;
- the circuit breaker per endpoint: five failures in a row open it; while it is open nothing reaches the
  endpoint; after the cool-down exactly one trial request goes through; a failed trial doubles the
  cool-down, a 2xx trial closes it and every held referral is then delivered, the held redeliveries not
  counted as attempts.

Every time bound asserted is a floor (the earliest the service may act), never a tight ceiling. Each test
runs its own `alur up` at a scale large enough for those floors to be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from standardwebhooks.webhooks import Webhook

from alur.embedded import free_port
from services.notify import webhook
from tests.conftest import Running, alur_env, start_alur, stop_alur
from tests.support import (
    Feed,
    about,
    referral_state,
    request_referral,
    serving,
    wait_for,
    whsec,
)

# ------------------------------------------------------------------------------------------- helpers

Answer = tuple[int, dict[str, str]] | tuple[int, dict[str, str], float]  # status, headers[, seconds to answer]


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # monotonic, when the request arrived
    status: int = 0
    done: float = 0.0  # monotonic when the answer was sent

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Endpoint:
    """A real HTTP server on a free loopback port; `answer(path, index)` picks each status and its headers
    (and optionally how long to take to answer), `index` counting the POSTs to that path so far (0 = the first)."""

    answer: Callable[[str, int], Answer]
    port: int = field(default_factory=free_port)
    posts: list[Post] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def to(self, path: str) -> list[Post]:
        return [p for p in self.posts if p.path == path]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        loop = asyncio.get_running_loop()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        post = Post(scope["path"], headers, body, _monotonic(loop))
        index = len(self.to(post.path))
        self.posts.append(post)
        status, extra, *slow = self.answer(post.path, index)
        post.status = status
        if slow:
            await asyncio.sleep(slow[0])  # a slow endpoint: the request stays in flight meanwhile
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"text/plain"),
                                *((k.encode(), v.encode()) for k, v in extra.items())]})
        await send({"type": "http.response.body", "body": b"ok" if status < 300 else b"no"})
        post.done = _monotonic(loop)


def _monotonic(loop: asyncio.AbstractEventLoop) -> float:
    return loop.time()  # asyncio's clock is time.monotonic


def scaled_alur(tmp_path: Path, scale: float) -> Iterator[Running]:
    data_dir = tmp_path / "alur"
    running = start_alur(data_dir, env=alur_env(data_dir, ALUR_SLA_SCALE=str(scale)))
    yield running
    if running.process.poll() is None:
        stop_alur(running)


async def add_webhook_agency(alur: Running, agency_id: str, url: str, secret: str, *flags: str) -> None:
    """Add a webhook agency through the public CLI.

    `flags` are the entry's registry options; by default `--allow-private-network` (receivers here listen on
    127.0.0.1). The CLI returns once the entry is in the registry bucket and the agency's consumers exist;
    each service follows the bucket with its own KV watch (milliseconds), while a report published afterwards
    reaches notify only after intake's and routing's work on it.
    """
    alur.cli("agency", "add", agency_id, "--type", "health", "--regions", "6371", "--channel", "webhook",
             "--url", url, "--secret", secret, *(flags or ("--allow-private-network",)))  # receivers: 127.0.0.1


def attempts_of(state: dict[str, Any], event_id: str) -> list[tuple[int, str, int | None]]:
    return [(a["attempt"], a["outcome"], a["http_status"]) for a in state["attempts"] if a["event_id"] == event_id]


async def delivered_facts(js: JetStreamContext, agency: str) -> int:
    """How many `delivered` facts REFERRALS holds for the agency."""
    subject = f"alur.referral.delivered.{agency}"
    info = await js.stream_info("REFERRALS", subjects_filter=subject)
    return (info.state.subjects or {}).get(subject, 0)


def verify(posts: list[Post], secret: str) -> dict[str, Any]:
    """Each POST is signed with the agency's secret; all carry the same event: returns it."""
    payloads = [Webhook(secret).verify(p.body, p.headers) for p in posts]
    assert {p["id"] for p in payloads} == {posts[0].webhook_id}, "one event, one stable webhook-id"
    return payloads[0]


# ------------------------------------------------------------------------- 1. Retry-After honoured

RETRY_AFTER_SCALE = 0.05
RETRY_AFTER = 60  # seconds: at scale 0.05 the retry may come no sooner than 3 s after the 429


@pytest.fixture
def retry_after_alur(tmp_path: Path) -> Iterator[Running]:
    yield from scaled_alur(tmp_path, RETRY_AFTER_SCALE)


async def test_a_429_with_retry_after_is_honoured_before_the_retry(retry_after_alur: Running) -> None:
    alur = retry_after_alur
    secret = whsec()
    floor = RETRY_AFTER * RETRY_AFTER_SCALE
    # Without the header the first retry would come after at most RETRY_SCHEDULE[0] × scale (0.25 s):
    # the floor below is only met if the service took the server's Retry-After.
    assert webhook.RETRY_SCHEDULE[0] * RETRY_AFTER_SCALE < floor / 4

    def answer(path: str, index: int) -> Answer:
        return (429, {"Retry-After": str(RETRY_AFTER)}) if index == 0 else (200, {})

    async with serving(Endpoint(answer)) as endpoint:
        await add_webhook_agency(alur, "dinkes-tala", f"{endpoint.url}/busy", secret)
        admin = await alur.admin()
        js = admin.jetstream()
        feed = await Feed.open(js)
        request = await request_referral(js, "dinkes-tala", due_in=3600)
        await feed.seek(about("delivered", request.referral_id, agency="dinkes-tala"), timeout=30)

        posts = endpoint.to("/busy")
        assert [p.status for p in posts] == [429, 200]
        event = verify(posts, secret)
        assert event["type"] == "alur.referral.requested.v1"
        assert event["data"]["referral_id"] == request.referral_id
        gap = posts[1].at - posts[0].done
        assert gap >= floor, f"retried {gap:.3f} s after the 429, before Retry-After × scale = {floor} s"
        assert gap < floor + 15, "and retried at all, not parked"

        # Both attempts recorded on the referral, transport facts only; the referral is delivered.
        state = await referral_state(js, request.referral_id)
        assert state is not None and state["status"] == "delivered"
        assert attempts_of(state, event["id"]) == [(1, "failed", 429), (2, "delivered", 200)]
        assert [h["status"] for h in state["history"]][:2] == ["requested", "delivered"]

        # `delivered` once; a 429 is a retryable answer, not one for the coordinator.
        assert await delivered_facts(js, "dinkes-tala") == 1
        assert not [e for e in feed.seen if e.verb == "escalated" and e.data.get("referral_id") == request.referral_id]
        await admin.close()
    assert secret not in alur.logs()


# ----------------------------------------------------------------------- 2. the circuit breaker

BREAKER_SCALE = 0.08
COOLDOWN = 60.0 * BREAKER_SCALE  # CircuitBreaker's default cool-down (60 s) at the drill scale: 4.8 s, so a loaded machine still makes the late referral within it
THRESHOLD = 5  # CircuitBreaker's default: failures in a row that open it
OVERLOADED = (503, {"Retry-After": "40"})  # 40 s × 0.08 = 3.2 s: every event is back while the breaker is open
TRIAL_TAKES = 0.3  # seconds the endpoint takes to answer each trial request


@pytest.fixture
def breaker_alur(tmp_path: Path) -> Iterator[Running]:
    yield from scaled_alur(tmp_path, BREAKER_SCALE)


@pytest.mark.faults  # a crash or a stuck peer, at length: `make test-faults` (CI runs it)
async def test_the_breaker_holds_a_failing_endpoint_then_one_trial_closes_it(breaker_alur: Running) -> None:
    alur = breaker_alur
    secret = whsec()
    # The numbers this test is built on, as notify's delivery builds its breaker (defaults × sla_scale).
    model = webhook.CircuitBreaker(scale=BREAKER_SCALE, clock=lambda: 0.0)
    for _ in range(THRESHOLD - 1):
        model.record_failure()
    assert model.state == "closed"
    model.record_failure()
    assert model.state == "open" and model.retry_in() == pytest.approx(COOLDOWN)

    def answer(path: str, index: int) -> Answer:
        # THRESHOLD failures open the breaker; the first trial after the cool-down fails too (the
        # cool-down doubles); the second trial is accepted, and so is everything after it. Both trials
        # are answered slowly, so the held events that come back meanwhile meet a half-open breaker
        # whose one trial is still in flight.
        if index < THRESHOLD:
            return OVERLOADED
        if index == THRESHOLD:
            return (*OVERLOADED, TRIAL_TAKES)
        return (200, {}, TRIAL_TAKES) if index == THRESHOLD + 1 else (200, {})

    async with serving(Endpoint(answer)) as endpoint:
        await add_webhook_agency(alur, "dinkes-hst", f"{endpoint.url}/down", secret)
        admin = await alur.admin()
        js = admin.jetstream()
        feed = await Feed.open(js)
        requests = [await request_referral(js, "dinkes-hst", due_in=3600) for _ in range(THRESHOLD)]

        # Once notify has recorded the THRESHOLD failures (it records after the breaker counted them),
        # the breaker is open: a referral made now is a further delivery to a failing endpoint.
        async def all_failed_once() -> bool:
            states = [await referral_state(js, r.referral_id) for r in requests]
            return all(s is not None and s["attempts"] for s in states)
        await wait_for(all_failed_once, timeout=30, every=0.02)
        late = await request_referral(js, "dinkes-hst", due_in=3600)
        late_sent_at = asyncio.get_running_loop().time()
        requests.append(late)
        # the failed trial's event waits for its scheduled retry (up to RETRY_SCHEDULE[1] at this scale)
        settles = 3 * COOLDOWN + webhook.RETRY_SCHEDULE[1] * BREAKER_SCALE + 30
        for request in requests:
            await feed.seek(about("delivered", request.referral_id, agency="dinkes-hst"), timeout=settles)

        posts = endpoint.to("/down")
        statuses = [p.status for p in posts]
        assert statuses == [503] * (THRESHOLD + 1) + [200] * (THRESHOLD + 1), statuses
        for post in posts:
            Webhook(secret).verify(post.body, post.headers)
        opened, trial, second_trial = posts[THRESHOLD - 1], posts[THRESHOLD], posts[THRESHOLD + 1]
        # Open: nothing reaches the endpoint for the whole cool-down after the failure that opened it,
        # though every failed event came back for its retry (Retry-After 3.2 s) within it, and a new
        # referral was made within it.
        assert late_sent_at < opened.done + COOLDOWN, "the late referral was made while the breaker was open"
        assert trial.at - opened.done >= COOLDOWN, f"a POST {trial.at - opened.done:.3f} s into the cool-down"
        # Half-open: one trial at a time (the events that came back meanwhile stayed held) ...
        assert second_trial.at >= trial.done, "a second request went out while the trial was in flight"
        # ... it failed, so the breaker opened again, for twice the cool-down.
        assert second_trial.at - trial.done >= 2 * COOLDOWN, "a failed trial doubles the cool-down"
        # The second trial was alone in flight too, and its 2xx closed the breaker: the rest followed.
        assert all(p.at >= second_trial.done for p in posts[THRESHOLD + 2:])
        assert second_trial.at - opened.done < 3 * COOLDOWN + 15, "the endpoint is tried again at all"

        # Every referral delivered, once; a held redelivery is not an attempt: the attempts recorded on
        # each referral are exactly the POSTs its event made, numbered from 1 without gaps.
        assert await delivered_facts(js, "dinkes-hst") == len(requests)
        sent: dict[str, list[int]] = {}
        for post in posts:
            sent.setdefault(post.webhook_id, []).append(post.status)
        for request in requests:
            state = await referral_state(js, request.referral_id)
            assert state is not None and state["status"] == "delivered"
            event_id = next(p.webhook_id for p in posts
                            if json.loads(p.body)["data"]["referral_id"] == request.referral_id)
            recorded = attempts_of(state, event_id)
            assert [s for _, _, s in recorded] == sent[event_id]
            assert [o for _, o, _ in recorded] == ["failed"] * (len(recorded) - 1) + ["delivered"]
            assert [n for n, _, _ in recorded] == list(range(1, len(recorded) + 1))
        late_posts = [p for p in posts if json.loads(p.body)["data"]["referral_id"] == late.referral_id]
        assert late_posts[0].at >= trial.at, "the late referral was held, not sent, while the breaker was open"
        await admin.close()

    logs = alur.logs()
    assert "webhook delivery held: circuit open" in logs
    assert secret not in logs


# ------------------------------------------- 3. one stuck or huge-answering endpoint holds nothing else (17.4)

SLOW_SCALE = 0.01
HUGE_BODY = 512 * 2**20  # bytes each huge answer would be, made as they are sent
RSS_GROWTH = 192 * 2**20  # notify may grow by this much at most while answering them


@dataclass
class RawEndpoint:
    """A raw HTTP server on loopback whose answer `reply(writer)` writes, counting what it could send."""

    reply: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]
    host: str = "127.0.0.1"
    port: int = 0
    requests: list[float] = field(default_factory=list)  # monotonic arrival times
    open: int = 0  # connections being answered now
    finished: int = 0  # connections answered and closed
    sent: list[int] = field(default_factory=list)  # bytes written per answer
    bodies: list[bytes] = field(default_factory=list)  # the request bodies, in arrival order

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/hook"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        try:
            await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                length = int(value) if name.strip().lower() == "content-length" else length
            self.bodies.append(await reader.readexactly(length))
            self.requests.append(time.monotonic())
            self.sent.append(0)
            with contextlib.suppress(ConnectionError):
                await self.reply(reader, writer)
        finally:
            self.open -= 1
            self.finished += 1
            writer.close()


@contextlib.asynccontextmanager
async def raw_serving(endpoint: RawEndpoint) -> AsyncIterator[RawEndpoint]:
    server = await asyncio.start_server(endpoint.handle, endpoint.host, 0)
    endpoint.port = server.sockets[0].getsockname()[1]
    async with server:
        yield endpoint


def notify_rss(alur: Running) -> int:
    """Resident memory of the running notify process, in bytes (from /proc)."""
    pid = json.loads((alur.data_dir / "run.json").read_text())["children"]["notify"]
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for notify")


@pytest.fixture
def slow_alur(tmp_path: Path) -> Iterator[Running]:
    yield from scaled_alur(tmp_path, SLOW_SCALE)


@pytest.mark.timeout(300)  # its teardown stops a stack that had a stuck endpoint in flight
@pytest.mark.faults  # a crash or a stuck peer, at length: `make test-faults` (CI runs it)
async def test_a_stuck_and_a_huge_answering_endpoint_hold_back_neither_others_nor_memory(slow_alur: Running) -> None:
    alur = slow_alur
    secret = whsec()
    fine_while_stuck: list[bool] = []

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for byte in b"HTTP/1.1 200 OK\r\n" * 8:  # a byte every half second: never a whole head in time
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.5) == b"":
                    return  # notify gave up and closed the connection

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        while huge_end.sent[-1] < HUGE_BODY:
            writer.write(chunk)
            await writer.drain()
            huge_end.sent[-1] += 65536
        writer.write(b"0\r\n\r\n")

    async def fine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fine_while_stuck.append(stuck.open > 0 and stuck.finished == 0)  # its first attempt still in flight
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()

    stuck, huge_end, fine_end = RawEndpoint(drip), RawEndpoint(huge), RawEndpoint(fine)
    async with raw_serving(stuck), raw_serving(huge_end), raw_serving(fine_end):
        await add_webhook_agency(alur, "dinkes-stuck", stuck.url, secret)
        await add_webhook_agency(alur, "dinkes-huge", huge_end.url, secret)
        await add_webhook_agency(alur, "dinkes-fine", fine_end.url, secret)
        admin = await alur.admin()
        js = admin.jetstream()
        feed = await Feed.open(js)
        before = notify_rss(alur)

        held = [await request_referral(js, "dinkes-stuck", due_in=3600) for _ in range(4)]
        await wait_for(lambda: stuck.open > 0, timeout=30, every=0.02)
        others = [await request_referral(js, agency, due_in=3600)
                  for agency in ("dinkes-fine", "dinkes-huge", "dinkes-fine", "dinkes-huge", "dinkes-fine")]
        for request in others:
            await feed.seek(about("delivered", request.referral_id), timeout=30)
        # Every other endpoint's delivery went out while the stuck one still held its first attempt (which
        # lasts until the attempt's deadline, 20 s): not after it, as when a fetched batch waited for it.
        assert fine_while_stuck and all(fine_while_stuck), fine_while_stuck
        first_attempt_ends = stuck.requests[0] + webhook.ATTEMPT_DEADLINE  # then it is cut off, and retried
        assert sum(1 for t in stuck.requests if t < first_attempt_ends) == 1, "one attempt in flight per endpoint"
        assert not [e for e in feed.seen if e.verb == "delivered" and e.agency == "dinkes-stuck"]
        # The huge answers were cut off: notify read a few KB of each and closed the connection.
        assert len(huge_end.sent) == 2 and max(huge_end.sent) < HUGE_BODY / 8, huge_end.sent
        grown = notify_rss(alur) - before
        assert grown < RSS_GROWTH, f"notify grew by {grown / 2**20:.0f} MB"

        # The stuck attempt ends at its deadline, recorded as a failed attempt, and is retried.
        async def cut_off() -> list[dict[str, Any]]:
            states = [await referral_state(js, r.referral_id) for r in held]
            return [a for s in states if s for a in s["attempts"] if a["error_class"] == "DeadlineExceeded"]
        attempts = await wait_for(cut_off, timeout=webhook.ATTEMPT_DEADLINE + 30)
        assert attempts[0]["outcome"] == "failed" and attempts[0]["http_status"] is None
        assert attempts[0]["duration_ms"] >= webhook.ATTEMPT_DEADLINE * 1000 * 0.99
        await wait_for(lambda: len(stuck.requests) >= 2, timeout=30)
        await admin.close()
    assert secret not in alur.logs()


# --------------------------------------------- 4. a name resolving to loopback is refused at send time (17.9)


def loopback_name() -> tuple[str, str] | None:
    """A name (not `localhost`) this machine resolves only to loopback, with that address, or None."""
    for name in (socket.gethostname(), "ip6-localhost", "ip6-loopback", "localhost.localdomain"):
        with contextlib.suppress(OSError):
            addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
            if addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses) and name != "localhost":
                return name, sorted(addresses)[0]
    return None


async def test_a_name_resolving_to_loopback_is_refused_at_send_time_unless_allowed(slow_alur: Running) -> None:
    alur = slow_alur
    found = loopback_name()
    if found is None:
        pytest.skip("no name on this machine resolves to loopback only")
    name, address = found
    secret = whsec()

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()

    async with raw_serving(RawEndpoint(ok, host=address)) as endpoint:
        url = f"http://{name}:{endpoint.port}/hook"
        # The name passes the registry's check (no DNS there); the address it resolves to does not.
        await add_webhook_agency(alur, "dinkes-named", url, secret, "--allow-insecure-http")
        admin = await alur.admin()
        js = admin.jetstream()
        feed = await Feed.open(js)
        refused = await request_referral(js, "dinkes-named", due_in=3600)
        raised = (await feed.seek(about("escalated", refused.referral_id, overdue="delivery"))).data
        assert raised["target"] == "coordinator" and "loopback" in raised["reason"]
        assert "allow_private_network" in raised["reason"]
        state = await referral_state(js, refused.referral_id)
        # the referral's own escalation is posted to the agency too (refused alike), so a loaded machine may
        # read more than one attempt: every attempt refused, none sent
        assert state is not None and {a["outcome"] for a in state["attempts"]} == {"refused"}
        assert state["status"] == "requested" and not endpoint.requests, "nothing was sent"

        await add_webhook_agency(alur, "dinkes-named", url, secret, "--allow-insecure-http", "--allow-private-network")
        allowed = await request_referral(js, "dinkes-named", due_in=3600)
        await feed.seek(about("delivered", allowed.referral_id, agency="dinkes-named"), timeout=30)
        # the refused referral's escalation, if notify posts it after the registry was fixed, is sent too
        sent_for = [json.loads(body)["data"]["referral_id"] for body in endpoint.bodies]
        assert sent_for.count(allowed.referral_id) == 1
        assert set(sent_for) <= {allowed.referral_id, refused.referral_id}
        await admin.close()
