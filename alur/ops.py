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
from typing import Any, TypeVar

import httpx
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from pydantic import BaseModel, ValidationError

from contracts import subjects
from contracts.buckets import Bucket
from contracts.records import (
    CaseIds,
    CaseReferrals,
    DecisionRecord,
    InstanceRecord,
    ReferralRecord,
)
from contracts.vocab import ReferralStatus
from runtime.bus import kv_history, kv_snapshot, scan
from runtime.provision import Topology, load_topology

OPEN_WAITING = frozenset({ReferralStatus.REQUESTED, ReferralStatus.DELIVERED})
R = TypeVar("R", bound=BaseModel)


async def kv_records(js: JetStreamContext, bucket: Bucket, model: type[R]) -> dict[str, R]:
    """Every record of a bucket, by key, read as `model` (a record that does not read is skipped)."""
    entries, _ = await kv_snapshot(js, bucket)
    records: dict[str, R] = {}
    for key, value in entries.items():
        with contextlib.suppress(ValidationError):
            records[key] = model.model_validate_json(value)
    return records


async def kv_record(js: JetStreamContext, bucket: Bucket, key: str, model: type[R]) -> R | None:
    """One record of a bucket, or None when it is not there."""
    try:
        entry = await (await js.key_value(bucket)).get(key)
    except (KeyNotFoundError, NotFoundError):
        return None
    return model.model_validate_json(entry.value) if entry.value else None


async def status(js: JetStreamContext, topology: Topology | None = None) -> dict[str, Any]:
    """Streams, consumer lag, referrals by status and agency, overdue referrals, dead letters, and each
    service instance with its readiness."""
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
    referrals = await kv_records(js, Bucket.REFERRALS, ReferralRecord)
    now = datetime.now(UTC)
    by_status: Counter[str] = Counter()
    by_agency: dict[str, Counter[str]] = {}
    overdue = []
    for state in referrals.values():
        by_status[state.status.value] += 1
        by_agency.setdefault(state.agency, Counter())[state.status.value] += 1
        if state.status in OPEN_WAITING and state.due < now:
            overdue.append({
                "referral_id": state.referral_id, "case_id": state.case_id, "agency": state.agency,
                "service": state.service.value, "status": state.status.value, "due": state.due.isoformat(),
                "overdue_seconds": round((now - state.due).total_seconds(), 1),
            })
    return {
        "streams": streams,
        "consumers": consumers,
        "referrals_by_status": dict(by_status),
        "referrals_by_agency": {k: dict(v) for k, v in sorted(by_agency.items())},
        "overdue": sorted(overdue, key=lambda r: r["due"]),
        "dead_letters": streams.get("DLQ", {}).get("messages", 0),
        "possible_duplicates": await possible_duplicates(js),
        "instances": await instances(js),
    }


PROBE_TIMEOUT = 2.0


async def instances(js: JetStreamContext) -> list[dict[str, Any]]:
    """Every service instance that reported itself lately (bucket `instances`), with its readiness asked
    of its own `/readyz` now; one that does not answer shows what it last reported, as not reached."""
    with contextlib.suppress(NotFoundError):
        records = await kv_records(js, Bucket.INSTANCES, InstanceRecord)
        now = datetime.now(UTC)
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, trust_env=False) as client:
            probed = await asyncio.gather(*(_probe(client, r) for r in records.values()))
        rows = [
            {"service": r.service, "instance": r.instance, "http": r.http, "reached": answer is not None,
             "ready": answer[0] if answer else r.ready, "problems": answer[1] if answer else r.problems,
             "reported_seconds_ago": round((now - r.at).total_seconds(), 1)}
            for r, answer in zip(records.values(), probed)
        ]
        return sorted(rows, key=lambda row: (row["service"], row["instance"]))
    return []


async def _probe(client: httpx.AsyncClient, record: InstanceRecord) -> tuple[bool, list[str]] | None:
    """(ready, problems) from the instance's `/readyz`, or None when it does not answer in time."""
    try:
        response = await client.get(f"http://{record.http}/readyz")
        body = response.json()
        return response.status_code == 200, [str(p) for p in body.get("problems", [])]
    except (httpx.HTTPError, ValueError, AttributeError):
        return None


async def possible_duplicates(js: JetStreamContext) -> list[list[str]]:
    """Groups of cases whose victims share an identity hash (NIK, or pseudonym + age + regency), for the
    coordinator to review; read from intake's `matches` bucket, so no identity is ever read here."""
    matches = await kv_records(js, Bucket.MATCHES, CaseIds)
    groups = {tuple(sorted(ids.root)) for ids in matches.values() if len(ids.root) > 1}
    return [list(group) for group in sorted(groups)]


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    keep = ("case_id", "referral_id", "agency", "agency_type", "service", "priority", "status", "reason",
            "level", "action", "due", "replaces", "version", "changed", "redirect_to", "ruleset_version",
            "resolution")
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
    decisions = [DecisionRecord.model_validate_json(v) for v in await kv_history(js, Bucket.DECISIONS, case_id)]
    record = await kv_record(js, Bucket.CASE_REFERRALS, case_id, CaseReferrals)
    states = [s for s in (await kv_records(js, Bucket.REFERRALS, ReferralRecord)).values() if s.case_id == case_id]
    outcomes = [
        {"referral_id": s.referral_id, "agency": s.agency, "service": s.service.value, "status": s.status.value,
         "outcome": s.outcome.model_dump(mode="json") if s.outcome else None}
        for s in states
    ]
    closed = bool(states) and all(s.status.terminal for s in states)
    events.sort(key=lambda e: (e["time"] or "", e["stream"], e["seq"]))
    return {
        "case_id": case_id,
        "events": events,
        "decision": _decision_summary(decisions[-1]) if decisions else None,
        "decisions": [_decision_brief(d) for d in decisions],
        "withheld": [w.model_dump(mode="json") for w in record.withheld] if record else [],
        "referrals": sorted(outcomes, key=lambda o: o["referral_id"]),
        "all_referrals_terminal": closed,
    }


def _decision_summary(decision: DecisionRecord) -> dict[str, Any]:
    """The latest decision, without its per-rule traces: the rules that fired stand for them."""
    return decision.model_dump(mode="json", exclude={"trace"}) | {"fired": decision.fired}


def _decision_brief(decision: DecisionRecord) -> dict[str, Any]:
    """One stored decision (the first registration, a follow-up, a replay), in a line: what it made and why."""
    return {
        "trigger": decision.trigger, "case_version": decision.case_version,
        "decided_at": decision.decided_at.isoformat(), "ruleset_version": decision.ruleset_version,
        "input_hash": decision.input_hash, "fired": decision.fired,
        "referrals": [r.referral_id for r in decision.referrals],
        "already_referred": [r.referral_id for r in decision.already_referred],
        "withheld": [f"{w.agency_type.value}:{w.service.value}" for w in decision.withheld],
    }


async def dead_letters(js: JetStreamContext) -> list[dict[str, Any]]:
    out = []
    async for msg in scan(js, subjects.DLQ_STREAM, "alur.dlq.>"):
        with contextlib.suppress(ValueError, KeyError):
            event = json.loads(msg.data)
            out.append({"dlq_seq": msg.metadata.sequence.stream, **event["data"]})
    return out


async def replay(js: JetStreamContext, dlq_seqs: list[int] | None = None, *, keep: bool = False,
                 ) -> list[dict[str, Any]]:
    """Publish the original of each dead letter again (to its subject), so its consumer retries it; then,
    unless `keep`, remove the dead letter (the original stays in its stream, and a replay that fails
    again is a new dead letter), so the DLQ holds only what still needs a hand."""
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
        if not keep:
            await js.delete_msg(subjects.DLQ_STREAM, letter["dlq_seq"])
        done.append({"dlq_seq": letter["dlq_seq"], "subject": original.subject, "new_seq": ack.seq,
                     "duplicate": bool(ack.duplicate), "removed": not keep})
    return done


async def registered_cases(js: JetStreamContext) -> list[dict[str, Any]]:
    """Each case once, as first registered (the early-detection input)."""
    cases: dict[str, dict[str, Any]] = {}
    async for msg in scan(js, subjects.CASES_STREAM, "alur.case.registered.*"):
        with contextlib.suppress(ValueError, KeyError):
            case = json.loads(msg.data)["data"]["case"]
            cases.setdefault(case["case_id"], case)
    return list(cases.values())


async def case_of_referral(js: JetStreamContext, referral_id: str) -> str | None:
    """The case a referral belongs to, or None when notify holds no such referral."""
    record = await kv_record(js, Bucket.REFERRALS, referral_id, ReferralRecord)
    return record.case_id if record else None


def run(coro: Any) -> Any:
    return asyncio.run(coro)
