"""One attempt to hand the mail relay (`ALUR_SMTP_URL`, `runtime.settings.SmtpRelay`) a notice, classified.

`send` makes exactly one attempt and never raises for SMTP trouble; retrying is the caller's (a NATS nak
on the webhook schedule), so a retry survives a restart. A refusal of the recipient or of the message
(5xx on RCPT or DATA) is a bounce: the address is wrong and a person must fix it. Everything else that
fails is retried: the relay down, slow or answering 4xx, and also a relay refusing our sender or our
login (5xx on MAIL FROM or AUTH), which the operator fixes, not the agency.

`smtps://` connects with TLS; `smtp://` upgrades with STARTTLS when the relay offers it, and insists on it
for a relay that is not on loopback, so the login and the notice never cross a network in clear.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Literal

import aiosmtplib

from runtime.settings import SmtpRelay

STEP_TIMEOUT = 20.0
"""Seconds one attempt may spend on each step with the relay (connect, each command, the message)."""
ATTEMPT_DEADLINE = 30.0
"""Seconds one whole attempt may take: a relay answering a byte at a time cannot hold a worker for long."""
SendOutcome = Literal["sent", "retry", "bounced"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """One attempt, classified: transport facts only (a reply code and an error class, never its text,
    which may quote the address)."""

    outcome: SendOutcome
    smtp_code: int | None = None
    error_class: str | None = None
    duration_ms: float = 0.0

    @property
    def problem(self) -> str:
        """What went wrong, for logs and the coordinator: the code and the error's class."""
        code = f" {self.smtp_code}" if self.smtp_code is not None else ""
        return f"{self.error_class or 'no error'}{code}"


def classify(exc: Exception) -> tuple[SendOutcome, int | None]:
    """A failed attempt: bounced (a 5xx for the recipient or the message) or to retry, with the code."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        code = codes[0] if codes else None
        return ("bounced" if codes and all(500 <= c < 600 for c in codes) else "retry"), code
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused | aiosmtplib.SMTPDataError):
        return ("bounced" if 500 <= exc.code < 600 else "retry"), exc.code
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return "retry", exc.code
    return "retry", None


async def send(
    relay: SmtpRelay, message: EmailMessage, *, timeout: float = STEP_TIMEOUT, deadline: float = ATTEMPT_DEADLINE
) -> SendResult:
    """Hand `message` to the relay once (one recipient, the message's `To`), and say how it went."""
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline):
            await aiosmtplib.send(
                message, hostname=relay.host, port=relay.port, username=relay.username, password=relay.password,
                use_tls=relay.tls, start_tls=True if relay.require_starttls else None, timeout=timeout,
            )
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        outcome, code = classify(exc)
        return SendResult(outcome, code, type(exc).__name__, (time.perf_counter() - started) * 1000)
    return SendResult("sent", 250, None, (time.perf_counter() - started) * 1000)
