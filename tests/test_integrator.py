"""What an integrator gets: credentials that connect as printed, with nothing but nats-py and the docs."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import nats
import pytest

from tests.conftest import REFERENCE_REPORT, Running


async def test_a_plain_client_built_from_creds_json_reports_pulls_and_answers(alur: Running) -> None:
    """Only `alur agency creds ID --json` and DESIGN.md's names: publish a report, pull the agency's own
    consumer, answer a referral, and hear the answer come back as a fact."""
    creds = json.loads(alur.cli("agency", "creds", "bp3mi-kalsel", "--json").stdout)
    assert set(creds) >= {"agency", "nats_url", "nkey_seed", "inbox_prefix", "http_token"}
    nc = await nats.connect(creds["nats_url"], nkeys_seed_str=creds["nkey_seed"], inbox_prefix=creds["inbox_prefix"])
    js = nc.jetstream()
    agency = creds["agency"]

    ack = await js.publish(f"alur.report.{agency}", json.dumps(REFERENCE_REPORT).encode(),
                           headers={"Nats-Msg-Id": REFERENCE_REPORT["id"]}, timeout=5)
    assert ack.stream == "REPORTS"

    referrals = await js.pull_subscribe_bind(durable=f"agency-{agency}", stream="REFERRALS")
    request = None
    while request is None:
        for msg in await referrals.fetch(1, timeout=30):
            await msg.ack()
            if msg.subject == f"alur.referral.requested.{agency}":
                request = json.loads(msg.data)["data"]
    response = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": agency, "type": "alur.referral.response.v1",
                "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json",
                "data": {"referral_id": request["referral_id"], "status": "acknowledged"}}
    await js.publish(f"alur.response.{agency}", json.dumps(response).encode(),
                     headers={"Nats-Msg-Id": response["id"]}, timeout=5)

    heard = None
    while heard is None:
        for msg in await referrals.fetch(1, timeout=30):
            await msg.ack()
            data = json.loads(msg.data)["data"]
            if msg.subject == f"alur.referral.acknowledged.{agency}" and data["referral_id"] == request["referral_id"]:
                heard = data
    assert heard["status"] == "acknowledged"
    await nc.close()


def test_creds_without_json_print_a_connection_snippet(alur: Running) -> None:
    creds = json.loads(alur.cli("agency", "creds", "polda-kalsel", "--json").stdout)
    snippet = alur.cli("agency", "creds", "polda-kalsel").stdout
    assert "nats.connect(" in snippet
    for value in (creds["nats_url"], creds["nkey_seed"], creds["inbox_prefix"], "agency-polda-kalsel"):
        assert value in snippet
    compile(snippet.replace("await ", ""), "<snippet>", "exec")


async def test_rotated_credentials_refuse_the_old_ones_at_once(alur: Running) -> None:
    """`alur agency rotate ID`: a new token and seed work, the old ones are refused (HTTP at once, NATS as soon
    as the server reloads the agency's account — an open connection with the old key is closed too)."""
    import httpx

    from tests.support import wait_for

    old = json.loads(alur.cli("agency", "creds", "uptd-ppa-banjarbaru", "--json").stdout)
    open_with_old = await nats.connect(old["nats_url"], nkeys_seed_str=old["nkey_seed"],
                                       inbox_prefix=old["inbox_prefix"], max_reconnect_attempts=0)
    url = alur.http("intake") + "/v1/reports"

    async def status_with(token: str) -> int:
        async with httpx.AsyncClient(timeout=30) as client:
            return (await client.post(url, content=b"not json", headers={"Authorization": f"Bearer {token}"})).status_code

    assert await status_with(old["http_token"]) == 400, "the old token opens the door before the rotation"
    new = json.loads(alur.cli("agency", "rotate", "uptd-ppa-banjarbaru", "--json").stdout)
    assert new["nkey_seed"] != old["nkey_seed"] and new["http_token"] != old["http_token"]
    assert await status_with(old["http_token"]) == 401
    assert await status_with(new["http_token"]) == 400

    await wait_for(lambda: open_with_old.is_closed or not open_with_old.is_connected)

    async def old_key_refused() -> bool:
        try:
            nc = await nats.connect(old["nats_url"], nkeys_seed_str=old["nkey_seed"], allow_reconnect=False,
                                    connect_timeout=2, max_reconnect_attempts=0)
        except Exception:
            return True
        await nc.close()
        return False
    await wait_for(old_key_refused)
    fresh = await nats.connect(new["nats_url"], nkeys_seed_str=new["nkey_seed"], inbox_prefix=new["inbox_prefix"])
    ack = await fresh.jetstream().publish("alur.report.uptd-ppa-banjarbaru", b"{}", timeout=10)
    assert ack.stream == "REPORTS"
    await fresh.close()
    if not open_with_old.is_closed:
        await open_with_old.close()


@pytest.mark.timeout(300)  # several CLI runs and a reload per agency: slow on a loaded machine
async def test_an_agency_added_or_re_enabled_while_alur_runs_can_report_and_pull(alur: Running) -> None:
    """The server's accounts change live (a reload): a new agency's user, and one disabled then added back,
    reach REPORTS and their own consumer at once."""
    from tests.support import wait_for

    alur.cli("agency", "add", "polres-tapin", "--type", "police", "--regions", "6305")
    alur.cli("agency", "disable", "polres-banjar")
    alur.cli("agency", "add", "polres-banjar", "--type", "police", "--regions", "6303")

    async def reports_and_pulls(agency: str) -> bool:
        creds = json.loads(alur.cli("agency", "creds", agency, "--json").stdout)
        try:
            nc = await nats.connect(creds["nats_url"], nkeys_seed_str=creds["nkey_seed"],
                                    inbox_prefix=creds["inbox_prefix"], allow_reconnect=False)
        except Exception:
            return False  # the reload giving it a user has not happened yet
        try:
            await nc.jetstream().publish(f"alur.report.{agency}", b"{}", timeout=5)
            await nc.jetstream().pull_subscribe_bind(durable=f"agency-{agency}", stream="REFERRALS")
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    for agency in ("polres-tapin", "polres-banjar"):
        assert await wait_for(lambda a=agency: reports_and_pulls(a))
