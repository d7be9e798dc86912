"""Apply `deploy/topology.yaml` to a JetStream server: streams, consumers, KV buckets, agency consumers.

Idempotent: running it twice changes nothing. Streams are created or updated from their whole declared
config (never a service's partial one, trap 4); consumers are created or updated with `add_consumer`,
which the server treats as create-or-update (trap 3).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

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
from pydantic import BaseModel, ConfigDict, Field

from alur.registry import Agency, AgencyRegistry
from contracts.vocab import AgencyType, Channel

TOPOLOGY_FILE = Path(__file__).resolve().parents[1] / "deploy" / "topology.yaml"


class StreamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str
    subjects: list[str]
    duplicate_window: float = 600
    deny_delete: bool = False
    max_age: float = 0
    max_msg_size: int = -1
    allow_msg_schedules: bool = False


class ConsumerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    stream: str
    durable: str
    filter_subjects: list[str]
    max_deliver: int = 10
    ack_wait: float = 30
    max_ack_pending: int = 1000


class BucketSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str
    history: int = 1


class Topology(BaseModel):
    """The declared streams, consumers and buckets, validated whole at load."""

    model_config = ConfigDict(extra="forbid")

    streams: dict[str, StreamSpec]
    consumers: list[ConsumerSpec]
    agency_consumer: ConsumerSpec
    coordinator_filters: list[str] = Field(default_factory=list)
    kv: dict[str, BucketSpec] = Field(default_factory=dict)

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


def load_topology(path: Path = TOPOLOGY_FILE) -> Topology:
    return Topology.model_validate(yaml.safe_load(path.read_text()))


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
        max_age=spec.max_age,
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


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> str:
    """Create the stream, or update it to `config`; returns what was done."""
    try:
        live = await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)
        return "created"
    if _differs(live.config, config):
        await js.update_stream(config)
        return "updated"
    return "unchanged"


async def ensure_consumer(js: JetStreamContext, spec: ConsumerSpec) -> str:
    wanted = consumer_config(spec)
    try:
        live = (await js.consumer_info(spec.stream, spec.durable)).config
    except NotFoundError:
        await js.add_consumer(spec.stream, wanted)
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
    await js.add_consumer(spec.stream, wanted)
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
    await js.create_key_value(
        KeyValueConfig(
            bucket=name,
            description=spec.description,
            history=spec.history,
            storage=StorageType.FILE,
            replicas=replicas,
        )
    )
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
