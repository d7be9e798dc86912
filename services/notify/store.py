"""The edge of a referral's state: KV bucket `referrals` (compare-and-set), its facts on REFERRALS, its timer.

Every fact goes out once, with a `Nats-Msg-Id` derived from referral and transition; timers are JetStream
message schedules (one schedule subject per referral, so a new plan replaces the old).
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, timedelta
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from pydantic import ValidationError

from alur.bus import SafeError, publish, scan
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import EscalationData, ReferralRequestedData, ReferralStatusData
from contracts.vocab import ReferralStatus
from services.notify.escalation import arm
from services.notify.lifecycle import check_transition
from services.notify.service import log, now, policy, registry, service
from services.notify.state import ReferralEvent, ReferralState, TransitionRefused, apply, fold, new_state

CAS_ATTEMPTS = 5
REROUTED = frozenset({ReferralStatus.REJECTED, ReferralStatus.REDIRECTED, ReferralStatus.EXPIRED})
_STATUS_VERBS = frozenset(s.value for s in ReferralStatus) - {ReferralStatus.REQUESTED.value}


class StateConflict(SafeError):
    """The referral changed while we wrote it; the redelivery reads it again."""


async def bucket() -> Any:
    """The KV bucket `referrals`, keyed by referral id."""
    return await service.js.key_value("referrals")


async def load(referral_id: str) -> tuple[ReferralState, int] | None:
    """The referral's state and its KV revision (for compare-and-set), or None if KV does not hold it."""
    try:
        entry = await (await bucket()).get(referral_id)
    except KeyNotFoundError:
        return None
    return ReferralState.model_validate_json(entry.value), entry.revision


async def save(state: ReferralState, revision: int | None) -> None:
    """Create (revision None) or compare-and-set the state; StateConflict if it changed meanwhile."""
    kv = await bucket()
    payload = state.model_dump_json().encode()
    try:
        if revision is None:
            await kv.create(state.referral_id, payload)
        else:
            await kv.update(state.referral_id, payload, last=revision)
    except KeyWrongLastSequenceError:
        raise StateConflict(f"referral {state.referral_id} changed concurrently") from None


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
    requested = f"{subjects.PREFIX}.referral.requested.*"
    async with contextlib.aclosing(scan(service.js, subjects.REFERRALS_STREAM, requested)) as msgs:
        async for msg in msgs:
            data = _event_data(msg, referral_id)
            if data is not None:
                request = ReferralRequestedData.model_validate(data)
                break
    if request is None:
        return None
    events: list[ReferralEvent] = [request]
    of_agency = f"{subjects.PREFIX}.referral.*.{request.agency}"
    async with contextlib.aclosing(scan(service.js, subjects.REFERRALS_STREAM, of_agency)) as msgs:
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
    state = arm(fold(events, policy), now())
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
    secretariat = registry().secretariat()
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
    fire_at = max(timer.fire_at, now() + timedelta(milliseconds=50)).astimezone(UTC)
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
        moved = arm(apply(state, status, actor, at=now(), reason=reason, note=note, redirect_to=redirect_to), now())  # type: ignore[arg-type]
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


async def track(request: ReferralRequestedData) -> ReferralState:
    """The referral's state, created (with its first timer armed) if notify does not track it yet."""
    loaded = await load(request.referral_id)
    if loaded is not None:
        return loaded[0]
    state = arm(new_state(request, policy, now()), now())
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
