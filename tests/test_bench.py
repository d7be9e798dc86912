"""`make bench` at a tiny size, so the benchmarks cannot rot: every path runs end to end and writes its
results. Only the shape of what it reports is checked, never a timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(360)
def test_bench_runs_at_tiny_size(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--size", "tiny", "--no-sync", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "End to end" in done.stdout and "CPU seconds" in done.stdout and "Rule engine" in done.stdout
    results = json.loads(out.read_text())
    e2e = results["e2e"]
    for side in ("alur", "bare"):
        assert e2e[side]["cases"] == e2e["reports"] and e2e[side]["referrals"] >= e2e["reports"]
    assert e2e["alur"]["referrals"] == e2e["bare"]["referrals"]  # the bare pipeline has Alur's shape
    assert {"intake", "routing", "notify", "nats-server"} <= set(e2e["alur"]["cpu"])
    assert {"bench process", "nats-server"} <= set(e2e["bare"]["cpu"])
    assert e2e["steady"] and all(s["cases"] > 0 for s in e2e["steady"])
    assert results["rules"]["rows"] and results["messaging"]
    assert results["timers"]["fired"] == results["timers"]["due_timers"]  # every due timer escalated
    assert "Bench Person" not in done.stdout + done.stderr + out.read_text()  # the invented identities stay inside
