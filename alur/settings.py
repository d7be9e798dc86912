"""Settings from the environment (DESIGN.md): one place, read once per process."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _hostport(value: str, default_port: int) -> tuple[str, int]:
    """`host:port` (or `[::1]:port`) from an ALUR_*_HTTP variable; empty means 127.0.0.1 and the default port."""
    host, _, port = value.rpartition(":")
    if not host:
        return value or "127.0.0.1", default_port
    return host.strip("[]"), int(port)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service or command reads from its environment."""

    nats_url: str | None = None
    data_dir: Path = Path(".alur")
    sla_scale: float = 1.0
    intake_http: tuple[str, int] = ("127.0.0.1", 8081)
    routing_http: tuple[str, int] = ("127.0.0.1", 8082)
    notify_http: tuple[str, int] = ("127.0.0.1", 8083)
    nkey_seed: str | None = field(default=None, repr=False)
    match_key: bytes = field(default=b"", repr=False)
    log_level: str = "INFO"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ) if env is None else env
        data_dir = Path(env.get("ALUR_DATA_DIR") or ".alur")
        try:
            scale = float(env.get("ALUR_SLA_SCALE") or 1.0)
        except ValueError:
            scale = -1.0
        if not 0 < scale <= 1000:
            raise ValueError("ALUR_SLA_SCALE must be a positive factor (e.g. 1, or 0.001 for drills)")
        return cls(
            nats_url=env.get("ALUR_NATS_URL") or None,
            data_dir=data_dir,
            sla_scale=scale,
            intake_http=_hostport(env.get("ALUR_INTAKE_HTTP", ""), 8081),
            routing_http=_hostport(env.get("ALUR_ROUTING_HTTP", ""), 8082),
            notify_http=_hostport(env.get("ALUR_NOTIFY_HTTP", ""), 8083),
            nkey_seed=env.get("ALUR_NKEY_SEED") or None,
            match_key=(env.get("ALUR_MATCH_KEY") or "").encode(),
            log_level=(env.get("ALUR_LOG_LEVEL") or "INFO").upper(),
        )
