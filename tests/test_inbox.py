"""The agencies' web inbox (issue 16) against a real `alur up`, one stack for the module, SLAs at full length
so referrals stay open while an officer answers them.

Two health offices join as inbox agencies (`alur agency add … --channel inbox`). Only their own open
referrals reach them, with their agency type's view of the case; every answer goes through notify's
response path (same checks, same events, refusals with their reason); a system agency and the
secretariat have no inbox. A real browser (headless Chromium) plays the officer on a phone, and the
coordinator's board shows the officer's answers live.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    CONFIDENTIAL,
    REPO,
    Running,
    alur_env,
    reference_report,
    start_alur,
    stop_alur,
)
from tests.support import chromium, in_thread, publish_report, wait_for

ARTIFACTS = Path(os.environ.get("ALUR_ARTIFACTS", REPO / ".artifacts")) / "inbox"
INBOX = "dinkes-banjarmasin"  # health in 6371, the reference case's regency: its medical referral lands here
OTHER = "dinkes-banjarbaru"  # health in 6372, an inbox agency too: never sees INBOX's referrals
SYSTEM = "polda-kalsel"  # reads its NATS consumer: no inbox
SECRETARIAT = "gt-kalsel"


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("inbox") / "alur"
    running = start_alur(data_dir, env=alur_env(data_dir, ALUR_SLA_SCALE="1"))
    try:
        for agency, regency in ((INBOX, "6371"), (OTHER, "6372")):
            running.cli("agency", "add", agency, "--type", "health", "--regions", regency, "--channel", "inbox",
                        "--name", f"Dinas Kesehatan {regency}")
        yield running
    finally:
        if running.process.poll() is None:
            stop_alur(running)


def token(running: Running, agency: str) -> str:
    return running.secrets.agency(agency).http_token


def bearer(running: Running, agency: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.http("board"), timeout=30,
                             headers={"Authorization": f"Bearer {token(running, agency)}"})


def new_report(running: Running) -> tuple[dict[str, Any], str]:
    ref = f"INBOX-{uuid.uuid4().hex[:8]}"
    report = reference_report(report_ref=ref)
    report["id"] = str(uuid.uuid4())
    return report, running.case_id("bp3mi-kalsel", ref)


async def inbox_rows(http: httpx.AsyncClient, case_id: str | None = None) -> list[dict[str, Any]]:
    answer = await http.get("/api/inbox")
    assert answer.status_code == 200, answer.text
    return [r for r in answer.json() if case_id in (None, r["case_id"])]


async def inbox_of(http: httpx.AsyncClient, case_id: str) -> list[dict[str, Any]]:
    """The case's referrals in the inbox, once they are there (and the board's registry knows the agency)."""
    async def listed() -> list[dict[str, Any]] | None:
        answer = await http.get("/api/inbox")
        if answer.status_code != 200:
            return None
        return [r for r in answer.json() if r["case_id"] == case_id] or None
    return await wait_for(listed, timeout=60, every=0.3)


@pytest.fixture(scope="module")
def reference_case(running: Running) -> str:
    report, case_id = new_report(running)
    asyncio.run(publish_report(running, report))
    return case_id


async def test_only_the_agencys_own_referrals_with_its_view_and_no_one_elses_inbox(
    running: Running, reference_case: str,
) -> None:
    async with bearer(running, INBOX) as mine, bearer(running, OTHER) as other, \
            bearer(running, SYSTEM) as system, bearer(running, SECRETARIAT) as secretariat:
        rows = await inbox_of(mine, reference_case)
        assert {r["agency"] for r in rows} == {INBOX}
        assert "medical" in {r["service"] for r in rows}
        for row in rows:
            assert row["case"]["case_id"] == reference_case and row["case"]["regency"] == "6371"
            assert "narrative" not in row["case"], "health never sees the narrative"
            assert row["deadline"]["kind"] == "acknowledge" and row["status"] in ("requested", "delivered")
            assert [a["status"] for a in row["actions"]] == ["acknowledged", "accepted", "rejected", "redirected"]
        assert CONFIDENTIAL[3] not in json.dumps(rows)
        assert not {"replaces", "escalation_level", "agency_type"} & set(rows[0]), "only what the agency needs"
        assert await inbox_rows(other, reference_case) == []
        assert all(r["agency"] == OTHER for r in await inbox_rows(other))
        for http in (system, secretariat):
            assert (await http.get("/api/inbox")).status_code == 403
            assert (await http.post(f"/api/inbox/{rows[0]['referral_id']}", json={"status": "acknowledged"})
                    ).status_code == 403
        assert (await mine.get("/api/referrals")).status_code == 403, "an inbox agency does not see the board"
    async with httpx.AsyncClient(base_url=running.http("board"), timeout=30) as anonymous:
        assert (await anonymous.get("/api/inbox")).status_code == 401
        page = await anonymous.get("/inbox")
        assert page.status_code == 303 and page.headers["location"] == "/login"
        signed = await anonymous.post("/login", data={"token": token(running, INBOX)})
        assert signed.status_code == 303 and signed.headers["location"] == "/inbox"
        assert (await anonymous.get("/")).headers["location"] == "/inbox"
        assert (await anonymous.post("/login", data={"token": token(running, SYSTEM)})).status_code == 403


async def test_every_answer_takes_notifys_path_and_a_refusal_says_why(running: Running, reference_case: str) -> None:
    admin = await running.admin()
    js = admin.jetstream(timeout=10)
    try:
        async with bearer(running, INBOX) as mine, bearer(running, OTHER) as other:
            row = next(r for r in await inbox_of(mine, reference_case) if r["service"] == "medical")
            rid, path = row["referral_id"], f"/api/inbox/{row['referral_id']}"

            assert (await mine.post(path, content=b"status=acknowledged",
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})).status_code == 415
            missing = await mine.post(path, json={"status": "rejected"})
            assert missing.status_code == 422 and "reason" in missing.json()["error"]
            assert (await mine.post(path, json={"status": "unheard_of"})).status_code == 422
            stranger = await other.post(path, json={"status": "acknowledged"})
            assert stranger.status_code == 404 and stranger.json()["code"] == "unknown_referral"

            acked = await mine.post(path, json={"status": "acknowledged"})
            assert acked.status_code == 202 and acked.json()["applied"] is True, acked.text
            accepted = await mine.post(path, json={"status": "accepted", "note": "seen at the Puskesmas"})
            assert accepted.status_code == 202, accepted.text
            again = await mine.post(path, json={"status": "acknowledged"})
            assert again.status_code == 202 and again.json()["duplicate"] is True
            backwards = await mine.post(path, json={"status": "rejected", "reason": "out_of_mandate"})
            assert backwards.status_code == 409 and backwards.json()["code"] == "impossible_transition"

            async def progressed() -> list[dict[str, Any]] | None:
                rows = await inbox_rows(mine, reference_case)
                match = [r for r in rows if r["referral_id"] == rid and r["status"] == "accepted"]
                return match or None
            moved = (await wait_for(progressed, timeout=30, every=0.2))[0]
            assert "update" in {d["kind"] for d in moved["deadlines"]}
            assert "in_progress" in {a["status"] for a in moved["actions"]}

        # the same facts as a system's answers: the statuses with the answers' ids, the refusals with theirs
        statuses = {}
        refused = []
        sub = await js.subscribe("alur.referral.>", stream="REFERRALS", ordered_consumer=True)
        try:
            while True:  # the stream as it stands now, however slowly it arrives
                msg = await sub.next_msg(timeout=30)
                data = json.loads(msg.data)["data"]
                if data.get("referral_id") == rid:
                    if msg.subject.startswith("alur.referral.response_refused."):
                        refused.append((msg.subject.rsplit(".", 1)[1], data["code"]))
                    elif data.get("status") in ("acknowledged", "accepted"):
                        statuses[data["status"]] = data
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        assert statuses["acknowledged"]["response_id"] == acked.json()["event_id"]
        assert statuses["accepted"]["note"] == "seen at the Puskesmas"
        assert (INBOX, "impossible_transition") in refused and (OTHER, "unknown_referral") in refused
    finally:
        await admin.close()


def test_in_a_browser_an_officer_answers_on_a_phone_and_the_board_sees_it(running: Running) -> None:
    executable = chromium()
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=60_000)  # page.set_default_timeout does not reach `expect` (5 s)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report, case_id = new_report(running)
    base = running.http("board")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
            page = phone.new_page()
            page.set_default_timeout(60_000)
            page.goto(base + "/inbox")
            expect(page).to_have_url(base + "/login")
            page.keyboard.press("Tab")
            page.fill("#token", token(running, INBOX))
            page.keyboard.press("Enter")
            expect(page).to_have_url(base + "/inbox")
            expect(page.locator("h1")).to_contain_text(f"Rujukan untuk {INBOX}")
            page.wait_for_function("document.documentElement.dataset.stream === 'open'")
            page.evaluate("window.__notReloaded = true")

            board = browser.new_page(viewport={"width": 1280, "height": 900})
            board.set_default_timeout(60_000)
            board.goto(base + "/login")
            board.fill("#token", token(running, SECRETARIAT))
            board.keyboard.press("Enter")
            expect(board.locator("h1")).to_contain_text("Rujukan terbuka")

            in_thread(lambda: publish_report(running, report))
            card = page.locator(f'article[data-referral]:has-text("{case_id}")').filter(
                has_text="Layanan kesehatan").first
            expect(card).to_be_visible()  # arrived live
            assert page.evaluate("window.__notReloaded === true"), "the page reloaded instead of updating live"
            rid = card.get_attribute("data-referral")
            assert rid
            expect(card.locator(".due")).to_contain_text("Tanggapi rujukan ini paling lambat")
            card.locator("details.case summary").click()
            expect(card.locator("dl.facts")).to_contain_text(case_id)
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), \
                "the inbox is wider than a phone"
            page.screenshot(path=str(ARTIFACTS / "1-new-referral-on-a-phone.png"), full_page=True)

            page.focus(f"#do-{rid}-acknowledged")  # keyboard: focus the button, press Enter
            page.keyboard.press("Enter")
            card = page.locator(f'article[data-referral="{rid}"]')
            expect(card).to_have_attribute("data-status", "acknowledged")
            expect(card.locator(".message")).to_contain_text("Tercatat")

            # a refused answer shows notify's reason on the page
            card.locator("details.more summary").click()
            card.locator(f"#a-{rid}-rejected").check()
            card.locator(f"#reason-{rid}").select_option("other")
            card.locator("form.answer button[type=submit]").click()
            expect(card.locator(".message.refused")).to_contain_text("note")
            page.screenshot(path=str(ARTIFACTS / "2-refused-with-its-reason.png"), full_page=True)

            page.locator(f"#do-{rid}-accepted").click()
            expect(page.locator(f'article[data-referral="{rid}"]')).to_have_attribute("data-status", "accepted")
            expect(page.locator(f'article[data-referral="{rid}"] .due')).to_contain_text("Kabari perkembangan")

            row = board.locator(f'tr[data-referral="{rid}"]')
            expect(row).to_contain_text("diterima", timeout=30_000)  # the coordinator sees it within seconds
            board.screenshot(path=str(ARTIFACTS / "3-board-sees-the-answer.png"), full_page=True)

            page.click("#lang-switch")
            expect(page.locator("h1")).to_contain_text(f"Referrals for {INBOX}")
            expect(page.locator(f'article[data-referral="{rid}"] .status')).to_contain_text("accepted")
            page.screenshot(path=str(ARTIFACTS / "4-english.png"), full_page=True)

            stranger = browser.new_page()
            stranger.goto(base + "/login")
            stranger.fill("#token", token(running, OTHER))
            stranger.keyboard.press("Enter")
            expect(stranger.locator("h1")).to_contain_text(f"Rujukan untuk {OTHER}")
            assert stranger.locator(f'article[data-referral="{rid}"]').count() == 0
            assert case_id not in stranger.content()
            phone.close()
        finally:
            browser.close()


async def test_nothing_confidential_reaches_the_boards_log(running: Running) -> None:
    log = (running.data_dir / "board.log").read_text(errors="replace")
    assert "inbox answer" in log
    for secret in (*CONFIDENTIAL, token(running, INBOX)):
        assert secret not in log, secret


def test_agency_check_says_the_inbox_opens_with_the_agencys_token(running: Running) -> None:
    env = {**running.env, "ALUR_BOARD_URL": running.http("board")}
    result = subprocess.run([sys.executable, "-m", "alur.cli", "agency", "check", INBOX, "--json"], env=env,
                            text=True, capture_output=True, timeout=60)
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["passed"] and report["channel"] == "inbox", result.stdout + result.stderr
    assert [c["check"] for c in report["checks"]] == ["board reachable", "token opens the inbox"]
    assert token(running, INBOX) not in result.stdout


async def test_a_rotated_token_ends_the_sessions_opened_with_it(running: Running) -> None:
    """Last: it rotates OTHER's token. A leaked token, or an officer who left, is rotated; the cookies it
    opened stop working at once."""
    async with httpx.AsyncClient(base_url=running.http("board"), timeout=30) as officer:
        assert (await officer.post("/login", data={"token": token(running, OTHER)})).status_code == 303
        assert (await officer.get("/api/inbox")).status_code == 200
        running.cli("agency", "rotate", OTHER)

        async def ended() -> bool:
            return (await officer.get("/api/inbox")).status_code == 401
        await wait_for(ended, timeout=30, every=0.3)
        assert (await officer.get("/inbox")).headers["location"] == "/login"
    async with bearer(running, OTHER) as fresh:  # the new token works
        assert (await fresh.get("/api/inbox")).status_code == 200
