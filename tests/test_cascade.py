"""Cascade metrics (:mod:`meshsim.cascade`): exact values on hand-made frames, and retry
amplification in a simulated chain checked against the truncated geometric law."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

import meshsim
from meshsim import cascade as cm
from meshsim import metrics
from meshsim.result import EVENT_COLUMNS, REQUEST_COLUMNS, Result

# ---- hand-made runs -----------------------------------------------------------------------------

SCENARIO = """
name: hand-made
duration: 60s
warmup: 5s
slo: {successRate: 99%, p99: 100ms}
workload:
  - client: web
    entry: front
    viaIngress: false
    arrival: {kind: poisson, rate: 100/s}
    slo: {successRate: 99%}
services:
  front: {latency: 1ms, calls: [{to: cart}, {to: ads}], slo: {successRate: 99%, p99: 100ms}}
  cart: {latency: 1ms, slo: {successRate: 99%}}
  ads: {latency: 1ms}
faults:
  - {kind: errors, target: cart, rate: 50%, start: 20s, end: 30s}
"""

HEALTHY, SLOW = 0.01, 1.0  # latencies (s) of a healthy and of a slowed-down request


def run_of(failing: Callable[[float], bool] = lambda t: False,
           slow: Callable[[float], bool] = lambda t: False, *, rate: int = 100,
           duration: float = 60.0, events: list[tuple] | None = None,
           scenario: str = SCENARIO) -> Result:
    """A run of ``front -> (cart, ads)``: one end-user request every ``1/rate`` seconds.

    A request sent at ``t`` takes 10 ms (``SLOW`` if ``slow(t)``); if ``failing(t)``, cart and
    ads answer 503 and front 500 (so every scope's success rate drops).
    """
    rows = []
    for i in range(int(duration * rate)):
        t = i / rate
        lat = SLOW if slow(t) else HEALTHY
        if t + lat >= duration:
            break
        bad = failing(t)
        root, cart, ads = 3 * i + 1, 3 * i + 2, 3 * i + 3
        rows.append((i, root, 0, "web", "client", "front", "front-0", 1, t, t + lat,
                     500 if bad else 200))
        for span, dest in ((cart, "cart"), (ads, "ads")):
            rows.append((i, span, root, "web", "front", dest, f"{dest}-0", 1, t, t + lat / 2,
                         503 if bad else 200))
    return result_of(rows, duration, events, scenario)


def result_of(rows: list[tuple], duration: float, events: list[tuple] | None = None,
              scenario: str = SCENARIO, in_flight: list[tuple] | None = None,
              warmup: float = 5.0) -> Result:
    """A :class:`Result` from rows ``(request_id, span_id, parent_span_id, client, source,
    destination, host, attempt, t_start, t_end, status[, shadow])``; the callee's own times
    follow the caller's."""

    def frame(rows: list[tuple]) -> pd.DataFrame:
        full = [(*r[:11], "-", r[11] if len(r) > 11 else False, r[8], r[8], r[9])
                for r in rows]
        return pd.DataFrame(full, columns=list(REQUEST_COLUMNS))

    sc = meshsim.loads_scenario(scenario)
    meta = {"warmup": warmup, "end_time": duration, "duration": duration}
    ev = pd.DataFrame(events or [], columns=list(EVENT_COLUMNS)).astype({"t": "float64"})
    return Result(sc, frame(rows), frame(in_flight or []), ev, meta)


# ---- health -------------------------------------------------------------------------------------


def test_health_counts_answers_per_window_and_scope():
    r = run_of(failing=lambda t: 20 <= t < 30, rate=10, duration=40)
    raw = cm.health(r)
    assert list(raw.columns) == list(cm.HEALTH_COLUMNS)
    h = raw.set_index(["scope", "t"])
    assert list(h.index.get_level_values("scope").unique()) == [
        "end-to-end", "client:web", "front", "cart", "ads"]
    calm, hit = h.loc[("end-to-end", 10.0)], h.loc[("end-to-end", 25.0)]
    assert (calm["requests"], calm["successes"], calm["success_rate"], calm["goodput"]) == (
        10, 10, 1.0, 10.0)
    assert (hit["requests"], hit["successes"], hit["success_rate"], hit["goodput"]) == (
        10, 0, 0.0, 0.0)
    assert calm["latency_p50"] == pytest.approx(HEALTHY)
    assert h.loc[("cart", 10.0), "latency_p99"] == pytest.approx(HEALTHY / 2)
    # One request of 10 ms every 100 ms: 0.1 in flight on average.
    assert calm["in_flight"] == pytest.approx(0.1)


def test_health_leaves_the_success_rate_of_a_silent_window_undefined():
    rows = [(0, 1, 0, "web", "client", "front", "front-0", 1, 0.2, 0.3, 200),
            (1, 2, 0, "web", "client", "front", "front-0", 1, 2.2, 2.3, 503)]
    h = cm.health(result_of(rows, 3.0)).query("scope == 'end-to-end'")
    assert h["requests"].tolist() == [1, 0, 1]
    assert h["success_rate"].tolist()[::2] == [1.0, 0.0]
    assert math.isnan(h["success_rate"].iloc[1]) and math.isnan(h["latency_p99"].iloc[1])


# ---- time to recover ----------------------------------------------------------------------------


def test_recovery_at_the_known_time_after_the_fault():
    # The fault (cart, 20-30 s) leaves the system failing until 37 s: 7 s to recover.
    row = run_of(failing=lambda t: 20 <= t < 37).cascade().loc["errors cart"]
    assert (row["start"], row["end"]) == (20.0, 30.0)
    assert row["recovered_at"] == 37.0
    assert row["time_to_recover"] == 7.0


def test_recovery_of_latency_alone():
    # Requests sent until 34 s take 1 s: the last slow answer comes just before 35 s, and
    # windows are judged on the answers they saw.
    row = run_of(slow=lambda t: 20 <= t < 34).cascade().loc["errors cart"]
    assert row["time_to_recover"] == 5.0


def test_a_fault_that_left_no_trace_recovers_at_once():
    row = run_of().cascade().loc["errors cart"]
    assert (row["recovered_at"], row["time_to_recover"]) == (30.0, 0.0)


def test_a_system_that_stays_degraded_never_recovers():
    # Metastable: still failing at the end, though one second in the middle looked fine.
    r = run_of(failing=lambda t: t >= 20 and not 45 <= t < 46)
    row = r.cascade().loc["errors cart"]
    assert row["time_to_recover"] == cm.NEVER == math.inf
    assert row["recovered_at"] == math.inf
    assert r.cascade(hold=10.0).loc["errors cart", "time_to_recover"] == math.inf


def test_one_noisy_second_does_not_decide():
    # Baseline: one failure in 1000. After 33 s a single second has 8 failures in 100: alone
    # it is significantly worse than the 1.1 % allowed, pooled over 5 s (8 in 500) it is not.
    noise = set(range(0, 6000, 1000)) | set(range(5205, 5285, 10))
    r = run_of(failing=lambda t: 20 <= t < 33 or round(t * 100) in noise)
    h = cm.health(r).set_index(["scope", "t"])
    assert h.loc[("end-to-end", 52.0), "success_rate"] == 0.92
    assert r.cascade().loc["errors cart", "time_to_recover"] == 3.0
    # Judged second by second, that second would delay the recovery to 53 s.
    assert r.cascade(window=1.0).loc["errors cart", "recovered_at"] == 53.0


def test_recovery_with_a_hold_time_and_a_run_too_short_to_judge():
    r = run_of(failing=lambda t: 20 <= t < 37 or 50 <= t < 52)
    # Healthy from 37 s, but a dip at 50 s: "to the end of the run" waits until it is over,
    # a hold of 5 s does not.
    assert r.cascade().loc["errors cart", "recovered_at"] == 52.0
    assert r.cascade(hold=5.0).loc["errors cart", "recovered_at"] == 37.0
    # A hold longer than what is left of the run: not seen through, never.
    assert r.cascade(hold=60.0).loc["errors cart", "time_to_recover"] == math.inf
    # A fault that lasts to the end leaves nothing to judge.
    late = SCENARIO.replace("end: 30s", "end: 58s")
    assert math.isnan(run_of(scenario=late).cascade().loc["errors cart", "time_to_recover"])


def test_recovery_rule_on_plain_arrays():
    t = np.arange(0.0, 30.0, 0.01)
    ok = (t < 10) | (t >= 14.0)
    lat = np.full(t.size, 0.01)
    kw = {"baseline": (1.0, 0.01), "fault_end": 12.0, "horizon": 30.0}
    assert cm.recovery(t, lat, ok, **kw) == 14.0
    assert cm.recovery(t, lat, ok, **kw, interval=0.5, window=2.0) == 14.0
    assert cm.recovery(t, lat, np.ones(t.size, bool), **kw) == 12.0
    assert math.isnan(cm.recovery(t, lat, ok, **{**kw, "baseline": (np.nan, np.nan)}))
    # Nothing answered after the fault: not healthy.
    assert cm.recovery(t[t < 12], lat[t < 12], ok[t < 12], **kw) == cm.NEVER


# ---- time to detect -----------------------------------------------------------------------------


def test_detection_is_the_first_reaction_at_or_after_the_fault_start():
    events = [
        (10.0, "ejection", "front-0", "cart", "cart-0", "consecutive_5xx"),  # before: ignored
        (20.0, "fault_started", "fault", "cart", "-", "errors"),  # not a reaction
        (21.0, "unejection", "front-0", "cart", "cart-0", "consecutive_5xx"),  # nor this
        (22.5, "ejection", "front-0", "cart", "cart-1", "consecutive_5xx"),
        (23.0, "pool_saturated", "front-0", "cart", "-", "pending"),
    ]
    row = run_of(events=events).cascade().loc["errors cart"]
    assert row["time_to_detect"] == 2.5
    assert row["detected_by"] == "ejection front-0->cart cart-1"
    late = [e for e in events if e[1] != "ejection"]
    row = run_of(events=late).cascade().loc["errors cart"]
    assert (row["time_to_detect"], row["detected_by"]) == (3.0, "pool_saturated front-0->cart")


def test_nothing_reacted_gives_nan():
    events = [(10.0, "breaker_open", "front-0", "cart", "-", "")]
    row = run_of(events=events).cascade().loc["errors cart"]
    assert math.isnan(row["time_to_detect"]) and pd.isna(row["detected_by"])


# ---- blast radius -------------------------------------------------------------------------------


def test_blast_radius_excludes_the_target_and_services_without_slo():
    # Everything fails during the fault; ads has no objective and is not judged.
    row = run_of(failing=lambda t: 20 <= t < 30).cascade().loc["errors cart"]
    assert row["slo_violated"] == "end-to-end,client:web,front,cart"
    assert row["blast_radius"] == "end-to-end,client:web,front"


def test_blast_radius_judges_the_fault_window_only():
    # Slow (1 s > the 100 ms p99 objective) but successful answers: only the latency
    # objectives of end-to-end and front are missed; a failure outside the window is not seen.
    row = run_of(slow=lambda t: 20 <= t < 30, failing=lambda t: 40 <= t < 50).cascade()
    assert row.loc["errors cart", "slo_violated"] == "end-to-end,front"
    assert row.loc["errors cart", "blast_radius"] == "end-to-end,front"
    clean = run_of(failing=lambda t: 40 <= t < 50).cascade().loc["errors cart"]
    assert (clean["slo_violated"], clean["blast_radius"]) == ("", "")


def test_cascade_of_a_scenario_without_faults_is_empty():
    plain = SCENARIO.split("faults:")[0]
    frame = run_of(scenario=plain).cascade()
    assert frame.empty and list(frame.columns) == list(cm.CASCADE_COLUMNS)


# ---- summary: amplification and slo_met ---------------------------------------------------------


def test_summary_judges_each_scope_against_its_objective():
    s = run_of(failing=lambda t: 20 <= t < 30).summary()
    assert list(s.columns[-2:]) == ["amplification", "slo_met"]
    assert s["slo_met"].to_dict() == {"end-to-end": False, "client:web": False,
                                      "front": False, "cart": False, "ads": s.loc["ads",
                                                                                  "slo_met"]}
    assert pd.isna(s.loc["ads", "slo_met"])
    assert run_of().summary()["slo_met"].iloc[:4].tolist() == [True, True, True, True]


def test_slo_met_rules():
    figures = {"success_rate": 0.999, "latency_p99": 0.3}
    assert metrics.slo_met(figures, {"success_rate": 0.999, "latency_p99": 0.3}) is True
    assert metrics.slo_met(figures, {"latency_p99": 0.299}) is False
    assert metrics.slo_met(figures, {"success_rate": 0.9995}) is False
    assert math.isnan(metrics.slo_met(figures, None))
    assert math.isnan(metrics.slo_met({"success_rate": np.nan}, {"success_rate": 0.9}))


def test_retry_amplification_counts_retries_of_the_requests_after_warm_up():
    def hop(req, span, parent, src, dst, attempt, t, status=200, shadow=False):
        return (req, span, parent, "web", src, dst, f"{dst}-0", attempt, t, t + 0.1, status,
                shadow)

    rows = [
        # Before the warm-up (5 s): not counted, though its retry comes after it.
        hop(0, 1, 0, "client", "front", 1, 4.9), hop(0, 2, 1, "front", "cart", 1, 4.95, 503),
        hop(0, 3, 1, "front", "cart", 2, 5.1),
        # Two tries of cart, one of ads, and a mirror of cart (not a retry).
        hop(1, 4, 0, "client", "front", 1, 6.0), hop(1, 5, 4, "front", "cart", 1, 6.0, 503),
        hop(1, 6, 4, "front", "cart", 2, 6.1), hop(1, 7, 4, "front", "ads", 1, 6.2),
        hop(1, 8, 4, "front", "cart", 1, 6.0, shadow=True),
        # Three tries of cart, the last still in flight at the end.
        hop(2, 9, 0, "client", "front", 1, 7.0), hop(2, 10, 9, "front", "cart", 1, 7.0, 503),
        hop(2, 11, 9, "front", "cart", 2, 7.1, 503),
    ]
    in_flight = [(2, 12, 9, "web", "front", "cart", "cart-0", 3, 7.2, np.nan, 0)]
    r = result_of(rows, 10.0, in_flight=in_flight)
    amp = cm.retry_amplification(r)
    assert list(amp.columns) == list(metrics.AMPLIFICATION_COLUMNS)
    assert amp.loc["cart"].tolist() == [2, 2, 5, 2.5, 2.5]
    assert amp.loc["ads"].tolist() == [2, 1, 1, 1.0, 0.5]
    # 2 end-user requests, 8 hops of which 5 first tries; the client never retries.
    assert amp.loc["end-to-end"].tolist() == [2, 5, 8, 1.0, 4.0]
    assert amp.loc["client:web"].tolist() == amp.loc["end-to-end"].tolist()
    s = r.summary()
    assert s.loc["cart", "amplification"] == 2.5
    assert s.loc["end-to-end", "amplification"] == 4.0


# ---- retry amplification in a simulated chain ---------------------------------------------------

CHAIN = """
name: chain
duration: 30s
warmup: 2s
workload:
  - client: users
    entry: a
    arrival: {{kind: poisson, rate: 200/s}}
services:
  a: {{replicas: 2, workers: 64, latency: 1ms, errors: {{rate: {p}, status: 503}},
      calls: [{{to: b, optional: true}}]}}
  b: {{replicas: 2, workers: 64, latency: 1ms, errors: {{rate: {p}, status: 503}},
      calls: [{{to: c, optional: true}}]}}
  c: {{replicas: 2, workers: 64, latency: 1ms, errors: {{rate: {p}, status: 503}}}}
mesh:
  ingressGateway:
    virtualServices:
      a: {{http: [{{retries: {{attempts: {n}, retryOn: 5xx}}}}]}}
  virtualServices:
    b: {{http: [{{retries: {{attempts: {n}, retryOn: 5xx}}}}]}}
    c: {{http: [{{retries: {{attempts: {n}, retryOn: 5xx}}}}]}}
"""

Z_999 = 3.2905  # two-sided 99.9 % normal quantile


def tries_law(p: float, n: int) -> tuple[float, float]:
    """Mean and variance of the tries of one call: a geometric number of tries (failure
    probability ``p``) truncated at ``n + 1``."""
    k = np.arange(1, n + 2)
    pmf = np.where(k <= n, p ** (k - 1) * (1 - p), p**n)
    mean = float((k * pmf).sum())
    return mean, float((k**2 * pmf).sum() - mean**2)


@pytest.mark.parametrize(("p", "n", "seed"), [(0.3, 2, 11), (0.5, 3, 12)])
def test_per_hop_amplification_is_the_truncated_geometric_mean(p, n, seed):
    r = meshsim.run(meshsim.loads_scenario(CHAIN.format(p=p, n=n)), seed=seed)
    amp = cm.retry_amplification(r)
    mean, var = tries_law(p, n)
    assert mean == pytest.approx((1 - p ** (n + 1)) / (1 - p))
    for hop in ("a", "b", "c"):
        calls = amp.loc[hop, "calls"]
        half = Z_999 * math.sqrt(var / calls)
        assert abs(amp.loc[hop, "per_hop"] - mean) <= half, (
            f"{hop}: {amp.loc[hop, 'per_hop']:.4f} outside {mean:.4f} ± {half:.4f} "
            f"({calls} calls)")
    # The hop to a is the entry hop: end to end reports its figure.
    assert amp.loc["end-to-end", "per_hop"] == amp.loc["a", "per_hop"]
    assert r.summary().loc["b", "amplification"] == amp.loc["b", "per_hop"]


def test_per_request_amplification_compounds_down_the_chain():
    p, n = 0.3, 2
    r = meshsim.run(meshsim.loads_scenario(CHAIN.format(p=p, n=n)), seed=5)
    amp = cm.retry_amplification(r)
    tries = (1 - p ** (n + 1)) / (1 - p)
    reach = 1 - p ** (n + 1)  # a call succeeds once in the end, and only then calls on
    expected = {"a": tries, "b": reach * tries, "c": reach**2 * tries}
    # The CI of a per-request mean from the per-request counts themselves (zeros included).
    both = pd.concat([r.requests, r.in_flight], ignore_index=True)
    counted = both[(both["parent_span_id"] == 0) & (both["t_start"] >= 2.0)]["request_id"]
    for hop, want in expected.items():
        hits = both[both["destination"] == hop].groupby("request_id").size()
        per_request = hits.reindex(counted, fill_value=0).to_numpy()
        assert amp.loc[hop, "per_request"] == pytest.approx(per_request.mean())
        half = Z_999 * per_request.std(ddof=1) / math.sqrt(len(per_request))
        assert abs(per_request.mean() - want) <= half, (hop, per_request.mean(), want, half)
    total = 1 + sum(expected.values())  # the client's own hop to the gateway, then a, b, c
    assert amp.loc["end-to-end", "per_request"] == pytest.approx(total, rel=0.02)
