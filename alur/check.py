"""`alur agency check ID`: the conformance check an integrator runs before going live.

A NATS agency: its credentials connect, its consumer `agency-<id>` exists and carries its subjects, and a
test event (`alur.test.v1` on `alur.referral.test.<id>`, which no service reads) can be pulled and
acknowledged through that consumer with exactly what `alur agency creds` prints. Anything else the pull
meets on the way (real referrals waiting) is handed back untouched (nak), never acknowledged.

A webhook agency: a test event signed with its secret, posted exactly as notify posts (`webhook.deliver`:
the same signing, destination checks and deadline), must get a 2xx, fast; the same event with a bad
signature must get a 4xx (a receiver that accepts it would accept anyone's).

Each check is one `CheckResult`; `passed` is the verdict of all of them.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import nats
from nats.js import JetStreamContext

from contracts import subjects
from contracts.catalog import TEST_EVENT
from contracts.destinations import ALUR_HTTP_PORTS
from contracts.envelope import CloudEvent
from contracts.events import TestEventData
from contracts.records import Agency
from contracts.vocab import Channel
from runtime.bus import publish
from runtime.security import agency_inbox_prefix
from services.notify.webhook import REQUEST_TIMEOUT, deliver

FAST_ANSWER = 5.0
"""Seconds within which a webhook should answer: notify waits `REQUEST_TIMEOUT` at most, and a receiver
that does its work before answering holds a delivery slot (answer 2xx first, work after)."""
PULL_DEADLINE = 20.0
"""Seconds the NATS check looks for its test event on the consumer."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check: its name, whether it passed, what was seen (no secret, no victim data), how long it took."""

    check: str
    passed: bool
    detail: str
    ms: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: (round(v, 1) if k == "ms" and v is not None else v) for k, v in asdict(self).items()}


def verdict(results: list[CheckResult]) -> bool:
    """Whether the agency may go live: every check ran and passed."""
    return bool(results) and all(r.passed for r in results)


def test_event(agency: str, check: str) -> CloudEvent[TestEventData]:
    """A fresh `alur.test.v1` for one agency and check."""
    data = TestEventData(agency=agency, check=check, nonce=uuid.uuid4().hex)
    return CloudEvent[TestEventData].build(type=TEST_EVENT, source="alur/check", subject=None, data=data)


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


# ---------------------------------------------------------------- NATS


async def check_nats(admin: JetStreamContext, agency: Agency, creds: dict[str, str]) -> list[CheckResult]:
    """Connect as the agency, find its consumer, pull and acknowledge a test event published by the admin."""
    results: list[CheckResult] = []
    durable = f"agency-{agency.id}"
    started = time.perf_counter()
    try:
        info = await admin.consumer_info(subjects.REFERRALS_STREAM, durable)
        filters = list(info.config.filter_subjects or ([info.config.filter_subject] if info.config.filter_subject
                                                       else []))
        carries = f"alur.referral.*.{agency.id}" in filters
        results.append(CheckResult("consumer exists", carries,
                                   f"REFERRALS/{durable} filters {', '.join(filters) or 'nothing'}", _ms(started)))
    except Exception as exc:
        results.append(CheckResult("consumer exists", False, f"REFERRALS/{durable}: {type(exc).__name__}",
                                   _ms(started)))
        return results
    started = time.perf_counter()
    try:
        nc = await nats.connect(creds["nats_url"], nkeys_seed_str=creds["nkey_seed"],
                                inbox_prefix=creds["inbox_prefix"], connect_timeout=5, max_reconnect_attempts=0,
                                allow_reconnect=False)
    except Exception as exc:
        results.append(CheckResult("credentials connect", False, f"{creds['nats_url']}: {type(exc).__name__}",
                                   _ms(started)))
        return results
    results.append(CheckResult("credentials connect", True, f"{creds['nats_url']} as {agency.id}", _ms(started)))
    try:
        results.append(await _pull_test_event(admin, nc.jetstream(timeout=10), agency.id, durable))
    finally:
        await nc.close()
    return results


async def _pull_test_event(admin: JetStreamContext, js: JetStreamContext, agency: str, durable: str) -> CheckResult:
    event = test_event(agency, "nats_pull")
    started = time.perf_counter()
    await publish(admin, subjects.test_event(agency), event)
    held: list[Any] = []
    try:
        sub = await js.pull_subscribe_bind(durable=durable, stream=subjects.REFERRALS_STREAM,
                                           inbox_prefix=f"{agency_inbox_prefix(agency)}.check.".encode())
        deadline = time.monotonic() + PULL_DEADLINE
        while time.monotonic() < deadline:
            try:
                batch = await sub.fetch(10, timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            except TimeoutError:
                continue
            for msg in batch:
                if msg.headers and msg.headers.get("Nats-Msg-Id") == event.id:
                    await msg.ack_sync(timeout=5)
                    return CheckResult("test event pulled and acknowledged", True,
                                       f"{subjects.test_event(agency)} via {durable}"
                                       + (f"; {len(held)} waiting message(s) handed back" if held else ""),
                                       _ms(started))
                held.append(msg)
        return CheckResult("test event pulled and acknowledged", False,
                           f"not pulled from {durable} within {PULL_DEADLINE:.0f} s", _ms(started))
    except Exception as exc:
        return CheckResult("test event pulled and acknowledged", False, f"{durable}: {type(exc).__name__}",
                           _ms(started))
    finally:
        for msg in held:  # real referrals met on the way: redelivered to the agency at once, never acked here
            try:
                await msg.nak()
            except Exception:  # noqa: S110 - an un-nakked message comes back after ack_wait anyway
                pass


# ---------------------------------------------------------------- webhook


def _forged(agency: Agency) -> Agency:
    """The agency with a secret that is not its own: what a forger would sign with."""
    return agency.model_copy(update={"secret": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()})


async def check_webhook(agency: Agency, *, own_ports: frozenset[int] = ALUR_HTTP_PORTS) -> list[CheckResult]:
    """Post a signed test event (2xx expected, fast) and a badly signed one (4xx expected); `own_ports` are
    Alur's own HTTP ports, which no webhook may point at (as at notify)."""
    results: list[CheckResult] = []
    async with httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT), follow_redirects=False,
                                 trust_env=False) as client:
        event = test_event(agency.id, "webhook_signed")
        signed = await deliver(client, agency, event.id, event.to_bytes(), datetime.now(UTC), own_ports=own_ports)
        status, ms = signed.attempt.http_status, signed.attempt.duration_ms
        results.append(CheckResult(
            "signed test event answered 2xx", signed.delivered,
            f"answered {status}" if status is not None else (signed.problem or "no answer"), ms))
        if status is not None:
            fast = ms is not None and ms <= FAST_ANSWER * 1000
            results.append(CheckResult("answered fast", fast, f"within {FAST_ANSWER:.0f} s is expected", ms))
        forged = test_event(agency.id, "webhook_bad_signature")
        bad = await deliver(client, _forged(agency), forged.id, forged.to_bytes(), datetime.now(UTC),
                            own_ports=own_ports)
        status = bad.attempt.http_status
        refused = status is not None and 400 <= status < 500
        results.append(CheckResult(
            "bad signature refused (4xx)", refused,
            f"answered {status}" if status is not None else (bad.problem or "no answer"), bad.attempt.duration_ms))
    return results


async def check_inbox(agency: Agency, board_url: str, http_token: str) -> list[CheckResult]:
    """The board answers at `board_url` and the agency's token opens its inbox there (`GET /api/inbox`)."""
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=board_url, timeout=httpx.Timeout(REQUEST_TIMEOUT), trust_env=False,
                                 headers={"Authorization": f"Bearer {http_token}"}) as client:
        try:
            answer = await client.get("/api/inbox")
        except httpx.HTTPError as exc:
            return [CheckResult("board reachable", False, f"{board_url}: {type(exc).__name__} (is the board running? "
                                                          "`alur up` runs it; set ALUR_BOARD_URL)", _ms(started))]
    results = [CheckResult("board reachable", True, board_url, _ms(started))]
    opened = answer.status_code == 200
    detail = (f"{len(answer.json())} open referrals waiting" if opened else
              f"answered {answer.status_code}: {answer.text[:120]}")
    results.append(CheckResult("token opens the inbox", opened, detail, _ms(started)))
    return results


async def check_agency(admin: JetStreamContext, agency: Agency, creds: dict[str, str] | None, *,
                       own_ports: frozenset[int] = ALUR_HTTP_PORTS) -> list[CheckResult]:
    """Every check of the agency's channel; an agency that is disabled or has no system channel fails."""
    if not agency.enabled:
        return [CheckResult("agency enabled", False, "disabled: enable it (alur agency add) before checking")]
    if agency.channel is Channel.WEBHOOK:
        return await check_webhook(agency, own_ports=own_ports)
    if agency.channel is Channel.NATS and creds is not None:
        return await check_nats(admin, agency, creds)
    if agency.channel is Channel.INBOX and creds is not None:
        return await check_inbox(agency, creds["board_url"], creds["http_token"])
    return [CheckResult("channel", False, f"channel {agency.channel.value}: nothing to check for a system")]


def report_json(agency: Agency, results: list[CheckResult]) -> str:
    """The `--json` form: the agency, its channel, the verdict and each check."""
    return json.dumps({"agency": agency.id, "channel": agency.channel.value, "passed": verdict(results),
                       "checks": [r.to_json() for r in results]}, indent=2) + "\n"
