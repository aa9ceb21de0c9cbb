"""Validation errors read as ``FILE:LINE: path: message`` in the words of the scenario file."""

from __future__ import annotations

import enum
import pickle
from typing import Annotated, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import Field, ValidationError, model_validator

from meshsim._base import Model
from meshsim.errors import Issue, ScenarioError, format_path, from_validation_error, issue
from meshsim.units import Duration
from meshsim.yamlio import load_yaml

# --- a small scenario-like model -------------------------------------------------------------


class Constant(Model):
    kind: Literal["constant"]
    value: Duration


class Lognormal(Model):
    kind: Literal["lognormal"]
    median: Duration
    sigma: float = Field(default=0.5, gt=0)


Latency = Annotated[Constant | Lognormal, Field(discriminator="kind")]


class Policy(enum.Enum):
    ROUND_ROBIN = "roundRobin"
    LEAST_REQUEST = "leastRequest"


class Call(Model):
    to: str
    timeout: Duration = 1.0
    max_pending: int = Field(default=64, ge=1)


class Service(Model):
    replicas: int = Field(default=1, gt=0)
    latency: Latency
    calls: list[Call] = Field(default_factory=list)
    policy: Policy = Policy.ROUND_ROBIN
    jitter: Constant | Lognormal | None = None  # a plain union: no discriminator
    weight: int | str = 1


class Scenario(Model):
    services: dict[str, Service]
    seed: int = 0

    @model_validator(mode="after")
    def _seed_is_not_negative(self) -> Scenario:
        if self.seed < 0:
            raise ValueError("seed must not be negative")
        return self


def errors_of(text: str, model: type[Model] = Scenario) -> list[str]:
    """The formatted issues of validating YAML ``text`` (loaded as ``s.yaml``)."""
    data, lines = load_yaml(text, "s.yaml")
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    err = from_validation_error(info.value, model, data, "s.yaml", lines)
    assert isinstance(err, ScenarioError)
    return str(err).splitlines()


GOOD_SERVICE = "{latency: {kind: constant, value: 1ms}}"

# --- formatting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), "(top level)"),
        (("seed",), "seed"),
        (("services", "cart", "calls", 1, "to"), "services.cart.calls[1].to"),
        (("services", "cart-v2"), "services.cart-v2"),
        (("services", "cart.v2", "replicas"), 'services["cart.v2"].replicas'),
        (("services", ""), 'services[""]'),
        ((0, "a"), "[0].a"),
    ],
)
def test_format_path(path, text):
    assert format_path(path) == text
    assert Issue(path, "x").path_text() == text


def test_issue_format_with_and_without_line():
    assert Issue(("seed",), "bad", 3).format("s.yaml") == "s.yaml:3: seed: bad"
    assert Issue(("seed",), "bad").format("s.yaml") == "s.yaml: seed: bad"
    assert Issue(("seed",), "bad", source="--set").format("s.yaml") == "--set: seed: bad"


def test_scenario_error_from_issues_has_one_line_per_issue():
    err = ScenarioError(
        "s.yaml",
        [
            issue(["services", "cart", "calls", 0, "to"], "unknown service 'crat'", 7),
            issue(("services",), "calls form a cycle: cart -> db -> cart"),
        ],
    )
    assert str(err) == (
        "s.yaml:7: services.cart.calls[0].to: unknown service 'crat'\n"
        "s.yaml: services: calls form a cycle: cart -> db -> cart"
    )
    assert err.source == "s.yaml"
    assert [i.line for i in err.issues] == [7, None]


def test_scenario_error_pickles():
    err = ScenarioError("s.yaml", [issue(("a",), "bad", 1)])
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err)


# --- messages --------------------------------------------------------------------------------


def test_unknown_field_suggests_the_camel_case_name():
    text = "services:\n  cart:\n    latency: {kind: constant, value: 1ms}\n    replica: 2\n"
    assert errors_of(text) == [
        "s.yaml:4: services.cart.replica: unknown field 'replica' (did you mean 'replicas'?)"
    ]


def test_unknown_field_in_a_list_item_matches_despite_case_and_separators():
    text = (
        "services:\n"
        "  cart:\n"
        "    latency: {kind: constant, value: 1ms}\n"
        "    calls:\n"
        "      - to: db\n"
        "      - to: db\n"
        "        max-pending: 3\n"
    )
    assert errors_of(text) == [
        "s.yaml:7: services.cart.calls[1].max-pending: unknown field 'max-pending' "
        "(did you mean 'maxPending'?)"
    ]


def test_unknown_field_without_a_close_match_lists_the_fields():
    text = f"services:\n  cart: {GOOD_SERVICE}\nzebra: 1\n"
    assert errors_of(text) == [
        "s.yaml:3: zebra: unknown field 'zebra'; expected one of: services, seed"
    ]


def test_unknown_field_inside_a_discriminated_union_member():
    text = "services:\n  cart:\n    latency: {kind: lognormal, median: 5ms, sigmaa: 1}\n"
    assert errors_of(text) == [
        "s.yaml:3: services.cart.latency.sigmaa: unknown field 'sigmaa' (did you mean 'sigma'?)"
    ]


def test_wrong_kind_points_at_the_kind_key():
    text = "services:\n  cart:\n    latency:\n      kind: lognorm\n      median: 5ms\n"
    assert errors_of(text) == [
        "s.yaml:4: services.cart.latency.kind: unknown kind 'lognorm' "
        "(did you mean 'lognormal'?); expected one of: constant, lognormal"
    ]


def test_missing_kind_lists_the_kinds():
    text = "services:\n  cart:\n    latency: {median: 5ms}\n"
    assert errors_of(text) == [
        "s.yaml:3: services.cart.latency.kind: required field missing "
        "(expected one of: constant, lognormal)"
    ]


def test_plain_union_reports_only_the_member_named_by_kind():
    text = f"services:\n  cart:\n    <<: {GOOD_SERVICE}\n    jitter: {{kind: lognormal}}\n"
    assert errors_of(text) == ["s.yaml:4: services.cart.jitter.median: required field missing"]


def test_plain_union_with_an_unknown_kind_gives_one_issue():
    text = f"services:\n  cart:\n    <<: {GOOD_SERVICE}\n    jitter: {{kind: const}}\n"
    assert errors_of(text) == [
        "s.yaml:4: services.cart.jitter.kind: unknown kind 'const' (did you mean 'constant'?); "
        "expected one of: constant, lognormal"
    ]


def test_enum_value_typo():
    text = f"services:\n  cart:\n    <<: {GOOD_SERVICE}\n    policy: roundrobin\n"
    assert errors_of(text) == [
        "s.yaml:4: services.cart.policy: unknown value 'roundrobin' (did you mean 'roundRobin'?); "
        "expected one of: roundRobin, leastRequest"
    ]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("replicas", "abc", "expected an integer, got 'abc'"),
        ("replicas", "2.5", "expected a whole number, got 2.5"),
        ("replicas", "[1, 2]", "expected an integer, got a list"),
        ("replicas", "-1", "must be > 0, got -1"),
        ("calls", "{to: db}", "expected a list, got a mapping"),
        ("latency", "fast", "expected a mapping, got 'fast'"),
        ("weight", "{a: 1}", "expected an integer or a string, got a mapping"),
        ("replicas", "'" + "x" * 60 + "'", f"expected an integer, got '{'x' * 37}...'"),
    ],
)
def test_wrong_type_shows_the_value(field, value, message):
    service = {"latency": "{kind: constant, value: 1ms}", field: value}
    body = "".join(f"    {k}: {v}\n" for k, v in service.items())
    assert errors_of(f"services:\n  cart:\n{body}") == [
        f"s.yaml:{2 + list(service).index(field) + 1}: services.cart.{field}: {message}"
    ]


def test_bad_duration_uses_the_validator_message():
    text = "services:\n  cart:\n    latency: {kind: constant, value: fast}\n"
    assert errors_of(text) == [
        "s.yaml:3: services.cart.latency.value: expected a duration such as 250ms, 1.5s, 2m or 1h "
        "(a bare number is seconds), got 'fast'"
    ]


def test_missing_field_gets_the_line_of_its_mapping():
    text = "services:\n  cart:\n    latency:\n      kind: constant\n    replicas: 2\n"
    assert errors_of(text) == ["s.yaml:3: services.cart.latency.value: required field missing"]


def test_missing_top_level_field():
    assert errors_of("# scenario\nseed: 1\n") == ["s.yaml:2: services: required field missing"]


def test_model_validator_error_at_the_top_level():
    assert errors_of("services: {}\nseed: -1\n") == [
        "s.yaml:1: (top level): seed must not be negative"
    ]


class InnerError(ValueError):
    def __init__(self, path: tuple, message: str):
        super().__init__(message)
        self.path = path


class Block(Model):
    """A block checked as a whole, like an Envoy filter's ``typed_config``."""

    items: list[dict[str, int]]

    @model_validator(mode="after")
    def _no_zero(self) -> Block:
        for i, item in enumerate(self.items):
            for key, value in item.items():
                if value == 0:
                    raise InnerError(("items", i, key), f"{key} must not be 0")
        return self


class Holder(Model):
    block: Block


def test_a_block_validator_can_point_inside_the_block():
    # The error's path goes on from the block to the key at fault, and so does the line.
    text = "block:\n  items:\n    - {a: 1}\n    - a: 2\n      b: 0\n"
    assert errors_of(text, Holder) == ["s.yaml:5: block.items[1].b: b must not be 0"]


def test_out_of_range_in_a_list_item():
    text = (
        "services:\n"
        "  cart:\n"
        "    latency: {kind: constant, value: 1ms}\n"
        "    calls:\n"
        "      - {to: a}\n"
        "      - to: b\n"
        "        timeout: 2s\n"
        "        maxPending: 0\n"
    )
    assert errors_of(text) == ["s.yaml:8: services.cart.calls[1].maxPending: must be >= 1, got 0"]


def test_several_issues_come_in_file_order():
    text = (
        "seed: x\n"
        "services:\n"
        "  db:\n"
        "    latency: {kind: exponential}\n"
        "  cart:\n"
        "    replica: 2\n"
        "    latency: {kind: constant, value: 1ms}\n"
        "    calls:\n"
        "      - {to: db, timeout: soon}\n"
        "      - {}\n"
    )
    assert errors_of(text) == [
        "s.yaml:1: seed: expected an integer, got 'x'",
        "s.yaml:4: services.db.latency.kind: unknown kind 'exponential'; "
        "expected one of: constant, lognormal",
        "s.yaml:6: services.cart.replica: unknown field 'replica' (did you mean 'replicas'?)",
        "s.yaml:9: services.cart.calls[0].timeout: expected a duration such as 250ms, 1.5s, 2m or "
        "1h (a bare number is seconds), got 'soon'",
        "s.yaml:10: services.cart.calls[1].to: required field missing",
    ]


def test_service_names_with_dots_are_quoted():
    text = 'services:\n  "cart.v2":\n    latency: {kind: constant}\n'
    assert errors_of(text) == [
        's.yaml:3: services["cart.v2"].latency.value: required field missing'
    ]


def test_without_lines_issues_have_no_line():
    data = {"services": {"cart": {"latency": {"kind": "constant", "value": 1}, "replica": 1}}}
    with pytest.raises(ValidationError) as info:
        Scenario.model_validate(data)
    err = from_validation_error(info.value, Scenario, data, "--set", None)
    assert str(err) == (
        "--set: services.cart.replica: unknown field 'replica' (did you mean 'replicas'?)"
    )


def test_python_names_are_accepted_and_reported_as_written():
    text = f"services:\n  cart:\n    <<: {GOOD_SERVICE}\n    calls: [{{to: a, max_pending: x}}]\n"
    assert errors_of(text) == [
        "s.yaml:4: services.cart.calls[0].max_pending: expected an integer, got 'x'"
    ]


def test_plain_union_without_kind_asks_for_the_kind():
    text = f"services:\n  cart:\n    <<: {GOOD_SERVICE}\n    jitter: {{value: 1ms}}\n"
    assert errors_of(text) == [
        "s.yaml:4: services.cart.jitter.kind: required field missing "
        "(expected one of: constant, lognormal)"
    ]


def test_scalar_where_a_union_of_models_is_expected():
    text = "services:\n  cart:\n    latency: 5\n"
    assert errors_of(text) == ["s.yaml:3: services.cart.latency: expected a mapping, got 5"]


def test_null_items_and_null_sections():
    text = f"services:\n  cart:\n    <<: {GOOD_SERVICE}\n    calls:\n      -\n      - to: 1\n"
    assert errors_of(text) == [
        "s.yaml:5: services.cart.calls[0]: expected a mapping, got null",
        "s.yaml:6: services.cart.calls[1].to: expected a string, got 1",
    ]
    assert errors_of("services:\n") == ["s.yaml:1: services: expected a mapping, got null"]


def test_a_key_named_like_a_kind_is_still_a_key():
    # pydantic's loc is latency.constant.constant here: the first is the union member
    text = "services:\n  cart:\n    latency: {kind: constant, value: 1ms,\n      constant: 1}\n"
    assert errors_of(text) == [
        "s.yaml:4: services.cart.latency.constant: unknown field 'constant'; "
        "expected one of: kind, value"
    ]


_KEYS = st.sampled_from(
    [
        "services",
        "cart",
        "latency",
        "kind",
        "constant",
        "lognormal",
        "value",
        "median",
        "sigma",
        "calls",
        "to",
        "replicas",
        "jitter",
        "weight",
        "policy",
        "seed",
        "maxPending",
        "Constant",
    ]
)
_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.floats(allow_nan=True),
    st.sampled_from(["constant", "lognormal", "1ms", "abc", "roundRobin", ""]),
)
_DATA = st.recursive(
    _LEAVES,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_KEYS | st.integers(0, 2), c, max_size=4),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, _DATA, max_size=3) | _DATA)
def test_any_input_gives_issues_not_exceptions(data):
    try:
        Scenario.model_validate(data)
    except ValidationError as err:
        result = from_validation_error(err, Scenario, data, "s.yaml", None)
        assert result.issues
        assert all(i.message and "\n" not in i.message for i in result.issues)
