"""Each cookbook scenario shows what its page says: one test per recipe, on the scenario's own
seed, comparing the scenario as written with its variants.

The runs are deterministic, so the figures could be pinned exactly; the tests assert the claim
with a wide margin instead (ratios, differences of tens of percentage points), so that a change
of the engine that moves the third digit does not fail them and one that breaks the claim does.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pandas as pd

import meshsim

COOKBOOK = Path(__file__).resolve().parent.parent / "scenarios" / "cookbook"


@cache
def run(recipe: str, variant: str = "baseline") -> meshsim.Result:
    return meshsim.run(meshsim.load_scenario(COOKBOOK / f"{recipe}.yaml").variant(variant))


def measured(result: meshsim.Result) -> pd.DataFrame:
    """Every attempt that started after the warm-up."""
    requests = result.requests
    return requests[requests["t_start"] >= result.meta["warmup"]]


def count(result: meshsim.Result, destination: str, status: int, flags: str) -> int:
    hops = measured(result)
    return int(((hops["destination"] == destination) & (hops["status"] == status)
                & (hops["flags"] == flags)).sum())


@cache
def summary(recipe: str, variant: str = "baseline") -> pd.DataFrame:
    return run(recipe, variant).summary()


def per_user_request(result: meshsim.Result, client: str) -> dict[str, float]:
    """Attempts each hop received per end-user request of ``client`` (tries included)."""
    users = result.end_to_end()
    users = users[(users["client"] == client) & (users["t_start"] >= result.meta["warmup"])]
    hops = result.requests[result.requests["request_id"].isin(users["request_id"])]
    return (hops.groupby("destination", observed=True).size() / len(users)).to_dict()


def ejected_hosts(result: meshsim.Result) -> set[str]:
    events = result.events
    return set(events.loc[events["kind"] == "ejection", "host"].astype(str))


def test_every_cookbook_scenario_has_a_test_a_page_and_an_slo():
    recipes = sorted(p.stem for p in COOKBOOK.glob("*.yaml"))
    tested = {name[len("test_"):].replace("_", "-") for name in globals()
              if name.startswith("test_")}
    # A recipe with several tests has a module of its own: test_cookbook_<recipe>.py.
    tested |= {p.stem[len("test_cookbook_"):].replace("_", "-")
               for p in Path(__file__).parent.glob("test_cookbook_*.py")}
    docs = COOKBOOK.parent.parent / "docs" / "cookbook"
    for recipe in recipes:
        assert recipe in tested, f"no test_{recipe.replace('-', '_')}"
        assert (docs / f"{recipe}.md").exists(), f"no docs/cookbook/{recipe}.md"
        scenario = meshsim.load_scenario(COOKBOOK / f"{recipe}.yaml")
        slos = [scenario.slo, *(c.slo for c in scenario.workload),
                *(s.slo for s in scenario.services.values())]
        assert any(slos), f"{recipe} declares no SLO"


# --- the seed's patterns -------------------------------------------------------------------------


def test_breaker_at_ingress():
    with_breaker, without = summary("breaker-at-ingress"), summary("breaker-at-ingress",
                                                                  "without-breaker")
    # The gateway sheds the spike at once (503 UO) and what it lets in is answered fast.
    assert count(run("breaker-at-ingress"), "ingress", 503, "UO") > 2000
    assert with_breaker.loc["end-to-end", "latency_p99"] < 0.25
    assert with_breaker.loc["api", "abandoned"] == 0
    # Without it the spike queues in api: the users time out, api works for nobody.
    assert count(run("breaker-at-ingress", "without-breaker"), "ingress", 504, "UT") > 5000
    assert without.loc["end-to-end", "latency_p99"] >= 0.99
    assert without.loc["api", "wasted_work"] > 100  # seconds of api's work nobody waited for
    assert with_breaker.loc["end-to-end", "goodput"] > 1.3 * without.loc["end-to-end", "goodput"]
    assert (with_breaker.loc["end-to-end", "success_rate"]
            > without.loc["end-to-end", "success_rate"] + 0.2)


def test_breaker_between_services():
    with_breaker = run("breaker-between-services")
    without = run("breaker-between-services", "without-breaker")
    # The excess calls to the slow dependency fail at once; the page renders without them.
    assert count(with_breaker, "recommendations", 503, "UO") > 200
    assert with_breaker.summary().loc["end-to-end", "success_rate"] > 0.995
    # Without the breaker frontend runs out of workers: the pages that never call
    # recommendations time out too.
    def unaffected_success(result: meshsim.Result) -> float:
        users = result.end_to_end()
        users = users[users["t_start"] >= result.meta["warmup"]]
        callers = result.requests.loc[result.requests["destination"] == "recommendations",
                                      "request_id"]
        pages = users[~users["request_id"].isin(callers)]
        return float((pages["status"] < 300).mean())

    assert unaffected_success(with_breaker) > 0.995
    assert unaffected_success(without) < 0.8
    assert without.summary().loc["end-to-end", "success_rate"] < 0.8
    assert without.summary().loc["frontend", "wasted_work"] > 100


def test_breaker_at_egress():
    with_breaker, without = summary("breaker-at-egress"), summary("breaker-at-egress",
                                                                 "without-breaker")
    # ledger never gets more than it serves: its answers stay within its SLO (p99 500 ms).
    assert with_breaker.loc["ledger", "latency_p99"] < 0.5
    assert without.loc["ledger", "latency_p99"] > 0.8
    assert count(run("breaker-at-egress"), "ledger", 503, "UO") > 500
    # Without the breaker orders' workers wait with the calls: users time out, for longer
    # than the batch lasts, and the goodput falls well below what ledger can serve.
    assert without.loc["orders", "wasted_work"] > 500
    assert with_breaker.loc["end-to-end", "goodput"] > 1.5 * without.loc["end-to-end", "goodput"]
    late = run("breaker-at-egress", "without-breaker").end_to_end()
    late = late[(late["t_start"] >= 22) & (late["t_start"] < 28)]
    assert (late["status"] >= 500).mean() > 0.5  # the batch ended at 20 s
    late = run("breaker-at-egress").end_to_end()
    late = late[(late["t_start"] >= 22) & (late["t_start"] < 28)]
    assert (late["status"] >= 500).mean() < 0.02


def test_pool_ejection():
    # The two bad pods are ejected, and only they.
    assert ejected_hosts(run("pool-ejection")) == {"inventory-v2-0", "inventory-v2-1"}
    both, no_ejection = summary("pool-ejection"), summary("pool-ejection", "without-ejection")
    no_breaker = summary("pool-ejection", "without-breaker")
    # Without ejection half of the requests hit the broken pods.
    assert not ejected_hosts(run("pool-ejection", "without-ejection"))
    assert abs(no_ejection.loc["end-to-end", "success_rate"] - 0.5) < 0.05
    # Ejection without the breaker is worse than no ejection: v1 cannot carry the load.
    assert no_breaker.loc["end-to-end", "success_rate"] < no_ejection.loc["end-to-end",
                                                                          "success_rate"]
    assert no_breaker.loc["end-to-end", "latency_p99"] >= 0.99
    # Both together: the excess fails at once, the rest is fast, v1 serves near its capacity.
    assert both.loc["end-to-end", "success_rate"] > 0.85
    assert both.loc["end-to-end", "latency_p99"] < 0.1
    assert both.loc["end-to-end", "goodput"] > 1.6 * no_ejection.loc["end-to-end", "goodput"]


def test_throttle_per_client():
    per_client = summary("throttle-per-client")
    shared = summary("throttle-per-client", "shared-bucket")
    unlimited = summary("throttle-per-client", "without-throttling")
    for client in ("client:web", "client:mobile"):
        assert per_client.loc[client, "success_rate"] == 1.0
        assert per_client.loc[client, "latency_p99"] < 0.25  # their SLO
        assert shared.loc[client, "success_rate"] < 0.9
        assert unlimited.loc[client, "success_rate"] < 0.6
    refused = measured(run("throttle-per-client"))
    refused = refused[(refused["status"] == 429) & (refused["flags"] == "RL")]
    assert set(refused["client"].astype(str)) == {"partner"}
    # The partner gets its quota, 2 gateway pods × 50/s, during its 15 s job.
    partner = run("throttle-per-client").end_to_end()
    partner = partner[(partner["client"] == "partner") & (partner["status"] == 200)]
    assert abs(len(partner) / 15 - 100) < 10


# --- the questions users ask ---------------------------------------------------------------------


def test_scaling_callee_uo():
    def uo(variant: str) -> int:
        return count(run("scaling-callee-uo", variant), "cart", 503, "UO")

    assert uo("baseline") > 1000
    assert uo("callee-scaled") >= uo("baseline")  # more cart pods: no fewer UO
    assert uo("callers-scaled") < uo("baseline") / 20
    assert uo("limit-raised") < uo("baseline") / 20
    # cart is not the bottleneck in any of them.
    assert summary("scaling-callee-uo").loc["cart", "utilisation"] < 0.2


def test_bad_pod_not_ejected():
    capped = run("bad-pod-not-ejected")
    stats = capped.stats.groupby("stat")["value"].sum()
    assert not ejected_hosts(capped)  # never ejected
    assert stats["outlier_detection.ejections_detected_consecutive_5xx"] > 100
    assert stats["outlier_detection.ejections_overflow"] == stats[
        "outlier_detection.ejections_detected_consecutive_5xx"]
    assert abs(capped.summary().loc["end-to-end", "success_rate"] - 2 / 3) < 0.03
    fixed = run("bad-pod-not-ejected", "fixed")
    ejections = fixed.events[fixed.events["kind"] == "ejection"]
    assert set(ejections["host"].astype(str)) == {"profile-v2-0"}
    assert set(ejections["source"].astype(str)) == {"frontend-0", "frontend-1"}
    assert ejections["t"].max() < 1.0
    assert fixed.summary().loc["end-to-end", "success_rate"] == 1.0
    gateway_only = run("bad-pod-not-ejected", "gateway-errors-only")
    assert not ejected_hosts(gateway_only)  # a 500 is not a gateway error
    assert gateway_only.summary().loc["end-to-end", "success_rate"] < 0.7


def test_retries_multiply():
    everywhere = per_user_request(run("retries-multiply"), "shoppers")
    assert everywhere == {"ingress": 1.0, "checkout": 3.0, "orders": 9.0, "stock": 27.0}
    hops = measured(run("retries-multiply"))
    assert hops.loc[hops["destination"] == "stock", "attempt"].max() == 3
    assert per_user_request(run("retries-multiply", "retry-next-to-failure"), "shoppers") == {
        "ingress": 1.0, "checkout": 1.0, "orders": 1.0, "stock": 3.0}
    assert per_user_request(run("retries-multiply", "istio-default"), "shoppers") == {
        "ingress": 1.0, "checkout": 1.0, "orders": 1.0, "stock": 1.0}
    budget = per_user_request(run("retries-multiply", "retry-budget"), "shoppers")
    assert 3 < budget["stock"] < 27 / 2
    # The shoppers wait for every try before their error; the browsers do not notice.
    s = summary("retries-multiply")
    assert s.loc["client:shoppers", "latency_p50"] > 5 * summary(
        "retries-multiply", "retry-next-to-failure").loc["client:shoppers", "latency_p50"]
    assert s.loc["client:browsers", "success_rate"] == 1.0
    # Retries nobody configured: Istio's default policy retries a crashed pod's refused
    # connections (503 UF), and nothing else.
    crash = measured(run("retries-multiply", "pod-crash-istio-default"))
    stock = crash[crash["destination"] == "stock"]
    refused = stock[(stock["status"] == 503) & (stock["flags"] == "UF")]
    assert len(refused) > 10
    assert (stock["attempt"] == 2).sum() == len(refused)
    assert set(stock.loc[stock["attempt"] > 1, "status"]) == {200}
    assert summary("retries-multiply", "pod-crash-istio-default").loc[
        "end-to-end", "success_rate"] == 1.0


def test_timeout_vs_per_try_timeout():
    def outcome(variant: str) -> tuple[pd.DataFrame, pd.Series]:
        result = run("timeout-vs-per-try-timeout", variant)
        return measured(result), result.stats.groupby("stat")["value"].sum()

    hops, stats = outcome("baseline")
    users = summary("timeout-vs-per-try-timeout")
    # The stuck tries (2 %) run into the route timeout: 504 UT, never retried.
    assert hops["attempt"].max() == 1
    assert stats.get("upstream_rq_retry", 0) == 0
    assert 0.01 < 1 - users.loc["end-to-end", "success_rate"] < 0.03
    assert users.loc["end-to-end", "latency_p99"] >= 0.99
    hops, stats = outcome("per-try-timeout")
    users = summary("timeout-vs-per-try-timeout", "per-try-timeout")
    assert stats["upstream_rq_per_try_timeout"] == stats["upstream_rq_retry"] > 30
    assert users.loc["end-to-end", "success_rate"] > 0.999
    assert users.loc["end-to-end", "latency_p99"] < 0.2  # the SLO
    # A perTryTimeout no shorter than the route timeout changes nothing.
    too_long = summary("timeout-vs-per-try-timeout", "per-try-timeout-too-long")
    assert too_long.loc["end-to-end", "success_rate"] == summary(
        "timeout-vs-per-try-timeout").loc["end-to-end", "success_rate"]


def test_local_rate_limit_scaling():
    def db_rate(variant: str) -> float:
        return summary("local-rate-limit-scaling", variant).loc["db", "throughput"]

    # 3 pods × 100/s, and 6 pods × 50/s: 300/s reach db.
    assert abs(db_rate("baseline") - 300) < 10
    assert abs(db_rate("api-scaled-bucket-halved") - 300) < 10
    # 6 pods × 100/s: more than db serves (about 430/s); everyone times out.
    scaled = summary("local-rate-limit-scaling", "api-scaled")
    assert db_rate("api-scaled") > 400
    assert scaled.loc["db", "utilisation"] > 0.95
    assert scaled.loc["client:web", "latency_p99"] >= 1.99
    assert scaled.loc["end-to-end", "goodput"] < 0.6 * summary(
        "local-rate-limit-scaling").loc["end-to-end", "goodput"]
    # A global quota holds whatever the number of pods.
    assert abs(db_rate("global-limit") - 300) < 10
    assert summary("local-rate-limit-scaling", "global-limit").loc[
        "client:web", "latency_p99"] < 0.25
