"""How a command finds NATS: `--nats URL`, else `ALUR_NATS_URL`, else the embedded server of a running `alur up`."""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import SecretStr

from runtime.security import SecretStore
from runtime.settings import Settings

DEFAULT_URL = "nats://127.0.0.1:4222"
RUN_FILE = "run.json"
LOCK_FILE = "alur.lock"
"""`alur up` holds an OS lock (`flock`) on this file for its whole run; a run file is trusted only while
the lock is held, so a stale `run.json` never hides a live stack nor points at a dead one."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a running `alur up` tells other commands: where NATS and the services are, and its processes."""

    nats_url: str
    pid: int
    embedded: bool
    intake_http: str
    routing_http: str
    notify_http: str
    board_http: str = ""
    children: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def path(data_dir: Path) -> Path:
        return Path(data_dir) / RUN_FILE

    def write(self, data_dir: Path) -> None:
        path = self.path(data_dir)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(self), f)
        tmp.replace(path)

    @classmethod
    def load(cls, data_dir: Path) -> RunInfo | None:
        """The run file as written, live or stale; None if there is none or it cannot be read."""
        try:
            return cls(**json.loads(cls.path(data_dir).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    @classmethod
    def read(cls, data_dir: Path) -> RunInfo | None:
        """The run file of the `alur up` running on this data dir now; None if none runs."""
        return cls.load(data_dir) if is_locked(data_dir) else None

    @classmethod
    def remove(cls, data_dir: Path) -> None:
        cls.path(data_dir).unlink(missing_ok=True)



def is_locked(data_dir: Path) -> bool:
    """Whether some process holds the data dir's lock (an `alur up` is running there)."""
    try:
        fd = os.open(Path(data_dir) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False




class NoBroker(RuntimeError):
    """No NATS to talk to; the message says how to get one."""


def resolve(explicit: str | None, settings: Settings, who: str = "admin") -> tuple[str, str | None]:
    """The NATS URL and the NKey seed to use for `who` (a service name, or `admin` for the CLI)."""
    seed = settings.nkey
    url = explicit or settings.nats_url
    if url:
        if seed is None and (info := RunInfo.read(settings.data_dir)) and info.embedded and info.nats_url == url:
            seed = SecretStore(settings.data_dir).service_seed(who)
        return url, seed
    info = RunInfo.read(settings.data_dir)
    if info is None:
        raise NoBroker(
            f"no NATS found: start `alur up` (data dir {settings.data_dir}), "
            "or pass --nats URL, or set ALUR_NATS_URL"
        )
    if info.embedded and seed is None:
        seed = SecretStore(settings.data_dir).service_seed(who)
    return info.nats_url, seed


def with_embedded_keys(settings: Settings) -> Settings:
    """`settings` with intake's keys taken from the data dir's secrets when they are unset and an embedded
    `alur up` runs there: `alur serve intake` beside it then makes the same case ids and identity hashes as
    the instance `alur up` started. Anywhere else the keys must come from the environment."""
    info = RunInfo.read(settings.data_dir)
    if info is None or not info.embedded or (settings.nats_url and settings.nats_url != info.nats_url):
        return settings
    store = SecretStore(settings.data_dir)
    updates = {}
    if settings.case_key is None:
        updates["case_key"] = SecretStr(store.case_key())
    if settings.match_key is None:
        updates["match_key"] = SecretStr(store.match_key())
    return settings.model_copy(update=updates)

