"""Settings from the environment (DESIGN.md): one object, every variable named `ALUR_<FIELD>`, read once.

A bad value is a `SettingsError` naming the variable and what it must be, never a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from contracts.records import LOOPBACK_HOSTS

PROFILE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "kalsel"
TOPOLOGY_FILE = Path(__file__).resolve().parents[1] / "deploy" / "topology.yaml"
MIN_MATCH_KEY_BYTES = 16


def _hostport(default_port: int) -> Any:
    """`host:port` (or `[::1]:port`); empty means 127.0.0.1 on the default port."""

    def parse(value: Any) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value or "").strip()
        if not text:
            return ("127.0.0.1", default_port)
        host, colon, port = text.rpartition(":")
        if not colon:
            return (text, default_port)
        if not host:
            raise ValueError(f"must be host:port, e.g. 127.0.0.1:{default_port} (the host is missing)")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"must be host:port with a port from 1 to 65535, e.g. 127.0.0.1:{default_port}")
        return (host.strip("[]"), int(port))

    return BeforeValidator(parse)


HostPort = tuple[str, int]


SMTP_PORTS = {"smtp": 25, "smtps": 465}


@dataclass(frozen=True, slots=True)
class SmtpRelay:
    """The mail relay of `ALUR_SMTP_URL`; its `repr` never shows the login."""

    host: str
    port: int
    tls: bool
    """TLS from the first byte (`smtps://`); else STARTTLS when offered (`require_starttls`: insisted on)."""
    username: str | None = None
    password: str | None = None

    @property
    def require_starttls(self) -> bool:
        """A plain `smtp://` relay off loopback must upgrade to TLS before anything is sent."""
        return not self.tls and self.host not in LOOPBACK_HOSTS

    def __repr__(self) -> str:
        return f"SmtpRelay({'smtps' if self.tls else 'smtp'}://{self.host}:{self.port})"


def parse_smtp_url(url: str) -> SmtpRelay:
    """`smtp://[user:password@]host[:port]` or `smtps://…`; `ValueError` says what is wrong without repeating
    the URL (it may hold a password)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in SMTP_PORTS:
        raise ValueError("must be smtp://host:port or smtps://host:port (with user:password@ if the relay needs it)")
    if not parts.hostname:
        raise ValueError("names no host, e.g. smtp://127.0.0.1:2525")
    try:
        port = parts.port or SMTP_PORTS[parts.scheme]
    except ValueError:
        raise ValueError("has an invalid port (1 to 65535)") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must hold only the scheme, user:password@ if needed, the host and the port")
    return SmtpRelay(host=parts.hostname, port=port, tls=parts.scheme == "smtps",
                     username=unquote(parts.username) if parts.username else None,
                     password=unquote(parts.password) if parts.password is not None else None)


class SettingsError(ValueError):
    """An environment variable Alur cannot use; the message names it and says what it must be."""


class Settings(BaseSettings):
    """Everything a service or command reads from its environment (`ALUR_` + the field name in capitals)."""

    model_config = SettingsConfigDict(env_prefix="ALUR_", frozen=True, extra="ignore", validate_default=True)

    nats_url: str | None = None
    """One URL, or a comma-separated list (the servers of a cluster); else the run file of `alur up`."""
    data_dir: Path = Path(".alur")
    replicas: Annotated[int, Field(ge=0, le=5)] = 0
    """Replicas of every stream and bucket (3 on a cluster); 0: 1, or 3 on `alur up --cluster 3`."""
    sla_scale: Annotated[float, Field(gt=0, le=1000)] = 1.0
    """A factor on every SLA, reminder, escalation and retry delay (e.g. 0.001 for drills)."""
    intake_http: Annotated[HostPort, NoDecode, _hostport(8081)] = ("127.0.0.1", 8081)
    routing_http: Annotated[HostPort, NoDecode, _hostport(8082)] = ("127.0.0.1", 8082)
    notify_http: Annotated[HostPort, NoDecode, _hostport(8083)] = ("127.0.0.1", 8083)
    board_http: Annotated[HostPort, NoDecode, _hostport(8084)] = ("127.0.0.1", 8084)
    board_url: str | None = None
    """The board's address as officers reach it (e.g. `https://alur.example.go.id`), for the links in email
    notices; default: `http://` + `ALUR_BOARD_HTTP`."""
    smtp_url: str | None = Field(default=None, repr=False)
    """Where notify sends email notices: `smtp://host:port` (or `smtps://`, with `user:password@` if the relay
    needs it); unset: no email is sent and agencies' `email` addresses wait for it."""
    smtp_from: str = "alur@localhost"
    """The notices' `From:` address."""
    nkey_seed: SecretStr | None = None
    """The NKey seed of this process's NATS user (set by `alur up` for the services it runs)."""
    match_key: SecretStr | None = None
    """The key of intake's identity hashes (possible duplicate victims); `alur up` keeps it under secrets/."""
    case_key: SecretStr | None = None
    """The key of intake's case ids (HMAC of reporter and report_ref, so ids cannot be worked out); intake
    refuses to start without it. `alur up` keeps it under secrets/ next to the match key."""
    profile_dir: Path = PROFILE_DIR
    """The deployment profile: agencies, rules, views, escalation policy (default: Kalimantan Selatan)."""
    topology_file: Path = TOPOLOGY_FILE
    """Streams, consumers, buckets, service permissions and retention (default: deploy/topology.yaml)."""
    rules_validation_timeout: Annotated[float, Field(gt=0, le=3600)] = 30.0
    """Seconds routing lets a new rule pack's vetting (compile, sample facts, its tests) run in a worker
    before it refuses the pack and keeps the old one."""
    log_level: str = "INFO"
    http_rate_burst: Annotated[int, Field(ge=1, le=100_000)] = 30
    """Requests one caller may make to an HTTP door at once before it is slowed (`runtime.ratelimit`)."""
    http_rate_per_second: Annotated[float, Field(gt=0, le=100_000)] = 5.0
    """Requests per second one caller may sustain on an HTTP door; past it, 429 with `Retry-After`."""
    max_progress_notes: Annotated[int, Field(ge=1, le=10_000)] | None = None
    """Progress notes one referral takes (notify; None: `services.notify.state.MAX_PROGRESS_NOTES`); past it
    a note is refused, a status change never is."""

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("smtp_url")
    @classmethod
    def _smtp(cls, value: str | None) -> str | None:
        if value is not None and value.strip():
            parse_smtp_url(value)
            return value.strip()
        return None

    @field_validator("match_key", "case_key")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_MATCH_KEY_BYTES:
            raise ValueError(f"must be a secret of at least {MIN_MATCH_KEY_BYTES} bytes")
        return value

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **given: Any) -> Settings:
        """The settings of this process (or of `env`, for tests); `given` overrides the environment."""
        try:
            if env is None:
                return cls(**given)
            prefixed = {k.removeprefix("ALUR_").lower(): v for k, v in env.items() if k.startswith("ALUR_")}
            # every field given explicitly (init values outrank the environment): `env` alone decides
            values = {name: prefixed.get(name, field.default) for name, field in cls.model_fields.items()}
            return cls(**{**values, **given})
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @property
    def nkey(self) -> str | None:
        """The NKey seed in clear, for the connection only."""
        return self.nkey_seed.get_secret_value() if self.nkey_seed else None

    @property
    def http_ports(self) -> frozenset[int]:
        """The ports of Alur's own HTTP endpoints here: no webhook may point at them."""
        return frozenset(port for _, port in (self.intake_http, self.routing_http, self.notify_http,
                                              self.board_http))

    @property
    def smtp_relay(self) -> SmtpRelay | None:
        """The relay email notices go through, or None when `ALUR_SMTP_URL` is unset."""
        return parse_smtp_url(self.smtp_url) if self.smtp_url else None

    @property
    def board_link(self) -> str:
        """The board's public base URL, without a trailing slash."""
        if self.board_url:
            return self.board_url.rstrip("/")
        host, port = self.board_http
        return f"http://{host}:{port}"

    @property
    def hashing_key(self) -> bytes | None:
        """The match key as bytes, or None when this process was given none."""
        return self.match_key.get_secret_value().encode() if self.match_key else None

    @property
    def case_id_key(self) -> bytes | None:
        """The case-id key as bytes, or None when this process was given none."""
        return self.case_key.get_secret_value().encode() if self.case_key else None


def _explain(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False):
        field = str(error["loc"][0]) if error["loc"] else "?"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] in ("greater_than", "less_than_equal", "float_parsing") and field == "sla_scale":
            message = "must be a positive factor up to 1000 (e.g. 1, or 0.001 for drills)"
        elif field in ("http_rate_burst", "max_progress_notes") and error["type"] != "missing":
            message = "must be a whole number from 1 to " + ("100000" if field == "http_rate_burst" else "10000")
        elif field == "http_rate_per_second" and error["type"] != "missing":
            message = "must be a positive number of requests per second (e.g. 5)"
        problems.append(f"ALUR_{field.upper()}: {message}")
    return "; ".join(problems)
