"""Readiness against a real broker that goes away and comes back: `/readyz` turns 503 with a JSON reason
within seconds of nats-server stopping, and 200 again once it is back; `/healthz` stays 200 throughout, and
`/metrics` answers (with `alur_ready 0`) while the broker is away."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alur.embedded import EmbeddedServer, free_port
from tests.conftest import REPO
from tests.support import wait_for


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(data_dir=tmp_path / "nats", port=free_port(), sync_always=False)
    server.start(accounts=None)
    yield server
    server.stop()


@pytest.fixture
def routing(broker: EmbeddedServer, tmp_path: Path) -> Iterator[str]:
    """routing alone (`alur serve routing`) on the provisioned broker; yields its HTTP base URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")}
    http = f"127.0.0.1:{free_port()}"
    env.update({"ALUR_NATS_URL": broker.url, "ALUR_DATA_DIR": str(tmp_path / "alur"), "ALUR_ROUTING_HTTP": http,
                "ALUR_SLA_SCALE": "0.001", "PYTHONUNBUFFERED": "1"})
    subprocess.run([sys.executable, "-m", "alur.cli", "provision", "--nats", broker.url], env=env, cwd=REPO,
                   check=True, capture_output=True, timeout=60)
    log = (tmp_path / "routing.log").open("ab")
    process = subprocess.Popen([sys.executable, "-m", "alur.serve", "routing"], env=env, cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT)
    log.close()
    yield f"http://{http}"
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def answer(client: httpx.AsyncClient, url: str) -> httpx.Response | None:
    with contextlib.suppress(httpx.HTTPError):
        return await client.get(url)
    return None


async def test_readyz_follows_the_broker_away_and_back(broker: EmbeddedServer, routing: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        async def readiness(code: int) -> httpx.Response | None:
            response = await answer(client, routing + "/readyz")
            return response if response is not None and response.status_code == code else None

        ready = await wait_for(lambda: readiness(200), timeout=60, every=0.2)
        assert ready.json() == {"ready": True, "service": "routing", "problems": []}

        broker.stop()
        down = await wait_for(lambda: readiness(503), timeout=30, every=0.2)
        body = down.json()
        assert body["ready"] is False and body["service"] == "routing"
        assert body["problems"] and all(isinstance(p, str) for p in body["problems"])
        assert (await client.get(routing + "/healthz")).status_code == 200
        metrics = await client.get(routing + "/metrics")
        assert metrics.status_code == 200
        assert 'alur_ready{service="routing"} 0.0' in metrics.text

        broker.start(accounts=None)
        back = await wait_for(lambda: readiness(200), timeout=60, every=0.2)
        assert back.json()["problems"] == []
        async def ready_metric() -> bool:  # recomputed per scrape, as /readyz is
            return 'alur_ready{service="routing"} 1.0' in (await client.get(routing + "/metrics")).text
        await wait_for(ready_metric, timeout=30, every=0.2)
