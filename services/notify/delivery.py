"""Delivery: a new referral is tracked and handed to its agency, over NATS or a signed webhook.

Webhooks retry with backoff for days behind one circuit breaker per endpoint; a 410 disables the
endpoint, and deliveries that are refused or given up are raised to the coordinator.
"""

from __future__ import annotations

import contextlib
import json
import random

import httpx
from faststream.exceptions import NackMessage
from faststream.nats import NatsMessage
from nats.js.errors import NotFoundError

from alur.bus import publish
from alur.provision import ensure_agency_consumers
from alur.registry import Agency
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import EscalationData, ReferralRequestedData
from contracts.vocab import Channel, ReferralStatus
from services.notify.service import log, now, registry, service
from services.notify.state import DeliveryAttempt, ReferralState, record_attempt
from services.notify.store import StateConflict, load, mark_delivered, save, schedule, track
from services.notify.webhook import CircuitBreaker, deliver, retry_delay

breakers: dict[str, CircuitBreaker] = {}
_rng = random.Random()
_http: httpx.AsyncClient | None = None


async def open_http() -> None:
    """Open the client webhooks are posted with; redirects are not followed."""
    global _http
    _http = httpx.AsyncClient(timeout=httpx.Timeout(15.0), follow_redirects=False)


async def close_http() -> None:
    if _http is not None:
        await _http.aclose()


async def _agency_reachable(agency: Agency) -> bool:
    spec = service.topology.consumer_for_agency(agency.id)
    try:
        await service.js.consumer_info(spec.stream, spec.durable)
        return True
    except NotFoundError:
        await ensure_agency_consumers(service.js, service.topology, [agency])
        return True


@service.subscriber("notify-requests")
async def on_requested(msg: NatsMessage) -> None:
    """Start tracking a new referral: state in KV, its acknowledgement timer, and delivery over NATS."""
    request = CloudEvent[ReferralRequestedData].model_validate_json(msg.raw_message.data).data
    state = await track(request)
    await schedule(state)
    agency = registry().get(state.agency)
    if agency is not None and agency.enabled and agency.channel is Channel.NATS and state.status is ReferralStatus.REQUESTED:
        if await _agency_reachable(agency):
            await mark_delivered(state.referral_id)


# ------------------------------------------------------------------ webhooks


def _breaker(url: str) -> CircuitBreaker:
    if url not in breakers:
        breakers[url] = CircuitBreaker(scale=service.settings.sla_scale)
    return breakers[url]


def _attempt_number(state: ReferralState | None, event_id: str, deliveries: int) -> int:
    """Which try this is for the event: the attempts recorded for it plus one (redeliveries held by an open
    breaker do not count); the message's delivery count when the referral is not tracked."""
    if state is None:
        return max(1, deliveries)
    made = sum(1 for a in state.attempts if a.event_id == event_id and a.outcome != "circuit_open")
    return made + 1


async def _record(referral_id: str, attempt: DeliveryAttempt) -> None:
    for _ in range(5):
        loaded = await load(referral_id)
        if loaded is None:
            return
        with contextlib.suppress(StateConflict):
            await save(record_attempt(loaded[0], attempt), loaded[1])
            return


async def _raise_to_coordinator(referral_id: str, case_id: str, agency: str, reason: str, key: str) -> None:
    secretariat = registry().secretariat()
    loaded = await load(referral_id)
    due = loaded[0].due if loaded else now()
    data = EscalationData(
        referral_id=referral_id, case_id=case_id, agency=agency, status="escalated", level=2, action="raise",
        target="coordinator", overdue="delivery", due=due, notify=[secretariat.id] if secretariat else [],
        reason=reason,
    )
    event = CloudEvent[EscalationData].build(
        type="alur.referral.escalated.v1", source="alur/notify", subject=referral_id, data=data,
        id=derived_id("referral.escalated.delivery", referral_id, key),
    )
    await publish(service.js, subjects.referral("escalated", agency), event)
    log.warning("raised to the coordinator", referral_id=referral_id, agency=agency, reason=reason)


@service.subscriber("notify-deliveries")
async def on_delivery(msg: NatsMessage) -> None:
    """POST each event meant for a webhook agency, signed; retry with backoff for days; 410 disables it."""
    raw = msg.raw_message
    parsed = subjects.parse(raw.subject)
    agency = registry().get(parsed.key)
    if agency is None or agency.channel is not Channel.WEBHOOK or not agency.enabled:
        return
    event = json.loads(raw.data)
    data = event.get("data", {})
    referral_id = data.get("referral_id", "")
    if parsed.verb == "requested":
        # This consumer may see the request before `notify-requests` does: track it here too, so the
        # attempts and `delivered` below always have a state to land on.
        state: ReferralState | None = await track(CloudEvent[ReferralRequestedData].model_validate_json(raw.data).data)
    else:
        state = (await load(referral_id) or (None, 0))[0]
    if parsed.verb == "requested" and state is not None and state.status.terminal:
        log.info("delivery dropped: referral already terminal", referral_id=referral_id, status=state.status.value)
        return
    attempt = _attempt_number(state, event["id"], raw.metadata.num_delivered)
    breaker = _breaker(agency.url or "")
    assert _http is not None
    result = await deliver(_http, agency, event["id"], raw.data, now(), attempt=attempt, breaker=breaker)
    if result.attempt.outcome == "circuit_open":
        # Not an attempt: nothing was sent. Wait for the breaker's probe slot without using up retries,
        # but never past the consumer's last redelivery, where JetStream would drop it without a word.
        if raw.metadata.num_delivered >= service.consumer("notify-deliveries").max_deliver - 1:
            await _raise_to_coordinator(referral_id, data.get("case_id", ""), agency.id,
                                        "webhook delivery held by an open circuit for too long: given up", "held")
            return
        log.info("webhook delivery held: circuit open", referral_id=referral_id, agency=agency.id,
                 delay=round(result.retry_after or 0.0, 3))
        raise NackMessage(delay=max(0.05, result.retry_after or breaker.retry_in()))
    await _record(referral_id, result.attempt)
    if result.delivered:
        log.info("webhook delivered", referral_id=referral_id, agency=agency.id, kind=parsed.verb, attempt=attempt)
        if parsed.verb == "requested":
            await mark_delivered(referral_id)
        return
    if result.disable_endpoint:
        await service.registry_store.put(agency.model_copy(update={"enabled": False}))  # type: ignore[union-attr]
        await _raise_to_coordinator(referral_id, data.get("case_id", ""), agency.id,
                                    "webhook endpoint answered 410 Gone: it is disabled until the agency fixes it",
                                    "gone")
        return
    if result.needs_coordinator and attempt == 1:
        await _raise_to_coordinator(referral_id, data.get("case_id", ""), agency.id,
                                    f"webhook refused the delivery: {result.problem}", "refused")
    delay = retry_delay(attempt, service.settings.sla_scale, result.retry_after, _rng) if result.retry else None
    if delay is None:
        await _raise_to_coordinator(referral_id, data.get("case_id", ""), agency.id,
                                    f"webhook delivery given up after {attempt} attempts: {result.problem}", "gave-up")
        return
    log.warning("webhook delivery will be retried", referral_id=referral_id, agency=agency.id, attempt=attempt,
                delay=round(delay, 3), problem=result.problem)
    raise NackMessage(delay=delay)
