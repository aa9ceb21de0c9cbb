"""Pods: the places where requests are worked on (service pods, gateway pods, external hosts).

A pod is driven by the engine through two methods: ``arrive(attempt)`` when a request reaches it,
and ``child_done(attempt, child)`` when one of the downstream calls it made has answered. It
answers by calling ``engine.reply(attempt, status)``. Everything here runs in the hot path, so it
is written as plain attribute access on ``__slots__`` objects with no per-request allocation
beyond the attempt itself.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from heapq import heappush
from typing import TYPE_CHECKING, Any

from .policies.connection_pool import ATTACHED, OVERFLOW
from .policies.protocol import Completion, Request

if TYPE_CHECKING:
    from .engine import Attempt, Engine
    from .policies.connection_pool import ConnectionPool

__all__ = ["GatewayPod", "Pod", "bursty_state"]

INF = float("inf")


class Pod:
    """A service pod (or an external host) with a FIFO worker pool.

    Parameters
    ----------
    engine : Engine
    name : str
        Host name written in request records, e.g. ``cart-1``.
    workers : int or float
        Concurrent requests; ``inf`` for an external host without a concurrency limit.
    queue : int or None
        Waiting room; ``None`` is unbounded. A request that finds it full is answered 503 at once.
    latency : callable
        ``latency() -> float`` seconds of the pod's own work per request.
    error : callable or None
        ``error() -> int``: the status of a failed request, or 0 when the request succeeds.
    downstream_error_status : int
        Status answered when a required downstream call fails.
    """

    __slots__ = (
        "arrive_cb",
        "busy",
        "code",
        "downstream_error_status",
        "engine",
        "error",
        "gates",
        "inbound",
        "latency",
        "name",
        "qcap",
        "queue",
        "service",
        "steps",
        "uniform",
        "worked",
        "workers",
    )

    def __init__(
        self,
        engine: Engine,
        name: str,
        workers: float,
        queue: int | None,
        latency: Callable[[], float],
        error: Callable[[], int] | None,
        downstream_error_status: int = 500,
    ):
        self.engine = engine
        self.name = name
        self.workers = workers
        self.qcap = INF if queue is None else queue
        self.queue: deque[Attempt] = deque()
        self.busy = 0
        self.latency = latency
        self.error = error
        self.downstream_error_status = downstream_error_status
        # steps: tuple of (is_parallel, ((cluster, probability, optional, route_to), ...)); set
        # by the engine once every pod exists, because clusters point at other pods.
        self.steps: tuple[tuple[bool, tuple[tuple[Any, float, bool, str | None], ...]], ...] = ()
        self.uniform: Callable[[], float] | None = None
        # Callback tuples, built once: each is scheduled for every request.
        self.worked = (self._worked,) if error is not None else (self._next_step,)
        self.arrive_cb = (self.arrive,)
        #: The pod's own sidecar's connection pool towards the app, when it can limit
        #: (:class:`~meshsim.policies.connection_pool.ConnectionPool` with one host). A pod
        #: with any sidecar filter has one (unlimited if nothing limits it).
        self.inbound: ConnectionPool | None = None
        #: Admission policies in the pod's sidecar, in filter order (Envoy's adaptive
        #: concurrency, custom ones): ``(policy, status of a refusal, stats prefix)``, each
        #: policy a :class:`~meshsim.policies.protocol.Policy`. Empty when there is none.
        self.gates: tuple[tuple[Any, int, str], ...] = ()

    # -- arrival and the worker pool ----------------------------------------------------------

    def arrive(self, a: Attempt) -> None:
        """The request ``a`` reaches this pod (the engine schedules :attr:`arrive_cb`)."""
        now = a.t_arrive = self.engine.env._now
        if self.inbound is not None:
            a.inbound_conn = -1
            a.gated_at = -1.0
            if getattr(a, "abandoned", 0):
                self._admit(a)
                return
            if self.gates and not self._gates_admit(a, now):
                return
            # Through the pod's own sidecar first. (A request whose caller has already reset
            # it, above, is passed on: the reset follows the request on the same connection,
            # so the app gets it and the sidecar frees its slot at once.)
            self._through_inbound(a, now)
            return
        self._admit(a)

    def _admit(self, a: Attempt) -> None:
        """``a`` reaches the app: a free worker, a place in the queue, or 503 at once."""
        if self.busy < self.workers:
            self._start(a)
        elif len(self.queue) < self.qcap:
            self.queue.append(a)
        else:
            # The app's own bounded queue is full: it answers 503 without doing any work.
            if self.inbound is not None:
                self._release_inbound(a)
                if self.gates:
                    self._gates_done(a, self.engine.env._now, 503)
            self.engine.reply(a, 503)

    # -- the pod's own (inbound) sidecar --------------------------------------------------------

    def _through_inbound(self, a: Attempt, now: float) -> None:
        """The inbound sidecar's connection pool towards the app (one host: the app).

        istiod gives the inbound cluster the circuit breakers of the service's own
        ``DestinationRule`` (or of ``Sidecar.inboundConnectionPool``); a request over them is
        answered 503 by the sidecar (flag ``UO`` in *its* log; the caller's proxy sees a plain
        upstream 503) and never reaches the app.
        """
        inbound = self.inbound
        verdict = inbound.request(now, 0, a)
        if verdict == ATTACHED:
            a.inbound_conn = inbound.attached_conn
            if self.busy < self.workers:  # _admit's common case, written out
                self._start(a)
            else:
                self._admit(a)
            return
        if verdict == OVERFLOW:
            if self.gates:
                self._gates_done(a, now, 503)
            self.engine.reply(a, 503)
            return
        self._drain_inbound(now)

    def _gates_admit(self, a: Attempt, now: float) -> bool:
        """The sidecar's admission policies, in order. A refusal is the sidecar's local reply
        (its status; the caller's proxy sees a plain upstream answer) and never reaches the
        app; the policies before it see that reply go out, as Envoy's earlier filters do."""
        request = self._request(a)
        gates = self.gates
        for i, (policy, status, _) in enumerate(gates):
            if not policy.admit(now, request):
                reply = Completion(status, 0.0)
                for earlier, _, _ in gates[:i]:
                    earlier.on_outcome(now, request, reply)
                a.gated_at = -1.0
                self.engine.reply(a, status)
                return False
        a.gated_at = now
        return True

    def _gates_done(self, a: Attempt, now: float, status: int | None) -> None:
        """The request's answer (``status``) has left the sidecar, or the caller reset it
        (None): every policy that admitted it hears how it ended."""
        since = a.gated_at
        if since < 0:
            return
        a.gated_at = -1.0
        completion = Completion(status, now - since, status is None)
        request = self._request(a)
        for policy, _, _ in self.gates:
            policy.on_outcome(now, request, completion)

    def _request(self, a: Attempt) -> Request:
        names = self.engine.nodes.names
        return Request(a.client.name, names[a.source], names[self.service])

    def _drain_inbound(self, now: float) -> None:
        # Connections from the sidecar to the app (on localhost) are set up at once.
        inbound = self.inbound
        while inbound.to_connect or inbound.overflowed:
            connects = list(inbound.to_connect)
            inbound.to_connect.clear()
            for host, conn in connects:
                for b in inbound.connected(now, host, conn):
                    b.inbound_conn = conn
                    self._admit(b)
            refused = list(inbound.overflowed)
            inbound.overflowed.clear()
            for b in refused:
                if self.gates:
                    self._gates_done(b, now, 503)
                self.engine.reply(b, 503)

    def _release_inbound(self, a: Attempt) -> None:
        """``a`` no longer holds a stream of the inbound pool; let waiting requests in."""
        conn = a.inbound_conn
        if conn < 0:
            return
        a.inbound_conn = -1
        now = self.engine.env._now
        inbound = self.inbound
        attached = inbound.done(now, 0, conn)
        if attached:
            for b in attached:
                b.inbound_conn = conn
                self._admit(b)
        if inbound.to_connect or inbound.overflowed:
            self._drain_inbound(now)

    def cancel(self, a: Attempt) -> bool:
        """The caller has reset ``a`` (timeout). Returns True if ``a`` never reaches the app.

        The sidecar cancels a request still waiting in its pool, and frees the stream of one
        the app has (the app is not told and goes on working: the reset closes its connection,
        which a typical server notices only when it writes the answer). Simplification: the
        reset reaches the pod at once, not one network latency later.
        """
        if self.inbound is None:
            return False
        now = self.engine.env._now
        if self.gates and hasattr(a, "gated_at"):
            self._gates_done(a, now, None)
        if a.inbound_conn >= 0:
            self._release_inbound(a)
            return False
        return self.inbound.cancel_pending(now, 0, a)

    def _start(self, a: Attempt) -> None:
        self.busy += 1
        eng = self.engine
        now = a.t_begin = eng.env._now
        a.step = 0
        # Engine.schedule, written out: this runs for every request a pod works on.
        a.callbacks = self.worked
        heappush(eng._queue, (now + self.latency(), 1, next(eng._eid), a))

    def _worked(self, a: Attempt) -> None:
        # Scheduled only for pods that can fail; the others go straight to _next_step.
        status = self.error()
        if status:
            self._finish(a, status)
            return
        self._next_step(a)

    # -- downstream calls -----------------------------------------------------------------------

    def _next_step(self, a: Attempt) -> None:
        steps = self.steps
        i = a.step
        n = len(steps)
        while i < n:
            parallel, calls = steps[i]
            i += 1
            if not parallel:
                cluster, p, optional, route_to = calls[0]
                if p < 1.0 and self.uniform() >= p:
                    continue
                a.step = i
                a.pending = 1
                cluster.send(a, cluster, optional, route_to)
                return
            chosen = [c for c in calls if c[1] >= 1.0 or self.uniform() < c[1]]
            if not chosen:
                continue
            a.step = i
            a.pending = len(chosen)
            for cluster, _, optional, route_to in chosen:
                cluster.send(a, cluster, optional, route_to)
            return
        self._finish(a, 200)

    def child_done(self, a: Attempt, status: int, flags: int, optional: bool) -> None:
        """One of ``a``'s downstream calls answered ``status`` (as the caller's proxy saw it)."""
        if not 200 <= status < 400 and not optional:
            a.failed = True
        a.pending -= 1
        if a.pending == 0:
            if a.failed:
                self._finish(a, self.downstream_error_status)
            else:
                self._next_step(a)

    def _finish(self, a: Attempt, status: int) -> None:
        self.busy -= 1
        if self.queue:
            self._start(self.queue.popleft())
        if self.inbound is not None:
            if a.inbound_conn >= 0:
                self._release_inbound(a)
            if self.gates:
                self._gates_done(a, self.engine.env._now, status)
        # Engine.reply, written out: this runs for every request a pod works on.
        eng = self.engine
        now = a.t_reply = eng.env._now
        a.status = status
        cluster = a.cluster
        a.callbacks = cluster.respond_cb
        heappush(eng._queue, (now + cluster.back_delay(), 1, next(eng._eid), a))


class GatewayPod:
    """An ingress or egress gateway pod: an Envoy that forwards without a worker limit."""

    __slots__ = ("arrive_cb", "code", "engine", "inbound", "name", "passes_flags", "routes",
                 "service")

    def __init__(self, engine: Engine, name: str, passes_flags: bool = False):
        self.engine = engine
        self.name = name
        self.routes: dict[str, Any] = {}  # destination -> this pod's Cluster
        # A row's flags are those its caller's proxy logs. The ingress gateway's callers are
        # clients without a proxy: their row is the gateway's own log line, so it carries the
        # gateway router's flags (UO, UH, URX, ...). The egress gateway's callers are sidecars,
        # which see a plain upstream response and log their own flags.
        self.passes_flags = passes_flags
        self.arrive_cb = (self.arrive,)
        self.inbound = None  # a gateway is itself the proxy: no sidecar in front of it

    def arrive(self, a: Attempt) -> None:
        a.t_arrive = a.t_begin = self.engine.env._now
        a.pending = 1
        cluster = self.routes[a.route_to]
        cluster.send(a, cluster, False, None)

    def child_done(self, a: Attempt, status: int, flags: int, optional: bool) -> None:
        # A proxy passes the upstream status through.
        if self.passes_flags:
            a.flags = flags
        self.engine.reply(a, status)


def bursty_state(
    now: Callable[[], float],
    mean_good: float,
    mean_bad: float,
    rate_good: float,
    rate_bad: float,
    expo: Callable[[], float],
    uniform: Callable[[], float],
) -> Callable[[], float]:
    """Gilbert–Elliott state of one pod, advanced lazily in simulated time.

    Returns a function giving the failure probability at the current time. The chain starts in
    its stationary distribution; since sojourns are exponential, the residual time of the first
    state is exponential too.
    """
    bad = uniform() < mean_bad / (mean_good + mean_bad)
    state = [bad, expo() * (mean_bad if bad else mean_good)]

    def rate() -> float:
        t = now()
        while t >= state[1]:
            state[0] = not state[0]
            state[1] += expo() * (mean_bad if state[0] else mean_good)
        return rate_bad if state[0] else rate_good

    return rate
