"""A whole run scraped: every service exports what `runtime.metrics` catalogues (and nothing else under our
prefixes), the alert rules and the dashboard use only names a service really exports, no label value is
an id or victim data, and the figures follow what happened. `alur status` lists each instance, ready.

One `alur up` for the module (ALUR_SLA_SCALE 0.001: a high-priority referral is due in 3.6 s, so
escalations come by themselves): a reference report, a duplicate of it, a rejected report, an
acknowledgement.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runtime.metrics import ALUR_METRICS, FASTSTREAM_METRICS, SCRAPE_METRICS, catalogue
from tests.conftest import (
    CONFIDENTIAL,
    REFERENCE_REPORT,
    Running,
    alur_stack,
    reference_report,
)
from tests.monitoring_assets import metric_names_used
from tests.support import Feed, about, publish_report, respond, wait_for

SERVICES = ("intake", "routing", "notify")
ID_LIKE = re.compile(r"(case|ref)-[0-9a-f]{6,}|[0-9a-f]{16,}|\d{7,}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from alur_stack(tmp_path_factory.mktemp("metrics-live") / "alur")


def scrape(running: Running, service: str) -> str:
    response = httpx.get(running.http(service) + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def families(text: str) -> dict[str, str]:
    """Exported metric name -> kind, from the `# TYPE` lines (a family without series is exported too)."""
    return {m.group(1): m.group(2) for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)}


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(v for n, found, v in samples(text) if n == name and labels.items() <= found.items())


@pytest.fixture(scope="module")
def flow(run: Running) -> dict[str, str]:
    """The flow, run once; then each service's /metrics once every figure the tests read has moved."""
    return asyncio.run(_flow(run))


async def _flow(run: Running) -> dict[str, str]:
    admin = await run.admin()
    feed = await Feed.open(admin.jetstream())
    await publish_report(run, REFERENCE_REPORT)
    await publish_report(run, REFERENCE_REPORT | {"id": "7d1f6a1e-2f0b-4c59-9a53-0b8d4c2c1e02"})  # same report_ref
    bad = reference_report()
    bad["id"] = "7d1f6a1e-2f0b-4c59-9a53-0b8d4c2c1e03"
    bad["data"]["victim"] = {**bad["data"]["victim"], "age": -3}
    await publish_report(run, bad)
    requested = await feed.seek(about("requested", agency="polda-kalsel"), timeout=60)
    police = await run.agency("polda-kalsel")
    await respond(police, "polda-kalsel", requested.data["referral_id"], "acknowledged")
    await feed.seek(about("acknowledged", requested.data["referral_id"]), timeout=60)
    await feed.seek(lambda e: e.verb == "reminded", timeout=60)
    await police.close()
    await admin.close()

    def moved() -> dict[str, str] | None:
        texts = {service: scrape(run, service) for service in SERVICES}
        intake, routing, notify = texts["intake"], texts["routing"], texts["notify"]
        done = (value(intake, "alur_reports_total", outcome="duplicate") >= 1
                and value(intake, "alur_reports_total", outcome="rejected") >= 1
                and value(routing, "alur_report_to_referral_seconds_count") >= 5
                and value(notify, "alur_escalations_total", action="remind") >= 1
                and value(notify, "alur_time_to_acknowledge_seconds_count") >= 1
                and value(notify, "alur_timer_lateness_seconds_count") >= 1
                # readiness is recomputed per scrape under a deadline a loaded machine may miss once
                and all(value(text, "alur_ready") == 1 for text in texts.values()))
        return texts if done else None

    return await wait_for(moved, timeout=90, every=0.5)


def test_every_service_exports_the_catalogue_and_nothing_else(flow: dict[str, str]) -> None:
    exported: dict[str, str] = {}
    for service, text in flow.items():
        mine = families(text)
        assert set(ALUR_METRICS) - {"alur_referrals_open", "alur_referrals_overdue"} <= set(mine), service
        assert set(FASTSTREAM_METRICS) <= set(mine), service
        exported |= mine
    ours = {name for name in exported if name.startswith(("alur_", "faststream_"))}
    assert ours == set(ALUR_METRICS) | set(FASTSTREAM_METRICS), "exported but not catalogued, or the reverse"
    for name, kind in exported.items():
        if name in ours:
            assert kind == catalogue()[name].kind, name
    assert {"alur_referrals_open", "alur_referrals_overdue"} <= set(families(flow["notify"]))


def test_the_rules_and_the_dashboard_use_only_what_the_services_export(flow: dict[str, str]) -> None:
    exported = set().union(*(families(text) for text in flow.values())) | set(SCRAPE_METRICS)
    missing = metric_names_used() - exported
    assert not missing, f"used in deploy/monitoring but exported by no service: {sorted(missing)}"


def test_labels_are_catalogued_bounded_and_never_ids_or_victim_data(flow: dict[str, str], run: Running) -> None:
    specs = catalogue()
    for service, text in flow.items():
        for name, labels, _ in samples(text):
            base = re.sub(r"_(bucket|sum|count)$", "", name) if name not in specs else name
            if base not in specs:
                continue  # the Python runtime's own (process_*, python_*)
            spec = specs[base]
            assert set(labels) - {"le"} <= set(spec.labels), f"{service} {name}: {sorted(labels)}"
            for label, text_value in labels.items():
                if label == "le":
                    continue
                allowed = spec.values.get(label)
                assert allowed is None or text_value in allowed, f"{service} {name}{{{label}={text_value!r}}}"
                assert not ID_LIKE.search(text_value), f"{service} {name}{{{label}={text_value!r}}}: an id?"
                assert not any(secret in text_value for secret in CONFIDENTIAL)
            if "service" in labels:
                assert labels["service"] == service
        assert not any(secret in text for secret in CONFIDENTIAL)
    assert not any(secret in run.logs() for secret in CONFIDENTIAL)


def test_the_figures_follow_the_flow(flow: dict[str, str]) -> None:
    intake, routing, notify = flow["intake"], flow["routing"], flow["notify"]
    for text in flow.values():
        assert value(text, "alur_ready") == 1
        assert value(text, "alur_dlq_messages") == 0
    assert value(intake, "alur_reports_total", outcome="registered") == 1
    assert value(intake, "alur_rejections_total", code="data.victim") >= 1
    assert value(intake, "alur_consumer_pending", stream="REPORTS", consumer="intake") == 0
    assert value(routing, "alur_referrals_total", status="requested") >= 5
    assert value(routing, "alur_decision_seconds_count") >= 1
    assert value(notify, "alur_referrals_total", agency_type="police", status="acknowledged") == 1
    assert value(notify, "alur_referrals_open") >= 5
    overdue = {labels["agency_type"] for name, labels, _ in samples(notify) if name == "alur_referrals_overdue"}
    assert overdue == {t for t in catalogue()["alur_referrals_overdue"].values["agency_type"]}
    handled = [labels["handler"] for name, labels, _ in samples(notify) if name == "faststream_received_messages_total"]
    assert "alur.timer.fired.*.*" in handled and "alur.referral.requested.*" in handled


async def test_status_shows_each_instance_ready(run: Running, flow: dict[str, str]) -> None:
    def listed() -> list[dict[str, object]] | None:
        rows = json.loads(run.cli("status", "--json").stdout)["instances"]
        return rows if {r["service"] for r in rows if r["ready"] and r["reached"]} == set(SERVICES) else None

    rows = await wait_for(listed, timeout=30, every=0.5)
    assert all(r["http"] == run.env[f"ALUR_{str(r['service']).upper()}_HTTP"] for r in rows)
    human = run.cli("status").stdout
    assert "Service instances" in human and human.count("ready") >= 3


LOG_CALL = re.compile(r'\blog\.(?:debug|info|warning|error|critical)\(\s*"([^"]+)"')


def test_the_runbook_covers_every_alert_and_every_log_event() -> None:
    """docs/operations.md has a section per alert (its runbook anchor) and names every log event."""
    from tests.monitoring_assets import alert_rules

    repo = Path(__file__).resolve().parents[1]
    runbook = (repo / "docs" / "operations.md").read_text(encoding="utf-8")
    headings = {re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
                for h in re.findall(r"^#{2,4} (.+)$", runbook, re.MULTILINE)}
    for rule in alert_rules():
        assert rule["annotations"]["runbook"].split("#", 1)[1] in headings, rule["alert"]
    events = {m.group(1) for folder in ("services", "runtime") for path in (repo / folder).rglob("*.py")
              for m in LOG_CALL.finditer(path.read_text(encoding="utf-8"))}
    missing = sorted(e for e in events if f"`{e}`" not in runbook)
    assert not missing, f"log events the runbook does not name: {missing}"
    for needed in ("alur dlq replay", "alur agency creds", "/readyz"):
        assert needed in runbook
