"""NKey users, HTTP tokens and the nats-server authorization derived from the registry.

Secrets live only in the data dir (`<data>/secrets`, mode 0600); the `credentials` KV bucket holds
what services need to check a caller (the public NKey and a SHA-256 of the HTTP token), never a secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from alur.registry import Agency, AgencyRegistry

SERVICES = ("intake", "routing", "notify", "admin")


def new_user_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    return nkeys.from_seed(seed.encode()).public_key.decode()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def agency_inbox_prefix(agency_id: str) -> str:
    """Each agency reads replies only under its own inbox prefix, so no agency can read another's."""
    return f"_INBOX.{agency_id}"


SERVICE_INBOX_PREFIX = "_INBOX_alur"


@dataclass(frozen=True, slots=True)
class AgencySecrets:
    agency: str
    nkey_seed: str
    http_token: str

    @property
    def public(self) -> dict[str, str]:
        return {"nkey": public_key(self.nkey_seed), "token_sha256": token_digest(self.http_token)}


class SecretStore:
    """Seeds and tokens under `<data_dir>/secrets`, created on first use and kept across restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "secrets"

    def _write(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def service_seed(self, service: str) -> str:
        path = self.root / f"{service}.nk"
        if not path.exists():
            self._write(path, new_user_seed())
        return path.read_text().strip()

    def match_key(self) -> str:
        """The key of intake's identity hashes (possible duplicate victims); created once, kept."""
        path = self.root / "match.key"
        if not path.exists():
            self._write(path, secrets.token_hex(32))
        return path.read_text().strip()

    def has_service(self, service: str) -> bool:
        return (self.root / f"{service}.nk").exists()

    def agency(self, agency_id: str) -> AgencySecrets:
        path = self.root / "agencies" / f"{agency_id}.json"
        if not path.exists():
            self._write(
                path, json.dumps({"nkey_seed": new_user_seed(), "http_token": secrets.token_urlsafe(32)})
            )
        data = json.loads(path.read_text())
        return AgencySecrets(agency_id, data["nkey_seed"], data["http_token"])

    def has_agency(self, agency_id: str) -> bool:
        return (self.root / "agencies" / f"{agency_id}.json").exists()


def agency_permissions(agency_id: str, stream: str = "REFERRALS") -> dict[str, Any]:
    """What an agency's NATS user may do: publish its reports and responses, read its own consumer."""
    durable = f"agency-{agency_id}"
    return {
        "publish": {
            "allow": [
                f"alur.report.{agency_id}",
                f"alur.response.{agency_id}",
                f"$JS.API.CONSUMER.INFO.{stream}.{durable}",
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}",
                f"$JS.ACK.{stream}.{durable}.>",
            ]
        },
        "subscribe": {"allow": [f"{agency_inbox_prefix(agency_id)}.>"]},
    }


SERVICE_JETSTREAM = ["$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "alur.dlq.>"]
SERVICE_PUBLISHES: dict[str, list[str]] = {
    "intake": ["alur.report.*", "alur.case.>", "$KV.cases.>", "$KV.matches.>", "$KV.report-refs.>"],
    "routing": ["alur.referral.requested.*", "$KV.decisions.>", "$KV.case-referrals.>"],
    "notify": ["alur.response.*", "alur.referral.>", "alur.timer.>", "$KV.referrals.>", "$KV.registry.>"],
}


def service_permissions(service: str) -> dict[str, Any] | None:
    """What a service's NATS user may do: JetStream and KV plumbing, and publish only its own facts.

    Intake alone states cases, routing alone requests referrals, notify alone states the rest of a
    referral's life; `admin` (the CLI and `alur up`) is unrestricted.
    """
    if service not in SERVICE_PUBLISHES:
        return None
    return {
        "publish": {"allow": SERVICE_JETSTREAM + SERVICE_PUBLISHES[service]},
        "subscribe": {"allow": [f"{SERVICE_INBOX_PREFIX}.>"]},
    }


def authorization(store: SecretStore, registry: AgencyRegistry) -> dict[str, Any]:
    """The `authorization` block of nats-server: one NKey user per service and per agency."""
    users: list[dict[str, Any]] = []
    for name in SERVICES:
        user: dict[str, Any] = {"nkey": public_key(store.service_seed(name))}
        if (permissions := service_permissions(name)) is not None:
            user["permissions"] = permissions
        users.append(user)
    for agency in sorted(registry.agencies.values(), key=lambda a: a.id):
        if agency.enabled:
            users.append(
                {"nkey": public_key(store.agency(agency.id).nkey_seed), "permissions": agency_permissions(agency.id)}
            )
    return {"users": users}


def server_config(
    *, host: str, port: int, store_dir: Path, auth: dict[str, Any] | None, monitor_port: int | None = None,
    sync_always: bool = True, server_name: str = "alur",
) -> str:
    """A nats-server config (JSON is valid nats.conf syntax) for a single JetStream node."""
    config: dict[str, Any] = {
        "server_name": server_name,
        "listen": f"{host}:{port}",
        "max_payload": 1048576,
        "jetstream": {"store_dir": str(store_dir), **({"sync_interval": "always"} if sync_always else {})},
    }
    if monitor_port:
        config["http"] = f"{host}:{monitor_port}"
    if auth:
        config["authorization"] = auth
    return json.dumps(config, indent=2)


def token_matches(token: str, digest: str) -> bool:
    return hmac.compare_digest(token_digest(token), digest)


def agency_public_credentials(store: SecretStore, agency: Agency) -> dict[str, str]:
    return store.agency(agency.id).public
