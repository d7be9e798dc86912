"""deploy/: the nats-server configs are valid with the authorization `alur nats-config` generates."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from alur.embedded import nats_server_binary

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


@pytest.fixture
def auth_dir(tmp_path: Path) -> Path:
    env = {**os.environ, "ALUR_DATA_DIR": str(tmp_path / "data")}
    out = tmp_path / "alur-auth.conf"
    subprocess.run([sys.executable, "-m", "alur.cli", "nats-config", "--out", str(out), "--env-dir",
                    str(tmp_path / "secrets")], env=env, check=True, capture_output=True, text=True)
    return tmp_path


def test_nats_config_has_a_user_per_service_and_agency(auth_dir: Path) -> None:
    text = (auth_dir / "alur-auth.conf").read_text()
    block = json.loads(text.split("authorization:", 1)[1])
    restricted = [u for u in block["users"] if "permissions" in u]
    assert len(block["users"]) - len(restricted) == 1, "only the admin user is unrestricted"
    assert any(u["permissions"]["publish"]["allow"][:2] == ["alur.report.bp3mi-kalsel", "alur.response.bp3mi-kalsel"]
               for u in restricted)
    assert (auth_dir / "alur-auth.conf").stat().st_mode & 0o077 == 0
    assert (auth_dir / "secrets" / "notify.env").read_text().startswith("ALUR_NKEY_SEED=SU")


@pytest.mark.parametrize("conf", ["nats/single.conf", "nats/cluster/nats-1.conf", "nats/cluster/nats-2.conf",
                                  "nats/cluster/nats-3.conf"])
def test_server_configs_are_valid_and_sync_always(auth_dir: Path, conf: str) -> None:
    text = (DEPLOY / conf).read_text()
    assert re.search(r"sync_interval:\s*always", text)
    target = auth_dir / Path(conf).name
    target.write_text(text.replace("/var/lib/nats/jetstream", str(auth_dir / "js")))
    result = subprocess.run([nats_server_binary(), "-c", str(target), "-t"], capture_output=True, text=True, timeout=20)
    assert "is valid" in result.stdout + result.stderr, result.stdout + result.stderr


def test_container_and_process_files_run_the_services() -> None:
    assert "alur" in (DEPLOY / "Containerfile").read_text()
    procfile = (DEPLOY / "Procfile").read_text()
    for service in ("intake", "routing", "notify"):
        assert f"alur serve {service}" in procfile
        assert f"alur serve {service}" in (DEPLOY / "systemd" / f"alur-{service}.service").read_text()
