"""Routing: decides, for each case, which agencies must act, for what, how urgently and why.

The decision itself is the pure `decide` (case + rules + registry + views in, decisions out); this
module is its I/O edge: it reads cases from CASES, publishes `alur.referral.requested.<agency>`,
keeps the decision record and the case's referrals in KV, and reroutes rejected, redirected and
expired referrals. Run alone: `alur serve routing`, or
`faststream run services.routing.app:create_app --factory`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from faststream.exceptions import NackMessage
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from contracts import subjects
from contracts.buckets import Bucket
from contracts.catalog import REFERRAL_REQUESTED
from contracts.envelope import CloudEvent, derived_id
from contracts.events import (
    Case,
    CaseEventData,
    ReferralRequestedData,
    ReferralStatusData,
)
from contracts.records import CaseReferrals, ReferralEntry
from runtime.app import ServiceApp, ServiceAsgi
from runtime.bus import SafeError, key_value, publish, together
from runtime.keyed import KeyedLocks
from runtime.message import Message
from runtime.profile import profile_dir
from runtime.settings import Settings
from services.routing.decide import Decision, PlannedReferral, decide, reroute
from services.routing.reload import RuleBook

RELOAD_EVERY = 2.0
UNKNOWN_REFERRAL_RETRIES = 5
"""How often a status event for a referral not in the case's record is retried before it is ignored (the
record is saved before a referral is published, so this only guards a record lost and being restored)."""


class RecordConflict(SafeError):
    """The case's referral record changed under us; the redelivery decides again."""


class Router:
    """The routing service's handlers and its rule book, over one `ServiceApp`."""

    def __init__(self, app: ServiceApp, rulebook: RuleBook) -> None:
        self.app = app
        self.log = app.log
        self.rulebook = rulebook
        self.cases = KeyedLocks()
        self._watcher: asyncio.Task[None] | None = None

    def register(self) -> None:
        self.app.subscriber("routing")(self.on_case)
        self.app.subscriber("routing-reroute")(self.on_declined)
        self.app.states(subjects.referral("requested", subjects.AGENCY_PARAM), REFERRAL_REQUESTED,
                        "A referral to one agency for one service, with the rules that fired and the agency "
                        "type's view of the case.")
        self.app.on_started(self._start_watch)
        self.app.on_stopping(self._stop_watch)

    async def _kv(self, bucket: Bucket) -> KeyValue:
        return await key_value(self.app.js, bucket)

    async def _record(self, case_id: str) -> tuple[CaseReferrals, int | None]:
        try:
            entry = await (await self._kv(Bucket.CASE_REFERRALS)).get(case_id)
            return CaseReferrals.model_validate_json(entry.value), entry.revision
        except KeyNotFoundError:
            return CaseReferrals(case_id=case_id), None

    async def _save_record(self, case_id: str, record: CaseReferrals, revision: int | None) -> None:
        kv = await self._kv(Bucket.CASE_REFERRALS)
        payload = record.model_dump_json().encode()
        try:
            if revision is None:
                await kv.create(case_id, payload)
            else:
                await kv.update(case_id, payload, last=revision)
        except KeyWrongLastSequenceError:
            raise RecordConflict(f"referral record of {case_id} changed concurrently") from None

    async def _request(self, planned: PlannedReferral, ruleset_version: str) -> None:
        await self._publish(planned.to_event_data(ruleset_version))

    def _request_of(self, entry: ReferralEntry, case: Case) -> ReferralRequestedData:
        """A recorded referral's request again, its view rebuilt from the case for the type that receives it."""
        view = self.rulebook.views.view_of(case, entry.receiving_type or entry.agency_type)
        return ReferralRequestedData.model_validate({**entry.model_dump(), "case": view})

    async def _publish(self, data: ReferralRequestedData) -> None:
        """Publish `alur.referral.requested.<agency>` (its id derives from the referral: a repeat is dropped)."""
        event = CloudEvent[ReferralRequestedData].build(
            type=REFERRAL_REQUESTED, source="alur/routing", subject=data.referral_id, data=data,
            id=derived_id("referral.requested", data.referral_id),
        )
        ack = await publish(self.app.js, subjects.referral("requested", data.agency), event)
        if not ack.duplicate:
            self.app.metrics.referral(data.agency_type.value, "requested")
        # per referral, so DEBUG (a reroute's stays INFO); `case routed` names the case's agencies at INFO
        self.log.log(
            logging.INFO if data.replaces else logging.DEBUG, "referral requested", case_id=data.case_id,
            referral_id=data.referral_id, agency=data.agency, agency_type=data.agency_type.value,
            service=data.service.value, priority=data.priority.value,
            rules=[r.rule_id for r in data.reasons], resolution=data.resolution, replaces=data.replaces,
            duplicate=bool(ack.duplicate),
        )

    async def _store_decision(self, case: Case, decision: Decision, trigger: str) -> None:
        record = decision.record(case_version=case.version, trigger=trigger)
        await (await self._kv(Bucket.DECISIONS)).put(case.case_id, record.model_dump_json().encode())

    async def on_case(self, msg: Message) -> None:
        """Decide the referrals of a registered or updated case; only needs not yet referred make new ones."""
        envelope = CloudEvent[CaseEventData].model_validate_json(msg.raw_message.data)
        async with self.cases.hold(envelope.data.case.case_id):
            await self._route_case(envelope, deliveries=msg.raw_message.metadata.num_delivered)

    async def _route_case(self, envelope: CloudEvent[CaseEventData], *, deliveries: int) -> None:
        """Decide, record, then publish: the record (compare-and-set) is what orders one case's decisions
        across instances, and a referral is on it before any agency can answer it.

        An event for an older case version than the record's decides nothing (a later version, which
        carries the whole case, was decided already). A redelivery (the process may have died between
        recording and publishing) publishes that version's recorded referrals again; JetStream drops the
        ones already out.
        """
        case = envelope.data.case
        record, revision = await self._record(case.case_id)
        if case.version < record.case_version:
            self.log.info("older case version ignored", case_id=case.case_id, version=case.version,
                          decided=record.case_version)
            return
        assert self.app.registry_store is not None
        started = time.perf_counter()
        decision = decide(
            case, self.rulebook.pack, self.app.registry_store.current, self.rulebook.views, now=datetime.now(UTC),
            sla_scale=self.app.settings.sla_scale, existing=set(record.referrals),
        )
        self.app.metrics.decision(time.perf_counter() - started)
        for planned in decision.referrals:
            entry = planned.entry(decision.ruleset_version)
            entry.case_version = case.version
            record.referrals[planned.referral_id] = entry
        for withheld in decision.withheld:
            if withheld not in record.withheld:
                record.withheld.append(withheld)
                self.log.info("referral withheld", case_id=case.case_id, agency_type=withheld.agency_type.value,
                              service=withheld.service.value, reason=withheld.reason)
        record.case_version = case.version
        await self._save_record(case.case_id, record, revision)
        # once recorded, the decision record and the requests are independent writes: sent together, acks
        # awaited together (a failed one fails the handler, and the redelivery publishes the record again)
        requests = [planned.to_event_data(decision.ruleset_version) for planned in decision.referrals]
        if deliveries > 1:
            new = {p.referral_id for p in decision.referrals}
            requests += [self._request_of(entry, case) for rid, entry in record.referrals.items()
                         if entry.case_version == case.version and rid not in new]
        await together(self._store_decision(case, decision, envelope.type),
                       *(self._publish(data) for data in requests))
        published = datetime.now(UTC)
        for _ in decision.referrals:
            self.app.metrics.report_to_referral((published - case.updated_at).total_seconds())
        self.log.info("case routed", case_id=case.case_id, ruleset_version=decision.ruleset_version,
                      new_referrals=len(decision.referrals), withheld=len(decision.withheld),
                      already_referred=len(decision.already_referred),
                      agencies=sorted(p.agency for p in decision.referrals))

    async def on_declined(self, msg: Message) -> None:
        """Send a rejected, redirected or expired referral's service to the next agency, or the secretariat."""
        status = CloudEvent[ReferralStatusData].model_validate_json(msg.raw_message.data).data
        async with self.cases.hold(status.case_id):
            await self._reroute(status, deliveries=msg.raw_message.metadata.num_delivered)

    async def _reroute(self, status: ReferralStatusData, *, deliveries: int) -> None:
        record, revision = await self._record(status.case_id)
        previous = record.referrals.get(status.referral_id)
        if previous is None:
            if deliveries < UNKNOWN_REFERRAL_RETRIES:
                raise NackMessage(delay=max(0.2, 2.0 * self.app.settings.sla_scale))
            self.log.warning("reroute for an unknown referral ignored", referral_id=status.referral_id,
                             case_id=status.case_id)
            return
        case = Case.model_validate_json((await (await self._kv(Bucket.CASES)).get(status.case_id)).value)
        if previous.rerouted_to:
            replacement = record.referrals.get(previous.rerouted_to)
            if replacement is not None:  # recorded, perhaps not yet published (a crash in between): say it again
                await self._publish(self._request_of(replacement, case))
            self.log.info("already rerouted", referral_id=status.referral_id, to=previous.rerouted_to)
            return
        service_key = f"{previous.agency_type.value}:{previous.service.value}"
        declined = set(record.declined.get(service_key, [])) | {status.agency}
        record.declined[service_key] = sorted(declined)
        pack, version = self.rulebook.active  # one pack for the whole reroute, even if a reload lands meanwhile
        assert self.app.registry_store is not None
        planned = reroute(
            previous, status=status.status.value, redirect_to=status.redirect_to, declined=declined, case=case,
            registry=self.app.registry_store.current, views=self.rulebook.views, pack=pack,
            now=datetime.now(UTC), sla_scale=self.app.settings.sla_scale,
        )
        if planned is None:
            self.log.error("no agency left to reroute to", referral_id=status.referral_id, case_id=status.case_id)
            previous.rerouted_to = "none"
        else:
            record.referrals[planned.referral_id] = planned.entry(version)
            previous.rerouted_to = planned.referral_id
        await self._save_record(status.case_id, record, revision)
        if planned is not None:
            await self._request(planned, version)

    async def _watch_rules(self) -> None:
        """Poll the profile's rule files; a changed pack is vetted in a worker process (off the event loop,
        with a timeout) before it is swapped in, and cases go on being routed with the old one meanwhile."""
        while True:
            await asyncio.sleep(RELOAD_EVERY)
            if not self.rulebook.changed():
                continue
            self.log.info("rule pack changed; vetting it in a worker", ruleset_version=self.rulebook.pack.version,
                          timeout=self.rulebook.validation_timeout)
            try:
                ok, errors = await asyncio.to_thread(self.rulebook.reload)
            except Exception as exc:  # noqa: BLE001 - the watcher must outlive any one reload
                ok, errors = False, [f"reload failed: {type(exc).__name__}"]
            if ok:
                self.log.info("rule pack reloaded", ruleset_version=self.rulebook.pack.version)
            else:
                self.log.error("rule pack refused; the previous pack keeps running",
                               ruleset_version=self.rulebook.pack.version, errors=errors[:20])

    async def _start_watch(self) -> None:
        self._watcher = asyncio.create_task(self._watch_rules())
        self.log.info("rule pack loaded", ruleset_version=self.rulebook.pack.version)

    async def _stop_watch(self) -> None:
        if self._watcher:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher


def create_app(settings: Settings | None = None) -> ServiceAsgi:
    """The routing service, built and wired: the profile's rule pack is validated and tested first."""
    app = ServiceApp("routing", settings)
    rulebook = RuleBook.from_dir(profile_dir(app.settings), validation_timeout=app.settings.rules_validation_timeout)
    Router(app, rulebook).register()
    return app.asgi()
