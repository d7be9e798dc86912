"""Provisioning against a real nats-server: declared once, idempotent, updates what drifted."""

from __future__ import annotations

from nats.aio.client import Client
from nats.js.api import ConsumerConfig

from runtime.profile import load_registry_file
from runtime.provision import load_topology, provision


async def test_provisioning_twice_changes_nothing(nc: Client) -> None:
    js = nc.jetstream()
    topology = load_topology()
    registry = load_registry_file()
    first = await provision(js, topology, registry)
    assert set(first.values()) == {"created"}
    assert first["stream REPORTS"] == "created" and first["kv referrals"] == "created"
    assert first["consumer REFERRALS/agency-polda-kalsel"] == "created"
    second = await provision(js, topology, registry)
    assert set(second.values()) == {"unchanged"}
    assert second.keys() == first.keys()


async def test_streams_keep_records_and_drop_duplicates(nc: Client) -> None:
    js = nc.jetstream()
    await provision(js)
    for name in ("REPORTS", "CASES", "REFERRALS", "DLQ"):
        config = (await js.stream_info(name)).config
        assert config.storage == "file"
        assert config.duplicate_window >= 600
        assert config.retention == "limits"
    for name in ("CASES", "REFERRALS"):  # the case record: kept until deleted on purpose (docs/retention.md)
        config = (await js.stream_info(name)).config
        assert not config.max_age and config.deny_delete
    assert (await js.stream_info("REPORTS")).config.max_age == 90 * 86400, "raw inputs are not kept forever"
    assert (await js.stream_info("TIMERS")).config.allow_msg_schedules


async def test_drifted_consumer_is_put_back(nc: Client) -> None:
    js = nc.jetstream()
    await provision(js)
    await js.add_consumer("REPORTS", ConsumerConfig(durable_name="intake", filter_subjects=["alur.report.*"],
                                                    max_deliver=3, ack_wait=5))
    report = await provision(js)
    assert report["consumer REPORTS/intake"] == "updated"
    assert (await js.consumer_info("REPORTS", "intake")).config.max_deliver == 10
