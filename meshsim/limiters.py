"""Rate limits in a run: Envoy's local and global rate limit filters in front of the pods.

The policies are the plain objects of :mod:`meshsim.policies.rate_limit`; this module puts them
where the scenario says (``mesh.sidecars.<service>.localRateLimit``, a gateway's
``localRateLimit`` and ``globalRateLimit``, ``mesh.rateLimitService``) and acts on their answers.
A pod with a limit gets its limiter's ``arrive`` as its ``arrive_cb``: the limiter checks the
request, then hands it to the pod or answers it. Pods without limits keep their own ``arrive``,
so a scenario without rate limits runs exactly the code it ran before.

What each proxy does (``../shared/envoy-semantics.md`` §5, §10.2):

- the local filter of a pod's sidecar answers a request that finds no token with 429 (flag
  ``RL`` in the sidecar's own log and stats); the caller's proxy sees a plain upstream 429;
- at a gateway the local filter comes first, then the global one: the request waits for the
  rate-limit service's answer, at most the filter's ``timeout``, and is then routed, or answered
  429 ``RL`` (over the limit) or, with ``failureModeDeny``, 500 ``RLSE`` (no answer). A gateway's
  answer is the client's row at the ingress gateway, so that row carries the flag.

Every request carries one descriptor, ``client`` = the id of the client that sent it.
"""

from __future__ import annotations

from collections.abc import Callable
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any

from .envoy import CLIENT_KEY
from .policies.rate_limit import (
    GlobalRateLimitFilter,
    GlobalRateLimitService,
    LocalRateLimit,
    ServiceAnswer,
)

if TYPE_CHECKING:
    from .attempt import Attempt
    from .engine import Engine
    from .envoy import GlobalRateLimit, RateLimitService
    from .envoy import LocalRateLimit as LocalRateLimitBlock

__all__ = ["MERGE_GAP", "GatewayLimits", "InboundLimit", "SharedService", "attach",
           "merge_windows"]

#: A bucket that refuses again within this many seconds of letting a request through is still
#: limiting: the events table shows periods of limiting, not every token.
MERGE_GAP = 1.0
#: The ``cluster`` of statistics that belong to no upstream cluster (a gateway's local filter).
NO_CLUSTER = "-"
INBOUND = "inbound"  # as meshsim.result.INBOUND: the pod's own sidecar


def attach(engine: Engine) -> list[Any]:
    """Put the scenario's rate limits in front of the engine's pods; returns the limiters (for
    :mod:`meshsim.result`, which reads their ``stat_rows()`` and ``event_rows()``)."""
    mesh = engine.scenario.mesh
    limiters: list[Any] = []
    for name, sidecar in mesh.sidecars.items():
        if sidecar.local_rate_limit is not None:
            for pod in engine.pods[name]:
                limiter = InboundLimit(engine, pod, _local(engine, pod.name,
                                                            sidecar.local_rate_limit))
                pod.arrive_cb = (limiter.arrive,)
                limiters.append(limiter)
    service = None
    if mesh.rate_limit_service is not None:
        block = mesh.rate_limit_service
        service = SharedService(block, engine._sampler("ratelimit-service:latency",
                                                       block.latency))
    for kind, gw in (("ingress", mesh.ingress_gateway), ("egress", mesh.egress_gateway)):
        if gw is None or (gw.local_rate_limit is None and gw.global_rate_limit is None):
            continue
        for pod in engine.pods[kind]:
            local = None if gw.local_rate_limit is None else _local(engine, pod.name,
                                                                    gw.local_rate_limit)
            ask = None if gw.global_rate_limit is None else GlobalFilter(service,
                                                                         gw.global_rate_limit)
            limiter = GatewayLimits(engine, pod, local, ask)
            pod.arrive_cb = (limiter.arrive,)
            limiters.append(limiter)
    return limiters


def _local(engine: Engine, proxy: str, block: LocalRateLimitBlock) -> LocalRateLimit:
    config = block.config()
    uniform = None
    if any(0 < p < 100 for p in (config.filter_enabled, config.filter_enforced)):
        uniform = engine.streams.uniform(f"ratelimit:{proxy}")
    return LocalRateLimit(config, uniform)


class _Descriptors:
    """The descriptors of each client's requests, built once per client."""

    __slots__ = ("_by_code", "specs")

    def __init__(self, specs: tuple[tuple[tuple[str, str | None], ...], ...]):
        # Each spec is a descriptor's entries; a value of None is the request's client id.
        self.specs = specs
        self._by_code: dict[int, list[tuple[tuple[str, str], ...]]] = {}

    def of(self, client: Any) -> list[tuple[tuple[str, str], ...]]:
        found = self._by_code.get(client.code)
        if found is None:
            found = self._by_code[client.code] = [
                tuple((k, client.name if v is None else v) for k, v in spec)
                for spec in self.specs]
        return found


_PER_CLIENT = (((CLIENT_KEY, None),),)


def _local_rows(limit: LocalRateLimit, proxy: str, cluster: str) -> list[tuple]:
    prefix = f"{limit.config.stat_prefix}.http_local_rate_limit."
    return [(proxy, cluster, prefix + k, int(v)) for k, v in sorted(limit.stats.items())]


class InboundLimit:
    """The local rate limit on the inbound listener of one pod's sidecar.

    Checked when a request reaches the pod, before the sidecar's inbound connection pool. A
    refused request never reaches the pod's pool or app: the sidecar answers 429 at once.
    """

    def __init__(self, engine: Engine, pod: Any, limit: LocalRateLimit):
        self.engine = engine
        self.pod = pod
        self.limit = limit
        self.status = limit.config.status
        self.descriptors = _Descriptors(_PER_CLIENT if limit.config.descriptors else ())

    def arrive(self, a: Attempt) -> None:
        """The request ``a`` reaches the pod's sidecar."""
        now = self.engine.env._now
        if self.limit.check(now, self.descriptors.of(a.client)):
            self.pod.arrive(a)
            return
        # The sidecar's local reply: RL in its own log (its stats), while the caller's proxy
        # sees a plain upstream 429 (the attempt keeps the caller's flags). The app never sees
        # the request: no worker, no place in the inbound pool.
        a.t_arrive = now
        if self.pod.inbound is not None:
            a.inbound_conn = -1
        self.engine.reply(a, self.status)

    def stat_rows(self) -> list[tuple]:
        return _local_rows(self.limit, self.pod.name, INBOUND)

    def event_rows(self) -> list[tuple]:
        name = self.pod.name
        return [(t, kind, name, INBOUND, name, f"local {bucket}")
                for t, kind, bucket, _ in merge_windows(self.limit.events)]


class SharedService:
    """The rate-limit service every proxy's global filter asks: its counters, its latency and
    its outages, and the filter settings (``timeout``, ``failureModeDeny``) of the proxies.

    The service counts a call when the call is made (a simplification: the real one counts when
    the call reaches it, half a latency later). During an outage it does not answer and counts
    nothing: every call waits for the ``timeout``. With a ``capacity``, it works on that many
    calls at once, first come first served: a call's answer takes its wait for a free slot plus
    its latency, and holds the slot that long even if the filter has given up on it.
    """

    def __init__(self, block: RateLimitService, latency: Callable[[], float]):
        self.counters = GlobalRateLimitService(block.config())
        self.filter = GlobalRateLimitFilter(block.domain, block.timeout,
                                            block.failure_mode_deny)
        self.outages = [(o.start, o.end) for o in block.outages]
        self.latency = latency
        # When each of the service's busy slots frees up (a heap), with a capacity.
        self.capacity = block.capacity
        self.busy_until: list[float] = []

    def ask(self, now: float, descriptors: list[Any]) -> tuple[float, ServiceAnswer]:
        """One call at ``now`` (seconds): the wait (seconds) and the answer the filter gets."""
        for start, end in self.outages:
            if start <= now < end:
                return self.filter.timeout, "TIMEOUT"
        answer = self.counters.should_rate_limit(now, descriptors)
        took = self.latency()
        if self.capacity is not None:
            # Calls come in time order, so a FIFO queue over `capacity` slots is the earliest
            # free slot's time (a c-server queue with the service times known on arrival).
            busy = self.busy_until
            while busy and busy[0] <= now:
                heappop(busy)
            start = now if len(busy) < self.capacity else heappop(busy)
            heappush(busy, start + took)
            took += start - now
        return self.filter.answer_after(took, answer)


class GlobalFilter:
    """The rate limit filter of one proxy: the descriptors it sends, its counters
    (``cluster.<routed cluster>.ratelimit.*``) and the periods it refused requests."""

    def __init__(self, service: SharedService, block: GlobalRateLimit):
        self.service = service
        specs = tuple(tuple((e.key, e.value) for e in d.entries) for d in block.descriptors)
        self.descriptors = _Descriptors(specs)
        self.stats: dict[tuple[str, str], int] = {}
        self.limiting: dict[str, bool] = {}
        self.events: list[tuple[float, str, str, str]] = []

    def ask(self, now: float, client: Any, cluster: str) -> tuple[float, int, str | None]:
        """Ask about a request of ``client`` routed to ``cluster``: the wait (seconds), and the
        status and flag of the refusal (0 and None to let it go on)."""
        service = self.service
        wait, answer = service.ask(now, self.descriptors.of(client))
        for name in service.filter.stat_names(answer):
            key = (cluster, name)
            self.stats[key] = self.stats.get(key, 0) + 1
        decision = service.filter.decide(answer)
        refused = answer == "OVER_LIMIT"
        if self.limiting.get(client.name, False) != refused:
            self.limiting[client.name] = refused
            kind = "limiting_started" if refused else "limiting_stopped"
            self.events.append((now, kind, f"{CLIENT_KEY}={client.name}", ""))
        if decision.allowed:
            return wait, 0, None
        return wait, decision.status, decision.flags


class GatewayLimits:
    """The rate limit filters of one gateway pod, in order: local, then global.

    A request is checked when it reaches the pod, before it is routed. The wait for the
    rate-limit service is one event; the request's ``t_begin`` stays its arrival time (the wait
    is neither queueing nor work).
    """

    def __init__(self, engine: Engine, pod: Any, local: LocalRateLimit | None,
                 ask: GlobalFilter | None):
        self.engine = engine
        self.pod = pod
        self.local = local
        self.ask = ask
        specs = _PER_CLIENT if local is not None and local.config.descriptors else ()
        self.descriptors = _Descriptors(specs)
        # A gateway's reply is its client's row at the ingress gateway, which carries its
        # flags; the egress gateway's callers are sidecars that log their own.
        self.passes_flags = pod.passes_flags
        self._answered_cb = (self._answered,)
        self._refused: dict[int, tuple[int, str]] = {}  # span -> the service's refusal

    def arrive(self, a: Attempt) -> None:
        """The request ``a`` reaches the gateway pod."""
        eng = self.engine
        now = a.t_arrive = a.t_begin = eng.env._now
        local = self.local
        if local is not None and not local.check(now, self.descriptors.of(a.client)):
            self._refuse(a, local.config.status, "RL")
            return
        if self.ask is None:
            self._forward(a)
            return
        wait, status, flags = self.ask.ask(now, a.client, a.route_to)
        if status:
            self._refused[a.span] = (status, flags)
        # The attempt itself is the event, so that a request still waiting for the answer at
        # the end of the run is found in flight.
        eng.schedule(wait, self._answered_cb, a)

    def _answered(self, a: Attempt) -> None:
        refused = self._refused.pop(a.span, None)
        if refused is None:
            self._forward(a)
        else:
            self._refuse(a, *refused)

    def _forward(self, a: Attempt) -> None:
        # GatewayPod.arrive without its time stamps, which were taken on arrival.
        a.pending = 1
        cluster = self.pod.routes[a.route_to]
        cluster.send(a, cluster, False, None)

    def _refuse(self, a: Attempt, status: int, flags: str) -> None:
        if self.passes_flags:
            a.flags = self.engine.flag_code(flags)
        self.engine.reply(a, status)

    def stat_rows(self) -> list[tuple]:
        name = self.pod.name
        rows = [] if self.local is None else _local_rows(self.local, name, NO_CLUSTER)
        if self.ask is not None:
            rows += [(name, cluster, f"ratelimit.{stat}", v)
                     for (cluster, stat), v in sorted(self.ask.stats.items())]
        return rows

    def event_rows(self) -> list[tuple]:
        name = self.pod.name
        rows = []
        for what, limiter in (("local", self.local), ("global", self.ask)):
            if limiter is not None:
                rows += [(t, kind, name, NO_CLUSTER, "-", f"{what} {bucket}")
                         for t, kind, bucket, _ in merge_windows(limiter.events)]
        return rows


def merge_windows(events: list[tuple[float, str, str, str]],
                  gap: float = MERGE_GAP) -> list[tuple[float, str, str, str]]:
    """Periods of limiting from a limiter's state changes.

    Parameters
    ----------
    events : list of tuple
        ``(t, kind, bucket, detail)`` in time order, kind ``limiting_started`` or
        ``limiting_stopped`` (as :class:`~meshsim.policies.rate_limit.LocalRateLimit` records
        them: one pair each time an empty bucket lets one request through).
    gap : float, optional
        Seconds. A bucket that starts limiting again less than ``gap`` after it stopped is taken
        to have gone on limiting: both changes are dropped.

    Returns
    -------
    list of tuple
        The changes that remain, in time order.
    """
    out: list[tuple[float, str, str, str]] = []
    stopped: dict[str, tuple[float, str, str, str]] = {}  # bucket -> its last stop, held back
    for event in events:
        t, kind, bucket, _ = event
        if kind == "limiting_started":
            last = stopped.pop(bucket, None)
            if last is not None:
                if t - last[0] < gap:
                    continue
                out.append(last)
            out.append(event)
        else:
            stopped[bucket] = event
    out += stopped.values()
    out.sort(key=lambda e: e[0])
    return out
