"""An integrator's view against one real `alur up`: `alur agency check ID` and hearing one's own rejections.

- `alur agency check` on a NATS agency connects with its credentials, finds its consumer, pulls and acks a
  test event (`alur.test.v1`), and hands back a real referral it met on the way; exit 0, `--json` for tools;
- on a webhook agency it posts a signed test event and a badly signed one: a receiver that verifies passes,
  one that takes anything fails (exit 1); an unknown agency exits 2; a table without `--json`;
- a rejected report reaches its reporter on its own channel: its NATS consumer (`report_rejected`) and its
  webhook, signed, carrying the `alur.case.rejected.v1` event with its reasons and no victim data.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import nats
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from alur.check import CheckResult, check_agency, verdict
from alur.embedded import free_port
from contracts.records import Agency
from tests.conftest import (
    CONFIDENTIAL,
    Running,
    alur_stack,
    reference_report,
)
from tests.support import publish_report, serving, wait_for, whsec

DEADLINE = 60.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One `alur up` for the module, at real SLA scale: nothing escalates while the checks run."""
    yield from alur_stack(tmp_path_factory.mktemp("check") / "alur", ALUR_SLA_SCALE="1")


@dataclass
class Receiver:
    """A webhook receiver on a free loopback port: verifies Standard Webhooks signatures (204, else 401),
    or with `verify=False` takes anything (the mistake the check is there to catch)."""

    secret: str
    verify: bool = True
    port: int = field(default_factory=free_port)
    events: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alur"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        status = 204
        try:
            if self.verify:
                Webhook(self.secret).verify(body, headers)
            self.events.append(json.loads(body))
        except WebhookVerificationError:
            self.refused += 1
            status = 401
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})


async def add_webhook_agency(stack: Running, agency: str, receiver: Receiver) -> None:
    """Through the public CLI; notify hears of it through its live registry before any rejection is sent."""
    await asyncio.to_thread(stack.cli, "agency", "add", agency, "--type", "health", "--regions", "6305",
                            "--channel", "webhook", "--url", receiver.url, "--secret", receiver.secret,
                            "--allow-private-network")


def test_the_verdict_needs_every_check_and_at_least_one() -> None:
    ok, bad = CheckResult("a", True, "fine", 1.0), CheckResult("b", False, "answered 500")
    assert verdict([ok]) and not verdict([ok, bad]) and not verdict([])
    assert bad.to_json() == {"check": "b", "passed": False, "detail": "answered 500", "ms": None}


async def test_a_disabled_agency_or_one_without_a_system_fails() -> None:
    disabled = Agency(id="x1", type="health", enabled=False)
    assert not verdict(await check_agency(None, disabled, None))  # type: ignore[arg-type]


async def check(stack: Running, agency: str) -> tuple[int, dict[str, Any]]:
    result = await asyncio.to_thread(stack.cli, "agency", "check", agency, "--json", check=False)
    return result.returncode, json.loads(result.stdout)


async def test_a_nats_agency_passes_and_a_waiting_referral_is_handed_back(stack: Running) -> None:
    agency = "uptd-ppa-banjarmasin"  # gets referrals for the reference report (regency 6371)
    admin = await stack.admin()
    js = admin.jetstream()
    await publish_report(stack, reference_report(report_ref=f"CHECK-{uuid.uuid4().hex[:8]}") | {
        "id": str(uuid.uuid4())})

    async def waiting() -> int:
        return (await js.consumer_info("REFERRALS", f"agency-{agency}")).num_pending

    await wait_for(waiting, timeout=DEADLINE)
    code, report = await check(stack, agency)
    assert code == 0, report
    assert report["passed"] is True and report["channel"] == "nats"
    assert [c["check"] for c in report["checks"]] == [
        "consumer exists", "credentials connect", "test event pulled and acknowledged"]
    assert "handed back" in report["checks"][-1]["detail"]

    creds = json.loads(stack.cli("agency", "creds", agency, "--json").stdout)
    nc = await nats.connect(creds["nats_url"], nkeys_seed_str=creds["nkey_seed"], inbox_prefix=creds["inbox_prefix"])
    try:
        sub = await nc.jetstream().pull_subscribe_bind(durable=f"agency-{agency}", stream="REFERRALS",
                                                       inbox_prefix=f"{creds['inbox_prefix']}.pull.".encode())
        msgs = await sub.fetch(10, timeout=DEADLINE)
        assert any(m.subject == f"alur.referral.requested.{agency}" for m in msgs)
        assert not any(m.subject.startswith("alur.referral.test.") for m in msgs), "the check acked its own event"
    finally:
        await nc.close()
    assert (await js.stream_info("DLQ")).state.messages == 0, "the test event concerns nothing"
    await admin.close()

    table = (await asyncio.to_thread(stack.cli, "agency", "check", agency)).stdout
    assert "pass" in table and "ready to go live" in table


async def test_a_webhook_check_passes_only_when_bad_signatures_are_refused(stack: Running) -> None:
    good, careless = Receiver(whsec()), Receiver(whsec(), verify=False)
    async with serving(good), serving(careless):  # type: ignore[arg-type]
        await asyncio.gather(add_webhook_agency(stack, "dinkes-check-good", good),
                             add_webhook_agency(stack, "dinkes-check-careless", careless))

        code, report = await check(stack, "dinkes-check-good")

        assert code == 0, report
        results = {c["check"]: c for c in report["checks"]}
        assert results["signed test event answered 2xx"]["passed"] and results["answered fast"]["ms"] is not None
        assert results["bad signature refused (4xx)"]["detail"] == "answered 401"
        assert good.refused == 1 and [e["type"] for e in good.events] == ["alur.test.v1"]

        code, report = await check(stack, "dinkes-check-careless")
        assert code == 1 and report["passed"] is False
        assert [c["check"] for c in report["checks"] if not c["passed"]] == ["bad signature refused (4xx)"]

        # the same receiver hears its agency's rejected report, signed
        token = json.loads(stack.cli("agency", "creds", "dinkes-check-good", "--json").stdout)["http_token"]
        body = reference_report(report_ref="WH-REJ-1", risk="extreme")["data"]
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"{stack.http('intake')}/v1/reports", json=body,
                                       headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 422, answer.text

        def rejection() -> dict[str, Any] | None:
            return next((e for e in good.events if e["type"] == "alur.case.rejected.v1"), None)

        event = await wait_for(rejection, timeout=DEADLINE)
    assert event["data"]["report_ref"] == "WH-REJ-1" and event["data"]["reasons"] == answer.json()["reasons"]
    assert good.refused == 1, "only the check's forged event was refused"
    assert not any(secret in json.dumps(event) for secret in CONFIDENTIAL)
    assert (await asyncio.to_thread(stack.cli, "agency", "check", "no-such-agency", check=False)).returncode == 2


async def test_a_rejected_report_reaches_its_reporter_on_its_nats_consumer(stack: Running) -> None:
    agency = "bp3mi-kalsel"
    bad = reference_report(report_ref=f"REJ-{uuid.uuid4().hex[:8]}", risk="extreme") | {"id": str(uuid.uuid4())}
    await publish_report(stack, bad)
    creds = json.loads(stack.cli("agency", "creds", agency, "--json").stdout)
    nc = await nats.connect(creds["nats_url"], nkeys_seed_str=creds["nkey_seed"], inbox_prefix=creds["inbox_prefix"])
    try:
        sub = await nc.jetstream().pull_subscribe_bind(durable=f"agency-{agency}", stream="REFERRALS",
                                                       inbox_prefix=f"{creds['inbox_prefix']}.pull.".encode())

        async def rejection() -> tuple[str, dict[str, Any]] | None:
            try:
                msgs = await sub.fetch(10, timeout=2)
            except TimeoutError:
                return None
            found = None
            for msg in msgs:
                await msg.ack()
                event = json.loads(msg.data)
                if event["data"].get("report_ref") == bad["data"]["report_ref"]:
                    found = msg.subject, event
            return found

        subject, event = await wait_for(rejection, timeout=DEADLINE)
    finally:
        await nc.close()
    assert subject == f"alur.referral.report_rejected.{agency}"
    assert event["type"] == "alur.case.rejected.v1" and event["data"]["reporter"] == agency
    assert any(r.startswith("data.risk") for r in event["data"]["reasons"])
    assert not any(secret in json.dumps(event) for secret in CONFIDENTIAL)
