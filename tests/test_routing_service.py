"""Issue 4 (routing) over the real system: `alur up` as a process, a secure embedded broker, three services.

One `alur up` serves the whole module (profile = a temporary copy of deploy/kalsel, so the hot-reload
test can rewrite its rule pack). Each test submits its own case (its own `report_ref`) and reads only
that case's events, so the tests do not depend on one another's order. At ALUR_SLA_SCALE=0.001 an
unanswered high-priority referral expires about 25 s after it is requested; the case submitted when
the module starts proves that expiry reroutes too, while the other tests run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from alur.ops import scan
from tests.conftest import (
    CONFIDENTIAL,
    REPO,
    Running,
    alur_env,
    reference_report,
    start_alur,
    stop_alur,
)
from tests.support import next_matching, wait_for

START_VERSION = "kalsel-2026.1"
VETTING_TIMEOUT = 8
"""Seconds routing lets a new pack's vetting run (ALUR_RULES_VALIDATION_TIMEOUT): far more than the Kalsel
pack needs on a loaded machine, far less than the slow pack of the vetting test."""
ADULT_FEMALE = {"pseudonym": "KS-0900", "age": 30, "sex": "female", "nationality": "wni",
                "migration_profile": "pmi_non_procedural", "disabilities": [],
                "identity": {"name": "Siti A.", "nik": "6371015507100003", "phone": "+62811000111"}}
BANJARBARU = {"regency": "6372", "exploitation_location": "abroad", "country": "MY"}


@dataclass
class System:
    running: Running
    profile: Path
    expiry_case: str


def make_report(report_ref: str, **changes: Any) -> dict[str, Any]:
    """The DESIGN.md reference report with its own report_ref and event id (and any `data` changes)."""
    report = reference_report(report_ref=report_ref, **changes)
    report["id"] = str(uuid.uuid4())
    return report


async def _registered(js: JetStreamContext, report_ref: str, timeout: float = 30.0) -> str:
    sub = await js.subscribe("alur.case.>", stream="CASES", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        msg = await next_matching(sub, lambda m: json.loads(m.data)["data"].get("report_ref") == report_ref, timeout)
    finally:
        await sub.unsubscribe()
    assert msg.subject.startswith("alur.case.registered."), json.loads(msg.data)["data"].get("reasons")
    return str(json.loads(msg.data)["data"]["case_id"])


async def submit(running: Running, report: dict[str, Any]) -> str:
    """Publish `report` as BP3MI Kalsel; the id of the case intake registered for it."""
    reporter = await running.agency("bp3mi-kalsel")
    admin = await running.admin()
    try:
        await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(report).encode(),
                                           headers={"Nats-Msg-Id": report["id"]}, timeout=5)
        return await _registered(admin.jetstream(), report["data"]["report_ref"])
    finally:
        await reporter.close()
        await admin.close()


async def respond(running: Running, agency: str, referral_id: str, status: str, **extra: str) -> None:
    """Answer a referral as `agency` would: a CloudEvent on `alur.response.<agency>`, with its own NKey."""
    event = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": agency, "type": "alur.referral.response.v1",
             "time": "2026-11-20T09:00:00+08:00", "datacontenttype": "application/json",
             "data": {"referral_id": referral_id, "status": status, **extra}}
    client = await running.agency(agency)
    try:
        await client.jetstream().publish(f"alur.response.{agency}", json.dumps(event).encode(),
                                         headers={"Nats-Msg-Id": event["id"]}, timeout=5)
    finally:
        await client.close()


async def kv_value(js: JetStreamContext, bucket: str, key: str, predicate: Callable[[Any], bool] = lambda _: True,
                   timeout: float = 30.0) -> Any:
    """The first value of `bucket[key]` (current or coming) for which `predicate` holds, by watching the key."""
    watcher = await (await js.key_value(bucket)).watch(key)
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {bucket}/{key}")
            entry = await watcher.updates(timeout=remaining)
            if entry is not None and entry.value:
                value = json.loads(entry.value)
                if predicate(value):
                    return value
    finally:
        await watcher.stop()


async def routed(js: JetStreamContext, case_id: str) -> dict[str, Any]:
    """The case's referral record, once routing saved it and published every referral on it (routing saves
    the record first, then publishes)."""
    record = dict(await kv_value(js, "case-referrals", case_id))

    async def all_published() -> bool:
        published = {r["referral_id"] for r in await requested_of(js, case_id)}
        return set(record["referrals"]) <= published
    await wait_for(all_published)
    return record


async def requested_of(js: JetStreamContext, case_id: str) -> list[dict[str, Any]]:
    """Every `alur.referral.requested` event of the case in REFERRALS, oldest first (with `_subject`)."""
    found = []
    async for msg in scan(js, "REFERRALS", "alur.referral.requested.*"):
        data = json.loads(msg.data)["data"]
        if data["case_id"] == case_id:
            found.append(data | {"_subject": msg.subject})
    return found


@contextlib.asynccontextmanager
async def admin_js(running: Running) -> AsyncIterator[JetStreamContext]:
    client = await running.admin()
    try:
        yield client.jetstream()
    finally:
        await client.close()


@contextlib.asynccontextmanager
async def requested_events(js: JetStreamContext) -> AsyncIterator[Any]:
    """An ordered consumer over every `alur.referral.requested` event, from the stream's start."""
    sub = await js.subscribe("alur.referral.requested.*", stream="REFERRALS", ordered_consumer=True,
                             deliver_policy=DeliverPolicy.ALL)
    try:
        yield sub
    finally:
        await sub.unsubscribe()


def replacing(referral_id: str) -> Callable[[Any], bool]:
    return lambda m: json.loads(m.data)["data"].get("replaces") == referral_id


def log_events(running: Running, service: str = "routing") -> list[dict[str, Any]]:
    path = running.data_dir / f"{service}.log"
    events = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


async def log_event(running: Running, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0,
                    after: int = 0) -> dict[str, Any]:
    """The first routing log line (from line `after` on) for which `predicate` holds (a file: it is polled)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        for event in log_events(running)[after:]:
            if predicate(event):
                return event
        await asyncio.sleep(0.2)
    raise AssertionError("timed out waiting for a routing log line")


async def cli_json(running: Running, *args: str) -> Any:
    result = await asyncio.to_thread(running.cli, *args)
    return json.loads(result.stdout)


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one step, so the watcher never reads it half written."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def assert_no_victim_data(text: str) -> None:
    for secret in CONFIDENTIAL:
        assert secret not in text, f"confidential text found: {secret!r}"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("routing-service")
    profile = root / "profile"
    shutil.copytree(REPO / "deploy" / "kalsel", profile)
    data_dir = root / "alur"
    running = start_alur(data_dir, env=alur_env(data_dir, ALUR_PROFILE_DIR=str(profile),
                                                ALUR_RULES_VALIDATION_TIMEOUT=str(VETTING_TIMEOUT)))
    try:
        expiry_case = asyncio.run(submit(running, make_report("ROUTE-EXPIRE-1")))
        yield System(running, profile, expiry_case)
    finally:
        if running.process.poll() is None:
            stop_alur(running)


# ---------------------------------------------------------------- decision record and `alur trace`


async def test_trace_shows_the_decision_record_and_the_timeline_in_order(system: System) -> None:
    running = system.running
    case_id = await submit(running, make_report("ROUTE-TRACE-1"))
    async with admin_js(running) as js:
        record = await routed(js, case_id)
        requested = await requested_of(js, case_id)
    trace = await cli_json(running, "trace", case_id, "--json")

    decision = trace["decision"]
    assert decision["case_id"] == case_id and decision["trigger"] == "alur.case.registered.v1"
    assert {r["ruleset_version"] for r in requested} == {decision["ruleset_version"]}
    assert decision["input_hash"].startswith("sha256:") and len(decision["input_hash"]) == len("sha256:") + 64
    assert {"uptd-ppa-child", "uptd-ppa-female", "police-investigation", "police-child", "health-medical",
            "health-psychological", "social-shelter", "migrant-worker-protection", "legal-aid"} <= set(decision["fired"])
    assert "labour-inspection" not in decision["fired"]
    assert decision["withheld"] == [] and trace["withheld"] == []
    assert {r["referral_id"] for r in decision["referrals"]} == {r["referral_id"] for r in requested}
    assert set(record["referrals"]) == {r["referral_id"] for r in requested}
    for planned in decision["referrals"]:  # the stored record keeps no case view (personal data)
        assert "case" not in planned and planned["reasons"]
    assert trace["decisions"][-1]["input_hash"] == decision["input_hash"]

    events = trace["events"]
    assert events[0]["subject"] == "alur.case.registered.6371" and events[0]["type"] == "alur.case.registered.v1"
    assert [e["time"] for e in events] == sorted(e["time"] for e in events)
    traced_requests = [e for e in events if e["type"] == "alur.referral.requested.v1"]
    # an unanswered referral expires and is rerouted at this SLA scale: a slow trace may show its replacement
    assert {e["referral_id"] for e in traced_requests if not e.get("replaces")} == {
        r["referral_id"] for r in requested if not r.get("replaces")}
    for e in traced_requests:
        assert e["ruleset_version"] == decision["ruleset_version"] and e["rules"]
        assert e["subject"] == f"alur.referral.requested.{e['agency']}"
    # Every event of another referral (delivery, reminders) comes after the request it follows.
    position = {e["referral_id"]: i for i, e in enumerate(events) if e["type"] == "alur.referral.requested.v1"}
    for i, e in enumerate(events):
        if e.get("referral_id") and e["type"] != "alur.referral.requested.v1":
            assert i > position[e["referral_id"]], e["subject"]

    text = (await asyncio.to_thread(running.cli, "trace", case_id)).stdout
    assert f"decision: ruleset {decision['ruleset_version']}" in text and "uptd-ppa-child" in text
    assert_no_victim_data(json.dumps(trace) + text + running.logs())


# ---------------------------------------------------------------- consent


async def test_referrals_withheld_for_want_of_consent_are_visible_on_the_case(system: System) -> None:
    running = system.running
    consent = {"share_with": ["uptd_ppa", "police"], "recorded_by": "bp3mi-kalsel/officer-17"}
    case_id = await submit(running, make_report("ROUTE-CONSENT-1", victim=ADULT_FEMALE, consent=consent))
    async with admin_js(running) as js:
        record = await routed(js, case_id)
        requested = await requested_of(js, case_id)

    assert {(r["agency_type"], r["service"]) for r in requested} == {
        ("uptd_ppa", "case_management"), ("police", "investigation")}
    assert not any(reason["override"] for r in requested for reason in r["reasons"])  # an adult: no law overrides

    trace = await cli_json(running, "trace", case_id, "--json")
    withheld = {(w["agency_type"], w["service"]): w for w in trace["withheld"]}
    assert {("health", "medical"), ("health", "psychological"), ("social_services", "shelter"),
            ("migrant_worker_protection", "migrant_worker_protection"), ("legal_aid", "legal_aid")} <= set(withheld)
    assert not {"uptd_ppa", "police"} & {t for t, _ in withheld}
    for w in withheld.values():
        assert w["reason"].startswith(f"consent does not cover {w['agency_type']}") and w["rule_ids"], w
    assert withheld[("health", "medical")]["rule_ids"] == ["health-medical"]
    assert trace["withheld"] == record["withheld"]
    assert {(w["agency_type"], w["service"]) for w in trace["decision"]["withheld"]} == set(withheld)
    text = (await asyncio.to_thread(running.cli, "trace", case_id)).stdout
    assert "withheld health:medical: consent does not cover health" in " ".join(text.split())


# ---------------------------------------------------------------- agency resolution, live registry


async def test_a_disabled_agency_is_skipped_live(system: System) -> None:
    running = system.running
    first = await submit(running, make_report("ROUTE-REGISTRY-0"))
    async with admin_js(running) as js:
        await routed(js, first)
        before = {r["agency_type"]: r["agency"] for r in await requested_of(js, first)}
    assert before["uptd_ppa"] == "uptd-ppa-banjarmasin"

    await asyncio.to_thread(running.cli, "agency", "disable", "uptd-ppa-banjarmasin")
    try:
        case_id = await submit(running, make_report("ROUTE-REGISTRY-1"))
        async with admin_js(running) as js:
            await routed(js, case_id)
            requested = {r["agency_type"]: r for r in await requested_of(js, case_id)}
        assert requested["uptd_ppa"]["agency"] == "uptd-ppa-kalsel"
        assert requested["uptd_ppa"]["resolution"] == "provincial agency"
        assert requested["police"]["agency"] == "polresta-banjarmasin"  # the rest of the regency is unchanged
    finally:
        await asyncio.to_thread(running.cli, "agency", "add", "uptd-ppa-banjarmasin", "--type", "uptd_ppa",
                                "--regions", "6371", "--name", "UPTD PPA Kota Banjarmasin")
    shown = await cli_json(running, "agency", "show", "uptd-ppa-banjarmasin", "--json")
    assert shown["enabled"] is True


# ---------------------------------------------------------------- idempotence


async def test_a_replayed_case_event_makes_no_second_referral(system: System) -> None:
    running = system.running
    case_id = await submit(running, make_report("ROUTE-REPLAY-1"))
    async with admin_js(running) as js:
        await routed(js, case_id)
        before = [r for r in await requested_of(js, case_id) if not r.get("replaces")]
        original = None
        async for msg in scan(js, "CASES", "alur.case.registered.*"):
            if json.loads(msg.data)["data"]["case_id"] == case_id:
                original = msg
        assert original is not None
        ack = await js.publish(original.subject, original.data, headers={"Nats-Msg-Id": f"replay-{uuid.uuid4()}"},
                               timeout=5)
        assert not ack.duplicate  # a new message id: JetStream keeps it, so routing must be idempotent itself

        replayed = await kv_value(js, "decisions", case_id, lambda d: bool(d["already_referred"]))
        assert replayed["referrals"] == []
        assert {r["referral_id"] for r in replayed["already_referred"]} == {r["referral_id"] for r in before}
        await kv_value(js, "case-referrals", case_id)  # saved again after the replay's (empty) decision
        after = [r for r in await requested_of(js, case_id) if not r.get("replaces")]
    assert [r["referral_id"] for r in after] == [r["referral_id"] for r in before]
    trace = await cli_json(running, "trace", case_id, "--json")
    assert [d["referrals"] == [] for d in trace["decisions"]] == [False, True]


# ---------------------------------------------------------------- reroute


async def test_rejected_referral_goes_to_the_next_agency_then_the_secretariat(system: System) -> None:
    running = system.running
    case_id = await submit(running, make_report("ROUTE-REJECT-1", location=BANJARBARU))
    async with admin_js(running) as js, requested_events(js) as sub:
        await routed(js, case_id)
        first = next(r for r in await requested_of(js, case_id) if r["agency_type"] == "uptd_ppa")
        assert first["agency"] == "uptd-ppa-banjarbaru"

        await respond(running, "uptd-ppa-banjarbaru", first["referral_id"], "rejected", reason="no_capacity_waitlist")
        second = json.loads((await next_matching(sub, replacing(first["referral_id"]))).data)["data"]
        assert second["agency"] == "uptd-ppa-kalsel" and second["case_id"] == case_id
        assert (second["agency_type"], second["service"], second["priority"]) == (
            first["agency_type"], first["service"], first["priority"])
        assert [r["rule_id"] for r in second["reasons"]] == [r["rule_id"] for r in first["reasons"]]
        assert second["ruleset_version"] and second["referral_id"] != first["referral_id"]

        await respond(running, "uptd-ppa-kalsel", second["referral_id"], "rejected", reason="no_capacity_waitlist")
        third = json.loads((await next_matching(sub, replacing(second["referral_id"]))).data)["data"]
        assert third["agency"] == "gt-kalsel" and third["agency_type"] == "uptd_ppa"
        assert "secretariat" in third["resolution"]
        assert "identity" not in json.dumps(third["case"]) and "narrative" not in third["case"]

        # The secretariat declines too: nobody is left, and no agency that declined is asked again.
        await respond(running, "gt-kalsel", third["referral_id"], "rejected", reason="out_of_mandate")
        await log_event(running, lambda e: e.get("event") == "no agency left to reroute to"
                        and e.get("referral_id") == third["referral_id"])
        record = await kv_value(js, "case-referrals", case_id,
                                lambda r: r["referrals"][third["referral_id"]].get("rerouted_to") == "none")
    assert record["declined"]["uptd_ppa:case_management"] == ["gt-kalsel", "uptd-ppa-banjarbaru", "uptd-ppa-kalsel"]
    chain = [r for r in await _requested(running, case_id) if r["agency_type"] == "uptd_ppa"]
    assert [r["agency"] for r in chain] == ["uptd-ppa-banjarbaru", "uptd-ppa-kalsel", "gt-kalsel"]
    trace = await cli_json(running, "trace", case_id, "--json")
    rejected = [e for e in trace["events"] if e["type"] == "alur.referral.rejected.v1"]
    assert [(e["agency"], e["reason"]) for e in rejected] == [
        ("uptd-ppa-banjarbaru", "no_capacity_waitlist"), ("uptd-ppa-kalsel", "no_capacity_waitlist"),
        ("gt-kalsel", "out_of_mandate")]
    chain_ids = {first["referral_id"], second["referral_id"]}  # the case's other referrals may expire and reroute
    replaced = [e for e in trace["events"]
                if e["type"] == "alur.referral.requested.v1" and e.get("replaces") in chain_ids]
    assert [(e["agency"], e["replaces"]) for e in replaced] == [
        ("uptd-ppa-kalsel", first["referral_id"]), ("gt-kalsel", second["referral_id"])]


async def _requested(running: Running, case_id: str) -> list[dict[str, Any]]:
    async with admin_js(running) as js:
        return await requested_of(js, case_id)


async def test_redirected_referral_goes_to_the_agency_named(system: System) -> None:
    running = system.running
    case_id = await submit(running, make_report("ROUTE-REDIRECT-1", location=BANJARBARU))
    async with admin_js(running) as js, requested_events(js) as sub:
        await routed(js, case_id)
        police = next(r for r in await requested_of(js, case_id) if r["agency_type"] == "police")
        assert police["agency"] == "polres-banjarbaru"
        # Without a name the next police agency would be the provincial Polda; the one named wins.
        await respond(running, "polres-banjarbaru", police["referral_id"], "redirected", redirect_to="polres-banjar",
                      note="the suspects operate from Martapura")
        moved = json.loads((await next_matching(sub, replacing(police["referral_id"]))).data)["data"]
    assert moved["agency"] == "polres-banjar" and moved["case_id"] == case_id
    assert (moved["agency_type"], moved["service"]) == ("police", "investigation")
    assert moved["resolution"] == "redirected by polres-banjarbaru to polres-banjar"
    trace = await cli_json(running, "trace", case_id, "--json")
    redirected = [e for e in trace["events"] if e["type"] == "alur.referral.redirected.v1"]
    assert [(e["agency"], e["redirect_to"]) for e in redirected] == [("polres-banjarbaru", "polres-banjar")]


async def test_a_redirect_consent_does_not_allow_goes_to_the_secretariat(system: System) -> None:
    """Issue 17: a child's legal override to UPTD PPA does not follow a redirect to another agency type."""
    running = system.running
    consent = {"share_with": "none", "recorded_by": "bp3mi-kalsel/officer-17"}
    case_id = await submit(running, make_report("ROUTE-REDIRECT-2", consent=consent))
    async with admin_js(running) as js, requested_events(js) as sub:
        await routed(js, case_id)
        uptd = next(r for r in await requested_of(js, case_id) if r["agency_type"] == "uptd_ppa")
        assert uptd["agency"] == "uptd-ppa-banjarmasin" and uptd["reasons"][0]["override"] is True
        assert uptd["case"]["victim"]["identity"]  # UPTD PPA itself may see who the child is
        await respond(running, "uptd-ppa-banjarmasin", uptd["referral_id"], "redirected", redirect_to="kemlu-pwni")
        moved_msg = await next_matching(sub, replacing(uptd["referral_id"]))
        moved = json.loads(moved_msg.data)["data"]
    assert moved_msg.subject == "alur.referral.requested.gt-kalsel"
    assert moved["agency"] == "gt-kalsel" and (moved["agency_type"], moved["service"]) == ("uptd_ppa", "case_management")
    assert "identity" not in moved["case"]["victim"] and "narrative" not in moved["case"]
    assert_no_victim_data(json.dumps(moved))
    expected = ("redirected by uptd-ppa-banjarmasin to kemlu-pwni refused: consent (share_with: none) does not "
                "cover foreign_affairs; the legal override covers uptd_ppa only; no rule refers case_management "
                "to foreign_affairs: sent to the task-force secretariat")
    assert moved["resolution"] == expected
    trace = await cli_json(running, "trace", case_id, "--json")
    [traced] = [e for e in trace["events"] if e.get("replaces") == uptd["referral_id"]]
    assert (traced["agency"], traced["resolution"]) == ("gt-kalsel", expected)


async def test_an_expired_referral_is_rerouted(system: System) -> None:
    """The case submitted at module start: nobody answers, notify expires it, routing reroutes it."""
    running = system.running
    async with admin_js(running) as js:
        expired_sub = await js.subscribe("alur.referral.expired.*", stream="REFERRALS", ordered_consumer=True,
                                         deliver_policy=DeliverPolicy.ALL)
        expired = json.loads((await next_matching(
            expired_sub, lambda m: json.loads(m.data)["data"]["case_id"] == system.expiry_case, timeout=60)).data)["data"]
        await expired_sub.unsubscribe()
        async with requested_events(js) as sub:
            moved = json.loads((await next_matching(sub, replacing(expired["referral_id"]))).data)["data"]
    assert moved["case_id"] == system.expiry_case and moved["agency"] != expired["agency"]
    assert moved["resolution"].startswith(f"expired by {expired['agency']}")
    # All of a case's referrals expire together; their reroutes take turns instead of colliding.
    assert not [e for e in log_events(running) if "RecordConflict" in str(e.get("error"))]
    assert not [e for e in log_events(running) if e.get("event") == "dead-lettered"]
    assert_no_victim_data(running.logs())


# ---------------------------------------------------------------- hot reload of the rule pack


async def test_rule_pack_hot_reload_refuses_a_bad_pack_and_swaps_in_a_good_one(system: System) -> None:
    running = system.running
    rules = system.profile / "rules.yaml"
    original = rules.read_text(encoding="utf-8")
    bad = original.replace(f"version: {START_VERSION}", "version: kalsel-2026.2-bad").replace(
        """when: '"sexual_exploitation" in exploitation'""", """when: '"sexual_exploitation" in exploitaton'""", 1)
    assert bad.count("exploitaton") == 1
    mark = len(log_events(running))
    write_atomically(rules, bad)
    refused = await log_event(running, lambda e: e.get("event", "").startswith("rule pack refused"), after=mark)
    assert refused["level"] == "error" and refused["ruleset_version"] == START_VERSION
    assert any("tpks-report-to-police" in problem and "exploitaton" in problem for problem in refused["errors"])

    case_id = await submit(running, make_report("ROUTE-RELOAD-1"))
    async with admin_js(running) as js:
        await routed(js, case_id)
        assert {r["ruleset_version"] for r in await requested_of(js, case_id)} == {START_VERSION}

    # A pack that parses but fails its own test cases is refused as well.
    failing = original.replace(f"version: {START_VERSION}", "version: kalsel-2026.2-failing").replace(
        "    when: child\n    mandatory: true", "    when: child && false\n    mandatory: true", 1)
    assert failing.count("child && false") == 1
    mark = len(log_events(running))
    write_atomically(rules, failing)
    refused = await log_event(running, lambda e: e.get("event", "").startswith("rule pack refused"), after=mark)
    assert refused["ruleset_version"] == START_VERSION
    assert any(problem.startswith("test 'a child goes to UPTD PPA") and "uptd_ppa/case_management: not made" in problem
               for problem in refused["errors"]), refused["errors"]

    new_version = "kalsel-2026.2"
    good = original.replace(f"version: {START_VERSION}", f"version: {new_version}").replace(
        "description: Default referral rules", "description: Reviewed referral rules", 1)
    mark = len(log_events(running))
    write_atomically(rules, good)
    reloaded = await log_event(running, lambda e: e.get("event") == "rule pack reloaded"
                               and e.get("ruleset_version") == new_version, after=mark)
    assert reloaded["level"] == "info"

    case_id = await submit(running, make_report("ROUTE-RELOAD-2"))
    async with admin_js(running) as js:
        await routed(js, case_id)
        requested = await requested_of(js, case_id)
        decision = await kv_value(js, "decisions", case_id)
    assert requested and {r["ruleset_version"] for r in requested} == {new_version}
    assert decision["ruleset_version"] == new_version


def slow_rules(count: int) -> str:
    """`count` rules whose condition is as slow as the load-time bounds allow (a few ms a run, never true)."""
    items = "[" + ",".join("1" for _ in range(90)) + "]"
    when = f"{items}.exists(age, {items}.exists(sex, age < 0))"
    return "".join(
        f"\n  - id: slow-{i}\n    description: Slow but within the bounds.\n    legal_basis: test\n"
        f"    when: '{when}'\n    refer:\n      - {{agency_type: police, service: investigation}}\n"
        for i in range(count)
    )


def _vetting_workers() -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and b"services.routing.vetting" in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
    return found


async def test_a_pack_whose_vetting_times_out_is_refused_while_routing_goes_on(system: System) -> None:
    """Issue 17: a new pack is vetted in a worker process with a timeout; the event loop keeps routing with
    the old pack meanwhile, and the worker is stopped when the time is up."""
    running = system.running
    rules, tests = system.profile / "rules.yaml", system.profile / "rules_tests.yaml"
    original_rules = (REPO / "deploy" / "kalsel" / "rules.yaml").read_text(encoding="utf-8")
    original_tests = tests.read_text(encoding="utf-8")
    base = "kalsel-2026.5"
    mark = len(log_events(running))
    write_atomically(rules, original_rules.replace(f"version: {START_VERSION}", f"version: {base}"))
    await log_event(running, lambda e: e.get("event") == "rule pack reloaded" and e.get("ruleset_version") == base,
                    after=mark)

    # About 100 slow rules x 400 test cases: minutes of work, each rule within the bounds.
    header, _, cases = original_tests.partition("\ntests:\n")
    write_atomically(tests, f"{header}\ntests:\n" + cases * 10)
    slow = original_rules.replace(f"version: {START_VERSION}", "version: kalsel-2026.6-slow") + slow_rules(100)
    mark = len(log_events(running))
    write_atomically(rules, slow)
    try:
        await log_event(running, lambda e: e.get("event", "").startswith("rule pack changed")
                        and e.get("timeout") == VETTING_TIMEOUT, after=mark)
        case_id = await submit(running, make_report("ROUTE-VETTING-1"))  # while the worker runs
        async with admin_js(running) as js:
            await routed(js, case_id)
            assert {r["ruleset_version"] for r in await requested_of(js, case_id)} == {base}
        refused = await log_event(
            running, lambda e: e.get("event", "").startswith("rule pack refused")
            and any("validation took longer than" in p for p in e.get("errors", [])), after=mark, timeout=60)
        assert refused["ruleset_version"] == base
        assert refused["errors"] == [f"validation took longer than {VETTING_TIMEOUT} s: the pack is refused"]
        await wait_for(lambda: not _vetting_workers(), timeout=30)  # killed, not left to run

        case_id = await submit(running, make_report("ROUTE-VETTING-2"))
        async with admin_js(running) as js:
            await routed(js, case_id)
            assert {r["ruleset_version"] for r in await requested_of(js, case_id)} == {base}
    finally:  # the module's profile as it started
        mark = len(log_events(running))
        write_atomically(tests, original_tests)
        write_atomically(rules, original_rules)
    await log_event(running, lambda e: e.get("event") == "rule pack reloaded"
                    and e.get("ruleset_version") == START_VERSION, after=mark, timeout=60)
