"""The fault schedule (``faults:``): every kind of fault has its effect asserted on a run.

The chain is ``client -> ingress -> front (2 pods) -> back (3 pods)``, 200 requests/s, with
fixed seeds. Statistical checks use 99.9 % intervals (binomial or Poisson, normal
approximation: z = 3.29) around the value the settings give.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import meshsim

Z = 3.29  # two-sided 99.9 %

BASE = """
name: faults
duration: 60s
seed: 3
workload:
  - {client: web, entry: front, arrival: {rate: 200/s}}
services:
  front:
    replicas: 2
    workers: 20
    latency: 2ms
    calls: [{to: back}]
  back:
    replicas: 3
    workers: 4
    latency: {kind: exponential, mean: 5ms}
"""
ROUND_ROBIN = """
mesh:
  destinationRules:
    back: {trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
"""
START, END = 20.0, 40.0


def run(extra: str = "", seed: int = 3, base: str = BASE + ROUND_ROBIN) -> meshsim.Result:
    return meshsim.run(meshsim.loads_scenario(base + extra), seed=seed)


def _ok(frame) -> np.ndarray:
    s = frame["status"].to_numpy()
    return (s >= 200) & (s < 400)


def _window(frame, start=START, end=END, col="t_start"):
    return frame[(frame[col] >= start) & (frame[col] < end)]


def _end_to_end(result):
    rq = result.requests
    return rq[rq["parent_span_id"] == 0]


def _hop(result, dest):
    rq = result.requests
    return rq[rq["destination"] == dest]


def _within(observed: float, expected: float, sd: float) -> None:
    assert abs(observed - expected) <= Z * sd, (observed, expected, sd)


# --- the schedule ---------------------------------------------------------------------------


def test_fault_edges_are_events():
    r = run(f"faults: [{{kind: crash, target: back, pods: [back-1], start: {START}s, "
            f"end: {END}s, name: back-1 dies}}]")
    ev = r.events[r.events["source"] == "fault"]
    assert ev[["t", "kind", "destination", "host", "detail"]].values.tolist() == [
        [START, "fault_started", "back", "back-1", "back-1 dies"],
        [END, "fault_ended", "back", "back-1", "back-1 dies"],
    ]


def test_a_fault_changes_nothing_before_it_starts():
    """Common random numbers: a fault draws from streams of its own, so the run is the same
    as the run without it until the fault starts."""
    plain = run()
    faulty = run(f"faults: [{{kind: errors, target: back, rate: 50%, start: {START}s}}]")
    before = [r.requests[r.requests["t_end"] < START].reset_index(drop=True)
              for r in (plain, faulty)]
    assert len(before[0]) > 10_000
    assert before[0].equals(before[1])


def test_same_seed_same_results_with_every_kind_of_fault():
    extra = """faults:
  - {kind: crash, target: back, pods: 1, start: 5s, end: 10s}
  - {kind: hang, target: back, pods: [back-2], start: 12s, end: 14s}
  - {kind: slow, target: back, factor: 2, add: {kind: exponential, mean: 1ms}, start: 15s}
  - {kind: errors, target: front, rate: 5%, start: 16s, end: 30s}
  - {kind: network, destination: back, jitter: 5ms, loss: 2%, start: 18s, end: 25s}
  - {kind: loadSpike, factor: 1.5, start: 20s, end: 22s}
"""
    a, b = run(extra), run(extra)
    assert a.requests.equals(b.requests)
    assert a.events.equals(b.events)


# --- crash ----------------------------------------------------------------------------------

CRASH = f"faults: [{{kind: crash, target: back, pods: [back-1], start: {START}s, end: {END}s}}]"


def test_a_crashed_pod_refuses_connections_and_istio_retries_them_elsewhere():
    # Crash back-1 half-way through the longest piece of work it starts in the second before
    # START: the runs with and without the fault are the same until then, so the plain run
    # tells what back-1 holds when it dies.
    plain = _hop(run(), "back")
    mine = plain[(plain["host"] == "back-1") & plain["t_begin"].between(START - 1, START)]
    longest = mine.loc[(mine["t_reply"] - mine["t_begin"]).idxmax()]
    crash_at = float(longest["t_begin"] + longest["t_reply"]) / 2
    r = run(CRASH.replace(f"start: {START}s", f"start: {crash_at!r}s"))
    back = _hop(r, "back")
    refused = back[back["flags"] == "UF"]
    assert len(refused) > 1000
    assert set(refused["host"]) == {"back-1"}
    assert refused["t_start"].min() >= crash_at and refused["t_end"].max() < END + 0.01
    assert refused["t_arrive"].isna().all()  # never reached the pod
    # Istio's default retry policy retries connect failures, on another pod (previous_hosts):
    # every end-user request still succeeds, except those the crash caught inside the pod.
    e2e = _end_to_end(r)
    # What back-1 held at the crash is reset: 503 UC.
    held = plain[(plain["host"] == "back-1") & (plain["t_arrive"] < crash_at)
                 & (plain["t_reply"] > crash_at)]
    terminated = back[back["flags"] == "UC"]
    assert longest["span_id"] in set(held["span_id"])
    assert sorted(terminated["span_id"]) == sorted(held["span_id"])
    assert (terminated["t_reply"] == crash_at).all()
    assert (~_ok(e2e)).sum() == len(terminated)  # a reset is not retried by Istio's default
    # The restarted pod serves again.
    after = back[(back["host"] == "back-1") & (back["t_start"] >= END)]
    assert len(after) > 1000 and _ok(after).all()


def test_without_retries_a_crashed_pod_fails_its_share_of_calls():
    r = run(CRASH + """
mesh:
  destinationRules:
    back: {trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}
  virtualServices:
    back: {http: [{retries: {attempts: 0}}]}
""", base=BASE)
    e2e = _window(_end_to_end(r))
    failed = (~_ok(e2e)).mean()
    # Round robin over 3 pods: a third of the calls go to the crashed one.
    _within(failed, 1 / 3, math.sqrt(1 / 3 * 2 / 3 / len(e2e)) + 0.01)
    assert set(_window(_hop(r, "back"))["flags"].astype(str)) >= {"UF"}


def test_with_outlier_detection_a_crashed_pod_is_ejected():
    r = run(CRASH + """
mesh:
  destinationRules:
    back:
      trafficPolicy:
        loadBalancer: {simple: ROUND_ROBIN}
        outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s,
                           maxEjectionPercent: 50}
""", base=BASE)
    ej = r.events[(r.events["kind"] == "ejection") & (r.events["host"] == "back-1")]
    assert set(ej["source"]) == {"front-0", "front-1"}  # each caller's proxy ejects it
    # 5 connect failures in a row per front proxy: at 100 calls/s each, a third to back-1,
    # that takes well under a second.
    assert (ej["t"] - START).between(0, 1.0).all()
    refused = _hop(r, "back")["flags"] == "UF"
    assert refused.sum() <= 2 * 5 + 2  # the 5 failures per proxy (and what was under way)


# --- hang -------------------------------------------------------------------------------------

# The ingress gateway's own route gives up after 1 s (a mesh-wide VirtualService does not
# apply at a gateway).
GATEWAY_TIMEOUT = """
  ingressGateway:
    virtualServices:
      front: {http: [{timeout: 1s}]}
"""
HANG_BASE = BASE + "mesh:" + GATEWAY_TIMEOUT
HANG = f"faults: [{{kind: hang, target: back, pods: [back-1], start: {START}s, end: {END}s}}]"


def test_a_hung_pod_without_timeouts_exhausts_the_callers_workers():
    """The ingress gateway gives up after 1 s; front's calls to back have no timeout, so the
    workers that called the hung pod stay held, front's queue grows, and end-user requests
    time out at the gateway."""
    r = run(HANG, base=HANG_BASE)
    e2e = _end_to_end(r)
    before = _window(e2e, 5, START)
    late = _window(e2e, START + 5, END)
    assert _ok(before).all()
    assert _ok(late).mean() < 0.05
    assert (late["status"] == 504).mean() > 0.95
    front = r.timeseries[r.timeseries["service"] == "front"].set_index("t")
    assert front.loc[START + 5:END - 1, "busy_workers"].min() == pytest.approx(40, abs=0.5)
    # When the hang is over the held work completes and the system recovers.
    assert _ok(_window(e2e, END + 5, 60)).mean() > 0.99


def test_a_hung_pod_with_a_per_try_timeout_and_outlier_detection_is_routed_around():
    """perTryTimeout 100 ms, 2 retries (on 5xx) and ejection after 5 consecutive failures: a
    timed-out try counts as a 504 for outlier detection (local origin), so each front proxy
    ejects the hung pod after its 5th timed-out try to it.

    Bound: with least-request (two random choices), a host with more requests outstanding is
    picked only when both choices are it, 1/9 of the time; each front proxy sends 100
    calls/s, so the 5th call to the hung pod comes before a Gamma(5, 100/9 per s) time (its
    99.99 % quantile), and its timeout 100 ms later. After that no request fails and none
    waits for the hung pod.
    """
    rule = """
  destinationRules:
    back:
      trafficPolicy:
        outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 60s,
                           maxEjectionPercent: 50}
  virtualServices:
    back: {http: [{retries: {attempts: 2, perTryTimeout: 100ms, retryOn: 5xx}}]}
"""
    base = BASE + "mesh:" + rule + GATEWAY_TIMEOUT
    r = run(HANG, base=base)
    bound = stats.gamma.ppf(0.9999, 5, scale=9 / 100) + 0.1
    ej = r.events[(r.events["kind"] == "ejection") & (r.events["host"] == "back-1")]
    assert set(ej["source"]) == {"front-0", "front-1"}
    assert (ej["t"] - START).max() <= bound
    e2e = _end_to_end(r)
    assert _ok(e2e).all()  # every timed-out try was retried on another pod
    settled = _window(e2e, START + bound, END)
    lat = settled["t_end"] - settled["t_start"]
    assert lat.max() < 0.1  # nothing waits for a per-try timeout any more


def test_requests_held_by_a_pod_hung_to_the_end_are_in_flight():
    r = run("faults: [{kind: hang, target: back, pods: [back-0], start: 50s}]")
    held = r.in_flight[r.in_flight["host"] == "back-0"]
    # Round robin sends back-0 a third of the calls until every front worker (2 × 20) waits
    # for it: then front takes no more work.
    assert len(held) == 40
    assert (held["t_arrive"] >= 50).all()


# --- slow and errors --------------------------------------------------------------------------


def test_a_slow_pod_multiplies_its_service_time_and_adds_to_it():
    r = run(f"faults: [{{kind: slow, target: back, factor: 3, add: 10ms, start: {START}s, "
            f"end: {END}s}}]")
    back = _hop(r, "back")
    work = (back["t_reply"] - back["t_begin"]).to_numpy()
    inside = ((back["t_begin"] >= START) & (back["t_reply"] < END)).to_numpy()
    outside = ((back["t_begin"] < START - 1) | (back["t_begin"] > END + 1)).to_numpy()
    # Exponential(5 ms) × 3 + 10 ms: mean 25 ms, sd 15 ms; elsewhere mean 5 ms.
    n = inside.sum()
    _within(work[inside].mean(), 0.025, 0.015 / math.sqrt(n))
    assert work[inside].min() >= 0.010
    _within(work[outside].mean(), 0.005, 0.005 / math.sqrt(outside.sum()))


def test_an_error_burst_fails_its_share_of_requests_only_in_its_window():
    r = run(f"faults: [{{kind: errors, target: back, pods: 2, rate: 40%, status: 502, "
            f"start: {START}s, end: {END}s}}]")
    back = _hop(r, "back")
    hit = _window(back[back["host"].isin(["back-0", "back-1"])], col="t_begin")
    share = (hit["status"] == 502).mean()
    _within(share, 0.4, math.sqrt(0.4 * 0.6 / len(hit)))
    assert (_window(back[back["host"] == "back-2"], col="t_begin")["status"] == 200).all()
    assert (back[back["t_begin"] >= END]["status"] == 200).all()


# --- outages -------------------------------------------------------------------------------------

EXTERNAL = BASE.replace("calls: [{to: back}]", "calls: [{to: back}, {to: pay}]") + ROUND_ROBIN + """
externalServices:
  pay: {latency: 20ms}
"""


@pytest.mark.parametrize("mode, status, flags", [
    ("refuse", 503, "URX,UF"), ("errors", 503, "-"), ("hang", None, None)])
def test_an_external_outage(mode, status, flags):
    r = run(f"faults: [{{kind: outage, target: pay, mode: {mode}, start: {START}s, "
            f"end: {END}s}}]", base=EXTERNAL)
    pay = _hop(r, "pay")
    # Every attempt of the calls that started in the outage, but at its very end.
    calls = _window(pay[pay["attempt"] == 1], START, END - 0.5)["parent_span_id"]
    during = pay[pay["parent_span_id"].isin(calls)]
    e2e = _end_to_end(r)
    if mode == "hang":
        # A black hole: nothing comes back until the end of the window, then everything.
        assert len(during[during["t_end"] < END]) == 0
        assert _ok(_window(e2e, END + 2, 60)).all()
        return
    last = during[during["attempt"]
                  == during.groupby("parent_span_id")["attempt"].transform("max")]
    assert (last["status"] == status).all()
    assert set(last["flags"].astype(str)) == {flags}
    if mode == "refuse":
        # Istio's default policy retried each connect failure twice: 3 tries per call.
        assert during.groupby(["parent_span_id"])["attempt"].max().eq(3).all()
    assert _ok(_window(e2e, START + 0.5, END - 0.5)).sum() == 0
    assert _ok(_window(e2e, END + 0.5, 60)).all()


# --- network --------------------------------------------------------------------------------------


def test_network_delay_adds_to_both_legs_of_the_edge_only():
    r = run(f"faults: [{{kind: network, source: front, destination: back, delay: 50ms, "
            f"start: {START}s, end: {END}s}}]")
    back = _window(_hop(r, "back"), START + 1, END - 1)
    out_leg = back["t_arrive"] - back["t_start"]
    back_leg = back["t_end"] - back["t_reply"]
    assert out_leg.min() >= 0.050 and back_leg.min() >= 0.050
    front = _window(_hop(r, "front"), START + 1, END - 1)
    assert (front["t_arrive"] - front["t_start"]).max() < 0.010


def test_network_loss_costs_a_retransmission_timeout():
    r = run(f"faults: [{{kind: network, destination: back, loss: 10%, start: {START}s, "
            f"end: {END}s}}]")
    back = _window(_hop(r, "back"), START + 1, END - 1)
    slow_out = ((back["t_arrive"] - back["t_start"]) >= 0.2).to_numpy()
    _within(slow_out.mean(), 0.1, math.sqrt(0.1 * 0.9 / len(back)))
    # Two losses in a row: 200 ms + 400 ms.
    twice = ((back["t_arrive"] - back["t_start"]) >= 0.6).to_numpy()
    _within(twice.mean(), 0.01, math.sqrt(0.01 * 0.99 / len(back)))


# --- load spikes ---------------------------------------------------------------------------------


def test_a_load_spike_multiplies_an_open_loop_clients_rate():
    r = run(f"faults: [{{kind: loadSpike, client: web, factor: 3, start: {START}s, "
            f"end: {END}s}}]")
    e2e = _end_to_end(r).copy()
    inside = len(_window(e2e))
    expected = 200 * 3 * (END - START)
    _within(inside, expected, math.sqrt(expected))
    before = len(_window(e2e, 0, START))
    _within(before, 200 * START, math.sqrt(200 * START))


def test_a_load_spike_adds_users_to_a_closed_loop_client():
    base = BASE.replace("arrival: {rate: 200/s}",
                        "arrival: {kind: closed, users: 20, thinkTime: 100ms}") + ROUND_ROBIN
    r = run(f"faults: [{{kind: loadSpike, factor: 2, start: {START}s, end: {END}s}}]",
            base=base)
    e2e = _end_to_end(r)
    # Each user sends about once per (think time + ~10 ms answer): twice the users, twice the
    # requests; and back to 20 users afterwards.
    rate = lambda a, b: len(_window(e2e, a, b)) / (b - a)  # noqa: E731
    assert rate(START + 1, END) / rate(1, START) == pytest.approx(2.0, rel=0.05)
    assert rate(END + 2, 60) / rate(1, START) == pytest.approx(1.0, rel=0.05)


def test_a_crash_gives_the_same_run_in_every_process():
    """What a crashed pod held is reset in a fixed order, never in the order of memory
    addresses, which differ between processes (and so between workers of a sweep)."""
    code = (
        "import hashlib, meshsim, pandas as pd\n"
        "r = meshsim.run('scenarios/retry-storm.yaml', overrides={'duration': '12s',"
        " 'services.c.errors.rate': 1.0,"
        " 'faults': [{'kind': 'crash', 'target': 'c', 'start': '8s', 'duration': '3s'}]})\n"
        "print(hashlib.sha256(pd.util.hash_pandas_object(r.requests.astype(str))"
        ".values.tobytes()).hexdigest())\n"
    )
    root = Path(__file__).parent.parent
    digests = {subprocess.run([sys.executable, "-c", code], cwd=root, check=True,
                              capture_output=True, text=True).stdout
               for _ in range(3)}
    assert len(digests) == 1


def test_an_override_of_a_faults_duration_replaces_its_end():
    sc = meshsim.loads_scenario(BASE + ROUND_ROBIN + CRASH)
    assert sc.faults[0].end == END
    longer = sc.with_overrides({"faults[0].duration": "30s"})
    assert (longer.faults[0].start, longer.faults[0].end) == (START, START + 30)
    moved = sc.with_overrides({"faults[0].start": "10s"})
    assert (moved.faults[0].start, moved.faults[0].end) == (10.0, END)  # the end stays
