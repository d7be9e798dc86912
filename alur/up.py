"""`alur up`: the embedded broker (or the operator's), provisioning, and the three services as processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext

from alur.bus import connect
from alur.embedded import EmbeddedServer, ServerError
from alur.profile import load_registry_file
from alur.provision import load_topology, provision
from alur.registry import AgencyRegistry
from alur.registry_store import CredentialStore, RegistryStore
from alur.runtime import RunInfo
from alur.security import SecretStore, authorization
from alur.settings import Settings

SERVICES = ("intake", "routing", "notify")
STOP_GRACE = 20.0
SERVICE_CONSUMERS = {
    "intake": [("REPORTS", "intake")],
    "routing": [("CASES", "routing"), ("REFERRALS", "routing-reroute")],
    "notify": [("REFERRALS", "notify-requests"), ("REPORTS", "notify-responses"), ("TIMERS", "notify-timers")],
}


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
    say: Callable[[str], None] = print
    server: EmbeddedServer | None = None
    nc: Client | None = None
    js: JetStreamContext | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    registry_store: RegistryStore | None = None
    secrets: SecretStore | None = None

    @property
    def embedded(self) -> bool:
        return self.nats_url is None

    async def start(self) -> None:
        data_dir = self.settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.secrets = SecretStore(data_dir)
        profile_registry = load_registry_file()
        url = self.nats_url
        admin_seed = self.settings.nkey_seed
        if admin_seed is None and self.secrets.has_service("admin"):
            admin_seed = self.secrets.service_seed("admin")
        if self.embedded:
            self.server = EmbeddedServer(data_dir=data_dir, port=self.port)
            registry = self._registry_with_snapshot(profile_registry)
            try:
                await asyncio.to_thread(self.server.start, authorization(self.secrets, registry))
            except ServerError as exc:
                raise UpError(str(exc)) from None
            url = self.server.url
            admin_seed = self.secrets.service_seed("admin")
        assert url is not None
        try:
            self.nc = await connect(url, seed=admin_seed, name="alur-up")
        except Exception as exc:
            await self.stop()
            raise UpError(f"cannot reach NATS at {url}: {type(exc).__name__}; is the server running and is "
                          "the URL right?") from None
        self.js = self.nc.jetstream(timeout=10)
        topology = load_topology()
        await provision(self.js, topology)
        self.registry_store = RegistryStore(self.js)
        added = await self.registry_store.seed(profile_registry)
        registry = await self.registry_store.load()
        await provision(self.js, topology, registry)
        await self._publish_credentials(registry)
        if self.embedded:
            self._snapshot(registry)
            assert self.server is not None
            self.server.reload(authorization(self.secrets, registry))
        self.registry_store.on_change(self._registry_changed)
        await self.registry_store.start_watch()
        self.say(f"NATS      {url}{' (embedded, data in ' + str(data_dir) + ')' if self.embedded else ''}")
        if added:
            self.say(f"registry  seeded {len(added)} agencies from the profile")
        self._spawn(url)
        RunInfo(
            nats_url=url, pid=os.getpid(), embedded=self.embedded,
            intake_http=_fmt(self.settings.intake_http), routing_http=_fmt(self.settings.routing_http),
            notify_http=_fmt(self.settings.notify_http),
        ).write(data_dir)
        self.say(f"intake    http://{_fmt(self.settings.intake_http)}  (POST /v1/reports)")
        self.say(f"notify    http://{_fmt(self.settings.notify_http)}  (POST /v1/referrals/{{id}}/responses)")
        self.say(f"routing   http://{_fmt(self.settings.routing_http)}  (health and metrics)")
        await self._wait_ready()
        self.say("ready: intake, routing and notify are consuming")

    def _snapshot_path(self) -> Path:
        return self.settings.data_dir / "registry-snapshot.json"

    def _registry_with_snapshot(self, profile: AgencyRegistry) -> AgencyRegistry:
        """Server users must exist before KV can be read: use the last registry this data dir saw."""
        with contextlib.suppress(OSError, ValueError):
            return AgencyRegistry.model_validate_json(self._snapshot_path().read_text())
        return profile

    def _snapshot(self, registry: AgencyRegistry) -> None:
        self._snapshot_path().write_text(registry.model_dump_json())

    async def _publish_credentials(self, registry: AgencyRegistry) -> None:
        assert self.js is not None and self.secrets is not None
        creds = CredentialStore(self.js)
        for agency in registry.agencies.values():
            if self.embedded or self.secrets.has_agency(agency.id):
                await creds.put(agency.id, self.secrets.agency(agency.id).public)

    async def _registry_changed(self, registry: AgencyRegistry) -> None:
        """A live registry change: new agencies get credentials and a NATS user at once."""
        await self._publish_credentials(registry)
        if self.embedded and self.server is not None and self.secrets is not None:
            self._snapshot(registry)
            self.server.reload(authorization(self.secrets, registry))

    def _spawn(self, url: str) -> None:
        assert self.secrets is not None
        for name in SERVICES:
            env = {
                **os.environ,
                "ALUR_NATS_URL": url,
                "ALUR_DATA_DIR": str(self.settings.data_dir),
                "ALUR_SLA_SCALE": str(self.settings.sla_scale),
                "ALUR_INTAKE_HTTP": _fmt(self.settings.intake_http),
                "ALUR_ROUTING_HTTP": _fmt(self.settings.routing_http),
                "ALUR_NOTIFY_HTTP": _fmt(self.settings.notify_http),
            }
            if self.embedded or self.secrets.has_service(name):
                env["ALUR_NKEY_SEED"] = self.secrets.service_seed(name)
            env.setdefault("ALUR_MATCH_KEY", self.secrets.match_key())
            log_path = self.settings.data_dir / f"{name}.log"
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "alur.serve", name],
                env=env,
                stdout=open(log_path, "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def _wait_ready(self, timeout: float = 60.0) -> None:
        assert self.js is not None
        deadline = time.monotonic() + timeout
        pending = {(s, d) for consumers in SERVICE_CONSUMERS.values() for s, d in consumers}
        while pending:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise UpError(f"service {name} exited with code {proc.returncode}; see "
                                  f"{self.settings.data_dir / (name + '.log')}")
            for stream, durable in list(pending):
                with contextlib.suppress(Exception):
                    if (await self.js.consumer_info(stream, durable)).num_waiting > 0:
                        pending.discard((stream, durable))
            if time.monotonic() > deadline:
                raise UpError(f"services not consuming after {timeout:.0f}s: {sorted(d for _, d in pending)}")
            await asyncio.sleep(0.1)

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
        if self.server:
            await asyncio.to_thread(self.server.stop)
        RunInfo.remove(self.settings.data_dir)


async def run_until_signalled(stack: Stack) -> int:
    """Start, print `ready`, and run until SIGINT/SIGTERM or a service dies; always stop cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
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
