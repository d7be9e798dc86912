"""Email notices, composed: what an agency with an `email` address is told of a new referral or an escalation.

A notice says which agency it is for, the service asked, the priority, the deadline, the referral id and
where to open it (the inbox of an inbox agency, the board for the secretariat, else its own system), in
Indonesian with an English line under each, and nothing else.
It is built from a `Notice`, which has a field for exactly those things and no room for a case: the
request's need-to-know view of the victim (`data.case`) is never read, so no name, NIK, phone or
narrative can reach a mail, its headers included. Who is mailed for an event is `recipients`.

Everything here is pure; `services.notify.smtp` sends, `services.notify.mailing` wires it to the events.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Literal
from zoneinfo import ZoneInfo

from contracts.envelope import derived_id
from contracts.events import EscalationData, ReferralRequestedData
from contracts.records import Agency
from contracts.vocab import PROVINCE_TIME_ZONE, AgencyType, Channel, Priority, Service

NoticeKind = Literal["requested", "escalated"]
EMAIL_RAISE = "email"
"""`overdue` of the escalation raised when a notice bounced or was given up (`mailing`)."""
WITA = ZoneInfo(PROVINCE_TIME_ZONE)
"""Kalimantan Selatan's time zone (UTC+8), in which deadlines are written."""

_PRIORITY = {Priority.HIGH: ("TINGGI", "high"), Priority.MEDIUM: ("SEDANG", "medium"), Priority.LOW: ("RENDAH", "low")}
_OVERDUE: dict[str, tuple[str, str]] = {
    "ack": ("rujukan belum dikonfirmasi diterima", "the referral has not been acknowledged"),
    "decision": ("belum ada keputusan (terima, tolak atau alihkan)", "no decision yet (accept, reject or redirect)"),
    "update": ("belum ada kabar perkembangan", "no progress update"),
    "delivery": ("rujukan tidak dapat dikirim ke sistem lembaga", "the referral could not be delivered to the "
                 "agency's system"),
    EMAIL_RAISE: ("pemberitahuan email ke lembaga tidak terkirim", "an email notice to the agency could not be "
                  "delivered"),
}
_STATUTORY = ("batas waktu menurut undang-undang terlewati", "a statutory deadline passed")


@dataclass(frozen=True, slots=True)
class Notice:
    """Everything a notice may say: codes, a deadline, an id and a link; nothing about the victim."""

    kind: NoticeKind
    event_id: str
    referral_id: str
    agency: str
    """The agency holding the referral."""
    agency_name: str
    service: Service
    priority: Priority
    due: datetime
    """The deadline: acknowledgement for a new referral, the missed one for an escalation."""
    link: str
    level: int | None = None
    overdue: str | None = None
    """What an escalation is about (`EscalationData.overdue`: ack, decision, update, statutory-…, delivery,
    email)."""


def inbox_link(board_link: str, referral_id: str) -> str:
    """Where the agency opens the referral: its inbox on the board."""
    return f"{board_link.rstrip('/')}/inbox#{referral_id}"


def requested_notice(event_id: str, request: ReferralRequestedData, holder: Agency, board_link: str) -> Notice:
    """The notice of a new referral (`request.case` is not read)."""
    return Notice(
        kind="requested", event_id=event_id, referral_id=request.referral_id, agency=request.agency,
        agency_name=holder.name or holder.id, service=request.service, priority=request.priority, due=request.due,
        link=inbox_link(board_link, request.referral_id),
    )


def escalated_notice(
    event_id: str, escalation: EscalationData, holder: Agency | None, *, service: Service, priority: Priority,
    board_link: str,
) -> Notice:
    """The notice of an escalation; the service and priority come from the referral's state."""
    return Notice(
        kind="escalated", event_id=event_id, referral_id=escalation.referral_id, agency=escalation.agency,
        agency_name=(holder.name or holder.id) if holder else escalation.agency, service=service, priority=priority,
        due=escalation.due, link=inbox_link(board_link, escalation.referral_id), level=escalation.level,
        overdue=escalation.overdue,
    )


def recipients(
    kind: NoticeKind, holder: str, notify: Iterable[str], overdue: str | None, agencies: dict[str, Agency]
) -> list[Agency]:
    """Who is mailed for an event: the holder of a new referral; for an escalation the holder and the
    agencies it names in `notify` (the secretariat of a raise), but only `notify` when the escalation is
    itself about a notice that failed (the holder's address may be what failed). Only enabled agencies
    with an `email`, each once, in that order."""
    if kind == "requested":
        wanted = [holder]
    elif overdue == EMAIL_RAISE:
        wanted = list(notify)
    else:
        wanted = [holder, *notify]
    chosen = [agencies[a] for a in dict.fromkeys(wanted) if a in agencies]
    return [a for a in chosen if a.email and a.enabled]


def raises_on_failure(overdue: str | None) -> bool:
    """Whether a notice that bounced or was given up is raised to the coordinator: always, except a notice
    of such a raise itself (a coordinator's address that bounces must not raise about itself for ever)."""
    return overdue != EMAIL_RAISE


def message_id(event_id: str, recipient: str, sender: str) -> str:
    """The same `Message-ID` on every attempt at one notice, so a mail sent twice (a crash between sending
    and recording it) is one message to the reader's mail program."""
    domain = sender.rpartition("@")[2] or "alur.invalid"
    return f"<{derived_id('notice', event_id, recipient)}@{domain}>"


def _when(due: datetime) -> str:
    local = due.astimezone(WITA).strftime("%d-%m-%Y %H:%M WITA")
    return f"{local} ({due.astimezone(UTC).isoformat(timespec='minutes')})"


def _about(overdue: str | None) -> tuple[str, str]:
    if overdue is None:
        return ("tenggat terlewati", "a deadline passed")
    if overdue.startswith("statutory-"):
        return _STATUTORY
    return _OVERDUE.get(overdue, ("tenggat terlewati", "a deadline passed"))


def subject_line(notice: Notice) -> str:
    """The `Subject:` of the notice: what happened, the service and the priority."""
    priority_id, _ = _PRIORITY[notice.priority]
    if notice.kind == "requested":
        return f"[Alur] Rujukan baru / New referral: {notice.service.value}, prioritas {priority_id} ({notice.referral_id})"
    return (f"[Alur] Eskalasi tingkat {notice.level} / Escalation level {notice.level}: {notice.service.value}, "
            f"prioritas {priority_id} ({notice.referral_id})")


def where_to_look(notice: Notice, recipient: Agency) -> list[str]:
    """Where the recipient opens the referral: the holder's web inbox (an inbox agency), the coordinator's
    board (the secretariat), or the holder's own system (a NATS or webhook agency: its inbox would refuse it)."""
    if recipient.id == notice.agency and recipient.channel is Channel.INBOX:
        return ["Buka rujukan di kotak masuk lembaga Anda (masuk dengan token lembaga):",
                "Open the referral in your agency's inbox (sign in with your agency's token):", notice.link]
    if recipient.type is AgencyType.GT_SECRETARIAT:
        return ["Lihat rujukan ini di papan koordinator:", "See this referral on the coordinator's board:",
                notice.link.partition("/inbox#")[0] + "/"]
    return ["Rujukan ini ada di sistem lembaga Anda (consumer NATS atau webhook).",
            "The referral is in your agency's own system (its NATS consumer or webhook)."]


def body_text(notice: Notice, recipient: Agency) -> str:
    """The plain-text body: Indonesian first, each line followed by its English."""
    priority_id, priority_en = _PRIORITY[notice.priority]
    if notice.kind == "requested":
        opening = [f"Yth. {recipient.name or recipient.id},", "",
                   "Ada rujukan baru untuk lembaga Anda di Alur.",
                   "There is a new referral for your agency in Alur."]
        deadline = ("Batas konfirmasi", "Acknowledge by")
    else:
        about_id, about_en = _about(notice.overdue)
        opening = [f"Yth. {recipient.name or recipient.id},", "",
                   f"Rujukan ini dieskalasi (tingkat {notice.level}): {about_id}.",
                   f"This referral is escalated (level {notice.level}): {about_en}."]
        deadline = ("Tenggat yang terlewati", "Deadline missed")
    facts = [
        f"Lembaga / Agency: {notice.agency_name} ({notice.agency})",
        f"Layanan / Service: {notice.service.value}",
        f"Prioritas / Priority: {priority_id} ({priority_en})",
        f"{deadline[0]} / {deadline[1]}: {_when(notice.due)}",
        f"Rujukan / Referral: {notice.referral_id}",
    ]
    closing = [
        *where_to_look(notice, recipient),
        "",
        "Email ini tidak memuat data korban; rinciannya hanya ada di kotak masuk atau sistem lembaga.",
        "This email holds no victim data; the details are only in the inbox or the agency's system.",
        "Email otomatis, jangan dibalas. / Automatic email, do not reply.",
    ]
    return "\n".join([*opening, "", *facts, "", *closing]) + "\n"


def compose(notice: Notice, recipient: Agency, sender: str, now: datetime) -> EmailMessage:
    """The notice as a message to `recipient`'s address, from `sender`, dated `now`."""
    if recipient.email is None:
        raise ValueError(f"agency {recipient.id} has no email address")
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient.email
    message["Subject"] = subject_line(notice)
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = message_id(notice.event_id, recipient.id, sender)
    message["Auto-Submitted"] = "auto-generated"
    message["Content-Language"] = "id, en"
    message["X-Alur-Notice"] = notice.kind
    message["X-Alur-Referral"] = notice.referral_id
    message.set_content(body_text(notice, recipient))
    return message
