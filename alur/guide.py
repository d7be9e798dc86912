"""The generated parts of docs/integrating.md: numbers and codes that the guide prints from the code itself.

Each part sits between `<!-- generated: NAME -->` and `<!-- end generated -->`; `python -m alur.guide`
(`make docs`) rewrites them in place and leaves the prose alone, and a test fails when the committed guide
differs. So the retry schedule an integrator reads is `services.notify.webhook.RETRY_SCHEDULE`, not a copy.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import get_args

from alur.check import FAST_ANSWER
from contracts.events import ResponseRefusedData
from contracts.vocab import (
    NotDeliveredReason,
    ReferralStatus,
    RejectionReason,
    ResponseStatus,
)
from domain.lifecycle import TRANSITIONS
from runtime.answers import HTTP_STATUS
from services.notify.webhook import (
    ATTEMPT_DEADLINE,
    JITTER,
    MAX_RETRY_AFTER,
    REQUEST_TIMEOUT,
    RETRY_SCHEDULE,
    RETRYABLE_CLIENT_ERRORS,
)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "integrating.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S)

REFUSALS = {
    "unknown_referral": "You hold no referral with this id (whether it exists or not is not said). Check the id; "
                        "a redirected or rerouted referral is no longer yours.",
    "impossible_transition": "The referral's status does not allow this move (the reason says from where to "
                             "where, and what you may set now). Often your view is out of date: read the "
                             "referral's later events.",
    "bad_body": "The body could not be read as a response: the reason names the field. Fix and send again "
                "with a new event id.",
    "note_limit": "The referral keeps no more progress notes: close it (`completed` / `not_delivered`) or "
                  "send status changes without a note.",
    "wrong_agency": "No longer sent (kept so older readers' schemas stay valid).",
}
"""What each `response_refused` code means to an integrator; the test holds it to the contract's codes."""


def _duration(seconds: float) -> str:
    """`5 s`, `30 min`, `2 h 35 min`, `3 days 4 h`: the two largest units, rounded to whole ones."""
    left = int(seconds + 0.5)
    parts = []
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        count, left = divmod(left, size)
        if count:
            parts.append(f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}")
    return " ".join(parts[:2]) or "0 s"


def retry_schedule() -> str:
    """The webhook retry schedule, from `services.notify.webhook`."""
    lines = ["| attempt | waits after the previous one | drawn from | nominal time since the first |",
             "| --- | --- | --- | --- |", "| 1 | — | — | 0 |"]
    elapsed = 0.0
    for n, nominal in enumerate(RETRY_SCHEDULE, start=2):
        elapsed += nominal
        low = nominal * (1 - JITTER)
        lines.append(f"| {n} | {_duration(nominal)} | {_duration(low)} – {_duration(nominal)} | "
                     f"{_duration(elapsed)} |")
    shortest = sum(RETRY_SCHEDULE) * (1 - JITTER)
    codes = ", ".join(str(c) for c in sorted(RETRYABLE_CLIENT_ERRORS))
    return "\n".join([
        *lines, "",
        f"{len(RETRY_SCHEDULE) + 1} attempts in all; after the last failure notify gives up and raises the referral "
        f"to the coordinator. Each wait is drawn at random between {1 - JITTER:g} and 1 times its nominal value, "
        f"so the retries span at least {_duration(shortest)} and at most {_duration(sum(RETRY_SCHEDULE))}. A "
        f"`Retry-After` header (seconds or an HTTP date) lengthens a wait, up to {_duration(MAX_RETRY_AFTER)}. "
        "`ALUR_SLA_SCALE` multiplies every wait (drills use 0.001).",
        "",
        f"One attempt may take {_duration(ATTEMPT_DEADLINE)} in all (each connect, write or read "
        f"{_duration(REQUEST_TIMEOUT)}); `alur agency check` expects an answer within {_duration(FAST_ANSWER)}. "
        f"Any 2xx is delivered. 410 Gone disables the endpoint at once (no retry; the coordinator is told). "
        f"Every other answer is retried on the schedule; a 3xx or a 4xx other than {codes} also tells the "
        "coordinator at the first failure, since a person must fix it.",
    ])


def transitions() -> str:
    """Which status an agency may answer with, from which status: `domain.lifecycle.TRANSITIONS`."""
    lines = ["| you answer | allowed while the referral is | it needs |", "| --- | --- | --- |"]
    needs = {
        ResponseStatus.REJECTED: f"`reason`: one of {', '.join(f'`{r.value}`' for r in RejectionReason)}",
        ResponseStatus.NOT_DELIVERED: f"`reason`: one of {', '.join(f'`{r.value}`' for r in NotDeliveredReason)}",
        ResponseStatus.REDIRECTED: "`redirect_to` (an agency id) or a `reason`",
    }
    for status in ResponseStatus:
        froms = [f.value for (f, to), actors in TRANSITIONS.items() if to.value == status.value and "agency" in actors]
        order = [s.value for s in ReferralStatus]
        froms.sort(key=order.index)
        lines.append(f"| `{status.value}` | {', '.join(f'`{f}`' for f in froms)} | {needs.get(status, '—')} |")
    lines += ["", "A reason `other` needs a `note` saying what happened. Sending the status the referral already "
              "has, or one it already implies (a late `acknowledged` after `accepted`), is a harmless duplicate."]
    return "\n".join(lines)


def refusals() -> str:
    """Every `response_refused` code, its HTTP status at notify's door, and what it means."""
    lines = ["| `code` | HTTP answer | means |", "| --- | --- | --- |"]
    for code in get_args(ResponseRefusedData.model_fields["code"].annotation):
        http = HTTP_STATUS.get(code)
        lines.append(f"| `{code}` | {http if http else '—'} | {REFUSALS[code]} |")
    return "\n".join(lines)


PARTS: dict[str, Callable[[], str]] = {
    "retry-schedule": retry_schedule,
    "transitions": transitions,
    "refusals": refusals,
}


def render(text: str) -> str:
    """`text` with every generated part rewritten; a part the guide names but this module lacks is an error."""
    def part(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in PARTS:
            raise KeyError(f"docs/integrating.md names an unknown generated part {name!r}")
        return f"{match[1]}{PARTS[name]()}\n{match[4]}"

    return BLOCK.sub(part, text)


if __name__ == "__main__":
    GUIDE.write_text(render(GUIDE.read_text()))
    print(GUIDE, file=sys.stderr)
