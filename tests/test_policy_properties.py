"""Invariants with the mesh's policies switched on, on small random scenarios (hypothesis).

The scenarios of ``test_properties`` get random Istio blocks on random hosts: connection pools
with small limits, outlier detection with short intervals, retry budgets, route and per-try
timeouts and retry policies, so that overflows, ejections, panics, retries and abandoned attempts
all happen. Whatever the mix, every request must end once or be in flight, every local reply
must look as Envoy's does, the counters must be consistent, and the run must be reproducible.
"""

from __future__ import annotations

import os

import pandas as pd
from conftest import assert_conserved, everything
from hypothesis import given, settings
from hypothesis import strategies as st
from test_properties import scenarios, seeds

import meshsim

#: MESHSIM_EXAMPLES=500 runs a deeper search locally; CI keeps the suite quick.
POLICIES = settings(max_examples=int(os.environ.get("MESHSIM_EXAMPLES", "25")), deadline=None)


@st.composite
def traffic_policies(draw: st.DrawFn) -> dict:
    tp: dict = {}
    if draw(st.booleans()):
        http = {"http2MaxRequests": draw(st.integers(1, 5)),
                "http1MaxPendingRequests": draw(st.integers(1, 3))}
        if draw(st.booleans()):
            http["maxRetries"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            http["maxRequestsPerConnection"] = draw(st.integers(1, 3))
        tp["connectionPool"] = {"http": http,
                                "tcp": {"maxConnections": draw(st.integers(1, 4))}}
    if draw(st.booleans()):
        tp["outlierDetection"] = {
            "consecutive5xxErrors": draw(st.integers(1, 5)),
            "interval": f"{draw(st.sampled_from([200, 500, 1000]))}ms",
            "baseEjectionTime": f"{draw(st.sampled_from([300, 1000]))}ms",
            "maxEjectionPercent": draw(st.sampled_from([10, 50, 100])),
            "minHealthPercent": draw(st.sampled_from([0, 50])),
        }
    if draw(st.booleans()):
        tp["retryBudget"] = {"percent": draw(st.sampled_from([10, 20, 50])),
                             "minRetryConcurrency": draw(st.integers(0, 3))}
    return tp


@st.composite
def routes(draw: st.DrawFn) -> dict:
    route: dict = {}
    if draw(st.booleans()):
        route["timeout"] = f"{draw(st.sampled_from([20, 100, 500]))}ms"
    retries = {"attempts": draw(st.integers(0, 3)),
               "retryOn": draw(st.sampled_from(["5xx", "gateway-error", "503",
                                                "connect-failure", "5xx,reset"]))}
    if draw(st.booleans()):
        retries["perTryTimeout"] = f"{draw(st.sampled_from([5, 30, 200]))}ms"
    route["retries"] = retries
    return {"http": [route]}


BREAKERS = st.sampled_from([
    {"kind": "consecutive", "failMax": 2, "resetTimeout": "200ms"},
    {"kind": "resilience4j", "slidingWindowSize": 5, "minimumNumberOfCalls": 3,
     "waitDurationInOpenState": "300ms", "permittedNumberOfCallsInHalfOpenState": 2,
     "whenOpen": {"fallback": {"status": 200, "latency": "1ms"}}},
    {"kind": "hystrix", "requestVolumeThreshold": 3, "sleepWindow": "200ms",
     "rollingStatsTime": "1s", "healthSnapshotInterval": "100ms", "whenOpen": {"status": 429}},
    {"kind": "polly", "failureRatio": 0.5, "minimumThroughput": 3, "samplingDuration": "1s",
     "breakDuration": "500ms"},
])


@st.composite
def sidecar_filters(draw: st.DrawFn, called: list[str]) -> dict:
    """The Envoy filters and inbound limits of one service's pods."""
    out: dict = {}
    if draw(st.booleans()):
        out["inboundConnectionPool"] = {
            "tcp": {"maxConnections": draw(st.integers(1, 4))},
            "http": {"http1MaxPendingRequests": draw(st.integers(1, 3))}}
    if draw(st.booleans()):
        n = draw(st.integers(1, 20))
        out["localRateLimit"] = {"stat_prefix": "inbound",
                                 "token_bucket": {"max_tokens": n, "tokens_per_fill": n,
                                                  "fill_interval": "1s"},
                                 "filter_enabled": {"default_value": {"numerator": 100}},
                                 "filter_enforced": {"default_value": {"numerator": 100}}}
    if draw(st.booleans()):
        out["adaptiveConcurrency"] = {"gradient_controller_config": {
            "concurrency_limit_params": {"concurrency_update_interval": "50ms"},
            "min_rtt_calc_params": {"interval": "1s", "request_count": 5, "min_concurrency": 1}}}
    if called and draw(st.booleans()):
        dest = draw(st.sampled_from(called))
        out["admissionControl"] = {dest: {"success_criteria": {}, "sampling_window": "1s",
                                          "sr_threshold": {"default_value": {"value": 90}}}}
    return out


@st.composite
def with_policies(draw: st.DrawFn) -> meshsim.Scenario:
    sc = draw(scenarios())
    hosts = list(sc.services) + list(sc.external_services)
    overrides: dict = {}
    for host in hosts:
        if draw(st.booleans()):
            overrides[f"mesh.destinationRules.{host}.trafficPolicy"] = draw(traffic_policies())
        if draw(st.booleans()):
            overrides[f"mesh.virtualServices.{host}"] = draw(routes())
    for cl in sc.workload:
        if cl.via_ingress and draw(st.booleans()):
            overrides[f"mesh.ingressGateway.virtualServices.{cl.entry}"] = draw(routes())
    for name, svc in sc.services.items():
        called = sorted({c.to for step in svc.calls
                         for c in ([step] if hasattr(step, "to") else step.parallel)})
        if called and draw(st.booleans()):
            dest = draw(st.sampled_from(called))
            overrides[f"services.{name}.breakers"] = {dest: draw(BREAKERS)}
        if draw(st.booleans()):
            filters = draw(sidecar_filters(called))
            if filters:
                overrides[f"mesh.sidecars.{name}"] = filters
    if draw(st.booleans()):
        # Connections take time, and sometimes longer than a connect timeout.
        overrides["mesh.sidecar.connectTime"] = draw(st.sampled_from(
            ["1ms", {"kind": "exponential", "mean": "20ms"}]))
        for host in hosts:
            if draw(st.booleans()):
                key = f"mesh.destinationRules.{host}.trafficPolicy"
                tp = dict(overrides.get(key, {}))
                pool = dict(tp.get("connectionPool", {}))
                pool["tcp"] = {**pool.get("tcp", {}), "connectTimeout": "30ms"}
                tp["connectionPool"] = pool
                overrides[key] = tp
    return sc.with_overrides(overrides) if overrides else sc


@POLICIES
@given(with_policies(), seeds)
def test_every_request_ends_once_or_is_in_flight(sc, seed):
    assert_conserved(meshsim.run(sc, seed=seed))


@POLICIES
@given(with_policies(), seeds)
def test_local_replies_look_as_envoy_makes_them(sc, seed):
    r = meshsim.run(sc, seed=seed)
    known = {"-", "UO", "UH", "UT", "URX", "UF", "breaker_open", "fallback"}
    assert {f for fl in r.requests["flags"].astype(str) for f in fl.split(",")} <= known
    # A client's row at the ingress gateway is the gateway's own log line (the client has no
    # proxy), so it carries the gateway router's flags with the gateway pod as host; the local
    # replies themselves are the rows whose caller is a proxy.
    rows = r.requests[r.requests["source"].astype(str) != "client"]
    flags = rows["flags"].astype(str)
    parts = flags.str.split(",")
    uh = flags == "UH"
    assert (rows.loc[uh, "status"] == 503).all()
    assert (rows.loc[uh, "host"].astype(str) == "-").all()
    # A request that never reached a host (overflow, no healthy host, cancelled while pending)
    # took no time: the proxy answered at once.
    local = rows["t_arrive"].isna()
    assert (rows.loc[local, "t_end"] >= rows.loc[local, "t_start"]).all()
    overflow = (flags == "UO") & local
    assert (rows.loc[overflow, "status"] == 503).all()
    connect = sc.mesh.sidecar.connect_time
    if getattr(connect, "value", None) == 0:
        # With connections set up at once, no request waits for one: every overflow is at once.
        # (Otherwise a request can wait for a connection and be refused by max_requests when
        # it comes up: Envoy's attach re-checks the limit.)
        assert (rows.loc[overflow, "t_end"] == rows.loc[overflow, "t_start"]).all()
    # A timeout is 504 in the caller's view, even when the callee answered later.
    assert (rows.loc[parts.apply(lambda p: "UT" in p), "status"] == 504).all()
    abandoned = rows["t_reply"] > rows["t_end"]
    assert (rows.loc[abandoned, "status"] == 504).all()
    # Attempts count from 1, and only a router's retries make more.
    assert (rows["attempt"] >= 1).all()


@POLICIES
@given(with_policies(), seeds)
def test_counters_are_consistent(sc, seed):
    r = meshsim.run(sc, seed=seed)
    stats = r.stats
    assert (stats["value"] >= 0).all()
    total = stats.groupby("stat")["value"].sum()
    rows = r.requests[r.requests["source"].astype(str) != "client"]  # proxies' own rows
    flags = rows["flags"].astype(str)
    # Every overflow row is a counted overflow (pending, active or retry breaker).
    overflows = total.reindex(["upstream_rq_pending_overflow", "upstream_rq_active_overflow",
                               "upstream_rq_retry_overflow"], fill_value=0).sum()
    assert flags.str.split(",").apply(lambda p: "UO" in p).sum() <= overflows + 0
    assert (flags == "UH").sum() == total.get("upstream_cx_none_healthy", 0)
    active = total.get("outlier_detection.ejections_active", 0)
    ejections = (r.events["kind"] == "ejection").sum()
    unejections = (r.events["kind"] == "unejection").sum()
    assert active == ejections - unejections


@POLICIES
@given(with_policies(), seeds)
def test_same_seed_same_everything(sc, seed):
    a, b = meshsim.run(sc, seed=seed), meshsim.run(sc, seed=seed)
    pd.testing.assert_frame_equal(everything(a), everything(b))
    pd.testing.assert_frame_equal(a.stats, b.stats)
    pd.testing.assert_frame_equal(a.events, b.events)
