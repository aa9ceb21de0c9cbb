"""Capacity planning: the verdicts, the knee against queueing theory, the shop's replica plan
checked by running it, and the CLI's files and exit codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from scipy.optimize import brentq

import meshsim
from meshsim.capacity import (
    MET,
    MISSED,
    UNCERTAIN,
    format_capacity,
    judge,
    judge_all,
    next_factor,
    offered_rps,
    scaled,
)
from meshsim.cli import main
from meshsim.tune_space import parse_constraint

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


# ---- pure parts ---------------------------------------------------------------------------------


def test_judge_needs_the_whole_interval_on_one_side():
    p99 = parse_constraint("p99<300ms")
    assert judge(p99, 0.2, 0.1, 0.29) == MET
    assert judge(p99, 0.31, 0.301, 0.4) == MISSED
    assert judge(p99, 0.29, 0.2, 0.35) == UNCERTAIN
    assert judge(p99, 0.2, math.nan, math.nan) == UNCERTAIN  # one replication: no interval
    success = parse_constraint("success>=99.9%")
    assert judge(success, 1.0, 1.0, 1.0) == MET
    assert judge(success, 0.99, 0.98, 0.995) == MISSED


def test_one_missed_slo_misses_all():
    slos = [parse_constraint("p99<300ms"), parse_constraint("success>=99%")]
    row = {"latency_p99_mean": 0.2, "latency_p99_ci_low": 0.1, "latency_p99_ci_high": 0.25,
           "success_rate_mean": 0.95, "success_rate_ci_low": 0.94, "success_rate_ci_high": 0.96}
    assert judge_all(slos, row) == MISSED
    row.update(success_rate_mean=0.99, success_rate_ci_low=0.985, success_rate_ci_high=0.995)
    assert judge_all(slos, row) == UNCERTAIN
    row.update(success_rate_ci_low=0.99)
    assert judge_all(slos, row) == MET


def test_search_doubles_halves_then_bisects():
    assert next_factor(None, None, 1.0) == 1.0
    assert next_factor(1.0, None, 1.0) == 2.0
    assert next_factor(None, 1.0, 1.0) == 0.5
    assert next_factor(1.0, 2.0, 1.0) == 1.5


def test_offered_rate_is_the_profile_mean_after_warmup():
    shop = meshsim.load_scenario(SCENARIOS / "shop.yaml")
    rates = offered_rps(shop.with_overrides({"duration": "120s", "warmup": "0s"}))
    # web: a sinusoid over two whole periods; mobile: 100/s for 60 s, then 220/s for 60 s.
    assert rates["web"] == pytest.approx(500, rel=1e-3)
    assert rates["mobile"] == pytest.approx(160, rel=1e-3)


def test_load_factor_scales_the_arrivals():
    sc = meshsim.load_scenario(SCENARIOS / "mmc.yaml").with_overrides(
        {"duration": "100s", "warmup": "0s"})
    arrivals = meshsim.run(scaled(sc, 0.5), seed=3).meta["arrivals"]["users"]
    assert arrivals == pytest.approx(1600, rel=0.1)  # 32/s x 0.5 x 100 s
    assert scaled(sc, 1.0) is sc


# ---- the knee against queueing theory -----------------------------------------------------------

C, MU = 2, 10.0  # M/M/2, mean service 100 ms


def erlang_c(c: int, a: float) -> float:
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def mean_sojourn(lam: float) -> float:
    """W = Wq + 1/μ with Wq = C(c, λ/μ) / (cμ − λ)."""
    return erlang_c(C, lam / MU) / (C * MU - lam) + 1 / MU


def sojourn_tail(lam: float, t: float) -> float:
    """P(T > t) of FIFO M/M/c, T = Wq + S: Wq is 0 with probability 1 − C and else
    exponential with rate θ = cμ − λ, S exponential with rate μ (θ ≠ μ here)."""
    pw, theta = erlang_c(C, lam / MU), C * MU - lam
    both = (theta * math.exp(-MU * t) - MU * math.exp(-theta * t)) / (theta - MU)
    return (1 - pw) * math.exp(-MU * t) + pw * both


def mm2() -> meshsim.Scenario:
    return meshsim.load_scenario(SCENARIOS / "mmc.yaml").with_overrides({
        "duration": "400s", "warmup": "40s", "services.api.workers": C,
        "workload[0].arrival.rate": "10/s"})


@pytest.mark.parametrize(("slo", "analytic"), [
    ("mean<300ms", lambda: brentq(lambda lam: mean_sojourn(lam) - 0.3, 1, C * MU - 1e-9)),
    ("p99<1s", lambda: brentq(lambda lam: sojourn_tail(lam, 1.0) - 0.01, 1, C * MU - 1e-9)),
])
def test_knee_of_mmc_holds_the_analytic_rate(slo, analytic):
    # Analytic: 16.33/s for the mean, 15.16/s for the p99 (a model that ignored queueing
    # would put both at 20/s, the workers' saturation).
    result = meshsim.capacity(mm2(), [slo], replications=8, max_loads=10, tolerance=0.02,
                              executor="serial", seed=11)
    knee = result.knee
    assert knee["rps_low"] <= analytic() <= knee["rps_high"], knee
    assert knee["rps_high"] - knee["rps_low"] < 3.5  # an interval that says something
    assert knee["rps_low"] <= knee["rps_estimate"] <= knee["rps_high"]


# ---- the flagship: a replica plan that holds, and one pod fewer that does not --------------------

SHOP_SLOS = ["p99<800ms", "success>=98%"]


def _verdict(shop: meshsim.Scenario, replicas: dict[str, int], rps: float) -> str:
    """The SLOs' verdict on 6 replications of the shop at ``rps`` with these replicas."""
    factor = rps / sum(offered_rps(shop).values())
    base = shop.with_overrides({f"services.{s}.replicas": r for s, r in replicas.items()})
    runs = meshsim.evaluate(scaled(base, factor), [{}], replications=6, seed=5, workers=2)
    row = meshsim.sweep_summary(runs).iloc[0]
    return judge_all([parse_constraint(s) for s in SHOP_SLOS], row)


def test_shop_plan_meets_the_slos_and_one_pod_fewer_misses():
    # One test, not three on a shared fixture: the plan is the slow part, run it once.
    shop = meshsim.load_scenario(SCENARIOS / "shop.yaml").with_overrides(
        {"duration": "20s", "warmup": "5s"})
    result = meshsim.capacity(shop, SHOP_SLOS, target_rps=2000, margin=0.0, failures=True,
                              replications=3, max_replications=6, max_loads=2, workers=2,
                              seed=5)
    services = result.services.set_index("service")
    assert result.bottleneck == services["utilisation_mean"].idxmax()
    assert services.loc[result.bottleneck, "bottleneck"]
    assert services["bottleneck"].sum() == 1
    plan = result.replica_plan
    assert set(plan) == {"frontend", "catalog", "cart", "checkout"}
    assert result.figures["plan_verdict"] == MET

    # The plan, run again on its own: met; the bottleneck with one pod fewer: missed.
    assert _verdict(shop, plan, 2000) == MET
    fewer = {**plan, result.bottleneck: plan[result.bottleneck] - 1}
    assert _verdict(shop, fewer, 2000) == MISSED

    # N-1 as the scenario is written: checkout, holding a worker for the whole payment call,
    # is the service without slack.
    failures = result.failures.set_index("service")
    assert set(failures.index) == {"frontend", "catalog", "cart", "checkout"}
    assert failures.loc["checkout", "verdict"] == MISSED
    assert "checkout" in result.figures["no_slack"]


# ---- the command line ---------------------------------------------------------------------------

MM2_SET = ["--set", "duration=100s", "--set", "warmup=10s", "--set", "services.api.workers=2",
           "--set", "workload[0].arrival.rate=10/s"]


def test_cli_writes_the_documented_files(tmp_path, capsys):
    out = tmp_path / "cap"
    code = main(["capacity", str(SCENARIOS / "mmc.yaml"), "--slo", "p99<1s", *MM2_SET,
                 "--replications", "3", "--max-loads", "5", "--workers", "1",
                 "--target-rps", "12/s", "--out", str(out)])
    assert code == 0
    assert "knee:" in capsys.readouterr().out
    figures = json.loads((out / "capacity.json").read_text())
    assert figures["target_rps"] == pytest.approx(12)
    assert figures["bottleneck"] == "api"
    assert set(figures["knee"]) >= {"rps_low", "rps_high", "rps_estimate", "converged"}
    load = pd.read_csv(out / "load.csv")
    assert list(load.columns[:6]) == ["load_factor", "offered_rps", "replications",
                                      "throughput_mean", "throughput_ci_low",
                                      "throughput_ci_high"]
    assert set(load["verdict"]) <= {MET, MISSED, UNCERTAIN}
    services = pd.read_csv(out / "services.csv")
    assert {"utilisation_mean", "headroom", "bottleneck", "replicas",
            "replicas_proposed"} <= set(services.columns)
    assert "verdict" in pd.read_csv(out / "failures.csv").columns
    assert meshsim.load_scenario(out / "scenario.resolved.yaml").services["api"].workers == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--slo", "p99<fast"], "p99<fast"),
    (["--slo", "latency<1s"], "latency"),
    (["--slo", "p99<1s", "--target-rps", "lots"], "--target-rps"),
    (["--slo", "p99<1s", "--target-rps", "0"], "target_rps"),
    (["--slo", "p99<1s", "--replications", "1"], "at least 2"),
    (["--slo", "p99<1s", "--margin", "much"], "--margin"),
])
def test_cli_bad_input_is_exit_2(args, message, capsys):
    assert main(["capacity", str(SCENARIOS / "mmc.yaml"), *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_foreign_out_dir(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code = main(["capacity", str(SCENARIOS / "mmc.yaml"), "--slo", "p99<1s",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "does not look like a meshsim output directory" in capsys.readouterr().err


def test_closed_loop_clients_give_load_factors_not_rates():
    sc = meshsim.parse_scenario({
        "duration": "30s", "warmup": "5s",
        "services": {"api": {"replicas": 2, "workers": 2,
                             "latency": {"kind": "exponential", "mean": "100ms"}}},
        "workload": [{"client": "u", "entry": "api", "viaIngress": False,
                      "arrival": {"kind": "closed", "users": 4, "thinkTime": "1s"}}]})
    result = meshsim.capacity(sc, ["p99<500ms"], replications=2, max_loads=3, plan=False,
                              executor="serial")
    assert result.figures["base_rps"] == 0
    assert math.isnan(result.knee["rps_estimate"])
    assert result.knee["loads_tested"] == 3
    assert result.knee["factor_estimate"] > 0
    assert "knee: load factor x" in format_capacity(result)


def test_a_declared_fault_set_is_judged_at_the_target(tmp_path, capsys):
    """Each named variant (its faults) runs at the target with today's replicas, on the same
    seeds: a burst of errors misses the success SLO, a harmless variant meets it."""
    text = (SCENARIOS / "mmc.yaml").read_text(encoding="utf-8") + """
variants:
  error-burst:
    faults: [{kind: errors, target: api, rate: 20%, start: 20s, end: 80s}]
  one-more-worker: {services.api.workers: 5}
"""
    path = tmp_path / "mmc-faults.yaml"
    path.write_text(text)
    out = tmp_path / "cap"
    assert main(["capacity", str(path), "--slo", "success>=99%", *MM2_SET,
                 "--replications", "3", "--max-loads", "3", "--workers", "1",
                 "--failures", "error-burst", "--failures", "one-more-worker",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Declared faults at the target" in printed
    failures = pd.read_csv(out / "failures.csv").set_index("failure")
    assert failures.loc["error-burst", "verdict"] == MISSED
    assert failures.loc["error-burst", "success_rate_mean"] < 0.9
    assert failures.loc["one-more-worker", "verdict"] == MET
    figures = json.loads((out / "capacity.json").read_text())
    assert figures["fault_variants_missed"] == ["error-burst"]
    runs = pd.read_csv(out / "runs.csv")
    assert {"baseline", "error-burst", "one-more-worker"} <= set(runs["variant"])
    assert main(["capacity", str(path), "--slo", "success>=99%", *MM2_SET,
                 "--failures", "eror-burst", "--workers", "1"]) == 2
    assert "did you mean 'error-burst'" in capsys.readouterr().err


def test_without_retries_switches_off_every_retry():
    from meshsim.capacity import without_retries

    shop = meshsim.load_scenario(SCENARIOS / "shop.yaml")
    free = without_retries(shop)
    for host in [*shop.services, *shop.external_services]:
        assert free.http_route(host).retries.attempts == 0
        assert free.http_route(host, "ingress").retries.attempts == 0
    # A route the scenario wrote keeps everything but its retries.
    for host, vs in shop.mesh.virtual_services.items():
        assert free.http_route(host).timeout == vs.http[0].timeout


def test_the_retries_cost_at_the_knee(tmp_path, capsys):
    """api fails 20% of its requests (503) and the ingress gateway retries them on 5xx: every
    request costs api 1/(1 − 0.2) = 1.25 tries, 20 % more work, and a retried request also
    waits longer, so under a latency SLO the knee with retries is lower than without them by
    more than 1 − 1/1.25 = 20 %."""
    text = (SCENARIOS / "mmc.yaml").read_text(encoding="utf-8").replace(
        "mesh:\n", "mesh:\n  ingressGateway:\n    virtualServices:\n"
        "      api: {http: [{retries: {attempts: 5, retryOn: 5xx}}]}\n")
    path = tmp_path / "retrying.yaml"
    path.write_text(text)
    out = tmp_path / "cap"
    assert main(["capacity", str(path), "--slo", "p99<1s", *MM2_SET,
                 "--set", "services.api.errors={rate: 20%, status: 503}",
                 "--set", "workload[0].viaIngress=true",
                 "--replications", "3", "--max-loads", "6", "--workers", "1",
                 "--retries-effect", "--out", str(out)]) == 0
    assert "retries cost" in capsys.readouterr().out
    effect = json.loads((out / "capacity.json").read_text())["policy_effect"]
    assert 0.2 < effect["retries_cost"] < 0.6
    # Two hops per request (client -> ingress, ingress -> api), the second retried.
    assert effect["amplification_at_knee"] == pytest.approx(2.25, abs=0.1)
    runs = pd.read_csv(out / "runs.csv")
    assert {"baseline", "no-retries"} <= set(runs["variant"])
