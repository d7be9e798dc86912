"""What every Alur service is built from: `ServiceApp` holds the broker, the live registry, the consumers the
topology gives the service, its HTTP routes (Starlette), health and metrics, and builds the ASGI app.

A service module's `create_app(settings)` makes one `ServiceApp`, registers its handlers on it and returns
`app.asgi()`, the object `uvicorn`, `alur serve` and `faststream run services.X.app:create_app --factory` run.
Nothing is built at import.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from faststream.asgi import AsgiFastStream
from faststream.asgi.types import Receive, Scope, Send
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, PullSub
from nats.js import JetStreamContext
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    disable_created_metrics,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from contracts import subjects
from contracts.catalog import DEADLETTER, envelope_model
from contracts.subjects import DLQ_STREAM
from runtime.bus import make_broker
from runtime.deadletters import DeadLetterRelay
from runtime.heartbeat import Heartbeat
from runtime.locate import DEFAULT_URL, NoBroker, resolve
from runtime.logs import configure, get_logger
from runtime.metrics import ServiceMetrics, faststream_middleware
from runtime.nats_door import NatsDoor
from runtime.prefilter import Skip, skip_before_handling
from runtime.provision import ConsumerSpec, Topology, load_topology
from runtime.ratelimit import RateLimiter, retry_after
from runtime.registry_store import CredentialStore, RegistryStore
from runtime.security import service_inbox_prefix, token_digest
from runtime.settings import Settings

MAX_BODY = 256 * 1024
READY_TIMEOUT = 2.0
"""Seconds a readiness check waits for NATS: a broker that does not answer in time is a reason, not a hang."""
Handler = Callable[[Request], Awaitable[Response]]
Hook = Callable[[], Awaitable[None]]


class BodyTooLarge(HTTPException):
    """A request body over the limit: answered 413 before it is read whole."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"body larger than {limit} bytes")


async def read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The request body, read in chunks and refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


async def raw_body(message: StreamMessage[Any]) -> bytes:
    """A FastStream decoder that decodes nothing: the handler gets the message body as stored (a coroutine,
    since FastStream runs a plain function in a worker thread for every message)."""
    return message.body


def bearer(request: Request) -> str | None:
    """The token of an `Authorization: Bearer …` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Unauthorized(HTTPException):
    def __init__(self) -> None:
        super().__init__(401, "missing or unknown bearer token; ask the coordinator for your agency's token")


class TooManyRequests(HTTPException):
    """429: the caller went past its rate; `Retry-After` says when it may try again."""

    def __init__(self, wait: float) -> None:
        super().__init__(429, "too many requests; try again after Retry-After seconds",
                         headers={"Retry-After": retry_after(wait)})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    get_logger("alur.http").error("http handler failed", path=request.url.path, error_type=type(exc).__name__)
    return JSONResponse({"error": "internal error; the request was not processed"}, status_code=500)


class ServiceAsgi(AsgiFastStream):
    """FastStream's ASGI app (its lifespan starts and stops the broker) with Starlette serving HTTP."""

    http: Starlette
    closing: threading.Event
    """Set by the server as soon as it is told to stop, before it waits for requests in flight: a response
    that never ends by itself (the board's event stream) ends then."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)  # type: ignore[arg-type]
            return
        await super().__call__(scope, receive, send)


class ServiceApp:
    """One Alur service: settings, broker, registry, the consumers the topology gives it, routes and metrics."""

    def __init__(self, name: str, settings: Settings | None = None, topology: Topology | None = None) -> None:
        self.name = name
        self.settings = settings or Settings.from_env()
        self.topology = topology or load_topology()
        self.consumers: list[ConsumerSpec] = self.topology.consumers_of(name)
        self.log = configure(name, self.settings.log_level)
        try:
            url, seed = resolve(None, self.settings, name)
        except NoBroker:
            url, seed = DEFAULT_URL, self.settings.nkey
        disable_created_metrics()  # `*_created` series: nothing in deploy/monitoring reads them
        self.metrics = ServiceMetrics(name)
        """This service's domain metrics (`runtime.metrics`); FastStream's go into the same registry."""
        self.broker: NatsBroker = make_broker(
            service=name, servers=url, seed=seed, max_deliver={c.durable: c.max_deliver for c in self.consumers},
            scale=self.settings.sla_scale, inner=[faststream_middleware(name, self.metrics.registry)],
        )
        self.routes: list[BaseRoute] = []
        self._started: list[Hook] = []
        self._stopping: list[Hook] = []
        self._scraping: list[Hook] = []
        self._pulls: dict[str, Any] = {}
        """Durable name -> the FastStream subscriber pulling from it (readiness looks at its pull loop)."""
        self.on_scrape(self._count_dead_letters)
        self.heartbeat = Heartbeat(self)
        self.registry_store: RegistryStore | None = None
        self.credentials: CredentialStore | None = None
        self.closing = threading.Event()
        self.ready_checks: list[Callable[[], list[str]]] = []
        """A service's own conditions for readiness (the board: its read model has read the streams)."""
        door = self.topology.services[name].nats_door if name in self.topology.services else None
        self.nats_door = NatsDoor(name, door) if door else None
        """The agencies' input this service relays into REPORTS (`runtime.nats_door`), if the topology says so."""
        self.limiter = RateLimiter(self.settings.http_rate_burst, self.settings.http_rate_per_second)
        """Every HTTP door's rate per caller: keyed by the token's digest, or by the address of a caller
        whose token is missing or unknown."""

    # -------------------------------------------------------------- consumers

    def consumer(self, durable: str) -> ConsumerSpec:
        """One of this service's consumers, as the topology declares it."""
        return next(c for c in self.consumers if c.durable == durable)

    def subscriber(
        self, durable: str, batch_size: int = 10, max_workers: int = 1, skip: Skip | None = None
    ) -> Any:
        """Pull from a provisioned durable consumer, never declaring streams or consumers (traps 3, 4).

        FastStream wants one subject; the consumer's own filters, set by provisioning, decide what
        arrives. A batch is handled concurrently, and the next is fetched once all of it is done;
        `batch_size=1` keeps a consumer's order. With `max_workers > 1` up to that many messages are
        handled at once, each worker taking the next message as soon as it is free: one slow message
        holds one worker, not a batch.

        The body reaches the handler as the raw bytes (`raw_body`): FastStream's default decoder would
        `json.loads` it first, outside the handler, where 2,000 nested objects raise `RecursionError` on
        every delivery and end in the DLQ instead of a rejection. Handlers read bodies through
        `domain.jsonbody`, which bounds them before any decoder runs.

        `skip` (`runtime.prefilter`) names, from the raw message alone, those the handler would drop at
        once: they are acked where they are fetched, and only the rest take FastStream's path.
        """
        spec = self.consumer(durable)
        subscriber = self.broker.subscriber(
            spec.filter_subjects[0],
            stream=JStream(spec.stream, declare=False),
            durable=durable,
            pull_sub=PullSub(batch_size=batch_size, timeout=1.0),
            inbox_prefix=f"{service_inbox_prefix(self.name)}.".encode(),
            max_workers=max_workers,
            decoder=raw_body,
            title=durable,  # the AsyncAPI channel of this subscriber is named by its consumer
        )
        if skip is not None:
            skip_before_handling(subscriber, skip)
        self._pulls[durable] = subscriber
        return subscriber

    def states(self, subject: str, event_type: str, description: str) -> None:
        """Declare that this service publishes `event_type` on `subject` (a template such as
        `alur.case.rejected.{agency}`): a FastStream publisher that only documents, so FastStream's AsyncAPI
        generation knows the subject and its payload model. Publishing itself goes through
        `runtime.bus.publish` (message ids, timeouts)."""
        self.broker.publisher(subject, schema=envelope_model(event_type), description=description,
                              title=f"{self.name}:{event_type}:{subject}")

    @property
    def js(self) -> JetStreamContext:
        return self.broker.config.connection_state.stream

    # -------------------------------------------------------------- HTTP and lifecycle

    def route(self, path: str, methods: Sequence[str] = ("POST",)) -> Callable[[Handler], Handler]:
        """Serve `handler(request) -> response` at `path` (Starlette path syntax, e.g. `/v1/x/{id}`)."""

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(path, handler, methods=list(methods)))
            return handler

        return register

    async def caller(self, request: Request) -> str:
        """The enabled agency whose bearer token the request carries, within its rate: the dependency every
        HTTP door calls first. Raises `Unauthorized` (401) or `TooManyRequests` (429, `Retry-After`).

        A caller whose token is missing or unknown spends the budget of its address, and an address that
        has spent it is refused before any token it sends is looked at, so guessing tokens is slow (an
        agency behind the same address waits too, until the guessing stops). A known token has a budget of
        its own, keyed by its SHA-256, never by the token. `CredentialStore.agency_for_token` looks the
        token up by its digest and compares it with the agency's record in constant time.
        """
        assert self.credentials is not None and self.registry_store is not None
        address = f"addr:{request.client.host if request.client else 'unknown'}"
        if (wait := self.limiter.waiting(address)) is not None:
            raise TooManyRequests(wait)
        token = bearer(request)
        digest = token_digest(token) if token else None
        agency = await self.credentials.agency_for_token(token, self.registry_store.current) if token else None
        if agency is None or digest is None:
            if (wait := self.limiter.take(address)) is not None:
                raise TooManyRequests(wait)
            raise Unauthorized()
        if (wait := self.limiter.take(f"token:{digest}")) is not None:
            raise TooManyRequests(wait)
        return agency

    def on_started(self, hook: Hook) -> Hook:
        """Run `hook` once connected and the registry is loaded, before any subscriber consumes."""
        self._started.append(hook)
        return hook

    def on_stopping(self, hook: Hook) -> Hook:
        self._stopping.append(hook)
        return hook

    def on_scrape(self, hook: Hook) -> Hook:
        """Run `hook` before each `/metrics` answer, to set gauges of what stands now (its failure is logged
        and leaves the gauge at its last value)."""
        self._scraping.append(hook)
        return hook

    def asgi(self) -> ServiceAsgi:
        """The ASGI app of this service: broker lifespan, the service's routes, /healthz, /readyz, /metrics,
        and the relay of its consumers' max-deliveries advisories into dead letters."""
        DeadLetterRelay(self).register()
        self.states(subjects.dlq(subjects.STREAM_PARAM), DEADLETTER,
                    "A message that kept failing in one of this service's consumers: where it lies, and its error.")
        app = ServiceAsgi(
            self.broker,
            on_startup=[self._before_consuming],
            after_startup=[self._after_startup],
            on_shutdown=[self._on_shutdown],
            logger=logging.getLogger(f"faststream.{self.name}"),
        )
        app.closing = self.closing
        app.http = Starlette(
            routes=[
                Route("/healthz", self._healthz, methods=["GET"]),
                Route("/readyz", self._readyz, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                *self.routes,
            ],
            exception_handlers={HTTPException: _http_error, Exception: _server_error},
        )
        return app

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
        if self.nats_door is not None:
            await self.nats_door.start(self.broker.connection)

    async def _after_startup(self) -> None:
        self.log.info("consuming", consumers=[c.durable for c in self.consumers])
        await self.heartbeat.start()

    async def _on_shutdown(self) -> None:
        if self.nats_door is not None:
            await self.nats_door.stop()
        await self.heartbeat.stop()
        for hook in self._stopping:
            await hook()
        if self.registry_store:
            await self.registry_store.stop()

    # -------------------------------------------------------------- health

    async def readiness(self) -> list[str]:
        """What keeps this service from being ready; empty when it is connected to NATS, its streams and
        durable consumers exist, each of its pull loops is running (asking for messages), and its registry
        is loaded. A broker that does not answer within `READY_TIMEOUT` is a reason too."""
        connection = getattr(self.broker, "connection", None)
        if connection is None or not connection.is_connected:
            return ["not connected to NATS"]
        try:
            problems = await asyncio.wait_for(self._broker_problems(), READY_TIMEOUT)
        except TimeoutError:
            problems = [f"NATS did not answer within {READY_TIMEOUT:g}s"]
        for durable, subscriber in self._pulls.items():
            if not (subscriber.running and any(not task.done() for task in getattr(subscriber, "tasks", []))):
                problems.append(f"{durable}: not pulling messages")
        if self.registry_store is None or not self.registry_store.ready.is_set():
            problems.append("registry not loaded")
        for check in self.ready_checks:
            problems += check()
        if self.nats_door is not None:
            problems += self.nats_door.problems()
        return problems

    async def _broker_problems(self) -> list[str]:
        problems = []
        for stream in dict.fromkeys(spec.stream for spec in self.consumers):
            try:
                await self.js.stream_info(stream)
            except Exception as exc:
                problems.append(f"stream {stream}: {type(exc).__name__}")
        for spec in self.consumers:
            try:
                info = await self.js.consumer_info(spec.stream, spec.durable)
            except Exception as exc:
                problems.append(f"consumer {spec.stream}/{spec.durable}: {type(exc).__name__}")
                continue
            self.metrics.consumer(spec.stream, spec.durable, pending=info.num_pending or 0,
                                  ack_pending=info.num_ack_pending or 0)
        return problems

    async def _count_dead_letters(self) -> None:
        self.metrics.dlq_messages((await self.js.stream_info(DLQ_STREAM)).state.messages)

    async def _healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive", "service": self.name})

    async def _readyz(self, request: Request) -> Response:
        problems = await self.readiness()
        return JSONResponse({"ready": not problems, "service": self.name, "problems": problems},
                            status_code=503 if problems else 200)

    async def _metrics(self, request: Request) -> Response:
        """Prometheus text: the gauges of what stands now are set first (readiness, consumer backlogs, and
        each service's own), then everything is rendered."""
        ready = not await self.readiness()
        self.metrics.ready(ready)
        if ready:
            for hook in self._scraping:
                try:
                    await asyncio.wait_for(hook(), READY_TIMEOUT)
                except Exception as exc:
                    self.log.warning("metrics refresh failed", error_type=type(exc).__name__)
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)
