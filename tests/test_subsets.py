"""Versions, ``DestinationRule`` subsets and weighted route destinations.

Istio makes each ``(host, subset, port)`` an Envoy cluster of its own (``outbound|80|v2|reviews``):
its own circuit breakers, outlier detector and load balancer at every client proxy; a route's
weighted destinations (Envoy's ``weighted_clusters``) send each request to one of them at random
in proportion to the weights, and its retries stay on the cluster chosen first
(``../shared/envoy-semantics.md`` §6.1). A subset's ``trafficPolicy`` replaces the rule's blocks
of the same name, whole (istiod's ``MergeTrafficPolicy``).

Each test runs a small scenario with a fixed seed and asserts numbers from ``Result.requests``,
``Result.events`` and ``Result.stats``; the split is checked against its binomial 99.9% interval.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import build, closed, everything, poisson
from scipy import stats

import meshsim
from meshsim.engine import Engine
from meshsim.errors import ScenarioError
from meshsim.scenario import loads_scenario
from meshsim.sidecar import Cluster, WeightedClusters

V1_V2 = {"v1": {"replicas": 2}, "v2": {"replicas": 2}}


def subsets(**policies: dict) -> list[dict]:
    """Subsets ``v1`` and ``v2`` selecting the pods of those versions, with these policies."""
    return [{"name": name, "labels": {"version": name},
             **({"trafficPolicy": policies[name]} if name in policies else {})}
            for name in ("v1", "v2")]


def split(v1: int, v2: int, **http) -> dict:
    """A VirtualService spec sending ``v1`` % of requests to subset v1 and ``v2`` % to v2."""
    return {"http": [{**http, "route": [
        {"destination": {"host": "b", "subset": "v1"}, "weight": v1},
        {"destination": {"host": "b", "subset": "v2"}, "weight": v2}]}]}


def a_calls_b(b: dict, workload: list, mesh: dict, *, a_replicas: int = 1,
              duration: str = "10s") -> meshsim.Scenario:
    """Service ``a`` (no own latency, ample workers) calls service ``b`` once per request."""
    a = {"replicas": a_replicas, "workers": 10_000, "latency": "0ms", "calls": [{"to": "b"}]}
    return build({"a": a, "b": b}, workload, duration=duration,
                 mesh={"istioDefaults": True, **mesh})


def to_b(result: meshsim.Result) -> pd.DataFrame:
    """Every attempt to ``b``, with the version of the pod it went to (``-``: none)."""
    both = everything(result)
    b = both[both["destination"] == "b"]
    return b.assign(version=b["host"].str.extract(r"^b-(v\d)-\d+$")[0].fillna("-"))


def peak_in_flight(rows: pd.DataFrame) -> int:
    """Most attempts of ``rows`` being worked on at once by the callee: overlap of
    ``[t_begin, t_reply)`` (ends first at equal times)."""
    rows = rows[rows["t_begin"].notna()]
    ends = np.nan_to_num(rows["t_reply"].to_numpy(dtype=float), nan=np.inf)
    events = sorted([(t, 1) for t in rows["t_begin"]] + [(t, -1) for t in ends])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def stat(result: meshsim.Result, cluster: str, name: str) -> int:
    st = result.stats
    return int(st.loc[(st["cluster"] == cluster) & (st["stat"] == name), "value"].sum())


# ---- versions ------------------------------------------------------------------------------


def test_pods_of_versions_are_named_and_labelled_by_version():
    sc = build({"b": {"latency": "1ms", "replicas": 3,
                      "versions": {"v1": {}, "v2": {"replicas": 1, "labels": {"track": "c"}}}},
                "c": {"latency": "1ms", "replicas": 2}}, [closed("b")])
    engine = Engine(sc, 1)
    assert [p.name for p in engine.pods["b"]] == ["b-v1-0", "b-v1-1", "b-v1-2", "b-v2-0"]
    assert engine.pod_labels["b"] == [{"version": "v1"}] * 3 + [{"track": "c", "version": "v2"}]
    # Without versions, the names of today (and no labels).
    assert [p.name for p in engine.pods["c"]] == ["c-0", "c-1"]
    assert engine.pod_labels["c"] == [{}, {}]


def test_a_version_takes_the_services_settings_where_it_is_silent():
    sc = build({"b": {"latency": "7ms", "workers": 3, "queue": 5, "errors": {"rate": 0.5},
                      "versions": {"v1": {},
                                   "v2": {"workers": 9, "latency": "2ms", "errors": {"rate": 0}}}}},
               [closed("b")])
    v1, v2 = sc.services["b"].deployments()
    assert (v1.version, v1.replicas, v1.workers, v1.queue, v1.latency.value, v1.errors.rate) == \
        ("v1", 1, 3, 5, 0.007, 0.5)
    assert (v2.version, v2.replicas, v2.workers, v2.queue, v2.latency.value, v2.errors.rate) == \
        ("v2", 1, 9, 5, 0.002, 0.0)


def test_a_version_with_its_own_latency_serves_with_it():
    sc = build({"b": {"latency": "10ms", "versions": {"v1": {}, "v2": {"latency": "30ms"}}}},
               [closed("b", users=4, think="0.1s")], duration="3s")
    b = to_b(meshsim.run(sc, seed=1)).dropna(subset=["t_reply"])
    work = (b["t_reply"] - b["t_begin"]).round(9)
    assert set(work[b["version"] == "v1"]) == {0.01}
    assert set(work[b["version"] == "v2"]) == {0.03}


def test_summary_counts_the_workers_of_every_version():
    sc = build({"b": {"latency": "10ms", "workers": 2, "replicas": 3,
                      "versions": {"v1": {}, "v2": {"replicas": 1, "workers": 6}}}},
               [poisson("b", "100/s")], duration="20s")
    util = meshsim.run(sc, seed=1).summary().loc["b", "utilisation"]
    # 100/s × 10 ms = 1 busy worker on average, out of 3 × 2 + 1 × 6 = 12.
    assert util == pytest.approx(1 / 12, rel=0.05)


# ---- weighted destinations --------------------------------------------------------------------


@pytest.mark.parametrize("callers", [1, 3])
def test_a_90_10_split_lands_in_its_binomial_interval(callers):
    sc = a_calls_b({"latency": "1ms", "versions": V1_V2}, [poisson("a", "400/s")],
                   {"destinationRules": {"b": {"subsets": subsets()}},
                    "virtualServices": {"b": split(90, 10)}},
                   a_replicas=callers, duration="30s")
    b = to_b(meshsim.run(sc, seed=3))
    n, k = len(b), int((b["version"] == "v2").sum())
    assert n > 10_000 and set(b["version"]) == {"v1", "v2"}
    lo, hi = stats.binom.interval(0.999, n, 0.10)
    assert lo <= k <= hi, f"{k} of {n} to v2, outside the 99.9% interval [{lo}, {hi}]"


def test_the_ingress_gateway_splits_with_its_own_route():
    gateway = {"replicas": 1, "destinationRules": {"b": {"subsets": subsets()}},
               "virtualServices": {"b": split(90, 10)}}
    sc = build({"b": {"latency": "1ms", "versions": V1_V2}},
               [poisson("b", "400/s", via_ingress=True)], duration="30s",
               mesh={"istioDefaults": True, "ingressGateway": gateway})
    b = to_b(meshsim.run(sc, seed=3))
    assert set(b["source"]) == {"ingress"}
    n, k = len(b), int((b["version"] == "v2").sum())
    lo, hi = stats.binom.interval(0.999, n, 0.10)
    assert n > 10_000 and lo <= k <= hi


@pytest.mark.parametrize("route", [
    [{"destination": {"host": "b", "subset": "v2"}}],
    [{"destination": {"host": "b.shop.svc.cluster.local", "subset": "v2"}, "weight": 100},
     {"destination": {"host": "b", "subset": "v1"}, "weight": 0}],
], ids=["one-destination", "weight-0-left-out"])
def test_a_route_to_one_subset_binds_its_cluster(route):
    sc = a_calls_b({"latency": "1ms", "versions": V1_V2}, [closed("a")],
                   {"destinationRules": {"b": {"subsets": subsets()}},
                    "virtualServices": {"b": {"http": [{"route": route}]}}})
    engine = Engine(sc, 1)
    (cluster, *_), = engine.pods["a"][0].steps[0][1]
    # No dispatcher: the call costs what a call to a plain cluster costs.
    assert type(cluster) is Cluster and cluster.dest == "b|v2"
    assert [p.name for p in cluster.hosts] == ["b-v2-0", "b-v2-1"]
    assert set(to_b(meshsim.run(sc, seed=1))["version"]) == {"v2"}


def test_several_destinations_share_one_dispatcher_per_proxy():
    sc = a_calls_b({"latency": "1ms", "versions": V1_V2}, [closed("a")],
                   {"destinationRules": {"b": {"subsets": subsets()}},
                    "virtualServices": {"b": split(50, 50)}}, a_replicas=2)
    engine = Engine(sc, 1)
    routes = [pod.steps[0][1][0][0] for pod in engine.pods["a"]]
    assert all(type(r) is WeightedClusters for r in routes)
    assert routes[0] is not routes[1]
    assert [[c.dest for c in r.clusters] for r in routes] == [["b|v1", "b|v2"]] * 2
    assert [c.proxy for r in routes for c in r.clusters] == ["a-0", "a-0", "a-1", "a-1"]


# ---- each subset is a cluster of its own --------------------------------------------------------


def test_a_subsets_pool_limit_applies_per_caller_proxy_and_apart_from_the_other_subset():
    # v2's own connectionPool allows 3 requests in flight per caller proxy; v1 inherits the
    # rule's (none: Istio's 2^32−1). b answers after 1 s: far more than 3 want to be in flight.
    b = {"workers": 10_000, "latency": "1s", "versions": V1_V2}
    limit = {"connectionPool": {"http": {"http2MaxRequests": 3}}}
    sc = a_calls_b(b, [poisson("a", "60/s")],
                   {"destinationRules": {"b": {"subsets": subsets(v2=limit)}},
                    "virtualServices": {"b": split(50, 50)}}, a_replicas=2, duration="20s")
    r = meshsim.run(sc, seed=1)
    rows = to_b(r)
    caller = everything(r).set_index("span_id")["host"]
    rows = rows.assign(caller=caller.loc[rows["parent_span_id"]].to_numpy())
    peaks = {(pod, v): peak_in_flight(g) for (pod, v), g in rows.groupby(["caller", "version"])}
    assert peaks[("a-0", "v2")] == peaks[("a-1", "v2")] == 3
    assert min(peaks[("a-0", "v1")], peaks[("a-1", "v1")]) > 10
    assert peak_in_flight(rows[rows["version"] == "v2"]) == 6  # 3 per caller proxy
    uo = rows[rows["flags"] == "UO"]
    assert len(uo) > 100 and set(uo["version"]) == {"v2"} and set(uo["status"]) == {503}
    assert stat(r, "b|v2", "upstream_rq_active_overflow") == len(uo)
    assert stat(r, "b|v1", "upstream_rq_active_overflow") == 0
    # Stats name the subset's cluster; v1's has none, as no policy of it can act.
    assert set(r.stats["cluster"]) == {"b|v2"}


def test_a_subsets_outlier_detection_ejects_its_pod_and_leaves_the_other_subset_alone():
    # Every pod always fails 503. Only v2's subset has outlier detection: its one pod is ejected
    # at its third failure in a row at the caller; v1's pods, with no detector, never are.
    b = {"latency": "10ms", "errors": {"rate": 1.0, "status": 503},
         "versions": {"v1": {"replicas": 2}, "v2": {"replicas": 1}}}
    od = {"outlierDetection": {"consecutive5xxErrors": 3, "interval": "1h",
                               "baseEjectionTime": "1h", "maxEjectionPercent": 100}}
    sc = a_calls_b(b, [closed("a", think="0.1s")],
                   {"destinationRules": {"b": {"subsets": subsets(v2=od)}},
                    "virtualServices": {"b": split(50, 50)}}, duration="20s")
    r = meshsim.run(sc, seed=1)
    rows = to_b(r).sort_values("t_end")
    ejections = r.events[r.events["kind"] == "ejection"]
    third = rows.loc[rows["version"] == "v2", "t_end"].iloc[2]
    assert ejections[["t", "source", "destination", "host"]].values.tolist() == [
        [third, "a-0", "b|v2", "b-v2-0"]]
    # After it, v2's share is answered by the proxy: 503 UH (Istio: no panic, no healthy host).
    later = rows[rows["t_start"] > third]
    assert set(later.loc[later["host"] == "-", "flags"]) == {"UH"}
    assert set(later.loc[later["host"] != "-", "version"]) == {"v1"}
    assert (later["host"] == "-").sum() == stat(r, "b|v2", "upstream_cx_none_healthy") > 50
    assert later["version"].eq("v1").sum() > 50  # v1 keeps getting its half, failing or not
    assert stat(r, "b|v2", "outlier_detection.ejections_active") == 1
    assert "outlier_detection.ejections_active" not in set(
        r.stats.loc[r.stats["cluster"] == "b|v1", "stat"])


def test_retries_stay_on_the_subset_chosen_first():
    # Both versions always fail; each call is retried 3 times on 5xx. Every try of a call goes
    # to the subset its first try went to.
    b = {"latency": "1ms", "errors": {"rate": 1.0, "status": 503}, "versions": V1_V2}
    sc = a_calls_b(b, [closed("a", think="0.05s")],
                   {"destinationRules": {"b": {"subsets": subsets()}},
                    "virtualServices": {"b": split(50, 50, retries={"attempts": 3,
                                                                     "retryOn": "5xx"})}},
                   duration="30s")
    rows = to_b(meshsim.run(sc, seed=1))
    done = rows[rows["t_end"].notna()]
    calls = done.groupby("parent_span_id")
    assert calls.size().max() == 4 and (calls.size() == 4).sum() > 50
    assert calls["version"].nunique().eq(1).all()
    first = done[done["attempt"] == 1]["version"].value_counts()
    assert set(first.index) == {"v1", "v2"} and first.min() > 50
    # previous_hosts moves the tries between the pods of that subset.
    assert calls["host"].nunique().max() == 2


def test_route_retry_policy_and_timeout_are_shared_by_the_destinations():
    sc = a_calls_b({"latency": "1ms", "versions": V1_V2}, [closed("a")],
                   {"destinationRules": {"b": {"subsets": subsets()}},
                    "virtualServices": {"b": split(50, 50, timeout="2s",
                                                   retries={"attempts": 4, "retryOn": "5xx"})}})
    clusters = Engine(sc, 1).pods["a"][0].steps[0][1][0][0].clusters
    assert [(c.retry_policy.num_retries, c.route_timeout) for c in clusters] == [(4, 2.0)] * 2


# ---- istiod's merge of a subset's trafficPolicy ------------------------------------------------


def test_a_subsets_policy_replaces_the_rules_blocks_whole():
    # MergeTrafficPolicy: a block the subset sets replaces the rule's block of that name; the
    # others are inherited. The rule's connectionPool.tcp is not kept under the subset's http.
    rule = {"trafficPolicy": {
        "loadBalancer": {"simple": "RANDOM"},
        "connectionPool": {"tcp": {"maxConnections": 7}, "http": {"http2MaxRequests": 50}},
        "outlierDetection": {"consecutive5xxErrors": 2}},
        "subsets": subsets(v2={"connectionPool": {"http": {"http2MaxRequests": 3}}})}
    sc = build({"b": {"latency": "1ms", "versions": V1_V2}}, [closed("b")],
               mesh={"destinationRules": {"b": rule}})
    v2 = sc.traffic_policy("b", subset="v2")
    assert v2.connection_pool.tcp is None
    assert v2.connection_pool.http.http2_max_requests == 3
    assert v2.outlier_detection.consecutive_5xx_errors == 2
    assert v2.load_balancer.simple == "RANDOM" and sc.lb_policy("b", subset="v2") == "RANDOM"
    assert sc.traffic_policy("b", subset="v1") == sc.traffic_policy("b")


# ---- errors ------------------------------------------------------------------------------------

HEAD = """\
duration: 10s
workload: [{client: u, entry: a, arrival: {rate: 10/s}}]
services:
  a: {latency: 1ms, calls: [{to: b}]}
"""


def issues(text: str) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        loads_scenario(HEAD + text, "s.yaml")
    return info.value.lines()


def test_a_route_to_a_version_the_service_does_not_run_is_refused():
    lines = issues("""\
  b: {latency: 1ms, versions: {v1: {}}}
mesh:
  destinationRules:
    b: {subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}
  virtualServices:
    b: {http: [{route: [{destination: {host: b, subset: v2}}]}]}
""")
    assert lines == ["s.yaml:8: mesh.destinationRules.b.subsets[1].labels: selects no pod of 'b' "
                     "(its pods carry version=v1)"]


def test_a_route_to_a_subset_of_a_service_without_versions_is_refused():
    lines = issues("""\
  b: {latency: 1ms, replicas: 2}
mesh:
  virtualServices:
    b: {http: [{route: [{destination: {host: b, subset: v2}}]}]}
""")
    assert lines == ["s.yaml:8: mesh.virtualServices.b.http[0].route[0].destination.subset: "
                     "unknown subset 'v2': there is no DestinationRule for 'b', so it has no "
                     "subsets"]
