"""The results of one run: plain record rows turned into pandas DataFrames once, at the end."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import metrics

if TYPE_CHECKING:
    from .engine import Engine
    from .scenario import Scenario

__all__ = ["EVENT_COLUMNS", "REQUEST_COLUMNS", "STAT_COLUMNS", "Result"]

#: Columns of :attr:`Result.requests`, in order (the first 13 are the public contract).
REQUEST_COLUMNS = (
    "request_id",
    "span_id",
    "parent_span_id",
    "client",
    "source",
    "destination",
    "host",
    "attempt",
    "t_start",
    "t_end",
    "status",
    "flags",
    "shadow",
    "t_arrive",
    "t_begin",
    "t_reply",
)
_CATEGORIES = ("client", "source", "destination", "host", "flags")

#: Columns of :attr:`Result.events`.
EVENT_COLUMNS = ("t", "kind", "source", "destination", "host", "detail")
#: Columns of :attr:`Result.stats`.
STAT_COLUMNS = ("proxy", "cluster", "stat", "value")
#: The ``cluster`` of a pod's own sidecar's counters (Envoy's ``inbound|<port>||`` cluster) in
#: :attr:`Result.stats`, and the ``destination`` of its events.
INBOUND = "inbound"


@dataclass
class Result:
    """What one simulation produced.

    Attributes
    ----------
    scenario : Scenario
        The scenario that ran, with the seed actually used.
    requests : pandas.DataFrame
        One row per attempt per hop that got an answer, in the order answers arrived:

        ``request_id``
            the end-user request (0, 1, ... in order of arrival);
        ``span_id``, ``parent_span_id``
            this attempt and the attempt whose work made it (0 for the client's own request);
        ``client``
            the workload client that sent the end-user request;
        ``source``, ``destination``
            caller and callee: a service, ``client``, ``ingress``, ``egress`` or an external host;
        ``host``
            the pod that got the attempt (``cart-1``, ``ingress-0``, or the external host);
        ``attempt``
            1 for the first try (retries count up);
        ``t_start``, ``t_end``
            seconds of simulated time when the caller sent the request and got the answer;
        ``status``
            the HTTP status the caller saw (0 when no response);
        ``flags``
            Envoy response flags (``UO``, ``URX,UT``, ...) or ``-``;
        ``shadow``
            true for mirrored traffic;
        ``t_arrive``, ``t_begin``, ``t_reply``
            when the request reached the callee, when a worker took it, and when the callee
            answered (NaN where it never happened, e.g. ``t_begin`` of a request its full queue
            refused). Queue wait is ``t_begin - t_arrive``.
    in_flight : pandas.DataFrame
        Attempts still unanswered at the end of the run; same columns, ``t_end`` NaN, status 0.
    events : pandas.DataFrame
        State changes of policies, in time order, columns :data:`EVENT_COLUMNS`: ``t``
        (seconds), ``kind`` (``ejection``, ``unejection``, ``pool_saturated``,
        ``pool_recovered``, ``panic_enter``, ``panic_exit``), ``source`` (the client proxy:
        a pod or gateway pod), ``destination`` (the upstream cluster), ``host`` (the pod
        concerned, or ``-``) and ``detail`` (the detector type, the limit that was reached, ...).
        The scenario's faults add ``fault_started`` and ``fault_ended`` rows: source
        ``fault``, destination the target (service, external host, edge destination or
        client), host the pod (or ``-``), detail the fault's label.
    stats : pandas.DataFrame
        Envoy's counters and gauges at the end of the run, one row per proxy, cluster and
        statistic (columns :data:`STAT_COLUMNS`): ``upstream_rq_pending_overflow``,
        ``upstream_rq_retry``, ``upstream_rq_timeout``, ``outlier_detection.ejections_active``,
        ``lb_healthy_panic``, ... Only clusters whose policies could act have rows.
    meta : dict
        Seed, duration, warm-up, arrivals per client, versions and wall-clock time.
    """

    scenario: Scenario
    requests: pd.DataFrame
    in_flight: pd.DataFrame
    events: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)
    stats: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(STAT_COLUMNS)))

    @classmethod
    def collect(cls, engine: Engine, sim_wall: float) -> Result:
        """Build the frames from an engine that has finished running."""
        import importlib.metadata as md

        names = {
            "client": engine.client_names.names,
            "source": engine.nodes.names,
            "destination": engine.nodes.names,
            "host": engine.hosts.names,
            "flags": engine.flag_names.names,
        }
        requests = _frame(engine.records, names)
        now = engine.env.now
        open_rows = []
        late_rows = []
        for a in engine.in_flight():
            attempt = getattr(a, "attempt", 1) if a.parent is not None else 1
            parent_span = a.parent.span if a.parent is not None else 0
            if getattr(a, "abandoned", 0):
                # The caller gave up on it (its view is complete) while the callee still works.
                late_rows.append((a.req, a.span, parent_span, a.client.code, a.source, a.dest,
                                  a.host.code, attempt, a.t_start, a.t_end, a.abandoned, a.flags,
                                  0, a.t_arrive, a.t_begin, a.t_reply))
            else:
                open_rows.append((a.req, a.span, parent_span, a.client.code, a.source, a.dest,
                                  a.host.code, attempt, a.t_start, np.nan, 0, a.flags, 0,
                                  a.t_arrive, a.t_begin, a.t_reply))
        if late_rows:
            requests = pd.concat([requests, _frame(late_rows, names)], ignore_index=True)
        in_flight = _frame(open_rows, names)
        events = _events(engine)
        stats = _stats(engine)
        sc = engine.scenario
        seed = engine.seed
        if isinstance(seed, np.random.SeedSequence):
            seed = {"entropy": seed.entropy, "spawn_key": list(seed.spawn_key)}
        meta = {
            "scenario": sc.name,
            "seed": seed,
            "duration": sc.duration,
            "warmup": sc.warmup,
            "end_time": now,
            "arrivals": {d.name: d.arrivals for d in engine.clients},
            "completed": {d.name: d.completed for d in engine.clients},
            "wall_seconds": sim_wall,
            "meshsim": md.version("meshsim") if _installed("meshsim") else "unknown",
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "platform": platform.platform(),
        }
        return cls(sc, requests, in_flight, events, meta, stats)

    @cached_property
    def timeseries(self) -> pd.DataFrame:
        """Per second and per service; see :func:`meshsim.metrics.timeseries` for the columns."""
        return metrics.timeseries(self.requests, self.in_flight, self.meta["end_time"], 1.0)

    def summary(self) -> pd.DataFrame:
        """The headline figures after warm-up; see :func:`meshsim.metrics.summary`."""
        sc = self.scenario
        order = ["ingress", *sc.services, "egress", *sc.external_services]
        workers = {name: float(sum(d.replicas * d.workers for d in s.deployments()))
                   for name, s in sc.services.items()}
        workers.update({name: float(e.concurrency) for name, e in sc.external_services.items()
                        if e.concurrency is not None})
        return metrics.summary(self.requests, self.in_flight, self.meta, order, workers)

    def end_to_end(self) -> pd.DataFrame:
        """The client-facing rows: one per finished end-user request."""
        return self.requests[self.requests["parent_span_id"] == 0]


def _events(engine: Engine) -> pd.DataFrame:
    rows = []
    for cl in engine.clusters:
        sources = [cl.events]
        if cl.pool is not None:
            sources.append(cl.pool.events)
        if cl.outlier is not None:
            sources.append(cl.outlier.events)
        for events in sources:
            for t, kind, host, detail in events:
                name = cl.hosts[host].name if host is not None and host >= 0 else "-"
                rows.append((t, kind, cl.proxy, cl.dest, name, detail))
    gates = [((proxy, dest), b.events) for (proxy, dest), b in engine.app_breakers.items()]
    gates += [((proxy, dest), a.events) for (proxy, dest), a in engine.admissions.items()]
    for (proxy, dest), events in gates:
        for t, kind, _, detail in events:
            rows.append((t, kind, proxy, dest, "-", detail))
    for pod in _inbound_pods(engine):
        events = pod.inbound.events + [e for policy, _, _ in pod.gates for e in policy.events]
        for t, kind, _, detail in events:
            rows.append((t, kind, pod.name, INBOUND, pod.name, detail))
    for limiter in engine.limits:
        rows += limiter.event_rows()
    rows += engine.faults.events
    rows.sort(key=lambda r: r[0])
    frame = pd.DataFrame(rows, columns=list(EVENT_COLUMNS))
    return frame.astype({"t": "float64"})


def _stats(engine: Engine) -> pd.DataFrame:
    rows = []
    for cl in engine.clusters:
        if not cl.policy_path:
            continue
        values: dict[str, int] = dict(cl.pool.stats)
        for k, v in cl.stats.items():  # the router's counts add to the pool's of the same name
            values[k] = values.get(k, 0) + v
        values.update({f"circuit_breakers.default.{k}": v for k, v in cl.pool.gauges().items()})
        if cl.outlier is not None:
            values.update({f"outlier_detection.{k}": v for k, v in cl.outlier.stats.items()})
        rows += [(cl.proxy, cl.dest, k, int(v)) for k, v in sorted(values.items())]
    gates = [(key, "app_circuit_breaker", b.stats) for key, b in engine.app_breakers.items()]
    gates += [(key, "admission_control", a.stats) for key, a in engine.admissions.items()]
    for (proxy, dest), prefix, stats in gates:
        rows += [(proxy, dest, f"{prefix}.{k}", int(v)) for k, v in sorted(stats.items())]
    for pod in _inbound_pods(engine):
        pool = pod.inbound
        values = dict(pool.stats)
        values.update({f"circuit_breakers.default.{k}": v for k, v in pool.gauges().items()})
        for policy, _, prefix in pod.gates:
            values.update({f"{prefix}.{k}": v for k, v in policy.stats.items()})
        rows += [(pod.name, INBOUND, k, int(v)) for k, v in sorted(values.items())]
    for limiter in engine.limits:
        rows += limiter.stat_rows()
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def _inbound_pods(engine: Engine) -> list[Any]:
    return [p for pods in engine.pods.values() for p in pods if p.inbound is not None]


def _frame(rows: list[tuple], names: dict[str, list[str]]) -> pd.DataFrame:
    """Rows of numbers (names as integer codes) to the requests frame.

    Every field of a row is a number, so numpy converts the whole list in one C pass (``fromiter``
    over the chained rows, which is faster than ``np.array`` of the list of tuples); float64
    holds the integer fields exactly (ids stay far below 2**53).
    """
    width = len(REQUEST_COLUMNS)
    table = np.fromiter(chain.from_iterable(rows), dtype=np.float64,
                        count=len(rows) * width).reshape(len(rows), width)
    data: dict[str, Any] = {}
    for i, name in enumerate(REQUEST_COLUMNS):
        col = table[:, i]
        if name in _CATEGORIES:
            data[name] = pd.Categorical.from_codes(col.astype(np.int64), categories=names[name])
        elif name in ("request_id", "span_id", "parent_span_id", "attempt", "status"):
            data[name] = col.astype(np.int64)
        elif name == "shadow":
            data[name] = col.astype(bool)
        else:
            data[name] = col
    return pd.DataFrame(data, columns=list(REQUEST_COLUMNS))


def _installed(dist: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(dist)
    except md.PackageNotFoundError:
        return False
    return True
