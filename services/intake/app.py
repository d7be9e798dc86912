"""Intake: admits reports into cases. Two doors — `alur.report.<agency>` and `POST /v1/reports` — one path.

Every report is stored in REPORTS before anything else happens (the HTTP door publishes it there
first). The consumer validates it, keeps one case per report (derived case ids and KV create /
compare-and-set), and publishes `alur.case.registered|updated.<regency>` or `alur.case.rejected.<agency>`.
Run alone: `faststream run services.intake.app:app` or `alur serve intake`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from faststream.nats import NatsMessage
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from alur.bus import SafeError, publish, publish_raw
from alur.service import Request, Response, Service
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import Case, FollowUpData
from services.intake.cases import case_event, case_id_for, case_not_found, merge_followup, new_case
from services.intake.matching import link, match_key_from_env, match_keys
from services.intake.validation import (
    EVENT_ID_RE,
    ParsedReport,
    Rejection,
    parse_http_report,
    parse_report,
    rejected_event,
)

service = Service("intake", consumers=["intake"])
broker = service.broker
app = service.app
log = service.log


MATCH_KEY = match_key_from_env() if service.settings.match_key else None


class CaseConflict(SafeError):
    """The case changed while we merged into it; the redelivery merges again."""


async def _cases_kv() -> Any:
    return await service.js.key_value("cases")


def _known_agencies() -> set[str]:
    assert service.registry_store is not None
    return {a.id for a in service.registry_store.current.agencies.values() if a.enabled}


async def _reject(reporter: str, rejection: Rejection, *, stream_seq: int | None) -> None:
    await publish(service.js, subjects.case_rejected(reporter), rejected_event(rejection, reporter=reporter,
                                                                                stream_seq=stream_seq))
    service.count("rejected")
    log.info("report rejected", reporter=reporter, report_ref=rejection.report_ref, stream_seq=stream_seq,
             reasons=len(rejection.reasons))


async def _publish_case(
    case: Case, report_ref: str, changed: list[str], kind: str, reporter: str | None = None
) -> None:
    event = case_event(case, report_ref, changed, kind, reporter=reporter)  # type: ignore[arg-type]
    subject = subjects.case_registered(case.regency) if kind == "registered" else subjects.case_updated(case.regency)
    ack = await publish(service.js, subject, event)
    service.count(kind)
    log.info(f"case {kind}", case_id=case.case_id, report_ref=report_ref, regency=case.regency.value,
             version=case.version, duplicate=bool(ack.duplicate), changed=changed)


async def _link_possible_duplicates(case: Case) -> Case:
    """Record this case under its keyed identity hashes and flag other cases that share one."""
    if MATCH_KEY is None:
        return case
    kv = await service.js.key_value("matches")
    others: set[str] = set()
    for key in (k.replace(":", ".") for k in match_keys(case, MATCH_KEY)):
        for _ in range(5):
            try:
                entry = await kv.get(key)
                ids = set(json.loads(entry.value or b"[]"))
                others |= ids - {case.case_id}
                if case.case_id in ids:
                    break
                await kv.update(key, json.dumps(sorted(ids | {case.case_id})).encode(), last=entry.revision)
                break
            except KeyNotFoundError:
                try:
                    await kv.create(key, json.dumps([case.case_id]).encode())
                    break
                except KeyWrongLastSequenceError:
                    continue
            except KeyWrongLastSequenceError:
                continue
    if others:
        log.warning("possible duplicate victim flagged", case_id=case.case_id, linked=sorted(others))
        return link(case, sorted(others))
    return case


async def _register(parsed: ParsedReport) -> None:
    kv = await _cases_kv()
    case_id = case_id_for(parsed.reporter, parsed.report_ref)
    try:
        entry = await kv.get(case_id)
        case = Case.model_validate_json(entry.value)
        log.info("report already registered", case_id=case_id, report_ref=parsed.report_ref)
    except KeyNotFoundError:
        case = await _link_possible_duplicates(new_case(parsed, datetime.now(UTC)))
        try:
            await kv.create(case_id, case.model_dump_json().encode())
        except KeyWrongLastSequenceError:
            case = Case.model_validate_json((await kv.get(case_id)).value)
    await _publish_case(case, case.report_refs[0], [], "registered")


async def _follow_up(parsed: ParsedReport, stream_seq: int) -> None:
    followup = parsed.data
    assert isinstance(followup, FollowUpData)
    kv = await _cases_kv()
    try:
        entry = await kv.get(followup.case_id)
    except KeyNotFoundError:
        await _reject(parsed.reporter, case_not_found(parsed), stream_seq=stream_seq)
        return
    case = Case.model_validate_json(entry.value)
    merged = merge_followup(case, followup, parsed.reporter, datetime.now(UTC))
    if isinstance(merged, Rejection):
        await _reject(parsed.reporter, merged, stream_seq=stream_seq)
        return
    updated, changed, new_needs = merged
    if updated.report_refs == case.report_refs:
        # this report is already on the case: a redelivery, or a crash between storing and publishing
        log.info("follow-up already merged", case_id=case.case_id, report_ref=parsed.report_ref)
    else:
        # stored even when it changes no field: the case records every report it has heard
        if changed:
            linked = await _link_possible_duplicates(updated)
            if linked.possible_duplicates != updated.possible_duplicates:
                updated, changed = linked, [*changed, "possible_duplicates"]
        try:
            await kv.update(case.case_id, updated.model_dump_json().encode(), last=entry.revision)
        except KeyWrongLastSequenceError:
            raise CaseConflict(f"case {case.case_id} changed during the merge") from None
    await _publish_case(updated, parsed.report_ref, changed, "updated", reporter=parsed.reporter)


@service.subscriber("intake")
async def on_report(msg: NatsMessage) -> None:
    """Admit one report from `alur.report.<agency>`: the subject, not the body, names the reporter."""
    raw = msg.raw_message
    reporter = subjects.parse(raw.subject).key
    stream_seq = raw.metadata.sequence.stream
    result = parse_report(raw.data, reporter=reporter, known_agencies=_known_agencies())
    if isinstance(result, Rejection):
        await _reject(reporter, result, stream_seq=stream_seq)
    elif result.is_followup:
        await _follow_up(result, stream_seq)
    else:
        await _register(result)


# ------------------------------------------------------------------ HTTP door


@service.route("POST", "/v1/reports")
async def post_report(request: Request) -> Response:
    """Store the report in REPORTS under the token's agency, then answer with what intake will decide.

    The body is a whole CloudEvent or only its `data`; a bare `data` is wrapped in a CloudEvent so that
    REPORTS holds one form. The consumer makes the decision that counts; this answer previews it.
    """
    assert service.credentials is not None and service.registry_store is not None
    token = request.bearer
    reporter = await service.credentials.agency_for_token(token, service.registry_store.current) if token else None
    if reporter is None:
        return Response(401, {"error": "missing or unknown bearer token; ask the coordinator for your agency's token"})
    body = request.body
    event_id = derived_id("http-report", reporter, hashlib.sha256(body).hexdigest())
    with contextlib.suppress(ValueError):
        obj = json.loads(body)
        if isinstance(obj, dict) and "specversion" not in obj:
            body = CloudEvent[dict[str, Any]].build(
                type="alur.report.submitted.v1", source=reporter, subject=None, data=obj, id=event_id,
            ).to_bytes()
        elif isinstance(obj, dict) and isinstance(obj.get("id"), str) and EVENT_ID_RE.fullmatch(obj["id"]):
            event_id = obj["id"]  # the publisher's id dedups in REPORTS; anything else is no header value
    ack = await publish_raw(service.js, subjects.report(reporter), body, msg_id=event_id)
    result = parse_http_report(body, reporter=reporter, known_agencies=_known_agencies())
    if isinstance(result, Rejection):
        return Response(result.http_status, {"accepted": False, "reasons": result.reasons, "stream_seq": ack.seq})
    case_id = result.data.case_id if isinstance(result.data, FollowUpData) else case_id_for(reporter, result.report_ref)
    return Response(202, {"accepted": True, "case_id": case_id, "report_ref": result.report_ref,
                          "followup": result.is_followup, "stream_seq": ack.seq, "duplicate": bool(ack.duplicate)})
