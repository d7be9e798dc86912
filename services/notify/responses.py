"""Agency responses, over NATS or `POST /v1/referrals/{referral_id}/responses`: one path, one check.

Both doors end in `alur.response.<agency>` on REPORTS (stored before anything else happens), and the
`notify-responses` consumer alone decides: `lifecycle.check_response` once per attempt, then
`state.enact`. The HTTP door (`runtime.answers`, shared with the board's inbox) waits for that decision
(the consumer answers on the door's own inbox) and says what became of the answer; it never reports an answer as recorded that was not: an answer whose
state could not be saved is answered `failed` (503, retried by the consumer), never 202.

A referral the sender does not hold gets the same answer whether it exists or not (`lifecycle.not_held`):
the holder is never named.
"""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from contracts import subjects
from contracts.catalog import RESPONSE_REFUSED
from contracts.envelope import CloudEvent, derived_id
from contracts.events import ResponseData, ResponseRefusedData
from domain.jsonbody import BodyRefused, load_json
from domain.lifecycle import Refusal, Transition, check_response, not_held
from domain.reasons import reasons_from
from runtime.answers import REPLY_HEADER, Verdict, carry
from runtime.app import MAX_BODY, read_body
from runtime.bus import publish
from runtime.message import Message
from runtime.security import response_inbox
from services.notify.context import NotifyContext
from services.notify.escalation import arm
from services.notify.state import MAX_PROGRESS_NOTES, ReferralState, enact, note_limit
from services.notify.store import ReferralStore


class Refused(Exception):
    """Raised inside a state change to refuse an answer (the state stays as it was)."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.refusal = refusal


def parse_response(raw: bytes) -> tuple[str | None, ResponseData | None, str | None]:
    """(event id, response, problem): the `data` of a response CloudEvent, or why it cannot be read."""
    event = load_json(raw, max_bytes=MAX_BODY)  # bounded before decoding: deep nesting is a reason, not a crash
    if isinstance(event, BodyRefused):
        return None, None, event.reason
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        return None, None, "body is not a CloudEvent with a `data` object"
    event_id = event.get("id") if isinstance(event.get("id"), str) else None
    try:
        return event_id, ResponseData.model_validate(event["data"]), None
    except ValidationError as exc:
        return event_id, None, "; ".join(reasons_from(exc))


class Responses:
    """The agencies' answers: the consumer that records or refuses them, and the HTTP door."""

    def __init__(self, ctx: NotifyContext, store: ReferralStore) -> None:
        self.ctx = ctx
        self.store = store
        self.log = ctx.log
        self.replies = response_inbox(ctx.app.name) + "."
        doors = ctx.app.topology.services[ctx.app.name].answers
        self.doors = (self.replies, *(response_inbox(door) + "." for door in doors))
        """The inboxes a decision may be told to: this door's own, and those of the services it answers."""
        self.max_notes = ctx.app.settings.max_progress_notes or MAX_PROGRESS_NOTES

    def register(self) -> None:
        # One response at a time, in stream order, in this process (FastStream runs a fetched batch
        # concurrently) and across instances (the consumer's max_ack_pending is 1, deploy/topology.yaml).
        self.ctx.app.subscriber("notify-responses", batch_size=1)(self.on_response)
        self.ctx.app.route("/v1/referrals/{referral_id}/responses")(self.post_response)

    async def _refuse(self, sender: str, refusal: Refusal, *, referral_id: str | None, status: str | None,
                      key: str, response_id: str | None) -> None:
        """Tell the sender why its response was not recorded (`response_refused`, once per response)."""
        data = ResponseRefusedData(referral_id=referral_id, agency=sender, status=status, reason=refusal.reason,
                                   code=refusal.code, response_id=response_id)  # type: ignore[arg-type]
        event = CloudEvent[ResponseRefusedData].build(
            type=RESPONSE_REFUSED, source="alur/notify", subject=referral_id, data=data,
            id=derived_id("response.refused", key),
        )
        await publish(self.ctx.js, subjects.referral("response_refused", sender), event)
        self.log.warning("response refused", agency=sender, referral_id=referral_id, code=refusal.code,
                         reason=refusal.reason)

    async def on_response(self, msg: Message) -> None:
        """Check an agency's answer (sender, transition, reason) and record it, or refuse it with the reason."""
        raw = msg.raw_message
        try:
            outcome = await self._answer(raw)
        except Exception as exc:
            # Not recorded (the state could not be saved, the broker is away): the waiting door hears so at
            # once, and the middleware retries the answer, then dead-letters it, as for any failure.
            await self._reply(raw, Verdict("failed", reason=f"not recorded yet ({type(exc).__name__})"))
            raise
        await self._reply(raw, outcome)

    async def _reply(self, raw: Any, outcome: Verdict) -> None:
        reply_to = (raw.headers or {}).get(REPLY_HEADER, "")
        if reply_to.startswith(self.doors):
            with contextlib.suppress(Exception):  # the door may be gone; the outcome is on REFERRALS anyway
                await self.ctx.app.broker.connection.publish(reply_to, outcome.to_bytes())

    async def _answer(self, raw: Any) -> Verdict:
        sender = subjects.parse(raw.subject).key
        event_id, response, problem = parse_response(raw.data)
        key = f"{sender}:{event_id or raw.metadata.sequence.stream}"
        if response is None:
            refusal = Refusal("bad_body", problem or "unreadable")
            await self._refuse(sender, refusal, referral_id=None, status=None, key=key, response_id=event_id)
            return Verdict("refused", code=refusal.code, reason=refusal.reason)
        status = response.status.value
        verdicts: list[Transition] = []
        now = self.ctx.now()

        agencies = {a.id for a in self.ctx.registry().agencies.values() if a.enabled}

        def decide(state: ReferralState) -> ReferralState:
            checked = check_response(response, state.status, sender=sender, holder=state.agency, agencies=agencies)
            if isinstance(checked, Refusal):
                raise Refused(checked)
            if full := note_limit(state, checked, response.reason, response.note, self.max_notes):
                raise Refused(Refusal("note_limit", full))
            verdicts.append(checked)
            moved = enact(state, checked, at=now, reason=response.reason, note=response.note,
                          redirect_to=response.redirect_to)
            return arm(moved, now) if moved is not state else state

        try:
            moved = await self.store.update(response.referral_id, decide, holder=sender)
        except Refused as refused:
            await self._refuse(sender, refused.refusal, referral_id=response.referral_id, status=status, key=key,
                               response_id=event_id)
            return Verdict("refused", status=status, code=refused.refusal.code, reason=refused.refusal.reason)
        if moved is not None:
            await self.store.commit(moved, response_id=event_id)
            return Verdict("applied", status=status)
        if not verdicts:
            refusal = not_held(response.referral_id, sender)
            await self._refuse(sender, refusal, referral_id=response.referral_id, status=status, key=key,
                               response_id=event_id)
            return Verdict("refused", status=status, code=refusal.code, reason=refusal.reason)
        self.log.info("duplicate response ignored", referral_id=response.referral_id, status=status)
        return Verdict("duplicate", status=status)

    async def post_response(self, request: Request) -> Response:
        """An agency's answer over HTTP: stored in REPORTS, decided by the consumer, answered with what it decided."""
        sender = await self.ctx.app.caller(request)  # 401 / 429 before the body is read
        return await carry(self.ctx.app.broker.connection, self.ctx.js, response_inbox(self.ctx.app.name), sender,
                           request.path_params["referral_id"], await read_body(request))
