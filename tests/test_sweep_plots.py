"""meshsim.sweep_plots on hand-made summary frames: the Pareto front exactly, and what each plot
draws (lines, bands, cells, the front) on the axes it is given."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from meshsim.plots import DPI, FIGSIZE
from meshsim.sweep_plots import pareto_front, plot_heatmap, plot_pareto, plot_sweep

POOL = "mesh.destinationRules.backend.trafficPolicy.connectionPool.http.http1MaxPendingRequests"
REPLICAS = "services.frontend.replicas"


def summary(**metrics: list[float]) -> pd.DataFrame:
    """A sweep_summary-shaped frame: 3 pool sizes x 2 variants, each metric with a CI of +-1."""
    base = pd.DataFrame({
        "point": [0, 0, 1, 1, 2, 2],
        "variant": ["baseline", "retries", "baseline", "retries", "baseline", "retries"],
        POOL: [1, 1, 4, 4, 16, 16],
        "replications": 3,
    })
    for name, values in metrics.items():
        base[f"{name}_mean"] = values
        base[f"{name}_ci_low"] = np.asarray(values, dtype=float) - 1.0
        base[f"{name}_ci_high"] = np.asarray(values, dtype=float) + 1.0
    return base


def new_ax() -> Axes:
    return Figure().subplots()


# --- pareto_front --------------------------------------------------------------------------------


def test_pareto_front_of_a_hand_example():
    df = pd.DataFrame({
        "p99": [0.10, 0.20, 0.30, 0.20, 0.05, 0.30],
        "goodput": [100, 150, 140, 150, 50, 200],
    }, index=list("abcdef"))
    # c is dominated by b (faster, more goodput); b and d tie and both stay; e is the fastest,
    # f the most goodput.
    front = pareto_front(df, minimize="p99", maximize="goodput")
    assert front.index.tolist() == ["a", "b", "d", "e", "f"]
    assert front.equals(df.loc[["a", "b", "d", "e", "f"]])


def test_pareto_front_directions_and_several_columns():
    df = pd.DataFrame({"cost": [1, 2, 3], "speed": [3, 2, 1], "gain": [1, 1, 9]})
    assert pareto_front(df, minimize="cost").index.tolist() == [0]
    assert pareto_front(df, maximize="speed").index.tolist() == [0]
    assert pareto_front(df, maximize=["speed", "gain"]).index.tolist() == [0, 2]
    assert pareto_front(df, minimize=["cost"], maximize=["gain"]).index.tolist() == [0, 2]


def test_pareto_front_leaves_out_rows_with_nan_and_needs_a_column():
    df = pd.DataFrame({"p99": [1.0, math.nan, 2.0], "goodput": [1.0, 99.0, 2.0]})
    assert pareto_front(df, minimize="p99", maximize="goodput").index.tolist() == [0, 2]
    assert pareto_front(df.iloc[:0], minimize="p99").empty
    with pytest.raises(ValueError, match="at least one column"):
        pareto_front(df)


# --- plot_sweep ----------------------------------------------------------------------------------


def test_plot_sweep_draws_a_line_and_a_band_per_variant_on_the_given_ax():
    frame = summary(goodput=[10.0, 8.0, 40.0, 30.0, 50.0, 45.0])
    ax = new_ax()
    assert plot_sweep(frame, POOL, "goodput", ax=ax) is ax
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"baseline", "retries"}
    assert lines["baseline"].get_xdata().tolist() == [1, 4, 16]
    assert lines["retries"].get_ydata().tolist() == [8.0, 30.0, 45.0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    # The band of the baseline spans its CI: 9..51 over the three points.
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(9.0) and ys.max() == pytest.approx(51.0)
    assert bands[0].get_facecolor()[0][:3].tolist() == pytest.approx(
        list(to_rgb(lines["baseline"].get_color())))
    assert ax.get_xlabel() == POOL and ax.get_ylabel() == "goodput (/s)"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["baseline", "retries"]


def test_plot_sweep_latency_in_ms_and_no_band_without_an_interval():
    frame = summary(latency_p99=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    frame["latency_p99_ci_low"] = np.nan
    frame["latency_p99_ci_high"] = np.nan
    ax = plot_sweep(frame[frame["variant"] == "baseline"], POOL, "latency_p99", ax=new_ax())
    assert ax.get_lines()[0].get_ydata().tolist() == pytest.approx([100.0, 300.0, 500.0])
    assert not [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert ax.get_ylabel() == "p99 latency (ms)"
    assert ax.get_legend() is None  # one variant: nothing to tell apart


def test_plot_sweep_takes_a_plain_metric_column_and_makes_its_own_figure():
    frame = pd.DataFrame({POOL: [4, 1, 16], "goodput": [2.0, 1.0, 3.0]})
    ax = plot_sweep(frame, POOL, "goodput", hue=None)
    assert ax.figure.get_size_inches().tolist() == list(FIGSIZE) and ax.figure.dpi == DPI
    (line,) = ax.get_lines()
    assert line.get_xdata().tolist() == [1, 4, 16]  # sorted along x
    assert ax.get_legend() is None


def test_plot_sweep_refuses_a_line_with_a_repeated_x_and_names_missing_columns():
    frame = summary(goodput=[1.0] * 6)
    with pytest.raises(ValueError, match="filter the other parameters"):
        plot_sweep(frame, POOL, "goodput", hue=None, ax=new_ax())
    with pytest.raises(KeyError, match="latency_p99_mean"):
        plot_sweep(frame, POOL, "latency_p99", ax=new_ax())
    with pytest.raises(KeyError, match=r"services\.x\.replicas"):
        plot_sweep(frame, "services.x.replicas", "goodput", ax=new_ax())


# --- plot_heatmap --------------------------------------------------------------------------------


def grid() -> pd.DataFrame:
    rows = [{"point": i, "variant": "baseline", POOL: pool, REPLICAS: replicas,
             "success_rate_mean": rate}
            for i, (pool, replicas, rate) in enumerate([
                (1, 2, 0.5), (4, 2, 0.8), (16, 2, 0.9),
                (1, 4, 0.7), (4, 4, 0.95), (16, 4, 0.999)])]
    return pd.DataFrame(rows)


def test_plot_heatmap_draws_one_annotated_cell_per_point():
    ax = new_ax()
    assert plot_heatmap(grid(), POOL, REPLICAS, "success_rate", ax=ax) is ax
    (image,) = [a for a in ax.get_children() if isinstance(a, AxesImage)]
    # Rows are the y values bottom to top (2, 4), columns the x values (1, 4, 16).
    assert np.asarray(image.get_array()).tolist() == [[0.5, 0.8, 0.9], [0.7, 0.95, 0.999]]
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert ((2, 1), "0.999") in texts and ((0, 0), "0.500") in texts and len(texts) == 6
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "16"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["2", "4"]
    assert ax.get_xlabel() == POOL and ax.get_ylabel() == REPLICAS
    assert len(ax.figure.axes) == 2  # the colour bar


def test_plots_keep_the_grid_order_of_values_that_are_not_numbers():
    frame = grid()
    frame[POOL] = frame[POOL].map({1: "1s", 4: "5s", 16: "30s"})
    ax = plot_heatmap(frame, POOL, REPLICAS, "success_rate", ax=new_ax())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1s", "5s", "30s"]
    ax = plot_sweep(frame[frame[REPLICAS] == 4], POOL, "success_rate", ax=new_ax())
    assert ax.get_lines()[0].get_ydata().tolist() == [0.7, 0.95, 0.999]


def test_plot_heatmap_leaves_missing_pairs_blank_and_marks_never():
    frame = grid().drop(index=5)
    frame.loc[0, "success_rate_mean"] = math.inf
    ax = plot_heatmap(frame, POOL, REPLICAS, "success_rate", ax=new_ax())
    texts = {t.get_position(): t.get_text() for t in ax.texts}
    assert (2, 1) not in texts and texts[(0, 0)] == "never" and len(texts) == 5
    frame["latency_p99_mean"] = [0.0123, 0.5, 5.37, 0.1, math.nan]
    ax = plot_heatmap(frame, POOL, REPLICAS, "latency_p99", ax=new_ax())
    texts = {t.get_position(): t.get_text() for t in ax.texts}
    assert texts == {(0, 0): "12.3", (1, 0): "500", (2, 0): "5370", (0, 1): "100"}


def test_plot_heatmap_needs_one_variant():
    frame = pd.concat([grid(), grid().assign(variant="retries")], ignore_index=True)
    with pytest.raises(ValueError, match="variant="):
        plot_heatmap(frame, POOL, REPLICAS, "success_rate", ax=new_ax())
    with pytest.raises(ValueError, match="no variant 'nope'"):
        plot_heatmap(frame, POOL, REPLICAS, "success_rate", variant="nope", ax=new_ax())
    ax = plot_heatmap(frame, POOL, REPLICAS, "success_rate", variant="retries", ax=new_ax())
    assert len(ax.texts) == 6
    with pytest.raises(ValueError, match="several rows"):
        plot_heatmap(pd.concat([grid(), grid()]), POOL, REPLICAS, "success_rate", ax=new_ax())


# --- plot_pareto ---------------------------------------------------------------------------------


def test_plot_pareto_draws_every_point_and_highlights_the_front():
    frame = summary(goodput=[100.0, 150.0, 140.0, 150.0, 50.0, 200.0],
                    latency_p99=[0.10, 0.20, 0.30, 0.20, 0.05, 0.30])
    ax = new_ax()
    assert plot_pareto(frame, ax=ax) is ax
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    # One scatter per variant, then the rings of the front.
    assert sum(len(c.get_offsets()) for c in dots[:-1]) == len(frame)
    front = pareto_front(frame, minimize="latency_p99_mean", maximize="goodput_mean")
    assert front.index.tolist() == [0, 1, 3, 4, 5]
    rings = np.asarray(dots[-1].get_offsets())
    assert sorted(map(tuple, rings.tolist())) == sorted(
        zip(front["latency_p99_mean"] * 1000.0, front["goodput_mean"], strict=True))
    (line,) = [x for x in ax.get_lines() if x.get_label() == "Pareto front"]
    assert line.get_xdata().tolist() == pytest.approx([50.0, 100.0, 200.0, 200.0, 300.0])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["baseline", "retries", "Pareto front"]
    assert ax.get_xlabel() == "p99 latency (ms) (lower is better)"
