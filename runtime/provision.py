"""Apply `deploy/topology.yaml` to a JetStream server: streams, consumers, KV buckets, agency consumers.

Idempotent: running it twice changes nothing. Streams are created or updated from their whole declared
config (never a service's partial one, trap 4); consumers are created or updated with `add_consumer`,
which the server treats as create-or-update (trap 3).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import yaml
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from contracts import subjects
from contracts.records import Agency
from contracts.vocab import AgencyType, Channel
from domain.durations import Duration
from domain.registry import AgencyRegistry
from runtime.bus import when_available
from runtime.nats_door import Kind
from runtime.settings import Settings

T = TypeVar("T")

ADVISORIES = subjects.ADVISORIES_STREAM
MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


class StreamSpec(BaseModel):
    """One stream; `max_age` is its retention (0: kept until deleted on purpose; see docs/retention.md)."""

    model_config = ConfigDict(extra="forbid")

    description: str
    subjects: list[str]
    duplicate_window: float = 600
    deny_delete: bool = False
    max_age: Duration = timedelta(0)
    max_msg_size: int = -1
    allow_msg_schedules: bool = False


class ConsumerSpec(BaseModel):
    """A durable consumer; `service` owns it (agency consumers belong to no service)."""

    model_config = ConfigDict(extra="forbid")

    service: str | None = None
    stream: str
    durable: str
    filter_subjects: list[str]
    max_deliver: int = 10
    ack_wait: float = 30
    max_ack_pending: int = 1000


class ServiceSpec(BaseModel):
    """One service: the subjects it states, the buckets it writes, and the streams and buckets it reads
    besides its own consumers (its NATS user may do nothing else)."""

    model_config = ConfigDict(extra="forbid")

    publishes: list[str]
    writes: list[str] = Field(default_factory=list)
    reads: list[str] = Field(default_factory=list)
    deletes_from: list[str] = Field(default_factory=list)
    """Streams it may delete single messages from (intake: refused inputs, once their retention ends)."""
    nats_door: Kind | None = None
    """The agencies' input this service relays into REPORTS from the agencies' account (`runtime.nats_door`)."""
    answers: list[str] = Field(default_factory=list)
    """Services whose response door waits on its own inbox for this service's decision (notify answers the
    board's inbox, where an officer's answer waits)."""


class BucketSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str
    history: int = 1
    ttl: float | None = None
    """Seconds an entry lives unless written again (None: until deleted)."""


class RetentionSpec(BaseModel):
    """How long what is not a stream's own retention lives: a refused input, once its reporter was told."""

    model_config = ConfigDict(extra="forbid")

    refused_inputs: Duration = timedelta(days=7)


class Topology(BaseModel):
    """The declared streams, consumers and buckets, validated whole at load."""

    model_config = ConfigDict(extra="forbid")

    streams: dict[str, StreamSpec]
    services: dict[str, ServiceSpec]
    consumers: list[ConsumerSpec]
    agency_consumer: ConsumerSpec
    coordinator_filters: list[str] = Field(default_factory=list)
    kv: dict[str, BucketSpec] = Field(default_factory=dict)
    retention: RetentionSpec = Field(default_factory=RetentionSpec)

    @model_validator(mode="after")
    def _relay_advisories(self) -> Topology:
        """Each service gets one more consumer, on the ADVISORIES stream: the max-deliveries advisories of its
        own consumers, which it turns into dead letters (`runtime.deadletters`)."""
        if ADVISORIES not in self.streams:
            return self
        for service in self.services:
            watched = [c for c in self.consumers_of(service) if c.stream != ADVISORIES]
            durable = f"{service}-advisories"
            if watched and all(c.durable != durable for c in self.consumers):
                self.consumers.append(ConsumerSpec(
                    service=service, stream=ADVISORIES, durable=durable, max_deliver=10, ack_wait=30,
                    filter_subjects=[f"{MAX_DELIVERIES}.{c.stream}.{c.durable}" for c in watched],
                ))
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Topology:
        problems = [f"consumer {c.durable}: unknown service {c.service}" for c in self.consumers
                    if c.service and c.service not in self.services]
        problems += [f"service {name}: writes unknown bucket {b}" for name, spec in self.services.items()
                     for b in spec.writes if b not in self.kv]
        problems += [f"service {name}: reads unknown stream or bucket {r}" for name, spec in self.services.items()
                     for r in spec.reads if r not in self.kv and r not in self.streams]
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def consumers_of(self, service: str) -> list[ConsumerSpec]:
        """The durable consumers `service` pulls from (its instances share them)."""
        return [c for c in self.consumers if c.service == service]

    def consumer_for_agency(self, agency_id: str, coordinator: bool = False) -> ConsumerSpec:
        """The durable consumer of one agency; the coordinator's also hears every escalation."""
        spec = self.agency_consumer
        filters = [s.format(agency=agency_id) for s in spec.filter_subjects]
        return spec.model_copy(
            update={
                "durable": spec.durable.format(agency=agency_id),
                "filter_subjects": filters + (self.coordinator_filters if coordinator else []),
            }
        )


def load_topology(path: Path | None = None) -> Topology:
    """The topology (`ALUR_TOPOLOGY_FILE`, else deploy/topology.yaml), validated whole."""
    source = path or Settings.from_env().topology_file
    return Topology.model_validate(yaml.safe_load(Path(source).read_text()))


def stream_config(name: str, spec: StreamSpec, replicas: int = 1) -> StreamConfig:
    return StreamConfig(
        name=name,
        description=spec.description,
        subjects=spec.subjects,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=spec.duplicate_window,
        deny_delete=spec.deny_delete,
        max_age=spec.max_age.total_seconds(),
        max_msg_size=spec.max_msg_size,
        allow_msg_schedules=spec.allow_msg_schedules or None,
    )


def consumer_config(spec: ConsumerSpec) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=spec.durable,
        filter_subjects=spec.filter_subjects,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=spec.ack_wait,
        max_deliver=spec.max_deliver,
        max_ack_pending=spec.max_ack_pending,
    )


def _differs(live: Any, wanted: StreamConfig) -> bool:
    keys = ("subjects", "description", "duplicate_window", "deny_delete", "max_age", "max_msg_size")
    return any(getattr(live, k) != getattr(wanted, k) for k in keys)


NO_PEERS = 10005
"""JetStream's "insufficient resources / no suitable peers for placement": on a cluster whose nodes are still
meeting (or one is down), fewer servers than the replicas asked for are known yet."""
PLACEMENT_WAIT = 60.0


async def placed(call: Callable[[], Awaitable[T]]) -> T:
    """`call()` (a stream or bucket creation), tried again while the cluster lacks the peers to place it."""
    deadline = time.monotonic() + PLACEMENT_WAIT
    while True:
        try:
            return await when_available(call)
        except BadRequestError as exc:
            if exc.err_code != NO_PEERS or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> str:
    """Create the stream, or update it to `config`; returns what was done."""
    try:
        live = await when_available(lambda: js.stream_info(config.name))
    except NotFoundError:
        await placed(lambda: js.add_stream(config))
        return "created"
    if _differs(live.config, config):
        await when_available(lambda: js.update_stream(config))
        return "updated"
    return "unchanged"


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> str:
    wanted = consumer_config(spec)
    try:
        live = (await when_available(lambda: js.consumer_info(spec.stream, spec.durable))).config
    except NotFoundError:
        await when_available(lambda: js.add_consumer(spec.stream, wanted))
        return "created"
    same = (
        sorted(live.filter_subjects or ([live.filter_subject] if live.filter_subject else []))
        == sorted(spec.filter_subjects)
        and live.max_deliver == spec.max_deliver
        and live.ack_wait == spec.ack_wait
        and live.max_ack_pending == spec.max_ack_pending
    )
    if same:
        return "unchanged"
    await when_available(lambda: js.add_consumer(spec.stream, wanted))
    return "updated"


async def ensure_bucket(js: JetStreamContext, name: str, spec: BucketSpec, replicas: int = 1) -> str:
    try:
        await js.key_value(name)
        return "unchanged"
    except (NotFoundError, BadRequestError):
        pass
    except Exception as exc:  # nats-py raises BucketNotFoundError, a NotFoundError subclass, or its own
        if "not found" not in str(exc).lower():
            raise
    await placed(lambda: js.create_key_value(
        KeyValueConfig(
            bucket=name,
            description=spec.description,
            history=spec.history,
            ttl=spec.ttl,
            storage=StorageType.FILE,
            replicas=replicas,
        )
    ))
    return "created"


async def ensure_agency_consumers(
    js: JetStreamContext, topology: Topology, agencies: Iterable[Agency]
) -> dict[str, str]:
    """One durable consumer per agency reached over NATS; consumers of other agencies are left alone."""
    done: dict[str, str] = {}
    for agency in agencies:
        if agency.channel is Channel.NATS:
            spec = topology.consumer_for_agency(agency.id, agency.type is AgencyType.GT_SECRETARIAT)
            done[spec.durable] = await ensure_consumer(js, spec)
    return done


async def provision(
    js: JetStreamContext, topology: Topology | None = None, registry: AgencyRegistry | None = None, replicas: int = 1
) -> dict[str, str]:
    """Apply the whole topology; returns what happened to each object ("created"/"updated"/"unchanged")."""
    topology = topology or load_topology()
    report: dict[str, str] = {}
    for name, spec in topology.streams.items():
        report[f"stream {name}"] = await ensure_stream(js, stream_config(name, spec, replicas))
    for bucket, bspec in topology.kv.items():
        report[f"kv {bucket}"] = await ensure_bucket(js, bucket, bspec, replicas)
    for cspec in topology.consumers:
        report[f"consumer {cspec.stream}/{cspec.durable}"] = await ensure_consumer(js, cspec)
    if registry is not None:
        for durable, what in (await ensure_agency_consumers(js, topology, registry.agencies.values())).items():
            report[f"consumer REFERRALS/{durable}"] = what
    return report
