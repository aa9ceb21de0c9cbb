"""Envoy's admission control filter, as a plain state machine.

Follows ``../shared/envoy-semantics.md`` §9.2. Where the reference and Envoy's code disagree, the
code wins and the comment at that spot says so. Read in Envoy (``envoyproxy/envoy``):
``source/extensions/filters/http/admission_control/admission_control.cc``: ``decodeHeaders``,
``encodeHeaders``, ``shouldRejectRequest``; ``thread_local_controller.{h,cc}``
(``ThreadLocalControllerImpl``); ``evaluators/success_criteria_evaluator.cc``; ``config.cc``.

Every call takes the simulated time ``now`` in float seconds, in non-decreasing order. Randomness
comes from a ``uniform() -> float in [0, 1)`` callable given to the constructor.
:class:`AdmissionController` is the filter of one worker thread of a client proxy (Envoy keeps
the success-rate window per thread).
"""

from __future__ import annotations

import math
from collections import deque
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
    _number,
    _runtime,
    _to_ms,
)

__all__ = [
    "ADMISSION_CONTROL_DETAILS",
    "DEFAULT_GRPC_SUCCESS_STATUS",
    "AdmissionControlConfig",
    "AdmissionController",
]

#: ``%RESPONSE_CODE_DETAILS%`` of the admission control filter's local 503 (empty body).
ADMISSION_CONTROL_DETAILS = "denied_by_admission_control"
#: gRPC codes counted as successes when ``grpc_criteria`` is unset (``SuccessCriteriaEvaluator``):
#: OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
#: FAILED_PRECONDITION, OUT_OF_RANGE, UNIMPLEMENTED, UNAUTHENTICATED.
DEFAULT_GRPC_SUCCESS_STATUS = frozenset({0, 1, 2, 3, 5, 6, 7, 9, 11, 12, 16})

_EPS = 1e-9  # tolerance of time comparisons
_NO_HOST = -1  # the filter is not per host; events use -1 to fit the policies' events table
_ACCURACY = 10_000  # shouldRejectRequest: the draw has 4 significant figures


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
