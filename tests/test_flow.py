"""The walking skeleton end to end: `alur up` as a process, the three services as processes, a real broker.

The reference report of DESIGN.md goes in at `alur.report.bp3mi-kalsel`; a registered case and
referrals for every required agency type come out; an agency's acknowledgement comes back as a fact.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from nats.js.api import DeliverPolicy

from tests.conftest import CONFIDENTIAL, REFERENCE_REPORT, Running, reference_report
from tests.support import next_matching

REQUIRED_TYPES = {"uptd_ppa", "police", "health", "migrant_worker_protection", "social_services"}
REQUESTED_FIELDS = {"referral_id", "case_id", "agency", "agency_type", "service", "priority", "due", "reasons",
                    "ruleset_version", "case"}


async def _collect_requested(sub: Any, case_id: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Referral requests of `case_id` until every required agency type has one."""
    seen: list[dict[str, Any]] = []
    while not REQUIRED_TYPES <= {r["agency_type"] for r in seen}:
        msg = await next_matching(sub, lambda m: m.subject.startswith("alur.referral.requested."), timeout)
        data = json.loads(msg.data)["data"]
        if data["case_id"] == case_id:
            seen.append(data | {"_subject": msg.subject})
    return seen


async def test_reference_report_becomes_tracked_referrals(alur: Running) -> None:
    admin = await alur.admin()
    js = admin.jetstream()
    cases = await js.subscribe("alur.case.>", stream="CASES", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    referrals = await js.subscribe("alur.referral.>", stream="REFERRALS", ordered_consumer=True,
                                   deliver_policy=DeliverPolicy.ALL)
    reporter = await alur.agency("bp3mi-kalsel")
    ack = await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(REFERENCE_REPORT).encode(),
                                             headers={"Nats-Msg-Id": REFERENCE_REPORT["id"]}, timeout=5)
    assert ack.stream == "REPORTS"

    registered = await next_matching(cases, lambda m: m.subject == "alur.case.registered.6371")
    event = json.loads(registered.data)
    assert event["specversion"] == "1.0" and event["type"] == "alur.case.registered.v1"
    data = event["data"]
    assert data["reporter"] == "bp3mi-kalsel" and data["regency"] == "6371"
    assert data["report_ref"] == "BP3MI-KS-2026-0412"
    case_id = data["case_id"]

    requested = await _collect_requested(referrals, case_id)
    for r in requested:
        assert REQUESTED_FIELDS <= r.keys(), r.keys()
        assert r["_subject"] == f"alur.referral.requested.{r['agency']}"
        assert r["reasons"] and all(x["rule_id"] and x["legal_basis"] for x in r["reasons"])
        assert r["priority"] in ("high", "medium", "low")
    by_type = {r["agency_type"]: r for r in requested}
    assert by_type["uptd_ppa"]["agency"] == "uptd-ppa-banjarmasin"
    assert by_type["migrant_worker_protection"]["agency"] == "bp3mi-kalsel"
    assert "narrative" not in json.dumps(by_type["health"]["case"])

    target = by_type["uptd_ppa"]
    agency = await alur.agency(target["agency"])
    sub = await agency.jetstream().pull_subscribe_bind(durable=f"agency-{target['agency']}", stream="REFERRALS",
                                                       inbox_prefix=f"_INBOX.{target['agency']}.pull.".encode())
    msgs = await sub.fetch(1, timeout=30)
    assert msgs[0].subject.startswith("alur.referral.")
    await msgs[0].ack()
    response = {"specversion": "1.0", "id": "resp-1", "source": target["agency"], "type": "alur.referral.response.v1",
                "time": "2026-11-20T09:00:00+08:00", "datacontenttype": "application/json",
                "data": {"referral_id": target["referral_id"], "status": "acknowledged"}}
    await agency.jetstream().publish(f"alur.response.{target['agency']}", json.dumps(response).encode(), timeout=5)
    acknowledged = await next_matching(
        referrals, lambda m: m.subject == f"alur.referral.acknowledged.{target['agency']}"
        and json.loads(m.data)["data"]["referral_id"] == target["referral_id"])
    ack_data = json.loads(acknowledged.data)["data"]
    assert ack_data["status"] == "acknowledged" and ack_data["case_id"] == case_id

    for client in (admin, reporter, agency):
        await client.close()
    logs = alur.logs()
    assert case_id in logs
    for secret in CONFIDENTIAL:
        assert secret not in logs, f"confidential text in logs: {secret!r}"


async def test_replayed_report_makes_no_second_case(alur: Running) -> None:
    admin = await alur.admin()
    js = admin.jetstream()
    reporter = await alur.agency("bp3mi-kalsel")
    body = json.dumps(reference_report(report_ref="BP3MI-KS-2026-0500")).encode()
    first = await reporter.jetstream().publish("alur.report.bp3mi-kalsel", body, timeout=5)
    resent = json.loads(body)
    resent["id"] = "a-different-event-id"
    await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(resent).encode(), timeout=5)
    cases = await js.subscribe("alur.case.>", stream="CASES", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    registered = await next_matching(cases, lambda m: m.subject.startswith("alur.case.registered"))
    case_id = json.loads(registered.data)["data"]["case_id"]
    info = await js.consumer_info("REPORTS", "intake")
    for _ in range(100):
        info = await js.consumer_info("REPORTS", "intake")
        if info.num_pending == 0 and info.num_ack_pending == 0 and info.delivered.stream_seq >= first.seq + 1:
            break
        await __import__("asyncio").sleep(0.1)
    stream = await js.stream_info("CASES", subjects_filter="alur.case.registered.>")
    assert stream.state.messages == 1
    assert case_id.startswith("case-")
    await admin.close()
    await reporter.close()


async def test_http_door_needs_a_token_and_answers_with_reasons(alur: Running) -> None:
    creds = json.loads(alur.cli("agency", "creds", "uptd-ppa-banjarbaru", "--json").stdout)
    assert set(creds) == {"agency", "nats_url", "nkey_seed", "inbox_prefix", "http_token"}
    url = alur.http("intake") + "/v1/reports"
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(url, json=REFERENCE_REPORT["data"])).status_code == 401
        headers = {"Authorization": f"Bearer {creds['http_token']}"}
        bad = await client.post(url, json={"report_ref": "X-1", "victim": {"age": -3}}, headers=headers)
        assert bad.status_code == 422
        assert any("age" in r for r in bad.json()["reasons"])
        assert (await client.post(url, content=b"not json", headers=headers)).status_code == 400
        good = await client.post(url, json=reference_report(report_ref="PPA-BJB-1")["data"], headers=headers)
        assert good.status_code == 202, good.text
        assert good.json()["case_id"].startswith("case-")
        ready = await client.get(alur.http("intake") + "/readyz")
        assert ready.status_code == 200 and ready.json()["ready"]


@pytest.mark.parametrize("as_json", [True])
def test_agency_list_prints_registry(alur: Running, as_json: bool) -> None:
    rows = json.loads(alur.cli("agency", "list", "--json").stdout)
    assert {"id", "type", "regions", "channel"} <= rows[0].keys()
    assert {r["id"] for r in rows} >= {"bp3mi-kalsel", "polda-kalsel", "gt-kalsel"}
    assert all("secret" not in r for r in rows)
