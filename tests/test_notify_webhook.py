"""Webhook delivery against a real HTTP server on 127.0.0.1 that verifies every Standard Webhooks signature."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from contracts.records import Agency
from contracts.vocab import AgencyType, Channel
from services.notify.webhook import (
    JITTER,
    MAX_RETRY_AFTER,
    RETRY_SCHEDULE,
    CircuitBreaker,
    Pinned,
    deliver,
    parse_retry_after,
    pin,
    retry_delay,
    sign,
)

BODY = b'{"type":"alur.referral.requested.v1","data":{"referral_id":"ref-00000000000000000000"}}'
WITA = ZoneInfo("Asia/Makassar")


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    verified: bool


@dataclass
class Receiver:
    """An agency's endpoint: verifies the signature (401 if it fails), then answers from `script`."""

    secret: str
    url: str = ""
    script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, value = line.decode().split(":", 1)
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            Webhook(self.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            verified = False
        self.received.append(Received(headers, body, verified))
        status, extra = self.script.pop(0) if self.script and verified else ((200, {}) if verified else (401, {}))
        head = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
        writer.write(f"HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\nconnection: close\r\n{head}\r\n".encode())
        await writer.drain()
        writer.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rx = Receiver(secret=new_secret())
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rx.url = f"http://127.0.0.1:{port}/alur/referrals"
    async with server:
        yield rx


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def agency_for(rx: Receiver, secret: str | None = None) -> Agency:
    return Agency(
        id="lbh-banjarmasin",
        type=AgencyType.LEGAL_AID,
        channel=Channel.WEBHOOK,
        url=rx.url,
        secret=secret or rx.secret,
        allow_private_network=True,  # the receiver is on 127.0.0.1
    )


async def test_signature_verifies_at_the_receiver(receiver: Receiver, client: httpx.AsyncClient) -> None:
    now = datetime.now(WITA)  # a local, non-UTC clock must still sign the right unix time
    result = await deliver(client, agency_for(receiver), "evt-1", BODY, now)
    assert result.delivered and not result.retry
    (got,) = receiver.received
    assert got.verified and got.body == BODY
    assert got.headers["webhook-id"] == "evt-1"
    assert got.headers["webhook-signature"].startswith("v1,")
    assert got.headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert result.attempt.http_status == 200 and result.attempt.outcome == "delivered"


async def test_a_wrong_secret_is_caught_by_the_receiver(receiver: Receiver, client: httpx.AsyncClient) -> None:
    result = await deliver(client, agency_for(receiver, secret=new_secret()), "evt-2", BODY, datetime.now(UTC))
    assert not receiver.received[0].verified
    assert result.attempt.http_status == 401 and result.retry and result.needs_coordinator


async def test_5xx_is_retried_then_delivered_with_the_same_id(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.script = [(500, {}), (200, {})]
    agency = agency_for(receiver)
    first = await deliver(client, agency, "evt-3", BODY, datetime.now(UTC), attempt=1)
    assert (first.attempt.outcome, first.retry, first.needs_coordinator) == ("failed", True, False)
    assert first.retry_after is None
    second = await deliver(client, agency, "evt-3", BODY, datetime.now(UTC), attempt=2)
    assert second.delivered and second.attempt.attempt == 2
    assert [r.headers["webhook-id"] for r in receiver.received] == ["evt-3", "evt-3"]
    assert all(r.verified for r in receiver.received)


async def test_410_means_gone(receiver: Receiver, client: httpx.AsyncClient) -> None:
    receiver.script = [(410, {})]
    result = await deliver(client, agency_for(receiver), "evt-4", BODY, datetime.now(UTC))
    assert result.attempt.outcome == "gone"
    assert (result.retry, result.disable_endpoint, result.needs_coordinator) == (False, True, True)


async def test_retry_after_is_honoured(receiver: Receiver, client: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    in_two_hours = format_datetime(now + timedelta(hours=2), usegmt=True)
    receiver.script = [(429, {"Retry-After": "120"}), (503, {"Retry-After": in_two_hours})]
    agency = agency_for(receiver)
    throttled = await deliver(client, agency, "evt-5", BODY, now)
    assert throttled.retry and throttled.retry_after == 120 and not throttled.needs_coordinator
    assert retry_delay(1, 1.0, throttled.retry_after, random.Random(1)) >= 120  # type: ignore[operator]
    unavailable = await deliver(client, agency, "evt-5", BODY, now, attempt=2)
    assert unavailable.retry_after is not None and 7190 <= unavailable.retry_after <= 7200
    delay = retry_delay(2, 0.001, unavailable.retry_after, random.Random(1))
    assert delay is not None and delay == pytest.approx(unavailable.retry_after * 0.001)


async def test_transport_errors_are_retried(client: httpx.AsyncClient) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    agency = Agency(id="lbh-x", type=AgencyType.LEGAL_AID, channel=Channel.WEBHOOK,
                    url=f"http://127.0.0.1:{port}/", secret=new_secret(), allow_private_network=True)  # fmt: skip
    result = await deliver(client, agency, "evt-6", BODY, datetime.now(UTC))
    assert result.attempt.outcome == "failed" and result.retry
    assert result.attempt.error_class == "ConnectError" and result.attempt.http_status is None


async def test_plain_http_to_a_remote_host_is_refused_at_send(client: httpx.AsyncClient) -> None:
    allowed = Agency(id="lbh-y", type=AgencyType.LEGAL_AID, channel=Channel.WEBHOOK, url="http://192.0.2.10/hook",
                     secret=new_secret(), allow_insecure_http=True, allow_private_network=True)  # fmt: skip
    sneaked = allowed.model_copy(update={"allow_insecure_http": False})
    result = await deliver(client, sneaked, "evt-7", BODY, datetime.now(UTC))
    assert result.attempt.outcome == "refused" and not result.retry and result.needs_coordinator
    assert "plain http" in str(result.problem)


async def test_attempt_records_carry_no_payload(receiver: Receiver, client: httpx.AsyncClient) -> None:
    result = await deliver(client, agency_for(receiver), "evt-8", BODY, datetime.now(UTC))
    stored = result.attempt.model_dump_json()
    assert "referral_id" not in stored and "ref-0000" not in stored and receiver.secret not in stored


async def test_an_open_breaker_sends_nothing(receiver: Receiver, client: httpx.AsyncClient) -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown=30, clock=clock)
    receiver.script = [(500, {}), (502, {})]
    agency = agency_for(receiver)
    for n in (1, 2):
        await deliver(client, agency, "evt-9", BODY, datetime.now(UTC), attempt=n, breaker=breaker)
    blocked = await deliver(client, agency, "evt-9", BODY, datetime.now(UTC), attempt=3, breaker=breaker)
    assert blocked.attempt.outcome == "circuit_open" and blocked.retry and blocked.retry_after == 30
    assert len(receiver.received) == 2
    clock.now += 30
    probe = await deliver(client, agency, "evt-9", BODY, datetime.now(UTC), attempt=4, breaker=breaker)
    assert probe.delivered and breaker.state == "closed"


def test_sign_matches_the_library() -> None:
    secret = new_secret()
    agency = Agency(id="a-1", type=AgencyType.HEALTH, channel=Channel.WEBHOOK, url="https://x.example/h", secret=secret)
    now = datetime.now(WITA)
    headers = sign(agency, "evt-10", BODY, now)
    assert Webhook(secret).verify(BODY, headers) is not None
    with pytest.raises(ValueError, match="timezone-aware"):
        sign(agency, "evt-10", BODY, datetime.now())


@pytest.mark.parametrize("seed", range(50))
def test_jitter_stays_within_bounds(seed: int) -> None:
    rng = random.Random(seed)
    for attempt, nominal in enumerate(RETRY_SCHEDULE, start=1):
        delay = retry_delay(attempt, 1.0, None, rng)
        assert delay is not None and nominal * (1 - JITTER) <= delay <= nominal
    assert retry_delay(len(RETRY_SCHEDULE) + 1, 1.0, None, rng) is None


def test_schedule_spans_three_days_even_at_its_shortest_and_scales() -> None:
    class ShortestDraw(random.Random):
        def random(self) -> float:
            return 0.999999999

    shortest = sum(retry_delay(n, 1.0, None, ShortestDraw()) or 0 for n in range(1, len(RETRY_SCHEDULE) + 1))
    assert shortest >= 3 * 86400
    at_scale = sum(retry_delay(n, 0.001, None, ShortestDraw()) or 0 for n in range(1, len(RETRY_SCHEDULE) + 1))
    assert at_scale == pytest.approx(shortest * 0.001)
    assert retry_delay(1, 1.0, 10 * 365 * 86400, random.Random(0)) == MAX_RETRY_AFTER
    with pytest.raises(ValueError):
        retry_delay(0, 1.0, None, random.Random(0))


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 20, 0, 0, tzinfo=UTC)
    assert parse_retry_after("30", now) == 30
    assert parse_retry_after("Fri, 20 Nov 2026 00:01:00 GMT", now) == 60
    assert parse_retry_after("Thu, 19 Nov 2026 00:00:00 GMT", now) == 0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_half_opens_and_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown=60, max_cooldown=200, scale=0.5, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow() and breaker.retry_in() == 30
    clock.now += 30
    assert breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow(), "one probe at a time"
    breaker.record_failure()
    assert breaker.state == "open" and breaker.retry_in() == 60, "a failed probe doubles the cool-down"
    clock.now += 60
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()
    for _ in range(3):
        breaker.record_failure()
    assert breaker.retry_in() == 30, "closing resets the cool-down"


def test_a_probe_that_never_reports_frees_the_slot() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown=10, clock=clock)
    breaker.record_failure()
    clock.now += 10
    assert breaker.allow() and not breaker.allow()
    clock.now += 10
    assert breaker.allow()


# ------------------------------------------------------- one attempt is bounded (issue 17.4) and pinned (17.9)


async def _read_request(reader: asyncio.StreamReader) -> dict[str, str]:
    await reader.readline()
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return headers


@contextlib.asynccontextmanager
async def raw_server(handle: Any) -> AsyncIterator[int]:
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


def loopback_agency(port: int, host: str = "127.0.0.1") -> Agency:
    """A plain-http receiver on loopback (by address, or by a name the test's resolver maps there)."""
    return Agency(id="lbh-z", type=AgencyType.LEGAL_AID, channel=Channel.WEBHOOK, url=f"http://{host}:{port}/h",
                  secret=new_secret(), allow_private_network=True, allow_insecure_http=host != "127.0.0.1")


async def test_a_dripping_endpoint_is_cut_off_at_the_attempt_deadline(client: httpx.AsyncClient) -> None:
    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        with contextlib.suppress(ConnectionError):
            for byte in b"HTTP/1.1 200 OK\r\n" * 100:  # a byte at a time, never a whole head
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)
        writer.close()

    async with raw_server(drip) as port:
        started = time.monotonic()
        result = await deliver(client, loopback_agency(port), "evt-drip", BODY, datetime.now(UTC), deadline=1.0)
        took = time.monotonic() - started
    assert result.attempt.outcome == "failed" and result.retry
    assert result.attempt.error_class == "DeadlineExceeded" and result.attempt.http_status is None
    assert 1.0 <= took < 1.0 + 15, "the deadline, not the per-read timeout, ended it"


async def test_a_huge_answer_is_not_read(client: httpx.AsyncClient) -> None:
    sent = 0

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        with contextlib.suppress(ConnectionError):
            while sent < 800 * 2**20:  # 800 MB, made as it goes
                writer.write(chunk)
                await writer.drain()
                sent += 65536
        writer.close()

    async with raw_server(huge) as port:
        result = await deliver(client, loopback_agency(port), "evt-huge", BODY, datetime.now(UTC))
        await asyncio.sleep(0)
    assert result.delivered and result.attempt.http_status == 200
    assert sent < 64 * 2**20, f"{sent} bytes were sent: the answer was drained, not cut off"


async def test_the_request_goes_to_the_checked_address_with_the_name_kept(client: httpx.AsyncClient) -> None:
    seen: list[dict[str, str]] = []

    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    lookups: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return ["127.0.0.1"]

    async with raw_server(ok) as port:
        agency = loopback_agency(port, host="hook.lbh.example")
        result = await deliver(client, agency, "evt-pin", BODY, datetime.now(UTC), resolver=resolver)
        assert result.delivered
        assert lookups == [("hook.lbh.example", port)], "resolved once"
        assert seen[0]["host"] == f"hook.lbh.example:{port}", "the Host header keeps the name"

        async def rebinding(host: str, port: int) -> list[str]:
            return ["127.0.0.1", "169.254.169.254"]  # one address no registry entry may open

        strict = agency.model_copy(update={"allow_private_network": False})
        refused = await deliver(client, strict, "evt-pin", BODY, datetime.now(UTC), resolver=resolver)
        assert refused.attempt.outcome == "refused" and not refused.retry and refused.needs_coordinator
        assert "resolves to 127.0.0.1, which is loopback" in str(refused.problem)
        rebound = await deliver(client, agency, "evt-pin", BODY, datetime.now(UTC), resolver=rebinding)
        assert rebound.attempt.outcome == "refused" and "169.254.169.254" in str(rebound.problem)
        own = await deliver(client, agency, "evt-pin", BODY, datetime.now(UTC), resolver=resolver,
                            own_ports=frozenset({port}))
        assert own.attempt.outcome == "refused" and "Alur's own" in str(own.problem)
    assert len(seen) == 1, "nothing was sent to a refused destination"


async def test_tls_keeps_the_name_for_sni_and_verification() -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.215.14"]

    agency = Agency(id="lbh-t", type=AgencyType.LEGAL_AID, channel=Channel.WEBHOOK,
                    url="https://hook.lbh.example/alur", secret=new_secret())
    target = await pin(agency, resolver)
    assert isinstance(target, Pinned)
    assert str(target.url) == "https://93.184.215.14/alur"
    assert target.host_header == "hook.lbh.example" and target.extensions == {"sni_hostname": "hook.lbh.example"}


async def test_a_name_that_does_not_resolve_is_a_retried_failure(client: httpx.AsyncClient) -> None:
    async def nxdomain(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = await deliver(client, loopback_agency(1, host="gone.lbh.example"), "evt-nx", BODY, datetime.now(UTC),
                           resolver=nxdomain)
    assert result.attempt.outcome == "failed" and result.retry and result.attempt.error_class == "gaierror"
