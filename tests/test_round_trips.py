"""The plumbing that saves broker round trips and memory: KV handles looked up once, independent steps
overlapped but each one awaited, parametrized events built once, and a bucket walked one entry at a time."""

from __future__ import annotations

import asyncio
import gc

import pytest
from nats.aio.client import Client

from contracts.envelope import CloudEvent
from contracts.events import ReferralRequestedData
from runtime.bus import (
    KV_CHUNK,
    key_value,
    kv_entries,
    kv_last_seq,
    kv_snapshot,
    together,
)


async def test_together_waits_for_every_step_then_raises_the_first_failure() -> None:
    finished: list[str] = []

    async def step(name: str, delay: float, fail: bool = False) -> str:
        await asyncio.sleep(delay)
        finished.append(name)
        if fail:
            raise ValueError(name)
        return name

    assert await together(step("a", 0.02), step("b", 0)) == ["a", "b"]  # results in the order given
    finished.clear()
    with pytest.raises(ValueError, match="first"):
        await together(step("first", 0, fail=True), step("slow", 0.05), step("second", 0.01, fail=True))
    assert sorted(finished) == ["first", "second", "slow"]  # nothing left running behind the failure


async def test_a_bucket_handle_is_looked_up_once_per_connection(nc: Client) -> None:
    js = nc.jetstream()
    await js.create_key_value(bucket="probe")
    first = await key_value(js, "probe")
    assert await key_value(js, "probe") is first
    await first.put("k", b"v")
    assert (await (await key_value(js, "probe")).get("k")).value == b"v"
    other = nc.jetstream()
    assert await key_value(other, "probe") is not first  # one cache per JetStream context


def test_a_parametrized_event_model_is_built_once() -> None:
    model = CloudEvent[ReferralRequestedData]
    gc.collect()
    assert CloudEvent[ReferralRequestedData] is model
    assert CloudEvent[dict[str, object]] is CloudEvent[dict[str, object]]


async def test_a_bucket_is_walked_entry_by_entry_with_its_deletions(nc: Client) -> None:
    js = nc.jetstream()
    kv = await js.create_key_value(bucket="walk", history=5)
    for i in range(KV_CHUNK + 3):  # past one chunk, so the walk hands the loop a turn on the way
        await kv.put(f"k{i}", b"old")
    await kv.put("k1", b"new")
    await kv.delete("k2")
    walked = [entry async for entry in kv_entries(js, "walk")]
    assert len(walked) == KV_CHUNK + 3 and len({e.key for e in walked}) == len(walked)  # the last of each key
    by_key = {e.key: e for e in walked}
    assert by_key["k1"].value == b"new" and by_key["k2"].value is None and by_key["k0"].value == b"old"
    entries, last = await kv_snapshot(js, "walk")
    assert entries == {e.key: e.value for e in walked if e.value is not None}
    assert last == max(e.seq for e in walked) == await kv_last_seq(js, "walk")
