"""`alur`: the command for people — run the stack, watch it, trace a case, manage agencies and rules."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from alur import ops
from alur.cli_rules import rules_app
from contracts.destinations import ALUR_HTTP_PORTS
from contracts.events import CASE_ID_PATTERN, REFERRAL_ID_PATTERN
from contracts.records import Agency
from runtime.bus import connect
from runtime.locate import NoBroker, RunInfo, resolve
from runtime.provision import ensure_agency_consumers, load_topology
from runtime.registry_store import CredentialStore, RegistryStore
from runtime.security import SecretStore, agency_inbox_prefix, write_private
from runtime.settings import Settings

app = typer.Typer(help="Alur: referral coordination for TPPO victims between task-force agencies.",
                  no_args_is_help=True, add_completion=False)
agency_app = typer.Typer(help="The agency registry (NATS KV, watched live by the services).", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters, and replaying them after a fix.", no_args_is_help=True)
report_app = typer.Typer(help="Aggregate reports for the task force.", no_args_is_help=True)
app.add_typer(agency_app, name="agency")
app.add_typer(rules_app, name="rules")
app.add_typer(dlq_app, name="dlq")
app.add_typer(report_app, name="report")

console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)  # a message is one line, however narrow the terminal
NatsOpt = Annotated[str | None, typer.Option("--nats", help="NATS URL (else ALUR_NATS_URL, else a running `alur up`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for tools.")]
T = TypeVar("T")


def _with_js(nats_url: str | None, work: Callable[[Any], Awaitable[T]]) -> T:
    """Connect as the admin user, run `work(js)`, and turn connection problems into clear messages."""
    settings = Settings.from_env()
    try:
        url, seed = resolve(nats_url, settings, "admin")
    except NoBroker as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None

    async def main() -> T:
        try:
            nc = await connect(url, seed=seed)
        except Exception as exc:
            err.print(f"[red]error:[/] cannot reach NATS at {url} ({type(exc).__name__}); is `alur up` running?")
            raise typer.Exit(2) from None
        try:
            return await work(nc.jetstream(timeout=10))
        finally:
            await nc.close()

    return asyncio.run(main())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


# ---------------------------------------------------------------- running


@app.command()
def up(
    nats: Annotated[str | None, typer.Option(
        "--nats", help="NATS URL, or a cluster's comma-separated URLs (else ALUR_NATS_URL, else embedded).")] = None,
    port: Annotated[int, typer.Option(help="Client port of the embedded nats-server (its first node).")] = 4222,
    cluster: Annotated[int, typer.Option(help="Run an embedded N-node cluster on loopback instead (N ≥ 3).")] = 0,
    replicas: Annotated[int | None, typer.Option(
        help="Replicas of streams and KV (else ALUR_REPLICAS; 3 on a cluster).")] = None,
) -> None:
    """Run intake, routing and notify (with an embedded nats-server unless --nats / ALUR_NATS_URL)."""
    from alur.up import Stack, run_until_signalled

    settings = Settings.from_env()
    if cluster and (cluster < 3 or nats or settings.nats_url):
        err.print("[red]error:[/] --cluster N needs N ≥ 3 and no --nats / ALUR_NATS_URL (it runs its own servers)")
        raise typer.Exit(2)
    if replicas is not None:
        settings = settings.model_copy(update={"replicas": replicas})
    stack = Stack(settings=settings, nats_url=nats or settings.nats_url, port=port, cluster=cluster,
                  say=lambda line: print(line, flush=True))
    raise typer.Exit(asyncio.run(run_until_signalled(stack)))


@app.command()
def serve(name: Annotated[str, typer.Argument(help="intake, routing or notify")]) -> None:
    """Run one service alone (it finds NATS like every command)."""
    from alur.serve import serve as run_service

    raise typer.Exit(run_service(name))


@app.command()
def demo(
    cases: Annotated[int, typer.Option(help="How many sample cases to feed.")] = 4,
    port: Annotated[int, typer.Option(help="Port of the embedded nats-server.")] = 4222,
    keep: Annotated[bool, typer.Option(help="Keep the stack and its board up after the summary, until Ctrl-C.")] = False,
) -> None:
    """`alur up` plus simulated agencies answering referrals, fed with sample cases, the coordinator's board;
    ends with a summary."""
    from alur.demo import run_demo

    raise typer.Exit(asyncio.run(run_demo(cases=cases, port=port, console=console, keep=keep)))


@app.command()
def provision(
    nats: NatsOpt = None,
    replicas: Annotated[int | None, typer.Option(help="Replicas of streams and KV (else ALUR_REPLICAS, else 1).")] = None,
) -> None:
    """Apply deploy/topology.yaml (streams, consumers, KV), seed the registry, add agency consumers; idempotent."""
    from runtime.profile import load_registry_file
    from runtime.provision import provision as apply

    replicas = replicas or Settings.from_env().replicas or 1

    async def work(js: Any) -> dict[str, str]:
        store = RegistryStore(js)
        report = await apply(js, replicas=replicas)
        await store.seed(load_registry_file())
        registry = await store.load()
        secrets = SecretStore(Settings.from_env().data_dir)
        creds = CredentialStore(js)
        for agency in registry.agencies.values():
            await creds.put(agency.id, secrets.agency(agency.id).public)
        return report | await apply(js, registry=registry, replicas=replicas)

    for name, what in _with_js(nats, work).items():
        console.print(f"{what:9} {name}")


@app.command("nats-config")
def nats_config(
    out: Annotated[Path, typer.Option(help="Where to write the accounts block (include it in nats.conf).")],
    env_dir: Annotated[Path | None, typer.Option(
        help="Also write intake.env, routing.env, notify.env, board.env here (each service's NKey seed; intake's "
             "also its "
             "case-id key).")] = None,
) -> None:
    """Generate an operator nats-server's accounts from the profile registry: Alur's account (services, admin,
    JetStream) and one account per agency, each with its NKey user.

    Secrets are created under ALUR_DATA_DIR/secrets and kept; hand each agency its part with `alur agency creds`.
    """
    from runtime.nats_auth import accounts
    from runtime.profile import load_registry_file
    from runtime.provision import load_topology

    settings = Settings.from_env()
    store = SecretStore(settings.data_dir)
    block = accounts(store, load_registry_file())
    write_private(out, "# Generated by `alur nats-config` from the registry; regenerate after adding or "
                       f"rotating agencies.\naccounts: {json.dumps(block, indent=2)}\n")
    if env_dir is not None:
        env_dir.mkdir(parents=True, exist_ok=True)
        for name in load_topology().services:
            # intake alone makes case ids, under the same kept key as `alur up` gives it (docs/case-access.md)
            case_key = f"ALUR_CASE_KEY={store.case_key()}\n" if name == "intake" else ""
            write_private(env_dir / f"{name}.env", f"ALUR_NKEY_SEED={store.service_seed(name)}\n{case_key}")
    users = sum(len(account["users"]) for account in block.values())
    console.print(f"wrote {out} ({len(block)} accounts, {users} users)")


# ---------------------------------------------------------------- watching


@app.command()
def status(nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Streams, consumer lag, service instances and their readiness, referrals by status and agency,
    overdue referrals, dead letters."""
    result = _with_js(nats, ops.status)
    if as_json:
        _print_json(result)
        return
    t = Table(title="Streams")
    t.add_column("stream")
    t.add_column("messages", justify="right")
    for name, s in result["streams"].items():
        t.add_row(name, str(s["messages"]))
    console.print(t)
    t = Table(title="Consumers")
    for col in ("stream", "consumer", "pending", "ack pending", "redelivered"):
        t.add_column(col)
    for c in result["consumers"]:
        t.add_row(c["stream"], c["consumer"], str(c["pending"]), str(c["ack_pending"]), str(c["redelivered"]))
    console.print(t)
    t = Table(title="Service instances")
    for col in ("service", "instance", "http", "ready", "why not"):
        t.add_column(col)
    for i in result["instances"]:
        ready = ("[green]ready[/]" if i["ready"] else "[red]not ready[/]") if i["reached"] else (
            f"[yellow]not reached[/] (said {'ready' if i['ready'] else 'not ready'} {i['reported_seconds_ago']}s ago)")
        t.add_row(i["service"], i["instance"], i["http"], ready, escape("; ".join(i["problems"])))
    console.print(t)
    t = Table(title="Referrals by agency and status")
    t.add_column("agency")
    t.add_column("statuses")
    for agency, counts in result["referrals_by_agency"].items():
        t.add_row(agency, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    console.print(t)
    if result["overdue"]:
        t = Table(title="Overdue (not acknowledged in time)", style="red")
        for col in ("referral", "case", "agency", "service", "status", "due"):
            t.add_column(col)
        for r in result["overdue"]:
            t.add_row(r["referral_id"], r["case_id"], r["agency"], r["service"], r["status"], r["due"])
        console.print(t)
    for group in result["possible_duplicates"]:
        console.print(f"[yellow]possible duplicate victim, review:[/] {' ~ '.join(group)}")
    console.print(f"dead letters: {result['dead_letters']}")


@app.command()
def trace(
    case_id: Annotated[str, typer.Argument(metavar="ID", help="A case id (case-…) or a referral id (ref-…).")],
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """The case's whole timeline across services, in order (given the case, or one of its referrals)."""
    given = case_id.strip()
    if not (re.match(CASE_ID_PATTERN, given) or re.match(REFERRAL_ID_PATTERN, given)):
        err.print("[red]error:[/] not a case id or a referral id: a case id is case-<20 hex digits>, a referral "
                  "id ref-<20 hex digits> (see `alur status`)")
        raise typer.Exit(2)

    async def work(js: Any) -> dict[str, Any] | None:
        found = given if re.match(CASE_ID_PATTERN, given) else await ops.case_of_referral(js, given)
        return None if found is None else await ops.trace(js, found)

    result = _with_js(nats, work)
    if result is None:
        err.print(f"[red]error:[/] no referral {given}")
        raise typer.Exit(1)
    case_id = result["case_id"]
    if as_json:
        _print_json(result)
        return
    if not result["events"]:
        err.print(f"no events for {case_id}")
        raise typer.Exit(1)
    t = Table(title=f"Timeline of {case_id}", box=None, pad_edge=False)
    for col in ("time", "event", "referral", "agency", "service", "detail"):
        t.add_column(col, overflow="fold")
    for e in result["events"]:
        kind, _, verb = e["subject"].split(".")[1:4] if e["subject"].count(".") >= 3 else ("", "", e["subject"])
        what = f"{kind} {e['subject'].split('.')[2]}" if kind else e["subject"]
        detail = "; ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}" for k, v in e.items()
                           if k in ("priority", "reason", "level", "action", "changed", "replaces", "rules",
                                    "resolution"))
        t.add_row(str(e["time"])[11:19], what, e.get("referral_id") or "", e.get("agency") or "",
                  e.get("service") or "", detail)
    console.print(t)
    if result["decision"]:
        d = result["decision"]
        console.print(f"decision: ruleset {d.get('ruleset_version')}, rules fired: {', '.join(d['fired'])}")
    for w in result["withheld"]:
        console.print(f"[yellow]withheld[/] {w.get('agency_type')}:{w.get('service')}: {w.get('reason')}")
    console.print(f"all referrals terminal: {result['all_referrals_terminal']}")


# ---------------------------------------------------------------- agencies


@agency_app.command("list")
def agency_list(nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Every agency in the registry."""
    registry = _with_js(nats, lambda js: RegistryStore(js).load())
    rows = [a.public() for a in sorted(registry.agencies.values(), key=lambda a: a.id)]
    if as_json:
        _print_json(rows)
        return
    t = Table(title="Agencies")
    for col in ("id", "type", "regions", "channel", "enabled", "name"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["id"], r["type"], ",".join(r["regions"]) or "province", r["channel"], str(r["enabled"]), r["name"])
    console.print(t)


@agency_app.command("show")
def agency_show(agency_id: str, nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """One agency (its webhook secret is never printed)."""
    registry = _with_js(nats, lambda js: RegistryStore(js).load())
    agency = registry.get(agency_id)
    if agency is None:
        err.print(f"[red]error:[/] no agency {agency_id!r} (see `alur agency list`)")
        raise typer.Exit(1)
    if as_json:
        _print_json(agency.public())
        return
    t = Table(title=f"Agency {agency_id}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    for field, value in agency.public().items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)
        t.add_row(field, shown)
    console.print(t)


@agency_app.command("add")
def agency_add(
    agency_id: str,
    type_: Annotated[str, typer.Option("--type", help="Registry type code, e.g. uptd_ppa.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    regions: Annotated[str, typer.Option(help="Comma-separated regency codes; empty = provincial.")] = "",
    channel: Annotated[str, typer.Option(help="nats, webhook, or inbox (no system: the board's web inbox).")] = "nats",
    url: Annotated[str | None, typer.Option(help="Webhook URL.")] = None,
    secret: Annotated[str | None, typer.Option(help="Webhook secret (whsec_…).")] = None,
    allow_insecure_http: Annotated[bool, typer.Option(help="Allow plain http to a non-loopback host.")] = False,
    allow_private_network: Annotated[
        bool, typer.Option(help="Allow a webhook to a loopback or private-network host (tests, on-premises).")
    ] = False,
    email: Annotated[str | None, typer.Option(help="Address for a notice of each new referral and escalation.")] = None,
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add or replace one agency; running services pick it up without a restart."""
    try:
        agency = Agency(
            id=agency_id, type=type_, name=name, regions=[r for r in regions.split(",") if r],
            channel=channel, url=url, secret=secret, allow_insecure_http=allow_insecure_http,
            allow_private_network=allow_private_network, email=email,
        )
    except ValueError as exc:
        err.print(f"[red]invalid agency:[/] {exc}")
        raise typer.Exit(2) from None
    async def work(js: Any) -> None:
        await RegistryStore(js).put(agency)
        if agency.enabled:
            await ensure_agency_consumers(js, load_topology(), [agency])

    _with_js(nats, work)
    if as_json:
        _print_json(agency.public())
    else:
        console.print(f"agency {agency.id} saved ({agency.type.value}, {agency.channel.value})")
        if agency.channel.value == "inbox":
            console.print(f"its officers sign in at {Settings.from_env().board_link}/login with the token of "
                          f"`alur agency creds {agency.id}`")


@agency_app.command("disable")
def agency_disable(agency_id: str, nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Disable an agency: routing skips it and its NATS user is removed."""

    async def work(js: Any) -> Agency | None:
        store = RegistryStore(js)
        agency = (await store.load()).get(agency_id)
        if agency is not None:
            agency = agency.model_copy(update={"enabled": False})
            await store.put(agency)
        return agency

    agency = _with_js(nats, work)
    if agency is None:
        err.print(f"no agency {agency_id!r}")
        raise typer.Exit(1)
    if as_json:
        _print_json(agency.public())
    else:
        console.print(f"agency {agency_id} disabled")


def _creds(nats: str | None, agency_id: str, *, rotate: bool) -> dict[str, str]:
    """The agency's credentials (new ones when `rotate`), recorded for the services to check callers."""
    settings = Settings.from_env()
    store = SecretStore(settings.data_dir)

    async def work(js: Any) -> None:
        registry_store = RegistryStore(js)
        agency = (await registry_store.load()).get(agency_id)
        if agency is None:
            err.print(f"no agency {agency_id!r}")
            raise typer.Exit(1)
        secrets = store.rotate_agency(agency_id) if rotate else store.agency(agency_id)
        await CredentialStore(js).put(agency_id, secrets.public)
        if rotate:  # the registry change makes `alur up` give the server the new key and drop the old one
            await registry_store.put(agency.model_copy(update={"credentials_revision": agency.credentials_revision + 1}))

    _with_js(nats, work)
    url, _ = resolve(nats, settings, "admin")
    secrets = store.agency(agency_id)
    return {"agency": agency_id, "nats_url": url, "nkey_seed": secrets.nkey_seed,
            "inbox_prefix": agency_inbox_prefix(agency_id), "http_token": secrets.http_token}


@agency_app.command("creds")
def agency_creds(agency_id: str, nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """What the agency's system needs to connect: NATS URL, NKey seed, inbox prefix, HTTP token.

    Without --json it prints a connection snippet to paste into the agency's system (nats-py).
    """
    result = _creds(nats, agency_id, rotate=False)
    if as_json:
        _print_json(result)
    else:
        sys.stdout.write(connection_snippet(result))


@agency_app.command("rotate")
def agency_rotate(agency_id: str, nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """New NKey seed and HTTP token for an agency; the old ones are refused at once.

    With the embedded server `alur up` reloads the agency's account as soon as the registry says so; with
    an operator's server, regenerate its accounts (`alur nats-config`) and reload it.
    """
    result = _creds(nats, agency_id, rotate=True)
    if as_json:
        _print_json(result)
        return
    sys.stdout.write(connection_snippet(result))
    info = RunInfo.read(Settings.from_env().data_dir)
    if not (info and info.embedded and info.nats_url == result["nats_url"]):
        err.print("operator's server: run `alur nats-config --out …` and reload nats-server for the new key")


def connection_snippet(creds: dict[str, str]) -> str:
    """A ready-to-paste nats-py connection for an agency, from its credentials."""
    agency = creds["agency"]
    return f"""# Alur credentials of {agency}: keep the seed and token secret.
# Your NATS user may publish alur.report.{agency} and alur.response.{agency}, read its consumer
# agency-{agency} on REFERRALS, and receive replies only under {creds["inbox_prefix"]}.
import nats

nc = await nats.connect(
    "{creds["nats_url"]}",
    nkeys_seed_str="{creds["nkey_seed"]}",
    inbox_prefix="{creds["inbox_prefix"]}",
)
js = nc.jetstream()
referrals = await js.pull_subscribe_bind(
    durable="agency-{agency}", stream="REFERRALS", inbox_prefix=b"{creds["inbox_prefix"]}.pull.")

# HTTP instead: Authorization: Bearer {creds["http_token"]}
"""


@agency_app.command("check")
def agency_check(agency_id: str, nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Conformance check before going live: exit 0 only when every check passes.

    NATS agency: its credentials connect, its consumer exists, a test event (`alur.test.v1`) is pulled and
    acknowledged through it. Webhook agency: a signed test event gets a 2xx, fast; a badly signed one a 4xx.
    Inbox agency: the board answers, and the agency's token opens its inbox.
    """
    from alur.check import CheckResult, check_agency, report_json, verdict

    settings = Settings.from_env()

    async def work(js: Any) -> tuple[Agency | None, list[CheckResult]]:
        agency = (await RegistryStore(js).load()).get(agency_id)
        if agency is None:
            return None, []
        creds = None
        if agency.channel.value == "nats":
            url, _ = resolve(nats, settings, "admin")
            secret = SecretStore(settings.data_dir).agency(agency_id)
            creds = {"nats_url": url, "nkey_seed": secret.nkey_seed,
                     "inbox_prefix": agency_inbox_prefix(agency_id)}
        elif agency.channel.value == "inbox":
            creds = {"board_url": settings.board_link,
                     "http_token": SecretStore(settings.data_dir).agency(agency_id).http_token}
        return agency, await check_agency(js, agency, creds, own_ports=ALUR_HTTP_PORTS | settings.http_ports)

    agency, results = _with_js(nats, work)
    if agency is None:
        err.print(f"no agency {agency_id!r}")
        raise typer.Exit(2)
    if as_json:
        sys.stdout.write(report_json(agency, results))
    else:
        t = Table(title=f"Conformance of {agency.id} ({agency.channel.value})")
        for col in ("check", "result", "ms", "detail"):
            t.add_column(col)
        for r in results:
            t.add_row(r.check, "[green]pass[/]" if r.passed else "[red]FAIL[/]",
                      "" if r.ms is None else f"{r.ms:.0f}", r.detail)
        console.print(t)
        console.print("[green]ready to go live[/]" if verdict(results) else "[red]not ready: fix what failed[/]")
    raise typer.Exit(0 if verdict(results) else 1)


# ---------------------------------------------------------------- dead letters and reports


@dlq_app.command("list")
def dlq_list(nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Dead letters: where each failed message lies and its error (never its content)."""
    letters = _with_js(nats, ops.dead_letters)
    if as_json:
        _print_json(letters)
        return
    t = Table(title="Dead letters")
    for col in ("#", "service", "consumer", "subject", "stream seq", "deliveries", "error"):
        t.add_column(col)
    for d in letters:
        t.add_row(str(d["dlq_seq"]), d["service"], d["consumer"], d["subject"], str(d["stream_seq"]),
                  str(d["deliveries"]), d["error"])
    console.print(t)


@dlq_app.command("replay")
def dlq_replay(
    seqs: Annotated[list[int] | None, typer.Argument(help="Dead-letter numbers; none = all.")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the dead letters in the DLQ after replaying them.")] = False,
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish the originals of dead letters again so their consumers retry them, and take the dead letters
    out of the DLQ (a replay that fails again becomes a new one)."""

    async def work(js: Any) -> tuple[list[int], list[dict[str, Any]]]:
        known = {letter["dlq_seq"] for letter in await ops.dead_letters(js)}
        missing = sorted(set(seqs or ()) - known)
        return (missing, []) if missing else ([], await ops.replay(js, seqs or None, keep=keep))

    missing, done = _with_js(nats, work)
    if missing:
        err.print(f"[red]error:[/] no dead letter {', '.join(map(str, missing))}; nothing replayed "
                  "(see `alur dlq list`)")
        raise typer.Exit(1)
    if as_json:
        _print_json(done)
    else:
        console.print(f"replayed {len(done)} message(s)" + ("" if keep else "; their dead letters are removed"))


@report_app.command("regions")
def report_regions(
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
    min_group: Annotated[int, typer.Option(help="Suppress groups smaller than this (at least 10).")] = 10,
    plot: Annotated[Path | None, typer.Option(
        help="Also draw cases per regency over months, flags marked, into this PNG file.")] = None,
) -> None:
    """Cases by regency, exploitation type and recruitment modus over time; small groups suppressed.

    Flags mark a regency's month (all cases, one exploitation type or one modus) that rose past the upper
    bound of a Poisson interval on its previous six months.
    """
    from alur.regions import RegionCounts, region_flags, report, valid_cases
    from domain.regions import GroupTooSmall, checked_min_group

    try:
        checked_min_group(min_group)
    except GroupTooSmall as exc:
        err.print(f"[red]error:[/] --min-group: {exc}")
        raise typer.Exit(2) from None
    if plot is not None and plot.suffix.lower() != ".png":
        err.print(f"[red]error:[/] --plot: {plot} must be a .png file")
        raise typer.Exit(2)
    cases = valid_cases(_with_js(nats, ops.registered_cases))
    rows = [row.as_dict() for row in report(cases, min_group=min_group)]
    flags = region_flags(cases, min_group=min_group)
    if plot is not None:
        from alur.regions_plot import plot_regions

        try:
            drawn = plot_regions(plot, RegionCounts.of(cases).counters, flags, min_group=min_group)
        except OSError as exc:
            err.print(f"[red]error:[/] --plot: cannot write {plot} ({exc.strerror or type(exc).__name__})")
            raise typer.Exit(1) from None
        err.print(f"wrote {plot} ({drawn} regencies, {len(flags)} flags)")
    if as_json:
        _print_json(rows)
        return
    if not rows:
        console.print(f"no group of {min_group} or more cases yet (smaller groups are never shown)")
        return
    t = Table(title=f"Cases by regency (groups < {min_group} suppressed)")
    for col in rows[0]:
        t.add_column(str(col))
    for r in rows:
        t.add_row(*(str(v) for v in r.values()))
    console.print(t)
    for f in flags:
        baseline = (f"baseline {f.baseline_mean}/month, bound {f.upper_bound}" if f.upper_bound is not None
                    else f"baseline fewer than {f.min_group} cases in six months")
        what = "all cases" if f.dimension == "cases" else f"{f.dimension} {f.value}"
        console.print(f"[red]flagged[/] {f.month} {f.regency.value} {f.regency_name}: {what} {f.cases} ({baseline})")


def main() -> None:
    """Entry point of the `alur` command: the environment is checked once, with a clear message."""
    try:
        Settings.from_env()
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise SystemExit(2) from None
    app()


if __name__ == "__main__":
    main()
