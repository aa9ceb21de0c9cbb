"""Mesh policies in whole scenarios, checked against Envoy's and Istio's documented behaviour.

Each test builds a small call chain, runs it with a fixed seed and asserts numbers read from
``Result.requests`` (one row per attempt), ``Result.events`` and ``Result.stats``. The statistical
check (M/M/c/K) uses a 95% Student-t interval over seeded replications.

Reference: ``../shared/envoy-semantics.md`` §0 (pitfalls), §1 (circuit breakers: scope per client
proxy, dispatch, retry budget), §2 (outlier detection: per-host counting, max ejection percent),
§3 (panic threshold, update merge window), §4 (retries and timeouts), §12 (checklist).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import assert_conserved, assert_in_ci, build, closed, everything, poisson, replicate

import meshsim

# ---- helpers ----------------------------------------------------------------------------------


def rule(**traffic_policy) -> dict:
    """A DestinationRule spec with this ``trafficPolicy``."""
    return {"trafficPolicy": traffic_policy}


def route(**http) -> dict:
    """A VirtualService spec whose single ``http`` route is ``http``."""
    return {"http": [http]}


def a_calls_b(b: dict, workload: list, *, mesh: dict, a_replicas: int = 1,
              duration: str = "5s", **extra) -> meshsim.Scenario:
    """Service ``a`` (no own latency, ample workers) calls service ``b`` once per request."""
    a = {"replicas": a_replicas, "workers": 10_000, "latency": "0ms", "calls": [{"to": "b"}]}
    return build({"a": a, "b": b}, workload, duration=duration, mesh=mesh, **extra)


def to(result: meshsim.Result, dest: str) -> pd.DataFrame:
    """Every attempt to ``dest`` (answered, abandoned or still open), names as plain strings."""
    both = everything(result)
    return both[both["destination"] == dest]


def peak_overlap(starts, ends) -> int:
    """Most half-open intervals ``[start, end)`` open at the same time (an end of NaN: still
    open at the end of the run). At equal times ends come first."""
    ends = np.nan_to_num(np.asarray(ends, dtype=float), nan=np.inf)
    events = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def busy_at_callee(rows: pd.DataFrame) -> int:
    """Peak number of requests the callee pods work on together: overlap of [t_begin, t_reply)."""
    rows = rows[rows["t_begin"].notna()]
    return peak_overlap(rows["t_begin"], rows["t_reply"])


def stat(result: meshsim.Result, name: str, cluster: str = "b") -> int:
    """An Envoy counter of ``cluster`` summed over every client proxy (0 if absent)."""
    st = result.stats
    return int(st.loc[(st["cluster"] == cluster) & (st["stat"] == name), "value"].sum())


def events(result: meshsim.Result, kind: str) -> pd.DataFrame:
    ev = result.events
    return ev[ev["kind"] == kind]


# ---- 1. circuit breakers are per client proxy ---------------------------------------------------

# b answers after 1 s with plenty of workers, and a's pods want far more than 10 requests in
# flight each (300/s × 1 s split over at most 3 pods): the limit is what bites.
SLOW_B = {"workers": 10_000, "latency": "1s"}


def limited(a_replicas: int, b_replicas: int, pool: dict, inbound: dict | None = None,
            ) -> meshsim.Scenario:
    """``a`` calls ``b`` under a DestinationRule with ``pool``. istiod applies that pool to b's
    own (inbound) sidecars too; ``inbound`` replaces it there (``Sidecar.inboundConnectionPool``;
    ``{}`` is Istio's unlimited default), which isolates the callers' limits."""
    mesh = {"istioDefaults": True, "destinationRules": {"b": rule(connectionPool=pool)}}
    if inbound is not None:
        mesh["sidecars"] = {"b": {"inboundConnectionPool": inbound}}
    return a_calls_b({**SLOW_B, "replicas": b_replicas}, [poisson("a", "300/s")],
                     a_replicas=a_replicas, mesh=mesh)


MAX_REQUESTS = {"http": {"http2MaxRequests": 10}}
# HTTP/1.1: one request per connection, 4 connections, 5 waiting; the rest overflow.
CONNECTIONS = {"tcp": {"maxConnections": 4}, "http": {"http1MaxPendingRequests": 5}}


@pytest.mark.parametrize(("pool", "per_proxy"), [(MAX_REQUESTS, 10), (CONNECTIONS, 4)],
                         ids=["http2MaxRequests", "maxConnections"])
def test_limit_scales_with_client_pods_not_server_pods(pool, per_proxy):
    # §1.2: limits are per cluster per Envoy process, "fully distributed": N caller sidecars let
    # N × the limit through, however many pods the callee has.
    # (b's own sidecars are left unlimited here, to see the callers' limits alone.)
    peaks = {(na, nb): busy_at_callee(to(meshsim.run(limited(na, nb, pool, {}), seed=1), "b"))
             for na, nb in [(1, 1), (1, 3), (2, 1), (2, 3), (3, 1)]}
    assert peaks == {(1, 1): per_proxy, (1, 3): per_proxy, (2, 1): 2 * per_proxy,
                     (2, 3): 2 * per_proxy, (3, 1): 3 * per_proxy}


@pytest.mark.parametrize(("pool", "per_proxy"), [(MAX_REQUESTS, 10), (CONNECTIONS, 4)],
                         ids=["http2MaxRequests", "maxConnections"])
def test_the_same_rule_also_limits_each_server_pods_own_sidecar(pool, per_proxy):
    # istiod builds the inbound cluster of every pod of b with the connectionPool of b's own
    # DestinationRule (cluster_builder.go; TestInboundConnectionPoolForPort): each pod of b
    # admits at most the limit, whatever its callers allow. So the app sees
    # min(callers × limit, pods × limit).
    peaks = {(na, nb): busy_at_callee(to(meshsim.run(limited(na, nb, pool), seed=1), "b"))
             for na, nb in [(1, 1), (2, 1), (3, 1), (2, 3), (3, 2)]}
    assert peaks == {(1, 1): per_proxy, (2, 1): per_proxy, (3, 1): per_proxy,
                     (2, 3): 2 * per_proxy, (3, 2): 2 * per_proxy}


def test_a_request_refused_by_the_servers_sidecar_is_a_plain_503_to_the_caller():
    r = meshsim.run(limited(3, 1, MAX_REQUESTS), seed=1)
    b = to(r, "b")
    # The server's sidecar answers 503 at once (UO in its own log); the caller's proxy saw an
    # upstream 503, so its row has no flag. The request reached the pod, never its app.
    refused = b[b["t_arrive"].notna() & b["t_begin"].isna() & b["t_end"].notna()]
    assert len(refused) > 1000
    assert set(refused["status"]) == {503} and set(refused["flags"]) == {"-"}
    assert (refused["t_reply"] == refused["t_arrive"]).all()
    # Its counters are the pod's own, under the "inbound" cluster; the callers' proxies never
    # overflow (3 × 10 allowed, at most 10 in flight to b-0 at a time).
    st = r.stats
    inbound = st[(st["proxy"] == "b-0") & (st["cluster"] == "inbound")].set_index("stat")["value"]
    overflows = inbound["upstream_rq_active_overflow"] + inbound["upstream_rq_pending_overflow"]
    assert overflows == len(refused)
    assert stat(r, "upstream_rq_active_overflow") == stat(r, "upstream_rq_pending_overflow") == 0
    assert (r.events.query("destination == 'inbound'")["kind"] == "pool_saturated").any()


def test_a_caller_giving_up_cancels_its_request_in_the_servers_sidecar_not_in_the_app():
    # b's pod admits one request at a time (its own sidecar: maxConnections 1, HTTP/1.1) and
    # takes 0.2 s. Clients without a sidecar (no timeout) send it 10/s directly, a's sidecar
    # 10/s more and gives up after 0.3 s: the queue in b's sidecar grows. A request of a still
    # waiting there is cancelled and never reaches the app. One the app already has keeps the
    # app busy to the end, but its place in the sidecar is freed at the reset, so the app works
    # on more requests at once than the limit allows.
    workload = [poisson("a", "10/s"), poisson("b", "10/s", client="direct")]
    sc = a_calls_b({"workers": 100, "latency": "0.2s"}, workload, duration="20s",
                   mesh={"istioDefaults": True,
                         "sidecars": {"b": {"inboundConnectionPool": {
                             "tcp": {"maxConnections": 1}}}},
                         "virtualServices": {"b": route(timeout="0.3s")}})
    r = meshsim.run(sc, seed=1)
    assert_conserved(r)
    b = to(r, "b")
    answered = b[b["t_end"].notna() & (b["source"] == "a")]
    cancelled = answered[answered["t_arrive"].notna() & answered["t_begin"].isna()]
    assert len(cancelled) > 100
    assert set(cancelled["status"]) == {504} and set(cancelled["flags"]) == {"UT"}
    # They end when their caller gives up, and no answer ever comes.
    assert np.allclose(cancelled["t_end"] - cancelled["t_start"], 0.3)
    assert cancelled["t_reply"].isna().all()
    st = r.stats.query("cluster == 'inbound'").set_index("stat")["value"]
    assert st["upstream_rq_cancelled"] == len(cancelled)
    # Abandoned in the app: 504 to the caller, the app's answer comes later and is wasted.
    wasted = answered[answered["t_begin"].notna() & (answered["status"] == 504)]
    assert len(wasted) > 0 and (wasted["t_reply"] > wasted["t_end"]).all()
    assert busy_at_callee(b) >= 2


def test_max_requests_overflow_is_503_uo_at_the_caller():
    r = meshsim.run(limited(2, 3, MAX_REQUESTS), seed=1)
    b = to(r, "b")
    # Exactly 10 per calling pod at b: the pod of each attempt is the host of its parent row.
    pod_of = everything(r).set_index("span_id")["host"]
    b = b.assign(caller=pod_of.loc[b["parent_span_id"]].to_numpy())
    assert {pod: busy_at_callee(rows) for pod, rows in b.groupby("caller")} == \
        {"a-0": 10, "a-1": 10}
    # §1.4: the caller's proxy answers 503 UO at once; the attempt chose a host but never left.
    uo = b[b["flags"] == "UO"]
    assert len(uo) > 1000
    assert set(uo["status"]) == {503}
    assert set(uo["host"]) == {"b-0", "b-1", "b-2"}
    assert uo["t_arrive"].isna().all()
    assert (uo["t_end"] == uo["t_start"]).all()
    # §13: max_requests overflows count upstream_rq_active_overflow (Envoy 1.40), not pending.
    assert stat(r, "upstream_rq_active_overflow") == len(uo)
    assert stat(r, "upstream_rq_pending_overflow") == 0
    answered = b[b["t_end"].notna()]
    assert set(answered.loc[answered["flags"] != "UO", "status"]) == {200}


def test_pending_overflow_when_connections_and_queue_are_full():
    r = meshsim.run(limited(2, 1, CONNECTIONS, {}), seed=1)
    b = to(r, "b")
    uo = b[b["flags"] == "UO"]
    assert len(uo) > 1000
    assert set(uo["status"]) == {503} and uo["t_arrive"].isna().all()
    # §1.3: the queue is full → upstream_rq_pending_overflow; max_requests never bites.
    assert stat(r, "upstream_rq_pending_overflow") == len(uo)
    assert stat(r, "upstream_rq_active_overflow") == 0
    assert stat(r, "upstream_cx_total") == 2 * 4
    assert stat(r, "upstream_cx_overflow") > 0
    # Queued requests wait for a connection: a request leaves only when one of 4 ends (1 s each),
    # so with 5 ahead of it in the queue it waits up to 2 s.
    served = b[b["t_arrive"].notna()]
    waits = served["t_arrive"] - served["t_start"]
    assert (waits > 0.5).any() and waits.max() <= 2.0 + 1e-9


# ---- 2. outlier detection counts per host -------------------------------------------------------

LONG = {"interval": "1h", "baseEjectionTime": "1h"}  # no tick, no un-ejection during the run
ALWAYS_503 = {"rate": 1.0, "status": 503}


def detected(outlier: dict, errors: dict, *, replicas: int = 3, think: str = "0.5s",
             duration: str = "20s") -> meshsim.Scenario:
    """One user calls a, a calls b round robin: sequential requests from one client proxy."""
    return a_calls_b({"replicas": replicas, "latency": "10ms", "errors": errors},
                     [closed("a", think=think)], duration=duration,
                     mesh={"istioDefaults": True, "destinationRules": {"b": rule(
                         loadBalancer={"simple": "ROUND_ROBIN"},
                         outlierDetection={"consecutive5xxErrors": 5, **LONG, **outlier})}})


def test_consecutive_5xx_are_counted_per_host():
    # Round robin spreads the failures: each of 3 hosts reaches 5 consecutive 5xx at the 13th,
    # 14th and 15th failure, not the 5th (§2.2: one monitor per host).
    r = meshsim.run(detected({"maxEjectionPercent": 100}, ALWAYS_503), seed=1)
    failed = to(r, "b").query("status == 503 and flags == '-'").sort_values("t_end")
    ejections = events(r, "ejection")
    assert ejections["t"].tolist() == failed["t_end"].iloc[[12, 13, 14]].tolist()
    assert ejections["host"].tolist() == failed["host"].iloc[[12, 13, 14]].tolist()
    assert set(ejections["detail"]) == {"consecutive_5xx"}
    for t, host in zip(ejections["t"], ejections["host"], strict=True):
        assert (failed.loc[failed["host"] == host, "t_end"] <= t).sum() == 5
    assert stat(r, "outlier_detection.ejections_enforced_consecutive_5xx") == 3
    assert stat(r, "outlier_detection.ejections_active") == 3


BAD_POD = {"kind": "bursty", "meanGood": "1000000000s", "meanBad": "1000000000s",
           "rateGood": 0.0, "rateBad": 1.0, "status": 503}  # each pod good or bad for the run


def failure_share(b: pd.DataFrame) -> dict[str, float]:
    sent = b[b["host"] != "-"]
    return sent.groupby("host")["status"].apply(lambda s: float((s == 503).mean())).to_dict()


def test_one_bad_pod_of_three_is_ejected_at_its_fifth_failure():
    # Bursty errors whose states last longer than the run make each pod good or bad throughout;
    # with seed 4 exactly one of the three is bad.
    r = meshsim.run(detected({"maxEjectionPercent": 50}, BAD_POD), seed=4)
    b = to(r, "b")
    share = failure_share(b)
    bad = [h for h, s in share.items() if s == 1.0]
    assert len(bad) == 1 and sorted(share.values()) == [0.0, 0.0, 1.0]
    fifth = b[b["host"] == bad[0]].sort_values("t_end")["t_end"].iloc[4]
    ejections = events(r, "ejection")
    assert ejections[["t", "host"]].values.tolist() == [[fifth, bad[0]]]
    # 1 of 3 hosts is 33% <= 50%: allowed. The first health change reaches the balancer at once.
    assert not (b.loc[b["host"] == bad[0], "t_start"] > fifth).any()
    assert (b["t_start"] > fifth).sum() > 10


def test_max_ejection_percent_caps_ejections_after_the_ejection():
    # Two bad pods of three with maxEjectionPercent 50: the second ejection would make 67% > 50%
    # (§2.3, checked after the ejection since 1.28), so only the first host to fail 5 times goes.
    r = meshsim.run(detected({"maxEjectionPercent": 50}, BAD_POD), seed=2)
    share = failure_share(to(r, "b"))
    assert sorted(share.values()) == [0.0, 1.0, 1.0]
    assert len(events(r, "ejection")) == 1
    assert stat(r, "outlier_detection.ejections_active") == 1
    assert stat(r, "outlier_detection.ejections_overflow") > 0


@pytest.mark.parametrize(("replicas", "ejected"), [(2, 0), (3, 0), (9, 0), (10, 1)])
def test_default_max_ejection_percent_ejects_nothing_below_ten_hosts(replicas, ejected):
    # §0.1: 100·(0+1)/n <= 10 only from n = 10; Istio does not set always_eject_one_host.
    r = meshsim.run(detected({}, ALWAYS_503, replicas=replicas, think="0.1s"), seed=1)
    b = to(r, "b")
    assert len(b) > 8 * replicas  # every host failed more than 5 times in a row
    assert len(events(r, "ejection")) == ejected
    assert stat(r, "outlier_detection.ejections_active") == ejected
    assert stat(r, "outlier_detection.ejections_overflow") > 0
    if not ejected:
        late = b[b["t_start"] > b["t_start"].max() - 0.1 * (replicas + 1)]
        assert set(late["host"]) == {f"b-{i}" for i in range(replicas)}  # still all in use


# ---- 3. all hosts ejected: 503 UH under Istio, panic under plain Envoy ---------------------------


def all_ejected(istio: bool) -> meshsim.Scenario:
    return a_calls_b({"replicas": 2, "latency": "10ms", "errors": ALWAYS_503},
                     [closed("a", think="0.5s")], duration="20s",
                     mesh={"istioDefaults": istio, "destinationRules": {"b": rule(
                         outlierDetection={"consecutive5xxErrors": 5, "maxEjectionPercent": 100,
                                           **LONG})}})


def test_istio_answers_503_uh_when_every_host_is_ejected():
    # §3.3: Istio writes healthy_panic_threshold = minHealthPercent (default 0) with
    # outlierDetection, so with no healthy host the proxy answers "no healthy upstream".
    r = meshsim.run(all_ejected(istio=True), seed=1)
    b = to(r, "b")
    first, second = events(r, "ejection")["t"]
    seen = max(second, first + 1.0)  # the second change waits for the 1 s merge window (§3.4)
    after = b[b["t_start"] >= seen]
    assert len(after) > 20
    assert set(after["host"]) == {"-"} and set(after["flags"]) == {"UH"}
    assert set(after["status"]) == {503} and after["t_arrive"].isna().all()
    assert set(after["attempt"]) == {1}
    assert (b.loc[b["t_start"] < seen, "host"] != "-").all()
    assert stat(r, "upstream_cx_none_healthy") == len(after)
    assert stat(r, "lb_healthy_panic") == 0
    assert events(r, "panic_enter").empty


def test_plain_envoy_panics_and_uses_the_ejected_hosts():
    # Plain Envoy's threshold is 50%: 0 of 2 healthy is below it, so the balancer picks among all
    # hosts, ejected ones included, and counts lb_healthy_panic per pick.
    r = meshsim.run(all_ejected(istio=False), seed=1)
    b = to(r, "b")
    first, second = events(r, "ejection")["t"]
    seen = max(second, first + 1.0)  # as above: the merge window delays the second change
    panic = events(r, "panic_enter")
    assert panic["t"].tolist() == [b.loc[b["t_start"] >= seen, "t_start"].min()]
    assert panic["detail"].tolist() == ["0 of 2 hosts healthy"]
    after = b[b["t_start"] >= panic["t"].iloc[0]]
    assert len(after) > 20
    assert set(after["host"]) == {"b-0", "b-1"} and set(after["flags"]) == {"-"}
    assert after["t_arrive"].notna().all()
    assert stat(r, "lb_healthy_panic") == len(after)
    assert stat(r, "upstream_cx_none_healthy") == 0
    assert "UH" not in set(b["flags"])


# ---- 4. Istio's default retry policy ------------------------------------------------------------


def failing_b(routes: dict | None = None) -> meshsim.Scenario:
    mesh = {"istioDefaults": True, "virtualServices": routes or {}}
    return a_calls_b({"replicas": 2, "latency": "10ms", "errors": ALWAYS_503},
                     [closed("a", think="0.5s")], mesh=mesh)


def test_istio_default_retry_policy_does_not_retry_a_503():
    # §0.8: connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes with no
    # codes: a plain upstream 503 is answered as is.
    b = to(meshsim.run(failing_b(), seed=1), "b")
    assert len(b) >= 9
    assert set(b["attempt"]) == {1}
    assert b.groupby("parent_span_id").size().eq(1).all()
    assert set(b["flags"]) == {"-"} and set(b["status"]) == {503}


def test_retry_on_5xx_makes_three_attempts_and_flags_the_last_urx():
    r = meshsim.run(failing_b({"b": route(retries={"attempts": 2, "retryOn": "5xx"})}), seed=1)
    b = to(r, "b").sort_values(["parent_span_id", "attempt"])
    calls = list(b.groupby("parent_span_id"))
    assert len(calls) >= 7
    for _, call in calls:
        assert call["attempt"].tolist() == [1, 2, 3]
        assert call["flags"].tolist() == ["-", "-", "URX"]
        assert set(call["status"]) == {503}
        # §4.1 back-off: retry N waits uniform{0..min(25·2^(N−1), 250)−1} ms.
        gaps = call["t_start"].to_numpy()[1:] - call["t_end"].to_numpy()[:-1]
        assert 0 <= gaps[0] < 0.025 and 0 <= gaps[1] < 0.050
    assert stat(r, "upstream_rq_retry") == 2 * len(calls)
    assert stat(r, "upstream_rq_retry_limit_exceeded") == len(calls)


# ---- 4b. connections take time; a connect timeout is 503 UF, which Istio retries -------------


def connecting(connect: str, *, mesh: dict | None = None, **b: object) -> meshsim.Scenario:
    """One closed-loop user; a calls b (1 pod, 10 ms) over connections that take ``connect``."""
    return a_calls_b({"latency": "10ms", **b}, [closed("a", think="0.5s")], duration="5s",
                     mesh={"istioDefaults": True,
                           "sidecar": {"connectTime": connect, "hopOverhead": "0ms"},
                           **(mesh or {})})


def test_only_a_new_connection_pays_the_connect_time():
    r = meshsim.run(connecting("5ms"), seed=1)
    b = to(r, "b").sort_values("t_start")
    waited = (b["t_arrive"] - b["t_start"]).round(9).tolist()
    took = (b["t_end"] - b["t_start"]).round(9).tolist()
    # The first request opens the connection (HTTP/1.1, kept alive), the others reuse it.
    assert len(b) >= 9
    assert waited == [0.005] + [0.0] * (len(b) - 1)
    assert took == [0.015] + [0.010] * (len(b) - 1)
    assert stat(r, "upstream_cx_total") == 1 and set(b["status"]) == {200}


def test_a_connect_timeout_is_503_uf_and_istios_default_policy_retries_it_twice():
    # Connections take 2 s, connectTimeout is 1 s: every connection fails at 1 s. Istio's
    # default retry policy (2 retries on connect-failure, §0.8) tries three times; the last
    # try is flagged URX,UF (§10). Each try waits 1 s for its connection, plus the back-off.
    sc = connecting("2s", mesh={"destinationRules": {"b": rule(connectionPool={
        "tcp": {"connectTimeout": "1s"}})}})
    r = meshsim.run(sc, seed=1)
    b = to(r, "b").sort_values(["parent_span_id", "attempt"])
    calls = [call for _, call in b.groupby("parent_span_id") if call["t_end"].notna().all()]
    assert len(calls) >= 1
    for call in calls:
        assert call["attempt"].tolist() == [1, 2, 3]
        assert call["flags"].tolist() == ["UF", "UF", "URX,UF"]
        assert set(call["status"]) == {503} and call["t_arrive"].isna().all()
        assert np.allclose(call["t_end"] - call["t_start"], 1.0)
    # Every connection timed out, but one still being opened when the run ends.
    opened, timed_out = stat(r, "upstream_cx_total"), stat(r, "upstream_cx_connect_timeout")
    assert timed_out >= 3 and opened - timed_out in (0, 1)
    assert stat(r, "upstream_cx_connect_fail") == timed_out
    assert stat(r, "upstream_rq_retry") == 2 * len(calls)


# ---- 5. retries multiply down a chain -----------------------------------------------------------


@pytest.mark.parametrize(("retries", "leaf_attempts"), [(None, 1), (1, 8), (2, 27)])
def test_retries_multiply_down_a_chain(retries, leaf_attempts):
    # a → b → c → leaf, every hop retrying 5xx: (1 + attempts)^3 leaf attempts per user request.
    hops = ("b", "c", "leaf")
    routes = {} if retries is None else {
        h: route(retries={"attempts": retries, "retryOn": "5xx"}) for h in hops}
    services = {"a": {"latency": "0ms", "calls": [{"to": "b"}]},
                "b": {"latency": "0ms", "calls": [{"to": "c"}]},
                "c": {"latency": "0ms", "calls": [{"to": "leaf"}]},
                "leaf": {"latency": "1ms", "errors": {"rate": 1.0}}}
    r = meshsim.run(build(services, [closed("a", think="1s")], duration="10s",
                          mesh={"istioDefaults": True, "virtualServices": routes}), seed=1)
    answered = r.end_to_end()
    assert len(answered) >= 5 and set(answered["status"]) == {500}
    leaf = r.requests[r.requests["destination"] == "leaf"]
    per_request = leaf.groupby("request_id").size()
    assert per_request.loc[answered["request_id"]].eq(leaf_attempts).all()


# ---- 6. route and per-try timeouts ---------------------------------------------------------------

# b takes 5 s per request and has one worker; the ingress gateway's route to b is the one under
# test, so the client's row (client → ingress) is what the gateway answered downstream.
SLOW_SINGLE = {"b": {"latency": "5s", "workers": 1}}


def timed(http: dict, duration: str) -> meshsim.Scenario:
    gateway = {"replicas": 1, "virtualServices": {"b": route(**http)}}
    return build(SLOW_SINGLE, [closed("b", think="0.5s", via_ingress=True)], duration=duration,
                 mesh={"istioDefaults": True, "ingressGateway": gateway})


ROUTE_TIMEOUT = {"timeout": "2s",
                 "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx"}}
PER_TRY_ONLY = {"retries": {"attempts": 2, "perTryTimeout": "1s", "retryOn": "5xx"}}


def first_call(r: meshsim.Result) -> tuple[pd.Series, pd.DataFrame]:
    """The client's row of request 0 and its attempts to b, by attempt."""
    both = everything(r)
    mine = both[both["request_id"] == 0]
    root = mine[mine["parent_span_id"] == 0].iloc[0]
    return root, mine[mine["destination"] == "b"].sort_values("attempt")


def test_route_timeout_caps_the_tries_and_abandoned_attempts_keep_the_callee_busy():
    r = meshsim.run(timed(ROUTE_TIMEOUT, "12s"), seed=1)
    root, b = first_call(r)
    # Sent at 0.5 s: try 1 times out per try at 1.5 s, try 2 starts after a back-off < 25 ms and
    # is cut by the route timer at 2.5 s (0.5 + 2): at most 2 tries, 504 UT, never retried.
    assert (root["status"], root["flags"], root["t_end"]) == (504, "UT", 2.5)
    assert b["attempt"].tolist() == [1, 2]
    assert b["flags"].tolist() == ["UT", "UT"]
    assert b["t_end"].tolist() == [1.5, 2.5]
    assert 1.5 <= b["t_start"].iloc[1] < 1.525
    # The callee is not told: try 1 holds b's only worker until 5.5 s, so try 2 starts work
    # only then, and finishes at 10.5 s. Both rows show t_reply after t_end.
    assert b["t_begin"].tolist() == [0.5, 5.5]
    assert b["t_reply"].tolist() == [5.5, 10.5]
    # Rows are written when the answers arrive, late ones included: in write order, the time
    # of writing max(t_end, t_reply) never goes back.
    written = r.requests.dropna(subset=["t_reply"])
    assert np.fmax(written["t_end"], written["t_reply"]).is_monotonic_increasing
    assert to(r, "b").groupby("request_id")["attempt"].max().le(2).all()
    assert stat(r, "upstream_rq_per_try_timeout") >= 1
    assert stat(r, "upstream_rq_timeout") >= 1


def test_per_try_timeouts_exhausted_answer_504_urx_ut():
    # No route timeout (Istio's default): 3 tries of 1 s each with back-offs, then 504 URX,UT.
    r = meshsim.run(timed(PER_TRY_ONLY, "8s"), seed=1)
    root, b = first_call(r)
    assert (root["status"], root["flags"]) == (504, "URX,UT")
    assert b["attempt"].tolist() == [1, 2, 3]
    assert (b["t_end"] - b["t_start"]).round(9).tolist() == [1.0, 1.0, 1.0]
    gaps = b["t_start"].to_numpy()[1:] - b["t_end"].to_numpy()[:-1]
    assert 0 <= gaps[0] < 0.025 and 0 <= gaps[1] < 0.050
    assert root["t_end"] == pytest.approx(0.5 + 3.0 + gaps.sum())
    assert root["t_end"] == b["t_end"].iloc[-1]
    assert stat(r, "upstream_rq_retry_limit_exceeded") >= 1


def test_last_attempt_after_per_try_timeouts_is_flagged_urx_ut():
    _, b = first_call(meshsim.run(timed(PER_TRY_ONLY, "8s"), seed=1))
    assert b["flags"].tolist() == ["UT", "UT", "URX,UT"]


def test_abandoned_attempt_row_keeps_the_status_the_caller_saw():
    _, b = first_call(meshsim.run(timed(ROUTE_TIMEOUT, "12s"), seed=1))
    assert b["status"].tolist() == [504, 504]


def test_abandoned_attempts_do_not_put_answered_requests_back_in_flight():
    r = meshsim.run(timed(ROUTE_TIMEOUT, "12s"), seed=1)
    assert not set(r.in_flight["span_id"]) & set(r.requests["span_id"])
    assert_conserved(r)


def test_work_after_the_caller_gave_up_is_counted_as_wasted():
    # b takes 1 s, a gives up after 0.3 s: b goes on for 0.7 s on every request (§4: a caller
    # giving up does not stop the callee).
    sc = a_calls_b({"latency": "1s", "workers": 100}, [closed("a", think="2s")], duration="30s",
                   mesh={"istioDefaults": True,
                         "virtualServices": {"b": route(timeout="0.3s")}})
    r = meshsim.run(sc, seed=1)
    b = r.summary().loc["b"]
    answered = to(r, "b")
    n = int(answered["t_end"].notna().sum())
    assert n >= 9 and b["abandoned"] == n
    done = answered["t_reply"].notna()
    expected = 0.7 * done.sum() + (r.meta["end_time"] - answered.loc[~done, "t_end"]).sum()
    assert b["wasted_work"] == pytest.approx(expected)
    assert r.summary().loc["a", "abandoned"] == 0


# ---- 7. a pool of c connections with a queue is M/M/c/K -----------------------------------------


def mmck_blocking(c: int, k: int, a: float) -> float:
    """Blocking probability of M/M/c/K at offered load a = λ/μ (Erlang):

    p_n ∝ a^n / n!               for 0 <= n <= c,
    p_n ∝ a^n / (c! · c^(n−c))   for c < n <= K,     P_block = p_K / Σ_{n=0}^{K} p_n.
    """
    p = [a**n / math.factorial(n) if n <= c else a**n / (math.factorial(c) * c ** (n - c))
         for n in range(k + 1)]
    return p[-1] / sum(p)


@pytest.mark.parametrize(("c", "k", "rate"), [(3, 6, 30.0), (2, 3, 25.0)])
def test_connection_pool_blocks_as_mmck(c, k, rate):
    # HTTP/1.1 carries one request per connection: c connections serve, K − c requests wait
    # (FIFO), the next one overflows (UO). Exponential service of 100 ms, Poisson arrivals,
    # one caller pod, no network or proxy cost. PASTA: the share of overflowing attempts is
    # the blocking probability. (3, 6, a = 3) gives 0.170; K off by one would give 0.145 or
    # 0.205, Erlang B (no queue) 0.346.
    b = {"workers": 10_000, "latency": {"kind": "exponential", "mean": "100ms"}}
    pool = {"tcp": {"maxConnections": c}, "http": {"http1MaxPendingRequests": k - c}}
    sc = a_calls_b(b, [poisson("a", f"{rate}/s")], duration="400s", warmup="20s",
                   mesh={"destinationRules": {"b": rule(connectionPool=pool)}})
    runs = replicate(sc, 10, seed=7)
    shares = []
    for r in runs:
        b_rows = r.requests[(r.requests["destination"] == "b") & (r.requests["t_start"] >= 20)]
        shares.append(float((b_rows["flags"] == "UO").mean()))
        assert stat(r, "upstream_rq_pending_overflow") == (r.requests["flags"] == "UO").sum()
        assert stat(r, "upstream_cx_total") == c
    assert_in_ci(mmck_blocking(c, k, rate * 0.1), shares, f"M/M/{c}/{k} blocking")


# ---- 8. the retry circuit breaker ---------------------------------------------------------------


def retrying(istio: bool, policy: dict) -> meshsim.Scenario:
    """200 calls a second to b, half of them failing 500, each retried up to 4 times."""
    b = {"replicas": 2, "workers": 10_000, "errors": {"rate": 0.5, "status": 500},
         "latency": {"kind": "exponential", "mean": "50ms"}}
    return a_calls_b(b, [poisson("a", "200/s")], duration="20s",
                     mesh={"istioDefaults": istio,
                           "destinationRules": {"b": rule(**policy)} if policy else {},
                           "virtualServices": {"b": route(
                               retries={"attempts": 4, "retryOn": "5xx"})}})


def retries_held(b: pd.DataFrame) -> int:
    """Peak retries in progress: a call holds one from the decision to retry (end of attempt
    k − 1) to the decision after the retry (end of attempt k)."""
    b = b.sort_values(["parent_span_id", "attempt"])
    same = b["parent_span_id"].eq(b["parent_span_id"].shift())
    ends = b["t_end"].to_numpy()
    starts = b["t_end"].shift().to_numpy()
    return peak_overlap(starts[same.to_numpy()], ends[same.to_numpy()])


RETRY_LIMITS = {
    "istio-maxRetries-2": (True, {"connectionPool": {"http": {"maxRetries": 2}}}, 2),
    "envoy-default-3": (False, {}, 3),
    "envoy-budget-min-5": (False, {"retryBudget": {"percent": 0, "minRetryConcurrency": 5}}, 5),
    "istio-budget-20%-min-3": (True, {"retryBudget": {"percent": 20,
                                                      "minRetryConcurrency": 3}}, None),
}


@pytest.mark.parametrize(("istio", "policy", "limit"), RETRY_LIMITS.values(),
                         ids=RETRY_LIMITS.keys())
def test_retry_breaker_limits_concurrent_retries(istio, policy, limit):
    # §1.4/§4.1: when max_retries (or the budget, which replaces it) is full, the retry is not
    # made and the last upstream response is returned with UO: here b's own 500, which shows it
    # is not a local overflow 503.
    r = meshsim.run(retrying(istio, policy), seed=1)
    b = to(r, "b")
    uo = b[b["flags"] == "UO"]
    assert len(uo) > 100
    assert set(uo["status"]) == {500}
    assert uo["t_arrive"].notna().all() and uo["t_reply"].notna().all()
    assert uo["attempt"].max() < 5  # refused while retries remained
    last = b.groupby("parent_span_id")["attempt"].max()
    assert (uo["attempt"].to_numpy() == last.loc[uo["parent_span_id"]].to_numpy()).all()
    held = retries_held(b)
    if limit is not None:
        assert held == limit
    else:
        # max(3, 20% of active + pending): at least the minimum, far below the unlimited peak.
        assert 3 <= held < retries_held(to(meshsim.run(retrying(True, {}), seed=1), "b")) / 2


def test_istio_retries_are_unlimited_by_default():
    # §1.1: istiod writes max_retries = 2^32−1, so the same load sees no retry overflow.
    b = to(meshsim.run(retrying(True, {}), seed=1), "b")
    assert "UO" not in set(b["flags"])
    assert retries_held(b) > 10


@pytest.mark.parametrize(("istio", "policy", "limit"), RETRY_LIMITS.values(),
                         ids=RETRY_LIMITS.keys())
def test_retry_overflow_is_counted_in_stats(istio, policy, limit):
    r = meshsim.run(retrying(istio, policy), seed=1)
    b = to(r, "b")
    assert stat(r, "upstream_rq_retry_overflow") == (b["flags"] == "UO").sum() > 0


def test_routes_to_external_hosts_through_the_egress_gateway_stay_apart():
    # Both external hosts always fail; only `pay` has a retry policy. Calls to `mail` go through
    # the same egress gateway but must keep their own (default: no retry on 503) route.
    retry = {"http": [{"retries": {"attempts": 2, "retryOn": "5xx"}}]}
    sc = build({"a": {"latency": "1ms", "calls": [{"to": "pay", "optional": True},
                                                  {"to": "mail", "optional": True}]}},
               [closed("a", think="0.05s")], duration="0.4s",
               externalServices={"pay": {"latency": "1ms", "errors": {"rate": 1.0, "status": 503}},
                                 "mail": {"latency": "1ms",
                                          "errors": {"rate": 1.0, "status": 503}}},
               mesh={"egressGateway": {"replicas": 2}, "virtualServices": {"pay": retry}})
    r = meshsim.run(sc, seed=1)
    to_gateway = r.requests[r.requests["destination"] == "egress"]
    via = r.requests.set_index("span_id")
    onward = r.requests[r.requests["source"] == "egress"]
    target = dict(zip(onward["parent_span_id"], onward["destination"].astype(str), strict=True))
    attempts = to_gateway.assign(host_to=to_gateway["span_id"].map(target))
    finished = set(r.requests.loc[r.requests["destination"] == "a", "span_id"])
    attempts = attempts[attempts["parent_span_id"].isin(finished)]  # not cut by the run's end
    per_call = attempts.groupby(["parent_span_id", "host_to"]).size()
    assert set(per_call.xs("pay", level="host_to")) == {3}
    assert set(per_call.xs("mail", level="host_to")) == {1}
    assert len(via) == len(r.requests)


def test_plain_envoy_honours_an_explicit_min_health_percent():
    # istioDefaults false keeps Envoy's 50 % panic threshold only where the scenario is silent:
    # minHealthPercent 0, written out, turns panic off, so all hosts ejected means 503 UH.
    od = {"consecutive5xxErrors": 1, "maxEjectionPercent": 100, "interval": "10s",
          "baseEjectionTime": "30s", "minHealthPercent": 0}
    sc = build({"a": {"latency": "1ms", "calls": [{"to": "b"}]},
                "b": {"replicas": 2, "latency": "1ms", "errors": {"rate": 1.0, "status": 503}}},
               [closed("a", think="0.1s")], duration="5s",
               mesh={"destinationRules": {"b": {"trafficPolicy": {"outlierDetection": od}}}})
    r = meshsim.run(sc, seed=1)
    b = r.requests[r.requests["destination"] == "b"]
    assert (b["flags"].astype(str) == "UH").sum() > 0
    assert "panic_enter" not in set(r.events["kind"])
