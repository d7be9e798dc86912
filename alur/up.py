"""`alur up`: the embedded broker (or the operator's), provisioning, and the three services as processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from nats.aio.client import Client
from nats.js import JetStreamContext

from alur.children import spawn_tied
from alur.embedded import EmbeddedServer, ServerError, cluster_nodes, free_port
from alur.rundir import DataDirBusy, DataDirLock, leftovers, stop_leftovers
from contracts.records import Agency
from domain.registry import AgencyRegistry
from runtime.bus import connect
from runtime.locate import RunInfo
from runtime.nats_auth import accounts
from runtime.profile import load_registry_file
from runtime.provision import (
    Topology,
    ensure_agency_consumers,
    load_topology,
    provision,
)
from runtime.registry_store import CredentialStore, RegistryStore
from runtime.security import SecretStore, write_private
from runtime.settings import Settings

STOP_GRACE = 20.0


class UpError(RuntimeError):
    """`alur up` cannot go on; the message says why and what to do."""


def _fmt(hostport: tuple[str, int]) -> str:
    return f"{hostport[0]}:{hostport[1]}"


@dataclass
class Stack:
    """A running Alur: broker connection, the services' processes, and how to stop them all."""

    settings: Settings
    nats_url: str | None = None
    port: int = 4222
    cluster: int = 0
    """With no `nats_url`: 0 runs one embedded node; N ≥ 3 an embedded N-node cluster on loopback (drills)."""
    say: Callable[[str], None] = print
    servers: list[EmbeddedServer] = field(default_factory=list)
    nc: Client | None = None
    js: JetStreamContext | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    registry_store: RegistryStore | None = None
    secrets: SecretStore | None = None
    lock: DataDirLock = field(init=False)
    topology: Topology = field(default_factory=load_topology)

    def __post_init__(self) -> None:
        self.lock = DataDirLock(self.settings.data_dir)

    @property
    def embedded(self) -> bool:
        return self.nats_url is None

    @property
    def server(self) -> EmbeddedServer | None:
        """The embedded server (the first node of an embedded cluster)."""
        return self.servers[0] if self.servers else None

    @property
    def replicas(self) -> int:
        """Replicas of every stream and bucket: `ALUR_REPLICAS`, else 3 on an embedded cluster, else 1."""
        return self.settings.replicas or (min(3, self.cluster) if self.cluster else 1)

    def _embedded_nodes(self, data_dir: Path, store_key: str) -> list[EmbeddedServer]:
        assert self.secrets is not None
        if not self.cluster:
            return [EmbeddedServer(data_dir=data_dir, port=self.port, store_key=store_key)]
        ports = [self.port] + [free_port() for _ in range(self.cluster - 1)]
        return cluster_nodes(data_dir, self.cluster, route_password=self.secrets.route_password(),
                             store_key=store_key, ports=ports)

    async def start(self) -> None:
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        data_dir.chmod(0o700)  # victim records and secrets live here: the owner's alone
        self._claim_data_dir()
        self.secrets = SecretStore(data_dir)
        profile_registry = load_registry_file()
        url = self.nats_url
        admin_seed = self.settings.nkey
        if admin_seed is None and self.secrets.has_service("admin"):
            admin_seed = self.secrets.service_seed("admin")
        if self.embedded:
            self.servers = self._embedded_nodes(data_dir, self.secrets.store_key())
            registry = self._registry_with_snapshot(profile_registry)
            url = ",".join(node.url for node in self.servers)
            try:
                for node in self.servers:
                    node.spawn(accounts(self.secrets, registry, self.topology))
                self._write_run_file(url)
                for node in self.servers:
                    await asyncio.to_thread(node.wait_ready)
            except ServerError as exc:
                raise UpError(str(exc)) from None
            admin_seed = self.secrets.service_seed("admin")
        assert url is not None
        try:
            await (await connect(url, seed=admin_seed, name="alur-up")).close()  # fails fast if unreachable
            self.nc = await connect(url, seed=admin_seed, name="alur-up", reconnect=True)
        except Exception as exc:
            await self.stop()
            raise UpError(f"cannot reach NATS at {url}: {type(exc).__name__}; is the server running and is "
                          "the URL right?") from None
        self.js = self.nc.jetstream(timeout=10)
        topology = self.topology
        await self._wait_for_jetstream()
        await provision(self.js, topology, replicas=self.replicas)
        self.registry_store = RegistryStore(self.js)
        added = await self.registry_store.seed(profile_registry)
        registry = await self.registry_store.load()
        await provision(self.js, topology, registry, replicas=self.replicas)
        await self._publish_credentials(registry)
        if self.embedded:
            self._snapshot(registry)
            self._reload(registry)
        self.registry_store.on_change(self._registry_changed)
        await self.registry_store.start_watch()
        self.say(f"NATS      {url}{' (embedded, data in ' + str(data_dir) + ')' if self.embedded else ''}")
        if added:
            self.say(f"registry  seeded {len(added)} agencies from the profile")
        self._spawn(url)
        self._write_run_file(url)
        self.say(f"intake    http://{_fmt(self.settings.intake_http)}  (POST /v1/reports)")
        self.say(f"notify    http://{_fmt(self.settings.notify_http)}  (POST /v1/referrals/{{id}}/responses)")
        self.say(f"routing   http://{_fmt(self.settings.routing_http)}  (health and metrics)")
        self.say(f"board     http://{_fmt(self.settings.board_http)}/  (the coordinator's board; sign in with "
                 "the secretariat's http_token)")
        await self._wait_ready()
        self.say("ready: intake, routing, notify and board are running")

    def _claim_data_dir(self) -> None:
        """Lock the data dir for this run, and stop what a crashed run there left behind."""
        data_dir = self.settings.data_dir
        try:
            self.lock.acquire()
        except DataDirBusy as exc:
            raise UpError(str(exc)) from None
        stale = RunInfo.load(data_dir)
        if stale is None:
            return
        found = leftovers(stale)
        if found:
            listed = ", ".join(f"{name} (pid {pid})" for name, pid in sorted(found.items()))
            self.say(f"stopping what an earlier `alur up` (pid {stale.pid}) left running: {listed}")
            stuck = stop_leftovers(found)
            if stuck:
                raise UpError(f"processes of an earlier run would not stop: pids {', '.join(map(str, stuck))}; "
                              "stop them and start again")
        RunInfo.remove(data_dir)

    def _write_run_file(self, url: str) -> None:
        children = {name: proc.pid for name, proc in self.processes.items()}
        for node in self.servers:
            if node.process is not None:
                children["nats-server" if len(self.servers) == 1 else node.name] = node.process.pid
        RunInfo(
            nats_url=url, pid=os.getpid(), embedded=self.embedded,
            intake_http=_fmt(self.settings.intake_http), routing_http=_fmt(self.settings.routing_http),
            notify_http=_fmt(self.settings.notify_http), board_http=_fmt(self.settings.board_http), children=children,
        ).write(self.settings.data_dir)

    def _snapshot_path(self) -> Path:
        return self.settings.data_dir / "registry-snapshot.json"

    def _registry_with_snapshot(self, profile: AgencyRegistry) -> AgencyRegistry:
        """Server accounts must exist before KV can be read: the enabled agencies this data dir last saw."""
        with contextlib.suppress(OSError, ValueError, KeyError):
            enabled = json.loads(self._snapshot_path().read_text())["enabled"]
            return AgencyRegistry.of(Agency(id=agency_id, type=kind) for agency_id, kind in enabled.items())
        return profile

    def _snapshot(self, registry: AgencyRegistry) -> None:
        """Which agencies have accounts: ids and types only (never a URL or a webhook secret), owner-only."""
        enabled = {a.id: a.type.value for a in registry.agencies.values() if a.enabled}
        write_private(self._snapshot_path(), json.dumps({"enabled": enabled}))

    async def _publish_credentials(self, registry: AgencyRegistry) -> None:
        assert self.js is not None and self.secrets is not None
        creds = CredentialStore(self.js)
        for agency in registry.agencies.values():
            if self.embedded or self.secrets.has_agency(agency.id):
                await creds.put(agency.id, self.secrets.agency(agency.id).public)

    async def _registry_changed(self, registry: AgencyRegistry) -> None:
        """A live registry change: new agencies get credentials, an account and their consumer at once."""
        await self._publish_credentials(registry)
        if self.embedded and self.servers and self.secrets is not None:
            self._snapshot(registry)
            self._reload(registry)
        assert self.js is not None
        enabled = [a for a in registry.agencies.values() if a.enabled]
        await ensure_agency_consumers(self.js, self.topology, enabled)

    def _reload(self, registry: AgencyRegistry) -> None:
        """Give every embedded node the accounts of `registry` (a node whose config is unchanged is left alone)."""
        assert self.secrets is not None
        block = accounts(self.secrets, registry, self.topology)
        for node in self.servers:
            node.reload(block)

    async def _wait_for_jetstream(self, timeout: float = 60.0) -> None:
        """On a cluster, JetStream answers once its nodes have elected a meta leader; wait for that."""
        assert self.js is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                await self.js.account_info()
                return
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise UpError(f"JetStream did not become available within {timeout:.0f}s: "
                                  f"{type(exc).__name__}") from None
                await asyncio.sleep(0.2)

    def _spawn(self, url: str) -> None:
        assert self.secrets is not None
        for name in self.topology.services:
            env = {
                **os.environ,
                "ALUR_NATS_URL": url,
                "ALUR_DATA_DIR": str(self.settings.data_dir),
                "ALUR_SLA_SCALE": str(self.settings.sla_scale),
                "ALUR_INTAKE_HTTP": _fmt(self.settings.intake_http),
                "ALUR_ROUTING_HTTP": _fmt(self.settings.routing_http),
                "ALUR_NOTIFY_HTTP": _fmt(self.settings.notify_http),
                "ALUR_BOARD_HTTP": _fmt(self.settings.board_http),
            }
            if self.embedded or self.secrets.has_service(name):
                env["ALUR_NKEY_SEED"] = self.secrets.service_seed(name)
            env.setdefault("ALUR_MATCH_KEY", self.secrets.match_key())
            if name == "intake":  # only intake makes case ids; the others never need the key
                env.setdefault("ALUR_CASE_KEY", self.secrets.case_key())
            log_path = self.settings.data_dir / f"{name}.log"
            with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
                self.processes[name] = spawn_tied(
                    [sys.executable, "-m", "alur.serve", name], env=env, stdout=log, stderr=subprocess.STDOUT,
                )

    async def _wait_ready(self, timeout: float = 60.0) -> None:
        """Until every consumer has a service pulling, and every service without consumers (the board)
        answers `/readyz` with 200."""
        assert self.js is not None
        deadline = time.monotonic() + timeout
        pending = {(c.stream, c.durable) for c in self.topology.consumers if c.service}
        http_pending = {name for name in self.topology.services if not self.topology.consumers_of(name)}
        while pending or http_pending:
            for name in list(http_pending):
                if await self._http_ready(name):
                    http_pending.discard(name)
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise UpError(f"service {name} exited with code {proc.returncode}; see "
                                  f"{self.settings.data_dir / (name + '.log')}")
            for stream, durable in list(pending):
                with contextlib.suppress(Exception):
                    if (await self.js.consumer_info(stream, durable)).num_waiting > 0:
                        pending.discard((stream, durable))
            if time.monotonic() > deadline:
                raise UpError(f"services not ready after {timeout:.0f}s: "
                              f"{sorted(d for _, d in pending) + sorted(http_pending)}")
            await asyncio.sleep(0.1)

    async def _http_ready(self, name: str) -> bool:
        host, port = getattr(self.settings, f"{name}_http")
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(timeout=2.0) as client:
                return (await client.get(f"http://{host}:{port}/readyz")).status_code == 200
        return False

    def dead_service(self) -> str | None:
        return next((name for name, proc in self.processes.items() if proc.poll() is not None), None)

    async def stop(self) -> None:
        """Stop the services (SIGTERM, then SIGKILL after their grace period), then the broker."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for name, proc in self.processes.items():
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(proc.wait, max(0.1, deadline - time.monotonic()))
            if proc.poll() is None:
                self.say(f"service {name} did not stop within {STOP_GRACE:.0f}s; killed")
                proc.kill()
                proc.wait(5)
        if self.registry_store:
            await self.registry_store.stop()
        if self.nc and not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()
        for node in self.servers:
            await asyncio.to_thread(node.stop)
        if self.lock.held:
            RunInfo.remove(self.settings.data_dir)
            self.lock.release()


async def run_until_signalled(stack: Stack) -> int:
    """Start, print `ready`, and run until SIGINT/SIGTERM or a service dies; always stop cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await stack.start()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if dead := stack.dead_service():
                stack.say(f"service {dead} stopped unexpectedly; shutting down (see its log in {stack.settings.data_dir})")
                code = 1
                break
    except UpError as exc:
        stack.say(f"error: {exc}")
        code = 2
    finally:
        await stack.stop()
        stack.say("stopped")
    return code
