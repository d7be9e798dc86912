"""What the operators see on one whole `alur up` run: the CLI answers bad arguments in one line with a
non-zero exit (issue 12.8), the early-warning flag on the bus and the regions plot (12.4), and, last, every
line each service wrote is one JSON object (12.7)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from contracts.events import RegionFlaggedData
from contracts.vocab import Need
from domain.cases import case_event
from domain.regions import month_shift
from runtime.bus import publish
from runtime.logs import TIMEOUT_RESTART
from tests.conftest import (
    CONFIDENTIAL,
    REPO,
    Running,
    alur_env,
    alur_stack,
    reference_report,
    stop_alur,
    synthetic_case,
)
from tests.support import case_referrals, next_matching, publish_report

SERVICES = ("intake", "routing", "notify")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from alur_stack(tmp_path_factory.mktemp("operator") / "alur")



def one_line_error(result: subprocess.CompletedProcess[str], code: int, *words: str) -> None:
    """The command failed with `code` and said so in one line naming `words`, with no traceback."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert all(w in lines[0] for w in words), lines[0]


# ---------------------------------------------------------------- 12.8: bad arguments, one line each


def test_report_regions_with_nothing_to_show_says_so(running: Running) -> None:
    result = running.cli("report", "regions")

    assert result.stdout.strip() == "no group of 10 or more cases yet (smaller groups are never shown)"


@pytest.mark.parametrize("given", ["0", "9", "-3"])
def test_report_regions_refuses_a_minimum_group_below_ten(running: Running, given: str) -> None:
    one_line_error(running.cli("report", "regions", "--min-group", given, check=False), 2, "--min-group",
                   "at least 10")


@pytest.mark.parametrize("given", ["case 1", "", "case-*", "Siti A."])
def test_trace_refuses_what_is_not_a_case_or_referral_id(running: Running, given: str) -> None:
    result = running.cli("trace", given, check=False)

    one_line_error(result, 2, "not a case id or a referral id")
    assert given not in result.stderr or not given


def test_trace_of_an_unknown_referral_fails(running: Running) -> None:
    one_line_error(running.cli("trace", "ref-0123456789abcdef0123", check=False), 1, "no referral")


async def test_trace_takes_a_referral_id_and_shows_whole_referral_ids(running: Running, js: JetStreamContext) -> None:
    await publish_report(running, reference_report())
    case_id, referrals = await case_referrals(js, timeout=60)
    referral_id = sorted(referrals)[0]

    by_case = running.cli("trace", case_id).stdout
    by_referral = json.loads(running.cli("trace", referral_id, "--json").stdout)

    assert by_referral["case_id"] == case_id
    assert referral_id in by_case  # whole, as the response endpoint needs it


def test_dlq_replay_of_an_unknown_dead_letter_fails(running: Running) -> None:
    one_line_error(running.cli("dlq", "replay", "99999", check=False), 1, "no dead letter 99999")


def test_agency_show_is_a_table_unless_json(running: Running) -> None:
    table = running.cli("agency", "show", "polda-kalsel").stdout
    shown = json.loads(running.cli("agency", "show", "polda-kalsel", "--json").stdout)

    assert shown["id"] == "polda-kalsel" and "polda-kalsel" in table
    with pytest.raises(json.JSONDecodeError):
        json.loads(table)
    one_line_error(running.cli("agency", "show", "no-such-agency", check=False), 1, "no agency")


@pytest.mark.parametrize("value", ["foo:bar", ":8081", "foo:0"])
def test_a_bad_http_address_names_its_variable(tmp_path: Path, value: str) -> None:
    env = alur_env(tmp_path, ALUR_INTAKE_HTTP=value)
    result = subprocess.run([sys.executable, "-m", "alur.cli", "status"], env=env, text=True, capture_output=True,
                            timeout=60, cwd=REPO)

    one_line_error(result, 2, "ALUR_INTAKE_HTTP", "host:port")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_http_paths_answer_a_json_404(running: Running, method: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for service in SERVICES:
            response = await client.request(method, running.http(service) + "/no/such/path")
            assert response.status_code == 404
            assert response.headers["content-type"].startswith("application/json")
            assert response.json() == {"error": "Not Found"}


# ---------------------------------------------------------------- 12.4: the flag on the bus, the plot


async def test_a_regency_rising_past_its_baseline_is_flagged_on_the_bus_and_plotted(
    running: Running, js: JetStreamContext, tmp_path: Path,
) -> None:
    flags = await js.subscribe("alur.region.flagged.>", ordered_consumer=True)
    month = datetime.now(UTC).strftime("%Y-%m")
    history = [synthetic_case(0, "6309", month_shift(month, -7))]  # the history starts seven months ago
    now = [synthetic_case(i, "6309", month) for i in range(10)]
    for case in [*history, *now]:
        case = case.model_copy(update={"needs": [Need.LEGAL_AID]})
        await publish(js, "alur.case.registered.6309", case_event(case, case.report_refs[0], [], "registered"))

    seen: list[dict[str, Any]] = []
    while len(seen) < 3:
        msg = await next_matching(flags, lambda m: True, timeout=60)
        assert msg.subject == "alur.region.flagged.6309"
        seen.append(json.loads(msg.data))
    flagged = [RegionFlaggedData.model_validate(e["data"]) for e in seen]

    assert {(f.dimension, f.value) for f in flagged} == {
        ("cases", "all"), ("exploitation", "online_scam"), ("modus", "social_media_job_offer")}
    assert all(f.cases == 10 and f.month == month and f.baseline_cases is None for f in flagged)
    assert all(e["type"] == "alur.region.flagged.v1" for e in seen)
    text = json.dumps(seen)
    assert not any(c.case_id in text for c in [*history, *now])
    assert not any(c in text for c in CONFIDENTIAL)

    out = tmp_path / "regions.png"
    result = running.cli("report", "regions", "--plot", str(out))
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "flagged" in result.stdout and "6309" in result.stdout
    one_line_error(running.cli("report", "regions", "--plot", str(tmp_path / "regions.txt"), check=False), 2,
                   "--plot", ".png")
    await flags.unsubscribe()


# ---------------------------------------------------------------- 12.7: every line is JSON (last: stops the run)


def test_every_line_each_service_wrote_is_one_json_object(running: Running) -> None:
    assert stop_alur(running) == 0
    for service in SERVICES:
        lines = (running.data_dir / f"{service}.log").read_text().splitlines()
        assert lines, service
        records = []
        for number, line in enumerate(lines, 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise AssertionError(f"{service}.log line {number} is not JSON: {line[:200]!r}") from None
            assert isinstance(record, dict) and {"event", "level", "timestamp"} <= record.keys(), line
            assert "\x1b[" not in line, line
            records.append(record)
        assert not any("Traceback" in line for line in lines)
        calm = [r for r in records if r["event"] == TIMEOUT_RESTART]
        assert all(r["level"] == "info" for r in calm)
        assert not any("raised an exception, retrying" in r["event"] and r.get("error_type") == "TimeoutError"
                       for r in records)
