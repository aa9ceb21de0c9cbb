"""Unit, property and rate tests of the rate limiters (``../shared/envoy-semantics.md`` §0 item
10, §5, §10.2): requests are fed by hand, no simulation runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.policies.rate_limit import (
    ConfigError,
    Decision,
    GlobalRateLimitConfig,
    GlobalRateLimitFilter,
    GlobalRateLimitService,
    LocalDescriptor,
    LocalRateLimit,
    LocalRateLimitConfig,
    NetworkLocalRateLimit,
    TokenBucket,
    TokenBucketConfig,
)


def local(max_tokens: int = 2, tokens_per_fill: int = 2, fill_interval: float = 2.0,
          **config) -> LocalRateLimit:
    config.setdefault("filter_enabled", 100)
    config.setdefault("filter_enforced", 100)
    bucket = TokenBucketConfig(max_tokens, tokens_per_fill, fill_interval)
    return LocalRateLimit(LocalRateLimitConfig(bucket, **config))


# -- token bucket (§0 item 10, §5.1) --------------------------------------------------------------

def test_continuous_refill_matches_envoy_1_40_observation():
    # §5.1 [exp]: max_tokens 2, tokens_per_fill 2, fill_interval 2s behaves as a bucket refilled
    # at 1 token/s capped at 2; a step-per-interval bucket would pass 1.3 and 1.6 and deny 1.0.
    bucket = TokenBucket(TokenBucketConfig(2, 2, 2.0))
    times = [0, 0.01, 0.02, 1.0, 1.3, 1.6, 2.3, 2.31, 4.5, 4.51, 4.52]
    assert [(t, bucket.try_acquire(t)) for t in times] == [
        (0, True), (0.01, True), (0.02, False), (1.0, True), (1.3, False), (1.6, False),
        (2.3, True), (2.31, False), (4.5, True), (4.51, True), (4.52, False)]


def test_same_observation_through_the_filter_gives_429_rl_and_envoy_stat_names():
    rl = local()
    times = [0, 0.01, 0.02, 1.0, 1.3, 1.6, 2.3, 2.31, 4.5, 4.51, 4.52]
    assert [rl.check(t) for t in times] == [True, True, False, True, False, False, True, False,
                                           True, True, False]
    assert rl.stats == {"enabled": 11, "enforced": 5, "rate_limited": 5, "ok": 6}
    assert rl.reply == Decision(False, 429, "RL")
    assert rl.events[:2] == [(0.02, "limiting_started", "default", "http_local_rate_limiter"),
                             (1.0, "limiting_stopped", "default", "http_local_rate_limiter")]


def test_bucket_starts_full_and_admits_the_whole_burst_at_once():
    bucket = TokenBucket(TokenBucketConfig(max_tokens=5, tokens_per_fill=1, fill_interval=1.0),
                         start_time=10.0)
    assert [bucket.try_acquire(10.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.tokens(10.5) == pytest.approx(0.5)
    assert bucket.tokens(1000.0) == 5  # capped at max_tokens


def test_bucket_rejects_time_going_backwards():
    bucket = TokenBucket(TokenBucketConfig(1))
    bucket.try_acquire(1.0)
    with pytest.raises(ValueError, match="backwards"):
        bucket.try_acquire(0.5)


@settings(max_examples=200, deadline=None)
@given(max_tokens=st.integers(1, 10), tokens_per_fill=st.integers(1, 10),
       fill_ms=st.integers(50, 2000),
       gaps=st.lists(st.floats(0, 0.5, allow_nan=False), min_size=1, max_size=150))
def test_bucket_never_admits_more_than_burst_plus_rate_times_window(max_tokens, tokens_per_fill,
                                                                    fill_ms, gaps):
    config = TokenBucketConfig(max_tokens, tokens_per_fill, fill_ms / 1000)
    bucket = TokenBucket(config)
    times = np.cumsum(gaps)
    admitted = [t for t in times if bucket.try_acquire(float(t))]
    # The binding windows start and end at admitted requests.
    for i, t0 in enumerate(admitted):
        for j in range(i, len(admitted)):
            window = admitted[j] - t0
            assert j - i + 1 <= max_tokens + config.fill_rate * window + 1e-6


@pytest.mark.parametrize("offered_over_refill", [0.5, 2.0, 5.0])
def test_admitted_long_run_rate_is_min_of_offered_and_refill(offered_over_refill):
    # Poisson arrivals, fixed seed. The admitted count over T is min(λ, r)·T up to (a) the
    # Poisson noise of the arrivals, sd sqrt(λT), which dominates below the refill rate, and
    # (b) the burst, since admitted ≤ max_tokens + r·T always. Tolerance: 4 sd plus the burst.
    r, burst, horizon = 100.0, 20, 200.0
    lam = offered_over_refill * r
    rng = np.random.default_rng(20260714)
    times = np.cumsum(rng.exponential(1 / lam, size=int(lam * horizon * 1.2)))
    times = times[times < horizon]
    bucket = TokenBucket(TokenBucketConfig(burst, tokens_per_fill=10, fill_interval=0.1))
    admitted = sum(bucket.try_acquire(float(t)) for t in times)
    expected = min(lam, r) * horizon
    tolerance = 4 * math.sqrt(min(lam, r) * horizon) + burst
    assert abs(admitted - expected) <= tolerance
    assert admitted <= burst + r * horizon


# -- HTTP local rate limit (§5.1) ----------------------------------------------------------------

def test_descriptors_have_separate_buckets_and_unmatched_requests_use_the_default():
    per_client = TokenBucketConfig(2, 1, 1.0)
    rl = local(max_tokens=100, tokens_per_fill=100, fill_interval=1.0,
               always_consume_default_token_bucket=False,
               descriptors=(LocalDescriptor((("client_id", "noisy"),), per_client),
                            LocalDescriptor((("client_id", "quiet"),), per_client)))
    noisy = [rl.check(0.0, [{"client_id": "noisy"}]) for _ in range(4)]
    quiet = [rl.check(0.0, [{"client_id": "quiet"}]) for _ in range(2)]
    other = [rl.check(0.0, [{"client_id": "other"}]) for _ in range(3)]
    assert noisy == [True, True, False, False]
    assert quiet == [True, True]
    assert other == [True, True, True]  # no exact match: the default bucket
    assert rl.stats["rate_limited"] == 2


def test_only_exact_full_matches_select_a_descriptor_bucket():
    rl = local(max_tokens=1, tokens_per_fill=1, fill_interval=1.0,
               descriptors=(LocalDescriptor((("client_id", "a"), ("path", "/x")),
                                            TokenBucketConfig(5, 1, 1.0)),))
    # A prefix of the descriptor does not match: the default bucket (1 token) decides.
    assert [rl.check(0.0, [(("client_id", "a"),)]) for _ in range(2)] == [True, False]


def test_matched_descriptors_consume_lowest_fill_rate_first_and_the_default_by_default():
    slow = LocalDescriptor((("k", "slow"),), TokenBucketConfig(1, 1, 10.0))
    fast = LocalDescriptor((("k", "fast"),), TokenBucketConfig(3, 1, 1.0))
    rl = local(max_tokens=10, tokens_per_fill=1, fill_interval=1.0, descriptors=(fast, slow))
    both = [{"k": "fast"}, {"k": "slow"}]
    assert rl.check(0.0, both)
    # The slow bucket is tried first and is now empty, so the fast one keeps its tokens.
    assert not rl.check(0.0, both)
    assert [rl.check(0.0, [{"k": "fast"}]) for _ in range(3)] == [True, True, False]
    # always_consume_default_token_bucket (default true): 1 + 2 admitted took default tokens.
    assert rl._default.tokens(0.0) == pytest.approx(7)


def test_filter_enabled_and_enforced_default_to_zero_percent():
    rl = LocalRateLimit(LocalRateLimitConfig(TokenBucketConfig(1)))
    assert all(rl.check(0.0) for _ in range(5))
    assert rl.stats == {"enabled": 0, "enforced": 0, "rate_limited": 0, "ok": 0}


def test_enabled_but_not_enforced_counts_and_lets_through():
    rl = local(max_tokens=1, tokens_per_fill=1, fill_interval=1.0, filter_enforced=0)
    assert [rl.check(0.0) for _ in range(3)] == [True, True, True]
    assert rl.stats == {"enabled": 3, "enforced": 0, "rate_limited": 2, "ok": 1}


def test_fractional_percentages_use_the_injected_uniform():
    draws = iter([0.1, 0.9, 0.2, 0.3, 0.4])  # enabled?, then enforced? per denied request
    config = LocalRateLimitConfig(TokenBucketConfig(1), filter_enabled=50, filter_enforced=50)
    rl = LocalRateLimit(config, uniform=lambda: next(draws))
    assert rl.check(0.0)  # enabled (0.1), admitted
    assert rl.check(0.0)  # not enabled (0.9)
    assert not rl.check(0.0)  # enabled (0.2), no token, enforced (0.3)
    with pytest.raises(ValueError, match="uniform"):
        LocalRateLimit(config)


def test_from_envoy_reads_typed_config():
    config = LocalRateLimitConfig.from_envoy({
        "stat_prefix": "inbound",
        "token_bucket": {"max_tokens": 10, "tokens_per_fill": 5, "fill_interval": "500ms"},
        "filter_enabled": {"runtime_key": "x", "default_value": {"numerator": 100}},
        "filter_enforced": {"default_value": {"numerator": 5000, "denominator": "TEN_THOUSAND"}},
        "status": {"code": 200},
        "descriptors": [{"entries": [{"key": "client_id", "value": "a"}],
                         "token_bucket": {"max_tokens": 1, "fill_interval": "1s"}}],
    })
    assert config.token_bucket == TokenBucketConfig(10, 5, 0.5)
    assert config.token_bucket.fill_rate == 10
    assert (config.filter_enabled, config.filter_enforced, config.status) == (100, 50, 429)
    assert config.descriptors == (
        LocalDescriptor((("client_id", "a"),), TokenBucketConfig(1, 1, 1.0)),)


@pytest.mark.parametrize(("kwargs", "message", "path"), [
    ({"token_bucket": TokenBucketConfig(1, 1, 0.02)}, ">= 50ms", ("token_bucket", "fill_interval")),
    ({"descriptors": (LocalDescriptor((("k", "v"),), TokenBucketConfig(1, 1, 0.15)),)},
     "multiple", ("descriptors", 0, "token_bucket", "fill_interval")),
    ({"descriptors": (LocalDescriptor((("k", "v"),), TokenBucketConfig(1, 1, 0.1)),) * 2},
     "duplicate", ("descriptors", 1, "entries")),
    ({"filter_enabled": 101}, "percentage", ("filter_enabled",)),
])
def test_invalid_local_config_says_which_field(kwargs, message, path):
    kwargs.setdefault("token_bucket", TokenBucketConfig(1, 1, 0.1))
    with pytest.raises(ConfigError, match=message) as info:
        LocalRateLimitConfig(**kwargs)
    assert info.value.path == path


def test_invalid_service_config_says_where():
    with pytest.raises(ConfigError, match="duplicate") as info:
        GlobalRateLimitConfig.from_config({"domain": "d", "descriptors": [
            {"key": "a", "descriptors": [{"key": "b"}, {"key": "b"}]}]})
    assert info.value.path == ("descriptors", 0, "descriptors", 1)


# -- network (L4) local rate limit (§5.3) --------------------------------------------------------

def test_network_limit_takes_one_token_per_connection():
    rl = NetworkLocalRateLimit(TokenBucketConfig(2, 1, 1.0))
    assert [rl.on_new_connection(t) for t in (0, 0, 0, 0.5, 1.0)] == [True, True, False, False,
                                                                      True]
    assert rl.stats == {"rate_limited": 2}
    off = NetworkLocalRateLimit(TokenBucketConfig(1), runtime_enabled=False)
    assert all(off.on_new_connection(0.0) for _ in range(3))


# -- global rate limit service (§5.2, envoyproxy/ratelimit) --------------------------------------

def service(unit: str = "minute", requests_per_unit: int = 10, **kwargs) -> GlobalRateLimitService:
    config = GlobalRateLimitConfig.from_config({
        "domain": "mesh",
        "descriptors": [
            {"key": "client_id", "rate_limit": {"unit": unit, "requests_per_unit":
                                                requests_per_unit}},
            {"key": "tier", "value": "gold",
             "descriptors": [{"key": "path", "rate_limit": {"unit": "SECOND",
                                                            "requests_per_unit": 1}}]},
        ],
    })
    return GlobalRateLimitService(config, **kwargs)


def test_fixed_window_burst_across_a_minute_boundary_admits_twice_the_quota():
    svc = service()
    before = [svc.should_rate_limit(59.0 + i / 100, [{"client_id": "a"}]) for i in range(11)]
    after = [svc.should_rate_limit(60.0 + i / 100, [{"client_id": "a"}]) for i in range(11)]
    assert before == ["OK"] * 10 + ["OVER_LIMIT"]
    assert after == ["OK"] * 10 + ["OVER_LIMIT"]  # 20 admitted within 1.1 s
    assert svc.stats == {"total_hits": 22, "over_limit": 2, "near_limit": 4}
    assert svc.events == [(59.1, "over_limit", "mesh_client_id_a_0", "minute"),
                          (60.1, "over_limit", "mesh_client_id_a_60", "minute")]


def test_windows_follow_the_epoch_offset():
    svc = service(epoch=30.0)  # sim t=0 is unix 30: the minute ends at sim t=30
    assert [svc.should_rate_limit(t, [{"client_id": "a"}]) for t in [0.0] * 10 + [29.9, 30.0]] \
        == ["OK"] * 10 + ["OVER_LIMIT", "OK"]


def test_a_key_without_value_gives_each_value_its_own_counter():
    svc = service(requests_per_unit=1)
    assert svc.should_rate_limit(0, [{"client_id": "a"}]) == "OK"
    assert svc.should_rate_limit(0, [{"client_id": "b"}]) == "OK"
    assert svc.should_rate_limit(0, [{"client_id": "a"}]) == "OVER_LIMIT"


def test_quota_applies_only_at_the_last_entry_of_a_nested_descriptor():
    svc = service()
    gold = [("tier", "gold"), ("path", "/x")]
    assert [svc.should_rate_limit(0, [gold]) for _ in range(2)] == ["OK", "OVER_LIMIT"]
    assert svc.should_rate_limit(0, [[("tier", "gold")]]) == "OK"  # no quota on that node
    assert svc.should_rate_limit(0, [[("tier", "silver"), ("path", "/x")]]) == "OK"
    assert svc.should_rate_limit(1.0, [gold]) == "OK"  # next second


def test_every_descriptor_is_counted_even_when_another_is_over_limit():
    svc = service(requests_per_unit=5)
    gold = [("tier", "gold"), ("path", "/x")]
    answers = [svc.should_rate_limit(0, [{"client_id": "a"}, gold]) for _ in range(3)]
    assert answers == ["OK", "OVER_LIMIT", "OVER_LIMIT"]
    assert svc.hits(0, {"client_id": "a"}) == 3  # denied requests used up the client quota too
    assert svc.hits(60, {"client_id": "a"}) == 0


# -- global rate limit filter (§5.2, §10.2) ------------------------------------------------------

@pytest.mark.parametrize(("deny", "answer", "decision", "stats"), [
    (False, "OK", (True, None, None), ("ok",)),
    (False, "OVER_LIMIT", (False, 429, "RL"), ("over_limit",)),
    (False, "ERROR", (True, None, None), ("error", "failure_mode_allowed")),
    (False, "TIMEOUT", (True, None, None), ("error", "failure_mode_allowed")),
    (True, "OK", (True, None, None), ("ok",)),
    (True, "OVER_LIMIT", (False, 429, "RL"), ("over_limit",)),
    (True, "ERROR", (False, 500, "RLSE"), ("error",)),
    (True, "TIMEOUT", (False, 500, "RLSE"), ("error",)),
])
def test_fail_open_versus_failure_mode_deny(deny, answer, decision, stats):
    rl_filter = GlobalRateLimitFilter("mesh", failure_mode_deny=deny)
    assert rl_filter.decide(answer) == decision
    assert rl_filter.stat_names(answer) == stats


def test_filter_defaults_and_timeout():
    rl_filter = GlobalRateLimitFilter("mesh")
    assert (rl_filter.timeout, rl_filter.failure_mode_deny) == (0.020, False)
    assert rl_filter.ratelimited_header
    assert rl_filter.answer_after(0.005, "OVER_LIMIT") == (0.005, "OVER_LIMIT")
    assert rl_filter.answer_after(0.5, "OK") == (0.020, "TIMEOUT")
    with pytest.raises(ValueError, match="unknown"):
        rl_filter.decide("MAYBE")
