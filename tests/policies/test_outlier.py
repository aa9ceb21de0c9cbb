"""Unit and property tests of Envoy outlier detection (``../shared/envoy-semantics.md`` §0, §2,
§3.4, §12): results are fed by hand, no simulation runs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.policies.outlier import (
    DETECTOR_TYPES,
    OutlierConfig,
    OutlierDetector,
    success_rate_threshold,
)


def always(value: float):
    """A ``uniform()`` that always returns ``value`` (0.0: every enforcement above 0 % passes)."""
    return lambda: value


def detector(n: int, uniform=None, **config) -> OutlierDetector:
    return OutlierDetector(n, OutlierConfig(**config), uniform or always(0.0))


def ticks_until(d: OutlierDetector, t: float) -> None:
    """Run every interval tick due at or before ``t``."""
    while d.next_tick() <= t + 1e-9:
        d.on_tick(d.next_tick())


def fail(d: OutlierDetector, host: int, times: list[float], status: int = 500) -> None:
    for t in times:
        ticks_until(d, t)
        d.on_result(t, host, status)


# -- §2.2 counting and §2.3 ejection decision ------------------------------------------------------

def test_round_robin_three_hosts_all_503_first_ejection_at_13th_result():
    # Counters are per host: in round robin each host sees every third failure, so host 0
    # reaches 5 consecutive 5xx at the 13th result, not the 5th.
    config, _ = OutlierConfig.from_istio({"consecutive5xxErrors": 5, "maxEjectionPercent": 100})
    d = OutlierDetector(3, config, always(0.0))
    for i in range(1, 13):
        d.on_result(i / 100, (i - 1) % 3, 503)
    assert d.events == []
    for i in range(13, 16):
        d.on_result(i / 100, (i - 1) % 3, 503)
    assert d.events == [(0.13, "ejection", 0, "consecutive_5xx"),
                        (0.14, "ejection", 1, "consecutive_5xx"),
                        (0.15, "ejection", 2, "consecutive_5xx")]
    assert d.stats["ejections_active"] == 3
    # 503 is also a gateway error: detected, but Istio leaves its enforcement at Envoy's 0 %.
    assert d.stats["ejections_detected_consecutive_gateway_failure"] == 3
    assert d.stats["ejections_enforced_consecutive_gateway_failure"] == 0


def test_one_bad_host_of_three_with_mep_50_is_ejected_at_its_fifth_failure():
    d = detector(3, max_ejection_percent=50)  # 100 * 1/3 = 33 <= 50
    failures = 0
    for i in range(1, 16):
        host = (i - 1) % 3
        d.on_result(i / 100, host, 503 if host == 1 else 200)
        failures += host == 1
        assert d.is_ejected(1) == (failures >= 5)
    assert d.events == [(0.14, "ejection", 1, "consecutive_5xx")]
    assert not d.is_ejected(0) and not d.is_ejected(2)


@pytest.mark.parametrize(("n_hosts", "ejected"), [(2, False), (9, False), (10, True)])
def test_default_max_ejection_percent_needs_ten_hosts(n_hosts, ejected):
    # §0 item 1 and the §2.3 experiment: 100 * (0+1)/n <= 10 needs n >= 10.
    config, _ = OutlierConfig.from_istio({"consecutive5xxErrors": 3})
    d = OutlierDetector(n_hosts, config, always(0.0))
    fail(d, 0, [i / 100 for i in range(1, 21)], status=503)
    assert d.is_ejected(0) == ejected
    if not ejected:
        # The counter is reset after every detection, ejected or not: the 5xx detector fires at
        # failures 3, 6, ..., 18 and the gateway one (default 5) at 5, 10, 15, 20; all overflow.
        assert d.stats["ejections_detected_consecutive_5xx"] == 6
        assert d.stats["ejections_detected_consecutive_gateway_failure"] == 4
        assert d.stats["ejections_overflow"] == 10
        assert d.events == []


def test_always_eject_one_host_lets_only_the_first_ejection_through():
    d = detector(3, always_eject_one_host=True)  # max_ejection_percent stays 10
    fail(d, 0, [0.1, 0.2, 0.3, 0.4, 0.5])
    fail(d, 2, [0.6, 0.7, 0.8, 0.9, 1.0])
    assert [d.is_ejected(h) for h in range(3)] == [True, False, False]
    assert d.stats["ejections_overflow"] == 1
    assert d.stats["ejections_enforced_total"] == 1


def test_a_non_5xx_response_resets_both_counters():
    d = detector(1, max_ejection_percent=100)
    fail(d, 0, [0.1, 0.2, 0.3, 0.4], status=503)
    d.on_result(0.5, 0, 404)
    host = d.hosts[0]
    assert (host.consecutive_5xx, host.consecutive_gateway_failure) == (0, 0)
    fail(d, 0, [0.6, 0.7, 0.8, 0.9], status=503)
    assert not d.is_ejected(0)
    assert host.consecutive_5xx == 4


def test_gateway_counter_counts_only_502_503_504():
    d = detector(1, max_ejection_percent=100)
    for t, status in [(0.1, 502), (0.2, 503), (0.3, 500), (0.4, 504)]:
        d.on_result(t, 0, status)
    host = d.hosts[0]
    assert (host.consecutive_5xx, host.consecutive_gateway_failure) == (4, 1)


def test_gateway_failures_are_detected_but_not_enforced_by_default():
    d = detector(1, max_ejection_percent=100, consecutive_5xx=0)  # 5xx detector off
    fail(d, 0, [0.1, 0.2, 0.3, 0.4, 0.5], status=502)
    assert not d.is_ejected(0)
    assert d.stats["ejections_detected_consecutive_gateway_failure"] == 1
    assert d.stats["ejections_enforced_consecutive_gateway_failure"] == 0
    assert d.stats["ejections_overflow"] == 0

    d = detector(1, max_ejection_percent=100, consecutive_5xx=0,
                 enforcing_consecutive_gateway_failure=100)
    fail(d, 0, [0.1, 0.2, 0.3, 0.4, 0.5], status=502)
    assert d.events == [(0.5, "ejection", 0, "consecutive_gateway_failure")]


def test_enforcement_chance_uses_the_injected_uniform():
    draws = iter([0.6, 0.4, 0.0])  # 60 >= 50: not enforced; 40 < 50: enforced; then jitter
    d = detector(1, uniform=lambda: next(draws), max_ejection_percent=100,
                 enforcing_consecutive_5xx=50)
    fail(d, 0, [i / 10 for i in range(1, 6)])
    assert not d.is_ejected(0)
    assert d.stats["ejections_detected_consecutive_5xx"] == 1
    fail(d, 0, [i / 10 for i in range(6, 11)])
    assert d.is_ejected(0)
    assert d.stats["ejections_enforced_consecutive_5xx"] == 1


def test_local_origin_failures_count_as_503_and_504_when_not_split():
    d = detector(1, max_ejection_percent=100)
    for t, status in [(0.1, 503), (0.2, 504), (0.3, 504), (0.4, 503), (0.5, 504)]:
        d.on_result(t, 0, status, local_origin=True)
    assert d.events == [(0.5, "ejection", 0, "consecutive_5xx")]
    assert d.stats["ejections_detected_consecutive_gateway_failure"] == 1
    assert d.hosts[0].consecutive_local_origin_failure == 0


def test_local_origin_failures_in_split_mode_move_only_the_local_counter():
    d = detector(1, max_ejection_percent=100, split_external_local_origin_errors=True)
    host = d.hosts[0]
    for t in [0.1, 0.2, 0.3, 0.4]:
        d.on_result(t, 0, 504, local_origin=True)
    assert (host.consecutive_5xx, host.consecutive_local_origin_failure) == (0, 4)
    # Any HTTP response, even a 503, means the connection worked: local counter back to 0.
    d.on_result(0.5, 0, 503)
    assert (host.consecutive_5xx, host.consecutive_local_origin_failure) == (1, 0)
    assert (host.local_sr_current.success, host.local_sr_current.total) == (1, 5)
    for t in [0.6, 0.7, 0.8, 0.9, 1.0]:
        d.on_result(t, 0, 503, local_origin=True)
    assert d.events == [(1.0, "ejection", 0, "consecutive_local_origin_failure")]
    assert host.consecutive_5xx == 1


def test_a_local_origin_failure_is_503_or_504():
    d = detector(1)
    with pytest.raises(ValueError, match="503 or 504"):
        d.on_result(0.1, 0, 500, local_origin=True)


def test_failures_on_an_ejected_host_are_ignored_without_counting_a_detection():
    # onConsecutiveErrorWorker returns before updateDetectedEjectionStats when the host already
    # has FAILED_OUTLIER_CHECK (Envoy's source; the reference's §2.3 pseudo-code says otherwise).
    d = detector(2, max_ejection_percent=100)
    fail(d, 0, [i / 10 for i in range(1, 11)])  # 5 more failures in flight after the ejection
    assert d.events == [(0.5, "ejection", 0, "consecutive_5xx")]
    assert d.stats["ejections_detected_consecutive_5xx"] == 1
    assert d.stats["ejections_active"] == 1
    assert d.hosts[0].consecutive_5xx == 5  # not reset: the detection was ignored


# -- §2.4 ejection time, un-ejection and decay -----------------------------------------------------

def test_ejection_time_is_rounded_up_to_the_next_tick():
    # §0 item 2: ejected at 0.3 s for base 2 s is due at 2.3 s, and back at the 3 s tick.
    d = detector(1, max_ejection_percent=100, interval=1.0, base_ejection_time=2.0)
    fail(d, 0, [0.1, 0.15, 0.2, 0.25, 0.3])
    assert d.uneject_due(0) == pytest.approx(2.3)
    ticks_until(d, 2.9)
    assert d.is_ejected(0)
    d.on_tick(3.0)
    assert not d.is_ejected(0)
    assert d.events == [(0.3, "ejection", 0, "consecutive_5xx"),
                        (3.0, "unejection", 0, "consecutive_5xx")]


def test_jitter_is_added_to_the_ejection_time():
    # Jitter is a whole number of ms in [0, 500]: floor(0.5 * 501) = 250 ms; 0.9 + 2 + 0.25.
    d = detector(1, uniform=always(0.5), max_ejection_percent=100, interval=1.0,
                 base_ejection_time=2.0, max_ejection_time_jitter=0.5)
    fail(d, 0, [0.5, 0.6, 0.7, 0.8, 0.9])
    assert d.hosts[0].jitter == 0.25
    assert d.uneject_due(0) == pytest.approx(3.15)
    ticks_until(d, 3.0)
    assert d.is_ejected(0)
    d.on_tick(4.0)
    assert not d.is_ejected(0)


def test_unejection_resets_the_consecutive_counters():
    d = detector(2, max_ejection_percent=100, interval=1.0, base_ejection_time=1.0,
                 split_external_local_origin_errors=True)
    fail(d, 0, [0.1, 0.2, 0.3, 0.4, 0.5], status=503)  # ejected
    fail(d, 0, [0.6, 0.7], status=502)  # answers still arriving while ejected
    d.on_result(0.8, 0, 504, local_origin=True)
    host = d.hosts[0]
    assert (host.consecutive_5xx, host.consecutive_gateway_failure,
            host.consecutive_local_origin_failure) == (2, 2, 1)
    d.on_tick(1.0)
    d.on_tick(2.0)
    assert not d.is_ejected(0)
    assert (host.consecutive_5xx, host.consecutive_gateway_failure,
            host.consecutive_local_origin_failure) == (0, 0, 0)


def eject_now(d: OutlierDetector, host: int, t: float) -> None:
    """Five quick 500s ending at ``t``."""
    fail(d, host, [t - 0.04, t - 0.03, t - 0.02, t - 0.01, t])


def test_backoff_grows_with_each_ejection_and_decays_by_one_per_healthy_interval():
    # §0 item 3.
    d = detector(1, max_ejection_percent=100, interval=1.0, base_ejection_time=2.0)
    host = d.hosts[0]
    eject_now(d, 0, 0.3)
    assert host.backoff == 1
    ticks_until(d, 3.0)  # back at 3 s (due 2.3 s)
    eject_now(d, 0, 3.5)
    assert host.backoff == 2
    assert d.uneject_due(0) == pytest.approx(7.5)  # 2 s * 2
    ticks_until(d, 7.0)
    assert d.is_ejected(0)
    d.on_tick(8.0)
    assert not d.is_ejected(0)
    assert host.backoff == 2  # un-ejected at this very tick: no decay yet
    d.on_tick(9.0)
    assert host.backoff == 1
    d.on_tick(10.0)
    assert host.backoff == 0
    d.on_tick(11.0)
    assert host.backoff == 0
    eject_now(d, 0, 11.5)
    assert d.uneject_due(0) == pytest.approx(13.5)  # base again
    assert host.num_ejections == 3


def test_backoff_stops_growing_once_the_ejection_time_reaches_the_maximum():
    d = detector(1, max_ejection_percent=100, interval=1.0, base_ejection_time=2.0,
                 max_ejection_time=5.0)
    durations, backoffs = [], []
    t = 0.5
    for _ in range(5):
        eject_now(d, 0, t)
        durations.append(round(d.uneject_due(0) - t, 9))
        backoffs.append(d.hosts[0].backoff)
        ticks_until(d, d.uneject_due(0) + 1.0)
        t = d.next_tick() - 0.5  # fail again before any decay
    # k grows while k*base < max + base: 1, 2, 3, 4, then stays; D = min(base*k, max).
    assert backoffs == [1, 2, 3, 4, 4]
    assert durations == [2.0, 4.0, 5.0, 5.0, 5.0]


def test_max_ejection_time_defaults_to_at_least_base():
    assert OutlierConfig().max_ejection_time == 300.0
    assert OutlierConfig(base_ejection_time=400.0).max_ejection_time == 400.0


# -- §2.5 sweeps -----------------------------------------------------------------------------------

def feed_interval(d: OutlierDetector, rates: list[int], volume: int, t0: float = 0.0) -> None:
    """``volume`` results per host before ``t0 + 1`` s; host h succeeds ``rates[h]`` % of the
    time, failures spread out so that no consecutive detector fires."""
    for i in range(volume):
        for host, rate in enumerate(rates):
            ok = (i * rate) // 100 != ((i + 1) * rate) // 100
            d.on_result(t0 + 0.5 + i * 1e-4, host, 200 if ok else 500)


def test_success_rate_threshold_of_the_reference_example():
    mean, threshold = success_rate_threshold([50, 100, 100, 100, 100], 1.9)
    assert (mean, threshold) == pytest.approx((90.0, 52.0))


def test_success_rate_sweep_ejects_the_host_below_threshold_on_the_next_tick():
    d = detector(5, max_ejection_percent=20, interval=1.0)
    feed_interval(d, [50, 100, 100, 100, 100], volume=100)
    assert d.events == []
    d.on_tick(1.0)
    assert d.events == [(1.0, "ejection", 0, "success_rate")]
    assert d.stats["ejections_detected_success_rate"] == 1
    d.on_tick(2.0)  # the sweep sees only the last interval, which had no traffic
    assert d.stats["ejections_detected_success_rate"] == 1


def test_success_rate_sweep_overflows_with_the_default_max_ejection_percent():
    d = detector(5, interval=1.0)
    feed_interval(d, [50, 100, 100, 100, 100], volume=100)
    d.on_tick(1.0)
    assert d.events == []
    assert d.stats["ejections_overflow"] == 1


def test_success_rate_needs_volume_and_minimum_hosts_and_is_strict():
    d = detector(5, max_ejection_percent=100, interval=1.0)
    feed_interval(d, [50, 100, 100, 100, 100], volume=99)  # below success_rate_request_volume
    d.on_tick(1.0)
    assert d.stats["ejections_detected_success_rate"] == 0
    # Equal rates: stdev 0, threshold == mean == every rate, and "strictly below" ejects none.
    feed_interval(d, [90] * 5, volume=100, t0=1.0)
    d.on_tick(2.0)
    assert d.stats["ejections_detected_success_rate"] == 0


@pytest.mark.parametrize(("enforcing", "ejected"), [(0, False), (100, True)])
def test_failure_percentage_sweep(enforcing, ejected):
    d = detector(5, max_ejection_percent=100, interval=1.0, consecutive_5xx=0,
                 consecutive_gateway_failure=0, enforcing_failure_percentage=enforcing)
    feed_interval(d, [10, 100, 100, 100, 16], volume=50)  # failure 90 % and 84 %
    d.on_tick(1.0)
    assert d.stats["ejections_detected_failure_percentage"] == 1
    assert d.stats["ejections_detected_success_rate"] == 0  # volume 50 < 100
    assert d.is_ejected(0) == ejected
    assert not d.is_ejected(4)


# -- §3.4 update_merge_window ----------------------------------------------------------------------

def test_merge_window_delays_a_second_change_until_one_second_after_the_first():
    # §0 item 4: the first ejection reaches the LB at once; a second one 0.2 s later waits
    # until 1 s after the first; a third within 1 s of that delivery waits again.
    d = detector(3, max_ejection_percent=100)
    eject_now(d, 0, 1.0)
    assert d.healthy_hosts(1.0) == [1, 2]
    eject_now(d, 1, 1.2)
    assert d.is_ejected(1)
    assert d.pending_update_at == 2.0
    assert d.healthy_hosts(1.99) == [1, 2]
    assert d.healthy_hosts(2.0) == [2]
    eject_now(d, 2, 2.3)
    assert d.healthy_hosts(2.3) == [2]
    assert d.pending_update_at == 3.0
    assert d.healthy_hosts(3.0) == []


def test_merge_window_zero_applies_every_change_at_once():
    d = detector(3, max_ejection_percent=100, update_merge_window=0.0)
    eject_now(d, 0, 1.0)
    eject_now(d, 1, 1.2)
    assert d.healthy_hosts(1.2) == [2]
    assert d.pending_update_at is None


def test_hosts_unejected_on_the_same_tick_reach_the_lb_one_window_apart():
    d = detector(2, max_ejection_percent=100, interval=1.0, base_ejection_time=2.0)
    eject_now(d, 0, 0.5)
    eject_now(d, 1, 0.6)  # held until 1.5 s
    assert d.healthy_hosts(1.0) == [1]
    ticks_until(d, 2.0)
    assert d.healthy_hosts(2.0) == []
    d.on_tick(3.0)  # both back: one update each; the first goes at once (last delivery 1.5 s)
    assert not d.is_ejected(0) and not d.is_ejected(1)
    assert d.healthy_hosts(3.0) == [0]
    assert d.pending_update_at == 4.0
    assert d.healthy_hosts(4.0) == [0, 1]


# -- timer -----------------------------------------------------------------------------------------

def test_interval_timer_runs_from_creation_and_must_not_be_skipped():
    d = OutlierDetector(1, OutlierConfig(interval=1.0), always(0.0), start_time=5.0)
    assert d.next_tick() == 6.0
    with pytest.raises(ValueError, match="before the timer"):
        d.on_tick(5.5)
    with pytest.raises(RuntimeError, match="call on_tick"):
        d.on_result(6.5, 0, 200)
    d.on_tick(6.0)
    assert d.next_tick() == 7.0
    d.on_result(6.5, 0, 200)


def test_stats_carry_every_envoy_counter():
    stats = detector(1).stats
    for kind in DETECTOR_TYPES:
        assert stats[f"ejections_detected_{kind}"] == 0
        assert stats[f"ejections_enforced_{kind}"] == 0
    assert {"ejections_active", "ejections_overflow", "ejections_enforced_total"} <= set(stats)


# -- Istio translation (§2.1, §11) -----------------------------------------------------------------

def test_from_istio_unset_fields_keep_envoy_defaults():
    config, panic = OutlierConfig.from_istio({})
    assert config == OutlierConfig(enforcing_success_rate=0)
    assert panic == 0.0


def test_from_istio_consecutive_errors_set_value_and_enforcement():
    config, _ = OutlierConfig.from_istio({"consecutive5xxErrors": 7, "consecutiveGatewayErrors": 3})
    assert (config.consecutive_5xx, config.enforcing_consecutive_5xx) == (7, 100)
    assert (config.consecutive_gateway_failure,
            config.enforcing_consecutive_gateway_failure) == (3, 100)


def test_from_istio_zero_disables_a_consecutive_detector():
    config, _ = OutlierConfig.from_istio({"consecutive5xxErrors": 0, "consecutiveGatewayErrors": 0})
    assert (config.consecutive_5xx, config.enforcing_consecutive_5xx) == (0, 0)
    assert (config.consecutive_gateway_failure,
            config.enforcing_consecutive_gateway_failure) == (0, 0)


def test_from_istio_durations_percent_and_panic_threshold():
    config, panic = OutlierConfig.from_istio({
        "interval": 1.0, "baseEjectionTime": 2.0, "maxEjectionPercent": 50,
        "minHealthPercent": 30})
    assert (config.interval, config.base_ejection_time) == (1.0, 2.0)
    assert config.max_ejection_percent == 50
    assert config.max_ejection_time == 300.0
    assert not config.always_eject_one_host
    assert panic == 30.0
    assert OutlierConfig.from_istio({"maxEjectionPercent": 0}).config.max_ejection_percent == 10


def test_from_istio_local_origin_fields_need_split():
    config, _ = OutlierConfig.from_istio({"consecutiveLocalOriginFailures": 2})
    assert not config.split_external_local_origin_errors
    assert config.consecutive_local_origin_failure == 5
    assert config.enforcing_local_origin_success_rate == 100
    config, _ = OutlierConfig.from_istio(
        {"splitExternalLocalOriginErrors": True, "consecutiveLocalOriginFailures": 2})
    assert config.split_external_local_origin_errors
    assert (config.consecutive_local_origin_failure,
            config.enforcing_consecutive_local_origin_failure) == (2, 100)
    assert config.enforcing_local_origin_success_rate == 0
    config, _ = OutlierConfig.from_istio(
        {"splitExternalLocalOriginErrors": True, "consecutiveLocalOriginFailures": 0})
    assert config.consecutive_local_origin_failure == 5  # only > 0 is written


@pytest.mark.parametrize("name", ["consecutiveErrors", "outlierDetectionHttpErrorCodes", "typo"])
def test_from_istio_rejects_fields_it_does_not_model(name):
    with pytest.raises(ValueError, match=name):
        OutlierConfig.from_istio({name: 1})


# -- properties ------------------------------------------------------------------------------------

_results = st.lists(
    st.tuples(st.floats(0.0, 0.6), st.integers(0, 99), st.sampled_from([200, 500, 502, 503, 504]),
              st.booleans()),
    max_size=150,
)


def _run(n, config, seed, results, check):
    d = OutlierDetector(n, config, random.Random(seed).random)
    t = 0.0
    for dt, host, status, local in results:
        t += dt
        ticks_until(d, t)
        if local:
            status = 504 if status == 504 else 503
        d.on_result(t, host % n, status, local_origin=local)
        check(d, t)
    return d


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 12), mep=st.integers(0, 100), always_one=st.booleans(),
       split=st.booleans(), threshold=st.integers(1, 4), enforce=st.integers(0, 100),
       window=st.sampled_from([0.0, 1.0]), seed=st.integers(0, 2**32 - 1), results=_results)
def test_ejection_cap_and_active_count_invariants(n, mep, always_one, split, threshold, enforce,
                                                 window, seed, results):
    config = OutlierConfig(
        consecutive_5xx=threshold, consecutive_gateway_failure=threshold,
        consecutive_local_origin_failure=threshold, enforcing_consecutive_5xx=enforce,
        enforcing_consecutive_gateway_failure=100, split_external_local_origin_errors=split,
        max_ejection_percent=mep, always_eject_one_host=always_one, interval=1.0,
        base_ejection_time=1.5, max_ejection_time=4.0, max_ejection_time_jitter=0.3,
        success_rate_minimum_hosts=1, success_rate_request_volume=3,
        failure_percentage_minimum_hosts=1, failure_percentage_request_volume=3,
        enforcing_failure_percentage=100, update_merge_window=window)

    def check(d: OutlierDetector, t: float) -> None:
        ejected = [h for h in range(n) if d.is_ejected(h)]
        assert len(ejected) == d.ejected_count == d.stats["ejections_active"]
        assert 100 * len(ejected) / n <= mep or (always_one and len(ejected) == 1)
        kinds = [e[1] for e in d.events]
        assert kinds.count("ejection") - kinds.count("unejection") == len(ejected)
        assert all(1 <= d.hosts[h].backoff <= 4.0 / 1.5 + 1 for h in ejected)
        if d.pending_update_at is None or t >= d.pending_update_at:
            assert d.healthy_hosts(t) == [h for h in range(n) if h not in ejected]

    first = _run(n, config, seed, results, check)
    again = _run(n, config, seed, results, lambda d, t: None)
    assert first.events == again.events and first.stats == again.stats
