"""Clients: open-loop Poisson arrivals (with rate profiles) and closed-loop users."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .arrivals import ClosedArrivals, PoissonArrivals

if TYPE_CHECKING:
    from .engine import Attempt, Engine

__all__ = ["ClientDriver"]


class ClientDriver:
    """Generates one client's end-user requests and receives their answers.

    Open loop: a Poisson process at the profile's rate, simulated by thinning (candidates at the
    profile's maximum rate, each kept with probability ``rate(t) / max``), so it is exact for any
    profile. Closed loop: each user waits for its answer, thinks, then sends again.
    """

    def __init__(self, engine: Engine, name: str, code: int, arrival: Any, entry_cluster: Any,
                 route_to: str | None,
                 expo: Callable[[], float], uniform: Callable[[], float],
                 think: Callable[[], float] | None):
        self.engine = engine
        self.name = name
        self.code = code
        self.cluster = entry_cluster
        self.route_to = route_to
        self.arrivals = 0
        self.completed = 0
        self._expo = expo
        self._uniform = uniform
        self._think = think
        self._next_cb = (self._poisson_next,)
        self._send_cb = (self._send_event,)
        self.done = self._count_done
        self._horizon = engine.horizon
        # A load spike (meshsim.faults) scales the candidate rate; the generation tells the
        # candidate event scheduled before a change from the one scheduled at it.
        self._scale = 1.0
        self._gen = 0
        self._retire = 0
        if isinstance(arrival, PoissonArrivals):
            profile = arrival.rate
            self._max = profile.max_rate()
            self._rate_at = None if profile.kind == "constant" else profile.rate_function()
        elif isinstance(arrival, ClosedArrivals):
            self._users = arrival.users
            self.done = self._user_done
        else:  # pragma: no cover - the scenario model allows no other kind
            raise TypeError(arrival)

    def start(self) -> None:
        eng = self.engine
        if self.done == self._user_done:
            # Users start spread over one think time, as if they had been active before.
            for _ in range(self._users):
                eng.later(self._think(), self._send_cb, None)
        else:
            eng.later(self._expo() / self._max, self._next_cb, 0)

    def scale(self, factor: float) -> None:
        """Multiply the client's load by ``factor`` from now on (a load spike's edges).

        Open loop: the rate. The pending candidate arrival is dropped and the next one drawn at
        the new rate: exact, as the time to the next Poisson arrival is memoryless. Closed
        loop: the number of users; extra users start within one think time, and users beyond
        the new number leave when their request completes.
        """
        eng = self.engine
        if self.done == self._user_done:
            before = round(self._users * self._scale)
            self._scale *= factor
            change = round(self._users * self._scale) - before
            for _ in range(max(change, 0)):
                eng.later(self._think(), self._send_cb, None)
            self._retire += max(-change, 0)
            return
        self._scale *= factor
        self._gen += 1
        eng.later(self._expo() / (self._max * self._scale), self._next_cb, self._gen)

    def _poisson_next(self, ev: Any) -> None:
        if ev._value != self._gen:
            return  # drawn before the load changed
        eng = self.engine
        rate_at = self._rate_at
        if rate_at is None or self._uniform() * self._max < rate_at(eng.env._now):
            self._send()
        eng.later(self._expo() / (self._max * self._scale), self._next_cb, self._gen)

    def _send_event(self, ev: Any) -> None:
        self._send()

    def _send(self) -> None:
        self.arrivals += 1
        self.engine.start_request(self)

    def _count_done(self, a: Attempt) -> None:
        self.completed += 1

    def _user_done(self, a: Attempt) -> None:
        self.completed += 1
        if self._retire:
            self._retire -= 1  # a load spike is over: this user leaves
            return
        self.engine.later(self._think(), self._send_cb, None)
