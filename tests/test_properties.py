"""Invariants of every run, checked on small random scenarios (hypothesis).

A scenario here is 1-4 services in a DAG (service ``s<i>`` only calls ``s<j>``, ``j > i``, or
the external host ``ext``), with random replicas, workers, queues, latency kinds, errors, call
probabilities, optional calls and parallel groups, and one or two Poisson or closed clients,
for a few simulated seconds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from conftest import assert_conserved, build, closed, everything, poisson
from hypothesis import given, settings
from hypothesis import strategies as st

import meshsim

FAST = settings(max_examples=20, deadline=None)
INF = math.inf


@st.composite
def latencies(draw: st.DrawFn) -> object:
    ms = draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["constant", "exponential", "uniform", "lognormal"]))
    if kind == "constant":
        return f"{ms}ms"
    if kind == "exponential":
        return {"kind": "exponential", "mean": f"{ms}ms"}
    if kind == "uniform":
        return {"kind": "uniform", "low": f"{ms / 2}ms", "high": f"{1.5 * ms}ms"}
    return {"kind": "lognormal", "mean": f"{ms}ms", "cv": draw(st.sampled_from([0.5, 1, 2]))}


def errors() -> st.SearchStrategy:
    return st.none() | st.fixed_dictionaries({
        "rate": st.sampled_from([0.05, 0.3, 1.0]), "status": st.sampled_from([500, 503])})


@st.composite
def steps(draw: st.DrawFn, targets: list[str]) -> list[dict]:
    """Calls to a subset of ``targets``, each at most once, grouped into sequential steps."""
    chosen = draw(st.lists(st.sampled_from(targets), unique=True, max_size=3)) if targets else []
    calls = [{"to": t, "probability": draw(st.sampled_from([1.0, 1.0, 0.5, 0.0])),
              "optional": draw(st.booleans())} for t in chosen]
    out: list[dict] = []
    while calls:
        k = draw(st.integers(1, min(2, len(calls))))
        group, calls = calls[:k], calls[k:]
        out.append(group[0] if k == 1 else {"parallel": group})
    return out


def arrivals() -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda r: {"kind": "poisson", "rate": f"{r}/s"}, st.integers(1, 40)),
        st.builds(lambda n, ms: {"kind": "closed", "users": n,
                                 "thinkTime": {"kind": "exponential", "mean": f"{ms}ms"}},
                  st.integers(1, 4), st.integers(20, 300)),
    )


@st.composite
def scenarios(draw: st.DrawFn, network: object = None) -> meshsim.Scenario:
    n = draw(st.integers(1, 4))
    names = [f"s{i}" for i in range(n)]
    external = draw(st.booleans())
    services = {}
    for i, name in enumerate(names):
        svc = {"replicas": draw(st.integers(1, 3)), "workers": draw(st.integers(1, 4)),
               "latency": draw(latencies()),
               "calls": draw(steps(names[i + 1:] + (["ext"] if external else [])))}
        queue = draw(st.none() | st.integers(0, 3))
        if queue is not None:
            svc["queue"] = queue
        errs = draw(errors())
        if errs:
            svc["errors"] = errs
        services[name] = svc
    workload = [{"client": f"c{k}", "entry": draw(st.sampled_from(names)),
                 "viaIngress": draw(st.booleans()), "arrival": draw(arrivals())}
                for k in range(draw(st.integers(1, 2)))]
    policy = st.sampled_from(["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM"])
    mesh: dict = {
        "istioDefaults": draw(st.booleans()),
        "ingressGateway": {"replicas": draw(st.integers(1, 2))},
        "destinationRules": {name: {"trafficPolicy": {"loadBalancer": {"simple": draw(policy)}}}
                             for name in names if draw(st.booleans())},
    }
    extra: dict = {}
    if external:
        ext = {"latency": draw(latencies())}
        if draw(st.booleans()):
            ext["concurrency"] = draw(st.integers(1, 3))
        extra["externalServices"] = {"ext": ext}
        if draw(st.booleans()):
            mesh["egressGateway"] = {"replicas": draw(st.integers(1, 2))}
    if network is None:
        network = draw(st.sampled_from(["0ms", "1ms", {"kind": "exponential", "mean": "0.5ms"}]))
    overhead = draw(st.sampled_from(["0ms", {"kind": "lognormal", "median": "0.96ms",
                                             "p99": "2.7ms"}]))
    return build(services, workload, duration=f"{draw(st.integers(1, 4))}s", network=network,
                 overhead=overhead, mesh=mesh, **extra)


seeds = st.integers(0, 2**32 - 1)

# ---- conservation and causality ------------------------------------------------------------------


@FAST
@given(scenarios(), seeds)
def test_every_request_ends_once_or_is_in_flight(sc, seed):
    assert_conserved(meshsim.run(sc, seed=seed))


@FAST
@given(scenarios(), seeds)
def test_children_happen_inside_their_parent(sc, seed):
    both = everything(meshsim.run(sc, seed=seed))
    # Each row's own timeline is ordered (NaN where it did not happen yet).
    t = both[["t_start", "t_arrive", "t_begin", "t_reply", "t_end"]].to_numpy()
    for a, b in zip(range(4), range(1, 5), strict=True):
        later = ~np.isnan(t[:, a]) & ~np.isnan(t[:, b])
        assert (t[later, a] <= t[later, b]).all()
    parents = both.set_index("span_id")
    children = both[both["parent_span_id"] != 0]
    assert children["parent_span_id"].isin(parents.index).all()
    parent = parents.loc[children["parent_span_id"]]
    assert (children["request_id"].to_numpy() == parent["request_id"].to_numpy()).all()
    assert (children["client"].to_numpy() == parent["client"].to_numpy()).all()
    # The caller of a child is the callee of its parent.
    assert (children["source"].to_numpy() == parent["destination"].to_numpy()).all()
    assert (children["t_start"].to_numpy() >= parent["t_begin"].to_numpy()).all()
    end = children["t_end"].fillna(INF).to_numpy()
    assert (end <= parent["t_reply"].fillna(INF).to_numpy()).all()


# ---- worker pools and queues --------------------------------------------------------------------


def max_open(starts: np.ndarray, ends: np.ndarray) -> int:
    """Most intervals [start, end) open at once; an interval closing at t frees its slot before
    one opening at t takes it."""
    keep = starts < ends
    events = sorted([(e, -1) for e in ends[keep]] + [(s, 1) for s in starts[keep]])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


def pods(sc: meshsim.Scenario, both: pd.DataFrame):
    """(rows of one pod, its workers, its queue capacity) for every pod that got requests."""
    limits = {name: (s.workers, s.queue) for name, s in sc.services.items()}
    limits |= {name: (e.concurrency or INF, None) for name, e in sc.external_services.items()}
    for (dest, _), rows_ in both.groupby(["destination", "host"]):
        if dest in limits:
            yield rows_, *limits[dest]


@FAST
@given(scenarios(), seeds)
def test_pods_never_exceed_their_workers_or_queue(sc, seed):
    both = everything(meshsim.run(sc, seed=seed))
    for rows_, workers, queue in pods(sc, both):
        begin = rows_["t_begin"].to_numpy()
        reply = rows_["t_reply"].fillna(INF).to_numpy()
        held = ~np.isnan(begin)
        assert max_open(begin[held], reply[held]) <= workers
        arrive = rows_["t_arrive"].to_numpy()
        refused = np.isnan(begin) & ~rows_["t_reply"].isna().to_numpy()
        waiting = ~np.isnan(arrive) & ~refused
        start_work = np.where(np.isnan(begin), INF, begin)
        if queue is not None:
            assert max_open(arrive[waiting], start_work[waiting]) <= queue
        # FIFO: who arrived first starts first.
        started = start_work[waiting][np.lexsort((start_work[waiting], arrive[waiting]))]
        assert (started[1:] >= started[:-1]).all()
        # Only a full queue refuses: and a refused request is answered at once with 503 (its
        # status is still 0 if the run ended while the answer was on its way back).
        status = rows_["status"].to_numpy()[refused]
        in_flight = rows_["t_end"].isna().to_numpy()[refused]
        assert ((status == 503) | (in_flight & (status == 0))).all()
        assert (rows_["t_reply"].to_numpy()[refused] == arrive[refused]).all()


# ---- randomness -------------------------------------------------------------------------------


@FAST
@given(scenarios(), seeds)
def test_same_seed_same_records(sc, seed):
    a, b = meshsim.run(sc, seed=seed), meshsim.run(sc, seed=seed)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.in_flight, b.in_flight)
    assert a.meta["arrivals"] == b.meta["arrivals"]


@FAST
@given(st.integers(5, 40), seeds, seeds)
def test_another_seed_other_arrivals(rate, seed, other):
    if seed == other:
        return
    sc = build({"a": {"latency": "1ms"}}, [poisson("a", f"{rate}/s")], duration="2s")
    starts = [everything(meshsim.run(sc, seed=s))["t_start"].tolist() for s in (seed, other)]
    assert starts[0] != starts[1]


UNRELATED = {"latency": {"kind": "exponential", "mean": "3ms"}, "replicas": 2}
KEEP = ["client", "source", "destination", "host", "attempt", "t_start", "t_end", "status",
        "flags", "shadow", "t_arrive", "t_begin", "t_reply"]


def comparable(result: meshsim.Result, clients: set[str]) -> pd.DataFrame:
    """The records of ``clients`` with names as str and without ids (they count globally)."""
    both = everything(result)
    return both[both["client"].isin(clients)][KEEP].reset_index(drop=True)


@FAST
@given(scenarios(network="1ms"), seeds, st.booleans())
def test_unrelated_service_and_client_do_not_shift_draws(sc, seed, via_ingress):
    data = sc.to_dict()
    data["services"]["zz"] = UNRELATED
    alone = meshsim.parse_scenario(data)
    data["workload"].append({"client": "cz", "entry": "zz", "viaIngress": via_ingress,
                             "arrival": {"kind": "poisson", "rate": "30/s"}})
    crowded = meshsim.parse_scenario(data)
    base = meshsim.run(sc, seed=seed)
    mine = {cl.client for cl in sc.workload}
    # A service nobody calls changes nothing at all.
    pd.testing.assert_frame_equal(comparable(base, mine),
                                  comparable(meshsim.run(alone, seed=seed), mine))
    # A client of its own service leaves the first clients' records as they were.
    pd.testing.assert_frame_equal(comparable(base, mine),
                                  comparable(meshsim.run(crowded, seed=seed), mine))


def test_unrelated_client_keeps_leaf_service_times():
    # The brief's form of the check: the first 200 service times of a leaf service.
    svc = {"a": {"latency": {"kind": "lognormal", "mean": "5ms", "cv": 1}}}
    sc = build(svc, [poisson("a", "100/s", via_ingress=True)], duration="4s")
    more = build({**svc, "z": UNRELATED}, [poisson("a", "100/s", via_ingress=True),
                                         poisson("z", "100/s", client="v", via_ingress=True)],
                 duration="4s")

    def service_times(r: meshsim.Result) -> list[float]:
        q = r.requests[r.requests["destination"] == "a"].sort_values("t_begin")
        return (q["t_reply"] - q["t_begin"]).head(200).tolist()

    first = service_times(meshsim.run(sc, seed=11))
    assert len(first) == 200
    assert first == service_times(meshsim.run(more, seed=11))


def test_unrelated_client_does_not_shift_network_draws():
    net = {"kind": "exponential", "mean": "1ms"}
    svc = {"a": {"latency": "5ms"}, "z": {"latency": "5ms"}}
    one = build(svc, [poisson("a", "50/s", via_ingress=True)], duration="3s", network=net)
    two = build(svc, [poisson("a", "50/s", via_ingress=True),
                      poisson("z", "50/s", client="v", via_ingress=True)],
                duration="3s", network=net)
    pd.testing.assert_frame_equal(comparable(meshsim.run(one, seed=5), {"u"}),
                                  comparable(meshsim.run(two, seed=5), {"u"}))


def test_closed_users_are_independent_of_seed_when_nothing_is_random():
    # The flip side of "another seed, other results": with constants only, the seed is moot.
    sc = build({"a": {"latency": "10ms"}}, [closed("a", users=2)], duration="3s")
    pd.testing.assert_frame_equal(meshsim.run(sc, seed=1).requests,
                                  meshsim.run(sc, seed=2).requests)
