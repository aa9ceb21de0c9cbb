"""Capacity planning: the highest load a scenario sustains under its SLOs, the utilisation and
headroom of each service at a target rate, the fewest replicas that meet the SLOs there, and the
same with one pod lost per service (N-1) or under a declared fault set (variants).

Load is scaled by a *load factor* ``m``: every client sends ``m`` times its load (an open-loop
client's rate at every instant of its profile, a closed-loop client's users), as a whole-run
``loadSpike`` fault does. Each tested load runs ``replications`` times on common random numbers
(replication ``r`` has the same seed at every load and replica count), and every figure is the
mean over replications with its Student-t confidence interval (:func:`meshsim.sweep_summary`).

A load *meets* the SLOs when, for every SLO, the whole confidence interval of the replication
mean lies on the good side of the bound; it *misses* them when, for some SLO, the whole interval
lies on the bad side; otherwise it is *uncertain*. See ``docs/reference/capacity.md`` for the
search and for how every number is computed.

Keys of ``capacity.json`` (:meth:`CapacityResult.to_dict`), decided once; rates are requests per
second, times seconds, shares 0-1:

``scenario``, ``seed``, ``replications``, ``level``, ``slos`` (list of the SLO texts),
``base_rps`` (the scenario's offered rate as written, all clients, after warm-up),
``base_rps_by_client`` ({client: rps}), ``target_rps``, ``target_factor``, ``margin``,
``plan_rps`` (``target_rps * (1 + margin)``), ``knee`` ({``factor_low``, ``factor_high``,
``factor_estimate``, ``rps_low``, ``rps_high``, ``rps_estimate``, ``rps_by_client`` (the
estimate split by client), ``converged`` (bool), ``loads_tested``}), ``bottleneck`` (service),
``services`` (list of the rows of ``services.csv``), ``replica_plan`` ({service: replicas}),
``plan_verdict`` (``met``/``missed``/``uncertain`` at ``plan_rps`` with every service at its
proposed replicas), ``failures`` (list of the rows of ``failures.csv``), ``no_slack``
(services whose N-1 misses or is uncertain), ``fault_variants_missed`` (variants of the
declared fault set that miss or are uncertain), ``policy_effect`` ({``amplification_at_knee``,
``wasted_work_at_knee``, and with ``retries_effect``: ``knee_without_retries_rps``,
``knee_without_retries_low``, ``knee_without_retries_high``, ``knee_without_retries_factor``,
``retries_cost``}).

Columns of ``load.csv`` (one row per tested load): ``load_factor``, ``offered_rps``,
``replications``, then ``M_mean``, ``M_ci_low``, ``M_ci_high`` for ``M`` in ``throughput``
(successful requests per second, i.e. goodput), ``success_rate``, ``latency_mean``,
``latency_p99``, ``amplification``; then ``verdict``.

Columns of ``services.csv`` (one row per service, at ``target_rps``): ``service``,
``replicas``, ``workers``, ``utilisation_mean``, ``utilisation_ci_low``,
``utilisation_ci_high``, ``headroom`` (``1 - utilisation_mean``), ``saturation_rps``
(``target_rps / utilisation_mean``: where its workers would be all busy if busy time grows in
proportion to load), ``queue_wait_mean`` (s), ``bottleneck`` (bool), ``replicas_proposed``.

Columns of ``failures.csv`` (one row per service with at least 2 replicas for N-1, then one
per variant of the declared fault set): ``failure`` (``n-1`` or the variant), ``service`` (``-``
for a variant), ``replicas``, ``replicas_after``, ``utilisation_mean`` (of that service, after),
``success_rate_mean``, ``success_rate_ci_low``, ``success_rate_ci_high``,
``latency_p99_mean``, ``latency_p99_ci_low``, ``latency_p99_ci_high``, ``verdict``.

``runs.csv`` has every run of the search (a sweep's row, plus ``<service>: utilisation`` and
``<service>: queue_wait_mean``); ``scenario.resolved.yaml`` the scenario as searched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import output
from .arrivals import PoissonArrivals
from .compare import headline
from .errors import unknown_name
from .faults import LoadSpikeFault
from .metrics import END_TO_END
from .scenario import BASELINE, Scenario, load_scenario
from .sweep import Task, executor_pool, sweep_summary
from .tune_space import Constraint, parse_constraint

__all__ = ["CAPACITY_MARKER", "CapacityResult", "capacity", "format_capacity", "judge",
           "offered_rps", "write_capacity"]

#: The file that marks a directory :func:`write_capacity` wrote.
CAPACITY_MARKER = "capacity.json"
MET, MISSED, UNCERTAIN = "met", "missed", "uncertain"
_LOAD_METRICS = ("throughput", "success_rate", "latency_mean", "latency_p99", "amplification")
_SPIKE = "capacity load factor"


# --- pure parts ----------------------------------------------------------------------------------


def judge(slo: Constraint, mean: float, low: float, high: float) -> str:
    """``met`` when the whole interval ``[low, high]`` holds the SLO, ``missed`` when none of it
    does, else ``uncertain`` (also when the interval is unknown: NaN)."""
    if any(x != x for x in (mean, low, high)):
        return UNCERTAIN
    if slo.holds(low) and slo.holds(high):
        return MET
    if not slo.holds(low) and not slo.holds(high):
        return MISSED
    return UNCERTAIN


def judge_all(slos: Sequence[Constraint], row: Mapping[str, float]) -> str:
    """The verdict of a summary row (``M_mean``, ``M_ci_low``, ``M_ci_high``) over every SLO:
    missed if one is missed, met if all are met, else uncertain."""
    verdicts = [judge(s, row[f"{s.metric}_mean"], row[f"{s.metric}_ci_low"],
                      row[f"{s.metric}_ci_high"]) for s in slos]
    if MISSED in verdicts:
        return MISSED
    return MET if all(v == MET for v in verdicts) else UNCERTAIN


def offered_rps(scenario: Scenario) -> dict[str, float]:
    """Each open-loop client's mean arrival rate over the measured window (warm-up to end), per
    second, from its rate profile (averaged on a 1 ms grid); closed-loop clients are left out."""
    start, end = scenario.warmup, scenario.duration
    grid = np.linspace(start, end, max(2, int((end - start) * 1000)) + 1)
    rates = {}
    for client in scenario.workload:
        if isinstance(client.arrival, PoissonArrivals):
            rate = client.arrival.rate.rate_function()
            rates[client.client] = float(np.mean([rate(t) for t in grid]))
    return rates


def scaled(scenario: Scenario, factor: float) -> Scenario:
    """The scenario with every client sending ``factor`` times its load for the whole run."""
    if factor == 1.0:
        return scenario
    spike = LoadSpikeFault(kind="loadSpike", name=_SPIKE, start=0.0, factor=factor)
    return scenario.model_copy(update={"faults": [*scenario.faults, spike]})


def next_factor(lo: float | None, hi: float | None, start: float) -> float:
    """The next load factor of the search: doubling up (or halving down) from ``start`` until
    the SLOs are missed (met), then the midpoint of the bracket ``[lo, hi]``."""
    if lo is None and hi is None:
        return start
    if hi is None:
        return lo * 2
    if lo is None:
        return hi / 2
    return (lo + hi) / 2


# --- running -------------------------------------------------------------------------------------


def _measure(task: Task) -> dict[str, Any]:
    """One run reduced to a row: the headline figures and, per service, utilisation and wait."""
    from . import run

    result = run(task.scenario, seed=task.seed)
    summary = result.summary()
    figures = headline(summary, pd.DataFrame())
    e2e = summary.loc[END_TO_END]
    figures["latency_mean"] = float(e2e["latency_mean"])
    figures["latency_p90"] = float(e2e["latency_p90"])
    for name in task.scenario.services:
        row = summary.loc[name] if name in summary.index else {}
        figures[f"{name}: utilisation"] = float(row.get("utilisation", np.nan))
        figures[f"{name}: queue_wait_mean"] = float(row.get("queue_wait_mean", np.nan))
    return {"point": task.point, "variant": task.variant, **dict(task.values),
            "replication": task.replication, "seed": task.seed, **figures}


@dataclass
class _Runner:
    """Runs settings (load factor, replica overrides) with replications on common random
    numbers (replication ``r`` has seed ``seeds[r]`` in every setting), one pool for the whole
    search, and keeps every row; a setting run again reuses the replications it has."""

    scenario: Scenario
    slos: Sequence[Constraint]
    replications: int
    max_replications: int
    seeds: list[int]
    pool: Any
    level: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    variant: str = BASELINE
    _points: dict[tuple, int] = field(default_factory=dict)
    _done: dict[int, int] = field(default_factory=dict)
    #: Runners of other variants sharing this one's pool and seeds (a declared fault set).
    others: list[_Runner] = field(default_factory=list)

    def summarise(self, settings: Sequence[tuple[float, Mapping[str, int]]],
                  replications: int | None = None) -> pd.DataFrame:
        """Summary rows (``sweep_summary`` columns plus ``throughput_*``) of ``settings``, in
        order, each over every replication it has, at least ``replications`` (default: the
        runner's)."""
        want = replications or self.replications
        tasks, points = [], []
        for factor, replicas in settings:
            key = (float(factor), tuple(sorted(replicas.items())))
            point = self._points.setdefault(key, len(self._points))
            points.append(point)
            have = self._done.get(point, 0)
            if have >= want:
                continue
            base = self.scenario.with_overrides(
                {f"services.{s}.replicas": r for s, r in replicas.items()}, "replica plan")
            sc = scaled(base, factor)
            values = (("load_factor", float(factor)),
                      *((f"services.{s}.replicas", int(r)) for s, r in key[1]))
            tasks += [Task(point, self.variant, values, r, self.seeds[r], sc)
                      for r in range(have, want)]
            self._done[point] = want
        self.rows += list(self.pool(tasks))
        frame = _frame([r for r in self.rows if r["point"] in set(points)])
        summary = sweep_summary(frame, level=self.level).set_index("point", drop=False)
        return summary.loc[points].reset_index(drop=True)

    def decide(self, settings: Sequence[tuple[float, Mapping[str, int]]]) -> pd.DataFrame:
        """:meth:`summarise` with a ``verdict`` column; a setting whose verdict is uncertain
        is run again with twice the replications, up to ``max_replications``, so that a
        verdict near the knee rests on a narrower interval."""
        n = self.replications
        summary = self.summarise(settings, n)
        summary["verdict"] = [judge_all(self.slos, row) for _, row in summary.iterrows()]
        while n < self.max_replications and (summary["verdict"] == UNCERTAIN).any():
            n = min(2 * n, self.max_replications)
            again = [s for s, v in zip(settings, summary["verdict"], strict=True)
                     if v == UNCERTAIN]
            self.summarise(again, n)
            summary = self.summarise(settings)
            summary["verdict"] = [judge_all(self.slos, row) for _, row in summary.iterrows()]
        return summary


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    frame["throughput"] = frame["goodput"]
    lead = ["point", "variant"]
    params = [c for c in frame.columns if c == "load_factor" or c.startswith("services.")]
    metrics = [c for c in frame.columns
               if c not in (*lead, *params, "replication", "seed")]
    return frame[[*lead, *params, "replication", "seed", *metrics]]


@contextmanager
def _pool(executor: Any, workers: int | None) -> Iterator[Callable[[list[Task]], Any]]:
    n = workers or os.cpu_count() or 1
    if executor == "serial" or (executor in (None, "processes") and n == 1):
        yield lambda tasks: map(_measure, tasks)
        return
    with executor_pool(executor, n) as pool:
        yield lambda tasks: pool.map(_measure, tasks)


# --- the result ----------------------------------------------------------------------------------


@dataclass
class CapacityResult:
    """What :func:`capacity` found; :meth:`to_dict` gives ``capacity.json`` (keys in the module
    docstring), :attr:`load`, :attr:`services` and :attr:`failures` the CSV files."""

    scenario: Scenario
    figures: dict[str, Any]
    load: pd.DataFrame
    services: pd.DataFrame
    failures: pd.DataFrame
    runs: pd.DataFrame

    @property
    def bottleneck(self) -> str | None:
        return self.figures["bottleneck"]

    @property
    def replica_plan(self) -> dict[str, int]:
        return dict(self.figures["replica_plan"])

    @property
    def knee(self) -> dict[str, Any]:
        return dict(self.figures["knee"])

    def to_dict(self) -> dict[str, Any]:
        return output._clean({
            **self.figures,
            "services": self.services.to_dict(orient="records"),
            "failures": self.failures.to_dict(orient="records"),
        })


def write_capacity(result: CapacityResult, out: str | os.PathLike) -> Path:
    """Write ``capacity.json``, ``load.csv``, ``services.csv``, ``failures.csv``,
    ``runs.csv`` (every run's row) and ``scenario.resolved.yaml`` into ``out``, atomically."""

    def fill(tmp: Path) -> None:
        result.load.to_csv(tmp / "load.csv", index=False)
        result.services.to_csv(tmp / "services.csv", index=False)
        result.failures.to_csv(tmp / "failures.csv", index=False)
        result.runs.to_csv(tmp / "runs.csv", index=False)
        (tmp / "scenario.resolved.yaml").write_text(result.scenario.to_yaml(), encoding="utf-8")
        (tmp / CAPACITY_MARKER).write_text(
            json.dumps(result.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    return output.atomic_dir(out, fill, marker=CAPACITY_MARKER)


# --- the search ----------------------------------------------------------------------------------


def capacity(
    scenario: Scenario | str | os.PathLike,
    slos: Sequence[str | Constraint],
    *,
    target_rps: float | None = None,
    margin: float = 0.2,
    failures: bool = False,
    fault_variants: Sequence[str] = (),
    retries_effect: bool = False,
    plan: bool = True,
    replications: int = 5,
    max_replications: int | None = None,
    level: float = 0.95,
    max_loads: int = 12,
    tolerance: float = 0.05,
    seed: int | None = None,
    executor: Any = None,
    workers: int | None = None,
) -> CapacityResult:
    """Find the knee (the highest sustainable load) and plan replicas for a target rate.

    Parameters
    ----------
    scenario : Scenario or path
    slos : list of str or Constraint
        E.g. ``["p99<300ms", "success>=99.9%"]`` (:func:`meshsim.tune_space.parse_constraint`),
        judged end to end on the replication mean and its confidence interval.
    target_rps : float, optional
        Total offered rate (all clients, requests per second) to plan for; default the
        scenario's own load (load factor 1). Needs an open-loop client.
    margin : float
        The plan must meet the SLOs at ``target_rps * (1 + margin)``.
    failures : bool
        Also run N-1: each service with 2 or more replicas loses one, at ``target_rps``.
    fault_variants : list of str
        A declared fault set: each of these variants of the scenario (its ``faults``, say)
        runs at ``target_rps`` with today's replicas, as N-1 does.
    retries_effect : bool
        Also search the knee with every retry switched off (each route's ``retries:
        {attempts: 0}``, gateways' included), to tell how much capacity the retries cost (or
        buy): ``policy_effect.retries_cost`` is ``1 - knee / knee without retries``.
    plan : bool
        Search the fewest replicas per service (the slowest part).
    replications : int
        Runs per tested setting (at least 2: a confidence interval needs them).
    max_replications : int, optional
        A setting whose verdict is uncertain is run again with twice the replications, up to
        this many; default ``4 * replications``.
    level : float
        Confidence level of the intervals (0.90, 0.95 or 0.99).
    max_loads : int
        Loads the knee search may test.
    tolerance : float
        The knee search stops when its bracket is narrower than this share of its low end.
    seed : int, optional
        Root of the seeds; default the scenario's.
    executor, workers
        As for :func:`meshsim.sweep` (``"serial"``, processes, Dask, an Executor).

    Returns
    -------
    CapacityResult
    """
    if replications < 2:
        raise ValueError(f"replications: a confidence interval needs at least 2, "
                         f"got {replications}")
    if not 0 <= margin < 10:
        raise ValueError(f"margin: expected a share such as 0.2, got {margin!r}")
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    constraints = [s if isinstance(s, Constraint) else parse_constraint(s) for s in slos]
    if not constraints:
        raise ValueError("slos: give at least one SLO, e.g. 'p99<300ms'")
    by_client = offered_rps(sc)
    base = sum(by_client.values())
    if target_rps is not None and not base > 0:
        raise ValueError("target_rps needs an open-loop (poisson) client with a rate above 0")
    if target_rps is not None and not target_rps > 0:
        raise ValueError(f"target_rps must be above 0, got {target_rps!r}")
    target_factor = target_rps / base if target_rps is not None else 1.0
    root = sc.seed if seed is None else seed
    max_replications = max(replications, max_replications or 4 * replications)
    # spawn(n)[:r] == spawn(r): extra replications extend the common random numbers.
    seeds = [int(c.generate_state(1)[0])
             for c in np.random.SeedSequence(root).spawn(max_replications)]
    for v in fault_variants:
        if v not in sc.variants:
            raise ValueError(f"fault variants: {unknown_name(v, set(sc.variants), 'variant')}")
    now = {name: s.replicas for name, s in sc.services.items()}
    per_second = base if base > 0 else math.nan  # closed-loop clients only: factors, no rates

    with _pool(executor, workers) as pool:
        runner = _Runner(sc, constraints, replications, max_replications, seeds, pool, level)
        knee, load = _knee_search(runner, constraints, now, max_loads, tolerance,
                                  start=target_factor)
        at_target = runner.summarise([(target_factor, now)]).iloc[0]
        services = _services(sc, at_target, target_factor * per_second)
        plan_factor = target_factor * (1 + margin)
        proposed, plan_verdict = (_plan(runner, constraints, services, plan_factor,
                                        target_factor)
                                  if plan else ({}, None))
        no_retries = None
        if retries_effect:
            no_retries = dataclasses.replace(
                runner, scenario=without_retries(sc), rows=[], _points={}, _done={}, others=[],
                variant="no-retries")
            runner.others.append(no_retries)
            knee_free, _ = _knee_search(no_retries, constraints, now, max_loads, tolerance,
                                        start=target_factor)
        fail = _failures(runner, constraints, sc, target_factor) if failures else _no_failures()
        if fault_variants:
            fail = pd.concat([df for df in (fail, _fault_set(runner, fault_variants, sc,
                                                             target_factor)) if len(df)],
                             ignore_index=True)
            fail = fail if len(fail) else _no_failures()
    services["replicas_proposed"] = [proposed.get(s, np.nan) for s in services["service"]]
    load["offered_rps"] = load["load_factor"] * per_second
    knee_rows = load[np.isclose(load["load_factor"], knee["factor_estimate"])]
    near = load.iloc[(load["load_factor"] - knee["factor_estimate"]).abs().argsort()[:1]]
    at_knee = knee_rows.iloc[0] if len(knee_rows) else near.iloc[0]
    figures = {
        "scenario": sc.name, "seed": root, "replications": replications, "level": level,
        "slos": [c.text for c in constraints],
        "base_rps": base, "base_rps_by_client": by_client,
        "target_rps": target_factor * per_second, "target_factor": target_factor,
        "margin": margin, "plan_rps": plan_factor * per_second,
        "knee": {**knee, "rps_low": knee["factor_low"] * per_second,
                 "rps_high": knee["factor_high"] * per_second,
                 "rps_estimate": knee["factor_estimate"] * per_second,
                 "rps_by_client": {c: r * knee["factor_estimate"] for c, r in by_client.items()}},
        "bottleneck": _bottleneck(services),
        "replica_plan": proposed,
        "plan_verdict": plan_verdict,
        "no_slack": [r["service"] for r in fail.to_dict(orient="records")
                     if r["verdict"] != MET and r["failure"] == "n-1"],
        "fault_variants_missed": [r["failure"] for r in fail.to_dict(orient="records")
                                  if r["verdict"] != MET and r["failure"] != "n-1"],
        "policy_effect": {"amplification_at_knee": float(at_knee["amplification_mean"]),
                          "wasted_work_at_knee": float(at_knee["wasted_work_mean"]),
                          **(_retries_effect(knee, knee_free, per_second)
                             if no_retries is not None else {})},
    }
    runs = pd.DataFrame(runner.rows + [row for r in runner.others for row in r.rows])
    return CapacityResult(sc, figures, _load_table(load), services, fail, runs)


def _knee_search(runner: _Runner, slos: Sequence[Constraint], replicas: Mapping[str, int],
                 max_loads: int, tolerance: float, start: float,
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
    """Bracket then bisect on the load factor, steered by whether the replication mean meets
    the SLOs; the knee is reported between the highest load met with confidence (below every
    missed one) and the lowest load missed with confidence."""
    lo = hi = None  # the bracket on the mean
    rows = []
    for _ in range(max_loads):
        factor = next_factor(lo, hi, start)
        row = runner.decide([(factor, replicas)]).iloc[0].copy()
        rows.append(row)
        mean_ok = all(s.holds(row[f"{s.metric}_mean"]) for s in slos)
        if mean_ok:
            lo = factor
        else:
            hi = factor
        if lo is not None and hi is not None and hi - lo <= tolerance * lo:
            break
        if lo is None and hi is not None and hi < 1e-3 * start:
            break  # missed at every load tried
    load = pd.DataFrame(rows).sort_values("load_factor").reset_index(drop=True)
    missed = load.loc[load["verdict"] == MISSED, "load_factor"]
    high = float(missed.min()) if len(missed) else math.inf
    met = load.loc[(load["verdict"] == MET) & (load["load_factor"] < high), "load_factor"]
    low = float(met.max()) if len(met) else 0.0
    estimate = (lo + hi) / 2 if lo is not None and hi is not None else (lo or 0.0)
    estimate = min(max(estimate, low), high)
    converged = bool(np.isfinite(high) and high - low <= 2 * tolerance * max(low, 1e-12))
    return ({"factor_low": low, "factor_high": high, "factor_estimate": estimate,
             "converged": converged, "loads_tested": len(load)}, load)


def without_retries(sc: Scenario) -> Scenario:
    """The scenario with no retries anywhere: every route of the mesh and of the gateways to
    every service and external host gets ``retries: {attempts: 0}`` (Istio's "no retry
    policy"), which also switches off Istio's default of 2 retries."""
    overrides: dict[str, Any] = {}
    hosts = [*sc.services, *sc.external_services]
    blocks = [("mesh", sc.mesh.virtual_services)]
    blocks.append(("mesh.ingressGateway", sc.mesh.ingress_gateway.virtual_services))
    if sc.mesh.egress_gateway is not None:
        blocks.append(("mesh.egressGateway", sc.mesh.egress_gateway.virtual_services))
    for where, services in blocks:
        for host in hosts:
            vs = services.get(host)
            if vs is None:
                overrides[f"{where}.virtualServices.{host}"] = {
                    "http": [{"retries": {"attempts": 0}}]}
            else:
                overrides[f"{where}.virtualServices.{host}.http[0].retries"] = {"attempts": 0}
    return sc.with_overrides(overrides, "without retries")


def _retries_effect(knee: Mapping[str, Any], free: Mapping[str, Any],
                    per_second: float) -> dict[str, Any]:
    """What the retries cost at the knee: the knee without them, and the share of it lost."""
    with_, without = knee["factor_estimate"], free["factor_estimate"]
    cost = 1 - with_ / without if without > 0 else math.nan
    return {"knee_without_retries_rps": without * per_second,
            "knee_without_retries_factor": without,
            "knee_without_retries_low": free["factor_low"] * per_second,
            "knee_without_retries_high": free["factor_high"] * per_second,
            "retries_cost": cost}


def _load_table(load: pd.DataFrame) -> pd.DataFrame:
    cols = ["load_factor", "offered_rps", "replications"]
    for m in _LOAD_METRICS:
        cols += [f"{m}_mean", f"{m}_ci_low", f"{m}_ci_high"]
    return load[[*cols, "verdict"]].reset_index(drop=True)


def _services(sc: Scenario, row: pd.Series, target: float) -> pd.DataFrame:
    out = []
    for name, s in sc.services.items():
        u = float(row[f"{name}: utilisation_mean"])
        out.append({
            "service": name, "replicas": s.replicas,
            "workers": sum(d.replicas * d.workers for d in s.deployments()),
            "utilisation_mean": u,
            "utilisation_ci_low": float(row[f"{name}: utilisation_ci_low"]),
            "utilisation_ci_high": float(row[f"{name}: utilisation_ci_high"]),
            "headroom": 1 - u,
            "saturation_rps": target / u if u > 0 else math.inf,
            "queue_wait_mean": float(row[f"{name}: queue_wait_mean_mean"]),
        })
    frame = pd.DataFrame(out)
    frame["bottleneck"] = frame["service"] == _bottleneck(frame)
    return frame


def _bottleneck(services: pd.DataFrame) -> str | None:
    u = services["utilisation_mean"]
    return None if u.isna().all() else str(services.loc[u.idxmax(), "service"])


def _plan(runner: _Runner, slos: Sequence[Constraint], services: pd.DataFrame,
          factor: float, measured_at: float) -> tuple[dict[str, int], str]:
    """The fewest replicas per service that meet the SLOs at ``factor``, one service at a time
    (most utilised first), the others at their plan so far. Each service starts generous (its
    utilisation at most 50% at ``factor``, never below today's count); the candidates run from
    one replica below where its workers would be saturated up to that start. Utilisation was
    measured at load factor ``measured_at`` and is scaled in proportion to the load."""
    plan: dict[str, int] = {}
    for row in services.sort_values("utilisation_mean", ascending=False).itertuples():
        busy = _share(row.utilisation_mean) * factor / measured_at
        plan[row.service] = max(row.replicas, math.ceil(busy * row.replicas / 0.5))
    for row in services.sort_values("utilisation_mean", ascending=False).itertuples():
        name = row.service
        busy = _share(row.utilisation_mean) * factor / measured_at
        floor = max(1, math.ceil(busy * row.replicas) - 1)
        candidates = list(range(min(floor, plan[name]), plan[name] + 1))
        settings = [(factor, {**plan, name: r}) for r in candidates]
        verdicts = list(runner.decide(settings)["verdict"])
        chosen = plan[name]
        for r, v in zip(reversed(candidates), reversed(verdicts), strict=True):
            if v != MET:
                break
            chosen = r
        plan[name] = chosen
    return plan, str(runner.decide([(factor, plan)]).iloc[0]["verdict"])


def _share(u: float) -> float:
    """A utilisation, 0 for a service no request reached (NaN)."""
    return u if u == u else 0.0


def _failures(runner: _Runner, slos: Sequence[Constraint], sc: Scenario,
              factor: float) -> pd.DataFrame:
    now = {name: s.replicas for name, s in sc.services.items()}
    names = [n for n, r in now.items() if r >= 2]
    if not names:
        return _no_failures()
    summary = runner.decide([(factor, {**now, n: now[n] - 1}) for n in names])
    rows = []
    for name, (_, row) in zip(names, summary.iterrows(), strict=True):
        rows.append({
            "failure": "n-1",
            "service": name, "replicas": now[name], "replicas_after": now[name] - 1,
            "utilisation_mean": float(row[f"{name}: utilisation_mean"]),
            **{f"{m}_{k}": float(row[f"{m}_{k}"])
               for m in ("success_rate", "latency_p99") for k in ("mean", "ci_low", "ci_high")},
            "verdict": row["verdict"],
        })
    return pd.DataFrame(rows)


def _fault_set(runner: _Runner, variants: Sequence[str], sc: Scenario,
               factor: float) -> pd.DataFrame:
    """Each variant at the target with today's replicas: its end-to-end figures and verdict,
    on the same seeds as the rest of the search."""
    now = {name: s.replicas for name, s in sc.services.items()}
    rows = []
    for v in variants:
        other = dataclasses.replace(runner, scenario=sc.variant(v), rows=[], _points={},
                                    _done={}, others=[], variant=v)
        runner.others.append(other)
        row = other.decide([(factor, now)]).iloc[0]
        rows.append({
            "failure": v, "service": "-", "replicas": np.nan, "replicas_after": np.nan,
            "utilisation_mean": np.nan,
            **{f"{m}_{k}": float(row[f"{m}_{k}"])
               for m in ("success_rate", "latency_p99") for k in ("mean", "ci_low", "ci_high")},
            "verdict": row["verdict"],
        })
    return pd.DataFrame(rows)


def _no_failures() -> pd.DataFrame:
    cols = ["failure", "service", "replicas", "replicas_after", "utilisation_mean",
            *(f"{m}_{k}" for m in ("success_rate", "latency_p99")
              for k in ("mean", "ci_low", "ci_high")), "verdict"]
    return pd.DataFrame(columns=cols)


# --- the printed report ---------------------------------------------------------------------------


def format_capacity(result: CapacityResult) -> str:
    """The report ``meshsim capacity`` prints: the knee, the services at the target, the plan
    and N-1."""
    f = result.figures
    knee = f["knee"]
    level = f"{f['level']:.0%}"
    lines = [f"{f['scenario']}: SLOs {', '.join(f['slos'])}; {f['replications']} replications "
             f"per load, {level} intervals",
             f"offered load as written: {f['base_rps']:.1f}/s",
             "",
             _knee_line(knee, f["base_rps"] > 0),
             "",
             f"at the target {f['target_rps']:.1f}/s:",
             f"  {'service':<14}{'replicas':>9}{'utilisation':>22}{'headroom':>10}"
             f"{'saturates at':>14}{'proposed':>10}"]
    for r in result.services.itertuples():
        mark = "  <- bottleneck" if r.bottleneck else ""
        planned = r.replicas_proposed
        proposed = "-" if planned != planned else f"{planned:.0f}"
        util = (f"{r.utilisation_mean:.1%} [{r.utilisation_ci_low:.1%}, "
                f"{r.utilisation_ci_high:.1%}]")
        lines.append(f"  {r.service:<14}{r.replicas:>9}{util:>22}{r.headroom:>10.1%}"
                     f"{_rps(r.saturation_rps):>14}{proposed:>10}{mark}")
    if f["replica_plan"]:
        lines.append(f"replica plan for {f['plan_rps']:.1f}/s (target + {f['margin']:.0%}): "
                     + ", ".join(f"{s}={n}" for s, n in f["replica_plan"].items())
                     + f"; SLOs {f['plan_verdict']} with it")
    n_1 = result.failures[result.failures["failure"] == "n-1"]
    declared = result.failures[result.failures["failure"] != "n-1"]
    if len(n_1):
        lines += ["", "N-1 at the target (one pod lost):"]
        for r in n_1.itertuples():
            lines.append(f"  {r.service:<14}{r.replicas}->{r.replicas_after}  p99 "
                         f"{r.latency_p99_mean * 1e3:.0f}ms  success {r.success_rate_mean:.2%}"
                         f"  {r.verdict}")
        lines.append("no slack: " + (", ".join(f["no_slack"]) or "none"))
    if len(declared):
        lines += ["", "Declared faults at the target (variants):"]
        for r in declared.itertuples():
            lines.append(f"  {r.failure:<20} p99 {r.latency_p99_mean * 1e3:.0f}ms  success "
                         f"{r.success_rate_mean:.2%}  {r.verdict}")
    effect = f["policy_effect"]
    if "retries_cost" in effect:
        cost = effect["retries_cost"]
        rates = f["base_rps"] > 0
        without = (f"{effect['knee_without_retries_rps']:.1f}/s" if rates
                   else f"x{effect['knee_without_retries_factor']:.2f}")
        verb = "cost" if cost >= 0 else "add"
        lines += ["", f"retries {verb} {abs(cost):.0%} of the capacity at the knee (without "
                  f"them the knee is at {without}; {effect['amplification_at_knee']:.2f} "
                  "attempts per request at the knee with them)"]
    return "\n".join(lines)


def _knee_line(knee: Mapping[str, Any], rates: bool) -> str:
    low, high = knee["factor_low"], knee["factor_high"]
    if rates:  # an open-loop client: the knee in requests per second
        text = (f"knee: {knee['rps_estimate']:.1f}/s (x{knee['factor_estimate']:.3g}); met with "
                f"confidence up to {knee['rps_low']:.1f}/s, missed from "
                f"{_rps(knee['rps_high'], 'no load tested')}")
    else:  # closed-loop clients only: load factors (users x m)
        text = (f"knee: load factor x{knee['factor_estimate']:.3g}; met with confidence up to "
                f"x{low:.3g}, missed from "
                f"{f'x{high:.3g}' if math.isfinite(high) else 'no load tested'}")
    return text + ("" if knee["converged"] else " (interval not narrowed to the tolerance)")


def _rps(x: float, otherwise: str = "-") -> str:
    return f"{x:.1f}/s" if math.isfinite(x) else otherwise
