"""Side by side runs of variants of a scenario on common random numbers (``meshsim compare``).

A variant is a scenario: the baseline as written, one of its named ``variants:`` (an override
set), or another scenario file. Every variant runs with the same seed, so meshsim's named random
streams give the same draws to the same things (the same arrivals, the same service times of the
same service) and a difference between variants is the effect of what changed, not of luck.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import cascade as cascade_metrics
from .errors import Issue, ScenarioError, unknown_name
from .metrics import END_TO_END
from .result import Result
from .scenario import BASELINE, Scenario, load_scenario

__all__ = [
    "HEADLINE",
    "PER_FAULT",
    "Comparison",
    "compare",
    "format_table",
    "format_value",
    "from_results",
    "run_variants",
    "unit",
    "variant_scenarios",
]

#: The headline rows of :attr:`Comparison.table`, in order, each with the unit it is shown in.
HEADLINE = {
    "requests": "count",
    "success_rate": "%",
    "goodput": "/s",
    "latency_p50": "ms",
    "latency_p99": "ms",
    "in_flight_at_end": "count",
    "amplification": "x",
    "wasted_work": "worker-s",
    "slo_met": "yes/no",
}
#: The rows of :attr:`Comparison.table` per fault, ``<fault>: <metric>``, with their units.
PER_FAULT = {"time_to_detect": "s", "time_to_recover": "s", "blast_radius": "count"}

ScenarioLike = Scenario | str | os.PathLike


@dataclass(frozen=True)
class Comparison:
    """The runs of a comparison and their figures side by side.

    Attributes
    ----------
    seed : int
        The seed every variant ran with.
    results : dict of str to Result
        One run per variant, in the order compared.
    table : pandas.DataFrame
        Rows are metrics (index ``metric``), columns the variants. The rows of :data:`HEADLINE`
        are the end-to-end figures after the warm-up: ``requests`` (answered end-user
        requests), ``success_rate`` (0-1), ``goodput`` (successes per second), ``latency_p50``
        and ``latency_p99`` (seconds), ``in_flight_at_end`` (end-user requests unanswered when
        the run ended), ``amplification`` (attempts per end-user request over every hop) and
        ``wasted_work`` (worker-seconds callees spent on requests their caller had given up,
        summed over callees), ``slo_met`` (1 if the end-to-end objective was met, 0 if not, NaN
        without one). Then, per fault, ``<fault>: time_to_detect`` (seconds; NaN when no
        policy reacted), ``<fault>: time_to_recover`` (seconds; ``inf`` when it never
        recovered) and ``<fault>: blast_radius`` (the number of scopes besides the fault's
        target that missed their objective), all NaN for a variant without that fault.
    summary : pandas.DataFrame
        Every variant's :meth:`Result.summary`, indexed by (``variant``, ``scope``).
    health : pandas.DataFrame
        Every variant's :func:`meshsim.cascade.health`, with a first column ``variant``.
    cascade : pandas.DataFrame
        Every variant's :func:`meshsim.cascade.cascade`, indexed by (``variant``, ``fault``).
    faults : pandas.DataFrame
        Every variant's :func:`meshsim.cascade.fault_windows`, with a first column ``variant``.
    """

    seed: int
    results: dict[str, Result]
    table: pd.DataFrame
    summary: pd.DataFrame
    health: pd.DataFrame
    cascade: pd.DataFrame
    faults: pd.DataFrame

    @property
    def variants(self) -> list[str]:
        """The variants' names, in the order compared."""
        return list(self.results)

    @property
    def events(self) -> pd.DataFrame:
        """Every variant's :attr:`Result.events`, with a first column ``variant``."""
        return _stack({n: r.events for n, r in self.results.items()})


def compare(
    scenario_or_paths: ScenarioLike | Sequence[ScenarioLike],
    *,
    variants: Sequence[str] | None = None,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    interval: float = 1.0,
) -> Comparison:
    """Run variants of a scenario on common random numbers and put their figures side by side.

    Parameters
    ----------
    scenario_or_paths : Scenario, path, or a sequence of them
        One scenario: its baseline (``baseline``, the scenario as written) and each of its
        ``variants``. Several: one variant each, named by the file's stem (a loaded scenario
        by its ``name``; a repeated name gets ``-2``, ``-3``, ...).
    variants : sequence of str, optional
        Of one scenario, only these variants, in this order (``baseline`` among them if
        wanted). Not allowed with several scenarios.
    seed : int, optional
        The seed of every variant; defaults to the (first) scenario's ``seed``.
    overrides : mapping, optional
        Values to replace by dotted path in every variant, after its own changes (e.g.
        ``{"duration": "60s"}``).
    interval : float
        Window of the health time series, in seconds.

    Returns
    -------
    Comparison

    Raises
    ------
    ScenarioError
        If a file, a variant or an override is invalid, or a variant name is unknown.
    ValueError
        If ``variants`` is given with several scenarios, or nothing to compare.
    """
    named = variant_scenarios(scenario_or_paths, variants=variants, overrides=overrides)
    return run_variants(named, seed=seed, interval=interval)


def run_variants(
    named: Mapping[str, Scenario],
    *,
    seed: int | None = None,
    interval: float = 1.0,
    progress: Callable[[str, float], None] | None = None,
) -> Comparison:
    """Run scenarios by variant name, all with the same seed, and compare them.

    Parameters
    ----------
    named : mapping of str to Scenario
        The variants, in order (as :func:`variant_scenarios` gives them).
    seed : int, optional
        The seed of every variant; defaults to the first scenario's ``seed``.
    interval : float
        Window of the health time series, in seconds.
    progress : callable, optional
        Called with a variant's name and its simulated time (seconds) during its run.

    Returns
    -------
    Comparison
    """
    from . import run

    if seed is None:
        seed = next(iter(named.values())).seed
    results = {}
    for name, scenario in named.items():
        tick = None if progress is None else partial(progress, name)
        results[name] = run(scenario, seed=seed, progress=tick)
    return from_results(results, seed=seed, interval=interval)


def variant_scenarios(
    scenario_or_paths: ScenarioLike | Sequence[ScenarioLike],
    *,
    variants: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    source: str = "overrides",
) -> dict[str, Scenario]:
    """The scenarios :func:`compare` runs, by variant name, without running them.

    ``source`` names the overrides in error messages (``--set`` for the command line).

    Raises
    ------
    ScenarioError
        As :func:`compare`.
    """
    items = _as_list(scenario_or_paths)
    if len(items) == 1:
        where, scenario = _load(items[0])
        named = _own_variants(scenario, where, variants)
    else:
        if variants:
            raise ValueError("variants are chosen among those of one scenario; with several "
                             "scenarios each is a variant")
        named = {}
        for item in items:
            where, scenario = _load(item)
            stem = Path(where).stem if not isinstance(item, Scenario) else scenario.name
            named[_unique(stem, named)] = scenario.variant(BASELINE)
    if overrides:
        named = {name: sc.with_overrides(overrides, source) for name, sc in named.items()}
    return named


def from_results(results: Mapping[str, Result], *, seed: int, interval: float = 1.0,
                 ) -> Comparison:
    """A :class:`Comparison` of runs already made (with the same ``seed``, for it to be fair)."""
    summaries = {name: r.summary() for name, r in results.items()}
    cascades = {name: cascade_metrics.cascade(r) for name, r in results.items()}
    return Comparison(
        seed=seed,
        results=dict(results),
        table=_table(summaries, cascades),
        summary=pd.concat(summaries, names=["variant"]),
        health=_stack({n: cascade_metrics.health(r, interval) for n, r in results.items()}),
        cascade=pd.concat(cascades, names=["variant"]),
        faults=_stack({n: cascade_metrics.fault_windows(r.scenario) for n, r in results.items()}),
    )


# --- the table ---------------------------------------------------------------------------------


def _table(summaries: dict[str, pd.DataFrame], cascades: dict[str, pd.DataFrame]) -> pd.DataFrame:
    columns = {name: headline(summary, cascades[name]) for name, summary in summaries.items()}
    table = pd.DataFrame(columns, dtype="float64")
    table.index.name = "metric"
    table.columns.name = "variant"
    return table


def headline(summary: pd.DataFrame, cascade: pd.DataFrame) -> dict[str, float]:
    """The headline and per-fault figures of one run, by metric name (a column of
    :attr:`Comparison.table`, a row of a sweep).

    Parameters
    ----------
    summary, cascade : pandas.DataFrame
        The run's :meth:`Result.summary` and :meth:`Result.cascade`.
    """
    e2e = summary.loc[END_TO_END]
    callees = summary.drop(index=[s for s in summary.index
                                  if s == END_TO_END or str(s).startswith("client:")])
    column = {metric: float(e2e.get(metric, np.nan)) for metric in HEADLINE}
    # Work is wasted at every callee a caller gave up on: the cost of the whole chain.
    column["wasted_work"] = float(callees["wasted_work"].sum()) if len(callees) else 0.0
    for fault, row in cascade.iterrows():
        column[f"{fault}: time_to_detect"] = float(row["time_to_detect"])
        column[f"{fault}: time_to_recover"] = float(row["time_to_recover"])
        # The cascade lists the scopes hit; the table counts them.
        hit = str(row["blast_radius"])
        column[f"{fault}: blast_radius"] = float(len(hit.split(",")) if hit else 0)
    return column


def unit(metric: str) -> str:
    """The unit a row of :attr:`Comparison.table` is shown in (``%``, ``ms``, ``s``, ...)."""
    if metric in HEADLINE:
        return HEADLINE[metric]
    return PER_FAULT[metric.rsplit(": ", 1)[-1]]


def format_value(metric: str, value: float) -> str:
    """One cell of the printed table: ``never`` for an infinite time, ``-`` for no value,
    rates as %, latencies in ms, other times in s."""
    if value != value:
        return "-"
    if math.isinf(value):
        return "never"
    kind = unit(metric)
    if kind == "yes/no":
        return "yes" if value else "no"
    if kind == "count":
        return f"{value:.0f}"
    if kind == "%":
        return f"{100 * value:.2f}%"
    if kind == "ms":
        return f"{1000 * value:.1f} ms"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "/s":
        return f"{value:.1f}/s"
    return f"{value:.1f} {kind}"


def format_table(comparison: Comparison, wall: float | None = None) -> str:
    """The table as ``meshsim compare`` prints it: a heading line, then one row per metric and
    one column per variant."""
    table = comparison.table
    first = next(iter(comparison.results.values())).scenario
    heading = (f"{len(table.columns)} variants, {first.duration:g}s simulated "
               f"(warm-up {first.warmup:g}s), seed {comparison.seed}"
               + (f", {wall:.2f}s wall" if wall is not None else ""))
    cells = [[format_value(str(m), v) for v in row] for m, row in table.iterrows()]
    labels = [str(m) for m in table.index]
    names = [str(c) for c in table.columns]
    left = max([len("metric"), *map(len, labels)])
    widths = [max([len(n), *(len(r[j]) for r in cells)]) for j, n in enumerate(names)]
    lines = [heading, "", "  ".join(["metric".ljust(left), *(n.rjust(w) for n, w in
                                                             zip(names, widths, strict=True))])]
    for label, row in zip(labels, cells, strict=True):
        lines.append("  ".join([label.ljust(left), *(c.rjust(w) for c, w in
                                                     zip(row, widths, strict=True))]))
    return "\n".join(lines)


# --- helpers -----------------------------------------------------------------------------------


def _as_list(x: ScenarioLike | Sequence[ScenarioLike]) -> list[ScenarioLike]:
    if isinstance(x, Scenario | str | os.PathLike):
        return [x]
    items = list(x)
    if not items:
        raise ValueError("nothing to compare: give a scenario or at least one file")
    return items


def _load(item: ScenarioLike) -> tuple[str, Scenario]:
    if isinstance(item, Scenario):
        return "variants", item
    return str(item), load_scenario(item)


def _own_variants(scenario: Scenario, source: str, chosen: Sequence[str] | None,
                  ) -> dict[str, Scenario]:
    names = list(chosen) if chosen else [BASELINE, *scenario.variants]
    known = {BASELINE, *scenario.variants}
    unknown = [n for n in dict.fromkeys(names) if n not in known]
    if unknown:
        raise ScenarioError(source, [Issue(("variants", n), unknown_name(n, known, "variant"))
                                     for n in unknown])
    return {name: scenario.variant(name) for name in dict.fromkeys(names)}


def _unique(name: str, taken: Mapping[str, Any]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _stack(frames: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Frames of the variants one under the other, with a first column ``variant``."""
    parts = [f.assign(variant=name)[["variant", *f.columns]] for name, f in frames.items()]
    return pd.concat(parts, ignore_index=True)
