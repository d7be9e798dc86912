"""Email notices, sent: `notify-notices` mails each agency with an `email` a notice of its new referrals and
of their escalations, through the relay of `ALUR_SMTP_URL` (without it, nothing is sent).

Per event and recipient the stages are those of a webhook delivery: skip a notice already settled (the
attempts are recorded in the referral's state in KV), compose it (`notices`), hand it over once (`smtp`),
record the attempt and count it, and on a transient failure nak the event with the webhook schedule's
delay (`webhook.retry_delay`), so a retry survives a restart. A bounce (the recipient's server refuses
the address for good) and a notice given up after the schedule are raised to the coordinator, once per
referral, recipient and kind (a derived event id); a notice of such a raise is never raised again.
"""

from __future__ import annotations

import contextlib
import json
import random

from faststream.exceptions import NackMessage
from nats.aio.msg import Msg as RawMsg

from contracts import subjects
from contracts.envelope import CloudEvent
from contracts.events import EscalationData, ReferralRequestedData
from contracts.records import Agency
from runtime.message import Message
from services.notify.context import NotifyContext
from services.notify.notices import (
    Notice,
    compose,
    escalated_notice,
    raises_on_failure,
    recipients,
    requested_notice,
)
from services.notify.smtp import SendOutcome, SendResult, send
from services.notify.state import (
    NoticeAttempt,
    NoticeOutcome,
    ReferralState,
    record_notice,
)
from services.notify.store import ReferralStore, StateConflict
from services.notify.webhook import retry_delay

CONSUMER = "notify-notices"
WORKERS = 8
"""Notices handed to the relay at once."""
UNTRACKED_DELAY = 0.2
"""How long a new referral's notice waits for `notify-requests` to track it (seconds)."""


def settle(
    sent: SendOutcome, attempt: int, *, scale: float, rng: random.Random, last_delivery: bool = False
) -> tuple[NoticeOutcome, float | None]:
    """What attempt number `attempt` comes to, and the delay before the next one (None: no next one). A
    transient failure is retried on the webhook schedule; past it, or at the consumer's last delivery
    (where JetStream would drop the event without a word), the notice is given up."""
    if sent != "retry":
        return sent, None
    delay = None if last_delivery else retry_delay(attempt, scale, None, rng)
    return ("retry" if delay is not None else "given_up"), delay


class EmailNotices:
    """The `notify-notices` consumer: one notice per event and recipient, retried, recorded, raised."""

    def __init__(self, ctx: NotifyContext, store: ReferralStore) -> None:
        self.ctx = ctx
        self.store = store
        self.log = ctx.log
        self.relay = ctx.app.settings.smtp_relay
        self.sender = ctx.app.settings.smtp_from
        self.board_link = ctx.app.settings.board_link
        self._rng = random.Random()

    def register(self) -> None:
        self.ctx.app.subscriber(CONSUMER, max_workers=WORKERS, skip=self._off)(self.on_event)
        self.ctx.app.on_started(self._say_whether_on)

    async def _say_whether_on(self) -> None:
        if self.relay is None:
            self.log.info("email notices off: ALUR_SMTP_URL is not set")
        else:
            self.log.info("email notices on", relay=repr(self.relay))

    def _off(self, _raw: RawMsg) -> bool:
        """Whether notices are off (no `ALUR_SMTP_URL`): then every event is acked before FastStream handles
        it (`runtime.prefilter`), as `on_event` would drop it unread."""
        return self.relay is None

    async def on_event(self, msg: Message) -> None:
        """Email notices (`ALUR_SMTP_URL`): an agency with an `email` is mailed each new referral and each
        escalation it holds, the secretariat each raise; codes, a deadline and an inbox link, no victim data."""
        if self.relay is None:
            return
        raw = msg.raw_message
        planned = await self._plan(subjects.parse(raw.subject).verb, raw.data)
        if planned is None:
            return
        state, notice, to = planned
        last_delivery = raw.metadata.num_delivered >= self.ctx.app.consumer(CONSUMER).max_deliver - 1
        delays = []
        for agency in to:
            if state.notice_settled(notice.event_id, agency.id):
                continue
            await msg.in_progress()  # each attempt has its own deadline; the ack wait restarts before it
            if (delay := await self._mail(state, notice, agency, last_delivery)) is not None:
                delays.append(delay)
        if delays:
            raise NackMessage(delay=max(delays))

    async def _plan(self, verb: str | None, body: bytes) -> tuple[ReferralState, Notice, list[Agency]] | None:
        """The referral, its notice and who is mailed it, for a request or an escalation; None for nothing
        to mail. A request `notify-requests` has yet to track comes back shortly."""
        event_id = json.loads(body)["id"]
        registry = self.ctx.registry()
        if verb == "requested":
            request = CloudEvent[ReferralRequestedData].model_validate_json(body).data
            holder = registry.get(request.agency)
            to = recipients("requested", request.agency, [], None, registry.agencies)
            if not to or holder is None:
                return None  # most agencies have no address: nothing read, nothing written
            loaded = await self.store.load(request.referral_id)
            if loaded is None:
                raise NackMessage(delay=UNTRACKED_DELAY)
            if loaded[0].status.terminal:
                return None
            return loaded[0], requested_notice(event_id, request, holder, self.board_link), to
        if verb != "escalated":
            return None
        escalation = CloudEvent[EscalationData].model_validate_json(body).data
        to = recipients("escalated", escalation.agency, escalation.notify, escalation.overdue, registry.agencies)
        if not to:
            return None
        loaded = await self.store.load_or_rebuild(escalation.referral_id, escalation.agency)
        if loaded is None:
            self.log.warning("email notice skipped: unknown referral", referral_id=escalation.referral_id,
                             agency=escalation.agency)
            return None
        state = loaded[0]
        if state.status.terminal:
            return None  # closed meanwhile (a notice retried for days must not ask for what is done)
        notice = escalated_notice(event_id, escalation, registry.get(escalation.agency), service=state.service,
                                  priority=state.priority, board_link=self.board_link)
        return state, notice, to

    async def _mail(self, state: ReferralState, notice: Notice, agency: Agency, last_delivery: bool) -> float | None:
        """One attempt at one recipient's notice: recorded, counted, raised if it failed for good; returns
        the delay before the next attempt, or None when the notice is settled."""
        assert self.relay is not None
        attempts = state.notice_attempts(notice.event_id, agency.id)
        attempt = 1 + max((a.attempt for a in attempts), default=0)
        now = self.ctx.now()
        result = await send(self.relay, compose(notice, agency, self.sender, now))
        outcome, delay = settle(result.outcome, attempt, scale=self.ctx.scale, rng=self._rng,
                                last_delivery=last_delivery)
        said = {"referral_id": notice.referral_id, "agency": agency.id, "kind": notice.kind, "attempt": attempt}
        if outcome == "sent":
            self.log.info("email notice sent", **said)
        elif outcome == "bounced":
            self.log.warning("email notice bounced", **said, problem=result.problem)
        elif outcome == "retry":
            self.log.warning("email notice will be retried", **said, delay=round(delay or 0.0, 3),
                             problem=result.problem)
        else:
            self.log.warning("email notice given up", **said, problem=result.problem)
        await self._record(state.referral_id, NoticeAttempt(
            at=now, event_id=notice.event_id, recipient=agency.id, attempt=attempt, outcome=outcome,
            smtp_code=result.smtp_code, error_class=result.error_class,
        ))
        self.ctx.app.metrics.email_notice(agency.type.value, outcome)
        if outcome in ("bounced", "given_up"):
            await self._raise(state, notice, agency, outcome, result, attempt)
        return delay

    async def _raise(
        self, state: ReferralState, notice: Notice, agency: Agency, outcome: NoticeOutcome, result: SendResult,
        attempt: int,
    ) -> None:
        if not raises_on_failure(notice.overdue):
            return  # a notice of a failed notice: the coordinator heard of it already
        if outcome == "bounced":
            reason = (f"email notice to agency {agency.id} bounced ({result.problem}): its address is refused; "
                      "correct it with `alur agency add … --email`")
        else:
            reason = (f"email notice to agency {agency.id} given up after {attempt} attempts ({result.problem}): "
                      "check ALUR_SMTP_URL and the relay")
        await self.store.raise_to_coordinator(state, reason, overdue="email", key=f"{outcome}:{agency.id}")

    async def _record(self, referral_id: str, attempt: NoticeAttempt) -> None:
        with contextlib.suppress(StateConflict):  # past five conflicts a notice may go twice; never lost
            await self.store.update(referral_id, lambda state: record_notice(state, attempt))
