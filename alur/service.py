"""What every Alur service shares: the broker, the live registry, HTTP routes, health and metrics.

A service module builds one `Service`, declares its subscribers on `service.broker` and its HTTP
routes with `service.route(...)`, and exposes `app = service.app` for `faststream run`/`alur serve`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from faststream.asgi import AsgiFastStream
from faststream.asgi.types import Receive, Scope, Send
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js import JetStreamContext
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

from alur.bus import make_broker
from alur.logs import configure, get_logger
from alur.provision import ConsumerSpec, Topology, load_topology
from alur.registry_store import CredentialStore, RegistryStore
from alur.security import SERVICE_INBOX_PREFIX
from alur.runtime import DEFAULT_URL, NoBroker, resolve
from alur.settings import Settings

MAX_BODY = 256 * 1024


@dataclass(slots=True)
class Request:
    """An HTTP request as our handlers see it: method, path parameters, headers, raw body."""

    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        return token.strip() or None if scheme.lower() == "bearer" else None


@dataclass(slots=True)
class Response:
    status: int
    body: Any = None
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body if self.body is not None else {}).encode()


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(slots=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


def _compile(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")


class AlurAsgi(AsgiFastStream):
    """AsgiFastStream with path-parameter routes (FastStream's own routes match exact paths only)."""

    routes_with_params: list[Route]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.routes_with_params:
                match = route.pattern.match(scope["path"])
                if match:
                    await self._dispatch(route, match.groupdict(), scope, receive, send)
                    return
        await super().__call__(scope, receive, send)

    async def _dispatch(
        self, route: Route, params: dict[str, str], scope: Scope, receive: Receive, send: Send
    ) -> None:
        if scope["method"] != route.method:
            response = Response(405, {"error": f"use {route.method}"})
        else:
            body = b""
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > MAX_BODY:
                    response = Response(413, {"error": f"body larger than {MAX_BODY} bytes"})
                    break
            else:
                headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
                request = Request(scope["method"], scope["path"], params, headers, body)
                try:
                    response = await route.handler(request)
                except Exception as exc:
                    get_logger("alur.http").error("http handler failed", path=route.pattern.pattern, error_type=type(exc).__name__)
                    response = Response(500, {"error": "internal error; the request was not processed"})
        payload = response.encode()
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [(b"content-type", response.content_type.encode()), (b"content-length", str(len(payload)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@dataclass
class Service:
    """One Alur service: settings, broker, registry, the consumers it owns, routes and metrics."""

    name: str
    consumers: Sequence[str]
    settings: Settings = field(default_factory=Settings.from_env)
    topology: Topology = field(default_factory=load_topology)

    def __post_init__(self) -> None:
        self.log = configure(self.name, self.settings.log_level)
        try:
            url, seed = resolve(None, self.settings, self.name)
        except NoBroker:
            url, seed = DEFAULT_URL, self.settings.nkey_seed
        max_deliver = {c.durable: c.max_deliver for c in self.topology.consumers}
        self.broker: NatsBroker = make_broker(
            service=self.name, servers=url, seed=seed, max_deliver=max_deliver, scale=self.settings.sla_scale
        )
        self.metrics = CollectorRegistry()
        self.decisions = Counter(
            "alur_decisions", "Decisions taken by this service, by kind", ["service", "kind"], registry=self.metrics
        )
        self.routes: list[Route] = []
        self._started: list[Callable[[], Awaitable[None]]] = []
        self._stopping: list[Callable[[], Awaitable[None]]] = []
        self.registry_store: RegistryStore | None = None
        self.credentials: CredentialStore | None = None
        self.app = AlurAsgi(
            self.broker,
            asgi_routes=[("/healthz", self._healthz), ("/readyz", self._readyz), ("/metrics", self._metrics)],
            on_startup=[self._before_consuming],
            after_startup=[self._after_startup],
            logger=logging.getLogger(f"faststream.{self.name}"),
            on_shutdown=[self._on_shutdown],
        )
        self.app.routes_with_params = self.routes

    # -------------------------------------------------------------- consumers

    def consumer(self, durable: str) -> ConsumerSpec:
        return next(c for c in self.topology.consumers if c.durable == durable)

    def subscriber(self, durable: str, batch_size: int = 10) -> Any:
        """Pull from a provisioned durable consumer, never declaring streams or consumers (traps 3, 4).

        FastStream wants one subject; the consumer's own filters, set by provisioning, decide what
        arrives. A batch is handled concurrently; `batch_size=1` keeps a consumer's order.
        """
        spec = self.consumer(durable)
        return self.broker.subscriber(
            spec.filter_subjects[0],
            stream=JStream(spec.stream, declare=False),
            durable=durable,
            pull_sub=PullSub(batch_size=batch_size, timeout=1.0),
            inbox_prefix=f"{SERVICE_INBOX_PREFIX}.".encode(),
        )

    @property
    def js(self) -> JetStreamContext:
        return self.broker.config.connection_state.stream

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method, _compile(path), handler))
            return handler

        return register

    def on_started(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._started.append(hook)
        return hook

    def on_stopping(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        self._stopping.append(hook)
        return hook

    def count(self, kind: str, amount: float = 1) -> None:
        self.decisions.labels(self.name, kind).inc(amount)

    async def _before_consuming(self, **_: Any) -> None:
        """Connect, load the registry and run the start hooks *before* any subscriber starts: a handler
        must never see an empty registry (a backlog would be rejected or left unroutable) or a hook's
        resource not yet made."""
        await self.broker.connect()
        self.registry_store = RegistryStore(self.js)
        self.credentials = CredentialStore(self.js)
        await self.registry_store.start_watch()
        for hook in self._started:
            await hook()

    async def _after_startup(self) -> None:
        self.log.info("consuming", consumers=list(self.consumers))

    async def _on_shutdown(self) -> None:
        for hook in self._stopping:
            await hook()
        if self.registry_store:
            await self.registry_store.stop()

    # -------------------------------------------------------------- health

    async def readiness(self) -> list[str]:
        """What keeps this service from being ready; empty when connected, streams present, consumers healthy."""
        problems = []
        connection = self.broker.connection if hasattr(self.broker, "connection") else None
        if connection is None or not connection.is_connected:
            return ["not connected to NATS"]
        for durable in self.consumers:
            spec = self.consumer(durable)
            try:
                await self.js.stream_info(spec.stream)
                await self.js.consumer_info(spec.stream, durable)
            except Exception as exc:
                problems.append(f"{spec.stream}/{durable}: {type(exc).__name__}")
        if self.registry_store is None or not self.registry_store.ready.is_set():
            problems.append("registry not loaded")
        return problems

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, {"status": "alive", "service": self.name})

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> None:
        problems = await self.readiness()
        await _send_json(send, 503 if problems else 200, {"ready": not problems, "problems": problems})

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        payload = generate_latest(self.metrics)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", CONTENT_TYPE_LATEST.encode())]})
        await send({"type": "http.response.body", "body": payload})


async def _send_json(send: Send, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})
