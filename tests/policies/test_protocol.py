"""Every built-in admission policy behind :class:`meshsim.policies.protocol.Policy`.

The wrappers only translate: a policy asked through the protocol decides as it does through its
own API, and hears the outcomes its own API expects.
"""

from __future__ import annotations

import numpy as np
import pytest

from meshsim.policies.adaptive_concurrency import GradientController, GradientControllerConfig
from meshsim.policies.admission_control import AdmissionControlConfig, AdmissionController
from meshsim.policies.breakers import Consecutive, ConsecutiveConfig, OutcomeClassifier
from meshsim.policies.protocol import (
    AdaptiveConcurrencyPolicy,
    AdmissionPolicy,
    BreakerPolicy,
    Completion,
    LocalRateLimitPolicy,
    Policy,
    Request,
    as_policy,
)
from meshsim.policies.rate_limit import LocalRateLimit, LocalRateLimitConfig

REQ = Request("web", "frontend", "cart")


def test_a_breaker_behind_the_protocol_opens_on_classified_failures():
    p = as_policy(Consecutive(ConsecutiveConfig(fail_max=2, reset_timeout=10.0)),
                  OutcomeClassifier(failure_statuses=frozenset({503})))
    assert isinstance(p, BreakerPolicy) and isinstance(p, Policy)
    for t in (0.0, 0.1):
        assert p.admit(t, REQ)
        p.on_outcome(t + 0.01, REQ, Completion(503, 0.01))
    assert not p.admit(0.2, REQ)  # two failures in a row: open
    assert p.stats["calls_not_permitted"] == 1 and p.events[0][1] == "breaker_open"
    # A 500 is not a failure for this classifier; a timeout is (the default).
    q = as_policy(Consecutive(ConsecutiveConfig(fail_max=1)),
                  OutcomeClassifier(failure_statuses=frozenset({503})))
    q.admit(0.0, REQ)
    q.on_outcome(0.1, REQ, Completion(500, 0.1))
    assert q.admit(0.2, REQ)
    q.on_outcome(0.3, REQ, Completion(None, 0.1, timed_out=True))
    assert not q.admit(0.4, REQ)


def test_admission_control_behind_the_protocol_records_statuses_not_resets():
    ctrl = AdmissionController(AdmissionControlConfig(sampling_window=10.0),
                               np.random.default_rng(1).random)
    p = as_policy(ctrl)
    assert isinstance(p, AdmissionPolicy)
    admitted = 0
    for i in range(40):
        if p.admit(i * 0.01, REQ):
            admitted += 1
            p.on_outcome(i * 0.01, REQ, Completion(503, 0.001))
    p.admit(0.5, REQ)
    p.on_outcome(0.5, REQ, Completion(None, 0.001, timed_out=True))  # a reset: not recorded
    assert 0 < admitted < 40 and ctrl.counts(0.5) == (admitted, 0)
    assert ctrl.rejection_probability(0.5) > 0.5


def test_adaptive_concurrency_behind_the_protocol_samples_answers_and_cancels_resets():
    ctrl = GradientController(GradientControllerConfig(
        concurrency_update_interval=1.0, interval=60.0, jitter=0.0, request_count=3))
    p = as_policy(ctrl)
    assert isinstance(p, AdaptiveConcurrencyPolicy)
    admitted = [p.admit(0.0, REQ) for _ in range(5)]
    assert admitted == [True, True, True, False, False]  # pinned to min_concurrency 3
    p.on_outcome(0.1, REQ, Completion(None, 0.1, timed_out=True))  # a reset: no sample
    assert ctrl.in_flight == 2 and ctrl.in_min_rtt_window
    p.on_outcome(0.1, REQ, Completion(200, 0.1))
    assert ctrl.in_flight == 1


def test_a_local_rate_limit_behind_the_protocol_uses_the_requests_client():
    config = LocalRateLimitConfig.from_envoy({
        "stat_prefix": "x",
        "token_bucket": {"max_tokens": 1, "tokens_per_fill": 1, "fill_interval": "1s"},
        "filter_enabled": {"default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 100}},
        "descriptors": [{"entries": [{"key": "client", "value": "web"}],
                         "token_bucket": {"max_tokens": 2, "tokens_per_fill": 2,
                                          "fill_interval": "1s"}}]})
    p = as_policy(LocalRateLimit(config))
    assert isinstance(p, LocalRateLimitPolicy)
    # web has its own bucket of 2; the default bucket of 1 is consumed too.
    assert [p.admit(0.0, REQ) for _ in range(3)] == [True, False, False]
    other = Request("mobile", "frontend", "cart")
    assert not p.admit(0.0, other)


def test_a_class_with_the_protocol_is_its_own_policy_and_others_are_refused():
    class Mine:
        def __init__(self):
            self.events: list = []
            self.stats: dict = {}

        def admit(self, now, request):
            return True

        def on_outcome(self, now, request, completion):
            pass

    mine = Mine()
    assert as_policy(mine) is mine
    with pytest.raises(TypeError, match="is not a policy"):
        as_policy(object())
