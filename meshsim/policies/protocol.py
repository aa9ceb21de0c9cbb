"""The protocol every admission policy of meshsim implements, and the built-ins behind it.

A policy that lets requests in or refuses them (a circuit breaker, a rate limiter, adaptive
concurrency, admission control, or a class of your own) is asked before a request goes on, and
hears how each request it let in ended::

    admit(now, request) -> bool            # False: refused (the engine answers for it)
    on_outcome(now, request, completion)   # every admitted request, once, when it ends
    events: list[(t, kind, host, detail)]  # state changes, for Result.events (host -1)
    stats: dict[str, int]                  # counters, for Result.stats

``now`` is the simulated time in float seconds, non-decreasing. A policy never schedules
anything and never imports SimPy: it is a plain object, testable on its own.

The built-ins keep the API of the library or Envoy filter they reproduce (``allow``,
``try_acquire``, ``check``, ...); :func:`as_policy` wraps any of them in this protocol, and the
wrappers are what a custom class is compared with. Where a policy sits decides what the engine
does with a refusal: in the caller's app (``services.<caller>.breakers``) the call fails fast or
falls back, in a pod's sidecar (``mesh.sidecars.<service>.policies``) the sidecar answers with
the policy's status and the app never sees the request.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol, runtime_checkable

__all__ = [
    "AdaptiveConcurrencyPolicy",
    "AdmissionPolicy",
    "BreakerPolicy",
    "Completion",
    "LocalRateLimitPolicy",
    "Policy",
    "Request",
    "Wrapped",
    "as_policy",
]


class Request(NamedTuple):
    """What a policy knows of a request when it decides."""

    client: str
    """The end-user client it serves (the ``client`` column of the records)."""
    source: str
    """The calling service or gateway."""
    destination: str
    """The service or external host it is for."""


class Completion(NamedTuple):
    """How an admitted request ended, as the policy's side saw it."""

    status: int | None
    """The HTTP status (None: no answer, the request was reset)."""
    duration: float
    """Seconds from admission to the end."""
    timed_out: bool = False
    """Whether it ended by a timeout or a reset rather than an answer."""


@runtime_checkable
class Policy(Protocol):
    """A policy that admits or refuses requests (see the module docstring)."""

    events: list[tuple[float, str, int, str]]
    stats: dict[str, int]

    def admit(self, now: float, request: Request) -> bool: ...

    def on_outcome(self, now: float, request: Request, completion: Completion) -> None: ...


class Wrapped:
    """Something behind :class:`Policy`: ``inner`` keeps its own API, and lends its ``events``
    and ``stats``."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any):
        self.inner = inner

    @property
    def events(self) -> list[tuple[float, str, int, str]]:
        return self.inner.events

    @property
    def stats(self) -> dict[str, int]:
        return self.inner.stats


class BreakerPolicy(Wrapped):
    """A circuit breaker (:mod:`.breakers`) with its outcome classifier."""

    __slots__ = ("classifier",)

    def __init__(self, breaker: Any, classifier: Any):
        super().__init__(breaker)
        self.classifier = classifier

    def admit(self, now: float, request: Request) -> bool:
        return self.inner.allow(now)

    def on_outcome(self, now: float, request: Request, completion: Completion) -> None:
        c = completion
        failure = self.classifier.is_failure(c.status, c.timed_out, c.duration)
        self.inner.on_result(now, failure, c.duration)


class AdmissionPolicy(Wrapped):
    """Envoy's admission control (:mod:`.admission_control`): a reset is not recorded."""

    __slots__ = ()

    def admit(self, now: float, request: Request) -> bool:
        return self.inner.allow(now)

    def on_outcome(self, now: float, request: Request, completion: Completion) -> None:
        self.inner.on_result(now, completion.status)


class AdaptiveConcurrencyPolicy(Wrapped):
    """Envoy's adaptive concurrency (:mod:`.adaptive_concurrency`): an answer is a latency
    sample, a reset cancels the request's sample."""

    __slots__ = ()

    def admit(self, now: float, request: Request) -> bool:
        return self.inner.try_acquire(now)

    def on_outcome(self, now: float, request: Request, completion: Completion) -> None:
        if completion.status is None:
            self.inner.on_cancel(now)
        else:
            self.inner.on_response(now, completion.duration)


class LocalRateLimitPolicy(Wrapped):
    """Envoy's local rate limit (:mod:`.rate_limit`), with the descriptors of each request."""

    __slots__ = ("descriptors",)

    def __init__(self, limit: Any, descriptors: Callable[[Request], Sequence[Any]] | None = None):
        super().__init__(limit)
        self.descriptors = descriptors or (lambda request: (((("client", request.client),),)))

    def admit(self, now: float, request: Request) -> bool:
        return self.inner.check(now, self.descriptors(request))

    def on_outcome(self, now: float, request: Request, completion: Completion) -> None:
        pass  # a token bucket does not care how a request ends


def as_policy(obj: Any, classifier: Any = None) -> Policy:
    """``obj`` behind :class:`Policy`: itself if it implements it, else the wrapper of its kind.

    Parameters
    ----------
    obj : object
        A policy, or a built-in: a breaker (then ``classifier`` is its
        :class:`~.breakers.OutcomeClassifier`, default every 5xx and timeouts), an
        :class:`~.admission_control.AdmissionController`, a
        :class:`~.adaptive_concurrency.GradientController` or a
        :class:`~.rate_limit.LocalRateLimit`.
    """
    from .adaptive_concurrency import GradientController
    from .admission_control import AdmissionController
    from .breakers import OutcomeClassifier
    from .rate_limit import LocalRateLimit

    if isinstance(obj, Policy):
        return obj
    if isinstance(obj, AdmissionController):
        return AdmissionPolicy(obj)
    if isinstance(obj, GradientController):
        return AdaptiveConcurrencyPolicy(obj)
    if isinstance(obj, LocalRateLimit):
        return LocalRateLimitPolicy(obj)
    if callable(getattr(obj, "allow", None)) and callable(getattr(obj, "on_result", None)):
        return BreakerPolicy(obj, classifier or OutcomeClassifier())
    raise TypeError(f"{type(obj).__name__} is not a policy: it has neither admit() and "
                    "on_outcome() nor the API of a built-in")
