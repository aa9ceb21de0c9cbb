"""Unit and property tests of adaptive concurrency and admission control
(``../shared/envoy-semantics.md`` §9): samples and results are fed by hand, no simulation runs."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.policies.adaptive_concurrency import GradientController, GradientControllerConfig
from meshsim.policies.admission_control import (
    DEFAULT_GRPC_SUCCESS_STATUS,
    AdmissionControlConfig,
    AdmissionController,
)

SEED = 20260714


def gc(**config) -> GradientController:
    """Update every 1 s, minRTT every 60 s without jitter, 3 samples per measurement."""
    base = {"concurrency_update_interval": 1.0, "interval": 60.0, "jitter": 0.0,
            "request_count": 3}
    return GradientController(GradientControllerConfig(**(base | config)))


def feed(c: GradientController, start: float, rtts: list[float]) -> None:
    """Admit one request per rtt at ``start``; each completes ``rtt`` later."""
    for _ in rtts:
        assert c.try_acquire(start)
    for rtt in sorted(rtts):
        c.on_response(start + rtt, rtt)


def measured(min_rtt: float = 0.010, **config) -> GradientController:
    """A controller whose first minRTT measurement ended at ``min_rtt`` s, limit 3."""
    c = gc(**config)
    feed(c, 0.0, [min_rtt] * c.config.request_count)
    assert not c.in_min_rtt_window
    return c


def log(c: GradientController | AdmissionController) -> list[tuple[float, str, str]]:
    return [(round(t, 6), kind, detail) for t, kind, _, detail in c.events]


# -- gradient controller: configuration ----------------------------------------------------------

def test_gradient_defaults_are_envoys():
    c = GradientControllerConfig(concurrency_update_interval=0.1, interval=60.0)
    assert (c.sample_aggregate_percentile, c.max_concurrency_limit, c.request_count, c.jitter,
            c.min_concurrency, c.buffer, c.concurrency_limit_exceeded_status,
            c.min_concurrency_limit, c.fixed_value, c.enabled) == (
        50.0, 1000, 50, 15.0, 3, 25.0, 503, None, None, True)
    assert GradientControllerConfig(0.1, 60.0, concurrency_limit_exceeded_status=200
                                    ).concurrency_limit_exceeded_status == 503


def test_gradient_from_envoy_reads_typed_config():
    config = GradientControllerConfig.from_envoy({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.adaptive_concurrency.v3."
                 "AdaptiveConcurrency",
        "gradient_controller_config": {
            "sample_aggregate_percentile": {"value": 90},
            "concurrency_limit_params": {"concurrency_update_interval": "0.1s",
                                         "max_concurrency_limit": 200},
            "min_rtt_calc_params": {"jitter": {"value": 10}, "interval": "60s",
                                    "request_count": 50, "min_concurrency": 5,
                                    "buffer": {"value": 50}}},
        "enabled": {"default_value": True, "runtime_key": "adaptive_concurrency.enabled"},
        "concurrency_limit_exceeded_status": {"code": 429},
    })
    assert config == GradientControllerConfig(
        0.1, interval=60.0, jitter=10.0, request_count=50, min_concurrency=5, buffer=50.0,
        sample_aggregate_percentile=90.0, max_concurrency_limit=200,
        concurrency_limit_exceeded_status=429)


def _gc_typed(clp=None, mrp=None, **top) -> dict:
    return {"gradient_controller_config": {
        "concurrency_limit_params": {"concurrency_update_interval": 0.1} if clp is None else clp,
        "min_rtt_calc_params": {"interval": 60} if mrp is None else mrp}, **top}


@pytest.mark.parametrize(("typed", "message"), [
    (_gc_typed(clp={}), "concurrency_limit_params.concurrency_update_interval: is required"),
    (_gc_typed(mrp={"interval": 60, "jitter": {"value": 150}}),
     "min_rtt_calc_params.jitter.value: must be a percentage in [0, 100]"),
    (_gc_typed(mrp={"interval": "soon"}), "min_rtt_calc_params.interval: expected a duration"),
    (_gc_typed(mrp={}), "min_rtt_calc_params.interval: is required unless fixed_value"),
    (_gc_typed(mrp={"interval": 60, "request_count": 0}),
     "min_rtt_calc_params.request_count: must be an integer > 0"),
    (_gc_typed(mrp={"interval": 60, "min_concurrency": 2.5}),
     "min_rtt_calc_params.min_concurrency: expected an integer"),
    (_gc_typed(clp={"concurrency_update_interval": "100us"}),
     "concurrency_update_interval: must be >= 1ms"),
    (_gc_typed(mrp={"interval": 60, "max_rtt": 1}),
     "min_rtt_calc_params.max_rtt: unknown or not modelled field"),
    ({"gradient_controller_config": {"concurrency_limit_params": {
        "concurrency_update_interval": 0.1}}},
     "gradient_controller_config.min_rtt_calc_params: is required"),
    (_gc_typed(enabled={"default_value": "yes"}), "enabled: expected a boolean"),
])
def test_gradient_from_envoy_names_the_bad_field(typed, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GradientControllerConfig.from_envoy(typed)


def test_fixed_value_disables_sampling_and_needs_no_interval():
    config = GradientControllerConfig.from_envoy(_gc_typed(mrp={"fixed_value": "10ms"}))
    assert config.fixed_value == pytest.approx(0.010) and config.interval is None
    assert not config.samples_min_rtt


# -- gradient controller: behaviour --------------------------------------------------------------

def test_starts_measuring_min_rtt_pinned_to_min_concurrency_and_blocks_over_the_limit():
    c = gc()
    assert c.in_min_rtt_window and c.limit == 3
    assert c.stats["min_rtt_calculation_active"] == 1
    assert [c.try_acquire(0.0) for _ in range(4)] == [True, True, True, False]
    assert c.in_flight == 3 and c.stats["rq_blocked"] == 1
    c.on_response(0.01, 0.01)  # a slot is free again
    assert c.try_acquire(0.02) and not c.try_acquire(0.02)
    assert c.stats["rq_blocked"] == 2
    assert log(c) == [(0.0, "min_rtt_window_started", "initial")]


def test_min_rtt_is_the_percentile_of_request_count_samples_and_restarts_the_timers():
    c = gc()
    for _ in range(3):
        assert c.try_acquire(0.0)
    c.on_response(0.010, 0.010)
    c.on_response(0.020, 0.020)
    assert c.in_min_rtt_window and c.min_rtt is None
    c.on_response(0.030, 0.030)  # the third sample ends the measurement
    assert c.min_rtt == 0.020  # the p50 of the window, not its minimum
    assert not c.in_min_rtt_window and c.limit == 3  # back to the limit before the window
    assert (c.stats["min_rtt_msecs"], c.stats["min_rtt_calculation_active"]) == (20, 0)
    assert c.next_timer() == pytest.approx(1.030)  # the update timer restarts from now
    assert log(c)[-1] == (0.03, "min_rtt_measured", "min_rtt=20.000ms")


def test_gradient_formula_step_by_step():
    # minRTT 10 ms, buffer 25 %: the buffered minRTT is 12.5 ms. The headroom is the square root
    # of gradient × limit (Envoy's calculateNewLimit), and the sum is truncated.
    c = measured(0.010)
    feed(c, 0.5, [0.010, 0.010])
    c.on_timer(1.010)  # gradient 1.25: 3 × 1.25 = 3.75, + sqrt(3.75) = 5.69 -> 5
    assert (c.limit, c.sample_rtt) == (5, 0.010)
    assert (c.stats["gradient"], c.stats["burst_queue_size"], c.stats["sample_rtt_msecs"]) == (
        1250, 1, 10)
    feed(c, 1.5, [0.010] * 3)
    c.on_timer(2.010)  # 5 × 1.25 = 6.25, + 2.5 = 8.75 -> 8
    assert c.limit == 8
    feed(c, 2.5, [0.025] * 3)
    c.on_timer(3.010)  # gradient 12.5 / 25 = 0.5: 4 + 2 = 6
    assert (c.limit, c.stats["gradient"]) == (6, 500)
    feed(c, 3.5, [0.100] * 3)
    c.on_timer(4.010)  # 12.5 / 100 = 0.125, clamped to 0.5: 3 + 1.73 -> 4
    assert (c.limit, c.stats["gradient"]) == (4, 500)
    feed(c, 4.5, [0.001] * 3)
    c.on_timer(5.010)  # 12.5 / 1 = 12.5, clamped to 2.0: 8 + 2.83 -> 10
    assert (c.limit, c.stats["gradient"]) == (10, 2000)
    assert [d for _, kind, d in log(c) if kind == "concurrency_limit_changed"] == [
        "3->5", "5->8", "8->6", "6->4", "4->10"]


def test_limit_is_clamped_to_max_and_to_min_concurrency():
    c = measured(0.010, max_concurrency_limit=4)
    feed(c, 0.5, [0.010])
    c.on_timer(1.010)
    assert c.limit == 4  # 5 -> max
    feed(c, 1.5, [1.0])
    c.on_timer(3.010)
    assert c.limit == 3  # 4 × 0.5 + sqrt(2) = 3.41 -> 3, the floor


def test_a_window_without_samples_changes_nothing():
    c = measured(0.010)
    c.on_timer(1.010)
    assert c.limit == 3 and c.sample_rtt is None and c.next_timer() == pytest.approx(2.010)
    assert [kind for _, kind, _ in log(c)] == ["min_rtt_window_started", "min_rtt_measured"]


def test_scheduled_measurement_drops_samples_of_requests_admitted_before_it():
    c = measured(0.010, interval=10.0)
    assert c.try_acquire(9.0)  # admitted before the next measurement (due at 10.010)
    c.on_timer(10.010)
    assert c.in_min_rtt_window
    c.on_response(10.5, 1.5)  # started at 9.0: freed, not sampled
    assert c.in_flight == 0 and c.in_min_rtt_window
    feed(c, 10.6, [0.020] * 3)
    assert not c.in_min_rtt_window and c.min_rtt == 0.020
    assert log(c)[2:] == [(10.01, "min_rtt_window_started", "interval"),
                          (10.62, "min_rtt_measured", "min_rtt=20.000ms")]


def test_five_update_windows_at_the_minimum_start_a_measurement():
    c = measured(0.010)
    for k in range(1, 5):
        feed(c, k - 0.5, [0.100])
        c.on_timer(k + 0.010)  # 3 × 0.5 + sqrt(1.5) = 2.72, clamped to 3: at the minimum
    assert not c.in_min_rtt_window and c.limit == 3
    feed(c, 4.5, [0.100])
    c.on_timer(5.010)  # the fifth consecutive window at 3 -> measure at once
    assert c.in_min_rtt_window
    assert log(c)[-1] == (5.01, "min_rtt_window_started", "limit_at_minimum")
    # While measuring, the update timer is dropped; the measurement's end restarts it.
    assert c.next_timer() == pytest.approx(6.010)
    c.on_timer(6.010)
    assert c.next_timer() is None
    feed(c, 7.0, [0.012] * 3)
    assert c.min_rtt == 0.012 and c.next_timer() == pytest.approx(8.012)


def test_cancel_frees_the_slot_without_a_sample():
    c = gc(request_count=1)
    feed_times = [c.try_acquire(0.0) for _ in range(3)]
    assert feed_times == [True, True, True]
    c.on_cancel(0.5)
    assert c.in_flight == 2 and c.in_min_rtt_window  # no sample
    c.on_response(0.6, 0.6)
    assert c.min_rtt == 0.6 and c.in_flight == 1
    with pytest.raises(RuntimeError, match="in flight"):
        gc().on_cancel(0.0)


def test_next_measurement_is_interval_plus_a_jitter_in_whole_ms():
    config = GradientControllerConfig(concurrency_update_interval=100.0, interval=10.0,
                                      jitter=15.0, request_count=1)
    c = GradientController(config, uniform=np.random.default_rng(SEED).random)
    feed(c, 0.0, [0.010])
    # applyJitter: 10000 ms + random % ceil(10000 × 0.15) ms
    u = np.random.default_rng(SEED).random()
    assert c.next_timer() == pytest.approx(0.010 + (10_000 + math.floor(u * 1500)) / 1000)
    with pytest.raises(ValueError, match="uniform"):
        GradientController(config)


def test_fixed_min_rtt_never_measures():
    c = gc(interval=None, fixed_value=0.010)
    assert not c.in_min_rtt_window and c.min_rtt == 0.010 and c.stats["min_rtt_msecs"] == 10
    feed(c, 0.5, [0.010])
    c.on_timer(1.0)
    assert c.limit == 5
    for k in range(2, 9):  # at the minimum for many windows: no measurement without sampling
        feed(c, k - 0.5, [1.0])
        c.on_timer(float(k) + 0.5)
    assert c.limit == 3 and not c.in_min_rtt_window
    assert all(kind == "concurrency_limit_changed" for _, kind, _ in log(c))


def test_separate_min_concurrency_limit_leaves_the_limit_alone_while_measuring():
    # Envoy 1.40 docs: with min_concurrency_limit set, a measurement does not pin the limit, and
    # the limit may fall to min_concurrency_limit, below min_concurrency.
    c = gc(min_concurrency=5, min_concurrency_limit=2)
    assert c.in_min_rtt_window and c.limit == 5
    feed(c, 0.0, [0.010] * 3)
    limits = []
    for k in range(1, 6):
        feed(c, k - 0.5, [0.100])
        c.on_timer(k + 0.010)
        limits.append(c.limit)
    assert limits == [4, 3, 2, 2, 2]  # 5×.5+1.58=4.08, 2+1.41=3.41, 1.5+1.22=2.72, floor 2...


def test_disabled_filter_passes_everything():
    c = gc(enabled=False)
    assert all(c.try_acquire(0.0) for _ in range(10))
    c.on_response(1.0, 1.0)
    assert c.in_flight == 0 and c.stats["rq_blocked"] == 0


def test_time_must_not_go_backwards():
    c = gc()
    c.try_acquire(1.0)
    with pytest.raises(ValueError, match="backwards"):
        c.try_acquire(0.5)


# -- gradient controller: properties -------------------------------------------------------------

@st.composite
def gradient_configs(draw) -> GradientControllerConfig:
    min_c = draw(st.integers(1, 6))
    max_c = draw(st.integers(min_c, 40))
    return GradientControllerConfig(
        concurrency_update_interval=draw(st.sampled_from([0.05, 0.1, 0.5])),
        interval=draw(st.sampled_from([0.5, 1.0, 3.0])),
        fixed_value=draw(st.sampled_from([None, None, 0.01])),
        request_count=draw(st.integers(1, 6)),
        jitter=draw(st.sampled_from([0.0, 15.0, 50.0])),
        min_concurrency=min_c, max_concurrency_limit=max_c,
        min_concurrency_limit=draw(st.one_of(st.none(), st.integers(1, max_c))),
        buffer=draw(st.sampled_from([0.0, 25.0, 100.0])),
        sample_aggregate_percentile=draw(st.sampled_from([0.0, 50.0, 90.0, 100.0])))


GC_OPS = st.lists(st.tuples(st.floats(0, 0.3), st.sampled_from(
    ["acquire", "acquire", "respond", "cancel", "timer"])), max_size=150)


@settings(max_examples=200, deadline=None)
@given(config=gradient_configs(), ops=GC_OPS)
def test_limit_stays_in_bounds_and_admission_respects_it(config, ops):
    c = GradientController(config, uniform=np.random.default_rng(SEED).random)
    low = min(config.min_concurrency, config.limit_floor)
    now, admitted = 0.0, []
    for dt, op in ops:
        now += dt
        if op == "acquire":
            ok = c.try_acquire(now)
            assert c.in_flight <= c.limit if ok else c.in_flight >= c.limit
            if ok:
                admitted.append(now)
        elif op == "respond" and admitted:
            c.on_response(now, now - admitted.pop(0))
        elif op == "cancel" and admitted:
            admitted.pop()
            c.on_cancel(now)
        elif op == "timer" and (due := c.next_timer()) is not None:
            now = max(now, due)
            c.on_timer(now)
        assert low <= c.limit <= config.max_concurrency_limit
        assert c.in_flight == len(admitted)
    times = [t for t, *_ in c.events]
    assert times == sorted(times)


# -- admission control: configuration ------------------------------------------------------------

def test_admission_defaults_are_envoys():
    c = AdmissionControlConfig()
    assert (c.http_success_status, c.grpc_success_status, c.window_seconds, c.aggression,
            c.sr_threshold, c.rps_threshold, c.max_rejection_probability, c.enabled) == (
        None, DEFAULT_GRPC_SUCCESS_STATUS, 30, 1.0, 95.0, 0, 80.0, True)
    assert [c.is_http_success(s) for s in (200, 404, 499, 500, 503)] == [
        True, True, True, False, False]
    assert AdmissionControlConfig.from_envoy(
        {"success_criteria": {"http_criteria": None, "grpc_criteria": None}}) == c


def test_admission_from_envoy_reads_the_docs_example():
    config = AdmissionControlConfig.from_envoy({
        "enabled": {"default_value": True, "runtime_key": "admission_control.enabled"},
        "sampling_window": "120s",
        "sr_threshold": {"default_value": {"value": 95.0}, "runtime_key": "ac.sr_threshold"},
        "aggression": {"default_value": 1.5, "runtime_key": "ac.aggression"},
        "rps_threshold": {"default_value": 5, "runtime_key": "ac.rps_threshold"},
        "max_rejection_probability": {"default_value": {"value": 80.0}, "runtime_key": "ac.m"},
        "success_criteria": {
            "http_criteria": {"http_success_status": [{"start": 100, "end": 400},
                                                      {"start": 404, "end": 405}]},
            "grpc_criteria": {"grpc_success_status": [0, 1]}},
    })
    assert config == AdmissionControlConfig(
        http_success_status=((100, 400), (404, 405)), grpc_success_status=frozenset({0, 1}),
        sampling_window=120.0, aggression=1.5, rps_threshold=5)
    assert [config.is_http_success(s) for s in (302, 403, 404, 429)] == [True, False, True, False]


@pytest.mark.parametrize(("typed", "message"), [
    ({}, "success_criteria: is required"),
    ({"success_criteria": {}, "sr_threshold": {"default_value": {"value": 0.5}}},
     "sr_threshold: Success rate threshold cannot be less than 1.0%."),
    ({"success_criteria": {}, "sampling_window": "0.9s"}, "sampling_window: must be at least 1s"),
    ({"success_criteria": {"http_criteria": {"http_success_status": [{"start": 600,
                                                                      "end": 700}]}}},
     "http_success_status: invalid HTTP range: [600, 700)"),
    ({"success_criteria": {"http_criteria": {"http_success_status": []}}},
     "http_success_status: needs at least one range"),
    ({"success_criteria": {"grpc_criteria": {"grpc_success_status": [17]}}},
     "grpc_success_status: invalid gRPC code 17"),
    ({"success_criteria": {}, "rps_threshold": {"default_value": "many"}},
     "rps_threshold.default_value: expected a number"),
    ({"success_criteria": {}, "rules": []}, "typed_config.rules: unknown or not modelled field"),
])
def test_admission_from_envoy_names_the_bad_field(typed, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        AdmissionControlConfig.from_envoy(typed)


def test_sampling_window_is_truncated_to_whole_seconds():
    assert AdmissionControlConfig(sampling_window=1.9).window_seconds == 1


# -- admission control: behaviour ----------------------------------------------------------------

def never() -> float:
    raise AssertionError("no draw expected")


def ac(uniform=never, **config) -> AdmissionController:
    return AdmissionController(AdmissionControlConfig(**config), uniform)


def results(c: AdmissionController, t: float, successes: int, failures: int) -> None:
    for _ in range(successes):
        c.on_result(t, 200)
    for _ in range(failures):
        c.on_result(t, 503)


@pytest.mark.parametrize(("successes", "config", "expected"), [
    (90, {}, (100 - 90 / 0.95) / 101),  # 0.0521: linear in the failure rate
    (90, {"aggression": 2.0}, math.sqrt((100 - 90 / 0.95) / 101)),  # 0.2283
    (90, {"aggression": 0.5}, (100 - 90 / 0.95) / 101),  # below 1 acts as 1
    (96, {}, 0.0),  # success rate above sr_threshold
    (95, {}, 0.0),  # exactly at it
    (50, {"sr_threshold": 50.0}, 0.0),
    (0, {}, 0.8),  # 100 / 101 capped at max_rejection_probability
    (0, {"max_rejection_probability": 100.0}, 100 / 101),
    (0, {"max_rejection_probability": 0.0}, 0.0),
])
def test_rejection_probability_formula(successes, config, expected):
    c = ac(**config)
    results(c, 0.0, successes, 100 - successes)
    assert c.counts(0.0) == (100, successes)
    assert c.rejection_probability(0.5) == pytest.approx(expected)


def test_one_draw_per_request_with_four_significant_figures():
    draws = iter([0.4999, 0.5])
    c = ac(uniform=lambda: next(draws), sr_threshold=100.0, max_rejection_probability=100.0)
    c.on_result(0.0, 503)  # p = (1 - 0) / (1 + 1) = 0.5
    assert c.allow(0.1) is False  # 5000 > 4999
    assert c.allow(0.2) is True  # 5000 > 5000 is false
    assert c.stats == {"rq_rejected": 1, "rq_success": 0, "rq_failure": 1}
    assert ac().allow(0.0)  # p = 0: no draw


def test_rejected_requests_are_not_recorded():
    # admission_control.cc decodeHeaders sets record_request_ = false on a rejection, so the
    # window only holds upstream answers and p stays put while nothing is admitted.
    c = ac(uniform=np.random.default_rng(SEED).random, sr_threshold=100.0,
           max_rejection_probability=100.0)
    c.on_result(0.0, 503)
    n = 20_000
    rejected = sum(not c.allow(0.5) for _ in range(n))
    assert c.counts(0.5) == (1, 0) and c.rejection_probability(0.5) == 0.5
    assert abs(rejected / n - 0.5) < 4 * math.sqrt(0.25 / n)  # 4 sd
    assert c.stats["rq_rejected"] == rejected


def test_no_rejection_under_rps_threshold():
    c = ac(sampling_window=10.0, rps_threshold=5)
    results(c, 0.0, 0, 49)
    assert c.average_rps(0.5) == 4  # 49 // 10, integer division
    assert c.rejection_probability(0.5) == 0.0 and c.allow(0.5)  # no draw
    c.on_result(0.6, 503)
    assert c.average_rps(0.7) == 5 and c.rejection_probability(0.7) == 0.8
    # averageRps divides by the age of the oldest bucket once it passes the window, and does
    # not drop stale buckets itself: 50 requests over 25 s.
    assert c.average_rps(25.0) == 2 and c.allow(25.0)


def test_window_slides_in_buckets_started_by_requests_not_on_whole_seconds():
    c = ac(sampling_window=10.0)
    c.on_result(0.0, 503)  # bucket started at 0.0
    c.on_result(0.5, 503)
    c.on_result(1.2, 200)  # 1.2 s after: a new bucket at 1.2
    c.on_result(2.0, 200)  # same bucket (0.8 s old)
    c.on_result(2.3, 503)  # a new bucket at 2.3
    assert [c.counts(t) for t in (9.99, 10.0, 11.19, 11.2, 12.3)] == [
        (5, 2), (3, 2), (3, 2), (1, 0), (0, 0)]


def test_a_probability_query_starts_a_bucket_too():
    # requestCounts() runs maybeUpdateHistoricalData, so an admission check at 1.0 opens the
    # bucket that the result at 1.5 joins: it expires at 11.0 instead of 11.5.
    queried, quiet = ac(uniform=lambda: 0.99, sampling_window=10.0), ac(sampling_window=10.0)
    for c in (queried, quiet):
        c.on_result(0.0, 200)
    assert queried.allow(1.0)
    for c in (queried, quiet):
        c.on_result(1.5, 503)
    assert (queried.counts(11.2), quiet.counts(11.2)) == ((0, 0), (1, 0))


def test_grpc_and_http_success_criteria():
    c = ac()
    c.on_result(0.0, 200, grpc_status=14)  # UNAVAILABLE: failure
    c.on_result(0.0, 200, grpc_status=7)  # PERMISSION_DENIED: success by default
    c.on_result(0.0, 200, grpc_status=0)
    c.on_result(0.0, 404)
    c.on_result(0.0, 503)
    c.on_result(0.0, None)  # a reset: the filter cannot see it
    assert c.counts(0.0) == (5, 3)
    assert (c.stats["rq_success"], c.stats["rq_failure"]) == (3, 2)


def test_shedding_events_start_and_stop_as_failures_leave_the_window():
    c = ac(uniform=lambda: 0.99, sampling_window=2.0)
    c.on_result(0.0, 503)
    assert c.allow(0.5)  # p = 1/2, the draw admits
    assert c.allow(2.0)  # the failure's bucket is 2 s old: gone
    assert log(c) == [(0.5, "admission_shedding_started", "p=0.5000"),
                      (2.0, "admission_shedding_stopped", "p=0")]


def test_disabled_admission_control_records_nothing():
    c = ac(enabled=False)
    results(c, 0.0, 0, 10)
    assert c.allow(0.1) and c.counts(0.1) == (0, 0) and c.rejection_probability(0.1) == 0.0


# -- admission control: properties ---------------------------------------------------------------

AC_OPS = st.lists(st.tuples(st.floats(0, 1.5), st.sampled_from(["allow", "result"]),
                            st.sampled_from([200, 404, 500, 503])), max_size=200)


@settings(max_examples=200, deadline=None)
@given(aggression=st.floats(0.1, 10), sr=st.floats(1, 100), max_p=st.floats(0, 100),
       rps=st.integers(0, 5), window=st.integers(1, 10), ops=AC_OPS)
def test_rejection_probability_stays_within_zero_and_the_cap(aggression, sr, max_p, rps, window,
                                                             ops):
    config = AdmissionControlConfig(aggression=aggression, sr_threshold=sr,
                                    max_rejection_probability=max_p, rps_threshold=rps,
                                    sampling_window=float(window))
    c = AdmissionController(config, np.random.default_rng(SEED).random)
    now, allowed = 0.0, 0
    for dt, op, status in ops:
        now += dt
        p = c.rejection_probability(now)
        assert 0.0 <= p <= max_p / 100
        if op == "allow":
            before = c.stats["rq_rejected"]
            ok = c.allow(now)
            allowed += ok
            assert ok or p > 0
            assert c.stats["rq_rejected"] == before + (not ok)
        else:
            c.on_result(now, status)
        requests, successes = c.counts(now)
        assert 0 <= successes <= requests
