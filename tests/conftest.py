"""Fixtures: a real nats-server on a free loopback port with a temporary store, and a real `alur up`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from alur.embedded import EmbeddedServer, free_port
from alur.security import SecretStore

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
    server.start(auth=None)
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

    async def admin(self) -> Client:
        return await nats.connect(self.nats_url, nkeys_seed_str=self.secrets.service_seed("admin"),
                                  inbox_prefix="_INBOX_test")

    async def agency(self, agency_id: str) -> Client:
        return await nats.connect(self.nats_url, nkeys_seed_str=self.secrets.agency(agency_id).nkey_seed,
                                  inbox_prefix=f"_INBOX.{agency_id}")

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "alur.cli", *args], env=self.env, text=True,
                              capture_output=True, check=check, timeout=60)

    def http(self, service: str) -> str:
        return "http://" + self.env[f"ALUR_{service.upper()}_HTTP"]

    def logs(self) -> str:
        return "\n".join((self.data_dir / f"{s}.log").read_text(errors="replace")
                         for s in ("intake", "routing", "notify") if (self.data_dir / f"{s}.log").exists())


def alur_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")}
    env.update({
        "ALUR_DATA_DIR": str(data_dir),
        "ALUR_SLA_SCALE": "0.001",
        "ALUR_INTAKE_HTTP": f"127.0.0.1:{free_port()}",
        "ALUR_ROUTING_HTTP": f"127.0.0.1:{free_port()}",
        "ALUR_NOTIFY_HTTP": f"127.0.0.1:{free_port()}",
        "PYTHONUNBUFFERED": "1",
        **extra,
    })
    return env


def start_alur(data_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> Running:
    env = env or alur_env(data_dir)
    port = free_port()
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


@pytest.fixture
def alur(tmp_path: Path) -> Iterator[Running]:
    """A real `alur up` (embedded secure broker, three service processes) at ALUR_SLA_SCALE=0.001."""
    running = start_alur(tmp_path / "alur")
    yield running
    if running.process.poll() is None:
        stop_alur(running)


async def next_matching(sub: Any, predicate: Any, timeout: float = 20.0) -> Any:
    """The next message on `sub` for which `predicate(msg)` holds; fails after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError("timed out waiting for a matching message")
        msg = await sub.next_msg(timeout=remaining)
        if predicate(msg):
            return msg
