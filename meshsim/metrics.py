"""Pure pandas/numpy functions from result frames to figures: summary and time series."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["AMPLIFICATION_COLUMNS", "END_TO_END", "amplification", "slo_met", "summary",
           "time_average", "timeseries"]

#: Label of the client-facing scope in summaries and time series.
END_TO_END = "end-to-end"
#: The ingress gateway's name in the ``destination`` column: a client's request that passes it
#: reaches its entry service on the gateway's hop.
INGRESS = "ingress"
#: Columns of :func:`amplification`.
AMPLIFICATION_COLUMNS = ("end_user_requests", "calls", "attempts", "per_hop", "per_request")


def _ok(status: pd.Series) -> np.ndarray:
    s = status.to_numpy()
    return (s >= 200) & (s < 400)


def time_average(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time-average number of open intervals in each bin.

    Parameters
    ----------
    starts, ends : numpy.ndarray
        Interval bounds in seconds (``ends >= starts``); NaN starts are ignored, NaN ends count
        as still open at the last edge.
    edges : numpy.ndarray
        Increasing bin edges in seconds.

    Returns
    -------
    numpy.ndarray
        ``len(edges) - 1`` values: the integral of the count of open intervals over each bin,
        divided by the bin width. Exact (no sampling): ``F(x) = Σ clip(x − s, 0, e − s)`` is
        evaluated at every edge with sorted cumulative sums.
    """
    starts = np.asarray(starts, dtype=float)
    ends = np.asarray(ends, dtype=float)
    keep = ~np.isnan(starts)
    starts, ends = starts[keep], ends[keep]
    ends = np.where(np.isnan(ends), edges[-1], ends)

    def integral(points: np.ndarray) -> np.ndarray:
        # Σ_{p < x} (x − p) for every edge x.
        points = np.sort(points)
        csum = np.concatenate(([0.0], np.cumsum(points)))
        k = np.searchsorted(points, edges, side="left")
        return k * edges - csum[k]

    f = integral(starts) - integral(ends)
    return np.diff(f) / np.diff(edges)


def _percentiles(latency: pd.Series, bins: pd.Series, qs: tuple[float, ...]) -> pd.DataFrame:
    if latency.empty:
        return pd.DataFrame(columns=[f"latency_p{int(q * 100)}" for q in qs])
    grouped = latency.groupby(bins, observed=True)
    return pd.DataFrame({f"latency_p{int(q * 100)}": grouped.quantile(q) for q in qs})


def timeseries(
    requests: pd.DataFrame, in_flight: pd.DataFrame, end_time: float, interval: float = 1.0
) -> pd.DataFrame:
    """Per-interval, per-service time series.

    Parameters
    ----------
    requests, in_flight : pandas.DataFrame
        :attr:`Result.requests` and :attr:`Result.in_flight`.
    end_time : float
        End of the run in seconds.
    interval : float
        Bin width in seconds.

    Returns
    -------
    pandas.DataFrame
        One row per bin and service (callee; ``end-to-end`` for the client-facing requests) with
        columns ``t`` (bin start, s), ``service``, ``arrivals`` (attempts sent to it, by
        ``t_start``), ``completions`` (answers, by ``t_end``), ``errors`` (answers not 2xx/3xx),
        ``status_<code>`` (answers per non-2xx status), ``in_flight`` (time-average attempts
        sent and not yet answered, caller's view), ``queue_length`` (time-average requests
        waiting for a worker), ``busy_workers`` (time-average workers held), ``latency_p50``,
        ``latency_p99`` (seconds, of the answers in the bin; NaN when none).
    """
    n_bins = max(1, int(np.ceil(end_time / interval - 1e-9)))
    edges = np.arange(n_bins + 1, dtype=float) * interval
    edges[-1] = min(edges[-1], end_time)  # the last bin may be partial: average over its width
    both = pd.concat([requests, in_flight], ignore_index=True) if len(in_flight) else requests
    scopes: list[tuple[str, pd.DataFrame, pd.DataFrame]] = [
        (END_TO_END, requests[requests["parent_span_id"] == 0],
         both[both["parent_span_id"] == 0])
    ]
    for service in sorted(set(both["destination"].astype(str))):
        scopes.append((service, requests[requests["destination"] == service],
                       both[both["destination"] == service]))
    frames = []
    for service, done, alive in scopes:
        f = pd.DataFrame({"t": edges[:-1], "service": service})
        b_start = np.clip((alive["t_start"].to_numpy() // interval).astype(int), 0, n_bins - 1)
        f["arrivals"] = np.bincount(b_start, minlength=n_bins)[:n_bins]
        b_end = np.clip((done["t_end"].to_numpy() // interval).astype(int), 0, n_bins - 1)
        f["completions"] = np.bincount(b_end, minlength=n_bins)[:n_bins]
        bad = ~_ok(done["status"])
        f["errors"] = np.bincount(b_end[bad], minlength=n_bins)[:n_bins]
        for code in sorted(set(done["status"][bad].tolist())):
            sel = done["status"].to_numpy() == code
            f[f"status_{code}"] = np.bincount(b_end[sel], minlength=n_bins)[:n_bins]
        f["in_flight"] = time_average(alive["t_start"].to_numpy(), alive["t_end"].to_numpy(), edges)
        if service == END_TO_END:
            f["queue_length"] = np.nan
            f["busy_workers"] = np.nan
        else:
            t_begin = alive["t_begin"].to_numpy()
            t_arrive = alive["t_arrive"].to_numpy()
            waited = ~np.isnan(t_arrive)
            # A request its full queue refused never waited: its wait interval is empty.
            q_end = np.where(np.isnan(t_begin) & ~np.isnan(alive["t_reply"].to_numpy()),
                             t_arrive, t_begin)
            f["queue_length"] = time_average(t_arrive[waited], q_end[waited], edges)
            f["busy_workers"] = time_average(t_begin, alive["t_reply"].to_numpy(), edges)
        lat = pd.Series(done["t_end"].to_numpy() - done["t_start"].to_numpy())
        pct = _percentiles(lat, pd.Series(b_end), (0.5, 0.99))
        f = f.join(pct, how="left")
        frames.append(f)
    out = pd.concat(frames, ignore_index=True)
    status_cols = sorted(c for c in out.columns if c.startswith("status_"))
    out[status_cols] = out[status_cols].fillna(0).astype(np.int64)
    lead = ["t", "service", "arrivals", "completions", "errors", *status_cols,
            "in_flight", "queue_length", "busy_workers", "latency_p50", "latency_p99"]
    return out[lead]


def _scope_row(scope: str, rows: pd.DataFrame, window: float) -> dict[str, Any]:
    lat = (rows["t_end"] - rows["t_start"]).to_numpy()
    ok = _ok(rows["status"])
    n = len(rows)
    q = np.quantile(lat, [0.5, 0.9, 0.99]) if n else [np.nan] * 3
    return {
        "scope": scope,
        "requests": n,
        "successes": int(ok.sum()),
        "success_rate": ok.mean() if n else np.nan,
        "throughput": n / window,
        "goodput": ok.sum() / window,
        "latency_mean": lat.mean() if n else np.nan,
        "latency_p50": q[0],
        "latency_p90": q[1],
        "latency_p99": q[2],
        "latency_max": lat.max() if n else np.nan,
    }


def _wasted(rows: pd.DataFrame, end_time: float) -> tuple[int, float]:
    """(attempts abandoned at the callee, worker-seconds spent on them after the give-up).

    An abandoned attempt's row ends (``t_end``) when the caller gave up, before the callee's
    answer (``t_reply``, NaN if the callee was still on it when the run ended); its work is
    ``[t_begin, t_reply)``, of which the part after ``t_end`` was wasted.
    """
    t_end = rows["t_end"].to_numpy()
    reply = rows["t_reply"].to_numpy()
    begin = rows["t_begin"].to_numpy()
    reached = ~np.isnan(rows["t_arrive"].to_numpy())
    until = np.where(np.isnan(reply), end_time, reply)
    abandoned = reached & ~np.isnan(t_end) & (until > t_end)
    worked = abandoned & ~np.isnan(begin)
    wasted = until[worked] - np.maximum(begin[worked], t_end[worked])
    return int(abandoned.sum()), float(np.clip(wasted, 0.0, None).sum())


def _ratio(num: float, den: float) -> float:
    return num / den if den else np.nan


def amplification(
    requests: pd.DataFrame, in_flight: pd.DataFrame, warmup: float,
    order: list[str] | None = None,
) -> pd.DataFrame:
    """Retry amplification: attempts per call at each hop and per end-user request.

    Counts the hops of the end-user requests sent after the warm-up (their client-facing row
    has ``t_start >= warmup``), answered or still in flight at the end of the run, so that a
    request's retries are counted with the request whatever their own times. Mirrored
    (``shadow``) hops are left out: a mirror is not a retry. The requests sent in the last
    moments of the run have not made all their attempts yet, which biases the figures down by
    about (latency of a request) / (measured window).

    Parameters
    ----------
    requests, in_flight : pandas.DataFrame
        :attr:`Result.requests` and :attr:`Result.in_flight`.
    warmup : float
        End of the warm-up, seconds.
    order : list of str, optional
        Callees in this order first, then the others alphabetically.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``scope``: ``end-to-end``, ``client:<id>`` per client, then one row per
        callee. Columns :data:`AMPLIFICATION_COLUMNS`:

        ``end_user_requests``
            end-user requests counted (of the client, for ``client:<id>``; all for the others);
        ``calls``
            first tries (``attempt == 1``): to the callee, or over all hops for the
            ``end-to-end`` and ``client:<id>`` rows;
        ``attempts``
            hops sent, retries included: to the callee, or over all hops;
        ``per_hop``
            a callee's ``attempts / calls``: tries per call its callers made (1 without
            retries); for ``end-to-end`` and ``client:<id>``, the same at the entry hop (the
            ingress gateway's hop to the entry service, or the client's own request when it
            does not pass the gateway, which a client never retries);
        ``per_request``
            ``attempts / end_user_requests``: the hops each end-user request cost the callee,
            or cost the whole mesh.
    """
    both = pd.concat([requests, in_flight], ignore_index=True) if len(in_flight) else requests
    both = both[~both["shadow"].to_numpy(dtype=bool)]
    parent = both["parent_span_id"].to_numpy()
    roots = both[parent == 0]
    counted = roots["request_id"].to_numpy()[roots["t_start"].to_numpy() >= warmup]
    rows = both[np.isin(both["request_id"].to_numpy(), counted)]
    dest = rows["destination"].astype(str).to_numpy()
    client = rows["client"].astype(str).to_numpy()
    first = rows["attempt"].to_numpy() == 1
    parent = rows["parent_span_id"].to_numpy()
    is_root = parent == 0
    # The entry hop: the gateway's hop to the entry service, or a root that skips the gateway.
    via_gateway = rows["span_id"].to_numpy()[is_root & (dest == INGRESS)]
    entry = (is_root & (dest != INGRESS)) | np.isin(parent, via_gateway)

    def whole(scope: str, sel: np.ndarray) -> dict[str, Any]:
        n = int((sel & is_root).sum())
        attempts = int(sel.sum())
        at_entry = sel & entry
        return {"scope": scope, "end_user_requests": n, "calls": int((sel & first).sum()),
                "attempts": attempts,
                "per_hop": _ratio(at_entry.sum(), (at_entry & first).sum()),
                "per_request": _ratio(attempts, n)}

    out = [whole(END_TO_END, np.ones(len(rows), dtype=bool))]
    out += [whole(f"client:{c}", client == c) for c in sorted(set(client))]
    n_requests = len(counted)
    present = set(dest)
    ranked = [d for d in (order or []) if d in present] + sorted(present - set(order or []))
    for d in ranked:
        sel = dest == d
        attempts, calls = int(sel.sum()), int((sel & first).sum())
        out.append({"scope": d, "end_user_requests": n_requests, "calls": calls,
                    "attempts": attempts, "per_hop": _ratio(attempts, calls),
                    "per_request": _ratio(attempts, n_requests)})
    frame = pd.DataFrame(out, columns=["scope", *AMPLIFICATION_COLUMNS])
    return frame.set_index("scope").astype({"per_hop": "float64", "per_request": "float64"})


def slo_met(figures: Any, objectives: dict[str, float] | None) -> bool | float:
    """Whether figures meet a service-level objective.

    Parameters
    ----------
    figures : mapping
        ``success_rate`` (fraction) and ``latency_p50``, ``latency_p90``, ``latency_p99``
        (seconds), e.g. a row of :func:`summary`.
    objectives : dict or None
        :meth:`meshsim.slo.Slo.objectives`: the least success rate, the highest percentiles.

    Returns
    -------
    bool or float
        True when every objective holds, False when one does not, NaN without objectives or
        when a figure needed is NaN (no answers to judge).
    """
    if not objectives:
        return np.nan
    met = True
    for name, target in objectives.items():
        value = figures[name]
        if value is None or np.isnan(value):
            return np.nan
        met &= bool(value >= target) if name == "success_rate" else bool(value <= target)
    return met


def summary(
    requests: pd.DataFrame,
    in_flight: pd.DataFrame,
    meta: dict[str, Any],
    order: list[str] | None = None,
    workers: dict[str, float] | None = None,
    slos: dict[str, dict[str, float]] | None = None,
) -> pd.DataFrame:
    """Headline figures of a run, counting only attempts sent after the warm-up.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``scope``: ``end-to-end`` (all end-user requests), ``client:<id>`` per
        client, then one row per callee (service, gateway or external host, as its callers saw
        it; in ``order`` if given, else alphabetically). Columns: ``requests`` (answered),
        ``successes`` (2xx/3xx), ``success_rate``,
        ``throughput`` and ``goodput`` (answers and successes per second of the measured
        window), ``latency_mean``, ``latency_p50``, ``latency_p90``, ``latency_p99``,
        ``latency_max`` (seconds), ``queue_wait_mean`` (seconds a request waited for a worker,
        at the callee), ``abandoned`` (attempts whose caller gave up, a timeout, while the
        callee had them), ``wasted_work`` (worker-seconds the callee spent on requests after
        their caller had given up: from the give-up, or from the start of the work if later, to
        the callee's answer or the end of the run), ``utilisation`` (time-average share of the
        callee's workers held, over all its pods; for callees named in ``workers``, which maps
        a callee to its total worker count), and for the ``end-to-end`` row
        ``in_flight_at_end``; then ``amplification`` (retry amplification, see
        :func:`amplification`: a callee's attempts per call, ``per_hop``; for ``end-to-end``
        and ``client:<id>``, hops sent over the whole mesh per end-user request,
        ``per_request``) and ``slo_met`` (whether the scope's figures over the measured window
        meet its objective in ``slos``, which maps a scope to
        :meth:`meshsim.slo.Slo.objectives`: True, False, or NaN without an objective or
        without answers; see :func:`slo_met`).
    """
    warmup = meta["warmup"]
    window = max(meta["end_time"] - warmup, 1e-12)
    measured = requests[requests["t_start"] >= warmup]
    roots = measured[measured["parent_span_id"] == 0]
    rows = [_scope_row(END_TO_END, roots, window)]
    rows[0]["in_flight_at_end"] = int((in_flight["parent_span_id"] == 0).sum())
    for client in sorted(set(roots["client"].astype(str))):
        rows.append(_scope_row(f"client:{client}", roots[roots["client"] == client], window))
    present = set(measured["destination"].astype(str))
    ranked = [d for d in (order or []) if d in present] + sorted(present - set(order or []))
    both = pd.concat([requests, in_flight], ignore_index=True) if len(in_flight) else requests
    edges = np.array([warmup, warmup + window])
    for dest in ranked:
        row = _scope_row(dest, measured[measured["destination"] == dest], window)
        sel = measured[measured["destination"] == dest]
        wait = (sel["t_begin"] - sel["t_arrive"]).to_numpy()
        wait = wait[~np.isnan(wait)]
        row["queue_wait_mean"] = wait.mean() if len(wait) else np.nan
        row["abandoned"], row["wasted_work"] = _wasted(sel, meta["end_time"])
        row["utilisation"] = np.nan
        if workers and dest in workers:
            alive = both[both["destination"] == dest]
            busy = time_average(alive["t_begin"].to_numpy(), alive["t_reply"].to_numpy(), edges)
            row["utilisation"] = float(busy[0]) / workers[dest]
        rows.append(row)
    table = pd.DataFrame(rows).set_index("scope")
    amp = amplification(requests, in_flight, warmup, order)
    whole = table.index.isin([END_TO_END]) | table.index.str.startswith("client:")
    per_scope = amp["per_hop"].where(~amp.index.isin(table.index[whole]), amp["per_request"])
    table["amplification"] = per_scope.reindex(table.index).to_numpy(dtype=float)
    table["slo_met"] = pd.Series([slo_met(row, (slos or {}).get(scope))
                                  for scope, row in table.iterrows()],
                                 index=table.index, dtype=object)
    return table
