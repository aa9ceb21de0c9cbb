"""Istio resources in their own shape: ``DestinationRule`` and ``VirtualService`` specs.

Field names, nesting and duration strings are Istio's (``networking.istio.io/v1``), so a block can
be copied between a manifest's ``spec`` and a scenario unchanged. Fields meshsim does not simulate
are refused rather than silently ignored. An unset field stays ``None``: Istio distinguishes
"unset" from 0 in several places (e.g. ``consecutive5xxErrors``), and the translation into the
Envoy configuration a proxy runs with, including every Istio default, happens once in
:mod:`meshsim.policies` (``from_istio`` of each policy), exactly as istiod does it.

Sources: ``istio/api`` ``networking/v1alpha3/destination_rule.proto`` and
``virtual_service.proto``; ``../shared/envoy-semantics.md`` §1.6, §2.1, §4.3 and §11.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ._base import Model
from .policies.fault import GRPC_STATUS_CODES
from .units import NonNegDuration, PosDuration, format_duration

__all__ = [
    "ConnectionPoolSettings",
    "Destination",
    "DestinationRule",
    "HTTPFaultInjection",
    "HTTPRetry",
    "HTTPRoute",
    "HTTPRouteDestination",
    "LoadBalancerSettings",
    "OutlierDetection",
    "Percent",
    "RetryBudget",
    "Subset",
    "TrafficPolicy",
    "VirtualService",
    "istio_dict",
    "merge_traffic_policy",
]

Count = Annotated[int, Field(ge=0)]
Percent100 = Annotated[int, Field(ge=0, le=100)]
LbPolicy = Literal["UNSPECIFIED", "ROUND_ROBIN", "LEAST_REQUEST", "LEAST_CONN", "RANDOM"]


def istio_dict(model: Model | None) -> dict[str, Any]:
    """The fields set in an Istio block, by Istio name, durations as float seconds."""
    if model is None:
        return {}
    return model.model_dump(by_alias=True, exclude_none=True)


class LoadBalancerSettings(Model):
    """``trafficPolicy.loadBalancer``."""

    simple: LbPolicy | None = None
    """``ROUND_ROBIN``, ``LEAST_REQUEST`` (two random choices, fewer active requests wins),
    ``RANDOM``; ``LEAST_CONN`` is Istio's deprecated alias of ``LEAST_REQUEST``. Unset or
    ``UNSPECIFIED``: Istio's default ``LEAST_REQUEST`` (plain Envoy: ``ROUND_ROBIN``)."""


class TcpKeepalive(Model):
    """``connectionPool.tcp.tcpKeepalive`` (accepted; keep-alive probes are not simulated)."""

    probes: Count | None = None
    time: PosDuration | None = None
    interval: PosDuration | None = None


class TcpSettings(Model):
    """``connectionPool.tcp``."""

    max_connections: Count | None = None
    """Connections to all hosts of the destination, per client proxy (Istio default 2^32−1)."""
    connect_timeout: PosDuration | None = None
    """TCP connect timeout (Istio default 10 s); a connect failure answers 503 ``UF``."""
    tcp_keepalive: TcpKeepalive | None = None
    """Accepted for copy-paste compatibility; not simulated."""
    max_connection_duration: PosDuration | None = None
    """Not simulated yet: refused, so that no one relies on it silently."""

    @field_validator("max_connection_duration")
    @classmethod
    def _not_simulated(cls, value: float | None) -> float | None:
        if value is not None:
            raise ValueError("maxConnectionDuration is not simulated yet; remove it from the "
                             "scenario (connections live for the whole run)")
        return value
    idle_timeout: PosDuration | None = None
    """Accepted; idle connections are kept for the whole run (Istio default 1 h)."""


class HttpSettings(Model):
    """``connectionPool.http``."""

    http1_max_pending_requests: Count | None = None
    """Requests waiting for a connection, per client proxy (HTTP/1.1 and HTTP/2 alike)."""
    http2_max_requests: Count | None = None
    """Concurrent requests to the destination, per client proxy (HTTP/1.1 too)."""
    max_requests_per_connection: Count | None = None
    """Requests per connection before it is closed; 1 disables keep-alive; unset: unlimited."""
    max_retries: Count | None = None
    """Concurrent retries to the destination, per client proxy (Istio default 2^32−1)."""
    idle_timeout: PosDuration | None = None
    """Accepted; not simulated (connections are kept for the whole run)."""
    h2_upgrade_policy: Literal["DEFAULT", "DO_NOT_UPGRADE", "UPGRADE"] | None = None
    """``UPGRADE`` makes the client proxy talk HTTP/2 upstream (mesh default: HTTP/1.1)."""
    use_client_protocol: bool | None = None
    """Use the downstream protocol upstream (meshsim's clients speak HTTP/1.1)."""
    max_concurrent_streams: Count | None = None
    """HTTP/2 streams per connection (only when the cluster speaks HTTP/2)."""


class ConnectionPoolSettings(Model):
    """``trafficPolicy.connectionPool``: Envoy's circuit-breaker thresholds."""

    tcp: TcpSettings | None = None
    http: HttpSettings | None = None


class OutlierDetection(Model):
    """``trafficPolicy.outlierDetection``: ejecting misbehaving hosts from the pool."""

    split_external_local_origin_errors: bool | None = None
    """Count connect failures and timeouts apart from upstream 5xx responses."""
    consecutive_local_origin_failures: Count | None = None
    """Local-origin failures in a row before ejection (with the split on)."""
    consecutive_gateway_errors: Count | None = None
    """502/503/504 in a row before ejection (unset: counted but not enforced)."""
    consecutive_5xx_errors: Count | None = Field(default=None, alias="consecutive5xxErrors")
    """5xx in a row before ejection (unset: Envoy's 5; 0 disables)."""
    interval: PosDuration | None = None
    """Time between ejection sweeps; hosts come back only on these ticks (default 10 s)."""
    base_ejection_time: PosDuration | None = None
    """Minimum ejection time, multiplied by the number of ejections (default 30 s)."""
    max_ejection_percent: Percent100 | None = None
    """Most hosts that may be ejected, in percent (default 10: with fewer than 10 hosts, none)."""
    min_health_percent: Percent100 | None = None
    """Panic threshold: below this share of healthy hosts, balance over all of them (default 0:
    never, so all hosts ejected means 503 ``UH``)."""


class RetryBudget(Model):
    """``trafficPolicy.retryBudget``: a retry limit growing with traffic (replaces maxRetries)."""

    percent: Annotated[float, Field(ge=0, le=100)] = 20.0
    """Concurrent retries as a percentage of active plus pending requests."""
    min_retry_concurrency: Count = 3
    """Retries always allowed, whatever the traffic."""


class TrafficPolicy(Model):
    """``DestinationRule.spec.trafficPolicy``."""

    load_balancer: LoadBalancerSettings | None = None
    connection_pool: ConnectionPoolSettings | None = None
    outlier_detection: OutlierDetection | None = None
    retry_budget: RetryBudget | None = None


def merge_traffic_policy(top: TrafficPolicy | None, subset: TrafficPolicy | None,
                         ) -> TrafficPolicy | None:
    """The policy of a subset's cluster: the rule's ``trafficPolicy`` with each block the
    subset sets replacing the rule's block of that name, whole.

    This is istiod's merge (``MergeTrafficPolicy`` in ``pilot/pkg/model/destination_rule.go``,
    used through ``MergeSubsetTrafficPolicy`` in ``pilot/pkg/networking/util/util.go``):
    ``connectionPool``, ``outlierDetection``, ``loadBalancer``, ``tls`` and ``retryBudget`` are
    taken from the subset when it sets them, else from the rule. Blocks are not merged inside:
    a subset's ``connectionPool: {http: {...}}`` drops the rule's ``connectionPool.tcp``.
    """
    if subset is None:
        return top
    if top is None:
        return subset
    own = {name for name in type(subset).model_fields if getattr(subset, name) is not None}
    return top.model_copy(update={name: getattr(subset, name) for name in own})


#: A subset name as Istio validates it (``labels.IsDNS1123Label``).
SubsetName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]


class Subset(Model):
    """``DestinationRule.spec.subsets[]``: a named group of the host's pods, each subset being
    an Envoy cluster of its own (``outbound|80|v2|reviews...``) with its own connection pool,
    outlier detector and load balancer at every client proxy."""

    name: SubsetName
    """Name routes refer to (``destination.subset``); a DNS label such as ``v2``."""
    labels: dict[str, str] = Field(default_factory=dict)
    """Pod labels the subset selects (all must match); pods of a version carry
    ``version: <name of the version>``. Empty: every pod of the host."""
    traffic_policy: TrafficPolicy | None = None
    """Overrides the rule's ``trafficPolicy`` block by block (``connectionPool``,
    ``outlierDetection``, ``loadBalancer``, ``retryBudget``), as istiod merges them."""


class DestinationRule(Model):
    """``DestinationRule.spec`` for one host: what every client proxy applies when calling it."""

    traffic_policy: TrafficPolicy | None = None
    subsets: list[Subset] = Field(default_factory=list)
    """Named groups of the host's pods that routes can send to (see ``virtualServices``)."""

    def subset(self, name: str) -> Subset | None:
        """The subset called ``name``, or None."""
        return next((s for s in self.subsets if s.name == name), None)


class HTTPRetry(Model):
    """``VirtualService.spec.http[].retries``."""

    attempts: Count
    """Retries (not tries) allowed for a request; 0 disables retries."""
    per_try_timeout: PosDuration | None = None
    """Timeout of each try, the first included; unset: only the route timeout applies."""
    retry_on: str | None = None
    """Comma-separated Envoy conditions (``5xx``, ``gateway-error``, ``connect-failure``, ...)
    and status codes (``503``). Unset: ``connect-failure,refused-stream,unavailable,cancelled,
    retriable-status-codes``."""
    retry_remote_localities: bool | None = None
    """Retry in other localities (meshsim has one locality: no effect)."""
    retry_ignore_previous_hosts: bool | None = None
    """Prefer hosts not tried before (Istio default true)."""
    backoff: PosDuration | None = None
    """Base retry back-off (default 25 ms; the cap is 10 × base)."""


class Percent(Model):
    """Istio's ``Percent``: a share of requests, in percent."""

    value: Annotated[float, Field(ge=0, le=100)]
    """0 to 100, fractions allowed (istiod keeps four decimals: ``value × 10000`` per million)."""


class FaultDelay(Model):
    """``http[].fault.delay``: hold a share of the requests before they are routed."""

    fixed_delay: PosDuration
    """How long a delayed request is held (at least 1 ms, in whole milliseconds)."""
    percentage: Percent | None = None
    """Share of requests delayed; unset (and no ``percent``): none (Istio's field reference)."""
    percent: Percent100 | None = None
    """Deprecated integer share, used only when ``percentage`` is unset (as istiod does)."""

    @field_validator("fixed_delay")
    @classmethod
    def _whole_ms(cls, value: float) -> float:
        # istio agent.ValidateDuration: "duration must be at least 1ms", "only durations to ms
        # precision are supported".
        if value < 0.001 or round(value * 1e9) % 1_000_000:
            raise ValueError("must be at least 1ms and in whole milliseconds, got "
                             f"{format_duration(value)}")
        return value


#: gRPC status names ``abort.grpcStatus`` accepts (istio ``grpc.SupportedGRPCStatus``).
GrpcStatusName = Literal[tuple(GRPC_STATUS_CODES)]  # type: ignore[valid-type]


class FaultAbort(Model):
    """``http[].fault.abort``: answer a share of the requests with an error, never routed."""

    http_status: Annotated[int, Field(ge=200, le=599)] | None = None
    """The status of the answer (Envoy's ``http_status``, 200 to 599)."""
    grpc_status: GrpcStatusName | None = None
    """A gRPC status name (``UNAVAILABLE``), checked as Istio does, then refused: meshsim's
    services speak HTTP, where Envoy answers a gRPC abort with 200."""
    percentage: Percent | None = None
    """Share of requests aborted; unset: none (Istio's field reference)."""

    @model_validator(mode="after")
    def _one_status(self) -> FaultAbort:
        if self.http_status is not None and self.grpc_status is not None:
            raise ValueError("httpStatus and grpcStatus are exclusive (Istio's errorType is "
                             "a oneof): set exactly one")
        if self.http_status is None and self.grpc_status is None:
            raise ValueError("needs httpStatus (istiod drops an abort without an error type)")
        if self.grpc_status is not None:
            raise ValueError("grpcStatus is not simulated: meshsim's services speak HTTP, "
                             "where Envoy answers a gRPC abort with HTTP 200; use httpStatus "
                             "(e.g. 503)")
        return self


class HTTPFaultInjection(Model):
    """``http[].fault``: Envoy's fault filter on the caller's proxy (the client sidecar, or the
    gateway the ``VirtualService`` is bound to). Delays and aborts are drawn independently; a
    request can be delayed, then aborted (flags ``DI,FI``)."""

    delay: FaultDelay | None = None
    """Hold requests before the router: flag ``DI``. This proxy's route and per-try timeouts
    start after the delay; the caller's own timeouts run during it."""
    abort: FaultAbort | None = None
    """Answer requests at once with ``httpStatus``: flag ``FI``, no upstream attempt, never
    retried by this proxy, unseen by outlier detection and circuit breakers."""

    @model_validator(mode="after")
    def _delay_or_abort(self) -> HTTPFaultInjection:
        if self.delay is None and self.abort is None:
            raise ValueError("must have a delay and/or an abort (as Istio validates it)")
        return self


class PortSelector(Model):
    """``destination.port`` (accepted; every service has one port in meshsim)."""

    number: Annotated[int, Field(ge=1, le=65535)]
    """The port number."""


class Destination(Model):
    """``http[].route[].destination``: where the route sends a request."""

    host: str
    """The host of the ``VirtualService`` itself (its scenario name, or
    ``<name>.<namespace>[.svc.cluster.local]``): routing to another host is not simulated."""
    subset: str | None = None
    """A subset of the host's ``DestinationRule``; unset: every pod of the host."""
    port: PortSelector | None = None
    """Accepted for copy-paste compatibility (services have one port in meshsim)."""


class HTTPRouteDestination(Model):
    """``http[].route[]``: a destination and its share of the requests."""

    destination: Destination
    weight: Percent100 | None = None
    """Share of requests in percent; the weights of several destinations must add up to 100
    (as Istio validates them). A single destination gets every request whatever its weight."""


class HTTPRoute(Model):
    """One ``VirtualService.spec.http[]`` route (meshsim applies the first route of a host)."""

    name: str | None = None
    route: list[HTTPRouteDestination] | None = Field(default=None, min_length=1)
    """Destinations, each request going to one of them at random in proportion to the weights;
    its retries stay on the destination it went to (Envoy's ``weighted_clusters``). Unset:
    every pod of the host."""
    timeout: NonNegDuration | None = None
    """Route timeout covering all tries and back-off (Istio default: none; plain Envoy: 15 s)."""
    retries: HTTPRetry | None = None
    """Retry policy; unset: Istio's default (2 retries on connect failures, not on 503)."""
    fault: HTTPFaultInjection | None = None
    """Delays and aborts injected by the caller's proxy into a share of the requests."""


class VirtualService(Model):
    """``VirtualService.spec`` for one host, as its clients apply it."""

    http: list[HTTPRoute] = Field(min_length=1)
    """Routes; meshsim applies the first one to every request (matches come later)."""
