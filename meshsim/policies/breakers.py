"""Application-level circuit breakers (the ones client libraries run), as plain state machines.

Envoy's own "circuit breaking" is only connection-pool limits (:mod:`.connection_pool`); the
open / half-open breakers teams actually run live in their client libraries. This module
reproduces four of them, each with its library's documented defaults and, where the docs are
silent, the behaviour of its source (cited inline):

- :class:`Resilience4j` -- ``CircuitBreakerConfig`` (resilience4j 2.x docs; source
  ``CircuitBreakerStateMachine.java``, ``CircuitBreakerMetrics.java``);
- :class:`Hystrix` -- Hystrix wiki "How it Works" and "Configuration" (1.5.x;
  ``HystrixCircuitBreaker.java``, ``HealthCountsStream.java``);
- :class:`Polly` -- Polly v8 advanced circuit breaker (``CircuitBreakerStrategyOptions``;
  ``CircuitStateController.cs``, ``RollingHealthMetrics.cs``);
- :class:`Consecutive` -- pybreaker (README; ``CircuitBreaker``, ``CircuitHalfOpenState``).

Every breaker implements :class:`Breaker`. The engine calls :meth:`Breaker.allow` before a call
goes out and :meth:`Breaker.on_result` when an admitted call finishes, with the simulated time
``now`` in float seconds, in non-decreasing order. Timed transitions (resilience4j's automatic
OPEN -> HALF_OPEN, its ``maxWaitDurationInHalfOpenState``, Hystrix's health snapshots) are
applied lazily at the next input, and the event carries the time they were due. Which results
are failures is decided before :meth:`Breaker.on_result` by an :class:`OutcomeClassifier`.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "Breaker",
    "BreakerBase",
    "Consecutive",
    "ConsecutiveConfig",
    "Hystrix",
    "HystrixConfig",
    "OutcomeClassifier",
    "Polly",
    "PollyConfig",
    "Resilience4j",
    "Resilience4jConfig",
]

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"
BreakerState = Literal["closed", "open", "half_open"]
_EVENT_KIND = {CLOSED: "breaker_closed", OPEN: "breaker_open", HALF_OPEN: "breaker_half_open"}
_STAT = {CLOSED: "closed", OPEN: "opened", HALF_OPEN: "half_opened"}
# Breakers are not per host; events use host -1 so they fit the events table of the policies.
_NO_HOST = -1
_EPS = 1e-9  # tolerance of time comparisons (float sums must not miss a due transition)


@runtime_checkable
class Breaker(Protocol):
    """What the engine needs from a circuit breaker.

    Attributes
    ----------
    state : {"closed", "open", "half_open"}
        State after the last input.
    events : list of tuple
        State transitions ``(t, kind, -1, detail)``, ``kind`` one of ``"breaker_open"``,
        ``"breaker_half_open"``, ``"breaker_closed"``; ``t`` in seconds.
    stats : dict of str to int
        Counters: ``calls_permitted``, ``calls_not_permitted``, ``successes``, ``failures``,
        ``slow_calls``, ``opened``, ``half_opened``, ``closed``.
    """

    events: list[tuple[float, str, int, str]]
    stats: dict[str, int]

    @property
    def state(self) -> str: ...

    def allow(self, now: float) -> bool:
        """May a call go out at ``now`` (s)? True consumes a permit (a half-open probe)."""
        ...

    def on_result(self, now: float, failure: bool, duration: float) -> None:
        """An admitted call finished at ``now`` (s) after ``duration`` (s)."""
        ...


class BreakerBase:
    """Shared bookkeeping: state, transition events and counters."""

    def __init__(self) -> None:
        self._state: str = CLOSED
        self.events: list[tuple[float, str, int, str]] = []
        self.stats: dict[str, int] = dict.fromkeys(
            ("calls_permitted", "calls_not_permitted", "successes", "failures", "slow_calls",
             "opened", "half_opened", "closed"), 0)

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``, as of the last input."""
        return self._state

    def _transition(self, t: float, new: str, detail: str) -> None:
        self._state = new
        self.stats[_STAT[new]] += 1
        self.events.append((t, _EVENT_KIND[new], _NO_HOST, detail))

    def _permit(self, ok: bool) -> bool:
        self.stats["calls_permitted" if ok else "calls_not_permitted"] += 1
        return ok

    def _count(self, failure: bool, slow: bool = False) -> None:
        self.stats["failures" if failure else "successes"] += 1
        self.stats["slow_calls"] += slow


@dataclass(frozen=True)
class OutcomeClassifier:
    """Which finished calls a breaker records as failures.

    Parameters
    ----------
    failure_statuses : frozenset of int
        HTTP statuses that count as failures; default every 5xx.
    timeouts_are_failures : bool
        Whether a call that timed out (no status, or Envoy's 504 ``UT``) is a failure.
    slow_calls_are_failures : bool
        Whether a call slower than ``slow_call_duration`` (s) is a failure. Resilience4j has its
        own slow-call rate and needs no help here; the other libraries only see failures.
    slow_call_duration : float
        Seconds; used only with ``slow_calls_are_failures``.
    """

    failure_statuses: frozenset[int] = frozenset(range(500, 600))
    timeouts_are_failures: bool = True
    slow_calls_are_failures: bool = False
    slow_call_duration: float = math.inf

    def is_failure(self, status: int | None, timed_out: bool, duration: float = 0.0) -> bool:
        """True if the call counts as a failure.

        Parameters
        ----------
        status : int or None
            HTTP status the caller saw (None if it got none).
        timed_out : bool
            The call ended by a timeout.
        duration : float, optional
            Call duration, seconds (for ``slow_calls_are_failures``).
        """
        if timed_out:
            return self.timeouts_are_failures
        if self.slow_calls_are_failures and duration > self.slow_call_duration:
            return True
        return status is not None and status in self.failure_statuses


# -- resilience4j ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Resilience4jConfig:
    """resilience4j ``CircuitBreakerConfig``, with its documented defaults.

    Names are resilience4j's in snake_case; durations are float seconds, rates percent.
    ``sliding_window_size`` is a number of calls (COUNT_BASED) or of one-second buckets
    (TIME_BASED). ``max_wait_duration_in_half_open_state`` 0 means wait in half-open until the
    permitted calls complete.
    """

    failure_rate_threshold: float = 50.0
    slow_call_rate_threshold: float = 100.0
    slow_call_duration_threshold: float = 60.0
    permitted_number_of_calls_in_half_open_state: int = 10
    max_wait_duration_in_half_open_state: float = 0.0
    sliding_window_type: Literal["COUNT_BASED", "TIME_BASED"] = "COUNT_BASED"
    sliding_window_size: int = 100
    minimum_number_of_calls: int = 100
    wait_duration_in_open_state: float = 60.0
    automatic_transition_from_open_to_half_open_enabled: bool = False

    def __post_init__(self) -> None:
        rates = (self.failure_rate_threshold, self.slow_call_rate_threshold)
        if not all(0 < rate <= 100 for rate in rates):
            raise ValueError("rate thresholds are percentages in (0, 100]")
        if min(self.permitted_number_of_calls_in_half_open_state, self.sliding_window_size,
               self.minimum_number_of_calls) < 1:
            raise ValueError("window size, minimum and permitted calls must be >= 1")
        if self.sliding_window_type not in ("COUNT_BASED", "TIME_BASED"):
            raise ValueError(f"unknown sliding_window_type {self.sliding_window_type!r}")
        if min(self.wait_duration_in_open_state, self.max_wait_duration_in_half_open_state,
               self.slow_call_duration_threshold) < 0:
            raise ValueError("durations must be >= 0 seconds")


class _CountWindow:
    """The last ``size`` calls (``FixedSizeSlidingWindowMetrics``)."""

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=size)

    def record(self, now: float, failure: bool, slow: bool) -> tuple[int, int, int]:
        self._calls.append((failure, slow))
        return (len(self._calls), sum(f for f, _ in self._calls), sum(s for _, s in self._calls))


class _TimeWindow:
    """Calls of the last ``size`` epoch seconds (``SlidingTimeWindowMetrics``): one bucket per
    whole second, so a call at 3.9 s is forgotten at 3 + size s, not at 3.9 + size s."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures, slow]

    def record(self, now: float, failure: bool, slow: bool) -> tuple[int, int, int]:
        second = math.floor(now + _EPS)
        while self._buckets and self._buckets[0][0] <= second - self._size:
            self._buckets.popleft()
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failure
        bucket[3] += slow
        return (sum(b[1] for b in self._buckets), sum(b[2] for b in self._buckets),
                sum(b[3] for b in self._buckets))


class Resilience4j(BreakerBase):
    """resilience4j ``CircuitBreaker`` (``CircuitBreakerStateMachine``).

    CLOSED: every result goes into the sliding window; once it holds at least
    ``minimum_number_of_calls`` calls (for COUNT_BASED at most ``sliding_window_size``:
    ``CircuitBreakerMetrics`` takes the min), a failure rate >= ``failure_rate_threshold`` or a
    slow-call rate >= ``slow_call_rate_threshold`` opens it. A call is slow when its duration is
    strictly greater than ``slow_call_duration_threshold``.

    OPEN: rejects calls for ``wait_duration_in_open_state``. With automatic transition it goes
    HALF_OPEN exactly then; without, the first call strictly after that instant
    (``Instant.isAfter``) moves it to HALF_OPEN and takes the first permit.

    HALF_OPEN: admits ``permitted_number_of_calls_in_half_open_state`` calls, and decides over a
    fresh COUNT_BASED window of that size once it holds min(minimum, permitted) results (with the
    defaults, all of them): any rate at or above its threshold re-opens, otherwise it closes with
    a fresh window. ``max_wait_duration_in_half_open_state`` > 0 re-opens it if no decision came
    in that time. Results that arrive while OPEN (calls admitted earlier) are counted but change
    nothing; a late result from a CLOSED-era call arriving in HALF_OPEN counts toward the
    decision, as in resilience4j.
    """

    def __init__(self, config: Resilience4jConfig | None = None) -> None:
        super().__init__()
        self.config = config or Resilience4jConfig()
        self._window = self._closed_window()
        self._min_calls = self._closed_min_calls()
        self._since = 0.0  # time of the last transition, s
        self._permits = 0

    def next_transition(self) -> float | None:
        """Time (s) of the next timed transition the engine may schedule, or None."""
        cfg = self.config
        if self._state == OPEN and cfg.automatic_transition_from_open_to_half_open_enabled:
            return self._since + cfg.wait_duration_in_open_state
        if self._state == HALF_OPEN and cfg.max_wait_duration_in_half_open_state > 0:
            return self._since + cfg.max_wait_duration_in_half_open_state
        return None

    def advance(self, now: float) -> None:
        """Apply every timed transition due at or before ``now`` (s), at its due time."""
        while (due := self.next_transition()) is not None and now >= due - _EPS:
            if self._state == OPEN:
                self._to_half_open(due, "wait_elapsed")
            else:
                self._to_open(due, "max_wait_in_half_open")

    def allow(self, now: float) -> bool:
        """May a call go out at ``now`` (s)? In HALF_OPEN this consumes one permit."""
        self.advance(now)
        if self._state == OPEN:
            if now <= self._since + self.config.wait_duration_in_open_state:
                return self._permit(False)
            self._to_half_open(now, "call_after_wait")
        if self._state == HALF_OPEN:
            if self._permits == 0:
                return self._permit(False)
            self._permits -= 1
        return self._permit(True)

    def on_result(self, now: float, failure: bool, duration: float) -> None:
        """Record a finished call (``duration`` in seconds) and apply the threshold check."""
        self.advance(now)
        slow = duration > self.config.slow_call_duration_threshold
        self._count(failure, slow)
        calls, failures, slow_calls = self._window.record(now, failure, slow)
        if self._state == OPEN or calls < self._min_calls:
            return
        cfg = self.config
        failure_rate = 100.0 * failures / calls
        slow_rate = 100.0 * slow_calls / calls
        tripped = [name for name, rate, threshold in (
            ("failure_rate", failure_rate, cfg.failure_rate_threshold),
            ("slow_call_rate", slow_rate, cfg.slow_call_rate_threshold)) if rate >= threshold]
        if tripped:
            self._to_open(now, "+".join(tripped))
        elif self._state == HALF_OPEN:
            self._transition(now, CLOSED, "below_thresholds")
            self._window = self._closed_window()
            self._min_calls = self._closed_min_calls()
            self._since = now

    def _closed_window(self) -> _CountWindow | _TimeWindow:
        size = self.config.sliding_window_size
        if self.config.sliding_window_type == "COUNT_BASED":
            return _CountWindow(size)
        return _TimeWindow(size)

    def _closed_min_calls(self) -> int:
        cfg = self.config
        if cfg.sliding_window_type == "COUNT_BASED":
            return min(cfg.minimum_number_of_calls, cfg.sliding_window_size)
        return cfg.minimum_number_of_calls

    def _to_open(self, t: float, detail: str) -> None:
        # OpenState keeps the metrics it was given: late results are recorded there, unused.
        self._transition(t, OPEN, detail)
        self._since = t

    def _to_half_open(self, t: float, detail: str) -> None:
        permitted = self.config.permitted_number_of_calls_in_half_open_state
        self._transition(t, HALF_OPEN, detail)
        self._since = t
        self._permits = permitted
        # CircuitBreakerMetrics.forHalfOpen: COUNT_BASED window of `permitted` calls.
        self._window = _CountWindow(permitted)
        self._min_calls = min(self.config.minimum_number_of_calls, permitted)


# -- Hystrix -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class HystrixConfig:
    """Hystrix command circuit-breaker and metrics properties, with Hystrix's defaults.

    Durations are float seconds (Hystrix takes milliseconds). ``rolling_stats_time`` and
    ``rolling_stats_num_buckets`` are ``metrics.rollingStats.*``; the breaker's health counts
    roll over the same time in buckets of ``health_snapshot_interval``
    (``metrics.healthSnapshot.intervalInMilliseconds``), which is also how often the breaker
    looks at them (``HealthCountsStream``), so the bucket count is only validated here.
    """

    request_volume_threshold: int = 20
    error_threshold_percentage: int = 50
    sleep_window: float = 5.0
    rolling_stats_time: float = 10.0
    rolling_stats_num_buckets: int = 10
    health_snapshot_interval: float = 0.5

    def __post_init__(self) -> None:
        if self.rolling_stats_time <= 0 or self.health_snapshot_interval <= 0:
            raise ValueError("rolling_stats_time and health_snapshot_interval must be > 0 s")
        buckets = self.rolling_stats_time / self.rolling_stats_num_buckets
        if abs(buckets - round(buckets * 1000) / 1000) > _EPS:
            # Hystrix requires timeInMilliseconds % numBuckets == 0.
            raise ValueError("rolling_stats_time must divide into whole-ms buckets")
        if self.sleep_window < 0 or self.request_volume_threshold < 0:
            raise ValueError("sleep_window and request_volume_threshold must be >= 0")


class Hystrix(BreakerBase):
    """Hystrix ``HystrixCircuitBreakerImpl`` (1.5.x).

    CLOSED: every ``health_snapshot_interval`` (at k·interval s) the breaker reads the health
    counts of the last ``rolling_stats_time`` s; if they hold at least
    ``request_volume_threshold`` requests and the integer error percentage
    (``HealthCounts``: ``(int) ((double) errors / total * 100)``, in floating point) is
    >= ``error_threshold_percentage``, it opens. So a breaker trips at the next snapshot, never
    inline on a result; a snapshot due at the same instant as an input is taken before it.

    OPEN: ``allowRequest`` rejects until strictly more than ``sleep_window`` has passed
    (``isAfterSleepWindow``); the first call after that is the single trial and the breaker
    becomes HALF_OPEN, rejecting everything else. The trial's success closes it and resets the
    health counts (``markSuccess`` -> ``resetStream``); its failure re-opens it for another
    sleep window from now (``markNonSuccess``). As in Hystrix, whichever result arrives first
    while HALF_OPEN decides, even a late one from a call admitted before opening.
    """

    def __init__(self, config: HystrixConfig | None = None) -> None:
        super().__init__()
        self.config = config or HystrixConfig()
        self._results: deque[tuple[float, bool]] = deque()
        self._next_tick = 1  # index k of the next health snapshot, at k * interval
        self._opened_at = -math.inf

    def allow(self, now: float) -> bool:
        """May a call go out at ``now`` (s)? After the sleep window, exactly one trial."""
        self._snapshots(now)
        if self._state == CLOSED:
            return self._permit(True)
        if self._state == OPEN and now > self._opened_at + self.config.sleep_window + _EPS:
            self._transition(now, HALF_OPEN, "sleep_window_elapsed")
            return self._permit(True)
        return self._permit(False)

    def on_result(self, now: float, failure: bool, duration: float) -> None:
        """Record a finished call; in HALF_OPEN it decides the trial. ``duration`` is unused."""
        self._snapshots(now)
        self._count(failure)
        self._results.append((now, failure))
        if self._state != HALF_OPEN:
            return
        if failure:
            self._transition(now, OPEN, "trial_failed")
            self._opened_at = now
        else:
            self._transition(now, CLOSED, "trial_succeeded")
            self._results.clear()

    def _snapshots(self, now: float) -> None:
        """Take every health snapshot due at or before ``now``, in order."""
        h, window = self.config.health_snapshot_interval, self.config.rolling_stats_time
        last = math.floor(now / h + _EPS)
        if self._state != CLOSED or not self._results:
            self._next_tick = max(self._next_tick, last + 1)
            return
        # Snapshots before the oldest result cannot see anything: skip them.
        first_useful = math.floor(self._results[0][0] / h + _EPS) + 1
        k = max(self._next_tick, first_useful)
        while k <= last and self._state == CLOSED and self._results:
            tick = k * h
            while self._results and self._results[0][0] < tick - window - _EPS:
                self._results.popleft()
            total = errors = 0
            for t, failure in self._results:
                if t >= tick - _EPS:
                    break
                total += 1
                errors += failure
            # HealthCounts computes (int) ((double) errorCount / totalCount * 100): the double
            # division rounds 29/50 to 57, where exact integer arithmetic gives 58.
            percent = int(errors / total * 100) if total else 0
            if (total >= self.config.request_volume_threshold and total > 0
                    and percent >= self.config.error_threshold_percentage):
                self._transition(tick, OPEN, f"error_percentage={percent}")
                self._opened_at = tick
            k += 1
        self._next_tick = max(k, last + 1)


# -- Polly v8 ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PollyConfig:
    """Polly v8 ``CircuitBreakerStrategyOptions``, with Polly's defaults.

    Durations are float seconds; ``failure_ratio`` is a fraction in (0, 1].
    """

    failure_ratio: float = 0.1
    minimum_throughput: int = 100
    sampling_duration: float = 30.0
    break_duration: float = 5.0

    def __post_init__(self) -> None:
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.minimum_throughput < 2:
            raise ValueError("minimum_throughput must be >= 2 (Polly's validation)")
        if self.sampling_duration < 0.5 or self.break_duration < 0.5:
            raise ValueError("sampling_duration and break_duration must be >= 0.5 s (Polly)")


class Polly(BreakerBase):
    """Polly v8 advanced circuit breaker (``CircuitStateController`` +
    ``AdvancedCircuitBehavior``).

    Health is sampled over ``sampling_duration`` in 10 windows (``RollingHealthMetrics``); a
    window starts at the first call after the previous one is ``sampling_duration / 10`` old,
    and is dropped once it started ``sampling_duration`` ago. CLOSED: after each *failure*,
    throughput >= ``minimum_throughput`` and failure rate >= ``failure_ratio`` opens it.
    OPEN: rejects until ``break_duration`` has passed (``now >= blockedUntil``); the first call
    then is the one probe and the breaker becomes HALF_OPEN, rejecting others until the probe's
    result: success closes it (and resets the health metrics), failure re-opens it for another
    ``break_duration``. Successes are counted in every state; failures while OPEN are counted
    but never extend the break.
    """

    _WINDOWS = 10

    def __init__(self, config: PollyConfig | None = None) -> None:
        super().__init__()
        self.config = config or PollyConfig()
        self._windows: deque[list[float]] = deque()  # [started_at, successes, failures]
        self._blocked_until = -math.inf

    def allow(self, now: float) -> bool:
        """May a call go out at ``now`` (s)? After the break, exactly one probe."""
        if self._state == OPEN and now >= self._blocked_until - _EPS:
            self._transition(now, HALF_OPEN, "break_elapsed")
            return self._permit(True)
        return self._permit(self._state == CLOSED)

    def on_result(self, now: float, failure: bool, duration: float) -> None:
        """Record a finished call; ``duration`` is unused."""
        self._count(failure)
        if not failure:
            self._window(now)[1] += 1
            if self._state == HALF_OPEN:
                self._transition(now, CLOSED, "probe_succeeded")
                self._windows.clear()
            return
        if self._state == HALF_OPEN:  # AdvancedCircuitBehavior does not record this one
            self._open(now, "probe_failed")
            return
        self._window(now)[2] += 1
        if self._state == CLOSED:
            successes = sum(w[1] for w in self._windows)
            failures = sum(w[2] for w in self._windows)
            throughput = successes + failures
            if (throughput >= self.config.minimum_throughput
                    and failures / throughput >= self.config.failure_ratio):
                self._open(now, f"failure_ratio={failures / throughput:.3g}")

    def _window(self, now: float) -> list[float]:
        # HealthMetrics.Create uses one window below 10 x 20 ms, which the option validation
        # (sampling_duration >= 0.5 s) rules out: always RollingHealthMetrics with 10 windows.
        sampling = self.config.sampling_duration
        width = sampling / self._WINDOWS
        if not self._windows or now - self._windows[-1][0] >= width - _EPS:
            self._windows.append([now, 0, 0])
        while now - self._windows[0][0] >= sampling - _EPS:
            self._windows.popleft()
        return self._windows[-1]

    def _open(self, now: float, detail: str) -> None:
        self._transition(now, OPEN, detail)
        self._blocked_until = now + self.config.break_duration


# -- pybreaker ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConsecutiveConfig:
    """pybreaker ``CircuitBreaker`` arguments, with pybreaker's defaults (``reset_timeout`` s)."""

    fail_max: int = 5
    reset_timeout: float = 60.0
    success_threshold: int = 1

    def __post_init__(self) -> None:
        if self.fail_max < 1 or self.success_threshold < 1:
            raise ValueError("fail_max and success_threshold must be >= 1")
        if self.reset_timeout < 0:
            raise ValueError("reset_timeout must be >= 0 seconds")


class Consecutive(BreakerBase):
    """pybreaker: consecutive-failure breaker.

    CLOSED: a failure increments the counter, a success resets it; the counter reaching
    ``fail_max`` opens the breaker. OPEN: rejects while ``now < opened_at + reset_timeout``;
    the first call after that moves it to HALF_OPEN and is a trial. HALF_OPEN: a failure
    re-opens it (new ``reset_timeout``); ``success_threshold`` successes close it, so at most
    ``success_threshold`` trials go out per half-open period.

    pybreaker runs every call under the breaker's lock, so in half-open the trials go one at a
    time; a simulated caller cannot block, so here a call that arrives while a trial is in
    flight is rejected instead of waiting.
    """

    def __init__(self, config: ConsecutiveConfig | None = None) -> None:
        super().__init__()
        self.config = config or ConsecutiveConfig()
        self._failures = 0
        self._successes = 0
        self._opened_at = -math.inf
        self._trial_in_flight = False
        self._trials = 0

    def allow(self, now: float) -> bool:
        """May a call go out at ``now`` (s)? In half-open, one trial at a time."""
        if self._state == OPEN:
            if now < self._opened_at + self.config.reset_timeout - _EPS:
                return self._permit(False)
            self._transition(now, HALF_OPEN, "reset_timeout_elapsed")
            self._successes = self._trials = 0
        if self._state == HALF_OPEN:
            # Serial trials can never exceed success_threshold before a decision; the cap keeps
            # that true when a late result (from a call admitted while CLOSED) frees the slot.
            if self._trial_in_flight or self._trials >= self.config.success_threshold:
                return self._permit(False)
            self._trial_in_flight = True
            self._trials += 1
        return self._permit(True)

    def on_result(self, now: float, failure: bool, duration: float) -> None:
        """Record a finished call; ``duration`` is unused."""
        self._count(failure)
        if self._state == HALF_OPEN:
            self._trial_in_flight = False
            if failure:
                self._open(now, "trial_failed")
            else:
                self._successes += 1
                if self._successes >= self.config.success_threshold:
                    self._transition(now, CLOSED, "trials_succeeded")
                    self._failures = 0
        elif self._state == CLOSED:
            if not failure:
                self._failures = 0
                return
            self._failures += 1
            if self._failures >= self.config.fail_max:
                self._open(now, f"consecutive_failures={self._failures}")

    def _open(self, now: float, detail: str) -> None:
        self._transition(now, OPEN, detail)
        self._opened_at = now
