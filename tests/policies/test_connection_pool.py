"""Exact unit tests and a state-machine property test of Envoy's connection pool and circuit
breakers (``../shared/envoy-semantics.md`` §1, §12, §13): calls are fed by hand, no simulation
runs."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from meshsim.policies.connection_pool import (
    ATTACHED,
    OVERFLOW,
    PENDING,
    STAT_NAMES,
    ConnectionPool,
    PoolConfig,
)

MAX_UINT32 = 2**32 - 1


def make_pool(n_hosts: int = 1, **config) -> ConnectionPool:
    return ConnectionPool(n_hosts, PoolConfig(**config))


def take(pool: ConnectionPool) -> list[tuple[int, int]]:
    """Drain ``to_connect`` as the engine does after each call."""
    out = list(pool.to_connect)
    pool.to_connect.clear()
    return out


def counts(pool: ConnectionPool) -> dict[str, int]:
    """The counters that moved."""
    return {name: n for name, n in pool.stats.items() if n}


# -- §1.3 dispatch --------------------------------------------------------------------------------

def test_observed_experiment_one_connection_one_pending_one_request():
    # §1.3 [exp]: max_connections 1, max_pending_requests 1, max_requests 1, HTTP/1.1, upstream
    # sleeping 2 s, 5 requests sent together. On loopback the connection is up (~0.1 ms) before
    # the other four arrive: one waits as pending, three get 503 UO at once.
    pool = make_pool(max_connections=1, max_pending_requests=1, max_requests=1)
    assert pool.request(0.0, 0, 1) == PENDING
    [(host, conn)] = take(pool)
    assert pool.connected(0.0001, host, conn) == [1]  # #1 goes out when the connection is up
    assert [pool.request(0.0002, 0, r) for r in (2, 3, 4, 5)] == [PENDING, OVERFLOW, OVERFLOW,
                                                                  OVERFLOW]
    assert take(pool) == []  # #2 waits for the one connection; none is opened for it
    assert pool.done(2.0001, 0, conn) == [2]  # #2 goes out when #1 is done: 200 at 4 s
    assert pool.done(4.0001, 0, conn) == ()
    assert counts(pool) == {
        "upstream_cx_total": 1, "upstream_rq_total": 2, "upstream_rq_pending_total": 2,
        "upstream_rq_pending_overflow": 3,
        # The experiment saw +2. Every path of conn_pool_base.cc for this sequence counts one:
        # only #2 runs tryCreateNewConnection at the limit (#3-#5 fail the pending check first,
        # and no queue is left when a connection becomes ready).
        "upstream_cx_overflow": 1,
    }
    assert pool.gauges()["cx_open"] == 1
    assert pool.events == [
        (0.0, "pool_saturated", -1, "pending"),
        (0.0, "pool_saturated", -1, "connections"),
        (0.0001, "pool_saturated", -1, "requests"),
        (0.0001, "pool_recovered", -1, "pending"),
        (0.0002, "pool_saturated", -1, "pending"),
        (2.0001, "pool_recovered", -1, "pending"),  # requests stays saturated: #2 took the slot
        (4.0001, "pool_recovered", -1, "requests"),
    ]


def test_all_five_before_the_connection_is_up_four_overflow():
    # The same limits with the connect slower than the arrivals: #1 holds the only pending slot.
    pool = make_pool(max_connections=1, max_pending_requests=1, max_requests=1)
    assert [pool.request(0.0, 0, r) for r in range(5)] == [PENDING] + [OVERFLOW] * 4
    assert pool.stats["upstream_rq_pending_overflow"] == 4


def test_http2_defaults_pending_only_while_first_connection_is_set_up_then_max_requests_bites():
    pool = make_pool(http2=True)  # Envoy defaults: 1024 requests, 2^31-1 streams per connection
    assert [pool.request(0.0, 0, r) for r in range(10)] == [PENDING] * 10
    [(host, conn)] = take(pool)  # one connecting connection covers every pending request
    assert pool.connected(0.001, host, conn) == list(range(10))
    assert [pool.request(0.002, 0, r) for r in range(10, 1024)] == [ATTACHED] * 1014
    assert pool.attached_conn == conn
    assert pool.request(0.002, 0, 1024) == OVERFLOW  # max_requests, not the queue (§13)
    assert pool.pending == 0
    assert pool.hosts[0].connection_states() == {conn: ("ready", 1024)}
    assert counts(pool) == {"upstream_cx_total": 1, "upstream_rq_total": 1024,
                            "upstream_rq_pending_total": 10, "upstream_rq_active_overflow": 1}
    pool.done(0.003, 0, conn)
    assert pool.request(0.003, 0, 1025) == ATTACHED


def test_http1_opens_a_connection_per_pending_request_not_covered_by_connecting_ones():
    pool = make_pool(max_connections=2)
    assert [pool.request(0.0, 0, r) for r in "abc"] == [PENDING] * 3
    connects = take(pool)
    assert [conn for _, conn in connects] == [0, 1]  # the third is over max_connections
    assert pool.stats["upstream_cx_overflow"] == 1
    assert pool.connected(0.001, 0, 1) == ["a"]
    assert pool.connected(0.001, 0, 0) == ["b"]
    assert pool.hosts[0].connection_states() == {0: ("busy", 1), 1: ("busy", 1)}
    assert pool.done(0.002, 0, 1) == ["c"]  # each HTTP/1.1 connection carries one at a time


def test_a_host_with_no_connection_opens_one_over_max_connections():
    pool = make_pool(n_hosts=2, max_connections=1)
    assert pool.request(0.0, 0, "a") == PENDING
    assert take(pool) == [(0, 0)]
    assert pool.request(0.0, 1, "b") == PENDING
    assert take(pool) == [(1, 1)]  # over the limit, else "b" could never be served
    assert pool.connections == 2
    assert pool.stats["upstream_cx_overflow"] == 1
    assert pool.request(0.0, 1, "c") == PENDING
    assert take(pool) == []  # host 1 has a connection now: counted, not opened
    assert pool.stats["upstream_cx_overflow"] == 2
    assert pool.gauges()["remaining_cx"] == 0


def test_connect_failure_fails_every_pending_request_of_that_host():
    pool = make_pool(n_hosts=2, max_connections=2)
    for r in "abc":
        pool.request(0.0, 0, r)
    pool.request(0.0, 1, "x")
    assert take(pool) == [(0, 0), (0, 1), (1, 2)]
    # purgePendingStreams: all of host 0, even the one connection 1 would have served.
    assert pool.connect_failed(1.0, 0, 0) == ["a", "b", "c"]
    assert pool.pending == 1
    assert pool.connections == 2
    assert pool.connected(1.0, 0, 1) == ()  # the other connection comes up idle
    assert pool.connected(1.0, 1, 2) == ["x"]  # host 1 is untouched
    assert counts(pool) == {
        "upstream_cx_total": 3, "upstream_cx_overflow": 2, "upstream_cx_connect_fail": 1,
        "upstream_rq_total": 1, "upstream_rq_pending_total": 4,
        "upstream_rq_pending_failure_eject": 3,
    }


def test_connect_timeout_counts_a_timeout_and_a_connect_failure():
    pool = make_pool()
    pool.request(0.0, 0, "a")
    [(host, conn)] = take(pool)
    assert pool.connect_failed(5.0, host, conn, timed_out=True) == ["a"]
    assert pool.stats["upstream_cx_connect_timeout"] == 1
    assert pool.stats["upstream_cx_connect_fail"] == 1
    assert pool.connections == 0
    with pytest.raises(ValueError, match="not connecting"):
        pool.connected(5.0, host, conn)


def test_pending_requests_are_served_oldest_first():
    pool = make_pool(max_connections=1)
    for r in range(5):
        pool.request(0.0, 0, r)
    [(host, conn)] = take(pool)
    served = list(pool.connected(0.1, host, conn))
    for t in range(1, 5):
        served += pool.done(float(t), host, conn)
    assert served == [0, 1, 2, 3, 4]
    # One per request queued at the limit (4), and one each time the connection takes the
    # next request while others still wait: onUpstreamReady tries again to open one (4).
    assert pool.stats["upstream_cx_overflow"] == 8


def test_max_requests_per_connection_drains_then_closes_and_reopens():
    pool = make_pool(max_connections=1, max_requests_per_connection=2)
    pool.request(0.0, 0, "a")
    [(_, c0)] = take(pool)
    assert pool.connected(0.1, 0, c0) == ["a"]
    assert pool.request(0.2, 0, "b") == PENDING
    assert pool.done(1.0, 0, c0) == ["b"]  # the second and last request of c0
    assert pool.hosts[0].connection_states() == {c0: ("draining", 1)}
    assert pool.stats["upstream_cx_max_requests"] == 1
    assert pool.request(1.1, 0, "c") == PENDING
    assert take(pool) == []  # the draining connection still counts
    assert pool.done(2.0, 0, c0) == ()  # c0 closes with its last request ...
    [(_, c1)] = take(pool)  # ... and a new connection is opened for "c"
    assert pool.connections == 1
    assert pool.connected(2.1, 0, c1) == ["c"]


def test_no_keep_alive_opens_a_connection_per_request():
    pool = make_pool(max_requests_per_connection=1)
    pool.request(0.0, 0, "a")
    [(_, c0)] = take(pool)
    pool.connected(0.1, 0, c0)
    assert pool.request(0.2, 0, "b") == PENDING
    assert take(pool) == [(0, 1)]
    assert pool.done(1.0, 0, c0) == ()
    assert pool.connections == 1


def test_full_max_requests_when_a_connection_comes_up_refuses_the_whole_queue():
    # onUpstreamReady re-checks max_requests per attach; a refused request leaves the queue and
    # the connection keeps its capacity, so every request queued behind it is refused too.
    pool = make_pool(n_hosts=2, max_requests=1, http2=True)
    pool.request(0.0, 0, "a")
    pool.request(0.0, 1, "x")
    pool.request(0.0, 1, "y")
    [(_, c0), (_, c1)] = take(pool)
    assert pool.connected(0.1, 0, c0) == ["a"]
    assert pool.connected(0.1, 1, c1) == []
    assert pool.overflowed == ["x", "y"]
    assert pool.pending == 0
    assert pool.stats["upstream_rq_active_overflow"] == 2
    assert pool.stats["upstream_rq_pending_overflow"] == 0


def test_cancel_pending_leaves_the_queue_and_keeps_the_connection():
    pool = make_pool(max_connections=1)
    pool.request(0.0, 0, "a")
    pool.request(0.0, 0, "b")
    [(host, conn)] = take(pool)
    assert pool.cancel_pending(0.05, host, "a")
    assert not pool.cancel_pending(0.05, host, "a")
    assert pool.pending == 1
    assert pool.connected(0.1, host, conn) == ["b"]
    assert pool.done(1.0, host, conn) == ()
    assert pool.stats["upstream_rq_cancelled"] == 1
    assert pool.hosts[0].connection_states() == {conn: ("ready", 0)}


# -- §1.5 retry circuit breaker --------------------------------------------------------------------

def test_retry_budget_counts_active_and_pending_requests():
    # Istio's doc example: 20 % with minimum 3 allows 5 retries at 25 requests, 3 at 2.
    pool = make_pool(max_connections=20, budget_percent=20.0, min_retry_concurrency=3,
                     max_retries=0)  # the budget replaces max_retries
    for r in range(25):
        pool.request(0.0, 0, r)
    for host, conn in take(pool):
        pool.connected(0.1, host, conn)
    assert (pool.active_requests, pool.pending) == (20, 5)
    assert pool.retry_allowed(4) and not pool.retry_allowed(5)
    small = make_pool(budget_percent=20.0, min_retry_concurrency=3)
    small.request(0.0, 0, "a")
    small.request(0.0, 0, "b")
    for host, conn in take(small):
        small.connected(0.1, host, conn)
    assert small.active_requests == 2
    assert small.retry_allowed(2) and not small.retry_allowed(3)
    assert "remaining_retries" not in small.gauges()  # not tracked with a budget


def test_max_retries_breaker_opens_and_closes():
    pool = make_pool()  # Envoy's max_retries 3
    for t in range(3):
        assert pool.retry_allowed(pool.active_retries)
        pool.retry_started(float(t))
    assert not pool.retry_allowed(pool.active_retries)
    assert pool.retry_allowed(pool.active_retries - 1)  # the deciding request's own is freed
    assert pool.gauges()["rq_retry_open"] == 1 and pool.gauges()["remaining_retries"] == 0
    pool.retry_finished(3.0)
    pool.retry_finished(4.0)
    assert pool.events == [(2.0, "pool_saturated", -1, "retries"),
                           (3.0, "pool_recovered", -1, "retries")]
    assert make_pool(**vars(PoolConfig.istio_default())).retry_allowed(10_000)


# -- §1.1 / §1.6 Istio ----------------------------------------------------------------------------

def test_from_istio_empty_block_is_what_istiod_writes_by_default():
    config = PoolConfig.from_istio({})
    assert config == PoolConfig.istio_default()
    assert (config.max_connections, config.max_pending_requests, config.max_requests,
            config.max_retries) == (MAX_UINT32,) * 4
    assert (config.connect_timeout, config.http2) == (10.0, False)


def test_from_istio_only_values_above_zero_overwrite():
    config = PoolConfig.from_istio({
        "tcp": {"maxConnections": 0, "connectTimeout": 0.25},
        "http": {"http1MaxPendingRequests": 0, "http2MaxRequests": 7, "maxRetries": 0,
                 "maxRequestsPerConnection": 0, "idleTimeout": 30.0},
    })
    assert config == PoolConfig(max_connections=MAX_UINT32, max_pending_requests=MAX_UINT32,
                                max_requests=7, max_retries=MAX_UINT32, connect_timeout=0.25)
    bare = PoolConfig.from_istio({"http": {"maxRetries": 5}}, istio_defaults=False)
    assert bare == PoolConfig(max_retries=5)  # plain Envoy's 1024 / 5 s elsewhere


def test_http2_max_requests_limits_an_http1_cluster():
    pool = ConnectionPool(1, PoolConfig.from_istio({"http": {"http2MaxRequests": 2}}))
    for r in "abc":
        pool.request(0.0, 0, r)
    for host, conn in take(pool):
        pool.connected(0.1, host, conn)
    assert pool.active_requests == 2
    assert pool.overflowed == ["c"]


def test_http1_max_pending_requests_limits_an_http2_cluster():
    config = PoolConfig.from_istio(
        {"http": {"http1MaxPendingRequests": 2, "h2UpgradePolicy": "UPGRADE"}})
    assert config.http2
    pool = ConnectionPool(1, config)
    assert [pool.request(0.0, 0, r) for r in "abc"] == [PENDING, PENDING, OVERFLOW]
    assert pool.stats["upstream_rq_pending_overflow"] == 1


@pytest.mark.parametrize(("http", "http2_port", "http2", "streams"), [
    ({"h2UpgradePolicy": "DEFAULT"}, False, False, 2**31 - 1),  # Istio's mesh default
    ({"h2UpgradePolicy": "UPGRADE", "maxConcurrentStreams": 8}, False, True, 2**31 - 1),
    ({"maxConcurrentStreams": 8}, True, True, 8),  # written only into an HTTP/2 port's cluster
    ({"h2UpgradePolicy": "DO_NOT_UPGRADE", "maxConcurrentStreams": 8}, True, True, 8),
    ({"h2UpgradePolicy": "UPGRADE", "useClientProtocol": True}, False, False, 2**31 - 1),
])
def test_from_istio_protocol(http, http2_port, http2, streams):
    config = PoolConfig.from_istio({"http": http}, http2_port=http2_port)
    assert (config.http2, config.max_concurrent_streams) == (http2, streams)


@pytest.mark.parametrize(("block", "message"), [
    ({"grpc": {}}, "unknown field"),
    ({"tcp": {"maxConnection": 3}}, "unknown field"),
    ({"http": {"http1MaxPendingRequest": 3}}, "unknown field"),
    ({"http": {"maxRetries": -1}}, "non-negative"),
    ({"tcp": {"maxConnections": 2.5}}, "non-negative"),
    ({"tcp": {"connectTimeout": 0.0}}, "at least 1ms"),
    ({"tcp": {"maxConnectionDuration": 60.0}}, "not modelled"),
    ({"http": {"h2UpgradePolicy": "upgrade"}}, "h2UpgradePolicy"),
])
def test_from_istio_rejects_bad_blocks(block, message):
    with pytest.raises(ValueError, match=message):
        PoolConfig.from_istio(block)


def test_pool_config_validates():
    with pytest.raises(ValueError, match="max_connections"):
        PoolConfig(max_connections=-1)
    with pytest.raises(ValueError, match="budget_percent"):
        PoolConfig(budget_percent=120.0)
    with pytest.raises(ValueError, match="connect_timeout"):
        PoolConfig(connect_timeout=0.0)


# -- invariants under random call sequences -------------------------------------------------------

class PoolMachine(RuleBasedStateMachine):
    """Random sequences of the engine's calls, checked against a plain model of the requests."""

    @initialize(n_hosts=st.integers(1, 3), max_connections=st.integers(0, 3),
                max_pending=st.integers(0, 4), max_requests=st.integers(0, 4),
                http2=st.booleans(), streams=st.integers(1, 3), per_connection=st.integers(0, 3),
                budget=st.sampled_from([None, 20.0]))
    def setup(self, n_hosts, max_connections, max_pending, max_requests, http2, streams,
              per_connection, budget):
        self.config = PoolConfig(max_connections=max_connections, max_pending_requests=max_pending,
                                 max_requests=max_requests, http2=http2,
                                 max_concurrent_streams=streams,
                                 max_requests_per_connection=per_connection,
                                 budget_percent=budget, max_retries=2)
        self.pool = ConnectionPool(n_hosts, self.config)
        self.now = 0.0
        self.next_token = 0
        self.queue: list[list[int]] = [[] for _ in range(n_hosts)]  # expected FIFO per host
        self.active: dict[int, tuple[int, int]] = {}  # token -> (host, conn)
        self.connecting: list[tuple[int, int]] = []
        self.ended: set[int] = set()
        self.retries = 0

    # -- bookkeeping --

    def tick(self) -> float:
        self.now += 0.001
        return self.now

    def end(self, token: int) -> None:
        assert token not in self.ended, f"token {token} ended twice"
        self.ended.add(token)

    def collect(self, host: int, conn: int, attached) -> None:
        """Tokens that left ``host``'s queue in this call: attached ones to ``conn``, refused
        ones in ``overflowed``; together the oldest of the queue, in order."""
        overflowed = list(self.pool.overflowed)
        self.pool.overflowed.clear()
        left = sorted([*attached, *overflowed])
        assert left == self.queue[host][:len(left)]
        assert list(attached) == sorted(attached) and overflowed == sorted(overflowed)
        del self.queue[host][:len(left)]
        for token in attached:
            self.active[token] = (host, conn)
        for token in overflowed:
            self.end(token)
        self.connecting += take(self.pool)

    # -- rules: the engine's calls --

    @rule(data=st.data())
    def request(self, data):
        host = data.draw(st.integers(0, len(self.queue) - 1))
        token = self.next_token
        self.next_token += 1
        result = self.pool.request(self.tick(), host, token)
        if result == ATTACHED:
            self.active[token] = (host, self.pool.attached_conn)
        elif result == PENDING:
            self.queue[host].append(token)
        else:
            assert result == OVERFLOW
            self.end(token)
        self.connecting += take(self.pool)

    @precondition(lambda self: self.connecting)
    @rule(data=st.data())
    def connect(self, data):
        host, conn = self.connecting.pop(data.draw(st.integers(0, len(self.connecting) - 1)))
        self.collect(host, conn, self.pool.connected(self.tick(), host, conn))

    @precondition(lambda self: self.connecting)
    @rule(data=st.data(), timed_out=st.booleans())
    def connect_fail(self, data, timed_out):
        host, conn = self.connecting.pop(data.draw(st.integers(0, len(self.connecting) - 1)))
        failed = self.pool.connect_failed(self.tick(), host, conn, timed_out)
        assert failed == self.queue[host]
        self.queue[host] = []
        for token in failed:
            self.end(token)

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def finish(self, data):
        token = data.draw(st.sampled_from(sorted(self.active)))
        host, conn = self.active.pop(token)
        self.end(token)
        self.collect(host, conn, self.pool.done(self.tick(), host, conn))

    @precondition(lambda self: any(self.queue))
    @rule(data=st.data())
    def cancel(self, data):
        host = data.draw(st.sampled_from([h for h, q in enumerate(self.queue) if q]))
        token = data.draw(st.sampled_from(self.queue[host]))
        assert self.pool.cancel_pending(self.tick(), host, token)
        self.queue[host].remove(token)
        self.end(token)

    @precondition(lambda self: self.next_token > 0)
    @rule(data=st.data())
    def cancel_not_pending(self, data):
        token = data.draw(st.integers(0, self.next_token - 1))
        host = data.draw(st.integers(0, len(self.queue) - 1))
        if token not in self.queue[host]:
            assert not self.pool.cancel_pending(self.tick(), host, token)

    @rule()
    def retry_start(self):
        if self.pool.retry_allowed(self.retries):
            self.pool.retry_started(self.tick())
            self.retries += 1

    @precondition(lambda self: self.retries)
    @rule()
    def retry_finish(self):
        self.pool.retry_finished(self.tick())
        self.retries -= 1

    # -- invariants --

    @invariant()
    def counters_match_the_model_and_respect_the_limits(self):
        pool, config = self.pool, self.config
        assert min(pool.connections, pool.pending, pool.active_requests, pool.active_retries) >= 0
        assert all(n >= 0 for n in pool.stats.values()) and set(pool.stats) == set(STAT_NAMES)
        assert pool.pending == sum(map(len, self.queue)) <= config.max_pending_requests
        assert pool.active_requests == len(self.active) <= config.max_requests
        assert pool.active_retries == self.retries
        if config.budget_percent is None:
            assert pool.active_retries <= config.max_retries
        assert pool.connections == sum(len(hp.conns) for hp in pool.hosts)

    @invariant()
    def connections_carry_what_the_model_says(self):
        limit = self.config.max_concurrent_streams if self.config.http2 else 1
        for host, hp in enumerate(self.pool.hosts):
            assert list(hp.pending) == self.queue[host]
            for conn_id, (state, streams) in hp.connection_states().items():
                carried = sum(1 for hc in self.active.values() if hc == (host, conn_id))
                assert streams == carried <= limit  # HTTP/1.1: at most one request
                assert (state == "connecting") == ((host, conn_id) in self.connecting)
            if hp.pending:
                # Nothing waits while a connection could take it, and no queue is stranded.
                assert not hp.ready and hp.conns

    @invariant()
    def events_are_state_changes_that_match_the_gauges(self):
        last: dict[str, str] = {}
        for _, kind, host, detail in self.pool.events:
            assert host == -1 and last.get(detail, "pool_recovered") != kind
            last[detail] = kind
        config, gauges = self.config, self.pool.gauges()
        breakers = [("connections", "cx_open", config.max_connections),
                    ("pending", "rq_pending_open", config.max_pending_requests),
                    ("requests", "rq_open", config.max_requests)]
        if config.budget_percent is None:  # a budget's limit moves with the load, unlogged
            breakers.append(("retries", "rq_retry_open", config.max_retries))
        for detail, gauge, limit in breakers:
            if limit:  # a limit of 0 is open from the start, with no event
                assert (last.get(detail) == "pool_saturated") == bool(gauges[gauge]), detail

    def teardown(self):
        # Drive every request to its end: each token ends exactly once.
        if not hasattr(self, "pool"):
            return
        for _ in range(10_000):
            if self.connecting:
                host, conn = self.connecting.pop(0)
                self.collect(host, conn, self.pool.connected(self.tick(), host, conn))
            elif self.active:
                token = min(self.active)
                host, conn = self.active.pop(token)
                self.end(token)
                self.collect(host, conn, self.pool.done(self.tick(), host, conn))
            else:
                break
        assert self.ended == set(range(self.next_token))
        assert self.pool.pending == self.pool.active_requests == 0


PoolMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_pool_state_machine = PoolMachine.TestCase
