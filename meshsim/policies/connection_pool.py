"""Envoy's HTTP connection pool and circuit breakers for one (client proxy, upstream cluster).

Follows ``../shared/envoy-semantics.md`` §1 (circuit breakers, the dispatch algorithm of §1.3,
the retry budget of §1.5, Istio's ``connectionPool`` fields of §1.1/§1.6) and §13, checked against
Envoy's ``source/common/conn_pool/conn_pool_base.cc`` (function names are cited below).

The engine drives a :class:`ConnectionPool` with plain calls that take the simulated time ``now``
(float seconds); the pool never schedules anything:

- :meth:`~ConnectionPool.request` for every attempt that has chosen its host: ``ATTACHED`` (the
  request goes out now on connection :attr:`~ConnectionPool.attached_conn`), ``PENDING`` (it waits
  in the host's queue) or ``OVERFLOW`` (503 ``UO`` at once);
- :meth:`~ConnectionPool.connected` / :meth:`~ConnectionPool.connect_failed` when a connection the
  pool asked for is up or has failed (refused, or the engine's ``connect_timeout`` timer fired);
- :meth:`~ConnectionPool.done` when a request that went out on a connection has finished;
- :meth:`~ConnectionPool.cancel_pending` when a waiting request gives up (route timeout, downstream
  gone).

After each call the engine drains two lists the pool appends to: :attr:`~ConnectionPool.to_connect`
(``(host, conn_id)`` of connections to open: schedule the connect delay and the connect timeout) and
:attr:`~ConnectionPool.overflowed` (pending requests refused by ``max_requests`` while leaving the
queue: 503 ``UO``). Requests returned by :meth:`~ConnectionPool.connected` and
:meth:`~ConnectionPool.done` go out on the connection named in that call.

Simplifications, each with its effect:

- One pool per host. Envoy keeps one per worker thread × host × protocol, all sharing the cluster's
  circuit-breaker counters (§1.2). This is the one-worker Envoy of §13. With W workers, Envoy may
  open up to W× the connections (each worker's pool opens its first connection to a host even above
  ``max_connections``), and a request can wait in one worker's queue while another worker has an
  idle connection.
- HTTP/1.1 attaches the next pending request as soon as a request finishes. Envoy defers that to
  later in the same event-loop iteration (``scheduleOnUpstreamReady``): no simulated time passes.
- Preconnect ratio 1 (Envoy's default; Istio does not set it), DEFAULT priority only, no
  ``per_host_thresholds`` or ``max_connection_pools``, no HTTP/2 SETTINGS from the peer (the
  stream limit is ``max_concurrent_streams``), no idle timeout, no maximum connection duration and
  no connection closed by the upstream.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from .retry import max_retries_allows, retry_budget_allows, retry_budget_max

__all__ = [
    "ATTACHED",
    "OVERFLOW",
    "PENDING",
    "STAT_NAMES",
    "ConnectionPool",
    "HostPool",
    "PoolConfig",
]

#: What :meth:`ConnectionPool.request` returns.
ATTACHED = 0
PENDING = 1
OVERFLOW = 2

#: Counters of :attr:`ConnectionPool.stats`, named as Envoy's ``cluster.<c>.*`` counters.
STAT_NAMES = (
    "upstream_cx_total", "upstream_cx_overflow", "upstream_cx_connect_fail",
    "upstream_cx_connect_timeout", "upstream_cx_max_requests", "upstream_rq_total",
    "upstream_rq_pending_total", "upstream_rq_pending_overflow", "upstream_rq_active_overflow",
    "upstream_rq_pending_failure_eject", "upstream_rq_cancelled", "upstream_rq_retry_overflow",
)

_MAX_UINT32 = 2**32 - 1  # what istiod writes for every limit, and Envoy's "unlimited" (uint32)
_CONNECTING, _READY, _BUSY, _DRAINING = range(4)  # Envoy's ActiveClient::State (no early data)
_STATE_NAMES = ("connecting", "ready", "busy", "draining")
_SATURATED, _RECOVERED = "pool_saturated", "pool_recovered"
_NO_TOKENS: tuple[Any, ...] = ()  # returned when nothing attaches: no allocation


# ---- configuration ------------------------------------------------------------------------------

_TCP_FIELDS = frozenset({"maxConnections", "connectTimeout", "tcpKeepalive", "idleTimeout",
                         "maxConnectionDuration"})
_HTTP_FIELDS = frozenset({"http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection",
                          "maxRetries", "idleTimeout", "h2UpgradePolicy", "useClientProtocol",
                          "maxConcurrentStreams"})
_H2_POLICIES = frozenset({"DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"})


@dataclasses.dataclass(frozen=True)
class PoolConfig:
    """A cluster's circuit-breaker thresholds (DEFAULT priority) and connection-pool options.

    The defaults are plain Envoy's; :meth:`istio_default` and :meth:`from_istio` give what istiod
    writes. Field names are Envoy's.

    Attributes
    ----------
    max_connections, max_pending_requests, max_requests, max_retries : int
        Circuit-breaker limits for the whole cluster (this proxy): open connections (connecting
        ones included), requests waiting for a connection, requests in flight, concurrent retries.
    budget_percent : float or None
        ``retry_budget.budget_percent`` (%). When set, the budget replaces ``max_retries``.
    min_retry_concurrency : int
        ``retry_budget.min_retry_concurrency`` (used only with ``budget_percent``).
    http2 : bool
        Upstream protocol HTTP/2 (else HTTP/1.1: one request per connection at a time).
    max_concurrent_streams : int
        HTTP/2 streams per connection (``http2_protocol_options.max_concurrent_streams``).
    max_requests_per_connection : int
        Requests a connection carries in its life before it drains and closes; 0 = unlimited.
    connect_timeout : float
        Seconds the engine waits for a connection before calling
        :meth:`ConnectionPool.connect_failed` with ``timed_out=True``.
    """

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests: int = 1024
    max_retries: int = 3
    budget_percent: float | None = None
    min_retry_concurrency: int = 3
    http2: bool = False
    max_concurrent_streams: int = 2**31 - 1
    max_requests_per_connection: int = 0
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_pending_requests", "max_requests", "max_retries",
                     "min_retry_concurrency", "max_requests_per_connection"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.max_concurrent_streams < 1:
            raise ValueError("max_concurrent_streams must be >= 1")
        if self.budget_percent is not None and not 0 <= self.budget_percent <= 100:
            raise ValueError("budget_percent must be a percentage in [0, 100], or None")
        if not self.connect_timeout > 0:
            raise ValueError("connect_timeout must be > 0 seconds")

    @classmethod
    def istio_default(cls) -> PoolConfig:
        """What istiod writes with no ``connectionPool`` (``getDefaultCircuitBreakerThresholds``):
        2^32−1 for the four limits, a 10 s connect timeout, HTTP/1.1 upstream."""
        return cls(max_connections=_MAX_UINT32, max_pending_requests=_MAX_UINT32,
                   max_requests=_MAX_UINT32, max_retries=_MAX_UINT32, connect_timeout=10.0)

    @classmethod
    def from_istio(cls, connection_pool: Mapping[str, Any], istio_defaults: bool = True, *,
                   http2_port: bool = False) -> PoolConfig:
        """Translate a DestinationRule ``trafficPolicy.connectionPool`` block as istiod does.

        istiod ``applyConnectionPool`` / ``shouldH2Upgrade`` (§1.1, §1.6): a count overwrites its
        limit only when > 0 (0 and unset are the same); ``http2MaxRequests`` is ``max_requests``
        and ``http1MaxPendingRequests`` is ``max_pending_requests`` whatever the protocol.

        Parameters
        ----------
        connection_pool : mapping
            ``{"tcp": {...}, "http": {...}}`` with Istio's field names; durations are float seconds.
            ``tcp.tcpKeepalive``, ``tcp.idleTimeout`` and ``http.idleTimeout`` are accepted but not
            modelled (the pool never closes an idle connection).
        istio_defaults : bool
            Start from :meth:`istio_default` (True) or from plain Envoy's defaults (False).
        http2_port : bool
            The service port is declared HTTP/2 (``http2``, ``grpc``): the cluster is HTTP/2
            before the block applies, which is the only case where istiod writes
            ``maxConcurrentStreams``.

        Returns
        -------
        PoolConfig

        Raises
        ------
        ValueError
            For an unknown field, a negative count, a non-positive ``connectTimeout`` (Istio's
            validation requires at least 1 ms), an unknown ``h2UpgradePolicy``, or
            ``tcp.maxConnectionDuration`` (connection recycling is not modelled).
        """
        _check_fields(connection_pool, {"tcp", "http"}, "connectionPool")
        tcp = connection_pool.get("tcp") or {}
        http = connection_pool.get("http") or {}
        _check_fields(tcp, _TCP_FIELDS, "connectionPool.tcp")
        _check_fields(http, _HTTP_FIELDS, "connectionPool.http")
        if tcp.get("maxConnectionDuration") is not None:
            raise ValueError("connectionPool.tcp.maxConnectionDuration is not modelled")
        base = cls.istio_default() if istio_defaults else cls()
        fields: dict[str, Any] = {}
        for section, istio_name, name in (
            (tcp, "maxConnections", "max_connections"),
            (http, "http1MaxPendingRequests", "max_pending_requests"),
            (http, "http2MaxRequests", "max_requests"),
            (http, "maxRetries", "max_retries"),
            (http, "maxRequestsPerConnection", "max_requests_per_connection"),
        ):
            value = _positive_count(section.get(istio_name), istio_name)
            if value:
                fields[name] = value
        if tcp.get("connectTimeout") is not None:
            if not float(tcp["connectTimeout"]) > 0:
                raise ValueError("connectionPool.tcp.connectTimeout must be at least 1ms")
            fields["connect_timeout"] = float(tcp["connectTimeout"])
        policy = http.get("h2UpgradePolicy") or "DEFAULT"
        if policy not in _H2_POLICIES:
            raise ValueError(f"h2UpgradePolicy must be one of {sorted(_H2_POLICIES)}, "
                             f"got {policy!r}")
        client_protocol = bool(http.get("useClientProtocol", False))
        # useClientProtocol: the upstream speaks what the caller speaks and is never upgraded;
        # meshsim's callers speak HTTP/1.1, except to a port declared HTTP/2. DEFAULT is the
        # mesh-wide policy, DO_NOT_UPGRADE in Istio's default mesh config.
        fields["http2"] = http2_port or (policy == "UPGRADE" and not client_protocol)
        streams = _positive_count(http.get("maxConcurrentStreams"), "maxConcurrentStreams")
        # Written only into a cluster that already has explicit HTTP/2 options when the block is
        # applied: applyH2Upgrade runs later, and useClientProtocol has no explicit HTTP config.
        if streams and http2_port and not client_protocol:
            fields["max_concurrent_streams"] = streams
        return dataclasses.replace(base, **fields)


def _check_fields(block: Mapping[str, Any], known: frozenset[str] | set[str], where: str) -> None:
    unknown = sorted(set(block) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in {where}; known: {sorted(known)}")


def _positive_count(value: Any, name: str) -> int:
    """An Istio int32 count: None and 0 mean unset (0 is returned), negatives are invalid."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return value


# ---- state --------------------------------------------------------------------------------------


class _Conn:
    """One upstream connection (Envoy's ``ActiveClient``)."""

    __slots__ = ("id", "remaining", "state", "streams")

    def __init__(self, conn_id: int, remaining: int):
        self.id = conn_id
        self.state = _CONNECTING
        self.streams = 0  # requests in flight on it
        self.remaining = remaining  # requests it may still carry (remaining_streams_)


class HostPool:
    """The connections and the queue of one host (Envoy's per-host ``ConnPoolImplBase``).

    Attributes
    ----------
    conns : dict of int to connection
        Every connection counted in ``max_connections``: connecting, ready, busy or draining.
    ready : list of connection
        Connected connections with spare stream capacity; the last one is Envoy's
        ``ready_clients_.front()`` (the most recently readied), which the next request takes.
    pending : collections.deque
        Tokens waiting for a connection, oldest first.
    connecting_capacity : int
        Requests the connecting connections will be able to take (``connecting_stream_capacity_``).
    """

    __slots__ = ("connecting_capacity", "conns", "pending", "ready")

    def __init__(self) -> None:
        self.conns: dict[int, _Conn] = {}
        self.ready: list[_Conn] = []
        self.pending: deque[Any] = deque()
        self.connecting_capacity = 0

    def connection_states(self) -> dict[int, tuple[str, int]]:
        """``{conn_id: (state, requests in flight)}`` with state ``"connecting"``, ``"ready"``
        (connected, spare capacity: idle, or carrying HTTP/2 streams), ``"busy"`` (full) or
        ``"draining"`` (``max_requests_per_connection`` reached; closes with its last request)."""
        return {cid: (_STATE_NAMES[c.state], c.streams) for cid, c in self.conns.items()}


class ConnectionPool:
    """The connection pools and circuit breakers of one client proxy for one upstream cluster.

    Parameters
    ----------
    n_hosts : int
        Hosts of the cluster, indexed ``0 .. n_hosts-1``.
    config : PoolConfig

    Attributes
    ----------
    connections, pending, active_requests, active_retries : int
        The cluster's circuit-breaker counters (Envoy's resource manager): open connections
        (connecting included), pending requests, requests in flight, retries in progress.
    hosts : list of HostPool
        Per-host connections and queue, for inspection.
    attached_conn : int
        The connection of the last request :meth:`request` answered ``ATTACHED``.
    to_connect : list of (int, int)
        ``(host, conn_id)`` of connections the pool has created; the engine schedules each one's
        outcome (:meth:`connected` after the connect delay, or :meth:`connect_failed`), then clears
        the list.
    overflowed : list
        Tokens refused by ``max_requests`` as they left the queue (503 ``UO``, counted in
        ``upstream_rq_active_overflow``); the engine answers them, then clears the list.
    stats : dict of str to int
        The cluster's counters, :data:`STAT_NAMES`. The pool moves all but
        ``upstream_rq_retry_overflow``, which the router counts when it wants a retry the breaker
        refuses: the engine adds ``Decision.counters`` of :mod:`meshsim.policies.retry` here.
    events : list of tuple
        ``(t, kind, -1, detail)``: kind ``"pool_saturated"`` when a breaker opens (its counter
        reaches its limit) and ``"pool_recovered"`` when it closes, detail ``"connections"``,
        ``"pending"``, ``"requests"`` or ``"retries"``. A breaker's state is taken as it stands
        after each call, so a request that finishes and lets a queued one in does not log a
        close and a reopen at the same instant. Under sustained overload the pending breaker
        closes and reopens with every served request: that is what Envoy's ``rq_pending_open``
        gauge does too.
    """

    __slots__ = (
        "_budget", "_conn_capacity", "_cx_open", "_lifetime", "_max_connections", "_max_pending",
        "_max_requests", "_max_retries", "_min_retry", "_next_id", "_pending_open", "_retry_open",
        "_rq_open", "_rq_total", "_stats", "_stream_limit", "active_requests", "active_retries",
        "attached_conn", "config", "connections", "events", "hosts", "overflowed", "pending",
        "to_connect",
    )

    def __init__(self, n_hosts: int, config: PoolConfig):
        if n_hosts < 0:
            raise ValueError("n_hosts must be >= 0")
        self.config = config
        self.hosts = [HostPool() for _ in range(n_hosts)]
        self.connections = self.pending = self.active_requests = self.active_retries = 0
        self.attached_conn = -1
        self.to_connect: list[tuple[int, int]] = []
        self.overflowed: list[Any] = []
        self._stats: dict[str, int] = dict.fromkeys(STAT_NAMES, 0)
        self._rq_total = 0  # upstream_rq_total, kept apart: it moves on every request
        self.events: list[tuple[float, str, int, str]] = []
        self._max_connections = config.max_connections
        self._max_pending = config.max_pending_requests
        self._max_requests = config.max_requests
        self._max_retries = config.max_retries
        self._budget = config.budget_percent
        self._min_retry = config.min_retry_concurrency
        self._stream_limit = config.max_concurrent_streams if config.http2 else 1
        # translateZeroToUnlimited(max_requests_per_connection)
        self._lifetime = config.max_requests_per_connection or _MAX_UINT32
        self._conn_capacity = min(self._stream_limit, self._lifetime)  # currentUnusedCapacity
        self._next_id = 0
        self._cx_open = self._pending_open = self._rq_open = self._retry_open = False

    @property
    def stats(self) -> dict[str, int]:
        """The cluster's counters, :data:`STAT_NAMES` (one dict, updated as the pool works)."""
        self._stats["upstream_rq_total"] = self._rq_total
        return self._stats

    # ---- requests -------------------------------------------------------------------------

    def request(self, now: float, host: int, token: Any) -> int:
        """A request for ``host`` asks for a connection (``ConnPoolImplBase::newStreamImpl``).

        Parameters
        ----------
        now : float
            Simulated time, seconds.
        host : int
            The host the load balancer chose.
        token : any
            The engine's handle of the request, given back by :meth:`connected`, :meth:`done`,
            :meth:`connect_failed` or in :attr:`overflowed`.

        Returns
        -------
        int
            ``ATTACHED``: it goes out now on connection :attr:`attached_conn`. ``PENDING``: it
            waits in the host's queue (drain :attr:`to_connect`). ``OVERFLOW``: 503 ``UO`` now,
            counted in ``upstream_rq_active_overflow`` (``max_requests``, §13) or
            ``upstream_rq_pending_overflow`` (the queue is full).
        """
        hp = self.hosts[host]
        if hp.ready:
            # A ready connection exists, so the queue is empty. attachStreamToClient checks
            # max_requests and refuses rather than queueing. (Envoy then calls
            # tryCreateNewConnections to preconnect, which does nothing at preconnect ratio 1.)
            if self.active_requests >= self._max_requests:
                self._stats["upstream_rq_active_overflow"] += 1
                return OVERFLOW
            self.attached_conn = self._attach(now, hp).id
            return ATTACHED
        if self.pending >= self._max_pending:
            # No connection is ever opened for a request refused here: with
            # max_pending_requests 0 a host with no ready connection gets none.
            self._stats["upstream_rq_pending_overflow"] += 1
            return OVERFLOW
        hp.pending.append(token)
        self.pending += 1
        self._stats["upstream_rq_pending_total"] += 1
        if self.pending >= self._max_pending and not self._pending_open:
            self._pending_open = True
            self.events.append((now, _SATURATED, -1, "pending"))
        self._try_create(now, host, hp)
        return PENDING

    def connected(self, now: float, host: int, conn_id: int) -> Sequence[Any]:
        """Connection ``conn_id`` of ``host`` is up (``onConnectionEvent(Connected)``).

        Returns
        -------
        sequence
            Tokens that go out on this connection now, oldest first: pending requests are
            attached while it has capacity (``onUpstreamReady``). Each attach re-checks
            ``max_requests``; a request refused there leaves the queue into :attr:`overflowed`
            (503 ``UO``, it does not stay pending), and since the connection keeps its capacity
            the loop goes on, so a full ``max_requests`` empties the whole queue of the host.
        """
        hp = self.hosts[host]
        conn = hp.conns.get(conn_id)
        if conn is None or conn.state != _CONNECTING:
            raise ValueError(f"connection {conn_id} of host {host} is not connecting")
        hp.connecting_capacity -= self._conn_capacity
        conn.state = _READY
        hp.ready.append(conn)
        if not hp.pending:
            return _NO_TOKENS
        return self._on_upstream_ready(now, host, hp)

    def connect_failed(self, now: float, host: int, conn_id: int,
                       timed_out: bool = False) -> list[Any]:
        """Connection ``conn_id`` of ``host`` failed before it was up (refused, reset, or the
        engine's ``connect_timeout`` fired: ``timed_out=True``).

        Returns
        -------
        list
            Every pending request of the host, oldest first: they all fail now with 503 ``UF``
            (``purgePendingStreams``), even those another connecting connection could serve.
        """
        hp = self.hosts[host]
        conn = hp.conns.get(conn_id)
        if conn is None or conn.state != _CONNECTING:
            raise ValueError(f"connection {conn_id} of host {host} is not connecting")
        del hp.conns[conn_id]
        hp.connecting_capacity -= self._conn_capacity
        self.connections -= 1
        stats = self._stats
        stats["upstream_cx_connect_fail"] += 1
        if timed_out:
            stats["upstream_cx_connect_timeout"] += 1
        failed = list(hp.pending)
        hp.pending.clear()
        self.pending -= len(failed)
        stats["upstream_rq_pending_failure_eject"] += len(failed)
        # Envoy then calls tryCreateNewConnections, which finds nothing pending.
        self._settle_pending(now)
        self._settle_connections(now)
        return failed

    def done(self, now: float, host: int, conn_id: int) -> Sequence[Any]:
        """A request on connection ``conn_id`` of ``host`` has finished (``onStreamClosed``),
        whatever its outcome.

        An HTTP/1.1 connection becomes idle, an HTTP/2 one gets a stream back; a connection that
        reached ``max_requests_per_connection`` (draining) closes with its last request, and if
        requests are pending the pool opens another (``onConnectionEvent``: "we just lost a
        connection"), which shows in :attr:`to_connect`.

        Returns
        -------
        sequence
            Tokens that go out on this same connection now, as in :meth:`connected` (refusals in
            :attr:`overflowed`); an empty tuple when none.
        """
        hp = self.hosts[host]
        conn = hp.conns[conn_id]
        streams = conn.streams - 1
        if streams < 0:
            raise ValueError(f"connection {conn_id} of host {host} carries no request")
        conn.streams = streams
        self.active_requests -= 1
        attached: Sequence[Any] = _NO_TOKENS
        state = conn.state
        if state == _BUSY:
            conn.state = _READY
            hp.ready.append(conn)
            if hp.pending:
                attached = self._on_upstream_ready(now, host, hp)
        elif state == _DRAINING and streams == 0:
            del hp.conns[conn_id]  # client.close(); releaseResources() before the check below
            self.connections -= 1
            if hp.pending:
                self._try_create(now, host, hp)
            self._settle_connections(now)
        if self._rq_open and self.active_requests < self._max_requests:
            self._rq_open = False
            self.events.append((now, _RECOVERED, -1, "requests"))
        return attached

    def cancel_pending(self, now: float, host: int, token: Any) -> bool:
        """A pending request of ``host`` leaves the queue (route timeout ``UT``, downstream gone).

        The router cancels with ``CancelPolicy::Default``: a connection being opened for it is
        kept. Returns False if ``token`` was not pending there.
        """
        try:
            self.hosts[host].pending.remove(token)
        except ValueError:
            return False
        self.pending -= 1
        self._stats["upstream_rq_cancelled"] += 1
        self._settle_pending(now)
        return True

    # ---- retry circuit breaker ------------------------------------------------------------

    def retry_allowed(self, active_retries_excluding_own: int) -> bool:
        """Whether the retry breaker has room for one more retry (``retries().canCreate()``).

        Parameters
        ----------
        active_retries_excluding_own : int
            :attr:`active_retries` minus the deciding request's own held retry (Envoy frees it
            first: see :class:`meshsim.policies.retry.RetryState`).

        Notes
        -----
        With a retry budget the limit is ``max(min_retry_concurrency, budget_percent % ×
        (active + pending requests))`` of the cluster (§1.5) and ``max_retries`` is not used.
        """
        if self._budget is not None:
            return retry_budget_allows(self.active_requests, self.pending,
                                       active_retries_excluding_own, self._budget,
                                       self._min_retry)
        return max_retries_allows(active_retries_excluding_own, self._max_retries)

    def retry_started(self, now: float) -> None:
        """A request took a retry slot (the router decided to retry)."""
        self.active_retries += 1
        if not self._retry_open and self.active_retries >= self._retry_limit():
            self._retry_open = True
            self.events.append((now, _SATURATED, -1, "retries"))

    def retry_finished(self, now: float) -> None:
        """A request gave its retry slot back (its next attempt ended, or it was answered)."""
        if self.active_retries <= 0:
            raise ValueError("no retry is in progress")
        self.active_retries -= 1
        if self._retry_open and self.active_retries < self._retry_limit():
            self._retry_open = False
            self.events.append((now, _RECOVERED, -1, "retries"))

    # ---- gauges ---------------------------------------------------------------------------

    def gauges(self) -> dict[str, int]:
        """Envoy's ``circuit_breakers.default.*`` gauges now (``track_remaining``, which Istio
        turns on): ``cx_open``, ``rq_pending_open``, ``rq_open``, ``rq_retry_open`` (0/1) and
        ``remaining_cx``, ``remaining_pending``, ``remaining_rq``, plus ``remaining_retries``
        when there is no retry budget (Envoy does not track it with one). With a budget,
        ``rq_retry_open`` uses the budget for the current active and pending requests."""
        retry_limit = self._retry_limit()
        out = {
            "cx_open": int(self.connections >= self._max_connections),
            "rq_pending_open": int(self.pending >= self._max_pending),
            "rq_open": int(self.active_requests >= self._max_requests),
            "rq_retry_open": int(self.active_retries >= retry_limit),
            "remaining_cx": max(0, self._max_connections - self.connections),
            "remaining_pending": max(0, self._max_pending - self.pending),
            "remaining_rq": max(0, self._max_requests - self.active_requests),
        }
        if self._budget is None:
            out["remaining_retries"] = max(0, retry_limit - self.active_retries)
        return out

    # ---- internals (ConnPoolImplBase) -----------------------------------------------------

    def _attach(self, now: float, hp: HostPool) -> _Conn:
        """``attachStreamToClient`` on ``hp.ready[-1]`` once ``max_requests`` has been checked."""
        conn = hp.ready[-1]
        conn.streams += 1
        conn.remaining -= 1
        if conn.remaining == 0:
            self._stats["upstream_cx_max_requests"] += 1
            conn.state = _DRAINING
            hp.ready.pop()
        elif conn.streams == self._stream_limit:
            conn.state = _BUSY
            hp.ready.pop()
        self.active_requests += 1
        self._rq_total += 1
        if self.active_requests >= self._max_requests and not self._rq_open:
            self._rq_open = True
            self.events.append((now, _SATURATED, -1, "requests"))
        return conn

    def _on_upstream_ready(self, now: float, host: int, hp: HostPool) -> list[Any]:
        """``onUpstreamReady``: attach pending requests oldest-first while a connection is ready,
        then try to open connections for what is left (which, at ``max_connections``, counts
        ``upstream_cx_overflow`` again each time)."""
        pending, ready = hp.pending, hp.ready
        attached = []
        n = 0
        while pending and ready:
            token = pending.popleft()
            n += 1
            if self.active_requests >= self._max_requests:
                # attachStreamToClient refuses; the connection keeps its capacity, so the loop
                # refuses every following request too. Since 1.38 this counts
                # upstream_rq_active_overflow only (§13).
                self._stats["upstream_rq_active_overflow"] += 1
                self.overflowed.append(token)
            else:
                self._attach(now, hp)
                attached.append(token)
        self.pending -= n
        self._settle_pending(now)
        if pending:
            self._try_create(now, host, hp)
        return attached

    def _try_create(self, now: float, host: int, hp: HostPool) -> None:
        """``tryCreateNewConnections``: up to 3 ``tryCreateNewConnection`` per call."""
        for _ in range(3):
            # shouldCreateNewConnection at preconnect ratio 1: only if the connecting
            # connections cannot take every pending request.
            if len(hp.pending) <= hp.connecting_capacity:
                return
            if self.connections >= self._max_connections:
                self._stats["upstream_cx_overflow"] += 1
                # ... except that a host with no connection at all gets one anyway, or its
                # queue could never be served (CreatedButRateLimited ends the loop).
                if not hp.conns:
                    self._create(now, host, hp)
                return
            self._create(now, host, hp)

    def _create(self, now: float, host: int, hp: HostPool) -> None:
        # The ActiveClient constructor counts the connection from this moment.
        conn_id = self._next_id
        self._next_id = conn_id + 1
        hp.conns[conn_id] = _Conn(conn_id, self._lifetime)
        hp.connecting_capacity += self._conn_capacity
        self.connections += 1
        self._stats["upstream_cx_total"] += 1
        if self.connections >= self._max_connections and not self._cx_open:
            self._cx_open = True
            self.events.append((now, _SATURATED, -1, "connections"))
        self.to_connect.append((host, conn_id))

    def _settle_pending(self, now: float) -> None:
        if self._pending_open and self.pending < self._max_pending:
            self._pending_open = False
            self.events.append((now, _RECOVERED, -1, "pending"))

    def _settle_connections(self, now: float) -> None:
        if self._cx_open and self.connections < self._max_connections:
            self._cx_open = False
            self.events.append((now, _RECOVERED, -1, "connections"))

    def _retry_limit(self) -> int:
        if self._budget is None:
            return self._max_retries
        return retry_budget_max(self.active_requests, self.pending, self._budget, self._min_retry)
