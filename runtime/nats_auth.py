"""Who may do what on the bus: the nats-server `accounts` block, derived from the topology and the registry.

Two accounts keep agencies apart from Alur's streams:
- `ALUR` holds every stream, bucket and consumer, the services' users and the admin. Each service's user
  may publish only its own facts, write only its own buckets and call only the JetStream API subjects it
  needs (`deploy/topology.yaml`): it can never create, update, delete or purge a stream, nor use a consumer
  that is not its own.
- `AGENCIES` holds one user per agency. It imports from `ALUR`, as services, the agencies' report and
  response subjects (mapped to the NATS door's, `runtime.nats_door`: intake and notify store them in
  REPORTS under ids scoped by the agency) and the MSG.NEXT and ACK subjects of their consumers (not
  CONSUMER.INFO: through a service import the JetStream API answers it with 503 "JetStream not enabled
  for account"); each agency's user may use
  only its own (`alur.report.<id>`, `alur.response.<id>`, consumer `agency-<id>`) and read replies only
  under its own inbox prefix. nats-server does not check a request's reply subject against publish
  permissions; in an account of their own, the agencies' reply subjects live in their own namespace, so a
  reply (a PubAck, a pulled referral) can never land in one of Alur's streams.

One account for all agencies rather than one each: nats-server cannot add an account's imports on a
config reload (an account added or re-enabled live would get imports that never answer), and agencies
join and leave while Alur runs. The set of accounts stays fixed; only users change on a reload.
"""

from __future__ import annotations

from typing import Any

from contracts.subjects import DLQ_STREAM, REFERRALS_STREAM
from domain.registry import AgencyRegistry
from runtime.nats_door import AGENCIES_ACCOUNT, door_subject
from runtime.provision import ConsumerSpec, ServiceSpec, Topology, load_topology
from runtime.security import (
    SecretStore,
    agency_inbox_prefix,
    public_key,
    response_inbox,
    service_inbox_prefix,
)

ALUR_ACCOUNT = "ALUR"
ADMIN = "admin"
"""The CLI's and `alur up`'s own user in the ALUR account: unrestricted."""
API = "$JS.API"
NOBODY = "UD7ODMA4PATBGFEH7TEKABWKU5T2VVCO64R2PIOWNIPRHLW2ALWPTDJK"
"""A user key whose seed was thrown away: nats-server wants a user in an account with no agency yet."""


def agency_subjects(agency_id: str, stream: str = REFERRALS_STREAM) -> list[str]:
    """What an agency may use: publish its reports and responses, and read its own consumer."""
    durable = f"agency-{agency_id}"
    return [
        f"alur.report.{agency_id}",
        f"alur.response.{agency_id}",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.{durable}",
        f"$JS.ACK.{stream}.{durable}.>",
    ]


def agency_permissions(agency_id: str) -> dict[str, Any]:
    """An agency's user, inside its own account: the four imported subjects, replies under its own prefix."""
    return {
        "publish": {"allow": agency_subjects(agency_id)},
        "subscribe": {"allow": [f"{agency_inbox_prefix(agency_id)}.>"]},
    }


def _consumer_api(consumer: ConsumerSpec) -> list[str]:
    return [
        f"{API}.STREAM.INFO.{consumer.stream}",
        f"{API}.STREAM.MSG.GET.{consumer.stream}",
        f"{API}.CONSUMER.INFO.{consumer.stream}.{consumer.durable}",
        f"{API}.CONSUMER.MSG.NEXT.{consumer.stream}.{consumer.durable}",
        f"$JS.ACK.{consumer.stream}.{consumer.durable}.>",
    ]


def _stream_read_api(stream: str) -> list[str]:
    """Reading a stream whole: its info and an ordered (ephemeral) consumer and that consumer's info; nats-py
    never deletes ordered consumers (the server drops them when idle), so no delete is needed."""
    return [
        f"{API}.STREAM.INFO.{stream}", f"{API}.CONSUMER.CREATE.{stream}", f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.STREAM.MSG.GET.{stream}",
    ]


def _bucket_api(bucket: str) -> list[str]:
    stream = f"KV_{bucket}"
    return [*_stream_read_api(stream), f"{API}.DIRECT.GET.{stream}", f"{API}.DIRECT.GET.{stream}.>"]


def service_api(spec: ServiceSpec, consumers: list[ConsumerSpec], topology: Topology) -> list[str]:
    """The JetStream API subjects one service calls, and nothing else (every service reports the DLQ's
    size on `/metrics`)."""
    subjects = [f"{API}.INFO", "$JS.FC.>", f"{API}.STREAM.INFO.{DLQ_STREAM}"]
    for consumer in consumers:
        subjects += _consumer_api(consumer)
    for name in dict.fromkeys([*spec.writes, *spec.reads]):
        subjects += _bucket_api(name) if name in topology.kv else _stream_read_api(name)
    subjects += [f"{API}.STREAM.MSG.DELETE.{stream}" for stream in spec.deletes_from]
    return list(dict.fromkeys(subjects))


def service_permissions(name: str, topology: Topology) -> dict[str, Any]:
    """A service's user: its facts, its buckets, its JetStream API, its dead letters, its own inbox.

    Intake alone states cases, routing alone requests referrals, notify alone states the rest of a
    referral's life. A service may also answer on its own inbox (notify's HTTP door waits there) and on the
    response inbox of the services it `answers` (the board's inbox door).
    """
    spec = topology.services[name]
    inbox = f"{service_inbox_prefix(name)}.>"
    publish = [
        *service_api(spec, topology.consumers_of(name), topology), "alur.dlq.>", *spec.publishes,
        *(f"$KV.{b}.>" for b in spec.writes), inbox,
        *(f"{response_inbox(door)}.>" for door in spec.answers),
    ]
    if spec.nats_door is None:
        return {"publish": {"allow": publish}, "subscribe": {"allow": [inbox]}}
    return {"publish": {"allow": publish}, "subscribe": {"allow": [inbox, door_subject(spec.nats_door)]},
            "allow_responses": True}  # one answer to each input it received, on the input's own reply


def _agency_imports(stream: str) -> dict[str, str]:
    """What the AGENCIES account imports from ALUR (the subject ALUR exports -> the agencies' name for it):
    the agencies' subjects as token wildcards (NATS has no `agency-*` prefix match); each agency's user
    permissions then narrow them to its own exact subjects. Reports and responses arrive at the NATS door,
    never straight in REPORTS."""
    return {
        door_subject("report"): "alur.report.*",
        door_subject("response"): "alur.response.*",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*": f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.*.>": f"$JS.ACK.{stream}.*.>",
    }


def accounts(store: SecretStore, registry: AgencyRegistry, topology: Topology | None = None) -> dict[str, Any]:
    """The `accounts` block of nats-server: ALUR (services, admin, JetStream) and AGENCIES (one user per
    enabled agency)."""
    topology = topology or load_topology()
    users: list[dict[str, Any]] = [{"nkey": public_key(store.service_seed(ADMIN))}]
    users += [
        {"nkey": public_key(store.service_seed(name)), "permissions": service_permissions(name, topology)}
        for name in topology.services
    ]
    imported = _agency_imports(topology.agency_consumer.stream)
    exports: list[dict[str, Any]] = [
        {"service": subject, "accounts": [AGENCIES_ACCOUNT], **({"response_type": "stream"} if ".MSG.NEXT." in subject
                                                                 else {})}
        for subject in imported
    ]
    agency_users = [
        {"nkey": public_key(store.agency(agency.id).nkey_seed), "permissions": agency_permissions(agency.id)}
        for agency in sorted(registry.agencies.values(), key=lambda a: a.id) if agency.enabled
    ]
    return {
        ALUR_ACCOUNT: {"jetstream": "enabled", "users": users, "exports": exports},
        AGENCIES_ACCOUNT: {
            "users": agency_users or [{"nkey": NOBODY}],
            "imports": [{"service": {"account": ALUR_ACCOUNT, "subject": s}, **({"to": to} if to != s else {})}
                        for s, to in imported.items()],
        },
    }
