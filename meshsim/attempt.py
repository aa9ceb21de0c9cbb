"""The attempt: one try of one hop, the unit the engine moves and the records describe."""

from __future__ import annotations

__all__ = ["Attempt"]


class Attempt:
    """One attempt of one hop: a row of the ``requests`` table while it is in flight.

    The lean path (``Engine._send_lean``, clusters without policies) sets only what it needs;
    ``call``, ``attempt``, ``conn``, ``abandoned`` and ``t_end`` belong to the router's attempts,
    and ``inbound_conn`` (the stream held in the callee's own sidecar, -1 for none) and
    ``gated_at`` (when its sidecar's policies admitted it, -1 for none) to attempts that reach a
    pod whose sidecar limits or filters.

    An attempt is also the SimPy event that moves it (:meth:`Engine.schedule`): it has the
    ``callbacks`` and ``_ok`` that ``Environment.step`` reads, and the callbacks receive the
    attempt itself. An attempt waits for at most one event at a time (its request leg, the
    callee's work, its response leg), so this saves allocating an event per delay, the most
    frequent thing a run does.
    """

    _ok = True  # what Environment.step checks after the callbacks: the event did not fail

    __slots__ = (
        "abandoned",
        "attempt",
        "call",
        "callbacks",
        "client",
        "cluster",
        "conn",
        "dest",
        "failed",
        "flags",
        "gated_at",
        "host",
        "hostidx",
        "inbound_conn",
        "optional",
        "parent",
        "pending",
        "req",
        "route_to",
        "source",
        "span",
        "status",
        "step",
        "t_arrive",
        "t_begin",
        "t_end",
        "t_reply",
        "t_start",
    )
