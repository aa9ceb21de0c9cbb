"""Envoy's adaptive concurrency (gradient controller) and admission control filters, as plain
state machines.

Follows ``../shared/envoy-semantics.md`` §9. Where the reference and Envoy's code disagree, the
code wins and the comment at that spot says so. Read in Envoy (``envoyproxy/envoy``):

- ``source/extensions/filters/http/adaptive_concurrency/controller/gradient_controller.cc``:
  ``GradientController::forwardingDecision``, ``recordLatencySample``, ``cancelLatencySample``,
  ``enterMinRTTSamplingWindow``, ``updateMinRTT``, ``resetSampleWindow``, ``calculateNewLimit``,
  ``updateConcurrencyLimit``, ``applyJitter``; ``adaptive_concurrency_filter.cc``:
  ``decodeHeaders``, ``encodeComplete``, ``onDestroy``, ``toErrorCode``;
- ``source/extensions/filters/http/admission_control/admission_control.cc``: ``decodeHeaders``,
  ``encodeHeaders``, ``shouldRejectRequest``; ``thread_local_controller.{h,cc}``
  (``ThreadLocalControllerImpl``); ``evaluators/success_criteria_evaluator.cc``; ``config.cc``.

Every call takes the simulated time ``now`` in float seconds, in non-decreasing order. Randomness
comes from a ``uniform() -> float in [0, 1)`` callable given to the constructor.

- :class:`GradientController`: ``envoy.filters.http.adaptive_concurrency`` of one proxy (Envoy
  shares one controller between its worker threads), in front of the local service.
- :class:`AdmissionController`: ``envoy.filters.http.admission_control`` of one worker thread of
  a client proxy (Envoy keeps the success-rate window per thread).
"""

from __future__ import annotations

import difflib
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshsim.units import parse_duration

__all__ = [
    "ADAPTIVE_CONCURRENCY_DETAILS",
    "ADMISSION_CONTROL_DETAILS",
    "DEFAULT_GRPC_SUCCESS_STATUS",
    "AdmissionControlConfig",
    "AdmissionController",
    "GradientController",
    "GradientControllerConfig",
]

#: ``%RESPONSE_CODE_DETAILS%`` of the adaptive concurrency filter's local reply (body
#: ``reached concurrency limit``).
ADAPTIVE_CONCURRENCY_DETAILS = "reached_concurrency_limit"
#: ``%RESPONSE_CODE_DETAILS%`` of the admission control filter's local 503 (empty body).
ADMISSION_CONTROL_DETAILS = "denied_by_admission_control"
#: gRPC codes counted as successes when ``grpc_criteria`` is unset (``SuccessCriteriaEvaluator``):
#: OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
#: FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED.
DEFAULT_GRPC_SUCCESS_STATUS = frozenset({0, 1, 2, 3, 5, 6, 7, 9, 11, 12, 16})

_EPS = 1e-9  # tolerance of time comparisons (float sums must not miss a due timer)
_NO_HOST = -1  # these filters are not per host; events use -1 to fit the policies' events table
# Consecutive update windows at the minimum limit that force a new minRTT measurement
# (updateConcurrencyLimit: ``consecutive_min_concurrency_set_ >= 5``).
_WINDOWS_AT_MINIMUM = 5
_GRADIENT_MIN, _GRADIENT_MAX = 0.5, 2.0  # calculateNewLimit clamps the gradient to these
_ACCURACY = 10_000  # shouldRejectRequest: the draw has 4 significant figures

_GC = "gradient_controller_config"
_CLP = f"{_GC}.concurrency_limit_params"
_MRP = f"{_GC}.min_rtt_calc_params"


# -- small parsers of Envoy's JSON/YAML shapes -------------------------------------------------

def _to_ms(seconds: float) -> int:
    """A proto Duration in whole ms, truncated (``DurationUtil::durationToMilliseconds``)."""
    return round(seconds * 1e9) // 1_000_000


def _micros(seconds: float) -> int:
    """Whole microseconds, truncated, as ``processLatencySamplesAndClear`` returns RTTs (a
    nanosecond of slack keeps float noise from losing a microsecond)."""
    return math.floor(seconds * 1e6 + 1e-3)


def _fail(path: str, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _fields(value: Any, path: str, known: Iterable[str]) -> Mapping[str, Any]:
    """``value`` as a mapping with only ``known`` keys (and ``@type``)."""
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(known) - {"@type"})
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else \
            f"; expected one of: {', '.join(sorted(known))}"
        raise _fail(f"{path}.{key}" if path else key,
                    f"unknown or not modelled field{hint}")
    return value


def _block(parent: Mapping[str, Any], key: str, path: str, known: Iterable[str],
           required: bool = False) -> Mapping[str, Any]:
    """The sub-message ``parent[key]``; ``{}`` when unset (null) and not required."""
    value = parent.get(key)
    if value is None:
        if required:
            raise _fail(path, "is required")
        return {}
    return _fields(value, path, known)


def _duration(value: Any, path: str) -> float:
    """``"0.1s"``, float seconds, or a proto Duration ``{seconds, nanos}``, in seconds."""
    try:
        if isinstance(value, Mapping):
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        return parse_duration(value)
    except (TypeError, ValueError) as err:
        raise _fail(path, str(err)) from None


def _number(value: Any, path: str, key: str = "value") -> float:
    """A bare number, or the ``key`` of a wrapper message (``{value: 90}``)."""
    if isinstance(value, Mapping):
        if key not in value:
            raise _fail(path, f"expected {{{key}: ...}}, got {dict(value)!r}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, path: str, key: str = "value") -> int:
    number = _number(value, path, key)
    if not math.isfinite(number) or number != int(number):
        raise _fail(path, f"expected an integer, got {number!r}")
    return int(number)


def _runtime(value: Any) -> Any:
    """The ``default_value`` of a Runtime* wrapper (the runtime key is ignored), or the value."""
    if isinstance(value, Mapping) and "default_value" in value:
        return value["default_value"]
    return value


def _feature_flag(value: Any, path: str) -> bool:
    """A ``RuntimeFeatureFlag`` (``{default_value: false, runtime_key}``) or a bool; unset is
    enabled, as Envoy's ``PROTOBUF_GET_WRAPPED_OR_DEFAULT(..., true)``."""
    if value is None:
        return True
    value = _runtime(value)
    if isinstance(value, Mapping):  # BoolValue in its JSON object form
        value = value.get("value", True)
    if not isinstance(value, bool):
        raise _fail(path, f"expected a boolean, got {value!r}")
    return value


def _percentile(samples: list[float], percent: float) -> float:
    """The ``percent`` percentile of ``samples``, interpolated between order statistics.

    Envoy summarises the window with a circllhist log-linear histogram (two significant digits,
    microsecond values) and ``hist_approx_quantile``, so its value can sit up to one bin (about
    10 %) away from this exact one; exact values keep hand-computed tests exact.
    """
    ordered = sorted(samples)
    position = min(max(percent, 0.0), 100.0) / 100.0 * (len(ordered) - 1)
    lower = math.floor(position)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


# -- adaptive concurrency: configuration -------------------------------------------------------

@dataclass(frozen=True)
class GradientControllerConfig:
    """``AdaptiveConcurrency`` with a ``gradient_controller_config``, Envoy's defaults (§9.1).

    Names are Envoy's leaf field names; durations are float seconds (Envoy keeps whole
    milliseconds: sub-millisecond parts are dropped), percentages floats 0-100.

    Parameters
    ----------
    concurrency_update_interval : float
        ``concurrency_limit_params.concurrency_update_interval``: seconds between limit updates
        (required, >= 1 ms).
    interval : float or None, optional
        ``min_rtt_calc_params.interval``: seconds between minRTT measurements (>= 1 ms). None
        (or 0) disables the measurement; ``fixed_value`` is then required.
    fixed_value : float or None, optional
        ``min_rtt_calc_params.fixed_value``: a fixed minRTT in seconds. When set, minRTT is never
        measured (``isMinRTTSamplingEnabled`` is ``fixed_value <= 0``), whatever ``interval``.
    request_count : int, optional
        Samples that end a minRTT measurement (50).
    jitter : float, optional
        Percent of ``interval`` added at random before the next measurement (15).
    min_concurrency : int, optional
        Limit pinned during a minRTT measurement (3); also the lower bound of the limit unless
        ``min_concurrency_limit`` is set.
    buffer : float, optional
        Percent added to minRTT in the gradient (25).
    sample_aggregate_percentile : float, optional
        Percentile summarising the samples of a window, for sampleRTT and minRTT alike (50).
    max_concurrency_limit : int, optional
        Upper bound of the limit (1000).
    min_concurrency_limit : int or None, optional
        ``concurrency_limit_params.min_concurrency_limit`` (envoy PR #46602, August 2026): a
        lower bound of the limit apart from ``min_concurrency``; when set, a minRTT measurement
        leaves the limit alone. Modelled from the filter docs; its code was not read.
    concurrency_limit_exceeded_status : int, optional
        Status of the local reply to a blocked request (503); below 400 it becomes 503.
    enabled : bool, optional
        ``enabled.default_value``; False makes the filter a pass-through.
    """

    concurrency_update_interval: float
    interval: float | None = None
    fixed_value: float | None = None
    request_count: int = 50
    jitter: float = 15.0
    min_concurrency: int = 3
    buffer: float = 25.0
    sample_aggregate_percentile: float = 50.0
    max_concurrency_limit: int = 1000
    min_concurrency_limit: int | None = None
    concurrency_limit_exceeded_status: int = 503
    enabled: bool = True

    def __post_init__(self) -> None:
        # AdaptiveConcurrencyFilterConfig's toErrorCode: a status below 400 becomes 503.
        if self.concurrency_limit_exceeded_status < 400:
            object.__setattr__(self, "concurrency_limit_exceeded_status", 503)
        if self.interval == 0:
            object.__setattr__(self, "interval", None)
        if _to_ms(self.concurrency_update_interval) < 1:
            # The proto only asks for > 0; a 0 ms timer would fire forever at the same instant.
            raise _fail(f"{_CLP}.concurrency_update_interval", "must be >= 1ms")
        if self.interval is not None and _to_ms(self.interval) < 1:
            raise _fail(f"{_MRP}.interval", "must be >= 1ms")
        if self.fixed_value is not None and not self.fixed_value > 0:
            raise _fail(f"{_MRP}.fixed_value", "must be > 0")
        if self.interval is None and self.fixed_value is None:
            raise _fail(f"{_MRP}.interval",
                        "is required unless fixed_value is set (minRTT sampling disabled)")
        for name, path in (("request_count", _MRP), ("min_concurrency", _MRP),
                           ("max_concurrency_limit", _CLP), ("min_concurrency_limit", _CLP)):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value > 0):
                raise _fail(f"{path}.{name}", f"must be an integer > 0, got {value!r}")
        for name, path in (("jitter", f"{_MRP}.jitter"), ("buffer", f"{_MRP}.buffer"),
                           ("sample_aggregate_percentile",
                            f"{_GC}.sample_aggregate_percentile")):
            if not 0 <= getattr(self, name) <= 100:
                raise _fail(f"{path}.value", "must be a percentage in [0, 100]")

    @property
    def samples_min_rtt(self) -> bool:
        """Whether minRTT is measured (no ``fixed_value``)."""
        return self.fixed_value is None

    @property
    def limit_floor(self) -> int:
        """Lower bound of the calculated limit: ``min_concurrency_limit`` or ``min_concurrency``."""
        if self.min_concurrency_limit is not None:
            return self.min_concurrency_limit
        return self.min_concurrency

    @classmethod
    def from_envoy(cls, typed_config: Mapping[str, Any]) -> GradientControllerConfig:
        """Build from the filter's ``typed_config`` in Envoy's JSON/YAML shape.

        ``gradient_controller_config {sample_aggregate_percentile {value},
        concurrency_limit_params {max_concurrency_limit, concurrency_update_interval,
        min_concurrency_limit}, min_rtt_calc_params {interval, fixed_value, request_count,
        jitter {value}, min_concurrency, buffer {value}}}``, ``enabled {default_value}``,
        ``concurrency_limit_exceeded_status {code}``. Durations as ``"0.1s"``, float seconds or
        ``{seconds, nanos}``; percentages as ``{value: 90}`` or a bare number.

        Raises
        ------
        ValueError
            Naming the field path, for a missing required field, a wrong type or value, or a
            field this model does not know.
        """
        top = _fields(typed_config, "typed_config",
                      (_GC, "enabled", "concurrency_limit_exceeded_status"))
        gc = _block(top, _GC, _GC, ("sample_aggregate_percentile", "concurrency_limit_params",
                                    "min_rtt_calc_params"), required=True)
        clp = _block(gc, "concurrency_limit_params", _CLP, (
            "max_concurrency_limit", "concurrency_update_interval", "min_concurrency_limit"),
            required=True)
        mrp = _block(gc, "min_rtt_calc_params", _MRP, (
            "interval", "fixed_value", "request_count", "jitter", "min_concurrency", "buffer"),
            required=True)
        if "concurrency_update_interval" not in clp:
            raise _fail(f"{_CLP}.concurrency_update_interval", "is required")
        kwargs: dict[str, Any] = {"concurrency_update_interval": _duration(
            clp["concurrency_update_interval"], f"{_CLP}.concurrency_update_interval")}
        for key in ("interval", "fixed_value"):
            if mrp.get(key) is not None:
                kwargs[key] = _duration(mrp[key], f"{_MRP}.{key}")
        for key, block, path in (("max_concurrency_limit", clp, _CLP),
                                 ("min_concurrency_limit", clp, _CLP),
                                 ("request_count", mrp, _MRP), ("min_concurrency", mrp, _MRP)):
            if block.get(key) is not None:  # UInt32Value: a bare number or {value: n}
                kwargs[key] = _integer(block[key], f"{path}.{key}")
        for key, block, path in (("jitter", mrp, _MRP), ("buffer", mrp, _MRP),
                                 ("sample_aggregate_percentile", gc, _GC)):
            if block.get(key) is not None:
                kwargs[key] = _number(block[key], f"{path}.{key}")
        status = top.get("concurrency_limit_exceeded_status")
        if status is not None:
            kwargs["concurrency_limit_exceeded_status"] = _integer(
                status, "concurrency_limit_exceeded_status", key="code")
        kwargs["enabled"] = _feature_flag(top.get("enabled"), "enabled")
        return cls(**kwargs)


# -- adaptive concurrency: the controller ------------------------------------------------------

class GradientController:
    """Envoy's adaptive concurrency gradient controller, in front of the local service (§9.1).

    The engine calls, with the simulated time ``now`` (s):

    - :meth:`try_acquire` when a request reaches the filter (after health checks are taken out:
      Envoy neither limits nor samples them). False means a local reply with
      ``config.concurrency_limit_exceeded_status`` (503), details
      :data:`ADAPTIVE_CONCURRENCY_DETAILS`; the request never reaches the service.
    - :meth:`on_response` when an admitted request's response has been fully sent downstream
      (``encodeComplete``), whatever its status: a router local reply (504 after a route
      timeout, 503 ...) is a sample too.
    - :meth:`on_cancel` when an admitted request ends without a complete response (a stream
      reset, the client going away): ``onDestroy`` frees its slot and records no sample.
    - :meth:`on_timer` at :meth:`next_timer`, if it wants the gauges and events on time. Every
      input applies the timers due before it, at their due times, so decisions are the same
      whether or not the engine schedules them.

    Algorithm (``gradient_controller.cc``): the controller starts inside a minRTT measurement,
    with the limit pinned to ``min_concurrency``. Requests are admitted while ``in_flight <
    limit``. A measurement ends with the response that brings ``request_count`` samples; minRTT
    is their ``sample_aggregate_percentile`` (not their minimum), the limit goes back to its value
    before the measurement, the next measurement is due ``interval`` + jitter later, and the
    update timer restarts. Outside a measurement, every ``concurrency_update_interval`` the
    samples of the window give sampleRTT, and::

        gradient  = clamp((minRTT × (1 + buffer)) / sampleRTT, 0.5, 2.0)
        new_limit = clamp(floor(gradient × limit + sqrt(gradient × limit)), floor, max)

    A window without samples changes nothing. A limit set to the floor from the floor in 5
    consecutive update windows starts a measurement at once. Samples of requests admitted before
    the latest measurement began are dropped. minRTT and sampleRTT are whole microseconds, as in
    Envoy. Docs: https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/
    adaptive_concurrency_filter (they expect more 503s during a measurement, and suggest retries
    with the ``previous_hosts`` predicate).

    Parameters
    ----------
    config : GradientControllerConfig
    uniform : callable, optional
        ``uniform() -> float`` in [0, 1), one draw per measurement for the jitter. Required when
        minRTT is measured with ``jitter`` > 0.
    start_time : float, optional
        Seconds; the filter is created (and the first measurement starts) then.

    Attributes
    ----------
    stats : dict of str to int
        ``http.<stat_prefix>.adaptive_concurrency.gradient_controller.*``: the counter
        ``rq_blocked`` and the gauges ``concurrency_limit``, ``gradient`` (× 1000),
        ``burst_queue_size`` (the headroom), ``min_rtt_calculation_active`` (0/1),
        ``min_rtt_msecs``, ``sample_rtt_msecs``; gauges truncated to integers, as Envoy's.
    events : list of tuple
        ``(t, kind, -1, detail)``: ``"min_rtt_window_started"`` (detail ``"initial"``,
        ``"interval"`` or ``"limit_at_minimum"``), ``"min_rtt_measured"`` (detail
        ``"min_rtt=<ms>ms"``), ``"concurrency_limit_changed"`` (detail ``"<old>-><new>"``).
    """

    __slots__ = (
        "_arm_seq", "_at_minimum", "_deferred_limit", "_epoch", "_in_flight", "_in_window",
        "_last", "_limit", "_min_rtt_due", "_min_rtt_reason", "_min_rtt_us", "_sample_due",
        "_sample_rtt_us", "_samples", "_uniform", "config", "events", "stats",
    )

    def __init__(self, config: GradientControllerConfig,
                 uniform: Callable[[], float] | None = None, start_time: float = 0.0):
        if config.samples_min_rtt and config.jitter > 0 and uniform is None:
            raise ValueError("a minRTT jitter > 0 needs uniform()")
        self.config = config
        self._uniform = uniform
        self._last = start_time
        self._limit = config.min_concurrency  # the constructor's initial concurrency_limit_
        self._in_flight = 0
        self._samples: list[float] = []
        self._in_window = False
        self._deferred_limit = 0
        self._at_minimum = 0
        self._epoch = -math.inf
        self._min_rtt_us: int | None = None  # minRTT and sampleRTT in whole µs, as Envoy's
        self._sample_rtt_us: int | None = None
        # Timers: (due time, arming order); equal due times fire in arming order.
        self._arm_seq = 0
        self._sample_due: tuple[float, int] | None = None
        self._min_rtt_due: tuple[float, int] | None = None
        self._min_rtt_reason = "interval"
        self.stats: dict[str, int] = dict.fromkeys(
            ("rq_blocked", "burst_queue_size", "concurrency_limit", "gradient",
             "min_rtt_calculation_active", "min_rtt_msecs", "sample_rtt_msecs"), 0)
        self.events: list[tuple[float, str, int, str]] = []
        self.stats["concurrency_limit"] = self._limit
        if config.samples_min_rtt:
            self._enter_window(start_time, "initial")
        else:
            self._min_rtt_us = _to_ms(config.fixed_value) * 1000  # type: ignore[arg-type]
            self.stats["min_rtt_msecs"] = self._min_rtt_us // 1000
        self._sample_due = self._arm(start_time + _to_ms(config.concurrency_update_interval) / 1e3)

    @property
    def limit(self) -> int:
        """The concurrency limit after the last input."""
        return self._limit

    @property
    def in_flight(self) -> int:
        """Admitted requests not yet answered or cancelled (``num_rq_outstanding_``)."""
        return self._in_flight

    @property
    def in_min_rtt_window(self) -> bool:
        """Whether a minRTT measurement is under way."""
        return self._in_window

    @property
    def min_rtt(self) -> float | None:
        """The last minRTT in seconds (the fixed value, if configured); None before the first."""
        return None if self._min_rtt_us is None else self._min_rtt_us / 1e6

    @property
    def sample_rtt(self) -> float | None:
        """The last sampleRTT in seconds; None before the first limit update."""
        return None if self._sample_rtt_us is None else self._sample_rtt_us / 1e6

    def next_timer(self) -> float | None:
        """Time (s) of the next timer: a limit update or the start of a measurement."""
        due = [t for t, _ in filter(None, (self._sample_due, self._min_rtt_due))]
        return min(due) if due else None

    def on_timer(self, now: float) -> None:
        """Fire every timer due at or before ``now`` (s), each at its due time."""
        self._advance(now)

    def try_acquire(self, now: float) -> bool:
        """Admit a request arriving at ``now`` (s) if ``in_flight < limit`` (and count it).

        False means the local reply (``concurrency_limit_exceeded_status``) and ``rq_blocked``.
        """
        self._advance(now)
        if not self.config.enabled:
            return True
        if self._in_flight < self._limit:
            self._in_flight += 1
            return True
        self.stats["rq_blocked"] += 1
        return False

    def on_response(self, now: float, rtt: float) -> None:
        """An admitted request's response completed at ``now`` (s), ``rtt`` (s) after admission.

        Its latency is a sample unless the request was admitted before the latest measurement
        began; a sample that completes a measurement ends it here.
        """
        self._advance(now)
        if not self.config.enabled:
            return
        if rtt < 0:
            raise ValueError(f"rtt must be >= 0 seconds, got {rtt}")
        self._release()
        if now - rtt < self._epoch - _EPS:
            return  # recordLatencySample: "Disregard samples from requests started in the
            # previous minRTT window" (they would skew minRTT upwards, envoy PR #11579).
        self._samples.append(rtt)
        if self._in_window and len(self._samples) >= self.config.request_count:
            self._end_window(now)

    def on_cancel(self, now: float) -> None:
        """An admitted request ended at ``now`` (s) without a complete response: its slot is
        freed and no sample is taken (``cancelLatencySample``)."""
        self._advance(now)
        if self.config.enabled:
            self._release()

    # -- internals --------------------------------------------------------------------------

    def _release(self) -> None:
        if self._in_flight == 0:
            raise RuntimeError("no admitted request is in flight")
        self._in_flight -= 1

    def _arm(self, due: float) -> tuple[float, int]:
        self._arm_seq += 1
        return (due, self._arm_seq)

    def _advance(self, now: float) -> None:
        if now < self._last - _EPS:
            raise ValueError(f"time went backwards: {now} s after {self._last} s")
        self._last = max(self._last, now)
        while True:
            timers = [(d, name) for d, name in ((self._sample_due, "sample"),
                                                (self._min_rtt_due, "min_rtt")) if d is not None]
            if not timers:
                return
            (due, _), name = min(timers)
            if due > now + _EPS:
                return
            if name == "sample":
                self._sample_due = None
                self._on_sample_timer(due)
            else:
                self._min_rtt_due = None
                self._enter_window(due, self._min_rtt_reason)

    def _on_sample_timer(self, t: float) -> None:
        if self._in_window:
            # The measurement re-arms this timer when it ends; Envoy drops it meanwhile.
            return
        if self._samples:  # resetSampleWindow: an empty window changes nothing
            self._sample_rtt_us = _micros(
                _percentile(self._samples, self.config.sample_aggregate_percentile))
            self._samples.clear()
            self.stats["sample_rtt_msecs"] = self._sample_rtt_us // 1000
            self._update_limit(t, self._new_limit())
        self._sample_due = self._arm(t + _to_ms(self.config.concurrency_update_interval) / 1e3)

    def _new_limit(self) -> int:
        """``calculateNewLimit``."""
        cfg = self.config
        min_rtt, sample_rtt = self._min_rtt_us, self._sample_rtt_us
        assert min_rtt is not None and sample_rtt is not None
        buffered = min_rtt + min_rtt * cfg.buffer / 100
        # The reference's gradient has no bounds; Envoy clamps it to [0.5, 2.0] so that one window
        # can at most halve or double the limit. A zero sampleRTT gives Envoy inf (or NaN), which
        # its clamp turns into 2.0.
        raw = buffered / sample_rtt if sample_rtt > 0 else math.inf
        gradient = max(_GRADIENT_MIN, min(_GRADIENT_MAX, raw))
        self.stats["gradient"] = int(gradient * 1000)  # the gauge is gradient × 1000 (#31695)
        # The reference says gradient × old + sqrt(old); Envoy's headroom is the square root of
        # the scaled limit, sqrt(gradient × old), and the sum is truncated to an integer.
        scaled = self._limit * gradient
        headroom = math.sqrt(scaled)
        self.stats["burst_queue_size"] = int(headroom)
        return max(cfg.limit_floor, min(cfg.max_concurrency_limit, int(scaled + headroom)))

    def _update_limit(self, t: float, new: int) -> None:
        """``updateConcurrencyLimit``, with its count of windows at the minimum."""
        old, floor = self._limit, self.config.limit_floor
        self._limit = new
        self.stats["concurrency_limit"] = new
        if new != old:
            self.events.append((t, "concurrency_limit_changed", _NO_HOST, f"{old}->{new}"))
        if not self._in_window and old == floor and new == floor:
            self._at_minimum += 1
        else:
            self._at_minimum = 0
        if self._at_minimum >= _WINDOWS_AT_MINIMUM and self.config.samples_min_rtt:
            # A limit stuck at the minimum suggests a stale minRTT: Envoy re-arms the minRTT timer
            # at 0 ms (dropping the scheduled one), so the measurement starts at this instant.
            self._min_rtt_due = self._arm(t)
            self._min_rtt_reason = "limit_at_minimum"

    def _enter_window(self, t: float, reason: str) -> None:
        """``enterMinRTTSamplingWindow``."""
        if self._in_window:
            return
        self._in_window = True
        self.stats["min_rtt_calculation_active"] = 1
        self.events.append((t, "min_rtt_window_started", _NO_HOST, reason))
        self._deferred_limit = self._limit
        if self.config.min_concurrency_limit is None:
            self._update_limit(t, self.config.min_concurrency)
        else:
            self._at_minimum = 0  # a separate floor: the limit is left as it is (filter docs)
        # Samples from before the measurement may not represent the minRTT.
        self._samples.clear()
        self._epoch = t

    def _end_window(self, now: float) -> None:
        """``updateMinRTT``: minRTT from the window, the limit restored, both timers re-armed."""
        cfg = self.config
        self._min_rtt_us = _micros(_percentile(self._samples, cfg.sample_aggregate_percentile))
        self._samples.clear()
        self.stats["min_rtt_msecs"] = self._min_rtt_us // 1000
        if cfg.min_concurrency_limit is None:
            self._update_limit(now, self._deferred_limit)  # still in the window: resets the count
        else:
            self._at_minimum = 0
        self._in_window = False
        self._deferred_limit = 0
        self.stats["min_rtt_calculation_active"] = 0
        self.events.append((now, "min_rtt_measured", _NO_HOST,
                            f"min_rtt={self._min_rtt_us / 1000:.3f}ms"))
        self._min_rtt_due = self._arm(now + self._jittered_interval_ms() / 1e3)
        self._min_rtt_reason = "interval"
        self._sample_due = self._arm(now + _to_ms(cfg.concurrency_update_interval) / 1e3)

    def _jittered_interval_ms(self) -> int:
        """``applyJitter``: ``interval + random() % ceil(interval × jitter)``, in whole ms."""
        interval_ms = _to_ms(self.config.interval)  # type: ignore[arg-type]
        fraction = self.config.jitter / 100
        if fraction == 0:
            return interval_ms
        jitter_range = math.ceil(interval_ms * fraction)
        draw = math.floor(self._uniform() * jitter_range)  # type: ignore[misc]
        return interval_ms + min(jitter_range - 1, draw)


# -- admission control -------------------------------------------------------------------------

@dataclass(frozen=True)
class AdmissionControlConfig:
    """``envoy.extensions.filters.http.admission_control.v3.AdmissionControl``, Envoy's
    defaults (§9.2).

    Parameters
    ----------
    http_success_status : tuple of (int, int) or None, optional
        ``success_criteria.http_criteria.http_success_status``: half-open ranges
        ``[start, end)`` within [100, 600). None: every status below 500 is a success.
    grpc_success_status : frozenset of int, optional
        ``success_criteria.grpc_criteria.grpc_success_status`` (codes 0-16); default
        :data:`DEFAULT_GRPC_SUCCESS_STATUS`.
    sampling_window : float, optional
        Seconds (30); Envoy truncates it to whole seconds (``config.cc``: ms / 1000), which must
        leave at least 1 s.
    aggression : float, optional
        ``aggression.default_value`` (1.0); below 1.0 it acts as 1.0.
    sr_threshold : float, optional
        Percent (95), in [1, 100] (``config.cc`` refuses < 1 %; above 100 acts as 100).
    rps_threshold : int, optional
        No rejection while the window's average RPS is below this (0).
    max_rejection_probability : float, optional
        Percent (80), in [0, 100].
    enabled : bool, optional
        ``enabled.default_value``; False makes the filter a pass-through.
    """

    http_success_status: tuple[tuple[int, int], ...] | None = None
    grpc_success_status: frozenset[int] = DEFAULT_GRPC_SUCCESS_STATUS
    sampling_window: float = 30.0
    aggression: float = 1.0
    sr_threshold: float = 95.0
    rps_threshold: int = 0
    max_rejection_probability: float = 80.0
    enabled: bool = True

    def __post_init__(self) -> None:
        http = "success_criteria.http_criteria.http_success_status"
        if self.http_success_status is not None:
            if not self.http_success_status:
                raise _fail(http, "needs at least one range")
            for start, end in self.http_success_status:
                if not 100 <= start < end <= 600:
                    raise _fail(http, f"invalid HTTP range: [{start}, {end})")
        bad = sorted(c for c in self.grpc_success_status if not 0 <= c <= 16)
        if bad:
            raise _fail("success_criteria.grpc_criteria.grpc_success_status",
                        f"invalid gRPC code {bad[0]}")
        if self.window_seconds < 1:
            # Envoy accepts it, but averageRps() then divides by 0 s.
            raise _fail("sampling_window", "must be at least 1s once truncated to whole seconds")
        if not self.sr_threshold >= 1.0:
            raise _fail("sr_threshold", "Success rate threshold cannot be less than 1.0%.")
        if not 0 <= self.max_rejection_probability <= 100:
            raise _fail("max_rejection_probability", "must be a percentage in [0, 100]")
        if not (isinstance(self.rps_threshold, int) and self.rps_threshold >= 0):
            raise _fail("rps_threshold", f"must be an integer >= 0, got {self.rps_threshold!r}")
        if not math.isfinite(self.aggression):
            raise _fail("aggression", "must be a finite number")

    @property
    def window_seconds(self) -> int:
        """The sliding window in whole seconds, as Envoy truncates ``sampling_window``."""
        return _to_ms(self.sampling_window) // 1000

    def is_http_success(self, status: int) -> bool:
        """Whether an HTTP response status counts as a success."""
        if self.http_success_status is None:
            return status < 500
        return any(start <= status < end for start, end in self.http_success_status)

    @classmethod
    def from_envoy(cls, typed_config: Mapping[str, Any]) -> AdmissionControlConfig:
        """Build from the filter's ``typed_config`` in Envoy's JSON/YAML shape.

        ``success_criteria`` (required, as Envoy's ``evaluation_criteria`` oneof; ``{}`` or
        nulls for the defaults) ``{http_criteria {http_success_status [{start, end}]},
        grpc_criteria {grpc_success_status []}}``, ``sampling_window`` (``"30s"``, float
        seconds or ``{seconds, nanos}``), ``aggression {default_value}``, ``sr_threshold
        {default_value {value}}``, ``rps_threshold {default_value}``,
        ``max_rejection_probability {default_value {value}}``, ``enabled {default_value}``.
        Runtime keys are ignored (the default value is used); bare numbers are accepted too.

        Raises
        ------
        ValueError
            Naming the field path.
        """
        top = _fields(typed_config, "typed_config", (
            "enabled", "success_criteria", "sampling_window", "aggression", "sr_threshold",
            "rps_threshold", "max_rejection_probability"))
        if "success_criteria" not in top:
            raise _fail("success_criteria", "is required (Envoy: evaluation criteria not set)")
        criteria = _block(top, "success_criteria", "success_criteria",
                          ("http_criteria", "grpc_criteria"))
        kwargs: dict[str, Any] = {"enabled": _feature_flag(top.get("enabled"), "enabled")}
        http = _block(criteria, "http_criteria", "success_criteria.http_criteria",
                      ("http_success_status",))
        if criteria.get("http_criteria") is not None:  # null means unset, as in Envoy's tests
            path = "success_criteria.http_criteria.http_success_status"
            ranges = http.get("http_success_status") or []
            kwargs["http_success_status"] = tuple(
                (_integer(r, f"{path}[{i}].start", "start"), _integer(r, f"{path}[{i}].end", "end"))
                for i, r in enumerate(ranges))
        grpc = _block(criteria, "grpc_criteria", "success_criteria.grpc_criteria",
                      ("grpc_success_status",))
        if criteria.get("grpc_criteria") is not None:
            path = "success_criteria.grpc_criteria.grpc_success_status"
            codes = grpc.get("grpc_success_status") or []
            if not codes:
                raise _fail(path, "needs at least one code")
            kwargs["grpc_success_status"] = frozenset(
                _integer(c, f"{path}[{i}]") for i, c in enumerate(codes))
        if top.get("sampling_window") is not None:
            kwargs["sampling_window"] = _duration(top["sampling_window"], "sampling_window")
        for key in ("aggression", "sr_threshold", "max_rejection_probability"):
            if top.get(key) is not None:
                kwargs[key] = _number(_runtime(top[key]), f"{key}.default_value")
        if top.get("rps_threshold") is not None:
            kwargs["rps_threshold"] = _integer(_runtime(top["rps_threshold"]),
                                               "rps_threshold.default_value")
        return cls(**kwargs)


class AdmissionController:
    """Envoy's admission control filter on a client proxy, one worker thread's view (§9.2).

    The engine calls, with the simulated time ``now`` (s):

    - :meth:`allow` when a request reaches the filter (health checks excluded). False means a
      local 503 with details :data:`ADMISSION_CONTROL_DETAILS`; the request never goes upstream.
    - :meth:`on_result` when the response headers of an admitted request come back (for gRPC,
      with its ``grpc-status``). Never for a rejected request: Envoy does not record those
      (``record_request_ = false``), so the probability falls back to 0 when the upstream
      recovers. Not for a reset either: the filter cannot see resets (its TODO), so they count
      neither way (pass ``status=None``, or do not call).

    Window (``ThreadLocalControllerImpl``): buckets of about one second. A bucket starts at the
    first record or probability query at least 1 s after the previous bucket started (or when
    there is none), so buckets are not aligned on whole seconds; a bucket leaves the window once
    it is ``sampling_window`` old. The probability of rejecting a request::

        p = (total - successes / sr_threshold) / (total + 1)
        p = min(p ** (1 / max(aggression, 1)), max_rejection_probability), 0 when p <= 0

    The request is rejected when ``10000 p > floor(10000 u)`` (Envoy's 4 significant figures),
    one ``u`` drawn only when p > 0 (Envoy draws for every request; the outcome is the same). No
    rejection, and no draw, while the window's average RPS is below ``rps_threshold``: that
    average is ``total // max(window, age of the oldest bucket in whole s)``, computed before
    stale buckets are dropped, as ``averageRps`` does.

    Envoy keeps one window per worker thread (2 in an Istio sidecar by default): build one
    controller per thread and spread the requests, or accept one controller per proxy as an
    approximation (it sees N times the RPS of one thread). Docs:
    https://www.envoyproxy.io/docs/envoy/latest/configuration/http/http_filters/
    admission_control_filter (the per-thread note and the aggression curves).

    Parameters
    ----------
    config : AdmissionControlConfig
    uniform : callable
        ``uniform() -> float`` in [0, 1).

    Attributes
    ----------
    stats : dict of str to int
        ``http.<stat_prefix>.admission_control.{rq_rejected, rq_success, rq_failure}``.
    events : list of tuple
        ``(t, kind, -1, detail)``: ``"admission_shedding_started"`` when a request first meets
        a rejection probability > 0 (detail ``"p=<p>"``), ``"admission_shedding_stopped"`` when
        one meets 0 again.
    """

    __slots__ = ("_buckets", "_last", "_requests", "_shedding", "_successes", "_uniform",
                 "config", "events", "stats")

    def __init__(self, config: AdmissionControlConfig, uniform: Callable[[], float]):
        self.config = config
        self._uniform = uniform
        self._buckets: deque[list[float]] = deque()  # [start time, requests, successes]
        self._requests = 0
        self._successes = 0
        self._shedding = False
        self._last = -math.inf
        self.stats: dict[str, int] = {"rq_rejected": 0, "rq_success": 0, "rq_failure": 0}
        self.events: list[tuple[float, str, int, str]] = []

    def allow(self, now: float) -> bool:
        """May a request arriving at ``now`` (s) go upstream? False counts ``rq_rejected``."""
        self._check_time(now)
        if not self.config.enabled:
            return True
        if self.average_rps(now) < self.config.rps_threshold:
            self._note_shedding(now, 0.0)
            return True
        self._update_window(now)
        p = self._probability(self._requests, self._successes)
        self._note_shedding(now, p)
        if p <= 0:
            return True
        if _ACCURACY * p > math.floor(self._uniform() * _ACCURACY):
            self.stats["rq_rejected"] += 1
            return False
        return True

    def on_result(self, now: float, status: int | None, grpc_status: int | None = None) -> None:
        """Record the response of an admitted request at ``now`` (s).

        Parameters
        ----------
        now : float
            Seconds.
        status : int or None
            HTTP status; None for a reset (not recorded).
        grpc_status : int or None, optional
            ``grpc-status`` of a gRPC response (HTTP 200 with ``application/grpc``, or
            trailers-only); when given it decides success instead of ``status``. A gRPC call
            that failed with a non-200 HTTP status is judged by ``status``.
        """
        self._check_time(now)
        if not self.config.enabled:
            return
        if grpc_status is not None:
            success = grpc_status in self.config.grpc_success_status
        elif status is None:
            return
        else:
            success = self.config.is_http_success(status)
        self._update_window(now)
        bucket = self._buckets[-1]
        bucket[1] += 1
        self._requests += 1
        if success:
            bucket[2] += 1
            self._successes += 1
        self.stats["rq_success" if success else "rq_failure"] += 1

    def rejection_probability(self, now: float) -> float:
        """The probability that :meth:`allow` at ``now`` (s) rejects, in [0, max]; 0 under the
        RPS threshold. Changes nothing."""
        if not self.config.enabled or self.average_rps(now) < self.config.rps_threshold:
            return 0.0
        return self._probability(*self.counts(now))

    def counts(self, now: float) -> tuple[int, int]:
        """``(requests, successes)`` in the window at ``now`` (s). Changes nothing."""
        window = self.config.window_seconds
        live = [b for b in self._buckets if now - b[0] < window - _EPS]
        return int(sum(b[1] for b in live)), int(sum(b[2] for b in live))

    def average_rps(self, now: float) -> int:
        """``averageRps``: requests over ``max(window, age of the oldest bucket)`` seconds,
        integer division, over the buckets still held (stale ones included)."""
        if not self._buckets or self._requests == 0:
            return 0
        age = math.floor(now - self._buckets[0][0] + _EPS)  # duration_cast<seconds> truncates
        return self._requests // max(self.config.window_seconds, age)

    # -- internals --------------------------------------------------------------------------

    def _check_time(self, now: float) -> None:
        if now < self._last - _EPS:
            raise ValueError(f"time went backwards: {now} s after {self._last} s")
        self._last = max(self._last, now)

    def _update_window(self, now: float) -> None:
        """``maybeUpdateHistoricalData``: drop stale buckets, start a new one if due."""
        window = self.config.window_seconds
        while self._buckets and now - self._buckets[0][0] >= window - _EPS:
            _, requests, successes = self._buckets.popleft()
            self._requests -= int(requests)
            self._successes -= int(successes)
        if not self._buckets or now - self._buckets[-1][0] >= 1.0 - _EPS:
            self._buckets.append([now, 0, 0])

    def _probability(self, total: int, successes: int) -> float:
        """``shouldRejectRequest``'s probability, 0 where Envoy's arithmetic gives a negative
        number or NaN (both reject nothing)."""
        cfg = self.config
        p = (total - successes / (min(cfg.sr_threshold, 100.0) / 100)) / (total + 1)
        if p <= 0:
            return 0.0
        aggression = max(1.0, cfg.aggression)
        if aggression != 1.0:
            p **= 1.0 / aggression
        return min(p, cfg.max_rejection_probability / 100)

    def _note_shedding(self, now: float, p: float) -> None:
        if (p > 0) != self._shedding:
            self._shedding = p > 0
            if self._shedding:
                self.events.append((now, "admission_shedding_started", _NO_HOST, f"p={p:.4f}"))
            else:
                self.events.append((now, "admission_shedding_stopped", _NO_HOST, "p=0"))
