"""`alur demo` runs the whole flow by itself, within a minute, and ends with its summary table."""

from __future__ import annotations

import os
import subprocess
import sys


def test_demo_ends_by_itself_with_every_referral_accepted() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")}
    result = subprocess.run([sys.executable, "-m", "alur.cli", "demo", "--port", "0"], env=env, capture_output=True,
                            text=True, timeout=90)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "ready" in out and "Demo summary" in out
    assert out.count("accepted") >= 10
    assert "Traceback" not in out + result.stderr
