"""`alur up` as people run it: ready line, clean stop leaving nothing behind, clear errors without tracebacks."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from alur.embedded import free_port, port_is_free
from tests.conftest import alur_env, start_alur, stop_alur


def _ports(env: dict[str, str]) -> list[tuple[str, int]]:
    out = []
    for key in ("ALUR_INTAKE_HTTP", "ALUR_ROUTING_HTTP", "ALUR_NOTIFY_HTTP"):
        host, port = env[key].rsplit(":", 1)
        out.append((host, int(port)))
    return out


def test_up_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    running = start_alur(tmp_path / "alur")
    assert any(line.startswith("NATS") for line in running.lines)
    assert (tmp_path / "alur" / "run.json").exists()
    nats_port = int(running.nats_url.rsplit(":", 1)[1])
    assert stop_alur(running) == 0
    assert running.lines[-1] == "stopped"
    assert "Traceback" not in "\n".join(running.lines)
    assert not any("did not stop" in line for line in running.lines)
    assert not (tmp_path / "alur" / "run.json").exists()
    for host, port in [("127.0.0.1", nats_port), *_ports(running.env)]:
        assert port_is_free(host, port), f"{host}:{port} still bound after stop"


def test_up_survives_restart_with_same_data(tmp_path: Path) -> None:
    running = start_alur(tmp_path / "alur")
    assert stop_alur(running) == 0
    again = start_alur(tmp_path / "alur")
    assert not any("seeded" in line for line in again.lines)
    assert stop_alur(again) == 0


def test_port_taken_is_a_clear_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "alur.cli", "up", "--port", str(port)],
                                env=alur_env(tmp_path / "alur"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "already in use" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_unreachable_broker_is_a_clear_message(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    result = subprocess.run([sys.executable, "-m", "alur.cli", "up", "--nats", url],
                            env=alur_env(tmp_path / "alur"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "cannot reach NATS" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


async def test_up_with_the_operators_server(tmp_path: Path, nats_server: str) -> None:
    import json

    import nats
    from nats.js.api import DeliverPolicy

    from tests.conftest import REFERENCE_REPORT, next_matching

    running = start_alur(tmp_path / "alur", "--nats", nats_server)
    assert any(line.startswith(f"NATS      {nats_server}") for line in running.lines)
    nc = await nats.connect(nats_server)
    js = nc.jetstream()
    cases = await js.subscribe("alur.case.>", stream="CASES", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    await js.publish("alur.report.bp3mi-kalsel", json.dumps(REFERENCE_REPORT).encode(), timeout=5)
    registered = await next_matching(cases, lambda m: m.subject == "alur.case.registered.6371")
    assert json.loads(registered.data)["data"]["reporter"] == "bp3mi-kalsel"
    await nc.close()
    assert stop_alur(running) == 0
