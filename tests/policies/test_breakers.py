"""Unit and property tests of the app-level circuit breakers: each pins a documented behaviour of
its library (resilience4j, Hystrix, Polly v8, pybreaker); results are fed by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.policies.breakers import (
    Breaker,
    Consecutive,
    ConsecutiveConfig,
    Hystrix,
    HystrixConfig,
    OutcomeClassifier,
    Polly,
    PollyConfig,
    Resilience4j,
    Resilience4jConfig,
)


def feed(b: Breaker, times: list[float], failure: bool = True, duration: float = 0.01) -> None:
    """One admitted call finishing at each time."""
    for t in times:
        assert b.allow(t)
        b.on_result(t, failure, duration)


def kinds(b: Breaker) -> list[tuple[float, str]]:
    return [(round(t, 6), kind) for t, kind, _, _ in b.events]


# -- outcome classifier --------------------------------------------------------------------------

def test_classifier_defaults_count_5xx_and_timeouts():
    c = OutcomeClassifier()
    assert [c.is_failure(s, False) for s in (200, 404, 429, 500, 503, 599)] == [
        False, False, False, True, True, True]
    assert c.is_failure(None, True)
    assert not OutcomeClassifier(timeouts_are_failures=False).is_failure(None, True)
    slow = OutcomeClassifier(slow_calls_are_failures=True, slow_call_duration=1.0)
    assert slow.is_failure(200, False, 1.5) and not slow.is_failure(200, False, 1.0)


# -- resilience4j --------------------------------------------------------------------------------

def r4j(**config) -> Resilience4j:
    base = {"sliding_window_size": 4, "minimum_number_of_calls": 4,
            "permitted_number_of_calls_in_half_open_state": 3, "wait_duration_in_open_state": 10.0}
    return Resilience4j(Resilience4jConfig(**(base | config)))


def test_resilience4j_defaults_are_the_documented_ones():
    c = Resilience4jConfig()
    assert (c.failure_rate_threshold, c.slow_call_rate_threshold, c.slow_call_duration_threshold,
            c.permitted_number_of_calls_in_half_open_state, c.sliding_window_type,
            c.sliding_window_size, c.minimum_number_of_calls, c.wait_duration_in_open_state,
            c.max_wait_duration_in_half_open_state,
            c.automatic_transition_from_open_to_half_open_enabled) == (
        50.0, 100.0, 60.0, 10, "COUNT_BASED", 100, 100, 60.0, 0.0, False)


def test_resilience4j_minimum_number_of_calls_gates_the_failure_rate():
    b = r4j(sliding_window_size=10, minimum_number_of_calls=5)
    feed(b, [1, 2, 3, 4])
    assert b.state == "closed"  # 4 of 4 failed, but fewer than 5 calls recorded
    feed(b, [5])
    assert kinds(b) == [(5, "breaker_open")]


def test_resilience4j_count_window_caps_minimum_at_window_size():
    # CircuitBreakerMetrics: minimumNumberOfCalls = min(minimumNumberOfCalls, slidingWindowSize).
    b = r4j(sliding_window_size=3, minimum_number_of_calls=100)
    feed(b, [1, 2, 3])
    assert b.state == "open"


def test_resilience4j_failure_rate_at_threshold_opens():
    b = r4j()
    feed(b, [1, 2], failure=False)
    feed(b, [3])
    assert b.state == "closed"
    feed(b, [4])  # 2 of 4 = 50 % >= 50 %
    assert b.events == [(4, "breaker_open", -1, "failure_rate")]


def test_resilience4j_slow_call_rate_trips_it():
    b = r4j(slow_call_rate_threshold=50.0, slow_call_duration_threshold=1.0)
    feed(b, [1, 2], failure=False, duration=1.0)  # not slower than the threshold
    feed(b, [3], failure=False, duration=1.5)
    assert b.state == "closed"  # 1 of 4 slow
    feed(b, [4], failure=False, duration=2.0)  # 2 of 4 slow: 50 % >= 50 %
    assert b.events == [(4, "breaker_open", -1, "slow_call_rate")]
    assert b.stats["slow_calls"] == 2 and b.stats["failures"] == 0


def test_resilience4j_half_open_admits_exactly_permitted_calls_then_closes():
    b = r4j()
    feed(b, [1, 2, 3, 4])
    assert not b.allow(14.0)  # no automatic transition: first call strictly after the wait
    assert [b.allow(14.5) for _ in range(5)] == [True, True, True, False, False]
    assert b.state == "half_open"
    b.on_result(15, False, 0.1)
    b.on_result(15.5, True, 0.1)
    assert b.state == "half_open"  # decides only when all 3 have completed
    b.on_result(16, False, 0.1)  # 1 of 3 failed: 33 % < 50 %
    assert kinds(b) == [(4, "breaker_open"), (14.5, "breaker_half_open"), (16, "breaker_closed")]
    assert b.stats["calls_not_permitted"] == 3
    # A fresh closed window: three failures are below the minimum of 4.
    feed(b, [17, 18, 19])
    assert b.state == "closed"


def test_resilience4j_half_open_failure_rate_reopens():
    b = r4j()
    feed(b, [1, 2, 3, 4])
    assert b.allow(15) and b.allow(15) and b.allow(15)
    for failure in (True, True, False):
        b.on_result(16, failure, 0.1)
    assert kinds(b)[-1] == (16, "breaker_open")
    assert not b.allow(26.0) and b.allow(26.1)


def test_resilience4j_automatic_transition_happens_at_the_wait():
    b = r4j(automatic_transition_from_open_to_half_open_enabled=True)
    feed(b, [1, 2, 3, 4])
    assert b.next_transition() == 14
    assert b.allow(20)
    assert kinds(b) == [(4, "breaker_open"), (14, "breaker_half_open")]


def test_resilience4j_max_wait_in_half_open_reopens():
    b = r4j(automatic_transition_from_open_to_half_open_enabled=True,
            max_wait_duration_in_half_open_state=5.0)
    feed(b, [1, 2, 3, 4])
    assert b.allow(14) and b.allow(14)  # two of three probes, never completed
    assert not b.allow(25)
    assert kinds(b) == [(4, "breaker_open"), (14, "breaker_half_open"), (19, "breaker_open")]
    assert b.events[-1][3] == "max_wait_in_half_open"
    assert b.allow(29)  # automatic again after another wait: fresh permits
    assert kinds(b)[-1] == (29, "breaker_half_open")


def test_resilience4j_without_max_wait_half_open_waits_forever():
    b = r4j()
    feed(b, [1, 2, 3, 4])
    assert b.allow(15) and b.allow(15) and b.allow(15)
    assert not b.allow(10_000)
    assert b.state == "half_open"


def test_resilience4j_time_window_forgets_whole_second_buckets():
    b = r4j(sliding_window_type="TIME_BASED", sliding_window_size=2, minimum_number_of_calls=2)
    feed(b, [0.9])
    feed(b, [2.0])  # second 0 has left the 2 s window (buckets 1 and 2 remain)
    assert b.state == "closed"
    feed(b, [2.5])  # seconds 2: two failures
    assert kinds(b) == [(2.5, "breaker_open")]
    c = r4j(sliding_window_type="TIME_BASED", sliding_window_size=2, minimum_number_of_calls=2)
    feed(c, [0.1])
    feed(c, [1.99])  # same window: seconds 0 and 1
    assert c.state == "open"


# -- Hystrix -------------------------------------------------------------------------------------

def test_hystrix_defaults():
    c = HystrixConfig()
    assert (c.request_volume_threshold, c.error_threshold_percentage, c.sleep_window,
            c.rolling_stats_time, c.rolling_stats_num_buckets) == (20, 50, 5.0, 10.0, 10)


def test_hystrix_below_request_volume_never_trips():
    b = Hystrix()
    feed(b, [i / 100 for i in range(1, 20)])  # 19 failures, all within one window
    assert b.allow(30) and b.events == []


def test_hystrix_trips_at_the_next_health_snapshot():
    b = Hystrix()
    feed(b, [i / 100 for i in range(1, 21)])  # 20 failures by 0.20 s
    assert b.state == "closed" and b.allow(0.49)
    assert not b.allow(0.51)
    assert b.events == [(0.5, "breaker_open", -1, "error_percentage=100")]


def test_hystrix_error_percentage_is_truncated():
    b = Hystrix()
    feed(b, [0.1] * 11, failure=False)
    feed(b, [0.2] * 10)  # 10 of 21: 47 % < 50 %
    assert b.allow(1.0) and b.state == "closed"
    feed(b, [1.1] * 2)  # 12 of 23: 52 %
    assert not b.allow(1.5) and kinds(b) == [(1.5, "breaker_open")]


def tripped_hystrix() -> Hystrix:
    b = Hystrix()
    feed(b, [0.1] * 20)
    assert not b.allow(0.5)
    return b


def test_hystrix_single_trial_success_closes_and_resets_the_window():
    b = tripped_hystrix()
    assert not b.allow(5.5)  # isAfterSleepWindow is strict
    assert b.allow(5.6)
    assert [b.allow(5.7), b.allow(6.0)] == [False, False]
    b.on_result(6.1, False, 0.5)
    assert kinds(b) == [(0.5, "breaker_open"), (5.6, "breaker_half_open"), (6.1, "breaker_closed")]
    feed(b, [6.2])  # the 20 old failures were forgotten: one failure does not trip
    assert b.allow(7.0) and b.state == "closed"


def test_hystrix_trial_failure_reopens_for_another_sleep_window():
    b = tripped_hystrix()
    assert b.allow(6.0)
    b.on_result(7.0, True, 1.0)
    assert not b.allow(12.0) and b.allow(12.01)
    assert kinds(b)[2:] == [(7.0, "breaker_open"), (12.01, "breaker_half_open")]


# -- Polly ---------------------------------------------------------------------------------------

def polly(**config) -> Polly:
    base = {"failure_ratio": 0.5, "minimum_throughput": 4, "sampling_duration": 10.0}
    return Polly(PollyConfig(**(base | config)))


def test_polly_defaults():
    c = PollyConfig()
    assert (c.failure_ratio, c.minimum_throughput, c.sampling_duration, c.break_duration) == (
        0.1, 100, 30.0, 5.0)


def test_polly_minimum_throughput_gates():
    b = polly()
    feed(b, [1, 2, 3])
    assert b.state == "closed"
    feed(b, [3.5])
    assert kinds(b) == [(3.5, "breaker_open")]


def test_polly_failure_ratio_gates():
    b = polly()
    feed(b, [1, 1.1, 1.2], failure=False)
    feed(b, [2, 2.1])  # 2 of 5
    assert b.state == "closed"
    feed(b, [2.2])  # 3 of 6 = 0.5
    assert kinds(b) == [(2.2, "breaker_open")]


def test_polly_sampling_windows_expire():
    b = polly()
    feed(b, [0.0, 0.5, 1.0])  # windows started at 0.0 (two failures) and 1.0 (one)
    feed(b, [10.5])  # the 0.0 window is 10 s old: throughput 2
    assert b.state == "closed"


def test_polly_break_duration_then_one_probe():
    b = polly()
    feed(b, [1, 2, 3, 4])
    assert not b.allow(8.9)
    assert b.allow(9.0)  # now >= blockedUntil
    assert not b.allow(9.0) and not b.allow(100)
    b.on_result(9.5, False, 0.1)
    assert kinds(b) == [(4, "breaker_open"), (9, "breaker_half_open"), (9.5, "breaker_closed")]
    feed(b, [10, 11, 12])  # metrics were reset on close
    assert b.state == "closed"


def test_polly_probe_failure_reopens():
    b = polly()
    feed(b, [1, 2, 3, 4])
    assert b.allow(9.0)
    b.on_result(9.5, True, 0.1)
    assert not b.allow(14.4) and b.allow(14.5)


# -- pybreaker (consecutive) ---------------------------------------------------------------------

def test_consecutive_defaults():
    c = ConsecutiveConfig()
    assert (c.fail_max, c.reset_timeout, c.success_threshold) == (5, 60.0, 1)


def test_consecutive_fail_max_counts_consecutive_failures():
    b = Consecutive()
    feed(b, [1, 2, 3, 4])
    feed(b, [5], failure=False)
    feed(b, [6, 7, 8, 9])
    assert b.state == "closed"
    feed(b, [10])
    assert b.events == [(10, "breaker_open", -1, "consecutive_failures=5")]


def test_consecutive_reset_timeout_and_one_trial_at_a_time():
    b = Consecutive()
    feed(b, [1, 2, 3, 4, 5])
    assert not b.allow(64.9)
    assert b.allow(65.0)  # pybreaker: still open only while now < opened_at + reset_timeout
    assert not b.allow(65.1)
    b.on_result(66, False, 1.0)
    assert kinds(b) == [(5, "breaker_open"), (65, "breaker_half_open"), (66, "breaker_closed")]


def test_consecutive_success_threshold_and_trial_failure():
    b = Consecutive(ConsecutiveConfig(fail_max=1, reset_timeout=10.0, success_threshold=2))
    feed(b, [0])
    feed(b, [10], failure=False)
    assert b.state == "half_open"
    feed(b, [11])  # a failure in half-open re-opens at once
    assert not b.allow(20.9)
    feed(b, [21, 22], failure=False)
    assert kinds(b) == [(0, "breaker_open"), (10, "breaker_half_open"), (11, "breaker_open"),
                        (21, "breaker_half_open"), (22, "breaker_closed")]


# -- property: no call while open except the documented half-open probes --------------------------

FAMILIES = {
    "resilience4j": (lambda: r4j(automatic_transition_from_open_to_half_open_enabled=False,
                                 max_wait_duration_in_half_open_state=3.0,
                                 slow_call_duration_threshold=0.5), 3),
    "resilience4j_auto": (lambda: r4j(sliding_window_type="TIME_BASED",
                                      automatic_transition_from_open_to_half_open_enabled=True,
                                      minimum_number_of_calls=2), 3),
    "hystrix": (lambda: Hystrix(HystrixConfig(request_volume_threshold=3, sleep_window=2.0)), 1),
    "polly": (lambda: polly(minimum_throughput=2, break_duration=2.0), 1),
    "consecutive": (lambda: Consecutive(ConsecutiveConfig(fail_max=2, reset_timeout=2.0,
                                                          success_threshold=2)), 2),
}
OPS = st.lists(st.tuples(st.floats(0, 1.5), st.sampled_from(["call", "result"]), st.booleans(),
                         st.floats(0, 1)), max_size=120)
NEXT = {None: {"breaker_open"}, "breaker_open": {"breaker_half_open"},
        "breaker_half_open": {"breaker_open", "breaker_closed"}, "breaker_closed": {"breaker_open"}}


@pytest.mark.parametrize("family", sorted(FAMILIES))
@settings(max_examples=150, deadline=None)
@given(ops=OPS)
def test_breaker_never_admits_while_open_except_half_open_probes(family, ops):
    make, probes = FAMILIES[family]
    b = make()
    now, in_flight = 0.0, 0
    half_open_admits: dict[int, int] = {}
    for dt, op, failure, duration in ops:
        now += dt
        if op == "result" and in_flight:
            in_flight -= 1
            b.on_result(now, failure, duration)
        elif op == "call":
            before = b.stats["calls_permitted"]
            admitted = b.allow(now)
            assert b.stats["calls_permitted"] == before + admitted
            if admitted:
                in_flight += 1
                assert b.state != "open"
                if b.state == "half_open":
                    episode = b.stats["half_opened"]
                    half_open_admits[episode] = half_open_admits.get(episode, 0) + 1
    assert all(n <= probes for n in half_open_admits.values())
    previous, last_t = None, 0.0
    for t, kind, host, _ in b.events:
        assert kind in NEXT[previous] and t >= last_t - 1e-9 and host == -1
        previous, last_t = kind, t


def test_hystrix_error_percentage_is_computed_in_floating_point_as_hystrix_does():
    # HystrixCommandMetrics.HealthCounts: (int) ((double) errorCount / totalCount * 100). For 29
    # errors of 50 that is 57, not the exact 58: at a threshold of 58 the breaker stays closed.
    def run(errors: int) -> str:
        b = Hystrix(HystrixConfig(request_volume_threshold=50, error_threshold_percentage=58))
        for i in range(50):
            b.on_result(i * 0.01, failure=i < errors, duration=0.001)
        b.allow(0.9)
        return b.state

    assert run(29) == "closed"
    assert run(30) == "open"
