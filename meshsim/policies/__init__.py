"""Proxy policies as plain state machines.

Each policy is an object that keeps the state one Envoy keeps (per client proxy and per upstream
cluster, or per host as that proxy sees it) and takes the current simulated time ``now`` (float
seconds) as an argument. None of them imports SimPy: the engine calls them and schedules whatever
they ask for, so each can be unit-tested without a simulation. The reference for their behaviour
is ``../shared/envoy-semantics.md`` (Envoy 1.40, current Istio).
"""
