"""The report benchmark: ``meshsim report`` of a 1,000-point sweep directory (target under 10 s).

Usage (from the repository root)::

    .venv/bin/python benchmarks/report.py [--repeats 3] [--points 1000]

The sweep directory is made up, not simulated: ``scenarios/three-tier.yaml`` resolved, a grid of
offered load (``points / 8`` rates) by ``services.b.replicas`` (8 values), 3 replications per
point, and figures drawn from a seeded RNG in the columns ``meshsim sweep`` writes
(``sweep.yaml``, ``results.csv``, ``summary.csv``). The report is then written ``repeats`` times
and the median wall time is compared with the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from meshsim import load_scenario, sweep_summary
from meshsim.report import write_report
from meshsim.sweep import METRICS

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "three-tier.yaml"
RATE, REPLICAS = "workload.0.arrival.rate", "services.b.replicas"
TARGET = 10.0


def fabricate(out: Path, points: int, replications: int = 3, seed: int = 0) -> Path:
    """A sweep directory of ``points`` points with plausible, seeded figures."""
    rng = np.random.default_rng(seed)
    replicas = [2, 3, 4, 5, 6, 7, 8, 9]
    rates = np.linspace(50, 2000, max(1, points // len(replicas)))
    rows = []
    for point, (rate, n) in enumerate((r, n) for n in replicas for r in rates):
        load = rate / (n * 250.0)
        for replication in range(replications):
            noise = rng.normal(1.0, 0.03)
            success = float(np.clip(1.2 - load, 0, 1))
            p99 = 0.02 / max(0.05, 1 - min(load, 0.95)) * noise
            rows.append({"point": point, "variant": "baseline", RATE: f"{rate:g}/s",
                         REPLICAS: n, "replication": replication, "seed": 1000 + replication,
                         "requests": rate * 50 * noise, "success_rate": success,
                         "goodput": rate * success * noise, "latency_mean": p99 / 4,
                         "latency_p50": p99 / 5, "latency_p90": p99 / 2, "latency_p99": p99,
                         "in_flight_at_end": 0.0, "amplification": 1.0 + (1 - success),
                         "wasted_work": 0.0, "slo_met": float(p99 < 0.1)})
    results = pd.DataFrame(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.resolved.yaml").write_text(load_scenario(SCENARIO).to_yaml(),
                                                encoding="utf-8")
    (out / "sweep.yaml").write_text(
        f"grid:\n  {RATE}: [{', '.join(f'{r:g}/s' for r in rates)}]\n"
        f"  {REPLICAS}: {replicas}\nreplications: {replications}\nseed: {seed}\n"
        "variants: [baseline]\n", encoding="utf-8")
    results.to_csv(out / "results.csv", index=False)
    summary = sweep_summary(results.reindex(columns=[
        "point", "variant", RATE, REPLICAS, "replication", "seed", *METRICS]))
    summary.to_csv(out / "summary.csv", index=False)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=3, help="timed reports (default 3)")
    p.add_argument("--points", type=int, default=1000, help="points of the sweep (default 1000)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = fabricate(Path(tmp) / "sweep", args.points)
        n = len(pd.read_csv(directory / "summary.csv"))
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            write_report(directory, Path(tmp) / "report.html")
            times.append(time.perf_counter() - t0)
        size = (Path(tmp) / "report.html").stat().st_size
    median = statistics.median(times)
    verdict = "met" if median < TARGET else "NOT met"
    runs = ", ".join(f"{t:.2f}" for t in times)
    print(f"report of a {n}-point sweep ({size / 1e6:.1f} MB): median {median:.2f} s of "
          f"{args.repeats} ({runs}); target < {TARGET:g} s: {verdict}")
    return 0 if median < TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
