"""Plots of a sweep: a metric against a parameter, two parameters as a heatmap, a Pareto front.

They draw :func:`meshsim.sweep_summary` frames: one row per (point, variant) with the parameter
columns (named by their path) and, per metric ``m``, ``m_mean``, ``m_ci_low`` and ``m_ci_high``.
A metric is named without its suffix (``goodput``); the plots use ``m_mean`` and the interval
when the frame has them, or a column ``m`` itself, so the tidy frame of :func:`meshsim.sweep`
(one row per replication, no interval) can be drawn too once it has one row per point.

Like :mod:`meshsim.plots`, every function takes a frame and an optional matplotlib ``Axes``,
draws on it (on a new :class:`~matplotlib.figure.Figure` of :data:`meshsim.plots.FIGSIZE` when
none is given) and returns it; none goes through pyplot. Latencies (``latency_*``, seconds in
the frames) are drawn in ms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import DPI, FIGSIZE

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["pareto_front", "plot_heatmap", "plot_pareto", "plot_sweep"]

_LABELS = {
    "success_rate": "success rate",
    "goodput": "goodput (/s)",
    "requests": "requests",
    "in_flight_at_end": "in flight at end",
    "amplification": "amplification (hops per request)",
    "wasted_work": "wasted work (worker-s)",
    "slo_met": "share of replications meeting the SLO",
}


def pareto_front(
    df: pd.DataFrame,
    *,
    minimize: str | Sequence[str] = (),
    maximize: str | Sequence[str] = (),
) -> pd.DataFrame:
    """The rows of ``df`` that no other row dominates.

    A row dominates another when it is at least as good in every column and better in one:
    lower in each of ``minimize``, higher in each of ``maximize``. Rows with a NaN in one of
    those columns are left out; equal rows do not dominate each other, so both stay.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per candidate, e.g. a :func:`meshsim.sweep_summary` frame.
    minimize, maximize : str or sequence of str
        The columns where lower, and where higher, is better. At least one column in all.

    Returns
    -------
    pandas.DataFrame
        The non-dominated rows of ``df``, in their order in ``df``, with their index.

    Examples
    --------
    >>> df = pd.DataFrame({"p99": [1, 2, 3, 2], "goodput": [10, 20, 15, 5]})
    >>> pareto_front(df, minimize="p99", maximize="goodput").index.tolist()
    [0, 1]
    """
    low = [minimize] if isinstance(minimize, str) else list(minimize)
    high = [maximize] if isinstance(maximize, str) else list(maximize)
    if not low and not high:
        raise ValueError("pareto_front needs at least one column to minimize or maximize")
    # Lower is better in every column of `costs`.
    costs = pd.concat([df[low].astype(float), -df[high].astype(float)], axis=1).to_numpy()
    known = ~np.isnan(costs).any(axis=1)
    c = costs[known]
    no_worse = (c[:, None, :] <= c[None, :, :]).all(axis=2)  # [j, i]: j no worse than i anywhere
    better = (c[:, None, :] < c[None, :, :]).any(axis=2)  # [j, i]: j better than i somewhere
    dominated = (no_worse & better).any(axis=0)
    keep = np.zeros(len(df), dtype=bool)
    keep[np.flatnonzero(known)[~dominated]] = True
    return df[keep]


def plot_sweep(
    summary: pd.DataFrame,
    x: str,
    metric: str,
    *,
    hue: str | None = "variant",
    ax: Axes | None = None,
) -> Axes:
    """A metric against a parameter, a line per variant, with its confidence band.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`meshsim.sweep_summary` rows: the column ``x``, ``<metric>_mean`` and, for the
        band, ``<metric>_ci_low`` and ``<metric>_ci_high`` (or a column ``<metric>``, drawn
        without a band). Within a line, each value of ``x`` must appear once: filter the other
        parameters of a grid first, or draw one of them as ``hue``.
    x : str
        The parameter on the x axis, by its path (``services.backend.replicas``).
    metric : str
        ``goodput``, ``success_rate``, ``latency_p99`` (drawn in ms), ...
    hue : str or None
        The column that splits the rows into lines (``variant``, or another parameter); one
        line when None or when ``summary`` has no such column. A legend names the lines when
        there are several.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        A line with markers per value of ``hue`` and, where the interval is known (two
        replications or more), a band from ``<metric>_ci_low`` to ``<metric>_ci_high`` in the
        line's colour.

    Raises
    ------
    KeyError
        If ``summary`` has no column ``x``, or none for ``metric``.
    ValueError
        If a value of ``x`` appears twice within a line.
    """
    ax = _axes(ax)
    column = _column(summary, metric)
    _require(summary, x)
    scale = _scale(metric)
    groups = _groups(summary, hue)
    colours = {name: f"C{i % 10}" for i, name in enumerate(groups)}
    for name, rows in groups.items():
        rows = _ordered(rows, x)
        if rows[x].duplicated().any():
            raise ValueError(
                f"several rows with the same {x!r} in the line of {name!r}: filter the other "
                "parameters first, or draw one of them as hue")
        ax.plot(rows[x], rows[column] * scale, marker="o", color=colours[name],
                label=str(name) if len(groups) > 1 else None)
        band = _band(rows, metric)
        if band is not None:
            ax.fill_between(rows[x], band[0] * scale, band[1] * scale, color=colours[name],
                            alpha=0.2, linewidth=0)
    ax.set_xlabel(x)
    ax.set_ylabel(_label(metric))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best", title=hue)
    return ax


def plot_heatmap(
    summary: pd.DataFrame,
    x: str,
    y: str,
    metric: str,
    *,
    variant: str | None = None,
    ax: Axes | None = None,
) -> Axes:
    """A metric over a grid of two parameters, one annotated cell per point.

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`meshsim.sweep_summary` rows of a grid: columns ``x``, ``y`` and
        ``<metric>_mean`` (or ``<metric>``), one row per pair of values (of the variant drawn).
    x, y : str
        The parameters of the columns and of the rows of cells, by their paths.
    metric : str
        ``goodput``, ``success_rate``, ``latency_p99`` (drawn in ms), ...
    variant : str, optional
        The variant to draw; needed when ``summary`` has several in its ``variant`` column.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        Cells coloured by the metric (a colour bar beside them), each labelled with its value;
        the values of ``x`` from left to right and those of ``y`` from bottom to top, evenly
        spaced whatever their numeric gaps. A pair missing from the grid is left blank.

    Raises
    ------
    KeyError
        If a column is missing.
    ValueError
        If ``variant`` is needed or unknown, or a pair of values appears twice.
    """
    ax = _axes(ax)
    column = _column(summary, metric)
    _require(summary, x)
    _require(summary, y)
    rows = _one_variant(summary, variant)
    if rows.duplicated([x, y]).any():
        raise ValueError(f"several rows with the same ({x!r}, {y!r}): filter the other "
                         "parameters first")
    table = rows.pivot(index=y, columns=x, values=column)
    table = table.loc[_ordered(rows, y)[y].unique(), _ordered(rows, x)[x].unique()]
    values = table.to_numpy(dtype=float) * _scale(metric)
    shown = np.ma.masked_invalid(values)
    image = ax.imshow(shown, origin="lower", aspect="auto", cmap="viridis")
    ax.figure.colorbar(image, ax=ax, label=_label(metric))
    low, high = (shown.min(), shown.max()) if shown.count() else (0.0, 0.0)
    middle = (low + high) / 2.0
    for (i, j), value in np.ndenumerate(values):
        if np.isnan(value):
            continue
        # Dark text on the bright (high) end of viridis and on blank (infinite) cells, light
        # text on the dark end.
        colour = "black" if not np.isfinite(value) or value > middle else "white"
        ax.text(j, i, _format(metric, value), ha="center", va="center", color=colour,
                fontsize="small")
    ax.set_xticks(range(len(table.columns)), [_tick(v) for v in table.columns])
    ax.set_yticks(range(len(table.index)), [_tick(v) for v in table.index])
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    return ax


def plot_pareto(
    summary: pd.DataFrame,
    *,
    x: str = "latency_p99",
    y: str = "goodput",
    hue: str | None = "variant",
    ax: Axes | None = None,
) -> Axes:
    """Every point of a sweep by two metrics, with the non-dominated ones joined.

    Lower is better along ``x`` and higher along ``y`` (by default: lower p99, more goodput).
    The front is that of the means, over every row whatever its ``hue``: with few
    replications, points close to it may be no worse (see their intervals).

    Parameters
    ----------
    summary : pandas.DataFrame
        :func:`meshsim.sweep_summary` rows, with ``<x>_mean`` and ``<y>_mean`` (or columns
        ``x`` and ``y``). :func:`pareto_front` gives the rows of the front, with their
        parameters.
    x : str
        The metric to minimize, ``latency_p99`` by default (drawn in ms).
    y : str
        The metric to maximize, ``goodput`` by default.
    hue : str or None
        The column that colours the points (``variant``, or a parameter); one colour when None
        or when ``summary`` has no such column.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
        A dot per row, coloured by ``hue``; the rows on the front ringed in black and joined by
        a staircase line labelled ``Pareto front``.
    """
    ax = _axes(ax)
    xcol, ycol = _column(summary, x), _column(summary, y)
    xs, ys = _scale(x), _scale(y)
    groups = _groups(summary, hue)
    for i, (name, rows) in enumerate(groups.items()):
        ax.scatter(rows[xcol] * xs, rows[ycol] * ys, color=f"C{i % 10}", alpha=0.7,
                   label=str(name) if len(groups) > 1 else None)
    front = pareto_front(summary, minimize=xcol, maximize=ycol).sort_values(xcol)
    ax.plot(front[xcol] * xs, front[ycol] * ys, color="black", drawstyle="steps-post",
            linewidth=1.0, label="Pareto front")
    ax.scatter(front[xcol] * xs, front[ycol] * ys, facecolors="none", edgecolors="black",
               s=120, linewidths=1.5)
    ax.set_xlabel(_label(x) + " (lower is better)")
    ax.set_ylabel(_label(y) + " (higher is better)")
    ax.legend(fontsize="small", loc="best", title=hue if len(groups) > 1 else None)
    return ax


# --- helpers -----------------------------------------------------------------------------------


def _axes(ax: Axes | None) -> Axes:
    return ax if ax is not None else Figure(figsize=FIGSIZE, dpi=DPI).subplots()


def _require(frame: pd.DataFrame, column: str) -> None:
    if column not in frame:
        raise KeyError(f"no column {column!r}; the frame has {list(frame.columns)}")


def _column(frame: pd.DataFrame, metric: str) -> str:
    """The column that holds a metric: its mean in a summary, or the metric itself."""
    for column in (f"{metric}_mean", metric):
        if column in frame:
            return column
    raise KeyError(f"no column {metric + '_mean'!r} or {metric!r}; the frame has "
                   f"{list(frame.columns)}")


def _band(rows: pd.DataFrame, metric: str) -> tuple[pd.Series, pd.Series] | None:
    low, high = f"{metric}_ci_low", f"{metric}_ci_high"
    if low not in rows or high not in rows or rows[[low, high]].isna().all().all():
        return None
    return rows[low], rows[high]


def _groups(frame: pd.DataFrame, hue: str | None) -> dict[object, pd.DataFrame]:
    if hue is None or hue not in frame:
        return {"": frame}
    return dict(tuple(frame.groupby(hue, sort=False)))


def _one_variant(frame: pd.DataFrame, variant: str | None) -> pd.DataFrame:
    if "variant" not in frame:
        if variant is not None:
            raise ValueError(f"variant {variant!r} asked for, but the frame has no variants")
        return frame
    names = list(dict.fromkeys(frame["variant"]))
    if variant is None:
        if len(names) > 1:
            raise ValueError(f"the frame has several variants {names}: choose one with variant=")
        return frame
    if variant not in names:
        raise ValueError(f"no variant {variant!r}; the frame has {names}")
    return frame[frame["variant"] == variant]


def _ordered(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """Rows by increasing numeric ``column``; other values (``"5s"``, ``"LEAST_REQUEST"``) in
    the order they come, as the sweep's grid gave them."""
    if pd.api.types.is_numeric_dtype(rows[column]):
        return rows.sort_values(column, kind="stable")
    return rows


def _scale(metric: str) -> float:
    return 1000.0 if metric.startswith("latency_") else 1.0


def _label(metric: str) -> str:
    if metric.startswith("latency_"):
        return f"{metric.removeprefix('latency_')} latency (ms)"
    return _LABELS.get(metric, metric)


def _format(metric: str, value: float) -> str:
    if np.isinf(value):
        return "never" if value > 0 else "-inf"
    if metric in ("success_rate", "slo_met"):
        return f"{value:.3f}"
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def _tick(value: object) -> str:
    return f"{value:g}" if isinstance(value, float | np.floating) else str(value)
