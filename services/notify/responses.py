"""Agency responses, over NATS or `POST /v1/referrals/{referral_id}/responses`: checked, then recorded or refused."""

from __future__ import annotations

import json
from typing import Any

from faststream.exceptions import NackMessage
from faststream.nats import NatsMessage
from pydantic import ValidationError

from alur.bus import publish, publish_raw
from alur.service import Request, Response
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import ResponseData, ResponseRefusedData
from contracts.vocab import ReferralStatus
from services.intake.reasons import reasons_from
from services.notify.lifecycle import check_transition, validate_response
from services.notify.service import log, registry, service
from services.notify.state import TransitionRefused
from services.notify.store import load_or_rebuild, transition

UNKNOWN_REFERRAL_RETRIES = 5


async def _refuse(sender: str, code: str, reason: str, *, referral_id: str | None, status: str | None, key: str) -> None:
    """Tell the sender why its response was not recorded (`response_refused`, once per response)."""
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
    sender = await service.credentials.agency_for_token(token, registry()) if token else None
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
