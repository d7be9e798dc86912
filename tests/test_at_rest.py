"""What a run leaves on disk (issues 10 and 11): every file and folder under the data dir is the owner's alone,
secrets stay under `secrets/`, and no file holds a victim's name, NIK, phone or narrative in clear (the
embedded server encrypts its JetStream store with a key kept under `secrets/`)."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

from nats.js.api import DeliverPolicy

from tests.conftest import (
    CONFIDENTIAL,
    REFERENCE_REPORT,
    Running,
    start_alur,
    stop_alur,
)
from tests.support import next_matching


def _files(root: Path) -> list[Path]:
    return [Path(folder) / name for folder, _, names in os.walk(root) for name in names]


async def test_a_run_leaves_owner_only_files_no_secret_outside_secrets_and_no_victim_data_in_clear(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "alur"
    running: Running = start_alur(data_dir)
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    running.cli("agency", "add", "dinkes-tala", "--type", "health", "--regions", "6301", "--channel", "webhook",
                "--url", "https://dinkes-tala.example.org/alur", "--secret", secret)
    creds = json.loads(running.cli("agency", "creds", "bp3mi-kalsel", "--json").stdout)
    admin = await running.admin()
    js = admin.jetstream()
    referrals = await js.subscribe("alur.referral.requested.*", stream="REFERRALS", ordered_consumer=True,
                                   deliver_policy=DeliverPolicy.ALL)
    reporter = await running.agency("bp3mi-kalsel")
    await reporter.jetstream().publish("alur.report.bp3mi-kalsel", json.dumps(REFERENCE_REPORT).encode(), timeout=5)
    await next_matching(referrals, lambda m: True)
    await reporter.close()
    await admin.close()
    assert stop_alur(running) == 0

    everything = [data_dir, *(Path(f) for f, _, _ in os.walk(data_dir)), *_files(data_dir)]
    loose = [str(p.relative_to(tmp_path)) for p in everything if stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, f"readable by others: {loose}"

    secrets_dir = data_dir / "secrets"
    never_in_clear = [s.encode() for s in (*CONFIDENTIAL, secret, creds["http_token"], creds["nkey_seed"])]
    found = []
    for path in _files(data_dir):
        if secrets_dir in path.parents:
            continue
        content = path.read_bytes()
        found += [f"{path.relative_to(data_dir)}: {s[:6]!r}…" for s in never_in_clear if s in content]
    assert not found, f"in clear outside secrets/: {found}"
    assert (data_dir / "jetstream").is_dir() and list((data_dir / "jetstream").rglob("*.blk")), "the store is there"
