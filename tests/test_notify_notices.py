"""Email notices without a broker: the composer carries only codes, a deadline, an id and a link (never the
case it was given), who is mailed for which event, the relay URL, the notice records in the referral's
state, and one SMTP attempt against a real aiosmtpd server on 127.0.0.1, classified."""

from __future__ import annotations

import email
import email.policy
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given
from hypothesis import strategies as st

from alur.embedded import free_port
from contracts.events import EscalationData, ReferralRequestedData, RuleReason
from contracts.records import Agency
from contracts.vocab import AgencyType, Channel, Priority, Service
from domain.escalation_policy import EscalationPolicy
from runtime.settings import Settings, SettingsError, SmtpRelay, parse_smtp_url
from services.notify.mailing import settle
from services.notify.notices import (
    EMAIL_RAISE,
    compose,
    escalated_notice,
    inbox_link,
    message_id,
    raises_on_failure,
    recipients,
    requested_notice,
)
from services.notify.smtp import send
from services.notify.state import (
    MAX_ATTEMPTS_KEPT,
    NoticeAttempt,
    new_state,
    record_notice,
)
from services.notify.webhook import RETRY_SCHEDULE
from tests.conftest import CONFIDENTIAL, REFERENCE_REPORT

T0 = datetime(2026, 11, 20, 0, 15, tzinfo=UTC)
BOARD = "https://alur.example.go.id/"
SENDER = "alur@gt-kalsel.example"
PPA = Agency(id="uptd-ppa-banjarmasin", type=AgencyType.UPTD_PPA, name="UPTD PPA Kota Banjarmasin",
             regions=["6371"], email="ppa@banjarmasin.example", channel=Channel.INBOX)
GT = Agency(id="gt-kalsel", type=AgencyType.GT_SECRETARIAT, name="Sekretariat Gugus Tugas", email="gt@kalsel.example")
POLICE = Agency(id="polresta-banjarmasin", type=AgencyType.POLICE, regions=["6371"])
REGISTRY = {a.id: a for a in (PPA, GT, POLICE)}
CASE_VIEW: dict[str, Any] = {"case_id": "case-" + "1" * 20, "victim": REFERENCE_REPORT["data"]["victim"],
                             "narrative": REFERENCE_REPORT["data"]["narrative"], "regency": "6371"}
SECRETS = (*CONFIDENTIAL, "KS-0412", CASE_VIEW["case_id"], "BP3MI-KS-2026-0412")


def request(**changes: Any) -> ReferralRequestedData:
    fields: dict[str, Any] = {
        "referral_id": "ref-" + "a" * 20, "case_id": CASE_VIEW["case_id"], "agency": PPA.id,
        "agency_type": AgencyType.UPTD_PPA, "service": Service.CASE_MANAGEMENT, "priority": Priority.HIGH,
        "due": T0 + timedelta(hours=1), "ruleset_version": "test", "case": CASE_VIEW, "requested_at": T0,
        "reasons": [RuleReason(rule_id="child", description="a child victim", legal_basis="UU 21/2007")],
    }
    return ReferralRequestedData.model_validate({**fields, **changes})


def escalation(**changes: Any) -> EscalationData:
    fields: dict[str, Any] = {
        "referral_id": "ref-" + "a" * 20, "case_id": CASE_VIEW["case_id"], "agency": PPA.id, "status": "escalated",
        "level": 2, "action": "raise", "target": "coordinator", "overdue": "ack", "due": T0 + timedelta(hours=1),
        "notify": [GT.id], "reason": "acknowledgement was due and has not come; level 2: raised to the coordinator",
    }
    return EscalationData.model_validate({**fields, **changes})


def everything(message: email.message.EmailMessage) -> str:
    """The whole message as a reader could see it: raw bytes, every header and the decoded body."""
    body = message.get_body(("plain",))
    assert body is not None
    return "\n".join([message.as_string(), *(f"{k}: {v}" for k, v in message.items()), body.get_content()])


# ------------------------------------------------------------------------------------------ the composer


def test_a_new_referral_notice_holds_agency_service_priority_deadline_and_link() -> None:
    message = compose(requested_notice("evt-1", request(), PPA, BOARD), PPA, SENDER, T0)
    text = everything(message)
    assert message["To"] == PPA.email and message["From"] == SENDER
    assert message["X-Alur-Notice"] == "requested" and message["X-Alur-Referral"] == "ref-" + "a" * 20
    assert message["Auto-Submitted"] == "auto-generated"
    assert "case_management" in message["Subject"] and "TINGGI" in message["Subject"]
    for fact in (PPA.id, PPA.name, "case_management", "TINGGI (high)", "20-11-2026 09:15 WITA",
                 "2026-11-20T01:15+00:00", "https://alur.example.go.id/inbox#ref-" + "a" * 20):
        assert fact in text, fact
    assert "Rujukan baru" in text and "New referral" in text
    for secret in SECRETS:
        assert secret not in text, secret


def test_an_escalation_notice_says_what_was_missed_and_its_level() -> None:
    notice = escalated_notice("evt-2", escalation(), PPA, service=Service.CASE_MANAGEMENT, priority=Priority.HIGH,
                              board_link=BOARD)
    message = compose(notice, GT, SENDER, T0)
    text = everything(message)
    assert message["To"] == GT.email and message["X-Alur-Notice"] == "escalated"
    assert "Eskalasi tingkat 2" in message["Subject"]
    assert "not been acknowledged" in text and PPA.id in text and "Yth. Sekretariat Gugus Tugas" in text
    assert "raised to the coordinator" not in text, "the event's reason stays out: the notice says it in its words"
    assert "https://alur.example.go.id/\n" in text and "/inbox#" not in text, "the secretariat is sent to its board"


def test_an_agency_with_a_system_of_its_own_is_not_sent_to_an_inbox_it_has_not() -> None:
    system = PPA.model_copy(update={"channel": Channel.NATS})
    text = everything(compose(requested_notice("evt-3", request(), system, BOARD), system, SENDER, T0))
    assert "/inbox#" not in text and "own system" in text


AGENCY_IDS = st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}[a-z0-9]\Z")
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40)


@given(service=st.sampled_from(Service), priority=st.sampled_from(Priority), agency=AGENCY_IDS, name=TEXT,
       minutes=st.integers(min_value=-10**6, max_value=10**7), case=st.dictionaries(TEXT, TEXT, max_size=5),
       kind=st.sampled_from(["requested", "escalated"]), overdue=st.sampled_from(
           ["ack", "decision", "update", "delivery", EMAIL_RAISE, "statutory-first_aid_7d", "other"]))
def test_every_notice_carries_its_facts_and_nothing_of_the_case(
    service: Service, priority: Priority, agency: str, name: str, minutes: int, case: dict[str, str],
    kind: str, overdue: str,
) -> None:
    holder = Agency(id=agency, type=AgencyType.HEALTH, name=name, email=f"x@{agency}.example", channel=Channel.INBOX)
    due = T0 + timedelta(minutes=minutes)
    victim_view = {**case, **CASE_VIEW}
    if kind == "requested":
        notice = requested_notice("evt", request(agency=agency, service=service, priority=priority, due=due,
                                                 case=victim_view), holder, BOARD)
    else:
        notice = escalated_notice("evt", escalation(agency=agency, due=due, overdue=overdue), holder, service=service,
                                  priority=priority, board_link=BOARD)
    message = compose(notice, holder, SENDER, T0)
    text = everything(message)
    assert service.value in text and f"({priority.value})" in text and agency in text
    assert due.astimezone(UTC).isoformat(timespec="minutes") in text
    assert inbox_link(BOARD, notice.referral_id) in text
    for secret in SECRETS:
        assert secret not in text, secret
    assert email.message_from_string(message.as_string(), policy=email.policy.default)["To"] == holder.email


def test_the_message_id_is_the_same_for_every_attempt_and_differs_per_recipient() -> None:
    assert message_id("evt", PPA.id, SENDER) == message_id("evt", PPA.id, SENDER)
    assert message_id("evt", PPA.id, SENDER) != message_id("evt", GT.id, SENDER)
    assert message_id("evt", PPA.id, SENDER).endswith("@gt-kalsel.example>")
    first = compose(requested_notice("evt", request(), PPA, BOARD), PPA, SENDER, T0)
    again = compose(requested_notice("evt", request(), PPA, BOARD), PPA, SENDER, T0 + timedelta(hours=2))
    assert first["Message-ID"] == again["Message-ID"]


# ------------------------------------------------------------------------------------------- recipients


def test_who_is_mailed() -> None:
    assert recipients("requested", PPA.id, [], None, REGISTRY) == [PPA]
    assert recipients("requested", POLICE.id, [], None, REGISTRY) == [], "no email: skipped"
    assert recipients("escalated", PPA.id, [GT.id], "ack", REGISTRY) == [PPA, GT]
    assert recipients("escalated", POLICE.id, [GT.id], "ack", REGISTRY) == [GT]
    assert recipients("escalated", PPA.id, [PPA.id], "ack", REGISTRY) == [PPA], "each once"
    assert recipients("escalated", PPA.id, [GT.id], EMAIL_RAISE, REGISTRY) == [GT], "not the address that failed"
    disabled = {**REGISTRY, PPA.id: PPA.model_copy(update={"enabled": False})}
    assert recipients("requested", PPA.id, [], None, disabled) == []
    assert recipients("requested", "nowhere", [], None, REGISTRY) == []


def test_a_failed_notice_of_a_failed_notice_is_not_raised_again() -> None:
    assert raises_on_failure("ack") and raises_on_failure(None) and raises_on_failure("delivery")
    assert not raises_on_failure(EMAIL_RAISE)


def test_a_transient_failure_is_retried_on_the_webhook_schedule_then_given_up() -> None:
    rng = random.Random(7)
    assert settle("sent", 1, scale=1.0, rng=rng) == ("sent", None)
    assert settle("bounced", 1, scale=1.0, rng=rng) == ("bounced", None)
    outcome, delay = settle("retry", 1, scale=1.0, rng=rng)
    assert outcome == "retry" and delay is not None and RETRY_SCHEDULE[0] / 2 <= delay <= RETRY_SCHEDULE[0]
    assert settle("retry", len(RETRY_SCHEDULE), scale=0.001, rng=rng)[0] == "retry"
    assert settle("retry", len(RETRY_SCHEDULE) + 1, scale=0.001, rng=rng) == ("given_up", None)
    assert settle("retry", 2, scale=1.0, rng=rng, last_delivery=True) == ("given_up", None)


# ------------------------------------------------------------------------------------------ the relay URL


def test_the_relay_url() -> None:
    assert parse_smtp_url("smtp://127.0.0.1:2525") == SmtpRelay("127.0.0.1", 2525, tls=False)
    relay = parse_smtp_url("smtps://alur%40kalsel:p%2Fw@mail.example.go.id")
    assert (relay.port, relay.tls, relay.username, relay.password) == (465, True, "alur@kalsel", "p/w")
    assert "p/w" not in repr(relay) and "alur@kalsel" not in repr(relay)
    assert not parse_smtp_url("smtp://localhost").require_starttls
    assert parse_smtp_url("smtp://mail.example.go.id:587").require_starttls
    assert not parse_smtp_url("smtps://mail.example.go.id").require_starttls
    for bad in ("http://mail.example", "smtp://", "smtp://host:0x", "smtp://host/path", "mail.example:25"):
        with pytest.raises(SettingsError, match="ALUR_SMTP_URL") as refused:
            Settings.from_env({"ALUR_SMTP_URL": f"{bad.replace('//', '//user:hunter2@', 1)}"})
        assert "hunter2" not in str(refused.value)
    assert Settings.from_env({}).smtp_relay is None
    assert "hunter2" not in repr(Settings.from_env({"ALUR_SMTP_URL": "smtp://u:hunter2@127.0.0.1:25"}))


# ----------------------------------------------------------------------------------- the state's records


def attempt(n: int, outcome: str, event: str = "evt", to: str = PPA.id) -> NoticeAttempt:
    return NoticeAttempt(at=T0, event_id=event, recipient=to, attempt=n, outcome=outcome)  # type: ignore[arg-type]


def test_a_sent_notice_is_settled_and_survives_the_cap(policy: EscalationPolicy) -> None:
    state = new_state(request(), policy, T0)
    state = record_notice(record_notice(state, attempt(1, "retry")), attempt(2, "sent"))
    assert state.notice_settled("evt", PPA.id) and not state.notice_settled("evt", GT.id)
    assert not state.notice_settled("other", PPA.id)
    for n in range(MAX_ATTEMPTS_KEPT + 5):
        state = record_notice(state, attempt(n + 1, "retry", event="evt-2"))
    assert len(state.notices) == MAX_ATTEMPTS_KEPT
    assert state.notice_settled("evt", PPA.id), "retries are dropped before a final outcome"
    assert max(a.attempt for a in state.notice_attempts("evt-2", PPA.id)) == MAX_ATTEMPTS_KEPT + 5


# ------------------------------------------------------------------------ one attempt, a real SMTP server


class Mailbox:
    """An aiosmtpd handler: refuses RCPT for `refused` with its code, keeps every message it accepts."""

    def __init__(self) -> None:
        self.refused: dict[str, str] = {}
        self.messages: list[bytes] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refused:
            return self.refused[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content or envelope.content)
        return "250 Message accepted"


@pytest.fixture(scope="module")
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


async def test_one_attempt_is_sent_bounced_or_retried(mailbox: tuple[Mailbox, int]) -> None:
    box, port = mailbox
    relay = SmtpRelay("127.0.0.1", port, tls=False)
    notice = requested_notice("evt-smtp", request(), PPA, BOARD)
    sent = await send(relay, compose(notice, PPA, SENDER, T0))
    assert sent.outcome == "sent" and len(box.messages) == 1
    received = email.message_from_bytes(box.messages[0], policy=email.policy.default)
    assert received["Message-ID"] == message_id("evt-smtp", PPA.id, SENDER)
    assert not any(s.encode() in box.messages[0] for s in SECRETS)

    gone = PPA.model_copy(update={"email": "gone@banjarmasin.example"})
    box.refused[gone.email] = "550 5.1.1 mailbox unavailable"
    bounced = await send(relay, compose(notice, gone, SENDER, T0))
    assert (bounced.outcome, bounced.smtp_code) == ("bounced", 550)
    full = PPA.model_copy(update={"email": "full@banjarmasin.example"})
    box.refused[full.email] = "452 4.2.2 mailbox full, try later"
    later = await send(relay, compose(notice, full, SENDER, T0))
    assert (later.outcome, later.smtp_code) == ("retry", 452)
    assert len(box.messages) == 1

    down = await send(SmtpRelay("127.0.0.1", free_port(), tls=False), compose(notice, PPA, SENDER, T0))
    assert down.outcome == "retry" and down.error_class and down.smtp_code is None


def test_an_agency_without_email_cannot_be_composed_for() -> None:
    with pytest.raises(ValueError, match="no email"):
        compose(requested_notice("evt", request(), PPA, BOARD), POLICE, SENDER, T0)
