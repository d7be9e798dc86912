"""Fuzzing both doors through the real services (issue 10.8): intake's reports and notify's responses, over
NATS and HTTP, on one `alur up` for the module.

Hypothesis generates the inputs (derandomized by the suite's profile, so a run is the same on every machine):
random bytes, random JSON, valid reports or responses with mutated fields, deep nesting, huge numbers and
control or bidi characters in text fields. Every input must end as what the door promises, never as a 5xx,
a crash or a dead letter:

- a report: a case (its id in the `cases` bucket) or `alur.case.rejected.<agency>` naming its stream sequence;
- a response: `alur.referral.response_refused.<agency>` (correlated by the response's id, or counted when
  the body had no readable id) — the fuzzed responses name referrals that do not exist, so nothing applies;
- over HTTP, a status below 500 with reasons for every refusal.

Afterwards a valid report still becomes its case and a valid response is still recorded.

`ALUR_FUZZ_EXAMPLES` sets how many inputs each door and transport gets: `make test` runs the modest variant
(40 by default, well under 30 s); `make test-faults` runs the `faults`-marked long one (400 by default).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from alur import ops
from domain.validation import ParsedReport, parse_report
from runtime.bus import kv_snapshot
from runtime.profile import load_registry_file
from services.notify.responses import parse_response
from tests.conftest import (
    CONFIDENTIAL,
    REFERENCE_REPORT,
    Running,
    alur_stack,
)
from tests.support import case_referrals, next_matching, wait_for

REPORTER = "bp3mi-kalsel"
RESPONDER = "polresta-banjarmasin"
KNOWN = {a.id for a in load_registry_file().agencies.values() if a.enabled}
PLACEHOLDER = "FUZZ-REF"
DEADLINE = 60.0


def examples(default: int) -> int:
    return max(1, int(os.environ.get("ALUR_FUZZ_EXAMPLES", str(default))))


VARIANTS = [
    pytest.param(40, id="modest"),
    pytest.param(400, id="long", marks=[pytest.mark.faults, pytest.mark.timeout(1800)]),
]


# ---------------------------------------------------------------- inputs


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
odd_text = st.text(st.characters(categories=["Cc", "Cf", "Zl", "Zp"]), min_size=1, max_size=3)
"""Control characters, bidi and other format characters, line and paragraph separators."""
huge_numbers = st.sampled_from([b"1e999999", b"-1e999999", b"9" * 10_000, b"1e309", b"0." + b"1" * 5_000,
                                b"12345678901234567890123456789012345678901234567890"])


def deep(n: int, kind: str) -> bytes:
    if kind == "objects":
        return b'{"a":' * n + b"1" + b"}" * n
    if kind == "lists":
        return b"[" * n + b"]" * n
    return b'{"data": ' + b"[" * n + b"]" * n + b"}"


deep_bodies = st.builds(deep, st.integers(min_value=33, max_value=5_000), st.sampled_from(["objects", "lists", "data"]))


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += _paths(value, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], texts: list[tuple[Any, ...]]) -> bytes:
    """`base` with one to three fields set to random JSON, deleted, added, or given odd characters."""
    event = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        action = draw(st.sampled_from(["set", "delete", "extra", "odd-text", "huge"]))
        path = draw(st.sampled_from(texts if action == "odd-text" else _paths(base)))
        node: Any = event
        try:
            for part in path[:-1]:
                node = node[part]
            if action == "set":
                node[path[-1]] = draw(json_values)
            elif action == "delete" and isinstance(node, dict):
                del node[path[-1]]
            elif action == "extra" and isinstance(node, dict):
                node[draw(st.text(max_size=10))] = draw(json_values)
            elif action == "odd-text" and isinstance(node[path[-1]], str):
                text = node[path[-1]]
                at = draw(st.integers(min_value=0, max_value=len(text)))
                node[path[-1]] = text[:at] + draw(odd_text) + text[at:]
            elif action == "huge":
                node[path[-1]] = "@@HUGE@@"
        except (KeyError, IndexError, TypeError):
            continue
    raw = json.dumps(event).encode()
    return raw.replace(b'"@@HUGE@@"', draw(huge_numbers)) if b"@@HUGE@@" in raw else raw


def inputs(base: dict[str, Any], texts: list[tuple[Any, ...]], data_only: bool = False) -> st.SearchStrategy[bytes]:
    forms = [mutated(base, texts), mutated(base, texts), deep_bodies, st.binary(max_size=300),
             json_values.map(lambda v: json.dumps(v).encode())]
    if data_only:
        forms.append(mutated(base["data"], [p[1:] for p in texts if p[0] == "data"]))
    return st.one_of(*forms)


def generate(strategy: st.SearchStrategy[bytes], n: int) -> list[bytes]:
    """`n` inputs drawn by hypothesis (the suite profile derandomizes it: the same inputs every run)."""
    found: list[bytes] = []

    @settings(max_examples=n, phases=[Phase.generate])
    @given(strategy)
    def collect(raw: bytes) -> None:
        if len(found) < n:
            found.append(raw)

    collect()
    assert len(found) >= n // 2, f"hypothesis drew only {len(found)} of {n} inputs"
    return found


REPORT_BASE: dict[str, Any] = json.loads(json.dumps(REFERENCE_REPORT))
REPORT_BASE["data"]["report_ref"] = PLACEHOLDER
REPORT_TEXTS = [("data", "victim", "pseudonym"), ("data", "victim", "identity", "name"), ("data", "narrative"),
                ("data", "consent", "recorded_by"), ("data", "report_ref"), ("source",), ("id",)]


def response_base() -> dict[str, Any]:
    return {"specversion": "1.0", "id": PLACEHOLDER, "source": RESPONDER, "type": "alur.referral.response.v1",
            "time": "2026-11-20T09:00:00+08:00", "datacontenttype": "application/json",
            "data": {"referral_id": "ref-" + "f" * 20, "status": "acknowledged", "note": "seen by the duty officer",
                     "reason": "capacity"}}


RESPONSE_TEXTS = [("data", "note"), ("data", "reason"), ("data", "referral_id"), ("id",)]
PATHS = ["ref-" + "e" * 20, "ref-" + "0" * 20, "not-a-referral", "ref-\u202e" + "0" * 19]
"""Referral ids in the HTTP door's path: none is a referral, two are not even ids."""
HOSTILE = [b'{"a":' * 2000 + b"1" + b"}" * 2000, b"[" * 100_000 + b"]" * 100_000]
"""The issue's own two bodies, sent on every run besides what hypothesis draws."""


def personalised(raw: bytes, tag: str) -> bytes:
    """Each input its own report_ref / response id, so two valid inputs never share a case or an answer; and
    its own trailing blanks (valid JSON), so an input without a placeholder (the issue's bodies) is not the
    same bytes in another test — the HTTP door would then store it once, as a duplicate."""
    return raw.replace(PLACEHOLDER.encode(), tag.encode()) + b" " * (sum(tag.encode()) % 97)


# ---------------------------------------------------------------- the stack


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One `alur up`; the HTTP doors' rate limits (another branch adds them) are set out of the fuzzer's way."""
    yield from alur_stack(tmp_path_factory.mktemp("doors-fuzz") / "alur", ALUR_SLA_SCALE="0.01",
                          ALUR_HTTP_RATE_BURST="100000", ALUR_HTTP_RATE_PER_SECOND="100000")



async def _consumed(js: JetStreamContext, stream: str, durable: str, seq: int) -> None:
    async def done() -> bool:
        info = await js.consumer_info(stream, durable)
        return (info.ack_floor.stream_seq >= seq or info.num_pending == 0) and info.num_ack_pending == 0

    await wait_for(done, timeout=DEADLINE)


async def _events(js: JetStreamContext, stream: str, subject: str, after: int = 0) -> list[dict[str, Any]]:
    out = []
    async for msg in ops.scan(js, stream, subject):
        if msg.metadata.sequence.stream > after:
            out.append(json.loads(msg.data))
    return out


async def _dead_letters(js: JetStreamContext) -> list[dict[str, Any]]:
    return [e["data"] for e in await _events(js, "DLQ", "alur.dlq.>")]


async def _case_ids(js: JetStreamContext) -> set[str]:
    return set((await kv_snapshot(js, "cases"))[0])


def _no_victim_data(reasons: list[str]) -> None:
    leaked = [s for s in CONFIDENTIAL if any(s in r for r in reasons)]
    assert not leaked, f"a reason repeats victim data: {reasons}"


# ---------------------------------------------------------------- intake


async def _report_outcomes(running: Running, js: JetStreamContext, sent: dict[int, bytes], after: int) -> None:
    """Every stored report became its case or a rejection naming its stream sequence."""
    await _consumed(js, "REPORTS", "intake", max(sent))
    rejected = {e["data"]["stream_seq"]: e["data"] for e in
                await _events(js, "CASES", f"alur.case.rejected.{REPORTER}", after)}
    cases = await _case_ids(js)
    for seq, raw in sent.items():
        expected = parse_report(raw, reporter=REPORTER, known_agencies=KNOWN)
        if seq in rejected:
            assert rejected[seq]["reasons"], raw[:200]
            _no_victim_data(rejected[seq]["reasons"])
        else:
            assert isinstance(expected, ParsedReport) and not expected.is_followup, (
                f"stored report seq {seq} became neither a case nor a rejection: {raw[:200]!r}")
            assert running.case_id(REPORTER, expected.report_ref) in cases, raw[:200]


@pytest.mark.parametrize("default", VARIANTS)
async def test_intake_door_over_nats_and_http(running: Running, js: JetStreamContext, default: int) -> None:
    n = examples(default)
    dead_before = await _dead_letters(js)
    after = (await js.stream_info("CASES")).state.last_seq
    bodies = [*HOSTILE, *generate(inputs(REPORT_BASE, REPORT_TEXTS), n)]
    reporter = await running.agency(REPORTER)
    sent: dict[int, bytes] = {}
    for i, raw in enumerate(bodies):
        raw = personalised(raw, f"FZ-N{default}-{i}")
        ack = await reporter.jetstream().publish(f"alur.report.{REPORTER}", raw,
                                                 headers={"Nats-Msg-Id": str(uuid.uuid4())}, timeout=10)
        sent[ack.seq] = raw
    await reporter.close()
    await _report_outcomes(running, js, sent, after)

    headers = {"Authorization": f"Bearer {running.secrets.agency(REPORTER).http_token}"}
    url = running.http("intake") + "/v1/reports"
    stored: dict[int, bytes] = {}
    async with httpx.AsyncClient(timeout=30) as client:
        for i, raw in enumerate([*HOSTILE, *generate(inputs(REPORT_BASE, REPORT_TEXTS, data_only=True), n)]):
            raw = personalised(raw, f"FZ-H{default}-{i}")
            answer = await client.post(url, content=raw, headers=headers)
            assert answer.status_code in (202, 400, 413, 422), (answer.status_code, raw[:200], answer.text[:300])
            body = answer.json()
            if answer.status_code != 202:
                assert body["reasons"] and body["accepted"] is False, body
                _no_victim_data(body["reasons"])
            kept = await js.get_msg("REPORTS", body["stream_seq"])
            stored[body["stream_seq"]] = kept.data or b""  # the data-only form is kept wrapped
    await _report_outcomes(running, js, stored, after)

    assert await _dead_letters(js) == dead_before, "a fuzzed report reached the DLQ"
    cases = await js.subscribe("alur.case.registered.*", stream="CASES", ordered_consumer=True,
                               deliver_policy=DeliverPolicy.NEW)
    good = json.loads(json.dumps(REFERENCE_REPORT)) | {"id": str(uuid.uuid4())}
    good["data"]["report_ref"] = f"FZ-AFTER-{default}"
    reporter = await running.agency(REPORTER)
    await reporter.jetstream().publish(f"alur.report.{REPORTER}", json.dumps(good).encode(),
                                       headers={"Nats-Msg-Id": good["id"]}, timeout=10)
    case_id = running.case_id(REPORTER, good["data"]["report_ref"])
    await next_matching(cases, lambda m: json.loads(m.data)["data"]["case_id"] == case_id, timeout=DEADLINE)
    await reporter.close()


# ---------------------------------------------------------------- notify


async def _a_held_referral(running: Running, js: JetStreamContext, ref: str) -> str:
    """Route the reference report under `ref`; the id of the referral RESPONDER holds, once notify tracks it."""
    report = json.loads(json.dumps(REFERENCE_REPORT)) | {"id": str(uuid.uuid4())}
    report["data"]["report_ref"] = ref
    reporter = await running.agency(REPORTER)
    await reporter.jetstream().publish(f"alur.report.{REPORTER}", json.dumps(report).encode(),
                                       headers={"Nats-Msg-Id": report["id"]}, timeout=10)
    await reporter.close()
    _, referrals = await case_referrals(js, case_id=running.case_id(REPORTER, ref), timeout=DEADLINE)
    referral_id = next(rid for rid, r in referrals.items() if r["agency"] == RESPONDER)
    kv = await js.key_value("referrals")

    async def tracked() -> bool:
        try:
            return bool((await kv.get(referral_id)).value)
        except Exception:
            return False

    await wait_for(tracked, timeout=DEADLINE)
    return referral_id


@pytest.mark.parametrize("default", VARIANTS)
async def test_notify_response_door_over_nats_and_http(running: Running, js: JetStreamContext, default: int) -> None:
    n = examples(default)
    referral_id = await _a_held_referral(running, js, f"FZ-RESP-{default}")
    dead_before = await _dead_letters(js)
    after = (await js.stream_info("REFERRALS")).state.last_seq
    client = await running.agency(RESPONDER)
    with_id: set[str] = set()
    anonymous = 0
    last = 0
    for i, raw in enumerate([*HOSTILE, *generate(inputs(response_base(), RESPONSE_TEXTS), n)]):
        raw = personalised(raw, f"fz-{default}-{i}-{uuid.uuid4().hex[:8]}")
        event_id, response, _ = parse_response(raw)
        if event_id is None:
            anonymous += 1
        else:
            with_id.add(event_id)
        assert response is None or response.referral_id != referral_id
        ack = await client.jetstream().publish(f"alur.response.{RESPONDER}", raw,
                                               headers={"Nats-Msg-Id": str(uuid.uuid4())}, timeout=10)
        last = ack.seq
    await _consumed(js, "REPORTS", "notify-responses", last)

    async def all_refused() -> list[dict[str, Any]] | None:
        facts = [e["data"] for e in await _events(js, "REFERRALS", f"alur.referral.*.{RESPONDER}", after)]
        refused = [f for f in facts if f.get("code")]
        seen_ids = {f.get("response_id") for f in facts}
        if with_id <= seen_ids and sum(1 for f in refused if f.get("response_id") is None) >= anonymous:
            return facts
        return None

    facts = await wait_for(all_refused, timeout=DEADLINE)
    assert all(f.get("code") for f in facts if f.get("response_id") in with_id), "a fuzzed answer was applied"

    url = f"{running.http('notify')}/v1/referrals/{{}}/responses"
    headers = {"Authorization": f"Bearer {running.secrets.agency(RESPONDER).http_token}"}
    data_inputs = inputs(response_base()["data"], [p[1:] for p in RESPONSE_TEXTS if p[0] == "data"])
    async with httpx.AsyncClient(timeout=30) as http:
        for i, raw in enumerate([*HOSTILE, *generate(st.one_of(data_inputs, inputs(response_base(), RESPONSE_TEXTS)),
                                                      n)]):
            target = PATHS[i % len(PATHS)]
            answer = await http.post(url.format(quote(target, safe="")), content=raw, headers=headers)
            assert answer.status_code < 500 and answer.status_code not in (401, 429), (
                answer.status_code, raw[:200], answer.text[:300])
            assert answer.status_code != 202, f"a fuzzed answer to an unknown referral was applied: {raw[:200]!r}"
            assert answer.json(), raw[:200]

    assert await _dead_letters(js) == dead_before, "a fuzzed response reached the DLQ"
    feed = await js.subscribe(f"alur.referral.acknowledged.{RESPONDER}", stream="REFERRALS", ordered_consumer=True)
    await client.jetstream().publish(
        f"alur.response.{RESPONDER}",
        json.dumps({**response_base(), "id": str(uuid.uuid4()), "time": datetime.now(UTC).isoformat(),
                    "data": {"referral_id": referral_id, "status": "acknowledged"}}).encode(), timeout=10)
    await next_matching(feed, lambda m: json.loads(m.data)["data"]["referral_id"] == referral_id, timeout=DEADLINE)
    await client.close()


NUMBERS = {b"1e999999": "body: has a number too large to represent",
           b"7" * 10_000: "body: has a number longer than 100 characters"}


async def test_notify_response_door_refuses_the_issues_bodies_with_reasons(running: Running,
                                                                         js: JetStreamContext) -> None:
    """Issue 10.4 on notify's door: each hostile body is a 400 with its reason over HTTP, and over NATS a
    `response_refused` (code `bad_body`) with the same reason, never a dead letter."""
    expected = {HOSTILE[0]: "body: is nested more than 32 levels deep",
                HOSTILE[1]: "body: is nested more than 32 levels deep"}
    for literal, problem in NUMBERS.items():
        expected[b'{"status": "acknowledged", "note": ' + literal + b"}"] = problem
    dead_before = await _dead_letters(js)
    url = f"{running.http('notify')}/v1/referrals/{'ref-' + 'd' * 20}/responses"
    headers = {"Authorization": f"Bearer {running.secrets.agency(RESPONDER).http_token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        for raw, reason in expected.items():
            answer = await http.post(url, content=raw, headers=headers)
            assert answer.status_code == 400 and answer.json()["reasons"] == [reason], (raw[:60], answer.text[:200])

    after = (await js.stream_info("REFERRALS")).state.last_seq
    client = await running.agency(RESPONDER)
    for raw in expected:
        await client.jetstream().publish(f"alur.response.{RESPONDER}", raw, headers={"Nats-Msg-Id": str(uuid.uuid4())},
                                         timeout=10)
    await client.close()

    async def refused() -> list[str] | None:
        events = await _events(js, "REFERRALS", f"alur.referral.response_refused.{RESPONDER}", after)
        reasons = sorted(e["data"]["reason"] for e in events if e["data"]["code"] == "bad_body")
        return reasons if len(reasons) >= len(expected) else None

    assert await wait_for(refused, timeout=DEADLINE) == sorted(expected.values())
    assert await _dead_letters(js) == dead_before
