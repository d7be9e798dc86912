"""`alur demo`: the whole flow in a minute — `alur up`, simulated agencies, sample cases, a summary.

The simulated agencies are `examples/agency_consumer.py`, the program integrators start from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alur.embedded import free_port, port_is_free
from alur.settings import Settings
from alur.up import Stack, UpError
from examples.agency_consumer import AgencyConsumer

DEMO_SLA_SCALE = 0.01
TIME_LIMIT = 50.0


def sample_reports() -> list[tuple[str, dict[str, Any]]]:
    """(reporting agency, report data): fictional victims covering the main rows of the rule pack."""
    return [
        ("bp3mi-kalsel", {
            "report_ref": "DEMO-BP3MI-0412", "channel": "bp3mi",
            "victim": {"pseudonym": "KS-0412", "age": 16, "sex": "female", "nationality": "wni",
                       "migration_profile": "pmi_non_procedural", "disabilities": []},
            "location": {"regency": "6371", "exploitation_location": "abroad", "country": "MY"},
            "exploitation": ["forced_labour", "domestic_servitude"], "indicators": ["FL02", "FL07", "FL08"],
            "needs": ["medical", "psychological", "shelter", "repatriation", "legal_aid"], "risk": "high",
            "consent": {"share_with": "all", "recorded_by": "bp3mi-kalsel/officer-17"},
            "recruitment_modus": "social_media_job_offer"}),
        ("polda-kalsel", {
            "report_ref": "DEMO-POLDA-0031", "channel": "police",
            "victim": {"pseudonym": "KS-0031", "age": 34, "sex": "male", "nationality": "wni",
                       "migration_profile": "domestic_internal"},
            "location": {"regency": "6310", "exploitation_location": "in_province"},
            "exploitation": ["forced_labour", "debt_bondage"], "indicators": ["FL03", "FL08", "FL09"],
            "needs": ["shelter", "legal_aid", "livelihood"], "risk": "medium",
            "consent": {"share_with": "all", "recorded_by": "polda-kalsel/brigadir-4"},
            "recruitment_modus": "sponsor_calo"}),
        ("uptd-ppa-banjarbaru", {
            "report_ref": "DEMO-PPA-0007", "channel": "hotline",
            "victim": {"pseudonym": "KS-0007", "age": 15, "sex": "female", "nationality": "wni",
                       "migration_profile": "domestic_internal"},
            "location": {"regency": "6372", "exploitation_location": "other_province"},
            "exploitation": ["sexual_exploitation"], "indicators": ["FL04", "FL05", "act_recruit", "purpose_exploitation"],
            "needs": ["medical", "psychological", "education", "protection"], "risk": "high",
            "consent": {"share_with": ["uptd_ppa", "police", "health"], "recorded_by": "uptd-ppa-banjarbaru/konselor-2"},
            "recruitment_modus": "romance"}),
        ("kanim-banjarmasin", {
            "report_ref": "DEMO-IMI-0102", "channel": "port",
            "victim": {"pseudonym": "KS-0102", "age": 23, "sex": "female", "nationality": "wna",
                       "migration_profile": "foreign_in_indonesia"},
            "location": {"regency": "6302", "exploitation_location": "in_province"},
            "exploitation": ["online_scam"], "indicators": ["FL02", "FL07"],
            "needs": ["repatriation", "documents", "psychological"], "risk": "medium",
            "consent": {"share_with": "all", "recorded_by": "kanim-banjarmasin/petugas-9"},
            "recruitment_modus": "social_media_job_offer"}),
    ]


def _event(agency: str, data: dict[str, Any]) -> bytes:
    return json.dumps({
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": agency, "type": "alur.report.submitted.v1",
        "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json", "data": data,
    }).encode()


async def run_demo(*, cases: int, port: int, console: Console) -> int:
    """Run the demo; returns the exit code (0 when every referral was answered in time)."""
    data_dir = Path(tempfile.mkdtemp(prefix="alur-demo-"))
    hosts = {name: ("127.0.0.1", free_port()) for name in ("intake", "routing", "notify")}
    settings = Settings(data_dir=data_dir, sla_scale=DEMO_SLA_SCALE, intake_http=hosts["intake"],
                        routing_http=hosts["routing"], notify_http=hosts["notify"])
    if port == 0 or not port_is_free("127.0.0.1", port):
        port = free_port()
    stack = Stack(settings=settings, port=port, say=lambda line: console.print(f"[dim]{line}[/]"))
    referrals: dict[str, dict[str, Any]] = {}
    stop = asyncio.Event()
    agencies: list[AgencyConsumer] = []
    try:
        await stack.start()
        assert stack.registry_store is not None and stack.js is not None and stack.secrets is not None
        registry = stack.registry_store.current

        def track(agency: str) -> Any:
            def on_event(status: str, event: dict[str, Any]) -> None:
                data = event["data"]
                rid = data.get("referral_id")
                if rid and status in ("requested", "delivered", "acknowledged", "accepted", "rejected",
                                      "redirected", "expired", "reminded", "escalated"):
                    entry = referrals.setdefault(rid, {"case_id": data.get("case_id"), "agency": agency})
                    if status == "requested":
                        entry["service"] = data.get("service")
                    if status not in ("reminded", "escalated"):
                        entry["status"] = status
            return on_event

        for agency in registry.agencies.values():
            if agency.channel.value == "nats" and agency.enabled:
                consumer = AgencyConsumer(agency.id, stack.server.url if stack.server else "",  # type: ignore[union-attr]
                                          stack.secrets.agency(agency.id).nkey_seed, on_event=track(agency.id))
                agencies.append(consumer)
        await asyncio.gather(*(a.connect() for a in agencies))
        tasks = [asyncio.create_task(a.run(stop)) for a in agencies]
        reports = sample_reports()[: max(1, cases)]
        by_id = {a.agency: a for a in agencies}
        for reporter, data in reports:
            assert by_id[reporter].nc is not None
            await by_id[reporter].nc.jetstream().publish(f"alur.report.{reporter}", _event(reporter, data), timeout=5)
        console.print(f"fed {len(reports)} sample cases; {len(agencies)} simulated agencies answer their referrals")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIME_LIMIT
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            bar = progress.add_task("referrals accepted", total=None)
            while loop.time() < deadline:
                accepted = sum(1 for r in referrals.values() if r.get("status") == "accepted")
                progress.update(bar, total=max(len(referrals), 1), completed=accepted)
                if referrals and accepted == len(referrals) and loop.time() > deadline - TIME_LIMIT + 5:
                    break
                await asyncio.sleep(0.25)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        _summary(console, referrals)
        return 0 if referrals and all(r.get("status") == "accepted" for r in referrals.values()) else 1
    except UpError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    finally:
        stop.set()
        await asyncio.gather(*(a.close() for a in agencies))
        with contextlib.suppress(Exception):
            await stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _summary(console: Console, referrals: dict[str, dict[str, Any]]) -> None:
    table = Table(title="Demo summary: every referral and where it stands")
    for col in ("case", "agency", "service", "status"):
        table.add_column(col)
    for rid, r in sorted(referrals.items(), key=lambda kv: (kv[1].get("case_id") or "", kv[1]["agency"])):
        colour = "green" if r.get("status") == "accepted" else "yellow"
        table.add_row(r.get("case_id") or "", r["agency"], r.get("service") or "", f"[{colour}]{r.get('status')}[/]")
    console.print(table)
