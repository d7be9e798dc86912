"""An agency's answer carried by a door to notify, and notify's decision carried back.

Two doors take an answer from outside the bus: notify's `POST /v1/referrals/{id}/responses` (an agency's
system) and the board's `POST /api/inbox/{id}` (an officer in the agency's web inbox). Both store it in
REPORTS on `alur.response.<agency>`, exactly as an agency's own NATS publish would, with `Alur-Reply-To`
naming the door's response inbox; the `notify-responses` consumer alone decides (`Verdict`) and tells the
door, which answers the caller with what was decided. Nothing here decides anything.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import asdict, dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import ValidationError
from starlette.responses import JSONResponse

from contracts import subjects
from contracts.catalog import REFERRAL_RESPONSE
from contracts.envelope import CloudEvent
from contracts.events import ResponseData
from domain.jsonbody import BodyRefused, load_json
from domain.reasons import reasons_from
from runtime.app import MAX_BODY
from runtime.bus import REPLY_HEADER, scoped_msg_id

REPLY_WAIT = 10.0
"""Seconds a door waits for the decision before it answers 503 (stored; decided later; safe to resend)."""
HTTP_STATUS = {"unknown_referral": 404, "impossible_transition": 409, "note_limit": 409, "bad_body": 422}
"""A refusal's code as an HTTP status."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What became of one answer: `applied`, `duplicate` (nothing to change), `refused` (with why), or
    `failed` (it could not be recorded now; the consumer retries it)."""

    result: str
    status: str | None = None
    code: str | None = None
    reason: str | None = None

    def to_bytes(self) -> bytes:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Verdict:
        return cls(**json.loads(data))


def answer_event(sender: str, referral_id: str, raw: bytes) -> CloudEvent[ResponseData] | JSONResponse:
    """The response CloudEvent an HTTP body (`{"status", "reason"?, "note"?, "redirect_to"?}`) stands for, or
    the 4xx saying which field is wrong."""
    body = load_json(raw, max_bytes=MAX_BODY)
    if isinstance(body, BodyRefused):
        return JSONResponse({"error": body.reason, "reasons": [body.reason]}, body.http_status)
    if not isinstance(body, dict):
        return JSONResponse({"reasons": ["body: must be a JSON object"]}, 422)
    if body.get("referral_id", referral_id) != referral_id:
        return JSONResponse({"reasons": ["referral_id: differs from the referral in the path"]}, 422)
    try:
        response = ResponseData.model_validate({**body, "referral_id": referral_id})
    except ValidationError as exc:
        return JSONResponse({"reasons": reasons_from(exc, ())}, 422)
    return CloudEvent[ResponseData].build(type=REFERRAL_RESPONSE, source=sender, subject=referral_id, data=response)


async def submit(nc: Client, js: JetStreamContext, inbox: str, event: CloudEvent[ResponseData]) -> Verdict | None:
    """Store the answer in REPORTS as its sender's and wait on `inbox` (the door's response inbox) for the
    decision; None if it is not decided within `REPLY_WAIT`."""
    reply_to = f"{inbox}.{uuid.uuid4().hex}"
    sub = await nc.subscribe(reply_to, max_msgs=1)
    try:
        headers = {"Nats-Msg-Id": scoped_msg_id(event.source, event.id), REPLY_HEADER: reply_to}
        await js.publish(subjects.response(event.source), event.to_bytes(), headers=headers, timeout=5)
        try:
            reply = await sub.next_msg(timeout=REPLY_WAIT)
        except (TimeoutError, asyncio.TimeoutError):
            return None
        return Verdict.from_bytes(reply.data)
    finally:
        await sub.unsubscribe()


def http_answer(verdict: Verdict | None, event: CloudEvent[ResponseData]) -> JSONResponse:
    """What a door answers for `verdict`: 202 recorded (or already so), 404/409/422 refused with the reason,
    503 stored but not decided or not recorded yet (sending it again is safe: the event id dedups it)."""
    referral_id, status = event.data.referral_id, event.data.status.value
    if verdict is None:
        return JSONResponse({"error": "stored, but not decided in time; it will be recorded or refused, and "
                                      "sending it again is safe", "stored": True, "event_id": event.id},
                            503, headers={"Retry-After": "1"})
    if verdict.result == "refused":
        return JSONResponse({"error": verdict.reason, "code": verdict.code}, HTTP_STATUS.get(verdict.code or "", 422))
    if verdict.result == "failed":
        return JSONResponse({"error": "stored, but not recorded: the referral's state could not be saved; "
                                      "it is retried, and sending it again is safe", "stored": True,
                             "applied": False, "event_id": event.id}, 503, headers={"Retry-After": "5"})
    body: dict[str, Any] = {"accepted": True, "applied": True, "referral_id": referral_id, "status": status,
                            "duplicate": verdict.result == "duplicate", "event_id": event.id}
    return JSONResponse(body, 202)


async def carry(nc: Client, js: JetStreamContext, inbox: str, sender: str, referral_id: str,
                raw: bytes) -> JSONResponse:
    """A door's whole work once it knows the sender: read the body, store the answer, wait, answer."""
    event = answer_event(sender, referral_id, raw)
    if isinstance(event, JSONResponse):
        return event
    return http_answer(await submit(nc, js, inbox, event), event)
