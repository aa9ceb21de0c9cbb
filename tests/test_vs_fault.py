"""Istio fault injection (``virtualServices.<host>.http[].fault``) in a run.

The fault filter sits on the caller's proxy, ahead of the router (``../shared/envoy-semantics.md``
§7): an abort is a local reply (``FI``, no host, no retry, nothing for outlier detection or the
pool); a delay (``DI``) holds the request before the router, whose route and per-try timers start
after it, while the caller's own timeouts run during it. The filter itself is unit-tested in
``tests/policies``; these tests check what the engine makes of it.
"""

from __future__ import annotations

import math

import pytest

import meshsim
from meshsim.errors import ScenarioError
from meshsim.export import istio_manifests
from meshsim.scenario import loads_scenario

BASE = """
duration: 20s
seed: 7
workload:
  - {client: users, entry: front, arrival: {rate: 50/s}}
services:
  front: {latency: 1ms, workers: 1000, calls: [{to: back}]}
  back: {replicas: 2, workers: 1000, latency: 10ms}
mesh:
  sidecar: {hopOverhead: 0ms}
  destinationRules:
    back:
      trafficPolicy:
        outlierDetection: {consecutive5xxErrors: 1, maxEjectionPercent: 100, interval: 1s}
"""


def scenario(routes: str, extra: str = "", base: str = BASE) -> meshsim.Scenario:
    """``BASE`` with ``routes`` as ``mesh.virtualServices`` (YAML, indented 4) and ``extra``."""
    return loads_scenario(base + "  virtualServices:\n" + routes + extra, "fault.yaml")


def hop(result: meshsim.Result, source: str, dest: str):
    q = result.requests
    return q[(q["source"] == source) & (q["destination"] == dest)]


def stat(result: meshsim.Result, proxy: str, cluster: str, name: str) -> int:
    s = result.stats
    row = s[(s["proxy"] == proxy) & (s["cluster"] == cluster) & (s["stat"] == name)]
    return int(row["value"].sum())


# --------------------------------------------------------------------------------------------
# Aborts
# --------------------------------------------------------------------------------------------

ABORT_ALL = """\
    back:
      http:
        - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
          retries: {attempts: 3, retryOn: 5xx}
"""


def test_an_abort_is_a_local_reply_never_retried_nor_seen_upstream():
    result = meshsim.run(scenario(ABORT_ALL))
    calls = hop(result, "front", "back")
    assert len(calls) > 900
    assert (calls["status"] == 503).all()
    assert (calls["flags"] == "FI").all()
    assert (calls["host"] == "-").all()
    assert (calls["attempt"] == 1).all()  # no retry despite retryOn 5xx
    assert (calls["t_end"] == calls["t_start"]).all()
    assert calls["t_arrive"].isna().all()
    # Every call is one row (no retry row), and the callee never sees a request.
    assert calls["parent_span_id"].is_unique
    assert len(hop(result, "back", "-")) == 0
    assert not result.requests["host"].astype(str).str.startswith("back").any()
    # Nothing for the pool, the router's retries or outlier detection.
    assert stat(result, "front-0", "back", "fault.aborts_injected") == len(calls)
    assert stat(result, "front-0", "back", "fault.delays_injected") == 0
    assert stat(result, "front-0", "back", "upstream_rq_total") == 0
    assert stat(result, "front-0", "back", "upstream_rq_retry") == 0
    assert stat(result, "front-0", "back", "outlier_detection.ejections_enforced_total") == 0
    assert len(result.events) == 0
    # The front answers its own error status for each aborted call.
    fronts = hop(result, "ingress", "front")
    assert (fronts["status"] == 500).all()


def test_abort_share_is_binomial():
    p = 0.2
    routes = """\
    back:
      http:
        - fault: {abort: {httpStatus: 500, percentage: {value: 20}}}
"""
    result = meshsim.run(scenario(routes).with_overrides({"duration": "200s"}))
    calls = hop(result, "front", "back")
    n = calls["parent_span_id"].nunique()  # calls (no retry: Istio's default skips 500)
    aborted = int((calls["flags"] == "FI").sum())
    z = 3.2905  # two-sided 99.9 %
    half = z * math.sqrt(n * p * (1 - p))
    assert n * p - half <= aborted <= n * p + half, (aborted, n)
    assert stat(result, "front-0", "back", "fault.aborts_injected") == aborted
    assert (calls.loc[calls["flags"] == "FI", "status"] == 500).all()
    assert (calls.loc[calls["flags"] == "-", "status"] == 200).all()


def test_no_percentage_faults_no_request():
    routes = """\
    back:
      http:
        - fault: {abort: {httpStatus: 503}, delay: {fixedDelay: 1s}}
"""
    result = meshsim.run(scenario(routes).with_overrides({"duration": "5s"}))
    calls = hop(result, "front", "back")
    assert (calls["flags"] == "-").all() and (calls["status"] == 200).all()
    assert stat(result, "front-0", "back", "fault.aborts_injected") == 0
    assert stat(result, "front-0", "back", "fault.delays_injected") == 0


def test_same_seed_same_faults():
    routes = """\
    back:
      http:
        - fault:
            abort: {httpStatus: 503, percentage: {value: 30}}
            delay: {fixedDelay: 50ms, percentage: {value: 30}}
"""
    sc = scenario(routes).with_overrides({"duration": "10s"})
    first, second = meshsim.run(sc), meshsim.run(sc)
    assert first.requests.equals(second.requests)
    other = meshsim.run(sc, seed=8)
    assert not other.requests["flags"].equals(first.requests["flags"])


# --------------------------------------------------------------------------------------------
# Delays
# --------------------------------------------------------------------------------------------

DELAY_PAST_TIMEOUT = """\
    back:
      http:
        - fault: {delay: {fixedDelay: 2s, percentage: {value: 100}}}
          timeout: 1s
"""


def test_the_route_timeout_does_not_run_during_the_delay():
    result = meshsim.run(scenario(DELAY_PAST_TIMEOUT).with_overrides({"duration": "10s"}))
    calls = hop(result, "front", "back")
    assert len(calls) > 300
    assert (calls["status"] == 200).all()
    assert (calls["flags"] == "DI").all()
    assert (calls["attempt"] == 1).all()
    fronts = hop(result, "ingress", "front").set_index("span_id")
    # The attempt leaves after the delay: front's call starts when its 1 ms of work is done.
    waited = calls["t_start"].to_numpy() - fronts.loc[calls["parent_span_id"], "t_begin"].to_numpy()
    assert waited == pytest.approx(2.001, abs=1e-6)
    # End to end: 2 s of delay plus the work (1 ms + 10 ms) and six network legs (0.1 ms).
    e2e = result.end_to_end()
    assert (e2e["status"] == 200).all()
    assert (e2e["t_end"] - e2e["t_start"]).to_numpy() == pytest.approx(2.0116, abs=1e-6)
    # Injected delays also count the calls still held or on their way at the end.
    assert stat(result, "front-0", "back", "fault.delays_injected") >= len(calls)
    assert stat(result, "front-0", "back", "upstream_rq_timeout") == 0


def test_the_callers_own_timeout_runs_during_the_delay():
    gateway = """\
  ingressGateway:
    virtualServices:
      front: {http: [{timeout: 1500ms}]}
"""
    sc = loads_scenario(BASE.replace("mesh:\n", "mesh:\n" + gateway) + "  virtualServices:\n"
                        + DELAY_PAST_TIMEOUT, "fault.yaml").with_overrides({"duration": "10s"})
    result = meshsim.run(sc)
    e2e = result.end_to_end()
    done = e2e[e2e["t_start"] < 8.0]
    assert (done["status"] == 504).all() and (done["flags"] == "UT").all()
    # 1.5 s of the gateway's route timeout, and the two network legs to the client.
    assert (done["t_end"] - done["t_start"]).to_numpy() == pytest.approx(1.5002, abs=1e-9)
    # Downstream, the delayed calls still go through (the callee is not told).
    calls = hop(result, "front", "back")
    assert (calls["status"] == 200).all() and (calls["flags"] == "DI").all()


def test_a_delay_with_per_try_timeouts():
    routes = """\
    back:
      http:
        - fault: {delay: {fixedDelay: 1s, percentage: {value: 100}}}
          timeout: 1s
          retries: {attempts: 2, perTryTimeout: 50ms, retryOn: 5xx}
"""
    # A slow callee, and no ejection (its timeouts would eject every pod).
    slow = BASE.replace("latency: 10ms", "latency: 200ms").replace(
        "consecutive5xxErrors: 1", "consecutive5xxErrors: 0")
    result = meshsim.run(scenario(routes, base=slow).with_overrides({"duration": "5s"}))
    calls = hop(result, "front", "back")
    final = calls[calls["attempt"] == 3]
    assert len(final) > 100
    # The verdict carries DI first, as Envoy prints flags in the order they were set.
    assert (final["flags"] == "DI,URX,UT").all() and (final["status"] == 504).all()
    assert set(calls.loc[calls["attempt"] < 3, "flags"]) == {"UT"}
    # The tries run after the delay, each cut at 50 ms; the route timer (1 s from the end of
    # the delay) never fires, although the delay alone is as long as the route timeout.
    first = calls[calls["attempt"] == 1].set_index("parent_span_id")
    last = final.set_index("parent_span_id")
    last = last[last.index.isin(first.index)]
    took = last["t_end"] - first.loc[last.index, "t_start"]
    assert ((took > 0.15) & (took < 0.5)).all()
    fronts = hop(result, "ingress", "front").set_index("span_id")
    answered = first[first.index.isin(fronts.index)]  # the front's rows are written at the end
    waited = answered["t_start"].to_numpy() - fronts.loc[answered.index, "t_begin"].to_numpy()
    assert waited == pytest.approx(1.001, abs=1e-6)
    assert stat(result, "front-0", "back", "upstream_rq_per_try_timeout") >= 3 * len(final)
    assert stat(result, "front-0", "back", "upstream_rq_timeout") == 0


def test_delay_then_abort():
    routes = """\
    back:
      http:
        - fault:
            delay: {fixedDelay: 300ms, percentage: {value: 100}}
            abort: {httpStatus: 429, percentage: {value: 100}}
"""
    result = meshsim.run(scenario(routes).with_overrides({"duration": "5s"}))
    calls = hop(result, "front", "back")
    done = calls[calls["t_start"] < 4.5]
    assert (done["flags"] == "DI,FI").all() and (done["status"] == 429).all()
    assert (done["host"] == "-").all() and (done["attempt"] == 1).all()
    assert (done["t_end"] - done["t_start"]).to_numpy() == pytest.approx(0.3, abs=1e-9)
    assert stat(result, "front-0", "back", "fault.delays_injected") >= len(calls)
    assert stat(result, "front-0", "back", "fault.aborts_injected") >= len(calls)
    assert stat(result, "front-0", "back", "upstream_rq_total") == 0


def test_a_delayed_call_still_waiting_is_in_flight():
    routes = """\
    back:
      http:
        - fault: {delay: {fixedDelay: 10s, percentage: {value: 100}}}
"""
    result = meshsim.run(scenario(routes).with_overrides({"duration": "2s"}))
    assert len(hop(result, "front", "back")) == 0
    assert len(result.in_flight) > 0
    assert stat(result, "front-0", "back", "fault.active_faults") == len(
        result.in_flight[result.in_flight["destination"] == "front"])


# --------------------------------------------------------------------------------------------
# A VirtualService bound to a gateway
# --------------------------------------------------------------------------------------------


def test_a_fault_at_the_ingress_gateway():
    gateway = """\
  ingressGateway:
    replicas: 1
    virtualServices:
      front:
        http:
          - fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
            retries: {attempts: 2, retryOn: 5xx}
"""
    sc = loads_scenario(BASE.replace("mesh:\n", "mesh:\n" + gateway), "fault.yaml")
    result = meshsim.run(sc.with_overrides({"duration": "5s"}))
    e2e = result.end_to_end()
    # The client has no proxy: its row is the gateway's own log line, with the gateway's flags.
    assert (e2e["status"] == 503).all() and (e2e["flags"] == "FI").all()
    routed = hop(result, "ingress", "front")
    assert (routed["host"] == "-").all() and (routed["flags"] == "FI").all()
    assert len(hop(result, "front", "back")) == 0
    assert stat(result, "ingress-0", "front", "fault.aborts_injected") == len(e2e)
    # The mesh's sidecars apply the mesh's routes, which have no fault.
    assert not result.stats["stat"].str.startswith("fault.").any() or set(
        result.stats.loc[result.stats["stat"].str.startswith("fault."), "proxy"]) == {"ingress-0"}


# --------------------------------------------------------------------------------------------
# Export and validation
# --------------------------------------------------------------------------------------------


def test_the_export_carries_the_fault():
    routes = """\
    back:
      http:
        - fault:
            delay: {fixedDelay: 1500ms, percentage: {value: 0.5}}
            abort: {httpStatus: 503, percentage: {value: 12.5}}
          timeout: 1s
"""
    manifests = istio_manifests(scenario(routes))
    vs = next(m for m in manifests if m["kind"] == "VirtualService"
              and m["spec"]["hosts"][0].startswith("back"))
    assert vs["spec"]["http"][0]["fault"] == {
        "delay": {"fixedDelay": "1500ms", "percentage": {"value": 0.5}},
        "abort": {"httpStatus": 503, "percentage": {"value": 12.5}},
    }


@pytest.mark.parametrize(("fault", "line", "path", "message"), [
    ("{abort: {httpStatus: 503, percentage: {value: 120}}}", 18,
     "fault.abort.percentage.value", "must be <= 100"),
    ("{abort: {httpStatus: 503, grpcStatus: UNAVAILABLE, percentage: {value: 5}}}", 18,
     "fault.abort", "httpStatus and grpcStatus are exclusive"),
    ("{abort: {percentage: {value: 5}}}", 18, "fault.abort", "needs httpStatus"),
    ("{abort: {httpStatus: 600}}", 18, "fault.abort.httpStatus", "must be <= 599"),
    ("{abort: {grpcStatus: UNAVAILABLE}}", 18, "fault.abort", "grpcStatus is not simulated"),
    ("{abort: {grpcStatus: NOPE}}", 18, "fault.abort.grpcStatus", "unknown value 'NOPE'"),
    ("{delay: {fixedDelay: 1500us, percentage: {value: 5}}}", 18, "fault.delay.fixedDelay",
     "whole milliseconds"),
    ("{delay: {percentage: {value: 5}}}", 18, "fault.delay.fixedDelay", "required"),
    ("{delay: {fixedDelay: 1s, percent: 101}}", 18, "fault.delay.percent", "<= 100"),
    ("{}", 18, "fault", "must have a delay and/or an abort"),
])
def test_invalid_faults_name_file_line_and_field(fault, line, path, message):
    routes = f"    back:\n      http:\n        - fault: {fault}\n"
    with pytest.raises(ScenarioError) as info:
        scenario(routes)
    prefix = f"fault.yaml:{line}: mesh.virtualServices.back.http[0].{path}: "
    lines = info.value.lines()
    assert any(ln.startswith(prefix) and message in ln for ln in lines), lines
