"""Envoy's adaptive concurrency filter (gradient controller), as a plain state machine.

Follows ``../shared/envoy-semantics.md`` §9.1. Where the reference and Envoy's code disagree, the
code wins and the comment at that spot says so. Read in Envoy (``envoyproxy/envoy``):
``source/extensions/filters/http/adaptive_concurrency/controller/gradient_controller.cc``:
``GradientController::forwardingDecision``, ``recordLatencySample``, ``cancelLatencySample``,
``enterMinRTTSamplingWindow``, ``updateMinRTT``, ``resetSampleWindow``, ``calculateNewLimit``,
``updateConcurrencyLimit``, ``applyJitter``; ``adaptive_concurrency_filter.cc``:
``decodeHeaders``, ``encodeComplete``, ``onDestroy``, ``toErrorCode``.

Every call takes the simulated time ``now`` in float seconds, in non-decreasing order. Randomness
comes from a ``uniform() -> float in [0, 1)`` callable given to the constructor.
:class:`GradientController` is the filter of one proxy (Envoy shares one controller between its
worker threads), in front of the local service.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .envoy_config import (
    _block,
    _duration,
    _fail,
    _feature_flag,
    _fields,
    _integer,
    _micros,
    _number,
    _to_ms,
)

__all__ = ["ADAPTIVE_CONCURRENCY_DETAILS", "GradientController", "GradientControllerConfig"]

#: ``%RESPONSE_CODE_DETAILS%`` of the adaptive concurrency filter's local reply (body
#: ``reached concurrency limit``).
ADAPTIVE_CONCURRENCY_DETAILS = "reached_concurrency_limit"

_EPS = 1e-9  # tolerance of time comparisons (float sums must not miss a due timer)
_NO_HOST = -1  # the filter is not per host; events use -1 to fit the policies' events table
# Consecutive update windows at the minimum limit that force a new minRTT measurement
# (updateConcurrencyLimit: ``consecutive_min_concurrency_set_ >= 5``).
_WINDOWS_AT_MINIMUM = 5
_GRADIENT_MIN, _GRADIENT_MAX = 0.5, 2.0  # calculateNewLimit clamps the gradient to these

_GC = "gradient_controller_config"
_CLP = f"{_GC}.concurrency_limit_params"
_MRP = f"{_GC}.min_rtt_calc_params"


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
