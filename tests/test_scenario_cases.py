"""Scenario files as cases: every file in ``cases/valid`` loads, runs and round-trips through its
resolved YAML; every file in ``cases/invalid`` fails with the error its header announces.

An invalid case starts with a header naming the line, the field path and a fragment of the message
(``-`` for an error that has no line)::

    # expect: 7 services.cart.replicas: expected an integer

A second header line ``# xfail: why`` marks a known meshsim bug: the case then documents the
message the product rule asks for and is expected to fail until the bug is fixed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

import meshsim
from meshsim import distributions as dist
from meshsim import istio
from meshsim import scenario as model
from meshsim.errors import ScenarioError
from meshsim.scenario import load_scenario, loads_scenario, parse_overrides

CASES = Path(__file__).parent / "cases"
VALID = sorted((CASES / "valid").glob("*.yaml"))
INVALID = sorted((CASES / "invalid").glob("*.yaml"))

#: A short horizon for running the cases: the runs only have to prove that the scenario works.
SHORT = {"duration": "3s", "warmup": "500ms"}

_EXPECT = re.compile(r"^# expect: (?P<line>\d+|-) (?P<path>\(top level\)|\S+): (?P<fragment>.+)$")
_XFAIL = re.compile(r"^# xfail: (?P<reason>.+)$")


@dataclass(frozen=True)
class Expectation:
    """What an invalid case must report: ``FILE:LINE: path: ...fragment...``."""

    line: int | None
    path: str
    fragment: str
    xfail: str | None = None

    def prefix(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}"
        return f"{where}: {self.path}: "

    def check(self, source: str, err: ScenarioError) -> None:
        """Assert that one formatted issue has the expected location and message fragment."""
        prefix = self.prefix(source)
        lines = err.lines()
        assert any(
            line.startswith(prefix) and self.fragment in line[len(prefix) :] for line in lines
        ), f"expected an issue {prefix}...{self.fragment}...; got:\n" + "\n".join(lines)


def expectation(path: Path) -> Expectation:
    """Parse the header of an invalid case."""
    head = path.read_text(encoding="utf-8").splitlines()[:2]
    m = _EXPECT.match(head[0]) if head else None
    assert m, f"{path.name}: first line must be '# expect: LINE path: message fragment'"
    xfail = _XFAIL.match(head[1]) if len(head) > 1 else None
    line = None if m["line"] == "-" else int(m["line"])
    return Expectation(line, m["path"], m["fragment"], xfail["reason"] if xfail else None)


def invalid_params() -> list[Any]:
    params = []
    for path in INVALID:
        exp = expectation(path)
        marks = [pytest.mark.xfail(strict=True, reason=exp.xfail)] if exp.xfail else []
        params.append(pytest.param(path, exp, id=path.stem, marks=marks))
    return params


#: Invalid inputs that cannot carry a header (or are not text): written by the test itself.
GENERATED = {
    "empty": (b"", Expectation(None, "(top level)", "the file is empty")),
    "blank-lines": (b"\n\n   \n", Expectation(None, "(top level)", "the file is empty")),
    "binary": (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01",
        Expectation(3, "(top level)", "the file looks binary (NUL byte"),
    ),
    "latin-1": (
        b"name: caf\xe9\nduration: 1s\n",
        Expectation(1, "(top level)", "the file is not UTF-8 text"),
    ),
    "utf-16": (
        "duration: 1s\n".encode("utf-16"),
        Expectation(1, "(top level)", "the file is UTF-16 encoded"),
    ),
}


@pytest.fixture(params=sorted(GENERATED), ids=str)
def generated_case(request, tmp_path) -> tuple[Path, Expectation]:
    """One generated invalid file: ``(path, expectation)``."""
    data, exp = GENERATED[request.param]
    path = tmp_path / f"{request.param}.yaml"
    path.write_bytes(data)
    return path, exp


# --- valid cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_case_runs(path: Path):
    scenario = load_scenario(path).with_overrides(SHORT)
    result = meshsim.run(scenario)
    e2e = result.end_to_end()
    assert len(e2e) > 0, "no end-user request finished"
    assert ((e2e["status"] >= 200) & (e2e["status"] < 300)).any()
    assert result.meta["end_time"] == pytest.approx(3.0)
    assert result.requests["t_end"].max() <= 3.0


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_case_resolved_yaml_round_trips(path: Path):
    scenario = load_scenario(path)
    text = scenario.to_yaml()
    again = loads_scenario(text, source=f"{path.name} (resolved)")
    assert again == scenario
    assert again.to_yaml() == text


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.stem)
def test_valid_case_survives_empty_overrides(path: Path):
    scenario = load_scenario(path)
    assert scenario.with_overrides({}) == scenario


def _models(value: Any) -> list[BaseModel]:
    """Every pydantic model inside ``value``, depth first."""
    found = []
    if isinstance(value, BaseModel):
        found.append(value)
        value = [getattr(value, name) for name in type(value).model_fields]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            found += _models(item)
    return found


def test_valid_cases_cover_every_feature():
    scenarios = [load_scenario(p) for p in VALID]
    models = [m for sc in scenarios for m in _models(sc)]
    kinds = {type(m) for m in models}
    wanted = {
        dist.Constant,
        dist.Exponential,
        dist.Uniform,
        dist.Normal,
        dist.Lognormal,
        dist.Gamma,
        dist.Weibull,
        dist.Pareto,
        dist.Empirical,
        dist.Mixture,
        model.IndependentErrors,
        model.BurstyErrors,
        model.Parallel,
        model.ConstantRate,
        model.StepsRate,
        model.RampRate,
        model.SinusoidalRate,
        model.TraceRate,
        model.PoissonArrivals,
        model.ClosedArrivals,
        model.Version,
        istio.Subset,
        istio.HTTPRouteDestination,
        istio.HTTPFaultInjection,
    }
    assert wanted <= kinds, f"not covered: {sorted(k.__name__ for k in wanted - kinds)}"

    def with_fields(cls: type, *fields: str) -> bool:
        return any(
            isinstance(m, cls) and all(getattr(m, f) is not None for f in fields) for m in models
        )

    for cls, fields in [
        (dist.Lognormal, ("median", "p99")),
        (dist.Lognormal, ("mu", "sigma")),
        (dist.Lognormal, ("mean_", "cv")),
        (dist.Gamma, ("shape", "scale")),
        (dist.Gamma, ("mean_", "cv")),
        (dist.Empirical, ("samples",)),
        (dist.Empirical, ("percentiles",)),
        (model.TraceRate, ("file", "points")),
    ]:
        assert with_fields(cls, *fields), f"no {cls.__name__} with {fields}"
    assert any(
        isinstance(m, model.IndependentErrors) and isinstance(m.status, dict) for m in models
    ), "no weighted statuses"
    calls = [m for m in models if isinstance(m, model.Call)]
    assert any(c.optional for c in calls) and any(0 < c.probability < 1 for c in calls)
    services = [s for sc in scenarios for s in sc.services.values()]
    assert any(s.queue is not None for s in services)
    assert any(sc.external_services and sc.mesh.egress_gateway for sc in scenarios)
    assert any(sc.external_services and not sc.mesh.egress_gateway for sc in scenarios)
    assert any(not c.via_ingress for sc in scenarios for c in sc.workload)
    assert any(not sc.mesh.istio_defaults for sc in scenarios)
    policies = {
        sc.traffic_policy(host).load_balancer and sc.traffic_policy(host).load_balancer.simple
        for sc in scenarios
        for host in sc.mesh.destination_rules
    }
    assert {"ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM", None} <= policies


def test_least_conn_is_an_alias_of_least_request():
    scenario = load_scenario(CASES / "valid" / "lb-policies.yaml")
    assert scenario.lb_policy("lc") == "LEAST_REQUEST"
    assert scenario.lb_policy("random") == "RANDOM"
    # istioDefaults: false gives plain Envoy's default where no rule says otherwise.
    assert scenario.lb_policy("default") == "ROUND_ROBIN"
    assert scenario.lb_policy("front") == "ROUND_ROBIN"


def test_units_case_parses_every_unit():
    scenario = load_scenario(CASES / "valid" / "units.yaml")
    assert scenario.duration == 3600.0
    assert scenario.warmup == 90.0
    rates = [c.arrival.rate.rate for c in scenario.workload]
    assert rates == pytest.approx([20.0, 10.0, 5.0, 2.5])
    assert scenario.network.latency.value == pytest.approx(1e-4)


def test_trace_file_is_read_relative_to_the_scenario():
    scenario = load_scenario(CASES / "valid" / "rate-trace.yaml")
    replay = scenario.workload[0].arrival.rate
    assert replay.points == [(0.0, 20.0), (1.0, 80.0), (2.5, 0.0), (3.0, 40.0)]
    assert replay.rate_at(2.7) == 0.0
    assert "points" in scenario.to_dict()["workload"][0]["arrival"]["rate"]


def test_percentages_are_probabilities():
    scenario = load_scenario(CASES / "valid" / "calls.yaml")
    calls = scenario.services["front"].calls
    assert calls[0].parallel[1].probability == 0.5
    assert calls[1].probability == pytest.approx(0.05)
    assert scenario.services["recommend"].errors.rate == pytest.approx(0.2)


# --- invalid cases ---------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "expected"), invalid_params())
def test_invalid_case_reports_field(path: Path, expected: Expectation):
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    expected.check(str(path), info.value)


def test_generated_invalid_case_reports_field(generated_case):
    path, expected = generated_case
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    expected.check(str(path), info.value)


def test_invalid_cases_have_headers():
    assert len(INVALID) >= 35
    for path in INVALID:
        expectation(path)  # asserts


def test_several_problems_are_reported_together():
    text = (
        "duration: 0s\n"
        "services:\n"
        "  api: {latency: 5ms, replicas: 0, calls: [{to: nope}]}\n"
        "workload: [{client: u, entry: api, arrival: {rate: 1/s}}]\n"
    )
    with pytest.raises(ScenarioError) as info:
        loads_scenario(text, "s.yaml")
    lines = info.value.lines()
    assert lines[0].startswith("s.yaml:1: duration: must be greater than zero")
    assert any(line.startswith("s.yaml:3: services.api.replicas: must be > 0") for line in lines)


# --- overrides (--set) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def minimal() -> meshsim.Scenario:
    return load_scenario(CASES / "valid" / "minimal.yaml")


def set_error(scenario: meshsim.Scenario, overrides: dict[str, Any]) -> str:
    with pytest.raises(ScenarioError) as info:
        scenario.with_overrides(overrides, source="--set")
    return str(info.value)


def test_overrides_replace_values(minimal):
    changed = minimal.with_overrides(
        {"services.api.replicas": 3, "workload[0].arrival.rate": "2/ms", "duration": "1m30s"}
    )
    assert changed.services["api"].replicas == 3
    assert changed.workload[0].arrival.rate.rate == 2000.0
    assert changed.duration == 90.0
    assert minimal.services["api"].replicas == 1  # frozen: the original is unchanged


def test_overrides_accept_dotted_list_indexes_and_new_fields(minimal):
    changed = minimal.with_overrides(
        {"workload.0.viaIngress": False, "services.api.errors": {"rate": "1%"}}
    )
    assert changed.workload[0].via_ingress is False
    assert changed.services["api"].errors.rate == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"servces.api.replicas": 2},
            "--set: servces: unknown field 'servces' (did you mean 'services'?)",
        ),
        (
            {"services.api.replica": 2},
            "--set: services.api.replica: unknown field 'replica' (did you mean 'replicas'?)",
        ),
        ({"services.api.replicas": "two"}, "--set: services.api.replicas: expected an integer"),
        ({"duration": "10 parsecs"}, "--set: duration: expected a duration such as 250ms"),
        (
            {"workload[3].entry": "api"},
            "--set: workload[3].entry: no item [3] here: the list has 1 items",
        ),
        (
            {"workload[0].entry": "apj"},
            "--set: workload[0].entry: unknown service 'apj' (did you mean 'api'?)",
        ),
        ({"duration.x": 1}, "--set: duration.x: cannot set 'x'"),
        ({"warmup": "1h"}, "--set: warmup: warm-up must be shorter than the duration"),
    ],
    ids=[
        "unknown-top",
        "unknown-nested",
        "bad-int",
        "bad-duration",
        "no-item",
        "unknown-entry",
        "into-scalar",
        "cross-check",
    ],
)
def test_override_errors(minimal, overrides, expected):
    assert expected in set_error(minimal, overrides)


def test_parse_overrides_reads_yaml_scalars():
    assert parse_overrides(["a.b=4", "c=true", "d=250ms", "e=[1, 2]", "f="]) == {
        "a.b": 4,
        "c": True,
        "d": "250ms",
        "e": [1, 2],
        "f": None,
    }


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ScenarioError) as info:
        parse_overrides(["services.api.replicas", "=3"])
    assert str(info.value).splitlines() == [
        "--set: (top level): expected PATH=VALUE, got 'services.api.replicas'",
        "--set: (top level): expected PATH=VALUE, got '=3'",
    ]


def test_parse_overrides_names_the_path_of_bad_yaml():
    with pytest.raises(ScenarioError) as info:
        parse_overrides(["services.api.calls=[{to: db"])
    assert str(info.value).startswith("--set: services.api.calls: invalid YAML")
