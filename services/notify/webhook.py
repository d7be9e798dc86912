"""Outbound webhooks per Standard Webhooks: signing, one delivery attempt, its retry delay, and a breaker.

`deliver` makes exactly one attempt and classifies it; retrying is the caller's job (a NATS nak with
`retry_delay(...)` as delay), so a retry survives a restart. Every non-2xx is retried on the schedule
except 410 Gone (the endpoint is withdrawn: disable it and tell the coordinator): an agency endpoint
answering 401 after a secret rotation or 404 during a redeploy is fixed by a person within days, and a
referral for a victim must not be dropped at the first 4xx. Such client errors set `needs_coordinator`
so a person hears about them at once instead of after the last retry. 3xx is a failure (no redirects).

One attempt can hold nothing for long and little in memory: it has an overall deadline (`ATTEMPT_DEADLINE`,
resolution, connection, request and answer together; a per-read timeout alone lets a server dripping a
byte every few seconds hold it for ever), and of the answer only the status, the headers and at most
`MAX_ANSWER_BYTES` of the body are read (a huge body is not drained: the connection is closed instead).
The destination is checked by `contracts.destinations` on every address the host resolves to, and the
request goes to the address that was checked, the URL's host kept for `Host` and for TLS (SNI and
certificate verification), so a name that resolves elsewhere on a second lookup cannot slip through.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import httpx
from standardwebhooks.webhooks import Webhook

from contracts.destinations import ALUR_HTTP_PORTS, resolved_problem
from contracts.records import LOOPBACK_HOSTS, Agency
from contracts.vocab import Channel
from services.notify.state import AttemptOutcome, DeliveryAttempt

RETRY_SCHEDULE: tuple[float, ...] = (
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    14 * 3600,
    20 * 3600,
    24 * 3600,
    24 * 3600,
    24 * 3600,
    24 * 3600,
)
"""Nominal seconds before retry n (Standard Webhooks' example schedule, then daily): 6.15 days in all."""

JITTER = 0.5
"""Each delay is drawn uniformly from [(1 - JITTER) * nominal, nominal]: even the shortest draw spans 3 days."""

MAX_RETRY_AFTER = 24 * 3600.0
"""A server's Retry-After is honoured up to a day, so one bad header cannot park a referral for a year."""

REQUEST_TIMEOUT = 15.0
"""Seconds for each connect, write or read of an attempt (httpx's per-operation timeouts)."""
ATTEMPT_DEADLINE = 20.0
"""Seconds one whole attempt may take, from resolving the host to the status line: a real deadline, not
scaled by `ALUR_SLA_SCALE` (it bounds how long an endpoint holds a delivery slot, not a referral's clock)."""
ANSWER_READ_GRACE = 2.0
"""Seconds spent reading the answer's body once the status is in: it is read only so a short body can
leave the connection reusable."""
MAX_ANSWER_BYTES = 4096
"""Bytes of the answer's body read at most; the rest is never read (the connection is closed)."""
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})


def retry_delay(attempt: int, scale: float, retry_after: float | None, rng: random.Random) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1 = the first), or None to give up.

    Bounded jitter over `RETRY_SCHEDULE`, never sooner than the server's `retry_after` (capped at
    `MAX_RETRY_AFTER`); all of it times `scale`, the drill factor (`ALUR_SLA_SCALE`).
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, not {attempt}")
    if attempt > len(RETRY_SCHEDULE):
        return None
    nominal = RETRY_SCHEDULE[attempt - 1]
    delay = nominal * (1 - JITTER * rng.random())
    if retry_after is not None:
        delay = max(delay, min(max(retry_after, 0.0), MAX_RETRY_AFTER))
    return delay * scale


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """A `Retry-After` header (delta seconds or an HTTP date) as seconds from `now`; None if absent or bad."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def sign(agency: Agency, event_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """Standard Webhooks headers for `body`: `webhook-id` (stable across retries), timestamp, `v1` signature."""
    if agency.secret is None:
        raise ValueError(f"agency {agency.id} has no webhook secret")
    if now.tzinfo is None:
        raise ValueError("`now` must be timezone-aware")
    # The library stamps the datetime as UTC without converting it: hand it UTC.
    at = now.astimezone(UTC)
    signature = Webhook(agency.secret).sign(event_id, at, body.decode("utf-8"))
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def transport_problem(agency: Agency) -> str | None:
    """Why nothing may be sent to this agency's webhook, or None: checked again at every send."""
    if not agency.enabled:
        return f"agency {agency.id} is disabled"
    if agency.channel is not Channel.WEBHOOK or not agency.url or not agency.secret:
        return f"agency {agency.id} has no webhook channel with a url and a secret"
    parts = urlsplit(agency.url)
    if parts.scheme == "https" and parts.hostname:
        return None
    if parts.scheme == "http" and parts.hostname:
        if parts.hostname in LOOPBACK_HOSTS or agency.allow_insecure_http:
            return None
        return f"plain http to {parts.hostname} is refused for agency {agency.id}; use https"
    return f"agency {agency.id} webhook url is not an http(s) URL"


Resolver = Callable[[str, int], Awaitable[list[str]]]
"""`(host, port) -> the addresses it resolves to now`."""


async def resolve(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (system resolver, TCP), in the resolver's order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class Pinned:
    """Where one attempt connects: the URL with the checked address for its host, the `Host` header, and
    for https the name TLS must present and verify (SNI)."""

    url: httpx.URL
    host_header: str
    sni_hostname: str | None

    @property
    def extensions(self) -> dict[str, str]:
        return {"sni_hostname": self.sni_hostname} if self.sni_hostname else {}


async def pin(
    agency: Agency, resolver: Resolver = resolve, own_ports: frozenset[int] = ALUR_HTTP_PORTS
) -> Pinned | str:
    """Resolve the agency's webhook host once and check every address: the pinned target, or why it is
    refused. A resolver failure raises `OSError` (a transport failure, retried)."""
    assert agency.url is not None
    url = httpx.URL(agency.url)
    host = url.raw_host.decode("ascii")
    port = url.port or (443 if url.scheme == "https" else 80)
    addresses = await resolver(host, port)  # OSError (no such name, resolver down): a failed, retried attempt
    problem = resolved_problem(host, addresses, port, allow_private=agency.allow_private_network,
                               own_ports=own_ports)
    if problem is not None:
        return problem
    return Pinned(url=url.copy_with(host=addresses[0]), host_header=url.netloc.decode("ascii"),
                  sni_hostname=host if url.scheme == "https" else None)


BreakerState = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Per endpoint: stop hammering an agency that keeps failing, probe again after a cool-down.

    Closed until `failure_threshold` failures in a row; open for `cooldown` seconds (times `scale`),
    doubling up to `max_cooldown` each time a probe fails; then half-open, letting one probe through.
    A probe that never reports frees the slot after another cool-down. `clock` is monotonic seconds.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooldown: float = 60.0,
        max_cooldown: float = 3600.0,
        scale: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1 or cooldown <= 0 or max_cooldown < cooldown or scale <= 0:
            raise ValueError("failure_threshold >= 1, 0 < cooldown <= max_cooldown and scale > 0 are required")
        self._threshold = failure_threshold
        self._base_cooldown = cooldown * scale
        self._max_cooldown = max_cooldown * scale
        self._clock = clock
        self._failures = 0
        self._cooldown = self._base_cooldown
        self._opened_at: float | None = None
        self._probe_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return "closed"
        return "half_open" if self._clock() - self._opened_at >= self._cooldown else "open"

    def allow(self) -> bool:
        """Whether a request may go now; in half-open, only the one probe."""
        state = self.state
        if state == "closed":
            return True
        if state == "open":
            return False
        now = self._clock()
        if self._probe_at is None or now - self._probe_at >= self._cooldown:
            self._probe_at = now
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until the breaker lets a probe through (0 when it would now)."""
        if self._opened_at is None:
            return 0.0
        if self._probe_at is not None:
            return max(0.0, self._probe_at + self._cooldown - self._clock())
        return max(0.0, self._opened_at + self._cooldown - self._clock())

    def record_success(self) -> None:
        self._failures = 0
        self._cooldown = self._base_cooldown
        self._opened_at = None
        self._probe_at = None

    def record_failure(self) -> None:
        now = self._clock()
        if self._opened_at is not None:
            if self.state == "half_open":
                self._cooldown = min(self._cooldown * 2, self._max_cooldown)
            self._opened_at = now
            self._probe_at = None
            return
        self._failures += 1
        if self._failures >= self._threshold:
            self._opened_at = now


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """One attempt, classified. `attempt` goes to `ReferralState.attempts` (via `record_attempt`)."""

    attempt: DeliveryAttempt
    retry: bool
    retry_after: float | None = None
    disable_endpoint: bool = False
    needs_coordinator: bool = False
    problem: str | None = None

    @property
    def delivered(self) -> bool:
        return self.attempt.outcome == "delivered"


def _classify(status: int, retry_after: float | None, record: DeliveryAttempt) -> DeliveryResult:
    if 200 <= status < 300:
        return DeliveryResult(record, retry=False)
    if status == 410:
        return DeliveryResult(
            record, retry=False, disable_endpoint=True, needs_coordinator=True, problem="endpoint answered 410 Gone"
        )
    client_error = 300 <= status < 500 and status not in RETRYABLE_CLIENT_ERRORS
    return DeliveryResult(
        record,
        retry=True,
        retry_after=retry_after,
        needs_coordinator=client_error,
        problem=f"endpoint answered {status}",
    )


async def deliver(
    client: httpx.AsyncClient,
    agency: Agency,
    event_id: str,
    body: bytes,
    now: datetime,
    *,
    attempt: int = 1,
    breaker: CircuitBreaker | None = None,
    timeout: float = REQUEST_TIMEOUT,
    deadline: float = ATTEMPT_DEADLINE,
    resolver: Resolver = resolve,
    own_ports: frozenset[int] = ALUR_HTTP_PORTS,
) -> DeliveryResult:
    """POST one signed event to the agency's webhook and classify the answer; never raises for HTTP trouble.

    The whole attempt runs under `deadline`; the body of the answer is read up to `MAX_ANSWER_BYTES`.
    """

    def record(
        outcome: AttemptOutcome, http_status: int | None = None, error: str | None = None, ms: float | None = None
    ) -> DeliveryAttempt:
        return DeliveryAttempt(
            at=now,
            attempt=attempt,
            channel=Channel.WEBHOOK,
            outcome=outcome,
            event_id=event_id,
            http_status=http_status,
            error_class=error,
            duration_ms=ms,
        )

    def refused(problem: str | None) -> DeliveryResult:
        return DeliveryResult(
            record("refused", error="TransportRefused"), retry=False, needs_coordinator=True, problem=problem
        )

    problem = transport_problem(agency)
    if problem is not None or agency.url is None:
        return refused(problem)
    started = time.perf_counter()
    status: int | None = None
    retry_header: str | None = None
    failure: str | None = None
    try:
        async with asyncio.timeout(deadline):
            target = await pin(agency, resolver, own_ports)
            if isinstance(target, str):
                return refused(target)
            if breaker is not None and not breaker.allow():
                return DeliveryResult(
                    record("circuit_open"), retry=True, retry_after=breaker.retry_in(),
                    problem="circuit breaker open",
                )
            headers = {**sign(agency, event_id, body, now), "host": target.host_header}
            async with client.stream(
                "POST", target.url, content=body, headers=headers, timeout=timeout, follow_redirects=False,
                extensions=target.extensions,
            ) as response:
                status, retry_header = response.status_code, response.headers.get("retry-after")
                with contextlib.suppress(TimeoutError, httpx.HTTPError):
                    async with asyncio.timeout(ANSWER_READ_GRACE):
                        await _read_at_most(response, MAX_ANSWER_BYTES)
    except TimeoutError:
        failure = "DeadlineExceeded"
    except (httpx.HTTPError, OSError) as exc:
        failure = type(exc).__name__
    ms = (time.perf_counter() - started) * 1000
    if status is None:
        if breaker is not None:
            breaker.record_failure()
        error = failure or "NoAnswer"
        return DeliveryResult(record("failed", error=error, ms=ms), retry=True, problem=f"transport error {error}")
    outcome: AttemptOutcome = "delivered" if 200 <= status < 300 else "gone" if status == 410 else "failed"
    if breaker is not None and outcome == "delivered":
        breaker.record_success()
    elif breaker is not None:
        breaker.record_failure()
    retry_after = parse_retry_after(retry_header, now)
    return _classify(status, retry_after, record(outcome, http_status=status, ms=ms))


async def _read_at_most(response: httpx.Response, limit: int) -> None:
    """Read and drop the answer's body until it ends or `limit` bytes came: a short body completes the
    response (the connection can be reused), a long one is left unread and its connection closed."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read >= limit:
            return
