"""The board's HTML, rendered on the server from the views (`views.py`): plain HTML and CSS, one small script
(`static/board.js`) that refreshes the live part of the page when `/api/stream` says something changed.

Every value is escaped; the pages show ids, codes, agencies, times and pseudonyms only, because the views
they are built from hold nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, tzinfo
from html import escape
from typing import Any
from urllib.parse import quote

from services.board.i18n import LANGUAGES, text

NAV = (("/", "nav.referrals"), ("/agencies", "nav.agencies"), ("/duplicates", "nav.duplicates"),
       ("/regions", "nav.regions"))


def e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def duration(seconds: float) -> str:
    """A short human duration: 45s, 12m, 3h 5m, 2d 4h."""
    s = int(abs(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def when(iso: str | None, zone: tzinfo | None = None) -> str:
    """A time element: readable text (in `zone` if given), the exact instant in `datetime`."""
    if not iso:
        return ""
    at = datetime.fromisoformat(iso)
    shown = at.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z") if zone else at.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f'<time datetime="{e(iso)}">{e(shown.strip())}</time>'


def layout(lang: str, title: str, body: str, *, path: str, signed_in: bool = True,
           nav: Sequence[tuple[str, str]] = NAV, brand: str = "title", scripts: Sequence[str] = ("board.js",),
           before_main: str = "") -> str:
    """A whole page: header, navigation, language switch, the live `main`, the scripts."""
    other = LANGUAGES[1] if lang == LANGUAGES[0] else LANGUAGES[0]
    current = ' aria-current="page"'
    links = "".join(
        f'<li><a href="{href}"{current if href == path else ""}>{e(text(key, lang))}</a></li>'
        for href, key in nav
    ) if signed_in else ""
    signout = (f'<form method="post" action="/logout" class="signout"><button type="submit">'
               f'{e(text("signout", lang))}</button></form>') if signed_in else ""
    home = nav[0][0] if nav else "/"
    script_tags = "".join(f'<script src="/static/{e(name)}" defer></script>\n' for name in scripts)
    return f"""<!doctype html>
<html lang="{e(lang)}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{e(title)} · {e(text(brand, lang))}</title>
<link rel="stylesheet" href="/static/board.css">
{script_tags}</head>
<body>
<a class="skip" href="#live">{e(text("skip", lang))}</a>
<header>
<p class="brand"><a href="{home}">{e(text(brand, lang))}</a></p>
<nav aria-label="{e(text(brand, lang))}"><ul>{links}</ul></nav>
<div class="tools">
<a id="lang-switch" href="{e(path)}?lang={other}" hreflang="{other}" lang="{other}">{e(text("lang.switch", lang))}</a>
{signout}
</div>
</header>
{before_main}<main id="live" tabindex="-1" data-live="{1 if signed_in else 0}" aria-live="polite">
{body}
</main>
</body>
</html>
"""


def login(lang: str, message: str | None = None) -> str:
    error = f'<p class="error" role="alert">{e(message)}</p>' if message else ""
    body = f"""<h1>{e(text("signin.title", lang))}</h1>
{error}
<form method="post" action="/login" class="signin">
<label for="token">{e(text("signin.token", lang))}</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<p class="help">{e(text("signin.help", lang))}</p>
<button type="submit">{e(text("signin", lang))}</button>
</form>"""
    return layout(lang, text("signin", lang), body, path="/login", signed_in=False)


def _table(caption: str, headers: Sequence[str], rows: Iterable[str], *, cls: str = "") -> str:
    head = "".join(f'<th scope="col">{e(h)}</th>' for h in headers)
    return (f'<div class="scroll"><table class="{cls}"><caption>{e(caption)}</caption>'
            f'<thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


def _status(status: str, lang: str) -> str:
    return f'<span class="status s-{e(status)}">{e(text("status." + status, lang))}</span>'


def _deadline(row: dict[str, Any], now: datetime, lang: str) -> str:
    parts = []
    for d in row["deadlines"]:
        due = datetime.fromisoformat(d["due"])
        left = (due - now).total_seconds()
        label = text("deadline." + d["kind"], lang) + (f" ({d['clock']})" if d.get("clock") else "")
        rel = text("late_by", lang, d=duration(left)) if left < 0 else text("due_in", lang, d=duration(left))
        parts.append(f'<span class="deadline{" late" if left < 0 else ""}" data-kind="{e(d["kind"])}">'
                     f'{e(label)}: {when(d["due"])} · {e(rel)}</span>')
    return "<br>".join(parts)


def referrals(lang: str, rows: list[dict[str, Any]], now: datetime) -> str:
    if not rows:
        return f'<h1>{e(text("referrals.title", lang))}</h1><p>{e(text("referrals.none", lang))}</p>'
    by_agency: dict[str, list[int]] = {}
    for row in rows:
        counts = by_agency.setdefault(row["agency"], [0, 0])
        counts[0] += 1
        counts[1] += int(row["overdue"])
    summary = _table(text("referrals.by_agency", lang),
                     [text("col.agency", lang), text("col.open", lang), text("col.overdue", lang)],
                     (f'<tr><th scope="row">{e(a)}</th><td>{n}</td><td class="{"late" if late else ""}">{late}</td></tr>'
                      for a, (n, late) in sorted(by_agency.items(), key=lambda kv: (-kv[1][1], kv[0]))),
                     cls="summary")
    body = []
    for row in rows:
        level = row["escalation_level"]
        flag = f'<strong class="overdue">{e(text("overdue", lang))}</strong> ' if row["overdue"] else ""
        escalation = (f'<span class="level l{min(level, 3)}">{e(text("level", lang, n=level))}'
                      f'{" · " + e(row["escalation_action"]) if row["escalation_action"] else ""}</span>'
                      if level else "—")
        body.append(
            f'<tr id="r-{e(row["referral_id"])}" data-referral="{e(row["referral_id"])}" '
            f'data-overdue="{int(row["overdue"])}" data-escalation-level="{level}" '
            f'class="{"is-overdue" if row["overdue"] else ""}">'
            f'<td>{flag}{_status(row["status"], lang)}</td>'
            f'<td>{escalation}</td>'
            f'<td>{_deadline(row, now, lang)}</td>'
            f'<td>{e(row["agency"])}<br><small>{e(row["agency_type"])}</small></td>'
            f'<td>{e(row["service"])}</td>'
            f'<td>{e(row["priority"])}</td>'
            f'<td><a href="/cases/{quote(row["case_id"])}">{e(row["case_id"])}</a><br>'
            f'<small>{e(row["referral_id"])}</small></td>'
            f'<td>{e(duration(row["age_seconds"]))}</td></tr>'
        )
    table = _table(text("referrals.title", lang),
                   [text(k, lang) for k in ("col.status", "col.level", "col.deadline", "col.agency", "col.service",
                                            "col.priority", "col.case", "col.age")], body, cls="referrals")
    return f'<h1>{e(text("referrals.title", lang))} ({len(rows)})</h1>{summary}{table}'


def _detail(step: dict[str, Any], lang: str) -> str:
    bits = []
    for key in ("report_ref", "priority", "reason", "redirect_to", "level", "action", "target", "overdue",
                "replaces", "status"):
        if step.get(key) not in (None, "", []):
            bits.append(f"{e(key)}: {e(step[key])}")
    if step.get("changed"):
        bits.append("changed: " + e(", ".join(step["changed"])))
    if step.get("due"):
        bits.append("due: " + when(step["due"]))
    if step.get("rules"):
        bits.append("rules: " + e(", ".join(f'{r["rule_id"]} ({r["legal_basis"]})' for r in step["rules"])))
    return "; ".join(bits)


def case(lang: str, view: dict[str, Any] | None, case_id: str) -> str:
    if view is None:
        return f'<h1>{e(text("case.title", lang, id=case_id))}</h1><p>{e(text("case.unknown", lang))}</p>'
    facts = "".join(
        f"<dt>{e(text(k, lang))}</dt><dd>{v}</dd>" for k, v in (
            ("case.pseudonym", e(view["pseudonym"])), ("case.reporter", e(view["reporter"])),
            ("col.regency", e(view["regency"])), ("case.age_group", e(view["age_group"])),
            ("case.risk", e(view["risk"])), ("case.exploitation", e(", ".join(view["exploitation"]))),
            ("case.needs", e(", ".join(view["needs"]))),
            ("case.duplicates", ", ".join(f'<a href="/cases/{quote(c)}">{e(c)}</a>'
                                          for c in view["possible_duplicates"]) or "—"),
        ))
    steps = [
        f'<tr data-kind="{e(s["kind"])}"><td>{when(s["at"])}</td>'
        f'<td><span class="kind k-{e(s["kind"])}">{e(kind_label(s["kind"], lang))}</span></td>'
        f'<td>{e(s.get("agency") or "")}</td><td>{e(s.get("service") or "")}</td>'
        f'<td>{_detail(s, lang)}</td></tr>'
        for s in view["events"]
    ]
    timeline = _table(text("case.timeline", lang),
                      [text(k, lang) for k in ("col.time", "col.event", "col.agency", "col.service", "col.detail")],
                      steps, cls="timeline")
    refs = [
        f'<tr data-referral="{e(r["referral_id"])}"><td>{e(r["referral_id"])}</td><td>{e(r["agency"])}</td>'
        f'<td>{e(r["service"])}</td><td>{_status(r["status"], lang)}</td>'
        f'<td>{e(r.get("reason") or "")}</td>'
        f'<td><ul class="rules">{"".join(_rule(x) for x in r["rules"])}</ul></td></tr>'
        for r in view["referrals"]
    ]
    referral_table = _table(text("case.referrals", lang),
                            [text(k, lang) for k in ("col.referral", "col.agency", "col.service", "col.status",
                                                     "col.detail")] + [text("case.rules", lang)], refs)
    withheld = "".join(f'<li data-withheld="{e(w["agency_type"])}:{e(w["service"])}">{e(w["agency_type"])}: '
                       f'{e(w["service"])} — {e(w["reason"])}</li>' for w in view["withheld"])
    closed = f'<p class="closed">{e(text("case.closed", lang))}</p>' if view["all_referrals_terminal"] else ""
    return (f'<h1>{e(text("case.title", lang, id=view["case_id"]))}</h1>{closed}<dl class="facts">{facts}</dl>'
            f'{timeline}{referral_table}<h2>{e(text("case.withheld", lang))}</h2>'
            + (f'<ul class="withheld">{withheld}</ul>' if withheld else f'<p>{e(text("case.withheld.none", lang))}</p>'))


def _rule(rule: dict[str, Any]) -> str:
    return (f'<li><code>{e(rule["rule_id"])}</code> {e(rule["description"])} — '
            f'<em>{e(rule["legal_basis"])}</em></li>')


def kind_label(kind: str, lang: str) -> str:
    """A timeline step's name: a step of its own (reported, referred, …) or a referral status."""
    return text("kind." + kind if "kind." + kind in _KINDS else "status." + kind, lang)


_KINDS = frozenset({"kind.reported", "kind.updated", "kind.referred", "kind.rerouted", "kind.reminded",
                    "kind.escalated", "kind.outcome"})


def agencies(lang: str, rows: list[dict[str, Any]]) -> str:
    if not rows:
        return f'<h1>{e(text("agencies.title", lang))}</h1><p>{e(text("agencies.none", lang))}</p>'

    def secs(value: float | None) -> str:
        return "—" if value is None else duration(value) if value >= 1 else f"{value:.1f}s"

    body = [
        f'<tr data-agency="{e(r["agency"])}"><th scope="row">{e(r["agency"])}<br><small>{e(r["agency_type"])}</small></th>'
        f'<td>{r["referrals"]}</td><td>{r["open"]}</td><td>{secs(r["ack_median_seconds"])}</td>'
        f'<td>{secs(r["ack_p90_seconds"])}</td><td>{round(100 * r["outcome_share"])}% ({r["with_outcome"]})</td>'
        f'<td>{r["expired"]}</td>'
        f'<td>{e(_counts(r["rejections"]))}</td></tr>'
        for r in rows
    ]
    return f'<h1>{e(text("agencies.title", lang))}</h1>' + _table(
        text("agencies.title", lang),
        [text(k, lang) for k in ("col.agency", "col.referrals", "col.open", "col.ack_median", "col.ack_p90",
                                 "col.outcome_share", "col.expired", "col.rejections")], body)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "—"


def duplicates(lang: str, groups: list[list[str]]) -> str:
    if not groups:
        return f'<h1>{e(text("duplicates.title", lang))}</h1><p>{e(text("duplicates.none", lang))}</p>'
    items = "".join("<li>" + " · ".join(f'<a href="/cases/{quote(c)}">{e(c)}</a>' for c in g) + "</li>"
                    for g in groups)
    return f'<h1>{e(text("duplicates.title", lang))}</h1><ul class="duplicates">{items}</ul>'


def region_flags(lang: str, flags: list[dict[str, Any]]) -> str:
    """Intake's early warnings: each regency's month that rose past its own baseline."""
    if not flags:
        return ""
    rows = (f'<tr><td>{e(f["month"])}</td><td>{e(f["regency_name"])} ({e(f["regency"])})</td>'
            f'<td>{e(f["dimension"])}</td><td>{e(f["value"])}</td><td>{e(f["cases"])}</td>'
            f'<td>{e(f.get("upper_bound") if f.get("upper_bound") is not None else "—")}</td></tr>' for f in flags)
    return _table(text("regions.flags", lang), [text(k, lang) for k in (
        "col.month", "col.regency", "col.dimension", "col.value", "col.cases", "col.bound")], rows, cls="flags")


def regions(lang: str, rows: list[dict[str, Any]], min_group: int, flags: list[dict[str, Any]] | None = None) -> str:
    note = f'<p class="help">{e(text("regions.note", lang, n=min_group))}</p>' + region_flags(lang, flags or [])
    if not rows:
        return f'<h1>{e(text("regions.title", lang))}</h1>{note}<p>{e(text("regions.none", lang))}</p>'
    totals: dict[str, int] = {}
    for row in rows:
        if row["dimension"] == "cases":
            totals[row["regency_name"]] = totals.get(row["regency_name"], 0) + int(row["cases"])
    table = _table(text("regions.title", lang),
                   [text(k, lang) for k in ("col.month", "col.regency", "col.dimension", "col.value", "col.cases")],
                   (f'<tr><td>{e(r["month"])}</td><td>{e(r["regency_name"])} ({e(r["regency"])})</td>'
                    f'<td>{e(r["dimension"])}</td><td>{e(r["value"])}</td><td>{e(r["cases"])}</td></tr>' for r in rows))
    return f'<h1>{e(text("regions.title", lang))}</h1>{note}{plot(text("regions.plot", lang), totals)}{table}'


def plot(title: str, values: dict[str, int]) -> str:
    """A horizontal bar chart as inline SVG (no script, readable without colour: each bar is labelled)."""
    if not values:
        return ""
    top = max(values.values())
    bar_h, gap, label_w, width = 22, 8, 170, 520
    items = sorted(values.items(), key=lambda kv: (-kv[1], kv[0]))
    height = len(items) * (bar_h + gap) + gap
    bars = "".join(
        f'<g transform="translate(0,{gap + i * (bar_h + gap)})"><text x="{label_w - 6}" y="{bar_h - 6}" '
        f'text-anchor="end">{e(name)}</text><rect x="{label_w}" width="{max(2, (width - label_w - 50) * n / top):.0f}" '
        f'height="{bar_h}" rx="3"></rect><text x="{label_w + 6 + (width - label_w - 50) * n / top:.0f}" '
        f'y="{bar_h - 6}">{n}</text></g>'
        for i, (name, n) in enumerate(items)
    )
    return (f'<figure class="plot"><svg viewBox="0 0 {width} {height}" role="img" aria-label="{e(title)}">'
            f'<title>{e(title)}</title>{bars}</svg><figcaption>{e(title)}</figcaption></figure>')
