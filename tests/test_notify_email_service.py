"""Email notices end to end (issue 16): a real `alur up` at ALUR_SLA_SCALE=0.001 mailing a real aiosmtpd
server on 127.0.0.1.

- the reference report's referral to an agency with `email` gives exactly one notice, with the agency, the
  service, the priority, the deadline and where to open it, and nothing of the victim anywhere in the message;
- its escalation (raised to the coordinator) mails the agency and the secretariat;
- with the relay down the notice is retried on the webhook schedule and arrives once the relay is back;
- a recipient refused with 550 is raised to the coordinator with the reason, and counted;
- without ALUR_SMTP_URL nothing is sent and notify serves as before.
"""

from __future__ import annotations

import email
import email.policy
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from prometheus_client.parser import text_string_to_metric_families

from alur.embedded import free_port
from tests.conftest import CONFIDENTIAL, Running, alur_stack, reference_report
from tests.support import (
    Feed,
    about,
    case_referrals,
    publish_report,
    referral_state,
    request_referral,
    wait_for,
)

BOARD = "https://alur.example.go.id"
SENDER = "alur@gt-kalsel.example"
PPA = "uptd-ppa-banjarmasin"
PPA_EMAIL = "ppa@banjarmasin.example"
GT_EMAIL = "sekretariat@gt-kalsel.example"


@dataclass
class Mail:
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore[return-value]

    @property
    def text(self) -> str:
        """Everything a reader could see: the raw message, its headers and its decoded body."""
        message = self.message
        body = message.get_body(("plain",))
        assert body is not None
        return "\n".join([self.raw.decode(errors="replace"), *(f"{k}: {v}" for k, v in message.items()),
                          body.get_content()])

    def about(self, referral_id: str, kind: str) -> bool:
        message = self.message
        return message["X-Alur-Referral"] == referral_id and message["X-Alur-Notice"] == kind


@dataclass
class Mailbox:
    """The aiosmtpd handler: refuses RCPT to `refused` with 550, keeps every message it accepts."""

    refused: set[str] = field(default_factory=set)
    mails: list[Mail] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refused:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.mails.append(Mail(list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 Message accepted"

    def of(self, referral_id: str, kind: str, to: str | None = None) -> list[Mail]:
        with self.lock:
            mails = list(self.mails)
        return [m for m in mails if m.about(referral_id, kind) and (to is None or to in m.recipients)]


@dataclass
class SmtpServer:
    """A real SMTP server on a fixed loopback port that a test may take down and bring back."""

    mailbox: Mailbox = field(default_factory=Mailbox)
    port: int = field(default_factory=free_port)
    controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, smtp: SmtpServer) -> Iterator[Running]:
    """One `alur up` mailing `smtp`; the regency's UPTD PPA and the secretariat have addresses."""
    stacks = alur_stack(tmp_path_factory.mktemp("email") / "alur", ALUR_SMTP_URL=f"smtp://127.0.0.1:{smtp.port}",
                        ALUR_SMTP_FROM=SENDER, ALUR_BOARD_URL=BOARD)
    stack = next(stacks)
    try:
        stack.cli("agency", "add", PPA, "--type", "uptd_ppa", "--regions", "6371", "--name",
                  "UPTD PPA Kota Banjarmasin", "--email", PPA_EMAIL)
        stack.cli("agency", "add", "gt-kalsel", "--type", "gt_secretariat", "--name",
                  "Sekretariat Gugus Tugas PP-TPPO Kalimantan Selatan", "--email", GT_EMAIL)
        yield stack
    finally:
        stacks.close()


def add_inbox_agency(running: Running, agency: str, address: str) -> None:
    running.cli("agency", "add", agency, "--type", "health", "--regions", "6371", "--channel", "inbox",
                "--email", address)


async def notices(js: JetStreamContext, referral_id: str) -> list[tuple[str, int, str]]:
    """(recipient, attempt, outcome) of every notice attempt recorded on the referral."""
    state = await referral_state(js, referral_id)
    return [(n["recipient"], n["attempt"], n["outcome"]) for n in (state or {}).get("notices", [])]


async def request_notices(js: JetStreamContext, referral_id: str, agency: str) -> list[tuple[str, int, str]]:
    """(recipient, attempt, outcome) of the notice attempts recorded for the referral's request event only
    (its escalations are mailed too, and may be recorded by the time a loaded machine looks)."""
    sub = await js.subscribe(f"alur.referral.requested.{agency}", stream="REFERRALS", ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    try:
        while True:
            event = json.loads((await sub.next_msg(timeout=10)).data)
            if event["data"]["referral_id"] == referral_id:
                break
    finally:
        await sub.unsubscribe()
    state = await referral_state(js, referral_id)
    return [(n["recipient"], n["attempt"], n["outcome"]) for n in (state or {}).get("notices", [])
            if n["event_id"] == event["id"]]


async def settled(js: JetStreamContext, referral_id: str, recipient: str, outcome: str = "sent") -> bool:
    return any(r == recipient and o == outcome for r, _, o in await notices(js, referral_id))


async def test_a_new_referral_mails_its_agency_once_without_a_word_of_the_victim(
    running: Running, smtp: SmtpServer, js: JetStreamContext
) -> None:
    report_ref = "BP3MI-KS-2026-0901"
    await publish_report(running, reference_report(report_ref=report_ref) | {"id": str(uuid.uuid4())})
    case_id, referrals = await case_referrals(js, case_id=running.case_id("bp3mi-kalsel", report_ref))
    referral_id, entry = next((rid, r) for rid, r in referrals.items() if r["agency"] == PPA)
    await wait_for(lambda: settled(js, referral_id, PPA), timeout=30)
    [mail] = smtp.mailbox.of(referral_id, "requested")
    assert mail.recipients == [PPA_EMAIL]
    message, text = mail.message, mail.text
    assert message["To"] == PPA_EMAIL and message["From"] == SENDER
    state = await referral_state(js, referral_id)
    assert state is not None
    for fact in (PPA, "UPTD PPA Kota Banjarmasin", state["service"], "TINGGI (high)", referral_id,
                 "own system", state["due"][:16]):
        assert fact in text, fact
    assert "/inbox#" not in text, "the UPTD PPA reads its NATS consumer: it has no inbox to be sent to"
    # Nothing of the case: the UPTD PPA's view carries identity and narrative, the notice none of it.
    for secret in (*CONFIDENTIAL, "KS-0412", report_ref, case_id):
        assert secret not in text, secret
    # No other agency of the case has an address: the one mail of this case went to the UPTD PPA.
    others = [rid for rid in referrals if rid != referral_id]
    assert not any(smtp.mailbox.of(rid, "requested") for rid in others)
    assert await request_notices(js, referral_id, PPA) == [(PPA, 1, "sent")]

    # The referral is a child's, high priority: unacknowledged at 0.001 its escalation comes in seconds,
    # raised to the coordinator: the agency and the secretariat are mailed.
    feed = await Feed.open(js)
    raised = await feed.seek(about("escalated", referral_id, action="raise", overdue="ack"), timeout=60)
    assert raised.data["notify"] == ["gt-kalsel"]
    await wait_for(lambda: smtp.mailbox.of(referral_id, "escalated", GT_EMAIL)
                   and smtp.mailbox.of(referral_id, "escalated", PPA_EMAIL), timeout=30)
    escalated = smtp.mailbox.of(referral_id, "escalated", GT_EMAIL)[0]
    assert "Eskalasi tingkat 2" in escalated.message["Subject"] and "not been acknowledged" in escalated.text
    assert f"{BOARD}/" in escalated.text, "the secretariat is sent to its board"
    for mail in smtp.mailbox.of(referral_id, "escalated"):
        assert not any(secret in mail.text for secret in (*CONFIDENTIAL, "KS-0412", case_id))
    assert len(smtp.mailbox.of(referral_id, "requested")) == 1, "the request's notice never went twice"


async def test_a_notice_waits_out_a_relay_that_is_down_and_arrives_once(
    running: Running, smtp: SmtpServer, js: JetStreamContext
) -> None:
    add_inbox_agency(running, "puskesmas-teluk-dalam", "pkm-teluk-dalam@banjarmasin.example")
    smtp.stop()
    try:
        request = await request_referral(js, "puskesmas-teluk-dalam", due_in=3600)
        await wait_for(lambda: settled(js, request.referral_id, "puskesmas-teluk-dalam", "retry"), timeout=30)
    finally:
        smtp.start()
    await wait_for(lambda: settled(js, request.referral_id, "puskesmas-teluk-dalam"), timeout=30)
    assert len(smtp.mailbox.of(request.referral_id, "requested")) == 1
    recorded = await notices(js, request.referral_id)
    assert [o for _, _, o in recorded][-1] == "sent" and set(o for _, _, o in recorded[:-1]) == {"retry"}
    assert [n for _, n, _ in recorded] == list(range(1, len(recorded) + 1)), "attempts counted in order"


async def test_a_refused_address_is_raised_to_the_coordinator(
    running: Running, smtp: SmtpServer, js: JetStreamContext
) -> None:
    smtp.mailbox.refused.add("nobody@dinsos.example")
    add_inbox_agency(running, "dinsos-alalak", "nobody@dinsos.example")
    feed = await Feed.open(js)
    request = await request_referral(js, "dinsos-alalak", due_in=3600)
    raised = (await feed.seek(about("escalated", request.referral_id, overdue="email"), timeout=30)).data
    assert raised["target"] == "coordinator" and raised["action"] == "raise" and raised["notify"] == ["gt-kalsel"]
    assert "bounced" in raised["reason"] and "550" in raised["reason"] and "dinsos-alalak" in raised["reason"]
    # (the secretariat's notice of that raise may be recorded already on a quick machine)
    assert [n for n in await notices(js, request.referral_id) if n[0] == "dinsos-alalak"] == [
        ("dinsos-alalak", 1, "bounced")]
    # The secretariat is mailed about it; the address that failed is not tried again for it.
    await wait_for(lambda: smtp.mailbox.of(request.referral_id, "escalated", GT_EMAIL), timeout=30)
    await wait_for(lambda: settled(js, request.referral_id, "gt-kalsel"), timeout=30)
    assert [r for r, _, _ in await notices(js, request.referral_id)] == ["dinsos-alalak", "gt-kalsel"]
    async with httpx.AsyncClient(timeout=10) as http:
        metrics = (await http.get(f"{running.http('notify')}/metrics")).text
    counted = {(s.labels["agency_type"], s.labels["outcome"]): s.value
               for family in text_string_to_metric_families(metrics) for s in family.samples
               if s.name == "alur_email_notices_total"}
    assert counted[("health", "bounced")] == 1 and counted[("gt_secretariat", "sent")] >= 1
    assert "nobody@dinsos.example" not in metrics


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[Running]:
    """A stack without ALUR_SMTP_URL."""
    yield from alur_stack(tmp_path / "alur")


async def test_without_a_relay_nothing_is_sent_and_nothing_breaks(silent: Running, smtp: SmtpServer) -> None:
    add_inbox_agency(silent, "puskesmas-sungai-jingah", "pkm@banjarmasin.example")
    admin = await silent.admin()
    js = admin.jetstream()
    feed = await Feed.open(js)
    request = await request_referral(js, "puskesmas-sungai-jingah", due_in=3600)
    await feed.seek(about("delivered", request.referral_id, agency="puskesmas-sungai-jingah"), timeout=30)
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await http.get(f"{silent.http('notify')}/readyz")).status_code == 200
    await wait_for(lambda: _drained(js), timeout=30)
    assert await notices(js, request.referral_id) == []
    assert not smtp.mailbox.of(request.referral_id, "requested")
    assert silent.logs().count("email notices off: ALUR_SMTP_URL is not set") == 1
    await admin.close()


async def _drained(js: JetStreamContext) -> bool:
    info = await js.consumer_info("REFERRALS", "notify-notices")
    return info.num_pending == 0 and info.num_ack_pending == 0
