"""The caller's router: one downstream call through a client proxy's upstream cluster, with
Envoy's retries, timeouts, connection pool, outlier detection and panic routing.

The policies themselves are pure state machines in :mod:`meshsim.policies`; this module is the
glue that schedules what they ask for (back-off, per-try and route timers, connection set-up,
outlier ticks) and writes one record row per attempt. The order of operations follows Envoy's
router (``Router::Filter``) and ``UpstreamRequest``:

0. ask the caller app's circuit breaker, then the route's fault filter (:meth:`Router.start_fault`,
   Istio's ``http[].fault``), then the sidecar's admission control, all before the call is
   routed (:mod:`meshsim.policies.protocol`); a refusal never reaches the pool;
1. pick a host among the available ones (``LoadBalancerBase::chooseHost``; outlier-ejected hosts
   are left out unless the cluster is in panic; none available: 503 ``UH``, not retried);
2. ask the connection pool (``newStream``): attached, pending, or overflow (503 ``UO`` at once,
   never retried);
3. on attach, arm the per-try timer (``onPoolReady``) and send the request;
4. on the response, report it to the outlier detector, free the stream, and let the retry state
   decide: retry after a jittered back-off, or answer the caller.

A timed-out attempt is abandoned, not stopped: the callee keeps working on it, and its row is
written when its (now useless) answer arrives, with the status the caller saw (504 ``UT``) and
``t_reply`` after ``t_end``: that is the wasted work that drives cascades. If it was still
waiting in the callee's own sidecar, that sidecar drops it, and its row is written at once.
"""

from __future__ import annotations

from collections import deque
from heapq import heappop, heappush
from typing import TYPE_CHECKING, Any

from .app_breakers import FLAG_FALLBACK, FLAG_OPEN
from .attempt import Attempt
from .pod_faults import REFUSED
from .policies.connection_pool import ATTACHED, OVERFLOW
from .policies.fault import NO_FAULT, FaultDecision
from .policies.protocol import Completion, Request
from .policies.retry import Outcome, RetryState

if TYPE_CHECKING:
    from .engine import Engine
    from .sidecar import Cluster

__all__ = ["Call", "Router"]

_NAN = float("nan")
_INF = float("inf")


class Call:
    """One downstream request at one client proxy (Envoy's router stream)."""

    # ``fault`` (the fault filter's FaultDecision) is set only on calls the filter holds.
    __slots__ = ("cluster", "current", "deadline", "delayed", "done", "fault", "first_host",
                 "optional", "parent", "route_armed", "route_to", "start", "state")

    def __init__(self, parent: Attempt, cluster: Cluster, optional: bool, route_to: str | None,
                 now: float):
        self.parent = parent
        self.cluster = cluster
        self.optional = optional
        self.route_to = route_to
        self.start = now
        # The retry state is made only when a decision needs it (a retriable outcome, a
        # timeout): most calls get a plain answer on their first try and never need one.
        self.state: RetryState | None = None
        self.first_host: int | None = None
        self.current: Attempt | None = None
        self.done = False
        timeout = cluster.route_timeout
        self.deadline = None if timeout is None else now + timeout
        self.route_armed = False  # whether the route timer holds an entry for it
        #: Seconds the fault filter held the request before the router saw it (0: none).
        self.delayed = 0.0

    def after_delay(self, delay: float, now: float) -> None:
        """The fault filter held the request for ``delay`` until ``now``: the router's clock
        (route timer, retry state) starts only now."""
        self.delayed = delay
        self.start = now
        timeout = self.cluster.route_timeout
        self.deadline = None if timeout is None else now + timeout

    def retry_state(self) -> RetryState:
        state = self.state
        if state is None:
            cl = self.cluster
            state = self.state = RetryState(cl.retry_policy, self.start, cl.retry_uniform)
            if self.first_host is not None:
                state.attempted_hosts.append(self.first_host)
        return state


class TryTimers:
    """The per-try timeouts of one cluster: one SimPy timer however many attempts are waiting.

    A cluster's ``perTryTimeout`` is the same for every attempt, so deadlines arrive in the order
    attempts are sent: a FIFO queue. Only the oldest entry needs a timer; when it fires, entries
    whose attempt has been answered are dropped (nearly all of them, as answers come in
    milliseconds and timeouts in seconds) and entries that are due fire. This replaces one timer
    event per attempt by about one per timeout period per cluster: the difference between a
    timeout costing nothing and costing a third of the run.
    """

    __slots__ = ("armed", "cb", "engine", "fire", "queue")

    def __init__(self, engine: Engine, fire: Any):
        self.engine = engine
        self.queue: deque[tuple[float, Attempt]] = deque()
        self.armed = False
        self.fire = fire
        self.cb = (self._tick,)

    def add(self, deadline: float, a: Attempt) -> None:
        self.queue.append((deadline, a))
        if not self.armed:
            self.arm(deadline)

    def arm(self, deadline: float) -> None:
        """Set the timer for ``deadline``, the oldest entry's (callers append first)."""
        self.armed = True
        self.engine.later(deadline - self.engine.env._now, self.cb, None)

    def _tick(self, ev: Any) -> None:
        now = self.engine.env._now
        queue = self.queue
        while queue:
            deadline, a = queue[0]
            # Live in the caller's view: the attempt is its call's current one until its answer
            # reaches the caller (a.status is set earlier, when the callee replies).
            call = a.call
            if not call.done and call.current is a and not a.abandoned:
                if deadline > now:
                    break
                queue.popleft()
                self.fire(a)
            else:
                queue.popleft()
        if queue:
            self.engine.later(queue[0][0] - now, self.cb, None)
        else:
            self.armed = False


class RouteTimers:
    """The route timeouts of one cluster, armed for a call only while it needs one.

    A call needs its route timer only when nothing else is sure to wake it before its deadline.
    When the cluster has a per-try timeout shorter than the route timeout (``lazy``), a call
    whose first try goes out at once is covered by that try's timer: it is answered, or the
    per-try timer fires before the route deadline. Only a call that waits in the pool, or goes
    on to a retry, arms its route timer, at that moment, so entries come out of order and live
    in a heap. Without such a per-try timeout every call arms at its start, in start order: a
    FIFO queue, as :class:`TryTimers`. Either way one SimPy timer serves the earliest entry.
    """

    __slots__ = ("armed_at", "cb", "engine", "fifo", "fire", "heap", "lazy", "seq")

    def __init__(self, engine: Engine, fire: Any, lazy: bool):
        self.engine = engine
        self.fire = fire
        self.lazy = lazy
        self.fifo: deque[tuple[float, Call]] = deque()
        self.heap: list[tuple[float, int, Call]] = []
        self.seq = 0
        self.armed_at = _INF  # time of the earliest timer set; later ones are stale
        self.cb = (self._tick,)

    def add_in_order(self, deadline: float, call: Call) -> None:
        """A call starting now (not ``lazy``): its deadline is the latest so far."""
        self.fifo.append((deadline, call))
        if deadline < self.armed_at:
            self.arm(deadline)

    def add_late(self, deadline: float, call: Call) -> None:
        """A call that has started earlier and now needs its timer (``lazy``)."""
        self.seq += 1
        heappush(self.heap, (deadline, self.seq, call))
        if deadline < self.armed_at:
            self.arm(deadline)

    def arm(self, deadline: float) -> None:
        self.armed_at = deadline
        self.engine.later(deadline - self.engine.env._now, self.cb, None)

    def calls(self) -> list[Call]:
        """Every call with an entry (finished ones included), for :meth:`Engine.in_flight`."""
        return [c for _, c in self.fifo] + [c for _, _, c in self.heap]

    def _tick(self, ev: Any) -> None:
        now = self.engine.env._now
        if now < self.armed_at:
            return  # a timer superseded by an earlier one, which has already run
        fifo, heap, fire = self.fifo, self.heap, self.fire
        while fifo:
            deadline, call = fifo[0]
            if not call.done:
                if deadline > now:
                    break
                fifo.popleft()
                fire(call)
            else:
                fifo.popleft()
        while heap:
            deadline, _, call = heap[0]
            if not call.done:
                if deadline > now:
                    break
                heappop(heap)
                fire(call)
            else:
                heappop(heap)
        nxt = _INF
        if fifo:
            nxt = fifo[0][0]
        if heap and heap[0][0] < nxt:
            nxt = heap[0][0]
        self.armed_at = _INF
        if nxt < _INF:
            self.arm(nxt)


class Router:
    """Runs calls through clusters that have policies (see :attr:`Cluster.policy_path`)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.env = engine.env
        self._backoff_cb = (self._backoff_done,)
        self._connected_cb = (self._connected,)
        self._connect_timeout_cb = (self._connect_timeout,)
        self._fallback_cb = (self._fallback_done,)
        self._fault_delay_cb = (self._fault_delay_done,)
        self._connect_failure = Outcome.connect_failure()
        self._termination = Outcome.connection_termination()
        #: Callback tuple for the response leg of the router's attempts (``Engine.later``).
        self.respond_cb = (self._respond,)
        self._tick_cb = (self._outlier_tick,)
        self._responses: dict[int, Outcome] = {}
        self.records_append = engine.records.append
        self._timeout = Outcome.per_try_timeout()

    # ---- a call -------------------------------------------------------------------------------

    def timers(self, cl: Cluster) -> None:
        """Give ``cl`` its timers (route and per-try), as its retry policy needs."""
        policy = cl.retry_policy
        route = cl.route_timeout = policy.route_timeout
        per_try = cl.per_try_timeout = policy.per_try_timeout
        cl.route_timers = None if route is None else RouteTimers(
            self.engine, self._route_timeout,
            lazy=per_try is not None and per_try < route)
        cl.try_timers = None if per_try is None else TryTimers(self.engine, self._per_try_timeout)
        # Which response statuses the policy would retry: asked once per status, not per call.
        cl.retry_wanted = {}

    def _arm_route(self, call: Call) -> None:
        """Make sure the route timer will answer ``call`` at its deadline (see RouteTimers)."""
        if not call.route_armed and call.deadline is not None:
            call.route_armed = True
            call.cluster.route_timers.add_late(call.deadline, call)

    def start(self, parent: Attempt, cluster: Cluster, optional: bool, route_to: str | None,
              call: Call | None = None) -> None:
        """The pod (or gateway) working on ``parent`` calls ``cluster``.

        This is :meth:`_try` for a call's first try, written out flat: it runs for every call
        through a proxy with policies, so it saves the calls and checks a first try does not
        need. Anything unusual (no healthy host, panic, a pool that does not attach at once)
        takes the general path. ``call`` is given by :meth:`start_fault`, for a call the app's
        breaker has let through and the fault filter has passed on.
        """
        now = self.env._now
        cl = cluster
        if call is None:
            if cl.breaker is not None or cl.admission is not None:
                # The caller app's breaker, then the sidecar's admission control filter: both
                # are meshsim.policies.protocol.Policy objects, asked before the call is routed.
                request = _request(parent, cl)
                if cl.breaker is not None and not cl.breaker.admit(now, request):
                    self._refuse(parent, cl, optional, route_to, now)
                    return
                if cl.admission is not None and not cl.admission.admit(now, request):
                    self._reject_admission(parent, cl, optional, route_to, now)
                    return
            call = Call(parent, cl, optional, route_to, now)
        elif cl.admission is not None and not cl.admission.admit(now, _request(parent, cl)):
            self._reject_admission(parent, cl, optional, route_to, now, call)
            return
        deadline = call.deadline
        if deadline is not None and not cl.route_timers.lazy:
            call.route_armed = True
            cl.route_timers.add_in_order(deadline, call)
        det = cl.outlier
        if det is not None and (det.changes != cl.seen or det.pending_update_at is not None):
            cl.refresh(now)
        if not cl.avail or cl.in_panic:
            self._try(call)
            return
        host = call.first_host = cl.pick()
        a = self._attempt(call, host, now)
        call.current = a
        cl.active[host] += 1
        pool = cl.pool
        verdict = pool.request(now, host, a)
        if verdict == ATTACHED:
            a.conn = pool.attached_conn
            timers = cl.try_timers
            if timers is not None:
                deadline = now + cl.per_try_timeout
                timers.queue.append((deadline, a))
                if not timers.armed:
                    timers.arm(deadline)
            # Engine.schedule, written out.
            eng = self.engine
            a.callbacks = a.host.arrive_cb
            heappush(eng._queue, (now + cl.out_delay(), 1, next(eng._eid), a))
            if pool.to_connect or pool.overflowed:
                self._drain_connects(cl)
        else:
            self._not_attached(call, a, verdict)

    # ---- the route's fault filter (Istio ``http[].fault``) -------------------------------------

    def start_fault(self, parent: Attempt, cluster: Cluster, optional: bool,
                    route_to: str | None) -> None:
        """:meth:`start` for a cluster whose route injects faults (``cluster.fault``).

        Istio puts the fault on the caller's route as ``typed_per_filter_config`` of
        ``envoy.filters.http.fault``, a filter ahead of the router (istiod
        ``pilot/pkg/networking/core/route/route.go``, which keeps the route's retries and
        timeout): it acts after the app's own breaker and before admission control and the
        router. See ``../shared/envoy-semantics.md`` §7 and
        https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter.
        """
        now = self.env._now
        cl = cluster
        if cl.breaker is not None and not cl.breaker.admit(now, _request(parent, cl)):
            self._refuse(parent, cl, optional, route_to, now)
            return
        decision = cl.fault.decide(now)
        call = Call(parent, cl, optional, route_to, now)
        if decision is NO_FAULT:
            self.start(parent, cl, optional, route_to, call)
        elif decision.delay > 0:
            # Held before the router: no host, connection or breaker slot is taken, and this
            # proxy's route and per-try timers do not run ([exp] §4.2, §7). The timer event
            # holds the call, so Engine.in_flight finds its caller.
            call.fault = decision
            self.engine.later(decision.delay, self._fault_delay_cb, call)
        else:
            self._fault_abort(call, decision, now)

    def _fault_delay_done(self, ev: Any) -> None:
        call = ev._value
        decision: FaultDecision = call.fault
        call.cluster.fault.on_fault_end()
        now = self.env._now
        if decision.aborted:
            self._fault_abort(call, decision, now)  # flags DI,FI
            return
        call.after_delay(decision.delay, now)
        self.start(call.parent, call.cluster, call.optional, call.route_to, call)

    def _fault_abort(self, call: Call, decision: FaultDecision, now: float) -> None:
        """The fault filter answers ``call`` itself: one row without a host, from the call's
        start, attempt 1; the router never sees it, so no retry, no outlier or pool accounting,
        and the admission filter behind it does not count it either."""
        a = self._attempt(call, None, call.start)
        a.status = decision.status
        a.flags = self.engine.flag_code(decision.flags)
        self._record(a, now)
        call.done = True
        cl = call.cluster
        if cl.breaker is not None:
            completion = Completion(decision.status, now - call.start, False)
            cl.breaker.on_outcome(now, _request(call.parent, cl), completion)
        parent = call.parent
        parent.host.child_done(parent, decision.status, a.flags, call.optional)

    def _verdict(self, call: Call, flags: str) -> str:
        """The flags of a call's answer: ``DI`` first when the fault filter delayed it (Envoy
        prints flags in the order they were set, ``StreamInfoImpl::setResponseFlag``)."""
        if not call.delayed:
            return flags
        return "DI" if flags == "-" else f"DI,{flags}"

    def _try(self, call: Call) -> None:
        now = self.env._now
        cl = call.cluster
        det = cl.outlier
        if det is not None and (det.changes != cl.seen or det.pending_update_at is not None):
            cl.refresh(now)
        if not cl.avail:
            # No healthy host and no panic: Envoy answers locally, 503 "no healthy upstream".
            cl.count("upstream_cx_none_healthy")
            a = self._attempt(call, None, now)
            self._local_reply(call, a, 503, "UH")
            return
        state = call.state
        if state is None:
            host = call.first_host = cl.pick()
        else:
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
            if pool.to_connect or pool.overflowed:
                self._drain_connects(cl)
        else:
            self._not_attached(call, a, verdict)

    def _not_attached(self, call: Call, a: Attempt, verdict: int) -> None:
        """The pool refused ``a`` (503 ``UO`` at once, never retried) or queued it."""
        cl = call.cluster
        if verdict == OVERFLOW:
            cl.active[a.hostidx] -= 1
            self._local_reply(call, a, 503, "UO")
            return
        self._arm_route(call)  # pending: no per-try timer runs until it gets a connection
        pool = cl.pool
        if pool.to_connect or pool.overflowed:
            self._drain_connects(cl)

    def _attempt(self, call: Call, host: int | None, now: float) -> Attempt:
        eng = self.engine
        parent = call.parent
        cl = call.cluster
        state = call.state
        a = Attempt()
        a.span = eng._span = eng._span + 1
        a.req = parent.req
        a.client = parent.client
        a.parent = parent
        a.source = parent.host.service
        a.optional = call.optional
        a.cluster = cl
        a.dest = cl.code
        a.route_to = call.route_to
        a.hostidx = host
        a.host = eng.no_host if host is None else cl.hosts[host]
        a.failed = False
        a.flags = 0
        a.status = 0
        a.t_start = now
        a.t_arrive = a.t_begin = a.t_reply = a.t_end = _NAN
        a.call = call
        a.attempt = 1 if state is None else state.attempts
        a.conn = -1
        a.inbound_conn = -1
        a.abandoned = 0  # the status the caller gave up with (504), 0 while it waits
        return a

    def _attach(self, a: Attempt, conn: int) -> None:
        """The attempt got a connection: arm the per-try timer (Envoy arms it in
        ``onPoolReady``, so time pending in the pool counts against the route timer only) and
        send it."""
        a.conn = conn
        cl = a.cluster
        timers = cl.try_timers
        if timers is not None:
            timers.add(self.env._now + cl.per_try_timeout, a)
        eng = self.engine
        eng.schedule(cl.out_delay(), a.host.arrive_cb, a)

    def _drain_connects(self, cl: Cluster) -> None:
        pool = cl.pool
        if pool.to_connect:
            connect = cl.connect_time
            for host, conn in pool.to_connect:
                item = (cl, host, conn)
                if connect is None:
                    # Set up at once (``mesh.sidecar.connectTime`` 0, the default): pools behave
                    # as if warm, like the lean path of clusters without policies.
                    self.engine.later(0.0, self._connected_cb, item)
                    continue
                # The TCP (and mTLS) handshakes take a connect time; one that would take
                # connect_timeout or longer fails then (Envoy's connect timer), 503 UF.
                took = connect()
                timeout = pool.config.connect_timeout
                if took < timeout:
                    self.engine.later(took, self._connected_cb, item)
                else:
                    self.engine.later(timeout, self._connect_timeout_cb, item)
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

    def _connect_timeout(self, ev: Any) -> None:
        """A connection's connect timer fired: every request waiting for that host fails."""
        cl, host, conn = ev._value
        now = self.env._now
        failed = cl.pool.connect_failed(now, host, conn, timed_out=True)
        for a in failed:
            # Envoy's purgePendingStreams: each waiting request fails with a connect failure, a
            # local-origin 503 for outlier detection, which the retry policy may retry
            # (connect-failure: Istio's default policy retries it).
            cl.active[host] -= 1
            if cl.outlier is not None:
                cl.outlier.on_result(now, host, 503, local_origin=True)
            a.status = 503
            a.flags = self.engine.flag_code("UF")
            self._decide(a.call, a, self._connect_failure, now)
        self._drain_connects(cl)

    def upstream_failed(self, a: Attempt, why: int) -> None:
        """The host of ``a`` refused its connection (``why`` REFUSED: 503 ``UF``) or the
        connection closed with ``a`` on it (TERMINATED: 503 ``UC``), as when a pod crashes.

        Both are local-origin failures for outlier detection; Envoy's router reports every
        upstream reset as ``LocalOriginConnectFailed`` (``Filter::onUpstreamReset``), which
        counts as a 5xx and a gateway failure unless ``splitExternalLocalOriginErrors``.
        """
        now = self.env._now
        if a.abandoned:
            self._late(a)
            return
        cl = a.cluster
        host = a.hostidx
        cl.active[host] -= 1
        self._free_stream(cl, a, now)
        if cl.outlier is not None:
            cl.outlier.on_result(now, host, 503, local_origin=True)
        a.status = 503
        refused = why == REFUSED
        a.flags = self.engine.flag_code("UF" if refused else "UC")
        self._decide(a.call, a, self._connect_failure if refused else self._termination, now)

    # ---- outcomes -----------------------------------------------------------------------------

    def _respond(self, a: Attempt) -> None:
        """The callee's answer to attempt ``a`` is back at the caller's proxy."""
        now = self.env._now
        if a.abandoned:
            self._late(a)
            return
        cl = a.cluster
        call = a.call
        host = a.hostidx
        status = a.status
        cl.active[host] -= 1
        pool = cl.pool
        attached = pool.done(now, host, a.conn)
        if attached:
            for b in attached:
                self._attach(b, a.conn)
        if pool.to_connect or pool.overflowed:
            self._drain_connects(cl)
        if cl.outlier is not None:
            cl.outlier.on_result(now, host, status)
        wanted = cl.retry_wanted.get(status)
        if wanted is None:
            wanted = cl.retry_wanted[status] = cl.retry_policy.wants_retry(self._outcome(status))
        state = call.state
        if not wanted and (state is None or not state.holds_retry) and (
                call.deadline is None or now < call.deadline) and not call.delayed:
            # Nothing to decide: RetryState.decide would answer with the response as it is.
            # (_record and _finish, written out: this is every plain answer.)
            if state is not None:
                state.done = True
            parent = a.parent
            self.records_append((
                a.req, a.span, parent.span, a.client.code, a.source, a.dest, a.host.code,
                a.attempt, a.t_start, now, status, a.flags, 0, a.t_arrive, a.t_begin, a.t_reply,
            ))
            call.done = True
            call.current = None
            if cl.breaker is not None or cl.admission is not None:
                self._report(call, status, "-", now)
            parent.host.child_done(parent, status, 0, call.optional)
            return
        self._decide(call, a, self._outcome(status), now)

    def _late(self, a: Attempt) -> None:
        """The answer (or failure) of ``a`` comes after the caller gave up on it (per-try or
        route timeout): the callee's work was wasted. Its row keeps what the caller saw then
        (``abandoned`` holds that status; the callee's own answer is lost with the reset
        stream)."""
        a.status = a.abandoned
        self._record(a, a.t_end)

    def _outcome(self, status: int) -> Outcome:
        outcome = self._responses.get(status)
        if outcome is None:
            outcome = self._responses[status] = Outcome.response(status)
        return outcome

    def _per_try_timeout(self, a: Attempt) -> None:
        call = a.call
        now = self.env._now
        if call.deadline is not None and now >= call.deadline:
            return  # the route timer answers (it covers the per-try timer at the same instant)
        cl = a.cluster
        self._abandon(a, now, 504, "UT")
        if cl.outlier is not None:
            # A timeout is reported as a local-origin 504 (Outlier::Result::LocalOriginTimeout).
            cl.outlier.on_result(now, a.hostidx, 504, local_origin=True)
        self._decide(call, a, self._timeout, now)

    def _route_timeout(self, call: Call) -> None:
        now = self.env._now
        flags = self._verdict(call, "UT")
        state = call.retry_state()
        cl = call.cluster
        if state.done:
            # The last decision was a retry whose back-off would end past the deadline: the
            # answer (504 UT) was decided then, without an upstream request in flight (so no
            # upstream_rq_timeout); the route timer delivers it, and the retry slot held
            # until now is given back.
            if state.holds_retry:
                cl.pool.retry_finished(now)
                state.holds_retry = False
        else:
            held = state.holds_retry
            decision = state.route_timeout()
            if held:
                cl.pool.retry_finished(now)
            cl.count_all(decision.counters)
        a = call.current
        if a is not None:  # in flight, or pending in the pool (the caller has no answer yet)
            if a.conn < 0:
                # Still pending in the pool: it leaves the queue and never reaches a host.
                cl.pool.cancel_pending(now, a.hostidx, a)
                cl.active[a.hostidx] -= 1
                a.status = 504
                a.flags = self.engine.flag_code(flags)
                self._record(a, now)
            else:
                self._abandon(a, now, 504, flags)
                if cl.outlier is not None:
                    cl.outlier.on_result(now, a.hostidx, 504, local_origin=True)
        else:
            # Between attempts (back-off): the timeout is a local reply of its own.
            b = self._attempt(call, None, now)
            b.status = 504
            b.flags = self.engine.flag_code(flags)
            self._record(b, now)
        self._finish(call, 504, flags)

    def _abandon(self, a: Attempt, now: float, status: int, flags: str) -> None:
        """The caller stops waiting for ``a``; the callee is not told and keeps working."""
        cl = a.cluster
        a.abandoned = status
        a.status = status
        a.flags = self.engine.flag_code(flags)
        a.t_end = now
        cl.active[a.hostidx] -= 1
        # The stream is reset. Simplification: the connection goes back to the pool instead of
        # being closed (an HTTP/1.1 reset closes it in Envoy, and the next request then pays a
        # connection set-up), so connection churn after timeouts is not modelled.
        self._free_stream(cl, a, now)
        if a.host.inbound is not None and a.host.cancel(a):
            # It was still waiting in the callee's own sidecar, which drops it: no late answer
            # will come, so its row (the caller's view) is written now.
            self._record(a, now)

    def _free_stream(self, cl: Cluster, a: Attempt, now: float) -> None:
        attached = cl.pool.done(now, a.hostidx, a.conn)
        for b in attached:
            self._attach(b, a.conn)
        self._drain_connects(cl)

    def _decide(self, call: Call, a: Attempt, outcome: Outcome, now: float) -> None:
        state = call.retry_state()
        cl = call.cluster
        pool = cl.pool
        held = state.holds_retry
        allowed = pool.retry_allowed(pool.active_retries - held)
        decision = state.decide(now, outcome, allowed)
        if decision.retry or decision.delay > 0:
            self._arm_route(call)  # a back-off and a new try: no per-try timer covers them
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
        if decision.delay > 0:
            # A back-off that would end past the route deadline: the route timer answers 504 UT
            # then, as a local reply with a row of its own (the call stays open until it fires;
            # state.done is already set). This attempt keeps what it got.
            if not a.abandoned:
                self._record(a, now)
            call.current = None
            if state.holds_retry:
                pool.retry_started(now)  # the slot stays held until the reply
            return
        # The verdict (URX, UO, ...) goes on the last attempt's row; an abandoned attempt's row
        # is written when the callee's late answer arrives.
        flags = self._verdict(call, flags)
        a.flags = self.engine.flag_code(flags)
        if not a.abandoned:
            self._record(a, now)
        self._finish(call, decision.status, flags)

    def _backoff_done(self, ev: Any) -> None:
        call = ev._value
        if not call.done:
            self._try(call)

    def _local_reply(self, call: Call, a: Attempt, status: int, flags: str) -> None:
        """The proxy answers by itself (overflow, no healthy host): never retried."""
        now = self.env._now
        flags = self._verdict(call, flags)
        a.status = status
        a.flags = self.engine.flag_code(flags)
        self._record(a, now)
        state = call.state
        if state is not None:
            if state.holds_retry:
                call.cluster.pool.retry_finished(now)
                state.holds_retry = False
            state.done = True
        self._finish(call, status, flags)

    def _finish(self, call: Call, status: int, flags: str) -> None:
        call.done = True
        call.current = None
        cl = call.cluster
        if cl.breaker is not None or cl.admission is not None:
            self._report(call, status, flags, self.env._now)
        parent = call.parent
        code = 0 if flags == "-" else self.engine.flag_code(flags)
        parent.host.child_done(parent, status, code, call.optional)

    # ---- the caller app's circuit breaker ---------------------------------------------------

    def _report(self, call: Call, status: int, flags: str, now: float) -> None:
        """The app gets the call's outcome: its breaker records it (after the sidecar's retries,
        as the client library sees it)."""
        cl = call.cluster
        request = _request(call.parent, cl)
        # The app waited from its call, a fault's delay included.
        completion = Completion(status, now - call.start + call.delayed,
                                "UT" in flags.split(","))
        if cl.admission is not None:
            # Envoy's filter sees the response the router sends downstream, local replies too.
            cl.admission.on_outcome(now, request, completion)
        if cl.breaker is not None:
            cl.breaker.on_outcome(now, request, completion)

    def _reject_admission(self, parent: Attempt, cl: Cluster, optional: bool,
                          route_to: str | None, now: float, call: Call | None = None) -> None:
        """Envoy's admission control filter answers 503 itself (details
        ``denied_by_admission_control``, no response flag but a fault delay's ``DI``); the
        request never reaches the router, so it is neither retried nor counted by the
        filter."""
        if call is None:
            call = Call(parent, cl, optional, route_to, now)
        a = self._attempt(call, None, now)
        a.status = 503
        if call.delayed:
            a.flags = self.engine.flag_code("DI")
        self._record(a, now)
        self._close(a)

    def _refuse(self, parent: Attempt, cl: Cluster, optional: bool, route_to: str | None,
                now: float) -> None:
        """The caller's breaker refuses the call: it never leaves the app. The row has no host,
        and flags ``breaker_open`` (failing fast) or ``fallback`` (answered by the fallback)."""
        call = Call(parent, cl, optional, route_to, now)
        a = self._attempt(call, None, now)
        when = cl.when_open
        if when.fallback is None:
            a.status = when.status
            a.flags = self.engine.flag_code(FLAG_OPEN)
            self._record(a, now)
            self._close(a)
            return
        a.status = when.fallback.status
        a.flags = self.engine.flag_code(FLAG_FALLBACK)
        self.engine.later(when.fallback.latency, self._fallback_cb, a)

    def _fallback_done(self, ev: Any) -> None:
        a = ev._value
        self._record(a, self.env._now)
        self._close(a)

    def _close(self, a: Attempt) -> None:
        call = a.call
        call.done = True
        parent = call.parent
        parent.host.child_done(parent, a.status, a.flags, call.optional)

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


def _request(parent: Attempt, cl: Cluster) -> Request:
    """What a caller-side policy knows of a call of ``parent`` to ``cl``'s destination."""
    return Request(parent.client.name, cl.source_name, cl.guarded)
