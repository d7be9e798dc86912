"""Routing: decides, for each case, which agencies must act, for what, how urgently and why.

The decision itself is the pure `decide` (case + rules + registry + views in, decisions out); this
module is its I/O edge: it reads cases from CASES, publishes `alur.referral.requested.<agency>`,
keeps the decision record and the case's referrals in KV, and reroutes rejected, redirected and
expired referrals. Run alone: `faststream run services.routing.app:app` or `alur serve routing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from faststream.exceptions import NackMessage
from faststream.nats import NatsMessage
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from alur.bus import SafeError, publish
from alur.profile import profile_dir
from alur.service import Service
from contracts import subjects
from contracts.envelope import CloudEvent, derived_id
from contracts.events import Case, CaseEventData, ReferralRequestedData, ReferralStatusData
from services.routing.decide import Decision, PlannedReferral, decide, reroute
from services.routing.reload import RuleBook

service = Service("routing", consumers=["routing", "routing-reroute"])
broker = service.broker
app = service.app
log = service.log
rulebook = RuleBook.from_dir(profile_dir())
RELOAD_EVERY = 2.0
UNKNOWN_REFERRAL_RETRIES = 5
"""How often a status event for a referral not yet in the case's record is retried before it is ignored:
routing publishes a case's referrals before it saves their record, so a very quick answer can arrive first."""


class RecordConflict(SafeError):
    """The case's referral record changed under us; the redelivery decides again."""


_case_locks: dict[str, tuple[asyncio.Lock, int]] = {}


@contextlib.asynccontextmanager
async def _case_lock(case_id: str) -> AsyncIterator[None]:
    """One handler at a time per case in this process. The referral record is written with
    compare-and-set, which stays the guard between processes; the lock only keeps the handlers of one
    process (a batch may run concurrently, and a case's referrals all expire together) from colliding
    and burning their deliveries on retries."""
    lock, users = _case_locks.get(case_id, (asyncio.Lock(), 0))
    _case_locks[case_id] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = _case_locks[case_id]
        if users <= 1:
            del _case_locks[case_id]
        else:
            _case_locks[case_id] = (lock, users - 1)


async def _kv(bucket: str) -> Any:
    return await service.js.key_value(bucket)


async def _record(case_id: str) -> tuple[dict[str, Any], int | None]:
    try:
        entry = await (await _kv("case-referrals")).get(case_id)
        return json.loads(entry.value), entry.revision
    except KeyNotFoundError:
        return {"case_id": case_id, "referrals": {}, "withheld": [], "declined": {}}, None


async def _save_record(case_id: str, record: dict[str, Any], revision: int | None) -> None:
    kv = await _kv("case-referrals")
    payload = json.dumps(record, default=str).encode()
    try:
        if revision is None:
            await kv.create(case_id, payload)
        else:
            await kv.update(case_id, payload, last=revision)
    except KeyWrongLastSequenceError:
        raise RecordConflict(f"referral record of {case_id} changed concurrently") from None


async def _request(planned: PlannedReferral, ruleset_version: str) -> ReferralRequestedData:
    data = planned.to_event_data(ruleset_version)
    event = CloudEvent[ReferralRequestedData].build(
        type="alur.referral.requested.v1",
        source="alur/routing",
        subject=data.referral_id,
        data=data,
        id=derived_id("referral.requested", data.referral_id),
    )
    ack = await publish(service.js, subjects.referral("requested", data.agency), event)
    service.count("referral_requested")
    log.info(
        "referral requested", case_id=data.case_id, referral_id=data.referral_id, agency=data.agency,
        agency_type=data.agency_type.value, service=data.service.value, priority=data.priority.value,
        rules=[r.rule_id for r in data.reasons], resolution=data.resolution, replaces=data.replaces,
        duplicate=bool(ack.duplicate),
    )
    return data


def _summary(data: ReferralRequestedData) -> dict[str, Any]:
    return data.model_dump(mode="json", exclude={"case"})


async def _store_decision(case: Case, decision: Decision, trigger: str) -> None:
    record = {
        "case_id": case.case_id,
        "case_version": case.version,
        "trigger": trigger,
        "decided_at": datetime.now(UTC).isoformat(),
        **decision.record(),
    }
    await (await _kv("decisions")).put(case.case_id, json.dumps(record, default=str).encode())


@service.subscriber("routing")
async def on_case(msg: NatsMessage) -> None:
    """Decide the referrals of a registered or updated case; only needs not yet referred make new ones."""
    envelope = CloudEvent[CaseEventData].model_validate_json(msg.raw_message.data)
    async with _case_lock(envelope.data.case.case_id):
        await _route_case(envelope)


async def _route_case(envelope: CloudEvent[CaseEventData]) -> None:
    case = envelope.data.case
    record, revision = await _record(case.case_id)
    pack = rulebook.pack
    registry = service.registry_store.current  # type: ignore[union-attr]
    decision = decide(
        case, pack, registry, rulebook.views, now=datetime.now(UTC), sla_scale=service.settings.sla_scale,
        existing=set(record["referrals"]),
    )
    await _store_decision(case, decision, envelope.type)
    for planned in decision.referrals:
        data = await _request(planned, decision.ruleset_version)
        record["referrals"][data.referral_id] = _summary(data)
    for withheld in decision.withheld:
        entry = withheld.model_dump(mode="json")
        if entry not in record["withheld"]:
            record["withheld"].append(entry)
            log.info("referral withheld", case_id=case.case_id, agency_type=entry["agency_type"],
                     service=entry["service"], reason=entry["reason"])
            service.count("referral_withheld")
    await _save_record(case.case_id, record, revision)
    log.info("case routed", case_id=case.case_id, ruleset_version=decision.ruleset_version,
             new_referrals=len(decision.referrals), withheld=len(decision.withheld),
             already_referred=len(decision.already_referred))


@service.subscriber("routing-reroute")
async def on_declined(msg: NatsMessage) -> None:
    """Send a rejected, redirected or expired referral's service to the next agency, or the secretariat."""
    status = CloudEvent[ReferralStatusData].model_validate_json(msg.raw_message.data).data
    async with _case_lock(status.case_id):
        await _reroute(status, deliveries=msg.raw_message.metadata.num_delivered)


async def _reroute(status: ReferralStatusData, *, deliveries: int) -> None:
    record, revision = await _record(status.case_id)
    previous = record["referrals"].get(status.referral_id)
    if previous is None:
        if deliveries < UNKNOWN_REFERRAL_RETRIES:
            raise NackMessage(delay=max(0.2, 2.0 * service.settings.sla_scale))
        log.warning("reroute for an unknown referral ignored", referral_id=status.referral_id, case_id=status.case_id)
        return
    if previous.get("rerouted_to"):
        log.info("already rerouted", referral_id=status.referral_id, to=previous["rerouted_to"])
        return
    case = Case.model_validate_json((await (await _kv("cases")).get(status.case_id)).value)
    service_key = f"{previous['agency_type']}:{previous['service']}"
    declined = set(record["declined"].get(service_key, [])) | {status.agency}
    record["declined"][service_key] = sorted(declined)
    pack, version = rulebook.active  # one pack for the whole reroute, even if a reload lands meanwhile
    planned = reroute(
        ReferralRequestedData.model_validate({**previous, "case": {}}),
        status=status.status.value, redirect_to=status.redirect_to, declined=declined, case=case,
        registry=service.registry_store.current, views=rulebook.views, pack=pack,  # type: ignore[union-attr]
        now=datetime.now(UTC), sla_scale=service.settings.sla_scale,
    )
    if planned is None:
        log.error("no agency left to reroute to", referral_id=status.referral_id, case_id=status.case_id)
        previous["rerouted_to"] = "none"
    else:
        data = await _request(planned, version)
        record["referrals"][data.referral_id] = _summary(data)
        previous["rerouted_to"] = data.referral_id
    await _save_record(status.case_id, record, revision)


async def _watch_rules() -> None:
    """Poll the profile's rule files; a changed pack is validated and tested before it is swapped in."""
    while True:
        await asyncio.sleep(RELOAD_EVERY)
        outcome = rulebook.reload_if_changed()
        if outcome is None:
            continue
        ok, errors = outcome
        if ok:
            log.info("rule pack reloaded", ruleset_version=rulebook.pack.version)
        else:
            log.error("rule pack refused; the previous pack keeps running",
                      ruleset_version=rulebook.pack.version, errors=errors[:20])


_watcher: asyncio.Task[None] | None = None


@service.on_started
async def _start_watch() -> None:
    global _watcher
    _watcher = asyncio.create_task(_watch_rules())
    log.info("rule pack loaded", ruleset_version=rulebook.pack.version)


@service.on_stopping
async def _stop_watch() -> None:
    if _watcher:
        _watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await _watcher
