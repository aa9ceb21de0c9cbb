"""The metastable cookbook scenario: a 5-second slow spell turns into a retry storm that
outlives it, unless a retry budget (or a bounded queue that sheds load) caps the retries.

Recovery is judged by :func:`meshsim.cascade.cascade` (end to end, against the pre-fault
baseline, with its statistical rule); the scenario and seed are fixed.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest

import meshsim

SCENARIO = Path(__file__).parent.parent / "scenarios" / "cookbook" / "metastable-retry-storm.yaml"


@pytest.fixture(scope="module")
def runs() -> dict[str, meshsim.Result]:
    sc = meshsim.load_scenario(SCENARIO)
    return {name: meshsim.run(sc.variant(name))
            for name in ("baseline", "retry-budget", "bounded-queue")}


def _success(result: meshsim.Result, start: float, end: float) -> float:
    e2e = result.end_to_end()
    rows = e2e[(e2e["t_end"] >= start) & (e2e["t_end"] < end)]
    return float(((rows["status"] >= 200) & (rows["status"] < 400)).mean())


def test_without_a_cap_on_retries_it_never_recovers(runs):
    r = runs["baseline"]
    fault = r.cascade().loc["slow backend"]
    assert fault["end"] == 25.0
    assert math.isinf(fault["time_to_recover"])
    # Long after the trigger: next to nothing succeeds, and backend works on ~4 tries per call,
    # most of them already abandoned by their caller.
    assert _success(r, 40, 60) < 0.01
    amp = meshsim.cascade.retry_amplification(r)
    assert amp.loc["backend", "per_hop"] > 3.0
    assert r.summary().loc["backend", "wasted_work"] > 100  # worker-seconds


def test_a_retry_budget_ends_the_storm(runs):
    fault = runs["retry-budget"].cascade().loc["slow backend"]
    assert 0 < fault["time_to_recover"] <= 20
    # The budget's own circuit breaker is what reacted first.
    assert fault["detected_by"].startswith("pool_saturated")
    assert _success(runs["retry-budget"], 45, 60) > 0.99


def test_a_bounded_queue_sheds_load_and_recovers_at_once(runs):
    fault = runs["bounded-queue"].cascade().loc["slow backend"]
    assert 0 < fault["time_to_recover"] <= 3
    assert _success(runs["bounded-queue"], 30, 60) > 0.99


def test_before_the_trigger_the_variants_are_the_same_run(runs):
    """Common random numbers: with no retry happening yet, the variants' first 15 s agree."""
    # (Categories are compared as text: a variant's later rows may add flags to the set.)
    early = [r.requests[r.requests["t_end"] < 15].reset_index(drop=True).astype(
        {c: str for c in ("client", "source", "destination", "host", "flags")})
             for r in runs.values()]
    assert len(early[0]) > 8000
    assert early[0].equals(early[1])


def test_meshsim_compare_on_the_cookbook_scenario(capsys, tmp_path):
    """The acceptance run: the command prints the side-by-side table and writes the plots; the
    frames of meshsim.compare say what the table says."""
    from meshsim.cli import main
    from meshsim.compare import format_value
    from meshsim.plots import DPI, FIGSIZE

    out = tmp_path / "cmp"
    assert main(["compare", str(SCENARIO), "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[2].split() == ["metric", "baseline", "retry-budget", "bounded-queue"]
    recover = next(line for line in printed if line.startswith("slow backend: time_to_recover"))
    assert recover.split("time_to_recover")[1].split()[0] == "never"  # the baseline's column
    size = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    for name in ("success_rate", "latency_p99", "in_flight", "latency_cdf", "outcomes"):
        head = (out / f"{name}.png").read_bytes()
        assert head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) > 10_000
        assert struct.unpack(">II", head[16:24]) == size

    comparison = meshsim.compare(SCENARIO)
    table = comparison.table
    cascade = comparison.cascade
    for name in comparison.variants:
        ttr = cascade.loc[(name, "slow backend"), "time_to_recover"]
        assert table.loc["slow backend: time_to_recover", name] == ttr
        assert format_value("slow backend: time_to_recover", ttr) in recover
        e2e = comparison.summary.loc[(name, "end-to-end")]
        assert table.loc["success_rate", name] == e2e["success_rate"]
        assert f"{100 * e2e['success_rate']:.2f}%" in next(
            line for line in printed if line.startswith("success_rate"))
    assert math.isinf(table.loc["slow backend: time_to_recover", "baseline"])
    assert math.isfinite(table.loc["slow backend: time_to_recover", "retry-budget"])
