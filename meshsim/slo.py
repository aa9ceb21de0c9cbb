"""Service-level objectives (``slo:``) declared in a scenario, per entry point and per service."""

from __future__ import annotations

from pydantic import model_validator

from ._base import Model
from .units import PosDuration, Probability

__all__ = ["Slo"]


class Slo(Model):
    """What "healthy" means for a service or an entry point, e.g.
    ``slo: {p99: 300ms, successRate: 99.9%}``.

    A service meets it in a time window when every objective set holds over the answers of that
    window; the cascade metrics (:mod:`meshsim.cascade`) judge blast radius with it.
    """

    success_rate: Probability | None = None
    """Least share of 2xx/3xx answers, e.g. ``99.9%``."""
    p50: PosDuration | None = None
    """Highest median latency."""
    p90: PosDuration | None = None
    """Highest 90th-percentile latency."""
    p99: PosDuration | None = None
    """Highest 99th-percentile latency."""

    @model_validator(mode="after")
    def _some_objective(self) -> Slo:
        if all(v is None for v in (self.success_rate, self.p50, self.p90, self.p99)):
            raise ValueError("set at least one objective: successRate, p50, p90 or p99")
        return self

    def objectives(self) -> dict[str, float]:
        """The objectives set, as ``{"success_rate": 0.999, "latency_p99": 0.3, ...}`` (the
        column names of :meth:`meshsim.Result.summary`)."""
        out = {} if self.success_rate is None else {"success_rate": self.success_rate}
        for q in ("p50", "p90", "p99"):
            value = getattr(self, q)
            if value is not None:
                out[f"latency_{q}"] = value
        return out
