"""Search a scenario's policy settings for the best ones (``meshsim tune``), with Optuna.

A *trial* is one setting of the tuned paths. Each trial runs every chosen variant (the fault
conditions the setting must survive) ``replications`` times through :func:`meshsim.evaluate`,
with the same seeds for every trial (common random numbers), so two trials differ by their
settings and not by luck. A trial's value is the replication mean of the objective in its
*worst* variant, and a constraint holds when its replication mean holds in *every* variant:
the setting found is the one that does best where it does worst.

Trial 0 is the scenario as written (the reference); the search never reports a setting that
does not beat it. Optuna's TPE sampler is seeded from ``seed``, so the same call gives the same
trials. Optuna is an optional dependency (``pip install 'meshsim[tune]'``): importing meshsim
does not import it.

The best of many noisy trials looks better on the seeds it was picked on than it is; re-run it
and the reference on fresh seeds (another ``seed``) before trusting the gap.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from .errors import Issue, ScenarioError, unknown_name
from .scenario import BASELINE, Scenario, load_scenario, parse_path
from .tune_space import (
    INSTALL_HINT,
    PER_FAULT_MINIMIZE,
    Constraint,
    Param,
    TuneError,
    default_direction,
    metric_name,
    parse_constraint,
    parse_param,
)

__all__ = [
    "Constraint",
    "Param",
    "TuneError",
    "TuneResult",
    "format_report",
    "parse_constraint",
    "parse_param",
    "snippet_resources",
    "tune",
    "write_tune",
]

# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found.

    Attributes
    ----------
    best_params : dict
        The best setting, ``{path: value}`` (durations in seconds), feasible in every variant;
        the reference's own values when no trial beat it; empty when nothing was feasible.
    best_value : float
        Its objective: the replication mean in its worst variant (NaN when nothing was
        feasible). Picked as the best of many, it is optimistic: confirm on fresh seeds.
    best_trial : int
        The trial it comes from (0: the scenario as written; -1: nothing feasible).
    reference : dict
        The scenario as written (trial 0): ``value`` (the objective as above), ``feasible``,
        ``params`` (the tuned paths' values in the scenario; None when unset) and
        ``constraints`` (``{constraint text: True/False}``, on the replication mean in every
        variant).
    trials : pandas.DataFrame
        One row per trial, in order: ``trial`` (0 = reference), one column per tuned path
        (the value used; NaN/None for a path the scenario leaves unset), ``value``,
        ``worst_variant`` (where the objective was worst), ``feasible`` (bool), ``violation``
        (sum over constraints of the relative distance to the bound in the worst variant;
        0 when feasible), and per constraint ``"<text>"`` (bool).
    runs : pandas.DataFrame
        :func:`meshsim.evaluate`'s tidy frame for every trial: ``trial`` in place of
        ``point``, then ``variant``, the path columns, ``replication``, ``seed`` and the
        metrics.
    snippet : str
        YAML of the ``DestinationRule`` / ``VirtualService`` (and ``Sidecar``) resources that
        carry the tuned paths, as ``meshsim export istio`` writes them, with the best values.
        Tuned paths no Istio resource carries are listed in a comment.
    scenario : Scenario
        The scenario with ``overrides`` and then the best values applied.
    objective, direction : str
        The metric and which way is better.
    constraints : tuple of Constraint
    """

    best_params: dict[str, Any]
    best_value: float
    best_trial: int
    reference: dict[str, Any]
    trials: pd.DataFrame
    runs: pd.DataFrame
    snippet: str
    scenario: Scenario
    objective: str
    direction: str
    constraints: tuple[Constraint, ...]


def tune(
    scenario: Scenario | str | os.PathLike,
    params: Mapping[str, Any] | Sequence[Param],
    *,
    objective: str = "goodput",
    direction: str | None = None,
    constraints: Sequence[str | Constraint] = (),
    variants: Sequence[str] | None = None,
    replications: int = 3,
    n_trials: int = 30,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    batch_size: int = 4,
    executor: Any = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | bool | None = None,
    namespace: str = "default",
) -> TuneResult:
    """Search policy settings for the best objective under constraints, across variants.

    Parameters
    ----------
    scenario : Scenario or path
    params : mapping or sequence of Param
        ``{path: (low, high)}`` (an int range when both ends are ints, a duration range for
        ``("100ms", "2s")``), ``{path: [choice, ...]}``, or ``{path: {"low": .., "high": ..,
        "log": True}}`` for ranges over orders of magnitude.
    objective : str
        A metric of :func:`meshsim.evaluate`'s frame (``goodput``, ``success_rate``,
        ``latency_p99`` or ``p99``, ``wasted_work``, ...).
    direction : {"maximize", "minimize"}, optional
        Inferred from the objective: up for goodput, success rate and ``slo_met``, down for
        latencies, waste, amplification and fault times.
    constraints : sequence of str
        ``"p99<300ms"``, ``"success_rate>=99.9%"``, ...: each must hold on the replication
        mean in every variant.
    variants : sequence of str, optional
        The scenario's variants each setting must do well in (default ``["baseline"]``, the
        scenario as written). The objective is that of the worst one.
    replications : int
        Runs per setting and variant; replication ``r`` has the same seed for every setting.
    n_trials : int
        Settings searched, besides the reference (trial 0).
    seed : int, optional
        Root seed of the runs and of the sampler (default: the scenario's ``seed``).
    overrides : mapping, optional
        Applied to every run, after the variant and before the trial's values (e.g. a shorter
        ``duration``).
    batch_size : int
        Trials evaluated together (in parallel). The trials depend on it; they do not depend on
        ``executor`` or ``workers``.
    executor, workers
        As :func:`meshsim.evaluate`.
    progress : callable or bool, optional
        Called with (trials done, trials in all), or True for a tqdm bar.
    namespace : str
        Kubernetes namespace of the snippet's resources.

    Returns
    -------
    TuneResult

    Raises
    ------
    ScenarioError
        If the scenario, an override, a tuned path or an end of its range is invalid (with a
        suggestion for a misspelt path).
    TuneError
        If the objective, a constraint or a range is invalid, or a variant is unknown.
    ImportError
        If Optuna is not installed.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    specs = _params(params)
    chosen = list(dict.fromkeys(variants or [BASELINE]))
    unknown = [v for v in chosen if v != BASELINE and v not in sc.variants]
    if unknown:
        raise TuneError(unknown_name(unknown[0], {BASELINE, *sc.variants}, "variant"))
    faults = sorted({f.label for v in chosen for f in sc.variant(v).faults})
    metric = metric_name(objective, faults)
    direction = direction or default_direction(metric)
    if direction not in ("maximize", "minimize"):
        raise TuneError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    cons = tuple(c if isinstance(c, Constraint) else parse_constraint(c, faults)
                 for c in constraints)
    if replications < 1 or n_trials < 0 or batch_size < 1:
        raise TuneError("replications and batch_size must be at least 1, n_trials at least 0")
    overrides = dict(overrides or {})
    _check_params(sc, specs, overrides, chosen)
    optuna = _optuna()
    seed = sc.seed if seed is None else seed
    scoring = _Scoring(metric, direction, cons)

    def evaluate(points: list[dict[str, Any]]) -> pd.DataFrame:
        from .sweep import evaluate as run_points

        return run_points(sc, points, replications=replications, seed=seed, variants=chosen,
                          overrides=overrides, executor=pool, workers=workers)

    tick = _progress(progress, n_trials + 1)
    with _quiet_optuna(optuna), _one_pool(executor, workers) as pool:
        study = optuna.create_study(direction=direction, sampler=_sampler(optuna, seed))
        reference_params = {p.path: _value_at(sc.with_overrides(overrides), p.path)
                            for p in specs}
        frames = [evaluate([{}]).assign(point=0)]
        rows = [scoring.row(0, reference_params, frames[0])]
        _tell_reference(optuna, study, specs, reference_params, rows[0])
        tick(1)
        done = 0
        while done < n_trials:
            asked = [study.ask() for _ in range(min(batch_size, n_trials - done))]
            points = [{p.path: p.suggest(t) for p in specs} for t in asked]
            frame = evaluate(points)
            for i, (trial, point) in enumerate(zip(asked, points, strict=True)):
                own = frame[frame["point"] == i].assign(point=len(rows))
                row = scoring.row(len(rows), point, own)
                frames.append(own)
                rows.append(row)
                _tell(study, trial, row)
            done += len(asked)
            tick(done + 1)
    trials = pd.DataFrame(rows)
    runs = pd.concat(frames, ignore_index=True).rename(columns={"point": "trial"})
    return _result(sc, specs, overrides, trials, runs, scoring, namespace)


def _params(params: Mapping[str, Any] | Sequence[Param]) -> list[Param]:
    if isinstance(params, Mapping):
        specs = [parse_param(path, spec) for path, spec in params.items()]
    else:
        specs = list(params)
    if not specs:
        raise TuneError("nothing to tune: give at least one parameter")
    paths = [p.path for p in specs]
    if len(set(paths)) != len(paths):
        raise TuneError(f"a path is tuned twice: {paths}")
    return specs


def _check_params(sc: Scenario, specs: list[Param], overrides: dict[str, Any],
                  variants: list[str]) -> None:
    """Every tuned path exists and takes both ends of its range, in every variant, before any
    run (the errors of :meth:`Scenario.with_overrides`, with suggestions)."""
    for p in specs:
        for value in p.ends():
            for name in variants:
                try:
                    sc.variant(name).with_overrides({**overrides, p.path: value},
                                                    source="--param")
                except ScenarioError as err:
                    shown = _show(p, value)
                    raise ScenarioError("--param", [
                        Issue(i.path, f"{i.message} (tried {shown}"
                              + (f" in variant {name!r})" if name != BASELINE else ")"))
                        for i in err.issues]) from None


def _show(p: Param, value: Any) -> str:
    if p.kind == "duration":
        from .export import istio_duration

        return istio_duration(value)
    return str(value)


def _value_at(sc: Scenario, path: str) -> Any:
    """The value at ``path`` in the scenario (durations in seconds); None when unset."""
    node: Any = sc.model_dump(by_alias=True, exclude_none=True)
    for key in parse_path(path):
        inside = key in node if isinstance(node, dict) else (
            isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node))
        if not inside:
            return None
        node = node[key]
    return node


class _Scoring:
    """Turns a trial's runs into its row: the objective in its worst variant, constraints in
    every variant."""

    def __init__(self, metric: str, direction: str, constraints: tuple[Constraint, ...]):
        self.metric = metric
        self.direction = direction
        self.constraints = constraints

    def row(self, number: int, params: dict[str, Any], runs: pd.DataFrame) -> dict[str, Any]:
        means = runs.groupby("variant", sort=False).mean(numeric_only=True)
        objective = means[self.metric].astype(float)
        if objective.isna().any():
            worst_variant, value = objective[objective.isna()].index[0], math.nan
        else:
            worst_variant = (objective.idxmin() if self.direction == "maximize"
                             else objective.idxmax())
            value = float(objective[worst_variant])
        verdicts, violation = {}, 0.0
        for c in self.constraints:
            worst = c.worst([float(v) for v in means[c.metric]])
            verdicts[c.text] = c.holds(worst)
            violation += c.violation(worst)
        return {"trial": number, **params, "value": value, "worst_variant": worst_variant,
                "feasible": value == value and all(verdicts.values()),
                "violation": violation, **verdicts}

    def better(self, a: float, b: float) -> bool:
        return a > b if self.direction == "maximize" else a < b


def _tell(study: Any, trial: Any, row: dict[str, Any]) -> None:
    from optuna.trial import TrialState

    _set_constraint(trial, row["violation"])
    if row["value"] != row["value"]:
        study.tell(trial, state=TrialState.FAIL)
    else:
        study.tell(trial, row["value"])


def _set_constraint(trial: Any, violation: float) -> None:
    # Optuna >= 5 reads constraints set on the trial; older ones call constraints_func, which
    # reads them back from the user attributes.
    if hasattr(trial, "set_constraint"):
        trial.set_constraint("violation", violation)
    else:  # pragma: no cover - Optuna < 5
        trial.set_user_attr("violation", violation)


def _tell_reference(optuna: Any, study: Any, specs: list[Param], params: dict[str, Any],
                    row: dict[str, Any]) -> None:
    """Tell the sampler how the scenario as written did, when its values are in the space."""
    internal = {p.path: p.internal(params[p.path]) for p in specs}
    if row["value"] != row["value"] or any(v is None for v in internal.values()):
        return
    kwargs: dict[str, Any] = {"params": internal, "value": row["value"],
                              "distributions": {p.path: p.distribution() for p in specs}}
    if hasattr(optuna.trial.FrozenTrial, "set_constraint"):
        kwargs["constraints"] = {"violation": row["violation"]}
    else:  # pragma: no cover - Optuna < 5 keeps a trial's constraints in this system attribute
        kwargs["system_attrs"] = {"constraints": (row["violation"],)}
    study.add_trial(optuna.trial.create_trial(**kwargs))


def _sampler(optuna: Any, seed: int) -> Any:
    kwargs: dict[str, Any] = {"seed": seed, "constant_liar": True}
    if not hasattr(optuna.trial.Trial, "set_constraint"):  # pragma: no cover - Optuna < 5
        kwargs["constraints_func"] = lambda t: (t.user_attrs.get("violation", 0.0),)
    return optuna.samplers.TPESampler(**kwargs)


@contextlib.contextmanager
def _one_pool(executor: Any, workers: int | None) -> Iterator[Any]:
    """The executor every batch runs on: one process pool (or Dask client) for the whole
    search rather than one per batch, shut down after if started here."""
    from concurrent.futures import Executor

    from .sweep import executor_pool

    n = workers or os.cpu_count() or 1
    if executor == "serial" or isinstance(executor, Executor) or (
            executor in (None, "processes") and n == 1):
        yield executor
        return
    with executor_pool(executor, n) as pool:
        yield pool


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return optuna


class _quiet_optuna:  # noqa: N801 - a context manager used like a function
    """Optuna logs every trial at INFO and warns about experimental features; tune reports
    on its own. Restores Optuna's verbosity after."""

    def __init__(self, optuna: Any):
        self.optuna = optuna
        self.warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        self.level = self.optuna.logging.get_verbosity()
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)
        self.warnings.__enter__()
        warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)

    def __exit__(self, *exc: Any) -> None:
        self.warnings.__exit__(*exc)
        self.optuna.logging.set_verbosity(self.level)


def _progress(progress: Callable[[int, int], None] | bool | None, total: int,
              ) -> Callable[[int], None]:
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return lambda done: None
        bar = tqdm(total=total, unit="trial")

        def tick(done: int) -> None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return tick
    if callable(progress):
        return lambda done: progress(done, total)
    return lambda done: None


# --------------------------------------------------------------------------------------------
# The result and its snippet
# --------------------------------------------------------------------------------------------


def _result(sc: Scenario, specs: list[Param], overrides: dict[str, Any], trials: pd.DataFrame,
            runs: pd.DataFrame, scoring: _Scoring, namespace: str) -> TuneResult:
    best = -1
    for i, row in trials.iterrows():
        # Ties go to the earlier trial: the reference unless something is strictly better.
        if row["feasible"] and (best < 0 or scoring.better(row["value"],
                                                           trials.loc[best, "value"])):
            best = int(i)
    ref = trials.iloc[0]
    reference = {"value": float(ref["value"]), "feasible": bool(ref["feasible"]),
                 "params": {p.path: _none(ref[p.path]) for p in specs},
                 "constraints": {c.text: bool(ref[c.text]) for c in scoring.constraints}}
    base = sc.with_overrides(overrides) if overrides else sc
    if best < 0:
        best_params: dict[str, Any] = {}
        tuned, value, snippet = base, math.nan, "# no setting met every constraint\n"
    else:
        row = trials.loc[best]
        best_params = {p.path: _none(row[p.path]) for p in specs}
        set_params = {k: v for k, v in best_params.items() if v is not None}
        tuned = base.with_overrides(set_params, source="best") if set_params else base
        value = float(row["value"])
        snippet = _snippet(tuned, specs, best_params, namespace, int(row["trial"]))
    return TuneResult(best_params=best_params, best_value=value, best_trial=int(
        trials.loc[best, "trial"]) if best >= 0 else -1, reference=reference, trials=trials,
        runs=runs, snippet=snippet, scenario=tuned, objective=scoring.metric,
        direction=scoring.direction, constraints=scoring.constraints)


def _none(x: Any) -> Any:
    return None if x is None or (isinstance(x, float) and x != x) else _plain(x)


def _plain(x: Any) -> Any:
    return x.item() if isinstance(x, np.generic) else x


def _snippet(tuned: Scenario, specs: list[Param], best: dict[str, Any], namespace: str,
             trial: int) -> str:
    """The exported resources the tuned paths fall in, with a comment naming the values."""
    from .export import SOURCE_ANNOTATION, istio_manifests, manifests_yaml

    manifests = istio_manifests(tuned, namespace)
    kept, carried = [], set()
    for m in manifests:
        source = m["metadata"]["annotations"][SOURCE_ANNOTATION]
        mine = [p.path for p in specs if p.path == source or p.path.startswith(
            (source + ".", source + "["))]
        if mine and m["kind"] in ("DestinationRule", "VirtualService", "Sidecar"):
            kept.append(m)
            carried.update(mine)
    origin = "the scenario as written" if trial == 0 else f"trial {trial}"
    lines = [f"# meshsim tune: best setting ({origin})"]
    lines += [f"#   {p.path} = {_show(p, best[p.path]) if best[p.path] is not None else 'unset'}"
              for p in specs]
    others = [p.path for p in specs if p.path not in carried]
    if others:
        lines.append("# not carried by an Istio resource (set them where they live):")
        lines += [f"#   {path}" for path in others]
    return "\n".join(lines) + "\n" + manifests_yaml(kept)


def format_report(result: TuneResult) -> str:
    """The report ``meshsim tune`` prints: the reference, the best setting with its figures
    (replication means per variant), and the snippet."""
    metrics = list(dict.fromkeys([result.objective, *(c.metric for c in result.constraints)]))
    runs = result.runs
    variants = list(dict.fromkeys(runs["variant"]))
    n_trials = len(result.trials) - 1
    reps = int(runs["replication"].max()) + 1
    lines = [f"{n_trials} trials + the scenario as written, {len(variants)} variant(s) x "
             f"{reps} replication(s) each; objective: {result.direction} {result.objective}"
             + (" in the worst variant" if len(variants) > 1 else "")]
    if result.constraints:
        lines.append("constraints (replication mean, every variant): "
                     + ", ".join(c.text for c in result.constraints))
    feasible = int(result.trials["feasible"].sum())
    lines.append(f"feasible trials: {feasible} of {len(result.trials)}")
    lines.append("")
    shown = [(0, "reference (as written)")]
    if result.best_trial > 0:
        shown.append((result.best_trial, f"best (trial {result.best_trial})"))
    width = max(len(v) for v in variants)
    for trial, title in shown:
        row = result.trials.loc[result.trials["trial"] == trial].iloc[0]
        lines.append(f"{title}: {result.objective} {_fmt(result.objective, row['value'])}, "
                     + ("constraints met" if row["feasible"] else "constraints NOT met"))
        for path in result.reference["params"]:
            value = _none(row[path])
            lines.append(f"  {path} = {'unset' if value is None else value}")
        means = runs[runs["trial"] == trial].groupby("variant", sort=False).mean(
            numeric_only=True)
        for v in variants:
            lines.append(f"  {v:<{width}}  " + "  ".join(
                f"{m} {_fmt(m, means.loc[v, m])}" for m in metrics))
        lines.append("")
    if result.best_trial < 0:
        lines += ["no setting met every constraint, the scenario as written included", ""]
    elif result.best_trial == 0:
        lines += ["no trial beat the scenario as written", ""]
    lines.append(result.snippet.rstrip("\n"))
    return "\n".join(lines)


def _fmt(metric: str, value: float) -> str:
    from .compare import HEADLINE, format_value

    if metric in HEADLINE or metric.rsplit(": ", 1)[-1] in PER_FAULT_MINIMIZE:
        return format_value(metric, value)
    if metric.startswith("latency_"):
        return format_value("latency_p99", value)
    return f"{value:.4g}"


#: The file a tune output directory always holds; it marks the directory as meshsim's.
TUNE_MARKER = "best.yaml"


def write_tune(result: TuneResult, out: str | os.PathLike) -> Path:
    """Write ``trials.csv``, ``runs.csv`` and ``best.yaml`` (the snippet) into directory
    ``out``, all or nothing.

    Raises
    ------
    meshsim.output.OutputError
        If ``out`` exists with foreign content or cannot be written.
    """
    from .output import atomic_dir

    def fill(tmp: Path) -> None:
        result.trials.to_csv(tmp / "trials.csv", index=False)
        result.runs.to_csv(tmp / "runs.csv", index=False)
        (tmp / TUNE_MARKER).write_text(result.snippet, encoding="utf-8")

    return atomic_dir(out, fill, marker=TUNE_MARKER)


def snippet_resources(snippet: str) -> list[dict[str, Any]]:
    """The resources of a snippet (its YAML documents), e.g. to validate them."""
    return [doc for doc in yaml.safe_load_all(snippet) if doc]
