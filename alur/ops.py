"""Read-side views for the ops team and the coordinator: status, trace, dead letters, regional figures.

Every view is built from JetStream (streams and KV) and carries ids, codes and statuses only —
never a victim's identity or narrative.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError

from alur.bus import scan
from alur.provision import Topology, load_topology
from contracts import subjects
from contracts.vocab import TERMINAL_STATUSES, ReferralStatus

OPEN_WAITING = {ReferralStatus.REQUESTED.value, ReferralStatus.DELIVERED.value}


async def kv_values(js: JetStreamContext, bucket: str) -> dict[str, Any]:
    kv = await js.key_value(bucket)
    try:
        keys = await kv.keys()
    except Exception:
        return {}
    values: dict[str, Any] = {}
    for key in keys:
        with contextlib.suppress(KeyNotFoundError):
            entry = await kv.get(key)
            if entry.value:
                values[key] = json.loads(entry.value)
    return values


async def status(js: JetStreamContext, topology: Topology | None = None) -> dict[str, Any]:
    """Streams, consumer lag, referrals by status and agency, overdue referrals, dead letters."""
    topology = topology or load_topology()
    streams = {}
    for name in topology.streams:
        with contextlib.suppress(NotFoundError):
            info = await js.stream_info(name)
            streams[name] = {"messages": info.state.messages, "bytes": info.state.bytes}
    consumers = []
    for spec in topology.consumers:
        with contextlib.suppress(NotFoundError):
            info = await js.consumer_info(spec.stream, spec.durable)
            consumers.append({
                "stream": spec.stream, "consumer": spec.durable, "pending": info.num_pending,
                "ack_pending": info.num_ack_pending, "redelivered": info.num_redelivered,
                "waiting": info.num_waiting,
            })
    referrals = await kv_values(js, "referrals")
    now = datetime.now(UTC)
    by_status: Counter[str] = Counter()
    by_agency: dict[str, Counter[str]] = {}
    overdue = []
    for state in referrals.values():
        by_status[state["status"]] += 1
        by_agency.setdefault(state["agency"], Counter())[state["status"]] += 1
        due = datetime.fromisoformat(state["due"])
        if state["status"] in OPEN_WAITING and due < now:
            overdue.append({
                "referral_id": state["referral_id"], "case_id": state["case_id"], "agency": state["agency"],
                "service": state["service"], "status": state["status"], "due": state["due"],
                "overdue_seconds": round((now - due).total_seconds(), 1),
            })
    return {
        "streams": streams,
        "consumers": consumers,
        "referrals_by_status": dict(by_status),
        "referrals_by_agency": {k: dict(v) for k, v in sorted(by_agency.items())},
        "overdue": sorted(overdue, key=lambda r: r["due"]),
        "dead_letters": streams.get("DLQ", {}).get("messages", 0),
        "possible_duplicates": await possible_duplicates(js),
    }


async def possible_duplicates(js: JetStreamContext) -> list[list[str]]:
    """Groups of cases whose victims share an identity hash (NIK, or pseudonym + age + regency), for the
    coordinator to review; read from intake's `matches` bucket, so no identity is ever read here."""
    groups = {tuple(sorted(ids)) for ids in (await kv_values(js, "matches")).values() if len(ids) > 1}
    return [list(group) for group in sorted(groups)]


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    keep = ("case_id", "referral_id", "agency", "agency_type", "service", "priority", "status", "reason",
            "level", "action", "due", "replaces", "version", "changed", "redirect_to", "ruleset_version")
    out = {k: data[k] for k in keep if data.get(k) not in (None, [], "")}
    if "reasons" in data and isinstance(data["reasons"], list):
        out["rules"] = [r.get("rule_id") if isinstance(r, dict) else "reason" for r in data["reasons"]]
    return out


async def trace(js: JetStreamContext, case_id: str) -> dict[str, Any]:
    """The case's timeline across services, in order: case events, decisions, referral events, outcomes."""
    events: list[dict[str, Any]] = []
    for stream, filt in ((subjects.CASES_STREAM, "alur.case.>"), (subjects.REFERRALS_STREAM, "alur.referral.>")):
        async for msg in scan(js, stream, filt):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                event = json.loads(msg.data)
                data = event.get("data", {})
                if data.get("case_id") != case_id:
                    continue
                events.append({
                    "time": event.get("time"), "stream": stream, "seq": msg.metadata.sequence.stream,
                    "subject": msg.subject, "type": event.get("type"), **_summary(data),
                })
    decision = None
    decisions: list[dict[str, Any]] = []
    with contextlib.suppress(KeyNotFoundError, NoKeysError, NotFoundError):
        decisions_kv = await js.key_value("decisions")
        decision = json.loads((await decisions_kv.get(case_id)).value)
        decisions = [
            _decision_brief(json.loads(entry.value)) for entry in await decisions_kv.history(case_id) if entry.value
        ]
    record = None
    with contextlib.suppress(KeyNotFoundError, NotFoundError):
        record = json.loads((await (await js.key_value("case-referrals")).get(case_id)).value)
    referral_states = await kv_values(js, "referrals")
    outcomes = [
        {k: s.get(k) for k in ("referral_id", "agency", "service", "status", "outcome")}
        for s in referral_states.values() if s.get("case_id") == case_id
    ]
    closed = bool(outcomes) and all(o["status"] in {t.value for t in TERMINAL_STATUSES} for o in outcomes)
    events.sort(key=lambda e: (e["time"] or "", e["stream"], e["seq"]))
    return {
        "case_id": case_id,
        "events": events,
        "decision": _decision_summary(decision),
        "decisions": decisions,
        "withheld": (record or {}).get("withheld", []),
        "referrals": sorted(outcomes, key=lambda o: o["referral_id"]),
        "all_referrals_terminal": closed,
    }


def _decision_summary(decision: dict[str, Any] | None) -> dict[str, Any] | None:
    if not decision:
        return None
    return {k: v for k, v in decision.items() if k not in ("trace",)} | {
        "fired": [t["rule_id"] for t in decision.get("trace", []) if t.get("fired")],
    }


def _decision_brief(decision: dict[str, Any]) -> dict[str, Any]:
    """One stored decision (the first registration, a follow-up, a replay), in a line: what it made and why."""
    keep = ("trigger", "case_version", "decided_at", "ruleset_version", "input_hash")
    return {k: decision.get(k) for k in keep} | {
        "fired": [t["rule_id"] for t in decision.get("trace", []) if t.get("fired")],
        "referrals": [r.get("referral_id") for r in decision.get("referrals", [])],
        "already_referred": [r.get("referral_id") for r in decision.get("already_referred", [])],
        "withheld": [f"{w.get('agency_type')}:{w.get('service')}" for w in decision.get("withheld", [])],
    }


async def dead_letters(js: JetStreamContext) -> list[dict[str, Any]]:
    out = []
    async for msg in scan(js, subjects.DLQ_STREAM, "alur.dlq.>"):
        with contextlib.suppress(ValueError, KeyError):
            event = json.loads(msg.data)
            out.append({"dlq_seq": msg.metadata.sequence.stream, **event["data"]})
    return out


async def replay(js: JetStreamContext, dlq_seqs: list[int] | None = None) -> list[dict[str, Any]]:
    """Publish the original of each dead letter again (to its subject), so its consumer retries it."""
    done = []
    for letter in await dead_letters(js):
        if dlq_seqs and letter["dlq_seq"] not in dlq_seqs:
            continue
        original = await js.get_msg(letter["stream"], letter["stream_seq"])
        headers = {
            "Nats-Msg-Id": f"replay:{letter['stream']}:{letter['stream_seq']}:{letter['dlq_seq']}",
            "Alur-Replay-Of": f"{letter['stream']}:{letter['stream_seq']}",
        }
        ack = await js.publish(original.subject, original.data or b"", headers=headers, timeout=5)
        done.append({"dlq_seq": letter["dlq_seq"], "subject": original.subject, "new_seq": ack.seq,
                     "duplicate": bool(ack.duplicate)})
    return done


async def registered_cases(js: JetStreamContext) -> list[dict[str, Any]]:
    """Each case once, as first registered (the early-detection input)."""
    cases: dict[str, dict[str, Any]] = {}
    async for msg in scan(js, subjects.CASES_STREAM, "alur.case.registered.*"):
        with contextlib.suppress(ValueError, KeyError):
            case = json.loads(msg.data)["data"]["case"]
            cases.setdefault(case["case_id"], case)
    return list(cases.values())


def run(coro: Any) -> Any:
    return asyncio.run(coro)
