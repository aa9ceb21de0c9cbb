"""Envoy's HTTP fault filter (``envoy.filters.http.fault``) as Istio configures it.

Follows ``../shared/envoy-semantics.md`` §7 (fault injection) and §10.2 (flags ``DI`` and ``FI``).
Where the reference is silent, the behaviour was read from Envoy's
``source/extensions/filters/http/fault/fault_filter.cc`` (``FaultFilter::decodeHeaders``,
``maybeSetupDelay``, ``maybeDoAbort``, ``tryIncActiveFaults``, ``faultOverflow``,
``postDelayInjection``, ``abortStatus``) and from istiod's
``pilot/pkg/networking/core/route/route.go`` (``TranslateFault``,
``translatePercentToFractionalPercent``). The filter's documentation, statistics included, is
https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/fault_filter and
Istio's field reference is
https://istio.io/latest/docs/reference/config/networking/virtual-service/#HTTPFaultInjection.

The engine calls :meth:`FaultInjector.decide` once per request when the request reaches the
filter, and :meth:`FaultInjector.on_fault_end` when a delay is over. What it must honour:

- **Where.** Istio puts the fault on the route of the *client-side* proxy (the caller's sidecar
  outbound route, or a gateway's route when the VirtualService is bound to a gateway), as
  ``typed_per_filter_config`` of the fault filter, which runs before the router. The callee's
  sidecar never sees a fault. Istio never sets ``max_active_faults``.
- **Delay.** The request is held before the router sees it; flag ``DI``,
  ``delays_injected``++. The route timeout and per-try timeouts of *this* proxy are not running
  during the delay ([exp] §7): start the :class:`~meshsim.policies.retry.RetryState` (and its
  route timer) at ``now + delay``. The caller's own timeouts (the application's, or an upstream
  proxy's) do run. No connection, circuit-breaker slot or host is taken during the delay.
- **Abort.** A local reply with the configured status, body ``fault filter abort``, flag ``FI``,
  details ``fault_filter_abort``; 0 upstream attempts (``%UPSTREAM_REQUEST_ATTEMPT_COUNT%`` is
  0), no outlier-detection or circuit-breaker accounting on the upstream cluster. The router
  never sees it, so the same proxy does **not** retry it ([exp] §7). A proxy further up the
  call chain that retries will send a new request through this filter, with new draws.
- **Delay, then abort.** Both can hit the same request: it is held, then answered with the
  abort, flags ``DI,FI`` (Envoy prints flags in the order they were set:
  ``ResponseFlagUtils::toShortString`` walks ``StreamInfo::responseFlags()``).
- **gRPC abort.** ``grpcStatus`` / ``grpc_status`` answers HTTP **200** carrying the gRPC status
  (``abortStatus``: "If gRPC status code is set, then http status will be set to 200"); for a
  gRPC request ``sendLocalReply`` makes it a trailers-only response with ``grpc-status``. The
  decision carries both, so a caller's retry policy can look at ``grpc_status``.
- **Mirroring.** An aborted request never reaches the router, so it is neither routed nor
  mirrored; a delayed one is mirrored after its delay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from meshsim.units import parse_duration

__all__ = [
    "DENOMINATORS",
    "GRPC_STATUS_CODES",
    "NO_FAULT",
    "FaultConfig",
    "FaultDecision",
    "FaultInjector",
    "FractionalPercent",
    "envoy_random_value",
]

#: ``envoy.type.v3.FractionalPercent.DenominatorType`` names and values.
DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}

#: gRPC status names Istio accepts in ``abort.grpcStatus`` (istio ``grpc.SupportedGRPCStatus``,
#: the codes of https://grpc.github.io/grpc/core/md_doc_statuscodes.html).
GRPC_STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}

# Envoy draws a 64-bit random number r and tests ``r % denominator < numerator``
# (``ProtobufPercentHelper::evaluateFractionalPercent``). Every denominator divides 10^6, so
# r mod 10^6 carries all that matters, jointly for several tests against the same r (the mirror
# policies of one request). ``int(u * 10^6)`` is that residue, uniform up to the 53-bit
# precision of ``u``; for a MILLION denominator (all of istiod's) the test is ``u < n / 10^6``.
_RANDOM_MODULUS = 1_000_000
_TIME_EPS = 1e-9


def envoy_random_value(u: float) -> int:
    """Envoy's random number modulo 10^6, from one ``uniform()`` draw ``u`` in [0, 1)."""
    if not 0.0 <= u < 1.0:
        raise ValueError(f"uniform() must return a float in [0, 1), got {u!r}")
    return int(u * _RANDOM_MODULUS)


@dataclass(frozen=True, slots=True)
class FractionalPercent:
    """Envoy's ``type.v3.FractionalPercent``: ``numerator / denominator`` of requests.

    A numerator above the denominator means 100 %, as in Envoy (the runtime only logs it).
    """

    numerator: int = 0
    denominator: int = 100

    def __post_init__(self) -> None:
        if self.denominator not in DENOMINATORS.values():
            raise ValueError(f"denominator must be one of {sorted(DENOMINATORS.values())}, "
                             f"got {self.denominator}")
        if isinstance(self.numerator, bool) or not isinstance(self.numerator, int) \
                or self.numerator < 0:
            raise ValueError(f"numerator must be an integer >= 0, got {self.numerator!r}")

    @property
    def percent(self) -> float:
        """The share in percent (0 to 100)."""
        return 100.0 * min(self.numerator, self.denominator) / self.denominator

    @property
    def certain(self) -> bool:
        """True when the outcome needs no draw (0 % or 100 %)."""
        return self.numerator == 0 or self.numerator >= self.denominator

    def enabled(self, random_value: int) -> bool:
        """Envoy's test on one 64-bit ``random_value``: ``random % denominator < numerator``."""
        return random_value % self.denominator < self.numerator

    def roll(self, uniform: Callable[[], float] | None) -> bool:
        """Draw once from ``uniform`` and test; 0 % and 100 % draw nothing (as the rate
        limiters here do), so a stream is consumed only by requests whose outcome is open."""
        if self.certain:
            return self.numerator > 0
        if uniform is None:
            raise ValueError("a fractional percentage needs uniform()")
        return self.enabled(envoy_random_value(uniform()))

    @classmethod
    def from_envoy(cls, block: Mapping[str, Any] | None, field: str = "percentage"
                   ) -> FractionalPercent:
        """From ``{numerator, denominator}`` (denominator name, default ``HUNDRED``).

        An absent block is Envoy's proto default: numerator 0, so 0 %.
        """
        if block is None:
            return cls()
        if not isinstance(block, Mapping):
            raise ValueError(f"{field}: expected {{numerator, denominator}}, got {block!r}")
        unknown = set(block) - {"numerator", "denominator"}
        if unknown:
            raise ValueError(f"{field}: unknown field(s) {sorted(unknown)}")
        name = block.get("denominator", "HUNDRED")
        if name not in DENOMINATORS:
            raise ValueError(f"{field}.denominator must be one of {list(DENOMINATORS)}, "
                             f"got {name!r}")
        return cls(_non_negative_int(block.get("numerator", 0), f"{field}.numerator"),
                   DENOMINATORS[name])

    @classmethod
    def from_istio(cls, value: Any, field: str = "percentage") -> FractionalPercent:
        """From an Istio ``Percent`` (``{value: 0-100}`` or a bare number), as istiod writes it.

        ``translatePercentToFractionalPercent``: numerator ``uint32(value * 10000)`` (truncated,
        with Go's float64 arithmetic, which Python's matches) over ``MILLION``.
        """
        if isinstance(value, Mapping):
            unknown = set(value) - {"value"}
            if unknown:
                raise ValueError(f"{field}: unknown field(s) {sorted(unknown)}; "
                                 "an Istio Percent has only `value`")
            value = value.get("value", 0.0)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{field}.value must be a number in [0, 100], got {value!r}")
        if not 0.0 <= value <= 100.0:  # istio validatePercentage
            raise ValueError(f"{field}.value must be in [0, 100], got {value!r}")
        return cls(int(value * 10_000), DENOMINATORS["MILLION"])


def _non_negative_int(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field} must be an integer >= 0, got {value!r}")
    return value


def _whole_ms(seconds: float) -> int:
    """A proto Duration in whole ms, truncated (``DurationUtil::durationToMilliseconds``)."""
    return round(seconds * 1e9) // 1_000_000


# -- configuration ------------------------------------------------------------------------------

_ISTIO_FAULT_KEYS = frozenset({"delay", "abort"})
_ISTIO_DELAY_KEYS = frozenset({"fixedDelay", "percentage", "percent", "exponentialDelay"})
_ISTIO_ABORT_KEYS = frozenset({"httpStatus", "grpcStatus", "http2Error", "percentage"})
_ENVOY_FAULT_KEYS = frozenset({"delay", "abort", "max_active_faults"})
_ENVOY_DELAY_KEYS = frozenset({"fixed_delay", "header_delay", "percentage"})
_ENVOY_ABORT_KEYS = frozenset({"http_status", "grpc_status", "header_abort", "percentage"})


@dataclass(frozen=True)
class FaultConfig:
    """An ``HTTPFault`` (``extensions.filters.http.fault.v3``) as plain values.

    Build it with :meth:`from_istio` or :meth:`from_envoy`.

    Attributes
    ----------
    delay : float or None
        ``delay.fixed_delay`` in seconds (> 0; Envoy uses whole ms, so below 1 ms no delay is
        injected); None: no delay block.
    delay_percentage : FractionalPercent
        Share of requests delayed (absent: 0 %).
    abort_http_status : int or None
        ``abort.http_status``, in [200, 600).
    abort_grpc_status : int or None
        ``abort.grpc_status`` (the reply is then HTTP 200). At most one of the two is set.
    abort_percentage : FractionalPercent
        Share of requests aborted (absent: 0 %).
    max_active_faults : int or None
        Faults (delays, aborts) active at once in this filter; None: unlimited (Envoy's
        default, and always so under Istio).
    """

    delay: float | None = None
    delay_percentage: FractionalPercent = FractionalPercent()
    abort_http_status: int | None = None
    abort_grpc_status: int | None = None
    abort_percentage: FractionalPercent = FractionalPercent()
    max_active_faults: int | None = None

    def __post_init__(self) -> None:
        if self.delay is not None and not self.delay > 0:
            raise ValueError("delay must be > 0 seconds (fault.proto: fixed_delay gt 0)")
        if self.abort_http_status is not None and self.abort_grpc_status is not None:
            raise ValueError("an abort has either an HTTP status or a gRPC status, not both")
        if self.abort_http_status is not None and not 200 <= self.abort_http_status < 600:
            raise ValueError(f"abort HTTP status must be in [200, 600), "
                             f"got {self.abort_http_status}")
        if self.abort_grpc_status is not None and self.abort_grpc_status < 0:
            raise ValueError("abort gRPC status must be >= 0")
        if self.abort_percentage.numerator and not self.has_abort:
            raise ValueError("an abort percentage needs an abort status")
        if self.max_active_faults is not None and self.max_active_faults < 0:
            raise ValueError("max_active_faults must be >= 0, or None for unlimited")

    @property
    def has_abort(self) -> bool:
        """Whether an abort status is configured."""
        return self.abort_http_status is not None or self.abort_grpc_status is not None

    @classmethod
    def from_istio(cls, fault: Mapping[str, Any]) -> FaultConfig:
        """Translate a VirtualService ``http[].fault`` block as istiod does (``TranslateFault``).

        Parameters
        ----------
        fault : mapping
            ``{delay: {fixedDelay, percentage: {value}}, abort: {httpStatus | grpcStatus,
            percentage: {value}}}``. ``fixedDelay`` is a duration string (``"5s"``,
            ``"250ms"``) or float seconds. The deprecated integer ``delay.percent`` is used
            when ``delay.percentage`` is absent, as istiod does.

        Returns
        -------
        FaultConfig
            With no percentage, **no** request is faulted (istiod writes 0 %, and Istio's
            field reference says so). ``max_active_faults`` is never set.

        Raises
        ------
        ValueError
            Naming the ``fault.*`` field, for what Istio's validation rejects (no delay and no
            abort, ``fixedDelay`` under 1 ms or finer than 1 ms, a percentage outside [0, 100],
            an HTTP status outside [200, 600), an unknown gRPC status name) or does not
            translate (``exponentialDelay``, ``http2Error``, an abort without a status).
        """
        _check_keys(fault, _ISTIO_FAULT_KEYS, "fault")
        if fault.get("delay") is None and fault.get("abort") is None:
            raise ValueError("fault: must have a delay and/or an abort")
        fields: dict[str, Any] = {}
        if fault.get("delay") is not None:
            fields.update(_istio_delay(fault["delay"]))
        if fault.get("abort") is not None:
            fields.update(_istio_abort(fault["abort"]))
        return cls(**fields)

    @classmethod
    def from_envoy(cls, http_fault: Mapping[str, Any]) -> FaultConfig:
        """Build from an Envoy ``HTTPFault`` with Envoy's field names.

        ``delay: {fixed_delay, percentage: {numerator, denominator}}``, ``abort: {http_status |
        grpc_status, percentage}``, ``max_active_faults`` (int or ``{value}``). A missing
        percentage is 0 %. Header-controlled faults, ``upstream_cluster``, ``headers``,
        ``downstream_nodes``, ``response_rate_limit`` and the runtime keys are not modelled and
        raise ValueError.
        """
        _check_keys(http_fault, _ENVOY_FAULT_KEYS, "HTTPFault", modelled=True)
        fields: dict[str, Any] = {}
        delay = http_fault.get("delay")
        if delay is not None:
            _check_keys(delay, _ENVOY_DELAY_KEYS, "delay")
            if "header_delay" in delay:
                raise ValueError("delay.header_delay is not modelled: use fixed_delay")
            if delay.get("fixed_delay") is None:
                raise ValueError("delay.fixed_delay is required")
            fields["delay"] = parse_duration(delay["fixed_delay"])
            fields["delay_percentage"] = FractionalPercent.from_envoy(
                delay.get("percentage"), "delay.percentage")
        abort = http_fault.get("abort")
        if abort is not None:
            _check_keys(abort, _ENVOY_ABORT_KEYS, "abort")
            if "header_abort" in abort:
                raise ValueError("abort.header_abort is not modelled: use http_status")
            if (abort.get("http_status") is None) == (abort.get("grpc_status") is None):
                raise ValueError("abort needs exactly one of http_status and grpc_status")
            if abort.get("http_status") is not None:
                fields["abort_http_status"] = _non_negative_int(abort["http_status"],
                                                                "abort.http_status")
            else:
                fields["abort_grpc_status"] = _non_negative_int(abort["grpc_status"],
                                                                "abort.grpc_status")
            fields["abort_percentage"] = FractionalPercent.from_envoy(
                abort.get("percentage"), "abort.percentage")
        limit = http_fault.get("max_active_faults")
        if limit is not None:
            value = limit.get("value") if isinstance(limit, Mapping) else limit
            fields["max_active_faults"] = _non_negative_int(value, "max_active_faults")
        return cls(**fields)


def _istio_delay(delay: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(delay, _ISTIO_DELAY_KEYS, "fault.delay")
    if "exponentialDelay" in delay:
        raise ValueError("fault.delay.exponentialDelay is not supported by Istio: use fixedDelay")
    if delay.get("fixedDelay") is None:
        raise ValueError("fault.delay.fixedDelay is required")
    seconds = parse_duration(delay["fixedDelay"])
    # istio agent.ValidateDuration: at least 1 ms, in whole milliseconds.
    if seconds < 0.001 or round(seconds * 1e9) % 1_000_000:
        raise ValueError(f"fault.delay.fixedDelay must be >= 1ms and in whole milliseconds, "
                         f"got {delay['fixedDelay']!r}")
    if delay.get("percentage") is not None:
        percentage = FractionalPercent.from_istio(delay["percentage"], "fault.delay.percentage")
    else:
        # Deprecated int `percent`; istiod translateIntegerToFractionalPercent (0 if absent).
        percent = _non_negative_int(delay.get("percent", 0), "fault.delay.percent")
        if percent > 100:
            raise ValueError(f"fault.delay.percent must be in [0, 100], got {percent}")
        percentage = FractionalPercent(percent, DENOMINATORS["HUNDRED"])
    return {"delay": seconds, "delay_percentage": percentage}


def _istio_abort(abort: Mapping[str, Any]) -> dict[str, Any]:
    _check_keys(abort, _ISTIO_ABORT_KEYS, "fault.abort")
    if "http2Error" in abort:
        raise ValueError("fault.abort.http2Error is not supported by Istio: use httpStatus")
    fields: dict[str, Any] = {"abort_percentage": FractionalPercent.from_istio(
        abort.get("percentage", 0.0), "fault.abort.percentage")}
    if abort.get("httpStatus") is not None and abort.get("grpcStatus") is not None:
        raise ValueError("fault.abort: httpStatus and grpcStatus are exclusive")
    if abort.get("httpStatus") is not None:
        status = abort["httpStatus"]
        # Istio's webhook allows 200..600 but Envoy's proto rejects 600 (lt: 600).
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status < 600:
            raise ValueError(f"fault.abort.httpStatus must be an HTTP status in 200..599, "
                             f"got {status!r}")
        fields["abort_http_status"] = status
    elif abort.get("grpcStatus") is not None:
        name = abort["grpcStatus"]
        if name not in GRPC_STATUS_CODES:
            raise ValueError(f"fault.abort.grpcStatus must be one of {list(GRPC_STATUS_CODES)}, "
                             f"got {name!r}")
        fields["abort_grpc_status"] = GRPC_STATUS_CODES[name]
    else:
        # istio only warns ("abort configured, but error type not set") and istiod drops it.
        raise ValueError("fault.abort needs httpStatus or grpcStatus (istiod drops an abort "
                         "without one)")
    return fields


def _check_keys(block: Any, known: frozenset[str], field: str, *, modelled: bool = False) -> None:
    if not isinstance(block, Mapping):
        raise ValueError(f"{field}: expected a mapping, got {block!r}")
    unknown = sorted(set(block) - known)
    if unknown:
        what = "not modelled" if modelled else "unknown"
        raise ValueError(f"{field}: {what} field(s) {unknown}; known: {sorted(known)}")


# -- the filter ----------------------------------------------------------------------------------

class FaultDecision(NamedTuple):
    """What the fault filter does with one request.

    Attributes
    ----------
    delay : float
        Seconds the request is held before the router sees it (0: not delayed).
    status : int or None
        Status of the local reply sent after ``delay`` (None: the request goes on to the
        router). 200 for a gRPC abort.
    grpc_status : int or None
        The gRPC status of a gRPC abort, else None.
    flags : str
        ``"-"``, ``"DI"``, ``"FI"`` or ``"DI,FI"``.
    """

    delay: float
    status: int | None
    grpc_status: int | None
    flags: str

    @property
    def aborted(self) -> bool:
        """The request is answered by the filter (after ``delay``)."""
        return self.status is not None

    @property
    def holds_fault(self) -> bool:
        """The request holds an active fault until the delay is over: the engine must call
        :meth:`FaultInjector.on_fault_end` then."""
        return self.delay > 0


#: The decision for a request the filter lets through untouched.
NO_FAULT = FaultDecision(0.0, None, None, "-")


class FaultInjector:
    """The fault filter of one proxy for one fault configuration.

    Envoy keeps the ``active_faults`` gauge and the counters in the filter's own config (one per
    HTTP connection manager), shared by every route whose ``typed_per_filter_config`` overrides
    the settings; one injector per route is exact whenever ``max_active_faults`` is unset, which
    is always the case under Istio.

    Parameters
    ----------
    config : FaultConfig
    uniform : callable, optional
        ``uniform() -> float`` in [0, 1): one draw per percentage whose outcome is open
        (strictly between 0 % and 100 %). Required only then.

    Attributes
    ----------
    active_faults : int
        Envoy's ``active_faults`` gauge: requests being delayed now. An abort is active only
        for the instant of its local reply, so it never stays counted.
    stats : dict of str to int
        ``http.<stat_prefix>.fault.{delays_injected, aborts_injected, faults_overflow}``, keyed
        by the last part. ``faults_overflow`` counts each fault refused by
        ``max_active_faults``, so a request refused both a delay and an abort counts twice, as
        in Envoy (``tryIncActiveFaults`` checks once per fault it tries).
    """

    __slots__ = ("_delay", "_last", "_uniform", "active_faults", "config", "stats")

    def __init__(self, config: FaultConfig, uniform: Callable[[], float] | None = None):
        open_draws = [p for p in (config.delay_percentage, config.abort_percentage)
                      if not p.certain]
        if open_draws and uniform is None:
            raise ValueError("a fractional fault percentage needs uniform()")
        self.config = config
        self._uniform = uniform
        # Envoy holds the request for whole milliseconds; a delay under 1 ms is no delay.
        self._delay = _whole_ms(config.delay) / 1000 if config.delay is not None else 0.0
        self._last = float("-inf")
        self.active_faults = 0
        self.stats = {"delays_injected": 0, "aborts_injected": 0, "faults_overflow": 0}

    def decide(self, now: float) -> FaultDecision:
        """Decide the faults of one request reaching the filter at ``now``.

        Follows ``FaultFilter::decodeHeaders``: first the delay (its percentage draw, then a
        free ``max_active_faults`` slot, else ``faults_overflow``++ and no delay); a delayed
        request gets its abort draw when the delay ends (``postDelayInjection``, no new slot
        needed); one not delayed gets it now (``maybeDoAbort``, which needs a slot). Here both
        draws are made now; the decision is the same.

        Parameters
        ----------
        now : float
            Seconds. The decision does not depend on it; it is checked to be non-decreasing
            across calls, as every policy's time is.

        Returns
        -------
        FaultDecision
            If ``holds_fault``, call :meth:`on_fault_end` when the delay is over (or when the
            downstream request is cancelled during it).
        """
        if now < self._last - _TIME_EPS:
            raise ValueError(f"time went backwards: {now} s after {self._last} s")
        self._last = max(self._last, now)
        cfg = self.config
        delayed = False
        if cfg.delay is not None and cfg.delay_percentage.roll(self._uniform) \
                and self._delay > 0 and self._try_activate():
            delayed = True
            self.stats["delays_injected"] += 1
        if not (cfg.has_abort and cfg.abort_percentage.roll(self._uniform)):
            return FaultDecision(self._delay, None, None, "DI") if delayed else NO_FAULT
        if not delayed:
            if not self._try_activate():
                return NO_FAULT
            # The local reply ends the stream at once (onDestroy): the slot is given back.
            self.active_faults -= 1
        self.stats["aborts_injected"] += 1
        if cfg.abort_grpc_status is not None:
            status, grpc_status = 200, cfg.abort_grpc_status
        else:
            status, grpc_status = cfg.abort_http_status, None
        if delayed:
            return FaultDecision(self._delay, status, grpc_status, "DI,FI")
        return FaultDecision(0.0, status, grpc_status, "FI")

    def on_fault_end(self) -> None:
        """A delayed request's delay is over (or the request was cancelled during it).

        Frees its ``active_faults`` slot: Envoy decrements the gauge in ``postDelayInjection``
        when no abort follows, and in ``onDestroy`` after the abort's local reply otherwise.
        """
        if self.active_faults == 0:
            raise RuntimeError("on_fault_end() without an active fault")
        self.active_faults -= 1

    def _try_activate(self) -> bool:
        # tryIncActiveFaults / faultOverflow: a fuzzy limit, checked against the gauge.
        limit = self.config.max_active_faults
        if limit is not None and self.active_faults >= limit:
            self.stats["faults_overflow"] += 1
            return False
        self.active_faults += 1
        return True
