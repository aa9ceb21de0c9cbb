"""The workload part of a scenario: arrival processes, rate profiles and clients.

Pure models (no simulation here). Each rate profile gives ``rate_at(t)`` and ``max_rate()``; the
engine simulates a non-homogeneous Poisson process from them by thinning, which is exact for any
profile. ``rate_function()`` returns a fast callable of ``t`` for the engine's hot path.
"""

from __future__ import annotations

import bisect
import csv
import math
from collections.abc import Callable, Mapping
from itertools import pairwise
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ._base import Model, kind_or
from .distributions import Distribution
from .slo import Slo
from .units import Duration, NonNegDuration, NonNegRate, PosDuration, Rate

__all__ = [
    "Arrival",
    "Client",
    "ClosedArrivals",
    "ConstantRate",
    "PoissonArrivals",
    "RampRate",
    "RateProfile",
    "RateStep",
    "SinusoidalRate",
    "StepsRate",
    "TraceRate",
]


def _step_function(times: list[float], rates: list[float]) -> Callable[[float], float]:
    """``t -> rate`` of a piecewise-constant profile (0 before the first point), by bisection."""

    def rate_at(t: float) -> float:
        i = bisect.bisect_right(times, t)
        return rates[i - 1] if i else 0.0

    return rate_at


class ConstantRate(Model):
    """A constant arrival rate."""

    kind: Literal["constant"] = "constant"
    """Always ``constant``; may be left out."""
    rate: NonNegRate
    """Arrivals per unit of time, e.g. ``400/s``."""

    def rate_at(self, t: float) -> float:
        return self.rate

    def rate_function(self) -> Callable[[float], float]:
        return self.rate_at

    def max_rate(self) -> float:
        return self.rate


class RateStep(Model):
    """From time ``at`` on, arrivals come at ``rate``."""

    at: NonNegDuration
    """When this step begins, counted from the start of the run, e.g. ``60s``."""
    rate: NonNegRate
    """The rate from ``at`` until the next step (or the end of the run), e.g. ``400/s``."""


class StepsRate(Model):
    """A piecewise-constant rate; before the first step the rate is 0."""

    kind: Literal["steps"]
    """Always ``steps``."""
    steps: list[RateStep] = Field(min_length=1)
    """The steps ``{at, rate}``, in increasing order of ``at``."""

    @field_validator("steps")
    @classmethod
    def _increasing(cls, steps: list[RateStep]) -> list[RateStep]:
        for a, b in pairwise(steps):
            if b.at <= a.at:
                raise ValueError("step times must increase")
        return steps

    def rate_at(self, t: float) -> float:
        return self.rate_function()(t)

    def rate_function(self) -> Callable[[float], float]:
        return _step_function([s.at for s in self.steps], [s.rate for s in self.steps])

    def max_rate(self) -> float:
        return max(s.rate for s in self.steps)


class RampRate(Model):
    """A linear ramp from ``from`` to ``to`` during ``[start, start + over]``; flat outside."""

    kind: Literal["ramp"]
    """Always ``ramp``."""
    from_rate: NonNegRate = Field(alias="from")
    """The rate up to ``start``, e.g. ``100/s``."""
    to_rate: NonNegRate = Field(alias="to")
    """The rate from ``start + over`` on, e.g. ``1000/s``."""
    start: NonNegDuration = 0.0
    """When the ramp begins."""
    over: PosDuration
    """How long the ramp lasts."""

    def rate_at(self, t: float) -> float:
        x = min(max((t - self.start) / self.over, 0.0), 1.0)
        return self.from_rate + (self.to_rate - self.from_rate) * x

    def rate_function(self) -> Callable[[float], float]:
        return self.rate_at

    def max_rate(self) -> float:
        return max(self.from_rate, self.to_rate)


class SinusoidalRate(Model):
    """A diurnal-style rate: ``mean + amplitude·sin(2π(t − phase)/period)``."""

    kind: Literal["sinusoidal"]
    """Always ``sinusoidal``."""
    mean: Rate
    """The average rate, e.g. ``400/s``."""
    amplitude: NonNegRate
    """How far the rate swings above and below ``mean``; at most ``mean``."""
    period: PosDuration
    """Length of one full cycle, e.g. ``24h``."""
    phase: Duration = 0.0
    """Shift of the cycle: the rate rises through ``mean`` at ``phase``."""

    @model_validator(mode="after")
    def _non_negative(self) -> SinusoidalRate:
        if self.amplitude > self.mean:
            raise ValueError("amplitude must not exceed mean (the rate would go negative)")
        return self

    def rate_at(self, t: float) -> float:
        return self.mean + self.amplitude * math.sin(2 * math.pi * (t - self.phase) / self.period)

    def rate_function(self) -> Callable[[float], float]:
        return self.rate_at

    def max_rate(self) -> float:
        return self.mean + self.amplitude


class TraceRate(Model):
    """A rate read from a CSV file with columns ``t`` (seconds) and ``rate`` (per second).

    The rate is piecewise constant between rows. A relative ``file`` is relative to the
    scenario file; its rows are copied into ``points`` when the scenario is loaded, so a
    resolved scenario is self-contained.
    """

    kind: Literal["trace"]
    """Always ``trace``."""
    file: str | None = None
    """CSV file with a header row ``t,rate``."""
    points: list[tuple[NonNegDuration, NonNegRate]] | None = None
    """``[time, rate]`` pairs; filled from ``file`` when loading."""

    @model_validator(mode="before")
    @classmethod
    def _read_file(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict) or data.get("points") is not None or not data.get("file"):
            return data
        base = Path((info.context or {}).get("base_dir", "."))
        path = base / str(data["file"])
        data = dict(data)
        data["points"] = _read_trace(path)
        return data

    @model_validator(mode="after")
    def _has_points(self) -> TraceRate:
        if not self.points:
            raise ValueError("a trace needs `file` (a CSV with columns t,rate) or `points`")
        times = [p[0] for p in self.points]
        if any(b <= a for a, b in pairwise(times)):
            raise ValueError("trace times must increase")
        return self

    def rate_at(self, t: float) -> float:
        return self.rate_function()(t)

    def rate_function(self) -> Callable[[float], float]:
        points = self.points or []
        return _step_function([p[0] for p in points], [p[1] for p in points])

    def max_rate(self) -> float:
        return max(r for _, r in self.points or [(0.0, 0.0)])


def _read_trace(path: Path) -> list[list[float]]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as exc:
        raise ValueError(f"cannot read trace file {str(path)!r}: {exc.strerror}") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"trace file {str(path)!r} is not a CSV text file: {exc}") from None
    points = []
    for i, row in enumerate(rows, start=2):
        try:
            points.append([float(row["t"]), float(row["rate"])])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{path}:{i}: expected numeric columns 't' (seconds) and 'rate' (per second)"
            ) from None
    if not points:
        raise ValueError(f"trace file {str(path)!r} has no rows (expected a header t,rate)")
    return points


def _rate_kind(v: Any) -> str:
    if isinstance(v, Mapping):
        return str(v.get("kind", "constant"))
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        return "constant"
    return getattr(v, "kind", "constant")


def _rate_shorthand(v: Any) -> Any:
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        return {"kind": "constant", "rate": v}
    return v


RateProfile = Annotated[
    Annotated[ConstantRate, Tag("constant")]
    | Annotated[StepsRate, Tag("steps")]
    | Annotated[RampRate, Tag("ramp")]
    | Annotated[SinusoidalRate, Tag("sinusoidal")]
    | Annotated[TraceRate, Tag("trace")],
    Discriminator(_rate_kind),
]


class PoissonArrivals(Model):
    """Open-loop arrivals: a Poisson process whose rate may vary over time.

    ``rate: 400/s`` is a constant rate; a profile (``{kind: steps|ramp|sinusoidal|trace}``)
    gives a non-homogeneous process (simulated by thinning). Open loop means arrivals do not
    slow down when the system does, as with real users on the internet.
    """

    kind: Literal["poisson"] = "poisson"
    """Always ``poisson``; may be left out."""
    rate: RateProfile
    """Mean arrivals per unit of time: a rate such as ``400/s``, or a rate profile."""

    @field_validator("rate", mode="before", json_schema_input_type=RateProfile | NonNegRate)
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return _rate_shorthand(v)

    @model_validator(mode="after")
    def _some_traffic(self) -> PoissonArrivals:
        if self.rate.max_rate() <= 0:
            raise ValueError("the rate profile is zero everywhere: no request would ever arrive")
        return self


class ClosedArrivals(Model):
    """Closed-loop users: each sends a request, waits for the answer, thinks, and repeats."""

    kind: Literal["closed"]
    """Always ``closed``."""
    users: PositiveInt
    """Number of concurrent users."""
    think_time: Distribution = Field(default="1s", validate_default=True)
    """Time between an answer and the user's next request."""


Arrival = Annotated[
    Annotated[PoissonArrivals, Tag("poisson")] | Annotated[ClosedArrivals, Tag("closed")],
    Discriminator(kind_or("poisson")),
]


class Client(Model):
    """A source of end-user requests entering at one service."""

    client: str
    """The client's id; it appears in the ``client`` column of every record it causes."""
    entry: str
    """The service the requests are for."""
    via_ingress: bool = True
    """Requests pass the ingress gateway (true) or reach the entry service's pods directly."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Request headers (used by header-based policies)."""
    arrival: Arrival
    """How requests are sent: open loop (``{rate: 400/s}``) or closed loop (``{kind: closed}``)."""
    slo: Slo | None = None
    """The objective of this entry point, as its users see it (end to end)."""
