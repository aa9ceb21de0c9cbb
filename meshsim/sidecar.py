"""The caller's proxy: per upstream cluster, the state a client-side Envoy keeps.

Envoy keeps load-balancer state, connection-pool counters and outlier-detection counters *per
proxy and per upstream cluster* (circuit-breaker limits are "fully distributed", see
``../shared/envoy-semantics.md`` §1.2). A :class:`Cluster` is that unit: one exists for every
(calling pod or gateway pod, upstream cluster) pair, and holds the policies that apply there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["Cluster", "WeightedClusters", "make_picker"]


class Cluster:
    """One caller proxy's view of one upstream cluster.

    Attributes
    ----------
    proxy : str
        The calling pod or gateway pod (e.g. ``frontend-1``), for stats and events.
    dest : str
        The cluster in stats and events: the ``destination`` of request records (a service,
        ``egress``, or an external host), or ``reviews|v2`` for the subset ``v2`` of ``reviews``
        (Envoy's ``outbound|80|v2|reviews...``), a cluster of its own.
    code : int
        Its code in the engine's table of node names (records store codes).
    hosts : list
        The upstream endpoints (pods); the engine calls ``hosts[i].arrive(attempt)``.
    active : list of int
        Requests this proxy has outstanding per host (Envoy's per-host ``rq_active``), read by
        the least-request balancer.
    avail : list of int
        Hosts the balancer may pick now: the healthy ones, or all of them in panic. The list
        object never changes (the pickers hold it); its content does.
    pick : callable
        ``pick() -> int``: the host index for the next attempt.
    policy_path : bool
        Whether calls need the router (:mod:`meshsim.router`): some policy here can act. When
        false the engine's lean path is exact: no limit can be reached, no host ejected, no
        timer fire and no retry be wanted.
    pool, outlier, retry_policy, retry_uniform, panic_threshold, fault
        The policies (:mod:`meshsim.policies`) when ``policy_path`` is true.
    stats : dict of str to int
        Router and balancer counters under Envoy's names (the pool's and the detector's own
        counters live in those objects).
    events : list of tuple
        ``(t, kind, host, detail)`` of panic changes.
    """

    __slots__ = (
        "active", "admission", "avail", "back_delay", "breaker", "code", "connect_time",
        "dest", "events", "fault", "guarded", "hosts", "in_panic",
        "out_delay", "outlier", "panic_threshold", "per_try_timeout", "pick", "policy_path",
        "pool", "proxy", "respond_cb", "retry_policy", "retry_uniform", "retry_wanted",
        "route_timeout", "route_timers", "seen", "send", "source_name", "stats", "try_timers",
        "when_open",
    )

    def __init__(
        self,
        proxy: str,
        dest: str,
        code: int,
        hosts: list[Any],
        policy: str,
        uniform: Callable[[], float] | None,
        out_delay: Callable[[], float],
        back_delay: Callable[[], float],
    ):
        self.proxy = proxy
        self.dest = dest
        self.code = code
        self.hosts = hosts
        self.active = [0] * len(hosts)
        self.avail = list(range(len(hosts)))
        self.pick = make_picker(policy, self.avail, self.active, uniform)
        self.out_delay = out_delay
        self.back_delay = back_delay
        self.policy_path = False
        self.pool: Any = None
        self.outlier: Any = None
        self.retry_policy: Any = None
        self.retry_uniform: Callable[[], float] | None = None
        self.panic_threshold = 50.0
        self.in_panic = False
        self.seen = -1
        self.stats: dict[str, int] = {}
        self.events: list[tuple[float, str, int, str]] = []
        self.respond_cb: tuple = ()
        #: ``send(parent, cluster, optional, route_to)``: the engine's lean path or the router.
        self.send: Callable[..., None] | None = None
        self.route_timers: Any = None
        #: The caller app's circuit breaker for this destination (``meshsim.app_breakers``) and
        #: what a refused call gets, and Envoy's admission control filter of this proxy, as
        #: :class:`meshsim.policies.protocol.Policy` objects; None when there is none. They
        #: see requests as from ``source_name`` (the calling service or gateway) to
        #: ``guarded`` (the destination, not a subset or the egress gateway).
        self.breaker: Any = None
        self.when_open: Any = None
        self.admission: Any = None
        #: The fault filter of the route (:class:`meshsim.policies.fault.FaultInjector`), which
        #: acts after the app's breaker and before admission control and the router; None
        #: when the route injects no fault.
        self.fault: Any = None
        self.source_name = ""
        self.guarded = dest
        #: ``connect_time() -> float`` seconds to open a connection, or None for at once.
        self.connect_time: Callable[[], float] | None = None
        #: The retry policy's timeouts (seconds, None when off), read for every call.
        self.route_timeout: float | None = None
        self.per_try_timeout: float | None = None
        self.try_timers: Any = None
        self.retry_wanted: dict[int, bool] = {}

    def count(self, name: str) -> None:
        self.stats[name] = self.stats.get(name, 0) + 1

    def count_all(self, names: Iterable[str]) -> None:
        for name in names:
            self.stats[name] = self.stats.get(name, 0) + 1

    def refresh(self, now: float) -> None:
        """Bring :attr:`avail` up to date with outlier detection and the panic threshold.

        Envoy's load balancer uses the healthy hosts unless the healthy share is *below* the
        panic threshold, in which case it uses all hosts (``isHostSetInPanic``; Istio sets the
        threshold to ``minHealthPercent``, default 0, on clusters with outlier detection, so
        with every host ejected the answer is 503 ``UH``). Health changes reach the balancer
        through the detector's merge window (``update_merge_window``).
        """
        det = self.outlier
        if det is None:
            return
        due = det.pending_update_at
        if det.changes == self.seen and (due is None or now < due):
            return
        self.seen = det.changes
        healthy = det.healthy_hosts(now)
        n = len(self.hosts)
        panic = n > 0 and 100.0 * len(healthy) / n < self.panic_threshold
        self.avail[:] = range(n) if panic else healthy
        if panic != self.in_panic:
            self.in_panic = panic
            self.events.append((now, "panic_enter" if panic else "panic_exit", -1,
                                f"{len(healthy)} of {n} hosts healthy"))


class WeightedClusters:
    """A route's weighted destinations at one proxy (Envoy's ``weighted_clusters``).

    Pods call :meth:`send` as they call a cluster's ``send``: it picks one of the clusters, each
    with probability weight / total, and hands the call to it. The call, its retries included,
    then stays on that cluster (``../shared/envoy-semantics.md`` §6.1).

    Parameters
    ----------
    clusters : list of Cluster
    weights : list of int
        Positive weights, in the order of ``clusters``.
    uniform : callable
        U[0, 1) draws from this proxy's own stream for this route.
    """

    __slots__ = ("clusters", "thresholds", "uniform")

    def __init__(self, clusters: list[Cluster], weights: list[int],
                 uniform: Callable[[], float]):
        total = sum(weights)
        bounds, acc = [], 0
        for w in weights:
            acc += w
            bounds.append(acc / total)
        bounds[-1] = 1.0  # rounding can never leave a draw without a cluster
        self.clusters = clusters
        self.thresholds = tuple(zip(bounds, clusters, strict=True))
        self.uniform = uniform

    def send(self, parent: Any, cluster: Any, optional: bool, route_to: str | None) -> None:
        u = self.uniform()
        for bound, cl in self.thresholds:
            if u < bound:
                cl.send(parent, cl, optional, route_to)
                return


def make_picker(
    policy: str, avail: list[int], active: list[int], uniform: Callable[[], float] | None
) -> Callable[[], int]:
    """Build the host-selection function of a load-balancing policy.

    Parameters
    ----------
    policy : {"ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"}
    avail : list of int
        The hosts it may pick (read live: the list's content changes with host health).
    active : list of int
        The proxy's outstanding requests per host (read live by ``LEAST_REQUEST``).
    uniform : callable
        U[0, 1) draws from this proxy's own stream; may be None for a single host.
    """
    if uniform is None:
        if len(avail) > 1:
            raise ValueError("a random stream is needed to balance over several hosts")
        return lambda: avail[0]
    if policy == "ROUND_ROBIN":
        # Each Envoy starts its round robin at a random offset (RoundRobinLoadBalancer::
        # refreshHostSource seeds the index with the LB's random seed_), so that many client
        # proxies do not all hit the first host together.
        state = [int(uniform() * len(avail))]

        def round_robin() -> int:
            i = state[0] % len(avail)
            state[0] = i + 1
            return avail[i]

        return round_robin
    if policy == "RANDOM":
        return lambda: avail[int(uniform() * len(avail))]
    if policy == "LEAST_REQUEST":
        # Envoy's unweighted least request: choice_count (2) hosts drawn at random with
        # replacement; the one with fewer active requests wins, ties keep the first draw
        # (LeastRequestLoadBalancer::unweightedHostPick).
        def least_request() -> int:
            n = len(avail)
            i = avail[int(uniform() * n)]
            j = avail[int(uniform() * n)]
            return j if active[j] < active[i] else i

        return least_request
    raise ValueError(f"unknown load-balancing policy {policy!r}")
