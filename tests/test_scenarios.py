"""Every example scenario in ``scenarios/`` and its folders (the cookbook) loads, validates and
runs, and so does each of its variants (a new file is picked up)."""

from __future__ import annotations

from pathlib import Path

import pytest

import meshsim
from meshsim.cli import main

ROOT = Path(__file__).parent.parent / "scenarios"
SCENARIOS = sorted(ROOT.glob("**/*.yaml"))
SHORT = {"duration": "5s", "warmup": "1s"}


def short(scenario: meshsim.Scenario) -> meshsim.Scenario:
    """The scenario cut to 5 s, with the faults that start in them (a later one is an error)."""
    faults = [f.model_dump(mode="json", by_alias=True, exclude_unset=True)
              for f in scenario.faults if f.start < 5]
    return scenario.with_overrides({**SHORT, "faults": faults})


def test_there_are_example_scenarios():
    assert SCENARIOS, "scenarios/*.yaml not found"
    assert any(p.parent.name == "cookbook" for p in SCENARIOS), "scenarios/cookbook/ not found"


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: str(p.relative_to(ROOT).with_suffix("")))
def test_example_validates(path: Path, capsys):
    assert main(["validate", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{path}: ok (")
    assert captured.err == ""


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: str(p.relative_to(ROOT).with_suffix("")))
def test_example_runs(path: Path):
    scenario = meshsim.load_scenario(path)
    result = meshsim.run(short(scenario))
    e2e = result.end_to_end()
    assert len(e2e) > 0
    ok = (e2e["status"] >= 200) & (e2e["status"] < 300)
    assert ok.mean() > 0.5, "most end-user requests of an example should succeed"
    entries = {c.entry for c in scenario.workload}
    reached = set(result.requests["destination"].astype(str))
    assert entries <= reached
    assert result.summary().loc["end-to-end", "requests"] > 0


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: str(p.relative_to(ROOT).with_suffix("")))
def test_example_resolved_yaml_round_trips(path: Path):
    scenario = meshsim.load_scenario(path)
    assert meshsim.loads_scenario(scenario.to_yaml()) == scenario


@pytest.mark.parametrize("path", SCENARIOS, ids=lambda p: str(p.relative_to(ROOT).with_suffix("")))
def test_example_variants_run(path: Path):
    scenario = meshsim.load_scenario(path)
    for name in scenario.variants:
        result = meshsim.run(short(scenario.variant(name)))
        assert result.summary().loc["end-to-end", "requests"] > 0, name
