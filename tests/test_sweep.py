"""meshsim.sweep: the design, seeds and replications, the same frame whatever runs it (serial,
local processes, a Dask cluster), resuming after an interruption, the summary's intervals, and
``meshsim sweep``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import meshsim
from meshsim.cli import main
from meshsim.sweep import METRICS, design_points, sweep_summary, t_quantile

ROOT = Path(__file__).resolve().parent.parent
POOL = ROOT / "scenarios" / "pool-limits.yaml"
PENDING = "mesh.destinationRules.backend.trafficPolicy.connectionPool.http.http1MaxPendingRequests"
SHORT = {"duration": "6s", "warmup": "1s"}
GRID = {"services.frontend.replicas": [2, 4], PENDING: [1, 10]}


@pytest.fixture(scope="module")
def serial() -> pd.DataFrame:
    return meshsim.sweep(POOL, GRID, replications=2, overrides=SHORT, executor="serial")


# --- the design -----------------------------------------------------------------------------------


def test_a_grid_is_every_combination_the_last_path_fastest():
    points = design_points({"a": [1, 2], "b": ["x", "y", "z"]})
    assert points == [{"a": a, "b": b} for a in (1, 2) for b in ("x", "y", "z")]


def test_a_latin_hypercube_puts_one_point_in_each_stratum():
    points = design_points(samples={"a": (0.0, 1.0), "n": (1, 20)}, n_samples=20, seed=4)
    a = sorted(p["a"] for p in points)
    assert [int(x * 20) for x in a] == list(range(20))  # one per twentieth
    assert sorted(p["n"] for p in points) == list(range(1, 21))  # integers: each once
    assert points == design_points(samples={"a": (0.0, 1.0), "n": (1, 20)}, n_samples=20,
                                   seed=4)
    assert points != design_points(samples={"a": (0.0, 1.0), "n": (1, 20)}, n_samples=20,
                                   seed=5)


def test_random_samples_stay_in_their_ranges_and_combine_with_a_grid():
    points = design_points({"g": [0, 1]}, {"x": (5.0, 6.0)}, n_samples=7, design="random")
    assert len(points) == 14
    assert all(5.0 <= p["x"] < 6.0 and p["g"] in (0, 1) for p in points)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"grid": {"a": []}}, "non-empty list"),
    ({"samples": {"a": (1, 2)}}, "n_samples"),
    ({"samples": {"a": (2, 1)}, "n_samples": 3}, "high must exceed low"),
    ({"samples": {"a": (1, 2)}, "n_samples": 3, "design": "sobol"}, "design"),
])
def test_a_bad_design_is_a_clear_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        design_points(**kwargs)


# --- rows and seeds -------------------------------------------------------------------------------


def test_one_row_per_point_and_replication_in_order(serial):
    assert len(serial) == 4 * 2
    assert list(serial.columns[:6]) == ["point", "variant", "services.frontend.replicas",
                                        PENDING, "replication", "seed"]
    assert list(serial.columns[6:6 + len(METRICS)]) == list(METRICS)
    assert serial["point"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert serial["replication"].tolist() == [0, 1] * 4
    # Common random numbers: replication r has the same seed at every point.
    assert serial.groupby("replication")["seed"].nunique().eq(1).all()
    assert serial["seed"].nunique() == 2


def test_a_rows_seed_gives_its_run_again(serial):
    row = serial.iloc[5]
    sc = meshsim.load_scenario(POOL).with_overrides(
        {**SHORT, "services.frontend.replicas": int(row["services.frontend.replicas"]),
         PENDING: int(row[PENDING])})
    e2e = meshsim.run(sc, seed=int(row["seed"])).summary().loc["end-to-end"]
    for metric in ("requests", "success_rate", "goodput", "latency_p99"):
        assert e2e[metric] == row[metric]


def test_the_points_differ_as_the_settings_say(serial):
    by = serial.groupby(PENDING)["success_rate"].mean()
    assert by[1] < by[10]  # a pending queue of 1 per client sidecar refuses more (503 UO)


def test_variants_are_a_column():
    text = POOL.read_text(encoding="utf-8") + (
        "\nvariants:\n  slow: {services.backend.latency: 80ms}\n")
    sc = meshsim.loads_scenario(text)
    frame = meshsim.sweep(sc, {PENDING: [1, 10]}, variants=["baseline", "slow"],
                          overrides=SHORT, executor="serial")
    assert frame[["point", "variant"]].values.tolist() == [
        [0, "baseline"], [0, "slow"], [1, "baseline"], [1, "slow"]]
    # A slower backend fills the callers' pending queues: more 503 UO.
    ok = frame.set_index(["point", "variant"])["success_rate"]
    assert (ok.xs("slow", level=1) < ok.xs("baseline", level=1)).all()


def test_a_bad_path_fails_before_anything_runs():
    with pytest.raises(meshsim.ScenarioError, match="did you mean 'replicas'"):
        meshsim.sweep(POOL, {"services.frontend.replica": [2, 4]}, executor="serial")
    with pytest.raises(ValueError, match="unknown variant"):
        meshsim.sweep(POOL, GRID, variants=["nope"], executor="serial")


# --- the same frame whatever runs it --------------------------------------------------------------


def test_two_local_processes_give_the_same_frame(serial):
    parallel = meshsim.sweep(POOL, GRID, replications=2, overrides=SHORT, workers=2)
    pd.testing.assert_frame_equal(parallel, serial)


def test_a_dask_cluster_gives_the_same_frame(serial):
    pytest.importorskip("distributed")
    on_dask = meshsim.sweep(POOL, GRID, replications=2, overrides=SHORT, executor="dask",
                            workers=2)
    pd.testing.assert_frame_equal(on_dask, serial)


def test_any_executor_gives_the_same_frame(serial):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        threaded = meshsim.sweep(POOL, GRID, replications=2, overrides=SHORT, executor=pool)
    pd.testing.assert_frame_equal(threaded, serial)


# --- the output directory and resuming ------------------------------------------------------------


def test_an_output_directory_holds_the_spec_the_scenario_and_the_results(serial, tmp_path):
    out = tmp_path / "sw"
    frame = meshsim.sweep(POOL, GRID, replications=2, overrides=SHORT, executor="serial",
                          out=out)
    pd.testing.assert_frame_equal(frame, serial)
    assert {p.name for p in out.iterdir()} >= {"sweep.yaml", "scenario.resolved.yaml",
                                               "batches", "summary.csv"}
    saved = pd.read_parquet(out / "results.parquet") if (out / "results.parquet").exists() \
        else pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(saved, serial, check_dtype=False)
    # Run again: nothing left to do, the same frame.
    calls = []
    again = meshsim.sweep(POOL, GRID, replications=2, overrides=SHORT, executor="serial",
                          out=out, progress=lambda done, total: calls.append((done, total)))
    pd.testing.assert_frame_equal(again, serial)
    assert calls == [(8, 8)]


def test_another_sweep_or_a_foreign_directory_is_refused(tmp_path):
    from meshsim.output import OutputError

    out = tmp_path / "sw"
    meshsim.sweep(POOL, {PENDING: [1]}, overrides=SHORT, executor="serial", out=out)
    with pytest.raises(OutputError, match="another sweep"):
        meshsim.sweep(POOL, {PENDING: [2]}, overrides=SHORT, executor="serial", out=out)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not written by a meshsim sweep"):
        meshsim.sweep(POOL, {PENDING: [1]}, overrides=SHORT, executor="serial", out=foreign)


def test_a_sweep_interrupted_and_run_again_has_every_run_exactly_once(tmp_path):
    """SIGINT (Ctrl-C) part-way: the finished batches stay; the same command again runs the
    rest; the frame is the uninterrupted sweep's, with no row twice."""
    out = tmp_path / "sw"
    grid = ["--grid", f"{PENDING}=1,2,3,4,5,6,7,8", "--grid", "services.frontend.replicas=2,4"]
    command = [sys.executable, "-m", "meshsim", "sweep", str(POOL), *grid, "-n", "2",
               "--set", "duration=6s", "--set", "warmup=1s", "--workers", "2", "--quiet",
               "--out", str(out)]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    batches = out / "batches"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if batches.exists() and any(p.suffix in (".parquet", ".csv") for p in batches.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resumes" in err
    kept = [p for p in batches.iterdir() if not p.name.startswith(".")]
    assert len(kept) >= 1
    assert not (out / "summary.csv").exists()  # not finished

    assert subprocess.run(command, cwd=ROOT, timeout=120).returncode == 0
    resumed = meshsim.sweep(POOL, {PENDING: list(range(1, 9)),
                                   "services.frontend.replicas": [2, 4]}, replications=2,
                            overrides=SHORT, out=out, executor="serial")
    fresh = meshsim.sweep(POOL, {PENDING: list(range(1, 9)),
                                 "services.frontend.replicas": [2, 4]}, replications=2,
                          overrides=SHORT, executor="serial")
    pd.testing.assert_frame_equal(resumed, fresh)
    assert not resumed.duplicated(["point", "variant", "replication"]).any()
    assert len(resumed) == 32


# --- the summary ------------------------------------------------------------------------------


def test_t_quantiles_are_students():
    for level in (0.90, 0.95, 0.99):
        for df in (1, 2, 5, 29, 30, 31, 60, 500):
            assert t_quantile(level, df) == pytest.approx(
                stats.t.ppf(1 - (1 - level) / 2, df), abs=1e-4)


def test_the_summary_gives_the_mean_and_the_t_interval(serial):
    summary = sweep_summary(serial, metrics=["goodput"])
    assert len(summary) == 4
    assert summary["replications"].eq(2).all()
    for _, row in summary.iterrows():
        x = serial[serial["point"] == row["point"]]["goodput"].to_numpy()
        low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(),
                                     scale=x.std(ddof=1) / np.sqrt(len(x)))
        assert row["goodput_mean"] == pytest.approx(x.mean())
        assert (row["goodput_ci_low"], row["goodput_ci_high"]) == pytest.approx((low, high),
                                                                                 rel=1e-4)


def test_a_never_recovered_replication_makes_the_mean_infinite():
    frame = pd.DataFrame({"point": [0, 0, 0], "variant": "baseline", "x": 1,
                          "replication": [0, 1, 2], "seed": [1, 2, 3],
                          "f: time_to_recover": [3.0, np.inf, 5.0]})
    row = sweep_summary(frame).iloc[0]
    assert row["f: time_to_recover_mean"] == np.inf
    assert row["f: time_to_recover_ci_high"] == np.inf


# --- the command ----------------------------------------------------------------------------------


def test_the_command_prints_each_point_and_writes_the_results(capsys, tmp_path, serial):
    out = tmp_path / "sw"
    assert main(["sweep", str(POOL), "--grid", "services.frontend.replicas=2,4",
                 "--grid", f"{PENDING}=[1, 10]", "-n", "2", "--set", "duration=6s",
                 "--set", "warmup=1s", "--workers", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("8 runs, 4 points")
    assert printed[2].split()[:3] == ["replicas", "http1MaxPendingRequests", "variant"]
    summary = sweep_summary(serial)
    for line, (_, row) in zip(printed[3:7], summary.iterrows(), strict=True):
        assert f"{row['goodput_mean']:.1f}" in line
    assert printed[-1] == f"results written to {out}"


def test_the_command_reads_a_spec_file(capsys, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"grid:\n  {PENDING}: [1, 10]\nreplications: 2\n"
                    "overrides: {duration: 6s, warmup: 1s}\n")
    assert main(["sweep", str(POOL), "--spec", str(spec), "--workers", "1", "-q",
                 "--out", str(tmp_path / "sw")]) == 0
    frame = pd.read_csv(tmp_path / "sw" / "summary.csv")
    assert frame["replications"].tolist() == [2, 2]


@pytest.mark.parametrize(("args", "message"), [
    (["--grid", "services.frontend.replica=2,4"], "did you mean 'replicas'"),
    (["--grid", "services.frontend.replicas"], "expected PATH=V1,V2"),
    (["--sample", "services.frontend.replicas=1..x", "--samples", "3"], "expected numbers"),
    (["--sample", "services.frontend.replicas=1..4"], "nSamples"),
    ([], "give 'grid'"),
    (["--grid", "services.frontend.replicas=2", "--variant", "nope"], "unknown variant"),
])
def test_bad_input_exits_2_with_a_message(capsys, tmp_path, args, message):
    assert main(["sweep", str(POOL), *args, "--workers", "1",
                 "--out", str(tmp_path / "sw")]) == 2
    assert message in capsys.readouterr().err


def test_a_bad_spec_file_points_at_its_line(capsys, tmp_path):
    spec = tmp_path / "sweep.yaml"
    spec.write_text("grid:\n  services.frontend.replicas: [2]\nreplication: 2\n")
    assert main(["sweep", str(POOL), "--spec", str(spec), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"{spec}:3: replication: unknown field" in err and "replications" in err


def test_sweeping_does_not_change_the_start_method_of_the_process():
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)
    meshsim.sweep(POOL, {PENDING: [1, 2]}, overrides=SHORT, workers=2)
    assert multiprocessing.get_start_method(allow_none=True) == before
    assert os.environ.get("MESHSIM_SWEEP") is None


@pytest.mark.parametrize(("n", "each", "workers", "count"), [
    (15, 0.2, 2, 4),    # 3 s of work: at least 3 tasks (0.6 s) a batch, 4 batches (2 × 2)
    (15, 0.01, 2, 1),   # all of it is less than half a second: one batch
    (5, 2.0, 2, 4),     # long tasks: about one each, a multiple of the workers
    (40, 0.1, 4, 8),
    (3, 0.1, 4, 1),
])
def test_batches_carry_half_a_second_and_share_out_evenly(n, each, workers, count):
    from meshsim.sweep import BATCH_SECONDS, _batches

    batches = _batches(list(range(n)), each, workers)
    sizes = [len(b) for b in batches]
    assert len(batches) == count
    assert [t for b in batches for t in b] == list(range(n))
    assert max(sizes) - min(sizes) <= 1
    if len(batches) > 1:
        assert min(sizes) * each >= BATCH_SECONDS - 1e-9


def test_dask_without_dask_installed_says_what_to_install(monkeypatch, capsys, tmp_path):
    for name in [m for m in sys.modules if m == "distributed" or m.startswith("distributed.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert main(["sweep", str(POOL), "--grid", f"{PENDING}=1,2", "--set", "duration=6s",
                 "--set", "warmup=1s", "--dask", "local", "--out", str(tmp_path / "sw")]) == 2
    assert "pip install 'meshsim[dask]'" in capsys.readouterr().err


def test_an_output_directory_that_cannot_be_made_is_bad_input(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["sweep", str(POOL), "--grid", f"{PENDING}=1", "--set", "duration=6s",
                 "--set", "warmup=1s", "--workers", "1", "--out", str(blocker / "sw")]) == 2
    assert "cannot write" in capsys.readouterr().err
