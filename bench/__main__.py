"""`make bench` / `python -m bench`: the end-to-end table (issue 15 a-c, f), the timer table (e), the
rule-engine table (d) and the messaging table, printed with rich; every number also goes to
`bench/results.json`.

Options: --reports for the burst and the messaging bench, --seconds for each steady load, --open/--due for
the timer bench (e), --cases/--rules/--repeat for the rules bench, --only e2e|timers|rules|messaging,
--no-sync to skip the `sync_interval: always` runs, --size tiny for the smoke run `make test` does, --out
for the JSON. The numbers describe this machine in this run; nothing asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import bench_e2e, bench_messaging, bench_rules, bench_timers

RESULTS = Path(__file__).resolve().parent / "results.json"
TINY = {"reports": 20, "seconds": 1.0, "rates": (20.0,), "ladder": (), "ladder_seconds": 1.0,
        "cases": 20, "rules": 50, "repeat": 1, "open": 200, "due": 10}
"""The smoke size: every path runs, in seconds."""


def e2e_table(result: bench_e2e.E2EResult) -> Table:
    table = Table(title=f"End to end: {result.reports} reports, burst, one nats-server per fsync mode, one run",
                  caption=f"ratio = cases/s over the bare nats-py pipeline of the same shape on the same broker; "
                          f"latency = report sent → its last referral stored; target p99 < "
                          f"{bench_e2e.P99_TARGET * 1000:.0f} ms")
    for column, justify in (("what", "left"), ("cases", "right"), ("referrals", "right"), ("seconds", "right"),
                            ("cases/s", "right"), ("referrals/s", "right"), ("ratio", "right"),
                            ("p50 ms", "right"), ("p99 ms", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]

    def burst(label: str, b: bench_e2e.Burst, bare: bench_e2e.Burst) -> None:
        table.add_row(label, str(b.cases), str(b.referrals), f"{b.seconds:.2f}", f"{b.cases_per_s:,.0f}",
                      f"{b.referrals_per_s:,.0f}", f"{b.cases_per_s / bare.cases_per_s:.2f}", "", "")
        if b.delivered_seconds is not None:
            table.add_row(f"{label}: all delivered (notify)", "", "", f"{b.delivered_seconds:.2f}",
                          f"{b.cases / b.delivered_seconds:,.0f}", "", "", "", "")
        elif b.delivered_cases is not None:
            table.add_row(f"{label}: delivered (notify) within the timeout", str(b.delivered_cases), "", "", "",
                          "", "", "", "")

    burst("a. alur burst", result.alur, result.bare)
    burst("b. bare nats-py pipeline", result.bare, result.bare)
    for s in result.steady:
        mark = "" if s.p99 < bench_e2e.P99_TARGET else " (p99 over target)"
        table.add_row(f"c. alur steady {s.rate:g}/s for {s.seconds:g} s{mark}", str(s.cases), "", "", "", "", "",
                      f"{s.p50 * 1000:.0f}", f"{s.p99 * 1000:.0f}")
    best = result.highest_rate_p99_ok
    table.add_row("c. highest rate with p99 under target", "", "", "", f"{best:g}/s" if best else "none", "", "",
                  "", "")
    if result.sync_always:
        bare = result.sync_always["bare"]
        burst("f. alur burst, sync_interval: always", result.sync_always["alur"], bare)
        burst("f. bare pipeline, sync_interval: always", bare, bare)
    return table


def cpu_table(result: bench_e2e.E2EResult) -> Table:
    """CPU seconds per process over each burst: where the machine's two cores went."""
    runs = [("a. alur burst", result.alur), ("b. bare nats-py pipeline", result.bare)]
    runs += [(f"f. {label}, sync_interval: always", result.sync_always[key])
             for key, label in (("alur", "alur burst"), ("bare", "bare pipeline")) if key in result.sync_always]
    names = list(dict.fromkeys(name for _, b in runs for name in b.cpu))
    table = Table(title="CPU seconds (user + system) over each burst, per process",
                  caption="alur: from the first publish until every referral was delivered; bare: until its last "
                          "referral; 'bench process' holds the bare pipeline's stages and the bench's watches")
    table.add_column("burst")
    for name in [*names, "per case, ms"]:
        table.add_column(name, justify="right")
    for label, b in runs:
        per_case = sum(b.cpu.values()) / b.cases * 1000 if b.cases else float("nan")
        table.add_row(label, *(f"{b.cpu[n]:.2f}" if n in b.cpu else "" for n in names), f"{per_case:.1f}")
    return table


def timers_table(result: bench_timers.TimersResult) -> Table:
    table = Table(title=f"e. Notify with {result.open_referrals:,} open referrals, timers armed",
                  caption=f"{result.due_timers} timers falling due over a few seconds; lateness = escalation "
                          f"stored − fire_at; targets: p99 < 1 s, notify < 300 MB")
    for column in ("what", "value"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("timers fired / due", f"{result.fired} / {result.due_timers}")
    table.add_row("lateness p50 / p99", f"{result.lateness_p50 * 1000:.0f} / {result.lateness_p99 * 1000:.0f} ms")
    table.add_row("notify RSS when ready / highest", f"{result.rss_ready_mb:.0f} / {result.rss_max_mb:.0f} MB")
    table.add_row("auditor pass (bucket walk + glance)", f"{result.auditor_pass_s:.1f} s")
    table.add_row("one state in KV", f"{result.state_bytes:,} bytes")
    return table


def rules_table(cases: int, rules: int, repeat: int, results: dict[str, Any]) -> Table:
    note, rows = bench_rules.run(cases, rules, repeat)
    results["rules"] = {"note": note, "rows": [dict(zip(("pack", "engine", "what", "median_us", "p99_us"), r,
                                                        strict=True)) for r in rows]}
    table = Table(title="Rule engine: time per case", caption=note)
    for column, justify in (("rule pack", "left"), ("engine", "left"), ("what", "left"),
                            ("median µs", "right"), ("p99 µs", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for label, engine, what, median, p99 in rows:
        table.add_row(label, engine, what, f"{median:.1f}", f"{p99:.1f}")
    return table


def messaging_table(reports: int, results: dict[str, Any]) -> Table:
    rows = asyncio.run(bench_messaging.run(reports))
    results["messaging"] = [{"what": r.what, "messages": r.messages, "seconds": r.seconds, "rate": r.rate,
                             "note": r.note} for r in rows]
    bare = next(r for r in rows if r.what == bench_messaging.BARE)
    table = Table(title=f"Messaging: {reports} stored reports, one nats-server, one run",
                  caption="ratio = messages/s over the bare nats-py fetch+parse+ack drain")
    for column, justify in (("what", "left"), ("messages", "right"), ("seconds", "right"),
                            ("messages/s", "right"), ("ratio", "right"), ("note", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(r.what, str(r.messages), f"{r.seconds:.2f}", f"{r.rate:,.0f}", f"{r.rate / bare.rate:.3f}",
                      r.note)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--open", type=int, default=100_000, help="open referrals for the timer bench")
    parser.add_argument("--due", type=int, default=500, help="timers falling due in the timer bench")
    parser.add_argument("--only", choices=("e2e", "timers", "rules", "messaging"))
    parser.add_argument("--no-sync", action="store_true")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    e2e: dict[str, Any] = {"rates": (20.0, 100.0), "ladder": (150.0, 200.0, 300.0, 400.0, 600.0),
                           "ladder_seconds": 10.0}
    if args.size == "tiny":
        for name in ("reports", "seconds", "cases", "rules", "repeat", "open", "due"):
            setattr(args, name, TINY[name])
        e2e = {k: TINY[k] for k in ("rates", "ladder", "ladder_seconds")}
    results: dict[str, Any] = {"machine": {"python": platform.python_version(), "arch": platform.machine()},
                               "size": args.size, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    console = Console()
    if not console.is_terminal:  # `make bench` piped to a file or CI log: do not squeeze into 80 columns
        console.width = 120
    console.print(f"Alur benchmarks on {platform.python_implementation()} {platform.python_version()}, "
                  f"{platform.machine()}")
    started = time.perf_counter()
    if args.only in (None, "e2e"):
        result = asyncio.run(bench_e2e.run(args.reports, seconds=args.seconds, sync_always=not args.no_sync, **e2e))
        results["e2e"] = result.to_json()
        console.print(e2e_table(result))
        console.print(cpu_table(result))
    if args.only in (None, "timers"):
        passes = 0 if args.size == "tiny" else bench_timers.AUDIT_PASSES
        timers = asyncio.run(bench_timers.run(args.open, args.due, audit_passes=passes))
        results["timers"] = dataclasses.asdict(timers)
        console.print(timers_table(timers))
    if args.only in (None, "rules"):
        console.print(rules_table(args.cases, args.rules, args.repeat, results))
    if args.only in (None, "messaging"):
        console.print(messaging_table(args.reports, results))
    results["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"done in {results['seconds']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
