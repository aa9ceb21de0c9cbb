"""The client proxy's load balancer and panic routing, on the objects alone (no simulation).

Reference ``envoy-semantics.md`` §3: candidates are the healthy hosts unless the healthy share is
below the panic threshold (Envoy 50 %, Istio 0 with outlier detection), in which case all hosts
are; least request is power of two choices over the proxy's active requests, ties to the first
draw; round robin starts at a random offset and skips nobody.
"""

from __future__ import annotations

from collections import Counter
from itertools import cycle

import numpy as np
import pytest

from meshsim.policies.outlier import OutlierConfig, OutlierDetector
from meshsim.sidecar import Cluster, make_picker


class Host:
    def __init__(self, name: str):
        self.name = name


def uniforms(*values: float):
    it = cycle(values)
    return lambda: next(it)


def cluster(n: int, policy: str = "ROUND_ROBIN", uniform=None) -> Cluster:
    return Cluster("caller-0", "b", 1, [Host(f"b-{i}") for i in range(n)], policy,
                   uniform or uniforms(0.0), lambda: 0.0, lambda: 0.0)


def test_round_robin_starts_at_a_random_offset_and_cycles():
    pick = make_picker("ROUND_ROBIN", [0, 1, 2], [0, 0, 0], uniforms(0.5))
    assert [pick() for _ in range(6)] == [1, 2, 0, 1, 2, 0]


def test_round_robin_follows_the_available_hosts_as_they_change():
    avail = [0, 1, 2]
    pick = make_picker("ROUND_ROBIN", avail, [0, 0, 0], uniforms(0.0))
    assert [pick(), pick()] == [0, 1]
    avail[:] = [0, 2]  # host 1 ejected: the index goes on modulo the new size
    assert [pick() for _ in range(4)] == [0, 2, 0, 2]


def test_least_request_takes_the_less_busy_of_two_random_draws_ties_to_the_first():
    active = [5, 0, 3]
    # draws: host 0 then host 1 -> 1 (fewer active); host 2 then host 0 -> 2
    pick = make_picker("LEAST_REQUEST", [0, 1, 2], active, uniforms(0.0, 0.4, 0.9, 0.1))
    assert [pick(), pick()] == [1, 2]
    active[:] = [1, 1, 1]
    tie = make_picker("LEAST_REQUEST", [0, 1, 2], active, uniforms(0.9, 0.0))
    assert tie() == 2  # a tie keeps the first draw


def test_least_request_picks_the_busiest_host_only_when_both_draws_land_on_it():
    active = [9, 0, 0, 0]
    rng = np.random.default_rng(7)
    pick = make_picker("LEAST_REQUEST", [0, 1, 2, 3], active, lambda: float(rng.random()))
    n = 20_000
    share = Counter(pick() for _ in range(n))[0] / n
    # Host 0 wins only when both draws land on it: p = (1/4)^2. Tolerance: 4 standard errors of
    # a binomial share (fixed seed, so it fails only if the rule is wrong).
    p = 1 / 16
    assert abs(share - p) <= 4 * (p * (1 - p) / n) ** 0.5


def test_random_is_uniform_over_the_available_hosts():
    u = iter([i / 3000 for i in range(3000)])
    pick = make_picker("RANDOM", [0, 1, 2], [0, 0, 0], lambda: next(u))
    assert Counter(pick() for _ in range(3000)) == {0: 1000, 1: 1000, 2: 1000}


def test_a_single_host_needs_no_random_stream():
    assert make_picker("LEAST_REQUEST", [0], [0], None)() == 0
    with pytest.raises(ValueError, match="random stream"):
        make_picker("ROUND_ROBIN", [0, 1], [0, 0], None)


def _with_outlier(n: int, panic: float) -> Cluster:
    cl = cluster(n)
    cfg = OutlierConfig(consecutive_5xx=1, max_ejection_percent=100, update_merge_window=0.0)
    cl.outlier = OutlierDetector(n, cfg, uniforms(0.0))
    cl.panic_threshold = panic
    return cl


def test_ejected_hosts_leave_the_candidates():
    cl = _with_outlier(3, panic=0.0)
    cl.outlier.on_result(0.1, 1, 503)
    cl.refresh(0.1)
    assert cl.avail == [0, 2]
    assert [cl.pick() for _ in range(4)] == [0, 2, 0, 2]


def test_istio_panic_threshold_0_all_ejected_leaves_no_candidate():
    # Istio writes healthy_panic_threshold = minHealthPercent (default 0) with outlier detection:
    # panic never happens, and with every host ejected the router answers 503 UH.
    cl = _with_outlier(2, panic=0.0)
    for host in (0, 1):
        cl.outlier.on_result(0.1, host, 503)
    cl.refresh(0.1)
    assert cl.avail == []
    assert not cl.in_panic and cl.events == []


def test_envoy_panic_threshold_50_routes_to_all_hosts_below_half_healthy():
    cl = _with_outlier(2, panic=50.0)
    cl.outlier.on_result(0.1, 0, 503)
    cl.refresh(0.1)
    # 1 healthy of 2 is 50 %: not *below* the threshold, so no panic; the ejected host is skipped.
    assert cl.avail == [1] and not cl.in_panic
    cl.outlier.on_result(0.2, 1, 503)
    cl.refresh(0.2)
    assert cl.avail == [0, 1] and cl.in_panic  # 0 of 2: panic, all hosts, ejected ones included
    assert cl.events == [(0.2, "panic_enter", -1, "0 of 2 hosts healthy")]


def test_panic_ends_when_hosts_come_back():
    cl = _with_outlier(2, panic=50.0)
    for host in (0, 1):
        cl.outlier.on_result(0.1, host, 503)
    cl.refresh(0.1)
    tick = cl.outlier.next_tick()
    while tick <= 40.0:  # base ejection 30 s: both come back on the first tick after 30.1 s
        cl.outlier.on_tick(tick)
        tick = cl.outlier.next_tick()
    cl.refresh(40.0)
    assert cl.avail == [0, 1] and not cl.in_panic
    assert [e[1] for e in cl.events] == ["panic_enter", "panic_exit"]


def test_health_changes_reach_the_balancer_through_the_merge_window():
    cl = cluster(3)
    cfg = OutlierConfig(consecutive_5xx=1, max_ejection_percent=100)  # merge window 1 s
    cl.outlier = OutlierDetector(3, cfg, uniforms(0.0))
    cl.panic_threshold = 0.0
    cl.outlier.on_result(0.1, 0, 503)  # first change: applied at once
    cl.refresh(0.1)
    assert cl.avail == [1, 2]
    cl.outlier.on_result(0.3, 1, 503)  # second change within 1 s: held until 1.1 s
    cl.refresh(0.5)
    assert cl.avail == [1, 2]
    cl.refresh(1.1)
    assert cl.avail == [2]
