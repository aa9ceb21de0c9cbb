"""Runs a scenario's fault schedule (:mod:`meshsim.faults`) on a built engine.

Each fault becomes two timed events, its start and its end, which switch the state of what
it targets: pods (:mod:`meshsim.pod_faults`), the delays of the clusters of an edge, or a
client's load. Nothing in the hot path checks for
faults; the switches swap functions or flags on the objects concerned. Every draw a fault makes
comes from a stream of its own (``fault:<i>:...``), so adding a fault shifts no other draw: a
scenario and its variant without the fault run on common random numbers up to the fault.

Fault edges are also written to :attr:`Result.events <meshsim.result.Result.events>`: kind
``fault_started`` / ``fault_ended``, source ``fault``, destination the target, host the pod
(or ``-``), detail the fault's label.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .pod_faults import PodFaults

if TYPE_CHECKING:
    from .engine import Engine
    from .scenario import Scenario

__all__ = ["FaultSchedule", "faultable_pods"]

#: The pod-level kinds that need a :class:`FaultablePod`.
_STATEFUL = {"crash", "hang", "outage"}


def faultable_pods(scenario: Scenario) -> set[str]:
    """Names of the pods (and external hosts) a crash, hang or outage can hit."""
    names: set[str] = set()
    for fault in scenario.faults:
        if fault.kind not in _STATEFUL:
            continue
        names.update(_pod_names(scenario, fault))
    return names


def _pod_names(scenario: Scenario, fault: Any) -> list[str]:
    if fault.target in scenario.external_services:
        return [fault.target]
    every = [p for d in scenario.services[fault.target].deployments()
             for p in d.pod_names(fault.target)]
    pods = getattr(fault, "pods", None)
    return every if pods is None else fault.pod_names(every)


class FaultSchedule:
    """The faults of ``engine.scenario``, ready to run: call :meth:`start` before the run."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.events: list[tuple[float, str, str, str, str, str]] = []
        self._pod_faults: dict[str, PodFaults] = {}
        self._edges: dict[int, _EdgeFaults] = {}
        by_name = {p.name: p for pods in engine.pods.values() for p in pods}
        self._by_name = by_name

    def start(self) -> None:
        """Schedule every fault's start and end."""
        eng = self.engine
        horizon = eng.horizon
        for i, fault in enumerate(eng.scenario.faults):
            start, end = fault.window(horizon)
            eng.later(start, (self._begin,), (i, fault))
            if end < horizon:
                eng.later(end, (self._end,), (i, fault))

    # -- edges ---------------------------------------------------------------------------

    def _begin(self, ev: Any) -> None:
        i, fault = ev._value
        getattr(self, f"_start_{fault.kind.lower()}")(i, fault)

    def _end(self, ev: Any) -> None:
        i, fault = ev._value
        getattr(self, f"_stop_{fault.kind.lower()}")(i, fault)

    def _event(self, kind: str, fault: Any, target: str, host: str = "-") -> None:
        self.events.append((self.engine.env._now, kind, "fault", target, host, fault.label))

    def _pods(self, fault: Any) -> list[Any]:
        return [self._by_name[n] for n in _pod_names(self.engine.scenario, fault)]

    # -- pods --------------------------------------------------------------------------------

    def _start_crash(self, i: int, fault: Any) -> None:
        for pod in self._pods(fault):
            self._event("fault_started", fault, fault.target, pod.name)
            pod.crash()

    def _stop_crash(self, i: int, fault: Any) -> None:
        for pod in self._pods(fault):
            self._event("fault_ended", fault, fault.target, pod.name)
            pod.restart(self.engine.fresh_inbound(fault.target))

    def _start_hang(self, i: int, fault: Any) -> None:
        for pod in self._pods(fault):
            self._event("fault_started", fault, fault.target, pod.name)
            pod.freeze()

    def _stop_hang(self, i: int, fault: Any) -> None:
        for pod in self._pods(fault):
            self._event("fault_ended", fault, fault.target, pod.name)
            pod.thaw()

    def _start_outage(self, i: int, fault: Any) -> None:
        self._event("fault_started", fault, fault.target)
        for pod in self._pods(fault):
            if fault.mode == "refuse":
                pod.crash()
            elif fault.mode == "hang":
                pod.freeze()
            else:
                pod.answer = fault.status

    def _stop_outage(self, i: int, fault: Any) -> None:
        self._event("fault_ended", fault, fault.target)
        for pod in self._pods(fault):
            if fault.mode == "refuse":
                pod.restart(self.engine.fresh_inbound(fault.target))
            elif fault.mode == "hang":
                pod.thaw()
            else:
                pod.answer = 0

    def _faults_of(self, pod: Any) -> PodFaults:
        if pod.name not in self._pod_faults:
            self._pod_faults[pod.name] = PodFaults(pod)
        return self._pod_faults[pod.name]

    def _start_slow(self, i: int, fault: Any) -> None:
        add = None if fault.add is None else self.engine.fault_sampler(f"fault:{i}:add",
                                                                         fault.add)
        self._pod_window(i, fault, "slow", (fault.factor, add))

    def _stop_slow(self, i: int, fault: Any) -> None:
        self._pod_window(i, fault, "slow", None)

    def _start_errors(self, i: int, fault: Any) -> None:
        uniform = self.engine.streams.uniform(f"fault:{i}:errors")
        self._pod_window(i, fault, "bursts", (fault.rate, fault.status, uniform))

    def _stop_errors(self, i: int, fault: Any) -> None:
        self._pod_window(i, fault, "bursts", None)

    def _pod_window(self, i: int, fault: Any, which: str, entry: tuple | None) -> None:
        """Add (``entry``) or remove (None) fault ``i``'s window on each of its pods."""
        self._event("fault_started" if entry is not None else "fault_ended", fault, fault.target)
        for pod in self._pods(fault):
            if pod.name not in self._pod_faults:
                self._pod_faults[pod.name] = PodFaults(pod)
            state = self._pod_faults[pod.name]
            windows = getattr(state, which)
            if entry is None:
                windows.pop(i, None)
            else:
                windows[i] = entry
            state.update()

    # -- network ------------------------------------------------------------------------------

    def _clusters(self, fault: Any) -> list[Any]:
        """The clusters of the edge: callers' proxies towards the destination, as the
        ``source`` and ``destination`` columns of the requests name them."""
        eng = self.engine
        names = eng.nodes.names
        out = []
        for cl in eng.all_clusters():
            if names[cl.code] != fault.destination:
                continue
            if fault.source is not None and cl.source_name != fault.source:
                continue
            out.append(cl)
        return out

    def _start_network(self, i: int, fault: Any) -> None:
        self._event("fault_started", fault, fault.destination, fault.source or "*")
        eng = self.engine
        extra = _leg_delay(fault, eng.streams.uniform(f"fault:{i}:jitter"),
                           eng.streams.uniform(f"fault:{i}:loss"))
        for cl in self._clusters(fault):
            edge = self._edges.get(id(cl))
            if edge is None:
                edge = self._edges[id(cl)] = _EdgeFaults(cl)
            edge.active[i] = extra
            edge.update()

    def _stop_network(self, i: int, fault: Any) -> None:
        self._event("fault_ended", fault, fault.destination, fault.source or "*")
        for cl in self._clusters(fault):
            edge = self._edges[id(cl)]
            edge.active.pop(i, None)
            edge.update()

    # -- load -----------------------------------------------------------------------------

    def _drivers(self, fault: Any) -> list[Any]:
        return [d for d in self.engine.clients if fault.client in (None, d.name)]

    def _start_loadspike(self, i: int, fault: Any) -> None:
        self._event("fault_started", fault, fault.client or "*")
        for driver in self._drivers(fault):
            driver.scale(fault.factor)

    def _stop_loadspike(self, i: int, fault: Any) -> None:
        self._event("fault_ended", fault, fault.client or "*")
        for driver in self._drivers(fault):
            driver.scale(1.0 / fault.factor)


class _EdgeFaults:
    """The network windows active on one cluster: its leg delays get each window's extra."""

    def __init__(self, cl: Any):
        self.cl = cl
        self.base_out = cl.out_delay
        self.base_back = cl.back_delay
        self.active: dict[int, Callable[[], float]] = {}

    def update(self) -> None:
        cl = self.cl
        if not self.active:
            cl.out_delay, cl.back_delay = self.base_out, self.base_back
            return
        extras = list(self.active.values())
        cl.out_delay = _plus(self.base_out, extras)
        cl.back_delay = _plus(self.base_back, extras)


def _plus(base: Callable[[], float], extras: list[Callable[[], float]]) -> Callable[[], float]:
    def delay() -> float:
        t = base()
        for extra in extras:
            t += extra()
        return t

    return delay


def _leg_delay(fault: Any, jitter_u: Callable[[], float],
               loss_u: Callable[[], float]) -> Callable[[], float]:
    """Extra seconds of one leg: ``delay ± jitter`` (uniform, as ``tc netem delay D J`` draws
    it, never below 0), plus TCP's retransmission timeouts if the leg's packets are lost.

    A lost leg is sent again after the retransmission timeout (RTO), which doubles on each
    further loss (RFC 6298 §5.5): with ``k`` losses in a row (probability ``loss^k (1 −
    loss)``) the leg takes ``RTO · (2^k − 1)`` longer. One draw gives ``k``: ``P(K ≥ k) =
    loss^k``, so ``K = ⌊ln u / ln loss⌋``.
    """
    delay, jitter, loss, rto = fault.delay, fault.jitter, fault.loss, fault.retransmit_timeout
    log_loss = math.log(loss) if loss > 0 else 0.0

    def extra() -> float:
        t = delay
        if jitter > 0:
            t = max(0.0, delay + jitter * (2.0 * jitter_u() - 1.0))
        if loss > 0:
            u = 1.0 - loss_u()  # in (0, 1]
            k = int(math.log(u) / log_loss)
            if k:
                t += rto * (2.0**k - 1.0)
        return t

    return extra
