"""Units as people write them: durations (``250ms``), rates (``400/s``) and percentages (``99.9%``).

Everything inside meshsim is float seconds (durations) and float per-second (rates). Parsing happens
once, at the scenario boundary, through the annotated types below; dumping a scenario turns the
floats back into strings that parse to the very same float (``repr`` round-trips), so a resolved
scenario reruns exactly.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

__all__ = [
    "Duration",
    "NonNegDuration",
    "Percent",
    "PosDuration",
    "Probability",
    "Rate",
    "format_duration",
    "format_rate",
    "parse_duration",
    "parse_percent",
    "parse_rate",
]

# Seconds per unit. Istio durations use Go's syntax (``h``, ``m``, ``s``, ``ms``, ``us``/``µs``,
# ``ns``); ``min`` is accepted too because people write it.
_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
_RATE_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION_RE = re.compile(rf"^\s*({_NUMBER})\s*(ns|us|µs|ms|s|min|m|h)\s*$")
# Go's compound form, e.g. ``1m30s`` or ``1h0m0s`` as Istio prints it.
_COMPOUND_RE = re.compile(rf"({_NUMBER})(ns|us|µs|ms|s|m|h)")
_RATE_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:/|per\s+)\s*(ms|s|sec|second|min|m|h)\s*$")
_PERCENT_RE = re.compile(rf"^\s*({_NUMBER})\s*%\s*$")


def _finite(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return value


def parse_duration(value: Any) -> float:
    """Parse a duration into float seconds.

    Parameters
    ----------
    value : str or int or float
        ``"250ms"``, ``"1.5s"``, ``"2m"``, ``"1h"``, ``"1m30s"``, ``"100us"``; a bare number is
        seconds.

    Returns
    -------
    float
        Seconds.

    Raises
    ------
    ValueError
        With a message that says which forms are accepted.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 250ms or 1.5s, got a boolean")
    if isinstance(value, int | float):
        return _finite(float(value), "a duration")
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return _finite(float(m.group(1)) * _DURATION_UNITS[m.group(2)], "a duration")
        text = value.strip()
        parts = _COMPOUND_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
        try:
            return _finite(float(text), "a duration")
        except ValueError:
            pass
    raise ValueError(
        "expected a duration such as 250ms, 1.5s, 2m or 1h (a bare number is seconds), "
        f"got {value!r}"
    )


def parse_rate(value: Any) -> float:
    """Parse a rate into float events per second.

    Accepts ``"400/s"``, ``"1200/m"``, ``"5/ms"``, ``"100 per s"``; a bare number is per second.
    """
    if isinstance(value, bool):
        raise ValueError("expected a rate such as 400/s, got a boolean")
    if isinstance(value, int | float):
        return _finite(float(value), "a rate")
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if m:
            unit = {"sec": "s", "second": "s"}.get(m.group(2), m.group(2))
            return _finite(float(m.group(1)) / _RATE_UNITS[unit], "a rate")
        try:
            return _finite(float(value), "a rate")
        except ValueError:
            pass
    raise ValueError(
        f"expected a rate such as 400/s or 1200/m (a bare number is per second), got {value!r}"
    )


def parse_percent(value: Any) -> float:
    """Parse ``"99.9%"`` (or a bare number, already in percent) into a float percentage."""
    if isinstance(value, bool):
        raise ValueError("expected a percentage such as 99.9%, got a boolean")
    if isinstance(value, int | float):
        return _finite(float(value), "a percentage")
    if isinstance(value, str):
        m = _PERCENT_RE.match(value)
        if m:
            return float(m.group(1))
        try:
            return _finite(float(value), "a percentage")
        except ValueError:
            pass
    raise ValueError(f"expected a percentage such as 99.9% or 50, got {value!r}")


def format_duration(seconds: float) -> str:
    """Format float seconds so that :func:`parse_duration` gives back the same float.

    Whole milliseconds print as ``250ms``; anything else prints as ``repr(seconds) + "s"``.
    """
    ms = seconds * 1000.0
    if ms == int(ms) and abs(ms) < 1e15 and parse_duration(f"{int(ms)}ms") == seconds:
        return f"{int(ms)}ms"
    return f"{seconds!r}s"


def format_rate(per_second: float) -> str:
    """Format a rate as ``"<repr>/s"`` (round-trips through :func:`parse_rate`)."""
    if per_second == int(per_second):
        return f"{int(per_second)}/s"
    return f"{per_second!r}/s"


def _check_non_negative(x: float) -> float:
    if x < 0:
        raise ValueError(f"must not be negative, got {format_duration(x)}")
    return x


def _check_positive(x: float) -> float:
    if x <= 0:
        raise ValueError(f"must be greater than zero, got {format_duration(x)}")
    return x


def _check_probability(x: Any) -> float:
    if isinstance(x, str):
        x = parse_percent(x) / 100.0 if x.strip().endswith("%") else float(x)
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"expected a probability between 0 and 1 (or a percentage), got {x!r}")
    x = float(x)
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"expected a probability between 0 and 1, got {x!r}")
    return x


_dur_ser = PlainSerializer(format_duration, return_type=str, when_used="json-unless-none")
_DUR_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {"type": "string", "pattern": r"^\s*[0-9.eE+-]+\s*(ns|us|µs|ms|s|min|m|h)?\s*$"},
            {"type": "number"},
        ],
        "description": "A duration: 250ms, 1.5s, 2m, 1h (a bare number is seconds).",
    }
)
_RATE_SCHEMA = WithJsonSchema(
    {
        "anyOf": [{"type": "string"}, {"type": "number"}],
        "description": "A rate: 400/s, 1200/m (a bare number is per second).",
    }
)
_PROB_SCHEMA = WithJsonSchema(
    {
        "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string"}],
        "description": "A probability in [0, 1], or a percentage such as 5%.",
    }
)

#: Any duration, float seconds inside; serialised back to a string such as ``250ms``.
Duration = Annotated[float, BeforeValidator(parse_duration), _dur_ser, _DUR_SCHEMA]
#: A duration >= 0.
NonNegDuration = Annotated[
    float, BeforeValidator(lambda v: _check_non_negative(parse_duration(v))), _dur_ser, _DUR_SCHEMA
]
#: A duration > 0.
PosDuration = Annotated[
    float, BeforeValidator(lambda v: _check_positive(parse_duration(v))), _dur_ser, _DUR_SCHEMA
]


def _positive_rate(v: Any) -> float:
    r = parse_rate(v)
    if r <= 0:
        raise ValueError(f"must be greater than zero, got {v!r}")
    return r


def _non_negative_rate(v: Any) -> float:
    r = parse_rate(v)
    if r < 0:
        raise ValueError(f"must not be negative, got {v!r}")
    return r


#: A rate > 0 in events per second; serialised as ``400/s``.
Rate = Annotated[
    float,
    BeforeValidator(_positive_rate),
    PlainSerializer(format_rate, return_type=str, when_used="json-unless-none"),
    _RATE_SCHEMA,
]
#: A rate >= 0 (a step of a rate profile may be zero).
NonNegRate = Annotated[
    float,
    BeforeValidator(_non_negative_rate),
    PlainSerializer(format_rate, return_type=str, when_used="json-unless-none"),
    _RATE_SCHEMA,
]
#: A probability in [0, 1]; ``"5%"`` is accepted too.
Probability = Annotated[float, BeforeValidator(_check_probability), _PROB_SCHEMA]
#: A percentage, ``"99.9%"`` or ``99.9``.
Percent = Annotated[float, BeforeValidator(parse_percent)]
