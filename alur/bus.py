"""Shared NATS plumbing for the services and the CLI: connect, publish facts, retry, dead-letter.

Every service consumer follows one policy (traps 1 and 2): success acks; a failure is retried with
`NackMessage(delay=…)` on a growing delay; the last allowed delivery publishes a dead letter that
names where the message lies and why, then acks — the message itself stays in its stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import nats
from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, HandlerException, NackMessage
from faststream.nats import NatsBroker
from faststream.nats.security import NatsNKey
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, PubAck

from alur.logs import get_logger
from alur.security import SERVICE_INBOX_PREFIX
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import DeadLetterData

PUBLISH_TIMEOUT = 5.0
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
log = get_logger("alur.bus")


class SafeError(Exception):
    """An error whose message is known to carry no victim data, so it may reach logs and dead letters."""


def safe_error_text(exc: BaseException) -> str:
    """What may be said about an error outside the process: its own text only if it is a SafeError."""
    if isinstance(exc, SafeError):
        return f"{type(exc).__name__}: {exc}"[:500]
    return type(exc).__name__


async def publish(
    js: JetStreamContext, subject: str, event: CloudEvent[Any], *, msg_id: str | None = None
) -> PubAck:
    """Publish a fact to JetStream with `Nats-Msg-Id` (the event id unless given), so replays are dropped."""
    headers = {"Nats-Msg-Id": msg_id or event.id, "Content-Type": "application/cloudevents+json"}
    return await js.publish(subject, event.to_bytes(), headers=headers, timeout=PUBLISH_TIMEOUT)


async def publish_raw(js: JetStreamContext, subject: str, payload: bytes, *, msg_id: str) -> PubAck:
    return await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=PUBLISH_TIMEOUT)


def retry_delay(deliveries: int, scale: float) -> float:
    return RETRY_DELAYS[min(deliveries - 1, len(RETRY_DELAYS) - 1)] * scale


async def dead_letter(
    js: JetStreamContext, *, service: str, raw: Any, deliveries: int, error: str
) -> None:
    """Publish `alur.deadletter.v1` for a message that kept failing; it names, never copies, the message."""
    meta = raw.metadata
    data = DeadLetterData(
        stream=meta.stream,
        consumer=meta.consumer,
        subject=raw.subject,
        stream_seq=meta.sequence.stream,
        deliveries=deliveries,
        error=error,
        service=service,
        failed_at=datetime.now(UTC),
    )
    event = CloudEvent[DeadLetterData].build(
        type="alur.deadletter.v1",
        source=f"alur/{service}",
        subject=f"{meta.stream}:{meta.sequence.stream}",
        data=data,
        id=derived_id("deadletter", meta.stream, meta.consumer, str(meta.sequence.stream)),
    )
    await publish(js, subjects.dlq(meta.stream), event)


def reliability(service: str, max_deliver: Mapping[str, int], scale: float = 1.0) -> type[BaseMiddleware]:
    """The retry → dead-letter middleware for one service's consumers (durable name → max_deliver)."""

    class Reliable(BaseMiddleware):
        async def consume_scope(self, call_next: Any, msg: Any) -> Any:
            try:
                return await call_next(msg)
            except HandlerException:
                raise
            except Exception as exc:
                raw = msg.raw_message
                meta = getattr(raw, "metadata", None)
                if meta is None:
                    log.error("core message failed", subject=raw.subject, error=safe_error_text(exc))
                    raise AckMessage() from None
                deliveries = meta.num_delivered
                limit = max_deliver.get(meta.consumer, 10)
                error = safe_error_text(exc)
                if limit > 0 and deliveries >= limit:
                    js = self.context.get("broker").config.connection_state.stream
                    await dead_letter(js, service=service, raw=raw, deliveries=deliveries, error=error)
                    log.error(
                        "dead-lettered", consumer=meta.consumer, stream_seq=meta.sequence.stream,
                        deliveries=deliveries, error=error,
                    )
                    raise AckMessage() from None
                delay = retry_delay(deliveries, scale)
                log.warning(
                    "will retry", consumer=meta.consumer, stream_seq=meta.sequence.stream,
                    deliveries=deliveries, delay=delay, error=error,
                )
                raise NackMessage(delay=delay) from None

    return Reliable


def make_broker(
    *, service: str, servers: str, seed: str | None, max_deliver: Mapping[str, int], scale: float = 1.0
) -> NatsBroker:
    """The FastStream broker of one service: its NKey user, its own inbox prefix, the reliability policy."""
    return NatsBroker(
        servers,
        security=NatsNKey.from_seed(seed) if seed else None,
        inbox_prefix=SERVICE_INBOX_PREFIX,
        middlewares=[reliability(service, max_deliver, scale)],
        graceful_timeout=10.0,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        logger=logging.getLogger(f"faststream.{service}"),
        log_level=logging.DEBUG,
    )


async def connect(url: str, *, seed: str | None = None, name: str = "alur-cli", inbox_prefix: str | None = None) -> Client:
    """A plain nats-py connection for the CLI and tools (NKey user if a seed is given)."""
    options: dict[str, Any] = {"name": name, "connect_timeout": 3, "max_reconnect_attempts": 2, "allow_reconnect": False}
    if seed:
        options["nkeys_seed_str"] = seed
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix

    async def _quiet(_: Exception) -> None:
        return None

    return await nats.connect(url, error_cb=_quiet, **options)


def decode(payload: bytes) -> dict[str, Any]:
    value = json.loads(payload)
    if not isinstance(value, dict):
        raise SafeError("message body is not a JSON object")
    return value


SCAN_IDLE = 5.0  # a scan ends at the last matching message; this only bounds a stalled server


async def scan(js: JetStreamContext, stream: str, filter_subject: str = ">") -> AsyncIterator[Any]:
    """Every message of `stream` matching `filter_subject`, oldest first, through an ordered consumer."""
    info = await js.stream_info(stream, subjects_filter=filter_subject)
    if not sum((info.state.subjects or {}).values()):
        return
    sub = await js.subscribe(filter_subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=SCAN_IDLE)
            except TimeoutError:
                return
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
