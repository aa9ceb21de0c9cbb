"""Unit and property tests of the HTTP fault filter (``../shared/envoy-semantics.md`` §7, §10.2):
requests are fed by hand, no simulation runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.policies.fault import (
    NO_FAULT,
    FaultConfig,
    FaultDecision,
    FaultInjector,
    FractionalPercent,
    envoy_random_value,
)

MILLION = 1_000_000


def draws(*values: float):
    """A uniform() that returns ``values`` in order, then fails."""
    it = iter(values)
    return lambda: next(it)


def always(delay: str | None = "5s", status: int | None = 503) -> FaultConfig:
    """An Istio fault that delays and/or aborts every request."""
    block = {}
    if delay is not None:
        block["delay"] = {"fixedDelay": delay, "percentage": {"value": 100}}
    if status is not None:
        block["abort"] = {"httpStatus": status, "percentage": {"value": 100}}
    return FaultConfig.from_istio(block)


# -- Istio translation (§7, §11) ------------------------------------------------------------------

def test_istio_fault_without_percentage_faults_no_request():
    # §7: "With no percentage, no request is faulted" (istiod writes 0 %). No draw is needed.
    config = FaultConfig.from_istio({"delay": {"fixedDelay": "5s"}, "abort": {"httpStatus": 503}})
    assert config.delay_percentage.numerator == 0 and config.abort_percentage.numerator == 0
    injector = FaultInjector(config)  # no uniform: every outcome is certain
    assert [injector.decide(float(t)) for t in range(50)] == [NO_FAULT] * 50
    assert injector.stats == {"delays_injected": 0, "aborts_injected": 0, "faults_overflow": 0}


def test_istio_percentage_becomes_millionths_truncated_as_istiod_does():
    # translatePercentToFractionalPercent: uint32(value * 10000) over MILLION.
    config = FaultConfig.from_istio({"delay": {"fixedDelay": "250ms",
                                               "percentage": {"value": 0.1}}})
    assert config.delay == 0.25
    assert config.delay_percentage == FractionalPercent(1000, MILLION)
    assert FractionalPercent.from_istio({"value": 33.33333}).numerator == 333333
    assert FractionalPercent.from_istio(0.00001).numerator == 0  # truncated to 0: never


def test_deprecated_integer_percent_is_used_only_without_percentage():
    old = FaultConfig.from_istio({"delay": {"fixedDelay": 2, "percent": 30}})
    assert (old.delay, old.delay_percentage) == (2.0, FractionalPercent(30, 100))
    both = FaultConfig.from_istio({"delay": {"fixedDelay": "2s", "percent": 30,
                                             "percentage": {"value": 5}}})
    assert both.delay_percentage == FractionalPercent(50_000, MILLION)


def test_grpc_status_name_becomes_its_code():
    config = FaultConfig.from_istio({"abort": {"grpcStatus": "UNAVAILABLE",
                                               "percentage": {"value": 100}}})
    assert (config.abort_http_status, config.abort_grpc_status) == (None, 14)


@pytest.mark.parametrize(("block", "message"), [
    ({}, "delay and/or an abort"),
    ({"delay": {"percentage": {"value": 5}}}, "fault.delay.fixedDelay is required"),
    ({"delay": {"fixedDelay": "500us"}}, "fault.delay.fixedDelay must be >= 1ms"),
    ({"delay": {"fixedDelay": "1.5ms"}}, "whole milliseconds"),
    ({"delay": {"exponentialDelay": "1s"}}, "fault.delay.exponentialDelay"),
    ({"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}},
     r"fault.delay.percentage.value must be in \[0, 100\]"),
    ({"abort": {"httpStatus": 600}}, "fault.abort.httpStatus"),
    ({"abort": {"httpStatus": 199}}, "fault.abort.httpStatus"),
    ({"abort": {"grpcStatus": "NOPE"}}, "fault.abort.grpcStatus"),
    ({"abort": {"http2Error": "REFUSED_STREAM"}}, "fault.abort.http2Error"),
    ({"abort": {"percentage": {"value": 5}}}, "needs httpStatus or grpcStatus"),
    ({"abort": {"httpStatus": 503, "grpcStatus": "INTERNAL"}}, "exclusive"),
    ({"delay": {"fixedDelay": "1s", "delayPercent": 5}}, r"unknown field\(s\) \['delayPercent'\]"),
])
def test_istio_rejects_bad_fault_blocks_naming_the_field(block, message):
    with pytest.raises(ValueError, match=message):
        FaultConfig.from_istio(block)


def test_envoy_http_fault_fields_and_denominators():
    config = FaultConfig.from_envoy({
        "delay": {"fixed_delay": "1s", "percentage": {"numerator": 5,
                                                      "denominator": "TEN_THOUSAND"}},
        "abort": {"http_status": 429, "percentage": {"numerator": 1}},
        "max_active_faults": {"value": 3}})
    assert config == FaultConfig(1.0, FractionalPercent(5, 10_000), 429, None,
                                 FractionalPercent(1, 100), 3)
    assert config.delay_percentage.percent == pytest.approx(0.05)
    # A missing percentage is the proto default: 0 %.
    assert FaultConfig.from_envoy({"abort": {"grpc_status": 14}}).abort_percentage.numerator == 0


@pytest.mark.parametrize(("block", "message"), [
    ({"delay": {"header_delay": {}}}, "header_delay is not modelled"),
    ({"abort": {"header_abort": {}}}, "header_abort is not modelled"),
    ({"upstream_cluster": "x", "abort": {"http_status": 503}}, "not modelled"),
    ({"abort": {"http_status": 503, "grpc_status": 14}}, "exactly one"),
    ({"delay": {"fixed_delay": "1s", "percentage": {"numerator": 1, "denominator": "THOUSAND"}}},
     "delay.percentage.denominator"),
])
def test_envoy_rejects_what_is_not_modelled(block, message):
    with pytest.raises(ValueError, match=message):
        FaultConfig.from_envoy(block)


# -- one request (§7, §10.2) ----------------------------------------------------------------------

def test_delay_then_abort_prints_di_then_fi():
    # §7: the delay is applied first, then the abort; flags in the order set: "DI,FI".
    injector = FaultInjector(always())
    decision = injector.decide(0.0)
    assert decision == FaultDecision(5.0, 503, None, "DI,FI")
    assert decision.aborted and decision.holds_fault
    assert injector.active_faults == 1
    injector.on_fault_end()
    assert injector.active_faults == 0
    assert injector.stats == {"delays_injected": 1, "aborts_injected": 1, "faults_overflow": 0}


def test_abort_alone_is_an_immediate_local_reply_holding_no_fault():
    injector = FaultInjector(always(delay=None, status=503))
    assert injector.decide(0.0) == FaultDecision(0.0, 503, None, "FI")
    assert injector.active_faults == 0  # the local reply ends the stream at once


def test_delay_alone_lets_the_request_go_on_and_holds_a_fault_until_it_ends():
    injector = FaultInjector(always(delay="250ms", status=None))
    decision = injector.decide(1.0)
    assert decision == FaultDecision(0.25, None, None, "DI")
    assert not decision.aborted and decision.holds_fault
    assert injector.active_faults == 1


def test_grpc_abort_answers_http_200_with_the_grpc_status():
    config = FaultConfig.from_istio({"abort": {"grpcStatus": "RESOURCE_EXHAUSTED",
                                               "percentage": {"value": 100}}})
    assert FaultInjector(config).decide(0.0) == FaultDecision(0.0, 200, 8, "FI")


def test_delay_draw_comes_before_abort_draw_each_with_its_own_percentage():
    # Both at 50 % over MILLION: the test is u < 0.5. First request: delay yes, abort no.
    # Second: delay no, abort yes. Third: neither.
    config = FaultConfig.from_istio({
        "delay": {"fixedDelay": "1s", "percentage": {"value": 50}},
        "abort": {"httpStatus": 500, "percentage": {"value": 50}}})
    injector = FaultInjector(config, draws(0.1, 0.9, 0.9, 0.1, 0.7, 0.6))
    assert [injector.decide(0.0).flags for _ in range(3)] == ["DI", "FI", "-"]


def test_sub_millisecond_envoy_delay_is_no_delay_but_the_abort_still_applies():
    # delayDuration: "Delay only if the duration is >0ms" (whole ms, truncated).
    config = FaultConfig.from_envoy({
        "delay": {"fixed_delay": "400us", "percentage": {"numerator": 100}},
        "abort": {"http_status": 503, "percentage": {"numerator": 100}}})
    injector = FaultInjector(config)
    assert injector.decide(0.0) == FaultDecision(0.0, 503, None, "FI")
    assert injector.stats["delays_injected"] == 0


def test_max_active_faults_refuses_delays_while_others_are_held():
    injector = FaultInjector(FaultConfig.from_envoy({
        "delay": {"fixed_delay": "1s", "percentage": {"numerator": 100}},
        "max_active_faults": 2}))
    assert [injector.decide(0.0).flags for _ in range(3)] == ["DI", "DI", "-"]
    assert injector.stats["faults_overflow"] == 1
    injector.on_fault_end()  # the first delay is over
    assert injector.decide(1.0).flags == "DI"
    assert injector.active_faults == 2


def test_overflow_is_counted_once_per_fault_tried():
    # A request refused its delay tries its abort, which needs a slot too (tryIncActiveFaults).
    injector = FaultInjector(FaultConfig.from_envoy({
        "delay": {"fixed_delay": "1s", "percentage": {"numerator": 100}},
        "abort": {"http_status": 503, "percentage": {"numerator": 100}},
        "max_active_faults": 1}))
    assert injector.decide(0.0) == FaultDecision(1.0, 503, None, "DI,FI")
    assert injector.decide(0.5) == NO_FAULT
    assert injector.stats == {"delays_injected": 1, "aborts_injected": 1, "faults_overflow": 2}


def test_max_active_faults_zero_injects_nothing():
    injector = FaultInjector(FaultConfig.from_envoy({
        "abort": {"http_status": 503, "percentage": {"numerator": 100}},
        "max_active_faults": 0}))
    assert [injector.decide(0.0) for _ in range(3)] == [NO_FAULT] * 3
    assert injector.stats["faults_overflow"] == 3


def test_misuse_is_refused():
    injector = FaultInjector(always(delay=None))
    with pytest.raises(RuntimeError, match="without an active fault"):
        injector.on_fault_end()
    injector.decide(2.0)
    with pytest.raises(ValueError, match="backwards"):
        injector.decide(1.0)
    half = FaultConfig.from_istio({"abort": {"httpStatus": 503, "percentage": {"value": 50}}})
    with pytest.raises(ValueError, match="needs uniform"):
        FaultInjector(half)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FaultInjector(half, lambda: 1.0).decide(0.0)


# -- properties ---------------------------------------------------------------------------------

def test_envoy_random_value_is_the_residue_every_denominator_needs():
    assert envoy_random_value(0.0) == 0
    assert envoy_random_value(math.nextafter(1.0, 0.0)) == 999_999
    # MILLION: the test is u < n / 10^6; HUNDRED tests the residue modulo 100.
    assert FractionalPercent(250_000, MILLION).enabled(envoy_random_value(0.2499999))
    assert not FractionalPercent(250_000, MILLION).enabled(envoy_random_value(0.25))
    assert FractionalPercent(1, 100).enabled(envoy_random_value(0.5))  # 500000 % 100 == 0


@pytest.mark.parametrize("value", [0, 0.0001, 0.01, 0.5, 1, 10, 33.3, 50, 90, 99.99, 100])
def test_faulted_share_matches_the_percentage_within_a_binomial_bound(value):
    # Over N requests the abort count is Binomial(N, p): |k - Np| <= 3.3 sd holds with 99.9 %
    # (two-sided normal quantile 3.29); +1 for the discreteness at tiny p. Fixed seed, fixed
    # grid: a statistical check must not go looking for the unlucky seed.
    n, seed = 4000, 20261126
    config = FaultConfig.from_istio({"abort": {"httpStatus": 503,
                                               "percentage": {"value": value}}})
    injector = FaultInjector(config, np.random.default_rng(seed).random)
    k = sum(injector.decide(0.0).aborted for _ in range(n))
    p = config.abort_percentage.percent / 100
    assert abs(k - n * p) <= 3.3 * math.sqrt(n * p * (1 - p)) + 1


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), delay_on=st.booleans())
def test_zero_percent_never_faults_and_hundred_always_does(seed, delay_on):
    uniform = np.random.default_rng(seed).random
    never = FaultConfig.from_istio({"delay": {"fixedDelay": "1s", "percentage": {"value": 0}},
                                    "abort": {"httpStatus": 503, "percentage": {"value": 0}}})
    sure = always(delay="1s" if delay_on else None)
    never_injector, sure_injector = FaultInjector(never, uniform), FaultInjector(sure, uniform)
    for t in range(200):
        assert never_injector.decide(float(t)) == NO_FAULT
        decision = sure_injector.decide(float(t))
        assert decision.flags == ("DI,FI" if delay_on else "FI") and decision.status == 503
        if decision.holds_fault:
            sure_injector.on_fault_end()
    assert sure_injector.active_faults == 0


@settings(max_examples=100, deadline=None)
@given(limit=st.integers(0, 5), ops=st.lists(st.booleans(), max_size=60),
       seed=st.integers(0, 2**16))
def test_active_faults_never_exceed_max_active_faults(limit, ops, seed):
    # ops: True = a request arrives, False = the oldest held delay ends.
    config = FaultConfig.from_envoy({
        "delay": {"fixed_delay": "1s", "percentage": {"numerator": 50}},
        "abort": {"http_status": 503, "percentage": {"numerator": 30}},
        "max_active_faults": limit})
    injector = FaultInjector(config, np.random.default_rng(seed).random)
    held = 0
    for arrive in ops:
        if arrive:
            held += injector.decide(0.0).holds_fault
        elif held:
            injector.on_fault_end()
            held -= 1
        assert injector.active_faults == held <= limit
