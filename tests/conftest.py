"""Helpers shared by the engine, property and theory tests: scenario builders, record views,
conservation and replications with t-based confidence intervals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

import meshsim

#: Columns of an exact record view (see :func:`rows`).
ROW = ("span_id", "parent_span_id", "source", "destination", "host", "status", "flags",
       "t_start", "t_arrive", "t_begin", "t_reply", "t_end")
_TIMES = {"t_start", "t_arrive", "t_begin", "t_reply", "t_end"}


def build(services: dict, workload: list, *, duration: Any = "1s", network: Any = "0ms",
          overhead: Any = "0ms", mesh: dict | None = None, **extra: Any) -> meshsim.Scenario:
    """A scenario from plain data, with a free network and free proxies unless told otherwise.

    It is a bare Envoy (``istioDefaults: false``) with one ingress pod: no default retry policy
    or random gateway choice, so that every record of a tiny run can be written down exactly.
    """
    mesh = {"istioDefaults": False, "ingressGateway": {"replicas": 1},
            "sidecar": {"hopOverhead": overhead}, **(mesh or {})}
    return meshsim.parse_scenario({"duration": duration, "services": services,
                                   "workload": workload, "network": {"latency": network},
                                   "mesh": mesh, **extra})


def closed(entry: str, users: int = 1, think: Any = "0.5s", *, client: str = "u",
           via_ingress: bool = False) -> dict:
    """A client of ``users`` closed-loop users (constant think time unless told otherwise)."""
    return {"client": client, "entry": entry, "viaIngress": via_ingress,
            "arrival": {"kind": "closed", "users": users, "thinkTime": think}}


def poisson(entry: str, rate: Any, *, client: str = "u", via_ingress: bool = False) -> dict:
    """An open-loop Poisson client; ``rate`` is ``"20/s"`` or a rate profile."""
    return {"client": client, "entry": entry, "viaIngress": via_ingress,
            "arrival": {"kind": "poisson", "rate": rate}}


def rows(frame: pd.DataFrame, columns: tuple[str, ...] = ROW) -> list[tuple]:
    """Records as tuples sorted by span: names as str, times rounded to the nanosecond (so that
    ``0.5 + 0.001`` compares equal to ``0.501``) and NaN as None."""
    out = []
    for rec in frame.sort_values("span_id")[list(columns)].itertuples(index=False):
        out.append(tuple(_plain(c, v) for c, v in zip(columns, rec, strict=True)))
    return out


def _plain(column: str, value: Any) -> Any:
    if column in _TIMES:
        return None if math.isnan(value) else round(float(value), 9)
    if isinstance(value, np.generic):
        return value.item()
    return value


def everything(result: meshsim.Result) -> pd.DataFrame:
    """Answered and unanswered attempts together, names as plain strings."""
    both = pd.concat([result.requests, result.in_flight], ignore_index=True)
    for col in ("client", "source", "destination", "host", "flags"):
        both[col] = both[col].astype(str)
    return both


def assert_conserved(result: meshsim.Result) -> None:
    """Every end-user request ends exactly once, or is still in flight at the end."""
    both = everything(result)
    roots = both[both["parent_span_id"] == 0]
    arrivals = result.meta["arrivals"]
    assert sorted(roots["request_id"]) == list(range(sum(arrivals.values())))
    per_client = roots.groupby("client")["request_id"].count().to_dict()
    assert {c: per_client.get(c, 0) for c in arrivals} == arrivals
    answered = (result.requests["parent_span_id"] == 0).groupby(
        result.requests["client"].astype(str)).sum().to_dict()
    assert {c: answered.get(c, 0) for c in arrivals} == result.meta["completed"]


def replicate(scenario: meshsim.Scenario, n: int, seed: int) -> list[meshsim.Result]:
    """``n`` independent runs; replication *i* uses ``SeedSequence(seed).spawn(n)[i]``."""
    return [meshsim.run(scenario, seed=child) for child in np.random.SeedSequence(seed).spawn(n)]


def ci95(samples: Any) -> tuple[float, float]:
    """95% confidence interval of the mean of independent replication values (Student t)."""
    x = np.asarray(samples, dtype=float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean() - half, x.mean() + half


def assert_in_ci(expected: float, samples: Any, what: str) -> None:
    lo, hi = ci95(samples)
    assert lo <= expected <= hi, (
        f"{what}: {expected:.6g} outside the 95% CI [{lo:.6g}, {hi:.6g}] "
        f"(mean {np.mean(samples):.6g} over {len(samples)} replications)")
