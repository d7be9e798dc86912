"""Fixtures: a real nats-server on a free loopback port with a temporary store, and a real `alur up`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from hypothesis import HealthCheck, settings
from nats.aio.client import Client
from nats.js import JetStreamContext

from alur.embedded import EmbeddedServer, free_port, free_ports
from contracts.events import Case
from domain.cases import case_id_for, new_case
from domain.escalation_policy import EscalationPolicy, load_policy
from domain.validation import ParsedReport, parse_report
from runtime.security import SecretStore
from tests.referral_support import POLICY_FILE

# Property tests must not depend on how fast the machine is: no deadline, no speed health check.
# `ci` (the default, what `make test` runs) is derandomized, so a run is the same on every machine;
# `HYPOTHESIS_PROFILE=dev` explores new examples each run.
_MACHINE_SPEED = [HealthCheck.too_slow]
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=_MACHINE_SPEED)
settings.register_profile("dev", deadline=None, suppress_health_check=_MACHINE_SPEED)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parents[1]
REFERENCE_REPORT: dict[str, Any] = {
    "specversion": "1.0", "id": "7d1f6a1e-2f0b-4c59-9a53-0b8d4c2c1e01", "source": "bp3mi-kalsel",
    "type": "alur.report.submitted.v1", "time": "2026-11-20T08:15:00+08:00", "datacontenttype": "application/json",
    "data": {
        "report_ref": "BP3MI-KS-2026-0412",
        "channel": "bp3mi",
        "victim": {"pseudonym": "KS-0412", "age": 16, "sex": "female", "nationality": "wni",
                   "migration_profile": "pmi_non_procedural", "disabilities": [],
                   "identity": {"name": "Siti A.", "nik": "6371015507100003", "phone": "+62811000111"}},
        "location": {"regency": "6371", "exploitation_location": "abroad", "country": "MY"},
        "exploitation": ["forced_labour", "domestic_servitude"],
        "indicators": ["FL02", "FL07", "FL08"],
        "needs": ["medical", "psychological", "shelter", "repatriation", "legal_aid"],
        "risk": "high",
        "consent": {"share_with": "all", "recorded_by": "bp3mi-kalsel/officer-17"},
        "narrative": "Recruited via social media for a restaurant job; passport held by the employer."}}
CONFIDENTIAL = ("Siti A.", "6371015507100003", "+62811000111", "passport held by the employer", "restaurant job")


def reference_report(**data_changes: Any) -> dict[str, Any]:
    report = json.loads(json.dumps(REFERENCE_REPORT))
    report["data"].update(data_changes)
    return report


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[str]:
    """A plain JetStream nats-server (no auth) on a free loopback port; yields its URL."""
    server = EmbeddedServer(data_dir=tmp_path / "nats", port=free_port(), sync_always=False)
    server.start(accounts=None)
    yield server.url
    server.stop()


@pytest.fixture
async def nc(nats_server: str) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server)
    yield client
    await client.close()


@dataclass
class Running:
    """A running `alur up` process and what a test needs to talk to it."""

    process: subprocess.Popen[str]
    data_dir: Path
    nats_url: str
    env: dict[str, str]
    lines: list[str]

    @property
    def secrets(self) -> SecretStore:
        return SecretStore(self.data_dir)

    def case_id(self, reporter: str, report_ref: str) -> str:
        """The id intake gives the case of this report: keyed by this stack's case-id key (what `alur up`
        passes intake as ALUR_CASE_KEY), as no one without the key could work it out."""
        return case_id_for(reporter, report_ref, key=self.secrets.case_key().encode())

    async def admin(self) -> Client:
        return await nats.connect(self.nats_url, nkeys_seed_str=self.secrets.service_seed("admin"),
                                  inbox_prefix="_INBOX_test")

    async def agency(self, agency_id: str) -> Client:
        return await nats.connect(self.nats_url, nkeys_seed_str=self.secrets.agency(agency_id).nkey_seed,
                                  inbox_prefix=f"_INBOX.{agency_id}")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `alur ARGS` against this stack; with `check`, a non-zero exit fails with its output."""
        result = subprocess.run([sys.executable, "-m", "alur.cli", *args], env=self.env, text=True,
                                capture_output=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"alur {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def http(self, service: str) -> str:
        return "http://" + self.env[f"ALUR_{service.upper()}_HTTP"]

    def logs(self) -> str:
        return "\n".join((self.data_dir / f"{s}.log").read_text(errors="replace")
                         for s in ("intake", "routing", "notify", "board") if (self.data_dir / f"{s}.log").exists())


HTTP_PORTS = ("ALUR_INTAKE_HTTP", "ALUR_ROUTING_HTTP", "ALUR_NOTIFY_HTTP", "ALUR_BOARD_HTTP")


def alur_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")}
    env.update({
        "ALUR_DATA_DIR": str(data_dir),
        "ALUR_SLA_SCALE": "0.001",
        **{name: f"127.0.0.1:{port}" for name, port in zip(HTTP_PORTS, free_ports(len(HTTP_PORTS)), strict=True)},
        "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return env


def start_alur(data_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> Running:
    env = env or alur_env(data_dir)
    taken = {env.get(name, "").rpartition(":")[2] for name in HTTP_PORTS}
    port = next(p for p in free_ports(len(HTTP_PORTS) + 1) if str(p) not in taken)
    process = subprocess.Popen(
        [sys.executable, "-m", "alur.cli", "up", "--port", str(port), *args], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO,
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        if line.startswith("ready"):
            env = {**env, "ALUR_NATS_URL": f"nats://127.0.0.1:{port}"}
            return Running(process, data_dir, f"nats://127.0.0.1:{port}", env, lines)
    process.kill()
    logs = "\n".join(lines)
    raise AssertionError(f"alur up did not become ready:\n{logs}")


def stop_alur(running: Running, timeout: float = 40) -> int:
    running.process.terminate()
    out, _ = running.process.communicate(timeout=timeout)
    running.lines.extend(out.splitlines())
    return running.process.returncode


def alur_stack(data_dir: Path, **env: str) -> Iterator[Running]:
    """A fixture's body: a real `alur up` on `data_dir` with `env` over `alur_env`'s, stopped afterwards
    (if it still runs). `yield from alur_stack(...)` in a fixture of any scope."""
    running = start_alur(data_dir, env=alur_env(data_dir, **env))
    try:
        yield running
    finally:
        if running.process.poll() is None:
            stop_alur(running)


@pytest.fixture
def alur(tmp_path: Path) -> Iterator[Running]:
    """A real `alur up` (embedded secure broker, the service processes) at ALUR_SLA_SCALE=0.001."""
    yield from alur_stack(tmp_path / "alur")


@pytest.fixture
async def admin(running: Running) -> AsyncIterator[Client]:
    """An admin connection to the module's `running` stack (a module defines `running`)."""
    client = await running.admin()
    yield client
    await client.close()


@pytest.fixture
async def js(admin: Client) -> JetStreamContext:
    """JetStream over `admin`."""
    return admin.jetstream(timeout=10)


CASE_KEY = b"test-case-key-0123456789abcdef"


def synthetic_case(i: int, regency: str, month: str, modus: str = "social_media_job_offer") -> Case:
    """A registered case of `regency`, in the middle of `month` (WITA)."""
    data = json.loads(json.dumps(REFERENCE_REPORT["data"]))
    data.update(report_ref=f"SYN-{regency}-{month}-{i}", recruitment_modus=modus, exploitation=["online_scam"])
    data["location"]["regency"] = regency
    at = datetime(int(month[:4]), int(month[5:]), 15, 4, tzinfo=UTC)
    event = {**REFERENCE_REPORT, "time": at.isoformat(), "data": data}
    outcome = parse_report(json.dumps(event).encode(), reporter="bp3mi-kalsel", known_agencies={"bp3mi-kalsel"},
                           now=at)
    assert isinstance(outcome, ParsedReport), outcome
    return new_case(outcome, at, key=CASE_KEY)


@pytest.fixture(scope="module")
def policy() -> EscalationPolicy:
    """The Kalsel escalation policy at a thousandth of its durations, for pure tests of notify's state."""
    return load_policy(POLICY_FILE, scale=0.001)
