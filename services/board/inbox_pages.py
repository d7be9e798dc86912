"""The agency's web inbox as HTML: one card per open referral, made for a phone's width and a keyboard.

Each card says in plain words what is asked, what is due when, and what the agency may see of the case,
and offers the answers the lifecycle allows now: one button for a step that needs nothing more, a short
form for the rest. The forms post JSON to `/api/inbox/{referral_id}` (`static/inbox.js`): the page uses
the same API an integrator would.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from contracts.vocab import PROVINCE_TIME_ZONE
from services.board.i18n import text
from services.board.inbox import case_lines
from services.board.pages import duration, e, when

LOCAL = ZoneInfo(PROVINCE_TIME_ZONE)
"""Officers read their deadlines in the province's time (WITA)."""

INBOX_NAV = (("/inbox", "nav.inbox"),)
QUICK = frozenset({"acknowledged", "accepted"})
"""Answers given with one button: they need no reason, no agency and no note."""


def _due(row: dict[str, Any], now: datetime, lang: str) -> str:
    if not row["deadlines"]:
        return f'<p class="help">{e(text("inbox.nothing_due", lang))}</p>'
    items = []
    for d in row["deadlines"]:
        due = datetime.fromisoformat(d["due"])
        left = (due - now).total_seconds()
        rel = text("late_by", lang, d=duration(left)) if left < 0 else text("due_in", lang, d=duration(left))
        clock = f' ({e(d["clock"])})' if d.get("clock") else ""
        items.append(f'<li class="deadline{" late" if left < 0 else ""}" data-kind="{e(d["kind"])}">'
                     f'{e(text("due." + d["kind"], lang))}{clock}: {when(d["due"], LOCAL)} '
                     f'<strong>({e(rel)})</strong></li>')
    return f'<ul class="due">{"".join(items)}</ul>'


def _case(view: dict[str, Any] | None, lang: str) -> str:
    if view is None:
        return f'<p class="help">{e(text("inbox.case.missing", lang))}</p>'
    lines = "".join(
        f"<dt>{e(field)}</dt><dd>{e(text('yes' if value else 'no', lang) if isinstance(value, bool) else value)}</dd>"
        for field, value in case_lines(view))
    return f'<dl class="facts">{lines}</dl>'


def _quick(rid: str, action: dict[str, Any], lang: str) -> str:
    status = action["status"]
    return (f'<form class="quick" method="post" action="/api/inbox/{quote(rid)}" data-answer>'
            f'<input type="hidden" name="status" value="{e(status)}">'
            f'<button type="submit" id="do-{e(rid)}-{e(status)}" data-status="{e(status)}">'
            f'{e(text("action." + status, lang))}</button></form>')


def _form(rid: str, actions: list[dict[str, Any]], agencies: list[tuple[str, str]], lang: str) -> str:
    """The answers that take a reason, an agency or a note: a radio group, then only the fields asked."""
    if not actions:
        return ""
    radios, reasons = [], []
    for a in actions:
        status = a["status"]
        radios.append(f'<label class="choice"><input type="radio" name="status" value="{e(status)}" required '
                      f'id="a-{e(rid)}-{e(status)}" data-reasons="{int(bool(a["reasons"]))}" '
                      f'data-redirect="{int(a["redirect"])}"> {e(text("action." + status, lang))}</label>')
        if a["reasons"]:
            options = "".join(f'<option value="{e(code)}">{e(text("reason." + code, lang))}</option>'
                              for code in a["reasons"])
            reasons.append(f'<optgroup label="{e(text("action." + status, lang))}" data-for="{e(status)}">'
                           f'{options}</optgroup>')
    fields = []
    if reasons:
        fields.append(f'<label for="reason-{e(rid)}">{e(text("inbox.reason", lang))}</label>'
                      f'<select id="reason-{e(rid)}" name="reason"><option value="">'
                      f'{e(text("inbox.reason.pick", lang))}</option>{"".join(reasons)}</select>')
    if any(a["redirect"] for a in actions):
        options = "".join(f'<option value="{e(aid)}">{e(label)}</option>' for aid, label in agencies)
        fields.append(f'<label for="redirect-{e(rid)}">{e(text("inbox.redirect_to", lang))}</label>'
                      f'<select id="redirect-{e(rid)}" name="redirect_to"><option value="">'
                      f'{e(text("inbox.redirect.pick", lang))}</option>{options}</select>')
    fields.append(f'<label for="note-{e(rid)}">{e(text("inbox.note", lang))}</label>'
                  f'<textarea id="note-{e(rid)}" name="note" rows="2" maxlength="2000"></textarea>')
    return (f'<details class="more" id="more-{e(rid)}"><summary>{e(text("inbox.more", lang))}</summary>'
            f'<form class="answer" method="post" action="/api/inbox/{quote(rid)}" data-answer>'
            f'<fieldset><legend>{e(text("inbox.choose", lang))}</legend>{"".join(radios)}</fieldset>'
            f'{"".join(fields)}<button type="submit">{e(text("inbox.send", lang))}</button></form></details>')


def card(row: dict[str, Any], agencies: list[tuple[str, str]], now: datetime, lang: str) -> str:
    """One open referral: what is asked, by when, the case as the agency may see it, and the answers."""
    rid = row["referral_id"]
    quick = [a for a in row["actions"] if a["status"] in QUICK]
    rest = [a for a in row["actions"] if a["status"] not in QUICK]
    why = "".join(f'<li><code>{e(r["rule_id"])}</code> — <em>{e(r["legal_basis"])}</em></li>'
                  for r in row.get("rules", []))
    late = f'<strong class="overdue">{e(text("overdue", lang))}</strong> ' if row["overdue"] else ""
    return (
        f'<article class="card{" is-overdue" if row["overdue"] else ""}" id="{e(rid)}" data-referral="{e(rid)}" '
        f'data-status="{e(row["status"])}" data-overdue="{int(row["overdue"])}" aria-labelledby="t-{e(rid)}">'
        f'<h2 id="t-{e(rid)}">{e(text("service." + row["service"], lang))} · '
        f'<span class="priority p-{e(row["priority"])}">{e(text("priority." + row["priority"], lang))}</span></h2>'
        f'<p>{late}<span class="status s-{e(row["status"])}">{e(text("status." + row["status"], lang))}</span> · '
        f'{e(text("inbox.requested", lang))} {when(row["requested_at"], LOCAL)} · '
        f'<small>{e(text("inbox.referral", lang))} {e(rid)} · {e(text("col.case", lang))} {e(row["case_id"])}'
        '</small></p>'
        f'<h3>{e(text("inbox.due", lang))}</h3>{_due(row, now, lang)}'
        f'<details class="case" id="case-{e(rid)}"><summary>{e(text("inbox.case", lang))}</summary>{_case(row.get("case"), lang)}'
        + (f'<p>{e(text("inbox.why", lang))}:</p><ul class="rules">{why}</ul>' if why else "")
        + '</details>'
        f'<div class="message" id="msg-{e(rid)}" role="status" aria-live="polite"></div>'
        f'<div class="actions">{"".join(_quick(rid, a, lang) for a in quick)}</div>'
        f'{_form(rid, rest, agencies, lang)}'
        '</article>'
    )


def inbox(lang: str, agency: str, rows: list[dict[str, Any]], agencies: list[tuple[str, str]], now: datetime) -> str:
    """The live part of the inbox page: the agency's open referrals, soonest deadline first."""
    title = f'<h1>{e(text("inbox.title", lang, agency=agency))} ({len(rows)})</h1>'
    messages = (f'<div hidden id="inbox-words" data-recorded="{e(text("inbox.recorded", lang, status="{status}"))}" '
                f'data-refused="{e(text("inbox.refused", lang))}" data-pending="{e(text("inbox.pending", lang))}" '
                f'data-sending="{e(text("inbox.sending", lang))}"></div>'
                f'<noscript><p class="help">{e(text("inbox.noscript", lang))}</p></noscript>')
    if not rows:
        return f'{title}{messages}<p>{e(text("inbox.none", lang))}</p>'
    return title + messages + "".join(card(row, agencies, now, lang) for row in rows)
