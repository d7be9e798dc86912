"""Delivery: every new referral is tracked, and each event meant for a webhook agency is posted, signed.

`notify-requests` owns a new referral: it creates its state and, for an agency that reads its own NATS
consumer or its web inbox, marks it delivered at once (the request already sits where the agency looks).
`notify-deliveries` posts events to webhook agencies (a referral's, and the rejection of the agency's own
report): retried with backoff for days behind one circuit breaker per endpoint; a 410 disables the endpoint,
and deliveries that are refused or given up are raised to the coordinator.

One endpoint never holds the others: `notify-deliveries` runs `DELIVERY_WORKERS` deliveries side by side
(FastStream's `max_workers`, so a slow one does not hold back the rest of a fetched batch), and each
endpoint has at most one attempt in flight. A delivery for an endpoint that is busy is handed back to
JetStream with a delay that grows with how long the attempt in flight has taken (a fast endpoint's queue
drains at once, a stuck one's waits up to an attempt's deadline), so a stuck endpoint occupies one worker
for at most `webhook.ATTEMPT_DEADLINE` at a time, never all of them. An event for an agency without a
webhook (most of them) is acked before FastStream handles it (`runtime.prefilter`).
"""

from __future__ import annotations

import contextlib
import json
import random
import time

import httpx
from faststream.exceptions import NackMessage
from nats.aio.msg import Msg as RawMsg

from contracts import subjects
from contracts.destinations import ALUR_HTTP_PORTS
from contracts.envelope import CloudEvent
from contracts.events import ReferralRequestedData
from contracts.records import Agency
from contracts.vocab import Channel, ReferralStatus
from runtime.message import Message
from services.notify.context import NotifyContext
from services.notify.state import (
    DeliveryAttempt,
    ReferralState,
    TransitionRefused,
    record_attempt,
)
from services.notify.store import ReferralStore, StateConflict
from services.notify.webhook import (
    ATTEMPT_DEADLINE,
    REQUEST_TIMEOUT,
    CircuitBreaker,
    deliver,
    retry_delay,
)

UNTRACKED_DELAY = 0.2
"""How long a webhook delivery waits for `notify-requests` to track a request it saw first (seconds)."""
REQUEST_BATCH = 100
"""New referrals `notify-requests` fetches and tracks at once. A fetch returns what is there without waiting
for a full batch, so a large one only tells at a burst: fewer pull requests, and the batch's writes
leave in fewer socket sends (notify 9 % less CPU, the broker 20 %, than batches of 10)."""
DELIVERY_WORKERS = 16
"""Webhook deliveries in flight at once (each to a different endpoint)."""
NOTICES = frozenset({"report_rejected"})
"""Verbs of `alur.referral.<verb>.<agency>` that a webhook agency is sent though they concern no referral."""
BUSY_DELAY = (0.2, ATTEMPT_DEADLINE)
"""Bounds (seconds) of the delay before a delivery for a busy endpoint comes back."""


class Delivery:
    """Tracking new referrals and posting webhook deliveries."""

    def __init__(self, ctx: NotifyContext, store: ReferralStore) -> None:
        self.ctx = ctx
        self.store = store
        self.log = ctx.log
        self.breakers: dict[str, CircuitBreaker] = {}
        self._rng = random.Random()
        self._http: httpx.AsyncClient | None = None
        self._in_flight: dict[str, float] = {}
        """Endpoint URL -> when its attempt in flight started (monotonic)."""
        self._own_ports = ALUR_HTTP_PORTS | ctx.app.settings.http_ports

    def register(self) -> None:
        app = self.ctx.app
        app.subscriber("notify-requests", batch_size=REQUEST_BATCH)(self.on_requested)
        deliveries = app.subscriber("notify-deliveries", max_workers=DELIVERY_WORKERS, skip=self._not_for_a_webhook)
        deliveries(self.on_delivery)
        app.on_started(self._open_http)
        app.on_stopping(self._close_http)

    async def _open_http(self) -> None:
        """The client webhooks are posted with: redirects are not followed, and no proxy is taken from the
        environment (a proxy would connect to the name itself, around the pinned, checked address)."""
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(REQUEST_TIMEOUT), follow_redirects=False,
                                       trust_env=False)

    async def _close_http(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def on_requested(self, msg: Message) -> None:
        """Start tracking a new referral: state in KV, its acknowledgement timer, `delivered` for an agency on
        NATS or with an inbox."""
        request = CloudEvent[ReferralRequestedData].model_validate_json(msg.raw_message.data).data
        agency = self.ctx.registry().get(request.agency)
        # on its own NATS consumer, or in its inbox on the board: either way it is where the agency looks
        waiting_for_it = agency is not None and agency.enabled and agency.channel in (Channel.NATS, Channel.INBOX)
        await self.store.track(request, delivered=waiting_for_it)

    # -------------------------------------------------------------- webhooks

    def _breaker(self, url: str) -> CircuitBreaker:
        if url not in self.breakers:
            self.breakers[url] = CircuitBreaker(scale=self.ctx.scale)
        return self.breakers[url]

    @staticmethod
    def _attempt_number(state: ReferralState, event_id: str) -> int:
        """Which try this is for the event: the attempts recorded for it plus one (redeliveries held by an
        open breaker are not attempts)."""
        return 1 + sum(1 for a in state.attempts if a.event_id == event_id and a.outcome != "circuit_open")

    async def _mark_delivered(self, referral_id: str) -> None:
        """`delivered`, unless the referral already moved past it (or closed) meanwhile."""
        with contextlib.suppress(TransitionRefused):
            await self.store.transition(referral_id, ReferralStatus.DELIVERED, "system")

    async def _raise_to_coordinator(self, state: ReferralState, reason: str, key: str) -> None:
        await self.store.raise_to_coordinator(state, reason, overdue="delivery", key=key)

    def _webhook_agency(self, subject: str) -> Agency | None:
        """The enabled webhook agency an event's subject names, or None (its event is not posted)."""
        agency = self.ctx.registry().get(subjects.parse(subject).key)
        if agency is None or agency.channel is not Channel.WEBHOOK or not agency.enabled:
            return None
        return agency

    def _not_for_a_webhook(self, raw: RawMsg) -> bool:
        """Whether `on_delivery` would drop the event unread: acked before FastStream handles it, since most
        agencies read their own consumer or their inbox (`runtime.prefilter`)."""
        return self._webhook_agency(raw.subject) is None

    async def on_delivery(self, msg: Message) -> None:
        """POST each event meant for a webhook agency, signed; retry with backoff for days; 410 disables it."""
        raw = msg.raw_message
        parsed = subjects.parse(raw.subject)
        agency = self._webhook_agency(raw.subject)
        if agency is None:
            return
        event = json.loads(raw.data)
        if parsed.verb in NOTICES:
            await self._post_notice(agency, event["id"], raw.data, parsed.verb, raw.metadata.num_delivered)
            return
        loaded = await self.store.load(event.get("data", {}).get("referral_id", ""))
        if loaded is None:
            if parsed.verb == "requested":
                raise NackMessage(delay=UNTRACKED_DELAY)  # `notify-requests` has yet to track it
            return
        state = loaded[0]
        if parsed.verb == "requested" and state.status.terminal:
            self.log.info("delivery dropped: referral already terminal", referral_id=state.referral_id,
                          status=state.status.value)
            return
        await self._post(agency, state, event["id"], raw.data, parsed.verb, raw.metadata.num_delivered)

    def _busy_delay(self, url: str) -> float:
        """How long a delivery for an endpoint with an attempt in flight waits: about as long as that attempt
        has taken so far (jittered), within `BUSY_DELAY`."""
        taken = time.monotonic() - self._in_flight[url]
        low, high = BUSY_DELAY
        return min(high, max(low, taken)) * (1 + 0.5 * self._rng.random())

    async def _held_too_long(self, state: ReferralState, deliveries: int, why: str) -> bool:
        """Whether a delivery that sent nothing must stop coming back: a held delivery uses up no retry, but
        may never pass the consumer's last redelivery, where JetStream would drop it without a word; then
        it is given up and raised to the coordinator."""
        if deliveries < self.ctx.app.consumer("notify-deliveries").max_deliver - 1:
            return False
        await self._raise_to_coordinator(state, f"webhook delivery held by {why} for too long: given up", "held")
        return True

    async def _post(
        self, agency: Agency, state: ReferralState, event_id: str, body: bytes, kind: str | None, deliveries: int
    ) -> None:
        url = agency.url or ""
        if url in self._in_flight:
            if await self._held_too_long(state, deliveries, "a busy endpoint"):
                return
            delay = self._busy_delay(url)
            self.log.info("webhook delivery held: endpoint busy", referral_id=state.referral_id, agency=agency.id,
                          delay=round(delay, 3))
            raise NackMessage(delay=delay)
        attempt = self._attempt_number(state, event_id)
        breaker = self._breaker(url)
        assert self._http is not None
        self._in_flight[url] = time.monotonic()
        try:
            result = await deliver(self._http, agency, event_id, body, self.ctx.now(), attempt=attempt,
                                   breaker=breaker, own_ports=self._own_ports)
        finally:
            del self._in_flight[url]
        self.ctx.app.metrics.webhook_attempt(agency.type.value, result.attempt.outcome)
        if result.attempt.outcome == "circuit_open":
            if await self._held_too_long(state, deliveries, "an open circuit"):
                return
            self.log.info("webhook delivery held: circuit open", referral_id=state.referral_id, agency=agency.id,
                          delay=round(result.retry_after or 0.0, 3))
            raise NackMessage(delay=max(0.05, result.retry_after or breaker.retry_in()))
        await self._record(state.referral_id, result.attempt)
        if result.delivered:
            self.log.info("webhook delivered", referral_id=state.referral_id, agency=agency.id, kind=kind,
                          attempt=attempt)
            if kind == "requested":
                await self._mark_delivered(state.referral_id)
            return
        if result.disable_endpoint:
            assert self.ctx.app.registry_store is not None
            await self.ctx.app.registry_store.put(agency.model_copy(update={"enabled": False}))
            await self._raise_to_coordinator(
                state, "webhook endpoint answered 410 Gone: it is disabled until the agency fixes it", "gone")
            return
        if result.needs_coordinator and attempt == 1:
            await self._raise_to_coordinator(state, f"webhook refused the delivery: {result.problem}", "refused")
        delay = retry_delay(attempt, self.ctx.scale, result.retry_after, self._rng) if result.retry else None
        if delay is None:
            await self._raise_to_coordinator(
                state, f"webhook delivery given up after {attempt} attempts: {result.problem}", "gave-up")
            return
        self.log.warning("webhook delivery will be retried", referral_id=state.referral_id, agency=agency.id,
                         attempt=attempt, delay=round(delay, 3), problem=result.problem)
        raise NackMessage(delay=delay)

    async def _post_notice(self, agency: Agency, event_id: str, body: bytes, kind: str, deliveries: int) -> None:
        """POST an event about no referral (a rejected report): the same signing, endpoint slot, breaker and
        retry schedule as a referral's, with the delivery count as the attempt number and nothing recorded
        but the log; given up quietly after the schedule, since the rejection also stays in CASES."""
        url = agency.url or ""
        if deliveries >= self.ctx.app.consumer("notify-deliveries").max_deliver - 1:
            self.log.warning("webhook notice given up: held too long", agency=agency.id, kind=kind)
            return
        if url in self._in_flight:
            raise NackMessage(delay=self._busy_delay(url))
        breaker = self._breaker(url)
        assert self._http is not None
        self._in_flight[url] = time.monotonic()
        try:
            result = await deliver(self._http, agency, event_id, body, self.ctx.now(), attempt=deliveries,
                                   breaker=breaker, own_ports=self._own_ports)
        finally:
            del self._in_flight[url]
        self.ctx.app.metrics.webhook_attempt(agency.type.value, result.attempt.outcome)
        if result.attempt.outcome == "circuit_open":
            raise NackMessage(delay=max(0.05, result.retry_after or breaker.retry_in()))
        if result.delivered:
            self.log.info("webhook delivered", agency=agency.id, kind=kind, attempt=deliveries)
            return
        delay = retry_delay(deliveries, self.ctx.scale, result.retry_after, self._rng) if result.retry else None
        if delay is None:
            self.log.warning("webhook notice given up", agency=agency.id, kind=kind, attempt=deliveries,
                             problem=result.problem)
            return
        self.log.warning("webhook notice will be retried", agency=agency.id, kind=kind, attempt=deliveries,
                         delay=round(delay, 3), problem=result.problem)
        raise NackMessage(delay=delay)

    async def _record(self, referral_id: str, attempt: DeliveryAttempt) -> None:
        with contextlib.suppress(StateConflict):  # an attempt record is bookkeeping: never worth a redelivery
            await self.store.update(referral_id, lambda state: record_attempt(state, attempt))
