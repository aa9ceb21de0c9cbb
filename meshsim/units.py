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
    "MAX_PERCENT",
    "MAX_RATE",
    "MAX_SECONDS",
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
_UNSIGNED = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_NUMBER = rf"[+-]?{_UNSIGNED}"
_DURATION_RE = re.compile(rf"^\s*({_NUMBER})\s*(ns|us|µs|ms|s|min|m|h)\s*$")
# Go's compound form, e.g. ``1m30s`` or ``1h0m0s`` as Istio prints it: as in Go, one sign in front
# applies to the whole (``-1m30s`` is -90 s) and the parts themselves carry none.
_COMPOUND_RE = re.compile(rf"^([+-]?)((?:{_UNSIGNED}(?:ns|us|µs|ms|s|m|h))+)$")
_COMPOUND_PART_RE = re.compile(rf"({_UNSIGNED})(ns|us|µs|ms|s|m|h)")
_RATE_RE = re.compile(rf"^\s*({_NUMBER})\s*(?:/|per\s+)\s*(ms|s|sec|second|min|m|h)\s*$")
_PERCENT_RE = re.compile(rf"^\s*({_NUMBER})\s*%\s*$")

#: The largest duration a scenario field takes, in seconds (about 31,700 years). Parsing alone
#: accepts any finite float; the field types refuse more, so no sum or product of durations in a
#: run can overflow.
MAX_SECONDS = 1e12
#: The largest rate a scenario field takes, per second.
MAX_RATE = 1e12
#: The largest percentage a scenario field takes.
MAX_PERCENT = 1e12


def _finite(value: float, what: str, written: Any) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {_yaml_word(written)}")
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
        return _finite(float(value), "a duration", value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return _finite(float(m.group(1)) * _DURATION_UNITS[m.group(2)], "a duration", value)
        text = value.strip()
        m = _COMPOUND_RE.match(text)
        if m:
            parts = _COMPOUND_PART_RE.findall(m.group(2))
            total = math.fsum(float(n) * _DURATION_UNITS[u] for n, u in parts)
            return _finite(-total if m.group(1) == "-" else total, "a duration", value)
        try:
            return _finite(float(text), "a duration", value)
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
        return _finite(float(value), "a rate", value)
    if isinstance(value, str):
        m = _RATE_RE.match(value)
        if m:
            unit = {"sec": "s", "second": "s"}.get(m.group(2), m.group(2))
            return _finite(float(m.group(1)) / _RATE_UNITS[unit], "a rate", value)
        try:
            return _finite(float(value), "a rate", value)
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
        return _finite(float(value), "a percentage", value)
    if isinstance(value, str):
        m = _PERCENT_RE.match(value)
        if m:
            return _finite(float(m.group(1)), "a percentage", value)
        try:
            return _finite(float(value), "a percentage", value)
        except ValueError:
            pass
    raise ValueError(f"expected a percentage such as 99.9% or 50, got {value!r}")


def format_duration(seconds: float) -> str:
    """Format float seconds so that :func:`parse_duration` gives back the same float.

    Whole milliseconds print as ``250ms``; anything else (including huge values) prints as
    ``repr(seconds) + "s"``.
    """
    # Only below 1e12 s is the millisecond form tried: seconds * 1000 cannot overflow there, and
    # int() of it is exact.
    if math.isfinite(seconds) and abs(seconds) < MAX_SECONDS:
        ms = seconds * 1000.0
        if ms == int(ms) and parse_duration(f"{int(ms)}ms") == seconds:
            return f"{int(ms)}ms"
    return f"{seconds!r}s"


def format_rate(per_second: float) -> str:
    """Format a rate as ``"<repr>/s"`` (round-trips through :func:`parse_rate`)."""
    if math.isfinite(per_second) and abs(per_second) < 1e15 and per_second == int(per_second):
        return f"{int(per_second)}/s"
    return f"{per_second!r}/s"


def _yaml_word(value: Any) -> str:
    """A value as a YAML file spells it: ``null``, ``true``, ``'often'``, ``1.5``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return repr(value)


def _check_non_negative(x: float) -> float:
    if x < 0:
        raise ValueError(f"must not be negative, got {format_duration(x)}")
    return _check_duration_size(x)


def _check_positive(x: float) -> float:
    if x <= 0:
        raise ValueError(f"must be greater than zero, got {format_duration(x)}")
    return _check_duration_size(x)


def _check_duration_size(x: float) -> float:
    # Far beyond any simulated time; refusing it keeps every later sum and product finite.
    if x > MAX_SECONDS:
        raise ValueError(f"is too long, got {x:.6g}s (expected at most 1e12 s, about 31,700 years)")
    if x < -MAX_SECONDS:
        raise ValueError(f"is too far below zero, got {x:.6g}s (expected at least -1e12 s)")
    return x


def _check_probability(x: Any) -> float:
    expected = "expected a probability between 0 and 1 (or a percentage such as 5%)"
    if isinstance(x, bool) or not isinstance(x, int | float | str):
        raise ValueError(f"{expected}, got {_yaml_word(x)}")
    written = x.strip() if isinstance(x, str) else repr(x)
    try:
        if isinstance(x, str) and written.endswith("%"):
            p = parse_percent(written) / 100.0
        elif isinstance(x, str) and not re.fullmatch(_NUMBER, written):
            raise ValueError  # not a number as YAML writes one (float() also reads "1_0", "inf")
        else:
            p = _finite(float(x), "a probability", x)
    except ValueError:
        raise ValueError(f"{expected}, got {_yaml_word(x)}") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"expected a probability between 0 and 1, got {written}")
    return p


_dur_ser = PlainSerializer(format_duration, return_type=str, when_used="json-unless-none")
_DUR_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {
                "type": "string",
                "pattern": r"^\s*([0-9.eE+-]+\s*(ns|us|µs|ms|s|min|m|h)?"
                r"|[+-]?([0-9.]+([eE][+-]?[0-9]+)?(ns|us|µs|ms|s|m|h))+)\s*$",
            },
            {"type": "number"},
        ],
        "description": "A duration: 250ms, 1.5s, 2m, 1h, 1m30s (a bare number is seconds).",
    }
)
_RATE_SCHEMA = WithJsonSchema(
    {
        "anyOf": [
            {
                "type": "string",
                "pattern": r"^\s*[0-9.eE+-]+\s*((/|per\s+)\s*(ms|s|sec|second|min|m|h))?\s*$",
            },
            {"type": "number"},
        ],
        "description": "A rate: 400/s, 1200/m (a bare number is per second).",
    }
)
_PROB_SCHEMA = WithJsonSchema(
    {
        "anyOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"type": "string"}],
        "description": "A probability in [0, 1], or a percentage such as 5%.",
    }
)

#: Any duration within ``±MAX_SECONDS``, float seconds inside; serialised back to a string such as
#: ``250ms``.
Duration = Annotated[
    float, BeforeValidator(lambda v: _check_duration_size(parse_duration(v))), _dur_ser, _DUR_SCHEMA
]
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
    return _check_rate_size(r, v)


def _non_negative_rate(v: Any) -> float:
    r = parse_rate(v)
    if r < 0:
        raise ValueError(f"must not be negative, got {v!r}")
    return _check_rate_size(r, v)


def _check_rate_size(r: float, written: Any) -> float:
    # A trillion requests a second could never be simulated; refusing it keeps sums finite.
    if r > MAX_RATE:
        raise ValueError(f"is too high, got {written!r} (expected a rate of at most 1e12/s)")
    return r


def _percent(v: Any) -> float:
    p = parse_percent(v)
    if abs(p) > MAX_PERCENT:
        raise ValueError(f"is too large, got {v!r} (expected a percentage of at most 1e12%)")
    return p


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
Percent = Annotated[float, BeforeValidator(_percent)]
