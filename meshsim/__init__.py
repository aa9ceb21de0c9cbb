"""meshsim: a discrete-event simulator of service call chains behind an Istio/Envoy service mesh.

The public API::

    import meshsim
    scenario = meshsim.load_scenario("scenarios/shop.yaml")
    result = meshsim.run(scenario, seed=7, overrides={"services.cart.replicas": 4})
    result.requests      # one row per attempt per hop
    result.timeseries    # per second and per service
    result.summary()     # headline figures
    comparison = meshsim.compare("scenarios/retry-storm.yaml")  # baseline and variants, same seed
    comparison.table     # metrics by variant
    runs = meshsim.sweep("scenarios/pool-limits.yaml", grid={"services.frontend.replicas": [2, 4]},
                         replications=5)  # one row per point and replication
    meshsim.sweep_summary(runs)            # mean and 95% CI per point
    tuned = meshsim.tune(scenario, {"mesh.destinationRules.cart.trafficPolicy.connectionPool"
                                    ".tcp.maxConnections": (8, 64)}, constraints=["p99<300ms"])
    print(tuned.snippet)  # the best setting as Istio resources (needs meshsim[tune])
    plan = meshsim.capacity(scenario, ["p99<800ms", "success>=98%"], target_rps=2000)
    plan.knee, plan.bottleneck, plan.replica_plan  # the highest load, with its interval
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .capacity import CapacityResult, capacity
from .compare import Comparison, compare
from .errors import ScenarioError
from .result import Result
from .scenario import Scenario, load_scenario, loads_scenario, parse_scenario
from .sweep import evaluate, sweep, sweep_summary
from .tune import TuneResult, tune

__all__ = [
    "CapacityResult",
    "Comparison",
    "Result",
    "Scenario",
    "ScenarioError",
    "TuneResult",
    "__version__",
    "capacity",
    "compare",
    "evaluate",
    "load_scenario",
    "loads_scenario",
    "parse_scenario",
    "run",
    "sweep",
    "sweep_summary",
    "tune",
]

__version__ = "0.1.0"


def run(
    scenario: Scenario | str | os.PathLike,
    *,
    seed: int | None = None,
    overrides: Mapping[str, Any] | None = None,
    progress: Callable[[float], None] | None = None,
) -> Result:
    """Simulate a scenario once.

    Parameters
    ----------
    scenario : Scenario or path
        A loaded scenario, or the path of a scenario file.
    seed : int, optional
        Seed of every random stream; defaults to the scenario's ``seed``. The same scenario and
        seed always give identical results.
    overrides : mapping, optional
        Values to replace by dotted path, e.g. ``{"services.cart.replicas": 4}``.
    progress : callable, optional
        Called with the simulated time (seconds) 100 times during the run.

    Returns
    -------
    Result

    Raises
    ------
    ScenarioError
        If the scenario file or an override is invalid.
    """
    from .engine import simulate

    if not isinstance(scenario, Scenario):
        scenario = load_scenario(scenario)
    if overrides:
        scenario = scenario.with_overrides(overrides)
    return simulate(scenario, seed=seed, progress=progress)
