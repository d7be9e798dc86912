"""`alur demo`: the whole flow in a minute — `alur up`, simulated agencies, sample cases, the board, a summary.

The simulated agencies are `examples/agency_consumer.py`, the program integrators start from. Most answer
at once; four show what Alur is for (`STORIES`): one stays silent (its referrals are reminded, raised to
the coordinator, expire and are rerouted), one declines with a reason (rerouted, never back to it), one
completes with an outcome, and one has no system of its own: its referrals wait in its web inbox, where
a simulated officer answers them through the inbox's own API (`POST /api/inbox/{referral_id}`). The summary and the board read the same folded model (`services.board.model`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from nats.js.api import DeliverPolicy
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from alur.embedded import free_port, port_is_free
from alur.up import Stack, UpError
from contracts.catalog import REPORT_SUBMITTED
from contracts.vocab import Channel, ReferralStatus, RejectionReason
from domain.registry import AgencyRegistry
from examples.agency_consumer import AgencyConsumer, Answer, acknowledge_and_accept
from runtime.settings import Settings
from services.board.model import BoardModel, ReferralView

DEMO_SLA_SCALE = 0.001
"""A high-priority acknowledgement (1 h) is due in 3.6 s; the silent agency's ladder runs out about 22 s later."""
TIME_LIMIT = 150.0
"""Seconds the demo waits for every referral to settle: about 40 on a quiet machine; it stops as soon as they have."""
SILENT = "polres-banjarbaru"
DECLINING = "dinsos-banjarmasin"
COMPLETING = "uptd-ppa-banjarmasin"
INBOX = "dinkes-banjarbaru"
DECLINE_REASON = RejectionReason.NO_CAPACITY_WAITLIST.value
OUTCOME_REASON = "services_provided"
STORIES = {
    SILENT: "stays silent: reminded, raised to the coordinator, expired, rerouted",
    DECLINING: f"declines ({DECLINE_REASON}): rerouted, never back to it",
    COMPLETING: f"completes with an outcome ({OUTCOME_REASON})",
    INBOX: "has no system: answers from its web inbox on the board",
}
OFFICER_POLL = 0.5
"""Seconds between the simulated officer's looks at the inbox."""


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
        "specversion": "1.0", "id": str(uuid.uuid4()), "source": agency, "type": REPORT_SUBMITTED,
        "time": datetime.now(UTC).isoformat(), "datacontenttype": "application/json", "data": data,
    }).encode()


def silent(referral: dict[str, Any]) -> list[dict[str, Any]]:
    """An agency that never answers."""
    return []


def decline(referral: dict[str, Any]) -> list[dict[str, Any]]:
    """Seen, then declined with a reason code."""
    return [{"status": "acknowledged"}, {"status": "rejected", "reason": DECLINE_REASON}]


def complete(referral: dict[str, Any]) -> list[dict[str, Any]]:
    """Seen, taken on, worked on, closed with an outcome."""
    return [{"status": "acknowledged"}, {"status": "accepted"}, {"status": "in_progress"},
            {"status": "completed", "reason": OUTCOME_REASON}]


def answer_of(agency: str) -> Answer:
    """How a simulated agency answers its referrals."""
    return {SILENT: silent, DECLINING: decline, COMPLETING: complete}.get(agency, acknowledge_and_accept)


SETTLED = frozenset({ReferralStatus.ACCEPTED, ReferralStatus.COMPLETED})
DECLINED = frozenset({ReferralStatus.REJECTED, ReferralStatus.REDIRECTED, ReferralStatus.EXPIRED})


def settled(model: BoardModel, ref: ReferralView, depth: int = 0) -> bool:
    """Taken on or closed with an outcome, or declined (refused, expired) and its replacement settled."""
    if ref.status in SETTLED:
        return ref.agency != COMPLETING or ref.status is ReferralStatus.COMPLETED
    nxt = model.referrals.get(ref.rerouted_to or "")
    return ref.status in DECLINED and nxt is not None and depth < 10 and settled(model, nxt, depth + 1)


async def officer(base: str, token: str, stop: asyncio.Event) -> None:
    """An inbox agency's officer: looks at the inbox (`GET /api/inbox`) and acknowledges, then accepts, each
    new referral (`POST /api/inbox/{referral_id}`), as the page's buttons do."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=15, trust_env=False) as http:
        while not stop.is_set():
            with contextlib.suppress(httpx.HTTPError, ValueError):
                answer = await http.get("/api/inbox")
                for row in answer.json() if answer.status_code == 200 else []:
                    offered = {a["status"] for a in row["actions"]}
                    for step in ("acknowledged", "accepted"):
                        if step in offered:
                            await http.post(f"/api/inbox/{row['referral_id']}", json={"status": step})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OFFICER_POLL)


async def until_interrupted() -> None:
    """Wait for Ctrl-C (SIGINT) or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _simulated_agencies(stack: Stack, registry: AgencyRegistry) -> list[AgencyConsumer]:
    """One simulated agency system per enabled agency on NATS, each answering as its story says."""
    assert stack.secrets is not None
    url = stack.server.url if stack.server else ""  # type: ignore[union-attr]
    return [AgencyConsumer(agency.id, url, stack.secrets.agency(agency.id).nkey_seed, answer=answer_of(agency.id))
            for agency in registry.agencies.values() if agency.channel is Channel.NATS and agency.enabled]


async def _report(agencies: list[AgencyConsumer], reports: list[tuple[str, dict[str, Any]]]) -> None:
    """Each sample report published by its reporting agency's own connection, as its system would."""
    by_id = {a.agency: a for a in agencies}
    for reporter, data in reports:
        assert by_id[reporter].nc is not None
        await by_id[reporter].nc.jetstream().publish(f"alur.report.{reporter}", _event(reporter, data), timeout=5)


def _say_where_to_look(console: Console, board: str, secretariat_token: str, inbox_token: str | None, *,
                       keep: bool) -> None:
    """The board's address and the demo's tokens, then what each scripted agency will do."""
    console.print(f"[bold]board[/]     {board}  sign in with the secretariat's token "
                  f"[bold]{secretariat_token}[/] (a demo token, gone when the demo ends"
                  + ("" if keep else "; `alur demo --keep` keeps the board up after the summary") + ")")
    if inbox_token is not None:
        console.print(f"[bold]inbox[/]     {board}inbox  {INBOX}'s officers sign in with its token "
                      f"[bold]{inbox_token}[/]")
    for agency, story in STORIES.items():
        console.print(f"  {agency} {story}")


async def _until_settled(console: Console, model: BoardModel) -> None:
    """Show a progress bar of settled referrals until every one is settled, or `TIME_LIMIT` has passed."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:
        bar = progress.add_task("referrals settled", total=None)
        while loop.time() < started + TIME_LIMIT:
            refs = list(model.referrals.values())
            done = sum(1 for r in refs if settled(model, r))
            progress.update(bar, total=max(len(refs), 1), completed=done)
            if refs and done == len(refs) and loop.time() > started + 5:
                return
            await asyncio.sleep(0.25)


async def run_demo(*, cases: int, port: int, console: Console, keep: bool = False) -> int:
    """Run the demo; returns the exit code (0 when every referral was settled in time). With `keep`, the
    stack (and the board) stays up after the summary until Ctrl-C."""
    data_dir = Path(tempfile.mkdtemp(prefix="alur-demo-"))
    hosts = {name: ("127.0.0.1", free_port()) for name in ("intake", "routing", "notify", "board")}
    settings = Settings(data_dir=data_dir, sla_scale=DEMO_SLA_SCALE, intake_http=hosts["intake"],
                        routing_http=hosts["routing"], notify_http=hosts["notify"], board_http=hosts["board"])
    if port == 0 or not port_is_free("127.0.0.1", port):
        port = free_port()
    stack = Stack(settings=settings, port=port, say=lambda line: console.print(f"[dim]{line}[/]"))
    model = BoardModel()
    stop = asyncio.Event()
    agencies: list[AgencyConsumer] = []
    feeds: list[Any] = []
    try:
        await stack.start()
        assert stack.registry_store is not None and stack.js is not None and stack.secrets is not None
        office = stack.registry_store.current.get(INBOX)
        if office is not None:
            await stack.registry_store.put(office.model_copy(update={"channel": Channel.INBOX}))
        registry = await stack.registry_store.load()

        async def fold(msg: Any) -> None:
            model.apply(msg.subject, msg.data)

        for stream, subject in (("CASES", "alur.case.>"), ("REFERRALS", "alur.referral.>")):
            feeds.append(await stack.js.subscribe(subject, stream=stream, ordered_consumer=True,
                                                  deliver_policy=DeliverPolicy.ALL, cb=fold))
        agencies.extend(_simulated_agencies(stack, registry))
        await asyncio.gather(*(a.connect() for a in agencies))
        tasks = [asyncio.create_task(a.run(stop)) for a in agencies]
        secretariat = next(a.id for a in registry.agencies.values() if a.type.value == "gt_secretariat")
        board = f"http://{settings.board_http[0]}:{settings.board_http[1]}/"
        if office is not None:
            tasks.append(asyncio.create_task(officer(board, stack.secrets.agency(INBOX).http_token, stop)))
        _say_where_to_look(console, board, stack.secrets.agency(secretariat).http_token,
                           stack.secrets.agency(INBOX).http_token if office is not None else None, keep=keep)
        reports = sample_reports()[: max(1, cases)]
        await _report(agencies, reports)
        console.print(f"fed {len(reports)} sample cases; {len(agencies)} simulated agencies answer their referrals")
        await _until_settled(console, model)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        _summary(console, model)
        ok = bool(model.referrals) and all(settled(model, r) for r in model.referrals.values())
        if keep:
            console.print(f"the board stays at {board} until Ctrl-C")
            await until_interrupted()
        return 0 if ok else 1
    except UpError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    finally:
        stop.set()
        for sub in feeds:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await asyncio.gather(*(a.close() for a in agencies))
        with contextlib.suppress(Exception):
            await stack.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


COLOURS = {"accepted": "green", "completed": "bold green", "rejected": "yellow", "expired": "red"}


def _story(model: BoardModel, ref: ReferralView) -> str:
    """What happened to one referral, in a few words: escalations, the reason, where it went next."""
    bits = []
    if ref.escalation_level:
        bits.append({"remind": "reminded", "raise": "raised to the coordinator",
                     "expire": "reminded, raised, expired"}.get(ref.escalation_action or "", "escalated")
                    + f" (level {ref.escalation_level})")
    if ref.reason:
        bits.append(ref.reason)
    if ref.replaces and ref.replaces in model.referrals:
        bits.append(f"instead of {model.referrals[ref.replaces].agency}")
    if ref.rerouted_to and ref.rerouted_to in model.referrals:
        bits.append(f"rerouted to {model.referrals[ref.rerouted_to].agency}")
    return "; ".join(bits)


def _summary(console: Console, model: BoardModel) -> None:
    table = Table(title="Demo summary: every referral and where it stands")
    for col in ("case", "agency", "service", "status", "what happened"):
        table.add_column(col)
    rows = sorted(model.referrals.values(), key=lambda r: (r.case_id, r.service.value, r.requested_at))
    for r in rows:
        colour = COLOURS.get(r.status.value, "yellow")
        table.add_row(r.case_id, r.agency, r.service.value, f"[{colour}]{r.status.value}[/]", _story(model, r))
    console.print(table)
    closed = sum(1 for r in rows if r.status is ReferralStatus.COMPLETED)
    rerouted = sum(1 for r in rows if r.rerouted_to)
    console.print(f"{len(rows)} referrals: {rerouted} rerouted, {closed} closed with an outcome, "
                  f"{sum(1 for r in rows if settled(model, r))} settled")
