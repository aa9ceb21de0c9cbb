"""``meshsim report``: one self-contained HTML page of a run, sweep, comparison or capacity
directory.

The page needs nothing but itself: figures are PNGs inlined as ``data:`` URIs, the call graph is
inline SVG, the style sheet (with a print style) is in the page and there is no script. Every
string that came from the user (scenario, service, client and variant names, parameter values) is
escaped with :func:`html.escape`. Each figure printed in a table carries ``data-metric``, its
scope (``data-scope`` or ``data-point``) and the exact value read from the data file
(``data-value``, ``repr`` of the float), so tools and tests can check the page against the files.
The pieces of the page (call graph, tables, figures, style sheet) are in :mod:`meshsim.report_html`.
"""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from .capacity import CAPACITY_MARKER
from .errors import ScenarioError
from .output import COMPARISON_MARKER
from .plots import DPI
from .report_html import (
    HEADINGS,
    bullet_list,
    call_graph_svg,
    cell,
    data_value,
    figure_img,
    finite,
    fmt,
    frame_table,
    page,
    png_img,
    section,
)
from .scenario import Scenario, load_scenario
from .sweep import SWEEP_MARKER

__all__ = ["ReportError", "directory_kind", "report_html", "write_report"]

#: The file that marks each kind of directory meshsim writes, in the order they are checked.
MARKERS = {
    "capacity": CAPACITY_MARKER,
    "sweep": SWEEP_MARKER,
    "comparison": COMPARISON_MARKER,
    "run": "summary.json",  # what write_run's atomic_dir checks for
}


class ReportError(Exception):
    """The directory is not one meshsim wrote, or not one a report can be made of yet."""


def directory_kind(directory: str | os.PathLike) -> str:
    """``"run"``, ``"sweep"``, ``"comparison"`` or ``"capacity"``, by the file that marks it.

    Raises
    ------
    ReportError
        If ``directory`` holds none of the marker files.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ReportError(f"{directory} is not a directory")
    for kind, marker in MARKERS.items():
        if (directory / marker).is_file():
            return kind
    raise ReportError(f"{directory} was not written by meshsim run, sweep, compare or capacity "
                      f"(none of {', '.join(MARKERS.values())})")


def report_html(directory: str | os.PathLike) -> str:
    """The report of a run, sweep, comparison or capacity directory, as one HTML document.

    Raises
    ------
    ReportError
        If the directory is not one meshsim wrote.
    """
    directory = Path(directory)
    kind = directory_kind(directory)
    builders = {"run": _run_sections, "sweep": _sweep_sections,
                "comparison": _comparison_sections, "capacity": _capacity_sections}
    scenario_dir = directory if kind != "comparison" else _first_variant(directory)
    scenario = _scenario(scenario_dir)
    body = [_scenario_section(scenario, kind), *builders[kind](directory, scenario),
            _istio_section(scenario)]
    return page(f"meshsim {kind} report: {scenario.name}", body)


def write_report(directory: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write :func:`report_html` of ``directory`` to ``out`` atomically; returns ``out``."""
    from .output import write_text_atomic

    text = report_html(directory)
    write_text_atomic(out, text)
    return Path(out)


# --- reading ---------------------------------------------------------------------------------


def _scenario(directory: Path) -> Scenario:
    path = directory / "scenario.resolved.yaml"
    if not path.is_file():
        raise ReportError(f"{directory} has no scenario.resolved.yaml")
    return load_scenario(path)


def _first_variant(directory: Path) -> Path:
    """The baseline's run directory of a comparison, else its first variant's."""
    variants = sorted(p for p in (directory / "variants").glob("*") if p.is_dir())
    if not variants:
        raise ReportError(f"{directory} has no variants/ directory")
    return next((p for p in variants if p.name == "baseline"), variants[0])


def _requests(directory: Path) -> pd.DataFrame | None:
    for name, read in (("requests.parquet", pd.read_parquet), ("requests.csv", pd.read_csv)):
        if (directory / name).is_file():
            return read(directory / name)
    return None


def _sweep_results(directory: Path) -> pd.DataFrame | None:
    for name, read in (("results.parquet", pd.read_parquet), ("results.csv", pd.read_csv)):
        if (directory / name).is_file():
            return read(directory / name)
    return None


# --- sections of a run -----------------------------------------------------------------------


def _run_sections(directory: Path, scenario: Scenario) -> list[str]:
    data = json.loads((directory / "summary.json").read_text(encoding="utf-8"))
    summary = pd.DataFrame.from_dict(data["summary"], orient="index")
    summary.index.name = "scope"
    sections = [
        section("SLO verdicts", _slo_table(summary)),
        section("Throughput and p99 latency over time", _run_figure(directory)),
        section("Per-service utilisation", _utilisation(summary)),
        section("Failures", _failure_table(_requests(directory))),
        section("Cascade metrics", _cascade(directory)),
        section("Findings", bullet_list(_run_findings(summary))),
    ]
    return sections


_SUMMARY_COLUMNS = ("requests", "success_rate", "throughput", "latency_p50", "latency_p99",
                    "slo_met")


def _slo_table(summary: pd.DataFrame) -> str:
    note = ("<p>Figures over the measured window (after the warm-up). A scope without an "
            "objective shows &ldquo;no SLO&rdquo;.</p>")
    rows = []
    for scope, row in summary.iterrows():
        cells = [cell(row.get(c), c, scope=str(scope)) for c in _SUMMARY_COLUMNS]
        rows.append(f"<tr><th scope=\"row\">{escape(str(scope))}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th>{escape(HEADINGS[c])}</th>" for c in _SUMMARY_COLUMNS)
    return f"{note}<table><thead><tr><th>scope</th>{head}</tr></thead><tbody>{''.join(rows)}" \
           "</tbody></table>"


def _utilisation(summary: pd.DataFrame) -> str:
    if "utilisation" not in summary:
        return "<p>No utilisation recorded.</p>"
    util = summary["utilisation"].dropna().astype(float)
    if util.empty:
        return "<p>No service with workers.</p>"
    fig = Figure(figsize=(7, 0.4 * len(util) + 1.2), dpi=DPI)
    ax = fig.add_subplot()
    ax.barh([str(s) for s in util.index][::-1], util.to_numpy()[::-1] * 100, color="C0")
    ax.set_xlabel("utilisation (% of workers held)")
    ax.set_xlim(0, 100)
    fig.tight_layout()
    rows = "".join(
        f"<tr><th scope=\"row\">{escape(str(s))}</th>{cell(v, 'utilisation', scope=str(s))}"
        f"{cell(summary.at[s, 'queue_wait_mean'], 'queue_wait_mean', scope=str(s))}</tr>"
        for s, v in util.items())
    table = ("<table><thead><tr><th>service</th><th>utilisation</th><th>mean queue wait</th>"
             f"</tr></thead><tbody>{rows}</tbody></table>")
    return figure_img(fig, "utilisation per service", "utilisation") + table


def _run_figure(directory: Path) -> str:
    path = directory / "timeseries.csv"
    if not path.is_file():
        return "<p>No timeseries.csv.</p>"
    ts = pd.read_csv(path)
    e2e = ts[ts["service"] == "end-to-end"]
    fig = Figure(figsize=(8, 4.5), dpi=DPI)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(e2e["t"], e2e["completions"], color="C0", label="answers/s")
    top.plot(e2e["t"], e2e["arrivals"], color="C7", linestyle="--", label="offered/s")
    top.set_ylabel("per second")
    top.legend(fontsize="small")
    bottom.plot(e2e["t"], e2e["latency_p99"] * 1000, color="C3")
    bottom.set_ylabel("p99 (ms)")
    bottom.set_xlabel("simulated time (s)")
    fig.tight_layout()
    return ("<p>End-to-end, one point per second of simulated time. A single run has no "
            "confidence band; a sweep with replications draws one.</p>"
            + figure_img(fig, "end-to-end throughput and p99 latency over time", "timeseries"))


def _failure_table(requests: pd.DataFrame | None) -> str:
    if requests is None:
        return "<p>No requests table.</p>"
    failed = requests[(requests["status"] < 200) | (requests["status"] >= 400)]
    if failed.empty:
        return "<p>No failed answers.</p>"
    counts = (failed.groupby(["destination", "status", "flags"], observed=True).size()
              .rename("count").reset_index().sort_values("count", ascending=False))
    rows = "".join(
        f"<tr><td>{escape(str(r.destination))}</td><td>{int(r.status)}</td>"
        f"<td>{escape(str(r.flags))}</td>"
        f"{cell(int(r.count), 'failures', scope=f'{r.destination}|{r.status}|{r.flags}')}</tr>"
        for r in counts.head(50).itertuples())
    more = f"<p>{len(counts) - 50} more kinds not shown.</p>" if len(counts) > 50 else ""
    return ("<p>Answers that were not 2xx or 3xx, every hop and attempt, by callee, status and "
            "Envoy response flags.</p><table><thead><tr><th>callee</th><th>status</th>"
            f"<th>flags</th><th>count</th></tr></thead><tbody>{rows}</tbody></table>{more}")


def _cascade(directory: Path) -> str:
    path = directory / "cascade.csv"
    if not path.is_file():
        return "<p>The scenario has no faults, so no cascade was measured.</p>"
    frame = pd.read_csv(path, index_col=0)
    return frame_table(frame, "cascade")


def _run_findings(summary: pd.DataFrame) -> list[str]:
    out = []
    if "end-to-end" in summary.index:
        e2e = summary.loc["end-to-end"]
        out.append(f"End users got {fmt('success_rate', e2e['success_rate'])} successful "
                   f"answers at {fmt('throughput', e2e['throughput'])}, with a p99 latency of "
                   f"{fmt('latency_p99', e2e['latency_p99'])}.")
    missed = [str(s) for s, v in summary.get("slo_met", pd.Series(dtype=object)).items()
              if v is False or v == 0]
    met = [str(s) for s, v in summary.get("slo_met", pd.Series(dtype=object)).items()
           if v is True or v == 1]
    if missed:
        out.append("Objectives missed: " + ", ".join(missed) + ".")
    if met:
        out.append("Objectives met: " + ", ".join(met) + ".")
    util = summary.get("utilisation", pd.Series(dtype=float)).dropna().astype(float)
    if not util.empty:
        busiest = util.idxmax()
        verdict = " which leaves little headroom" if util.max() >= 0.8 else ""
        out.append(f"The busiest service is {busiest} at {fmt('utilisation', util.max())} "
                   f"utilisation{verdict}.")
    return [escape(s) for s in out]


# --- sections of a sweep ---------------------------------------------------------------------


def _sweep_sections(directory: Path, scenario: Scenario) -> list[str]:
    summary = pd.read_csv(directory / "summary.csv")
    params = _params(summary)
    x = _load_axis(params)
    sections = [
        section("SLO verdicts", _sweep_slo(summary)),
        section("Throughput and p99 latency vs offered load", _sweep_figure(summary, x)),
        section("Per-service utilisation",
                 "<p>Sweeps record end-to-end figures only; run one point with "
                 "<code>meshsim run --out</code> for utilisation per service.</p>"),
        section("Failures", _sweep_failures(summary, params)),
        section("Cascade metrics", _sweep_cascade(directory)),
        section("Findings", bullet_list(_sweep_findings(summary, params))),
        section("Points", _points_table(summary, params)),
    ]
    return sections


_NOT_PARAMS = {"point", "variant", "replications"}


def _params(summary: pd.DataFrame) -> list[str]:
    stop = summary.columns.get_loc("replications")
    return [c for c in summary.columns[:stop] if c not in _NOT_PARAMS]


def _load_axis(params: list[str]) -> str | None:
    """The parameter drawn on the x axis: the first rate of the sweep, else its first one."""
    rates = [p for p in params if "rate" in p.split(".")[-1] or p.endswith("arrival.rate")]
    return (rates or params or [None])[0]


def _numeric(values: pd.Series) -> pd.Series:
    from .units import parse_duration, parse_rate

    if pd.api.types.is_numeric_dtype(values):
        return values.astype(float)
    for parse in (parse_rate, parse_duration, float):
        try:
            return values.map(parse).astype(float)
        except (ValueError, TypeError):  # not values of this unit
            continue
    return pd.Series(range(len(values)), index=values.index, dtype=float)


def _sweep_figure(summary: pd.DataFrame, x: str | None) -> str:
    frame = summary.copy()
    xs = _numeric(frame[x]) if x else frame["point"].astype(float)
    frame["_x"] = xs
    others = [p for p in _params(summary) if p != x]
    several = "variant" in frame and frame["variant"].nunique() > 1
    keys = ["variant", *others] if several else others
    groups = dict(tuple(frame.groupby(keys, sort=False))) if keys else {(): frame}
    fig = Figure(figsize=(8, 6), dpi=DPI)
    top, bottom = fig.subplots(2, 1, sharex=True)
    lines = len(groups) <= 8
    for i, (name, rows) in enumerate(groups.items()):
        rows = rows.sort_values("_x", kind="stable")
        label = ", ".join(str(v) for v in (name if isinstance(name, tuple) else (name,)))
        for ax, metric, scale in ((top, "goodput", 1.0), (bottom, "latency_p99", 1000.0)):
            _draw(ax, rows, metric, scale, f"C{i % 10}", label if lines else None, lines)
    xlabel = x or "point"
    bottom.set_xlabel(f"{xlabel} (offered load)" if x and "rate" in x else xlabel)
    top.set_ylabel("goodput (/s)")
    bottom.set_ylabel("p99 latency (ms)")
    if lines and len(groups) > 1:
        top.legend(fontsize="small", title=", ".join(keys))
    fig.tight_layout()
    return ("<p>Mean over the replications of each point; the band (or bar) is the confidence "
            "interval of the mean, from <code>summary.csv</code>.</p>"
            + figure_img(fig, "goodput and p99 latency against offered load", "load"))


def _draw(ax: Any, rows: pd.DataFrame, metric: str, scale: float, colour: str,
          label: str | None, lines: bool) -> None:
    mean, low, high = (rows[f"{metric}_{s}"] * scale for s in ("mean", "ci_low", "ci_high"))
    if lines:
        ax.plot(rows["_x"], mean, marker="o", color=colour, label=label)
        if not low.isna().all():
            ax.fill_between(rows["_x"], low, high, color=colour, alpha=0.2, linewidth=0)
        return
    ax.errorbar(rows["_x"], mean, yerr=[(mean - low).fillna(0), (high - mean).fillna(0)],
                fmt=".", color=colour, markersize=3, elinewidth=0.5)


def _sweep_slo(summary: pd.DataFrame) -> str:
    if "slo_met_mean" not in summary or summary["slo_met_mean"].isna().all():
        return "<p>The scenario declares no objective.</p>"
    met = summary["slo_met_mean"]
    return (f"<p>{int((met == 1).sum())} of {len(met)} points met the objective in every "
            f"replication; {int((met == 0).sum())} in none. The share per point is the "
            "<em>SLO met</em> column of the points table.</p>")


def _sweep_failures(summary: pd.DataFrame, params: list[str]) -> str:
    worst = summary.nsmallest(10, "success_rate_mean")
    return ("<p>The ten points with the lowest success rate.</p>"
            + _points_table(worst, params, ("success_rate", "goodput", "latency_p99")))


def _sweep_cascade(directory: Path) -> str:
    results = _sweep_results(directory)
    cols = [] if results is None else [c for c in results.columns if c.startswith("fault")]
    if not cols:
        return "<p>The sweep's scenario has no faults, so no cascade was measured.</p>"
    means = results[cols].mean(numeric_only=True).to_frame("mean over all runs")
    return frame_table(means, "cascade")


def _sweep_findings(summary: pd.DataFrame, params: list[str]) -> list[str]:
    best = summary.loc[summary["goodput_mean"].idxmax()]
    setting = ", ".join(f"{p} = {best[p]}" for p in params)
    out = [f"The highest goodput, {fmt('goodput', best['goodput_mean'])}, is at {setting} "
           f"(p99 {fmt('latency_p99', best['latency_p99_mean'])})."]
    low = summary[summary["success_rate_mean"] < 0.99]
    if not low.empty:
        out.append(f"{len(low)} of {len(summary)} points answered fewer than 99% of requests "
                   "successfully.")
    return [escape(s) for s in out]


_POINT_METRICS = ("goodput", "success_rate", "latency_p50", "latency_p99", "slo_met")


def _points_table(summary: pd.DataFrame, params: list[str],
                  metrics: tuple[str, ...] = _POINT_METRICS) -> str:
    metrics = tuple(m for m in metrics if f"{m}_mean" in summary)
    head = "".join(f"<th>{escape(p)}</th>" for p in ["point", "variant", *params])
    head += "".join(f"<th>{escape(HEADINGS.get(m, m))} (95% CI)</th>" for m in metrics)
    rows = []
    for r in summary.to_dict(orient="records"):
        point = int(r["point"])
        cells = "".join(f"<td>{escape(str(r.get(p, '')))}</td>" for p in ["variant", *params])
        cells += "".join(_ci_cell(r, m, point) for m in metrics)
        rows.append(f"<tr><td>{point}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _ci_cell(row: dict[str, Any], metric: str, point: int) -> str:
    mean, low, high = (row.get(f"{metric}_{s}") for s in ("mean", "ci_low", "ci_high"))
    text = fmt(metric, mean)
    if finite(low) and finite(high):
        text += f" <small>[{fmt(metric, low)}, {fmt(metric, high)}]</small>"
    variant = escape(str(row.get("variant", "")), quote=True)
    return (f'<td data-point="{point}" data-variant="{variant}" data-metric="{metric}_mean" '
            f'data-value="{data_value(mean)}">{text}</td>')


# --- sections of a comparison ----------------------------------------------------------------


def _comparison_sections(directory: Path, scenario: Scenario) -> list[str]:
    table = pd.read_csv(directory / "table.csv", index_col=0)
    figures = "".join(png_img(path) for path in sorted(directory.glob("*.png")))
    sections = [
        section("Comparison", "<p>The table <code>meshsim compare</code> printed (seconds and "
                 "shares), one column per variant, over the measured window.</p>"
                 + frame_table(table, "comparison")),
        section("Figures", figures or "<p>No figures in the directory.</p>"),
    ]
    path = directory / "cascade.csv"
    if path.is_file():
        sections.append(section("Cascade metrics", "<p>One row per variant and fault.</p>"
                                 + frame_table(pd.read_csv(path, index_col=0), "cascade")))
    return sections


# --- sections of a capacity plan --------------------------------------------------------------


def _capacity_sections(directory: Path, scenario: Scenario) -> list[str]:
    for name in ("load.csv", "services.csv"):
        if not (directory / name).is_file():
            raise ReportError(f"{directory} has capacity.json but no {name}")
    plan = json.loads((directory / "capacity.json").read_text(encoding="utf-8"))
    load = pd.read_csv(directory / "load.csv")
    services = pd.read_csv(directory / "services.csv")
    failures_path = directory / "failures.csv"
    failures = pd.read_csv(failures_path) if failures_path.is_file() else None
    return [
        section("SLO verdicts", _capacity_slo(plan, load)),
        section("Throughput and p99 latency vs offered load", _capacity_figure(plan, load)),
        section("Per-service utilisation", _capacity_services(services)),
        section("Failures", "<p>One pod lost per service (N-1), at the target rate.</p>"
                 + (frame_table(failures.set_index("service"), "failures")
                    if failures is not None and not failures.empty else "<p>None tested.</p>")),
        section("Cascade metrics", "<p>What the mesh policies cost at the knee.</p>"
                 + frame_table(pd.DataFrame([plan.get("policy_effect") or {}],
                                             index=pd.Index(["knee"])), "policy_effect")),
        section("Findings", bullet_list(_capacity_findings(plan))),
    ]


def _capacity_slo(plan: dict[str, Any], load: pd.DataFrame) -> str:
    slos = ", ".join(plan.get("slos") or []) or "none"
    return (f"<p>Objectives: {escape(slos)}. A load <em>meets</em> them when the whole "
            "confidence interval of every figure is on the good side of its bound, "
            "<em>misses</em> them when a whole interval is on the bad side, and is "
            "<em>uncertain</em> otherwise.</p>"
            + frame_table(load.set_index("load_factor"), "load"))


def _capacity_figure(plan: dict[str, Any], load: pd.DataFrame) -> str:
    rows = load.sort_values("offered_rps")
    frame = rows.assign(_x=rows["offered_rps"])
    fig = Figure(figsize=(8, 6), dpi=DPI)
    top, bottom = fig.subplots(2, 1, sharex=True)
    _draw(top, frame, "throughput", 1.0, "C0", None, True)
    _draw(bottom, frame, "latency_p99", 1000.0, "C3", None, True)
    knee = plan.get("knee") or {}
    for ax in (top, bottom):
        if finite(knee.get("rps_low")) and finite(knee.get("rps_high")):
            ax.axvspan(knee["rps_low"], knee["rps_high"], color="C2", alpha=0.15, label="knee")
        if finite(plan.get("target_rps")):
            ax.axvline(plan["target_rps"], color="C7", linestyle="--", label="target")
    top.legend(fontsize="small")
    top.set_ylabel("throughput (successes/s)")
    bottom.set_ylabel("p99 latency (ms)")
    bottom.set_xlabel("offered load (requests/s)")
    fig.tight_layout()
    return ("<p>Mean over the replications of each tested load with its confidence band, "
            "from <code>load.csv</code>; the shaded span is the knee's interval.</p>"
            + figure_img(fig, "throughput and p99 latency against offered load", "load"))


def _capacity_services(services: pd.DataFrame) -> str:
    fig = Figure(figsize=(7, 0.4 * len(services) + 1.2), dpi=DPI)
    ax = fig.add_subplot()
    rows = services.iloc[::-1]
    mean = rows["utilisation_mean"] * 100
    err = [(mean - rows["utilisation_ci_low"] * 100).fillna(0),
           (rows["utilisation_ci_high"] * 100 - mean).fillna(0)]
    colours = ["C3" if b else "C0" for b in rows["bottleneck"]]
    ax.barh(rows["service"].astype(str), mean, xerr=err, color=colours)
    ax.set_xlabel("utilisation at the target rate (% of workers held; red: bottleneck)")
    ax.set_xlim(0, 100)
    fig.tight_layout()
    return (figure_img(fig, "utilisation per service at the target rate", "utilisation")
            + frame_table(services.set_index("service"), "services"))


def _capacity_findings(plan: dict[str, Any]) -> list[str]:
    knee = plan.get("knee") or {}
    out = []
    if finite(knee.get("rps_estimate")):
        sure = "" if knee.get("converged") else " (the search did not converge)"
        out.append(f"The scenario sustains about {knee['rps_estimate']:.4g} requests/s under its "
                   f"objectives, between {knee.get('rps_low', 0):.4g} and "
                   f"{knee.get('rps_high', 0):.4g}{sure}.")
    if plan.get("bottleneck"):
        out.append(f"The bottleneck is {plan['bottleneck']}.")
    if plan.get("replica_plan"):
        replicas = ", ".join(f"{k}: {v}" for k, v in plan["replica_plan"].items())
        out.append(f"Replicas proposed for {plan.get('plan_rps', 0):.4g} requests/s: {replicas}; "
                   f"with them the objectives are {plan.get('plan_verdict', 'not judged')}.")
    if plan.get("no_slack"):
        out.append("No slack for losing one pod: " + ", ".join(plan["no_slack"]) + ".")
    return [escape(s) for s in out]


# --- the scenario and its call graph ---------------------------------------------------------


def _scenario_section(scenario: Scenario, kind: str) -> str:
    facts = [("name", scenario.name), ("description", scenario.description or "-"),
             ("duration", f"{scenario.duration:g} s"), ("warm-up", f"{scenario.warmup:g} s"),
             ("seed", str(scenario.seed)), ("services", str(len(scenario.services))),
             ("clients", ", ".join(c.client for c in scenario.workload)),
             ("faults", str(len(scenario.faults)))]
    rows = "".join(f"<tr><th scope=\"row\">{escape(k)}</th><td>{escape(v)}</td></tr>"
                   for k, v in facts)
    return section("Scenario", f"<p>Report of a <strong>{escape(kind)}</strong> directory.</p>"
                    f"<table class=\"facts\">{rows}</table>"
                    f"<figure>{call_graph_svg(scenario)}<figcaption>Call graph: clients, the "
                    "ingress gateway, services and external services; a dashed arrow is a call "
                    "made only for some requests.</figcaption></figure>")


def _istio_section(scenario: Scenario) -> str:
    from .export import istio_manifests, manifests_yaml, not_exported

    try:
        text = manifests_yaml(istio_manifests(scenario))
    except ScenarioError as exc:  # a scenario the exporter refuses still gets a report
        return section("Recommended Istio configuration",
                        f"<p>Not exported: {escape(str(exc))}</p>")
    if not text.strip():
        return section("Recommended Istio configuration",
                        "<p>The scenario sets no mesh policy to export.</p>")
    skipped = not_exported(scenario)
    note = ("<p>Not expressible in Istio and left out: " + escape(", ".join(skipped)) + "</p>"
            if skipped else "")
    return section("Recommended Istio configuration",
                    "<p>The mesh policies of the scenario as run "
                    "(<code>meshsim export istio</code>, namespace <code>default</code>).</p>"
                    f"{note}<pre class=\"istio\">{escape(text)}</pre>")
