"""`alur demo` runs the whole flow by itself, within about a minute, prints the board's address, and shows
the closed loop: a silent agency's referral expires and is rerouted, a declined one is rerouted, one
referral closes with an outcome, an agency without a system answers from its web inbox, every other is
accepted."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from alur.demo import COMPLETING, DECLINING, INBOX, SILENT


@pytest.mark.timeout(420)
def test_demo_ends_by_itself_with_the_closed_loop_on_the_board_and_in_its_table() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")} | {"COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "alur.cli", "demo", "--port", "0"], env=env, capture_output=True,
                            text=True, timeout=360)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "ready" in out and "Demo summary" in out
    assert re.search(r"board +http://127\.0\.0\.1:\d+/", out)
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert sum("accepted" in row for row in rows) >= 10
    assert any(SILENT in row and "expired" in row and "rerouted to" in row for row in rows)
    assert any(DECLINING in row and "rejected" in row and "rerouted to" in row for row in rows)
    assert any(COMPLETING in row and "completed" in row for row in rows)
    assert any(INBOX in row and "accepted" in row for row in rows), "the inbox agency's officer answered"
    assert not any(f"rerouted to {DECLINING}" in row or f"rerouted to {SILENT}" in row for row in rows)
    assert "Traceback" not in out + result.stderr
