"""The caller's router: one downstream call through a client proxy's upstream cluster, with
Envoy's retries, timeouts, connection pool, outlier detection and panic routing.

The policies themselves are pure state machines in :mod:`meshsim.policies`; this module is the
glue that schedules what they ask for (back-off, per-try and route timers, connection set-up,
outlier ticks) and writes one record row per attempt. The order of operations follows Envoy's
router (``Router::Filter``) and ``UpstreamRequest``:

1. pick a host among the available ones (``LoadBalancerBase::chooseHost``; outlier-ejected hosts
   are left out unless the cluster is in panic; none available: 503 ``UH``, not retried);
2. ask the connection pool (``newStream``): attached, pending, or overflow (503 ``UO`` at once,
   never retried);
3. on attach, arm the per-try timer (``onPoolReady``) and send the request;
4. on the response, report it to the outlier detector, free the stream, and let the retry state
   decide: retry after a jittered back-off, or answer the caller.

A timed-out attempt is abandoned, not stopped: the callee keeps working on it, and its row is
written when its (now useless) answer arrives, with the status the caller saw (504 ``UT``) and
``t_reply`` after ``t_end``: that is the wasted work that drives cascades.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .policies.connection_pool import ATTACHED, OVERFLOW, ConnectionPool
from .policies.retry import Outcome, RetryState

if TYPE_CHECKING:
    from .engine import Attempt, Engine
    from .sidecar import Cluster

__all__ = ["Call", "Router"]

_NAN = float("nan")


class Call:
    """One downstream request at one client proxy (Envoy's router stream)."""

    __slots__ = ("cluster", "current", "done", "optional", "parent", "route_to", "state")

    def __init__(self, parent: Attempt, cluster: Cluster, optional: bool, route_to: str | None,
                 state: RetryState):
        self.parent = parent
        self.cluster = cluster
        self.optional = optional
        self.route_to = route_to
        self.state = state
        self.current: Attempt | None = None
        self.done = False


class Router:
    """Runs calls through clusters that have policies (see :attr:`Cluster.policy_path`)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.env = engine.env
        self._route_timeout_cb = (self._route_timeout,)
        self._per_try_cb = (self._per_try_timeout,)
        self._backoff_cb = (self._backoff_done,)
        self._connected_cb = (self._connected,)
        self._respond_cb = (self._respond,)
        self._tick_cb = (self._outlier_tick,)
        self._responses: dict[int, Outcome] = {}
        self._timeout = Outcome.per_try_timeout()

    # ---- a call -------------------------------------------------------------------------------

    def start(self, parent: Attempt, cluster: Cluster, optional: bool, route_to: str | None,
              ) -> None:
        """The pod (or gateway) working on ``parent`` calls ``cluster``."""
        now = self.env._now
        state = RetryState(cluster.retry_policy, now, cluster.retry_uniform)
        call = Call(parent, cluster, optional, route_to, state)
        deadline = state.route_deadline
        if deadline is not None:
            self.engine.later(deadline - now, self._route_timeout_cb, call)
        self._try(call)

    def _try(self, call: Call) -> None:
        now = self.env._now
        cl = call.cluster
        state = call.state
        cl.refresh(now)
        if not cl.avail:
            # No healthy host and no panic: Envoy answers locally, 503 "no healthy upstream".
            cl.count("upstream_cx_none_healthy")
            a = self._attempt(call, None, now)
            self._local_reply(call, a, 503, "UH")
            return
        host = state.select_host(cl.pick)
        if cl.in_panic:
            cl.count("lb_healthy_panic")
        a = self._attempt(call, host, now)
        call.current = a
        cl.active[host] += 1
        pool = cl.pool
        verdict = pool.request(now, host, a)
        if verdict == ATTACHED:
            self._attach(a, pool.attached_conn)
        elif verdict == OVERFLOW:
            cl.active[host] -= 1
            self._local_reply(call, a, 503, "UO")
            return
        self._drain_connects(cl)

    def _attempt(self, call: Call, host: int | None, now: float) -> Attempt:
        from .engine import Attempt

        eng = self.engine
        parent = call.parent
        a = Attempt()
        eng._span += 1
        a.span = eng._span
        a.req = parent.req
        a.client = parent.client
        a.parent = parent
        a.source = parent.host.service
        a.optional = call.optional
        a.cluster = call.cluster
        a.dest = call.cluster.code
        a.route_to = call.route_to
        a.hostidx = host
        a.host = call.cluster.hosts[host] if host is not None else eng.no_host
        a.failed = False
        a.flags = 0
        a.status = 0
        a.t_start = now
        a.t_arrive = a.t_begin = a.t_reply = _NAN
        a.call = call
        a.attempt = call.state.attempts
        a.conn = -1
        a.abandoned = False
        a.t_end = _NAN
        return a

    def _attach(self, a: Attempt, conn: int) -> None:
        """The attempt got a connection: arm the per-try timer and send it."""
        a.conn = conn
        call = a.call
        now = self.env._now
        deadline = call.state.per_try_deadline(now)
        route = call.state.route_deadline
        eng = self.engine
        if deadline is not None and deadline != route:
            eng.later(deadline - now, self._per_try_cb, a)
        eng.later(a.cluster.out_delay(), eng.arrive_cb, a)

    def _drain_connects(self, cl: Cluster) -> None:
        pool = cl.pool
        if pool.to_connect:
            for host, conn in pool.to_connect:
                # Connections are set up instantly: the lean path (clusters without policies)
                # assumes warm pools too, and switching a policy on must not shift latencies
                # through a side effect. The connect's round trip (and mTLS handshake) is a few
                # tenths of a millisecond in a cluster; it becomes a setting with the security
                # costs.
                self.engine.later(0.0, self._connected_cb, (cl, host, conn))
            pool.to_connect.clear()
        if pool.overflowed:
            refused = list(pool.overflowed)
            pool.overflowed.clear()
            for a in refused:
                cl.active[a.hostidx] -= 1
                self._local_reply(a.call, a, 503, "UO")

    def _connected(self, ev: Any) -> None:
        cl, host, conn = ev._value
        for a in cl.pool.connected(self.env._now, host, conn):
            self._attach(a, conn)
        self._drain_connects(cl)

    # ---- outcomes -----------------------------------------------------------------------------

    def reply_cb(self) -> tuple:
        return self._respond_cb

    def _respond(self, ev: Any) -> None:
        """The callee's answer to attempt ``a`` is back at the caller's proxy."""
        a = ev._value
        now = self.env._now
        if a.abandoned:
            # The caller gave up on it earlier (per-try or route timeout): the callee's work was
            # wasted. Its row keeps what the caller saw then.
            self._record(a, a.t_end)
            return
        cl = a.cluster
        call = a.call
        host = a.hostidx
        status = a.status
        cl.active[host] -= 1
        self._free_stream(cl, a, now)
        if cl.outlier is not None:
            cl.outlier.on_result(now, host, status)
        outcome = self._responses.get(status)
        if outcome is None:
            outcome = self._responses[status] = Outcome.response(status)
        self._decide(call, a, outcome, now)

    def _per_try_timeout(self, ev: Any) -> None:
        a = ev._value
        call = a.call
        if call.done or call.current is not a or a.abandoned or a.status:
            return
        now = self.env._now
        cl = a.cluster
        self._abandon(a, now, 504, "UT")
        if cl.outlier is not None:
            # A timeout is reported as a local-origin 504 (Outlier::Result::LocalOriginTimeout).
            cl.outlier.on_result(now, a.hostidx, 504, local_origin=True)
        self._decide(call, a, self._timeout, now)

    def _route_timeout(self, ev: Any) -> None:
        call = ev._value
        if call.done:
            return
        now = self.env._now
        state = call.state
        held = state.holds_retry
        decision = state.route_timeout()
        cl = call.cluster
        if held:
            cl.pool.retry_finished(now)
        cl.count_all(decision.counters)
        a = call.current
        if a is not None and not a.status and not a.abandoned:
            if a.conn < 0:
                # Still pending in the pool: it leaves the queue and never reaches a host.
                cl.pool.cancel_pending(now, a.hostidx, a)
                cl.active[a.hostidx] -= 1
                a.status = 504
                a.flags = self.engine.flag_code("UT")
                self._record(a, now)
            else:
                self._abandon(a, now, 504, "UT")
                if cl.outlier is not None:
                    cl.outlier.on_result(now, a.hostidx, 504, local_origin=True)
        else:
            # Between attempts (back-off): the timeout is a local reply of its own.
            b = self._attempt(call, None, now)
            b.status = 504
            b.flags = self.engine.flag_code("UT")
            self._record(b, now)
        self._finish(call, 504, "UT")

    def _abandon(self, a: Attempt, now: float, status: int, flags: str) -> None:
        """The caller stops waiting for ``a``; the callee is not told and keeps working."""
        cl = a.cluster
        a.abandoned = True
        a.status = status
        a.flags = self.engine.flag_code(flags)
        a.t_end = now
        cl.active[a.hostidx] -= 1
        # The stream is reset. Simplification: the connection goes back to the pool instead of
        # being closed (an HTTP/1.1 reset closes it in Envoy, and the next request then pays a
        # connection set-up), so connection churn after timeouts is not modelled.
        self._free_stream(cl, a, now)

    def _free_stream(self, cl: Cluster, a: Attempt, now: float) -> None:
        attached = cl.pool.done(now, a.hostidx, a.conn)
        for b in attached:
            self._attach(b, a.conn)
        self._drain_connects(cl)

    def _decide(self, call: Call, a: Attempt, outcome: Outcome, now: float) -> None:
        state = call.state
        cl = call.cluster
        pool = cl.pool
        held = state.holds_retry
        allowed = pool.retry_allowed(pool.active_retries - held)
        decision = state.decide(now, outcome, allowed)
        if held:
            pool.retry_finished(now)
        if decision.counters:
            cl.count_all(decision.counters)
        if decision.retry:
            pool.retry_started(now)
            if not a.abandoned:
                self._record(a, now)
            call.current = None
            self.engine.later(decision.delay, self._backoff_cb, call)
            return
        flags = decision.flags
        if not a.abandoned:
            a.flags = self.engine.flag_code(flags)
            self._record(a, now)
        if decision.delay > 0:
            # A back-off that would end past the route deadline: the route timer answers 504 UT
            # then (the call stays open until it fires; state.done is already set).
            call.current = None
            if state.holds_retry:
                pool.retry_started(now)  # the slot stays held until the reply
            return
        self._finish(call, decision.status, flags)

    def _backoff_done(self, ev: Any) -> None:
        call = ev._value
        if not call.done:
            self._try(call)

    def _local_reply(self, call: Call, a: Attempt, status: int, flags: str) -> None:
        """The proxy answers by itself (overflow, no healthy host): never retried."""
        now = self.env._now
        a.status = status
        a.flags = self.engine.flag_code(flags)
        self._record(a, now)
        state = call.state
        if state.holds_retry:
            call.cluster.pool.retry_finished(now)
            state.holds_retry = False
        state.done = True
        self._finish(call, status, flags)

    def _finish(self, call: Call, status: int, flags: str) -> None:
        call.done = True
        call.current = None
        parent = call.parent
        parent.host.child_done(parent, status, self.engine.flag_code(flags), call.optional)

    def _record(self, a: Attempt, t_end: float) -> None:
        parent = a.parent
        self.engine.records.append((
            a.req, a.span, parent.span, a.client.code, a.source, a.dest, a.host.code, a.attempt,
            a.t_start, t_end, a.status, a.flags, 0, a.t_arrive, a.t_begin, a.t_reply,
        ))

    # ---- outlier detection timers ---------------------------------------------------------------

    def start_outlier_timer(self, cl: Cluster) -> None:
        det = cl.outlier
        self.engine.later(det.next_tick() - self.env._now, self._tick_cb, cl)

    def _outlier_tick(self, ev: Any) -> None:
        cl = ev._value
        det = cl.outlier
        det.on_tick(self.env._now)
        self.engine.later(det.next_tick() - self.env._now, self._tick_cb, cl)


def pool_for(cluster_hosts: int, config: Any) -> ConnectionPool:
    """A connection pool for a cluster of ``cluster_hosts`` hosts."""
    return ConnectionPool(cluster_hosts, config)
