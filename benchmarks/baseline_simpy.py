"""Plain-SimPy baseline for the project benchmark (the yardstick meshsim's engine must beat).

The same model as ``scenarios/three-tier.yaml``, written the straightforward SimPy way: one
generator process per hop (the caller ``yield``\\ s the callee's process) and a ``simpy.Resource``
per pod for its worker pool. It is meant to be a fair, idiomatic and reasonably efficient SimPy
program: random variates are drawn in numpy batches and records are plain tuples turned into a
DataFrame once at the end, exactly as meshsim does, so the comparison measures the engine only.

Model: Poisson arrivals at 480/s from one client; synchronous chain client -> ingress (1 gateway
pod, no worker limit, no own work) -> A (2 pods x 4 workers) -> B (3 x 4) -> C (2 x 4). Every hop
has a request and a response leg of constant one-way delay ``net``. Pod choice is round robin per
(caller pod, destination service). A callee pod waits for a worker (FIFO), holds it for its own
lognormal service time (CV 1; means 2, 3, 5 ms), makes its downstream call while still holding the
worker, then releases it and sends the response. Optional caller-side in-flight limits per edge
(counted per caller pod): a call over the limit fails at once with 503, no retries; a pod whose
downstream call failed answers 500.

Records: one tuple per attempt per hop, ``(request_id, span_id, parent_span_id, source,
destination, host, t_start, t_end, status)``. ``t_start``/``t_end`` are taken at the caller (call
sent / response received). Span ids start at 1; the client hop has ``parent_span_id`` 0. A call
rejected by an in-flight limit has ``host`` None, ``t_end == t_start`` and status 503.

Run ``python benchmarks/baseline_simpy.py [n_requests]`` to time one run.
"""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import simpy

ARRIVAL_RATE = 480.0  # requests per second from the single client
BATCH = 65_536  # random variates drawn per numpy call

# service -> (pods, workers per pod or None for no limit, mean own work in s, downstream service)
SERVICES: dict[str, tuple[int, int | None, float | None, str | None]] = {
    "ingress": (1, None, None, "A"),
    "A": (2, 4, 0.002, "B"),
    "B": (3, 4, 0.003, "C"),
    "C": (2, 4, 0.005, None),
}
CV = 1.0
EDGES = ("ingress->A", "A->B", "B->C")

COLUMNS = [
    "request_id", "span_id", "parent_span_id", "source", "destination", "host",
    "t_start", "t_end", "status",
]


def _batched(draw: Callable[[int], np.ndarray]) -> Iterator[float]:
    """Endless stream of floats, drawn ``BATCH`` at a time (avoids scalar numpy calls)."""
    while True:
        yield from draw(BATCH).tolist()


def _lognormal_stream(rng: np.random.Generator, mean: float, cv: float) -> Iterator[float]:
    sigma2 = math.log1p(cv * cv)
    mu = math.log(mean) - sigma2 / 2.0
    sigma = math.sqrt(sigma2)
    return _batched(lambda size: rng.lognormal(mu, sigma, size))


class Pod:
    """A pod (or the client): its worker pool and its sidecar's per-destination state."""

    __slots__ = ("downstream", "inflight", "name", "rr", "service", "work", "workers")

    def __init__(self, env: simpy.Environment, service: str, name: str,
                 workers: int | None, work: Iterator[float] | None, downstream: str | None):
        self.service = service
        self.name = name
        self.workers = simpy.Resource(env, capacity=workers) if workers is not None else None
        self.work = work
        self.downstream = downstream
        self.rr: dict[str, int] = {}  # round-robin counter per destination service
        self.inflight: dict[str, int] = {}  # calls in flight per destination service


def run_baseline(n_requests: int = 100_000, seed: int = 1, net: float = 1e-4,
                 limits: dict | None = None, timeouts: tuple[float, float, int] | None = None,
                 ) -> dict:
    """Simulate ``n_requests`` end-user requests; return counts, sim time and the records.

    ``timeouts = (route_timeout, per_try_timeout, retries)`` makes every downstream call wait
    with ``yield attempt | env.timeout(...)`` and retry 5xx answers and per-try timeouts, the
    plain SimPy way to write what ``--policies`` switches on in meshsim (in this model nothing
    fails, so the timers and the retry loop never change an outcome; they cost what they cost).
    """
    limits = dict(limits or {})
    unknown = set(limits) - set(EDGES)
    if unknown:
        raise ValueError(f"unknown edges in limits: {sorted(unknown)}; known: {EDGES}")
    # limit per (source service, destination service); None = unlimited
    edge_limit = {tuple(e.split("->")): limits.get(e) for e in EDGES}

    env = simpy.Environment()
    ss_arrivals, *ss_services = np.random.SeedSequence(seed).spawn(1 + len(SERVICES))
    arrival_rng = np.random.default_rng(ss_arrivals)
    interarrivals = _batched(lambda size: arrival_rng.exponential(1.0 / ARRIVAL_RATE, size))

    pods: dict[str, list[Pod]] = {}
    for ss, (service, (n_pods, workers, mean, downstream)) in zip(
        ss_services, SERVICES.items(), strict=True
    ):
        # one work stream per service, shared by its pods
        work = _lognormal_stream(np.random.default_rng(ss), mean, CV) if mean else None
        pods[service] = [Pod(env, service, f"{service}-{i}", workers, work, downstream)
                         for i in range(n_pods)]
    client = Pod(env, "client", "client-0", None, None, "ingress")

    records: list[tuple] = []
    record = records.append
    span_ids = itertools.count(1)
    timeout = env.timeout
    process = env.process

    def call(caller: Pod, dest: str, rid: int, parent: int) -> simpy.Process | None:
        """Start a call from ``caller`` to service ``dest``: its hop process, or None if the
        caller-side in-flight limit rejected it (503, recorded here)."""
        span = next(span_ids)
        inflight = caller.inflight.get(dest, 0)
        limit = edge_limit.get((caller.service, dest))
        if limit is not None and inflight >= limit:
            now = env.now
            record((rid, span, parent, caller.service, dest, None, now, now, 503))
            return None
        caller.inflight[dest] = inflight + 1
        targets = pods[dest]
        k = caller.rr.get(dest, 0)
        caller.rr[dest] = k + 1
        return process(hop(caller, targets[k % len(targets)], rid, span, parent))

    def guarded(caller: Pod, dest: str, rid: int, parent: int):
        """A downstream call with a route timeout, per-try timeouts and retries; its status."""
        route, per_try, retries = timeouts
        deadline = env.now + route
        for attempt in range(retries + 1):
            child = call(caller, dest, rid, parent)
            if child is None:
                return 503  # overflow: never retried
            timer = timeout(min(per_try, deadline - env.now))
            done = yield child | timer
            if child in done:
                status = done[child]
                if status < 500 or attempt == retries:
                    return status
            elif env.now >= deadline:
                return 504
        return 504

    def downstream(caller: Pod, dest: str, rid: int, parent: int):
        """The status of a downstream call (a generator to ``yield from``)."""
        if timeouts is not None:
            return (yield from guarded(caller, dest, rid, parent))
        child = call(caller, dest, rid, parent)
        return 503 if child is None else (yield child)

    def hop(caller: Pod, pod: Pod, rid: int, span: int, parent: int):
        """One hop: request leg, the callee pod's work (and its downstream call), response leg."""
        t_start = env.now
        yield timeout(net)  # request leg
        if pod.workers is None:  # the gateway: a proxy with no worker limit and no own work
            status = 200 if (yield from downstream(pod, pod.downstream, rid, span)) == 200 \
                else 500
        else:
            with pod.workers.request() as worker:
                yield worker
                yield timeout(next(pod.work))
                status = 200
                # the downstream call, made while holding the worker
                if pod.downstream is not None and (
                        yield from downstream(pod, pod.downstream, rid, span)) != 200:
                    status = 500
            # worker released here, the response is sent
        yield timeout(net)  # response leg
        caller.inflight[pod.service] -= 1
        record((rid, span, parent, caller.service, pod.service, pod.name,
                t_start, env.now, status))
        return status

    def arrivals():
        for rid in range(n_requests):
            yield timeout(next(interarrivals))
            call(client, "ingress", rid, 0)

    process(arrivals())
    env.run()  # until the event queue is empty: every request has completed

    df = pd.DataFrame.from_records(records, columns=COLUMNS)
    at_client = df["source"] == "client"
    return {
        "requests": n_requests,
        "completed": int(at_client.sum()),
        "sim_time": env.now,
        "records": df,
        "ok": int((at_client & (df["status"] == 200)).sum()),
    }


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    t0 = time.perf_counter()
    res = run_baseline(n)
    wall = time.perf_counter() - t0
    print(f"plain SimPy baseline: {n} requests in {wall:.2f} s wall "
          f"= {n / wall:,.0f} requests/s (completed {res['completed']}, ok {res['ok']}, "
          f"sim time {res['sim_time']:.1f} s)")
