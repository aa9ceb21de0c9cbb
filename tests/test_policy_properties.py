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
    return sc.with_overrides(overrides) if overrides else sc


@POLICIES
@given(with_policies(), seeds)
def test_every_request_ends_once_or_is_in_flight(sc, seed):
    assert_conserved(meshsim.run(sc, seed=seed))


@POLICIES
@given(with_policies(), seeds)
def test_local_replies_look_as_envoy_makes_them(sc, seed):
    r = meshsim.run(sc, seed=seed)
    known = {"-", "UO", "UH", "UT", "URX", "UF"}
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
    assert (rows.loc[overflow, "t_end"] == rows.loc[overflow, "t_start"]).all()
    assert (rows.loc[overflow, "status"] == 503).all()
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
