"""The attempt: one try of one hop, the unit the engine moves and the records describe."""

from __future__ import annotations

__all__ = ["Attempt"]


class Attempt:
    """One attempt of one hop: a row of the ``requests`` table while it is in flight.

    The lean path (:meth:`Engine.send` without policies) sets only what it needs; ``call``,
    ``attempt``, ``conn``, ``abandoned`` and ``t_end`` belong to the router's attempts.
    """

    __slots__ = (
        "abandoned",
        "attempt",
        "call",
        "client",
        "cluster",
        "conn",
        "dest",
        "failed",
        "flags",
        "host",
        "hostidx",
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
