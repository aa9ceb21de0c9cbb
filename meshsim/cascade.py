"""Cascading-failure metrics: pure functions from a run's frames to the figures that say how a
fault spread and whether the system recovered.

Every function takes a :class:`~meshsim.result.Result` (or its frames) and returns a DataFrame;
nothing here runs a simulation.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from . import metrics
from .metrics import END_TO_END

if TYPE_CHECKING:
    from .result import Result
    from .scenario import Scenario

__all__ = [
    "CASCADE_COLUMNS",
    "FAULT_COLUMNS",
    "HEALTH_COLUMNS",
    "NEVER",
    "REACTIONS",
    "cascade",
    "fault_windows",
    "health",
    "objectives",
    "recovery",
    "retry_amplification",
]

#: Columns of :func:`fault_windows`.
FAULT_COLUMNS = ("fault", "kind", "target", "start", "end")
#: Columns of :func:`health`.
HEALTH_COLUMNS = ("t", "scope", "requests", "successes", "success_rate", "goodput",
                  "latency_p50", "latency_p99", "in_flight")
#: Columns of :func:`cascade` (besides its index ``fault``).
CASCADE_COLUMNS = ("kind", "target", "start", "end", "time_to_detect", "detected_by",
                   "time_to_recover", "recovered_at", "blast_radius", "slo_violated")
#: Event kinds (:attr:`Result.events`) that show a policy reacting to trouble: an outlier
#: ejection, an app-level breaker opening, a connection pool reaching a limit, a rate limit
#: starting to refuse, admission control starting to shed, a load balancer entering panic.
REACTIONS = ("ejection", "breaker_open", "pool_saturated", "limiting_started", "over_limit",
             "admission_shedding_started", "panic_enter")

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


def objectives(scenario: Scenario) -> dict[str, dict[str, float]]:
    """The service-level objectives a scenario declares, by scope.

    Returns
    -------
    dict
        ``{scope: {"success_rate": 0.999, "latency_p99": 0.3, ...}}`` (see
        :meth:`meshsim.slo.Slo.objectives`; latencies in seconds) for ``end-to-end`` (the
        scenario's ``slo``), ``client:<id>`` (a workload entry's ``slo``), and each service and
        external service with an ``slo``. Scopes without an objective are absent.
    """
    out: dict[str, dict[str, float]] = {}
    if scenario.slo is not None:
        out[END_TO_END] = scenario.slo.objectives()
    for client in scenario.workload:
        if client.slo is not None:
            out[f"client:{client.client}"] = client.slo.objectives()
    for name, node in [*scenario.services.items(), *scenario.external_services.items()]:
        if node.slo is not None:
            out[name] = node.slo.objectives()
    return out


def _order(scenario: Scenario) -> list[str]:
    # The callees in the order of the summary: ingress, services, egress, external services.
    return ["ingress", *scenario.services, "egress", *scenario.external_services]


def _scopes(frame: pd.DataFrame, order: list[str]) -> list[tuple[str, np.ndarray]]:
    """``(scope, row mask)`` of each scope of ``frame``, in the order of the summary."""
    root = frame["parent_span_id"].to_numpy() == 0
    client = frame["client"].astype(str).to_numpy()
    dest = frame["destination"].astype(str).to_numpy()
    out = [(END_TO_END, root)]
    out += [(f"client:{c}", root & (client == c)) for c in sorted(set(client[root]))]
    present = set(dest)
    ranked = [d for d in order if d in present] + sorted(present - set(order))
    out += [(d, dest == d) for d in ranked]
    return out


def _both(result: Result) -> pd.DataFrame:
    if len(result.in_flight):
        return pd.concat([result.requests, result.in_flight], ignore_index=True)
    return result.requests


def health(result: Result, interval: float = 1.0) -> pd.DataFrame:
    """Per-window health of every scope: what the callers saw, window by window.

    Parameters
    ----------
    result : Result
        A run.
    interval : float
        Window width in seconds; the windows start at 0 (the warm-up is included: filter on
        ``t``), and the last one may be partial (its rates are over its own width).

    Returns
    -------
    pandas.DataFrame
        One row per window and scope (``end-to-end``, ``client:<id>``, then each callee in the
        order of :meth:`Result.summary`), columns :data:`HEALTH_COLUMNS`: ``t`` (window start,
        s), ``scope``, ``requests`` (answers in the window, by ``t_end``), ``successes``
        (2xx/3xx answers), ``success_rate`` (NaN when nothing was answered), ``goodput``
        (successes per second), ``latency_p50`` and ``latency_p99`` (seconds, of the answers
        in the window; NaN without answers) and ``in_flight`` (time-average hops sent to the
        scope and not yet answered, as its callers see them, as in :attr:`Result.timeseries`).
    """
    end_time = float(result.meta["end_time"])
    n_bins = max(1, int(np.ceil(end_time / interval - 1e-9)))
    edges = np.arange(n_bins + 1, dtype=float) * interval
    edges[-1] = min(edges[-1], end_time)  # a partial last window: rates over its own width
    both = _both(result)
    t_start = both["t_start"].to_numpy(dtype=float)
    t_end = both["t_end"].to_numpy(dtype=float)
    answered = ~np.isnan(t_end)
    ok = metrics._ok(both["status"])
    latency = t_end - t_start
    bins = np.clip(np.nan_to_num(t_end // interval), 0, n_bins - 1).astype(np.int64)
    frames = []
    for scope, sel in _scopes(both, _order(result.scenario)):
        done = sel & answered
        n = np.bincount(bins[done], minlength=n_bins)[:n_bins]
        good = np.bincount(bins[done & ok], minlength=n_bins)[:n_bins]
        pct = metrics._percentiles(pd.Series(latency[done]), pd.Series(bins[done]), (0.5, 0.99))
        pct = pct.reindex(range(n_bins))
        frames.append(pd.DataFrame({
            "t": edges[:-1],
            "scope": scope,
            "requests": n,
            "successes": good,
            "success_rate": np.where(n > 0, good / np.maximum(n, 1), np.nan),
            "goodput": good / np.diff(edges),
            "latency_p50": pct["latency_p50"].to_numpy(dtype=float),
            "latency_p99": pct["latency_p99"].to_numpy(dtype=float),
            "in_flight": metrics.time_average(t_start[sel], t_end[sel], edges),
        }))
    return pd.concat(frames, ignore_index=True)[list(HEALTH_COLUMNS)]


def retry_amplification(result: Result) -> pd.DataFrame:
    """Attempts per call at each hop and attempts per end-user request.

    Counts the end-user requests sent after the warm-up and all their hops; see
    :func:`meshsim.metrics.amplification` for the rules.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``scope`` (``end-to-end``, ``client:<id>``, then each callee), columns
        :data:`meshsim.metrics.AMPLIFICATION_COLUMNS`: ``end_user_requests``, ``calls`` (first
        tries), ``attempts`` (retries included), ``per_hop`` (a callee's ``attempts / calls``;
        for ``end-to-end`` and ``client:<id>`` that of the entry hop) and ``per_request``
        (``attempts / end_user_requests``; for ``end-to-end`` and ``client:<id>`` the hops of
        the whole mesh). With independent failures of probability ``p`` at a callee and
        ``n`` retries on every failure, ``per_hop`` is ``(1 - p**(n + 1)) / (1 - p)``.
    """
    return metrics.amplification(result.requests, result.in_flight,
                                 float(result.meta["warmup"]), _order(result.scenario))


def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))))


def _binom_sf(k: int, n: int, p: float, logfact: np.ndarray) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact (summed in log space)."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    i = np.arange(k, n + 1)
    log_pmf = (logfact[n] - logfact[i] - logfact[n - i]
               + i * math.log(p) + (n - i) * math.log1p(-p))
    top = log_pmf.max()
    return float(math.exp(top) * np.exp(log_pmf - top).sum())


def _worse(count: np.ndarray, n: np.ndarray, share: float, alpha: float) -> np.ndarray:
    """Windows where ``count`` of ``n`` is significantly (level ``alpha``, one-sided exact
    binomial test) more than the ``share`` allowed."""
    out = np.zeros(len(n), dtype=bool)
    # Below the mean the tail is at least 1/2 (the binomial median is floor or ceil of n*p):
    # only the windows above it need the exact test.
    suspect = np.flatnonzero(count > n * share)
    if suspect.size:
        logfact = _log_factorials(int(n[suspect].max()))
        for w in suspect:
            out[w] = _binom_sf(int(count[w]), int(n[w]), share, logfact) < alpha
    return out


def recovery(
    t_end: np.ndarray,
    latency: np.ndarray,
    ok: np.ndarray,
    baseline: tuple[float, float],
    fault_end: float,
    horizon: float,
    *,
    tolerance: float = 0.01,
    latency_tolerance: float = 0.5,
    window: float = 5.0,
    interval: float = 1.0,
    hold: float | None = None,
    alpha: float = 0.001,
) -> float:
    """When a scope was healthy again after a fault, by the rule of :func:`cascade`.

    Parameters
    ----------
    t_end, latency, ok : numpy.ndarray
        The scope's answers: when each came (s), its latency (s), whether it succeeded.
    baseline : tuple of float
        ``(success_rate, latency_p99)`` before the fault (fraction, seconds).
    fault_end : float
        End of the fault, seconds: the first window starts there.
    horizon : float
        Seconds: windows must end by then (the run's end, or the next fault's start).
    tolerance, latency_tolerance, window, interval, hold, alpha
        As in :func:`cascade`.

    Returns
    -------
    float
        ``recovered_at`` (seconds); :data:`NEVER` (``inf``) if the health did not return and
        hold; NaN if the baseline is unknown or fewer than ``window`` seconds follow
        ``fault_end`` before ``horizon`` (nothing to judge).
    """
    b_success, b_p99 = baseline
    if np.isnan(b_success) or np.isnan(b_p99):
        return np.nan
    n_windows = int(np.floor((horizon - window - fault_end) / interval + 1e-9)) + 1
    if n_windows <= 0:
        return np.nan
    starts = fault_end + np.arange(n_windows) * interval
    by_time = np.argsort(t_end, kind="stable")
    times = np.asarray(t_end, dtype=float)[by_time]
    failed = np.concatenate(([0], np.cumsum(~np.asarray(ok, dtype=bool)[by_time])))
    limit = b_p99 * (1.0 + latency_tolerance)
    slow = np.concatenate(([0], np.cumsum(np.asarray(latency, dtype=float)[by_time] > limit)))
    lo = np.searchsorted(times, starts, side="left")
    hi = np.searchsorted(times, starts + window - 1e-12, side="left")
    n = hi - lo
    # Healthy: some answers, and neither more failures than (1 - baseline + tolerance) allows
    # nor more than 1 % of answers slower than the limit (a p99 above it), beyond chance.
    allowed_failures = min(1.0, 1.0 - b_success + tolerance)
    healthy = ((n > 0)
               & ~_worse(failed[hi] - failed[lo], n, allowed_failures, alpha)
               & ~_worse(slow[hi] - slow[lo], n, 0.01, alpha))
    if hold is None:
        bad = np.flatnonzero(~healthy)
        if not bad.size:
            return float(starts[0])
        return NEVER if bad[-1] == n_windows - 1 else float(starts[bad[-1] + 1])
    # Windows starting in [T, T + hold] must all be healthy: m + 1 in a row.
    m = int(np.ceil(hold / interval - 1e-9))
    run = 0
    first_ok = NEVER
    for w in range(n_windows - 1, -1, -1):
        run = run + 1 if healthy[w] else 0
        if run >= m + 1:
            first_ok = float(starts[w])
    return first_ok


def _target_scopes(kind: str, target: str, scopes: list[str]) -> set[str]:
    if kind == "loadSpike":
        if target == "*":
            return {s for s in scopes if s == END_TO_END or s.startswith("client:")}
        return {f"client:{target}"}
    return {target}


def _detection(events: pd.DataFrame, start: float, until: float,
               reactions: tuple[str, ...]) -> tuple[float, Any]:
    t = events["t"].to_numpy(dtype=float)
    hits = np.flatnonzero(events["kind"].astype(str).isin(reactions).to_numpy()
                          & (t >= start) & (t < until))
    if not hits.size:
        return np.nan, np.nan
    first = events.iloc[hits[np.argmin(t[hits])]]
    where = str(first["source"])
    if str(first["destination"]) != "-":
        where += f"->{first['destination']}"
    if str(first["host"]) != "-":
        where += f" {first['host']}"
    return float(first["t"]) - start, f"{first['kind']} {where}"


def cascade(
    result: Result,
    tolerance: float = 0.01,
    *,
    latency_tolerance: float = 0.5,
    window: float = 5.0,
    interval: float = 1.0,
    hold: float | None = None,
    alpha: float = 0.001,
    scope: str = END_TO_END,
    reactions: tuple[str, ...] = REACTIONS,
) -> pd.DataFrame:
    """One row per fault: time to detect, time to recover, blast radius.

    **Detection.** The first event of a kind in ``reactions`` at or after the fault's start,
    and before the start of the next fault that begins after this one ends (or the end of the
    run): ``time_to_detect`` is its time minus the fault's start; ``detected_by`` says what
    reacted and where, ``<kind> <proxy>-><cluster> <pod>`` (``ejection frontend-0->cart
    cart-1``). Both NaN when nothing reacted. The ``fault_started`` / ``fault_ended`` events
    are not reactions.

    **Recovery.** The ``scope``'s answers (by the time they came, ``t_end``) are pooled over
    windows of ``window`` seconds starting at the fault's end and every ``interval`` seconds
    after it. A window is *healthy* when it has answers and is not significantly worse than
    the baseline, by two one-sided exact binomial tests at level ``alpha``:

    - failures: no more than a share ``1 - baseline_success_rate + tolerance`` of the answers
      fail (the success rate is within ``tolerance``, absolute, of the baseline);
    - latency: no more than 1 % of the answers are slower than ``baseline_p99 * (1 +
      latency_tolerance)`` (the p99 is within ``latency_tolerance``, relative, of the
      baseline).

    Testing, rather than comparing point estimates, keeps a healthy system's random dips from
    deciding (at 100 answers a window, 2 failures are no evidence against a 99.9 % baseline);
    a window with no answers at all is unhealthy. ``recovered_at`` is the start of the first
    window from which every window is healthy up to the *horizon* (the start of the next fault
    that begins after this one ends, else the end of the run), or, with ``hold``, the start of
    the first window such that all windows starting within the following ``hold`` seconds are
    healthy. ``time_to_recover = recovered_at - end``: 0 when the fault left no trace,
    :data:`NEVER` (``inf``) when health did not return (a metastable failure, or a run too
    short to see the ``hold`` through), NaN when fewer than ``window`` seconds follow the
    fault's end before the horizon, or without a baseline. The *baseline* is the success rate
    and p99 of the answers to requests sent after the warm-up and answered before the first
    fault starts.

    **Blast radius.** Each scope with an objective (:func:`objectives`) is judged on its hops
    sent during the fault (``start <= t_start < end``) and answered, with
    :func:`meshsim.metrics.slo_met`; hops still unanswered at the end of the run, whose fate is
    unknown, are left out, and a scope with no such answers is not judged. ``slo_violated``
    lists the scopes that miss their objective; ``blast_radius`` those of them other than the
    fault's target (for a load spike, the client's ``client:<id>``; for one of every client,
    ``end-to-end`` and every client).

    Parameters
    ----------
    result : Result
        A run of a scenario with ``faults``.
    tolerance : float
        Absolute tolerance on the success rate (0.01: one percentage point).
    latency_tolerance : float
        Relative tolerance on the p99 latency (0.5: up to 1.5 times the baseline).
    window : float
        Seconds of answers pooled in each judgement.
    interval : float
        Seconds between window starts.
    hold : float, optional
        Seconds health must hold; unset: up to the horizon.
    alpha : float
        Significance level of each window's tests.
    scope : str
        The scope whose recovery is judged (``end-to-end``, ``client:<id>`` or a callee).
    reactions : tuple of str
        Event kinds that count as detection (default :data:`REACTIONS`).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``fault`` (the label of :func:`fault_windows`), columns
        :data:`CASCADE_COLUMNS`: ``kind``, ``target``, ``start``, ``end`` (s),
        ``time_to_detect`` (s), ``detected_by``, ``time_to_recover`` (s after the end; ``inf``:
        never), ``recovered_at`` (s), ``blast_radius`` and ``slo_violated`` (comma-separated
        scopes in the order of :meth:`Result.summary`; empty string if none).
    """
    faults = fault_windows(result.scenario)
    warmup = float(result.meta["warmup"])
    end_time = float(result.meta["end_time"])
    slos = objectives(result.scenario)
    answers = result.requests
    t_start = answers["t_start"].to_numpy(dtype=float)
    t_end = answers["t_end"].to_numpy(dtype=float)
    latency = t_end - t_start
    ok = metrics._ok(answers["status"])
    scopes = _scopes(answers, _order(result.scenario))
    masks = dict(scopes)
    judged = [(s, m) for s, m in scopes if s in slos]

    mask = masks.get(scope, np.zeros(len(answers), dtype=bool))
    first_start = float(faults["start"].min()) if len(faults) else end_time
    before = mask & (t_start >= warmup) & (t_end < first_start)
    baseline = (float(ok[before].mean()) if before.any() else np.nan,
                float(np.quantile(latency[before], 0.99)) if before.any() else np.nan)

    starts = faults["start"].to_numpy(dtype=float)
    rows = []
    for f in faults.itertuples(index=False):
        later = starts[starts >= f.end]
        horizon = float(later.min()) if later.size else end_time
        detect, detected_by = _detection(result.events, f.start,
                                         float(later.min()) if later.size else np.inf, reactions)
        recovered_at = recovery(
            t_end[mask], latency[mask], ok[mask], baseline, f.end, horizon,
            tolerance=tolerance, latency_tolerance=latency_tolerance, window=window,
            interval=interval, hold=hold, alpha=alpha)
        during = (t_start >= f.start) & (t_start < f.end)
        violated = [s for s, m in judged
                    if metrics.slo_met(metrics._scope_row(s, answers[m & during], 1.0),
                                       slos[s]) is False]
        targets = _target_scopes(f.kind, f.target, [s for s, _ in scopes])
        rows.append({
            "fault": f.fault, "kind": f.kind, "target": f.target, "start": f.start,
            "end": f.end, "time_to_detect": detect, "detected_by": detected_by,
            "time_to_recover": recovered_at - f.end, "recovered_at": recovered_at,
            "blast_radius": ",".join(s for s in violated if s not in targets),
            "slo_violated": ",".join(violated),
        })
    frame = pd.DataFrame(rows, columns=["fault", *CASCADE_COLUMNS])
    frame = frame.astype({c: "float64" for c in ("start", "end", "time_to_detect",
                                                  "time_to_recover", "recovered_at")})
    return frame.set_index("fault")
