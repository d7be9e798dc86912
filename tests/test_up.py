"""`alur up` as people run it: ready line, clean stop leaving nothing behind, clear errors without tracebacks."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.js.api import DeliverPolicy

from alur.embedded import EmbeddedServer, free_port, port_is_free
from alur.rundir import running
from runtime.locate import RunInfo
from tests.conftest import REFERENCE_REPORT, alur_env, start_alur, stop_alur
from tests.support import next_matching, wait_for


def _ports(env: dict[str, str]) -> list[tuple[str, int]]:
    out = []
    for key in ("ALUR_INTAKE_HTTP", "ALUR_ROUTING_HTTP", "ALUR_NOTIFY_HTTP", "ALUR_BOARD_HTTP"):
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


@pytest.mark.faults  # a crash or a stuck peer, at length: `make test-faults` (CI runs it)
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


# ---------------------------------------------------------------- a crashed `alur up` (issue 8)


def _children(data_dir: Path) -> dict[str, int]:
    info = RunInfo.load(data_dir)
    assert info is not None, "alur up writes its run file"
    return info.children


async def _no_pull_waiting(admin: Any) -> bool:
    return (await admin.jetstream().consumer_info("REPORTS", "intake")).num_waiting == 0


@pytest.mark.faults  # a crash or a stuck peer, at length: `make test-faults` (CI runs it)
async def test_kill_9_of_up_takes_its_children_and_the_next_up_starts(tmp_path: Path) -> None:
    """kill -9 of `alur up` alone: its services and broker are gone within 5 s, the next `alur up` on the
    same data dir is ready, and a report stored before the kill still becomes its case and referrals."""
    data_dir = tmp_path / "alur"
    first = start_alur(data_dir)
    children = _children(data_dir)
    assert set(children) == {"nats-server", "intake", "routing", "notify", "board"}
    os.kill(children["intake"], signal.SIGSTOP)  # the report is stored but not admitted before the kill
    admin = await first.admin()
    # once the stopped intake's pull request has expired, the report waits in the stream rather than in its
    # socket (where only the 30 s ack wait would bring it back)
    await wait_for(lambda: _no_pull_waiting(admin), timeout=30)
    # stored as intake's NATS door stores an agency's report (the door itself is in the stopped intake)
    ack = await admin.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(REFERENCE_REPORT).encode(),
                                          headers={"Nats-Msg-Id": f"bp3mi-kalsel:{REFERENCE_REPORT['id']}"},
                                          timeout=5)
    await admin.close()

    first.process.kill()
    first.process.wait(10)
    killed_at = time.monotonic()
    while any(running(pid) for pid in children.values()):
        assert time.monotonic() - killed_at < 5, f"still running 5 s after kill -9: {children}"
        time.sleep(0.05)

    again = start_alur(data_dir)
    assert "Traceback" not in "\n".join(again.lines)
    admin = await again.admin()
    js = admin.jetstream()
    cases = await js.subscribe("alur.case.>", stream="CASES", ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    registered = json.loads((await next_matching(cases, lambda m: ".registered." in m.subject, timeout=30)).data)
    assert registered["data"]["report_ref"] == REFERENCE_REPORT["data"]["report_ref"]
    referrals = await js.subscribe("alur.referral.requested.*", stream="REFERRALS", ordered_consumer=True,
                                   deliver_policy=DeliverPolicy.ALL)
    first_referral = json.loads((await next_matching(referrals, lambda m: True, timeout=30)).data)
    assert first_referral["data"]["case_id"] == registered["data"]["case_id"]
    assert (await js.stream_info("REPORTS")).state.last_seq == ack.seq, "the report was stored once"
    await admin.close()
    assert stop_alur(again) == 0


def test_a_second_up_on_the_same_data_dir_refuses_and_names_the_first(tmp_path: Path) -> None:
    data_dir = tmp_path / "alur"
    first = start_alur(data_dir)
    result = subprocess.run([sys.executable, "-m", "alur.cli", "up", "--port", str(free_port())],
                            env=alur_env(data_dir), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"pid {first.process.pid}" in result.stdout and "another `alur up`" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert RunInfo.read(data_dir) is not None, "the refused second run leaves the first one's run file alone"
    by_run_file = {k: v for k, v in first.env.items() if k != "ALUR_NATS_URL"}
    status = subprocess.run([sys.executable, "-m", "alur.cli", "status", "--json"], env=by_run_file,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert stop_alur(first) == 0


def test_leftovers_of_a_crashed_run_are_stopped_and_a_stale_run_file_is_ignored(tmp_path: Path) -> None:
    """A run file whose `alur up` is gone names a nats-server still running (as if the parent-death
    signal never came): the next `alur up` stops it, says so, and starts; commands never trust the stale file."""
    data_dir = tmp_path / "alur"
    data_dir.mkdir(parents=True)
    stray = EmbeddedServer(data_dir=tmp_path / "stray", port=free_port(), sync_always=False)
    stray.start(accounts=None)
    assert stray.process is not None
    RunInfo(nats_url=stray.url, pid=stray.process.pid, embedded=True, intake_http="", routing_http="",
            notify_http="", children={"nats-server": stray.process.pid}).write(data_dir)
    assert RunInfo.read(data_dir) is None, "no `alur up` holds the data dir, so its run file is stale"
    status = subprocess.run([sys.executable, "-m", "alur.cli", "status"], env=alur_env(data_dir),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 2 and "no NATS found" in status.stderr

    running_up = start_alur(data_dir)
    assert any(f"nats-server (pid {stray.process.pid})" in line for line in running_up.lines)
    assert stray.process.poll() is not None, "the leftover server was stopped"
    assert stop_alur(running_up) == 0
