"""Both HTTP doors (intake `POST /v1/reports`, notify `POST /v1/referrals/{id}/responses`) against a real
`alur up` (issues 10.6, 17.7 and 17.8):

- a per-token rate limit: past the burst, 429 with `Retry-After`; other agencies unaffected; it recovers;
- unknown tokens are limited by the caller's address, so guessing is slow; a known token from another
  address is not held back;
- the body limit: 413 for an oversized body, declared or streamed, on both doors;
- progress notes past the cap are refused (409 `note_limit`) while status changes are still recorded,
  and an answer whose state cannot be saved is never answered 202;
- another agency cannot make a report "a duplicate" by publishing its event id first (17.8).

The stack runs with a small burst and a slow refill (ALUR_HTTP_RATE_BURST=5, ALUR_HTTP_RATE_PER_SECOND=0.05)
and ALUR_MAX_PROGRESS_NOTES=3, so each limit is reached in a few requests; each test spends the budget of
agencies no other test here uses.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from runtime.app import MAX_BODY
from tests.conftest import (
    Running,
    alur_stack,
    reference_report,
)
from tests.support import (
    Feed,
    about,
    case_referrals,
    publish_report,
    referral_state,
    respond,
    wait_for,
)

BURST = 5
RATE = 0.05  # one request every 20 s once the burst is spent: even a loaded machine spends a burst faster


@pytest.fixture(scope="module")
def doors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from alur_stack(tmp_path_factory.mktemp("http-doors") / "alur", ALUR_SLA_SCALE="0.01",
                          ALUR_HTTP_RATE_BURST=str(BURST), ALUR_HTTP_RATE_PER_SECOND=str(RATE),
                          ALUR_MAX_PROGRESS_NOTES="3")


def token_of(running: Running, agency: str) -> dict[str, str]:
    token = json.loads(running.cli("agency", "creds", agency, "--json").stdout)["http_token"]
    return {"Authorization": f"Bearer {token}"}


def from_address(address: str) -> httpx.AsyncClient:
    """A client whose connections come from `address` (any of 127.0.0.0/8 reaches the loopback server)."""
    return httpx.AsyncClient(timeout=30, transport=httpx.AsyncHTTPTransport(local_address=address))


async def spend(client: httpx.AsyncClient, url: str, headers: dict[str, str], body: Any) -> list[int]:
    """POST `body` until the door answers 429; the statuses, the 429 last (at most BURST + 1 requests)."""
    statuses = []
    for _ in range(BURST + 1):
        answer = await client.post(url, content=body, headers=headers)
        statuses.append(answer.status_code)
        if answer.status_code == 429:
            wait = answer.headers["retry-after"]
            assert wait.isdigit() and 1 <= int(wait) <= 1 / RATE, wait
            assert "Retry-After" in answer.json()["error"]
            break
    return statuses


async def recovers(client: httpx.AsyncClient, url: str, headers: dict[str, str], body: Any) -> int:
    """Poll until the door serves the caller again (a refused request spends nothing); its status."""
    async def served() -> int:
        status = (await client.post(url, content=body, headers=headers)).status_code
        return 0 if status == 429 else status
    return await wait_for(served, timeout=2 / RATE + 30, every=0.5)


@pytest.mark.timeout(300)
async def test_each_door_limits_each_token_and_recovers(doors: Running) -> None:
    intake = f"{doors.http('intake')}/v1/reports"
    notify = f"{doors.http('notify')}/v1/referrals/ref-{'0' * 20}/responses"
    async with from_address("127.0.0.1") as client:
        # intake: a report that is rejected (stored, then 422) costs the same as any other
        reporter, other = token_of(doors, "dinsos-banjarbaru"), token_of(doors, "dinkes-banjarbaru")
        statuses = await spend(client, intake, reporter, b"{}")
        assert statuses == [422] * BURST + [429]
        assert (await client.post(intake, content=b"{}", headers=other)).status_code == 422, "others unaffected"
        assert await recovers(client, intake, reporter, b"{}") == 422

        # notify: a body that is not JSON is answered 400 at once, after the caller is admitted
        responder, bystander = token_of(doors, "uptd-ppa-banjarbaru"), token_of(doors, "polres-banjarbaru")
        statuses = await spend(client, notify, responder, b"not json")
        assert statuses == [400] * BURST + [429]
        assert (await client.post(notify, content=b"not json", headers=bystander)).status_code == 400
        assert await recovers(client, notify, responder, b"not json") == 400


@pytest.mark.timeout(300)
async def test_unknown_tokens_are_limited_by_address(doors: Running) -> None:
    notify = f"{doors.http('notify')}/v1/referrals/ref-{'0' * 20}/responses"
    known = token_of(doors, "polres-banjar")
    async with from_address("127.0.0.2") as guesser, from_address("127.0.0.1") as agency:
        guesses = [{"Authorization": f"Bearer guess-{n}"} for n in range(BURST + 1)]
        statuses = [(await guesser.post(notify, content=b"{}", headers=h)).status_code for h in guesses]
        assert statuses == [401] * BURST + [429]
        assert (await guesser.post(notify, content=b"{}")).status_code == 429, "no token: the same budget"
        # While the address is held, a right guess cannot be told from a wrong one.
        assert (await guesser.post(notify, content=b"not json", headers=known)).status_code == 429
        # The same agency from its own address is served.
        assert (await agency.post(notify, content=b"not json", headers=known)).status_code == 400
        assert await recovers(guesser, notify, {"Authorization": "Bearer guess-again"}, b"{}") == 401
    logs = doors.logs()
    assert known["Authorization"].split()[1] not in logs


async def test_an_oversized_body_is_refused_on_both_doors(doors: Running) -> None:
    too_big = b"x" * (MAX_BODY + 1)

    async def streamed() -> Any:  # no content-length: the limit is checked as the body arrives
        for offset in range(0, len(too_big), 65536):
            yield too_big[offset:offset + 65536]

    async with from_address("127.0.0.1") as client:
        for url, agency in ((f"{doors.http('intake')}/v1/reports", "uptd-ppa-banjar"),
                            (f"{doors.http('notify')}/v1/referrals/ref-{'0' * 20}/responses", "dinkes-tanah-bumbu")):
            headers = token_of(doors, agency)
            declared = await client.post(url, content=too_big, headers=headers)
            assert declared.status_code == 413 and str(MAX_BODY) in declared.json()["error"]
            chunked = await client.post(url, content=streamed(), headers=headers)
            assert chunked.status_code == 413


async def test_notes_past_the_cap_are_refused_and_no_202_is_given_for_an_answer_not_recorded(
    doors: Running,
) -> None:
    report_ref = "BP3MI-KS-2026-0781"
    await publish_report(doors, reference_report(report_ref=report_ref) | {"id": str(uuid.uuid4())})
    admin = await doors.admin()
    js = admin.jetstream()
    feed = await Feed.open(js)
    _, referrals = await case_referrals(js, case_id=doors.case_id("bp3mi-kalsel", report_ref))
    rid = next(r for r, entry in referrals.items() if entry["agency"] == "dinkes-banjarmasin")
    await wait_for(lambda: referral_state(js, rid))
    health = await doors.agency("dinkes-banjarmasin")
    await respond(health, "dinkes-banjarmasin", rid, "accepted")
    await respond(health, "dinkes-banjarmasin", rid, "in_progress")
    for n in range(3):  # ALUR_MAX_PROGRESS_NOTES
        await respond(health, "dinkes-banjarmasin", rid, "in_progress", note=f"update {n}")
    await feed.seek(about("in_progress", rid, note="update 2"))

    url = f"{doors.http('notify')}/v1/referrals/{rid}/responses"
    headers = token_of(doors, "dinkes-banjarmasin")
    async with httpx.AsyncClient(timeout=30) as http:
        full = await http.post(url, json={"status": "in_progress", "note": "update 3"}, headers=headers)
        assert full.status_code == 409 and full.json()["code"] == "note_limit", full.text
        assert "3 progress notes" in full.json()["error"]
        held = await http.post(url, json={"status": "on_hold", "note": "waiting for the victim's consent"},
                               headers=headers)
        assert held.status_code == 202 and held.json()["applied"] is True, "a status change is still recorded"

        # The state cannot be saved (its KV bucket takes no value that large now): never 202.
        stream = await js.stream_info("KV_referrals")
        config = stream.config
        config.max_msg_size = 512
        await js.update_stream(config)
        try:
            failed = await http.post(url, json={"status": "completed", "note": "service given"}, headers=headers)
            assert failed.status_code == 503, failed.text
            # "could not be saved", or on a loaded machine "not decided in time": stored, never said applied
            assert failed.json()["stored"] is True and failed.json().get("applied", False) is False
            assert failed.headers["retry-after"].isdigit()
            state = await referral_state(js, rid)
            assert state is not None and state["status"] == "on_hold", "not applied, and not said to be"
        finally:
            config.max_msg_size = -1
            await js.update_stream(config)
        again = await http.post(url, json={"status": "completed", "note": "service given"}, headers=headers)
        assert again.status_code == 202, again.text  # applied now, or already by the consumer's retry
    completed = (await feed.seek(about("completed", rid))).data
    assert completed["note"] == "service given"
    state = await referral_state(js, rid)
    assert state is not None and state["status"] == "completed" and state["progress_notes"] == 3
    await health.close()
    await admin.close()


async def test_another_agency_cannot_suppress_a_report_by_taking_its_event_id(doors: Running) -> None:
    """The squatter publishes, on its own subject, the victim's next event id, bare and in the door's scoped
    form; the victim's report over HTTP is still stored under its own subject and becomes its case."""
    event_id = f"evt-{uuid.uuid4().hex[:8]}"
    squatter = await doors.agency("polres-kotabaru")
    try:
        for msg_id in (event_id, f"dinsos-kalsel:{event_id}"):
            await squatter.jetstream().publish("alur.report.polres-kotabaru", b"{}", headers={"Nats-Msg-Id": msg_id},
                                               timeout=10)
    finally:
        await squatter.close()
    report = reference_report(report_ref="DINSOS-KS-17-8") | {"id": event_id, "source": "dinsos-kalsel"}
    admin = await doors.admin()
    js = admin.jetstream()
    url = f"{doors.http('intake')}/v1/reports"
    async with from_address("127.0.0.1") as client:
        first = await client.post(url, json=report, headers=token_of(doors, "dinsos-kalsel"))
        assert first.status_code == 202 and first.json()["duplicate"] is False, first.text
        again = await client.post(url, json=report, headers=token_of(doors, "dinsos-kalsel"))
        assert again.status_code == 202 and again.json()["duplicate"] is True, "its own retry is the duplicate"
        assert again.json()["stream_seq"] == first.json()["stream_seq"]
    kept = await js.get_msg("REPORTS", first.json()["stream_seq"])
    assert kept.subject == "alur.report.dinsos-kalsel" and json.loads(kept.data)["id"] == event_id
    case_id = doors.case_id("dinsos-kalsel", "DINSOS-KS-17-8")
    assert first.json()["case_id"] == case_id

    async def registered() -> bool:
        try:
            return bool((await (await js.key_value("cases")).get(case_id)).value)
        except Exception:
            return False

    await wait_for(registered)
    await admin.close()
