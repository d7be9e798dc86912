"""Profile each service under the burst: intake, routing and notify run under pyinstrument (a sampling
profiler, in the service's own process) while N reports go through; each writes its text profile when it
stops, and the top frames by own time are printed.

Run: `.venv/bin/python -m bench.profile_services [--reports N] [--out DIR]`. Nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bench import bench_e2e
from bench.stack import SERVICES, broker, services


async def profile(count: int, out: Path, timeout: float) -> dict[str, Path]:
    """Run the burst with every service profiled; the profile file of each."""
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / f"{name}.txt" for name in SERVICES}
    wrap = {name: ["-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(path)] for name, path in files.items()}
    expected = bench_e2e.Expected()
    async with broker() as b, services(b, wrap=wrap) as running:
        burst = await bench_e2e.Alur(b, running, expected).burst(
            [bench_e2e.e2e_report(i, "p") for i in range(count)], timeout)
    print(f"profiled burst: {burst.cases} cases, {burst.referrals} referrals in {burst.seconds:.1f} s "
          f"({burst.cases_per_s:.0f} cases/s; all delivered after {burst.delivered_seconds or float('nan'):.1f} s)")
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reports", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("bench/profiles"))
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    for name, path in asyncio.run(profile(args.reports, args.out, args.timeout)).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
