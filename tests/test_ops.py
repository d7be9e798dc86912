"""The ops views against a running system: status, dead letters and their replay (which takes them out of
the DLQ) — ids and codes only."""

from __future__ import annotations

import json

from nats.js.api import DeliverPolicy

from tests.conftest import CONFIDENTIAL, REFERENCE_REPORT, Running
from tests.support import next_matching


async def test_poison_message_ends_in_the_dlq_named_not_copied_and_can_be_replayed(alur: Running) -> None:
    admin = await alur.admin()
    js = admin.jetstream()
    dlq = await js.subscribe("alur.dlq.>", stream="DLQ", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    poison = {"specversion": "1.0", "id": "poison-1", "type": "alur.case.registered.v1", "source": "test",
              "data": {"case_id": "not-a-case", "narrative": CONFIDENTIAL[3], "nik": CONFIDENTIAL[1]}}
    ack = await js.publish("alur.case.registered.6371", json.dumps(poison).encode(), timeout=5)
    letter = await next_matching(dlq, lambda m: m.subject == "alur.dlq.CASES", timeout=30)
    data = json.loads(letter.data)["data"]
    assert data["stream"] == "CASES" and data["consumer"] == "routing" and data["stream_seq"] == ack.seq
    assert data["deliveries"] == 10 and data["error"]
    assert not any(secret in letter.data.decode() for secret in CONFIDENTIAL)

    listed = json.loads(alur.cli("dlq", "list", "--json").stdout)
    assert [d["stream_seq"] for d in listed] == [ack.seq]
    replayed = json.loads(alur.cli("dlq", "replay", "--json").stdout)
    assert replayed[0]["subject"] == "alur.case.registered.6371" and replayed[0]["new_seq"] > ack.seq
    again = await next_matching(dlq, lambda m: json.loads(m.data)["data"]["stream_seq"] == replayed[0]["new_seq"],
                                timeout=30)
    assert json.loads(again.data)["data"]["consumer"] == "routing"
    assert replayed[0]["removed"] is True
    left = json.loads(alur.cli("dlq", "list", "--json").stdout)
    assert [d["stream_seq"] for d in left] == [replayed[0]["new_seq"]], "the replayed dead letter is gone"
    logs = alur.logs()
    assert not any(secret in logs for secret in CONFIDENTIAL)
    await admin.close()


async def test_status_shows_streams_lag_and_referrals(alur: Running) -> None:
    reporter = await alur.agency("bp3mi-kalsel")
    admin = await alur.admin()
    refs = await admin.jetstream().subscribe("alur.referral.delivered.*", stream="REFERRALS", ordered_consumer=True,
                                             deliver_policy=DeliverPolicy.ALL)
    await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(REFERENCE_REPORT).encode(), timeout=5)
    for _ in range(5):  # five referrals tracked (each is delivered as notify tracks it) before the CLI looks
        await next_matching(refs, lambda m: True, timeout=30)
    status = json.loads(alur.cli("status", "--json").stdout)
    assert status["streams"]["REPORTS"]["messages"] == 1
    assert {c["consumer"] for c in status["consumers"]} >= {"intake", "routing", "notify-requests"}
    assert sum(status["referrals_by_status"].values()) >= 5
    assert "bp3mi-kalsel" in status["referrals_by_agency"]
    assert status["dead_letters"] == 0
    human = alur.cli("status").stdout
    assert "REFERRALS" in human and "dead letters: 0" in human
    await reporter.close()
    await admin.close()
