"""Parameter sweeps: many runs of one scenario over a design of overrides, with replications,
on local processes or a Dask cluster, resumable from an output directory.

A sweep is a list of *tasks*, one per point × variant × replication. Each task is a scenario
(resolved and checked here, before anything runs) and a seed; its row of results depends on
nothing else, so the frame a sweep returns is the same whatever runs the tasks, in whatever
order, and however they are batched. Seeds come from ``numpy.random.SeedSequence(seed).spawn``:
replication ``r`` of every point gets the same seed, so points are compared on common random
numbers, and replications are independent streams.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from . import output
from .compare import headline
from .metrics import END_TO_END
from .scenario import BASELINE, Scenario, load_scenario

__all__ = ["KEYS", "METRICS", "Task", "design_points", "evaluate", "executor_pool", "run_task",
           "sweep", "sweep_summary"]

#: Columns that identify a row, before the parameters: the point, the variant.
KEYS = ("point", "variant")
#: The metric columns every row has, in order (end to end, after warm-up); per-fault columns
#: ``<fault>: time_to_detect``, ``...: time_to_recover``, ``...: blast_radius`` follow.
METRICS = ("requests", "success_rate", "goodput", "latency_mean", "latency_p50", "latency_p90",
           "latency_p99", "in_flight_at_end", "amplification", "wasted_work", "slo_met")
#: Seconds of simulation a batch of tasks should carry at least: less, and the cost of
#: shipping a task to a worker shows; more, and the last batches leave workers idle.
BATCH_SECONDS = 0.5
#: The file that marks a directory a sweep wrote, and says which sweep.
SWEEP_MARKER = "sweep.yaml"

ScenarioLike = Scenario | str | os.PathLike


@dataclass(frozen=True)
class Task:
    """One run of a sweep: a resolved scenario and its seed, and where its row goes."""

    point: int
    variant: str
    values: tuple[tuple[str, Any], ...]
    replication: int
    seed: int
    scenario: Scenario

    @property
    def key(self) -> tuple[int, str, int]:
        return self.point, self.variant, self.replication


# --- the design ------------------------------------------------------------------------------


def design_points(
    grid: Mapping[str, Sequence[Any]] | None = None,
    samples: Mapping[str, tuple[Any, Any]] | None = None,
    n_samples: int | None = None,
    design: str = "lhs",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The points of a sweep, each a ``{path: value}`` dict, in a fixed order.

    ``grid`` gives the cartesian product of its value lists (the last path varies fastest).
    ``samples`` gives ``n_samples`` points drawn over ``(low, high)`` ranges: a Latin hypercube
    (``design="lhs"``: each range cut in ``n_samples`` equal strata, one point per stratum, strata
    paired at random) or independent uniform draws (``"random"``); a range whose ends are both
    integers gives integers. Both together: every sampled point with every grid point.
    """
    grid_points: list[dict[str, Any]] = [{}]
    if grid:
        for path, values in grid.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
                raise ValueError(f"grid {path}: expected a non-empty list of values")
        paths = list(grid)
        grid_points = [dict(zip(paths, combo, strict=True))
                       for combo in itertools.product(*(grid[p] for p in paths))]
    if not samples:
        return grid_points
    if not n_samples or n_samples < 1:
        raise ValueError("n_samples: give the number of points to sample (at least 1)")
    if design not in ("lhs", "random"):
        raise ValueError(f"design: expected 'lhs' or 'random', got {design!r}")
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0])
    columns = {}
    for path, bounds in samples.items():
        try:
            low, high = bounds
        except (TypeError, ValueError):
            raise ValueError(f"samples {path}: expected [low, high], got {bounds!r}") from None
        if not high > low:
            raise ValueError(f"samples {path}: high must exceed low, got {bounds!r}")
        if design == "lhs":
            u = (rng.permutation(n_samples) + rng.random(n_samples)) / n_samples
        else:
            u = rng.random(n_samples)
        if _is_int(low) and _is_int(high):
            # Integers: the strata of [low, high + 1), so each integer is as likely.
            columns[path] = [int(low + math.floor(x * (high - low + 1))) for x in u]
        else:
            columns[path] = [float(low + x * (high - low)) for x in u]
    sampled = [{p: columns[p][i] for p in samples} for i in range(n_samples)]
    return [{**s, **g} for s in sampled for g in grid_points]


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


# --- running -------------------------------------------------------------------------------------


def sweep(
    scenario: ScenarioLike,
    grid: Mapping[str, Sequence[Any]] | None = None,
    samples: Mapping[str, tuple[Any, Any]] | None = None,
    *,
    n_samples: int | None = None,
    design: str = "lhs",
    replications: int = 1,
    seed: int | None = None,
    variants: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    executor: Any = None,
    workers: int | None = None,
    out: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | bool | None = None,
) -> pd.DataFrame:
    """Run a scenario over a design of parameter values, each point ``replications`` times.

    Parameters
    ----------
    scenario : Scenario or path
    grid, samples, n_samples, design
        The points: see :func:`design_points`. Paths are as ``--set`` takes them
        (``mesh.destinationRules.cart.trafficPolicy.outlierDetection.consecutive5xxErrors``).
    replications : int
        Runs per point and variant, on independent seeds.
    seed : int, optional
        Root of every seed (and of the sampled design); default the scenario's ``seed``.
    variants : list of str, optional
        The scenario's variants to run each point in (``baseline`` is the scenario as
        written); default ``["baseline"]``.
    overrides : mapping, optional
        Changes for every run: after the variant's own, before the point's values.
    executor
        ``None`` or ``"processes"`` (local processes, the default), ``"serial"`` (this
        process), ``"dask"`` (a Dask ``LocalCluster`` on 127.0.0.1, ``pip install
        'meshsim[dask]'``), an address ``"tcp://host:8786"`` or a ``distributed.Client`` (an
        existing cluster), or any ``concurrent.futures.Executor``.
    workers : int, optional
        Processes (or Dask workers) to start; default the CPU count. 1 runs serially.
    out : path, optional
        A directory where each finished batch is written at once, with the sweep's spec and
        the resolved scenario: a sweep started again with the same spec skips what is there.
    progress : callable or bool, optional
        ``progress(done, total)`` after each batch (tasks), or True for a tqdm bar.

    Returns
    -------
    pandas.DataFrame
        One row per point × variant × replication, sorted by them: ``point``, ``variant``,
        one column per parameter (its path), ``replication``, ``seed``, then :data:`METRICS`
        and the per-fault columns. ``meshsim.run(scenario.variant(v).with_overrides({...}),
        seed=row.seed)`` gives the run of any row again.
    """
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    root = sc.seed if seed is None else seed
    points = design_points(grid, samples, n_samples, design, root)
    spec = {
        "grid": _plain(grid), "samples": _plain(samples), "nSamples": n_samples,
        "design": design if samples else None, "replications": replications, "seed": root,
        "variants": list(variants or [BASELINE]), "overrides": _plain(overrides),
    }
    return evaluate(sc, points, replications=replications, seed=root, variants=variants,
                    overrides=overrides, executor=executor, workers=workers, out=out,
                    progress=progress, spec=spec)


def evaluate(
    scenario: ScenarioLike,
    points: Sequence[Mapping[str, Any]],
    *,
    replications: int = 1,
    seed: int | None = None,
    variants: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    executor: Any = None,
    workers: int | None = None,
    out: str | os.PathLike | None = None,
    progress: Callable[[int, int], None] | bool | None = None,
    spec: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Run given points (``{path: value}`` dicts): :func:`sweep` without the design.

    ``point`` in the result is the index in ``points``. ``spec`` is what ``out`` records as
    the sweep's identity (default: the points themselves).
    """
    if replications < 1:
        raise ValueError(f"replications must be at least 1, got {replications}")
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    root = sc.seed if seed is None else seed
    tasks = _tasks(sc, points, replications, root, variants or [BASELINE], overrides or {})
    params = list(dict.fromkeys(p for point in points for p in point))
    done: dict[tuple[int, str, int], dict[str, Any]] = {}
    store = None
    if out is not None:
        spec = dict(spec) if spec is not None else {
            "points": _plain(list(points)), "replications": replications, "seed": root,
            "variants": list(variants or [BASELINE]), "overrides": _plain(overrides)}
        store = _Store(Path(out), spec, sc)
        done = store.load()
    todo = [t for t in tasks if t.key not in done]
    report = _progress(progress, len(tasks))
    report(len(tasks) - len(todo))
    for rows in _execute(todo, executor, workers):
        if store is not None:
            store.save(rows)
        for row in rows:
            done[(row["point"], row["variant"], row["replication"])] = row
        report(len(done))
    frame = _frame([done[t.key] for t in tasks], params)
    if store is not None:
        store.finish(frame)
    return frame


def _tasks(sc: Scenario, points: Sequence[Mapping[str, Any]], replications: int, root: int,
           variants: Sequence[str], overrides: Mapping[str, Any]) -> list[Task]:
    """Every run, resolved and checked here: a bad path or value fails before anything runs."""
    children = np.random.SeedSequence(root).spawn(replications)
    seeds = [int(c.generate_state(1)[0]) for c in children]
    bases = {}
    for v in variants:
        try:
            base = sc.variant(v)
        except KeyError as exc:
            raise ValueError(f"variants: {exc.args[0]}") from None
        bases[v] = base.with_overrides(overrides, "overrides") if overrides else base
    tasks = []
    for i, point in enumerate(points):
        for v in variants:
            resolved = bases[v].with_overrides(point, f"point {i}") if point else bases[v]
            values = tuple(point.items())
            tasks += [Task(i, v, values, r, seeds[r], resolved) for r in range(replications)]
    return tasks


def run_task(task: Task) -> dict[str, Any]:
    """One run and its row (the unit of work a worker does)."""
    from . import run

    result = run(task.scenario, seed=task.seed)
    summary = result.summary()
    e2e = summary.loc[END_TO_END]
    figures = headline(summary, result.cascade())
    figures["latency_mean"] = float(e2e["latency_mean"])
    figures["latency_p90"] = float(e2e["latency_p90"])
    return {"point": task.point, "variant": task.variant, **dict(task.values),
            "replication": task.replication, "seed": task.seed, **figures}


def _run_batch(tasks: list[Task]) -> list[dict[str, Any]]:
    return [run_task(t) for t in tasks]


def _execute(tasks: list[Task], executor: Any, workers: int | None,
             ) -> Iterator[list[dict[str, Any]]]:
    """Run the tasks, yielding each batch's rows as it finishes (in any order)."""
    if not tasks:
        return
    n = workers or os.cpu_count() or 1
    if executor == "serial" or (executor in (None, "processes") and n == 1):
        for task in tasks:
            yield [run_task(task)]
        return
    with _interrupts() as interrupted, executor_pool(executor, n) as pool:
        # Probe: one task per worker, alone. The first to finish tells how long a task takes
        # (on a worker, start-up included), which sizes the batches of the rest so that each
        # carries at least BATCH_SECONDS of work, in a number of batches that is a multiple
        # of the workers (no worker left with one batch more than the others at the end).
        probes = tasks[:n]
        rest = tasks[n:]
        t0 = time.perf_counter()
        pending: set[Future] = {pool.submit(_run_batch, [t]) for t in probes}
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                if finished and rest:
                    each = max(time.perf_counter() - t0, 1e-6)
                    pending |= {pool.submit(_run_batch, b) for b in _batches(rest, each, n)}
                    rest = []
                for future in finished:
                    yield future.result()
                if interrupted():
                    raise KeyboardInterrupt
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _batches(tasks: list[Task], each: float, workers: int) -> list[list[Task]]:
    """``tasks`` in near-equal batches of at least BATCH_SECONDS of work (``each`` seconds a
    task), as many as possible, a multiple of ``workers`` when there are enough tasks."""
    least = math.ceil(BATCH_SECONDS / each)  # tasks in a batch of at least BATCH_SECONDS
    most = max(1, len(tasks) // least)
    count = min(len(tasks), most)
    if count >= workers:
        count -= count % workers
    bounds = np.linspace(0, len(tasks), count + 1).round().astype(int)
    return [tasks[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@contextlib.contextmanager
def _interrupts() -> Iterator[Callable[[], bool]]:
    """Ctrl-C (SIGINT) noted, not raised, while worker processes are about: Python ignores an
    exception raised inside its fork hooks, so a KeyboardInterrupt that lands while a worker is
    being started would be lost. The waiting loop raises it instead, between batches."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    hits: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: hits.append(signum))
    try:
        yield lambda: bool(hits)
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def executor_pool(executor: Any, n: int) -> Iterator[Executor]:
    """A ``concurrent.futures`` executor for ``executor`` (see :func:`sweep`), shut down after
    if it was started here."""
    if isinstance(executor, Executor):
        yield executor
        return
    if executor in (None, "processes"):
        pool = ProcessPoolExecutor(max_workers=n,
                                   mp_context=multiprocessing.get_context(_start_method()))
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ImportError("executor='dask' needs Dask's distributed scheduler: "
                          "pip install 'meshsim[dask]'") from None
    if isinstance(executor, Client):
        yield executor.get_executor()
        return
    if executor == "dask":
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None) as cluster, \
                Client(cluster) as client:
            yield client.get_executor()
        return
    if isinstance(executor, str) and "://" in executor:
        with Client(executor) as client:
            yield client.get_executor()
        return
    raise ValueError(f"executor: expected 'processes', 'serial', 'dask', a scheduler address "
                     f"(tcp://host:8786), a distributed.Client or an Executor, got {executor!r}")


def _start_method() -> str:
    """How to start worker processes here, chosen per call (no global setting changes).

    ``fork`` on Linux when this process has one thread: fast, and a script needs no
    ``if __name__ == "__main__"`` guard. Forking a process with threads (a notebook kernel, a
    web server) can deadlock the child, so then ``forkserver`` (or ``spawn`` where there is
    none, and on macOS, where forked system frameworks misbehave), which start workers from a
    clean process; a script that takes that road needs the guard, as for any such pool.
    """
    if sys.platform == "linux" and threading.active_count() == 1:
        return "fork"
    return "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _progress(progress: Callable[[int, int], None] | bool | None,
              total: int) -> Callable[[int], None]:
    if progress is None or progress is False:
        return lambda done: None
    if progress is True:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return lambda done: None
        bar = tqdm(total=total, unit="run", desc="sweep")

        def update(done: int) -> None:
            bar.update(done - bar.n)
            if done >= total:
                bar.close()

        return update
    return lambda done: progress(done, total)


def _frame(rows: list[dict[str, Any]], params: list[str]) -> pd.DataFrame:
    """The tidy frame, its columns in the documented order and metrics as floats."""
    frame = pd.DataFrame(rows)
    faults = [c for c in frame.columns if ": " in c and c not in params]
    lead = [*KEYS, *params, "replication", "seed"]
    frame = frame.reindex(columns=[*lead, *METRICS, *faults])
    frame[[*METRICS, *faults]] = frame[[*METRICS, *faults]].astype("float64")
    return frame.astype({"point": "int64", "replication": "int64", "seed": "int64"})


def _plain(value: Any) -> Any:
    """YAML-ready data (tuples become lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


# --- the output directory ---------------------------------------------------------------------


class _Store:
    """A sweep's directory: the spec, the resolved scenario, one file per finished batch."""

    def __init__(self, out: Path, spec: Mapping[str, Any], scenario: Scenario):
        self.out = out
        self.parquet = output._has_pyarrow()
        self.batches = out / "batches"
        text = yaml.safe_dump(_plain(spec), sort_keys=False)
        marker = out / SWEEP_MARKER
        if out.exists() and any(out.iterdir()):
            if not marker.exists():
                raise output.OutputError(f"{out} is not empty and was not written by a meshsim "
                                         "sweep; choose another directory")
            if marker.read_text(encoding="utf-8") != text:
                raise output.OutputError(f"{out} holds the results of another sweep (its "
                                         f"{SWEEP_MARKER} differs); choose another directory")
        # The spec first: a sweep stopped in between leaves a directory it will know again.
        try:
            out.mkdir(parents=True, exist_ok=True)
            if not marker.exists():
                output.write_text_atomic(marker, text)
            self.batches.mkdir(exist_ok=True)
        except OSError as exc:
            raise output.OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
        if not (out / "scenario.resolved.yaml").exists():
            output.write_text_atomic(out / "scenario.resolved.yaml", scenario.to_yaml())

    def load(self) -> dict[tuple[int, str, int], dict[str, Any]]:
        """The rows of the batches finished before (each task once)."""
        done = {}
        for path in sorted(self.batches.iterdir()):
            if path.name.startswith("."):
                continue  # a batch being written when the sweep stopped
            frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
            for row in frame.to_dict(orient="records"):
                done.setdefault((int(row["point"]), str(row["variant"]),
                                 int(row["replication"])), row)
        return done

    def save(self, rows: list[dict[str, Any]]) -> None:
        """Write one batch's rows at once, all or nothing."""
        keys = ",".join(f"{r['point']}/{r['variant']}/{r['replication']}" for r in rows)
        name = "batch-" + hashlib.sha1(keys.encode()).hexdigest()[:16]
        frame = pd.DataFrame(rows)
        tmp = self.batches / f".{name}.tmp"
        if self.parquet:
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, self.batches / f"{name}.parquet")
        else:
            frame.to_csv(tmp, index=False)
            os.replace(tmp, self.batches / f"{name}.csv")

    def finish(self, frame: pd.DataFrame) -> None:
        """The whole sweep in one file, and its summary."""
        if self.parquet:
            tmp = self.out / ".results.parquet.tmp"
            frame.to_parquet(tmp, index=False)
            os.replace(tmp, self.out / "results.parquet")
        else:
            output.write_text_atomic(self.out / "results.csv", frame.to_csv(index=False))
        output.write_text_atomic(self.out / "summary.csv",
                                 sweep_summary(frame).to_csv(index=False))


# --- summary -----------------------------------------------------------------------------------

# Two-sided Student-t quantiles t(1 - (1 - level)/2, df) for df = 1..30, from the exact
# distribution (as scipy.stats.t.ppf gives them); beyond 30, the Cornish-Fisher expansion
# around the normal quantile is exact to 1e-4.
_T_TABLE = {
    0.90: (6.3138, 2.9200, 2.3534, 2.1318, 2.0150, 1.9432, 1.8946, 1.8595, 1.8331, 1.8125,
           1.7959, 1.7823, 1.7709, 1.7613, 1.7531, 1.7459, 1.7396, 1.7341, 1.7291, 1.7247,
           1.7207, 1.7171, 1.7139, 1.7109, 1.7081, 1.7056, 1.7033, 1.7011, 1.6991, 1.6973),
    0.95: (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
           2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
           2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423),
    0.99: (63.6567, 9.9248, 5.8409, 4.6041, 4.0321, 3.7074, 3.4995, 3.3554, 3.2498, 3.1693,
           3.1058, 3.0545, 3.0123, 2.9768, 2.9467, 2.9208, 2.8982, 2.8784, 2.8609, 2.8453,
           2.8314, 2.8188, 2.8073, 2.7969, 2.7874, 2.7787, 2.7707, 2.7633, 2.7564, 2.7500),
}
_Z = {0.90: 1.6448536, 0.95: 1.9599640, 0.99: 2.5758293}


def t_quantile(level: float, df: int) -> float:
    """The two-sided Student-t quantile of a ``level`` interval with ``df`` degrees of
    freedom (``level`` 0.90, 0.95 or 0.99)."""
    if level not in _T_TABLE:
        raise ValueError(f"level: expected one of 0.9, 0.95, 0.99, got {level!r}")
    if df <= 30:
        return _T_TABLE[level][df - 1]
    z = _Z[level]
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


def sweep_summary(frame: pd.DataFrame, metrics: Sequence[str] | None = None,
                  level: float = 0.95) -> pd.DataFrame:
    """Mean and confidence interval of each metric per point and variant.

    Parameters
    ----------
    frame : pandas.DataFrame
        A sweep's rows (:func:`sweep`).
    metrics : list of str, optional
        The metric columns; default every metric column.
    level : float
        Confidence level of the Student-t interval over replications (0.90, 0.95 or 0.99).

    Returns
    -------
    pandas.DataFrame
        One row per point and variant: ``point``, ``variant``, the parameters,
        ``replications``, then for each metric ``m``: ``m_mean``, ``m_ci_low``, ``m_ci_high``
        (NaN bounds with one replication; an infinite time to recover in any replication
        gives an infinite mean and upper bound).
    """
    t_level = float(level)
    start = list(frame.columns).index("replication")
    params = list(frame.columns[len(KEYS):start])
    if metrics is None:
        metrics = [c for c in frame.columns[start + 2:]]
    groups = frame.groupby(list(KEYS), sort=True, dropna=False)
    rows = []
    for (point, variant), g in groups:
        row: dict[str, Any] = {"point": point, "variant": variant}
        row.update({p: g[p].iloc[0] for p in params})
        n = len(g)
        row["replications"] = n
        for m in metrics:
            x = g[m].to_numpy(dtype=float)
            x = x[~np.isnan(x)]
            mean = x.mean() if len(x) else np.nan
            if len(x) > 1 and np.isfinite(x).all():
                half = t_quantile(t_level, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
                low, high = mean - half, mean + half
            elif len(x) > 1:
                low, high = np.nan, np.inf
            else:
                low = high = np.nan
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean, low, high
        rows.append(row)
    return pd.DataFrame(rows)
