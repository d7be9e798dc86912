"""The embedded server is secure by default: each agency's NKey user reaches only its own subjects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from alur.embedded import EmbeddedServer, free_port
from alur.profile import load_registry_file
from alur.provision import provision
from alur.security import SecretStore, authorization


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[tuple[str, SecretStore]]:
    store = SecretStore(tmp_path / "data")
    registry = load_registry_file()
    server = EmbeddedServer(data_dir=tmp_path / "data", port=free_port(), sync_always=False)
    server.start(authorization(store, registry))
    admin = await nats.connect(server.url, nkeys_seed_str=store.service_seed("admin"))
    await provision(admin.jetstream(), registry=registry)
    await admin.close()
    yield server.url, store
    server.stop()


async def _agency(url: str, store: SecretStore, agency: str) -> Client:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    nc = await nats.connect(url, nkeys_seed_str=store.agency(agency).nkey_seed, inbox_prefix=f"_INBOX.{agency}",
                            error_cb=on_error)
    nc.errors = errors  # type: ignore[attr-defined]
    return nc


async def test_anonymous_and_unknown_users_are_refused(secure: tuple[str, SecretStore]) -> None:
    url, _ = secure
    with pytest.raises(Exception):
        await nats.connect(url, allow_reconnect=False, connect_timeout=2, max_reconnect_attempts=0)


async def test_agency_publishes_only_its_own_reports(secure: tuple[str, SecretStore]) -> None:
    url, store = secure
    nc = await _agency(url, store, "bp3mi-kalsel")
    js = nc.jetstream()
    ack = await js.publish("alur.report.bp3mi-kalsel", b"{}", timeout=3)
    assert ack.stream == "REPORTS"
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.publish("alur.report.polda-kalsel", b"{}", timeout=1)
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.publish("alur.referral.accepted.bp3mi-kalsel", b"{}", timeout=1)
    await nc.close()


async def test_agency_reads_only_its_own_consumer(secure: tuple[str, SecretStore]) -> None:
    url, store = secure
    nc = await _agency(url, store, "polda-kalsel")
    js = nc.jetstream()
    own = await js.pull_subscribe_bind(durable="agency-polda-kalsel", stream="REFERRALS",
                                       inbox_prefix=b"_INBOX.polda-kalsel.pull.")
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await own.fetch(1, timeout=0.5)
    assert not any("permissions violation" in str(e).lower() for e in nc.errors)  # type: ignore[attr-defined]
    other = await js.pull_subscribe_bind(durable="agency-bp3mi-kalsel", stream="REFERRALS",
                                         inbox_prefix=b"_INBOX.polda-kalsel.pull2.")
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await other.fetch(1, timeout=0.5)
    await asyncio.sleep(0.2)
    assert any("permissions violation" in str(e).lower() for e in nc.errors)  # type: ignore[attr-defined]
    await nc.close()


async def test_agency_cannot_listen_to_facts_or_other_inboxes(secure: tuple[str, SecretStore]) -> None:
    url, store = secure
    nc = await _agency(url, store, "polda-kalsel")
    await nc.subscribe("alur.>")
    await nc.subscribe("_INBOX.>")
    await nc.flush()
    await asyncio.sleep(0.2)
    violations = [e for e in nc.errors if "permissions violation" in str(e).lower()]  # type: ignore[attr-defined]
    assert len(violations) == 2
    await nc.close()


@pytest.mark.parametrize(("service", "allowed", "forbidden"), [
    ("intake", "alur.case.registered.6371", "alur.referral.requested.polda-kalsel"),
    ("routing", "alur.referral.requested.polda-kalsel", "alur.case.registered.6371"),
    ("notify", "alur.referral.accepted.polda-kalsel", "alur.case.updated.6371"),
])
async def test_each_service_states_only_its_own_facts(
    secure: tuple[str, SecretStore], service: str, allowed: str, forbidden: str
) -> None:
    url, store = secure
    nc = await nats.connect(url, nkeys_seed_str=store.service_seed(service), inbox_prefix="_INBOX_alur")
    js = nc.jetstream()
    assert (await js.publish(allowed, b"{}", timeout=3)).seq > 0
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.publish(forbidden, b"{}", timeout=1)
    await nc.close()
