"""docs/integrating.md: its generated parts are the code's own numbers and codes, and its commands work.

The guide's `sh` blocks (the copy-paste commands; `console` blocks are the long-running ones) run in order,
as one script, against a real `alur up`: register an agency, get its credentials, check it, report, follow
up, answer the referral, and be told why a bad report is refused.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from alur.guide import GUIDE, REFUSALS, render
from contracts.events import ResponseRefusedData
from services.notify.webhook import RETRY_SCHEDULE
from tests.conftest import Running, alur_stack

SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)


def test_the_generated_parts_are_current() -> None:
    text = GUIDE.read_text()
    assert render(text) == text, "docs/integrating.md drifted from the code: run `make docs` and commit"


def test_the_retry_schedule_printed_is_the_code_s() -> None:
    part = GUIDE.read_text().split("<!-- generated: retry-schedule -->")[1].split("<!-- end generated -->")[0]
    rows = [line for line in part.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(rows) == len(RETRY_SCHEDULE) + 1
    assert f"{len(RETRY_SCHEDULE) + 1} attempts in all" in part


def test_every_refusal_code_is_explained() -> None:
    assert set(REFUSALS) == set(get_args(ResponseRefusedData.model_fields["code"].annotation))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from alur_stack(tmp_path_factory.mktemp("guide") / "alur", ALUR_SLA_SCALE="1")


def test_the_guide_s_commands_work_against_alur_up(stack: Running, tmp_path: Path) -> None:
    blocks = SH_BLOCK.findall(GUIDE.read_text())
    assert len(blocks) >= 6
    script = "set -euo pipefail\n" + "\n".join(blocks)
    env = {**stack.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, text=True, capture_output=True,
                            timeout=300)
    out = result.stdout
    assert result.returncode == 0, f"{out}\n{result.stderr}"
    assert "ready to go live" in out
    assert '"accepted": true' in out and '"followup": true' in out
    assert out.count('"applied": true') == 2, out
    assert '"accepted": false' in out and "data.risk" in out
    assert "nkey_seed" not in out and (tmp_path / "dinsos-tala.json").exists()
