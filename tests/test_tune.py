"""``meshsim.tune`` and ``meshsim tune``: constraints and ranges, how a trial is judged across
variants, reproducibility, and on a cookbook scenario a setting that beats Istio's pool limits
as written, checked on fresh seeds, whose snippet validates against Istio's typed models."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from test_export import NEWER_THAN_MODELS, dropped_keys, round_trip, without_newer

import meshsim
from meshsim.cli import main
from meshsim.errors import ScenarioError
from meshsim.export import istio_duration
from meshsim.tune import snippet_resources
from meshsim.tune_space import (
    Constraint,
    TuneError,
    parse_constraint,
    parse_param,
    parse_param_arg,
)
from meshsim.units import parse_duration

pytest.importorskip("optuna")

ROOT = Path(__file__).parent.parent
UO = ROOT / "scenarios" / "cookbook" / "scaling-callee-uo.yaml"
POOL = "mesh.destinationRules.cart.trafficPolicy.connectionPool."
CONNECTIONS = POOL + "tcp.maxConnections"
PENDING = POOL + "http.http1MaxPendingRequests"
SHORT = {"duration": "8s", "warmup": "2s"}


# --------------------------------------------------------------------------------------------
# Constraints, objectives, ranges
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "metric", "op", "bound"), [
    ("p99<300ms", "latency_p99", "<", 0.3),
    ("p50 <= 50ms", "latency_p50", "<=", 0.05),
    ("latency_p90<1.5s", "latency_p90", "<", 1.5),
    ("success_rate>=99.9%", "success_rate", ">=", 0.999),
    ("success>95%", "success_rate", ">", 0.95),
    ("goodput>=500/s", "goodput", ">=", 500.0),
    ("goodput>1200/m", "goodput", ">", 20.0),
    ("amplification<=1.5", "amplification", "<=", 1.5),
    ("wasted_work<2", "wasted_work", "<", 2.0),
    ("crash api: time_to_recover<5s", "crash api: time_to_recover", "<", 5.0),
])
def test_constraints_parse_with_meshsims_units(text, metric, op, bound):
    c = parse_constraint(text, faults=["crash api"])
    assert (c.metric, c.op, c.text) == (metric, op, text)
    assert c.bound == pytest.approx(bound)


@pytest.mark.parametrize(("text", "message"), [
    ("p99 300ms", "expected METRIC OP VALUE"),
    ("p99=300ms", "expected METRIC OP VALUE"),
    ("p98<300ms", "unknown metric 'p98' (did you mean 'p99'?)"),
    ("p99<fast", "expected a duration such as 250ms"),
    ("success_rate>=0.999", "write the success rate as a percentage, e.g. 99.9%"),
    ("goodput>lots", "expected a rate such as 400/s"),
    ("crash db: time_to_recover<5s", "unknown metric 'crash db: time_to_recover'"),
])
def test_a_bad_constraint_says_what_was_expected(text, message):
    with pytest.raises(TuneError, match=None) as err:
        parse_constraint(text, faults=["crash api"])
    assert message in str(err.value)
    assert str(err.value).startswith(f"constraint {text!r}: ")
    assert isinstance(err.value, ValueError)


def test_a_constraint_holds_on_its_worst_variant_and_nan_never_holds():
    c = parse_constraint("p99<300ms")
    assert c.holds(0.2) and not c.holds(0.3) and not c.holds(math.nan)
    assert c.worst([0.1, 0.25, 0.2]) == 0.25
    assert parse_constraint("success>=99%").worst([0.995, 0.97]) == 0.97
    assert c.violation(0.2) == 0 and c.violation(0.45) == pytest.approx(0.5)
    assert Constraint("goodput", ">", 0.0, "goodput>0").violation(-2.0) == 2.0


def test_ranges_choices_and_log_ranges():
    assert parse_param("a", (1, 10)).kind == "int"
    assert parse_param("a", (1, 10.0)).kind == "float"
    assert parse_param("a", {"low": 1, "high": 1000, "log": True}).log
    assert parse_param("a", ["ROUND_ROBIN", "LEAST_REQUEST"]).choices == ("ROUND_ROBIN",
                                                                          "LEAST_REQUEST")
    d = parse_param("a", ("100ms", "2s"))
    assert (d.kind, d.step, d.distribution().low, d.distribution().high) == ("duration", 1e-3,
                                                                             100, 2000)
    assert d.value(250) == 0.25 and d.internal(0.25) == 250 and d.internal(5.0) is None
    assert parse_param("a", ("0.5ms", "2ms")).step == 1e-6
    ints = parse_param("a", (2, 8))
    assert ints.internal(4) == 4 and ints.internal(9) is None and ints.internal(None) is None
    assert ints.internal(True) is None


@pytest.mark.parametrize(("spec", "message"), [
    ((10, 1), "low 10 is above high 1"),
    ({"low": 0, "high": 10, "log": True}, "a log range needs low > 0"),
    ((1, "2s"), "the ends must be two numbers or two durations"),
    ((False, True), "a range of booleans is a choice"),
    ((1, 2, 3), "a range is (low, high)"),
    ([], "no choices given"),
    ({"low": 1}, "a range needs both low and high"),
    ({"low": 1, "high": 2, "step": 1}, "unexpected keys ['step']"),
    ("1..2", "expected (low, high), a list of choices"),
])
def test_a_bad_range_is_refused(spec, message):
    with pytest.raises(TuneError) as err:
        parse_param("x.y", spec)
    assert message in str(err.value)


def test_param_arguments_of_the_command_line():
    assert parse_param_arg("a.b=1..64").kind == "int"
    p = parse_param_arg("a.b=1..1000:log")
    assert (p.low, p.high, p.log) == (1, 1000, True)
    assert parse_param_arg("a.b=100ms..2s").kind == "duration"
    assert parse_param_arg("a.b=ROUND_ROBIN,LEAST_REQUEST").choices == ("ROUND_ROBIN",
                                                                        "LEAST_REQUEST")
    for bad in ("a.b", "a.b=", "=1..2", "a.b=x,y:log"):
        with pytest.raises(TuneError):
            parse_param_arg(bad)


# --------------------------------------------------------------------------------------------
# How trials are judged (a made-up evaluate with known figures)
# --------------------------------------------------------------------------------------------


def use_evaluate(monkeypatch, evaluate) -> None:
    """Make ``meshsim.sweep.evaluate``, which tune runs its points with, be ``evaluate``."""
    monkeypatch.setattr(importlib.import_module("meshsim.sweep"), "evaluate", evaluate)


def made_up(goodput, p99, calls=None):
    """An evaluate whose figures are ``goodput(connections, variant)`` and ``p99(...)``, the
    same in every replication; the scenario's own value (10) for the reference."""

    def evaluate(scenario, points, *, replications=1, seed=None, variants=None, overrides=None,
                 executor=None, workers=None, progress=None):
        if calls is not None:
            calls.append((len(points), seed, tuple(variants), dict(overrides or {})))
        rows = []
        for i, point in enumerate(points):
            m = point.get(CONNECTIONS, 10)
            for v in variants:
                for r in range(replications):
                    rows.append({"point": i, "variant": v, **point, "replication": r,
                                 "seed": seed + r, "goodput": goodput(m, v),
                                 "success_rate": 1.0, "latency_p99": p99(m, v)})
        return pd.DataFrame(rows)

    return evaluate


def test_the_worst_variant_counts_and_constraints_hold_in_every_variant(monkeypatch):
    calls: list[Any] = []
    # More connections: more goodput, until the callee-scaled variant saturates at 20; but the
    # p99 grows with them in callee-scaled only, past 300 ms above 24 connections.
    use_evaluate(monkeypatch, made_up(
        lambda m, v: 10.0 * (m if v == "baseline" else min(m, 20)),
        lambda m, v: 0.1 if v == "baseline" else 0.0125 * m, calls))
    res = meshsim.tune(UO, {CONNECTIONS: (4, 40)}, constraints=["p99<300ms"],
                       variants=["baseline", "callee-scaled"], n_trials=12, replications=2,
                       seed=5, overrides=SHORT, batch_size=5)
    t = res.trials
    assert list(t["trial"]) == list(range(13))
    assert calls[0] == (1, 5, ("baseline", "callee-scaled"), SHORT)  # the reference first
    assert [c[0] for c in calls[1:]] == [5, 5, 2]
    for _, row in t.iterrows():
        m = row[CONNECTIONS]
        assert row["value"] == 10.0 * min(m, 20)
        assert row["worst_variant"] == ("callee-scaled" if m > 20 else "baseline")
        assert row["feasible"] == (0.0125 * m < 0.3) == row["p99<300ms"]
    assert t.loc[0, CONNECTIONS] == 10 and res.reference["params"] == {CONNECTIONS: 10}
    assert res.reference["value"] == 100.0 and res.reference["constraints"] == {"p99<300ms": True}
    feasible = t[t["feasible"]]
    assert res.best_value == feasible["value"].max()
    # Ties go to the earliest trial.
    assert res.best_trial == feasible.loc[feasible["value"] == res.best_value, "trial"].min()
    assert res.best_params == {CONNECTIONS: int(t.loc[res.best_trial, CONNECTIONS])}
    assert set(res.runs["trial"]) == set(range(13)) and len(res.runs) == 13 * 2 * 2


def test_the_reference_stays_best_unless_a_trial_is_strictly_better(monkeypatch):
    use_evaluate(monkeypatch, made_up(lambda m, v: 100.0, lambda m, v: 0.1))
    res = meshsim.tune(UO, {CONNECTIONS: (4, 40)}, n_trials=4, overrides=SHORT)
    assert res.best_trial == 0 and res.best_params == {CONNECTIONS: 10}
    assert "the scenario as written" in res.snippet
    assert res.scenario.mesh.destination_rules["cart"] == meshsim.load_scenario(
        UO).mesh.destination_rules["cart"]


def test_nothing_feasible_gives_no_setting(monkeypatch):
    use_evaluate(monkeypatch, made_up(lambda m, v: float(m), lambda m, v: 1.0))
    res = meshsim.tune(UO, {CONNECTIONS: (4, 40)}, constraints=["p99<300ms"], n_trials=3,
                       overrides=SHORT)
    assert res.best_trial == -1 and res.best_params == {} and math.isnan(res.best_value)
    assert not res.trials["feasible"].any()
    assert res.snippet.startswith("# no setting met every constraint")


def test_minimising_a_latency_is_inferred(monkeypatch):
    use_evaluate(monkeypatch, made_up(lambda m, v: 1.0, lambda m, v: 0.001 * abs(m - 17)))
    res = meshsim.tune(UO, {CONNECTIONS: (4, 40)}, objective="p99", n_trials=25, seed=2,
                       overrides=SHORT)
    assert res.direction == "minimize" and res.objective == "latency_p99"
    assert res.best_value == res.trials["value"].min()


def test_bad_input_is_refused_before_any_run(monkeypatch):
    calls: list[Any] = []
    use_evaluate(monkeypatch, made_up(lambda m, v: 1.0, lambda m, v: 0.1, calls))
    with pytest.raises(ScenarioError) as err:
        meshsim.tune(UO, {POOL + "tcp.maxConection": (4, 40)})
    assert "did you mean 'maxConnections'?" in str(err.value)
    with pytest.raises(ScenarioError) as err:
        meshsim.tune(UO, {CONNECTIONS: (-4, 40)})
    assert str(err.value).startswith(f"--param: {CONNECTIONS}: must be >= 0")
    with pytest.raises(TuneError, match="unknown variant 'calee-scaled'"):
        meshsim.tune(UO, {CONNECTIONS: (4, 40)}, variants=["calee-scaled"])
    with pytest.raises(TuneError, match="give direction"):
        meshsim.tune(UO, {CONNECTIONS: (4, 40)}, objective="requests")
    with pytest.raises(TuneError, match="nothing to tune"):
        meshsim.tune(UO, {})
    assert calls == []


def test_importing_meshsim_does_not_import_optuna():
    code = "import sys, meshsim; assert 'optuna' not in sys.modules, 'optuna imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT,
                   env={"PYTHONPATH": str(ROOT)})


def test_without_optuna_the_error_says_what_to_install(monkeypatch, capsys):
    # import optuna (and its modules a test run has already imported) now fails
    for name in [m for m in sys.modules if m == "optuna" or m.startswith("optuna.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"pip install 'meshsim\[tune\]'"):
        meshsim.tune(UO, {CONNECTIONS: (4, 40)})
    assert main(["tune", str(UO), "--param", f"{CONNECTIONS}=4..40"]) == 2
    assert "meshsim tune needs Optuna: pip install 'meshsim[tune]'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# The snippet
# --------------------------------------------------------------------------------------------


def validate(snippet: str) -> list[dict[str, Any]]:
    """The snippet's resources, each validated by Istio's typed models with no key dropped."""
    resources = snippet_resources(snippet)
    for m in resources:
        out = round_trip(m)
        dropped = {(m["kind"], p) for p in dropped_keys(m, out)}
        assert dropped <= NEWER_THAN_MODELS, f"keys Istio does not know: {dropped}"
        assert out == without_newer(m)
    return resources


RETRIES = "mesh.virtualServices.stock.http[0].retries.attempts"
TIMEOUT = "mesh.virtualServices.stock.http[0].timeout"
REPLICAS = "services.stock.replicas"


def scored(score):
    """An evaluate whose goodput is ``score(point)`` (the point as given to evaluate)."""

    def evaluate(scenario, points, *, replications=1, seed=None, variants=None, **kw):
        return pd.DataFrame([{"point": i, "variant": v, **point, "replication": r,
                              "seed": seed + r, "goodput": score(point)}
                             for i, point in enumerate(points) for v in variants
                             for r in range(replications)])

    return evaluate


def test_the_snippet_holds_only_the_resources_the_tuned_paths_touch(monkeypatch):
    use_evaluate(monkeypatch, scored(lambda point: point.get(TIMEOUT, 0.0)))
    res = meshsim.tune(ROOT / "scenarios" / "cookbook" / "retries-multiply.yaml",
                       {RETRIES: (0, 3), TIMEOUT: ("100ms", "2s"), REPLICAS: (2, 4)},
                       n_trials=3, overrides=SHORT)
    best = res.best_params
    assert res.best_trial > 0 and best == res.trials.loc[res.best_trial, [
        RETRIES, TIMEOUT, REPLICAS]].to_dict()
    resources = validate(res.snippet)
    assert [(m["kind"], m["metadata"]["name"]) for m in resources] == [
        ("VirtualService", "stock")]
    route = resources[0]["spec"]["http"][0]
    assert route["retries"] == {"attempts": best[RETRIES], "retryOn": "5xx"}
    assert route["timeout"] == istio_duration(best[TIMEOUT])  # whole milliseconds: "350ms"
    assert parse_duration(route["timeout"]) == best[TIMEOUT]
    assert res.snippet.split("not carried")[1].splitlines()[1] == f"#   {REPLICAS}"
    assert res.scenario.services["stock"].replicas == best[REPLICAS]


def test_a_path_the_scenario_leaves_unset_stays_unset_when_the_reference_wins(monkeypatch):
    use_evaluate(monkeypatch, scored(lambda point: 0.0 if point else 1.0))
    res = meshsim.tune(ROOT / "scenarios" / "cookbook" / "retries-multiply.yaml",
                       {RETRIES: (0, 3), TIMEOUT: ("100ms", "2s")}, n_trials=2, overrides=SHORT)
    assert res.best_trial == 0 and res.best_params == {RETRIES: 2, TIMEOUT: None}
    assert res.reference["params"] == {RETRIES: 2, TIMEOUT: None}
    assert f"#   {TIMEOUT} = unset" in res.snippet
    assert "timeout" not in validate(res.snippet)[0]["spec"]["http"][0]


# --------------------------------------------------------------------------------------------
# On a cookbook scenario, with the simulator
# --------------------------------------------------------------------------------------------


UO_CONSTRAINTS = ["p99<100ms", "success_rate>=99.9%"]


def tune_uo(executor: Any = "serial", **kw: Any) -> meshsim.TuneResult:
    return meshsim.tune(UO, {CONNECTIONS: (4, 40), PENDING: {"low": 1, "high": 64, "log": True}},
                        constraints=UO_CONSTRAINTS, overrides=SHORT, executor=executor, **kw)


def test_tune_beats_the_pool_limits_as_written_on_fresh_seeds():
    res = tune_uo(n_trials=8, replications=2, seed=11)
    assert not res.reference["feasible"]  # 503 UO: success far below 99.9 %
    assert res.best_trial > 0 and res.trials.loc[res.best_trial, "feasible"]
    # Picked as the best of nine on two seeds: confirm on three others, defaults beside it.
    fresh = meshsim.evaluate(UO, [{}, res.best_params], replications=3, seed=1000,
                             overrides=SHORT, executor="serial")
    means = fresh.groupby("point")[["goodput", "success_rate", "latency_p99"]].mean()
    assert means.loc[1, "goodput"] >= means.loc[0, "goodput"]
    assert means.loc[1, "success_rate"] >= 0.999 and means.loc[1, "latency_p99"] < 0.1
    assert means.loc[0, "success_rate"] < 0.999
    rule = res.scenario.mesh.destination_rules["cart"].traffic_policy.connection_pool
    assert rule.tcp.max_connections == res.best_params[CONNECTIONS]
    resources = validate(res.snippet)
    assert [(m["kind"], m["metadata"]["name"]) for m in resources] == [
        ("DestinationRule", "cart")]
    pool = resources[0]["spec"]["trafficPolicy"]["connectionPool"]
    assert pool == {"tcp": {"maxConnections": res.best_params[CONNECTIONS]},
                    "http": {"http1MaxPendingRequests": res.best_params[PENDING]}}


def test_the_same_seed_gives_the_same_trials():
    first = tune_uo(n_trials=4, replications=1, seed=3)
    again = tune_uo(n_trials=4, replications=1, seed=3)
    pd.testing.assert_frame_equal(first.trials, again.trials)
    pd.testing.assert_frame_equal(first.runs, again.runs)
    other = tune_uo(n_trials=4, replications=1, seed=4)
    assert not first.trials[[CONNECTIONS, PENDING]].equals(other.trials[[CONNECTIONS, PENDING]])


def test_the_trials_do_not_depend_on_the_executor():
    serial = tune_uo(n_trials=3, replications=2, seed=3, batch_size=2)
    pooled = tune_uo(executor=None, workers=2, n_trials=3, replications=2, seed=3, batch_size=2)
    pd.testing.assert_frame_equal(serial.trials, pooled.trials)
    pd.testing.assert_frame_equal(serial.runs, pooled.runs)


def test_meshsim_tune_prints_the_best_setting_and_writes_its_files(capsys, tmp_path):
    out = tmp_path / "tuned"
    code = main(["tune", str(UO), "--param", f"{CONNECTIONS}=4..40",
                 "--param", f"{PENDING}=1..64:log", "--constraint", "p99<100ms",
                 "--constraint", "success_rate>=99.9%", "--trials", "4", "--replications", "1",
                 "--seed", "11", "--set", "duration=8s", "--set", "warmup=2s", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "reference (as written): goodput" in printed and "constraints NOT met" in printed
    assert "apiVersion: networking.istio.io/v1" in printed
    assert sorted(p.name for p in out.iterdir()) == ["best.yaml", "runs.csv", "trials.csv"]
    snippet = (out / "best.yaml").read_text(encoding="utf-8")
    assert snippet.rstrip("\n") in printed
    validate(snippet)
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["trial"]) == [0, 1, 2, 3, 4]
    assert yaml.safe_load(snippet.split("---\n", 1)[1])["kind"] == "DestinationRule"


@pytest.mark.parametrize(("args", "message"), [
    (["--param", f"{POOL}tcp.maxConection=4..40"],
     f"--param: {POOL}tcp.maxConection: unknown field 'maxConection' (did you mean "
     "'maxConnections'?)"),
    (["--param", f"{CONNECTIONS}=4..x"], "the ends must be two numbers or two durations"),
    (["--param", f"{CONNECTIONS}=4..40", "--constraint", "p98<3ms"],
     "meshsim tune: constraint 'p98<3ms': unknown metric 'p98' (did you mean 'p99'?)"),
    (["--param", f"{CONNECTIONS}=4..40", "--variant", "nope"], "unknown variant 'nope'"),
    (["--param", f"{CONNECTIONS}=4..40", "--set", "services.kart.replicas=2"],
     "unknown service 'kart' (did you mean 'cart'?)"),
])
def test_meshsim_tune_bad_input_exits_2(capsys, args, message):
    assert main(["tune", str(UO), *args]) == 2
    assert message in capsys.readouterr().err


def test_meshsim_tune_bad_file_exits_2_with_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(UO.read_text(encoding="utf-8").replace("replicas: 3", "replicas: -3"),
                   encoding="utf-8")
    assert main(["tune", str(bad), "--param", f"{CONNECTIONS}=4..40"]) == 2
    assert f"{bad}:29: services.cart.replicas:" in capsys.readouterr().err


def test_meshsim_tune_refuses_a_foreign_out_dir_before_running(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    assert main(["tune", str(UO), "--param", f"{CONNECTIONS}=4..40", "--out",
                 str(tmp_path)]) == 2
    assert "does not look like a meshsim output directory" in capsys.readouterr().err
