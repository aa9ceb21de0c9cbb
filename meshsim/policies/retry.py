"""Envoy's router retry and timeout logic: the retry policy, one request's retry state, back-off.

A :class:`RetryPolicy` is a route's ``retry_policy`` plus its ``timeout`` (what istiod writes for a
VirtualService ``http[]`` entry, or plain Envoy's defaults). A :class:`RetryState` follows one
downstream request through its attempts, as Envoy's ``RetryStateImpl`` and the router filter do:
after every attempt the engine hands it an :class:`Outcome` and gets back a :class:`Decision` —
retry after a back-off delay, or answer downstream with this status and these response flags.

Reference: ``../shared/envoy-semantics.md`` §1.4–1.5, §4 and §10.2 (Envoy 1.40). Where this module
follows Envoy's code against the reference, the comment at that spot says so and why.
Times are float seconds of simulated time; back-off is drawn in integer milliseconds, as Envoy does.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

__all__ = [
    "ISTIO_DEFAULT_RETRY_ON",
    "RETRY_ON_NAMES",
    "Decision",
    "Outcome",
    "OutcomeKind",
    "RetryPolicy",
    "RetryState",
    "backoff_delay",
    "backoff_interval_ms",
    "max_retries_allows",
    "retry_budget_allows",
    "retry_budget_max",
]

H = TypeVar("H")

#: ``retry_on`` of Istio's default policy (istiod ``retry.DefaultPolicy``), with no status codes.
ISTIO_DEFAULT_RETRY_ON = (
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
)

# gRPC status codes of the gRPC ``retry_on`` names, read from (trailers-only) response headers.
_GRPC_RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8,
                  "internal": 13, "unavailable": 14}

#: Every ``retry_on`` name Envoy 1.40 accepts (``RetryStateImpl::parseRetryOn`` / ``…GrpcOn``).
#: ``retriable-headers`` and ``http3-post-connect-failure`` are accepted but never match here:
#: meshsim models neither response headers beyond the two ``x-envoy-*`` ones nor HTTP/3.
RETRY_ON_NAMES = frozenset({
    "5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
    "envoy-ratelimited", "retriable-4xx", "refused-stream", "retriable-status-codes",
    "retriable-headers", "http3-post-connect-failure", *_GRPC_RETRY_ON,
})

# Codes Go's ``http.StatusText`` knows: istiod's ``parseRetryOn`` moves a ``retryOn`` part to
# ``retriable_status_codes`` only if it is one of these.
_GO_STATUS_CODES = frozenset({
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
    300, 301, 302, 303, 304, 305, 307, 308, *range(400, 419), 421, 422, 423, 424, 425, 426,
    428, 429, 431, 451, 500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511,
})
_ISTIO_RETRY_KEYS = frozenset({"attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities",
                               "retryIgnorePreviousHosts", "backoff"})
_ENVOY_ROUTE_TIMEOUT = 15.0


class OutcomeKind(enum.StrEnum):
    """How one attempt ended, as Envoy's router sees it."""

    RESPONSE = "response"  # response headers arrived (any status)
    CONNECT_FAILURE = "connect_failure"  # TCP connect failed or timed out; request never sent
    RESET = "reset"  # stream reset / disconnect after the request was sent
    CONNECTION_TERMINATION = "connection_termination"  # the connection closed under the stream
    REFUSED_STREAM = "refused_stream"  # HTTP/2 REFUSED_STREAM
    PER_TRY_TIMEOUT = "per_try_timeout"  # the per-try timer fired before response headers
    OVERFLOW = "overflow"  # a local circuit breaker refused the attempt (503 UO)


# What this proxy answers for an attempt that got no response: status and the response flag of
# ``Filter::streamResetReasonToResponseFlag`` (a per-try timeout is UT, §10.2).
_LOCAL_REPLY = {
    OutcomeKind.CONNECT_FAILURE: (503, "UF"),
    OutcomeKind.RESET: (503, "UR"),
    OutcomeKind.CONNECTION_TERMINATION: (503, "UC"),
    OutcomeKind.REFUSED_STREAM: (503, "UR"),
    OutcomeKind.PER_TRY_TIMEOUT: (504, "UT"),
    OutcomeKind.OVERFLOW: (503, "UO"),
}


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one upstream attempt. Build it with the class methods.

    Attributes
    ----------
    kind : OutcomeKind
    status : int
        HTTP status: the upstream's for a response, else what this proxy would answer (503/504).
    overloaded, rate_limited : bool
        The response carried ``x-envoy-overloaded`` / ``x-envoy-ratelimited`` (set by an
        upstream Envoy).
    grpc_status : int or None
        ``grpc-status`` in the response headers (trailers-only gRPC response), if any.
    """

    kind: OutcomeKind
    status: int
    overloaded: bool = False
    rate_limited: bool = False
    grpc_status: int | None = None

    def __post_init__(self) -> None:
        if self.kind is OutcomeKind.RESPONSE:
            if not 100 <= self.status <= 599:
                raise ValueError(f"HTTP status must be in 100..599, got {self.status}")
        elif (self.status != _LOCAL_REPLY[self.kind][0] or self.overloaded or self.rate_limited
              or self.grpc_status is not None):
            raise ValueError(f"a {self.kind} outcome has no response: use Outcome.{self.kind}()")

    @classmethod
    def response(cls, status: int, *, overloaded: bool = False, rate_limited: bool = False,
                 grpc_status: int | None = None) -> Outcome:
        """Response headers with ``status`` (and the given headers) came back."""
        return cls(OutcomeKind.RESPONSE, status, overloaded, rate_limited, grpc_status)

    @classmethod
    def connect_failure(cls) -> Outcome:
        return cls(OutcomeKind.CONNECT_FAILURE, 503)

    @classmethod
    def reset(cls) -> Outcome:
        return cls(OutcomeKind.RESET, 503)

    @classmethod
    def connection_termination(cls) -> Outcome:
        """The upstream connection closed with the request on it (a crashed pod): Envoy's
        ``ConnectionTermination`` reset reason, flag ``UC``; retried like any reset."""
        return cls(OutcomeKind.CONNECTION_TERMINATION, 503)

    @classmethod
    def refused_stream(cls) -> Outcome:
        return cls(OutcomeKind.REFUSED_STREAM, 503)

    @classmethod
    def per_try_timeout(cls) -> Outcome:
        return cls(OutcomeKind.PER_TRY_TIMEOUT, 504)

    @classmethod
    def overflow(cls) -> Outcome:
        return cls(OutcomeKind.OVERFLOW, 503)

    @property
    def flag(self) -> str:
        """This outcome's own response flag ("" for an upstream response: ``via_upstream``)."""
        return "" if self.kind is OutcomeKind.RESPONSE else _LOCAL_REPLY[self.kind][1]


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the router does after an attempt.

    Attributes
    ----------
    retry : bool
        True: start another attempt after ``delay``. False: answer downstream after ``delay``.
    delay : float
        Seconds from now: the back-off before the retry, or (only when a retry's back-off would
        outlast the route timeout) the wait until the route timer answers 504 ``UT``; else 0.
    status : int or None
        Status sent downstream (None when retrying).
    flags : str
        Envoy's ``%RESPONSE_FLAGS%``, e.g. ``"URX,UT"``, ``"-"`` for none (and when retrying).
    counters : tuple of str
        Cluster counters to increment (``upstream_rq_retry``, ``upstream_rq_retry_overflow``, ...).
    """

    retry: bool
    delay: float
    status: int | None
    flags: str
    counters: tuple[str, ...] = ()


def _to_ms(seconds: float) -> int:
    """A proto Duration in whole ms, truncated (``DurationUtil::durationToMilliseconds``)."""
    return round(seconds * 1e9) // 1_000_000


def _backoff_ms(base: float, max_interval: float | None) -> tuple[int, int]:
    """Back-off base and max in whole ms as ``RetryPolicyImpl`` makes them: sub-millisecond
    values become 1 ms, and an unset max is 10 × the (truncated) base."""
    base_ms = max(1, _to_ms(base))
    return base_ms, 10 * base_ms if max_interval is None else max(1, _to_ms(max_interval))


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """A route's ``retry_policy`` and ``timeout`` (Envoy ``RouteAction``), as plain values.

    The defaults are Envoy's for a route that has a retry policy with no fields set; use
    :meth:`istio_default`, :meth:`envoy_default` or :meth:`from_istio` rather than the bare
    constructor.

    Attributes
    ----------
    retry_on : frozenset of str
        Retry conditions (:data:`RETRY_ON_NAMES`). Empty: no retries at all.
    num_retries : int
        Retries (not attempts) allowed per request.
    per_try_timeout : float or None
        Seconds per attempt, from the moment the attempt gets a connection; None: none.
    retriable_status_codes : frozenset of int
        Statuses retried under ``retriable-status-codes``.
    backoff_base : float
        ``retry_back_off.base_interval``, seconds (Envoy default 25 ms; used in whole ms, ≥ 1 ms).
    backoff_max : float or None
        ``retry_back_off.max_interval``, seconds; None: 10 × base (computed in whole ms, as Envoy).
    previous_hosts : bool
        ``envoy.retry_host_predicates.previous_hosts``: retries avoid hosts already tried.
    host_selection_retry_max_attempts : int
        Extra host picks when the predicate rejects one; after that the last pick is used.
    previous_priorities : bool
        ``retry_priority: previous_priorities`` (Istio ``retryRemoteLocalities``).
    route_timeout : float or None
        ``RouteAction.timeout``, seconds, covering all attempts and back-off; None: disabled.
    """

    retry_on: frozenset[str] = frozenset()
    num_retries: int = 1
    per_try_timeout: float | None = None
    retriable_status_codes: frozenset[int] = frozenset()
    backoff_base: float = 0.025
    backoff_max: float | None = None
    previous_hosts: bool = False
    host_selection_retry_max_attempts: int = 1
    previous_priorities: bool = False
    route_timeout: float | None = _ENVOY_ROUTE_TIMEOUT

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_on", frozenset(self.retry_on))
        object.__setattr__(self, "retriable_status_codes", frozenset(self.retriable_status_codes))
        unknown = sorted(self.retry_on - RETRY_ON_NAMES)
        if unknown:
            raise ValueError(f"unknown retry_on condition(s) {unknown}; known: "
                             f"{sorted(RETRY_ON_NAMES)}")
        if any(not 100 <= code <= 599 for code in self.retriable_status_codes):
            raise ValueError("retriable_status_codes must be HTTP statuses in 100..599")
        if self.num_retries < 0 or self.host_selection_retry_max_attempts < 0:
            raise ValueError("num_retries and host_selection_retry_max_attempts must be >= 0")
        for name in ("per_try_timeout", "route_timeout", "backoff_max"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 seconds, or None for unset")
        if not self.backoff_base > 0:
            raise ValueError("backoff_base must be > 0 seconds")
        if self.backoff_max_ms < self.backoff_base_ms:
            # RetryPolicyImpl rejects this config: "max_interval must be >= the base_interval".
            raise ValueError("backoff_max must be >= backoff_base")

    # ---- constructors ---------------------------------------------------------------------------

    @classmethod
    def istio_default(cls, *, consistent_hash: bool = False) -> RetryPolicy:
        """Istio's policy for a route with no ``retries`` block (istiod ``DefaultPolicy``).

        2 retries on :data:`ISTIO_DEFAULT_RETRY_ON` with no status codes, ``previous_hosts`` with
        5 re-picks (not with consistent hashing: ``DefaultConsistentHashPolicy``), no per-try
        timeout, 25 ms back-off, route timeout disabled (istiod writes 0).
        """
        return cls(retry_on=frozenset(ISTIO_DEFAULT_RETRY_ON.split(",")), num_retries=2,
                   previous_hosts=not consistent_hash, host_selection_retry_max_attempts=5,
                   route_timeout=None)

    @classmethod
    def envoy_default(cls) -> RetryPolicy:
        """Plain Envoy with no retry policy on the route: no retries, 15 s route timeout."""
        return cls(retry_on=frozenset(), num_retries=0, route_timeout=_ENVOY_ROUTE_TIMEOUT)

    @classmethod
    def from_istio(cls, http_route: Mapping[str, Any], istio_defaults: bool = True, *,
                   consistent_hash: bool = False) -> RetryPolicy:
        """Translate a VirtualService ``http[]`` entry as istiod does (``retry.ConvertPolicy``).

        Parameters
        ----------
        http_route : mapping
            The ``http[]`` entry; only ``timeout`` and ``retries`` are read. Durations are float
            seconds (``timeout``, ``retries.perTryTimeout``, ``retries.backoff``).
        istio_defaults : bool
            What an absent ``retries`` or ``timeout`` means: Istio's default policy and no route
            timeout (True), or plain Envoy's no retries and 15 s (False). A ``retries`` block that
            is present is always translated as istiod does.
        consistent_hash : bool
            The destination uses consistent-hash load balancing: Istio's default policy then has
            no ``previous_hosts`` predicate.

        Returns
        -------
        RetryPolicy
            ``attempts`` ≤ 0 means no retry policy at all (``perTryTimeout`` is dropped too);
            otherwise Istio's default with ``num_retries = attempts`` and the given overrides.
        """
        timeout = http_route.get("timeout")
        if timeout is None:
            route_timeout = None if istio_defaults else _ENVOY_ROUTE_TIMEOUT
        else:
            route_timeout = float(timeout) or None  # 0s disables the route timeout
        retries = http_route.get("retries")
        if retries is None:
            base = cls.istio_default(consistent_hash=consistent_hash) if istio_defaults \
                else cls.envoy_default()
            return dataclasses.replace(base, route_timeout=route_timeout)
        unknown = sorted(set(retries) - _ISTIO_RETRY_KEYS)
        if unknown:
            raise ValueError(f"unknown retries field(s) {unknown}; "
                             f"known: {sorted(_ISTIO_RETRY_KEYS)}")
        if int(retries.get("attempts") or 0) <= 0:
            # "Configuration is explicitly disabling the retry policy": istiod returns nil.
            return cls(retry_on=frozenset(), num_retries=0, route_timeout=route_timeout)
        fields: dict[str, Any] = {"num_retries": int(retries["attempts"]),
                                  "route_timeout": route_timeout}
        if retries.get("retryOn"):
            fields["retry_on"], fields["retriable_status_codes"] = _parse_istio_retry_on(
                retries["retryOn"])
        if retries.get("perTryTimeout") is not None:
            fields["per_try_timeout"] = float(retries["perTryTimeout"]) or None
        if retries.get("retryIgnorePreviousHosts") is not None:
            fields["previous_hosts"] = bool(retries["retryIgnorePreviousHosts"])
        if retries.get("retryRemoteLocalities"):
            fields["previous_priorities"] = True
        if retries.get("backoff") is not None:
            fields["backoff_base"] = float(retries["backoff"])  # max_interval stays 10 × base
        return dataclasses.replace(cls.istio_default(consistent_hash=consistent_hash), **fields)

    # ---- derived values -------------------------------------------------------------------------

    @property
    def enabled(self) -> bool:
        """Whether Envoy keeps retry state at all (``RetryStateImpl::create`` needs a retry_on)."""
        return bool(self.retry_on)

    @property
    def backoff_base_ms(self) -> int:
        """Base back-off interval in whole ms; sub-millisecond values become 1 ms (Envoy)."""
        return _backoff_ms(self.backoff_base, self.backoff_max)[0]

    @property
    def backoff_max_ms(self) -> int:
        """Maximum back-off interval in whole ms: the configured one, else 10 × base in ms."""
        return _backoff_ms(self.backoff_base, self.backoff_max)[1]

    # ---- retry_on semantics ---------------------------------------------------------------------

    def wants_retry(self, outcome: Outcome) -> bool:
        """Whether ``outcome`` matches ``retry_on`` (limits and budgets are checked elsewhere).

        Follows ``RetryStateImpl::wouldRetryFromHeaders`` / ``wouldRetryFromReset`` (1.40).
        """
        on = self.retry_on
        kind = outcome.kind
        if kind is OutcomeKind.OVERFLOW:
            return False  # "we never retry if the reset reason is overflow"
        if kind is OutcomeKind.RESPONSE:
            return self._wants_response(outcome)
        if kind is OutcomeKind.CONNECT_FAILURE and on & {"connect-failure", "reset-before-request"}:
            return True  # a connect failure is also a reset before the request was sent
        # A per-try timeout reaches Envoy's retry logic as a LocalReset
        # (Filter::onPerTryTimeoutCommon → maybeRetryReset(LocalReset)), so like every other
        # reset it is retried under `reset` as well as `5xx` and `gateway-error`. The reference
        # (§4.1) says "only 5xx or gateway-error", after a comment older than `reset` (1.16).
        if on & {"reset", "5xx", "gateway-error"}:
            return True
        return kind is OutcomeKind.REFUSED_STREAM and "refused-stream" in on

    def _wants_response(self, outcome: Outcome) -> bool:
        on, status = self.retry_on, outcome.status
        if outcome.rate_limited:
            # An upstream Envoy rate-limited it: retried only under envoy-ratelimited.
            return "envoy-ratelimited" in on
        # x-envoy-overloaded does not block a retry since Envoy 1.15 (envoyproxy/envoy#10847,
        # "router: retry overloaded requests"); 1.40's wouldRetryFromHeaders has no such check,
        # although the reference §1.4 and the router doc's "consumed headers" still say it does.
        return (("5xx" in on and 500 <= status <= 599)
                or ("gateway-error" in on and status in (502, 503, 504))
                or ("retriable-4xx" in on and status == 409)
                or ("retriable-status-codes" in on and status in self.retriable_status_codes)
                or (outcome.grpc_status is not None
                    and any(_GRPC_RETRY_ON[name] == outcome.grpc_status
                            for name in on & _GRPC_RETRY_ON.keys())))


def _parse_istio_retry_on(text: str) -> tuple[frozenset[str], frozenset[int]]:
    """istiod ``parseRetryOn``: parts that are known HTTP statuses become retriable codes, and
    then ``retriable-status-codes`` is added to the conditions."""
    names: set[str] = set()
    codes: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if part.isdigit() and int(part) in _GO_STATUS_CODES:
            codes.add(int(part))
        elif part:
            names.add(part)  # RetryPolicy validates names, as Istio's webhook does
    if codes:
        names.add("retriable-status-codes")
    return frozenset(names), frozenset(codes)


# ---- back-off -----------------------------------------------------------------------------------


def backoff_interval_ms(retry_number: int, base_ms: int = 25, max_ms: int | None = None) -> int:
    """Upper bound (exclusive) of the back-off before retry ``retry_number``, in whole ms.

    ``JitteredExponentialBackOffStrategy::nextBackOffMs``: the interval starts at ``base_ms`` and
    after each retry doubles while it is below ``max_ms // 2`` (integer division), else becomes
    ``max_ms``. Defaults (25/250 ms): 25, 50, 100, 200, 250, 250, ... — i.e.
    ``min(base·2^(n−1), max)`` except for an odd ``max_ms`` (base 125, max 251 gives 251, not 250).
    """
    if retry_number < 1:
        raise ValueError("retry_number counts from 1")
    max_ms = 10 * base_ms if max_ms is None else max_ms
    interval = base_ms
    for _ in range(retry_number - 1):
        interval = interval * 2 if interval < max_ms // 2 else max_ms
    return interval


def backoff_delay(retry_number: int, uniform: Callable[[], float], base: float = 0.025,
                  max_interval: float | None = None) -> float:
    """Back-off before retry ``retry_number`` (from 1), in seconds.

    Envoy draws ``random() % interval`` whole milliseconds, so the delay is uniform over
    ``{0, 1, ..., interval−1}`` ms (:func:`backoff_interval_ms`): at most 24 ms for retry 1 with
    the defaults, never 25.

    Parameters
    ----------
    retry_number : int
        1 for the first retry of the request.
    uniform : callable
        Returns a float uniform in [0, 1): the jitter draw.
    base, max_interval : float
        ``retry_back_off`` intervals in seconds (None: 10 × base), used in whole ms as Envoy does.
    """
    interval = backoff_interval_ms(retry_number, *_backoff_ms(base, max_interval))
    return min(int(uniform() * interval), interval - 1) / 1000.0


# ---- retry circuit breaker ----------------------------------------------------------------------


def retry_budget_max(active: int, pending: int, percent: float = 20.0,
                     min_retry_concurrency: int = 3) -> int:
    """Concurrent retries a ``retry_budget`` allows (§1.5; ``RetryBudgetImpl::max``).

    ``max(int(percent/100 × (active + pending)), min_retry_concurrency)``, the product truncated
    to an integer as Envoy's ``uint64_t`` conversion does.
    """
    return max(int(percent / 100.0 * (active + pending)), min_retry_concurrency)


def retry_budget_allows(active: int, pending: int, active_retries: int, percent: float = 20.0,
                        min_retry_concurrency: int = 3) -> bool:
    """Whether one more concurrent retry fits the cluster's retry budget (``canCreate``).

    Parameters
    ----------
    active, pending : int
        The cluster's active and pending requests (this proxy, this priority).
    active_retries : int
        Retries currently held, not counting the deciding request's own (see :class:`RetryState`).
    percent, min_retry_concurrency
        ``retry_budget.budget_percent`` (%) and ``min_retry_concurrency``.
    """
    return active_retries < retry_budget_max(active, pending, percent, min_retry_concurrency)


def max_retries_allows(active_retries: int, max_retries: int = 3) -> bool:
    """Whether one more concurrent retry fits ``circuit_breakers.max_retries`` (Envoy default 3,
    Istio 2^32−1). Not used when a retry budget is configured: the budget replaces it."""
    return active_retries < max_retries


# ---- one request -------------------------------------------------------------------------------


class RetryState:
    """The retry and timeout state of one downstream request at one proxy.

    Parameters
    ----------
    policy : RetryPolicy
    start : float
        When the route timer starts: the downstream request has been fully received (s).
    uniform : callable
        Jitter source, uniform in [0, 1) (one named RNG stream).

    Attributes
    ----------
    retries_remaining : int
        Retries the policy still allows (spent even when the breaker then refuses one).
    retries_scheduled : int
        Retries decided so far; the next back-off uses retry number ``retries_scheduled + 1``.
    attempts : int
        Attempts started or about to start (``%UPSTREAM_REQUEST_ATTEMPT_COUNT%``).
    holds_retry : bool
        Whether this request holds a slot of the cluster's retry circuit breaker (below).
    done : bool
        The request has been answered; further decisions are errors.
    attempted_hosts : list
        Hosts chosen so far, in order (the ``previous_hosts`` predicate's memory).

    Notes
    -----
    The engine's loop, per attempt:

    1. ``host = state.select_host(lb_pick)``; when the attempt gets a connection, arm the per-try
       timer at ``state.per_try_deadline(now)`` (Envoy starts it in ``onPoolReady``, so time spent
       pending in the pool counts only against the route timer).
    2. On the attempt's outcome (a per-try timer firing at the route deadline included):
       ``d = state.decide(now, outcome, allowed)``. ``retry`` → start the next attempt after
       ``d.delay``; else answer ``d.status`` / ``d.flags`` after ``d.delay``.
    3. If the route timer fires while an attempt is in flight or pending: ``state.route_timeout()``.

    ``holds_retry`` says whether this request holds a slot of the cluster's retry circuit breaker
    (from a retry decision until the next ``decide``/``route_timeout`` or the end of the request).
    Envoy frees that slot before it checks the breaker (``resetRetry`` before ``canCreate``), so
    compute ``allowed`` without it, e.g. ``max_retries_allows(active_retries - state.holds_retry)``.
    """

    def __init__(self, policy: RetryPolicy, start: float, uniform: Callable[[], float]) -> None:
        self.policy = policy
        self.start = start
        self._uniform = uniform
        self.retries_remaining = policy.num_retries
        self.retries_scheduled = 0
        self.attempts = 1
        self.holds_retry = False
        self.done = False
        self.attempted_hosts: list[Any] = []

    @property
    def route_deadline(self) -> float | None:
        """When the route timer fires (s), or None when the route timeout is disabled."""
        timeout = self.policy.route_timeout
        return None if timeout is None else self.start + timeout

    def per_try_deadline(self, now: float) -> float | None:
        """When an attempt that gets its connection at ``now`` times out (s), or None.

        ``min(now + per_try_timeout, route deadline)``. At the route deadline it is the route
        timer that fires (Envoy even drops a per-try timeout ≥ the route timeout), which
        :meth:`decide` turns into a route timeout.
        """
        deadline = self.route_deadline
        if self.policy.per_try_timeout is None:
            return deadline
        per_try = now + self.policy.per_try_timeout
        return per_try if deadline is None else min(per_try, deadline)

    def decide(self, now: float, outcome: Outcome, retry_budget_available: bool) -> Decision:
        """Retry or answer after an attempt ended with ``outcome`` at ``now``.

        ``RetryStateImpl::shouldRetry`` in order: not wanted → answer with the outcome; no
        retries left → ``URX``; retry breaker full → the last upstream result with ``UO``; else
        retry after :func:`backoff_delay`. An outcome at or after the route deadline is a route
        timeout (504 ``UT``, never retried).

        Parameters
        ----------
        now : float
            Simulated time of the outcome (s).
        outcome : Outcome
        retry_budget_available : bool
            Whether the cluster's retry breaker (``max_retries`` or budget) has room, computed
            without this request's own held retry.
        """
        self._check_open()
        deadline = self.route_deadline
        if deadline is not None and now >= deadline:
            return self.route_timeout()
        counters: list[str] = []
        if outcome.kind is OutcomeKind.PER_TRY_TIMEOUT:
            counters.append("upstream_rq_per_try_timeout")
        wanted = self.policy.wants_retry(outcome)
        if self.holds_retry and not wanted:
            # Envoy infers that the earlier retry succeeded whenever the next attempt is not
            # retriable, whatever its status.
            counters.append("upstream_rq_retry_success")
        self.holds_retry = False  # resetRetry(): the breaker slot is freed before canCreate()
        if not wanted:
            return self._answer(outcome, "", counters)
        if self.retries_remaining == 0:
            counters.append("upstream_rq_retry_limit_exceeded")
            return self._answer(outcome, "URX", counters)
        self.retries_remaining -= 1  # spent even when the breaker then refuses the retry
        if not retry_budget_available:
            counters.append("upstream_rq_retry_overflow")
            return self._answer(outcome, "UO", counters)
        self.holds_retry = True
        self.retries_scheduled += 1
        delay = backoff_delay(self.retries_scheduled, self._uniform, self.policy.backoff_base,
                              self.policy.backoff_max)
        counters += ["upstream_rq_retry", "upstream_rq_retry_backoff_exponential"]
        if deadline is not None and now + delay >= deadline:
            # Envoy does not compare the back-off with the route timer: it arms the back-off
            # timer and the route timer fires first (onResponseTimeout → 504 UT). No upstream
            # request is in flight then, so upstream_rq_timeout does not move, and the retry
            # slot stays held until the reply. A back-off ending exactly at the deadline loses.
            self.done = True
            return Decision(False, deadline - now, 504, "UT", tuple(counters))
        self.attempts += 1
        return Decision(True, delay, None, "-", tuple(counters))

    def route_timeout(self) -> Decision:
        """The route timer fired with an attempt in flight or pending: 504 ``UT``, no retry."""
        self._check_open()
        self.done = True
        self.holds_retry = False  # the retry state is destroyed (cleanup → resetRetry)
        return Decision(False, 0.0, 504, "UT", ("upstream_rq_timeout",))

    def select_host(self, pick: Callable[[], H]) -> H:
        """Pick the host for the next attempt with the load balancer's ``pick``.

        ``LoadBalancerBase::chooseHost``: on a retry with ``previous_hosts``, a host already
        attempted is re-picked up to ``host_selection_retry_max_attempts`` more times, then the
        last pick is used anyway. The chosen host is recorded as attempted
        (``RetryStateImpl::onHostAttempted``). A pick of None (no host) is returned as is.
        """
        extra = self.policy.host_selection_retry_max_attempts if self._filters_hosts() else 0
        host = pick()
        for _ in range(extra):
            if host is None or host not in self.attempted_hosts:
                break
            host = pick()
        if host is not None:
            self.attempted_hosts.append(host)
        return host

    def _filters_hosts(self) -> bool:
        return self.policy.previous_hosts and self.retries_scheduled > 0

    def _answer(self, outcome: Outcome, retry_flag: str, counters: Iterable[str]) -> Decision:
        # Envoy lists flags in the order they were set: the retry verdict (URX/UO) is set in
        # maybeRetryReset/onUpstreamHeaders before the abort sets UF/UT/...: "URX,UT", "UO,UT".
        self.done = True
        flags = ",".join(flag for flag in (retry_flag, outcome.flag) if flag) or "-"
        return Decision(False, 0.0, outcome.status, flags, tuple(counters))

    def _check_open(self) -> None:
        if self.done:
            raise RuntimeError("this request has already been answered")
