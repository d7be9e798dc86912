"""Intake at the service level (issue 3): a real `alur up` (embedded secure broker, three service processes).

One `alur up` serves the whole module; every test uses its own report refs, NIKs and pseudonyms, so tests do
not see each other's cases. Nothing here sleeps for a fixed time: tests await events, or poll consumer state
with a deadline.

- bad inputs over NATS (a table and a few hypothesis-generated bodies): each yields
  `alur.case.rejected.<agency>` whose reasons equal the pure core's, the input stays in REPORTS, no dead letter;
- one case per report: an exact redelivery, the same report_ref under a new event id, and a crash between
  storing a case and publishing it each yield one `alur.case.registered` and one set of referrals;
- follow-ups merge, publish `alur.case.updated.<regency>` and refer only the new need; an unknown case is refused;
- the same NIK from two agencies is linked (`possible_duplicates`), never merged, and its keyed hash stays in intake;
- the HTTP door: health, readiness, 401, the token (not the body) names the reporter, 422/400 with the same reasons;
- `alur report regions` counts registered cases and suppresses small groups;
- (last) every log line of the run, `alur up`'s output, rejections and dead letters carry no victim identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from alur import ops
from alur.regions import WITA, RegionCounts, valid_cases
from contracts.envelope import derived_id
from contracts.events import Case
from domain.cases import new_case
from domain.validation import ParsedReport, Rejection, parse_report
from runtime.profile import load_registry_file
from services.intake.matching import match_keys
from tests.conftest import (
    CONFIDENTIAL,
    Running,
    alur_stack,
    reference_report,
    stop_alur,
)
from tests.support import next_matching

KNOWN_AGENCIES = {a.id for a in load_registry_file().agencies.values() if a.enabled}
REPORTER = "polda-kalsel"
REASON_SHAPE = r"^[A-Za-z_][\w.\[\]<> ]*: \S"
IDLE_TIMEOUT = 20.0
NIKS_USED: set[str] = {"6371015507100003"}
"""Every NIK a test sends; the log test asserts none of them reaches a log, a rejection or a dead letter."""


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One `alur up` for the module (starting one takes seconds; tests keep apart by their own refs)."""
    yield from alur_stack(tmp_path_factory.mktemp("intake-service") / "alur")



def _event(data: dict[str, Any], *, source: str = REPORTER) -> dict[str, Any]:
    event = reference_report()
    event.update(id=str(uuid.uuid4()), source=source, data=data)
    return event


def _report(report_ref: str, *, source: str = REPORTER, **changes: Any) -> dict[str, Any]:
    """The reference report with its own ref and event id (and any `data` changes)."""
    event = reference_report(report_ref=report_ref, **changes)
    event.update(id=str(uuid.uuid4()), source=source)
    return event


def _victim(pseudonym: str, nik: str | None = None, age: int = 16) -> dict[str, Any]:
    victim = reference_report()["data"]["victim"]
    victim.update(pseudonym=pseudonym, age=age)
    victim["identity"] = {"nik": nik} if nik else None
    if nik:
        NIKS_USED.add(nik)
    return victim


async def _send(client: Client, agency: str, body: bytes | dict[str, Any], msg_id: str | None = None) -> Any:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    if msg_id is None:
        msg_id = body["id"] if isinstance(body, dict) else str(uuid.uuid4())
    return await client.jetstream().publish(f"alur.report.{agency}", payload, headers={"Nats-Msg-Id": msg_id},
                                            timeout=5)


async def _subscribe(js: JetStreamContext, stream: str, subject: str) -> Any:
    """An ordered consumer of new messages only: made before publishing, it sees what the test causes."""
    return await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW)


def _data(msg: Any) -> dict[str, Any]:
    return json.loads(msg.data)["data"]  # type: ignore[no-any-return]


async def _consumed(js: JetStreamContext, stream: str, durable: str, seq: int, timeout: float = IDLE_TIMEOUT) -> None:
    """Wait until `durable` has acknowledged everything up to stream sequence `seq` (polled, with a deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await js.consumer_info(stream, durable)
        # everything up to `seq` acknowledged, or nothing left for this consumer (when `seq` is not its subject)
        if (info.ack_floor.stream_seq >= seq or info.num_pending == 0) and info.num_ack_pending == 0:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{stream}/{durable} did not get past seq {seq}: {info.ack_floor}, "
                                 f"pending {info.num_pending}, ack pending {info.num_ack_pending}")
        await asyncio.sleep(0.05)


async def _events(js: JetStreamContext, stream: str, subject: str) -> list[dict[str, Any]]:
    """Every event on `subject` in `stream`, oldest first, with its subject and stream sequence."""
    out = []
    async for msg in ops.scan(js, stream, subject):
        event = json.loads(msg.data)
        out.append(event | {"_subject": msg.subject, "_seq": msg.metadata.sequence.stream})
    return out


async def _case_events(js: JetStreamContext, case_id: str, kind: str = "registered") -> list[dict[str, Any]]:
    return [e for e in await _events(js, "CASES", f"alur.case.{kind}.*") if e["data"]["case_id"] == case_id]


async def _referrals(js: JetStreamContext, case_id: str) -> list[dict[str, Any]]:
    """`alur.referral.requested` data of a case as routing decided it (every one published, redeliveries
    included), without the replacements of referrals that expired unanswered at this stack's SLA scale."""
    events = await _events(js, "REFERRALS", "alur.referral.requested.*")
    return [e["data"] for e in events if e["data"]["case_id"] == case_id and not e["data"].get("replaces")]


async def _routed(js: JetStreamContext, case_event_msg: Any) -> None:
    """Routing has decided (and published every referral of) this case event."""
    await _consumed(js, "CASES", "routing", case_event_msg.metadata.sequence.stream)


async def _dlq_count(js: JetStreamContext) -> int:
    return (await js.stream_info("DLQ")).state.messages


def _assert_one_set(referrals: list[dict[str, Any]]) -> None:
    ids = [r["referral_id"] for r in referrals]
    assert ids and len(ids) == len(set(ids)), f"a referral was requested twice: {sorted(ids)}"
    pairs = [(r["agency_type"], r["service"]) for r in referrals]
    assert len(pairs) == len(set(pairs)), f"the same service was referred twice: {sorted(pairs)}"


# ---------------------------------------------------------------- bad inputs over NATS


def _without(path: str) -> bytes:
    event = _report(f"BAD-{path.replace('.', '-')}")
    *parents, last = path.split(".")
    node = event
    for part in parents:
        node = node[part]
    del node[last]
    return json.dumps(event).encode()


def _with(report_ref: str, **changes: Any) -> bytes:
    return json.dumps(_report(report_ref, **changes)).encode()


BAD_INPUTS: list[tuple[str, bytes, str, str | None]] = [
    # (name, body, a field the reasons must name, the report_ref the rejection must carry)
    ("not-json", b"this is not json {", "body", None),
    ("json-array", b"[1, 2, 3]", "body", None),
    ("not-a-cloudevent", json.dumps(reference_report()["data"]).encode(), "specversion", None),
    ("missing-victim", _without("data.victim"), "data.victim", "BAD-data-victim"),
    ("unknown-regency", _with("BAD-REGENCY", location={"regency": "9999", "exploitation_location": "abroad"}),
     "data.location.regency", "BAD-REGENCY"),
    ("age-as-text", _with("BAD-AGE", victim=_victim("B-AGE") | {"age": "16"}), "data.victim.age", "BAD-AGE"),
    ("wrong-type", json.dumps(_report("BAD-TYPE") | {"type": "alur.report.deleted.v1"}).encode(), "type",
     "BAD-TYPE"),
    ("nik-as-report-ref", _with("6371015507100003"), "data.report_ref", None),
    ("unknown-need", _with("BAD-NEED", needs=["medical", "massage"]), "data.needs[1]", "BAD-NEED"),
]

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_PATHS = [("data", "victim", "age"), ("data", "location"), ("data", "needs"), ("data", "consent", "share_with"),
          ("data", "victim", "identity", "nik"), ("data", "report_ref"), ("data",), ("specversion",), ("time",)]


def _generated_bad_bodies(n: int = 6) -> list[bytes]:
    """A few hypothesis-generated bad bodies (derandomized: the same ones every run), each refused by the core."""
    found: list[bytes] = []

    @settings(max_examples=200, phases=[Phase.generate])
    @given(path=st.sampled_from(_PATHS), value=_json, junk=st.binary(max_size=40), raw=st.booleans())
    def collect(path: tuple[str, ...], value: Any, junk: bytes, raw: bool) -> None:
        if len(found) >= n:
            return
        if raw:
            body = junk
        else:
            event: Any = reference_report()
            node = event
            for part in path[:-1]:
                node = node.setdefault(part, {}) if isinstance(node, dict) else node
            if isinstance(node, dict):
                node[path[-1]] = value
            body = json.dumps(event).encode()
        if body not in found and isinstance(parse_report(body, reporter=REPORTER, known_agencies=KNOWN_AGENCIES),
                                            Rejection):
            found.append(body)

    collect()
    assert len(found) == n
    return found


async def test_bad_inputs_over_nats_are_rejected_with_reasons_and_kept(running: Running, js: JetStreamContext) -> None:
    generated = [(f"generated-{i}", body, "", None) for i, body in enumerate(_generated_bad_bodies())]
    rejected = await _subscribe(js, "CASES", f"alur.case.rejected.{REPORTER}")
    dead_before = await _dlq_count(js)
    reporter = await running.agency(REPORTER)
    sent: dict[int, tuple[str, bytes, str, str | None]] = {}
    for name, body, field, ref in [*BAD_INPUTS, *generated]:
        ack = await _send(reporter, REPORTER, body)
        assert ack.stream == "REPORTS" and not ack.duplicate, name
        sent[ack.seq] = (name, body, field, ref)

    seen: dict[int, dict[str, Any]] = {}
    while set(sent) - set(seen):
        msg = await next_matching(rejected, lambda m: _data(m).get("stream_seq") in sent)
        event = json.loads(msg.data)
        assert event["type"] == "alur.case.rejected.v1" and event["source"] == "alur/intake"
        seen[event["data"]["stream_seq"]] = event["data"]

    for seq, (name, body, field, ref) in sent.items():
        data = seen[seq]
        core = parse_report(body, reporter=REPORTER, known_agencies=KNOWN_AGENCIES)
        assert isinstance(core, Rejection), name
        assert data["reasons"] == core.reasons, name
        assert data["reporter"] == REPORTER and data.get("report_ref") == core.report_ref, name
        assert all(re.match(REASON_SHAPE, r) for r in data["reasons"]), (name, data["reasons"])
        if field:
            assert data.get("report_ref") == ref, name
            assert any(r.startswith(f"{field}:") for r in data["reasons"]), (name, data["reasons"])
        kept = await js.get_msg("REPORTS", seq)
        assert (kept.data or b"") == body and kept.subject == f"alur.report.{REPORTER}", name

    await _consumed(js, "REPORTS", "intake", max(sent))
    assert await _dlq_count(js) == dead_before, "a bad input reached the DLQ"
    await reporter.close()


async def test_two_bad_inputs_sharing_an_event_id_each_get_a_rejection(running: Running, js: JetStreamContext) -> None:
    """The same event id on two different stored inputs (no Nats-Msg-Id dedup) must not swallow one rejection."""
    rejected = await _subscribe(js, "CASES", f"alur.case.rejected.{REPORTER}")
    reporter = await running.agency(REPORTER)
    event_id = str(uuid.uuid4())
    first = _report("SHARED-ID-1", risk="extreme") | {"id": event_id}
    second = _report("SHARED-ID-2", needs=["spa"]) | {"id": event_id}
    acks = [await _send(reporter, REPORTER, body, msg_id=str(uuid.uuid4())) for body in (first, second)]
    refs = {}
    for _ in acks:
        msg = await next_matching(rejected, lambda m: _data(m).get("stream_seq") in {a.seq for a in acks})
        refs[_data(msg)["stream_seq"]] = _data(msg)["report_ref"]
    assert refs == {acks[0].seq: "SHARED-ID-1", acks[1].seq: "SHARED-ID-2"}
    await reporter.close()


# ---------------------------------------------------------------- one case per report


async def test_redelivery_and_a_resent_report_ref_make_one_case_and_one_set_of_referrals(
    running: Running, js: JetStreamContext
) -> None:
    cases = await _subscribe(js, "CASES", "alur.case.registered.*")
    reporter = await running.agency("bp3mi-kalsel")
    report = _report("DEDUP-1", source="bp3mi-kalsel", victim=_victim("DD-1", "6371010101900001", age=30))
    first = await _send(reporter, "bp3mi-kalsel", report)
    exact = await _send(reporter, "bp3mi-kalsel", report)  # the same event, the same Nats-Msg-Id
    assert exact.duplicate and exact.seq == first.seq
    case_id = running.case_id("bp3mi-kalsel", "DEDUP-1")

    registered = await next_matching(cases, lambda m: _data(m)["case_id"] == case_id)
    assert _data(registered)["reporter"] == "bp3mi-kalsel"
    await _routed(js, registered)
    referrals = await _referrals(js, case_id)
    _assert_one_set(referrals)

    resent = report | {"id": str(uuid.uuid4())}  # the same report_ref again under a new event id
    again = await _send(reporter, "bp3mi-kalsel", resent)
    assert not again.duplicate and again.seq > first.seq
    await _consumed(js, "REPORTS", "intake", again.seq)
    # intake republished the registered event under its derived id: CASES dropped it, routing saw nothing new
    events = await _case_events(js, case_id)
    assert len(events) == 1 and events[0]["id"] == json.loads(registered.data)["id"]
    info = await js.stream_info("CASES")
    await _consumed(js, "CASES", "routing", info.state.last_seq)
    assert await _referrals(js, case_id) == referrals
    await reporter.close()


async def test_a_crash_between_storing_and_publishing_yields_one_case(running: Running, js: JetStreamContext) -> None:
    """Intake stored the case in KV and died before publishing: the redelivery publishes it, once."""
    report = _report("CRASH-1", source="bp3mi-kalsel", victim=_victim("CR-1", "6371010101900002", age=25))
    parsed = parse_report(json.dumps(report).encode(), reporter="bp3mi-kalsel", known_agencies=KNOWN_AGENCIES)
    assert isinstance(parsed, ParsedReport)
    stored = new_case(parsed, datetime(2026, 11, 20, 0, 15, tzinfo=UTC), key=running.secrets.case_key().encode())
    kv = await js.key_value("cases")
    await kv.create(stored.case_id, stored.model_dump_json().encode())

    cases = await _subscribe(js, "CASES", "alur.case.registered.*")
    reporter = await running.agency("bp3mi-kalsel")
    ack = await _send(reporter, "bp3mi-kalsel", report)
    registered = await next_matching(cases, lambda m: _data(m)["case_id"] == stored.case_id)
    published = Case.model_validate(_data(registered)["case"])
    assert published.registered_at == stored.registered_at  # the stored case, not a second one
    assert published.case_id == stored.case_id == running.case_id("bp3mi-kalsel", "CRASH-1")
    await _routed(js, registered)
    first = await _referrals(js, stored.case_id)
    _assert_one_set(first)
    assert {"police", "health", "migrant_worker_protection"} <= {r["agency_type"] for r in first}

    # and a second crash, after publishing but before the ack: the redelivery adds nothing
    replay = await _send(reporter, "bp3mi-kalsel", report, msg_id=f"replay-{ack.seq}")
    await _consumed(js, "REPORTS", "intake", replay.seq)
    assert len(await _case_events(js, stored.case_id)) == 1
    await _consumed(js, "CASES", "routing", (await js.stream_info("CASES")).state.last_seq)
    assert await _referrals(js, stored.case_id) == first
    await reporter.close()


# ---------------------------------------------------------------- follow-ups


async def test_follow_up_merges_and_refers_only_the_new_need(running: Running, js: JetStreamContext) -> None:
    cases = await _subscribe(js, "CASES", "alur.case.>")
    reporter = await running.agency("bp3mi-kalsel")
    await _send(reporter, "bp3mi-kalsel", _report("FOLLOW-1", source="bp3mi-kalsel",
                                                  victim=_victim("FU-1", "6371010101900003")))
    case_id = running.case_id("bp3mi-kalsel", "FOLLOW-1")
    registered = await next_matching(cases, lambda m: m.subject.startswith("alur.case.registered.")
                                     and _data(m)["case_id"] == case_id)
    await _routed(js, registered)
    before = await _referrals(js, case_id)
    _assert_one_set(before)
    assert "documents" not in {r["service"] for r in before}

    followup = _event({"report_ref": "FOLLOW-1-F1", "case_id": case_id, "needs": ["documents"]},
                      source="bp3mi-kalsel")
    await _send(reporter, "bp3mi-kalsel", followup)
    updated = await next_matching(cases, lambda m: m.subject.startswith("alur.case.updated.")
                                  and _data(m)["case_id"] == case_id)
    assert updated.subject == "alur.case.updated.6371"
    data = _data(updated)
    assert data["report_ref"] == "FOLLOW-1-F1" and data["changed"] == ["needs"]
    assert data["case"]["report_refs"] == ["FOLLOW-1", "FOLLOW-1-F1"] and data["case"]["version"] == 2
    assert "documents" in data["case"]["needs"] and "medical" in data["case"]["needs"]
    await _routed(js, updated)
    after = await _referrals(js, case_id)
    _assert_one_set(after)
    new = [r for r in after if r["referral_id"] not in {b["referral_id"] for b in before}]
    assert [(r["agency_type"], r["service"]) for r in new] == [("civil_registry", "documents")]

    # the same follow-up again (a new event id): nothing new
    again = await _send(reporter, "bp3mi-kalsel", followup | {"id": str(uuid.uuid4())})
    await _consumed(js, "REPORTS", "intake", again.seq)
    assert len(await _case_events(js, case_id, "updated")) == 1

    # a follow-up that only repeats what the case knows changes no field, but the case records it
    repeat = _event({"report_ref": "FOLLOW-1-F2", "case_id": case_id, "needs": ["medical"]}, source="bp3mi-kalsel")
    await _send(reporter, "bp3mi-kalsel", repeat)
    noop = await next_matching(cases, lambda m: m.subject.startswith("alur.case.updated.")
                               and _data(m)["report_ref"] == "FOLLOW-1-F2")
    assert _data(noop)["changed"] == [] and _data(noop)["case"]["version"] == 3
    stored = Case.model_validate_json((await (await js.key_value("cases")).get(case_id)).value)
    assert stored.report_refs == ["FOLLOW-1", "FOLLOW-1-F1", "FOLLOW-1-F2"] and stored.version == 3
    await _consumed(js, "CASES", "routing", (await js.stream_info("CASES")).state.last_seq)
    assert len(await _referrals(js, case_id)) == len(after)
    await reporter.close()


async def test_follow_up_for_an_unknown_case_is_rejected(running: Running, js: JetStreamContext) -> None:
    rejected = await _subscribe(js, "CASES", "alur.case.rejected.bp3mi-kalsel")
    reporter = await running.agency("bp3mi-kalsel")
    unknown = "case-" + "0" * 20
    ack = await _send(reporter, "bp3mi-kalsel", _event({"report_ref": "FOLLOW-X", "case_id": unknown,
                                                        "needs": ["documents"]}, source="bp3mi-kalsel"))
    msg = await next_matching(rejected, lambda m: _data(m).get("stream_seq") == ack.seq)
    data = _data(msg)
    assert data["report_ref"] == "FOLLOW-X"
    assert data["reasons"] == ["data.case_id: no case has this id"]
    assert (await js.get_msg("REPORTS", ack.seq)).data
    assert not await _case_events(js, unknown, "updated")
    await reporter.close()


# ---------------------------------------------------------------- possible duplicate victims


async def test_same_nik_from_two_agencies_is_linked_not_merged(running: Running, js: JetStreamContext) -> None:
    nik = "6303014404050007"
    cases = await _subscribe(js, "CASES", "alur.case.registered.*")
    first_ref, second_ref = "DUP-NIK-A", "DUP-NIK-B"
    bp3mi, polda = await running.agency("bp3mi-kalsel"), await running.agency("polda-kalsel")
    await _send(bp3mi, "bp3mi-kalsel", _report(first_ref, source="bp3mi-kalsel", victim=_victim("DUP-A1", nik, 19)))
    first_id = running.case_id("bp3mi-kalsel", first_ref)
    first = await next_matching(cases, lambda m: _data(m)["case_id"] == first_id)
    await _send(polda, "polda-kalsel", _report(second_ref, victim=_victim("Other-Name-7", nik, 20)))
    second_id = running.case_id("polda-kalsel", second_ref)
    second = await next_matching(cases, lambda m: _data(m)["case_id"] == second_id)

    assert _data(first)["case"]["possible_duplicates"] == []
    second_case = _data(second)["case"]
    assert second_case["possible_duplicates"] == [first_id]
    assert second_case["victim"]["pseudonym"] == "Other-Name-7" and second_case["reporter"] == "polda-kalsel"
    kv = await js.key_value("cases")
    stored_first = Case.model_validate_json((await kv.get(first_id)).value)
    assert stored_first.victim.pseudonym == "DUP-A1" and stored_first.report_refs == [first_ref]

    key = running.secrets.match_key().encode()  # what `alur up` gives intake as ALUR_MATCH_KEY
    hashes = [k.split(":", 1)[1] for k in match_keys(Case.model_validate(second_case), key)]
    matches = await js.key_value("matches")
    keys = await matches.keys()
    assert f"nik.{hashes[0]}" in keys and not any(nik in k for k in keys)
    assert json.loads((await matches.get(f"nik.{hashes[0]}")).value) == sorted([first_id, second_id])
    await _consumed(js, "CASES", "routing", second.metadata.sequence.stream)
    logs = running.logs()
    assert "possible duplicate victim flagged" in logs and second_id in logs
    assert not any(h in logs for h in hashes), "a keyed identity hash reached a log"
    status = json.loads(running.cli("status", "--json").stdout)
    assert sorted([first_id, second_id]) in status["possible_duplicates"], "the coordinator sees both cases"
    assert f"{min(first_id, second_id)} ~ {max(first_id, second_id)}" in running.cli("status").stdout
    for client in (bp3mi, polda):
        await client.close()


async def test_a_follow_up_that_adds_a_known_nik_links_the_case(running: Running, js: JetStreamContext) -> None:
    nik = "6372016606060006"
    cases = await _subscribe(js, "CASES", "alur.case.>")
    polda, uptd = await running.agency("polda-kalsel"), await running.agency("uptd-ppa-banjarbaru")
    await _send(polda, "polda-kalsel", _report("LINK-A", victim=_victim("LK-A", nik, 22)))
    first_id = running.case_id("polda-kalsel", "LINK-A")
    await next_matching(cases, lambda m: _data(m)["case_id"] == first_id)
    await _send(uptd, "uptd-ppa-banjarbaru", _report("LINK-B", source="uptd-ppa-banjarbaru",
                                                     victim=_victim("LK-B", None, 23)))
    second_id = running.case_id("uptd-ppa-banjarbaru", "LINK-B")
    registered = await next_matching(cases, lambda m: _data(m)["case_id"] == second_id)
    assert _data(registered)["case"]["possible_duplicates"] == []
    await _send(uptd, "uptd-ppa-banjarbaru", _event({"report_ref": "LINK-B-F1", "case_id": second_id,
                                                     "victim": {"identity": {"nik": nik}}},
                                                    source="uptd-ppa-banjarbaru"))
    updated = await next_matching(cases, lambda m: m.subject.startswith("alur.case.updated.")
                                  and _data(m)["case_id"] == second_id)
    assert _data(updated)["case"]["possible_duplicates"] == [first_id]
    assert "possible_duplicates" in _data(updated)["changed"]
    for client in (polda, uptd):
        await client.close()


# ---------------------------------------------------------------- the HTTP door


async def test_http_door_health_tokens_and_reasons(running: Running, js: JetStreamContext) -> None:
    creds = json.loads(running.cli("agency", "creds", "uptd-ppa-banjarbaru", "--json").stdout)
    other = json.loads(running.cli("agency", "creds", "polda-kalsel", "--json").stdout)
    assert creds["agency"] == "uptd-ppa-banjarbaru" and creds["http_token"] != other["http_token"]
    base = running.http("intake")
    url = base + "/v1/reports"
    cases = await _subscribe(js, "CASES", "alur.case.>")
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(base + "/healthz")).status_code == 200
        ready = await client.get(base + "/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "service": "intake", "problems": []}

        reports_before = (await js.stream_info("REPORTS")).state.messages
        body = _report("HTTP-TOKEN-1", victim=_victim("HT-1", age=12))  # the body claims polda-kalsel
        assert (await client.post(url, json=body)).status_code == 401
        assert (await client.post(url, json=body, headers={"Authorization": "Bearer not-a-token"})).status_code == 401
        assert (await client.post(url, json=body, headers={"Authorization": creds["http_token"]})).status_code == 401
        assert (await js.stream_info("REPORTS")).state.messages == reports_before  # 401 stores nothing

        headers = {"Authorization": f"Bearer {creds['http_token']}"}
        # a body claiming another agency is refused (issue 10.5: it used to be filed under the token's agency)
        claims_other = await client.post(url, json=body, headers=headers)
        assert claims_other.status_code == 422, claims_other.text
        assert [r.split(":")[0] for r in claims_other.json()["reasons"]] == ["source"]
        claim_kept = await js.get_msg("REPORTS", claims_other.json()["stream_seq"])
        assert claim_kept.subject == "alur.report.uptd-ppa-banjarbaru"  # stored under the token's agency
        body |= {"source": "uptd-ppa-banjarbaru", "id": str(uuid.uuid4())}
        good = await client.post(url, json=body, headers=headers)
        assert good.status_code == 202, good.text
        case_id = running.case_id("uptd-ppa-banjarbaru", "HTTP-TOKEN-1")
        assert good.json()["case_id"] == case_id != running.case_id("polda-kalsel", "HTTP-TOKEN-1")
        registered = await next_matching(cases, lambda m: _data(m).get("case_id") == case_id)
        assert _data(registered)["reporter"] == "uptd-ppa-banjarbaru"
        assert (await js.get_msg("REPORTS", good.json()["stream_seq"])).subject == "alur.report.uptd-ppa-banjarbaru"

        # the short form (only `data`) is wrapped in a CloudEvent sourced from the token's agency
        short = await client.post(url, json=_report("HTTP-SHORT-1")["data"], headers=headers)
        assert short.status_code == 202, short.text
        kept = json.loads((await js.get_msg("REPORTS", short.json()["stream_seq"])).data)
        assert kept["source"] == "uptd-ppa-banjarbaru" and kept["specversion"] == "1.0"

        # an event id that cannot be a header value is not used as Nats-Msg-Id (the body hash is)
        odd_body = json.dumps(_report("HTTP-ODD-ID", source="uptd-ppa-banjarbaru") | {"id": "two\r\nlines"}).encode()
        odd = await client.post(url, content=odd_body, headers=headers)
        assert odd.status_code == 202, odd.text
        odd_msg = await js.get_msg("REPORTS", odd.json()["stream_seq"])
        assert odd_msg.data == odd_body and odd_msg.headers is not None
        assert odd_msg.headers["Nats-Msg-Id"] == "uptd-ppa-banjarbaru:" + derived_id(
            "http-report", "uptd-ppa-banjarbaru", hashlib.sha256(odd_body).hexdigest())

        bad = await client.post(url, json={"report_ref": "HTTP-BAD-1", "victim": {"age": -3}}, headers=headers)
        assert bad.status_code == 422
        rejected = await next_matching(cases, lambda m: m.subject == "alur.case.rejected.uptd-ppa-banjarbaru"
                                       and _data(m).get("stream_seq") == bad.json()["stream_seq"])
        assert _data(rejected)["reasons"] == bad.json()["reasons"]
        assert _data(rejected)["report_ref"] == "HTTP-BAD-1"
        assert any(r.startswith("data.victim.age:") for r in bad.json()["reasons"])

        garbage = await client.post(url, content=b"\xff not json", headers=headers)
        assert garbage.status_code == 400 and garbage.json()["reasons"] == ["body: is not valid JSON (UTF-8)"]
        kept_bad = await js.get_msg("REPORTS", garbage.json()["stream_seq"])
        assert kept_bad.data == b"\xff not json"
        await next_matching(cases, lambda m: m.subject == "alur.case.rejected.uptd-ppa-banjarbaru"
                            and _data(m).get("stream_seq") == garbage.json()["stream_seq"])


# ---------------------------------------------------------------- hostile bodies (issue 10.4)

HOSTILE: list[tuple[str, bytes, str]] = [
    # (name, body, the reason it must get): the first two used to raise RecursionError on every delivery
    ("2000-nested-objects", b'{"a":' * 2000 + b"1" + b"}" * 2000, "body: is nested more than 32 levels deep"),
    ("2000-nested-lists", b"[" * 2000 + b"]" * 2000, "body: is nested more than 32 levels deep"),
    ("100k-nested-lists", b"[" * 100_000 + b"]" * 100_000,
     "body: 200000 bytes is more than the limit of 65536 bytes"),
    ("1e999999", json.dumps(_report("HOSTILE-NUM")).encode().replace(b'"age": 16', b'"age": 1e999999'),
     "body: has a number too large to represent"),
    ("10k-digit-integer", json.dumps(_report("HOSTILE-INT")).encode().replace(b'"age": 16', b'"age": ' + b"7" * 10_000),
     "body: has a number longer than 100 characters"),
]


async def test_hostile_bodies_over_nats_become_rejections_not_dead_letters(running: Running, js: JetStreamContext
                                                                           ) -> None:
    rejected = await _subscribe(js, "CASES", f"alur.case.rejected.{REPORTER}")
    cases = await _subscribe(js, "CASES", "alur.case.registered.*")
    dead_before = await _dlq_count(js)
    reporter = await running.agency(REPORTER)
    sent: dict[int, tuple[str, str]] = {}
    for name, body, expected in HOSTILE:
        for content_type in (None, "application/json"):  # FastStream used to json-decode either way
            headers = {"Nats-Msg-Id": str(uuid.uuid4())} | ({"Content-Type": content_type} if content_type else {})
            ack = await reporter.jetstream().publish(f"alur.report.{REPORTER}", body, headers=headers, timeout=5)
            sent[ack.seq] = (name, expected)
    while sent:
        msg = await next_matching(rejected, lambda m: _data(m).get("stream_seq") in sent)
        name, expected = sent.pop(_data(msg)["stream_seq"])
        assert _data(msg)["reasons"] == [expected], name
    good = _report("HOSTILE-AFTER", victim=_victim("HS-1", age=31))
    await _send(reporter, REPORTER, good)
    await next_matching(cases, lambda m: _data(m)["case_id"] == running.case_id(REPORTER, "HOSTILE-AFTER"))
    assert await _dlq_count(js) == dead_before, "a hostile body reached the DLQ"
    await reporter.close()


async def test_hostile_bodies_over_http_are_answered_4xx_with_reasons(running: Running, js: JetStreamContext) -> None:
    token = running.secrets.agency(REPORTER).http_token
    headers = {"Authorization": f"Bearer {token}"}
    dead_before = await _dlq_count(js)
    rejected = await _subscribe(js, "CASES", f"alur.case.rejected.{REPORTER}")
    seqs = set()
    async with httpx.AsyncClient(timeout=30) as client:
        for name, body, expected in HOSTILE:
            answer = await client.post(running.http("intake") + "/v1/reports", content=body, headers=headers)
            assert answer.status_code in (400, 413), (name, answer.status_code, answer.text[:200])
            assert answer.json()["reasons"] == [expected], name
            seqs.add(answer.json()["stream_seq"])
        # the data-only form goes through the same loader: its repeated key is refused, not last-wins
        data = json.dumps(_report("HOSTILE-DUP")["data"])
        twice = await client.post(running.http("intake") + "/v1/reports", headers=headers,
                                  content=(data[:-1] + ', "report_ref": "HOSTILE-DUP-2"}').encode())
        assert twice.status_code == 400
        assert twice.json()["reasons"] == ["body: has a key more than once in one object (repeated 'report_ref')"]
        seqs.add(twice.json()["stream_seq"])
        good = await client.post(running.http("intake") + "/v1/reports", headers=headers,
                                 json=_report("HOSTILE-HTTP-AFTER", victim=_victim("HS-2", age=32))["data"])
        assert good.status_code == 202 and good.json()["case_id"] == running.case_id(REPORTER, "HOSTILE-HTTP-AFTER")
    while seqs:
        seqs.discard(_data(await next_matching(rejected, lambda m: _data(m).get("stream_seq") in seqs))["stream_seq"])
    await _consumed(js, "REPORTS", "intake", good.json()["stream_seq"])
    assert await _dlq_count(js) == dead_before, "a hostile body reached the DLQ"


# ---------------------------------------------------------------- implausible data (issue 10.5)


async def test_implausible_reports_are_refused_and_an_old_one_is_kept_with_a_warning(
    running: Running, js: JetStreamContext
) -> None:
    rejected = await _subscribe(js, "CASES", f"alur.case.rejected.{REPORTER}")
    cases = await _subscribe(js, "CASES", "alur.case.registered.*")
    reporter = await running.agency(REPORTER)
    refused = {
        "data.victim.pseudonym": _report("PLAUS-RLO", victim=_victim("KS-\u202e2140")),
        "data.victim.identity.birth_date": _report("PLAUS-2099", victim=_victim("PL-1") | {
            "identity": {"birth_date": "2099-01-01"}}),
        "time": _report("PLAUS-TIME") | {"time": "2099-01-01T00:00:00+08:00"},
        "source": _report("PLAUS-SOURCE", source="bp3mi-kalsel"),
    }
    sent = {(await _send(reporter, REPORTER, body)).seq: field for field, body in refused.items()}
    while sent:
        msg = await next_matching(rejected, lambda m: _data(m).get("stream_seq") in sent)
        field = sent.pop(_data(msg)["stream_seq"])
        assert [r.split(":")[0] for r in _data(msg)["reasons"]] == [field], _data(msg)["reasons"]

    old = _report("PLAUS-OLD", victim=_victim("PL-OLD", age=40)) | {"time": "2025-01-06T09:00:00+08:00"}
    async with httpx.AsyncClient(timeout=30) as client:
        answer = await client.post(running.http("intake") + "/v1/reports", json=old,
                                   headers={"Authorization": f"Bearer {running.secrets.agency(REPORTER).http_token}"})
    assert answer.status_code == 202, answer.text
    assert [w.split(":")[0] for w in answer.json()["warnings"]] == ["time"]
    registered = await next_matching(cases, lambda m: _data(m)["case_id"] == answer.json()["case_id"])
    assert _data(registered)["warnings"] == answer.json()["warnings"] == _data(registered)["case"]["warnings"]
    await reporter.close()


# ---------------------------------------------------------------- who may amend a case (issue 10.1)


async def test_only_those_who_work_on_a_case_may_amend_it_over_nats(running: Running, js: JetStreamContext) -> None:
    cases = await _subscribe(js, "CASES", "alur.case.>")
    bp3mi = await running.agency("bp3mi-kalsel")
    await _send(bp3mi, "bp3mi-kalsel", _report("AMEND-1", source="bp3mi-kalsel", victim=_victim("AM-1")))
    registered = await next_matching(cases, lambda m: m.subject.startswith("alur.case.registered.")
                                     and _data(m)["report_ref"] == "AMEND-1")
    case_id = _data(registered)["case_id"]
    assert case_id == running.case_id("bp3mi-kalsel", "AMEND-1")
    assert case_id != "case-" + hashlib.sha256(b"bp3mi-kalsel\x1fAMEND-1").hexdigest()[:20], "the id is keyed"
    await _routed(js, registered)
    holders = {r["agency"] for r in await _referrals(js, case_id)}
    assert "polresta-banjarmasin" in holders and "polda-kalsel" not in holders

    # what the issue saw: the police's follow-up renamed the victim, cleared the narrative, added a need
    takeover = {"case_id": case_id, "victim": {"identity": {"name": "Nama Lain"}}, "narrative": None,
                "needs": ["education"]}
    polda = await running.agency("polda-kalsel")
    outsider = await _send(polda, "polda-kalsel", _event({"report_ref": "AMEND-1-X", **takeover}))
    unknown = await _send(polda, "polda-kalsel", _event({"report_ref": "AMEND-1-Y", **takeover,
                                                          "case_id": "case-" + "0" * 20}))
    refusals = {}
    while len(refusals) < 2:
        msg = await next_matching(cases, lambda m: m.subject == "alur.case.rejected.polda-kalsel"
                                  and _data(m).get("stream_seq") in (outsider.seq, unknown.seq))
        refusals[_data(msg)["stream_seq"]] = _data(msg)
    assert refusals[outsider.seq]["reasons"] == refusals[unknown.seq]["reasons"] == [
        "data.case_id: no case has this id"], "a refusal reads exactly like an unknown case"
    assert {k: v for k, v in refusals[outsider.seq].items() if k not in ("stream_seq", "report_ref", "event_id")} == \
        {k: v for k, v in refusals[unknown.seq].items() if k not in ("stream_seq", "report_ref", "event_id")}
    stored = Case.model_validate_json((await (await js.key_value("cases")).get(case_id)).value)
    assert stored.version == 1 and stored.narrative is not None

    # a holder of a referral, the secretariat and the reporter may
    for agency, ref in (("polresta-banjarmasin", "AMEND-1-P"), ("gt-kalsel", "AMEND-1-G"),
                        ("bp3mi-kalsel", "AMEND-1-B")):
        client = bp3mi if agency == "bp3mi-kalsel" else await running.agency(agency)
        await _send(client, agency, _event({"report_ref": ref, "case_id": case_id, "injured": True}, source=agency))
        updated = await next_matching(cases, lambda m: m.subject.startswith("alur.case.updated.")
                                      and _data(m)["report_ref"] == ref)
        assert _data(updated)["reporter"] == agency, agency
        if client is not bp3mi:
            await client.close()
    assert running.logs().count("not_permitted") >= 1, "the operators see what the outsider tried"
    for client in (bp3mi, polda):
        await client.close()


async def test_only_those_who_work_on_a_case_may_amend_it_over_http(running: Running, js: JetStreamContext) -> None:
    cases = await _subscribe(js, "CASES", "alur.case.>")
    url = running.http("intake") + "/v1/reports"

    def bearer_of(agency: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {running.secrets.agency(agency).http_token}"}

    async with httpx.AsyncClient(timeout=30) as client:
        opened = await client.post(url, json=_report("AMEND-2", source="bp3mi-kalsel", victim=_victim("AM-2"))["data"],
                                   headers=bearer_of("bp3mi-kalsel"))
        assert opened.status_code == 202, opened.text
        case_id = opened.json()["case_id"]
        registered = await next_matching(cases, lambda m: _data(m).get("case_id") == case_id)
        await _routed(js, registered)
        takeover = {"victim": {"identity": {"name": "Nama Lain"}}, "narrative": None, "needs": ["education"]}
        outsider = await client.post(url, json={"report_ref": "AMEND-2-X", "case_id": case_id, **takeover},
                                     headers=bearer_of("polda-kalsel"))
        unknown = await client.post(url, json={"report_ref": "AMEND-2-X", "case_id": "case-" + "0" * 20, **takeover},
                                    headers=bearer_of("polda-kalsel"))
        assert outsider.status_code == unknown.status_code == 422
        assert {k: v for k, v in outsider.json().items() if k != "stream_seq"} == \
            {k: v for k, v in unknown.json().items() if k != "stream_seq"} == \
            {"accepted": False, "reasons": ["data.case_id: no case has this id"], "duplicate": False}
        holder = await client.post(url, json={"report_ref": "AMEND-2-P", "case_id": case_id, "injured": True},
                                   headers=bearer_of("polresta-banjarmasin"))
        assert holder.status_code == 202 and holder.json()["followup"] is True, holder.text
    updated = await next_matching(cases, lambda m: m.subject.startswith("alur.case.updated.")
                                  and _data(m)["report_ref"] == "AMEND-2-P")
    assert _data(updated)["reporter"] == "polresta-banjarmasin"
    await _consumed(js, "REPORTS", "intake", unknown.json()["stream_seq"])
    stored = Case.model_validate_json((await (await js.key_value("cases")).get(case_id)).value)
    assert stored.narrative is not None and "education" not in stored.needs and stored.version == 2


# ---------------------------------------------------------------- early detection


async def test_report_regions_counts_cases_and_suppresses_small_groups(running: Running, js: JetStreamContext) -> None:
    cases = await _subscribe(js, "CASES", "alur.case.registered.6309")
    reporter = await running.agency("polda-kalsel")
    ids = set()
    for i in range(3):
        await _send(reporter, REPORTER, _report(
            f"REGION-{i}", victim=_victim(f"RG-{i}", age=20 + i),
            location={"regency": "6309", "exploitation_location": "abroad", "country": "KH"},
            exploitation=["online_scam"], recruitment_modus="social_media_job_offer"))
        ids.add(running.case_id(REPORTER, f"REGION-{i}"))
    while ids:
        ids.discard(_data(await next_matching(cases, lambda m: True))["case_id"])
    month = datetime.now(UTC).astimezone(WITA).strftime("%Y-%m")

    suppressed = json.loads(running.cli("report", "regions", "--json").stdout)
    assert all(row["cases"] >= 10 for row in suppressed)
    assert not any(row["regency"] == "6309" for row in suppressed)

    # the three are counted all the same (the CLI refuses to show groups under 10: read the counters)
    counters = RegionCounts.of(valid_cases(await ops.registered_cases(js))).counters
    tabalong = {k.split(".", 1)[1].rsplit(".", 1)[0]: n for k, n in counters.items()
                if k.startswith("6309.") and k.endswith(month)}
    assert tabalong == {"cases.all": 3, "exploitation.online_scam": 3, "modus.social_media_job_offer": 3}
    assert all(set(r) == {"month", "regency", "regency_name", "dimension", "value", "cases"} for r in suppressed)
    assert not any(c in json.dumps(suppressed) for c in ("case-", *CONFIDENTIAL))
    assert running.cli("report", "regions", "--min-group", "1", check=False).returncode == 2
    await reporter.close()


# ---------------------------------------------------------------- no victim data anywhere it must not be (last)


async def test_no_victim_identity_or_narrative_in_any_log_line(running: Running) -> None:
    """Runs last: drives a report, a follow-up and misplaced identity, stops the run and reads every line it wrote."""
    nik = "6371015507100003"
    phone = "+62811000111"
    admin = await running.admin()
    js = admin.jetstream(timeout=10)
    cases = await _subscribe(js, "CASES", "alur.case.>")
    reporter = await running.agency("bp3mi-kalsel")
    await _send(reporter, "bp3mi-kalsel", _report("LOGS-1", source="bp3mi-kalsel"))
    case_id = running.case_id("bp3mi-kalsel", "LOGS-1")
    await next_matching(cases, lambda m: _data(m).get("case_id") == case_id)
    followup = _event({"report_ref": "LOGS-1-F1", "case_id": case_id, "narrative": CONFIDENTIAL[3] + " again",
                       "victim": {"identity": {"name": CONFIDENTIAL[0], "nik": nik, "phone": phone}}},
                      source="bp3mi-kalsel")
    await _send(reporter, "bp3mi-kalsel", followup)
    await next_matching(cases, lambda m: m.subject.startswith("alur.case.updated.")
                        and _data(m).get("case_id") == case_id)
    misplaced = [
        _report("LOGS-BAD-1", source="bp3mi-kalsel", location={"regency": nik, "exploitation_location": "abroad"}),
        _report("LOGS-BAD-2", source="bp3mi-kalsel", channel=CONFIDENTIAL[0], needs=[phone], indicators=[nik]),
        _report(nik, source="bp3mi-kalsel"),  # a NIK where the report_ref goes
        _report("LOGS-BAD-3", source="bp3mi-kalsel", risk=CONFIDENTIAL[4]) | {"id": f"{nik} {CONFIDENTIAL[0]}"},
        _report("LOGS-BAD-4", source="bp3mi-kalsel", victim={**_victim("LB-4"), CONFIDENTIAL[0]: nik}),
    ]
    seqs = {(await _send(reporter, "bp3mi-kalsel", body, msg_id=str(uuid.uuid4()))).seq for body in misplaced}
    seqs.add((await _send(reporter, "bp3mi-kalsel", f"{nik} {CONFIDENTIAL[3]}".encode())).seq)
    while seqs:
        msg = await next_matching(cases, lambda m: m.subject.startswith("alur.case.rejected."))
        seqs.discard(_data(msg).get("stream_seq"))
    await _consumed(js, "CASES", "routing", (await js.stream_info("CASES")).state.last_seq)
    await reporter.close()

    secrets = {*CONFIDENTIAL, *NIKS_USED, phone}
    for event in await _events(js, "CASES", "alur.case.rejected.*"):
        text = json.dumps(event)
        assert not [s for s in secrets if s in text], event["data"]
    for letter in await _events(js, "DLQ", "alur.dlq.>"):
        assert letter["data"]["service"] != "intake", letter["data"]
        assert not [s for s in secrets if s in json.dumps(letter)], letter["data"]
    await admin.close()

    assert stop_alur(running) == 0
    logs = running.logs()
    assert case_id in logs and "report rejected" in logs and "case updated" in logs
    for source, text in (("service logs", logs), ("`alur up` output", "\n".join(running.lines))):
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"victim data in {source}: {leaked}"
    for path in Path(running.data_dir).glob("*.log"):
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], path.name
