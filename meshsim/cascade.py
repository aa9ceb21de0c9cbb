"""Cascading-failure metrics: pure functions from a run's frames to the figures that say how a
fault spread and whether the system recovered.

Every function takes a :class:`~meshsim.result.Result` (or its frames) and returns a DataFrame;
nothing here runs a simulation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .result import Result
    from .scenario import Scenario

__all__ = ["FAULT_COLUMNS", "cascade", "fault_windows", "health", "retry_amplification"]

#: Columns of :func:`fault_windows`.
FAULT_COLUMNS = ("fault", "kind", "target", "start", "end")

#: Value of ``time_to_recover`` when the run ended before recovery ("never": metastable).
NEVER = np.inf


def fault_windows(scenario: Scenario) -> pd.DataFrame:
    """The scenario's faults, one row each in the order written.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`FAULT_COLUMNS`: ``fault`` (its label: the ``name``, or ``<kind>
        <target>``), ``kind``, ``target`` (the service or external host hit, the edge's
        destination, or the client of a load spike; ``*`` for every client), ``start`` and
        ``end`` (seconds; ``end`` capped at the run's duration).
    """
    rows = []
    for fault in scenario.faults:
        start, end = fault.window(scenario.duration)
        if fault.kind == "network":
            target = fault.destination
        elif fault.kind == "loadSpike":
            target = fault.client or "*"
        else:
            target = fault.target
        rows.append((fault.label, fault.kind, target, start, end))
    frame = pd.DataFrame(rows, columns=list(FAULT_COLUMNS))
    return frame.astype({"start": "float64", "end": "float64"})


def health(result: Result, interval: float = 1.0) -> pd.DataFrame:
    """Per-window health of every scope (end to end and each callee)."""
    raise NotImplementedError


def retry_amplification(result: Result) -> pd.DataFrame:
    """Attempts per call at each hop and attempts per end-user request."""
    raise NotImplementedError


def cascade(result: Result) -> pd.DataFrame:
    """One row per fault: time to detect, time to recover, blast radius."""
    raise NotImplementedError
