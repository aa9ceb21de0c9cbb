"""The caller's proxy: per upstream cluster, the state a client-side Envoy keeps.

Envoy keeps load-balancer state, connection-pool counters and outlier-detection counters *per
proxy and per upstream cluster* (circuit-breaker limits are "fully distributed", see
``../shared/envoy-semantics.md`` §1.2). A :class:`Cluster` is that unit: one exists for every
(calling pod or gateway pod, destination) pair. Policies added later hang off it and are consulted
on the way out (``pick``) and on the way back (``on_result``); the engine does not change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Cluster", "make_picker"]


class Cluster:
    """One caller proxy's view of one upstream.

    Attributes
    ----------
    dest : str
        The ``destination`` of request records (a service, ``egress``, or an external host).
    code : int
        Its code in the engine's table of node names (records store codes).
    hosts : list
        The upstream endpoints (pods); the engine calls ``hosts[i].arrive(attempt)``.
    active : list of int
        Requests this proxy has outstanding per host (Envoy's per-host ``rq_active``), used by the
        least-request balancer.
    pick : callable
        ``pick() -> int``: index of the host for the next attempt.
    """

    __slots__ = (
        "active", "back_delay", "code", "dest", "hosts", "out_delay", "pick", "policy"
    )

    def __init__(
        self,
        dest: str,
        code: int,
        hosts: list[Any],
        policy: str,
        uniform: Callable[[], float] | None,
        out_delay: Callable[[], float],
        back_delay: Callable[[], float],
    ):
        self.dest = dest
        self.code = code
        self.hosts = hosts
        self.active = [0] * len(hosts)
        self.policy = policy
        self.pick = make_picker(policy, len(hosts), self.active, uniform)
        self.out_delay = out_delay
        self.back_delay = back_delay


def make_picker(
    policy: str, n: int, active: list[int], uniform: Callable[[], float] | None
) -> Callable[[], int]:
    """Build the host-selection function of a load-balancing policy.

    Parameters
    ----------
    policy : {"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"}
    n : int
        Number of hosts.
    active : list of int
        The proxy's outstanding requests per host (read live by ``LEAST_REQUEST``).
    uniform : callable
        U[0, 1) draws from this proxy's own stream.
    """
    if n == 1:
        return lambda: 0
    if uniform is None:
        raise ValueError("a random stream is needed to balance over several hosts")
    if policy == "ROUND_ROBIN":
        # Each Envoy starts its round robin at a random offset (RoundRobinLoadBalancer::
        # refreshHostSource seeds the index with the LB's random seed_), so that many client
        # proxies do not all hit the first host together.
        state = [int(uniform() * n)]

        def round_robin() -> int:
            i = state[0]
            state[0] = i + 1 if i + 1 < n else 0
            return i

        return round_robin
    if policy == "RANDOM":
        return lambda: int(uniform() * n)
    if policy == "LEAST_REQUEST":
        # Envoy's unweighted least request: choice_count (2) hosts drawn at random with
        # replacement; the one with fewer active requests wins, ties keep the first draw
        # (LeastRequestLoadBalancer::unweightedHostPick).
        def least_request() -> int:
            i = int(uniform() * n)
            j = int(uniform() * n)
            return j if active[j] < active[i] else i

        return least_request
    raise ValueError(f"unknown load-balancing policy {policy!r}")
