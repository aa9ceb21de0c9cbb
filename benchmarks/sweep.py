"""The sweep benchmark: a 16-point sweep on 2 local worker processes against the same sweep run
serially.

Usage (from the repository root)::

    .venv/bin/python benchmarks/sweep.py [--repeats 3] [--workers 2] [--duration 60s]

The sweep is ``scenarios/three-tier.yaml`` over a 4 × 4 grid (b's and c's replicas), one
replication per point, ``duration`` set by ``--duration``. Serial and parallel runs alternate, so
that other load on the machine hits both alike; the medians are compared. The frames are checked
to be identical. The target on a 2-core machine is a speed-up of at least 1.7.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

import meshsim

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "three-tier.yaml"
GRID = {"services.b.replicas": [3, 4, 5, 6], "services.c.replicas": [2, 3, 4, 5]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed sweeps of each kind")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--duration", default="60s", help="simulated time of each run")
    args = p.parse_args(argv)
    overrides = {"duration": args.duration, "warmup": "0s"}
    times: dict[str, list[float]] = {"serial": [], "parallel": []}
    frames: dict[str, pd.DataFrame] = {}
    for _ in range(args.repeats):
        for kind, kw in (("serial", {"executor": "serial"}),
                         ("parallel", {"workers": args.workers})):
            t0 = time.perf_counter()
            frames[kind] = meshsim.sweep(SCENARIO, GRID, overrides=overrides, **kw)
            times[kind].append(time.perf_counter() - t0)
    if not frames["serial"].equals(frames["parallel"]):
        print("the serial and parallel frames differ", file=sys.stderr)
        return 1
    serial, parallel = (statistics.median(times[k]) for k in ("serial", "parallel"))
    print(f"16-point sweep, {args.duration} per run, median of {args.repeats}:")
    for label, kind, median in (("serial", "serial", serial),
                                (f"{args.workers} worker processes", "parallel", parallel)):
        runs = ", ".join(f"{t:.2f}" for t in times[kind])
        print(f"  {label:<20} {median:6.2f} s   ({runs})")
    speedup = serial / parallel
    verdict = "met" if speedup >= 1.7 else "NOT met"
    print(f"speed-up {speedup:.2f}x  (target >= 1.7x on 2 cores: {verdict}); frames identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
