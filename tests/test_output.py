"""Result directories: contract files, CSV fallback, JSON without NaN, atomic replacement."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

import meshsim
from meshsim import output
from meshsim.output import OutputError, atomic_dir, read_requests, summary_dict, write_run
from meshsim.result import REQUEST_COLUMNS

CASES = Path(__file__).parent / "cases"
CONTRACT = list(REQUEST_COLUMNS[:13])


@pytest.fixture(scope="module")
def result() -> meshsim.Result:
    """A short run with failures and an external service (so some summary cells are NaN)."""
    scenario = meshsim.load_scenario(CASES / "valid" / "external.yaml")
    return meshsim.run(scenario.with_overrides({"duration": "2s", "warmup": "500ms"}), seed=3)


def siblings(directory: Path) -> list[str]:
    """Names in the parent of ``directory`` other than ``directory`` itself."""
    return sorted(p.name for p in directory.parent.iterdir() if p != directory)


def _no_nan(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"summary.json holds {constant}")

    return json.loads(text, parse_constant=refuse)


def test_write_run_writes_the_contract_files(result, tmp_path):
    out = write_run(result, tmp_path / "run")
    assert out == tmp_path / "run"
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "events.csv",
        "in_flight.csv",
        "requests.parquet",
        "scenario.resolved.yaml",
        "stats.csv",
        "summary.json",
        "timeseries.csv",
    ]
    assert siblings(out) == []


def test_requests_file_keeps_every_row_and_the_column_order(result, tmp_path):
    out = write_run(result, tmp_path / "run")
    requests = read_requests(out)
    assert list(requests.columns[:13]) == CONTRACT
    pd.testing.assert_frame_equal(requests, result.requests)


def test_csv_fallback_without_pyarrow(result, tmp_path, monkeypatch):
    monkeypatch.setattr(output, "_has_pyarrow", lambda: False)
    out = write_run(result, tmp_path / "run")
    names = {p.name for p in out.iterdir()}
    assert "requests.csv" in names and "requests.parquet" not in names
    requests = read_requests(out)
    assert list(requests.columns[:13]) == CONTRACT
    assert len(requests) == len(result.requests)
    expected = result.requests.copy()
    for col in ("client", "source", "destination", "host", "flags"):
        expected[col] = expected[col].astype(str)
        requests[col] = requests[col].astype(str)
    # Floats are written with repr precision: times come back exactly.
    pd.testing.assert_frame_equal(requests, expected, check_dtype=False)


def test_parquet_false_forces_csv(result, tmp_path):
    out = write_run(result, tmp_path / "run", parquet=False)
    assert (out / "requests.csv").exists()
    assert not (out / "requests.parquet").exists()


def test_summary_json_is_strict_json_with_null_for_nan(result, tmp_path):
    out = write_run(result, tmp_path / "run")
    data = _no_nan((out / "summary.json").read_text(encoding="utf-8"))
    table = result.summary()
    assert table.isna().any().any(), "the fixture should have NaN cells to turn into null"
    e2e = data["summary"]["end-to-end"]
    assert e2e["requests"] == int(table.loc["end-to-end", "requests"])
    for column, value in table.loc["end-to-end"].items():
        assert (e2e[column] is None) == pd.isna(value), column
    assert data["seed"] == 3
    assert data["meta"]["arrivals"] == result.meta["arrivals"]


def test_summary_dict_has_no_nan(result):
    json.dumps(summary_dict(result), allow_nan=False)


def test_resolved_scenario_is_the_scenario_that_ran(result, tmp_path):
    out = write_run(result, tmp_path / "run")
    again = meshsim.load_scenario(out / "scenario.resolved.yaml")
    assert again == result.scenario
    assert again.seed == 3


def test_replacing_an_earlier_output_directory(result, tmp_path):
    out = tmp_path / "run"
    write_run(result, out)
    (out / "summary.json").write_text('{"old": true}\n', encoding="utf-8")
    write_run(result, out, parquet=False)
    assert "old" not in _no_nan((out / "summary.json").read_text(encoding="utf-8"))
    # The directory was replaced, not merged into: the old parquet file is gone.
    assert sorted(p.name for p in out.iterdir()) == [
        "events.csv",
        "in_flight.csv",
        "requests.csv",
        "scenario.resolved.yaml",
        "stats.csv",
        "summary.json",
        "timeseries.csv",
    ]
    assert siblings(out) == []  # no .tmp or .old left beside it


def test_an_empty_existing_directory_is_used(result, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    write_run(result, out)
    assert (out / "summary.json").exists()
    assert siblings(out) == []


def test_parent_directories_are_created(result, tmp_path):
    out = write_run(result, tmp_path / "a" / "b" / "run")
    assert (out / "summary.json").exists()


def test_result_directory_gets_the_usual_permissions(result, tmp_path):
    umask = os.umask(0o022)
    try:
        out = write_run(result, tmp_path / "run")
    finally:
        os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o755


def test_foreign_directory_is_refused_and_untouched(result, tmp_path):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious\n", encoding="utf-8")
    with pytest.raises(OutputError, match="does not look like a meshsim output directory"):
        write_run(result, out)
    assert [p.name for p in out.iterdir()] == ["chapter1.tex"]
    assert (out / "chapter1.tex").read_text(encoding="utf-8") == "precious\n"
    assert siblings(out) == []


def test_a_file_in_the_way_is_refused(result, tmp_path):
    out = tmp_path / "run"
    out.write_text("x", encoding="utf-8")
    with pytest.raises(OutputError, match="not a directory"):
        write_run(result, out)
    assert out.read_text(encoding="utf-8") == "x"


@pytest.mark.parametrize(
    "error", [RuntimeError("disk on fire"), KeyboardInterrupt()], ids=["error", "interrupt"]
)
def test_failure_while_filling_leaves_nothing(tmp_path, error):
    def fill(tmp: Path) -> None:
        (tmp / "summary.json").write_text("{}", encoding="utf-8")
        raise error

    with pytest.raises(type(error)):
        atomic_dir(tmp_path / "run", fill, marker="summary.json")
    assert list(tmp_path.iterdir()) == []


def test_failure_while_replacing_keeps_the_earlier_directory_untouched_by_fill(
    result, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    write_run(result, out)
    before = (out / "summary.json").read_bytes()
    monkeypatch.setattr(output, "summary_dict", lambda r: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_run(result, out)
    assert (out / "summary.json").read_bytes() == before
    assert siblings(out) == []


def test_failed_final_rename_keeps_the_earlier_results(result, tmp_path, monkeypatch):
    out = tmp_path / "run"
    write_run(result, out)
    before = (out / "summary.json").read_bytes()
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.endswith(".tmp"):
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        write_run(result, out)
    monkeypatch.undo()
    assert out.is_dir() and (out / "summary.json").read_bytes() == before
    assert siblings(out) == []


def test_a_file_written_atomically_gets_the_usual_permissions(tmp_path):
    import os
    import stat

    from meshsim.output import write_text_atomic

    path = tmp_path / "report.html"
    write_text_atomic(path, "<p>hi</p>")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert path.read_text() == "<p>hi</p>"
