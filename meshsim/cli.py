"""The ``meshsim`` command line: validate, run, compare, sweep, tune, capacity, report, schema,
export.

Exit codes: 0 success, 2 bad input (a message, never a traceback), 1 internal error, 130 when
interrupted. The CLI only maps arguments to the Python API.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .app_breakers import APP_FLAGS, PluginError
from .errors import ScenarioError

if TYPE_CHECKING:
    import pandas as pd

    from .result import Result

EXIT_OK, EXIT_INTERNAL, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="meshsim",
        description="Simulate a service call chain behind an Istio/Envoy service mesh.",
    )
    p.add_argument("--version", action="version", version=f"meshsim {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check scenario files and report every problem")
    v.add_argument("files", nargs="+", metavar="FILE")

    r = sub.add_parser("run", help="simulate a scenario and print its summary")
    r.add_argument("file", metavar="FILE")
    r.add_argument("--seed", type=_seed, help="seed of all randomness (default: the scenario's)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field, e.g. --set services.cart.replicas=4 (repeatable)")
    r.add_argument("--out", metavar="DIR", help="write the result files into DIR (atomically)")
    r.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")
    r.add_argument("--access-log", metavar="FILE",
                   help="write an Envoy/Istio text access log of every request row to FILE")

    c = sub.add_parser("compare", help="run variants on common random numbers and compare them")
    c.add_argument("files", nargs="+", metavar="FILE",
                   help="one scenario (its baseline and variants) or several (one variant each)")
    c.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                   help="compare only this variant of the scenario (repeatable; 'baseline' is "
                   "the scenario as written)")
    c.add_argument("--seed", type=_seed, help="seed of every variant (default: the scenario's)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field in every variant (repeatable)")
    c.add_argument("--out", metavar="DIR",
                   help="write the table, frames, plots and runs into DIR (atomically; default "
                   "runs/compare-NAME)")
    c.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")

    w = sub.add_parser("sweep", help="run a scenario over a grid or sample of settings, with "
                       "replications, on local processes or Dask")
    w.add_argument("file", metavar="FILE")
    w.add_argument("--grid", action="append", default=[], metavar="PATH=V1,V2,...",
                   help="values of a field; every combination is a point (repeatable)")
    w.add_argument("--sample", action="append", default=[], metavar="PATH=LOW..HIGH",
                   help="range of a field to sample (repeatable; with --samples)")
    w.add_argument("--samples", type=int, metavar="N", help="number of points to sample")
    w.add_argument("--design", choices=("lhs", "random"), default="lhs",
                   help="how to sample: Latin hypercube (default) or uniform draws")
    w.add_argument("--spec", metavar="SWEEP.YAML",
                   help="the sweep written in a file (instead of --grid and --sample)")
    w.add_argument("--replications", "-n", type=int, metavar="N",
                   help="runs per point, on independent seeds (default 1)")
    w.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                   help="run every point in this variant of the scenario (repeatable)")
    w.add_argument("--seed", type=_seed, help="root seed (default: the scenario's)")
    w.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field in every run (repeatable)")
    w.add_argument("--workers", type=int, metavar="N",
                   help="worker processes, local or of --dask local (default: one per CPU)")
    w.add_argument("--dask", metavar="ADDRESS",
                   help="run on a Dask cluster: 'local' starts one on this machine, "
                   "tcp://HOST:8786 uses a running scheduler")
    w.add_argument("--out", metavar="DIR", help="results directory (default runs/sweep-NAME); "
                   "an interrupted sweep run again into it resumes")
    w.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")

    t = sub.add_parser("tune", help="search policy settings for the best objective under "
                       "constraints (needs meshsim[tune])")
    t.add_argument("file", metavar="FILE")
    t.add_argument("--param", dest="params", action="append", default=[], required=True,
                   metavar="PATH=LOW..HIGH",
                   help="a path to tune and its range (ints if both ends are, durations such "
                   "as 100ms..2s; add :log for a range over orders of magnitude) or its choices "
                   "A,B,C; repeatable")
    t.add_argument("--objective", default="goodput", metavar="METRIC",
                   help="metric to optimise (default goodput; p99, success_rate, wasted_work, "
                   "...); the worst variant counts")
    t.add_argument("--direction", choices=("maximize", "minimize"),
                   help="which way the objective is better (default: inferred from it)")
    t.add_argument("--constraint", dest="constraints", action="append", default=[],
                   metavar="EXPR", help="e.g. 'p99<300ms' or 'success_rate>=99.9%%': must hold "
                   "on the replication mean in every variant; repeatable")
    t.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                   help="a variant every setting must do well in (repeatable; default: "
                   "'baseline', the scenario as written)")
    t.add_argument("--replications", type=_positive, default=3, metavar="N",
                   help="runs per setting and variant (default 3)")
    t.add_argument("--trials", type=_seed, default=30, metavar="N",
                   help="settings to search besides the scenario as written (default 30)")
    t.add_argument("--seed", type=_seed, help="seed of the runs and of the search (default: the "
                   "scenario's)")
    t.add_argument("--workers", type=_positive, metavar="N",
                   help="processes running the simulations (default: the CPU count)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="PATH=VALUE",
                   help="override a field in every run, e.g. --set duration=30s (repeatable)")
    t.add_argument("--out", metavar="DIR",
                   help="write trials.csv, runs.csv and best.yaml (the snippet) into DIR "
                   "(atomically)")

    rp = sub.add_parser("report", help="write one self-contained HTML report of a run, sweep, "
                        "comparison or capacity directory")
    rp.add_argument("directory", metavar="DIR")
    rp.add_argument("-o", "--out", required=True, metavar="FILE",
                    help="the HTML file to write (atomically)")
    cap = sub.add_parser("capacity", help="the highest load that meets SLOs, utilisation and "
                         "headroom per service, and a replica plan")
    cap.add_argument("file", metavar="FILE")
    cap.add_argument("--slo", dest="slos", action="append", default=[], required=True,
                     metavar="EXPR", help="e.g. 'p99<300ms' or 'success>=99.9%%', judged end to "
                     "end on the replication mean's confidence interval; repeatable")
    cap.add_argument("--target-rps", metavar="RATE",
                     help="total offered rate to plan for, e.g. 2000 or 2000/s (default: the "
                     "scenario's own load)")
    cap.add_argument("--margin", default="20%", metavar="PCT",
                     help="the plan must meet the SLOs at the target plus this (default 20%%)")
    cap.add_argument("--failures", action="append", default=[], metavar="n-1|VARIANT",
                     help="n-1: also lose one pod per service at the target; a variant of "
                     "the scenario (its faults): also run it at the target (repeatable)")
    cap.add_argument("--retries-effect", action="store_true",
                     help="also find the knee with every retry off: what retries cost in "
                     "capacity")
    cap.add_argument("--replications", type=_positive, default=5, metavar="N",
                     help="runs per tested setting, at least 2 (default 5)")
    cap.add_argument("--max-loads", type=_positive, default=12, metavar="N",
                     help="loads the knee search may test (default 12)")
    cap.add_argument("--seed", type=_seed, help="root of the seeds (default: the scenario's)")
    cap.add_argument("--workers", type=_positive, metavar="N",
                     help="processes running the simulations (default: the CPU count)")
    cap.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="PATH=VALUE",
                     help="override a field in every run, e.g. --set duration=30s (repeatable)")
    cap.add_argument("--out", metavar="DIR", help="write capacity.json, load.csv, "
                     "services.csv, failures.csv, runs.csv and scenario.resolved.yaml into DIR "
                     "(atomically)")

    s = sub.add_parser("schema", help="print the JSON Schema of scenario files")
    s.add_argument("--out", metavar="FILE", help="write to FILE instead of standard output")

    e = sub.add_parser("export", help="write the scenario's policies as manifests")
    targets = e.add_subparsers(dest="target", required=True, metavar="TARGET")
    ei = targets.add_parser("istio", help="Istio DestinationRule, VirtualService, ServiceEntry "
                            "and Gateway resources (YAML)")
    ei.add_argument("file", metavar="FILE")
    ei.add_argument("-o", "--out", metavar="DIR",
                    help="write one YAML file per kind into DIR (atomically) instead of "
                    "printing one YAML stream")
    ei.add_argument("--namespace", default="default", type=_namespace, metavar="NS",
                    help="Kubernetes namespace of the services (default: default)")
    return p


def _namespace(text: str) -> str:
    import re

    if len(text) > 63 or not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", text):
        raise argparse.ArgumentTypeError("expected a Kubernetes namespace name (lowercase "
                                         f"letters, digits and '-'), got {text!r}")
    return text


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _seed(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``meshsim`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ScenarioError as err:
        print(err, file=sys.stderr)
        return EXIT_INPUT
    except PluginError as err:  # the user's own class failed during the run
        print(f"meshsim: {err}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("meshsim: interrupted; nothing was written", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # an internal error: a bug, not bad input
        if args.debug:
            traceback.print_exc()
        print(f"meshsim: internal error: {type(exc).__name__}: {exc}\n"
              "This is a bug in meshsim; rerun with --debug for the traceback and report it.",
              file=sys.stderr)
        return EXIT_INTERNAL


def _validate(args: argparse.Namespace) -> int:
    from .scenario import load_scenario

    status = EXIT_OK
    for path in args.files:
        try:
            sc = load_scenario(path)
        except ScenarioError as err:
            print(err, file=sys.stderr)
            status = EXIT_INPUT
            continue
        print(f"{path}: ok ({len(sc.services)} services, {len(sc.external_services)} external, "
              f"{len(sc.workload)} clients, {sc.duration:g}s)")
    return status


def _run(args: argparse.Namespace) -> int:
    from . import run
    from .access_log import check_log_path, write_access_log
    from .output import OutputError, check_out_dir, write_run
    from .scenario import load_scenario, parse_overrides

    scenario = load_scenario(args.file)
    if args.overrides:
        scenario = scenario.with_overrides(parse_overrides(args.overrides), source="--set")
    try:
        # Before the work, not after it.
        if args.out:
            check_out_dir(args.out)
        if args.access_log:
            check_log_path(args.access_log)
    except OutputError as exc:
        print(f"meshsim: {exc}", file=sys.stderr)
        return EXIT_INPUT
    show_progress = not args.quiet and sys.stderr.isatty()
    progress = _progress_bar(scenario.duration, sys.stderr) if show_progress else None
    wall = time.perf_counter()
    result = run(scenario, seed=args.seed, progress=progress)
    wall = time.perf_counter() - wall
    if progress is not None:
        sys.stderr.write("\r\033[K")
    try:
        if args.out:
            write_run(result, args.out)
        if args.access_log:
            write_access_log(result, args.access_log)
    except OutputError as exc:
        print(f"meshsim: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not args.quiet:
        print(format_summary(result, wall))
        if args.out:
            print(f"results written to {args.out}")
        if args.access_log:
            print(f"access log written to {args.access_log}")
    return EXIT_OK


def _compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .compare import format_table, run_variants, variant_scenarios
    from .output import COMPARISON_MARKER, OutputError, check_out_dir, write_comparison
    from .scenario import parse_overrides

    if args.variants and len(args.files) > 1:
        print("meshsim compare: --variant chooses among the variants of one FILE; with several "
              "files each file is a variant", file=sys.stderr)
        return EXIT_INPUT
    overrides = parse_overrides(args.overrides) if args.overrides else None
    named = variant_scenarios(args.files, variants=args.variants, overrides=overrides,
                              source="--set")
    out = args.out or str(Path("runs") / ("compare-" + "-vs-".join(Path(f).stem
                                                                     for f in args.files)))
    try:
        check_out_dir(out, COMPARISON_MARKER)  # before the work, not after it
    except OutputError as exc:
        print(f"meshsim: {exc}", file=sys.stderr)
        return EXIT_INPUT
    progress = None
    if not args.quiet and sys.stderr.isatty():
        horizon = max(sc.duration for sc in named.values())
        bars = {name: _progress_bar(horizon, sys.stderr, name) for name in named}

        def progress(name: str, t: float) -> None:
            bars[name](t)

    wall = time.perf_counter()
    comparison = run_variants(named, seed=args.seed, progress=progress)
    wall = time.perf_counter() - wall
    if progress is not None:
        sys.stderr.write("\r\033[K")
    try:
        write_comparison(comparison, out)
    except OutputError as exc:
        print(f"meshsim: {exc}", file=sys.stderr)
        return EXIT_INPUT
    if not args.quiet:
        print(format_table(comparison, wall))
        print(f"\ntable, frames, plots and runs written to {out}")
    return EXIT_OK


def _sweep(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .output import OutputError
    from .scenario import load_scenario, parse_overrides
    from .sweep import sweep, sweep_summary
    from .sweep_spec import SweepSpec, load_spec, parse_grid, parse_samples

    scenario = load_scenario(args.file)
    if args.spec:
        if args.grid or args.sample:
            print("meshsim sweep: give the points with --spec or with --grid/--sample, not both",
                  file=sys.stderr)
            return EXIT_INPUT
        spec = load_spec(args.spec)
    else:
        try:
            spec = SweepSpec(grid=parse_grid(args.grid), samples=parse_samples(args.sample),
                             n_samples=args.samples, design=args.design)
        except ValueError as exc:  # pydantic's ValidationError is one
            print(f"meshsim sweep: {_first_error(exc)}", file=sys.stderr)
            return EXIT_INPUT
    overrides = {**spec.overrides, **parse_overrides(args.overrides)}
    executor, workers = None, args.workers
    if args.dask:
        executor = "dask" if args.dask == "local" else args.dask
    out = args.out or str(Path("runs") / f"sweep-{Path(args.file).stem}")
    progress = None
    if not args.quiet and sys.stderr.isatty():
        progress = _count_bar(sys.stderr)
    wall = time.perf_counter()
    try:
        frame = sweep(scenario, spec.grid or None, spec.samples or None,
                      n_samples=spec.n_samples, design=spec.design,
                      replications=args.replications or spec.replications,
                      seed=args.seed if args.seed is not None else spec.seed,
                      variants=args.variants or spec.variants or None,
                      overrides=overrides or None, executor=executor, workers=workers, out=out,
                      progress=progress)
    except OutputError as exc:
        print(f"meshsim: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (ValueError, ImportError) as exc:  # ImportError: --dask without Dask installed
        print(f"meshsim sweep: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        if progress is not None:
            sys.stderr.write("\n")
        print(f"meshsim: interrupted; the finished runs are kept in {out}: the same command "
              "again resumes the sweep", file=sys.stderr)
        return EXIT_INTERRUPTED
    wall = time.perf_counter() - wall
    if progress is not None:
        sys.stderr.write("\r\033[K")
    if not args.quiet:
        print(format_sweep(sweep_summary(frame), len(frame), wall))
        print(f"\nresults written to {out}")
    return EXIT_OK


def format_sweep(summary: pd.DataFrame, runs: int, wall: float | None = None) -> str:
    """The headline of each point as the CLI prints it: goodput, success and p99 with their
    95 % intervals (the ``summary.csv`` of the output directory has every metric)."""
    start = list(summary.columns).index("replications")
    params = list(summary.columns[2:start])
    head = f"{runs} runs, {len(summary)} points" + (f", {wall:.2f}s wall" if wall else "")
    # A parameter is headed by its last field name, unless two end alike.
    short = [p.rsplit(".", 1)[-1] for p in params]
    names = short if len(set(short)) == len(short) else params
    header = [*names, "variant", "n", "goodput/s", "success", "p99 ms"]
    rows = [[*(str(r[p]) for p in params), str(r["variant"]), str(r["replications"]),
             _with_ci(r, "goodput", 1, ".1f"), _with_ci(r, "success_rate", 100, ".2f") + "%",
             _with_ci(r, "latency_p99", 1000, ".1f")] for _, r in summary.iterrows()]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    lines = [head, "", "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _with_ci(row: pd.Series, metric: str, scale: float, fmt: str) -> str:
    """``mean ±half-width`` of a summary row's metric (the mean alone without an interval)."""
    half = (row[f"{metric}_ci_high"] - row[f"{metric}_ci_low"]) / 2
    text = format(scale * row[f"{metric}_mean"], fmt)
    return text if half != half else f"{text} ±{format(scale * half, fmt)}"


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return str(first.get("msg", exc)).removeprefix("Value error, ")
    return str(exc)


def _count_bar(stream: TextIO) -> Callable[[int, int], None]:
    """A text progress bar of finished runs with an ETA, on ``stream`` (a terminal)."""
    started = time.perf_counter()
    width = 30

    def show(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (total - done) if done else float("nan")
        fill = int(width * done / max(total, 1))
        eta_text = "" if eta != eta else f", {eta:.0f}s left"
        stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} runs{eta_text}")
        stream.flush()

    return show


def _report(args: argparse.Namespace) -> int:
    from .output import OutputError
    from .report import ReportError, write_report

    try:
        write_report(args.directory, args.out)
    except (ReportError, OutputError) as exc:
        print(f"meshsim: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"report written to {args.out}")
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from .output import OutputError, write_text_atomic
    from .scenario import Scenario

    text = json.dumps(Scenario.model_json_schema(by_alias=True), indent=2) + "\n"
    if args.out:
        try:
            write_text_atomic(args.out, text)
        except OutputError as exc:
            print(f"meshsim: {exc}", file=sys.stderr)
            return EXIT_INPUT
    else:
        sys.stdout.write(text)
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .errors import Issue
    from .export import (
        NOT_EXPORTED_NOTE,
        istio_manifests,
        manifests_yaml,
        not_exported,
        write_manifests,
    )
    from .output import OutputError
    from .scenario import parse_scenario
    from .yamlio import load_file

    data, lines = load_file(args.file)
    scenario = parse_scenario(data, source=args.file, lines=lines, base_dir=Path(args.file).parent)
    try:
        manifests = istio_manifests(scenario, args.namespace)
    except ScenarioError as err:
        raise ScenarioError(args.file, [Issue(i.path, i.message, lines.line_for(i.path))
                                        for i in err.issues]) from None
    skipped = not_exported(scenario)
    if skipped:
        print(f"meshsim: {NOT_EXPORTED_NOTE}", *(f"  {p}" for p in skipped), sep="\n",
              file=sys.stderr)
    if not args.out:
        sys.stdout.write(manifests_yaml(manifests))
        return EXIT_OK
    try:
        write_manifests(manifests, args.out, source=args.file, skipped=skipped)
    except OutputError as exc:
        print(f"meshsim: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(f"{len(manifests)} resources written to {args.out}")
    return EXIT_OK


def _tune(args: argparse.Namespace) -> int:
    from .output import OutputError, check_out_dir
    from .scenario import load_scenario, parse_overrides
    from .tune import TUNE_MARKER, format_report, tune, write_tune
    from .tune_space import TuneError, parse_param_arg

    scenario = load_scenario(args.file)
    try:
        params = [parse_param_arg(text) for text in args.params]
        if args.out:
            check_out_dir(args.out, TUNE_MARKER)  # before the work, not after it
        show = sys.stderr.isatty()

        def progress(done: int, total: int) -> None:
            sys.stderr.write(f"\r\033[K{done}/{total} settings evaluated")
            sys.stderr.flush()

        result = tune(scenario, params, objective=args.objective, direction=args.direction,
                      constraints=args.constraints, variants=args.variants or None,
                      replications=args.replications, n_trials=args.trials, seed=args.seed,
                      overrides=parse_overrides(args.overrides) if args.overrides else None,
                      workers=args.workers, progress=progress if show else None)
        if show:
            sys.stderr.write("\r\033[K")
        if args.out:
            write_tune(result, args.out)
    except (TuneError, OutputError, ImportError) as exc:
        print(f"meshsim tune: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(format_report(result))
    if args.out:
        print(f"\ntrials, runs and best.yaml written to {args.out}")
    return EXIT_OK


def _capacity(args: argparse.Namespace) -> int:
    from .capacity import CAPACITY_MARKER, capacity, format_capacity, write_capacity
    from .output import OutputError, check_out_dir
    from .scenario import load_scenario, parse_overrides
    from .tune_space import TuneError, parse_constraint
    from .units import parse_percent, parse_rate

    scenario = load_scenario(args.file)
    try:
        if args.overrides:
            scenario = scenario.with_overrides(parse_overrides(args.overrides), "--set")
        slos = [parse_constraint(text) for text in args.slos]
        try:
            target = None if args.target_rps is None else parse_rate(args.target_rps)
        except ValueError as exc:
            raise ValueError(f"--target-rps: {exc}") from None
        try:
            margin = parse_percent(args.margin) / 100
        except ValueError as exc:
            raise ValueError(f"--margin: {exc}") from None
        if args.out:
            check_out_dir(args.out, CAPACITY_MARKER)  # before the work, not after it
        result = capacity(scenario, slos, target_rps=target, margin=margin,
                          failures="n-1" in args.failures,
                          fault_variants=[f for f in args.failures if f != "n-1"],
                          retries_effect=args.retries_effect,
                          replications=args.replications,
                          max_loads=args.max_loads, seed=args.seed, workers=args.workers)
        if args.out:
            write_capacity(result, args.out)
    except (TuneError, OutputError, ValueError) as exc:
        print(f"meshsim capacity: {exc}", file=sys.stderr)
        return EXIT_INPUT
    print(format_capacity(result))
    if args.out:
        print(f"\ncapacity.json, load.csv, services.csv and failures.csv written to {args.out}")
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "capacity": _capacity,
    "validate": _validate,
    "report": _report,
    "run": _run,
    "compare": _compare,
    "sweep": _sweep,
    "schema": _schema,
    "export": _export,
    "tune": _tune,
}


def format_summary(result: Result, wall: float | None = None) -> str:
    """The summary table as the CLI prints it (latencies in ms, rates per second)."""
    table = result.summary()
    sc = result.scenario
    lines = [
        f"{sc.name}: {sc.duration:g}s simulated (warm-up {sc.warmup:g}s), seed {sc.seed}"
        + (f", {wall:.2f}s wall" if wall is not None else ""),
        "",
        f"{'scope':<18} {'requests':>9} {'success':>8} {'rate/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'util':>6} {'wait ms':>8}",
    ]
    for scope, row in table.iterrows():
        util = row.get("utilisation", float("nan"))
        lines.append(
            f"{scope!s:<18} {int(row['requests']):>9} {_pct(row['success_rate']):>8} "
            f"{row['throughput']:>8.1f} {_ms(row['latency_p50']):>8} {_ms(row['latency_p99']):>8} "
            f"{_ms(row['latency_max']):>8} {_pct(util, 0):>6} "
            f"{_ms(row.get('queue_wait_mean', float('nan'))):>8}"
        )
    in_flight = table.loc["end-to-end", "in_flight_at_end"]
    lines.append("")
    lines.append(f"end-user requests still in flight at the end: {int(in_flight)}")
    callees = table.drop(index=[i for i in table.index
                                if i == "end-to-end" or str(i).startswith("client:")])
    wasted = callees[callees["abandoned"] > 0] if "abandoned" in callees else callees.iloc[:0]
    if len(wasted):
        lines.append("work for callers that had given up (after warm-up): " + ", ".join(
            f"{scope} {int(row['abandoned'])} requests, {row['wasted_work']:.1f} worker-s"
            for scope, row in wasted.iterrows()))
    flags = flag_counts(result)
    envoy = {f: n for f, n in flags.items() if f not in APP_FLAGS}
    app = {f: n for f, n in flags.items() if f in APP_FLAGS}
    if envoy:
        lines.append("Envoy response flags (attempts after warm-up): "
                     + ", ".join(f"{flag} {count}" for flag, count in envoy.items()))
    if app:
        lines.append("calls refused by app-level breakers (after warm-up): "
                     + ", ".join(f"{flag} {count}" for flag, count in app.items()))
    if sc.faults:
        lines += ["", *format_faults(result)]
    return "\n".join(lines)


def format_faults(result: Result) -> list[str]:
    """The cascade table of a run with faults: one line per fault (times in seconds)."""
    table = result.cascade()
    width = max(18, *(len(str(f)) for f in table.index))
    lines = [f"{'fault':<{width}} {'start':>7} {'end':>7} {'detected':>9} {'recovered':>10}  "
             "blast radius (first reaction)"]
    for fault, row in table.iterrows():
        detect = "-" if row["time_to_detect"] != row["time_to_detect"] \
            else f"+{row['time_to_detect']:.2f}s"
        recover = row["time_to_recover"]
        recover = "-" if recover != recover else ("never" if recover == float("inf")
                                                  else f"+{recover:.1f}s")
        radius = row["blast_radius"] or "none"
        first = row["detected_by"] if isinstance(row["detected_by"], str) else "no reaction"
        lines.append(f"{fault!s:<{width}} {row['start']:>6.1f}s {row['end']:>6.1f}s "
                     f"{detect:>9} {recover:>10}  {radius} ({first})")
    return lines


def flag_counts(result: Result) -> dict[str, int]:
    """Attempts per Envoy response-flags string (``UO``, ``URX,UT``, ...) after the warm-up,
    most frequent first; empty when every attempt went through unflagged."""
    requests = result.requests
    measured = requests[requests["t_start"] >= result.meta["warmup"]]
    counts = measured["flags"].astype(str).value_counts()
    counts = counts[counts.index != "-"]
    return {str(flag): int(n) for flag, n in counts.items()}


def _pct(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{100 * x:.{digits}f}%"


def _ms(x: float) -> str:
    return "-" if x != x else f"{1000 * x:.1f}"


def _progress_bar(horizon: float, stream: TextIO, label: str = "") -> Callable[[float], None]:
    width = 30
    prefix = f"{label}: " if label else ""

    def show(t: float) -> None:
        frac = min(t / horizon, 1.0)
        done = int(frac * width)
        stream.write(f"\r\033[K{prefix}[{'#' * done}{'.' * (width - done)}] {100 * frac:5.1f}%  "
                     f"{t:.0f}s / {horizon:g}s simulated")
        stream.flush()

    return show


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
