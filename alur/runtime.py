"""How a command finds NATS: `--nats URL`, else `ALUR_NATS_URL`, else the embedded server of a running `alur up`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from alur.security import SecretStore
from alur.settings import Settings

DEFAULT_URL = "nats://127.0.0.1:4222"


class NoBroker(RuntimeError):
    """No NATS to talk to; the message says how to get one."""


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a running `alur up` tells other commands, in `<data_dir>/run.json`."""

    nats_url: str
    pid: int
    embedded: bool
    intake_http: str
    routing_http: str
    notify_http: str

    @staticmethod
    def path(data_dir: Path) -> Path:
        return Path(data_dir) / "run.json"

    def write(self, data_dir: Path) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.path(data_dir).write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, data_dir: Path) -> RunInfo | None:
        try:
            info = cls(**json.loads(cls.path(data_dir).read_text()))
        except (OSError, ValueError, TypeError):
            return None
        try:
            os.kill(info.pid, 0)
        except OSError:
            return None
        return info

    @classmethod
    def remove(cls, data_dir: Path) -> None:
        cls.path(data_dir).unlink(missing_ok=True)


def resolve(explicit: str | None, settings: Settings, who: str = "admin") -> tuple[str, str | None]:
    """The NATS URL and the NKey seed to use for `who` (a service name, or `admin` for the CLI)."""
    seed = settings.nkey_seed
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
