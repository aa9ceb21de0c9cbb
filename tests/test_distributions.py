"""Latency distributions: validation, round trips, analytic moments, and sampling against theory."""

from __future__ import annotations

import math

import numpy as np
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from meshsim._base import Model
from meshsim.distributions import (
    Constant,
    Distribution,
    Empirical,
    Gamma,
    Lognormal,
    Mixture,
    Normal,
    Pareto,
    Weibull,
)

N = 200_000
SEED = 20240611
# The seed is fixed, so every check is deterministic. A 4-sigma bound is a 99.99% two-sided
# interval: correct code fails a check for about 1 seed in 16,000, so a failure means a bug.
Z = 4.0


class Holder(Model):
    latency: Distribution


def parse(data: object) -> Distribution:
    return Holder.model_validate({"latency": data}).latency


def draws(dist: Distribution, n: int = N) -> np.ndarray:
    return dist.sample(np.random.default_rng(SEED), n)


LOGNORMAL = {"kind": "lognormal", "median": "10ms", "p99": "50ms"}

# Every kind and every parameterisation, written as in a scenario file.
CASES = {
    "constant": {"kind": "constant", "value": "20ms"},
    "exponential": {"kind": "exponential", "mean": "5ms"},
    "uniform": {"kind": "uniform", "low": "10ms", "high": "30ms"},
    "normal": {"kind": "normal", "mean": "50ms", "sd": "10ms"},
    "normal_truncated": {"kind": "normal", "mean": "5ms", "sd": "10ms"},
    "normal_negative_mean": {"kind": "normal", "mean": "-10ms", "sd": "10ms"},
    "lognormal_median_p99": LOGNORMAL,
    "lognormal_mu_sigma": {"kind": "lognormal", "mu": -4.6, "sigma": 0.5},
    "lognormal_mean_cv": {"kind": "lognormal", "mean": "20ms", "cv": 1.0},
    "gamma_shape_scale": {"kind": "gamma", "shape": 2.0, "scale": "5ms"},
    "gamma_mean_cv": {"kind": "gamma", "mean": "10ms", "cv": 0.7},
    "weibull": {"kind": "weibull", "shape": 1.5, "scale": "20ms"},
    "weibull_heavy": {"kind": "weibull", "shape": 0.7, "scale": "10ms"},
    "pareto": {"kind": "pareto", "shape": 6.0, "scale": "10ms"},
    "empirical_samples": {"kind": "empirical", "samples": ["1ms", "2ms", "5ms", "20ms"]},
    "empirical_percentiles": {
        "kind": "empirical",
        "percentiles": {"p50": "10ms", "p90": "30ms", "p99": "80ms", "p99.9": "200ms"},
    },
    "empirical_percentiles_p0_p100": {
        "kind": "empirical",
        "percentiles": {"p0": "2ms", "p50": "10ms", "p100": "40ms"},
    },
    "mixture": {
        "kind": "mixture",
        "components": [
            {"weight": 0.9, "dist": LOGNORMAL},
            {"weight": 0.1, "dist": {"kind": "constant", "value": "200ms"}},
        ],
    },
    "mixture_unnormalised": {
        "kind": "mixture",
        "components": [
            {"weight": 3.0, "dist": {"kind": "exponential", "mean": "2ms"}},
            {"weight": 1.0, "dist": {"kind": "uniform", "low": "40ms", "high": "60ms"}},
        ],
    },
}


# --- sampling against the analytic moments -------------------------------------------------------


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_sample_mean_matches_analytic_mean(data):
    dist = parse(data)
    x = draws(dist)
    # 1e-12 absorbs the rounding of the sum when the variance is zero (constant).
    tol = Z * math.sqrt(dist.variance() / N) + 1e-12
    assert abs(x.mean() - dist.mean()) <= tol


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_sample_variance_matches_analytic_variance(data):
    dist = parse(data)
    x = draws(dist)
    s2 = x.var(ddof=1)
    # Standard error of the sample variance: sqrt((mu4 - sigma^4) / n), mu4 taken from the draws.
    mu4 = np.mean((x - x.mean()) ** 4)
    tol = Z * math.sqrt(max(mu4 - s2 * s2, 0.0) / N) + 1e-15
    assert abs(s2 - dist.variance()) <= tol


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_draws_are_float64_seconds_and_non_negative(data):
    x = draws(parse(data), 1000)
    assert x.dtype == np.float64
    assert x.shape == (1000,)
    assert (x >= 0).all()
    assert parse(data).sample(np.random.default_rng(SEED), 0).shape == (0,)


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_same_seed_same_draws(data):
    assert np.array_equal(draws(parse(data), 1000), draws(parse(data), 1000))


def quantile_tol(p: float, density: float) -> float:
    """Z standard errors of the empirical p-quantile: sqrt(p (1 - p) / n) / f(x_p)."""
    return Z * math.sqrt(p * (1 - p) / N) / density


def test_lognormal_median_and_p99_match_the_draws():
    dist = parse(LOGNORMAL)
    x = draws(dist)
    law = stats.lognorm(s=dist.log_sigma, scale=math.exp(dist.log_mu))
    for p, expected in [(0.5, 0.010), (0.99, 0.050)]:
        assert abs(np.quantile(x, p) - expected) <= quantile_tol(p, law.pdf(expected))


def test_lognormal_cv_matches_the_draws():
    dist = parse({"kind": "lognormal", "mean": "20ms", "cv": 0.5})
    x = draws(dist)
    cv_hat = x.std(ddof=1) / x.mean()
    # First order: cv_hat / cv - 1 ~ (s2 / var - 1) / 2 - (mean_hat / mean - 1); bound each term by
    # its own Z-sigma interval (mu4 of the draws for the variance term).
    mean, var = dist.mean(), dist.variance()
    mu4 = np.mean((x - x.mean()) ** 4)
    rel_tol = Z * math.sqrt((mu4 - var * var) / N) / var / 2 + Z * math.sqrt(var / N) / mean
    assert abs(cv_hat / 0.5 - 1) <= rel_tol


def test_empirical_percentiles_are_the_quantiles_of_the_draws():
    data = CASES["empirical_percentiles"]
    x = draws(parse(data))
    # Points of the inverse CDF, p0 = 0 s added; its slope is 1 / density.
    p = np.array([0.0, 0.5, 0.9, 0.99, 0.999])
    v = np.array([0.0, 0.010, 0.030, 0.080, 0.200])
    slopes = np.append(np.diff(v) / np.diff(p), 0.0)  # flat above the top point (clamped)
    for i in range(1, len(p)):
        # At a kink the steeper neighbouring slope gives the wider (conservative) interval.
        steepest = max(slopes[i - 1], slopes[i])
        assert abs(np.quantile(x, p[i]) - v[i]) <= quantile_tol(p[i], 1 / steepest)


def test_empirical_percentiles_clamp_the_tail_at_the_highest_value():
    x = draws(parse(CASES["empirical_percentiles"]))
    assert x.max() == 0.200
    top = np.mean(x == 0.200)  # the mass above p99.9
    assert abs(top - 0.001) <= Z * math.sqrt(0.001 * 0.999 / N)


def test_empirical_samples_are_drawn_from_the_given_values():
    x = draws(parse(CASES["empirical_samples"]), 1000)
    assert set(x.tolist()) == {0.001, 0.002, 0.005, 0.020}


def test_truncated_normal_redraws_negatives_instead_of_clipping():
    x = draws(parse(CASES["normal_negative_mean"]))
    assert x.min() > 0  # clipping would pile ~16% of the draws on exactly zero


# --- analytic moments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "law"),
    [
        (CASES["normal_truncated"], stats.truncnorm(-0.5, np.inf, loc=0.005, scale=0.010)),
        (CASES["normal_negative_mean"], stats.truncnorm(1.0, np.inf, loc=-0.010, scale=0.010)),
        (LOGNORMAL, stats.lognorm(s=math.log(5) / stats.norm.ppf(0.99), scale=0.010)),
        (CASES["lognormal_mu_sigma"], stats.lognorm(s=0.5, scale=math.exp(-4.6))),
        (CASES["lognormal_mean_cv"], stats.lognorm(s=math.sqrt(math.log(2)), scale=0.02 / 2**0.5)),
        (CASES["gamma_shape_scale"], stats.gamma(2.0, scale=0.005)),
        (CASES["gamma_mean_cv"], stats.gamma(1 / 0.49, scale=0.010 * 0.49)),
        (CASES["weibull_heavy"], stats.weibull_min(0.7, scale=0.010)),
        (CASES["pareto"], stats.pareto(6.0, scale=0.010)),
        (CASES["exponential"], stats.expon(scale=0.005)),
        (CASES["uniform"], stats.uniform(0.010, 0.020)),
    ],
)
def test_analytic_moments_match_scipy(data, law):
    dist = parse(data)
    assert dist.mean() == pytest.approx(law.mean(), rel=1e-9)
    assert dist.variance() == pytest.approx(law.var(), rel=1e-9)


def test_empirical_percentile_mean_includes_p0_and_the_clamped_top():
    assert parse(
        {"kind": "empirical", "percentiles": {"p50": "10ms", "p100": "20ms"}}
    ).mean() == pytest.approx(0.010)
    # Without p100 the top half is clamped at 10 ms: 0.5 * 5 ms + 0.5 * 10 ms.
    clamped = parse({"kind": "empirical", "percentiles": {"p50": "10ms"}})
    assert clamped.mean() == pytest.approx(0.0075)
    # E[X^2] = 0.5 * (10 ms)^2 / 3 + 0.5 * (10 ms)^2
    assert clamped.variance() == pytest.approx(0.5e-4 / 3 + 0.5e-4 - 0.0075**2)


def test_heavy_pareto_has_no_mean_or_variance():
    assert Pareto(shape=0.8, scale=0.01).mean() is None
    assert Pareto(shape=0.8, scale=0.01).variance() is None
    assert Pareto(shape=1.5, scale=0.01).mean() == pytest.approx(0.03)
    assert Pareto(shape=1.5, scale=0.01).variance() is None
    assert draws(Pareto(shape=1.5, scale=0.01), 1000).min() >= 0.01


def test_mixture_moments_are_none_when_a_component_has_none():
    def mix(shape: float) -> Mixture:
        return parse(
            {
                "kind": "mixture",
                "components": [
                    {"weight": 1, "dist": "1ms"},
                    {"weight": 1, "dist": {"kind": "pareto", "shape": shape, "scale": "1ms"}},
                ],
            }
        )

    assert mix(1.5).mean() == pytest.approx(0.5 * 0.001 + 0.5 * 0.003)
    assert mix(1.5).variance() is None
    assert mix(0.8).mean() is None


def test_derived_parameters():
    assert parse(LOGNORMAL).log_mu == pytest.approx(math.log(0.010))
    assert parse(LOGNORMAL).log_sigma == pytest.approx(math.log(5) / 2.3263478740408408)
    assert parse(CASES["gamma_mean_cv"]).k == pytest.approx(1 / 0.49)
    assert parse(CASES["gamma_mean_cv"]).theta == pytest.approx(0.0049)
    assert parse(CASES["mixture_unnormalised"]).weights.tolist() == [0.75, 0.25]


# --- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("short", ["20ms", 0.02, "0.02s", 0.02e0])
def test_bare_duration_is_a_constant(short):
    assert parse(short) == Constant(value=0.02)


def test_bare_duration_inside_a_mixture():
    dist = parse({"kind": "mixture", "components": [{"weight": 0.1, "dist": "200ms"}]})
    assert dist.components[0].dist == Constant(value=0.2)


def test_python_construction_uses_the_file_names():
    assert Normal(mean="50ms", sd="10ms").mean_ == 0.05
    assert Lognormal(median=0.01, p99=0.05) == parse(LOGNORMAL)
    assert Gamma(mean=0.01, cv=0.7) == parse(CASES["gamma_mean_cv"])
    assert isinstance(parse({"kind": "weibull", "shape": 1, "scale": "1s"}), Weibull)


BAD = {
    "unknown kind": (
        {"kind": "lognormla", "median": "10ms", "p99": "50ms"},
        ("latency",),
        "expected tags: 'constant', 'exponential'",
    ),
    "no kind": ({"median": "10ms"}, ("latency",), "needs a kind, one of constant, exponential"),
    "bad shorthand": ("20xs", ("latency", "constant", "value"), "expected a duration"),
    "boolean": (True, ("latency", "constant", "value"), "got a boolean"),
    "negative constant": ("-5ms", ("latency", "constant", "value"), "must not be negative"),
    "typo": (
        {"kind": "lognormal", "meadian": "10ms", "p99": "50ms"},
        ("latency", "lognormal", "meadian"),
        "Extra inputs are not permitted",
    ),
    "two parameterisations": (
        {"kind": "lognormal", "median": "10ms", "p99": "50ms", "mu": -4.0},
        ("latency", "lognormal"),
        "exactly one of {median, p99} | {mu, sigma} | {mean, cv}; got median, p99, mu",
    ),
    "no parameterisation": (
        {"kind": "lognormal"},
        ("latency", "lognormal"),
        "exactly one of {median, p99} | {mu, sigma} | {mean, cv}; got none of them",
    ),
    "half a parameterisation": (
        {"kind": "gamma", "shape": 2},
        ("latency", "gamma"),
        "gamma with shape also needs scale",
    ),
    "p99 below median": (
        {"kind": "lognormal", "median": "10ms", "p99": "5ms"},
        ("latency", "lognormal"),
        "p99 > median, got median=10ms, p99=5ms",
    ),
    "zero sigma": (
        {"kind": "lognormal", "mu": -4.0, "sigma": 0},
        ("latency", "lognormal", "sigma"),
        "greater than 0",
    ),
    "uniform reversed": (
        {"kind": "uniform", "low": "50ms", "high": "10ms"},
        ("latency", "uniform"),
        "low <= high, got low=50ms, high=10ms",
    ),
    "normal mostly negative": (
        {"kind": "normal", "mean": "-50ms", "sd": "10ms"},
        ("latency", "normal"),
        "mean >= -3 sd",
    ),
    "zero exponential mean": (
        {"kind": "exponential", "mean": 0},
        ("latency", "exponential", "mean"),
        "greater than zero",
    ),
    "percentiles decrease": (
        {"kind": "empirical", "percentiles": {"p50": "10ms", "p90": "5ms"}},
        ("latency", "empirical"),
        "must not decrease: p90=5ms is below p50=10ms",
    ),
    "percentile key": (
        {"kind": "empirical", "percentiles": {"q50": "10ms"}},
        ("latency", "empirical"),
        "such as p50 or p99.9; got 'q50'",
    ),
    "percentile above 100": (
        {"kind": "empirical", "percentiles": {"p101": "10ms"}},
        ("latency", "empirical"),
        "got 'p101'",
    ),
    "percentile twice": (
        {"kind": "empirical", "percentiles": {"p50": "10ms", "p50.0": "10ms"}},
        ("latency", "empirical"),
        "given twice",
    ),
    "samples and percentiles": (
        {"kind": "empirical", "samples": ["1ms"], "percentiles": {"p50": "1ms"}},
        ("latency", "empirical"),
        "exactly one of samples or percentiles",
    ),
    "no samples": (
        {"kind": "empirical", "samples": []},
        ("latency", "empirical", "samples"),
        "at least 1 item",
    ),
    "zero weight": (
        {"kind": "mixture", "components": [{"weight": 0, "dist": "1ms"}]},
        ("latency", "mixture", "components", 0, "weight"),
        "greater than 0",
    ),
    "bad component": (
        {"kind": "mixture", "components": [{"weight": 1, "dist": {"kind": "gama"}}]},
        ("latency", "mixture", "components", 0, "dist"),
        "does not match any of the expected tags",
    ),
}


@pytest.mark.parametrize(("data", "loc", "message"), BAD.values(), ids=BAD.keys())
def test_bad_input_names_the_field_and_what_was_expected(data, loc, message):
    with pytest.raises(pydantic.ValidationError) as info:
        parse(data)
    errors = info.value.errors()
    assert len(errors) == 1
    assert errors[0]["loc"] == loc
    assert message in errors[0]["msg"]


def test_unknown_kind_error_lists_every_kind_for_did_you_mean():
    with pytest.raises(pydantic.ValidationError) as info:
        parse({"kind": "lognormla"})
    error = info.value.errors()[0]
    assert error["type"] == "union_tag_invalid"
    assert error["ctx"]["tag"] == "lognormla"
    assert "'lognormal'" in error["ctx"]["expected_tags"]


# --- round trip and schema -----------------------------------------------------------------------


@pytest.mark.parametrize("data", [*CASES.values(), "20ms"], ids=[*CASES.keys(), "shorthand"])
def test_dump_and_validate_again_gives_an_equal_model(data):
    holder = Holder.model_validate({"latency": data})
    dumped = holder.model_dump(mode="json", by_alias=True)
    assert Holder.model_validate(dumped) == holder


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_dump_is_what_was_written(data):
    # Only the chosen parameterisation is dumped, under its file name (``mean``, not ``mean_``).
    assert parse(data).model_dump(mode="json", by_alias=True) == data


def test_json_schema_accepts_the_shorthand_and_lists_the_kinds():
    schema = Holder.model_json_schema()
    options = schema["properties"]["latency"]["anyOf"]
    assert {"type": "string"} in options
    kinds = options[0]["discriminator"]["mapping"]
    assert set(kinds) == {
        "constant", "exponential", "uniform", "normal", "lognormal",
        "gamma", "weibull", "pareto", "empirical", "mixture",
    }  # fmt: skip
    # Field docstrings become the schema's descriptions, the generated reference.
    assert "99th percentile" in schema["$defs"]["Lognormal"]["properties"]["p99"]["description"]


# --- properties over parameters ------------------------------------------------------------------

positive = st.floats(1e-4, 10.0)
shapes = st.floats(0.1, 10.0)


def non_negative(dist: Distribution, seed: int) -> bool:
    return bool((dist.sample(np.random.default_rng(seed), 500) >= 0).all())


@given(sd=positive, z=st.floats(-3.0, 5.0), seed=st.integers(0, 2**32))
def test_truncated_normal_draws_are_non_negative(sd, z, seed):
    assert non_negative(Normal(mean=z * sd, sd=sd), seed)


@given(mu=st.floats(-10.0, 2.0), sigma=st.floats(0.01, 3.0), seed=st.integers(0, 2**32))
def test_lognormal_draws_are_non_negative(mu, sigma, seed):
    assert non_negative(Lognormal(mu=mu, sigma=sigma), seed)


@given(shape=shapes, scale=positive, seed=st.integers(0, 2**32))
def test_gamma_weibull_pareto_draws_are_non_negative(shape, scale, seed):
    assert non_negative(Gamma(shape=shape, scale=scale), seed)
    assert non_negative(Weibull(shape=shape, scale=scale), seed)
    assert (
        Pareto(shape=shape, scale=scale).sample(np.random.default_rng(seed), 500) >= scale
    ).all()


@given(
    points=st.lists(st.tuples(st.integers(0, 1000).map(lambda i: i / 10), st.floats(0, 10.0)),
                    min_size=1, max_size=8, unique_by=lambda t: t[0]),
    seed=st.integers(0, 2**32),
)  # fmt: skip
def test_empirical_percentile_draws_stay_within_the_table(points, seed):
    probs = sorted(p for p, _ in points)
    values = sorted(v for _, v in points)
    dist = Empirical(percentiles={f"p{p!r}": v for p, v in zip(probs, values, strict=True)})
    x = dist.sample(np.random.default_rng(seed), 500)
    assert (x >= 0).all()
    assert (x <= max(values)).all()
