"""Exact behaviour of the engine on tiny deterministic scenarios: every record written down.

Latencies are constants and clients are closed-loop users with a constant think time (0.5 s), so
each request's timeline follows from the model: request leg = network (+ hop overhead between
two proxies), FIFO wait for a worker, own latency, downstream calls with the worker held, reply,
response leg = network.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest
from conftest import ROW, assert_conserved, build, closed, everything, poisson, rows

import meshsim

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
# ---- a chain, hop by hop ------------------------------------------------------------------


def test_chain_timing_through_ingress():
    # client -> ingress -> a (10 ms) -> b (20 ms); network 1 ms each way; the two proxies of a
    # mesh hop add 2 ms, paid on ingress->a and a->b but not on client->ingress (no sidecar).
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "b"}]}, "b": {"latency": "20ms"}},
               [closed("a", via_ingress=True)], network="1ms", overhead="2ms")
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [
        (1, 0, "client", "ingress", "ingress-0", 200, "-", 0.5, 0.501, 0.501, 0.539, 0.540),
        (2, 1, "ingress", "a", "a-0", 200, "-", 0.501, 0.504, 0.504, 0.538, 0.539),
        (3, 2, "a", "b", "b-0", 200, "-", 0.514, 0.517, 0.517, 0.537, 0.538),
    ]
    # Rows come in the order the answers arrived.
    assert r.requests["span_id"].tolist() == [3, 2, 1]
    assert set(r.requests["request_id"]) == {0}
    assert set(r.requests["client"].astype(str)) == {"u"}
    assert set(r.requests["attempt"]) == {1}
    assert not r.requests["shadow"].any()
    assert r.in_flight.empty
    assert r.meta["arrivals"] == {"u": 1} and r.meta["completed"] == {"u": 1}
    s = r.summary()
    assert s.loc["end-to-end", "requests"] == 1
    assert s.loc["end-to-end", "latency_mean"] == pytest.approx(0.040)
    assert s.loc["b", "latency_mean"] == pytest.approx(0.024)


def test_client_straight_to_the_pod_pays_no_proxy_overhead():
    sc = build({"a": {"latency": "10ms"}}, [closed("a")], network="1ms", overhead="2ms")
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [
        (1, 0, "client", "a", "a-0", 200, "-", 0.5, 0.501, 0.501, 0.511, 0.512),
    ]


def test_closed_user_thinks_between_requests():
    sc = build({"a": {"latency": "100ms"}}, [closed("a", think="0.5s")], duration="1.75s")
    r = meshsim.run(sc, seed=1)
    # sends at 0.5, answer at 0.6, thinks 0.5 s, sends at 1.1, answer at 1.2, sends at 1.7.
    assert rows(r.requests, ("request_id", "t_start", "t_end")) == [
        (0, 0.5, 0.6), (1, 1.1, 1.2)]
    assert rows(r.in_flight, ("request_id", "t_start", "t_begin", "t_end")) == [
        (2, 1.7, 1.7, None)]


# ---- the worker pool and its queue ---------------------------------------------------------


def test_second_request_waits_for_the_only_worker():
    sc = build({"a": {"workers": 1, "latency": "10ms"}}, [closed("a", users=2)], duration="0.9s")
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests, ("request_id", "status", "t_arrive", "t_begin", "t_reply", "t_end")) \
        == [(0, 200, 0.5, 0.5, 0.51, 0.51), (1, 200, 0.5, 0.51, 0.52, 0.52)]
    wait = (r.requests["t_begin"] - r.requests["t_arrive"]).sort_values().tolist()
    assert wait == pytest.approx([0.0, 0.010], abs=1e-12)


def test_full_queue_answers_503_at_once():
    sc = build({"a": {"workers": 1, "queue": 0, "latency": "10ms"}}, [closed("a", users=2)],
               duration="0.9s")
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests, ("request_id", "status", "flags", "t_arrive", "t_begin", "t_reply",
                             "t_end")) == [
        (0, 200, "-", 0.5, 0.5, 0.51, 0.51),
        (1, 503, "-", 0.5, None, 0.5, 0.5),
    ]


def test_queue_of_one_holds_one_and_refuses_the_next():
    sc = build({"a": {"workers": 1, "queue": 1, "latency": "10ms"}}, [closed("a", users=3)],
               duration="0.9s")
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests, ("request_id", "status", "t_begin", "t_end")) == [
        (0, 200, 0.5, 0.51), (1, 200, 0.51, 0.52), (2, 503, None, 0.5)]


# ---- errors and downstream calls -------------------------------------------------------------

FAILING_B = {"latency": "20ms", "errors": {"rate": 1.0, "status": 503}}


@pytest.mark.parametrize(("own", "expected"), [({}, 500), ({"downstreamErrorStatus": 502}, 502)])
def test_failed_required_call_fails_the_caller_and_skips_later_steps(own, expected):
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "b"}, {"to": "c"}], **own},
                "b": FAILING_B, "c": {"latency": "5ms"}}, [closed("a", via_ingress=True)])
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [
        (1, 0, "client", "ingress", "ingress-0", expected, "-", 0.5, 0.5, 0.5, 0.53, 0.53),
        (2, 1, "ingress", "a", "a-0", expected, "-", 0.5, 0.5, 0.5, 0.53, 0.53),
        # b still does its 20 ms of work, then fails; c is never called.
        (3, 2, "a", "b", "b-0", 503, "-", 0.51, 0.51, 0.51, 0.53, 0.53),
    ]


def test_failed_optional_call_does_not_fail_the_caller():
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "b", "optional": True}, {"to": "c"}]},
                "b": FAILING_B, "c": {"latency": "5ms"}}, [closed("a")])
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [
        (1, 0, "client", "a", "a-0", 200, "-", 0.5, 0.5, 0.5, 0.535, 0.535),
        (2, 1, "a", "b", "b-0", 503, "-", 0.51, 0.51, 0.51, 0.53, 0.53),
        (3, 1, "a", "c", "c-0", 200, "-", 0.53, 0.53, 0.53, 0.535, 0.535),
    ]


def test_own_error_skips_all_calls():
    sc = build({"a": {"latency": "10ms", "errors": {"rate": 1.0, "status": 500},
                      "calls": [{"to": "b"}]}, "b": {"latency": "5ms"}}, [closed("a")])
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [(1, 0, "client", "a", "a-0", 500, "-", 0.5, 0.5, 0.5, 0.51, 0.51)]


def test_call_with_probability_zero_is_never_made():
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "b", "probability": 0}, {"to": "c"}]},
                "b": {"latency": "5ms"}, "c": {"latency": "5ms"}},
               [closed("a", users=3, think={"kind": "exponential", "mean": "50ms"})],
               duration="5s")
    r = meshsim.run(sc, seed=1)
    both = everything(r)
    assert set(both["destination"]) == {"a", "c"}
    # Every answered request of a made exactly one call, to c, the moment its own work ended.
    answered_a = r.requests[r.requests["destination"] == "a"]
    done = r.requests[r.requests["destination"] == "c"]
    assert len(answered_a) > 20
    assert sorted(done["parent_span_id"]) == sorted(answered_a["span_id"])
    parents = r.requests.set_index("span_id").loc[done["parent_span_id"]]
    assert done["t_start"].to_numpy() == pytest.approx(parents["t_begin"].to_numpy() + 0.010)


def test_parallel_fan_out_waits_for_the_slower_call():
    sc = build({"a": {"latency": "10ms",
                      "calls": [{"parallel": [{"to": "b"}, {"to": "c"}]}, {"to": "d"}]},
                "b": {"latency": "10ms"}, "c": {"latency": "30ms"}, "d": {"latency": "5ms"}},
               [closed("a")])
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [
        (1, 0, "client", "a", "a-0", 200, "-", 0.5, 0.5, 0.5, 0.545, 0.545),
        (2, 1, "a", "b", "b-0", 200, "-", 0.51, 0.51, 0.51, 0.52, 0.52),
        (3, 1, "a", "c", "c-0", 200, "-", 0.51, 0.51, 0.51, 0.54, 0.54),
        (4, 1, "a", "d", "d-0", 200, "-", 0.54, 0.54, 0.54, 0.545, 0.545),
    ]


def test_parallel_required_failure_fails_the_caller_after_all_answered():
    sc = build({"a": {"latency": "10ms",
                      "calls": [{"parallel": [{"to": "b"}, {"to": "c"}]}, {"to": "d"}]},
                "b": FAILING_B, "c": {"latency": "30ms"}, "d": {"latency": "5ms"}},
               [closed("a")])
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests, ("span_id", "destination", "status", "t_end")) == [
        (1, "a", 500, 0.54), (2, "b", 503, 0.53), (3, "c", 200, 0.54)]


# ---- external services ------------------------------------------------------------------------

PAYMENTS = {"payments": {"latency": "50ms"}}


def test_external_call_through_the_egress_gateway():
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "payments"}]}},
               [closed("a", via_ingress=True)], network="1ms", overhead="2ms",
               externalServices=PAYMENTS, mesh={"egressGateway": {"replicas": 1}})
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [
        (1, 0, "client", "ingress", "ingress-0", 200, "-", 0.5, 0.501, 0.501, 0.571, 0.572),
        (2, 1, "ingress", "a", "a-0", 200, "-", 0.501, 0.504, 0.504, 0.570, 0.571),
        # a -> egress is a mesh hop (sidecar to gateway); egress -> payments is not.
        (3, 2, "a", "egress", "egress-0", 200, "-", 0.514, 0.517, 0.517, 0.569, 0.570),
        (4, 3, "egress", "payments", "payments", 200, "-", 0.517, 0.518, 0.518, 0.568, 0.569),
    ]
    s = r.summary()
    assert list(s.index) == ["end-to-end", "client:u", "ingress", "a", "egress", "payments"]


def test_external_failure_passes_the_egress_and_fails_the_caller():
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "payments"}]}}, [closed("a")],
               externalServices={"payments": {"latency": "50ms",
                                              "errors": {"rate": 1.0, "status": 502}}},
               mesh={"egressGateway": {"replicas": 1}})
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests, ("span_id", "source", "destination", "status", "t_end")) == [
        (1, "client", "a", 500, 0.56), (2, "a", "egress", 502, 0.56),
        (3, "egress", "payments", 502, 0.56)]


def test_external_call_without_egress_gateway_goes_direct():
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "payments"}]}}, [closed("a")],
               network="1ms", overhead="2ms", externalServices=PAYMENTS)
    r = meshsim.run(sc, seed=1)
    assert rows(r.requests) == [
        (1, 0, "client", "a", "a-0", 200, "-", 0.5, 0.501, 0.501, 0.563, 0.564),
        (2, 1, "a", "payments", "payments", 200, "-", 0.511, 0.512, 0.512, 0.562, 0.563),
    ]


def test_external_concurrency_queues_the_excess():
    sc = build({"a": {"latency": "10ms", "calls": [{"to": "payments"}]}}, [closed("a", users=2)],
               externalServices={"payments": {"latency": "50ms", "concurrency": 1}})
    r = meshsim.run(sc, seed=1)
    ext = r.requests[r.requests["destination"] == "payments"]
    assert rows(ext, ("t_arrive", "t_begin", "t_reply")) == [
        (0.51, 0.51, 0.56), (0.51, 0.56, 0.61)]




def test_two_calls_to_the_same_multi_pod_service():
    rr = {"trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}
    sc = build({"a": {"latency": "1ms", "calls": [{"to": "b"}, {"to": "b"}]},
                "b": {"replicas": 2, "latency": "1ms"}},
               [closed("a")], mesh={"destinationRules": {"b": rr}})
    r = meshsim.run(sc, seed=1)
    # One cluster a-0 -> b shared by both steps: its round robin alternates over the two pods.
    calls = r.requests[r.requests["destination"] == "b"].sort_values("span_id")
    assert sorted(calls["host"].astype(str)) == ["b-0", "b-1"]


def test_two_external_hosts_behind_a_multi_pod_egress():
    sc = build({"a": {"latency": "1ms", "calls": [{"to": "x"}, {"to": "y"}]}}, [closed("a")],
               externalServices={"x": {"latency": "1ms"}, "y": {"latency": "1ms"}},
               mesh={"egressGateway": {"replicas": 2}})
    r = meshsim.run(sc, seed=1)
    assert sorted(everything(r)["destination"]) == ["a", "egress", "egress", "x", "y"]


# ---- load balancing ------------------------------------------------------------------------------


def test_round_robin_is_cyclic_per_caller_pod():
    rr = {"trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}
    sc = build({"a": {"replicas": 2, "latency": "1ms", "calls": [{"to": "b"}]},
                "b": {"replicas": 3, "latency": "1ms"}},
               [poisson("a", "40/s")], duration="5s",
               mesh={"istioDefaults": True, "destinationRules": {"a": rr, "b": rr}})
    r = meshsim.run(sc, seed=7)
    both = everything(r).sort_values("span_id")
    sent = both[both["destination"] == "a"]["host"].tolist()
    assert len(sent) > 100
    assert all(h == f"a-{(int(sent[0][-1]) + i) % 2}" for i, h in enumerate(sent))
    host_of_span = dict(zip(both["span_id"], both["host"], strict=True))
    per_caller = defaultdict(list)
    for parent, host in zip(both["parent_span_id"], both["host"], strict=True):
        if host.startswith("b-"):
            per_caller[host_of_span[parent]].append(int(host[-1]))
    assert set(per_caller) == {"a-0", "a-1"}
    for seq in per_caller.values():
        assert seq == [(seq[0] + i) % 3 for i in range(len(seq))]


# ---- the end of the run -------------------------------------------------------------------


def test_requests_still_running_at_the_end_are_in_flight():
    sc = build({"a": {"workers": 1, "latency": "10ms", "calls": [{"to": "b"}]},
                "b": {"latency": "2s"}},
               [closed("a", users=3), closed("a", think="0.9995s", client="v")], network="1ms")
    r = meshsim.run(sc, seed=1)
    assert r.requests.empty
    assert rows(r.in_flight, ("request_id", "client", *ROW)) == [
        # the first user's request holds a's only worker while b works
        (0, "u", 1, 0, "client", "a", "a-0", 0, "-", 0.5, 0.501, 0.501, None, None),
        # the two others wait for that worker
        (1, "u", 2, 0, "client", "a", "a-0", 0, "-", 0.5, 0.501, None, None, None),
        (2, "u", 3, 0, "client", "a", "a-0", 0, "-", 0.5, 0.501, None, None, None),
        (0, "u", 4, 1, "a", "b", "b-0", 0, "-", 0.511, 0.512, 0.512, None, None),
        # v's request is still on the wire
        (3, "v", 5, 0, "client", "a", "a-0", 0, "-", 0.9995, None, None, None, None),
    ]
    assert r.meta["arrivals"] == {"u": 3, "v": 1}
    assert r.meta["completed"] == {"u": 0, "v": 0}
    assert r.summary().loc["end-to-end", "in_flight_at_end"] == 4
    assert_conserved(r)


def test_every_request_is_answered_once_or_in_flight():
    r = meshsim.run(SCENARIOS / "shop.yaml", seed=3, overrides={"duration": "6s", "warmup": "1s"})
    assert sum(r.meta["arrivals"].values()) > 500
    assert len(r.in_flight) > 0
    assert_conserved(r)
