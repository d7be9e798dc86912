"""Every event the running services publish has its type in the catalogue and validates against its schema.

One `alur up` at a small SLA scale; the test plays the agencies: a report and a follow-up, a bad report,
answers that walk referrals through every status an agency can set, a wrong sender, a silent agency whose
referral is reminded, raised and expired, and a poison message that ends in the DLQ. Then it reads every
fact on CASES, REFERRALS and DLQ and checks each against `contracts/schemas/<type>.json`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from contracts.catalog import EVENTS
from contracts.schema_gen import SCHEMA_DIR
from runtime.bus import scan
from tests.conftest import (
    REFERENCE_REPORT,
    Running,
    alur_env,
    reference_report,
    start_alur,
    stop_alur,
)
from tests.support import Feed, about, publish_report, respond, wait_for

SCALE = 0.0003
"""A high-priority referral is acknowledged within 1.08 s and expires 6.48 s later: the child of the reference
report, left unanswered. The answers go to an adult's low-priority referrals (due in 26 s), so a loaded
machine cannot make them late."""
ADULT = {"pseudonym": "KS-0500", "age": 30, "sex": "female", "nationality": "wni",
         "migration_profile": "pmi_non_procedural", "disabilities": []}
EXPECTED = {
    "alur.case.registered.v1", "alur.case.updated.v1", "alur.case.rejected.v1", "alur.referral.requested.v1",
    "alur.referral.delivered.v1", "alur.referral.acknowledged.v1", "alur.referral.accepted.v1",
    "alur.referral.in_progress.v1", "alur.referral.on_hold.v1", "alur.referral.completed.v1",
    "alur.referral.rejected.v1", "alur.referral.redirected.v1", "alur.referral.not_delivered.v1",
    "alur.referral.reminded.v1", "alur.referral.escalated.v1", "alur.referral.expired.v1",
    "alur.referral.outcome.v1", "alur.referral.response_refused.v1", "alur.deadletter.v1",
}


@pytest.fixture
def fast(tmp_path: Path) -> Iterator[Running]:
    data_dir = tmp_path / "alur"
    running = start_alur(data_dir, env=alur_env(data_dir, ALUR_SLA_SCALE=str(SCALE)))
    yield running
    if running.process.poll() is None:
        stop_alur(running)


def _validators() -> dict[str, Draft202012Validator]:
    return {name: Draft202012Validator(json.loads((SCHEMA_DIR / f"{name}.json").read_text())) for name in EVENTS}


async def _drive(running: Running, feed: Feed) -> None:
    """Cause every kind of fact: each answer goes to a referral still open, held by the agency that answers."""
    adult = reference_report(report_ref="BP3MI-KS-2026-0500", victim=ADULT, risk="low")
    adult["id"] = str(uuid.uuid4())
    await publish_report(running, adult)
    requested = [(await feed.seek(about("requested", agency=a, priority="low"))).data for a in
                 ("polresta-banjarmasin", "bp3mi-kalsel", "uptd-ppa-banjarmasin", "dinsos-banjarmasin")]
    police, bp3mi, ppa, dinsos = requested
    clients = {r["agency"]: await running.agency(r["agency"]) for r in requested}

    async def answer(referral: dict[str, Any], *steps: tuple[str, dict[str, Any]]) -> None:
        for status, extra in steps:
            await respond(clients[referral["agency"]], referral["agency"], referral["referral_id"], status, **extra)
            await feed.seek(about(status, referral["referral_id"]))

    await answer(police, ("acknowledged", {}), ("accepted", {}), ("in_progress", {"note": "statement taken"}),
                 ("on_hold", {"note": "waiting for the victim"}), ("completed", {"note": "case file sent"}))
    await answer(bp3mi, ("rejected", {"reason": "no_capacity_waitlist"}))
    await answer(ppa, ("redirected", {"redirect_to": "uptd-ppa-kalsel"}))
    await answer(dinsos, ("accepted", {}), ("not_delivered", {"reason": "could_not_contact"}))
    await respond(clients["bp3mi-kalsel"], "bp3mi-kalsel", police["referral_id"], "accepted")
    await feed.seek(about("response_refused", agency="bp3mi-kalsel"))
    await feed.seek(about("outcome"))

    await publish_report(running, REFERENCE_REPORT)
    followup = reference_report(report_ref="BP3MI-KS-2026-0500-F1", case_id=police["case_id"], needs=["documents"])
    for key in list(followup["data"]):
        if key not in ("report_ref", "case_id", "needs"):
            del followup["data"][key]
    followup["id"] = str(uuid.uuid4())
    await publish_report(running, followup)
    bad = reference_report(report_ref="BAD-1", victim={"age": "sixteen"})
    bad["id"] = str(uuid.uuid4())
    await publish_report(running, bad)

    await feed.seek(about("expired"), timeout=60)
    admin = await running.admin()
    poison = {"specversion": "1.0", "id": "poison-1", "type": "alur.case.registered.v1", "source": "test",
              "data": {"case_id": "not-a-case"}}
    await admin.jetstream().publish("alur.case.registered.6371", json.dumps(poison).encode(), timeout=5)
    await wait_for(lambda: _stream_has(admin.jetstream(), "DLQ"), timeout=60)
    await admin.close()
    for client in clients.values():
        await client.close()


async def _stream_has(js: Any, stream: str) -> bool:
    return (await js.stream_info(stream)).state.messages > 0


async def test_every_published_event_validates_against_the_schema_of_its_type(fast: Running) -> None:
    admin = await fast.admin()
    js = admin.jetstream()
    feed = await Feed.open(js)
    await _drive(fast, feed)

    validators = _validators()
    seen: set[str] = set()
    problems: list[str] = []
    for stream in ("CASES", "REFERRALS", "DLQ"):
        async for msg in scan(js, stream):
            event = json.loads(msg.data)
            kind = event.get("type")
            if event.get("id") == "poison-1":
                continue  # the test's own poison, published as admin to reach the DLQ
            if kind not in validators:
                problems.append(f"{stream} {msg.subject}: type {kind!r} is not in the catalogue")
                continue
            seen.add(kind)
            problems += [f"{kind} on {msg.subject}: {e.message}" for e in validators[kind].iter_errors(event)][:3]
    await admin.close()
    assert not problems, "\n".join(problems[:20])
    assert EXPECTED <= seen, f"never seen: {sorted(EXPECTED - seen)}"
