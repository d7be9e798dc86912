"""Secrets: NKey seeds, HTTP tokens and keys, kept under the data dir; the nats-server config around them.

Who may do what on the bus is `runtime.nats_auth`.

Secrets live only in the data dir (`<data>/secrets`, mode 0600); the `credentials` KV bucket holds
what services need to check a caller (the public NKey and a SHA-256 of the HTTP token), never a secret.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nkeys

from contracts.records import AgencyCredential


def new_user_seed() -> str:
    return nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()


def public_key(seed: str) -> str:
    return nkeys.from_seed(seed.encode()).public_key.decode()


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def agency_inbox_prefix(agency_id: str) -> str:
    """Each agency reads replies only under its own inbox prefix, so no agency can read another's."""
    return f"_INBOX.{agency_id}"


def service_inbox_prefix(service: str) -> str:
    """Each service reads replies only under its own inbox prefix, so no service reads another's."""
    return f"_INBOX_{service}"


def response_inbox(service: str) -> str:
    """Where a service's response door waits for notify's decision on an answer it stored."""
    return f"{service_inbox_prefix(service)}.responses"


@dataclass(frozen=True, slots=True)
class AgencySecrets:
    agency: str
    nkey_seed: str
    http_token: str

    @property
    def public(self) -> AgencyCredential:
        """What services may know of these secrets: the public NKey and the token's digest."""
        return AgencyCredential(nkey=public_key(self.nkey_seed), token_sha256=token_digest(self.http_token))


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` atomically, readable by the owner only (and its folder too)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.replace(path)


class SecretStore:
    """Seeds and tokens under `<data_dir>/secrets`, created on first use and kept across restarts."""

    def __init__(self, data_dir: Path) -> None:
        self.root = Path(data_dir) / "secrets"

    def _write(self, path: Path, text: str) -> None:
        write_private(path, text)

    def service_seed(self, service: str) -> str:
        path = self.root / f"{service}.nk"
        if not path.exists():
            self._write(path, new_user_seed())
        return path.read_text().strip()

    def store_key(self) -> str:
        """The key of the embedded server's encrypted JetStream store; created once, kept (losing it loses the store)."""
        path = self.root / "jetstream.key"
        if not path.exists():
            self._write(path, secrets.token_hex(32))
        return path.read_text().strip()

    def route_password(self) -> str:
        """The password the nodes of an embedded cluster give each other on their routes; created once, kept."""
        path = self.root / "route.password"
        if not path.exists():
            self._write(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def match_key(self) -> str:
        """The key of intake's identity hashes (possible duplicate victims); created once, kept."""
        path = self.root / "match.key"
        if not path.exists():
            self._write(path, secrets.token_hex(32))
        return path.read_text().strip()

    def case_key(self) -> str:
        """The key of intake's case ids (an HMAC, so ids cannot be worked out); created once, kept: a new key
        would give a replayed report a new case id."""
        path = self.root / "case.key"
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

    def rotate_agency(self, agency_id: str) -> AgencySecrets:
        """New NKey seed and HTTP token for an agency (the old ones are overwritten: they stop working once the
        server's accounts and the credentials bucket are updated)."""
        self._write(self.root / "agencies" / f"{agency_id}.json",
                    json.dumps({"nkey_seed": new_user_seed(), "http_token": secrets.token_urlsafe(32)}))
        return self.agency(agency_id)

    def has_agency(self, agency_id: str) -> bool:
        return (self.root / "agencies" / f"{agency_id}.json").exists()


STORE_KEY_ENV = "ALUR_JS_KEY"
"""The environment variable that hands nats-server the key of its store: the config file never holds it."""


def server_config(
    *, host: str, port: int, store_dir: Path, accounts: dict[str, Any] | None, monitor_port: int | None = None,
    sync_always: bool = True, server_name: str = "alur", encrypted: bool = False,
    cluster: dict[str, Any] | None = None,
) -> str:
    """A nats-server config (JSON is valid nats.conf syntax) for a single JetStream node.

    `accounts` from `runtime.nats_auth.accounts` (None: no auth, for tests of the plumbing). `encrypted`
    encrypts the JetStream store (ChaCha20-Poly1305) with the key nats-server reads from `$ALUR_JS_KEY`.
    `cluster` is the node's `cluster` block when it is one of several (`alur up --cluster N`).
    """
    jetstream: dict[str, Any] = {"store_dir": str(store_dir)}
    if sync_always:
        jetstream["sync_interval"] = "always"
    if encrypted:
        jetstream |= {"cipher": "chachapoly", "key": _VARIABLE}
    config: dict[str, Any] = {
        "server_name": server_name,
        "listen": f"{host}:{port}",
        "max_payload": 1048576,
        "jetstream": jetstream,
    }
    if monitor_port:
        config["http"] = f"{host}:{monitor_port}"
    if accounts:
        config["accounts"] = accounts
    if cluster:
        config["cluster"] = cluster
    return json.dumps(config, indent=2).replace(json.dumps(_VARIABLE), f"${STORE_KEY_ENV}")


_VARIABLE = "\x00store-key\x00"  # a placeholder no real value has, turned into nats.conf's `$ALUR_JS_KEY`
