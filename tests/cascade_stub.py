"""Stand-ins for the cascade metrics while :mod:`meshsim.cascade` has only their signatures.

They produce frames of the documented shape from a run's time series (no detection logic): enough
for the comparison's plumbing to be tested. :func:`install` puts them in place only where the
real function still raises ``NotImplementedError``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from meshsim import cascade

HEALTH_COLUMNS = ["t", "scope", "requests", "successes", "success_rate", "goodput",
                  "latency_p50", "latency_p99", "in_flight"]


def health(result, interval=1.0):
    ts = result.timeseries
    out = pd.DataFrame({
        "t": ts["t"], "scope": ts["service"], "requests": ts["completions"],
        "successes": ts["completions"] - ts["errors"],
    })
    out["success_rate"] = out["successes"] / out["requests"].replace(0, np.nan)
    out["goodput"] = out["successes"] / interval
    out["latency_p50"] = ts["latency_p50"]
    out["latency_p99"] = ts["latency_p99"]
    out["in_flight"] = ts["in_flight"]
    return out[HEALTH_COLUMNS]


def retry_amplification(result):
    return pd.DataFrame(columns=["attempts", "calls", "per_hop", "per_request"],
                        index=pd.Index([], name="scope"))


def cascade_(result):
    rows = []
    for f in cascade.fault_windows(result.scenario).itertuples(index=False):
        rows.append({"fault": f.fault, "kind": f.kind, "target": f.target, "start": f.start,
                     "end": f.end, "time_to_detect": 0.5, "detected_by": "stub",
                     "time_to_recover": np.inf, "recovered_at": np.inf, "blast_radius": 1,
                     "slo_violated": False})
    cols = ["fault", "kind", "target", "start", "end", "time_to_detect", "detected_by",
            "time_to_recover", "recovered_at", "blast_radius", "slo_violated"]
    return pd.DataFrame(rows, columns=cols).set_index("fault")


def _stubbed(fn) -> bool:
    try:
        fn(None)
    except NotImplementedError:
        return True
    except Exception:
        return False
    return False


def install(monkeypatch) -> None:
    for name, stand_in in [("health", health), ("retry_amplification", retry_amplification),
                           ("cascade", cascade_)]:
        if _stubbed(getattr(cascade, name)):
            monkeypatch.setattr(cascade, name, stand_in)
