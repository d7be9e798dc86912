"""The embedded server is secure by default: each agency's NKey user reaches only its own subjects."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from alur.embedded import EmbeddedServer, free_port
from runtime.nats_auth import accounts
from runtime.nats_door import NatsDoor
from runtime.profile import load_registry_file
from runtime.provision import provision
from runtime.security import SecretStore, service_inbox_prefix
from tests.support import wait_for


@pytest.fixture
async def secure(tmp_path: Path) -> AsyncIterator[tuple[str, SecretStore]]:
    """A server with Alur's accounts and streams, and the NATS doors of intake and notify, each on its
    service's own user: an agency's report or answer is stored through them, as under `alur up`."""
    store = SecretStore(tmp_path / "data")
    registry = load_registry_file()
    server = EmbeddedServer(data_dir=tmp_path / "data", port=free_port(), sync_always=False)
    server.start(accounts(store, registry))
    admin = await nats.connect(server.url, nkeys_seed_str=store.service_seed("admin"))
    await provision(admin.jetstream(), registry=registry)
    await admin.close()
    doors = []
    for service, kind in (("intake", "report"), ("notify", "response")):
        conn = await nats.connect(server.url, nkeys_seed_str=store.service_seed(service),
                                  inbox_prefix=service_inbox_prefix(service))
        await NatsDoor(service, kind).start(conn)
        doors.append(conn)
    yield server.url, store
    for conn in doors:
        await conn.close()
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
    await wait_for(lambda: any("permissions violation" in str(e).lower() for e in nc.errors))  # type: ignore[attr-defined]
    await nc.close()


async def test_agency_cannot_listen_to_facts_or_other_inboxes(secure: tuple[str, SecretStore]) -> None:
    url, store = secure
    nc = await _agency(url, store, "polda-kalsel")
    await nc.subscribe("alur.>")
    await nc.subscribe("_INBOX.>")
    await nc.flush()

    def violations() -> list[Exception]:
        return [e for e in nc.errors if "permissions violation" in str(e).lower()]  # type: ignore[attr-defined]

    await wait_for(lambda: len(violations()) >= 2)
    assert len(violations()) == 2
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
    nc = await nats.connect(url, nkeys_seed_str=store.service_seed(service), inbox_prefix=f"_INBOX_{service}")
    js = nc.jetstream()
    assert (await js.publish(allowed, b"{}", timeout=3)).seq > 0
    with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
        await js.publish(forbidden, b"{}", timeout=1)
    await nc.close()


# ---------------------------------------------------------------- replies cannot reach Alur's streams (issue 17)


async def _barrier(url: str, store: SecretStore, agency: str) -> None:
    """A legitimate report after the attack: once it is stored, whatever the attack caused would be too."""
    nc = await _agency(url, store, agency)
    await nc.jetstream().publish(f"alur.report.{agency}", b'{"barrier": true}', timeout=5)
    await nc.close()


async def _stream_messages(url: str, store: SecretStore, stream: str) -> int:
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    count = (await admin.jetstream().stream_info(stream)).state.messages
    await admin.close()
    return count


async def test_a_reply_subject_cannot_write_a_fact_into_cases(secure: tuple[str, SecretStore]) -> None:
    url, store = secure
    nc = await _agency(url, store, "polresta-banjarmasin")
    await nc.publish("alur.report.polresta-banjarmasin", b"{}", reply="alur.case.registered.6371")
    await nc.flush()
    await _barrier(url, store, "polresta-banjarmasin")
    assert await _stream_messages(url, store, "CASES") == 0, "the PubAck went to the agency's own namespace"
    await nc.close()


async def test_a_pull_reply_cannot_file_a_report_for_another_agency(
    secure: tuple[str, SecretStore],
) -> None:
    url, store = secure
    nc = await _agency(url, store, "polresta-banjarmasin")
    await nc.publish("$JS.API.CONSUMER.MSG.NEXT.REFERRALS.agency-polresta-banjarmasin", b'{"batch": 1, "no_wait": true}',
                     reply="alur.report.dinkes-banjarmasin")
    await nc.flush()
    await _barrier(url, store, "polresta-banjarmasin")
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    info = await admin.jetstream().stream_info("REPORTS", subjects_filter="alur.report.>")
    assert set(info.state.subjects or {}) == {"alur.report.polresta-banjarmasin"}, "nothing filed under dinkes"
    await admin.close()
    await nc.close()


async def test_a_pulled_referral_cannot_be_replied_into_reports(secure: tuple[str, SecretStore]) -> None:
    url, store = secure
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    secret = "6371015507100003"
    await admin.jetstream().publish("alur.referral.requested.polresta-banjarmasin",
                                    json.dumps({"data": {"case": {"nik": secret}}}).encode(), timeout=5)
    nc = await _agency(url, store, "polresta-banjarmasin")
    await nc.publish("$JS.API.CONSUMER.MSG.NEXT.REFERRALS.agency-polresta-banjarmasin", b'{"batch": 1}',
                     reply="alur.response.polresta-banjarmasin")
    await nc.flush()
    await _barrier(url, store, "polresta-banjarmasin")
    reports = await admin.jetstream().stream_info("REPORTS", subjects_filter="alur.>")
    assert "alur.response.polresta-banjarmasin" not in (reports.state.subjects or {}), "no referral copied in"
    await admin.close()
    await nc.close()


@pytest.mark.parametrize("service", ["intake", "routing", "notify"])
async def test_no_service_can_delete_or_purge_a_stream(secure: tuple[str, SecretStore], service: str) -> None:
    url, store = secure
    nc = await nats.connect(url, nkeys_seed_str=store.service_seed(service), inbox_prefix=f"_INBOX_{service}")
    js = nc.jetstream(timeout=1)
    for attempt in (js.delete_stream("REPORTS"), js.purge_stream("CASES"), js.delete_consumer("CASES", "routing")):
        with pytest.raises((nats.errors.TimeoutError, TimeoutError)):
            await attempt
    await nc.close()
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    assert (await admin.jetstream().stream_info("REPORTS")).config.name == "REPORTS"
    assert (await admin.jetstream().consumer_info("CASES", "routing")).name == "routing"
    await admin.close()


# ---------------------------------------------------------------- message ids are the reporter's own (issue 17.8)


async def test_another_agency_cannot_make_a_report_over_nats_a_duplicate(secure: tuple[str, SecretStore]) -> None:
    """The squatter publishes the victim's next event id first, bare and in the stored (scoped) form; the
    victim's report is stored under its own subject, and only its own resend is the duplicate."""
    url, store = secure
    event_id = "evt-17-8-nats"
    squatter = await _agency(url, store, "polres-kotabaru")
    for msg_id in (event_id, f"dinsos-kalsel:{event_id}"):
        taken = await squatter.jetstream().publish("alur.report.polres-kotabaru", b"{}", timeout=5,
                                                   headers={"Nats-Msg-Id": msg_id})
        assert not taken.duplicate
    await squatter.close()
    victim = await _agency(url, store, "dinsos-kalsel")
    js = victim.jetstream()
    body = json.dumps({"id": event_id, "report": "the victim's"}).encode()
    first = await js.publish("alur.report.dinsos-kalsel", body, headers={"Nats-Msg-Id": event_id}, timeout=5)
    assert first.stream == "REPORTS" and not first.duplicate
    again = await js.publish("alur.report.dinsos-kalsel", body, headers={"Nats-Msg-Id": event_id}, timeout=5)
    assert again.duplicate and again.seq == first.seq, "its own resend is the duplicate"
    await victim.close()
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    kept = await admin.jetstream().get_msg("REPORTS", first.seq)
    assert kept.subject == "alur.report.dinsos-kalsel" and kept.data == body
    assert kept.headers == {"Nats-Msg-Id": f"dinsos-kalsel:{event_id}"}
    await admin.close()


async def test_an_answer_over_nats_is_scoped_by_its_sender_too(secure: tuple[str, SecretStore]) -> None:
    url, store = secure
    squatter = await _agency(url, store, "polres-kotabaru")
    await squatter.jetstream().publish("alur.response.polres-kotabaru", b"{}", headers={"Nats-Msg-Id": "ans-1"},
                                       timeout=5)
    await squatter.close()
    agency = await _agency(url, store, "polda-kalsel")
    ack = await agency.jetstream().publish("alur.response.polda-kalsel", b'{"answer": 1}', timeout=5,
                                           headers={"Nats-Msg-Id": "ans-1"})
    assert not ack.duplicate
    await agency.close()
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    kept = await admin.jetstream().get_msg("REPORTS", ack.seq)
    assert kept.subject == "alur.response.polda-kalsel" and kept.headers == {"Nats-Msg-Id": "polda-kalsel:ans-1"}
    await admin.close()


async def test_the_door_keeps_no_control_header_a_publisher_set(secure: tuple[str, SecretStore]) -> None:
    """`Nats-Expected-Last-Msg-Id` would answer with the id last stored by anyone; `Alur-Reply-To` is for
    Alur's own doors. Neither reaches REPORTS; the publisher's own headers do."""
    url, store = secure
    nc = await _agency(url, store, "bp3mi-kalsel")
    headers = {"Nats-Msg-Id": "hdr-1", "Nats-Expected-Last-Msg-Id": "guess", "Nats-Rollup": "sub",
               "Alur-Reply-To": "_INBOX_board.responses.x", "Traceparent": "00-abc-def-01"}
    ack = await nc.jetstream().publish("alur.report.bp3mi-kalsel", b"{}", headers=headers, timeout=5)
    await nc.close()
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    kept = await admin.jetstream().get_msg("REPORTS", ack.seq)
    assert kept.headers == {"Nats-Msg-Id": "bp3mi-kalsel:hdr-1", "Traceparent": "00-abc-def-01"}
    await admin.close()


async def test_a_publish_the_stream_cannot_take_is_answered_with_an_error(secure: tuple[str, SecretStore]) -> None:
    """With REPORTS gone the agency hears a 503 from the door at once, not silence: it sends again later."""
    url, store = secure
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    await admin.jetstream().delete_stream("REPORTS")
    await admin.close()
    nc = await _agency(url, store, "bp3mi-kalsel")
    with pytest.raises(nats.js.errors.ServiceUnavailableError, match="send it again"):
        await nc.jetstream().publish("alur.report.bp3mi-kalsel", b"{}", headers={"Nats-Msg-Id": "x"}, timeout=10)
    await nc.close()


async def test_with_two_doors_each_publisher_hears_only_its_own_answers(secure: tuple[str, SecretStore]) -> None:
    """Two instances of intake's door: every PubAck reaches the publish it answers. One agency's reports
    are too large for REPORTS (each answered with an error), the other's are stored (each with its seq)."""
    url, store = secure
    second = await nats.connect(url, nkeys_seed_str=store.service_seed("intake"),
                                inbox_prefix=service_inbox_prefix("intake"))
    await NatsDoor("intake", "report").start(second)
    small, large = await _agency(url, store, "bp3mi-kalsel"), await _agency(url, store, "polda-kalsel")
    too_large = b"x" * 300_000

    async def publish(nc: Client, subject: str, body: bytes) -> Any:
        try:
            return await nc.jetstream().publish(subject, body, timeout=10)
        except nats.js.errors.APIError as exc:
            return exc

    answers = await asyncio.gather(*(publish(small, "alur.report.bp3mi-kalsel", b'{"n": %d}' % i) for i in range(40)),
                                   *(publish(large, "alur.report.polda-kalsel", too_large) for _ in range(40)))
    stored, refused = answers[:40], answers[40:]
    assert all(isinstance(a, nats.js.errors.APIError) for a in refused), "no error turned into another's PubAck"
    assert all(not isinstance(a, Exception) for a in stored)
    assert len({a.seq for a in stored}) == 40
    admin = await nats.connect(url, nkeys_seed_str=store.service_seed("admin"))
    for ack in stored:
        assert (await admin.jetstream().get_msg("REPORTS", ack.seq)).subject == "alur.report.bp3mi-kalsel"
    for nc in (admin, small, large, second):
        await nc.close()
