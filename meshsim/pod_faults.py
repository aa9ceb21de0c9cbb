"""Pods that can crash, hang or fail on schedule (the engine side of :mod:`meshsim.faults`).

Only the pods a fault targets are built as :class:`FaultablePod`; every other pod keeps the lean
:class:`~meshsim.service.Pod`, so a scenario without faults pays nothing. Slow pods and error
bursts need no subclass: :class:`PodFaults` swaps the pod's ``latency`` and ``error`` functions
for the length of the window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .service import Pod

if TYPE_CHECKING:
    from .attempt import Attempt

__all__ = ["REFUSED", "TERMINATED", "FaultablePod", "PodFaults"]

#: Why an attempt got no answer from a faulty pod: the connection was refused (503 ``UF``, a
#: connect failure) or terminated while the pod held the request (503 ``UC``).
REFUSED = 0
TERMINATED = 1

_NOTHING: tuple = ()  # the callbacks of a work event whose pod died meanwhile


class FaultablePod(Pod):
    """A service pod (or external host) that a crash, hang or outage can hit.

    States, each switched by the engine at a fault window's edges:

    ``down`` (crash, outage ``refuse``)
        The process is gone. At the crash every request the pod holds (waiting, in work,
        waiting for its own calls, in its sidecar's queue) is reset: the connection closes and
        the caller's proxy answers 503 ``UC`` (Envoy's ``UpstreamConnectionTermination``,
        counted by outlier detection as a local-origin failure, retried under ``reset``,
        ``5xx`` or ``gateway-error`` only). Each new request is refused: 503 ``UF`` (a connect
        failure, which Istio's default retry policy retries), after the round trip. Answers of
        the calls it made come back to nobody. At the restart it starts empty.
    ``frozen`` (hang, outage ``hang``)
        The process accepts requests and does nothing: requests queue up, work that was due
        to finish and answers of its own calls wait. When the window ends it carries on with
        everything, in order; a caller that gave up meanwhile made that work wasted.
    ``answer`` (outage ``errors``)
        Every request is answered at once with this status, without work.
    """

    __slots__ = ("answer", "down", "frozen", "held", "killed", "on_fail", "working")

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.down = False
        self.frozen = False
        self.answer = 0
        #: What waits while the pod is frozen: ``(method, args)`` in arrival order.
        self.held: list[tuple[Callable[..., None], tuple]] = []
        #: Requests holding a worker (in work or waiting for their calls).
        self.working: set[Attempt] = set()
        #: Spans of requests the crash reset, whose calls' answers must be dropped.
        self.killed: set[int] = set()
        #: ``on_fail(attempt, why)``: send the caller its failure (set by the engine).
        self.on_fail: Callable[[Attempt, int], None] | None = None

    # -- the pod's life --------------------------------------------------------------------

    def arrive(self, a: Attempt) -> None:
        if self.down:
            self.on_fail(a, REFUSED)
            return
        if self.answer:
            a.t_arrive = self.engine.env._now
            self.engine.reply(a, self.answer)
            return
        super().arrive(a)

    def _start(self, a: Attempt) -> None:
        if self.frozen:
            self.held.append((self._admit, (a,)))
            return
        self.working.add(a)
        super()._start(a)

    def _worked(self, a: Attempt) -> None:
        if self.frozen:
            self.held.append((self._worked, (a,)))
            return
        super()._worked(a)

    def _next_step(self, a: Attempt) -> None:
        if self.frozen:
            self.held.append((self._next_step, (a,)))
            return
        super()._next_step(a)

    def child_done(self, a: Attempt, status: int, flags: int, optional: bool) -> None:
        if a.span in self.killed:
            return  # the request died with the pod's process
        if self.frozen:
            self.held.append((self.child_done, (a, status, flags, optional)))
            return
        super().child_done(a, status, flags, optional)

    def _finish(self, a: Attempt, status: int) -> None:
        self.working.discard(a)
        super()._finish(a, status)

    # -- fault edges (called by the engine) ------------------------------------------------

    def crash(self) -> None:
        """The process dies: every request it holds is reset; new ones are refused."""
        self.down = True
        self.frozen = False
        victims = list(self.working)
        for a in victims:
            a.callbacks = _NOTHING  # its work event, if still due, does nothing
            self.killed.add(a.span)
        victims += list(self.queue)
        victims += [args[0] for method, args in self.held
                    if method == self._admit]  # admitted while frozen, never started
        if self.inbound is not None:
            victims += list(self.inbound.hosts[0].pending)
            now = self.engine.env._now
            for a in victims:
                if self.gates:
                    self._gates_done(a, now, None)
                a.inbound_conn = -1  # the sidecar's pool is replaced at the restart
        self.working.clear()
        self.queue.clear()
        self.held.clear()
        self.busy = 0
        for a in victims:
            a.t_reply = self.engine.env._now
            self.on_fail(a, TERMINATED)

    def restart(self, fresh_inbound: Any) -> None:
        """The process is back, with nothing in it (and a fresh inbound sidecar pool)."""
        self.down = False
        if self.inbound is not None:
            self.inbound = fresh_inbound

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        """The hang is over: everything that waited goes on, in the order it came."""
        self.frozen = False
        held, self.held = self.held, []
        for method, args in held:
            method(*args)

    def held_attempts(self) -> list[Attempt]:
        """Requests waiting in the frozen pod (for the engine's in-flight walk)."""
        return [args[0] for _, args in self.held]


def _no_error() -> int:
    return 0


class PodFaults:
    """The slow-pod and error-burst windows active on one pod, composed.

    ``latency`` becomes ``base() * Π factor + Σ add()``; ``error`` tries each burst's share
    first (its own random stream), then the pod's own error model.
    """

    def __init__(self, pod: Pod):
        self.pod = pod
        self.base_latency = pod.latency
        self.base_error = pod.error
        self.base_worked = pod.worked
        #: Active windows by fault index: ``(factor, add)`` and ``(rate, status, uniform)``.
        self.slow: dict[int, tuple[float, Callable[[], float] | None]] = {}
        self.bursts: dict[int, tuple[float, int, Callable[[], float]]] = {}

    def update(self) -> None:
        """Rebuild the pod's functions from the windows active now."""
        pod = self.pod
        pod.latency = self._latency() if self.slow else self.base_latency
        if self.bursts:
            pod.error = self._error()
            pod.worked = (pod._worked,)
        else:
            # Requests that started during a burst still check for an error when their work
            # is done: a pod without errors of its own answers them "no error".
            pod.error = self.base_error if self.base_error is not None else _no_error
            pod.worked = self.base_worked

    def _latency(self) -> Callable[[], float]:
        base = self.base_latency
        factor = 1.0
        adds = []
        for f, add in self.slow.values():
            factor *= f
            if add is not None:
                adds.append(add)

        def latency() -> float:
            t = base() * factor
            for add in adds:
                t += add()
            return t

        return latency

    def _error(self) -> Callable[[], int]:
        bursts = list(self.bursts.values())
        own = self.base_error

        def error() -> int:
            for rate, status, uniform in bursts:
                if uniform() < rate:
                    return status
            return own() if own is not None else 0

        return error
