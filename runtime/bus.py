"""Shared NATS plumbing for the services and the CLI: connect, publish facts, retry, dead-letter.

Every service consumer follows one policy (traps 1 and 2): success acks; a failure is retried with
`NackMessage(delay=…)` on a growing delay; the last allowed delivery publishes a dead letter that
names where the message lies and why, then acks — the message itself stays in its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import nats
from faststream import BaseMiddleware
from faststream.exceptions import AckMessage, HandlerException, NackMessage
from faststream.nats import NatsBroker
from faststream.nats.security import NatsNKey
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, PubAck
from nats.js.errors import ServiceUnavailableError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.catalog import DEADLETTER
from contracts.envelope import CloudEvent, derived_id
from contracts.events import DeadLetterData
from runtime.logs import get_logger
from runtime.security import service_inbox_prefix

T = TypeVar("T")
PUBLISH_TIMEOUT = 5.0
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
log = get_logger("runtime.bus")


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


REPLY_HEADER = "Alur-Reply-To"
"""Set by a door on the response it stores: the inbox where `notify-responses` tells it the outcome."""


def scoped_msg_id(reporter: str, msg_id: str) -> str:
    """The `Nats-Msg-Id` an agency's input is stored under in REPORTS, by either door: the reporter's own
    namespace (agency ids hold no `:`), so no other sender's id can make it a duplicate."""
    return f"{reporter}:{msg_id}"


async def publish_raw(js: JetStreamContext, subject: str, payload: bytes, *, msg_id: str) -> PubAck:
    return await js.publish(subject, payload, headers={"Nats-Msg-Id": msg_id}, timeout=PUBLISH_TIMEOUT)


_BUCKETS: weakref.WeakKeyDictionary[JetStreamContext, dict[str, KeyValue]] = weakref.WeakKeyDictionary()


async def key_value(js: JetStreamContext, bucket: str) -> KeyValue:
    """The handle of KV bucket `bucket`, looked up once per JetStream context: nats-py's `js.key_value` asks
    the server for the bucket's stream info on every call, one round trip more before each read or write."""
    handles = _BUCKETS.setdefault(js, {})
    if bucket not in handles:
        handles[bucket] = await js.key_value(bucket)
    return handles[bucket]


async def together(*steps: Awaitable[Any]) -> list[Any]:
    """Run independent broker steps side by side (their round trips overlap, as with pipelined publishes) and
    wait for every one; then the first failure, if any, is raised, so a handler fails as if they ran in turn."""
    results = await asyncio.gather(*steps, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def redelivery_delay(deliveries: int, scale: float) -> float:
    """How long a failed message waits before its next delivery (it grows, then stays at five minutes)."""
    return RETRY_DELAYS[min(deliveries - 1, len(RETRY_DELAYS) - 1)] * scale


async def dead_letter(
    js: JetStreamContext, *, service: str, stream: str, consumer: str, subject: str, stream_seq: int,
    deliveries: int, error: str,
) -> None:
    """Publish `alur.deadletter.v1` for a message that kept failing; it names, never copies, the message.

    Its id derives from (stream, consumer, sequence): the handler's own last-delivery dead letter and the
    relay's from a max-deliveries advisory are one dead letter, never two.
    """
    data = DeadLetterData(
        stream=stream, consumer=consumer, subject=subject, stream_seq=stream_seq, deliveries=deliveries,
        error=error, service=service, failed_at=datetime.now(UTC),
    )
    event = CloudEvent[DeadLetterData].build(
        type=DEADLETTER,
        source=f"alur/{service}",
        subject=f"{stream}:{stream_seq}",
        data=data,
        id=derived_id("deadletter", stream, consumer, str(stream_seq)),
    )
    await publish(js, subjects.dlq(stream), event)


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
                    await dead_letter(js, service=service, stream=meta.stream, consumer=meta.consumer,
                                      subject=raw.subject, stream_seq=meta.sequence.stream, deliveries=deliveries,
                                      error=error)
                    log.error(
                        "dead-lettered", consumer=meta.consumer, stream_seq=meta.sequence.stream,
                        deliveries=deliveries, error=error,
                    )
                    raise AckMessage() from None
                delay = redelivery_delay(deliveries, scale)
                log.warning(
                    "will retry", consumer=meta.consumer, stream_seq=meta.sequence.stream,
                    deliveries=deliveries, delay=delay, error=error,
                )
                raise NackMessage(delay=delay) from None

    return Reliable


def server_list(url: str) -> list[str]:
    """One NATS URL, or the comma-separated URLs of a cluster's servers, as a list."""
    return [u.strip() for u in url.split(",") if u.strip()]


def make_broker(
    *, service: str, servers: str, seed: str | None, max_deliver: Mapping[str, int], scale: float = 1.0,
    inner: Sequence[Any] = (),
) -> NatsBroker:
    """The FastStream broker of one service: its NKey user, its own inbox prefix, the reliability policy.
    `servers` is one URL or a cluster's comma-separated URLs (it reconnects to any of them). `inner`
    middlewares run inside the reliability policy: they see a handler's own exception, not the retry it
    becomes (FastStream's metrics count the real error type)."""
    return NatsBroker(
        server_list(servers),
        security=NatsNKey.from_seed(seed) if seed else None,
        inbox_prefix=service_inbox_prefix(service),
        middlewares=[reliability(service, max_deliver, scale), *inner],
        graceful_timeout=10.0,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        logger=logging.getLogger(f"faststream.{service}"),
        log_level=logging.DEBUG,
    )


async def connect(
    url: str, *, seed: str | None = None, name: str = "alur-cli", inbox_prefix: str | None = None,
    reconnect: bool = False,
) -> Client:
    """A plain nats-py connection for the CLI and tools (NKey user if a seed is given); `url` may list a
    cluster's servers. `reconnect` keeps a long-lived connection (`alur up`'s) across a node's failure.

    A first connect that fails is tried twice more: a loaded machine or a server reloading its accounts
    (`agency add`, `rotate`) can miss one handshake; a server that is not there refuses at once, so "is
    `alur up` running?" comes within a few seconds (nats-py's own tries are 0.2 s apart, not its 2 s)."""
    options: dict[str, Any] = {"name": name, "connect_timeout": 5}
    options |= {"max_reconnect_attempts": -1, "reconnect_time_wait": 0.5} if reconnect else {
        "max_reconnect_attempts": 2, "reconnect_time_wait": 0.2, "allow_reconnect": False}
    if seed:
        options["nkeys_seed_str"] = seed
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix

    async def _quiet(_: Exception) -> None:
        return None

    for attempt in range(1, CONNECT_ATTEMPTS):
        with contextlib.suppress(Exception):
            return await nats.connect(server_list(url), error_cb=_quiet, **options)
        await asyncio.sleep(0.5 * attempt)
    return await nats.connect(server_list(url), error_cb=_quiet, **options)


CONNECT_ATTEMPTS = 3


def decode(payload: bytes) -> dict[str, Any]:
    value = json.loads(payload)
    if not isinstance(value, dict):
        raise SafeError("message body is not a JSON object")
    return value


SCAN_IDLE = 5.0  # a scan ends at the last matching message; this only paces the check of a slow server
SCAN_STALL = 120.0  # how long a scan waits for a server that has messages left but sends none
UNAVAILABLE_RETRIES = 6


async def when_available(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, tried again a few times (20 ms, doubling) while JetStream answers "no responders".

    nats-server re-registers an account's JetStream API when it reloads its config (a new agency account,
    a rotated key): for a few milliseconds an API request finds no responder. Only that is retried.
    """
    for attempt in range(UNAVAILABLE_RETRIES):
        try:
            return await call()
        except ServiceUnavailableError:
            if attempt == UNAVAILABLE_RETRIES - 1:
                raise
            await asyncio.sleep(0.02 * 2**attempt)
    raise AssertionError("unreachable")


async def scan(
    js: JetStreamContext, stream: str, filter_subject: str = ">", *, last_per_subject: bool = False
) -> AsyncIterator[Any]:
    """Every message of `stream` matching `filter_subject` (or only the last per subject), oldest first.

    An ordered consumer reads them; the scan ends on the message with nothing pending after it, or at
    once when the consumer's first info shows nothing matched (no message will ever come). A slow server
    is waited for; one that sends nothing for SCAN_STALL seconds with messages left raises `TimeoutError`.
    """
    if (await when_available(lambda: js.stream_info(stream))).state.messages == 0:
        return
    policy = DeliverPolicy.LAST_PER_SUBJECT if last_per_subject else DeliverPolicy.ALL
    sub = await when_available(
        lambda: js.subscribe(filter_subject, stream=stream, ordered_consumer=True, deliver_policy=policy)
    )
    try:
        info = await when_available(sub.consumer_info)
        if info.num_pending == 0 and not (info.delivered and info.delivered.consumer_seq):
            return
        stalled = 0.0
        while True:
            try:
                msg = await sub.next_msg(timeout=SCAN_IDLE)
            except TimeoutError:
                # a busy server, not the end: stop only when nothing is left, fail rather than answer partly
                if (await when_available(sub.consumer_info)).num_pending == 0:
                    return
                stalled += SCAN_IDLE
                if stalled >= SCAN_STALL:
                    raise TimeoutError(f"reading {stream} stalled for {stalled:.0f}s with messages left") from None
                continue
            stalled = 0.0
            yield msg
            if msg.metadata.num_pending == 0:
                return
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


KV_OPERATION = "KV-Operation"
KV_CHUNK = 256
"""Entries `kv_entries` hands on between two turns it gives the event loop."""


@dataclass(frozen=True, slots=True)
class KvEntry:
    """One key of a KV bucket as a read found it: its value (None once deleted or purged) and its sequence."""

    key: str
    value: bytes | None
    seq: int


async def kv_last_seq(js: JetStreamContext, bucket: str) -> int:
    """The last sequence of the bucket's stream now: a read of the bucket covers at least this far."""
    return (await when_available(lambda: js.stream_info(f"KV_{bucket}"))).state.last_seq


async def kv_entries(js: JetStreamContext, bucket: str) -> AsyncIterator[KvEntry]:
    """Every key of a KV bucket with its latest value, one at a time as the bucket's stream delivers them.

    Memory stays at what the ordered consumer holds in flight, whatever the bucket's size, so a reader that
    keeps only what it needs of each entry can walk a bucket of any size. Every `KV_CHUNK` entries the
    event loop gets a turn, so a long walk never starves the handlers and timers beside it. Read from the
    bucket's stream (last message per key) rather than nats-py's `keys()`, whose end-of-keys marker can
    come before the keys under load and answer with a partial or empty list.
    """
    prefix = f"$KV.{bucket}."
    handed = 0
    async with contextlib.aclosing(scan(js, f"KV_{bucket}", prefix + ">", last_per_subject=True)) as msgs:
        async for msg in msgs:
            deleted = (msg.headers or {}).get(KV_OPERATION) in ("DEL", "PURGE")
            yield KvEntry(msg.subject[len(prefix):], None if deleted else msg.data, msg.metadata.sequence.stream)
            handed += 1
            if handed % KV_CHUNK == 0:
                await asyncio.sleep(0)


async def kv_snapshot(js: JetStreamContext, bucket: str) -> tuple[dict[str, bytes], int]:
    """Every live key of a KV bucket with its value, and the bucket stream's last sequence it covers.

    The whole bucket in memory: for a bucket that may grow large, walk `kv_entries` instead.
    """
    last = await kv_last_seq(js, bucket)
    entries: dict[str, bytes] = {}
    async for entry in kv_entries(js, bucket):
        if entry.value is None:
            entries.pop(entry.key, None)
        else:
            entries[entry.key] = entry.value
        last = max(last, entry.seq)
    return entries, last


async def kv_history(js: JetStreamContext, bucket: str, key: str) -> list[bytes]:
    """Every value a KV key has held (the bucket's history), oldest first, read from the bucket's stream
    (nats-py's `history()` ends on the same early marker as its `keys()`)."""
    values = []
    async for msg in scan(js, f"KV_{bucket}", f"$KV.{bucket}.{key}"):
        if (msg.headers or {}).get(KV_OPERATION) not in ("DEL", "PURGE") and msg.data:
            values.append(msg.data)
    return values
