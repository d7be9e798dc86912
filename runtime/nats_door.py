"""The NATS door: what an agency publishes on `alur.report.<id>` or `alur.response.<id>` is stored in REPORTS
under a message id scoped by that agency (issue 17.8).

JetStream dedups a stream by `Nats-Msg-Id` alone, and a publisher sets that header itself; were agencies to
publish straight into REPORTS, an agency that sent another's next event id first would make that agency's
report a "duplicate", acked and never stored. So agencies never write REPORTS themselves. Their account
(`runtime.nats_auth`) imports `alur.report.*` and `alur.response.*` from ALUR as this door's subjects,
`alur.ingest.report.*` and `alur.ingest.response.*`; the service that owns the input (intake for reports,
notify for answers) relays each message into REPORTS on its reporter's subject:

- `Nats-Msg-Id` becomes `<agency>:<id>`, the scope intake's and notify's HTTP doors store under too, so
  JetStream answers `duplicate` only for the agency's own earlier message (sent over either door);
- every other `Nats-*` header is dropped (the server's `Nats-Request-Info`, and any `Nats-Expected-*` a
  publisher might use to learn the last id stored by someone else), and so is `Alur-Reply-To`, which only
  Alur's own doors set;
- REPORTS' answer (the PubAck, or JetStream's error) goes back to the agency unchanged, so its client reads
  it exactly as a direct publish; with REPORTS unreachable the agency gets a 503 error and sends again.

Each message is published in the order it came, without waiting for the one before to be stored: one
instance keeps a publisher's order, and adds no round trip of its own. Instances share a queue group, so
with two of them a publisher that needs order (an answer after the one before, a follow-up after its
report) waits for each PubAck before the next publish (docs/integrating.md says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from contracts import subjects
from contracts.vocab import AGENCY_ID_RE
from runtime.bus import REPLY_HEADER, scoped_msg_id
from runtime.logs import get_logger
from runtime.security import service_inbox_prefix

Kind = Literal["report", "response"]
INGEST = "alur.ingest"
AGENCIES_ACCOUNT = "AGENCIES"
"""The account every agency's user is in (`runtime.nats_auth`)."""
PENDING_FOR = 30.0
"""Seconds a relayed message waits for REPORTS' answer; a publisher gave up long before (its timeout)."""
UNAVAILABLE = (b'{"error":{"code":503,"err_code":10039,"description":"REPORTS did not answer; the input was not '
               b'stored, send it again"}}')


def door_subject(kind: Kind, agency: str = "*") -> str:
    """Where the NATS door receives `kind` from `agency` inside ALUR (`*`: every agency)."""
    return f"{INGEST}.{kind}.{agency}"


def stored_headers(reporter: str, headers: dict[str, str] | None) -> dict[str, str]:
    """The headers an input is stored with: the publisher's own, less `Nats-*` and Alur's reply header,
    with its `Nats-Msg-Id` scoped by `reporter`."""
    headers = headers or {}
    kept = {k: v for k, v in headers.items()
            if not k.lower().startswith("nats-") and k.lower() != REPLY_HEADER.lower()}
    if msg_id := headers.get("Nats-Msg-Id"):
        kept["Nats-Msg-Id"] = scoped_msg_id(reporter, msg_id)
    return kept


def published_by(msg: Msg, kind: Kind) -> str | None:
    """The agency that published `msg` on its own `kind` subject, or None for what only looks so.

    The server delivers on the door's subject, too, what it sends to a reply subject an agency named: a
    referral pulled with `reply="alur.response.<id>"` (under the referral's own subject), an API status
    (under a random token). Those come from ALUR's side of the import; an agency's publish crosses it from
    AGENCIES, which the server writes in `Nats-Request-Info`."""
    prefix = door_subject(kind, "")
    reporter = msg.subject.removeprefix(prefix)
    if not msg.subject.startswith(prefix) or not AGENCY_ID_RE.fullmatch(reporter):
        return None
    try:
        origin = json.loads((msg.headers or {}).get("Nats-Request-Info", "{}")).get("acc")
    except (ValueError, AttributeError):
        return None
    return reporter if origin == AGENCIES_ACCOUNT else None


def refusal_code(answer: bytes) -> int | None:
    """JetStream's error code in a refused publish's answer (503 unavailable, 400 too large ...)."""
    try:
        error = json.loads(answer).get("error", {})
        return int(error.get("code")) if isinstance(error, dict) else None
    except (ValueError, TypeError, AttributeError):
        return None


class Waiting(NamedTuple):
    """A relayed input whose publisher waits for REPORTS' answer."""

    reply: str
    reporter: str
    until: float


@dataclass
class NatsDoor:
    """One service's relay of one kind of input from the agencies' account into REPORTS."""

    service: str
    kind: Kind
    _nc: Client | None = None
    _inputs: Subscription | None = None
    _answers: Subscription | None = None
    _waiting: OrderedDict[str, Waiting] = field(default_factory=OrderedDict)
    log: Any = field(default_factory=lambda: get_logger("alur.nats_door"))
    _tokens: itertools.count[int] = field(default_factory=itertools.count)
    _instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    _idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def _answer_prefix(self) -> str:
        """This instance's own: the service's other instances, and this one after a restart, count tokens
        from 0 too, and an answer must reach only the input it answers."""
        return f"{service_inbox_prefix(self.service)}.door.{self._instance}"

    async def start(self, nc: Client) -> None:
        """Listen for REPORTS' answers, then for inputs (so no answer can come before its listener)."""
        self._nc = nc
        self._answers = await nc.subscribe(f"{self._answer_prefix}.*", cb=self._on_answer)
        self._inputs = await nc.subscribe(door_subject(self.kind), queue=f"{self.service}-door",
                                          cb=self._on_input, pending_msgs_limit=65536)
        await nc.flush()

    async def stop(self, timeout: float = 5.0) -> None:
        """Stop taking inputs, relay those already received, and wait (up to `timeout` seconds) for REPORTS
        to answer them, so each publisher hears its PubAck rather than a timeout."""
        inputs, self._inputs = self._inputs, None
        if inputs is None:
            return
        with contextlib.suppress(Exception):  # the connection may be gone already: nothing to drain then
            await inputs.drain()
            self._prune(time.monotonic())
            if self._waiting:
                self._idle.clear()
                await asyncio.wait_for(self._idle.wait(), timeout)

    def problems(self) -> list[str]:
        """Readiness: the door is listening."""
        return [] if self._inputs is not None else [f"NATS door for {self.kind}s: not listening"]

    def _prune(self, now: float) -> None:
        """Forget the inputs whose publishers stopped waiting (oldest first: they wait in arrival order)."""
        while self._waiting and next(iter(self._waiting.values())).until < now:
            self._waiting.popitem(last=False)

    async def _on_input(self, msg: Msg) -> None:
        assert self._nc is not None
        reporter = published_by(msg, self.kind)
        if reporter is None:
            return
        now = time.monotonic()
        self._prune(now)
        stored_on = subjects.report(reporter) if self.kind == "report" else subjects.response(reporter)
        reply = ""
        if msg.reply:
            token = str(next(self._tokens))
            self._waiting[token] = Waiting(msg.reply, reporter, now + PENDING_FOR)
            reply = f"{self._answer_prefix}.{token}"
        headers = stored_headers(reporter, msg.headers) or None
        await self._nc.publish(stored_on, msg.data, reply=reply, headers=headers)

    async def _on_answer(self, msg: Msg) -> None:
        assert self._nc is not None
        waiting = self._waiting.pop(msg.subject.rsplit(".", 1)[-1], None)
        if not self._waiting:
            self._idle.set()
        if waiting is None:
            return
        answer = msg.data or UNAVAILABLE  # no data: a status (503, no responders)
        if b'"error"' in answer[:16]:
            self.log.warning("NATS door: an input was not stored", kind=self.kind, reporter=waiting.reporter,
                             code=refusal_code(answer))
        await self._nc.publish(waiting.reply, answer)
