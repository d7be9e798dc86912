"""`make bench` / `python -m bench`: the rule-engine table and the messaging table, printed with rich.

Options: --cases/--rules/--repeat for the rules benchmark, --reports for the messaging one,
--only rules|messaging to run one of them. The numbers describe this machine in this run; nothing
asserts them.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

from rich.console import Console
from rich.table import Table

from bench import bench_messaging, bench_rules


def rules_table(cases: int, rules: int, repeat: int) -> Table:
    note, rows = bench_rules.run(cases, rules, repeat)
    table = Table(title="Rule engine: time per case", caption=note)
    for column, justify in (("rule pack", "left"), ("engine", "left"), ("what", "left"),
                            ("median µs", "right"), ("p99 µs", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for label, engine, what, median, p99 in rows:
        table.add_row(label, engine, what, f"{median:.1f}", f"{p99:.1f}")
    return table


def messaging_table(reports: int) -> Table:
    rows = asyncio.run(bench_messaging.run(reports))
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
    parser.add_argument("--only", choices=("rules", "messaging"))
    args = parser.parse_args()
    console = Console()
    if not console.is_terminal:  # `make bench` piped to a file or CI log: do not squeeze into 80 columns
        console.width = 120
    console.print(f"Alur benchmarks on {platform.python_implementation()} {platform.python_version()}, "
                  f"{platform.machine()}")
    started = time.perf_counter()
    if args.only in (None, "messaging"):
        console.print(messaging_table(args.reports))
    if args.only in (None, "rules"):
        console.print(rules_table(args.cases, args.rules, args.repeat))
    console.print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
