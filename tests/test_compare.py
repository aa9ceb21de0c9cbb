"""meshsim.compare and ``meshsim compare``: common random numbers, the table against its frames,
the plot files, and the command's exit codes."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import meshsim
from meshsim.cli import main
from meshsim.compare import (
    HEADLINE,
    PER_FAULT,
    format_table,
    format_value,
    variant_scenarios,
)
from meshsim.plots import (
    DPI,
    FIGSIZE,
    plot_health,
    plot_latency_cdf,
    plot_outcomes,
    save_comparison_plots,
)

ROOT = Path(__file__).resolve().parent.parent
STORM = ROOT / "scenarios" / "retry-storm.yaml"
MMC = ROOT / "scenarios" / "mmc.yaml"
# An outage of c, short: the retry-storm's variants then differ a lot, in a fraction of a second.
SHORT = {"duration": "5s", "warmup": "1s", "services.c.errors.rate": "100%"}
SHORT_ARGS = [f"--set={k}={v}" for k, v in SHORT.items()]
FAULT = {"kind": "hang", "target": "c", "start": "2s", "duration": "1s", "name": "c hangs"}
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def storm():
    return meshsim.compare(STORM, seed=3, overrides={**SHORT, "faults": [FAULT]})


def png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG file, from its IHDR chunk (the first, right after the
    signature)."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG and head[12:16] == b"IHDR", f"{path.name} is not a PNG"
    return struct.unpack(">II", head[16:24])


# --- variants and common random numbers ----------------------------------------------------------


def test_one_scenario_gives_its_baseline_and_every_variant(storm):
    assert storm.variants == ["baseline", "retry-budget", "retry-at-c-only"]
    assert list(storm.table.columns) == storm.variants
    assert all(r.meta["seed"] == 3 for r in storm.results.values())


def test_baseline_and_variants_are_the_runs_of_their_scenarios_with_the_same_seed(storm):
    scenario = meshsim.load_scenario(STORM)
    overrides = {**SHORT, "faults": [FAULT]}
    for name in ("baseline", "retry-at-c-only"):
        alone = meshsim.run(scenario.variant(name), seed=3, overrides=overrides)
        pd.testing.assert_frame_equal(storm.results[name].requests, alone.requests)


def test_variants_differ(storm):
    requests = {n: r.requests for n, r in storm.results.items()}
    assert not requests["baseline"].equals(requests["retry-budget"])
    attempts_on_c = {n: int((r["destination"] == "c").sum()) for n, r in requests.items()}
    # 3 tries at each of 3 hops: 27 on c per user request, against 3 when only b's retries act.
    assert attempts_on_c["baseline"] > 5 * attempts_on_c["retry-at-c-only"]
    assert storm.table.loc["latency_p99", "baseline"] > storm.table.loc["latency_p99",
                                                                         "retry-at-c-only"]


def test_default_seed_is_the_scenarios():
    comparison = meshsim.compare(MMC, overrides={"duration": "5s", "warmup": "0s"})
    assert comparison.seed == meshsim.load_scenario(MMC).seed


def test_only_the_named_variants_in_their_order():
    named = variant_scenarios(STORM, variants=["retry-at-c-only", "baseline"])
    assert list(named) == ["retry-at-c-only", "baseline"]
    assert not named["retry-at-c-only"].variants  # a variant has no variants of its own


def test_unknown_variant_is_a_scenario_error_with_a_suggestion():
    with pytest.raises(meshsim.ScenarioError) as err:
        variant_scenarios(STORM, variants=["budget"])
    assert str(err.value) == (f"{STORM}: variants.budget: unknown variant 'budget' "
                              "(did you mean 'retry-budget'?)")


def test_overrides_apply_to_every_variant_after_its_own():
    named = variant_scenarios(STORM, overrides={
        "duration": "6s", "mesh.virtualServices.c.http[0].retries.attempts": 1})
    assert {sc.duration for sc in named.values()} == {6.0}
    assert {sc.mesh.virtual_services["c"].http[0].retries.attempts
            for sc in named.values()} == {1}


def test_several_files_are_one_variant_each_named_by_stem(tmp_path):
    copy = tmp_path / "mmc.yaml"
    copy.write_text(MMC.read_text(encoding="utf-8"), encoding="utf-8")
    named = variant_scenarios([STORM, MMC, copy])
    assert list(named) == ["retry-storm", "mmc", "mmc-2"]
    with pytest.raises(ValueError, match="one scenario"):
        variant_scenarios([STORM, MMC], variants=["baseline"])
    short = {"duration": "4s", "warmup": "1s"}
    comparison = meshsim.compare([STORM, MMC], seed=5, overrides=short)
    assert {r.meta["seed"] for r in comparison.results.values()} == {5}
    pd.testing.assert_frame_equal(comparison.results["mmc"].requests,
                                  meshsim.run(MMC, seed=5, overrides=short).requests)


# --- the table and the frames --------------------------------------------------------------------


def test_table_rows_come_from_the_frames(storm):
    table, summary = storm.table, storm.summary
    assert list(table.index[: len(HEADLINE)]) == list(HEADLINE)
    for name in storm.variants:
        e2e = summary.loc[(name, "end-to-end")]
        for metric in ("requests", "success_rate", "goodput", "latency_p50", "latency_p99",
                       "in_flight_at_end"):
            assert table.loc[metric, name] == pytest.approx(e2e[metric], nan_ok=True)
        callees = summary.loc[name].drop(index=["end-to-end", "client:users"])
        assert table.loc["wasted_work", name] == pytest.approx(callees["wasted_work"].sum())
        assert table.loc["amplification", name] == e2e["amplification"]
        for fault, row in storm.cascade.loc[name].iterrows():
            for metric in ("time_to_detect", "time_to_recover"):
                assert table.loc[f"{fault}: {metric}", name] == pytest.approx(row[metric],
                                                                              nan_ok=True)
            hit = [s for s in row["blast_radius"].split(",") if s]
            assert table.loc[f"{fault}: blast_radius", name] == len(hit)


def test_a_row_per_fault_metric(storm):
    assert list(storm.table.index[len(HEADLINE):]) == [f"c hangs: {m}" for m in PER_FAULT]
    assert list(storm.faults["variant"]) == storm.variants
    assert (storm.faults["start"] == 2.0).all() and (storm.faults["end"] == 3.0).all()


def test_printed_table_shows_the_frames_values(storm):
    text = format_table(storm, wall=1.25)
    heading, blank, header, *rows = text.splitlines()
    assert heading == "3 variants, 5s simulated (warm-up 1s), seed 3, 1.25s wall"
    assert blank == ""
    assert header.split() == ["metric", *storm.variants]
    assert len(rows) == len(storm.table)
    for line, (metric, values) in zip(rows, storm.table.iterrows(), strict=True):
        assert line.startswith(metric + " ")
        cells = [format_value(metric, v) for v in values]
        assert line.endswith("  ".join(cells).split("  ")[-1])
        for cell in cells:
            assert cell in line
    e2e = storm.summary.loc[("baseline", "end-to-end")]
    requests = next(r for r in rows if r.startswith("requests "))
    assert requests.split()[1] == str(int(e2e["requests"]))
    p99 = next(r for r in rows if r.startswith("latency_p99 "))
    assert p99.split()[1:3] == [f"{1000 * e2e['latency_p99']:.1f}", "ms"]


@pytest.mark.parametrize(("metric", "value", "shown"), [
    ("success_rate", 0.98765, "98.77%"),
    ("latency_p99", 0.1234, "123.4 ms"),
    ("requests", 2412.0, "2412"),
    ("amplification", 2.5, "2.50x"),
    ("goodput", 12.34, "12.3/s"),
    ("wasted_work", 3.21, "3.2 worker-s"),
    ("outage c: time_to_recover", math.inf, "never"),
    ("outage c: time_to_detect", 1.5, "1.5 s"),
    ("outage c: blast_radius", 3.0, "3"),
    ("latency_p50", np.nan, "-"),
])
def test_format_value(metric, value, shown):
    assert format_value(metric, value) == shown


# --- plots ---------------------------------------------------------------------------------------


def test_comparison_plots_are_png_files_of_the_fixed_size(storm, tmp_path):
    written = save_comparison_plots(storm, tmp_path / "plots")
    names = ["success_rate.png", "latency_p99.png", "in_flight.png", "latency_cdf.png",
             "outcomes.png"]
    assert [p.name for p in written] == names
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(names)  # no temp
    size = (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    for path in written:
        assert path.stat().st_size > 10_000, f"{path.name} is nearly empty"
        assert png_size(path) == size


def test_plot_functions_draw_on_the_given_axes_and_return_it(storm):
    requests = {n: r.requests for n, r in storm.results.items()}
    ax = Figure().subplots()
    assert plot_health(storm.health, "success_rate", scopes=["end-to-end"],
                       faults=storm.faults, events=storm.events, ax=ax) is ax
    assert len(ax.lines) >= len(storm.variants)
    assert len(ax.patches) == len(storm.faults)  # one shaded window per fault and variant
    ax = Figure().subplots()
    assert plot_latency_cdf(requests, scope="c", ax=ax) is ax
    assert len(ax.lines) == len(storm.variants)
    ax = Figure().subplots()
    assert plot_outcomes(requests, ax=ax) is ax
    heights = np.array([p.get_height() for p in ax.patches]).reshape(-1, len(storm.variants))
    assert heights.sum(axis=0) == pytest.approx([100.0] * len(storm.variants))
    assert isinstance(plot_health(storm.health, "in_flight"), Axes)  # a figure of its own


def test_health_plot_marks_ejections(storm):
    events = pd.DataFrame({"t": [2.0, 4.0], "kind": ["ejection", "pool_saturated"],
                           "destination": ["c", "c"], "variant": ["baseline", "baseline"]})
    ax = plot_health(storm.health, "success_rate", scopes=["c"], events=events)
    marks = [line for line in ax.lines if line.get_label() == "ejection"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [2.0]


# --- the command ---------------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_frames_and_plots(capsys, tmp_path):
    out = tmp_path / "cmp"
    assert main(["compare", str(STORM), "--seed", "3", *SHORT_ARGS,
                 "--set", "faults=[{kind: hang, target: c, start: 2s, duration: 1s, "
                 "name: c hangs}]", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    comparison = meshsim.compare(STORM, seed=3, overrides={**SHORT, "faults": [FAULT]})
    table = format_table(comparison).splitlines()
    assert printed.splitlines()[2:len(table)] == table[2:]
    assert printed.rstrip().endswith(f"written to {out}")
    saved = pd.read_csv(out / "table.csv", index_col="metric")
    pd.testing.assert_frame_equal(saved, comparison.table, check_names=False)
    for name in ("success_rate", "latency_p99", "in_flight", "latency_cdf", "outcomes"):
        assert png_size(out / f"{name}.png") == (int(FIGSIZE[0] * DPI), int(FIGSIZE[1] * DPI))
    assert sorted(p.name for p in (out / "variants").iterdir()) == sorted(comparison.variants)
    assert (out / "variants" / "baseline" / "summary.json").exists()


def test_cli_default_out_and_quiet(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(STORM), "--variant", "baseline", "-q", *SHORT_ARGS]) == 0
    assert capsys.readouterr().out == ""
    assert (tmp_path / "runs" / "compare-retry-storm" / "outcomes.png").exists()
    assert main(["compare", str(STORM), str(MMC), "-q", "--set", "duration=3s",
                 "--set", "warmup=1s"]) == 0
    assert (tmp_path / "runs" / "compare-retry-storm-vs-mmc" / "table.csv").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--variant", "budget"], "variants.budget: unknown variant 'budget' (did you mean "
                              "'retry-budget'?)"),
    (["--set", "services.cc.replicas=2"], "--set: services.cc.replicas: unknown service 'cc'"),
    ([str(MMC), "--variant", "baseline"], "--variant chooses among the variants of one FILE"),
])
def test_cli_bad_input_exits_2_with_a_message(capsys, tmp_path, args, message):
    assert main(["compare", str(STORM), *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_cli_missing_file_and_foreign_out_dir_exit_2(capsys, tmp_path):
    assert main(["compare", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: (top level): no such file" in capsys.readouterr().err
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    assert main(["compare", str(STORM), *SHORT_ARGS, "--out", str(foreign)]) == 2
    assert "does not look like a meshsim output directory" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_an_override_that_clashes_with_a_variant_is_checked_where_the_variant_runs():
    """`--set` applies to the file for a plain run, and after the variant's own changes in a
    comparison: a run never fails because of a variant it does not run."""
    text = MMC.read_text(encoding="utf-8") + (
        "\nvariants:\n  flaky: {services.api.errors.rate: 10%}\n")
    sc = meshsim.loads_scenario(text)
    bursty = {"services.api.errors": {"kind": "bursty", "meanGood": "1s", "meanBad": "1s"}}
    plain = sc.with_overrides(bursty)  # the variant's `rate` would not fit a bursty model
    assert plain.services["api"].errors.kind == "bursty"
    # In a comparison the override comes after the variant's change, and replaces it.
    both = meshsim.compare(sc, overrides={**bursty, "duration": "2s", "warmup": "1s"})
    assert both.results["flaky"].scenario.services["api"].errors.kind == "bursty"
    with pytest.raises(meshsim.ScenarioError, match="flaky"):
        sc.with_overrides({"variants.flaky": {"services.api.erors.rate": 0.1}})


def test_a_null_override_removes_a_map_entry_and_restores_a_default():
    text = MMC.read_text(encoding="utf-8") + (
        "  destinationRules:\n"  # inside the file's own mesh block, its last
        "    api: {trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}}\n"
        "variants:\n  no-rule: {mesh.destinationRules.api: null}\n")
    sc = meshsim.loads_scenario(text)
    assert "api" in sc.mesh.destination_rules
    assert sc.variant("no-rule").mesh.destination_rules == {}
    assert sc.with_overrides({"services.api.workers": None}).services["api"].workers == 8
