"""Envoy outlier detection for one (client proxy, upstream cluster) pair, as a plain state machine.

Follows ``../shared/envoy-semantics.md`` §2 (counting, ejection decision, ejection time, decay,
success-rate and failure-percentage sweeps, counters) and §3.4 (``update_merge_window``), which
were read from Envoy's ``source/common/upstream/outlier_detection_impl.cc`` (function names are
cited below) and checked against a real Envoy 1.40.

The engine drives a :class:`OutlierDetector` with three calls, all taking the simulated time
``now`` in float seconds, in non-decreasing order:

- :meth:`OutlierDetector.on_result` for every finished upstream attempt (consecutive-error
  detectors fire inline, as they do in Envoy up to a cross-thread post);
- :meth:`OutlierDetector.on_tick` at every :meth:`OutlierDetector.next_tick` (Envoy's interval
  timer, which runs from creation whatever the ejections);
- :meth:`OutlierDetector.healthy_hosts` when the load balancer picks a host.

Randomness (enforcement chances, ejection jitter) comes from an injected ``uniform()`` returning
U[0, 1), so the detector holds no random state of its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

__all__ = [
    "CONSECUTIVE_5XX",
    "CONSECUTIVE_GATEWAY_FAILURE",
    "CONSECUTIVE_LOCAL_ORIGIN_FAILURE",
    "DETECTOR_TYPES",
    "FAILURE_PERCENTAGE",
    "LOCAL_ORIGIN_FAILURE_PERCENTAGE",
    "LOCAL_ORIGIN_SUCCESS_RATE",
    "SUCCESS_RATE",
    "Bucket",
    "HostState",
    "IstioOutlier",
    "OutlierConfig",
    "OutlierDetector",
    "success_rate_threshold",
]

# Detector (ejection) types, named as in Envoy's stats (§2.6).
CONSECUTIVE_5XX = "consecutive_5xx"
CONSECUTIVE_GATEWAY_FAILURE = "consecutive_gateway_failure"
SUCCESS_RATE = "success_rate"
FAILURE_PERCENTAGE = "failure_percentage"
CONSECUTIVE_LOCAL_ORIGIN_FAILURE = "consecutive_local_origin_failure"
LOCAL_ORIGIN_SUCCESS_RATE = "local_origin_success_rate"
LOCAL_ORIGIN_FAILURE_PERCENTAGE = "local_origin_failure_percentage"
DETECTOR_TYPES = (
    CONSECUTIVE_5XX,
    CONSECUTIVE_GATEWAY_FAILURE,
    SUCCESS_RATE,
    FAILURE_PERCENTAGE,
    CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
    LOCAL_ORIGIN_SUCCESS_RATE,
    LOCAL_ORIGIN_FAILURE_PERCENTAGE,
)

_GATEWAY_ERRORS = frozenset((502, 503, 504))  # Envoy CodeUtility::isGatewayError
_LOCAL_ORIGIN_CODES = frozenset((503, 504))  # resultToHttpCode: connect failure, timeout
# Tolerance of time comparisons: float sums such as 0.1 + 0.2 must not push an un-ejection to
# the next tick. Envoy's monotonic clock counts nanoseconds.
_EPS = 1e-9

_PERCENT_FIELDS = (
    "enforcing_consecutive_5xx", "enforcing_consecutive_gateway_failure",
    "enforcing_consecutive_local_origin_failure", "enforcing_success_rate",
    "enforcing_local_origin_success_rate", "enforcing_failure_percentage",
    "enforcing_failure_percentage_local_origin", "failure_percentage_threshold",
)
_COUNT_FIELDS = (
    "consecutive_5xx", "consecutive_gateway_failure", "consecutive_local_origin_failure",
    "max_ejection_percent", "success_rate_minimum_hosts", "success_rate_request_volume",
    "success_rate_stdev_factor", "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
)


@dataclass(frozen=True)
class OutlierConfig:
    """Envoy's ``cluster.outlier_detection`` (v3), with Envoy's defaults.

    Durations are float seconds, percentages are integers 0-100, counts are integers. Field names
    are Envoy's. Consecutive thresholds fire when a counter *equals* them, so 0 disables that
    detector. ``update_merge_window`` is not an outlier field but Envoy's
    ``common_lb_config.update_merge_window``: it decides when the load balancer sees health
    changes (see :meth:`OutlierDetector.healthy_hosts`); 0 disables merging.

    ``max_ejection_time`` left as None takes Envoy's default ``max(300 s, base_ejection_time)``;
    after construction it is always a float. ``max_ejection_percent`` above 100 acts as 100, as in
    Envoy's ``ejectHost``.
    """

    consecutive_5xx: int = 5
    enforcing_consecutive_5xx: int = 100
    consecutive_gateway_failure: int = 5
    enforcing_consecutive_gateway_failure: int = 0
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failure: int = 5
    enforcing_consecutive_local_origin_failure: int = 100
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_time: float | None = None
    max_ejection_time_jitter: float = 0.0
    max_ejection_percent: int = 10
    always_eject_one_host: bool = False
    success_rate_minimum_hosts: int = 5
    success_rate_request_volume: int = 100
    success_rate_stdev_factor: int = 1900
    enforcing_success_rate: int = 100
    enforcing_local_origin_success_rate: int = 100
    failure_percentage_threshold: int = 85
    failure_percentage_minimum_hosts: int = 5
    failure_percentage_request_volume: int = 50
    enforcing_failure_percentage: int = 0
    enforcing_failure_percentage_local_origin: int = 0
    update_merge_window: float = 1.0

    def __post_init__(self) -> None:
        if self.max_ejection_time is None:
            object.__setattr__(self, "max_ejection_time", max(300.0, self.base_ejection_time))
        if self.interval <= 0 or self.base_ejection_time <= 0:
            raise ValueError("interval and base_ejection_time must be > 0 seconds")
        if min(self.max_ejection_time, self.max_ejection_time_jitter, self.update_merge_window) < 0:
            raise ValueError("durations must be >= 0 seconds")
        for name in _COUNT_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in _PERCENT_FIELDS:
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be a percentage in [0, 100]")

    @classmethod
    def from_istio(cls, spec: Mapping[str, Any]) -> IstioOutlier:
        """Translate an Istio DestinationRule ``outlierDetection`` block as istiod does.

        Follows istiod's ``applyOutlierDetection`` (reference §2.1 and §11): a field left unset
        keeps Envoy's default, except that Istio always writes ``enforcing_success_rate = 0``
        (and ``enforcing_local_origin_success_rate = 0`` when split) and always writes the
        panic threshold.

        Parameters
        ----------
        spec : mapping
            Istio field names. Durations (``interval``, ``baseEjectionTime``) are float seconds,
            already parsed. ``consecutive5xxErrors`` / ``consecutiveGatewayErrors`` set the
            threshold and 100 % enforcement (0 sets both to 0, disabling the detector);
            ``consecutiveLocalOriginFailures`` applies only when ``splitExternalLocalOriginErrors``
            is true and it is > 0; ``maxEjectionPercent`` applies only when > 0;
            ``minHealthPercent`` (default 0) becomes the panic threshold.

        Returns
        -------
        IstioOutlier
            ``(config, healthy_panic_threshold)``; the threshold is a percentage for the
            cluster's load balancer (``common_lb_config.healthy_panic_threshold``).

        Raises
        ------
        ValueError
            For an unknown field, or for ``consecutiveErrors`` / ``outlierDetectionHttpErrorCodes``,
            whose translation is not modelled.
        """
        unknown = set(spec) - _ISTIO_FIELDS
        if unknown:
            raise ValueError(f"outlierDetection fields not modelled: {sorted(unknown)}")
        out: dict[str, Any] = {"enforcing_success_rate": 0}
        for istio_name, value_name, enforcing_name in (
            ("consecutive5xxErrors", "consecutive_5xx", "enforcing_consecutive_5xx"),
            ("consecutiveGatewayErrors", "consecutive_gateway_failure",
             "enforcing_consecutive_gateway_failure"),
        ):
            if spec.get(istio_name) is not None:  # a wrapper type: unset differs from 0
                value = int(spec[istio_name])
                out[value_name] = value
                out[enforcing_name] = 100 if value > 0 else 0
        if spec.get("splitExternalLocalOriginErrors", False):
            out["split_external_local_origin_errors"] = True
            local = int(spec.get("consecutiveLocalOriginFailures") or 0)
            if local > 0:
                out["consecutive_local_origin_failure"] = local
                out["enforcing_consecutive_local_origin_failure"] = 100
            out["enforcing_local_origin_success_rate"] = 0
        if spec.get("interval") is not None:
            out["interval"] = float(spec["interval"])
        if spec.get("baseEjectionTime") is not None:
            out["base_ejection_time"] = float(spec["baseEjectionTime"])
        if int(spec.get("maxEjectionPercent") or 0) > 0:
            out["max_ejection_percent"] = int(spec["maxEjectionPercent"])
        return IstioOutlier(cls(**out), float(spec.get("minHealthPercent") or 0))


_ISTIO_FIELDS = frozenset((
    "consecutive5xxErrors", "consecutiveGatewayErrors", "consecutiveLocalOriginFailures",
    "splitExternalLocalOriginErrors", "interval", "baseEjectionTime", "maxEjectionPercent",
    "minHealthPercent",
))


class IstioOutlier(NamedTuple):
    """What an Istio ``outlierDetection`` block becomes: the detector config and the cluster's
    panic threshold in percent (Istio writes ``minHealthPercent``, default 0 = panic off)."""

    config: OutlierConfig
    healthy_panic_threshold: float


@dataclass(slots=True)
class Bucket:
    """Request counts of one host over one interval (Envoy's ``SuccessRateAccumulatorBucket``)."""

    success: int = 0
    total: int = 0


@dataclass(slots=True)
class HostState:
    """What the detector knows about one host (Envoy's ``DetectorHostMonitorImpl``).

    Times are float seconds of simulated time, None before the first ejection / un-ejection.
    ``backoff`` is Envoy's ``ejectTimeBackoff`` (the multiplier *k* of the reference); it is
    not ``num_ejections``, which only ever grows. ``jitter`` (seconds) is the one drawn at the
    last ejection. ``sr_*`` are the external-origin success-rate buckets, ``local_sr_*`` the
    local-origin ones (used in split mode only); ``*_previous`` is the last full interval.
    """

    consecutive_5xx: int = 0
    consecutive_gateway_failure: int = 0
    consecutive_local_origin_failure: int = 0
    ejected: bool = False
    ejection_type: str | None = None
    backoff: int = 0
    num_ejections: int = 0
    jitter: float = 0.0
    last_ejection_time: float | None = None
    last_unejection_time: float | None = None
    sr_current: Bucket = field(default_factory=Bucket)
    sr_previous: Bucket = field(default_factory=Bucket)
    local_sr_current: Bucket = field(default_factory=Bucket)
    local_sr_previous: Bucket = field(default_factory=Bucket)

    def reset_consecutive(self) -> None:
        """Zero the three consecutive-failure counters (done on un-ejection)."""
        self.consecutive_5xx = 0
        self.consecutive_gateway_failure = 0
        self.consecutive_local_origin_failure = 0


def success_rate_threshold(rates: Iterable[float], stdev_factor: float) -> tuple[float, float]:
    """Mean and ejection threshold of hosts' success rates (``successRateEjectionThreshold``).

    Parameters
    ----------
    rates : iterable of float
        Success rates in percent of the qualifying hosts (at least one).
    stdev_factor : float
        ``success_rate_stdev_factor / 1000`` (1.9 by default).

    Returns
    -------
    tuple of float
        ``(mean, mean - stdev_factor * stdev)`` in percent, with the *population* standard
        deviation. A host whose rate is strictly below the threshold is an outlier.
    """
    rates = list(rates)
    mean = sum(rates) / len(rates)
    stdev = math.sqrt(sum((r - mean) ** 2 for r in rates) / len(rates))
    return mean, mean - stdev_factor * stdev


class OutlierDetector:
    """Outlier detection of one client proxy for one upstream cluster of ``n_hosts`` hosts.

    Parameters
    ----------
    n_hosts : int
        Hosts of the cluster, all priorities together, indexed ``0 .. n_hosts-1``.
    config : OutlierConfig
        Detector settings.
    uniform : callable
        ``uniform() -> float`` in [0, 1): enforcement chances and ejection jitter.
    start_time : float, optional
        Creation time in seconds; the interval timer first fires at ``start_time + interval``.

    Attributes
    ----------
    hosts : list of HostState
        Per-host state, readable by tests and the engine.
    stats : dict of str to int
        Envoy's ``cluster.<c>.outlier_detection.*`` counters: ``ejections_active`` (a gauge),
        ``ejections_overflow``, ``ejections_enforced_total`` and, for every type of
        :data:`DETECTOR_TYPES`, ``ejections_detected_<type>`` and ``ejections_enforced_<type>``.
    events : list of tuple
        ``(t, kind, host, detail)`` with kind ``"ejection"`` or ``"unejection"`` and detail the
        detector type that ejected the host; ``t`` is when the detector changed state.
    """

    def __init__(self, n_hosts: int, config: OutlierConfig, uniform: Callable[[], float],
                 start_time: float = 0.0):
        if n_hosts < 0:
            raise ValueError("n_hosts must be >= 0")
        self.config = config
        self.hosts = [HostState() for _ in range(n_hosts)]
        self.stats: dict[str, int] = {
            "ejections_active": 0, "ejections_overflow": 0, "ejections_enforced_total": 0,
            **{f"ejections_detected_{t}": 0 for t in DETECTOR_TYPES},
            **{f"ejections_enforced_{t}": 0 for t in DETECTOR_TYPES},
        }
        self.events: list[tuple[float, str, int, str]] = []
        self._uniform = uniform
        self._next_tick = start_time + config.interval
        self._enforcing = {
            CONSECUTIVE_5XX: config.enforcing_consecutive_5xx,
            CONSECUTIVE_GATEWAY_FAILURE: config.enforcing_consecutive_gateway_failure,
            SUCCESS_RATE: config.enforcing_success_rate,
            FAILURE_PERCENTAGE: config.enforcing_failure_percentage,
            CONSECUTIVE_LOCAL_ORIGIN_FAILURE: config.enforcing_consecutive_local_origin_failure,
            LOCAL_ORIGIN_SUCCESS_RATE: config.enforcing_local_origin_success_rate,
            LOCAL_ORIGIN_FAILURE_PERCENTAGE: config.enforcing_failure_percentage_local_origin,
        }
        self._max_ejection_time: float = config.max_ejection_time  # type: ignore[assignment]
        self._jitter_ms = round(config.max_ejection_time_jitter * 1000)  # Envoy keeps ms
        # update_merge_window (§3.4): what the load balancer sees, when it last got an update,
        # and when a merged update is due (None: the LB is up to date).
        self._ejected: set[int] = set()
        self._lb_ejected: frozenset[int] = frozenset()
        self._last_applied = -math.inf
        #: Time (s) at which a merged health update reaches the load balancer, or None. Read
        #: by the engine before every pick, so a plain attribute (do not set it from outside).
        self.pending_update_at: float | None = None
        #: Bumped on every ejection or un-ejection, so a load balancer can cache its list of
        #: available hosts and rebuild it only when this (or a due merged update) changes.
        self.changes = 0

    # -- queries ---------------------------------------------------------------------------

    @property
    def ejected_count(self) -> int:
        """Hosts currently ejected (Envoy's ``ejections_active`` gauge)."""
        return self.stats["ejections_active"]

    def is_ejected(self, host: int) -> bool:
        """Whether ``host`` is ejected in the detector (``FAILED_OUTLIER_CHECK`` is set).

        The load balancer may see this later; see :meth:`healthy_hosts`.
        """
        return self.hosts[host].ejected

    def uneject_due(self, host: int) -> float | None:
        """Earliest time (s) at which ``host`` may return: ``last_ejection + min(base·k, max)
        + jitter``; it returns at the first tick at or after that. None if not ejected."""
        state = self.hosts[host]
        if not state.ejected:
            return None
        return state.last_ejection_time + self._ejection_time(state)

    def next_tick(self) -> float:
        """Time (s) at which the engine must call :meth:`on_tick` next."""
        return self._next_tick

    def healthy_hosts(self, now: float) -> list[int]:
        """Hosts the load balancer treats as not ejected at ``now`` (before any panic rule).

        Models ``common_lb_config.update_merge_window`` (reference §3.4, Envoy
        ``ClusterManagerImpl::scheduleUpdate``). Every ejection or un-ejection is one health
        update. An update is delivered at once if more than ``update_merge_window`` seconds
        have passed since the last delivery (so the first one always is); otherwise it is held
        and delivered, merged with any others that follow, at ``last delivery + window``, and
        that becomes the last delivery. A delivery carries the detector's state at that moment.
        Several updates at one instant (hosts un-ejected on the same tick) are separate
        updates: the first is seen at once, the rest a window later. A window of 0 delivers
        every update at once.
        """
        self._check_clock(now)
        held = self.pending_update_at is not None and now < self.pending_update_at - _EPS
        view = self._lb_ejected if held else self._ejected
        return [h for h in range(len(self.hosts)) if h not in view]

    # -- inputs ----------------------------------------------------------------------------

    def on_result(self, now: float, host: int, status: int, local_origin: bool = False) -> None:
        """Record one finished upstream attempt to ``host`` (reference §2.2).

        Parameters
        ----------
        now : float
            Time of the result, seconds.
        host : int
            The host the attempt went to.
        status : int
            The upstream's HTTP status, or for a local-origin failure 503 (connect failure,
            reset: ``UF``) or 504 (timeout, per-try timeout: ``UT``), as Envoy's
            ``resultToHttpCode`` maps them.
        local_origin : bool, optional
            True when the proxy itself produced the failure (no response from the host).

        Notes
        -----
        Non-split mode (default): every result is an HTTP code (``putHttpResponseCode``), so
        local failures count as 5xx and gateway failures. Split mode: local failures move only
        the local-origin counter and success-rate bucket (``localOriginFailure``); an HTTP
        response moves the 5xx/gateway counters and also counts as a local-origin success
        (the connection worked; Envoy reports ``LocalOriginConnectSuccess`` at pool-ready),
        which resets the local-origin counter. Requests that never reached a host (``UO``,
        ``UH``, faults, rate limits) must not be reported.
        """
        if now > self._next_tick + _EPS:
            self._check_clock(now)
        state = self.hosts[host]
        split = self.config.split_external_local_origin_errors
        if status < 500 and not local_origin and not split:
            # The common case, inlined from _http_code: a success resets both counters.
            bucket = state.sr_current
            bucket.total += 1
            bucket.success += 1
            state.consecutive_5xx = 0
            state.consecutive_gateway_failure = 0
            return
        if local_origin:
            if status not in _LOCAL_ORIGIN_CODES:
                raise ValueError(f"a local-origin failure is 503 or 504, not {status}")
            if split:
                self._local_origin_failure(now, host, state)
                return
        elif split:
            self._local_origin_success(state)
        self._http_code(now, host, state, status)

    def on_tick(self, now: float) -> None:
        """Run the interval timer (Envoy ``DetectorImpl::onIntervalTimer``) and re-arm it.

        In order: un-eject every host whose ejection time has passed (``checkHostForUneject``)
        and rotate its success-rate buckets; run the external-origin then the local-origin
        success-rate and failure-percentage sweeps over the interval that just ended
        (``processSuccessRateEjections``); then decrement ``backoff`` of every host that is not
        ejected and was un-ejected at least one interval ago. The next tick is ``now +
        interval``, as Envoy re-arms the timer after running it.

        Parameters
        ----------
        now : float
            Current time, seconds; at least :meth:`next_tick`.
        """
        if now < self._next_tick - _EPS:
            raise ValueError(f"tick at {now} s comes before the timer ({self._next_tick} s)")
        for host, state in enumerate(self.hosts):
            self._check_uneject(now, host, state)
            state.sr_current, state.sr_previous = Bucket(), state.sr_current
            state.local_sr_current, state.local_sr_previous = Bucket(), state.local_sr_current
        self._sweep(now, local=False)
        self._sweep(now, local=True)
        interval = self.config.interval
        for state in self.hosts:
            # Healthy and not ejected again since the last un-ejection, one interval ago or more.
            if (not state.ejected and state.last_unejection_time is not None
                    and now - state.last_unejection_time >= interval - _EPS and state.backoff > 0):
                state.backoff -= 1
        self._next_tick = now + interval

    # -- counting (DetectorHostMonitorImpl) --------------------------------------------------

    def _http_code(self, now: float, host: int, state: HostState, status: int) -> None:
        # putHttpResponseCode: the gateway detector is checked before the 5xx one.
        cfg = self.config
        state.sr_current.total += 1
        if 500 <= status <= 599:
            if status in _GATEWAY_ERRORS:
                state.consecutive_gateway_failure += 1
                if state.consecutive_gateway_failure == cfg.consecutive_gateway_failure:
                    self._on_consecutive(now, host, CONSECUTIVE_GATEWAY_FAILURE)
            else:
                state.consecutive_gateway_failure = 0
            state.consecutive_5xx += 1
            if state.consecutive_5xx == cfg.consecutive_5xx:
                self._on_consecutive(now, host, CONSECUTIVE_5XX)
        else:
            state.sr_current.success += 1
            state.consecutive_5xx = 0
            state.consecutive_gateway_failure = 0

    def _local_origin_failure(self, now: float, host: int, state: HostState) -> None:
        state.local_sr_current.total += 1
        state.consecutive_local_origin_failure += 1
        if state.consecutive_local_origin_failure == self.config.consecutive_local_origin_failure:
            self._on_consecutive(now, host, CONSECUTIVE_LOCAL_ORIGIN_FAILURE)

    @staticmethod
    def _local_origin_success(state: HostState) -> None:
        state.local_sr_current.total += 1
        state.local_sr_current.success += 1
        state.consecutive_local_origin_failure = 0

    # -- decisions (DetectorImpl) ------------------------------------------------------------

    def _on_consecutive(self, now: float, host: int, kind: str) -> None:
        # onConsecutiveErrorWorker: try to eject, then reset that counter whatever the outcome
        # (ejected, overflow, or not enforced), so the detector can fire again after another
        # run of `threshold` errors. A host already ejected is ignored and keeps its counter.
        state = self.hosts[host]
        if not self._detected(now, host, kind):
            return
        if kind == CONSECUTIVE_5XX:
            state.consecutive_5xx = 0
        elif kind == CONSECUTIVE_GATEWAY_FAILURE:
            state.consecutive_gateway_failure = 0
        else:
            state.consecutive_local_origin_failure = 0

    def _detected(self, now: float, host: int, kind: str) -> bool:
        """Count a detection and run ``ejectHost``; False if the host was already ejected."""
        # Envoy's onConsecutiveErrorWorker returns before counting anything when the host already
        # has FAILED_OUTLIER_CHECK (outlier_detection_impl.cc); the reference's pseudo-code in
        # §2.3 counts ejections_detected_<type> first, but Envoy's source wins. Sweeps skip
        # ejected hosts before they get here.
        if self.hosts[host].ejected:
            return False
        self.stats[f"ejections_detected_{kind}"] += 1
        cfg = self.config
        active = self.stats["ejections_active"]
        # Since Envoy 1.28 the share is checked *after* this ejection (§2.3, PRs #27624/#27909);
        # always_eject_one_host (1.31) lets the first one through.
        allowed = 100 * (active + 1) / len(self.hosts) <= min(100, cfg.max_ejection_percent)
        if not allowed and not (cfg.always_eject_one_host and active == 0):
            self.stats["ejections_overflow"] += 1
            return True
        if self._uniform() * 100 < self._enforcing[kind]:  # enforceEjection: featureEnabled
            self._eject(now, host, kind)
        return True

    def _eject(self, now: float, host: int, kind: str) -> None:
        state = self.hosts[host]
        state.ejection_type = kind
        state.num_ejections += 1
        state.last_ejection_time = now
        # random() % (jitter_ms + 1): a whole number of ms in [0, max_ejection_time_jitter].
        state.jitter = math.floor(self._uniform() * (self._jitter_ms + 1)) / 1000
        base = self.config.base_ejection_time
        if state.backoff * base < self._max_ejection_time + base:
            state.backoff += 1
        self.stats["ejections_active"] += 1
        self.stats[f"ejections_enforced_{kind}"] += 1
        self.stats["ejections_enforced_total"] += 1
        self.events.append((now, "ejection", host, kind))
        self._set_ejected(now, host, True)

    def _ejection_time(self, state: HostState) -> float:
        base = self.config.base_ejection_time
        return min(base * state.backoff, self._max_ejection_time) + state.jitter

    def _check_uneject(self, now: float, host: int, state: HostState) -> None:
        # checkHostForUneject: only ever called from the interval timer.
        if not state.ejected or now - state.last_ejection_time < self._ejection_time(state) - _EPS:
            return
        state.reset_consecutive()
        state.last_unejection_time = now
        self.stats["ejections_active"] -= 1
        self.events.append((now, "unejection", host, state.ejection_type))
        self._set_ejected(now, host, False)

    def _sweep(self, now: float, local: bool) -> None:
        # processSuccessRateEjections over the buckets of the interval that just ended.
        cfg = self.config
        sr_hosts: list[tuple[int, float]] = []
        fp_hosts: list[tuple[int, float]] = []
        for host, state in enumerate(self.hosts):
            bucket = state.local_sr_previous if local else state.sr_previous
            if state.ejected or bucket.total == 0:
                continue
            rate = 100.0 * bucket.success / bucket.total
            if bucket.total >= cfg.success_rate_request_volume:
                sr_hosts.append((host, rate))
            if bucket.total >= cfg.failure_percentage_request_volume:
                fp_hosts.append((host, rate))
        if sr_hosts and len(sr_hosts) >= cfg.success_rate_minimum_hosts:
            _, threshold = success_rate_threshold(
                (rate for _, rate in sr_hosts), cfg.success_rate_stdev_factor / 1000)
            kind = LOCAL_ORIGIN_SUCCESS_RATE if local else SUCCESS_RATE
            for host, rate in sr_hosts:
                if rate < threshold:
                    self._detected(now, host, kind)
        if fp_hosts and len(fp_hosts) >= cfg.failure_percentage_minimum_hosts:
            kind = LOCAL_ORIGIN_FAILURE_PERCENTAGE if local else FAILURE_PERCENTAGE
            for host, rate in fp_hosts:
                if 100.0 - rate >= cfg.failure_percentage_threshold:
                    self._detected(now, host, kind)

    # -- update_merge_window -----------------------------------------------------------------

    def _set_ejected(self, now: float, host: int, ejected: bool) -> None:
        # A held update that fell due before `now` was delivered at its time, carrying the
        # state as it was then (nothing changed since, or it would have been flushed earlier).
        if self.pending_update_at is not None and now >= self.pending_update_at - _EPS:
            self._lb_ejected = frozenset(self._ejected)
            self._last_applied = self.pending_update_at
            self.pending_update_at = None
        self.hosts[host].ejected = ejected
        self.changes += 1
        if ejected:
            self._ejected.add(host)
        else:
            self._ejected.discard(host)
        window = self.config.update_merge_window
        if window <= 0 or now - self._last_applied > window:  # scheduleUpdate: delta > window
            self._lb_ejected = frozenset(self._ejected)
            self._last_applied = now
        elif self.pending_update_at is None:
            self.pending_update_at = self._last_applied + window

    def _check_clock(self, now: float) -> None:
        if now > self._next_tick + _EPS:
            raise RuntimeError(f"time {now} s is past the interval tick at {self._next_tick} s; "
                               "call on_tick first")

