"""The bench's throw-away Alur: one nats-server (no auth), provisioned from deploy/, and the three services as
their own processes (`python -m alur.serve NAME`), as in production but for auth and fsync.

Shared by the end-to-end and timer benches. Nothing here asserts a timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from alur.embedded import EmbeddedServer, free_port
from runtime.profile import load_registry_file
from runtime.provision import load_topology, provision
from runtime.registry_store import RegistryStore

REPO = Path(__file__).resolve().parents[1]
SERVICES = ("intake", "routing", "notify")
CASE_KEY = "bench-case-key-0123456789abcdef"
MATCH_KEY = "bench-match-key-0123456789abcdef"


@dataclass
class Broker:
    """A provisioned throw-away nats-server and a client connection to it."""

    root: Path
    server: EmbeddedServer
    nc: Client
    js: JetStreamContext


@contextlib.asynccontextmanager
async def broker(*, sync_always: bool = False) -> AsyncIterator[Broker]:
    """A fresh nats-server (JetStream, no auth; `sync_always` = `sync_interval: always`) with Alur's streams,
    consumers, buckets and the Kalsel registry provisioned; removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="alur-bench-"))
    server = EmbeddedServer(data_dir=root / "nats", port=free_port(), sync_always=sync_always)
    server.start(accounts=None)
    try:
        nc = await nats.connect(server.url, max_reconnect_attempts=2)
        try:
            js = nc.jetstream(timeout=10)
            topology = load_topology()
            await provision(js, topology)
            store = RegistryStore(js)
            await store.seed(load_registry_file())
            await provision(js, topology, await store.load())
            yield Broker(root, server, nc, js)
        finally:
            await nc.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Services:
    """The three services running as processes against a `Broker`."""

    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http: dict[str, str] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def dead(self) -> str | None:
        """The first service that exited, if any."""
        return next((n for n, p in self.processes.items() if p.poll() is not None), None)

    def cpu_s(self) -> dict[str, float]:
        """Each service's CPU time so far (user + system, Linux /proc), in seconds."""
        return {name: cpu_seconds(process.pid) for name, process in self.processes.items()}

    def rss_mb(self, name: str) -> float:
        """The service's resident memory now (Linux /proc), in MB."""
        for line in Path(f"/proc/{self.pid(name)}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def cpu_seconds(pid: int) -> float:
    """A process's CPU time so far (user + system, from /proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def service_env(url: str, data_dir: Path, http: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")}
    env |= {"ALUR_NATS_URL": url, "ALUR_DATA_DIR": str(data_dir), "ALUR_CASE_KEY": CASE_KEY,
            "ALUR_MATCH_KEY": MATCH_KEY, "PYTHONUNBUFFERED": "1"}
    env |= {f"ALUR_{name.upper()}_HTTP": hostport for name, hostport in http.items()}
    return env | dict(extra)


async def wait_ready(services: Services, timeout: float) -> None:
    """Until every service answers 200 on /readyz (or one dies, or `timeout` passes)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=2) as client:
        for name, hostport in services.http.items():
            while True:
                if (dead := services.dead()) is not None:
                    raise RuntimeError(f"{dead} exited during start-up (see {services.logs[dead]})")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://{hostport}/readyz")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f} s (see {services.logs[name]})")
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def services(
    b: Broker, names: Iterable[str] = SERVICES, *, env: Mapping[str, str] | None = None,
    wrap: Mapping[str, list[str]] | None = None, timeout: float = 120.0,
) -> AsyncIterator[Services]:
    """Start `names` as processes (each `python *wrap[name] -m alur.serve name`, e.g. `-m pyinstrument …`), wait
    until all are ready, and stop them (SIGTERM, then SIGKILL) afterwards."""
    running = Services()
    names = list(names)
    for name in names:
        running.http[name] = f"127.0.0.1:{free_port()}"
    environment = service_env(b.server.url, b.root, running.http, env or {})
    try:
        for name in names:
            running.logs[name] = b.root / f"{name}.log"
            command = [sys.executable, *(wrap or {}).get(name, []), "-m", "alur.serve", name]
            with running.logs[name].open("wb") as log:
                running.processes[name] = subprocess.Popen(command, env=environment, cwd=REPO, stdout=log,
                                                           stderr=subprocess.STDOUT, start_new_session=True)
        await wait_ready(running, timeout)
        yield running
    finally:
        for name, process in running.processes.items():
            with contextlib.suppress(ProcessLookupError):
                # uvicorn re-raises the signal it stopped on; a profiler writes its report on SIGINT, not SIGTERM
                process.send_signal(signal.SIGINT if name in (wrap or {}) else signal.SIGTERM)
        for process in running.processes.values():
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                await asyncio.to_thread(process.wait, 5)
