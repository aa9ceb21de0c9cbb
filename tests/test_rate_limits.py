"""Rate limits in whole scenarios: Envoy's local rate limit at the ingress gateway and at the pods'
inbound sidecars, and the global rate limit with its shared service.

Reference: ``../shared/envoy-semantics.md`` §5 (local: a continuously refilled token bucket per
proxy, 429 ``RL``, never upstream; global: one call per request, 20 ms timeout, fail open or
500 ``RLSE``), §0 item 10 (continuous refill) and §10.2 (flags). Rates are checked against
min(offered, refill) with 95% Student-t intervals over seeded replications; the rest are exact.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from conftest import assert_conserved, assert_in_ci, build, ci95, everything, poisson, replicate
from scipy import stats

import meshsim
from meshsim.limiters import merge_windows

ALL = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
PREFIX = "http_local_rate_limiter.http_local_rate_limit."


def local_limit(rate: int, burst: int | None = None, descriptors: dict | None = None,
                **extra) -> dict:
    """An enforced local rate limit refilling ``rate`` tokens/s (``burst`` tokens at most), with
    a bucket of ``descriptors[client]`` tokens/s for each named client."""
    block = {"token_bucket": {"max_tokens": burst or rate, "tokens_per_fill": rate,
                              "fill_interval": "1s"},
             "filter_enabled": ALL, "filter_enforced": ALL, **extra}
    if descriptors:
        block["descriptors"] = [
            {"entries": [{"key": "client", "value": client}],
             "token_bucket": {"max_tokens": r, "tokens_per_fill": r, "fill_interval": "1s"}}
            for client, r in descriptors.items()]
    return block


def via_ingress(entry: str, rate: str, client: str) -> dict:
    return poisson(entry, rate, client=client, via_ingress=True)


SERVICE = {"workers": 10_000, "latency": "1ms"}
WINDOW = (2.0, 11.0)  # seconds measured: after the first burst, before the end of the run


def e2e(result: meshsim.Result) -> pd.DataFrame:
    rows = everything(result)
    return rows[rows["parent_span_id"] == 0]


def in_window(rows: pd.DataFrame, window: tuple[float, float] = WINDOW) -> pd.DataFrame:
    return rows[(rows["t_start"] >= window[0]) & (rows["t_start"] < window[1])]


def admitted_rate(result: meshsim.Result, client: str | None = None) -> float:
    """End-user requests per second answered 200, of those sent in :data:`WINDOW`."""
    rows = in_window(e2e(result))
    if client is not None:
        rows = rows[rows["client"] == client]
    return float((rows["status"] == 200).sum()) / (WINDOW[1] - WINDOW[0])


def success_rate(result: meshsim.Result, client: str) -> float:
    rows = in_window(e2e(result))
    rows = rows[rows["client"] == client]
    return float((rows["status"] == 200).mean())


def stat(result: meshsim.Result, name: str, proxy: str | None = None) -> int:
    st = result.stats
    rows = st[st["stat"] == name]
    if proxy is not None:
        rows = rows[rows["proxy"] == proxy]
    return int(rows["value"].sum())


# ---- local rate limit: the admitted rate ---------------------------------------------------------


@pytest.mark.parametrize(("offered", "refill"), [(200, 50), (20, 100)])
def test_admitted_rate_is_the_smaller_of_offered_and_refill(offered, refill):
    # One pod with a sidecar limit refilling `refill` tokens/s. Overloaded, it lets through
    # exactly the refill rate in the long run; underloaded (with a burst of a whole second's
    # refill), everything.
    sc = build({"a": SERVICE}, [poisson("a", f"{offered}/s")], duration="12s",
               mesh={"sidecars": {"a": {"localRateLimit": local_limit(refill)}}})
    results = replicate(sc, 10, seed=41)
    assert_in_ci(min(offered, refill), [admitted_rate(r) for r in results],
                 f"admitted rate at {offered}/s offered, {refill}/s refill")
    for r in results[:2]:
        assert_conserved(r)


@pytest.mark.parametrize("replicas", [1, 3])
@pytest.mark.parametrize("where", ["sidecar", "ingress"])
def test_local_limits_admit_replicas_times_the_per_pod_rate(where, replicas):
    # Each proxy has its own bucket: 3 pods (round robin from the client) or 3 gateway pods
    # (clients spread at random) let through 3 × 20/s of 300/s offered.
    limit = local_limit(20)
    if where == "sidecar":
        sc = build({"a": {**SERVICE, "replicas": replicas}}, [poisson("a", "300/s")],
                   duration="12s", mesh={"sidecars": {"a": {"localRateLimit": limit}}})
    else:
        sc = build({"a": SERVICE}, [via_ingress("a", "300/s", "u")], duration="12s",
                   mesh={"ingressGateway": {"replicas": replicas, "localRateLimit": limit}})
    samples = [admitted_rate(r) for r in replicate(sc, 8, seed=42)]
    assert_in_ci(replicas * 20, samples, f"admitted rate with {replicas} {where} proxies")


def test_global_limit_does_not_grow_with_gateway_replicas():
    # The same 20/s per client, counted by the shared service in one-second windows: three
    # gateway pods let through 20 requests in every second, no more, as one would.
    sc = build({"a": SERVICE}, [via_ingress("a", "300/s", "u")], duration="12s",
               mesh={"ingressGateway": {"replicas": 3, "globalRateLimit": {}},
                     "rateLimitService": {
                         "domain": "shop", "latency": "0ms",
                         "descriptors": [{"key": "client", "rate_limit": {
                             "unit": "second", "requests_per_unit": 20}}]}})
    for r in replicate(sc, 3, seed=43):
        rows = in_window(e2e(r))
        ok = rows[rows["status"] == 200]
        assert ok.groupby(np.floor(ok["t_start"])).size().tolist() == [20] * 9
        assert set(rows.loc[rows["status"] != 200, "flags"].astype(str)) == {"RL"}
        assert_conserved(r)


# ---- local rate limit: what the caller sees ------------------------------------------------------


def test_ingress_local_limit_answers_429_rl_and_never_goes_upstream():
    sc = build({"a": SERVICE}, [via_ingress("a", "100/s", "u")], duration="5s",
               mesh={"ingressGateway": {"replicas": 1, "localRateLimit": local_limit(10)}})
    r = meshsim.run(sc, seed=5)
    rows = everything(r)
    client = rows[rows["parent_span_id"] == 0]
    refused = client[client["status"] == 429]
    assert set(refused["flags"]) == {"RL"}
    assert (refused["t_end"] == refused["t_start"]).all()  # the gateway's own reply, at once
    # No refused request has a hop to the service; every admitted one has exactly one.
    upstream = rows[rows["destination"] == "a"]
    assert not set(upstream["parent_span_id"]) & set(refused["span_id"])
    assert len(upstream) == (client["status"] == 200).sum() + (client["status"] == 0).sum()
    # Envoy's four counters, under the filter's stat prefix, with no upstream cluster.
    st = r.stats[r.stats["stat"].str.startswith(PREFIX)].set_index("stat")
    assert set(st["cluster"]) == {"-"} and set(st["proxy"]) == {"ingress-0"}
    assert st.loc[PREFIX + "enabled", "value"] == len(client)
    assert st.loc[PREFIX + "enforced", "value"] == len(refused)
    assert st.loc[PREFIX + "rate_limited", "value"] == len(refused)
    assert st.loc[PREFIX + "ok", "value"] == len(client) - len(refused)
    # 10 burst + 10/s over 5 s, minus whatever the bucket still holds at the end.
    assert 55 <= len(client) - len(refused) <= 60
    assert_conserved(r)


def test_sidecar_local_limit_is_a_plain_429_to_the_caller_and_not_retried_by_default():
    # a calls b; b's pods limit their inbound traffic. Istio's default retry policy (on) does
    # not retry a 429, and the 429 carries no flag at the caller: RL is in b's own stats.
    sc = build({"a": {**SERVICE, "calls": [{"to": "b"}]}, "b": {**SERVICE, "replicas": 2}},
               [poisson("a", "100/s")], duration="5s",
               mesh={"istioDefaults": True, "sidecars": {"b": {"localRateLimit": local_limit(10)}}})
    r = meshsim.run(sc, seed=6)
    rows = everything(r)
    calls = rows[rows["destination"] == "b"]
    refused = calls[calls["status"] == 429]
    assert len(refused) > 0
    assert set(refused["flags"]) == {"-"}
    assert (calls["attempt"] == 1).all()
    assert refused["t_begin"].isna().all() and (refused["t_reply"] == refused["t_arrive"]).all()
    # The app of a fails its request when its call fails (downstreamErrorStatus 500).
    assert set(rows.loc[rows["span_id"].isin(refused["parent_span_id"]), "status"]) == {500}
    st = r.stats[r.stats["cluster"] == "inbound"]
    assert set(st["proxy"]) == {"b-0", "b-1"}
    assert stat(r, PREFIX + "enforced") == len(refused)
    assert stat(r, PREFIX + "ok") == (calls["status"] == 200).sum() + (calls["status"] == 0).sum()
    assert_conserved(r)


@pytest.mark.parametrize(("retry_on", "tries"), [("retriable-4xx", {1}), ("429", {1, 2, 3})])
def test_a_429_is_retried_only_where_a_route_lists_it(retry_on, tries):
    # retriable-4xx means 409 only; a route that lists 429 retries it (here into the same
    # empty buckets, so the retries fail too).
    sc = build({"a": {**SERVICE, "calls": [{"to": "b"}]}, "b": SERVICE},
               [poisson("a", "100/s")], duration="3s",
               mesh={"sidecars": {"b": {"localRateLimit": local_limit(10)}},
                     "virtualServices": {"b": {"http": [{"retries": {
                         "attempts": 2, "retryOn": retry_on}}]}}})
    rows = everything(meshsim.run(sc, seed=7))
    calls = rows[rows["destination"] == "b"]
    assert set(calls["attempt"]) == tries


def test_filter_enforced_share_refuses_that_share_of_the_requests_without_a_token():
    # Shadow mode for half the requests: the others without a token are counted in
    # rate_limited and let through. The share is drawn from the proxy's own named stream.
    half = {"default_value": {"numerator": 50, "denominator": "HUNDRED"}}
    sc = build({"a": SERVICE}, [poisson("a", "200/s")], duration="10s",
               mesh={"sidecars": {"a": {"localRateLimit": local_limit(
                   20, filter_enforced=half)}}})
    r = meshsim.run(sc, seed=8)
    limited, enforced = stat(r, PREFIX + "rate_limited"), stat(r, PREFIX + "enforced")
    assert limited > 1000
    assert abs(enforced / limited - 0.5) < 3 * math.sqrt(0.25 / limited)
    assert enforced == (everything(r)["status"] == 429).sum()
    again = meshsim.run(sc, seed=8)
    assert stat(again, PREFIX + "enforced") == enforced


def test_egress_gateway_local_limit_is_a_plain_429_to_the_calling_sidecar():
    sc = build({"a": {**SERVICE, "calls": [{"to": "ext"}]}}, [poisson("a", "50/s")],
               duration="3s", externalServices={"ext": {"latency": "1ms"}},
               mesh={"egressGateway": {"replicas": 1, "localRateLimit": local_limit(10)}})
    rows = everything(meshsim.run(sc, seed=9))
    to_gateway = rows[rows["destination"] == "egress"]
    refused = to_gateway[to_gateway["status"] == 429]
    assert len(refused) > 0 and set(refused["flags"]) == {"-"}


def test_without_rate_limits_pods_keep_their_own_arrival():
    # The hot path is untouched: no limiter, every pod's arrive_cb is its own arrive.
    engine = meshsim.engine.Engine(build({"a": SERVICE}, [via_ingress("a", "1/s", "u")]), 1)
    assert engine.limits == []
    pods = [p for pods in engine.pods.values() for p in pods]
    assert all(p.arrive_cb == (p.arrive,) for p in pods)


# ---- per-client quotas ---------------------------------------------------------------------------

# A noisy client (300/s) and a quiet one (10/s) through two gateway pods, each with a bucket of
# 60/s. Without descriptors they share each pod's bucket: 120/s of 310/s get through, and every
# request has the same chance, 120/310, whoever sent it. With a descriptor of 40/s per pod for
# the noisy client, it gets 80/s (its admitted requests also take a token of the default bucket,
# Envoy's always_consume_default_token_bucket), and the quiet client finds tokens left.
NOISY, QUIET = "batch", "web"


def quotas(per_client: bool) -> meshsim.Scenario:
    limit = local_limit(60, descriptors={NOISY: 40} if per_client else None)
    return build({"front": SERVICE},
                 [via_ingress("front", "300/s", NOISY), via_ingress("front", "10/s", QUIET)],
                 duration="12s",
                 mesh={"ingressGateway": {"replicas": 2, "localRateLimit": limit}})


def test_without_per_client_descriptors_both_clients_suffer():
    results = replicate(quotas(per_client=False), 10, seed=44)
    for client in (NOISY, QUIET):
        assert_in_ci(120 / 310, [success_rate(r, client) for r in results],
                     f"success rate of {client} sharing the buckets")
    assert max(success_rate(r, QUIET) for r in results) < 0.6


def test_per_client_descriptors_keep_the_quiet_client_within_its_slo():
    results = replicate(quotas(per_client=True), 10, seed=44)
    assert_in_ci(80 / 300, [success_rate(r, NOISY) for r in results],
                 "success rate of the throttled client")
    assert ci95([success_rate(r, QUIET) for r in results])[0] >= 0.99
    rows = e2e(results[0])
    assert set(rows.loc[rows["status"] != 200, "client"].astype(str)) <= {NOISY}
    assert set(rows.loc[rows["status"] != 200, "flags"].astype(str)) == {"RL"}


def test_limiting_periods_are_events_not_one_row_per_request():
    r = meshsim.run(quotas(per_client=True), seed=45)
    ev = r.events[r.events["kind"].str.startswith("limiting")]
    # Each gateway pod's noisy bucket starts limiting once and goes on to the end: one row each,
    # although it lets a request through and refuses the next one 40 times a second.
    assert sorted(zip(ev["source"], ev["kind"], ev["detail"], strict=True)) == [
        ("ingress-0", "limiting_started", f"local client={NOISY}"),
        ("ingress-1", "limiting_started", f"local client={NOISY}")]


def test_merge_windows_keeps_periods_apart_by_more_than_the_gap():
    events = [(0.0, "limiting_started", "b", ""), (0.5, "limiting_stopped", "b", ""),
              (0.6, "limiting_started", "b", ""), (2.0, "limiting_stopped", "b", ""),
              (3.5, "limiting_started", "b", ""), (1.0, "limiting_started", "c", "")]
    events.sort(key=lambda e: e[0])
    assert [(t, k[9:], b) for t, k, b, _ in merge_windows(events, gap=1.0)] == [
        (0.0, "started", "b"), (1.0, "started", "c"), (2.0, "stopped", "b"),
        (3.5, "started", "b")]


# ---- global rate limit: the service's outages ----------------------------------------------------


def outage_scenario(deny: bool, latency: object = "2ms") -> meshsim.Scenario:
    return build({"front": SERVICE}, [via_ingress("front", "100/s", "u")], duration="10s",
                 mesh={"ingressGateway": {"replicas": 1, "globalRateLimit": {}},
                       "rateLimitService": {
                           "domain": "shop", "latency": latency, "failureModeDeny": deny,
                           "outages": [{"start": "4s", "end": "6s"}],
                           "descriptors": [{"key": "client", "rate_limit": {
                               "unit": "second", "requests_per_unit": 1000}}]}})


@pytest.mark.parametrize("deny", [False, True])
def test_global_limiter_outage_fails_open_or_denies_with_rlse(deny):
    r = meshsim.run(outage_scenario(deny), seed=10)
    rows = e2e(r)
    rows = rows[rows["status"] != 0]
    during = rows[(rows["t_start"] >= 4) & (rows["t_start"] < 6)]
    outside = rows[(rows["t_start"] < 4) | (rows["t_start"] >= 6)]
    latency = rows["t_end"] - rows["t_start"]
    # Outside the outage every request waits 2 ms for the service, then 1 ms of work.
    assert set(outside["status"]) == {200}
    assert np.allclose(latency[outside.index], 0.003)
    if deny:
        # No answer within the 20 ms timeout: 500 RLSE, nothing goes upstream.
        assert set(during["status"]) == {500} and set(during["flags"]) == {"RLSE"}
        assert np.allclose(latency[during.index], 0.020)
        upstream = everything(r)
        assert not set(upstream.loc[upstream["destination"] == "front", "parent_span_id"]) \
            & set(during["span_id"])
    else:
        # Fail open: everything goes through, each request 20 ms later (the timeout).
        assert set(during["status"]) == {200} and set(during["flags"]) == {"-"}
        assert np.allclose(latency[during.index], 0.021)
        assert stat(r, "ratelimit.failure_mode_allowed") == len(during)
    assert stat(r, "ratelimit.error") == len(during)
    assert stat(r, "ratelimit.ok") == len(outside)
    rl = r.stats[r.stats["stat"].str.startswith("ratelimit.")]
    assert set(rl["cluster"]) == {"front"}
    assert_conserved(r)


def test_latency_added_by_the_outage_is_the_timeout_less_the_usual_wait():
    # The service answers in a lognormal time (median 2 ms, p99 8 ms), cut at the 20 ms timeout.
    # During the outage every request waits the whole timeout: the mean end-to-end latency
    # goes up by 20 ms - E[min(L, 20 ms)].
    mu, sigma = math.log(0.002), math.log(4) / stats.norm.ppf(0.99)
    c = 0.020
    usual = (math.exp(mu + sigma**2 / 2) * stats.norm.cdf((math.log(c) - mu - sigma**2) / sigma)
             + c * stats.norm.sf((math.log(c) - mu) / sigma))
    latency = {"kind": "lognormal", "median": "2ms", "p99": "8ms"}
    diffs = []
    for r in replicate(outage_scenario(deny=False, latency=latency), 8, seed=46):
        rows = e2e(r)
        rows = rows[rows["status"] != 0]
        took = rows["t_end"] - rows["t_start"]
        inside = (rows["t_start"] >= 4) & (rows["t_start"] < 6)
        assert np.allclose(took[inside], c + 0.001)
        diffs.append(took[inside].mean() - took[~inside].mean())
    assert_in_ci(c - usual, diffs, "latency added during the outage")


def test_rate_limits_with_pools_timeouts_and_retries_end_every_request_once():
    # Everything at once: a global limit (with an outage running past the end) at two gateway
    # pods, and b's sidecars with a local limit in front of a small inbound pool, called with
    # per-try timeouts and retries on 429. Every end-user request ends once or is still open.
    sc = build({"a": {"workers": 1000, "latency": "1ms", "calls": [{"to": "b"}]},
                "b": {"replicas": 2, "workers": 2,
                      "latency": {"kind": "exponential", "mean": "20ms"}}},
               [via_ingress("a", "200/s", "u"), via_ingress("a", "20/s", "v")], duration="8s",
               mesh={"istioDefaults": True,
                     "sidecars": {"b": {
                         "localRateLimit": local_limit(60, descriptors={"v": 5}),
                         "inboundConnectionPool": {"tcp": {"maxConnections": 2},
                                                   "http": {"http1MaxPendingRequests": 3}}}},
                     "virtualServices": {"b": {"http": [{"timeout": "200ms", "retries": {
                         "attempts": 2, "perTryTimeout": "30ms", "retryOn": "5xx,429"}}]}},
                     "ingressGateway": {"replicas": 2, "globalRateLimit": {}},
                     "rateLimitService": {
                         "domain": "d", "timeout": "10ms",
                         "latency": {"kind": "exponential", "mean": "5ms"},
                         "outages": [{"start": "7s", "end": "9s"}],
                         "descriptors": [{"key": "client", "rate_limit": {
                             "unit": "second", "requests_per_unit": 150}}]}})
    for seed in range(3):
        r = meshsim.run(sc, seed=seed)
        assert_conserved(r)
        rows = everything(r)
        flags = set(zip(rows["destination"], rows["status"], rows["flags"], strict=True))
        assert {("ingress", 429, "RL"), ("b", 429, "-"), ("b", 429, "URX"),
                ("b", 504, "UT")} <= flags


# ---- global rate limit: the service's capacity ------------------------------------------------


def capacity_scenario(capacity: int) -> meshsim.Scenario:
    return build({"front": SERVICE}, [via_ingress("front", "1000/s", "u")], duration="3s",
                 mesh={"ingressGateway": {"replicas": 1, "globalRateLimit": {}},
                       "rateLimitService": {
                           "domain": "shop", "latency": "5ms", "capacity": capacity,
                           "descriptors": [{"key": "client", "rate_limit": {
                               "unit": "second", "requests_per_unit": 100000}}]}})


def test_an_overloaded_rate_limit_service_times_out_and_the_filter_fails_open():
    # 1000 calls/s at 5 ms each need 5 slots on average. With 10 nothing waits long; with 4
    # the queue grows without bound, calls soon wait past the 20 ms timeout and the filter
    # lets the requests through after the timeout (fail open).
    ample, short = meshsim.run(capacity_scenario(10), seed=2), meshsim.run(capacity_scenario(4),
                                                                           seed=2)
    assert stat(ample, "ratelimit.error") < 0.01 * stat(ample, "ratelimit.ok")
    errors, ok = stat(short, "ratelimit.error"), stat(short, "ratelimit.ok")
    assert errors > 0.5 * (errors + ok)
    rows = e2e(short)
    rows = rows[rows["status"] != 0]
    assert set(rows["status"]) == {200}
    late = rows[rows["t_start"] >= 1.5]  # the queue is long by then: every call times out
    assert np.allclose(late["t_end"] - late["t_start"], 0.020 + 0.001)
