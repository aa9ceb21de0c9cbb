"""The scenario model: a frozen, validated description of one simulation, and the one place
where defaults live.

A scenario file is YAML in Istio's camelCase style. :func:`load_scenario` reads it safely, validates
it with the models below and runs the cross-checks that need the whole file (calls to unknown
services, cycles in the call graph, warm-up longer than the run). Every problem is reported as
``FILE:LINE: path.to.field: message`` through :class:`meshsim.errors.ScenarioError`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    PositiveInt,
    Tag,
    ValidationError,
    field_validator,
)

from ._base import Model, kind_or
from .app_breakers import BreakerSpec, CustomPolicySpec
from .arrivals import (
    Arrival,
    Client,
    ClosedArrivals,
    ConstantRate,
    PoissonArrivals,
    RampRate,
    RateProfile,
    RateStep,
    SinusoidalRate,
    StepsRate,
    TraceRate,
)
from .distributions import Distribution
from .envoy import GlobalRateLimit, LocalRateLimit, RateLimitService
from .errors import Issue, ScenarioError, from_validation_error, unknown_name
from .faults import Fault
from .istio import (
    ConnectionPoolSettings,
    DestinationRule,
    HTTPRoute,
    TrafficPolicy,
    VirtualService,
    merge_traffic_policy,
)
from .policies.adaptive_concurrency import GradientControllerConfig
from .policies.admission_control import AdmissionControlConfig
from .slo import Slo
from .units import NonNegDuration, PosDuration, Probability
from .yamlio import LineMap, load_file, load_yaml, parse_scalar

__all__ = [
    "Arrival",
    "Call",
    "Client",
    "ClosedArrivals",
    "ConstantRate",
    "ExternalService",
    "Mesh",
    "Parallel",
    "PoissonArrivals",
    "RampRate",
    "RateProfile",
    "RateStep",
    "Scenario",
    "Service",
    "SinusoidalRate",
    "StepsRate",
    "TraceRate",
    "load_scenario",
    "parse_scenario",
]

#: The name of the scenario as written, among its variants (``meshsim compare``).
BASELINE = "baseline"

#: Names the engine uses for the non-service nodes of a call chain; a service may not take them.
RESERVED_NAMES = frozenset({"client", "ingress", "egress"})

# --------------------------------------------------------------------------------------------
# Error models
# --------------------------------------------------------------------------------------------

StatusSpec = Annotated[
    int | dict[int, Annotated[float, Field(gt=0)]],
    Field(
        description="HTTP status of a failed request: one code (`503`), or codes with weights "
        "(`{500: 0.7, 503: 0.3}`, normalised)."
    ),
]


def _check_status(value: int | dict[int, float]) -> int | dict[int, float]:
    codes = [value] if isinstance(value, int) else list(value)
    if not codes:
        raise ValueError("expected at least one HTTP status code")
    for code in codes:
        if not 400 <= code <= 599:
            raise ValueError(f"expected an HTTP error status between 400 and 599, got {code}")
    return value


class IndependentErrors(Model):
    """Each request fails independently with probability ``rate`` (a Bernoulli trial per request).

    The failing request still takes its service time, then answers with ``status`` and skips its
    downstream calls.
    """

    kind: Literal["independent"] = "independent"
    rate: Probability
    """Probability that a request fails, in [0, 1] (``0.01`` or ``1%``)."""
    status: StatusSpec = 500

    _status = field_validator("status")(_check_status)


class BurstyErrors(Model):
    """Gilbert–Elliott errors: each pod alternates between a good and a bad state.

    Sojourn times in each state are exponential with the given means (simulated time, so bursts
    are bursts in time, as SREs see them); a request fails with ``rateGood`` or ``rateBad``
    depending on the state its pod is in when it finishes its work. The long-run error rate is
    ``(meanGood·rateGood + meanBad·rateBad) / (meanGood + meanBad)``.
    """

    kind: Literal["bursty"]
    mean_good: PosDuration
    """Mean time a pod stays in the good state, e.g. ``60s``."""
    mean_bad: PosDuration
    """Mean length of a burst (time in the bad state), e.g. ``5s``."""
    rate_good: Probability = 0.0
    """Failure probability in the good state."""
    rate_bad: Probability = 1.0
    """Failure probability in the bad state."""
    status: StatusSpec = 500

    _status = field_validator("status")(_check_status)

    def long_run_rate(self) -> float:
        """The stationary error probability."""
        g, b = self.mean_good, self.mean_bad
        return (g * self.rate_good + b * self.rate_bad) / (g + b)


ErrorModel = Annotated[
    Annotated[IndependentErrors, Tag("independent")] | Annotated[BurstyErrors, Tag("bursty")],
    Discriminator(kind_or("independent")),
]

# --------------------------------------------------------------------------------------------
# Downstream calls
# --------------------------------------------------------------------------------------------


class Call(Model):
    """One synchronous call to another service or external host.

    The caller's worker is held while it waits: this is what makes failures cascade.
    """

    to: str
    """Name of the service (or external service) to call."""
    probability: Probability = 1.0
    """Chance that the call is made at all for a given request (e.g. a cache miss rate)."""
    optional: bool = False
    """If true, a failed call does not fail the caller (the app degrades gracefully)."""


class Parallel(Model):
    """Calls made at the same time (fan-out); the step ends when all of them have answered."""

    parallel: list[Call] = Field(min_length=1)
    """The calls of the fan-out."""


def _step_kind(v: Any) -> str:
    if isinstance(v, Mapping):
        return "parallel" if "parallel" in v else "call"
    return "parallel" if isinstance(v, Parallel) else "call"


Step = Annotated[
    Annotated[Call, Tag("call")] | Annotated[Parallel, Tag("parallel")],
    Discriminator(_step_kind),
]

# --------------------------------------------------------------------------------------------
# Services
# --------------------------------------------------------------------------------------------


#: A version name: a Kubernetes label value (it becomes the pods' ``version`` label and part of
#: their names, ``reviews-v2-0``).
VersionName = Annotated[str, Field(pattern=r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")]


class Version(Model):
    """One version of a service: its own Kubernetes deployment behind the service's host.

    Its pods carry the labels ``version: <name>`` plus ``labels``; a ``DestinationRule`` subset
    selects them by these labels. Every field left out is the service's.
    """

    replicas: PositiveInt | None = None
    """Pods of this version (unset: the service's ``replicas``)."""
    workers: PositiveInt | None = None
    """Workers of each pod (unset: the service's)."""
    queue: Annotated[int, Field(ge=0)] | None = None
    """Waiting room of each pod (unset: the service's)."""
    latency: Distribution | None = None
    """Service time per request (unset: the service's)."""
    errors: ErrorModel | None = None
    """How this version's work fails (unset: the service's; ``{rate: 0}`` never fails)."""
    downstream_error_status: Annotated[int, Field(ge=400, le=599)] | None = None
    """Status answered when a required downstream call fails (unset: the service's)."""
    labels: dict[str, str] = Field(default_factory=dict)
    """More labels of this version's pods (``version`` is set from the version's name)."""

    @field_validator("labels")
    @classmethod
    def _version_label(cls, value: dict[str, str]) -> dict[str, str]:
        if "version" in value:
            raise ValueError("the version label is the version's own name; remove 'version'")
        return value


class Deployment(Model):
    """A group of identical pods of a service, with every setting resolved: the service itself,
    or one of its versions (see :meth:`Service.deployments`)."""

    version: str | None
    replicas: int
    workers: int
    queue: int | None
    latency: Distribution
    errors: ErrorModel | None
    downstream_error_status: int
    labels: dict[str, str]

    def pod_names(self, service: str) -> list[str]:
        """``reviews-0``, ... for the service; ``reviews-v2-0``, ... for its version ``v2``."""
        prefix = service if self.version is None else f"{service}-{self.version}"
        return [f"{prefix}-{i}" for i in range(self.replicas)]


class Service(Model):
    """A service: ``replicas`` pods, each with a pool of ``workers`` and an optional queue.

    A request that reaches a pod waits (FIFO) for a free worker, holds it for its own service
    time drawn from ``latency``, may then fail according to ``errors``, and otherwise makes the
    ``calls`` in order while still holding the worker. The worker is released when the pod sends
    its answer.
    """

    replicas: PositiveInt = 1
    """Number of pods."""
    workers: PositiveInt = 8
    """Concurrent requests one pod can work on (threads, event-loop slots, ...)."""
    queue: Annotated[int, Field(ge=0)] | None = None
    """Requests that may wait for a worker in one pod; beyond that the app answers 503 at once.
    Unset means unbounded."""
    latency: Distribution
    """The pod's own service time per request (excluding downstream calls)."""
    errors: ErrorModel | None = None
    """How the service's own work fails. Unset means it never fails by itself."""
    calls: list[Step] = Field(default_factory=list)
    """Downstream calls, in order. A step is a call ``{to: cart}`` or a fan-out
    ``{parallel: [{to: a}, {to: b}]}``."""
    downstream_error_status: Annotated[int, Field(ge=400, le=599)] = 500
    """Status the app answers with when a required downstream call fails."""
    versions: dict[VersionName, Version] = Field(default_factory=dict)
    """Versions running behind the service's host, each a deployment of its own
    (``{v1: {replicas: 2}, v2: {replicas: 1, errors: {rate: 0.1}}}``); each field a version
    leaves out is the service's. Unset: one deployment of unlabelled pods."""

    breakers: dict[str, BreakerSpec] = Field(default_factory=dict)
    """App-level circuit breakers in this service's code, by the destination they guard (one
    per pod): ``{kind: resilience4j | hystrix | polly | consecutive | custom, ...}``; see
    :mod:`meshsim.app_breakers`."""
    slo: Slo | None = None
    """The service's objective, as its callers see its answers (``{p99: 300ms, successRate:
    99.9%}``)."""

    def deployments(self) -> list[Deployment]:
        """The service's pods as deployments, with the service's settings where a version is
        silent: one unlabelled deployment without versions."""
        if not self.versions:
            return [self._deployment(None, Version())]
        return [self._deployment(name, v) for name, v in self.versions.items()]

    def _deployment(self, name: str | None, v: Version) -> Deployment:
        def own(field: str) -> Any:
            value = getattr(v, field)
            return getattr(self, field) if value is None else value

        labels = {} if name is None else {**v.labels, "version": name}
        return Deployment(
            version=name, replicas=own("replicas"), workers=own("workers"), queue=own("queue"),
            latency=own("latency"), errors=own("errors"),
            downstream_error_status=own("downstream_error_status"), labels=labels)


class ExternalService(Model):
    """A dependency outside the mesh (an Istio ``ServiceEntry``), e.g. a payment provider.

    It is a black box: each request takes ``latency`` and fails per ``errors``; with
    ``concurrency`` set, requests beyond it wait (FIFO) as on a service with one pod.
    """

    latency: Distribution
    """Response time of the external service."""
    errors: ErrorModel | None = None
    """How its answers fail."""
    concurrency: PositiveInt | None = None
    """Requests it serves at once; unset means unlimited."""
    slo: Slo | None = None
    """The objective of the external host, as its callers see its answers."""



# --------------------------------------------------------------------------------------------
# Mesh
# --------------------------------------------------------------------------------------------

class Gateway(Model):
    """An Istio gateway deployment (Envoy pods that proxy without a worker limit).

    A gateway is a client proxy like any sidecar: it applies the mesh's ``destinationRules``
    to the hosts it calls. Routes bound to the gateway are its own, as in Istio, where a
    ``VirtualService`` applies to sidecars (``gateways: [mesh]``) or to named gateways.
    """

    replicas: PositiveInt = 2
    """Gateway pods; clients spread evenly over them (as a cloud load balancer does)."""
    breakers: dict[str, BreakerSpec] = Field(default_factory=dict)
    """Circuit breakers in front of the hosts this gateway calls (one per gateway pod), as an
    API gateway's breaker plug-in runs them; see :mod:`meshsim.app_breakers`."""
    destination_rules: dict[str, DestinationRule] = Field(default_factory=dict)
    """Rules that apply at this gateway only, replacing the mesh's rule for the same host (an
    Istio ``DestinationRule`` with a ``workloadSelector`` for the gateway)."""
    virtual_services: dict[str, VirtualService] = Field(default_factory=dict)
    """Routes bound to this gateway, by host (unset: Istio's default route and retry policy)."""
    local_rate_limit: LocalRateLimit | None = None
    """Envoy's HTTP local rate limit filter on each gateway pod (per pod: the gateway lets
    through replicas × the bucket's rate), checked when a request reaches the pod, before it is
    routed. Its ``typed_config`` with Envoy's field names, as an ``EnvoyFilter`` carries it."""
    global_rate_limit: GlobalRateLimit | None = None
    """Envoy's rate limit filter on each gateway pod, asking ``mesh.rateLimitService`` about
    every request (after the local rate limit, if both are set). Ingress gateway only."""


def _default_overhead() -> dict[str, str]:
    # Istio 1.12 performance docs: the two proxies of one hop add about 1.7 ms at p90 and 2.7 ms
    # at p99. A lognormal through (p90, p99) = (1.7 ms, 2.7 ms) has median 0.96 ms.
    return {"kind": "lognormal", "median": "0.96ms", "p99": "2.7ms"}


class Sidecar(Model):
    """Cost of the Envoy proxies on a hop."""

    hop_overhead: Distribution = Field(default_factory=_default_overhead, validate_default=True)
    """Latency added by the two proxies of one hop (caller's sidecar and callee's sidecar or
    gateway), both directions together, drawn once per attempt. Default: lognormal with p90
    1.7 ms and p99 2.7 ms (Istio 1.12 performance figures at 1000 rps, 16 connections)."""
    connect_time: Distribution = Field(default="0ms", validate_default=True)
    """Time a client proxy takes to open a connection to a host (TCP handshake, and the mTLS
    handshake between sidecars), drawn per new connection; the requests waiting for it wait
    that long. A connection that would take the ``connectTimeout`` of the destination's
    ``DestinationRule`` or longer fails at that timeout with 503 ``UF`` for every request
    waiting for it. Default 0: connections are set up at once, as if every pool were warm.
    In one cluster a new connection costs about two to three one-way network latencies.
    Setting it sends every call through a connection pool, which makes runs slower."""


def _admission_control(block: dict[str, Any]) -> dict[str, Any]:
    AdmissionControlConfig.from_envoy(block)  # Envoy's validation, reported on this block
    return block


#: The ``typed_config`` of Envoy's admission control filter (Envoy's field names), as an
#: ``EnvoyFilter`` would carry it.
EnvoyAdmissionControl = Annotated[dict[str, Any], AfterValidator(_admission_control)]


def _adaptive_concurrency(block: dict[str, Any]) -> dict[str, Any]:
    GradientControllerConfig.from_envoy(block)
    return block


#: The ``typed_config`` of Envoy's adaptive concurrency filter (Envoy's field names).
EnvoyAdaptiveConcurrency = Annotated[dict[str, Any], AfterValidator(_adaptive_concurrency)]


class SidecarResource(Model):
    """The sidecars of one service's pods: an Istio ``Sidecar`` resource for those pods (its
    ``workloadSelector``), of which only the field that changes what meshsim simulates is
    taken, and the Envoy filters an ``EnvoyFilter`` would add to them.
    """

    inbound_connection_pool: ConnectionPoolSettings | None = None
    """Limits of the pod's own (inbound) sidecar towards the app, in place of the
    ``connectionPool`` of the service's ``DestinationRule``, which istiod applies to the inbound
    cluster too when this is unset (Istio 1.20+: ``Sidecar.inboundConnectionPool``)."""
    adaptive_concurrency: EnvoyAdaptiveConcurrency | None = None
    """Envoy's adaptive concurrency filter on requests into each pod: a gradient controller
    that limits the requests in flight to the app from its latency (over the limit: 503 at
    once). Fields as Envoy's ``AdaptiveConcurrency`` (``gradient_controller_config``,
    ``concurrency_limit_exceeded_status``)."""
    policies: list[CustomPolicySpec] = Field(default_factory=list)
    """Admission policies of your own in each pod's sidecar, after adaptive concurrency, in
    order: ``[{kind: custom, class: 'package.module:Class', params: {...}, status: 503}]``,
    each a class implementing :class:`meshsim.policies.protocol.Policy` (one instance per
    pod). A refused request gets ``status`` from the sidecar and never reaches the app."""
    admission_control: dict[str, EnvoyAdmissionControl] = Field(default_factory=dict)
    """Envoy's admission control filter on these pods' outbound calls, by destination: it
    rejects a share of requests (503 at once, flag ``-``) while the destination's success rate
    is low. Fields as Envoy's ``AdmissionControl`` (``success_criteria``, ``sampling_window``,
    ``aggression``, ``sr_threshold``, ``rps_threshold``, ``max_rejection_probability``)."""
    local_rate_limit: LocalRateLimit | None = None
    """Envoy's HTTP local rate limit filter on each pod's inbound listener (per pod: the service
    lets through replicas × the bucket's rate), checked when a request reaches the pod, before
    the inbound connection pool. Its ``typed_config`` with Envoy's field names, as an
    ``EnvoyFilter`` carries it. A refused request is answered 429 by the pod's sidecar (flag
    ``RL`` in its stats); the caller sees a plain upstream 429."""


class Mesh(Model):
    """The service mesh: gateways, proxy costs and Istio policy resources."""

    istio_defaults: bool = True
    """Apply Istio's defaults where the scenario is silent (false: plain Envoy's defaults)."""
    ingress_gateway: Gateway = Gateway()
    """The ingress gateway clients enter through."""
    egress_gateway: Gateway | None = None
    """If set, calls to external services pass through an egress gateway with these pods."""
    sidecar: Sidecar = Sidecar()
    destination_rules: dict[str, DestinationRule] = Field(default_factory=dict)
    """Istio ``DestinationRule`` specs by host (service or external service name)."""
    virtual_services: dict[str, VirtualService] = Field(default_factory=dict)
    """Istio ``VirtualService`` specs by host, as the sidecars apply them."""
    sidecars: dict[str, SidecarResource] = Field(default_factory=dict)
    """Istio ``Sidecar`` specs by service, for the settings of that service's pods' own
    sidecars."""
    rate_limit_service: RateLimitService | None = None
    """The rate-limit service of global rate limits (``globalRateLimit`` of a gateway)."""


class Network(Model):
    """The network between pods."""

    latency: Distribution = Field(default="0.1ms", validate_default=True)
    """One-way latency of every leg of every hop (request and response each draw once).
    Default 0.1 ms, typical inside one cluster."""


# --------------------------------------------------------------------------------------------
# Scenario
# --------------------------------------------------------------------------------------------


class Scenario(Model):
    """A complete simulation: topology, workload, mesh policies and run settings.

    Build one with :func:`load_scenario` (from a file) or :func:`parse_scenario` (from a dict).
    All times are float seconds.
    """

    name: str = "scenario"
    description: str = ""
    duration: PosDuration
    """Simulated time to run, e.g. ``300s``."""
    warmup: NonNegDuration = 0.0
    """Initial period left out of the summary statistics (the system starts empty)."""
    seed: Annotated[int, Field(ge=0)] = 1
    """Seed of all randomness; the same scenario and seed give identical results."""
    services: dict[str, Service] = Field(min_length=1)
    external_services: dict[str, ExternalService] = Field(default_factory=dict)
    """Dependencies outside the mesh (Istio ``ServiceEntry`` hosts)."""
    workload: list[Client] = Field(min_length=1)
    network: Network = Network()
    mesh: Mesh = Mesh()
    faults: list[Fault] = Field(default_factory=list)
    """What goes wrong, where and when: crashed, hung or slow pods, error bursts, outages,
    network trouble on an edge, load spikes; see :mod:`meshsim.faults`."""
    slo: Slo | None = None
    """The end-to-end objective of every end-user request (an entry point's own ``slo`` in
    ``workload`` applies to its requests)."""
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)
    """Named sets of overrides to compare with the scenario as written (``meshsim compare``):
    ``{with-budget: {mesh.destinationRules.cart.trafficPolicy...: 20}}``, each key a path as
    ``--set`` takes it."""

    # ---- derived settings (the defaults that depend on other fields live here too) ----------

    def destination_rule(self, host: str, gateway: str | None = None) -> DestinationRule | None:
        """The ``DestinationRule`` a client proxy applies to ``host``, if any.

        ``gateway`` (``"ingress"`` / ``"egress"``) selects that gateway's own rules first.
        """
        rule = None
        if gateway is not None:
            rule = self._gateway(gateway).destination_rules.get(host)
        if rule is None:
            rule = self.mesh.destination_rules.get(host)
        return rule

    def traffic_policy(self, host: str, gateway: str | None = None,
                       subset: str | None = None) -> TrafficPolicy:
        """The ``trafficPolicy`` a client proxy applies to ``host`` (empty if none is set), or
        to its ``subset``: the rule's policy with the subset's blocks in place of its own."""
        rule = self.destination_rule(host, gateway)
        policy = rule.traffic_policy if rule is not None else None
        if subset is not None and rule is not None and rule.subset(subset) is not None:
            policy = merge_traffic_policy(policy, rule.subset(subset).traffic_policy)
        return TrafficPolicy() if policy is None else policy

    def inbound_connection_pool(self, service: str) -> ConnectionPoolSettings | None:
        """The ``connectionPool`` the sidecar of each pod of ``service`` applies to requests
        into its app (None: Istio's defaults).

        istiod builds the inbound cluster's circuit breakers from the ``Sidecar``'s
        ``inboundConnectionPool`` if set, else from the ``connectionPool`` of the
        ``DestinationRule`` for the service itself (``istio/istio``
        ``pilot/pkg/networking/core/cluster_builder.go``; its test
        ``TestInboundConnectionPoolForPort`` pins both cases): a rule written to limit the
        *callers* also limits each *pod*.
        """
        sidecar = self.mesh.sidecars.get(service)
        if sidecar is not None and sidecar.inbound_connection_pool is not None:
            return sidecar.inbound_connection_pool
        return self.traffic_policy(service).connection_pool

    def http_route(self, host: str, gateway: str | None = None) -> HTTPRoute | None:
        """The route a client proxy applies to requests for ``host``: the first ``http`` route
        of its ``VirtualService`` (the gateway's own, for a gateway), or None for Istio's
        default route."""
        services = self._gateway(gateway).virtual_services if gateway is not None \
            else self.mesh.virtual_services
        vs = services.get(host)
        return vs.http[0] if vs is not None else None

    def route_destinations(self, host: str, gateway: str | None = None,
                           ) -> list[tuple[str | None, int]]:
        """Where a client proxy's requests for ``host`` go: ``(subset, weight)`` pairs of the
        first ``http`` route (subset None: every pod of the host). One pair with weight 100 when
        the route has no destinations or one; the weights of several add up to 100."""
        route = self.http_route(host, gateway)
        if route is None or route.route is None:
            return [(None, 100)]
        if len(route.route) == 1:
            return [(route.route[0].destination.subset, 100)]
        return [(d.destination.subset, d.weight or 0) for d in route.route]

    def lb_policy(self, host: str, gateway: str | None = None, subset: str | None = None) -> str:
        """The load-balancing policy callers use for ``host`` (Istio or Envoy default if unset)."""
        lb = self.traffic_policy(host, gateway, subset).load_balancer
        simple = lb.simple if lb is not None else None
        if simple is None or simple == "UNSPECIFIED":
            simple = "LEAST_REQUEST" if self.mesh.istio_defaults else "ROUND_ROBIN"
        return "LEAST_REQUEST" if simple == "LEAST_CONN" else simple

    def _gateway(self, name: str) -> Gateway:
        gw = self.mesh.ingress_gateway if name == "ingress" else self.mesh.egress_gateway
        return gw if gw is not None else Gateway()

    # ---- serialisation ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The scenario with every default filled in, as plain YAML-ready data (camelCase keys).

        Unset optional fields (``None``) are left out: for Istio's blocks "unset" is a value of
        its own, which a reload gives back.
        """
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_yaml(self) -> str:
        """The resolved scenario as YAML; loading it gives back an equal scenario."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True, width=100)

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "overrides") -> Scenario:
        """Return a copy with values replaced by dotted path.

        Parameters
        ----------
        overrides : mapping
            ``{"services.cart.replicas": 4, "workload[0].arrival.rate": "500/s"}``. Keys use the
            file's camelCase names; list items are ``[i]`` or ``.i``. String values are parsed
            like YAML scalars by the CLI before they get here.
        source : str
            Name shown in error messages.

        Raises
        ------
        ScenarioError
            If a path does not exist or the new value is invalid.
        """
        return self._overridden(overrides, source, keep_variants=True)

    def variant(self, name: str) -> Scenario:
        """The scenario as variant ``name`` of :attr:`variants` changes it (without variants of
        its own); ``baseline`` is the scenario as written.

        Raises
        ------
        KeyError
            If there is no such variant.
        ScenarioError
            If its overrides do not make a valid scenario (checked when the file is loaded).
        """
        if name == BASELINE:
            return self
        if name not in self.variants:
            raise KeyError(unknown_name(name, {BASELINE, *self.variants}, "variant"))
        return self._overridden(self.variants[name], f"variant {name!r}", keep_variants=False)

    def _overridden(self, overrides: Mapping[str, Any], source: str, keep_variants: bool,
                    ) -> Scenario:
        data = self.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if not keep_variants:
            data.pop("variants", None)
        issues = []
        for path_text, value in overrides.items():
            try:
                path = parse_path(path_text)
                _set_path(data, path, value)
                if len(path) == 3 and path[0] == "faults" and path[2] == "duration":
                    # A fault's window is stored as its end: a new duration replaces it.
                    data["faults"][path[1]].pop("end", None)
            except KeyError as exc:
                issues.append(Issue(parse_path_lenient(path_text), str(exc.args[0])))
        if issues:
            raise ScenarioError(source, issues)
        # The variants were checked with the file. They apply to the file as written, and
        # `meshsim compare` applies overrides after a variant's own: an override that clashes
        # with a variant is no error here (unless it changes the variants themselves).
        touches = any(str(k).split(".")[0].split("[")[0] == "variants" for k in overrides)
        return parse_scenario(data, source=source, check_variants=touches)


# --------------------------------------------------------------------------------------------
# Paths for --set
# --------------------------------------------------------------------------------------------


def parse_path(text: str) -> tuple[str | int, ...]:
    """Split ``services.cart.calls[1].to`` into ``("services", "cart", "calls", 1, "to")``."""
    parts: list[str | int] = []
    for chunk in text.replace("[", ".[").split("."):
        if not chunk:
            continue
        if chunk.startswith("[") and chunk.endswith("]") and chunk[1:-1].isdigit():
            parts.append(int(chunk[1:-1]))
        elif chunk.isdigit():
            parts.append(int(chunk))
        else:
            parts.append(chunk)
    if not parts:
        raise KeyError(f"empty path {text!r}")
    return tuple(parts)


def parse_path_lenient(text: str) -> tuple[str | int, ...]:
    try:
        return parse_path(text)
    except KeyError:
        return (text,)


#: Maps of named things a --set may not create by accident (a typo would add a new service).
_NAMED = ("services", "externalServices")


def _set_path(data: Any, path: tuple[str | int, ...], value: Any) -> None:
    if len(path) > 2 and path[0] in _NAMED and isinstance(data.get(path[0]), dict):
        names = data[path[0]]
        if path[1] not in names:
            what = "service" if path[0] == "services" else "external service"
            raise KeyError(unknown_name(str(path[1]), set(names), what))
    node = data
    for i, key in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not isinstance(key, int) or not 0 <= key < len(node):
                raise KeyError(f"no item [{key}] here: the list has {len(node)} items")
            node = node[key]
        elif isinstance(node, dict):
            if key not in node:
                node[key] = [] if isinstance(nxt, int) else {}
            node = node[key]
        else:
            raise KeyError(f"cannot set {key!r} inside a {type(node).__name__}")
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or not 0 <= last <= len(node):
            raise KeyError(f"no item [{last}] here: the list has {len(node)} items")
        if last == len(node):
            node.append(value)
        else:
            node[last] = value
    elif isinstance(node, dict):
        if value is None:
            # null takes the key out: an optional field is unset, a field with a default gets
            # it back, and an entry of a map (a DestinationRule, a variant) is removed.
            node.pop(str(last), None)
        else:
            node[str(last)] = value
    else:
        raise KeyError(f"cannot set {last!r} inside a {type(node).__name__}")


# --------------------------------------------------------------------------------------------
# Loading and cross-checks
# --------------------------------------------------------------------------------------------


def parse_scenario(
    data: Any,
    *,
    source: str = "<scenario>",
    lines: LineMap | None = None,
    base_dir: str | os.PathLike | None = None,
    check_variants: bool = True,
) -> Scenario:
    """Validate plain data (as read from YAML) into a :class:`Scenario`.

    ``check_variants`` (default true) also checks that each of its ``variants`` makes a valid
    scenario.

    Raises
    ------
    ScenarioError
        Every problem found, each with its field path (and line, when ``lines`` is given).
    """
    if not isinstance(data, Mapping):
        raise ScenarioError(source, [Issue((), "expected a mapping (a scenario) at the top level")])
    context = {"base_dir": str(base_dir or ".")}
    try:
        scenario = Scenario.model_validate(data, context=context)
    except ValidationError as err:
        raise from_validation_error(err, Scenario, data, source, lines) from None
    from .checks import cross_check  # it reads the scenario's classes: imported when used

    issues = cross_check(scenario) or (_check_variants(scenario) if check_variants else [])
    if issues:
        if lines is not None:
            issues = [Issue(i.path, i.message, lines.line_for(i.path)) for i in issues]
        raise ScenarioError(source, issues)
    return scenario


def _check_variants(scenario: Scenario) -> list[Issue]:
    """Each variant must make a valid scenario: its problems are reported at its own keys."""
    issues = []
    for name, overrides in scenario.variants.items():
        if name == BASELINE:
            issues.append(Issue(("variants", name), f"'{BASELINE}' is the scenario as written; "
                                "give the variant another name"))
            continue
        try:
            scenario.variant(name)
        except ScenarioError as err:
            parsed = {key: parse_path_lenient(key) for key in overrides}
            for i in err.issues:
                key = next((k for k, p in parsed.items() if tuple(i.path[:len(p)]) == p),
                           next(iter(overrides), None))
                where = ("variants", name) if key is None else ("variants", name, key)
                issues.append(Issue(where, f"{i.path_text()}: {i.message}"))
    return issues


def load_scenario(path: str | os.PathLike) -> Scenario:
    """Read, validate and cross-check a scenario file.

    Parameters
    ----------
    path : str or path-like
        A YAML scenario file.

    Returns
    -------
    Scenario

    Raises
    ------
    ScenarioError
        On anything wrong with the file, as ``FILE:LINE: path: message`` lines.
    """
    data, lines = load_file(path)
    return parse_scenario(data, source=str(path), lines=lines, base_dir=Path(path).parent)


def loads_scenario(text: str, source: str = "<string>") -> Scenario:
    """Like :func:`load_scenario`, from YAML text."""
    data, lines = load_yaml(text, source)
    return parse_scenario(data, source=source, lines=lines)


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI ``PATH=VALUE`` strings into an overrides mapping (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    issues = []
    for pair in pairs:
        path, sep, value = pair.partition("=")
        if not sep or not path.strip():
            issues.append(Issue((), f"expected PATH=VALUE, got {pair!r}"))
            continue
        out[path.strip()] = parse_scalar(value, source="--set", path=parse_path_lenient(path))
    if issues:
        raise ScenarioError("--set", issues)
    return out
