"""App-level circuit breakers in scenarios: the ``breakers`` blocks and the plug-in API.

A breaker lives in the caller's code, around its client for one dependency, so a scenario sets
one per *calling service and destination* (``services.<caller>.breakers.<destination>``) or per
gateway and destination (``mesh.ingressGateway.breakers.<service>``,
``mesh.egressGateway.breakers.<external host>``). Every calling pod (or gateway pod) gets its own
breaker, as every process of a real deployment has its own.

The built-in kinds are the state machines of :mod:`meshsim.policies.breakers`, with their
libraries' setting names in camelCase (``failureRateThreshold``, ``sleepWindow``, ``failMax``)
and durations as ``10s`` or ``500ms``. ``kind: custom`` names any class that implements the
:class:`~meshsim.policies.breakers.Breaker` protocol, by import path (``package.module:Class``)
or by a name given to :func:`register_breaker`; its ``params`` are passed to the constructor as
keyword arguments and checked when the scenario is loaded.

The engine asks the breaker before the call leaves the app (:meth:`Breaker.allow`): a call it
refuses never reaches the sidecar, and gets what ``whenOpen`` says (a status at once, or a
fallback answer after its latency). A call it lets through reports its outcome when the app
gets it (:meth:`Breaker.on_result`), after the sidecar's retries, as the client library sees it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field, Tag, model_validator
from pydantic.functional_validators import field_validator
from pydantic.types import Discriminator

from ._base import Model, kind_or
from .policies.breakers import (
    Breaker,
    Consecutive,
    ConsecutiveConfig,
    Hystrix,
    HystrixConfig,
    OutcomeClassifier,
    Polly,
    PollyConfig,
    Resilience4j,
    Resilience4jConfig,
)
from .policies.protocol import BreakerPolicy, Completion, Policy, Request, Wrapped
from .units import NonNegDuration, PosDuration

__all__ = [
    "APP_FLAGS",
    "FLAG_FALLBACK",
    "FLAG_OPEN",
    "BreakerSpec",
    "CustomPolicySpec",
    "PluginError",
    "WhenOpen",
    "build_breaker",
    "register_breaker",
    "registered_breakers",
]

#: The ``flags`` of a call the caller's breaker refused; lower case, so that it is never taken
#: for one of Envoy's response flags (which are upper case).
FLAG_OPEN = "breaker_open"
#: The ``flags`` of a refused call answered by the caller's fallback instead.
FLAG_FALLBACK = "fallback"
#: The flags the caller's app writes (every other flag is Envoy's).
APP_FLAGS = frozenset({FLAG_OPEN, FLAG_FALLBACK})

_REGISTRY: dict[str, type] = {}


def register_breaker(name: str, cls: type) -> None:
    """Make ``cls`` available to scenarios as ``{kind: custom, class: <name>}``.

    Parameters
    ----------
    name : str
        The name scenarios use; it must not contain ``:`` (that is for import paths).
    cls : type
        A class whose instances implement :class:`~meshsim.policies.breakers.Breaker`.
    """
    if ":" in name:
        raise ValueError(f"a registered name may not contain ':' ({name!r})")
    if not isinstance(cls, type):
        raise TypeError(f"register a class, not {cls!r}")
    _REGISTRY[name] = cls


def registered_breakers() -> dict[str, type]:
    """The classes registered with :func:`register_breaker`, by name."""
    return dict(_REGISTRY)


# ---- what happens to a refused call, and what counts as a failure ----------------------------


class Fallback(Model):
    """The caller's fallback: an answer the app makes up itself (a cache, a default)."""

    status: Annotated[int, Field(ge=100, le=599)] = 200
    """The status the app goes on with."""
    latency: NonNegDuration = 0.0
    """How long the fallback takes."""


class WhenOpen(Model):
    """What a call refused by the breaker gets: ``status`` at once, or the ``fallback``."""

    status: Annotated[int, Field(ge=100, le=599)] = 503
    """The status the app sees when it fails fast (no fallback)."""
    fallback: Fallback | None = None
    """If set, refused calls get this answer instead of failing."""


class Failures(Model):
    """Which finished calls the breaker records as failures (its outcome classifier)."""

    statuses: list[Annotated[int, Field(ge=100, le=599)]] | None = None
    """Statuses that count as failures; default every 5xx."""
    timeouts: bool = True
    """Whether a call that timed out (504 ``UT`` from the sidecar) is a failure."""
    slow_call_duration: PosDuration | None = None
    """If set, a call slower than this is a failure too (resilience4j has its own
    slow-call rate and settings instead)."""

    def classifier(self) -> OutcomeClassifier:
        kwargs: dict[str, Any] = {"timeouts_are_failures": self.timeouts}
        if self.statuses is not None:
            kwargs["failure_statuses"] = frozenset(self.statuses)
        if self.slow_call_duration is not None:
            kwargs.update(slow_calls_are_failures=True,
                          slow_call_duration=self.slow_call_duration)
        return OutcomeClassifier(**kwargs)


class _Common(Model):
    when_open: WhenOpen = WhenOpen()
    """What a refused call gets."""
    failures: Failures = Failures()
    """Which outcomes count as failures."""


# ---- built-in kinds ------------------------------------------------------------------------


class _LibrarySpec(_Common):
    """A built-in kind: its settings are the fields of the library's config dataclass."""

    _breaker: ClassVar[type]
    _config_type: ClassVar[type]

    def make(self) -> Breaker:
        return self._breaker(self._config())

    def _config(self) -> Any:
        return self._config_type(**self.model_dump(exclude={"kind", "when_open", "failures"}))

    @model_validator(mode="after")
    def _valid(self) -> _LibrarySpec:
        # The library's own validation (the config dataclasses' __post_init__), reported on
        # the block: a ValueError in a validator becomes a scenario error with its path.
        self._config()
        return self


class Resilience4jSpec(_LibrarySpec):
    """resilience4j ``CircuitBreakerConfig`` (its names; durations as ``60s``)."""

    kind: Literal["resilience4j"] = "resilience4j"
    _breaker: ClassVar[type] = Resilience4j
    _config_type: ClassVar[type] = Resilience4jConfig
    failure_rate_threshold: Annotated[float, Field(gt=0, le=100)] = 50.0
    """Failure rate (%) at or above which the breaker opens."""
    slow_call_rate_threshold: Annotated[float, Field(gt=0, le=100)] = 100.0
    """Slow-call rate (%) at or above which the breaker opens."""
    slow_call_duration_threshold: NonNegDuration = 60.0
    """Calls slower than this are slow calls."""
    permitted_number_of_calls_in_half_open_state: Annotated[int, Field(ge=1)] = 10
    """Trial calls let through when half-open."""
    max_wait_duration_in_half_open_state: NonNegDuration = 0.0
    """Longest stay in half-open (0: until the trial calls have answered)."""
    sliding_window_type: Literal["COUNT_BASED", "TIME_BASED"] = "COUNT_BASED"
    sliding_window_size: Annotated[int, Field(ge=1)] = 100
    """Calls (COUNT_BASED) or seconds (TIME_BASED) the failure rate is computed over."""
    minimum_number_of_calls: Annotated[int, Field(ge=1)] = 100
    """Calls needed in the window before the rate counts."""
    wait_duration_in_open_state: NonNegDuration = 60.0
    """Time in open before half-open."""
    automatic_transition_from_open_to_half_open_enabled: bool = False
    """Go half-open when the wait is over, without waiting for a call."""


class HystrixSpec(_LibrarySpec):
    """Hystrix command properties (``circuitBreaker.*``, ``metrics.*``; durations as ``5s``)."""

    kind: Literal["hystrix"] = "hystrix"
    _breaker: ClassVar[type] = Hystrix
    _config_type: ClassVar[type] = HystrixConfig
    request_volume_threshold: Annotated[int, Field(ge=0)] = 20
    """Requests in the rolling window before the error percentage counts."""
    error_threshold_percentage: Annotated[int, Field(ge=0, le=100)] = 50
    """Error percentage at or above which the breaker opens."""
    sleep_window: NonNegDuration = 5.0
    """Time in open before one trial request."""
    rolling_stats_time: PosDuration = 10.0
    """Length of the rolling window."""
    rolling_stats_num_buckets: Annotated[int, Field(ge=1)] = 10
    """Buckets of the rolling window."""
    health_snapshot_interval: PosDuration = 0.5
    """How often the breaker looks at the health counts."""


class PollySpec(_LibrarySpec):
    """Polly v8 ``CircuitBreakerStrategyOptions`` (durations as ``30s``)."""

    kind: Literal["polly"] = "polly"
    _breaker: ClassVar[type] = Polly
    _config_type: ClassVar[type] = PollyConfig
    failure_ratio: Annotated[float, Field(gt=0, le=1)] = 0.1
    """Share of failures (0–1] at or above which the breaker opens."""
    minimum_throughput: Annotated[int, Field(ge=2)] = 100
    """Calls in the sampling window before the ratio counts."""
    sampling_duration: PosDuration = 30.0
    """Length of the sampling window."""
    break_duration: PosDuration = 5.0
    """Time in open before one trial call."""


class ConsecutiveSpec(_LibrarySpec):
    """pybreaker-style breaker: ``failMax`` failures in a row open it."""

    kind: Literal["consecutive"] = "consecutive"
    _breaker: ClassVar[type] = Consecutive
    _config_type: ClassVar[type] = ConsecutiveConfig
    fail_max: Annotated[int, Field(ge=1)] = 5
    """Consecutive failures that open the breaker."""
    reset_timeout: NonNegDuration = 60.0
    """Time in open before a trial call."""
    success_threshold: Annotated[int, Field(ge=1)] = 1
    """Successful trial calls needed to close."""


# ---- custom classes --------------------------------------------------------------------------


class _PluginClass(Model):
    """The class and constructor arguments of a plug-in (a breaker or a policy of your own)."""

    kind: Literal["custom"] = "custom"
    class_: str = Field(alias="class")
    """``package.module:Class``, or a name registered with
    :func:`meshsim.app_breakers.register_breaker`."""
    params: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the class's constructor."""

    @field_validator("class_")
    @classmethod
    def _known(cls, value: str) -> str:
        _resolve(value)
        return value

    def make(self) -> Any:
        """A fresh instance (a wrong parameter raises ``ValueError`` with a suggestion)."""
        return _instantiate(_resolve(self.class_), self.params)


class CustomSpec(_PluginClass, _Common):
    """A breaker class of your own: a breaker's API (:class:`~meshsim.policies.breakers.Breaker`)
    or :class:`~meshsim.policies.protocol.Policy`."""

    @model_validator(mode="after")
    def _valid(self) -> CustomSpec:
        self.make()  # a wrong parameter is a scenario error, not a failure mid-run
        return self

    def make_policy(self, where: str) -> Policy:
        """:meth:`make` behind :class:`~meshsim.policies.protocol.Policy`, for a run: errors of
        the user's class name the class and ``where``."""
        obj = self.make()
        native = isinstance(obj, Policy)
        inner = obj if native else BreakerPolicy(obj, self.failures.classifier())
        return _Guarded(inner, f"{self.class_} ({where})", native)


class CustomPolicySpec(_PluginClass):
    """An admission policy of your own in a pod's sidecar (``mesh.sidecars.<service>.policies``):
    a class implementing :class:`~meshsim.policies.protocol.Policy`."""

    status: Annotated[int, Field(ge=100, le=599)] = 503
    """The status the sidecar answers a refused request with."""

    @model_validator(mode="after")
    def _valid(self) -> CustomPolicySpec:
        obj = self.make()
        if not isinstance(obj, Policy):
            raise ValueError(f"{type(obj).__name__} is not a policy: it needs admit(now, request) "
                             "and on_outcome(now, request, completion) "
                             "(see meshsim.policies.protocol.Policy)")
        return self

    def make_policy(self, where: str) -> Policy:
        """A fresh instance for one pod; its errors name the class and ``where``."""
        return _Guarded(self.make(), f"{self.class_} ({where})", native=True)


def _resolve(name: str) -> type:
    if ":" not in name:
        if name in _REGISTRY:
            return _REGISTRY[name]
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(name, known, n=1)
        hint = (f" (did you mean {close[0]!r}?)" if close else
                f"; registered: {', '.join(known)}" if known else "")
        raise ValueError(f"no breaker class registered as {name!r}{hint}; use "
                         "'package.module:Class' or meshsim.app_breakers.register_breaker")
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r}: {exc}") from None
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        names = [n for n, v in vars(module).items() if isinstance(v, type)]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"module {module_name!r} has no class {attr!r}{hint}")
    return cls


class PluginError(Exception):
    """A custom breaker class raised: the user's code failed, not meshsim's."""


class _Guarded(Wrapped):
    """A custom class, with its errors reported as the user's code's, with where and when."""

    __slots__ = ("native", "where")

    def __init__(self, inner: Policy, where: str, native: bool):
        super().__init__(inner)
        self.where = where
        self.native = native  # the class implements Policy itself (else it is a breaker)

    def admit(self, now: float, request: Request) -> bool:
        try:
            return bool(self.inner.admit(now, request))
        except Exception as exc:
            raise self._error("admit" if self.native else "allow", now, exc) from exc

    def on_outcome(self, now: float, request: Request, completion: Completion) -> None:
        try:
            self.inner.on_outcome(now, request, completion)
        except Exception as exc:
            raise self._error("on_outcome" if self.native else "on_result", now, exc) from exc

    def _error(self, method: str, now: float, exc: Exception) -> PluginError:
        return PluginError(f"the custom breaker {self.where} raised in {method}() at "
                           f"t={now:.6g}s: {type(exc).__name__}: {exc}")


def _instantiate(cls: type, params: dict[str, Any]) -> Breaker:
    accepted = _keywords(cls)
    if accepted is not None:
        for key in params:
            if key not in accepted:
                close = difflib.get_close_matches(key, sorted(accepted), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"{cls.__name__} takes no parameter {key!r}{hint}")
    try:
        breaker = cls(**params)
    except Exception as exc:  # the user's constructor: any failure is a scenario error
        raise ValueError(f"{cls.__name__}(**params) failed: {type(exc).__name__}: {exc}"
                         ) from None
    policy = all(callable(getattr(breaker, m, None)) for m in ("admit", "on_outcome"))
    missing = [m for m in ("allow", "on_result") if not callable(getattr(breaker, m, None))]
    if missing and not policy:
        raise ValueError(f"{cls.__name__} implements neither meshsim.policies.protocol.Policy "
                         "(admit(), on_outcome()) nor a breaker's API (allow(), on_result())")
    for attr, default in (("events", []), ("stats", {})):
        if not hasattr(breaker, attr):
            setattr(breaker, attr, default)
    return breaker


def _keywords(cls: type) -> set[str] | None:
    """The keyword parameters of ``cls``'s constructor, or None if it takes ``**kwargs``."""
    try:
        sig = inspect.signature(cls)
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return {n for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


BreakerSpec = Annotated[
    Annotated[Resilience4jSpec, Tag("resilience4j")]
    | Annotated[HystrixSpec, Tag("hystrix")]
    | Annotated[PollySpec, Tag("polly")]
    | Annotated[ConsecutiveSpec, Tag("consecutive")]
    | Annotated[CustomSpec, Tag("custom")],
    Discriminator(kind_or("resilience4j")),
]


def build_breaker(spec: Any, where: str = "") -> Policy:
    """A fresh breaker for one calling pod, behind :class:`~meshsim.policies.protocol.Policy`
    (``where``: e.g. ``frontend-0 -> cart``, for the errors of a custom class)."""
    if isinstance(spec, CustomSpec):
        return spec.make_policy(where)
    return BreakerPolicy(spec.make(), spec.failures.classifier())
