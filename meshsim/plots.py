"""Plots of a comparison: health over time, latency CDFs and outcome breakdowns.

Every plot function takes frames and an optional matplotlib ``Axes``, draws on it (on a new
figure's when none is given) and returns it; none calls ``plt.show()``. Files are drawn on
:class:`matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot, so writing
plots neither needs a display nor changes the backend of a notebook.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .metrics import END_TO_END

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .compare import Comparison

__all__ = [
    "DPI",
    "FIGSIZE",
    "MARKED_EVENTS",
    "plot_health",
    "plot_latency_cdf",
    "plot_outcomes",
    "save_comparison_plots",
]

#: Size (inches) and resolution of the files :func:`save_comparison_plots` writes: each PNG is
#: ``FIGSIZE * DPI`` = 1200 × 800 pixels.
FIGSIZE = (12.0, 8.0)
DPI = 100
#: Events marked on the health plots, and their markers.
MARKED_EVENTS = {"ejection": "v", "breaker_open": "x"}
#: Axis labels of the health metrics.
_LABELS = {
    "success_rate": "success rate",
    "goodput": "goodput (/s)",
    "latency_p50": "p50 latency (ms)",
    "latency_p99": "p99 latency (ms)",
    "in_flight": "in flight",
    "requests": "requests",
    "successes": "successes",
}
_MS = {"latency_p50", "latency_p99"}


def plot_health(
    health: pd.DataFrame,
    metric: str,
    *,
    scopes: Sequence[str] | None = None,
    faults: pd.DataFrame | None = None,
    events: pd.DataFrame | None = None,
    ax: Axes | None = None,
) -> Axes:
    """One health metric over time, a line per variant and scope.

    Parameters
    ----------
    health : pandas.DataFrame
        :func:`meshsim.cascade.health` rows (columns ``t`` in seconds, ``scope`` and
        ``metric``), with a ``variant`` column when several runs are drawn (as
        :attr:`Comparison.health`).
    metric : str
        The column to draw: ``success_rate``, ``latency_p99`` (drawn in ms), ``in_flight``, ...
    scopes : sequence of str, optional
        The scopes to draw; default every scope in ``health``.
    faults : pandas.DataFrame, optional
        Fault windows (columns ``fault``, ``start``, ``end`` in seconds) to shade.
    events : pandas.DataFrame, optional
        Events (columns ``t`` in seconds, ``kind``, and ``variant`` to colour them as their
        run); those of a kind in :data:`MARKED_EVENTS` are marked along the bottom.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = _axes(ax)
    frame = health if "variant" in health else health.assign(variant="")
    chosen = list(scopes) if scopes is not None else list(dict.fromkeys(frame["scope"]))
    colours = _colours(list(dict.fromkeys(frame["variant"])))
    styles = ["-", "--", ":", "-."]
    scale = 1000.0 if metric in _MS else 1.0
    for (variant, scope), rows in frame[frame["scope"].isin(chosen)].groupby(
            ["variant", "scope"], sort=False):
        label = " ".join(str(x) for x in (variant, scope if len(chosen) > 1 else "") if x)
        ax.plot(rows["t"], rows[metric] * scale, color=colours[variant],
                linestyle=styles[chosen.index(scope) % len(styles)], label=label or None,
                drawstyle="steps-post")
    if faults is not None and len(faults):
        _shade(ax, faults)
    if events is not None and len(events):
        _mark(ax, events, colours)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(_LABELS.get(metric, metric))
    if metric == "success_rate":
        ax.set_ylim(-0.02, 1.02)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")
    return ax


def plot_latency_cdf(
    requests_by_variant: Mapping[str, pd.DataFrame],
    *,
    scope: str = END_TO_END,
    ax: Axes | None = None,
) -> Axes:
    """The distribution of latency (``t_end - t_start``) of the answered requests of a scope.

    Parameters
    ----------
    requests_by_variant : mapping of str to pandas.DataFrame
        :attr:`Result.requests` (or the rows of it to count, e.g. after the warm-up) per
        variant.
    scope : str
        ``end-to-end`` (the end-user requests) or a callee (its attempts, as callers saw them).
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        Latency in ms (log scale) against the share of requests at most that slow.
    """
    ax = _axes(ax)
    colours = _colours(list(requests_by_variant))
    for name, requests in requests_by_variant.items():
        rows = _scope_rows(requests, scope)
        latency = np.sort((rows["t_end"] - rows["t_start"]).to_numpy()) * 1000.0
        if len(latency) == 0:
            continue
        share = np.arange(1, len(latency) + 1) / len(latency)
        ax.plot(latency, share, color=colours[name], label=name, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlabel(f"latency, {scope} (ms)")
    ax.set_ylabel("share of requests")
    ax.set_ylim(0.0, 1.01)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="lower right")
    return ax


def plot_outcomes(
    requests_by_variant: Mapping[str, pd.DataFrame],
    *,
    scope: str | None = END_TO_END,
    ax: Axes | None = None,
) -> Axes:
    """Stacked bars, one per variant: the share of answers by status and Envoy flags.

    Parameters
    ----------
    requests_by_variant : mapping of str to pandas.DataFrame
        :attr:`Result.requests` (or the rows of it to count) per variant.
    scope : str or None
        ``end-to-end``, a callee, or None for every attempt at every hop.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        Shares in %; an outcome is ``<status>`` or ``<status> <flags>`` (``503 UO``), status 0
        being no response.
    """
    ax = _axes(ax)
    counts = {}
    for name, requests in requests_by_variant.items():
        rows = requests if scope is None else _scope_rows(requests, scope)
        counts[name] = outcome_labels(rows).value_counts()
    table = pd.DataFrame(counts).fillna(0.0).T
    table = table[sorted(table.columns, key=_outcome_order)]
    shares = 100.0 * table.div(table.sum(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    bottom = np.zeros(len(shares))
    positions = np.arange(len(shares))
    for outcome in shares.columns:
        ax.bar(positions, shares[outcome], bottom=bottom, label=outcome, width=0.6)
        bottom += shares[outcome].to_numpy()
    ax.set_xticks(positions, [str(n) for n in shares.index])
    ax.set_ylabel(f"share of {'attempts' if scope is None else scope + ' answers'} (%)")
    ax.set_ylim(0, 100)
    if len(shares.columns):
        ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return ax


def outcome_labels(requests: pd.DataFrame) -> pd.Series:
    """Each row's outcome: its status, and its Envoy flags when it has some (``503 UO``)."""
    status = requests["status"].astype(int).astype(str)
    flags = requests["flags"].astype(str)
    return status.where(flags == "-", status + " " + flags)


def save_comparison_plots(comparison: Comparison, out_dir: str | os.PathLike) -> list[Path]:
    """Write the plots of a comparison as PNG files of :data:`FIGSIZE` × :data:`DPI` pixels.

    Writes ``success_rate.png``, ``latency_p99.png`` and ``in_flight.png`` (one panel per
    scope, a line per variant, faults shaded, ejections and breaker openings marked),
    ``latency_cdf.png`` (end to end after the warm-up) and ``outcomes.png`` (end to end and
    every attempt, after the warm-up). Each file is written whole or not at all.

    Returns
    -------
    list of pathlib.Path
        The files written, in that order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    health, faults, events = comparison.health, comparison.faults, comparison.events
    faults = faults.drop_duplicates(["fault", "start", "end"]) if len(faults) else None
    measured = {name: _after_warmup(r.requests, r.scenario.warmup)
                for name, r in comparison.results.items()}
    written = []
    for metric in ("success_rate", "latency_p99", "in_flight"):
        # Per client would repeat end to end for most scenarios: the callees tell the story.
        scopes = [s for s in dict.fromkeys(health["scope"]) if not str(s).startswith("client:")]
        fig = _figure()
        axes = fig.subplots(len(scopes), 1, sharex=True, squeeze=False)[:, 0]
        for ax, scope in zip(axes, scopes, strict=True):
            plot_health(health, metric, scopes=[scope], faults=faults,
                        events=_events_at(events, scope), ax=ax)
            ax.set_xlabel("")
            ax.set_title(scope, fontsize="small", loc="left")
            if ax is not axes[0] and ax.get_legend() is not None:
                ax.get_legend().remove()
        axes[-1].set_xlabel("time (s)")
        written.append(_save(fig, out / f"{metric}.png"))
    fig = _figure()
    plot_latency_cdf(measured, ax=fig.subplots())
    written.append(_save(fig, out / "latency_cdf.png"))
    fig = _figure()
    left, right = fig.subplots(1, 2)
    plot_outcomes(measured, ax=left).set_title("end-user requests", fontsize="small")
    plot_outcomes(measured, scope=None, ax=right).set_title("every attempt", fontsize="small")
    written.append(_save(fig, out / "outcomes.png"))
    return written


# --- helpers -----------------------------------------------------------------------------------


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else Figure(figsize=FIGSIZE, dpi=DPI).subplots()


def _figure() -> Figure:
    # A fixed layout engine, not bbox_inches="tight": the file's pixel size must not depend on
    # the labels drawn.
    return Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")


def _colours(names: list[str]) -> dict[str, str]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _scope_rows(requests: pd.DataFrame, scope: str) -> pd.DataFrame:
    if scope == END_TO_END:
        return requests[requests["parent_span_id"] == 0]
    return requests[requests["destination"] == scope]


def _after_warmup(requests: pd.DataFrame, warmup: float) -> pd.DataFrame:
    return requests[requests["t_start"] >= warmup]


def _events_at(events: pd.DataFrame, scope: str) -> pd.DataFrame:
    """The marked events of a scope's panel: its own (as the destination), or all end to end."""
    marked = events[events["kind"].isin(list(MARKED_EVENTS))]
    return marked if scope == END_TO_END else marked[marked["destination"] == scope]


def _shade(ax: Axes, faults: pd.DataFrame) -> None:
    for i, fault in enumerate(faults.itertuples(index=False)):
        ax.axvspan(fault.start, fault.end, color="0.5", alpha=0.15, linewidth=0,
                   label="fault" if i == 0 else None)


def _mark(ax: Axes, events: pd.DataFrame, colours: Mapping[str, str]) -> None:
    # Along the bottom edge (x in data, y in axes units), whatever the metric's scale.
    for kind, marker in MARKED_EVENTS.items():
        rows = events[events["kind"] == kind]
        variants = rows["variant"] if "variant" in rows else pd.Series("", index=rows.index)
        for i, (variant, some) in enumerate(rows.groupby(variants, sort=False)):
            ax.plot(some["t"], np.full(len(some), 0.03), linestyle="none", marker=marker,
                    color=colours.get(variant, "k"), transform=ax.get_xaxis_transform(),
                    label=kind if i == 0 else None)


def _outcome_order(label: str) -> tuple[int, str]:
    status = int(label.split(" ", 1)[0])
    return (0 if 200 <= status < 400 else 1, label)


def _save(fig: Figure, path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
