"""A consumer's skip test: the messages it skips are acked before FastStream handles them, every other one
takes FastStream's path with its ack, nak with delay and redelivery unchanged."""

from __future__ import annotations

from collections import Counter

import pytest
from faststream.exceptions import NackMessage
from faststream.nats import JStream, NatsBroker, PullSub
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from runtime.message import Message
from runtime.prefilter import handover_attribute, skip_before_handling
from tests.support import wait_for

STREAM = "PROBE"


def skipped(raw: Msg) -> bool:
    if raw.subject == "probe.odd.x":
        raise ValueError("cannot tell")
    return raw.subject.startswith("probe.skip.")


@pytest.mark.parametrize("max_workers", [1, 4])
async def test_skipped_messages_are_acked_unhandled_and_the_rest_keep_their_nak_with_delay(
    nc: Client, nats_server: str, max_workers: int
) -> None:
    js = nc.jetstream()
    await js.add_stream(name=STREAM, subjects=["probe.>"])
    await js.add_consumer(STREAM, ConsumerConfig(durable_name="probe", ack_policy=AckPolicy.EXPLICIT, ack_wait=30,
                                                 max_deliver=5, filter_subjects=["probe.>"]))
    broker = NatsBroker(nats_server)
    seen: Counter[str] = Counter()

    subscriber = broker.subscriber("probe.>", stream=JStream(STREAM, declare=False), durable="probe",
                                   pull_sub=PullSub(batch_size=10, timeout=0.5), max_workers=max_workers)

    async def handle(msg: Message) -> None:
        subject = msg.raw_message.subject
        seen[subject] += 1
        if subject == "probe.keep.nak" and seen[subject] == 1:
            raise NackMessage(delay=0.2)

    subscriber(handle)
    assert handover_attribute(subscriber) == ("_put_msg" if max_workers > 1 else "consume")
    skip_before_handling(subscriber, skipped)
    subjects = [f"probe.skip.{i}" for i in range(20)] + ["probe.keep.a", "probe.keep.nak", "probe.odd.x"]
    for subject in subjects:
        await js.publish(subject, b"{}")
    async with broker:
        await broker.start()

        async def settled() -> bool:
            info = await js.consumer_info(STREAM, "probe")
            return info.ack_floor.stream_seq == len(subjects) and info.num_ack_pending == 0

        await wait_for(settled, timeout=20)
    assert seen == Counter({"probe.keep.a": 1, "probe.keep.nak": 2, "probe.odd.x": 1})
    info = await js.consumer_info(STREAM, "probe")
    assert info.delivered.stream_seq == len(subjects) and info.num_redelivered == 0
