"""The coordinator's board against a real `alur up` (one stack for the module): sign-in and refusal, the API,
live changes over SSE, a rebuild from the streams, a real browser (headless Chromium through Playwright),
and finally need-to-know over every API response and page of the whole run.

Browser tests skip, saying why, when Playwright for Python or a Chromium binary is missing (`.ci/run`
installs both). Screenshots go to `ALUR_ARTIFACTS` (default `.artifacts/`)/board.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from alur.embedded import free_port
from tests.conftest import (
    CONFIDENTIAL,
    REPO,
    Running,
    reference_report,
    start_alur,
    stop_alur,
)
from tests.support import chromium, in_thread, publish_report, respond, wait_for

ARTIFACTS = Path(os.environ.get("ALUR_ARTIFACTS", REPO / ".artifacts")) / "board"
API = ("/api/referrals", "/api/agencies", "/api/duplicates", "/api/regions", "/api/stream",
       "/api/cases/case-00000000000000000000")
PAGES = ("/", "/agencies", "/duplicates", "/regions")


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    data_dir = tmp_path_factory.mktemp("board") / "alur"
    running = start_alur(data_dir)
    asyncio.run(publish_report(running, reference_report()))
    yield running
    if running.process.poll() is None:
        stop_alur(running)


def token(running: Running, agency: str = "gt-kalsel") -> str:
    """The agency's HTTP token, as `alur agency creds` would print it."""
    return running.secrets.agency(agency).http_token


def client(running: Running, address: str = "127.0.0.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=running.http("board"), timeout=30,
                             transport=httpx.AsyncHTTPTransport(local_address=address))


async def signed_in(running: Running) -> httpx.AsyncClient:
    http = client(running)
    answer = await http.post("/login", data={"token": token(running)})
    assert answer.status_code == 303, answer.text
    return http


def new_report(running: Running) -> tuple[dict[str, Any], str]:
    """A new reference-like report (its own id and report_ref) and the case id intake will give it."""
    ref = f"BOARD-{uuid.uuid4().hex[:8]}"
    report = reference_report(report_ref=ref)
    report["id"] = str(uuid.uuid4())
    return report, running.case_id("bp3mi-kalsel", ref)


async def test_every_api_call_and_page_is_refused_without_sign_in(board: Running) -> None:
    police = token(board, "polda-kalsel")
    async with client(board, "127.0.0.2") as http:
        for path in API:
            assert (await http.get(path)).status_code == 401, path
            assert (await http.get(path, headers={"Authorization": "Bearer nope"})).status_code in (401, 429), path
            assert (await http.get(path, headers={"Authorization": f"Bearer {police}"})).status_code == 403, path
            assert (await http.get(path, cookies={"alur_board_session": "forged"})).status_code == 401, path
        for path in (*PAGES, "/cases/case-00000000000000000000"):
            answer = await http.get(path)
            assert answer.status_code == 303 and answer.headers["location"] == "/login", path
        assert (await http.get("/login")).status_code == 200
        assert (await http.get("/healthz")).status_code == 200


async def test_sign_in_gives_a_strict_http_only_cookie_and_attempts_are_rate_limited(board: Running) -> None:
    secretariat, police = token(board), token(board, "polda-kalsel")
    async with client(board, "127.0.0.3") as http:
        statuses = [(await http.post("/login", data={"token": f"guess-{i}"})).status_code for i in range(12)]
        assert statuses[0] == 401 and statuses[-1] == 429, statuses
        assert (await http.post("/login", data={"token": secretariat})).status_code == 429  # the address waits
    async with client(board, "127.0.0.4") as http:
        assert (await http.post("/login", data={"token": police})).status_code == 403
        answer = await http.post("/login", data={"token": secretariat})
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/" in cookie
        assert (await http.get("/api/referrals")).status_code == 200
        page = await http.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
        assert (await http.post("/logout")).status_code == 303
        assert (await http.get("/api/referrals")).status_code == 401


async def test_referrals_arrive_live_and_late_ones_come_first(board: Running) -> None:
    http = await signed_in(board)
    try:
        await wait_for(lambda: _ready(board), timeout=60)
        report, case_id = new_report(board)
        async with http.stream("GET", "/api/stream") as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("retry:")
            await publish_report(board, report)

            async def change() -> bool:
                while True:
                    if (await asyncio.wait_for(anext(lines), 60)) == "event: change":
                        return True

            assert await change()

        async def escalated() -> list[dict[str, Any]] | None:
            rows = (await http.get("/api/referrals")).json()
            mine = [r for r in rows if r["case_id"] == case_id]
            return rows if mine and any(r["escalation_level"] >= 1 and r["overdue"] for r in mine) else None

        rows = await wait_for(escalated, timeout=60, every=0.3)
        fields = {"referral_id", "case_id", "agency", "agency_type", "service", "status", "priority", "due",
                  "overdue", "escalation_level"}
        assert all(fields <= set(r) for r in rows)
        overdue = [r["overdue"] for r in rows]
        assert overdue == sorted(overdue, reverse=True)
        case = (await http.get(f"/api/cases/{case_id}")).json()
        kinds = {e["kind"] for e in case["events"]}
        assert {"reported", "referred", "delivered", "reminded"} <= kinds
        assert all(r["rules"] and all(x["legal_basis"] for x in r["rules"]) for r in case["referrals"])
    finally:
        await http.aclose()


async def _ready(running: Running) -> bool:
    async with client(running) as http:
        return (await http.get("/readyz")).status_code == 200


async def test_a_second_board_rebuilds_the_same_model_from_the_streams(board: Running, tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {**board.env, "ALUR_BOARD_HTTP": address}
    log = (tmp_path / "board2.log").open("wb")
    second = subprocess.Popen([sys.executable, "-m", "alur.serve", "board"], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)
    headers = {"Authorization": f"Bearer {token(board)}"}
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            async def ready() -> bool:
                try:
                    return (await http.get(f"http://{address}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for(ready, timeout=60, every=0.3)

            async def same() -> bool:
                first = (await http.get(f"{board.http('board')}/api/agencies", headers=headers)).json()
                again = (await http.get(f"http://{address}/api/agencies", headers=headers)).json()
                return bool(first) and first == again

            await wait_for(same, timeout=60, every=0.5)
            async with http.stream("GET", f"http://{address}/api/stream", headers=headers) as stream:
                lines = stream.aiter_lines()
                assert (await anext(lines)).startswith("retry:")
                second.terminate()  # an open event stream ends as the board stops, not when a grace runs out
                with contextlib.suppress(httpx.HTTPError):
                    async for _ in lines:
                        pass
        await asyncio.to_thread(second.wait, 60)
        stopped = (tmp_path / "board2.log").read_text()
        assert "Application shutdown complete" in stopped and "graceful shutdown exceeded" not in stopped
    finally:
        if second.poll() is None:
            second.kill()
        second.wait(30)
        log.close()


# ---------------------------------------------------------------- a real browser


def test_in_a_browser_sign_in_watch_a_referral_escalate_open_its_case_switch_language(board: Running) -> None:
    executable = chromium()
    from playwright.sync_api import expect, sync_playwright
    expect.set_options(timeout=60_000)  # page.set_default_timeout does not reach `expect` (5 s)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    report, case_id = new_report(board)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(board.http("board") + "/")
            expect(page).to_have_url(board.http("board") + "/login")
            page.keyboard.press("Tab")  # keyboard first: the skip link, then the token field
            page.fill("#token", token(board))
            page.keyboard.press("Enter")
            expect(page.locator("h1")).to_contain_text("Rujukan terbuka")
            page.wait_for_function("document.documentElement.dataset.stream === 'open'")
            page.evaluate("window.__notReloaded = true")
            page.screenshot(path=str(ARTIFACTS / "1-signed-in.png"), full_page=True)

            in_thread(lambda: publish_report(board, report))
            row = page.locator(f'tr[data-referral]:has(a[href="/cases/{case_id}"])').first
            expect(row).to_be_visible()
            escalated = page.locator(f'tr[data-overdue="1"]:has(a[href="/cases/{case_id}"])').first
            expect(escalated).to_be_visible()
            expect(escalated.locator(".level")).to_contain_text("tingkat")
            assert page.evaluate("window.__notReloaded === true"), "the page reloaded instead of updating live"
            page.screenshot(path=str(ARTIFACTS / "2-escalated-live.png"), full_page=True)

            escalated.locator(f'a[href="/cases/{case_id}"]').click()
            expect(page.locator("h1")).to_contain_text(case_id)
            expect(page.locator('table.timeline tr[data-kind="referred"]').first).to_be_visible()
            expect(page.locator("table.timeline")).to_contain_text("UU")  # the legal basis of each referral
            page.screenshot(path=str(ARTIFACTS / "3-case-timeline.png"), full_page=True)

            page.click("#lang-switch")
            expect(page.locator("table.timeline caption")).to_have_text("Timeline")
            expect(page.locator("html")).to_have_attribute("lang", "en")
            page.screenshot(path=str(ARTIFACTS / "4-english.png"), full_page=True)
            page.goto(board.http("board") + "/")
            expect(page.locator("h1")).to_contain_text("Open referrals")  # the choice is remembered

            phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.add_cookies(page.context.cookies())
            small = phone.new_page()
            small.goto(board.http("board") + "/")
            expect(small.locator("h1")).to_be_visible()
            assert small.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), \
                "the page is wider than a phone"
            small.screenshot(path=str(ARTIFACTS / "5-phone.png"), full_page=True)
            phone.close()
        finally:
            browser.close()


# ---------------------------------------------------------------- need-to-know over the whole run (last)


async def test_no_response_or_page_of_the_whole_run_shows_identity_or_narrative(board: Running) -> None:
    http = await signed_in(board)
    agency = await board.agency("uptd-ppa-banjarmasin")
    try:
        rows = (await http.get("/api/referrals")).json()
        for row in [r for r in rows if r["agency"] == "uptd-ppa-banjarmasin"][:1]:
            for verb in ("acknowledged", "accepted", "in_progress"):
                await respond(agency, "uptd-ppa-banjarmasin", row["referral_id"], verb,
                              note=f"met {CONFIDENTIAL[0]} ({CONFIDENTIAL[2]})")
            await respond(agency, "uptd-ppa-banjarmasin", row["referral_id"], "completed",
                          note=CONFIDENTIAL[3])

            async def closed() -> bool:
                case = (await http.get(f"/api/cases/{row['case_id']}")).json()
                return "completed" in {e["kind"] for e in case["events"]}

            await wait_for(closed, timeout=60, every=0.3)
        shown = []
        cases = set()
        for path in ("/api/referrals", "/api/agencies", "/api/duplicates", "/api/regions"):
            answer = await http.get(path)
            shown.append(answer.text)
        cases = {r["case_id"] for r in json.loads(shown[0])} | {
            c for group in json.loads(shown[2]) for c in group}
        for row in json.loads(shown[1]):
            assert "ack_median_seconds" in row
        for case_id in cases:
            shown.append((await http.get(f"/api/cases/{case_id}")).text)
            for lang in ("id", "en"):
                shown.append((await http.get(f"/cases/{case_id}?lang={lang}")).text)
        for path in PAGES:
            for lang in ("id", "en"):
                shown.append((await http.get(f"{path}?lang={lang}")).text)
        shown.append((await http.get("/login")).text)
        everything = "\n".join(shown)
        assert cases and "KS-0412" in everything
        for secret in CONFIDENTIAL:
            assert secret not in everything, secret
        board_log = (board.data_dir / "board.log").read_text(errors="replace")
        for secret in (*CONFIDENTIAL, token(board)):
            assert secret not in board_log
    finally:
        await agency.close()
        await http.aclose()
