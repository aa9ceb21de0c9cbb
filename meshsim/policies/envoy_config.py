"""Small parsers of Envoy's JSON/YAML configuration shapes, for the filters' ``from_envoy``.

Each raises ``ValueError`` whose message starts with the field path inside the block
(``gradient_controller_config.min_rtt_calc_params.request_count: ...``), with a suggestion for a
misspelt field.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from typing import Any

from meshsim.units import parse_duration


def _to_ms(seconds: float) -> int:
    """A proto Duration in whole ms, truncated (``DurationUtil::durationToMilliseconds``)."""
    return round(seconds * 1e9) // 1_000_000


def _micros(seconds: float) -> int:
    """Whole microseconds, truncated, as ``processLatencySamplesAndClear`` returns RTTs (a
    nanosecond of slack keeps float noise from losing a microsecond)."""
    return math.floor(seconds * 1e6 + 1e-3)


class EnvoyConfigError(ValueError):
    """A value Envoy would refuse, at ``path`` (keys inside the filter's ``typed_config``).

    ``str()`` reads ``path: message``; ``path`` is also a tuple of keys and ``bare`` the message
    alone, so that a scenario error can point at the key's own line and not repeat it.
    """

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)
        keys = [k for k in path.split(".") if k]
        if keys[:1] == ["typed_config"]:
            keys = keys[1:]  # the scenario's block is the typed_config itself
        self.path = tuple(keys)
        self.bare = message


def _fail(path: str, message: str) -> ValueError:
    return EnvoyConfigError(path, message)


def _fields(value: Any, path: str, known: Iterable[str]) -> Mapping[str, Any]:
    """``value`` as a mapping with only ``known`` keys (and ``@type``)."""
    if not isinstance(value, Mapping):
        raise _fail(path, f"expected a mapping, got {value!r}")
    unknown = sorted(set(value) - set(known) - {"@type"})
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, sorted(known), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else \
            f"; expected one of: {', '.join(sorted(known))}"
        raise _fail(f"{path}.{key}" if path else key,
                    f"unknown or not modelled field{hint}")
    return value


def _block(parent: Mapping[str, Any], key: str, path: str, known: Iterable[str],
           required: bool = False) -> Mapping[str, Any]:
    """The sub-message ``parent[key]``; ``{}`` when unset (null) and not required."""
    value = parent.get(key)
    if value is None:
        if required:
            raise _fail(path, "is required")
        return {}
    return _fields(value, path, known)


def _duration(value: Any, path: str) -> float:
    """``"0.1s"``, float seconds, or a proto Duration ``{seconds, nanos}``, in seconds."""
    try:
        if isinstance(value, Mapping):
            return float(value.get("seconds", 0)) + float(value.get("nanos", 0)) / 1e9
        return parse_duration(value)
    except (TypeError, ValueError) as err:
        raise _fail(path, str(err)) from None


def _number(value: Any, path: str, key: str = "value") -> float:
    """A bare number, or the ``key`` of a wrapper message (``{value: 90}``)."""
    if isinstance(value, Mapping):
        if key not in value:
            raise _fail(path, f"expected {{{key}: ...}}, got {dict(value)!r}")
        value = value[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"expected a number, got {value!r}")
    return float(value)


def _integer(value: Any, path: str, key: str = "value") -> int:
    number = _number(value, path, key)
    if not math.isfinite(number) or number != int(number):
        raise _fail(path, f"expected an integer, got {number!r}")
    return int(number)


def _runtime(value: Any) -> Any:
    """The ``default_value`` of a Runtime* wrapper (the runtime key is ignored), or the value."""
    if isinstance(value, Mapping) and "default_value" in value:
        return value["default_value"]
    return value


def _feature_flag(value: Any, path: str) -> bool:
    """A ``RuntimeFeatureFlag`` (``{default_value: false, runtime_key}``) or a bool; unset is
    enabled, as Envoy's ``PROTOBUF_GET_WRAPPED_OR_DEFAULT(..., true)``."""
    if value is None:
        return True
    value = _runtime(value)
    if isinstance(value, Mapping):  # BoolValue in its JSON object form
        value = value.get("value", True)
    if not isinstance(value, bool):
        raise _fail(path, f"expected a boolean, got {value!r}")
    return value
