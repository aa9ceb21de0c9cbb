"""Writing a run's (or a comparison's) results to a directory, atomically.

The files are written into a hidden temporary directory beside the target and renamed into place
only when all of them are complete, so an error or Ctrl-C never leaves a half-written result
directory behind.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from .result import Result

if TYPE_CHECKING:
    from .compare import Comparison

__all__ = [
    "COMPARISON_MARKER",
    "OutputError",
    "atomic_dir",
    "check_out_dir",
    "summary_dict",
    "write_comparison",
    "write_run",
    "write_text_atomic",
]

#: The file that marks a directory written by :func:`write_comparison` (it may be replaced).
COMPARISON_MARKER = "table.csv"


class OutputError(Exception):
    """The output directory cannot be written (exists with foreign content, no permission, ...)."""


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return _clean(value.item())
    return value


def summary_dict(result: Result) -> dict[str, Any]:
    """The content of ``summary.json``: run metadata and the summary table by scope.

    Times are seconds; NaN (no data) becomes ``null``.
    """
    table = result.summary()
    rows = table.to_dict(orient="index")
    for row in rows.values():
        # Counts are integers; a column that also holds NaN for other scopes came out as float.
        for key in ("requests", "successes", "in_flight_at_end"):
            value = row.get(key)
            if isinstance(value, float) and math.isfinite(value):
                row[key] = int(value)
    return _clean({
        "scenario": result.scenario.name,
        "seed": result.meta["seed"],
        "meta": result.meta,
        "summary": rows,
    })


def write_run(result: Result, out: str | os.PathLike, parquet: bool | None = None) -> Path:
    """Write a run's contract files into ``out`` atomically.

    Writes ``summary.json``, ``requests.parquet`` (``requests.csv`` when pyarrow is missing or
    ``parquet`` is false), ``timeseries.csv``, ``events.csv``, ``stats.csv`` (Envoy's
    counters per client proxy and cluster), ``in_flight.csv`` (attempts unanswered at the end,
    the requests' columns), ``cascade.csv`` (one row per fault, :func:`meshsim.cascade.cascade`;
    only for a scenario with faults) and ``scenario.resolved.yaml``.

    Returns
    -------
    pathlib.Path
        The directory written.
    """
    use_parquet = _has_pyarrow() if parquet is None else parquet
    return atomic_dir(out, lambda tmp: _fill_run(result, tmp, use_parquet),
                      marker="summary.json")


def _fill_run(result: Result, tmp: Path, use_parquet: bool) -> None:
    if use_parquet:
        result.requests.to_parquet(tmp / "requests.parquet", index=False)
    else:
        result.requests.to_csv(tmp / "requests.csv", index=False)
    result.timeseries.to_csv(tmp / "timeseries.csv", index=False)
    result.events.to_csv(tmp / "events.csv", index=False)
    result.stats.to_csv(tmp / "stats.csv", index=False)
    result.in_flight.to_csv(tmp / "in_flight.csv", index=False)
    if result.scenario.faults:
        result.cascade().to_csv(tmp / "cascade.csv")
    (tmp / "scenario.resolved.yaml").write_text(result.scenario.to_yaml(), encoding="utf-8")
    (tmp / "summary.json").write_text(
        json.dumps(summary_dict(result), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )


def write_comparison(comparison: Comparison, out: str | os.PathLike,
                     parquet: bool | None = None) -> Path:
    """Write a comparison's frames, plots and runs into ``out`` atomically.

    Writes ``table.csv`` (the printed table, unformatted: seconds and shares), ``summary.csv``,
    ``health.csv``, ``cascade.csv`` and ``faults.csv`` (the frames of
    :class:`~meshsim.compare.Comparison`), the PNGs of
    :func:`~meshsim.plots.save_comparison_plots`, and for each variant a directory
    ``variants/<name>/`` with the files :func:`write_run` writes.

    Returns
    -------
    pathlib.Path
        The directory written.
    """
    from .plots import save_comparison_plots

    use_parquet = _has_pyarrow() if parquet is None else parquet

    def fill(tmp: Path) -> None:
        comparison.table.to_csv(tmp / "table.csv")
        comparison.summary.to_csv(tmp / "summary.csv")
        comparison.health.to_csv(tmp / "health.csv", index=False)
        comparison.cascade.to_csv(tmp / "cascade.csv")
        comparison.faults.to_csv(tmp / "faults.csv", index=False)
        save_comparison_plots(comparison, tmp)
        for name, result in comparison.results.items():
            run_dir = tmp / "variants" / _file_name(name)
            run_dir.mkdir(parents=True)
            _fill_run(result, run_dir, use_parquet)

    return atomic_dir(out, fill, marker=COMPARISON_MARKER)


def _file_name(name: str) -> str:
    # A variant's name is a YAML key: anything but a path separator or a leading dot is kept.
    safe = re.sub(r"[^\w.+-]", "_", name)
    return "_" + safe if safe.startswith(".") else safe


def atomic_dir(out: str | os.PathLike, fill: Callable[[Path], None], marker: str) -> Path:
    """Create directory ``out`` with the files ``fill(tmp)`` writes, all or nothing.

    An existing ``out`` is replaced only if it is empty or was written by meshsim (it holds
    ``marker``); anything else is refused rather than destroyed.
    """
    out = Path(out)
    check_out_dir(out, marker)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        # mkdtemp makes a private (0700) directory; the result should get the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from None
    old: Path | None = None
    try:
        try:
            fill(tmp)
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=parent))
            os.rmdir(old)
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException as exc:
        # Put the earlier results back if they were moved aside and the new ones did not land.
        if old is not None and old.exists() and not out.exists():
            os.replace(old, out)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from None
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def check_out_dir(out: str | os.PathLike, marker: str = "summary.json") -> None:
    """Refuse, before any work is done, an output path that cannot be (re)placed.

    An existing ``out`` is replaced only if it is empty or was written by meshsim (it holds
    ``marker``); anything else is refused rather than destroyed.
    """
    out = Path(out)
    if out.exists():
        if not out.is_dir():
            raise OutputError(f"{out} exists and is not a directory")
        if any(out.iterdir()) and not (out / marker).exists():
            raise OutputError(
                f"{out} exists and does not look like a meshsim output directory (no {marker}); "
                "choose another --out or remove it"
            )


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file all or nothing (a temporary file beside it, then a rename)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        # mkstemp makes the file private (0600); the result gets the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def read_requests(directory: str | os.PathLike) -> pd.DataFrame:
    """Read the requests table of a run directory (Parquet or CSV)."""
    directory = Path(directory)
    if (directory / "requests.parquet").exists():
        return pd.read_parquet(directory / "requests.parquet")
    return pd.read_csv(directory / "requests.csv")
