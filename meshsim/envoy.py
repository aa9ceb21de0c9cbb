"""Envoy configuration in its own shape, for the policies Istio has no API for: rate limits.

Istio sets up rate limits with ``EnvoyFilter`` resources, whose patches carry an Envoy filter's
``typed_config`` verbatim, and a rate-limit service (``envoyproxy/ratelimit``) with a YAML config
of its own. The models here take those blocks with their own snake_case field names
(``token_bucket``, ``filter_enabled``, ``requests_per_unit``), so that a block can be copied
between an ``EnvoyFilter`` (or the service's ``config.yaml``) and a scenario unchanged. Fields
meshsim does not simulate are refused rather than silently ignored.

Validation is in two steps. The models check each field's type and range, so a wrong value is
reported at its own key. Then the block is built into the policy object it configures
(``LocalRateLimitConfig.from_envoy`` and ``GlobalRateLimitConfig.from_config`` of
:mod:`meshsim.policies.rate_limit`), which applies the rules that involve several fields (a
descriptor's ``fill_interval`` must be a multiple of the filter's, no two descriptors alike); its
:class:`~meshsim.policies.rate_limit.ConfigError` carries the path inside the block, which
:mod:`meshsim.errors` adds to the issue's path, so the message names the line at fault.

What the requests carry: meshsim gives every request one descriptor, ``client`` = the id of the
workload client that sent it. In Envoy that is what a ``request_headers`` rate-limit action makes
of a header that carries the client's id (``{request_headers: {header_name: x-client-id,
descriptor_key: client}}`` in the route's or the filter's ``rate_limits``).

Sources: ``api/envoy/extensions/filters/http/local_ratelimit/v3/local_rate_limit.proto``,
``api/envoy/type/v3/token_bucket.proto``, ``api/envoy/type/v3/percent.proto``; the
``envoyproxy/ratelimit`` README (configuration); ``../shared/envoy-semantics.md`` §5.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    WithJsonSchema,
    model_validator,
)

from ._base import Model
from .distributions import Distribution
from .policies.rate_limit import (
    ConfigError,
    GlobalRateLimitConfig,
    LocalRateLimitConfig,
)
from .units import NonNegDuration, PosDuration

__all__ = [
    "CLIENT_KEY",
    "DescriptorEntry",
    "FractionalPercent",
    "GlobalRateLimit",
    "HttpStatus",
    "LocalRateLimit",
    "LocalRateLimitDescriptor",
    "Outage",
    "RateLimitDescriptor",
    "RateLimitQuota",
    "RateLimitService",
    "RequestDescriptor",
    "RequestDescriptorEntry",
    "RuntimeFractionalPercent",
    "TokenBucket",
]

#: The key of the one descriptor entry every request carries: its client's id.
CLIENT_KEY = "client"
#: The ``@type`` of the local rate limit filter's ``typed_config``.
LOCAL_RATE_LIMIT_TYPE = ("type.googleapis.com/"
                         "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit")


class EnvoyModel(Model):
    """A block in Envoy's (or its rate-limit service's) own snake_case field names."""

    model_config = ConfigDict(alias_generator=None)


# --------------------------------------------------------------------------------------------
# The HTTP local rate limit filter (envoy.filters.http.local_ratelimit)
# --------------------------------------------------------------------------------------------


class TokenBucket(EnvoyModel):
    """Envoy's ``type.v3.TokenBucket``: a bucket that starts full and refills continuously at
    ``tokens_per_fill / fill_interval`` tokens per second, up to ``max_tokens``."""

    max_tokens: PositiveInt
    """Size of the bucket: the burst it lets through."""
    tokens_per_fill: PositiveInt = 1
    """Tokens added per ``fill_interval``."""
    fill_interval: PosDuration
    """With ``tokens_per_fill``, the refill rate; at least 50 ms for the filter's own bucket."""


class FractionalPercent(EnvoyModel):
    """Envoy's ``type.v3.FractionalPercent``: ``numerator / denominator``."""

    numerator: Annotated[int, Field(ge=0)] = 0
    """Requests it applies to, per ``denominator``."""
    denominator: Literal["HUNDRED", "TEN_THOUSAND", "MILLION"] = "HUNDRED"
    """``HUNDRED`` (a percentage), ``TEN_THOUSAND`` or ``MILLION``."""


class RuntimeFractionalPercent(EnvoyModel):
    """Envoy's ``config.core.v3.RuntimeFractionalPercent``: the share of requests a setting
    applies to. A simulated proxy has no runtime overrides, so ``default_value`` applies."""

    default_value: FractionalPercent
    runtime_key: str | None = None
    """Accepted for copy-paste compatibility; no runtime overrides are simulated."""


class HttpStatus(EnvoyModel):
    """Envoy's ``type.v3.HttpStatus``."""

    code: Annotated[int, Field(ge=100, le=599)]
    """The status; below 400 Envoy answers 429 instead."""


class DescriptorEntry(EnvoyModel):
    """One entry of a local rate limit descriptor: the key and value a request must carry."""

    key: str
    """``client``: the one entry meshsim's requests carry (see the filter)."""
    value: str
    """A client id of the scenario's workload."""


class LocalRateLimitDescriptor(EnvoyModel):
    """A descriptor of the local rate limit filter, with a bucket of its own for the requests
    that carry exactly these entries."""

    entries: list[DescriptorEntry] = Field(min_length=1)
    """``[{key: client, value: <client id>}]``: a request matches only when it carries exactly
    these entries."""
    token_bucket: TokenBucket
    """This descriptor's bucket; its ``fill_interval`` must be a multiple of the filter's."""


class LocalRateLimit(EnvoyModel):
    """Envoy's HTTP local rate limit filter (``envoy.filters.http.local_ratelimit``), written as
    the ``typed_config`` an ``EnvoyFilter`` inserts, with Envoy's snake_case field names.

    One filter runs in each proxy instance (each gateway pod, each pod's sidecar), so a service
    with *n* pods lets through *n* times the bucket's rate. A request that finds no token is
    answered 429 with flag ``RL`` by that proxy and never goes upstream. Both
    ``filter_enabled`` and ``filter_enforced`` default to 0 %, as in Envoy: set both to 100 %
    to enforce.

    Every request carries one descriptor, ``client`` = its client's id, as a ``request_headers``
    rate-limit action on a header with the client id gives it in Envoy (``{request_headers:
    {header_name: x-client-id, descriptor_key: client}}``); ``descriptors`` give chosen clients
    a bucket of their own.
    """

    type_url: Literal[LOCAL_RATE_LIMIT_TYPE] | None = Field(None, alias="@type")  # type: ignore[valid-type]
    """The ``@type`` of an ``EnvoyFilter``'s ``typed_config``; may be left out."""
    stat_prefix: str = Field("http_local_rate_limiter", min_length=1)
    """Prefix of the filter's statistics, ``<stat_prefix>.http_local_rate_limit.*``."""
    token_bucket: TokenBucket
    """The filter's default bucket, for requests no descriptor matches (and, with
    ``always_consume_default_token_bucket``, for those too)."""
    filter_enabled: RuntimeFractionalPercent | None = None
    """Share of requests the filter checks (unset: 0 %, the filter does nothing)."""
    filter_enforced: RuntimeFractionalPercent | None = None
    """Share of checked requests without a token that get the 429 (unset: 0 %, shadow mode:
    counted in ``rate_limited`` and let through)."""
    descriptors: list[LocalRateLimitDescriptor] = Field(default_factory=list)
    """Buckets of their own for chosen clients."""
    status: HttpStatus | None = None
    """The status of a refusal (unset: 429)."""
    always_consume_default_token_bucket: bool = True
    """Whether a request that matched a descriptor also takes a token from the default
    bucket."""

    @model_validator(mode="after")
    def _builds(self) -> LocalRateLimit:
        for i, d in enumerate(self.descriptors):
            # A descriptor no request can carry would never match: refuse it rather than let
            # a limit silently do nothing.
            entries = [(e.key, e.value) for e in d.entries]
            if len(entries) > 1 or entries[0][0] != CLIENT_KEY:
                j = next((j for j, e in enumerate(entries) if e[0] != CLIENT_KEY), None)
                where = ("entries", 1) if j is None else ("entries", j, "key")
                raise ConfigError(
                    ("descriptors", i, *where), "no request would match: each request "
                    f"carries one descriptor, [{{key: {CLIENT_KEY}, value: <its client id>}}] "
                    f"(in Envoy, a request_headers action with descriptor_key: {CLIENT_KEY})")
        self.config()
        return self

    def envoy_dict(self) -> dict[str, Any]:
        """The fields set, by Envoy name, durations as float seconds, without ``@type``."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        data.pop("@type", None)
        return data

    def config(self) -> LocalRateLimitConfig:
        """The filter's configuration for :class:`~meshsim.policies.rate_limit.LocalRateLimit`.

        Raises
        ------
        ConfigError
            If the fields do not make a filter Envoy would accept.
        """
        return LocalRateLimitConfig.from_envoy(self.envoy_dict())


# --------------------------------------------------------------------------------------------
# The global rate limit: the service (envoyproxy/ratelimit) and the gateway's filter
# --------------------------------------------------------------------------------------------


_UNITS = ("second", "minute", "hour", "day")


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class RateLimitQuota(EnvoyModel):
    """``rate_limit`` of the rate-limit service's config: a quota per fixed window."""

    unit: Annotated[Literal["second", "minute", "hour", "day"], BeforeValidator(_lower),
                    WithJsonSchema({"enum": [*_UNITS, *(u.upper() for u in _UNITS)]})]
    """The window (``second``, ``minute``, ``hour``, ``day``; any case). Windows are aligned to
    whole units of time, for every client at once."""
    requests_per_unit: Annotated[int, Field(ge=0)]
    """Requests allowed per window; one more is over the limit."""


class RateLimitDescriptor(EnvoyModel):
    """A node of the rate-limit service's descriptor tree (its ``config.yaml``).

    A node matches a request entry by ``key`` and ``value``, or by ``key`` alone when it has no
    ``value``: then every value has its own counter, a quota per client.
    """

    key: str = Field(min_length=1)
    """The key of the request entry this node matches."""
    value: str | None = None
    """Unset: any value, each counted apart."""
    rate_limit: RateLimitQuota | None = None
    """The quota of requests whose descriptor ends at this node (unset: no limit)."""
    descriptors: list[RateLimitDescriptor] = Field(default_factory=list)
    """Nodes for the next entry of a descriptor."""


class Outage(Model):
    """A window during which the rate-limit service does not answer."""

    start: NonNegDuration
    """When it stops answering, from the start of the run."""
    end: PosDuration
    """When it answers again."""

    @model_validator(mode="after")
    def _ordered(self) -> Outage:
        if self.end <= self.start:
            raise ValueError(f"end must be after start ({self.end:g}s <= {self.start:g}s)")
        return self


def _default_rls_latency() -> str:
    return "1ms"


class RateLimitService(Model):
    """The shared rate-limit service (``envoyproxy/ratelimit``) of global rate limits.

    ``domain`` and ``descriptors`` are the service's own config (its ``config.yaml``, snake_case
    inside ``descriptors``); the rest is meshsim's: how long a call takes and when the service
    fails, and the settings of the Envoy filter (``envoy.filters.http.ratelimit``) that every
    proxy asking it uses. One service counts for every proxy: that is the point of a global
    limit. The counters are fixed windows aligned to their unit from the start of the run.
    """

    domain: str = Field(min_length=1)
    """The service's domain, which the proxies' filter names."""
    descriptors: list[RateLimitDescriptor] = Field(min_length=1)
    """The service's descriptor tree: ``[{key: client, rate_limit: {unit: second,
    requests_per_unit: 100}}]`` gives each client 100 requests per second."""
    latency: Distribution = Field(default_factory=_default_rls_latency, validate_default=True)
    """Time a call takes, there and back (default 1 ms, a gRPC call and a counter update in one
    cluster)."""
    timeout: PosDuration = 0.020
    """The filter's ``timeout``: a call slower than this is an error (Envoy's default 20 ms)."""
    failure_mode_deny: bool = False
    """The filter's ``failure_mode_deny``: false lets requests through when the service errs
    or times out (fail open); true answers them 500 with flag ``RLSE``."""
    outages: list[Outage] = Field(default_factory=list)
    """Windows during which the service does not answer: every call then waits for the
    ``timeout``."""
    capacity: PositiveInt | None = None
    """Calls the service works on at once (its replicas × their workers); further calls wait
    in order of arrival, and one that waits so long that it cannot answer within the
    ``timeout`` is an error to the filter (the service still works on it). Unset: unlimited."""

    @model_validator(mode="after")
    def _builds(self) -> RateLimitService:
        self.config()
        return self

    def config(self) -> GlobalRateLimitConfig:
        """The service's counting rules for
        :class:`~meshsim.policies.rate_limit.GlobalRateLimitService`."""
        tree = [d.model_dump(exclude_none=True) for d in self.descriptors]
        return GlobalRateLimitConfig.from_config({"domain": self.domain, "descriptors": tree})


class RequestDescriptorEntry(Model):
    """An entry of a descriptor a proxy sends to the rate-limit service."""

    key: str = Field(min_length=1)
    """The entry's key."""
    value: str | None = None
    """A fixed value (Envoy's ``generic_key`` action). Unset: the request's own value, which
    only ``client`` has (the request's client id)."""

    @model_validator(mode="after")
    def _has_value(self) -> RequestDescriptorEntry:
        if self.value is None and self.key != CLIENT_KEY:
            raise ConfigError(("key",), f"a request has no value for {self.key!r}: give a "
                              f"value, or use key {CLIENT_KEY!r} (the request's client id)")
        return self


class RequestDescriptor(Model):
    """One descriptor a proxy sends: its entries, in order."""

    entries: list[RequestDescriptorEntry] = Field(min_length=1)
    """The entries, matched in this order against the service's descriptor tree."""


def _per_client() -> list[dict[str, Any]]:
    return [{"entries": [{"key": CLIENT_KEY}]}]


class GlobalRateLimit(Model):
    """Envoy's rate limit filter (``envoy.filters.http.ratelimit``) on each gateway pod: every
    request waits for an answer from ``mesh.rateLimitService`` (at most its ``timeout``) before
    it is routed. Over the limit: 429 with flag ``RL``."""

    descriptors: list[RequestDescriptor] = Field(default_factory=_per_client,
                                                 validate_default=True, min_length=1)
    """The descriptors each request carries in its call (Envoy: the route's ``rate_limits``
    actions). Default: one, ``client`` = the request's client id."""
