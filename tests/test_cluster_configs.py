"""deploy/nats: the shipped cluster configs, run unchanged, make a TLS cluster that refuses rogue servers.

Three real nats-server processes run deploy/nats/cluster/nats-{1,2,3}.conf exactly as shipped (each node's
directory holds a symlink to the shipped file and a minimal alur-auth.conf beside it); only the
environment differs: loopback addresses, free ports, temporary stores, throwaway certificates (trustme),
the route password and ALUR_JS_KEY. Then:
- the nodes route to each other over mutual TLS with the route password, and an R3 stream acks a publish;
- clients connect only over TLS;
- rogue servers given node 1's route URL (a leaked route certificate without the password; the password
  with a client certificate, with a certificate from a CA of their own, without TLS) are refused on every
  try, are never registered as a route by any node, and never see a report published on node 1;
- after a report with a NIK is stored at R3, no file in any node's store holds the NIK in clear.
deploy/nats/tls/make-certs.sh is run too (with openssl): the cluster configs run with its certificates.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import certifi
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from alur.embedded import free_ports, nats_server_binary
from tests.conftest import CONFIDENTIAL, REFERENCE_REPORT

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CLUSTER_CONFS = [DEPLOY / "nats" / "cluster" / f"nats-{i}.conf" for i in (1, 2, 3)]
SINGLE_CONF = DEPLOY / "nats" / "single.conf"
MAKE_CERTS = DEPLOY / "nats" / "tls" / "make-certs.sh"
NODES = ("alur-1", "alur-2", "alur-3")
ROUTE_USER = "alur-route"
NIK = REFERENCE_REPORT["data"]["victim"]["identity"]["nik"]
STREAM, SUBJECT = "REPORTS", "alur.report.bp3mi-kalsel"
DEADLINE = 30.0  # generous: only a broken setup ever waits this long

# What the operator must set, per server (the header comments of the shipped files list the same).
SINGLE_VARS = ("ALUR_NATS_LISTEN", "ALUR_NATS_MONITOR", "ALUR_NATS_TLS_CERT", "ALUR_NATS_TLS_KEY", "ALUR_NATS_TLS_CA",
               "ALUR_NATS_STORE_DIR", "ALUR_JS_KEY")
CLUSTER_VARS = SINGLE_VARS + ("ALUR_NATS_CLUSTER_LISTEN", "ALUR_NATS_ROUTE_TLS_CERT", "ALUR_NATS_ROUTE_TLS_KEY",
                              "ALUR_NATS_ROUTE_TLS_CA", "ALUR_NATS_ROUTE_PASSWORD", "ALUR_NATS_ROUTE_1",
                              "ALUR_NATS_ROUTE_2", "ALUR_NATS_ROUTE_3")


# ---------------------------------------------------------------- certificates


@dataclass
class Pki:
    """Throwaway CAs and certificates, in the layout deploy/nats/tls/make-certs.sh writes."""

    dir: Path
    clients_ca: Any
    route_ca: Any

    @classmethod
    def create(cls, directory: Path, nodes: Sequence[str] = NODES) -> Pki:
        trustme = pytest.importorskip("trustme", reason="trustme (the `test` extra) makes the CAs: run `make setup`")
        directory.mkdir(parents=True, exist_ok=True)
        pki = cls(directory, trustme.CA(organization_name="Alur test clients CA"),
                  trustme.CA(organization_name="Alur test route CA"))
        pki.clients_ca.cert_pem.write_to_path(str(directory / "ca.pem"))
        pki.route_ca.cert_pem.write_to_path(str(directory / "route-ca.pem"))
        for node in nodes:
            pki.issue(pki.clients_ca, node, node, "localhost", "127.0.0.1")
            pki.issue(pki.route_ca, f"{node}-route", node, "127.0.0.1")
        pki.issue(pki.clients_ca, "services", "alur-services")
        return pki

    def issue(self, ca: Any, stem: str, *names: str) -> tuple[Path, Path]:
        cert = ca.issue_cert(*names)
        cert.cert_chain_pems[0].write_to_path(str(self.dir / f"{stem}.pem"))
        cert.private_key_pem.write_to_path(str(self.dir / f"{stem}-key.pem"))
        return self.dir / f"{stem}.pem", self.dir / f"{stem}-key.pem"

    def client_context(self) -> ssl.SSLContext:
        """What a client needs: trust in the clients' CA (the server's name is checked too)."""
        return ssl.create_default_context(cafile=str(self.dir / "ca.pem"))


# ---------------------------------------------------------------- servers


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ALUR_")}


def server_env(tls_dir: Path, node: str, *, client_port: int, monitor_port: int, store: Path, js_key: str,
               cluster_port: int | None = None, route_ports: Sequence[int] = (), route_password: str = "",
               host: str = "127.0.0.1") -> dict[str, str]:
    """The environment an operator gives one server (SINGLE_VARS, plus CLUSTER_VARS with a cluster port)."""
    env = {
        "ALUR_NATS_LISTEN": f"{host}:{client_port}",
        "ALUR_NATS_MONITOR": f"127.0.0.1:{monitor_port}",
        "ALUR_NATS_TLS_CERT": str(tls_dir / f"{node}.pem"),
        "ALUR_NATS_TLS_KEY": str(tls_dir / f"{node}-key.pem"),
        "ALUR_NATS_TLS_CA": str(tls_dir / "ca.pem"),
        "ALUR_NATS_STORE_DIR": str(store),
        "ALUR_JS_KEY": js_key,
    }
    if cluster_port is not None:
        env.update({
            "ALUR_NATS_CLUSTER_LISTEN": f"{host}:{cluster_port}",
            "ALUR_NATS_ROUTE_TLS_CERT": str(tls_dir / f"{node}-route.pem"),
            "ALUR_NATS_ROUTE_TLS_KEY": str(tls_dir / f"{node}-route-key.pem"),
            "ALUR_NATS_ROUTE_TLS_CA": str(tls_dir / "route-ca.pem"),
            "ALUR_NATS_ROUTE_PASSWORD": route_password,
        })
        for i, port in enumerate(route_ports, 1):
            env[f"ALUR_NATS_ROUTE_{i}"] = f"nats-route://{ROUTE_USER}:{route_password}@{host}:{port}"
    return env


def auth_include(user: str, password: str) -> str:
    """A minimal stand-in for what `alur nats-config` generates: one user for the test client."""
    return ("# test stand-in for `alur nats-config`\n"
            f"authorization: {json.dumps({'users': [{'user': user, 'password': password}]})}\n")


@dataclass
class Server:
    """One nats-server process started from a config file, its log in a file."""

    name: str
    conf: Path
    env: dict[str, str]
    client_port: int
    monitor_port: int
    store: Path | None = None
    route_port: int | None = None  # set when the server listens for routes
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log(self) -> Path:
        return self.conf.parent / f"{self.name}.log"

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.client_port}"

    def start(self) -> Server:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([nats_server_binary(), "-c", str(self.conf)], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def monitor(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=5) as response:
            return json.loads(response.read())

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def route_peers(self) -> set[str]:
        return {r.get("remote_name", "?") for r in self.monitor("/routez")["routes"]}

    def serving(self) -> bool:
        """Up with every listener bound (after that it can no longer fail on a port taken meanwhile)."""
        log = self.log_text()
        return ("Server is ready" in log and (self.route_port is None or "Listening for route connections" in log)
                and self.monitor("/varz").get("server_name") == self.name)

    def refusals(self) -> int:
        """Route connections this server opened and saw closed again (a refused route attempt)."""
        return self.log_text().count("Router connection closed")


def stop_all(servers: Sequence[Server]) -> None:
    for server in servers:
        if server.process is not None and server.process.poll() is None:
            server.process.terminate()
    for server in servers:
        server.stop()


def launch(build: Callable[[Path], list[Server]], base: Path, what: str, tries: int = 3) -> list[Server]:
    """Start the servers `build` makes in a fresh directory and wait until all serve. A port that another
    process took between free_port() and the server's bind is no failure: build again on new ports."""
    for attempt in range(tries):
        servers = build(base / f"try-{attempt}")
        try:
            for server in servers:
                server.start()
            until(lambda started=servers: all(s.serving() for s in started), servers, what)
            return servers
        except AssertionError:
            stop_all(servers)
            taken = any("address already in use" in s.log_text() for s in servers)
            if not taken or attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _diagnose(servers: Sequence[Server], what: str, timeout: float) -> str:
    tails = "\n".join(f"--- {s.name} (exit {s.process.poll() if s.process else None}):\n"
                      + "\n".join(s.log_text().splitlines()[-25:]) for s in servers)
    return f"timed out after {timeout:.0f} s waiting for {what}\n{tails}"


def _check(check: Callable[[], Any], servers: Sequence[Server], what: str) -> Any:
    for server in servers:
        if server.process is not None and server.process.poll() is not None:
            raise AssertionError(f"{server.name} exited while waiting for {what}:\n{server.log_text()[-4000:]}")
    try:
        return check()
    except (OSError, ValueError, KeyError):  # monitoring not answering yet, a node not up yet
        return None


def until(check: Callable[[], Any], servers: Sequence[Server], what: str, timeout: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy; fail early if a server died, and at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = _check(check, servers, what)
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(_diagnose(servers, what, timeout))
        time.sleep(0.05)


async def until_async(check: Callable[[], Any], servers: Sequence[Server], what: str,
                      timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = _check(check, servers, what)
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(_diagnose(servers, what, timeout))
        await asyncio.sleep(0.05)


@dataclass
class Cluster:
    nodes: list[Server]
    pki: Pki
    user: str
    password: str
    route_password: str
    base: Path

    async def connect(self, node: int, **options: Any) -> Client:
        return await nats.connect(self.nodes[node].url, tls=self.pki.client_context(), user=self.user,
                                  password=self.password, connect_timeout=10, allow_reconnect=False,
                                  error_cb=_quiet, **options)


async def _quiet(_: Exception) -> None:
    return None


def cluster_nodes(base: Path, tls_dir: Path, user: str, password: str, route_password: str,
                  js_key: str) -> list[Server]:
    """The three shipped node configs, each in its own directory with an alur-auth.conf, not started yet."""
    ports = free_ports(3 * len(NODES))
    route_ports = ports[:len(NODES)]
    nodes: list[Server] = []
    for i, (name, conf) in enumerate(zip(NODES, CLUSTER_CONFS, strict=True)):
        node_dir = base / name
        node_dir.mkdir(parents=True)
        (node_dir / conf.name).symlink_to(conf)  # the shipped file itself; its `include` resolves beside the link
        (node_dir / "alur-auth.conf").write_text(auth_include(user, password))
        client_port, monitor_port = ports[len(NODES) + 2 * i:len(NODES) + 2 * i + 2]
        env = {**base_env(), **server_env(tls_dir, name, client_port=client_port, monitor_port=monitor_port,
                                          store=node_dir / "store", js_key=js_key, cluster_port=route_ports[i],
                                          route_ports=route_ports, route_password=route_password)}
        nodes.append(Server(name, node_dir / conf.name, env, client_port, monitor_port, node_dir / "store",
                            route_port=route_ports[i]))
    return nodes


def routed(nodes: Sequence[Server]) -> bool:
    return all(n.route_peers() == {m.name for m in nodes} - {n.name} for n in nodes)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    pki = Pki.create(base / "tls")
    user, password, route_password = "alur-test", secrets.token_hex(16), secrets.token_hex(24)
    js_key = secrets.token_hex(32)
    nodes = launch(lambda d: cluster_nodes(d, pki.dir, user, password, route_password, js_key), base,
                   "the three nodes to start")
    try:
        until(lambda: routed(nodes), nodes, "the three nodes to route to each other")
        until(lambda: all(n.monitor("/jsz").get("meta_cluster", {}).get("leader") in NODES
                          and n.monitor("/healthz")["status"] == "ok" for n in nodes), nodes,
              "JetStream to elect its meta leader")
        yield Cluster(nodes, pki, user, password, route_password, base)
    finally:
        stop_all(nodes)


async def ensure_r3_stream(cluster: Cluster, nc: Client) -> None:
    """Create the R3 stream, retrying while the JetStream meta leader is still being elected."""
    js = nc.jetstream(timeout=5)

    async def create() -> bool:
        try:
            info = await js.add_stream(name=STREAM, subjects=["alur.report.>"], num_replicas=3)
        except (nats.errors.TimeoutError, nats.js.errors.Error):
            return False
        return info.config.num_replicas == 3

    await until_async(create, cluster.nodes, "the R3 stream to be created")


async def publish_acked(cluster: Cluster, nc: Client, body: bytes) -> Any:
    """Publish to the R3 stream until acked (the stream's leader may still be elected); deduplicated by id."""
    js = nc.jetstream(timeout=5)
    msg_id = str(uuid.uuid4())

    async def publish() -> Any:
        try:
            return await js.publish(SUBJECT, body, stream=STREAM, headers={"Nats-Msg-Id": msg_id})
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.js.errors.Error):
            return None

    return await until_async(publish, cluster.nodes, "an acknowledged R3 publish")


def report_body(**data_changes: Any) -> bytes:
    report = json.loads(json.dumps(REFERENCE_REPORT))
    report["id"] = str(uuid.uuid4())
    report["data"].update(data_changes)
    return json.dumps(report).encode()


# ---------------------------------------------------------------- the cluster


async def test_nodes_route_to_each_other_over_verified_tls_and_store_at_r3(cluster: Cluster) -> None:
    for node in cluster.nodes:
        varz = node.monitor("/varz")
        assert varz["host"] == "127.0.0.1" and varz["port"] == node.client_port, "clients: the address it was given"
        assert varz["http_host"] == "127.0.0.1", "monitoring on loopback"
        assert varz["tls_required"] is True and not varz.get("tls_verify")
        routes = varz["cluster"]
        assert routes["addr"] == "127.0.0.1", "routes bound to the given (private) address, not 0.0.0.0"
        assert routes["tls_required"] is True and routes["tls_verify"] is True, "mutual TLS on routes"
        assert node.route_peers() == set(NODES) - {node.name}

    nc = await cluster.connect(0)
    try:
        await ensure_r3_stream(cluster, nc)
        ack = await publish_acked(cluster, nc, report_body())
        assert ack.stream == STREAM and ack.seq >= 1
        info = await nc.jetstream().stream_info(STREAM)
        assert info.cluster is not None and info.cluster.leader in NODES
        assert {r.name for r in info.cluster.replicas or []} == set(NODES) - {info.cluster.leader}
    finally:
        await nc.close()


async def test_clients_connect_with_tls_only(cluster: Cluster) -> None:
    for i, node in enumerate(cluster.nodes):
        nc = await cluster.connect(i, name=f"tls-check-{i}")
        try:
            await nc.flush()
            connz = node.monitor("/connz")["connections"]
            mine = [c for c in connz if c.get("name") == f"tls-check-{i}"]
            assert mine and mine[0].get("tls_version", "").startswith("1."), connz
        finally:
            await nc.close()

    # A plaintext client is told TLS is required and never gets a PONG.
    with socket.create_connection(("127.0.0.1", cluster.nodes[0].client_port), timeout=10) as s:
        info = s.makefile("rb").readline()
        assert info.startswith(b"INFO ") and json.loads(info[5:])["tls_required"] is True
        s.sendall(b'CONNECT {"verbose":false,"user":"%s","pass":"%s"}\r\nPING\r\n'
                  % (cluster.user.encode(), cluster.password.encode()))
        received = b""
        try:
            while chunk := s.recv(4096):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        assert b"PONG" not in received

    # A client that does not trust the CA never connects either.
    with pytest.raises(ssl.SSLCertVerificationError):
        await nats.connect(cluster.nodes[0].url, tls=ssl.create_default_context(), user=cluster.user,
                           password=cluster.password, connect_timeout=5, allow_reconnect=False, error_cb=_quiet)


# ---------------------------------------------------------------- rogue servers


ROGUES = {
    # a route certificate from the route CA (leaked or mis-issued), but not the route password
    "rogue-leaked-cert-no-password": {"password": False, "cert": "route"},
    # the route password, with the services' client certificate (clients' CA, not the route CA)
    "rogue-password-client-cert": {"password": True, "cert": "services"},
    # the route password, with a certificate from a CA of its own
    "rogue-password-own-ca": {"password": True, "cert": "own"},
    # the route password, no TLS at all
    "rogue-password-no-tls": {"password": True, "cert": None},
}


@pytest.fixture
def rogues(cluster: Cluster, tmp_path: Path) -> Iterator[list[Server]]:
    trustme = pytest.importorskip("trustme")
    own_ca = trustme.CA(organization_name="Rogue CA")
    leaked = cluster.pki.issue(cluster.pki.route_ca, "leaked-route", "alur-4", "127.0.0.1")
    own = cluster.pki.issue(own_ca, "own", "alur-4", "127.0.0.1")
    services = (cluster.pki.dir / "services.pem", cluster.pki.dir / "services-key.pem")
    target = cluster.nodes[0].route_port

    def build(directory: Path) -> list[Server]:
        directory.mkdir(parents=True)
        ports = free_ports(3 * len(ROGUES))
        servers: list[Server] = []
        for i, (name, how) in enumerate(ROGUES.items()):
            creds = f"{ROUTE_USER}:{cluster.route_password}@" if how["password"] else ""
            cert = {"route": leaked, "services": services, "own": own}.get(how["cert"] or "")
            tls = (f'  tls {{ cert_file: "{cert[0]}", key_file: "{cert[1]}",'
                   f' ca_file: "{cluster.pki.dir / "route-ca.pem"}", verify: true, timeout: 5 }}\n') if cert else ""
            client_port, monitor_port, route_port = ports[3 * i:3 * i + 3]
            conf = directory / f"{name}.conf"
            conf.write_text(f"server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{monitor_port}\n"
                            f"cluster {{\n  name: alur\n  listen: 127.0.0.1:{route_port}\n{tls}"
                            f'  routes: ["nats-route://{creds}127.0.0.1:{target}"]\n}}\n')
            servers.append(Server(name, conf, base_env(), client_port, monitor_port, route_port=route_port))
        return servers

    servers = launch(build, tmp_path, "the rogue servers to start")
    try:
        yield servers
    finally:
        stop_all(servers)


async def test_rogue_servers_with_the_route_url_are_refused_and_see_no_report(cluster: Cluster,
                                                                               rogues: list[Server]) -> None:
    everyone = cluster.nodes + rogues

    def nobody_routed_a_rogue() -> bool:
        # No node ever registers a rogue as a route. (A rogue itself may list its attempt for the instant
        # between node 1's INFO, sent before authentication, and node 1 closing the connection; node 1
        # never sends it an interest or a message over it.)
        for node in cluster.nodes:
            assert node.route_peers() <= set(NODES), f"{node.name} routes to {node.route_peers() - set(NODES)}"
        for rogue in rogues:
            for route in rogue.monitor("/routez")["routes"]:
                assert route.get("in_msgs", 0) == 0 and route.get("subscriptions", 0) == 0, f"{rogue.name}: {route}"
        return True

    # Each rogue has tried node 1 and been turned away at least once.
    await until_async(lambda: nobody_routed_a_rogue() and all(r.refusals() >= 1 for r in rogues), everyone,
                      "every rogue to try node 1's route")

    received: dict[str, list[Msg]] = {r.name: [] for r in rogues}
    clients: list[Client] = []
    rogue_clients: list[Client] = []
    try:
        clients.append(nc1 := await cluster.connect(0))
        clients.append(nc2 := await cluster.connect(1))
        for rogue in rogues:
            rc = await nats.connect(f"nats://127.0.0.1:{rogue.client_port}", connect_timeout=10,
                                    allow_reconnect=False, error_cb=_quiet)
            clients.append(rc)
            rogue_clients.append(rc)

            async def collect(msg: Msg, into: list[Msg] = received[rogue.name]) -> None:
                into.append(msg)

            await rc.subscribe(">", cb=collect)
            await rc.flush()
        legit: asyncio.Queue[Msg] = asyncio.Queue()
        await nc2.subscribe("alur.report.>", cb=legit.put)
        await nc2.flush()

        # Node 2's subscriber gets a report published on node 1 (once its interest reached node 1)...
        body = report_body()

        async def delivered_across_the_cluster() -> bool:
            await nc1.publish(SUBJECT, body)
            try:
                msg = await asyncio.wait_for(legit.get(), timeout=0.5)
            except TimeoutError:
                return False
            return NIK.encode() in msg.data

        await until_async(delivered_across_the_cluster, everyone, "node 2 to receive a report from node 1")
        await ensure_r3_stream(cluster, nc1)
        await publish_acked(cluster, nc1, body)
        # ...while every rogue keeps trying and keeps being refused (one more refused try after the publish).
        before = {r.name: r.refusals() for r in rogues}
        await until_async(lambda: nobody_routed_a_rogue() and all(r.refusals() > before[r.name] for r in rogues),
                          everyone, "every rogue to be refused again after the publish")
        for rc in rogue_clients:
            await rc.flush()
        assert received == {r.name: [] for r in rogues}, "a rogue server received messages from the cluster"
        for rogue in rogues:
            varz = rogue.monitor("/varz")
            assert (varz["in_msgs"], varz["out_msgs"]) == (0, 0), f"{rogue.name} passed messages: {varz}"
        log1 = cluster.nodes[0].log_text()
        assert "authentication error" in log1, "node 1 refused the route without the password"
        assert "TLS route handshake error" in log1, "node 1 refused the routes without a route certificate"
    finally:
        for client in clients:
            await client.close()


# ---------------------------------------------------------------- at rest


async def test_no_file_in_any_store_holds_the_victim_in_clear(cluster: Cluster) -> None:
    nc = await cluster.connect(0)
    try:
        await ensure_r3_stream(cluster, nc)
        ack = await publish_acked(cluster, nc, report_body(report_ref="BP3MI-KS-2026-0413"))
    finally:
        await nc.close()

    def stored_on(node: Server) -> bool:
        jsz = node.monitor("/jsz?accounts=true&streams=true")
        streams = [s for a in jsz.get("account_details", []) for s in a.get("stream_detail", [])]
        return any(s["name"] == STREAM and s["state"]["last_seq"] >= ack.seq for s in streams)

    await until_async(lambda: all(stored_on(n) for n in cluster.nodes), cluster.nodes,
                      "every node to hold the report")
    for node in cluster.nodes:
        assert node.store is not None
        assert_no_victim_data_in_clear(node.store)


def assert_no_victim_data_in_clear(store: Path) -> None:
    files = [p for p in store.rglob("*") if p.is_file()]
    blocks = [p for p in files if p.suffix == ".blk" and f"/streams/{STREAM}/" in p.as_posix()]
    assert sum(p.stat().st_size for p in blocks) > len(NIK), f"{store}: the stream's messages are on disk"
    for path in files:
        data = path.read_bytes()
        found = [s for s in CONFIDENTIAL if s.encode() in data]
        assert not found, f"{path} holds {found} in clear"


async def test_single_conf_serves_tls_only_and_encrypts_its_store(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "tls", NODES[:1])
    password, js_key = secrets.token_hex(16), secrets.token_hex(32)

    def build(run: Path) -> list[Server]:
        run.mkdir(parents=True)
        (run / SINGLE_CONF.name).symlink_to(SINGLE_CONF)
        (run / "alur-auth.conf").write_text(auth_include("alur-test", password))
        client_port, monitor_port = free_ports(2)
        env = {**base_env(), **server_env(pki.dir, NODES[0], client_port=client_port, monitor_port=monitor_port,
                                          store=run / "store", js_key=js_key)}
        return [Server(NODES[0], run / SINGLE_CONF.name, env, client_port, monitor_port, run / "store")]

    [server] = launch(build, tmp_path / "single", "single.conf to serve")
    try:
        varz = server.monitor("/varz")
        assert varz["tls_required"] is True and varz["host"] == "127.0.0.1" and varz["http_host"] == "127.0.0.1"
        nc = await nats.connect(server.url, tls=pki.client_context(), user="alur-test", password=password,
                                connect_timeout=10, allow_reconnect=False, error_cb=_quiet)
        try:
            js = nc.jetstream(timeout=10)
            await js.add_stream(name=STREAM, subjects=["alur.report.>"])
            ack = await js.publish(SUBJECT, report_body())
            assert ack.seq == 1
        finally:
            await nc.close()
        assert server.store is not None
        assert_no_victim_data_in_clear(server.store)
    finally:
        server.stop()


# ---------------------------------------------------------------- make-certs.sh


async def test_make_certs_script_makes_certificates_the_shipped_configs_run_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: deploy/nats/tls/make-certs.sh needs it")
    out = tmp_path / "tls"
    nodes_spec = "alur-1=127.0.0.1,10.20.0.11 alur-2=127.0.0.1 alur-3=127.0.0.1"
    result = subprocess.run(["sh", str(MAKE_CERTS), str(out), "nats", "192.0.2.7"], capture_output=True, text=True,
                            timeout=60, env={**base_env(), "ALUR_TLS_NODES": nodes_spec})
    assert result.returncode == 0, result.stdout + result.stderr

    def openssl(*args: str, ok: bool = True) -> str:
        done = subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=30)
        assert (done.returncode == 0) == ok, done.stdout + done.stderr
        return done.stdout

    def sans(name: str) -> str:
        return openssl("x509", "-in", str(out / f"{name}.pem"), "-noout", "-ext", "subjectAltName")

    for node in NODES:
        openssl("verify", "-CAfile", str(out / "ca.pem"), "-purpose", "sslserver", str(out / f"{node}.pem"))
        for purpose in ("sslserver", "sslclient"):
            openssl("verify", "-CAfile", str(out / "route-ca.pem"), "-purpose", purpose, str(out / f"{node}-route.pem"))
        for san in (f"DNS:{node}", "DNS:localhost", "DNS:nats", "IP Address:192.0.2.7", "IP Address:127.0.0.1"):
            assert san in sans(node), sans(node)
        assert "192.0.2.7" not in sans(f"{node}-route"), "route certificates name only their node"
        for key in (f"{node}-key.pem", f"{node}-route-key.pem"):
            assert (out / key).stat().st_mode & 0o077 == 0, f"{key} is readable by others"
    assert "IP Address:10.20.0.11" in sans("alur-1-route") and "10.20.0.11" not in sans("alur-2-route")
    openssl("verify", "-CAfile", str(out / "ca.pem"), "-purpose", "sslclient", str(out / "services.pem"))
    openssl("verify", "-CAfile", str(out / "ca.pem"), "-purpose", "sslserver", str(out / "http.pem"))
    # Two CAs: no client certificate (nor the proxy's) passes as a route certificate.
    openssl("verify", "-CAfile", str(out / "route-ca.pem"), str(out / "services.pem"), ok=False)
    assert (out / "ca-key.pem").stat().st_mode & 0o077 == 0 and (out / "route-ca-key.pem").stat().st_mode & 0o077 == 0

    # The shipped cluster configs run with these certificates: the three nodes route over mutual TLS...
    password = secrets.token_hex(16)
    route_password, js_key = secrets.token_hex(24), secrets.token_hex(32)
    nodes = launch(lambda d: cluster_nodes(d, out, "alur-test", password, route_password, js_key),
                   tmp_path / "cluster", "nodes with make-certs.sh certificates to start")
    try:
        await until_async(lambda: routed(nodes), nodes, "nodes with make-certs.sh certificates to route")
        # ...and a client set up as deploy/compose.yaml sets up the services (a tls:// URL, no TLS options,
        # SSL_CERT_FILE = certifi's roots + ca.pem) connects with the server's name checked.
        bundle = tmp_path / "alur-ca.pem"
        bundle.write_bytes(Path(certifi.where()).read_bytes() + (out / "ca.pem").read_bytes())
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        nc = await nats.connect(f"tls://localhost:{nodes[0].client_port}", user="alur-test", password=password,
                                connect_timeout=10, allow_reconnect=False, error_cb=_quiet)
        try:
            await nc.flush()
            assert nc.is_connected
        finally:
            await nc.close()
    finally:
        stop_all(nodes)


def test_shipped_files_name_exactly_the_variables_the_operator_sets() -> None:
    for conf, expected in [(SINGLE_CONF, SINGLE_VARS), *((c, CLUSTER_VARS) for c in CLUSTER_CONFS)]:
        text = conf.read_text()
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        assert set(re.findall(r"\$([A-Z][A-Z0-9_]*)", code)) == set(expected), conf
        comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
        for var in expected:
            assert var in comments, f"{conf.name} does not document {var}"
        assert "0.0.0.0" not in code and "key: $ALUR_JS_KEY" in code and "cipher: chachapoly" in code
        assert re.search(r"sync_interval:\s*always", code) and "include ./alur-auth.conf" in code
        assert "max_payload" in code
