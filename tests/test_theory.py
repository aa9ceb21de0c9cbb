"""The engine against queueing theory.

Each check runs R seeded replications (``SeedSequence(seed).spawn(R)``), trims the warm-up,
reduces each replication to one number and asserts that the analytic value lies inside the 95%
Student-t confidence interval of the replication means. Seeds are fixed, so the outcome is
deterministic; a wrong model (see the comments for what it would give) falls far outside.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_in_ci, build, ci95, closed, everything, poisson, replicate

import meshsim

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
R = 10


# ---- analytic results -------------------------------------------------------------------------


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load ``a = λ/μ < c``.

    C(c, a) = [a^c / c! · c / (c − a)] / [Σ_{k=0}^{c−1} a^k / k! + a^c / c! · c / (c − a)]
    """
    top = a**c / math.factorial(c) * c / (c - a)
    return top / (sum(a**k / math.factorial(k) for k in range(c)) + top)


def mmc_wait(c: int, lam: float, mu: float) -> float:
    """Mean wait in queue of M/M/c: Wq = C(c, λ/μ) / (cμ − λ)."""
    return erlang_c(c, lam / mu) / (c * mu - lam)


def mmck_blocking(c: int, k: int, a: float) -> float:
    """Blocking probability of M/M/c/K (K = c + queue places), offered load ``a``: P_K with
    p_n ∝ a^n / n! for n ≤ c and a^n / (c! c^(n−c)) for c < n ≤ K."""
    p = [a**n / math.factorial(n) if n <= c else a**n / (math.factorial(c) * c ** (n - c))
         for n in range(k + 1)]
    return p[-1] / sum(p)


def mva_single_server(users: int, think: float, service: float) -> tuple[float, float]:
    """Exact mean value analysis of ``users`` terminals (mean think time ``think``, any
    distribution) and one exponential FCFS server: returns (throughput, response time).

    R(n) = S·(1 + Q(n−1)), X(n) = n / (Z + R(n)), Q(n) = X(n)·R(n).
    """
    q = 0.0
    for n in range(1, users + 1):
        resp = service * (1 + q)
        x = n / (think + resp)
        q = x * resp
    return x, resp


# ---- helpers -------------------------------------------------------------------------------------


def after_warmup(result: meshsim.Result, dest: str, when: str = "t_arrive") -> pd.DataFrame:
    """Answered attempts to ``dest`` whose time ``when`` is after the warm-up."""
    q = result.requests
    q = q[q["destination"] == dest]
    return q[q[when] >= result.meta["warmup"]]


def series(result: meshsim.Result, service: str, column: str) -> float:
    """Mean over the 1-s bins after the warm-up of one timeseries column of one service."""
    ts = result.timeseries
    ts = ts[(ts["service"] == service) & (ts["t"] >= result.meta["warmup"])]
    return float(ts[column].mean())


# ---- M/M/c -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_mmc_wait_and_wait_probability_follow_erlang_c():
    sc = meshsim.load_scenario(SCENARIOS / "mmc.yaml")  # λ = 32/s, 1/μ = 100 ms, c = 4
    lam, mu, c = 32.0, 10.0, 4
    runs = replicate(sc, R, seed=2024)
    waits = [after_warmup(r, "api").eval("t_begin - t_arrive") for r in runs]
    assert_in_ci(mmc_wait(c, lam, mu), [w.mean() for w in waits], "M/M/4 mean wait")  # 0.0745 s
    assert_in_ci(erlang_c(c, lam / mu), [(w > 0).mean() for w in waits], "M/M/4 P(wait)")
    # Little: mean number in system L = λ·(Wq + 1/μ) = 5.58, from the timeseries.
    little = lam * (mmc_wait(c, lam, mu) + 1 / mu)
    assert_in_ci(little, [series(r, "api", "in_flight") for r in runs], "M/M/4 L")
    assert_in_ci(lam / mu, [series(r, "api", "busy_workers") for r in runs], "M/M/4 busy")
    # The summary's latency of api is the time in system W = Wq + 1/μ.
    assert_in_ci(mmc_wait(c, lam, mu) + 1 / mu,
                 [r.summary().loc["api", "latency_mean"] for r in runs], "M/M/4 W")


@pytest.mark.slow
def test_mm1_at_70_percent():
    lam, mu = 7.0, 10.0
    sc = build({"api": {"workers": 1, "latency": {"kind": "exponential", "mean": "100ms"}}},
               [poisson("api", "7/s")], duration="2000s", warmup="100s")
    runs = replicate(sc, R, seed=7)
    waits = [after_warmup(r, "api").eval("t_begin - t_arrive") for r in runs]
    rho = lam / mu
    assert_in_ci(rho / (mu - lam), [w.mean() for w in waits], "M/M/1 Wq")  # 0.233 s
    assert_in_ci(rho, [(w > 0).mean() for w in waits], "M/M/1 P(wait)")
    assert_in_ci(rho / (1 - rho), [series(r, "api", "in_flight") for r in runs], "M/M/1 L")


def test_bounded_queue_blocks_as_mmck():
    # 2 workers and 3 places in the queue: M/M/2/5 at a = 2 Erlang blocks 2/11 = 18.2% of arrivals
    # (PASTA: arrivals see the time-stationary state).
    sc = build({"api": {"workers": 2, "queue": 3,
                        "latency": {"kind": "exponential", "mean": "100ms"}}},
               [poisson("api", "20/s")], duration="300s", warmup="20s")
    runs = replicate(sc, R, seed=99)
    blocked = [(after_warmup(r, "api")["status"] == 503).mean() for r in runs]
    assert_in_ci(mmck_blocking(2, 5, 2.0), blocked, "M/M/2/5 blocking")


# ---- Little's law on the time series -----------------------------------------------------------


@pytest.mark.slow
def test_littles_law_on_the_timeseries():
    # ingress -> a -> b with a random network and proxy overhead: in_flight is the caller's view
    # (t_start..t_end), busy_workers the callee's (t_begin..t_reply). a gets 100 requests a
    # second and calls b once for each.
    lam = 100.0
    sc = build({"a": {"replicas": 2, "workers": 4, "calls": [{"to": "b"}],
                      "latency": {"kind": "lognormal", "mean": "5ms", "cv": 1}},
                "b": {"replicas": 2, "workers": 2,
                      "latency": {"kind": "exponential", "mean": "8ms"}}},
               [poisson("a", "100/s", via_ingress=True)], duration="200s", warmup="20s",
               network={"kind": "exponential", "mean": "1ms"}, overhead="0.5ms")
    runs = replicate(sc, R, seed=31)
    for service in ("a", "b"):
        # L − λ·W per replication: zero up to the Poisson noise of the realised arrival rate.
        in_system, busy = [], []
        for r in runs:
            sent = after_warmup(r, service, "t_start")
            in_system.append(series(r, service, "in_flight")
                             - lam * sent.eval("t_end - t_start").mean())
            held = after_warmup(r, service, "t_begin")
            busy.append(series(r, service, "busy_workers")
                        - lam * held.eval("t_reply - t_begin").mean())
        assert_in_ci(0.0, in_system, f"{service}: in_flight - λ·latency")
        assert_in_ci(0.0, busy, f"{service}: busy_workers - λ·hold time")




@pytest.mark.parametrize("duration", ["30s", "30.5s"])
def test_timeseries_in_flight_integrates_every_attempt(duration):
    # Sample-path Little: over the whole run, Σ_bins in_flight · bin width is exactly the total
    # time attempts were open, Σ (min(t_end, T) − t_start), in flight at the end included; the
    # same for busy_workers and Σ (min(t_reply, T) − t_begin).
    sc = build({"a": {"workers": 2, "calls": [{"to": "b"}],
                      "latency": {"kind": "exponential", "mean": "30ms"}},
                "b": {"workers": 1, "latency": {"kind": "exponential", "mean": "20ms"}}},
               [poisson("a", "40/s", via_ingress=True)], duration=duration,
               network={"kind": "exponential", "mean": "1ms"})
    r = meshsim.run(sc, seed=1)
    both = everything(r)
    end = r.meta["end_time"]
    ts = r.timeseries
    for service in ("ingress", "a", "b"):
        rows = both[both["destination"] == service]
        open_time = (rows["t_end"].fillna(end) - rows["t_start"]).sum()
        width = np.diff(np.append(ts["t"].unique(), end))
        got = (ts[ts["service"] == service]["in_flight"].to_numpy() * width).sum()
        assert got == pytest.approx(open_time, rel=1e-9)
        hold = (rows["t_reply"].fillna(end) - rows["t_begin"]).sum()  # NaN t_begin: skipped
        got = (ts[ts["service"] == service]["busy_workers"].to_numpy() * width).sum()
        assert got == pytest.approx(hold, rel=1e-9)
        wait = (rows["t_begin"].fillna(end) - rows["t_arrive"]).sum()  # nothing is refused here
        got = (ts[ts["service"] == service]["queue_length"].to_numpy() * width).sum()
        assert got == pytest.approx(wait, rel=1e-9)


# ---- a caller holds its worker while it waits ---------------------------------------------------


@pytest.mark.slow
def test_caller_holds_its_worker_while_waiting_downstream():
    # a (own work 5 ms, plenty of workers) -> b (M/M/2 at 80%: 1/μ = 40 ms, λ = 40/s).
    # b's response time as a sees it (network 0) is Wq + 1/μ = 0.0711 + 0.04 = 0.1111 s, so
    # a keeps λ·(a + R_b) = 40 · 0.1161 = 4.64 workers busy. An engine that released a's
    # worker before the call would show λ·a = 0.2.
    lam, own = 40.0, 0.005
    sc = build({"a": {"workers": 50, "latency": {"kind": "exponential", "mean": "5ms"},
                      "calls": [{"to": "b"}]},
                "b": {"workers": 2, "latency": {"kind": "exponential", "mean": "40ms"}}},
               [poisson("a", "40/s")], duration="600s", warmup="60s")
    runs = replicate(sc, R, seed=5)
    response_b = mmc_wait(2, lam, 25.0) + 0.040
    seen_by_a = [after_warmup(r, "b", "t_start").eval("t_end - t_start").mean() for r in runs]
    assert_in_ci(response_b, seen_by_a, "b's response time")
    busy = [series(r, "a", "busy_workers") for r in runs]
    assert_in_ci(lam * (own + response_b), busy, "a's busy workers")
    assert ci95(busy)[0] > 10 * lam * own


@pytest.mark.slow
def test_slow_downstream_saturates_an_idle_caller():
    # a has 4 workers and 1 ms of own work per request; b takes 100 ms (exponential) and has 32
    # workers, so b never queues (at most 4 calls at once). Holding a worker for 101 ms, a serves
    # at most 4 / 0.101 = 39.6/s < λ = 50/s: its queue grows by 10.4 requests a second while its
    # own work keeps only 0.04 of a worker busy. (Releasing the worker during the call, a would
    # need λ·1 ms = 0.05 workers and never queue.)
    lam, own, slow, c = 50.0, 0.001, 0.100, 4
    sc = build({"a": {"workers": c, "latency": "1ms", "calls": [{"to": "b"}]},
                "b": {"workers": 32, "latency": {"kind": "exponential", "mean": "100ms"}}},
               [poisson("a", "50/s")], duration="120s", warmup="20s")
    runs = replicate(sc, R, seed=17)
    served = c / (own + slow)
    growth = []
    for r in runs:
        ts = r.timeseries
        ts = ts[(ts["service"] == "a") & (ts["t"] >= 20)]
        growth.append(np.polyfit(ts["t"], ts["queue_length"], 1)[0])
        # Saturated: all of a's workers are held in every bin once the queue has built up.
        assert ts["busy_workers"].to_numpy() == pytest.approx(c, rel=1e-9)
    assert_in_ci(lam - served, growth, "a's queue growth per second")
    assert_in_ci(c * slow / (own + slow), [series(r, "b", "busy_workers") for r in runs],
                 "b's busy workers (of 32)")


# ---- arrivals ---------------------------------------------------------------------------------


def test_poisson_counts_per_second_have_mean_and_variance_of_the_rate():
    sc = build({"a": {"latency": "1ms"}}, [poisson("a", "20/s")], duration="300s")
    runs = replicate(sc, R, seed=3)
    counts = [r.timeseries.query("service == 'end-to-end'")["arrivals"] for r in runs]
    assert_in_ci(20.0, [c.mean() for c in counts], "mean count per second")
    assert_in_ci(20.0, [c.var(ddof=1) for c in counts], "variance of the count per second")
    assert [sum(r.meta["arrivals"].values()) for r in runs] == [int(c.sum()) for c in counts]


def test_steps_profile_gives_each_segment_its_rate():
    profile = {"kind": "steps", "steps": [{"at": "0s", "rate": "10/s"}, {"at": "40s", "rate":
                                          "50/s"}, {"at": "80s", "rate": "5/s"}]}
    sc = build({"a": {"latency": "1ms"}}, [poisson("a", profile)], duration="120s")
    runs = replicate(sc, R, seed=4)
    for lo, hi, rate in [(0, 40, 10.0), (40, 80, 50.0), (80, 120, 5.0)]:
        per_run = []
        for r in runs:
            ts = r.timeseries.query("service == 'end-to-end' and @lo <= t < @hi")
            per_run.append(ts["arrivals"].mean())
        assert_in_ci(rate, per_run, f"rate in [{lo}s, {hi}s)")


@pytest.mark.slow
def test_closed_users_follow_the_response_time_law():
    # 20 users, think time exponential 1 s, one worker with exponential 50 ms: exact MVA gives
    # X = 16.8/s and R = 0.189 s. The interactive response-time law X = N / (Z + R) also holds
    # replication by replication with the measured R.
    users, think, service = 20, 1.0, 0.050
    sc = build({"a": {"workers": 1, "latency": {"kind": "exponential", "mean": "50ms"}}},
               [closed("a", users=users, think={"kind": "exponential", "mean": "1s"})],
               duration="300s", warmup="30s")
    runs = replicate(sc, R, seed=8)
    rows = [r.summary().loc["client:u"] for r in runs]
    x, resp = mva_single_server(users, think, service)
    assert_in_ci(x, [row["throughput"] for row in rows], "throughput vs MVA")
    assert_in_ci(resp, [row["latency_mean"] for row in rows], "response time vs MVA")
    law = [row["throughput"] - users / (think + row["latency_mean"]) for row in rows]
    assert_in_ci(0.0, law, "X - N/(Z + R)")


# ---- error models and call probabilities -----------------------------------------------------


def test_error_rates_status_weights_and_call_probability():
    # a fails independently 10% of the time, as 500 or 503 in the ratio 0.7 : 0.3, and when it
    # does not fail calls b with probability 0.5; b fails in bursts (Gilbert–Elliott, 2 s good /
    # 0.5 s bad, always failing when bad): long-run error rate 0.5 / 2.5 = 20%.
    sc = build({"a": {"latency": "1ms", "errors": {"rate": 0.1, "status": {500: 0.7, 503: 0.3}},
                      "calls": [{"to": "b", "probability": 0.5, "optional": True}]},
                "b": {"replicas": 2, "latency": "1ms",
                      "errors": {"kind": "bursty", "meanGood": "2s", "meanBad": "0.5s"}}},
               [poisson("a", "50/s")], duration="200s", warmup="10s")
    runs = replicate(sc, R, seed=12)
    a = [after_warmup(r, "a") for r in runs]
    b = [after_warmup(r, "b") for r in runs]
    assert_in_ci(0.07, [(q["status"] == 500).mean() for q in a], "share of 500")
    assert_in_ci(0.03, [(q["status"] == 503).mean() for q in a], "share of 503")
    assert_in_ci(0.9 * 0.5, [len(qb) / len(qa) for qa, qb in zip(a, b, strict=True)],
                 "calls to b per request of a")
    assert_in_ci(sc.services["b"].errors.long_run_rate(),
                 [(q["status"] != 200).mean() for q in b], "b's long-run error rate")
