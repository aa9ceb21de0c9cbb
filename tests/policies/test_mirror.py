"""Unit and property tests of request mirroring (``../shared/envoy-semantics.md`` §6.3): shadow
choices are asked for by hand, no simulation runs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.policies.fault import FractionalPercent
from meshsim.policies.mirror import ALWAYS, Mirror, Mirroring, MirrorPolicy, shadow_authority

MILLION = 1_000_000


def draws(*values: float):
    """A uniform() that returns ``values`` in order, then fails."""
    it = iter(values)
    return lambda: next(it)


# -- shadow authority (§6.3 [exp]) ----------------------------------------------------------------

@pytest.mark.parametrize(("authority", "shadow"), [
    ("127.0.0.1:28080", "127.0.0.1-shadow:28080"),  # observed on Envoy 1.40
    ("reviews", "reviews-shadow"),
    ("reviews.default.svc.cluster.local:9080", "reviews.default.svc.cluster.local-shadow:9080"),
    ("[::1]:80", "[::1]-shadow:80"),
    ("[::1]", "[::1]-shadow"),
])
def test_shadow_suffix_goes_before_the_port(authority, shadow):
    assert shadow_authority(authority) == shadow


def test_suffix_can_be_disabled_and_host_rewrite_comes_first():
    assert shadow_authority("reviews:9080", disable_suffix=True) == "reviews:9080"
    mirror = Mirror("shadow-cluster", host_rewrite_literal="canary.local:80")
    assert mirror.authority("reviews:9080") == "canary.local-shadow:80"
    with pytest.raises(ValueError, match="never empty"):
        shadow_authority("")


# -- Istio translation (§6.3, §11) ----------------------------------------------------------------

def test_istio_mirror_without_percentage_mirrors_everything():
    policy = MirrorPolicy.from_istio({"route": [{"destination": {"host": "reviews"}}],
                                      "mirror": {"host": "reviews", "subset": "v2",
                                                 "port": {"number": 9080}}})
    assert policy.mirrors == (Mirror("reviews", ALWAYS, subset="v2", port=9080),)
    mirroring = Mirroring(policy)  # 100 %: no draw needed
    assert [len(mirroring.shadows()) for _ in range(5)] == [1] * 5


def test_istio_mirror_percentage_and_deprecated_mirror_percent():
    policy = MirrorPolicy.from_istio({"mirror": {"host": "v2"}, "mirrorPercentage": {"value": 10}})
    assert policy.mirrors[0].percentage == FractionalPercent(100_000, MILLION)
    legacy = MirrorPolicy.from_istio({"mirror": {"host": "v2"}, "mirrorPercent": 25})
    assert legacy.mirrors[0].percentage == FractionalPercent(25, 100)


def test_explicit_zero_percent_means_no_mirror_policy_at_all():
    # istiod MirrorPercent / MirrorPercentByPolicy: "If zero percent is provided explicitly,
    # we should not mirror."
    assert MirrorPolicy.from_istio({"mirror": {"host": "v2"},
                                    "mirrorPercentage": {"value": 0}}).mirrors == ()
    policy = MirrorPolicy.from_istio({"mirrors": [
        {"destination": {"host": "a"}, "percentage": {"value": 0}},
        {"destination": {"host": "b"}},
        {"destination": {"host": "c", "subset": "v3"}, "percentage": {"value": 50}}]})
    assert policy.mirrors == (Mirror("b", ALWAYS),
                              Mirror("c", FractionalPercent(500_000, MILLION), subset="v3"))


@pytest.mark.parametrize(("route", "message"), [
    ({"mirror": {"host": "a"}, "mirrors": [{"destination": {"host": "b"}}]},
     "both mirror and mirrors"),
    ({"mirror": {"host": "a"}, "mirrorPercentage": {"value": 120}},
     r"mirrorPercentage.value must be in \[0, 100\]"),
    ({"mirrors": [{"percentage": {"value": 5}}]}, r"mirrors\[0\].destination is required"),
    ({"mirrors": [{"destination": {"subset": "v1"}}]}, r"mirrors\[0\].destination.host"),
    ({"mirror": {"host": "a", "port": {"number": 0}}}, "mirror.port.number"),
    ({"mirror": {"host": "a", "weight": 5}}, r"mirror: unknown field\(s\) \['weight'\]"),
])
def test_istio_rejects_bad_mirrors_naming_the_field(route, message):
    with pytest.raises(ValueError, match=message):
        MirrorPolicy.from_istio(route)


def test_envoy_request_mirror_policies():
    policy = MirrorPolicy.from_envoy([
        {"cluster": "shadow-a"},
        {"cluster": "shadow-b", "runtime_fraction": {
            "default_value": {"numerator": 5, "denominator": "TEN_THOUSAND"},
            "runtime_key": "mirror.b"},
         "disable_shadow_host_suffix_append": True, "trace_sampled": False}])
    assert policy.mirrors == (
        Mirror("shadow-a", ALWAYS),  # no runtime_fraction: 100 % (§6.3)
        Mirror("shadow-b", FractionalPercent(5, 10_000), disable_shadow_host_suffix_append=True))
    with pytest.raises(ValueError, match="cluster_header is not modelled"):
        MirrorPolicy.from_envoy([{"cluster_header": "x-mirror"}])
    with pytest.raises(ValueError, match="cluster is required"):
        MirrorPolicy.from_envoy([{"runtime_fraction": {"default_value": {"numerator": 1}}}])


# -- choosing shadows (§6.3) ----------------------------------------------------------------------

def test_one_draw_per_request_shared_by_all_mirrors():
    # shouldShadow(policy, runtime, streamId()): every policy tests the same random value, so
    # with 10 % and 30 % (MILLION) a request goes to b whenever it goes to a.
    policy = MirrorPolicy.from_istio({"mirrors": [
        {"destination": {"host": "a"}, "percentage": {"value": 10}},
        {"destination": {"host": "b"}, "percentage": {"value": 30}},
        {"destination": {"host": "c"}}]})
    mirroring = Mirroring(policy, draws(0.05, 0.2, 0.5))
    assert [[m.host for m in mirroring.shadows()] for _ in range(3)] == [
        ["a", "b", "c"], ["b", "c"], ["c"]]


def test_no_mirrors_no_draw_and_fractional_mirrors_need_uniform():
    assert Mirroring(MirrorPolicy()).shadows() == ()
    half = MirrorPolicy.from_istio({"mirror": {"host": "v2"}, "mirrorPercentage": {"value": 50}})
    with pytest.raises(ValueError, match="needs uniform"):
        Mirroring(half)


@pytest.mark.parametrize("value", [0.0001, 0.01, 0.5, 1, 10, 33.3, 50, 90, 99.99, 100])
def test_mirrored_share_matches_the_percentage_within_a_binomial_bound(value):
    # Binomial(N, p): |k - Np| <= 3.3 sd with 99.9 % (normal approximation), +1 for tiny p.
    # Fixed seed, fixed grid: a statistical check must not go looking for the unlucky seed.
    n, seed = 4000, 20261126
    policy = MirrorPolicy.from_istio({"mirror": {"host": "v2"},
                                      "mirrorPercentage": {"value": value}})
    mirroring = Mirroring(policy, np.random.default_rng(seed).random)
    k = sum(bool(mirroring.shadows()) for _ in range(n))
    p = policy.mirrors[0].percentage.percent / 100 if policy.mirrors else 0.0
    assert abs(k - n * p) <= 3.3 * math.sqrt(n * p * (1 - p)) + 1


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.floats(0, 100), min_size=2, max_size=4),
       seed=st.integers(0, 2**32 - 1))
def test_mirrors_of_one_route_shadow_nested_sets(values, seed):
    # Same denominator, same random value: a lower percentage selects a subset of a higher one.
    policy = MirrorPolicy.from_istio({"mirrors": [
        {"destination": {"host": f"m{i}"}, "percentage": {"value": v}}
        for i, v in enumerate(values)]})
    mirroring = Mirroring(policy, np.random.default_rng(seed).random)
    share = {m.host: m.percentage.numerator for m in policy.mirrors}
    for _ in range(300):
        chosen = {m.host for m in mirroring.shadows()}
        for host in chosen:
            assert {h for h, n in share.items() if n >= share[host]} <= chosen


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_zero_never_mirrors_and_hundred_always_does(seed):
    policy = MirrorPolicy.from_envoy([
        {"cluster": "never", "runtime_fraction": {"default_value": {"numerator": 0}}},
        {"cluster": "sure", "runtime_fraction": {"default_value": {"numerator": 100}}},
        {"cluster": "half", "runtime_fraction": {"default_value": {"numerator": 50}}}])
    mirroring = Mirroring(policy, np.random.default_rng(seed).random)
    for _ in range(200):
        hosts = [m.host for m in mirroring.shadows()]
        assert "never" not in hosts and "sure" in hosts
