"""Units at the boundary: durations, rates and percentages as people write them, and back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from meshsim._base import Model
from meshsim.units import (
    Duration,
    NonNegDuration,
    PosDuration,
    Probability,
    Rate,
    format_duration,
    format_rate,
    parse_duration,
    parse_percent,
    parse_rate,
)

finite = st.floats(allow_nan=False, allow_infinity=False)

# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("100us", 1e-4),
        ("100µs", 1e-4),
        ("10ns", 1e-8),
        ("1m30s", 90.0),
        ("1h0m0s", 3600.0),
        ("1h30m", 5400.0),
        ("2h45m30.5s", 9930.5),
        ("1s500ms", 1.5),
        (" 5s ", 5.0),
        ("2 ms", 0.002),
        (".5s", 0.5),
        ("1e3ms", 1.0),
        ("+3s", 3.0),
        ("-2s", -2.0),
        ("3", 3.0),
        (5, 5.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        "10 parsecs",
        "fast",
        "",
        "ms",
        "5 seconds",
        "1m30",
        "1m 30s",
        "1min30s",
        "inf",
        "nan",
        "1e400s",
        float("inf"),
        float("nan"),
        True,
        None,
        [1],
        {"s": 1},
    ],
    ids=repr,
)
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_parse_duration_error_names_the_accepted_forms():
    with pytest.raises(ValueError) as info:
        parse_duration("10 parsecs")
    assert str(info.value) == (
        "expected a duration such as 250ms, 1.5s, 2m or 1h (a bare number is seconds), "
        "got '10 parsecs'"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (1.5, "1500ms"),
        (90.0, "90000ms"),
        (0.0, "0ms"),
        (1e-7, "1e-07s"),
        (0.0001, "0.0001s"),
        (1e300, "1e+300s"),
        (-5.0, "-5000ms"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@given(st.floats(min_value=-1e300, max_value=1e300))
def test_duration_round_trips(x):
    assert parse_duration(format_duration(x)) == x


@pytest.mark.parametrize("x", [1.7976931348623157e308, -1e306])
def test_huge_durations_round_trip(x):
    assert parse_duration(format_duration(x)) == x


@given(st.integers(0, 10_000), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_go_compound_durations(h, m, s, ms):
    text = f"{h}h{m}m{s}s{ms}ms"
    assert parse_duration(text) == pytest.approx(3600 * h + 60 * m + s + ms / 1000, rel=1e-12)


@pytest.mark.parametrize("text", ["-1m30s", "1m-30s"])
def test_compound_duration_sign(text):
    try:
        value = parse_duration(text)
    except ValueError:
        return  # refusing a signed compound duration is acceptable too
    assert value == -90.0, f"{text!r} parsed as {value}"


def test_compound_duration_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        parse_duration("1e308m1e308m")


# --- rates -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("400/s", 400.0),
        ("1200/m", 20.0),
        ("1200/min", 20.0),
        ("36000/h", 10.0),
        ("5/ms", 5000.0),
        ("0.5/ms", 500.0),
        ("100 per s", 100.0),
        ("100 per second", 100.0),
        ("100/sec", 100.0),
        ("100 / s", 100.0),
        ("0/s", 0.0),
        ("2.5", 2.5),
        (50, 50.0),
        (0.5, 0.5),
    ],
)
def test_parse_rate(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second, rel=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        "fast",
        "400/parsec",
        "/s",
        "400//s",
        "400 s",
        "inf/s",
        "nan/s",
        "1e400/s",
        "400/",
        "",
        float("inf"),
        float("nan"),
        True,
        None,
        ["400/s"],
    ],
    ids=repr,
)
def test_parse_rate_rejects(bad):
    with pytest.raises(ValueError, match="rate"):
        parse_rate(bad)


@pytest.mark.parametrize(("per_second", "text"), [(400.0, "400/s"), (0.5, "0.5/s"), (0.0, "0/s")])
def test_format_rate(per_second, text):
    assert format_rate(per_second) == text


@given(finite)
def test_rate_round_trips(x):
    assert parse_rate(format_rate(x)) == x


# --- percentages and probabilities -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "percent"),
    [("99.9%", 99.9), ("5 %", 5.0), (" 0.1% ", 0.1), ("50", 50.0), (50, 50.0), (0.5, 0.5)],
)
def test_parse_percent(text, percent):
    assert parse_percent(text) == percent


@pytest.mark.parametrize("bad", ["abc", "5%%", "%", "five%", True, None, float("nan")], ids=repr)
def test_parse_percent_rejects(bad):
    with pytest.raises(ValueError, match="percentage"):
        parse_percent(bad)


def test_parse_percent_must_be_finite():
    with pytest.raises(ValueError, match="finite"):
        parse_percent("1e400%")


class _Fields(Model):
    """One field of each unit type, as the scenario models use them."""

    p: Probability = 0.0
    d: Duration = 0.0
    nd: NonNegDuration = 0.0
    pd: PosDuration = 1.0
    r: Rate = 1.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5%", 0.05),
        ("100%", 1.0),
        ("0%", 0.0),
        (" 12.5 % ", 0.125),
        (0.3, 0.3),
        (1, 1.0),
        ("0.25", 0.25),
    ],
)
def test_probability_accepts_fractions_and_percentages(value, expected):
    assert _Fields(p=value).p == pytest.approx(expected)


@pytest.mark.parametrize(
    "value", [1.5, "150%", -0.1, "-1%", float("nan"), True, None, [0.5]], ids=repr
)
def test_probability_rejects(value):
    with pytest.raises(ValidationError, match="expected a"):
        _Fields(p=value)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nd", "-1s", "must not be negative, got -1000ms"),
        ("pd", "0s", "must be greater than zero, got 0ms"),
        ("pd", "-1ms", "must be greater than zero"),
        ("r", "0/s", "must be greater than zero, got '0/s'"),
        ("r", -3, "must be greater than zero"),
    ],
)
def test_bounded_units(field, value, message):
    with pytest.raises(ValidationError, match=message):
        _Fields(**{field: value})


def test_units_dump_as_strings_that_reload_exactly():
    fields = _Fields(d="1m30s", nd="100us", pd=1 / 3, r="1200/m")
    dumped = fields.model_dump(mode="json")
    assert dumped["d"] == "90000ms"
    assert dumped["r"] == "20/s"
    assert all(isinstance(dumped[k], str) for k in ("d", "nd", "pd", "r"))
    assert _Fields(**dumped) == fields
    assert math.isclose(_Fields(**dumped).pd, 1 / 3, rel_tol=0)
