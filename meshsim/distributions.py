"""Latency distributions of the scenario model, with analytic moments and vectorised sampling.

Every distribution is a frozen pydantic model tagged by ``kind`` and works in float seconds. In a
scenario file a distribution is written as a mapping, such as
``{kind: lognormal, median: 20ms, p99: 200ms}``, or, for a fixed delay, as a bare duration
(``20ms``). Annotate a field with :data:`Distribution` to accept any of them.

Each model offers ``mean()`` and ``variance()`` (analytic, ``None`` where infinite or undefined) so
that sampling and the simulator can be checked against theory, and ``sample(rng, n)`` which returns
``n`` draws at once: the engine draws in large batches, never one variate per call.
"""

from __future__ import annotations

import itertools
import math
import re
from statistics import NormalDist
from typing import Annotated, Any, Literal, get_args

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from meshsim._base import Model
from meshsim.units import MAX_SECONDS, Duration, NonNegDuration, PosDuration, format_duration

__all__ = [
    "BaseDistribution",
    "Constant",
    "Distribution",
    "Empirical",
    "Exponential",
    "Gamma",
    "Lognormal",
    "Mixture",
    "MixtureComponent",
    "Normal",
    "Pareto",
    "Uniform",
    "Weibull",
]

#: A finite float > 0 (shapes, sigma, cv, weights).
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

_Z99 = NormalDist().inv_cdf(0.99)
# A truncated normal is drawn by rejection; below this mean/sd almost every draw would be rejected.
_MIN_NORMAL_Z = -3.0
_MAX_BATCH = 1 << 20
_PERCENTILE_KEY = re.compile(r"^p(\d+(?:\.\d*)?|\.\d+)$")


class BaseDistribution(Model):
    """Interface shared by every distribution; all values are float seconds."""

    def mean(self) -> float | None:
        """Analytic mean in seconds, or ``None`` if it is infinite."""
        raise NotImplementedError

    def variance(self) -> float | None:
        """Analytic variance in seconds squared, or ``None`` if it is infinite or undefined."""
        raise NotImplementedError

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw ``n`` independent values.

        Parameters
        ----------
        rng : numpy.random.Generator
            The caller's stream; nothing global is used.
        n : int
            Number of draws.

        Returns
        -------
        numpy.ndarray
            ``n`` float64 values in seconds, all >= 0.
        """
        raise NotImplementedError


def _optional(**kwargs: Any) -> Any:
    """A field of a parameterisation that may not have been chosen: absent means ``None``.

    ``None`` is left out of dumps, so a dumped scenario is as short as the one that was written.
    """
    return Field(default=None, exclude_if=lambda v: v is None, **kwargs)


def _given(model: Model, groups: dict[str, tuple[str, ...]], kind: str) -> str:
    """Name the one complete parameterisation in ``groups`` that ``model`` was given.

    Raises ``ValueError`` unless exactly one group is complete and no field of another is set.
    """
    options = " | ".join("{" + ", ".join(g) + "}" for g in groups.values())
    set_fields = [f for g in groups.values() for f in g if getattr(model, _attr(f)) is not None]
    chosen = [name for name, g in groups.items() if any(f in set_fields for f in g)]
    if len(chosen) != 1:
        got = ", ".join(set_fields) if set_fields else "none of them"
        raise ValueError(f"{kind} takes exactly one of {options}; got {got}")
    missing = [f for f in groups[chosen[0]] if f not in set_fields]
    if missing:
        raise ValueError(f"{kind} with {', '.join(set_fields)} also needs {', '.join(missing)}")
    return chosen[0]


def _attr(field: str) -> str:
    # ``mean`` is a method, so a field written ``mean`` is stored as ``mean_``.
    return "mean_" if field == "mean" else field


class Constant(BaseDistribution):
    """A fixed delay, in seconds.

    YAML: ``{kind: constant, value: 20ms}``, or just ``20ms`` wherever a distribution is expected.
    """

    kind: Literal["constant"] = "constant"
    """Always ``constant``."""
    value: NonNegDuration
    """The delay, a duration such as ``20ms``."""

    def mean(self) -> float:
        return self.value

    def variance(self) -> float:
        return 0.0

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value, dtype=np.float64)


class Exponential(BaseDistribution):
    """Exponential delay with the given mean, in seconds (memoryless; CV 1).

    YAML: ``{kind: exponential, mean: 5ms}``.
    """

    kind: Literal["exponential"] = "exponential"
    """Always ``exponential``."""
    mean_: PosDuration = Field(alias="mean")
    """Mean delay, a duration such as ``5ms``."""

    def mean(self) -> float:
        return self.mean_

    def variance(self) -> float:
        return self.mean_**2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_, n)


class Uniform(BaseDistribution):
    """Delay uniform on ``[low, high]``, in seconds.

    YAML: ``{kind: uniform, low: 10ms, high: 30ms}``.
    """

    kind: Literal["uniform"] = "uniform"
    """Always ``uniform``."""
    low: NonNegDuration
    """Smallest delay, a duration."""
    high: NonNegDuration
    """Largest delay, a duration not below ``low``."""

    @model_validator(mode="after")
    def _check_order(self) -> Uniform:
        if self.low > self.high:
            raise ValueError(
                f"uniform needs low <= high, got low={format_duration(self.low)}, "
                f"high={format_duration(self.high)}"
            )
        return self

    def mean(self) -> float:
        return (self.low + self.high) / 2

    def variance(self) -> float:
        return (self.high - self.low) ** 2 / 12

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, n)


class Normal(BaseDistribution):
    """Normal delay truncated at zero.

    ``mean`` and ``sd`` are those of the normal *before* truncation; negative draws are redrawn
    (not clipped to zero), so the delays average somewhat more than ``mean`` when ``sd`` is not
    small next to it. ``mean`` may be negative but not below ``-3 sd``, where almost every draw
    would be redrawn.

    YAML: ``{kind: normal, mean: 50ms, sd: 10ms}``.
    """

    # mean() and variance() are those of the truncated normal.

    kind: Literal["normal"] = "normal"
    """Always ``normal``."""
    mean_: Duration = Field(alias="mean")
    """Mean of the untruncated normal, a duration."""
    sd: PosDuration
    """Standard deviation of the untruncated normal, a duration."""

    @model_validator(mode="after")
    def _check_mass_above_zero(self) -> Normal:
        if self.mean_ < _MIN_NORMAL_Z * self.sd:
            raise ValueError(
                f"normal needs mean >= -3 sd so that enough of it lies above zero, got "
                f"mean={format_duration(self.mean_)}, sd={format_duration(self.sd)}; "
                "use an exponential for delays that are mostly near zero"
            )
        return self

    def _trunc(self) -> tuple[float, float]:
        """Return ``alpha = -mean / sd`` and the inverse Mills ratio phi(a) / (1 - Phi(a))."""
        alpha = -self.mean_ / self.sd
        kept = 0.5 * math.erfc(alpha / math.sqrt(2))
        pdf = math.exp(-0.5 * alpha * alpha) / math.sqrt(2 * math.pi)
        return alpha, pdf / kept

    def mean(self) -> float:
        _, lam = self._trunc()
        return self.mean_ + self.sd * lam

    def variance(self) -> float:
        alpha, lam = self._trunc()
        return self.sd**2 * (1 + alpha * lam - lam * lam)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        kept = 0.5 * math.erfc(-self.mean_ / (self.sd * math.sqrt(2)))
        out = np.empty(n, dtype=np.float64)
        filled = 0
        while filled < n:
            need = n - filled
            # Oversize the batch so that one pass usually suffices.
            x = rng.normal(self.mean_, self.sd, min(int(need / kept * 1.1) + 16, _MAX_BATCH))
            x = x[x >= 0][:need]
            out[filled : filled + x.size] = x
            filled += x.size
        return out


class Lognormal(BaseDistribution):
    """Lognormal delay, given by exactly one of three pairs of fields.

    - ``{median, p99}``: two durations, ``p99 > median``;
    - ``{mu, sigma}``: mean and standard deviation of the natural log of the delay in seconds;
    - ``{mean, cv}``: mean (a duration) and coefficient of variation (standard deviation / mean).

    The resolved scenario keeps the pair that was written.

    YAML: ``{kind: lognormal, median: 20ms, p99: 200ms}``,
    ``{kind: lognormal, mu: -4.6, sigma: 0.5}`` or ``{kind: lognormal, mean: 20ms, cv: 1.0}``.
    """

    # The fields keep what was written; log_mu and log_sigma give the parameters of log(seconds)
    # whichever pair was used.

    kind: Literal["lognormal"] = "lognormal"
    """Always ``lognormal``."""
    median: PosDuration | None = _optional()
    """Median delay, a duration (with ``p99``)."""
    p99: PosDuration | None = _optional()
    """99th percentile, a duration greater than ``median`` (with ``median``)."""
    mu: FiniteFloat | None = _optional()
    """Mean of log(delay in seconds) (with ``sigma``)."""
    sigma: PosFloat | None = _optional()
    """Standard deviation of log(delay in seconds), > 0 (with ``mu``)."""
    mean_: PosDuration | None = _optional(alias="mean")
    """Mean delay, a duration (with ``cv``)."""
    cv: PosFloat | None = _optional()
    """Coefficient of variation, standard deviation / mean, > 0 (with ``mean``)."""

    @model_validator(mode="after")
    def _check_parameterisation(self) -> Lognormal:
        groups = {"quantiles": ("median", "p99"), "log": ("mu", "sigma"), "moments": ("mean", "cv")}
        chosen = _given(self, groups, "lognormal")
        if chosen == "quantiles" and self.p99 <= self.median:
            raise ValueError(
                f"lognormal needs p99 > median, got median={format_duration(self.median)}, "
                f"p99={format_duration(self.p99)}"
            )
        return self

    @property
    def log_mu(self) -> float:
        """Mean of log(delay in seconds)."""
        if self.mu is not None:
            return self.mu
        if self.median is not None:
            return math.log(self.median)
        return math.log(self.mean_) - self.log_sigma**2 / 2

    @property
    def log_sigma(self) -> float:
        """Standard deviation of log(delay in seconds)."""
        if self.sigma is not None:
            return self.sigma
        if self.median is not None:
            return math.log(self.p99 / self.median) / _Z99
        return math.sqrt(math.log1p(self.cv**2))

    def mean(self) -> float:
        return math.exp(self.log_mu + self.log_sigma**2 / 2)

    def variance(self) -> float:
        s2 = self.log_sigma**2
        return math.expm1(s2) * math.exp(2 * self.log_mu + s2)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(self.log_mu, self.log_sigma, n)


class Gamma(BaseDistribution):
    """Gamma delay, given as ``{shape, scale}`` or as ``{mean, cv}``.

    ``{mean, cv}`` is the same delay as ``shape`` = 1 / cv² and ``scale`` = mean · cv².

    YAML: ``{kind: gamma, shape: 2, scale: 5ms}`` or ``{kind: gamma, mean: 10ms, cv: 0.7}``.
    """

    # The fields keep what was written; k (shape) and theta (scale, seconds) give the parameters
    # whichever pair was used.

    kind: Literal["gamma"] = "gamma"
    """Always ``gamma``."""
    shape: PosFloat | None = _optional()
    """Shape k > 0, dimensionless (with ``scale``)."""
    scale: PosDuration | None = _optional()
    """Scale theta, a duration (with ``shape``)."""
    mean_: PosDuration | None = _optional(alias="mean")
    """Mean delay, a duration (with ``cv``)."""
    cv: PosFloat | None = _optional()
    """Coefficient of variation, standard deviation / mean, > 0 (with ``mean``)."""

    @model_validator(mode="after")
    def _check_parameterisation(self) -> Gamma:
        _given(self, {"shape": ("shape", "scale"), "moments": ("mean", "cv")}, "gamma")
        return self

    @property
    def k(self) -> float:
        """Shape, dimensionless."""
        return self.shape if self.shape is not None else 1 / self.cv**2

    @property
    def theta(self) -> float:
        """Scale in seconds."""
        return self.scale if self.scale is not None else self.mean_ * self.cv**2

    def mean(self) -> float:
        return self.k * self.theta

    def variance(self) -> float:
        return self.k * self.theta**2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.gamma(self.k, self.theta, n)


class Weibull(BaseDistribution):
    """Weibull delay: a delay exceeds x with probability exp(−(x / scale)^shape).

    YAML: ``{kind: weibull, shape: 1.5, scale: 20ms}``.
    """

    kind: Literal["weibull"] = "weibull"
    """Always ``weibull``."""
    shape: PosFloat
    """Shape k > 0, dimensionless (k < 1: heavier tail than exponential; k = 1: exponential)."""
    scale: PosDuration
    """Scale lambda, a duration."""

    def mean(self) -> float:
        return self.scale * math.gamma(1 + 1 / self.shape)

    def variance(self) -> float:
        g1 = math.gamma(1 + 1 / self.shape)
        return self.scale**2 * (math.gamma(1 + 2 / self.shape) - g1 * g1)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return self.scale * rng.weibull(self.shape, n)


class Pareto(BaseDistribution):
    """Classic (type I) Pareto delay: a delay exceeds x ≥ scale with probability (scale / x)^shape.

    The mean delay is infinite for ``shape`` ≤ 1 and its variance for ``shape`` ≤ 2: rare draws
    are then huge, and results vary a lot from run to run.

    YAML: ``{kind: pareto, shape: 2.5, scale: 10ms}``.
    """

    # mean() and variance() return None where they are infinite.

    kind: Literal["pareto"] = "pareto"
    """Always ``pareto``."""
    shape: PosFloat
    """Tail index alpha > 0, dimensionless; smaller is heavier."""
    scale: PosDuration
    """Minimum delay x_m, a duration; every draw is at least this."""

    def mean(self) -> float | None:
        a = self.shape
        return a * self.scale / (a - 1) if a > 1 else None

    def variance(self) -> float | None:
        a = self.shape
        return self.scale**2 * a / ((a - 1) ** 2 * (a - 2)) if a > 2 else None

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        # numpy's pareto is the Lomax form (support from 0); shift and scale it to classic.
        return self.scale * (1.0 + rng.pareto(self.shape, n))


def _percentile(key: str) -> float:
    m = _PERCENTILE_KEY.match(key)
    if not m or float(m.group(1)) > 100:
        raise ValueError(
            "percentile keys are p followed by a number from 0 to 100, such as p50 or p99.9; "
            f"got {key!r}"
        )
    return float(m.group(1))


class Empirical(BaseDistribution):
    """Delay taken from data, in seconds: either measured ``samples`` or a table of ``percentiles``.

    - ``samples``: draws pick one of the values uniformly at random, with replacement.
    - ``percentiles``: a mapping such as ``{p50: 12ms, p99: 80ms, p99.9: 200ms}``; draws follow the
      inverse CDF that interpolates linearly between the given points. ``p0`` is 0 s unless given.
      Above the highest given percentile every draw equals the highest given value (the tail is
      clamped, not extrapolated), so give ``p100`` to bound the tail explicitly.

    YAML: ``{kind: empirical, samples: [10ms, 12ms, 40ms]}`` or
    ``{kind: empirical, percentiles: {p50: 12ms, p99: 80ms, p100: 200ms}}``.
    """

    kind: Literal["empirical"] = "empirical"
    """Always ``empirical``."""
    samples: list[NonNegDuration] | None = _optional(min_length=1)
    """Observed delays, durations; each draw is one of them."""
    percentiles: dict[str, NonNegDuration] | None = _optional(min_length=1)
    """Delay at each percentile: keys ``p0`` to ``p100`` (``p99.9`` too), values not decreasing."""

    @model_validator(mode="after")
    def _check_data(self) -> Empirical:
        if (self.samples is None) == (self.percentiles is None):
            raise ValueError("empirical takes exactly one of samples or percentiles")
        if self.percentiles is not None:
            points = sorted((_percentile(k), v, k) for k, v in self.percentiles.items())
            for (p0, v0, k0), (p1, v1, k1) in itertools.pairwise(points):
                if p0 == p1:
                    raise ValueError(f"percentile {k0} is given twice (also as {k1})")
                if v1 < v0:
                    raise ValueError(
                        f"percentile values must not decrease: {k1}={format_duration(v1)} is below "
                        f"{k0}={format_duration(v0)}"
                    )
        return self

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the inverse CDF's points: probabilities in [0, 1] and delays in seconds."""
        table = sorted((_percentile(k) / 100, v) for k, v in self.percentiles.items())
        if table[0][0] > 0:
            table.insert(0, (0.0, 0.0))
        probs, values = zip(*table, strict=True)
        return np.array(probs), np.array(values)

    def _moments(self) -> tuple[float, float]:
        """Return E[X] and E[X**2] in seconds and seconds squared."""
        if self.samples is not None:
            x = np.asarray(self.samples)
            return float(x.mean()), float(np.mean(x * x))
        p, v = self._table()
        dp, a, b = np.diff(p), v[:-1], v[1:]
        top = 1.0 - p[-1]  # the clamped mass above the highest given percentile
        # On each segment Q(u) is linear from a to b: its integral is dp (a + b) / 2, that of Q(u)^2
        # is dp (a^2 + a b + b^2) / 3.
        m1 = np.sum(dp * (a + b) / 2) + top * v[-1]
        m2 = np.sum(dp * (a * a + a * b + b * b) / 3) + top * v[-1] ** 2
        return float(m1), float(m2)

    def mean(self) -> float:
        return self._moments()[0]

    def variance(self) -> float:
        m1, m2 = self._moments()
        return max(m2 - m1 * m1, 0.0)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.samples is not None:
            return rng.choice(np.asarray(self.samples, dtype=np.float64), n)
        p, v = self._table()
        # np.interp holds the last value beyond the last point: that is the documented clamp.
        return np.interp(rng.random(n), p, v)


class MixtureComponent(Model):
    """One component of a :class:`Mixture`: a relative weight and a distribution.

    YAML: ``{weight: 0.9, dist: {kind: lognormal, median: 10ms, p99: 50ms}}``.
    """

    weight: PosFloat
    """Relative weight > 0; the weights of a mixture are normalised to sum to 1."""
    dist: Distribution
    """The component's distribution (any kind, or a bare duration for a constant)."""


class Mixture(BaseDistribution):
    """Each draw comes from one component, chosen with probability proportional to its weight.

    Useful for a fast path with occasional slow requests (cache misses, GC pauses).

    YAML: ``{kind: mixture, components: [{weight: 0.9, dist: 10ms}, {weight: 0.1, dist: 200ms}]}``.
    """

    # mean() and variance() are None if any component's is.

    kind: Literal["mixture"] = "mixture"
    """Always ``mixture``."""
    components: list[MixtureComponent] = Field(min_length=1)
    """The components, each ``{weight, dist}``."""

    @property
    def weights(self) -> np.ndarray:
        """Normalised weights, summing to 1."""
        w = np.array([c.weight for c in self.components])
        with np.errstate(over="ignore"):
            total = w.sum()
        if not np.isfinite(total):  # huge weights: scale them down before adding them up
            w = w / w.max()
            total = w.sum()
        return w / total

    def mean(self) -> float | None:
        means = [c.dist.mean() for c in self.components]
        if any(m is None for m in means):
            return None
        return float(np.dot(self.weights, means))

    def variance(self) -> float | None:
        means = [c.dist.mean() for c in self.components]
        variances = [c.dist.variance() for c in self.components]
        if any(v is None for v in means + variances):
            return None
        # Law of total variance: E[Var] + Var[E].
        m = np.array(means)
        mixture_mean = np.dot(self.weights, m)
        return float(np.dot(self.weights, np.array(variances) + (m - mixture_mean) ** 2))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        which = rng.choice(len(self.components), size=n, p=self.weights)
        out = np.empty(n, dtype=np.float64)
        for i, component in enumerate(self.components):
            picked = which == i
            out[picked] = component.dist.sample(rng, int(picked.sum()))
        return out


_KINDS = (
    Constant
    | Exponential
    | Uniform
    | Normal
    | Lognormal
    | Gamma
    | Weibull
    | Pareto
    | Empirical
    | Mixture
)
_KIND_NAMES = ", ".join(t.model_fields["kind"].default for t in get_args(_KINDS))


def _shorthand(value: Any) -> Any:
    """Read a bare duration (``20ms``, ``0.02``) as a constant; insist on ``kind`` in a mapping."""
    if isinstance(value, str | int | float):  # a bool lands here too and gets the duration error
        return {"kind": "constant", "value": value}
    if isinstance(value, dict) and "kind" not in value:
        raise ValueError(
            f"a distribution needs a kind, one of {_KIND_NAMES}; or write a bare duration such as "
            "20ms for a constant delay"
        )
    return value


def _check_moments(dist: BaseDistribution) -> BaseDistribution:
    """Refuse parameters that put delays beyond any simulated time (where float maths overflows).

    Durations are capped at ``MAX_SECONDS``; the shapes, ``sigma`` and ``cv`` are plain numbers, so
    the mean and variance they give are checked instead.
    """
    try:
        mean, variance = dist.mean(), dist.variance()
    except (OverflowError, ZeroDivisionError):
        mean = variance = math.inf
    if mean is not None and not mean <= MAX_SECONDS:  # `not <=` catches nan too
        size = f"a mean delay of {mean:.3g} s" if math.isfinite(mean) else "an infinite mean delay"
        raise ValueError(
            f"{dist.kind} with these parameters has {size} "
            "(expected a mean of at most 1e12 s, about 31,700 years)"
        )
    if variance is not None and not math.isfinite(variance):
        raise ValueError(
            f"{dist.kind} with these parameters spreads delays too widely to compute (its "
            "variance overflows); expected a smaller sigma or cv, or a larger shape"
        )
    return dist


_Tagged = Annotated[_KINDS, Field(discriminator="kind")]

#: Any distribution, chosen by its ``kind``; a bare duration such as ``20ms`` means a constant.
#: Use it as a field type: ``latency: Distribution``.
Distribution = Annotated[
    _Tagged,
    BeforeValidator(_shorthand, json_schema_input_type=_Tagged | str | float),
    AfterValidator(_check_moments),
]

MixtureComponent.model_rebuild()
Mixture.model_rebuild()
