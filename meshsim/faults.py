"""The fault schedule of a scenario (``faults:``): what goes wrong, where, and when.

Each fault is a window ``[start, end)`` of simulated time (``end`` unset: to the end of the run;
``duration`` may be written instead of ``end``) and a target:

``crash``
    The pods' process dies at ``start``: requests it holds are reset (503 ``UC`` at the caller,
    Envoy's "upstream connection termination"), and every new request is refused (503 ``UF``, a
    connect failure, which Istio's default retry policy retries) until the pod restarts at
    ``end`` with empty queues.
``hang``
    The pods accept requests and never answer (a deadlock, a stop-the-world pause) until
    ``end``, when they carry on with everything they hold. Only a timeout frees the callers.
``slow``
    A gray failure: each request's own work takes ``factor`` times as long, plus ``add``.
``errors``
    A share ``rate`` of the requests the pods work on fail with ``status``.
``outage``
    Every pod of a service, or an external host, is down: connections refused (``mode:
    refuse``), a black hole (``mode: hang``), or every request answered ``status`` (``mode:
    errors``).
``network``
    Latency, jitter and loss on the edge ``source`` → ``destination`` (both directions), as
    ``tc netem delay D J loss P`` would add them: each leg takes ``delay`` ± ``jitter`` more
    (uniform), and a lost leg is sent again after TCP's retransmission timeout.
``loadSpike``
    A client (or every client) sends ``factor`` times its usual load: an open-loop client's rate
    is multiplied, a closed-loop client gets ``factor`` times the users.

The fault injection of Istio itself (``virtualServices.<host>.http[].fault``) is a routing
rule, not a schedule: it lives with the other ``VirtualService`` fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, PositiveFloat, PositiveInt, model_validator

from ._base import Model
from .distributions import Distribution
from .units import NonNegDuration, PosDuration, Probability, parse_duration

__all__ = [
    "CrashFault",
    "ErrorsFault",
    "Fault",
    "HangFault",
    "LoadSpikeFault",
    "NetworkFault",
    "OutageFault",
    "SlowFault",
]

HttpStatus = Annotated[int, Field(ge=100, le=599)]


class _Window(Model):
    """When a fault is active: ``[start, end)`` in seconds of simulated time."""

    name: str | None = None
    """A label for tables and plots; default ``<kind> <target>``."""
    start: NonNegDuration
    """When the fault begins."""
    end: PosDuration | None = None
    """When it is over (a crashed pod restarts then); unset: it lasts to the end of the run.
    ``duration: 30s`` may be written instead."""

    @model_validator(mode="before")
    @classmethod
    def _duration(cls, data: Any) -> Any:
        # ``duration`` is a way to write ``end``; the model keeps ``end`` only.
        if isinstance(data, dict) and "duration" in data:
            data = dict(data)
            length = data.pop("duration")
            if "end" in data:
                raise ValueError("write either 'end' or 'duration', not both")
            try:
                data["end"] = parse_duration(data.get("start", 0)) + parse_duration(length)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"duration: {exc}") from None
        return data

    @model_validator(mode="after")
    def _ordered(self) -> _Window:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g}s) must come after start ({self.start:g}s)")
        return self

    def window(self, horizon: float) -> tuple[float, float]:
        """``(start, end)`` in seconds, ``end`` capped at ``horizon`` (the run's duration)."""
        return self.start, min(self.end if self.end is not None else horizon, horizon)

    @property
    def label(self) -> str:
        """The fault's name, or ``<kind> <target>``."""
        return self.name or f"{self.kind} {self.where}"

    @property
    def where(self) -> str:  # pragma: no cover - every kind overrides it
        raise NotImplementedError


class _PodFault(_Window):
    target: str
    """The service (or external host) whose pods fail."""
    pods: PositiveInt | list[str] | None = None
    """Which pods: a number (the first ``n``), a list of pod names (``[cart-1]``), or unset for
    every pod of the target."""

    @property
    def where(self) -> str:
        if self.pods is None:
            return self.target
        if isinstance(self.pods, int):
            return f"{self.target} ({self.pods} pod{'s' if self.pods > 1 else ''})"
        return ",".join(self.pods)

    def pod_names(self, all_pods: list[str]) -> list[str]:
        """The names of the pods hit, out of the target's ``all_pods`` (in order)."""
        if self.pods is None:
            return list(all_pods)
        if isinstance(self.pods, int):
            return list(all_pods[: self.pods])
        return [p for p in all_pods if p in self.pods]


class CrashFault(_PodFault):
    """The pods crash at ``start`` and restart at ``end``."""

    kind: Literal["crash"]


class HangFault(_PodFault):
    """The pods accept requests and answer none until ``end``."""

    kind: Literal["hang"]


class SlowFault(_PodFault):
    """The pods' own work takes ``factor`` times as long, plus ``add``."""

    kind: Literal["slow"]
    factor: Annotated[float, Field(ge=0)] = 1.0
    """Multiplier of each request's own service time."""
    add: Distribution | None = None
    """Time added to each request's own work, e.g. ``200ms`` or a distribution."""

    @model_validator(mode="after")
    def _does_something(self) -> SlowFault:
        if self.factor == 1.0 and self.add is None:
            raise ValueError("set 'factor' (e.g. 3) or 'add' (e.g. 200ms): as written the "
                             "fault changes nothing")
        return self


class ErrorsFault(_PodFault):
    """A share of the requests the pods work on fail."""

    kind: Literal["errors"]
    rate: Probability
    """Share of requests that fail, e.g. ``30%``."""
    status: HttpStatus = 503
    """Status of a failed request."""


class OutageFault(_Window):
    """Every pod of a service, or an external host, is down."""

    kind: Literal["outage"]
    target: str
    """The service or external host."""
    mode: Literal["refuse", "hang", "errors"] = "refuse"
    """``refuse``: connections refused (503 ``UF``); ``hang``: requests are never answered;
    ``errors``: every request is answered ``status``."""
    status: HttpStatus = 503
    """Status of ``mode: errors``."""

    @property
    def where(self) -> str:
        return self.target


class NetworkFault(_Window):
    """Latency, jitter and loss on the edge ``source`` → ``destination``, both directions."""

    kind: Literal["network"]
    source: str | None = None
    """The caller: a service, ``ingress``, ``egress`` or ``client:<id>``; unset: every caller."""
    destination: str
    """The callee: a service, external host, ``ingress`` or ``egress``."""
    delay: NonNegDuration = 0.0
    """Latency added to each leg (request and response)."""
    jitter: NonNegDuration = 0.0
    """Each leg's added latency is uniform in ``delay ± jitter`` (never below 0)."""
    loss: Probability = 0.0
    """Probability that a leg's packets are lost and sent again (TCP hides the loss: the leg
    takes a retransmission timeout longer, doubling on each further loss)."""
    retransmit_timeout: PosDuration = 0.2
    """TCP's first retransmission timeout (Linux ``TCP_RTO_MIN``, 200 ms)."""

    @model_validator(mode="after")
    def _does_something(self) -> NetworkFault:
        if self.delay == 0 and self.jitter == 0 and self.loss == 0:
            raise ValueError("set 'delay', 'jitter' or 'loss': as written the fault changes "
                             "nothing")
        if self.loss >= 1.0:
            raise ValueError("loss must be below 100% (TCP would never get a leg through)")
        return self

    @property
    def where(self) -> str:
        return f"{self.source or '*'}->{self.destination}"


class LoadSpikeFault(_Window):
    """A client (or every client) sends ``factor`` times its load."""

    kind: Literal["loadSpike"]
    client: str | None = None
    """The client's id; unset: every client."""
    factor: PositiveFloat
    """Multiplier of the client's rate (open loop) or users (closed loop)."""

    @property
    def where(self) -> str:
        return self.client or "all clients"


Fault = Annotated[
    CrashFault | HangFault | SlowFault | ErrorsFault | OutageFault | NetworkFault
    | LoadSpikeFault,
    Discriminator("kind"),
]
