#!/usr/bin/env python3
"""An agency's side of Alur, for integrators: pull your referrals, answer them.

    alur agency creds uptd-ppa-banjarmasin --json > creds.json
    python examples/agency_consumer.py creds.json            # acknowledge and accept each referral

It needs only nats-py (with nkeys). It connects as the agency's own NKey user, reads replies under
the agency's own inbox prefix (`inbox_prefix` in the credentials: its NATS user may read nothing else), pulls the durable consumer
`agency-<id>` on REFERRALS, and publishes responses to `alur.response.<id>`. The demo's simulated
agencies run this same code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import nats
from nats.aio.client import Client

Answer = Callable[[dict[str, Any]], Sequence[dict[str, Any]]]


def acknowledge_and_accept(referral: dict[str, Any]) -> list[dict[str, Any]]:
    """The default answer: seen, then taken on."""
    return [{"status": "acknowledged"}, {"status": "accepted", "note": "assigned to a case worker"}]


@dataclass
class AgencyConsumer:
    """One agency's connection: pull referral events, answer `requested` ones with `answer`."""

    agency: str
    nats_url: str
    nkey_seed: str
    inbox_prefix: str = ""
    answer: Answer = acknowledge_and_accept
    on_event: Callable[[str, dict[str, Any]], Awaitable[None] | None] | None = None
    nc: Client | None = None

    def __post_init__(self) -> None:
        self.inbox_prefix = self.inbox_prefix or f"_INBOX.{self.agency}"

    async def connect(self) -> None:
        self.nc = await nats.connect(
            self.nats_url, nkeys_seed_str=self.nkey_seed, inbox_prefix=self.inbox_prefix,
            name=f"agency-{self.agency}", max_reconnect_attempts=-1,
        )

    async def respond(self, referral_id: str, status: str, **extra: Any) -> None:
        """Publish one response (`acknowledged`, `accepted`, `rejected`, …) about a referral this agency holds."""
        assert self.nc is not None
        event = {
            "specversion": "1.0", "id": str(uuid.uuid4()), "source": self.agency,
            "type": "alur.referral.response.v1", "time": datetime.now(UTC).isoformat(),
            "subject": referral_id, "datacontenttype": "application/json",
            "data": {"referral_id": referral_id, "status": status, **extra},
        }
        await self.nc.jetstream().publish(
            f"alur.response.{self.agency}", json.dumps(event).encode(), headers={"Nats-Msg-Id": event["id"]},
            timeout=5,
        )

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Pull and answer until `stop` is set (or forever)."""
        if self.nc is None:
            await self.connect()
        assert self.nc is not None
        sub = await self.nc.jetstream().pull_subscribe_bind(
            durable=f"agency-{self.agency}", stream="REFERRALS",
            inbox_prefix=f"{self.inbox_prefix}.pull.".encode(),
        )
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                msgs = await sub.fetch(10, timeout=0.5)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                event = json.loads(msg.data)
                status = msg.subject.split(".")[2]
                if self.on_event:
                    result = self.on_event(status, event)
                    if asyncio.iscoroutine(result):
                        await result
                if status == "requested":
                    for response in self.answer(event["data"]):
                        await self.respond(event["data"]["referral_id"], **response)
                await msg.ack()

    async def close(self) -> None:
        """Close the connection; unacknowledged referrals stay on the consumer for next time."""
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("creds", help="file with the output of `alur agency creds ID --json`")
    args = parser.parse_args()
    creds = json.loads(open(args.creds).read())

    async def on_event(status: str, event: dict[str, Any]) -> None:
        data = event["data"]
        if status == "report_rejected":  # one of our reports was refused: fix what each reason names, send again
            print(f"{status:13} report {data.get('report_ref')} reasons {'; '.join(data['reasons'])}", flush=True)
            return
        print(f"{status:13} {data.get('referral_id')} case {data.get('case_id')} {data.get('service', '')}", flush=True)

    consumer = AgencyConsumer(creds["agency"], creds["nats_url"], creds["nkey_seed"], creds["inbox_prefix"],
                              on_event=on_event)

    async def run() -> None:
        try:
            await consumer.run()
        finally:
            await consumer.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
