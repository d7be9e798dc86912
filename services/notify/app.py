"""Notify: delivers every referral, tracks it to an outcome, and escalates when an agency is silent.

The decisions are pure (`lifecycle`, `state`, `escalation`, `webhook`); this module is their edge:
the referral state lives in the KV bucket `referrals` (compare-and-set), timers are JetStream message
schedules (one schedule subject per referral, so a new plan replaces the old), and every fact is
published once to REFERRALS with a `Nats-Msg-Id` derived from referral and transition.
Run alone: `faststream run services.notify.app:app` or `alur serve notify`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from datetime import UTC, datetime, timedelta
from collections.abc import AsyncIterator
from typing import Any

import httpx
from faststream.exceptions import NackMessage
from faststream.nats import NatsMessage
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from pydantic import ValidationError

from alur.bus import SafeError, publish, publish_raw
from alur.profile import profile_dir
from alur.provision import ensure_agency_consumers
from alur.registry import Agency, AgencyRegistry
from alur.service import Request, Response, Service
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import (
    EscalationData,
    ReferralRequestedData,
    ReferralStatusData,
    ResponseData,
    ResponseRefusedData,
)
from contracts.vocab import Channel, ReferralStatus
from services.intake.reasons import reasons_from
from services.notify.escalation import arm, on_fire
from services.notify.lifecycle import check_transition, validate_response
from services.notify.policy import load_policy
from services.notify.state import (
    DeliveryAttempt,
    ReferralState,
    Timer,
    TransitionRefused,
    ReferralEvent,
    apply,
    fold,
    new_state,
    record_attempt,
)
from services.notify.webhook import CircuitBreaker, deliver, retry_delay

service = Service(
    "notify", consumers=["notify-requests", "notify-responses", "notify-timers", "notify-deliveries"]
)
broker = service.broker
app = service.app
log = service.log
policy = load_policy(profile_dir() / "escalation.yaml", scale=service.settings.sla_scale)
AUDIT_EVERY = max(0.5, 60 * service.settings.sla_scale)
UNKNOWN_REFERRAL_RETRIES = 5
REPUBLISH_WITHIN = timedelta(minutes=5)  # well inside the streams' 10-minute duplicate window
REBUILD_READ_TIMEOUT = 2.0
CAS_ATTEMPTS = 5
REROUTED = frozenset({ReferralStatus.REJECTED, ReferralStatus.REDIRECTED, ReferralStatus.EXPIRED})
_STATUS_VERBS = frozenset(s.value for s in ReferralStatus) - {ReferralStatus.REQUESTED.value}
breakers: dict[str, CircuitBreaker] = {}
_rng = random.Random()
_http: httpx.AsyncClient | None = None


class StateConflict(SafeError):
    """The referral changed while we wrote it; the redelivery reads it again."""


def _registry() -> AgencyRegistry:
    assert service.registry_store is not None
    return service.registry_store.current


def _now() -> datetime:
    return datetime.now(UTC)


# ------------------------------------------------------------------ state and facts


async def _kv() -> Any:
    return await service.js.key_value("referrals")


async def load(referral_id: str) -> tuple[ReferralState, int] | None:
    try:
        entry = await (await _kv()).get(referral_id)
    except KeyNotFoundError:
        return None
    return ReferralState.model_validate_json(entry.value), entry.revision


async def save(state: ReferralState, revision: int | None) -> None:
    kv = await _kv()
    payload = state.model_dump_json().encode()
    try:
        if revision is None:
            await kv.create(state.referral_id, payload)
        else:
            await kv.update(state.referral_id, payload, last=revision)
    except KeyWrongLastSequenceError:
        raise StateConflict(f"referral {state.referral_id} changed concurrently") from None


async def _scan_referrals(filter_subject: str) -> AsyncIterator[Any]:
    """Every REFERRALS message matching `filter_subject`, oldest first (an ordered consumer; nothing kept)."""
    info = await service.js.stream_info(subjects.REFERRALS_STREAM, subjects_filter=filter_subject)
    if not info.state.subjects:
        return
    sub = await service.js.subscribe(
        filter_subject, stream=subjects.REFERRALS_STREAM, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=REBUILD_READ_TIMEOUT)
            except TimeoutError:
                return
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _event_data(msg: Any, referral_id: str) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError, AttributeError):
        data = json.loads(msg.data).get("data")
        if isinstance(data, dict) and data.get("referral_id") == referral_id:
            return data
    return None


async def rebuild(referral_id: str) -> tuple[ReferralState, int] | None:
    """The state of a referral missing from KV, folded from its REFERRALS events and stored again; None if
    REFERRALS holds no request for it. The timer is re-armed under the current policy."""
    request: ReferralRequestedData | None = None
    async with contextlib.aclosing(_scan_referrals(f"{subjects.PREFIX}.referral.requested.*")) as msgs:
        async for msg in msgs:
            data = _event_data(msg, referral_id)
            if data is not None:
                request = ReferralRequestedData.model_validate(data)
                break
    if request is None:
        return None
    events: list[ReferralEvent] = [request]
    async with contextlib.aclosing(_scan_referrals(f"{subjects.PREFIX}.referral.*.{request.agency}")) as msgs:
        async for msg in msgs:
            data = _event_data(msg, referral_id)
            verb = subjects.parse(msg.subject).verb
            if data is None or verb == "requested":
                continue
            with contextlib.suppress(ValidationError):
                if verb in ("reminded", "escalated"):
                    events.append(EscalationData.model_validate(data))
                elif verb in _STATUS_VERBS:
                    events.append(ReferralStatusData.model_validate(data))
    state = arm(fold(events, policy), _now())
    try:
        await save(state, None)
    except StateConflict:
        return await load(referral_id)
    await schedule(state)
    service.count("state_rebuilt")
    log.warning("referral state rebuilt from REFERRALS", referral_id=referral_id, case_id=state.case_id,
                agency=state.agency, status=state.status.value, events=len(events))
    return await load(referral_id)


async def load_or_rebuild(referral_id: str) -> tuple[ReferralState, int] | None:
    """The referral's state from KV, else rebuilt from REFERRALS (KV lost or purged), else None."""
    loaded = await load(referral_id)
    if loaded is not None:
        return loaded
    return await rebuild(referral_id)


async def publish_status(state: ReferralState, *, recovering: bool = False) -> bool:
    """Publish the fact of the state's latest transition, once (the id derives from referral and step).

    Returns whether the fact is new to the stream. `recovering` is the auditor's pass over recent
    transitions: a fact lost in a crash between saving the state and publishing it goes out then,
    and one already published is dropped by JetStream's duplicate window.
    """
    last = state.history[-1]
    data = ReferralStatusData(
        referral_id=state.referral_id, case_id=state.case_id, agency=state.agency, status=last.status,
        reason=last.reason, note=last.note, redirect_to=last.redirect_to, service=state.service,
        agency_type=state.agency_type, at=last.at,
    )
    step = f"{state.referral_id}:{last.status.value}:{len(state.history)}"
    event = CloudEvent[ReferralStatusData].build(
        type=f"alur.referral.{last.status.value}.v1", source="alur/notify", subject=state.referral_id,
        data=data, id=derived_id("referral.status", step), time=last.at,
    )
    ack = await publish(service.js, subjects.referral(last.status.value, state.agency), event)
    if ack.duplicate:
        return False
    service.count(f"referral_{last.status.value}")
    log.info(f"referral {last.status.value}", referral_id=state.referral_id, case_id=state.case_id,
             agency=state.agency, reason=last.reason, recovered=recovering)
    if last.status.terminal:
        await _publish_outcome(state)
    return True


async def _publish_outcome(state: ReferralState) -> None:
    """Tell the coordinator the referral's structured outcome, and whether the case's loop is closed."""
    secretariat = _registry().secretariat()
    if secretariat is None:
        return
    open_left = await _open_referrals_of(state.case_id)
    outcome = state.outcome.model_dump(mode="json") if state.outcome else {}
    data = {
        "referral_id": state.referral_id, "case_id": state.case_id, "agency": state.agency,
        "service": state.service.value, "status": state.status.value, "outcome": outcome,
        "all_referrals_terminal": not open_left, "open_referrals": open_left,
    }
    event = CloudEvent[dict[str, Any]].build(
        type="alur.referral.outcome.v1", source="alur/notify", subject=state.referral_id, data=data,
        id=derived_id("referral.outcome", state.referral_id, state.status.value),
    )
    await publish(service.js, subjects.referral("outcome", secretariat.id), event)
    if not open_left:
        log.info("case loop closed: every referral has an outcome", case_id=state.case_id)


async def _open_referrals_of(case_id: str) -> list[str]:
    try:
        record = json.loads((await (await service.js.key_value("case-referrals")).get(case_id)).value)
    except (KeyNotFoundError, NotFoundError):
        return []
    open_ids = []
    for referral_id, entry in record.get("referrals", {}).items():
        loaded = await load(referral_id)
        if loaded is None or not loaded[0].status.terminal:
            open_ids.append(referral_id)
        elif loaded[0].status in REROUTED and not (isinstance(entry, dict) and entry.get("rerouted_to")):
            open_ids.append(referral_id)  # routing has yet to send its service to the next agency
    return sorted(open_ids)


async def schedule(state: ReferralState) -> None:
    """Arm the referral's next timer as a JetStream message schedule; it replaces any earlier one."""
    timer = state.escalation.timer
    if timer is None:
        return
    fire_at = max(timer.fire_at, _now() + timedelta(milliseconds=50)).astimezone(UTC)
    headers = {
        "Nats-Schedule": f"@at {fire_at.isoformat()}",
        "Nats-Schedule-Target": subjects.timer_fired(state.referral_id, timer.purpose),
        "Nats-Msg-Id": f"timer:{timer.token}",
    }
    await service.js.publish(
        subjects.timer_schedule(state.referral_id, "next"), timer.model_dump_json().encode(), headers=headers,
        timeout=5,
    )


async def transition(
    referral_id: str, status: ReferralStatus, actor: str, *, reason: str | None = None,
    note: str | None = None, redirect_to: str | None = None,
) -> ReferralState | None:
    """Apply one transition with compare-and-set, publish its fact and re-arm the timer; None if a no-op.

    A concurrent write (a timer firing, a delivery attempt recorded) makes it read the state again and
    re-decide, so an agency's answers are never reordered by a retry of the message.
    """
    for _ in range(CAS_ATTEMPTS):
        loaded = await load(referral_id)
        if loaded is None:
            return None
        state, revision = loaded
        verdict = check_transition(state.status, status, actor)  # type: ignore[arg-type]
        if verdict.duplicate and status is state.status and not (reason or note):
            return None
        moved = arm(apply(state, status, actor, at=_now(), reason=reason, note=note, redirect_to=redirect_to), _now())  # type: ignore[arg-type]
        if moved.version == state.version and moved.status is state.status and len(moved.history) == len(state.history):
            return None
        try:
            await save(moved, revision)
        except StateConflict:
            continue
        await publish_status(moved)
        await schedule(moved)
        return moved
    raise StateConflict(f"referral {referral_id} kept changing concurrently")


# ------------------------------------------------------------------ requested → tracked, delivered


async def _agency_reachable(agency: Agency) -> bool:
    spec = service.topology.consumer_for_agency(agency.id)
    try:
        await service.js.consumer_info(spec.stream, spec.durable)
        return True
    except NotFoundError:
        await ensure_agency_consumers(service.js, service.topology, [agency])
        return True


async def track(request: ReferralRequestedData) -> ReferralState:
    """The referral's state, created (with its first timer armed) if notify does not track it yet."""
    loaded = await load(request.referral_id)
    if loaded is not None:
        return loaded[0]
    state = arm(new_state(request, policy, _now()), _now())
    try:
        await save(state, None)
    except StateConflict:
        return (await load(request.referral_id))[0]  # type: ignore[index]
    log.info("tracking referral", referral_id=state.referral_id, case_id=state.case_id, agency=state.agency,
             due=state.due.isoformat(), timer=state.escalation.timer.purpose if state.escalation.timer else None)
    await schedule(state)
    return state


async def mark_delivered(referral_id: str) -> None:
    """`delivered`, unless the referral already moved past it (or closed) meanwhile."""
    with contextlib.suppress(TransitionRefused):
        await transition(referral_id, ReferralStatus.DELIVERED, "system")


@service.subscriber("notify-requests")
async def on_requested(msg: NatsMessage) -> None:
    """Start tracking a new referral: state in KV, its acknowledgement timer, and delivery over NATS."""
    request = CloudEvent[ReferralRequestedData].model_validate_json(msg.raw_message.data).data
    state = await track(request)
    await schedule(state)
    agency = _registry().get(state.agency)
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
    secretariat = _registry().secretariat()
    loaded = await load(referral_id)
    due = loaded[0].due if loaded else _now()
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
    agency = _registry().get(parsed.key)
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
    result = await deliver(_http, agency, event["id"], raw.data, _now(), attempt=attempt, breaker=breaker)
    if result.attempt.outcome == "circuit_open":
        # Not an attempt: nothing was sent. Wait for the breaker's probe slot without using up retries.
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


# ------------------------------------------------------------------ responses


async def _refuse(sender: str, code: str, reason: str, *, referral_id: str | None, status: str | None, key: str) -> None:
    data = ResponseRefusedData(referral_id=referral_id, agency=sender, status=status, reason=reason, code=code)  # type: ignore[arg-type]
    event = CloudEvent[ResponseRefusedData].build(
        type="alur.referral.response_refused.v1", source="alur/notify", subject=referral_id, data=data,
        id=derived_id("response.refused", key),
    )
    await publish(service.js, subjects.referral("response_refused", sender), event)
    service.count("response_refused")
    log.warning("response refused", agency=sender, referral_id=referral_id, code=code, reason=reason)


def parse_response(raw: bytes) -> tuple[str | None, ResponseData | None, str | None]:
    """(event id, response, problem): the `data` of a response CloudEvent, or why it cannot be read."""
    try:
        event = json.loads(raw)
    except ValueError:
        return None, None, "body is not JSON"
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        return None, None, "body is not a CloudEvent with a `data` object"
    event_id = event.get("id") if isinstance(event.get("id"), str) else None
    try:
        return event_id, ResponseData.model_validate(event["data"]), None
    except ValidationError as exc:
        return event_id, None, "; ".join(reasons_from(exc))


# One response at a time, in stream order: FastStream runs a fetched batch concurrently, and an agency's
# `accepted` must be recorded before its `completed`.
@service.subscriber("notify-responses", batch_size=1)
async def on_response(msg: NatsMessage) -> None:
    """Check an agency's answer (sender, transition, reason) and record it, or refuse it with the reason."""
    raw = msg.raw_message
    sender = subjects.parse(raw.subject).key
    event_id, response, problem = parse_response(raw.data)
    key = f"{sender}:{event_id or raw.metadata.sequence.stream}"
    if response is None:
        await _refuse(sender, "bad_body", problem or "unreadable", referral_id=None, status=None, key=key)
        return
    loaded = await load_or_rebuild(response.referral_id)
    if loaded is None:
        if raw.metadata.num_delivered < UNKNOWN_REFERRAL_RETRIES:
            raise NackMessage(delay=max(0.2, 2.0 * service.settings.sla_scale))
        await _refuse(sender, "unknown_referral", f"no referral {response.referral_id} is known",
                      referral_id=response.referral_id, status=response.status.value, key=key)
        return
    state = loaded[0]
    refusal = validate_response(response, state.status, sender=sender, holder=state.agency)
    if refusal is not None:
        await _refuse(sender, refusal.code, refusal.reason, referral_id=response.referral_id,
                      status=response.status.value, key=key)
        return
    try:
        moved = await transition(response.referral_id, ReferralStatus(response.status.value), "agency",
                                 reason=response.reason, note=response.note, redirect_to=response.redirect_to)
    except TransitionRefused as exc:
        await _refuse(sender, "impossible_transition", exc.transition.reason, referral_id=response.referral_id,
                      status=response.status.value, key=key)
        return
    if moved is None:
        log.info("duplicate response ignored", referral_id=response.referral_id, status=response.status.value)


@service.route("POST", "/v1/referrals/{referral_id}/responses")
async def post_response(request: Request) -> Response:
    """An agency's answer over HTTP: checked now (401/403/404/409/422), stored in REPORTS, then recorded."""
    assert service.credentials is not None
    token = request.bearer
    sender = await service.credentials.agency_for_token(token, _registry()) if token else None
    if sender is None:
        return Response(401, {"error": "missing or unknown bearer token"})
    referral_id = request.params["referral_id"]
    try:
        body = json.loads(request.body)
    except ValueError:
        return Response(400, {"error": "body is not JSON"})
    if not isinstance(body, dict):
        return Response(422, {"reasons": ["body: must be a JSON object"]})
    if body.get("referral_id", referral_id) != referral_id:
        return Response(422, {"reasons": ["referral_id: differs from the referral in the path"]})
    try:
        response = ResponseData.model_validate({**body, "referral_id": referral_id})
    except ValidationError as exc:
        return Response(422, {"reasons": reasons_from(exc, ())})
    loaded = await load_or_rebuild(referral_id)
    if loaded is None:
        return Response(404, {"error": f"no referral {referral_id}"})
    state = loaded[0]
    refusal = validate_response(response, state.status, sender=sender, holder=state.agency)
    if refusal is not None:
        status = {"wrong_agency": 403, "impossible_transition": 409}.get(refusal.code, 422)
        return Response(status, {"error": refusal.reason, "code": refusal.code})
    verdict = check_transition(state.status, ReferralStatus(response.status.value), "agency")
    if verdict.refused:
        return Response(409, {"error": verdict.reason, "code": "impossible_transition"})
    event = CloudEvent[dict[str, Any]].build(
        type="alur.referral.response.v1", source=sender, subject=referral_id,
        data=response.model_dump(mode="json", exclude_none=True),
    )
    await publish_raw(service.js, subjects.response(sender), event.to_bytes(), msg_id=event.id)
    return Response(202, {"accepted": True, "referral_id": referral_id, "status": response.status.value,
                          "duplicate": verdict.duplicate, "event_id": event.id})


# ------------------------------------------------------------------ timers


async def _fire(timer: Timer) -> bool:
    """Carry out one fired timer; False when it was stale. A concurrent write makes it decide again."""
    for _ in range(CAS_ATTEMPTS):
        loaded = await load_or_rebuild(timer.referral_id)
        if loaded is None:
            return False
        state, revision = loaded
        secretariat = _registry().secretariat()
        step = on_fire(state, timer, _now(), coordinators=[secretariat.id] if secretariat else [])
        if step is None:
            return False
        try:
            await save(step.state, revision)
        except StateConflict:
            continue
        break
    else:
        raise StateConflict(f"referral {timer.referral_id} kept changing concurrently")
    event = CloudEvent[EscalationData].build(
        type=f"alur.referral.{step.data.status}.v1", source="alur/notify", subject=state.referral_id,
        data=step.data, id=derived_id("referral.escalation", timer.token),
    )
    await publish(service.js, subjects.referral(step.data.status, state.agency), event)
    service.count(f"escalation_{step.action}")
    log.warning("referral escalated", referral_id=state.referral_id, case_id=state.case_id, agency=state.agency,
                overdue=step.purpose, escalation_level=step.level, action=step.action, target=step.recipient)
    if step.expired:
        await publish_status(step.state)
    await schedule(step.state)
    return True


@service.subscriber("notify-timers")
async def on_timer(msg: NatsMessage) -> None:
    """A timer fired: escalate if the referral still waits for what the timer guards, else do nothing."""
    timer = Timer.model_validate_json(msg.raw_message.data)
    if not await _fire(timer):
        log.info("stale timer ignored", referral_id=timer.referral_id, purpose=timer.purpose)


async def audit_once() -> int:
    """Find open referrals whose timer is missing or overdue and repair them; returns how many."""
    kv = await _kv()
    try:
        keys = await kv.keys()
    except Exception:
        return 0
    repaired = 0
    now = _now()
    grace = timedelta(seconds=max(1.0, 5 * AUDIT_EVERY))
    for key in keys:
        loaded = await load(key)
        if loaded is None:
            continue
        state, revision = loaded
        last = state.history[-1]
        if last.status is not ReferralStatus.REQUESTED and now - last.at < REPUBLISH_WITHIN:
            repaired += await publish_status(state, recovering=True)
        if state.status.terminal:
            continue
        planned = arm(state, now)
        timer = state.escalation.timer
        if timer is None and planned.escalation.timer is not None:
            with contextlib.suppress(StateConflict):
                await save(planned, revision)
                await schedule(planned)
                repaired += 1
        elif timer is not None and timer.fire_at + grace < now:
            await publish_raw(service.js, subjects.timer_fired(state.referral_id, timer.purpose),
                              timer.model_dump_json().encode(), msg_id=f"audit:{timer.token}")
            repaired += 1
    if repaired:
        service.count("auditor_repaired", repaired)
        log.warning("auditor repaired referrals (lost timers or facts)", repaired=repaired)
    return repaired


async def _auditor() -> None:
    while True:
        await asyncio.sleep(AUDIT_EVERY)
        try:
            await audit_once()
        except Exception as exc:
            log.error("auditor pass failed", error_type=type(exc).__name__)


# ------------------------------------------------------------------ lifecycle of the service


_tasks: list[asyncio.Task[None]] = []


async def _agencies_changed(registry: AgencyRegistry) -> None:
    created = await ensure_agency_consumers(service.js, service.topology, [a for a in registry.agencies.values() if a.enabled])
    for durable, what in created.items():
        if what != "unchanged":
            log.info("agency consumer provisioned", consumer=durable, what=what)


@service.on_started
async def _start() -> None:
    global _http
    _http = httpx.AsyncClient(timeout=httpx.Timeout(15.0), follow_redirects=False)
    assert service.registry_store is not None
    service.registry_store.on_change(_agencies_changed)
    await _agencies_changed(service.registry_store.current)
    _tasks.append(asyncio.create_task(_auditor()))


@service.on_stopping
async def _stop() -> None:
    for task in _tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if _http is not None:
        await _http.aclose()
