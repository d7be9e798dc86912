"""`alur`: the command for people — run the stack, watch it, trace a case, manage agencies and rules."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from alur import ops
from alur.bus import connect
from alur.cli_rules import rules_app
from alur.registry import Agency
from alur.registry_store import CredentialStore, RegistryStore
from alur.runtime import NoBroker, resolve
from alur.security import SecretStore
from alur.settings import Settings

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
err = Console(stderr=True)
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
    nats: NatsOpt = None,
    port: Annotated[int, typer.Option(help="Port of the embedded nats-server.")] = 4222,
) -> None:
    """Run intake, routing and notify (with an embedded nats-server unless --nats / ALUR_NATS_URL)."""
    from alur.up import Stack, run_until_signalled

    settings = Settings.from_env()
    stack = Stack(settings=settings, nats_url=nats or settings.nats_url, port=port,
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
) -> None:
    """`alur up` plus simulated agencies answering referrals, fed with sample cases; ends with a summary."""
    from alur.demo import run_demo

    raise typer.Exit(asyncio.run(run_demo(cases=cases, port=port, console=console)))


@app.command()
def provision(
    nats: NatsOpt = None,
    replicas: Annotated[int, typer.Option(help="Replicas of streams and KV (3 on a cluster).")] = 1,
) -> None:
    """Apply deploy/topology.yaml (streams, consumers, KV), seed the registry, add agency consumers; idempotent."""
    from alur.profile import load_registry_file
    from alur.provision import provision as apply

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
    out: Annotated[Path, typer.Option(help="Where to write the authorization block (include it in nats.conf).")],
    env_dir: Annotated[Path | None, typer.Option(help="Also write intake.env, routing.env, notify.env here.")] = None,
) -> None:
    """Generate an operator nats-server's users from the profile registry: one NKey user per service and agency.

    Secrets are created under ALUR_DATA_DIR/secrets and kept; hand each agency its part with `alur agency creds`.
    """
    from alur.profile import load_registry_file
    from alur.security import SERVICES, authorization

    settings = Settings.from_env()
    store = SecretStore(settings.data_dir)
    block = authorization(store, load_registry_file())
    out.write_text("# Generated by `alur nats-config` from the registry; regenerate after adding agencies.\n"
                   f"authorization: {json.dumps(block, indent=2)}\n")
    out.chmod(0o600)
    if env_dir is not None:
        env_dir.mkdir(parents=True, exist_ok=True)
        for name in SERVICES:
            if name != "admin":
                path = env_dir / f"{name}.env"
                path.write_text(f"ALUR_NKEY_SEED={store.service_seed(name)}\n")
                path.chmod(0o600)
    console.print(f"wrote {out} ({len(block['users'])} users)")


# ---------------------------------------------------------------- watching


@app.command()
def status(nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """Streams, consumer lag, referrals by status and agency, overdue referrals, dead letters."""
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
def trace(case_id: str, nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """The case's whole timeline across services, in order."""
    result = _with_js(nats, lambda js: ops.trace(js, case_id))
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
                           if k in ("priority", "reason", "level", "action", "changed", "replaces", "rules"))
        t.add_row(str(e["time"])[11:19], what, (e.get("referral_id") or "")[-8:], e.get("agency") or "",
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
def agency_show(agency_id: str, nats: NatsOpt = None, as_json: JsonOpt = True) -> None:
    """One agency (its webhook secret is never printed)."""
    registry = _with_js(nats, lambda js: RegistryStore(js).load())
    agency = registry.get(agency_id)
    if agency is None:
        err.print(f"no agency {agency_id!r}")
        raise typer.Exit(1)
    _print_json(agency.public())


@agency_app.command("add")
def agency_add(
    agency_id: str,
    type_: Annotated[str, typer.Option("--type", help="Registry type code, e.g. uptd_ppa.")],
    name: Annotated[str, typer.Option(help="Display name.")] = "",
    regions: Annotated[str, typer.Option(help="Comma-separated regency codes; empty = provincial.")] = "",
    channel: Annotated[str, typer.Option(help="nats or webhook.")] = "nats",
    url: Annotated[str | None, typer.Option(help="Webhook URL.")] = None,
    secret: Annotated[str | None, typer.Option(help="Webhook secret (whsec_…).")] = None,
    allow_insecure_http: Annotated[bool, typer.Option(help="Allow plain http to a non-loopback host.")] = False,
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add or replace one agency; running services pick it up without a restart."""
    try:
        agency = Agency(
            id=agency_id, type=type_, name=name, regions=[r for r in regions.split(",") if r],
            channel=channel, url=url, secret=secret, allow_insecure_http=allow_insecure_http,
        )
    except ValueError as exc:
        err.print(f"[red]invalid agency:[/] {exc}")
        raise typer.Exit(2) from None
    _with_js(nats, lambda js: RegistryStore(js).put(agency))
    if as_json:
        _print_json(agency.public())
    else:
        console.print(f"agency {agency.id} saved ({agency.type.value}, {agency.channel.value})")


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


@agency_app.command("creds")
def agency_creds(agency_id: str, nats: NatsOpt = None, as_json: JsonOpt = False) -> None:
    """What the agency's system needs to connect: NATS URL, NKey seed, HTTP token."""
    settings = Settings.from_env()
    store = SecretStore(settings.data_dir)

    async def work(js: Any) -> str:
        registry = await RegistryStore(js).load()
        if registry.get(agency_id) is None:
            err.print(f"no agency {agency_id!r}")
            raise typer.Exit(1)
        await CredentialStore(js).put(agency_id, store.agency(agency_id).public)
        return agency_id

    _with_js(nats, work)
    url, _ = resolve(nats, settings, "admin")
    secrets = store.agency(agency_id)
    result = {"agency": agency_id, "nats_url": url, "nkey_seed": secrets.nkey_seed, "http_token": secrets.http_token}
    if as_json:
        _print_json(result)
    else:
        for k, v in result.items():
            console.print(f"{k:11} {v}")


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
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish the originals of dead letters again so their consumers retry them."""
    done = _with_js(nats, lambda js: ops.replay(js, seqs or None))
    if as_json:
        _print_json(done)
    else:
        console.print(f"replayed {len(done)} message(s)")


@report_app.command("regions")
def report_regions(
    nats: NatsOpt = None,
    as_json: JsonOpt = False,
    min_group: Annotated[int, typer.Option(help="Suppress groups smaller than this.")] = 10,
) -> None:
    """Cases by regency, exploitation type and recruitment modus over time; small groups suppressed."""
    from services.intake.regions import regions_report

    cases = _with_js(nats, ops.registered_cases)
    rows = regions_report(cases, min_group=min_group)
    if as_json:
        _print_json(rows)
        return
    t = Table(title=f"Cases by regency (groups < {min_group} suppressed)")
    if rows:
        for col in rows[0]:
            t.add_column(str(col))
        for r in rows:
            t.add_row(*(str(v) for v in r.values()))
    console.print(t)


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
