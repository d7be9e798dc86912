"""deploy/: the nats-server configs are valid with the accounts `alur nats-config` generates."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from alur.embedded import free_ports, nats_server_binary

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
    block = json.loads(text.split("accounts:", 1)[1])
    users = [u for account in block.values() for u in account["users"]]
    restricted = [u for u in users if "permissions" in u]
    assert len(users) - len(restricted) == 1, "only the admin user is unrestricted"
    assert set(block) == {"ALUR", "AGENCIES"} and block["ALUR"]["jetstream"] == "enabled"
    assert any(u["permissions"]["publish"]["allow"][:2] == ["alur.report.bp3mi-kalsel", "alur.response.bp3mi-kalsel"]
               for u in restricted)
    assert (auth_dir / "alur-auth.conf").stat().st_mode & 0o077 == 0
    assert (auth_dir / "secrets" / "notify.env").read_text().startswith("ALUR_NKEY_SEED=SU")
    intake = (auth_dir / "secrets" / "intake.env").read_text()
    assert "ALUR_CASE_KEY=" in intake and "ALUR_CASE_KEY" not in (auth_dir / "secrets" / "notify.env").read_text()


@pytest.mark.parametrize("conf", ["nats/single.conf", "nats/cluster/nats-1.conf", "nats/cluster/nats-2.conf",
                                  "nats/cluster/nats-3.conf"])
def test_server_configs_are_valid_and_sync_always(auth_dir: Path, conf: str) -> None:
    text = (DEPLOY / conf).read_text()
    assert re.search(r"sync_interval:\s*always", text)
    # The shipped file itself, beside the generated alur-auth.conf; what the operator supplies (addresses,
    # store, certificates, secrets) comes from the environment, as in production.
    target = auth_dir / Path(conf).name
    target.symlink_to(DEPLOY / conf)
    operator = operator_env(auth_dir, clustered="cluster" in conf)
    result = subprocess.run([nats_server_binary(), "-c", str(target), "-t"], capture_output=True, text=True, timeout=20,
                            env={**base_env(), **operator})
    assert "is valid" in result.stdout + result.stderr, result.stdout + result.stderr
    # Without the encryption key (or any other operator value) the server refuses to start: never unencrypted.
    del operator["ALUR_JS_KEY"]
    result = subprocess.run([nats_server_binary(), "-c", str(target), "-t"], capture_output=True, text=True, timeout=20,
                            env={**base_env(), **operator})
    assert "is valid" not in result.stdout + result.stderr and "ALUR_JS_KEY" in result.stdout + result.stderr


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")}


def operator_env(directory: Path, clustered: bool) -> dict[str, str]:
    """What an operator sets for a shipped server config (its header lists it): loopback addresses, a store,
    throwaway certificates (trustme) and secrets; tests/test_cluster_configs.py sets the same to run them."""
    trustme = pytest.importorskip("trustme", reason="trustme (the `test` extra) makes the CAs: run `make setup`")
    tls = directory / "tls"
    tls.mkdir()

    def issue(ca: trustme.CA, stem: str) -> tuple[str, str]:
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(tls / f"{stem}.pem"))
        cert.private_key_pem.write_to_path(str(tls / f"{stem}-key.pem"))
        return str(tls / f"{stem}.pem"), str(tls / f"{stem}-key.pem")

    clients_ca, route_ca = trustme.CA(), trustme.CA()
    clients_ca.cert_pem.write_to_path(str(tls / "ca.pem"))
    route_ca.cert_pem.write_to_path(str(tls / "route-ca.pem"))
    cert, key = issue(clients_ca, "node")
    # distinct, or the server refuses the config ("Duplicate route entry detected" for two equal routes)
    listen, monitor, cluster, *routes = free_ports(6)
    env = {"ALUR_NATS_LISTEN": f"127.0.0.1:{listen}", "ALUR_NATS_MONITOR": f"127.0.0.1:{monitor}",
           "ALUR_NATS_TLS_CERT": cert, "ALUR_NATS_TLS_KEY": key, "ALUR_NATS_TLS_CA": str(tls / "ca.pem"),
           "ALUR_NATS_STORE_DIR": str(directory / "js"), "ALUR_JS_KEY": secrets.token_hex(32)}
    if clustered:
        route_cert, route_key = issue(route_ca, "route")
        password = secrets.token_hex(24)
        env.update({"ALUR_NATS_CLUSTER_LISTEN": f"127.0.0.1:{cluster}", "ALUR_NATS_ROUTE_TLS_CERT": route_cert,
                    "ALUR_NATS_ROUTE_TLS_KEY": route_key, "ALUR_NATS_ROUTE_TLS_CA": str(tls / "route-ca.pem"),
                    "ALUR_NATS_ROUTE_PASSWORD": password})
        for i, port in enumerate(routes, 1):
            env[f"ALUR_NATS_ROUTE_{i}"] = f"nats-route://alur-route:{password}@127.0.0.1:{port}"
    return env


def test_container_and_process_files_run_the_services() -> None:
    assert "alur" in (DEPLOY / "Containerfile").read_text()
    procfile = (DEPLOY / "Procfile").read_text()
    for service in ("intake", "routing", "notify", "board"):
        assert f"alur serve {service}" in procfile
        assert f"alur serve {service}" in (DEPLOY / "systemd" / f"alur-{service}.service").read_text()
