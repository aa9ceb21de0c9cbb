"""What ``meshsim tune`` searches and how it judges a setting: the tuned paths and their ranges
(:class:`Param`), the objective's metric and direction, and constraints such as ``p99<300ms``
(:class:`Constraint`), parsed with meshsim's units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import unknown_name
from .units import parse_duration, parse_percent, parse_rate

__all__ = [
    "Constraint",
    "Param",
    "TuneError",
    "default_direction",
    "metric_name",
    "parse_constraint",
    "parse_param",
    "parse_param_arg",
]

#: Short names people write for the metrics of :func:`meshsim.evaluate`'s frame.
ALIASES = {"p50": "latency_p50", "p90": "latency_p90", "p99": "latency_p99",
           "mean": "latency_mean", "success": "success_rate"}
MAXIMIZE = ("goodput", "success_rate", "slo_met")
MINIMIZE = ("latency_mean", "latency_p50", "latency_p90", "latency_p99", "in_flight_at_end",
            "amplification", "wasted_work")
#: Metrics without a better direction of their own: give ``direction``.
NEUTRAL = ("requests",)
PER_FAULT_MINIMIZE = ("time_to_detect", "time_to_recover", "blast_radius")
INSTALL_HINT = "meshsim tune needs Optuna: pip install 'meshsim[tune]'"

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b, ">": lambda a, b: a > b,
}
_CONSTRAINT_RE = re.compile(r"^\s*(?P<metric>.+?)\s*(?P<op><=|>=|<|>)\s*(?P<value>.+?)\s*$")


class TuneError(ValueError):
    """Invalid input to :func:`tune`: an objective, a constraint or a parameter range."""


# --------------------------------------------------------------------------------------------
# Metrics and constraints
# --------------------------------------------------------------------------------------------


def metric_name(text: str, faults: Sequence[str] = ()) -> str:
    """The frame column for ``text`` (``p99`` -> ``latency_p99``); ``faults`` are the fault
    labels whose ``<label>: time_to_recover`` (...) columns exist."""
    name = ALIASES.get(text.strip(), text.strip())
    known = {*MAXIMIZE, *MINIMIZE, *NEUTRAL,
             *(f"{f}: {m}" for f in faults for m in PER_FAULT_MINIMIZE)}
    if name not in known:
        raise TuneError(unknown_name(name, known | set(ALIASES), "metric"))
    return name


def default_direction(metric: str) -> str:
    """``maximize`` or ``minimize``: which way ``metric`` is better."""
    if metric in MAXIMIZE:
        return "maximize"
    if metric in MINIMIZE or metric.rsplit(": ", 1)[-1] in PER_FAULT_MINIMIZE:
        return "minimize"
    raise TuneError(f"{metric} is neither better high nor low: give direction "
                    "('maximize' or 'minimize')")


@dataclass(frozen=True)
class Constraint:
    """``metric op bound``, in the frame's units (seconds, 0-1 fractions, per second)."""

    metric: str
    op: str
    bound: float
    text: str

    def holds(self, value: float) -> bool:
        """Whether ``value`` (a replication mean) meets the constraint; NaN never does."""
        return value == value and _OPS[self.op](value, self.bound)

    def violation(self, value: float) -> float:
        """How far ``value`` is on the wrong side, relative to the bound (0 when it holds):
        Optuna ranks infeasible trials by the sum of these, so they must share a scale."""
        if value != value:
            return 1e6
        if self.holds(value):
            return 0.0
        gap = value - self.bound if self.op.startswith("<") else self.bound - value
        return max(gap, 1e-12) / (abs(self.bound) or 1.0)

    def worst(self, values: Sequence[float]) -> float:
        """The value of the variant where the constraint is closest to failing (NaN first)."""
        if any(v != v for v in values):
            return math.nan
        return max(values) if self.op.startswith("<") else min(values)


def parse_constraint(text: str, faults: Sequence[str] = ()) -> Constraint:
    """Parse ``p99<300ms``, ``success_rate>=99.9%``, ``goodput>500/s``, ``amplification<=1.5``.

    Latencies and fault times take durations (a bare number is seconds), ``success_rate`` a
    percentage with ``%``, ``goodput`` a rate (a bare number is per second).

    Raises
    ------
    TuneError
        With what was expected.
    """
    m = _CONSTRAINT_RE.match(text)
    if not m:
        raise TuneError(f"constraint {text!r}: expected METRIC OP VALUE with OP one of "
                        "<, <=, >, >= (e.g. 'p99<300ms' or 'success_rate>=99.9%')")
    try:
        metric = metric_name(m["metric"], faults)
    except TuneError as exc:
        raise TuneError(f"constraint {text!r}: {exc}") from None
    written = m["value"]
    try:
        if metric.startswith("latency_") or metric.endswith(("time_to_detect",
                                                             "time_to_recover")):
            bound = parse_duration(written)
        elif metric == "success_rate":
            if not written.endswith("%"):
                raise ValueError(f"write the success rate as a percentage, e.g. 99.9%, "
                                 f"got {written!r}")
            bound = parse_percent(written) / 100
        elif metric == "goodput":
            bound = parse_rate(written)
        else:
            bound = float(written)
    except ValueError as exc:
        raise TuneError(f"constraint {text!r}: {exc}") from None
    return Constraint(metric, m["op"], bound, text.strip())


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One tuned path: a range (``int``, ``float`` or ``duration``) or ``choice`` of values.

    A duration range is searched in whole milliseconds (whole microseconds when an end is not
    a whole millisecond) and given to the scenario in seconds.
    """

    path: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    step: float = 1.0  # seconds per searched unit of a duration

    def distribution(self) -> Any:
        try:
            from optuna.distributions import (
                CategoricalDistribution,
                FloatDistribution,
                IntDistribution,
            )
        except ImportError:
            raise ImportError(INSTALL_HINT) from None

        if self.kind == "choice":
            return CategoricalDistribution(self.choices)
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return IntDistribution(self.low, self.high, log=self.log)
        return IntDistribution(self._units(self.low), self._units(self.high), log=self.log)

    def value(self, internal: Any) -> Any:
        """The scenario value for Optuna's parameter value (seconds for a duration)."""
        return internal * self.step if self.kind == "duration" else internal

    def internal(self, value: Any) -> Any | None:
        """Optuna's parameter value for a scenario value, or None when the value is outside the
        search space (so the reference cannot be told to the sampler)."""
        if value is None:
            return None
        if self.kind == "choice":
            return value if value in self.choices else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if self.kind == "float":
            internal: Any = float(value)
        elif self.kind == "int":
            internal = int(value) if float(value).is_integer() else None
        else:
            units = self._units(value)
            internal = units if math.isclose(units * self.step, value, abs_tol=1e-12) else None
        dist = self.distribution()
        return internal if internal is not None and dist.low <= internal <= dist.high else None

    def suggest(self, trial: Any) -> Any:
        """Ask ``trial`` for a value; return it as the scenario takes it."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.path, list(self.choices))
        dist = self.distribution()
        if self.kind == "float":
            return trial.suggest_float(self.path, dist.low, dist.high, log=self.log)
        return self.value(trial.suggest_int(self.path, dist.low, dist.high, log=self.log))

    def _units(self, seconds: float) -> int:
        return round(seconds / self.step)

    def ends(self) -> list[Any]:
        """Values that must all make a valid scenario: both ends, or every choice."""
        if self.kind == "choice":
            return list(self.choices)
        return [self.value(self.distribution().low), self.value(self.distribution().high)]


def parse_param(path: str, spec: Any) -> Param:
    """A :class:`Param` from ``(low, high)``, ``[choice, ...]`` or ``{"low", "high", "log"}``
    / ``{"choices": [...]}``. Ends that are both ints give an int range; durations
    (``"100ms"``) a duration range.

    Raises
    ------
    TuneError
        If the spec is not one of these forms or its range is empty.
    """
    where = f"parameter {path!r}"
    if isinstance(spec, list):
        spec = {"choices": spec}
    elif isinstance(spec, tuple):
        if len(spec) != 2:
            raise TuneError(f"{where}: a range is (low, high), got {len(spec)} values")
        spec = {"low": spec[0], "high": spec[1]}
    if not isinstance(spec, Mapping):
        raise TuneError(f"{where}: expected (low, high), a list of choices or "
                        f"{{'low':..,'high':..,'log':..}}, got {spec!r}")
    extra = set(spec) - ({"choices"} if "choices" in spec else {"low", "high", "log"})
    if extra:
        raise TuneError(f"{where}: unexpected keys {sorted(extra)} (a range has low, high and "
                        "log; a choice has choices)")
    if "choices" in spec:
        choices = tuple(spec["choices"])
        if not choices:
            raise TuneError(f"{where}: no choices given")
        return Param(path, "choice", choices=choices)
    if "low" not in spec or "high" not in spec:
        raise TuneError(f"{where}: a range needs both low and high")
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    param = _range(path, low, high, log)
    if param.low > param.high:
        raise TuneError(f"{where}: low {low!r} is above high {high!r}")
    if log and param.low <= 0:
        raise TuneError(f"{where}: a log range needs low > 0, got {low!r}")
    return param


def _range(path: str, low: Any, high: Any, log: bool) -> Param:
    if any(isinstance(x, bool) for x in (low, high)):
        raise TuneError(f"parameter {path!r}: a range of booleans is a choice: [false, true]")
    if isinstance(low, int) and isinstance(high, int):
        return Param(path, "int", low, high, log)
    if isinstance(low, int | float) and isinstance(high, int | float):
        return Param(path, "float", float(low), float(high), log)
    if isinstance(low, str) and isinstance(high, str):
        try:
            lo, hi = parse_duration(low), parse_duration(high)
        except ValueError as exc:
            raise TuneError(f"parameter {path!r}: {exc}") from None
        whole_ms = all(math.isclose(round(x * 1e3), x * 1e3, abs_tol=1e-9) for x in (lo, hi))
        step = 1e-3 if whole_ms else 1e-6
        return Param(path, "duration", lo, hi, log, step=step)
    raise TuneError(f"parameter {path!r}: the ends must be two numbers or two durations, "
                    f"got {low!r} and {high!r}")


def parse_param_arg(text: str) -> Param:
    """A CLI ``--param``: ``PATH=LOW..HIGH``, ``PATH=LOW..HIGH:log`` or ``PATH=A,B,C``."""
    from .yamlio import parse_scalar

    path, sep, rest = text.partition("=")
    path = path.strip()
    if not sep or not path or not rest.strip():
        raise TuneError(f"--param {text!r}: expected PATH=LOW..HIGH, PATH=LOW..HIGH:log or "
                        "PATH=A,B,C")
    rest = rest.strip()
    log = rest.endswith(":log")
    if log:
        rest = rest[:-4]
    if ".." in rest:
        low, _, high = rest.partition("..")
        values = [parse_scalar(v.strip(), "--param", (path,)) for v in (low, high)]
        return parse_param(path, {"low": values[0], "high": values[1], "log": log})
    if log:
        raise TuneError(f"--param {text!r}: ':log' goes with a range LOW..HIGH")
    return parse_param(path, [parse_scalar(v.strip(), "--param", (path,))
                              for v in rest.split(",")])
