"""Intake: admits reports into cases. Two doors — `alur.report.<agency>` and `POST /v1/reports` — one path.

Every report is stored in REPORTS before anything else happens (the HTTP door publishes it there
first). The consumer validates it, keeps one case per report (keyed case ids and KV create /
compare-and-set), and publishes `alur.case.registered|updated.<regency>` or `alur.case.rejected.<agency>`
(stated again on `alur.referral.report_rejected.<agency>`, so the reporter hears it on its own channel).
A follow-up is merged only when its sender may amend the case (`domain.case_access`); anyone else hears
what it would hear of a case that does not exist.
Run alone: `alur serve intake`, or `faststream run services.intake.app:create_app --factory`.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from nats.js.api import PubAck
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contracts import subjects
from contracts.buckets import Bucket
from contracts.catalog import (
    CASE_REGISTERED,
    CASE_REJECTED,
    CASE_UPDATED,
    REPORT_FOLLOWUP,
    REPORT_SUBMITTED,
)
from contracts.envelope import CloudEvent, derived_id
from contracts.events import Case, FollowUpData
from contracts.records import CaseIds, CaseReferrals
from contracts.vocab import AGENCY_ID_RE
from domain.case_access import may_amend
from domain.cases import (
    case_event,
    case_id_for,
    case_not_found,
    merge_followup,
    new_case,
)
from domain.reasons import reason_code, unique
from domain.validation import (
    EVENT_ID_RE,
    ParsedReport,
    Rejection,
    is_event,
    load_report_body,
    parse_http_report,
    parse_report,
    rejected_event,
)
from runtime.app import ServiceApp, ServiceAsgi, read_body
from runtime.bus import (
    SafeError,
    key_value,
    publish,
    publish_raw,
    scoped_msg_id,
    together,
)
from runtime.message import Message
from runtime.metrics import REPORT_OUTCOMES
from runtime.settings import Settings, SettingsError
from services.intake.matching import link, match_keys
from services.intake.regions import RegionWatch
from services.intake.retention import Retention

MATCH_ATTEMPTS = 5


class CaseConflict(SafeError):
    """The case changed while we merged into it; the redelivery merges again."""


class Intake:
    """The intake service's handlers, over one `ServiceApp`."""

    def __init__(self, app: ServiceApp, retention: Retention) -> None:
        self.app = app
        self.log = app.log
        self.match_key = app.settings.hashing_key
        self.retention = retention
        key = app.settings.case_id_key
        if key is None:
            raise SettingsError(
                "ALUR_CASE_KEY: intake needs the case-id key (a secret of at least 16 bytes) and makes no "
                "unkeyed ids; `alur up` passes the one kept in <data dir>/secrets/case.key"
            )
        self.case_key = key

    def register(self) -> None:
        self.app.subscriber("intake")(self.on_report)
        self.app.route("/v1/reports")(self.post_report)
        agency, regency, states = subjects.AGENCY_PARAM, subjects.REGENCY_PARAM, self.app.states
        for kind in (REPORT_SUBMITTED, REPORT_FOLLOWUP):
            states(subjects.report(agency), kind, "A report POSTed to `/v1/reports`, stored under the token's "
                   "agency exactly as if that agency had published it.")
        states(subjects.case_registered(regency), CASE_REGISTERED, "A report admitted as a new case.")
        states(subjects.case_updated(regency), CASE_UPDATED, "A follow-up merged into its case.")
        states(subjects.case_rejected(agency), CASE_REJECTED, "A report refused, with a reason per field.")
        states(subjects.report_rejected(agency), CASE_REJECTED, "The same rejection, where the reporter reads: "
               "its consumer `agency-{agency}` and its webhook.")

    async def _kv(self, bucket: Bucket) -> KeyValue:
        return await key_value(self.app.js, bucket)

    def _known_agencies(self) -> set[str]:
        assert self.app.registry_store is not None
        return {a.id for a in self.app.registry_store.current.agencies.values() if a.enabled}

    async def _reject(self, reporter: str, rejection: Rejection, *, stream_seq: int | None) -> None:
        event = rejected_event(rejection, reporter=reporter, stream_seq=stream_seq)
        await publish(self.app.js, subjects.case_rejected(reporter), event)
        if AGENCY_ID_RE.match(reporter):
            # the same event where the reporter reads: its consumer and webhook (a redelivery dedups both)
            await publish(self.app.js, subjects.report_rejected(reporter), event)
        if stream_seq is not None:
            await self.retention.forget_later(stream_seq)
        self.app.metrics.report("rejected")
        self.app.metrics.rejection(unique(reason_code(r) for r in rejection.reasons))
        self.log.info("report rejected", reporter=reporter, report_ref=rejection.report_ref, stream_seq=stream_seq,
                      reasons=len(rejection.reasons))

    async def _publish_case(
        self, case: Case, report_ref: str, changed: list[str], kind: str, reporter: str | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        event = case_event(case, report_ref, changed, kind, reporter=reporter,  # type: ignore[arg-type]
                           warnings=warnings)
        registered = kind == "registered"
        subject = subjects.case_registered(case.regency) if registered else subjects.case_updated(case.regency)
        ack = await publish(self.app.js, subject, event)
        self.app.metrics.report("duplicate" if ack.duplicate else kind)
        self.log.info(f"case {kind}", case_id=case.case_id, report_ref=report_ref, regency=case.regency.value,
                      version=case.version, duplicate=bool(ack.duplicate), changed=changed,
                      warnings=[w.split(":", 1)[0] for w in event.data.warnings])

    async def _link_possible_duplicates(self, case: Case) -> Case:
        """Record this case under its keyed identity hashes and flag other cases that share one (the keys are
        independent records: they are read and written side by side)."""
        if self.match_key is None:
            return case
        kv = await self._kv(Bucket.MATCHES)
        keys = [k.replace(":", ".") for k in match_keys(case, self.match_key)]
        found = await together(*(self._match_under(kv, key, case.case_id) for key in keys))
        others = set().union(*found) - {case.case_id}
        if others:
            self.log.warning("possible duplicate victim flagged", case_id=case.case_id, linked=sorted(others))
            return link(case, sorted(others))
        return case

    @staticmethod
    async def _match_under(kv: KeyValue, key: str, case_id: str) -> set[str]:
        """Add `case_id` under one match key (compare-and-set); the case ids that key held before."""
        others: set[str] = set()
        for _ in range(MATCH_ATTEMPTS):
            try:
                entry = await kv.get(key)
                ids = set(CaseIds.model_validate_json(entry.value or b"[]").root)
                others |= ids
                if case_id in ids:
                    break
                await kv.update(key, CaseIds(sorted(ids | {case_id})).model_dump_json().encode(), last=entry.revision)
                break
            except KeyNotFoundError:
                try:
                    await kv.create(key, CaseIds([case_id]).model_dump_json().encode())
                    break
                except KeyWrongLastSequenceError:
                    continue
            except KeyWrongLastSequenceError:
                continue
        return others

    async def _register(self, parsed: ParsedReport, received: datetime) -> None:
        """One case per report: the stored one if this report made it already, else a new one (KV create).

        The stored case is looked up while the new one is linked to possible duplicates: linking a case that
        exists already finds its id under each key and writes nothing.
        """
        kv = await self._kv(Bucket.CASES)
        case_id = case_id_for(parsed.reporter, parsed.report_ref, key=self.case_key)
        stored, linked = await together(
            self._stored_case(kv, case_id),
            self._link_possible_duplicates(new_case(parsed, received, key=self.case_key)),
        )
        if stored is not None:
            case = stored
            self.log.info("report already registered", case_id=case_id, report_ref=parsed.report_ref)
        else:
            case = linked
            try:
                await kv.create(case_id, case.model_dump_json().encode())
            except KeyWrongLastSequenceError:
                case = Case.model_validate_json((await kv.get(case_id)).value)
        await self._publish_case(case, case.report_refs[0], [], "registered")

    @staticmethod
    async def _stored_case(kv: KeyValue, case_id: str) -> Case | None:
        try:
            return Case.model_validate_json((await kv.get(case_id)).value)
        except KeyNotFoundError:
            return None

    async def _amendable(self, reporter: str, case_id: str) -> tuple[Case, int] | None:
        """The case (and its KV revision) if it exists and `reporter` may amend it; else None, either way.

        Both records are read whether or not the case exists, so the two refusals also take alike.
        """
        assert self.app.registry_store is not None
        case: tuple[Case, int] | None = None
        referrals: CaseReferrals | None = None
        try:
            entry = await (await self._kv(Bucket.CASES)).get(case_id)
            case = Case.model_validate_json(entry.value), entry.revision
        except KeyNotFoundError:
            pass
        try:
            record = await (await self._kv(Bucket.CASE_REFERRALS)).get(case_id)
            referrals = CaseReferrals.model_validate_json(record.value)
        except KeyNotFoundError:
            pass
        if case is None:
            self.log.info("follow-up refused", reporter=reporter, case_id=case_id, why="unknown_case")
            return None
        if not may_amend(reporter, case[0], referrals, self.app.registry_store.current):
            # the sender is told "no case has this id"; the operators learn what it tried
            self.log.warning("follow-up refused", reporter=reporter, case_id=case_id, why="not_permitted")
            return None
        return case

    async def _follow_up(self, parsed: ParsedReport, stream_seq: int, received: datetime) -> None:
        followup = parsed.data
        assert isinstance(followup, FollowUpData)
        kv = await self._kv(Bucket.CASES)
        found = await self._amendable(parsed.reporter, followup.case_id)
        if found is None:
            await self._reject(parsed.reporter, case_not_found(parsed), stream_seq=stream_seq)
            return
        case, revision = found
        merged = merge_followup(case, followup, parsed.reporter, received, warnings=parsed.warnings)
        if isinstance(merged, Rejection):
            await self._reject(parsed.reporter, merged, stream_seq=stream_seq)
            return
        updated, changed, _ = merged
        if updated.report_refs == case.report_refs:
            # this report is already on the case: a redelivery, or a crash between storing and publishing
            self.log.info("follow-up already merged", case_id=case.case_id, report_ref=parsed.report_ref)
        else:
            # stored even when it changes no field: the case records every report it has heard
            if changed:
                linked = await self._link_possible_duplicates(updated)
                if linked.possible_duplicates != updated.possible_duplicates:
                    updated, changed = linked, [*changed, "possible_duplicates"]
            try:
                await kv.update(case.case_id, updated.model_dump_json().encode(), last=revision)
            except KeyWrongLastSequenceError:
                raise CaseConflict(f"case {case.case_id} changed during the merge") from None
        await self._publish_case(updated, parsed.report_ref, changed, "updated", reporter=parsed.reporter,
                                 warnings=parsed.warnings)

    async def on_report(self, msg: Message) -> None:
        """Admit one report from `alur.report.<agency>`: the subject, not the body, names the reporter.

        The body arrives as stored (the subscriber decodes nothing) and its dates are held against the time
        REPORTS received it, so a redelivery decides exactly as the first delivery did; that time is also the
        case's `registered_at` / `updated_at` (what routing measures report-to-referral latency from).
        """
        raw = msg.raw_message
        reporter = subjects.parse(raw.subject).key
        stream_seq = raw.metadata.sequence.stream
        result = parse_report(raw.data, reporter=reporter, known_agencies=self._known_agencies(),
                              now=raw.metadata.timestamp)
        if isinstance(result, Rejection):
            await self._reject(reporter, result, stream_seq=stream_seq)
        elif result.is_followup:
            await self._follow_up(result, stream_seq, raw.metadata.timestamp)
        else:
            await self._register(result, raw.metadata.timestamp)

    async def post_report(self, request: Request) -> Response:
        """Store the report in REPORTS under the token's agency, then answer with what intake will decide.

        The body is a whole CloudEvent or only its `data`; a bare `data` is wrapped in a CloudEvent so that
        REPORTS holds one form. It is read once, by the same bounded loader the consumer uses: a body it
        refuses (too deep, a repeated key, not JSON …) is stored as received, for the consumer to reject
        with the same reasons. The consumer makes the decision that counts; this answer previews it.
        """
        reporter = await self.app.caller(request)  # 401 / 429 before the body is read
        body = await read_body(request)
        received = datetime.now(UTC)
        event_id = derived_id("http-report", reporter, hashlib.sha256(body).hexdigest())
        loaded = load_report_body(body)
        if isinstance(loaded, dict) and not is_event(loaded):
            body = CloudEvent[dict[str, Any]].build(
                type=REPORT_SUBMITTED, source=reporter, subject=None, data=loaded, id=event_id, time=received,
            ).to_bytes()
        elif isinstance(loaded, dict) and isinstance(loaded.get("id"), str) and EVENT_ID_RE.fullmatch(loaded["id"]):
            event_id = loaded["id"]  # the publisher's id dedups in REPORTS; anything else is no header value
        ack, duplicate = await self._store(reporter, body, event_id)
        result = parse_http_report(body, reporter=reporter, known_agencies=self._known_agencies(), now=received)
        if isinstance(result, ParsedReport) and isinstance(result.data, FollowUpData):
            result = await self._preview_follow_up(result, received)
        if isinstance(result, Rejection):
            return JSONResponse({"accepted": False, "reasons": result.reasons, "stream_seq": ack.seq,
                                 "duplicate": duplicate}, result.http_status)
        data = result.data
        case_id = (data.case_id if isinstance(data, FollowUpData)
                   else case_id_for(reporter, result.report_ref, key=self.case_key))
        return JSONResponse({"accepted": True, "case_id": case_id, "report_ref": result.report_ref,
                             "followup": result.is_followup, "stream_seq": ack.seq,
                             "duplicate": duplicate, "warnings": result.warnings}, 202)

    async def _store(self, reporter: str, body: bytes, event_id: str) -> tuple[PubAck, bool]:
        """Store the input in REPORTS under a message id scoped by its reporter; (its ack, whether it was
        already stored). Another sender can never make it a "duplicate": a stored message found under the id
        that is not this reporter's same input (a NATS publisher may set any id) does not count, and the input
        is stored under an id made from its own bytes, which no other sender knows; a retry finds it there."""
        subject = subjects.report(reporter)
        for msg_id in (scoped_msg_id(reporter, event_id), scoped_msg_id(reporter, hashlib.sha256(body).hexdigest())):
            ack = await publish_raw(self.app.js, subject, body, msg_id=msg_id)
            if not ack.duplicate:
                return ack, False
            stored = await self.app.js.get_msg(subjects.REPORTS_STREAM, ack.seq)
            if stored.subject == subject and stored.data == body:
                return ack, True
            self.log.warning("report id taken by another sender; stored under another id", reporter=reporter)
        return await publish_raw(self.app.js, subject, body, msg_id=scoped_msg_id(reporter, str(uuid.uuid4()))), False

    async def _preview_follow_up(self, parsed: ParsedReport, received: datetime) -> ParsedReport | Rejection:
        """What the consumer will make of a follow-up: refused like an unknown case, merged, or rejected."""
        assert isinstance(parsed.data, FollowUpData)
        found = await self._amendable(parsed.reporter, parsed.data.case_id)
        if found is None:
            return case_not_found(parsed)
        merged = merge_followup(found[0], parsed.data, parsed.reporter, received, warnings=parsed.warnings)
        return merged if isinstance(merged, Rejection) else parsed


def create_app(settings: Settings | None = None) -> ServiceAsgi:
    """The intake service, built and wired (FastStream's factory pattern)."""
    app = ServiceApp("intake", settings)
    retention = Retention(app, app.topology.retention.refused_inputs)
    retention.register()
    Intake(app, retention).register()
    RegionWatch(app).register()
    app.metrics.declare("alur_reports_total", ({"outcome": o} for o in sorted(REPORT_OUTCOMES)))
    return app.asgi()
