"""Envoy rate limiters (local, global, network) as plain state machines.

Follows ``../shared/envoy-semantics.md`` §5 (rate limiting), §0 item 10 (continuous refill) and
§10.2 (flags ``RL`` and ``RLSE``). Where the reference is silent, the behaviour was read from
Envoy's ``source/extensions/filters/common/local_ratelimit/local_ratelimit_impl.cc``
(``LocalRateLimiterImpl::requestAllowed``, ``AtomicTokenBucket``) and from the reference
rate-limit service ``envoyproxy/ratelimit`` (``src/limiter/cache_key.go``,
``src/limiter/base_limiter.go``); the functions are cited where they matter.

Every call takes the simulated time ``now`` in float seconds, in non-decreasing order. Nothing
here schedules anything: the engine asks and acts on the answer.

- :class:`TokenBucket`: one continuously refilled bucket (``try_acquire(now)``).
- :class:`LocalRateLimit`: ``envoy.filters.http.local_ratelimit`` of one proxy instance, so one
  per pod (the real limit of a service is replicas × rate), or one per route that has its own
  ``typed_per_filter_config``. A denied request gets 429 ``RL`` and never goes upstream. In 1.40
  the reply carries no ``x-envoy-ratelimited`` (§5.1 [exp]), so a caller's ``envoy-ratelimited``
  retry does not fire on it (a caller listing 429 in ``retriable-status-codes`` would retry it).
- :class:`NetworkLocalRateLimit`: ``envoy.filters.network.local_ratelimit``, one token per new
  connection (§5.3).
- :class:`GlobalRateLimitService`: the shared rate-limit service's fixed-window counters.
- :class:`GlobalRateLimitFilter`: ``envoy.filters.http.ratelimit`` config and what the filter
  does with the service's answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from meshsim.units import parse_duration

__all__ = [
    "UNIT_SECONDS",
    "ConfigError",
    "Decision",
    "GlobalRateLimitConfig",
    "GlobalRateLimitFilter",
    "GlobalRateLimitService",
    "LocalDescriptor",
    "LocalRateLimit",
    "LocalRateLimitConfig",
    "NetworkLocalRateLimit",
    "Quota",
    "TokenBucket",
    "TokenBucketConfig",
]

#: A descriptor as the engine hands it over: ``{"client_id": "a"}`` or ``(("client_id", "a"),)``.
#: Entry order matters (Envoy and the rate-limit service compare entry lists in order).
DescriptorLike = Mapping[str, str] | Sequence[tuple[str, str]]
Entries = tuple[tuple[str, str], ...]
ServiceAnswer = Literal["OK", "OVER_LIMIT", "ERROR", "TIMEOUT"]

#: Seconds of each ``RateLimitUnit`` of the rate-limit service (``utils.UnitToDivider``).
UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}

# Tolerance for float time arithmetic: a request at exactly the instant a token is complete
# (t = 1.0 after 0.01 + 0.99) must see that token. Envoy's clock counts nanoseconds.
_EPS = 1e-9
_MIN_FILL_INTERVAL = 0.050  # LocalRateLimiterImpl: "fill timer must be >= 50ms"
_DENOMINATORS = {"HUNDRED": 100, "TEN_THOUSAND": 10_000, "MILLION": 1_000_000}


class Decision(NamedTuple):
    """What a rate-limit filter does with a request.

    ``status`` and ``flags`` are None when the request goes on; otherwise the local reply's HTTP
    status and Envoy's response flag (``RL`` or ``RLSE``).
    """

    allowed: bool
    status: int | None
    flags: str | None


_ALLOW = Decision(True, None, None)


class ConfigError(ValueError):
    """A configuration value a limiter refuses; ``path`` says where it is inside the block.

    ``path`` holds keys and list indexes under the block given to ``from_envoy`` or
    ``from_config`` (``("descriptors", 1, "token_bucket", "fill_interval")``), so that a scenario
    error can name the very line at fault.
    """

    def __init__(self, path: tuple[str | int, ...], message: str):
        super().__init__(message)
        self.path = path


def _text(entries: Entries) -> str:
    return ",".join(f"{k}={v}" for k, v in entries)


def _entries(descriptor: DescriptorLike) -> Entries:
    items = descriptor.items() if isinstance(descriptor, Mapping) else descriptor
    return tuple((str(k), str(v)) for k, v in items)


# -- token bucket -----------------------------------------------------------------------------

@dataclass(frozen=True)
class TokenBucketConfig:
    """Envoy's ``type.v3.TokenBucket``.

    Parameters
    ----------
    max_tokens : int
        Bucket size (the burst), > 0. The bucket starts full.
    tokens_per_fill : int, optional
        Tokens added per ``fill_interval`` (Envoy's default 1), > 0.
    fill_interval : float, optional
        Seconds, > 0. Envoy keeps whole milliseconds.
    """

    max_tokens: int
    tokens_per_fill: int = 1
    fill_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.max_tokens <= 0 or self.tokens_per_fill <= 0:
            raise ValueError("max_tokens and tokens_per_fill must be > 0")
        if not self.fill_interval > 0:
            raise ValueError("fill_interval must be > 0 seconds")

    @property
    def fill_rate(self) -> float:
        """Refill rate in tokens per second."""
        return self.tokens_per_fill / self.fill_interval

    @classmethod
    def from_envoy(cls, block: Mapping[str, Any]) -> TokenBucketConfig:
        """Build from Envoy's field names; ``fill_interval`` as ``"1s"``, ``"500ms"`` or seconds."""
        unknown = set(block) - {"max_tokens", "tokens_per_fill", "fill_interval"}
        if unknown:
            raise ValueError(f"token_bucket fields not modelled: {sorted(unknown)}")
        if "max_tokens" not in block or "fill_interval" not in block:
            raise ValueError("token_bucket needs max_tokens and fill_interval")
        return cls(int(block["max_tokens"]), int(block.get("tokens_per_fill", 1)),
                   parse_duration(block["fill_interval"]))


class TokenBucket:
    """A token bucket refilled continuously, as Envoy 1.40's local rate limiters are.

    ``tokens = min(max_tokens, tokens + elapsed × tokens_per_fill / fill_interval)``; it starts
    full and each admission takes one whole token (reference §0 item 10 and §5.1 [exp]; Envoy's
    ``AtomicTokenBucket``, used since ``no_timer_based_rate_limit_token_bucket`` became the
    default, admits when at least one token is there). Fractions of a token accumulate, so no
    refill is lost between requests.

    Parameters
    ----------
    config : TokenBucketConfig
    start_time : float, optional
        Seconds; the bucket is full at that time.
    """

    __slots__ = ("_last", "_tokens", "config")

    def __init__(self, config: TokenBucketConfig, start_time: float = 0.0):
        self.config = config
        self._tokens = float(config.max_tokens)
        self._last = start_time

    def tokens(self, now: float) -> float:
        """Tokens in the bucket at ``now`` (seconds), fractions included."""
        self._refill(now)
        return self._tokens

    def try_acquire(self, now: float) -> bool:
        """Take one token at ``now`` (seconds) if there is one; False leaves the bucket as is."""
        self._refill(now)
        if self._tokens < 1.0 - _EPS:
            return False
        self._tokens = max(0.0, self._tokens - 1.0)
        return True

    def _refill(self, now: float) -> None:
        if now < self._last - _EPS:
            raise ValueError(f"time went backwards: {now} s after {self._last} s")
        if now > self._last:
            cfg = self.config
            self._tokens = min(float(cfg.max_tokens),
                               self._tokens + (now - self._last) * cfg.fill_rate)
            self._last = now


# -- HTTP local rate limit --------------------------------------------------------------------

@dataclass(frozen=True)
class LocalDescriptor:
    """One entry of ``descriptors[]``: the entries a request descriptor must equal, in order,
    and the bucket of that descriptor (its ``fill_interval`` a multiple of the filter's)."""

    entries: Entries
    token_bucket: TokenBucketConfig


@dataclass(frozen=True)
class LocalRateLimitConfig:
    """Envoy's ``envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`` (§5.1).

    Percentages are floats 0-100 and default to 0 as in Envoy, so a filter enforces nothing
    unless both ``filter_enabled`` and ``filter_enforced`` are set. ``token_bucket`` is the
    default bucket, used when no descriptor matches (and, with
    ``always_consume_default_token_bucket``, Envoy's default true, also when one does).
    ``status`` below 400 becomes 429, as in Envoy.
    """

    token_bucket: TokenBucketConfig
    stat_prefix: str = "http_local_rate_limiter"
    descriptors: tuple[LocalDescriptor, ...] = ()
    filter_enabled: float = 0.0
    filter_enforced: float = 0.0
    status: int = 429
    always_consume_default_token_bucket: bool = True

    def __post_init__(self) -> None:
        if self.status < 400:
            object.__setattr__(self, "status", 429)
        for name in ("filter_enabled", "filter_enforced"):
            if not 0 <= getattr(self, name) <= 100:
                raise ConfigError((name,), f"{name} must be a percentage in [0, 100]")
        base_ms = round(self.token_bucket.fill_interval * 1000)
        if base_ms < _MIN_FILL_INTERVAL * 1000:
            raise ConfigError(("token_bucket", "fill_interval"),
                              "local rate limit token bucket fill_interval must be >= 50ms")
        seen: set[Entries] = set()
        for i, d in enumerate(self.descriptors):
            if d.entries in seen:
                raise ConfigError(("descriptors", i, "entries"), "duplicate descriptor in the "
                                  f"local rate limit: {_text(d.entries)}")
            seen.add(d.entries)
            # LocalRateLimiterImpl checks this on whole milliseconds.
            ms = round(d.token_bucket.fill_interval * 1000)
            if ms % base_ms:
                raise ConfigError(("descriptors", i, "token_bucket", "fill_interval"),
                                  f"fill_interval ({ms} ms) must be a multiple of the filter's "
                                  f"token_bucket.fill_interval ({base_ms} ms)")

    @classmethod
    def from_envoy(cls, typed_config: Mapping[str, Any]) -> LocalRateLimitConfig:
        """Build from the filter's ``typed_config`` with Envoy's field names.

        ``filter_enabled`` / ``filter_enforced`` take Envoy's
        ``{default_value: {numerator, denominator}}`` (denominator ``HUNDRED`` by default) or a
        bare percentage. ``status`` takes ``{code: 429}`` or an int. Each descriptor is
        ``{entries: [{key, value}], token_bucket: {...}}``.
        """
        known = {"stat_prefix", "token_bucket", "descriptors", "filter_enabled",
                 "filter_enforced", "status", "always_consume_default_token_bucket"}
        unknown = set(typed_config) - known
        if unknown:
            raise ValueError(f"local_ratelimit fields not modelled: {sorted(unknown)}")
        if "token_bucket" not in typed_config:
            raise ValueError("local_ratelimit needs a token_bucket")
        status = typed_config.get("status", 429)
        descriptors = tuple(
            LocalDescriptor(tuple((e["key"], e["value"]) for e in d["entries"]),
                            TokenBucketConfig.from_envoy(d["token_bucket"]))
            for d in typed_config.get("descriptors", ()))
        return cls(
            token_bucket=TokenBucketConfig.from_envoy(typed_config["token_bucket"]),
            stat_prefix=typed_config.get("stat_prefix", cls.stat_prefix),
            descriptors=descriptors,
            filter_enabled=_fractional_percent(typed_config.get("filter_enabled")),
            filter_enforced=_fractional_percent(typed_config.get("filter_enforced")),
            status=int(status["code"] if isinstance(status, Mapping) else status),
            always_consume_default_token_bucket=bool(
                typed_config.get("always_consume_default_token_bucket", True)),
        )


def _fractional_percent(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    fraction = value.get("default_value", value)
    denominator = _DENOMINATORS[fraction.get("denominator", "HUNDRED")]
    return 100.0 * fraction.get("numerator", 0) / denominator


class LocalRateLimit:
    """The HTTP local rate limit of one proxy instance (one pod's sidecar or gateway).

    Parameters
    ----------
    config : LocalRateLimitConfig
    uniform : callable, optional
        ``uniform() -> float`` in [0, 1), drawn for ``filter_enabled`` / ``filter_enforced``
        when they are strictly between 0 and 100. Required only then.
    start_time : float, optional
        Seconds; every bucket is full at that time.

    Attributes
    ----------
    stats : dict of str to int
        ``<stat_prefix>.http_local_rate_limit.{enabled, enforced, rate_limited, ok}``, keyed
        by the last part. ``rate_limited`` counts requests that found no token, enforced or
        not; ``enforced`` those that got the 429.
    events : list of tuple
        ``(t, kind, bucket, detail)``: kind ``"limiting_started"`` when a bucket denies its
        first request after admitting, ``"limiting_stopped"`` when it admits again; bucket is
        ``"default"`` or the descriptor as ``key=value,...``; detail the stat prefix.
    """

    def __init__(self, config: LocalRateLimitConfig,
                 uniform: Callable[[], float] | None = None, start_time: float = 0.0):
        for pct in (config.filter_enabled, config.filter_enforced):
            if 0 < pct < 100 and uniform is None:
                raise ValueError("a fractional filter_enabled/filter_enforced needs uniform()")
        self.config = config
        self._uniform = uniform
        self._default = TokenBucket(config.token_bucket, start_time)
        self._buckets = {d.entries: TokenBucket(d.token_bucket, start_time)
                         for d in config.descriptors}
        self._limiting: dict[str, bool] = {}
        self.stats = {"enabled": 0, "enforced": 0, "rate_limited": 0, "ok": 0}
        self.events: list[tuple[float, str, str, str]] = []

    @property
    def reply(self) -> Decision:
        """The local reply to a denied request: ``status`` (429) and flag ``RL``; details
        ``local_rate_limited``; no ``x-envoy-ratelimited`` header in 1.40 (§5.1 [exp])."""
        return Decision(False, self.config.status, "RL")

    def check(self, now: float, descriptors: Iterable[DescriptorLike] = ()) -> bool:
        """Whether a request arriving at ``now`` (seconds) goes on; False means :attr:`reply`.

        Follows the filter's ``decodeHeaders``: not enabled → pass, counting nothing; enabled →
        ``enabled``++ and the buckets are asked; a token → ``ok``++; none → ``rate_limited``++,
        and then, if enforced, ``enforced``++ and the request is denied, else it passes (shadow
        mode: the token check still happened).

        Parameters
        ----------
        now : float
            Seconds.
        descriptors : iterable of descriptors
            The request's descriptors (from the route's ``rate_limits`` actions), each a
            mapping or a sequence of ``(key, value)`` pairs. Only exact full matches select a
            descriptor bucket.
        """
        if not self._roll(self.config.filter_enabled):
            return True
        self.stats["enabled"] += 1
        if self._request_allowed(now, [_entries(d) for d in descriptors]):
            self.stats["ok"] += 1
            return True
        self.stats["rate_limited"] += 1
        if not self._roll(self.config.filter_enforced):
            return True
        self.stats["enforced"] += 1
        return False

    def _request_allowed(self, now: float, request: list[Entries]) -> bool:
        # LocalRateLimiterImpl::requestAllowed: every matched descriptor bucket is tried, the
        # lowest fill rate first, and the first one empty denies (tokens already taken from
        # the others stay taken). The default bucket is tried when nothing matched or when
        # always_consume_default_token_bucket (default true) is set. A descriptor the request
        # carries twice is consumed twice, as Envoy looks each one up separately.
        matched = sorted((e for e in request if e in self._buckets),
                         key=lambda e: self._buckets[e].config.fill_rate)
        for entries in matched:
            if not self._acquire(now, _text(entries),
                                 self._buckets[entries]):
                return False
        if not matched or self.config.always_consume_default_token_bucket:
            return self._acquire(now, "default", self._default)
        return True

    def _acquire(self, now: float, name: str, bucket: TokenBucket) -> bool:
        admitted = bucket.try_acquire(now)
        if self._limiting.get(name, False) == admitted:  # state changed
            self._limiting[name] = not admitted
            kind = "limiting_stopped" if admitted else "limiting_started"
            self.events.append((now, kind, name, self.config.stat_prefix))
        return admitted

    def _roll(self, percent: float) -> bool:
        # Envoy's featureEnabled on a FractionalPercent: the share of requests it applies to.
        if percent >= 100:
            return True
        if percent <= 0:
            return False
        return self._uniform() * 100 < percent  # type: ignore[misc]


# -- network (L4) local rate limit ------------------------------------------------------------

class NetworkLocalRateLimit:
    """``envoy.filters.network.local_ratelimit``: one token per new downstream connection (§5.3).

    With no token the connection is closed at once, with no HTTP response (the engine turns
    that into a connection failure at the client). Listeners with the same ``share_key`` share
    one instance. The bucket is Envoy's common local-rate-limit bucket, so it refills
    continuously like :class:`TokenBucket` (inferred: the reference only checked that the
    config validates).

    Parameters
    ----------
    token_bucket : TokenBucketConfig
    stat_prefix : str, optional
    runtime_enabled : bool, optional
        Envoy's ``runtime_enabled`` (default true); False admits every connection.
    start_time : float, optional
        Seconds; the bucket is full at that time.

    Attributes
    ----------
    stats : dict of str to int
        ``local_rate_limit.<stat_prefix>.rate_limited`` as ``rate_limited``.
    """

    def __init__(self, token_bucket: TokenBucketConfig, stat_prefix: str = "tcp_local_rate_limit",
                 runtime_enabled: bool = True, start_time: float = 0.0):
        self.stat_prefix = stat_prefix
        self.runtime_enabled = runtime_enabled
        self._bucket = TokenBucket(token_bucket, start_time)
        self.stats = {"rate_limited": 0}

    def on_new_connection(self, now: float) -> bool:
        """Whether a connection accepted at ``now`` (seconds) may stay open."""
        if not self.runtime_enabled or self._bucket.try_acquire(now):
            return True
        self.stats["rate_limited"] += 1
        return False


# -- global rate limit: the service -----------------------------------------------------------

@dataclass(frozen=True)
class Quota:
    """``rate_limit: {unit, requests_per_unit}`` of the rate-limit service's config."""

    requests_per_unit: int
    unit: str

    def __post_init__(self) -> None:
        if self.unit not in UNIT_SECONDS:
            raise ValueError(f"unit must be one of {sorted(UNIT_SECONDS)}, got {self.unit!r}")
        if self.requests_per_unit < 0:
            raise ValueError("requests_per_unit must be >= 0")


@dataclass(frozen=True)
class _Node:
    quota: Quota | None
    children: Mapping[str, _Node] = field(default_factory=dict)


@dataclass(frozen=True)
class GlobalRateLimitConfig:
    """One domain of the ``envoyproxy/ratelimit`` service's YAML config.

    ``descriptors`` is the service's tree: at each level a node is found by ``key_value`` or,
    failing that, by ``key`` alone (a node without ``value`` matches any value, and since the
    counter's cache key holds the request's value, every value gets its own counter: a quota
    per client). Build it with :meth:`from_config`.
    """

    domain: str
    descriptors: Mapping[str, _Node]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GlobalRateLimitConfig:
        """Build from ``{domain, descriptors: [{key, value?, rate_limit?: {unit,
        requests_per_unit}, descriptors?: [...]}]}``; units are case-insensitive."""
        return cls(str(config["domain"]), _tree(config.get("descriptors", ()), ("descriptors",)))

    def quota(self, entries: Entries) -> Quota | None:
        """The quota of a request descriptor, or None (no limit applies).

        Follows ``config.GetLimit``: walk the tree one entry at a time; the quota counts only
        if the node reached by the *last* entry has one; a missing level means no limit.
        """
        level, found = self.descriptors, None
        for i, (key, value) in enumerate(entries):
            node = level.get(f"{key}_{value}") or level.get(key)
            if node is None:
                return None
            if i == len(entries) - 1:
                found = node.quota
            level = node.children
        return found


def _tree(items: Iterable[Mapping[str, Any]],
          where: tuple[str | int, ...]) -> dict[str, _Node]:
    out: dict[str, _Node] = {}
    for i, item in enumerate(items):
        unknown = set(item) - {"key", "value", "rate_limit", "descriptors"}
        if unknown:
            raise ConfigError((*where, i), f"fields not modelled: {sorted(unknown)}")
        name = f"{item['key']}_{item['value']}" if item.get("value") else str(item["key"])
        if name in out:
            raise ConfigError((*where, i), f"duplicate descriptor {name!r} (the rate-limit "
                              "service refuses a config with two alike)")
        rl = item.get("rate_limit")
        quota = (Quota(int(rl["requests_per_unit"]), str(rl["unit"]).lower())
                 if rl is not None else None)
        out[name] = _Node(quota, _tree(item.get("descriptors", ()), (*where, i, "descriptors")))
    return out


class GlobalRateLimitService:
    """The shared rate-limit service (``envoyproxy/ratelimit``) counting in fixed windows.

    Each request descriptor with a quota has one counter per window, the window aligned to its
    unit: ``floor(unix_seconds / unit) × unit`` (``GenerateCacheKey``). Every call adds one hit
    to the counter of *every* descriptor that has a quota, before any verdict (the Redis
    pipeline ``INCRBY``s them all), so a request turned away by one descriptor still uses up
    the others. A descriptor is over the limit when its count after the hit exceeds
    ``requests_per_unit``; the answer is OVER_LIMIT if any descriptor is. Fixed windows mean
    a burst straddling a boundary gets up to twice the quota.

    The service's own latency, capacity and failures are the engine's; this object only
    counts. Its local over-limit cache (``LOCAL_CACHE_SIZE_IN_BYTES``, off by default),
    ``shadow_mode``, ``unlimited`` and wildcard values are not modelled.

    Parameters
    ----------
    config : GlobalRateLimitConfig
    epoch : float, optional
        Unix time (seconds) at simulated time 0, which sets where windows start. The default
        0 starts every window at a whole multiple of its unit in simulated time.
    near_limit_ratio : float, optional
        ``NEAR_LIMIT_RATIO`` (default 0.8) for the ``near_limit`` stat.

    Attributes
    ----------
    stats : dict of str to int
        The service's ``total_hits``, ``over_limit`` and ``near_limit``, summed over all rules
        of the domain (the service keeps them per rule).
    events : list of tuple
        ``(t, "over_limit", cache_key, unit)`` at the first over-limit hit of each counter;
        ``cache_key`` is the service's ``domain_key_value_..._windowstart``.
    """

    def __init__(self, config: GlobalRateLimitConfig, epoch: float = 0.0,
                 near_limit_ratio: float = 0.8):
        self.config = config
        self.epoch = epoch
        self.near_limit_ratio = near_limit_ratio
        # One counter per descriptor: (window start, hits). Time only moves forward, so an
        # old window never comes back and is simply replaced, as its Redis key expires.
        self._counters: dict[Entries, tuple[int, int]] = {}
        self._last = -math.inf
        self.stats = {"total_hits": 0, "over_limit": 0, "near_limit": 0}
        self.events: list[tuple[float, str, str, str]] = []

    def hits(self, now: float, descriptor: DescriptorLike) -> int:
        """Hits counted so far in the window of ``now`` (seconds) for one descriptor."""
        entries = _entries(descriptor)
        quota = self.config.quota(entries)
        if quota is None:
            return 0
        start, count = self._counters.get(entries, (None, 0))
        return count if start == self._window(now, quota) else 0

    def should_rate_limit(self, now: float,
                          descriptors: Iterable[DescriptorLike]) -> Literal["OK", "OVER_LIMIT"]:
        """Answer one ``ShouldRateLimit`` call received at ``now`` (seconds).

        Parameters
        ----------
        now : float
            When the service handles the call, seconds.
        descriptors : iterable of descriptors
            All the request's descriptors (one call carries them all), each a mapping or a
            sequence of ``(key, value)`` pairs.

        Returns
        -------
        str
            ``"OVER_LIMIT"`` if any descriptor is over its quota, else ``"OK"``.
        """
        if now < self._last - _EPS:
            raise ValueError(f"time went backwards: {now} s after {self._last} s")
        self._last = max(self._last, now)
        over = False
        for descriptor in descriptors:
            entries = _entries(descriptor)
            quota = self.config.quota(entries)
            if quota is None:
                continue
            start = self._window(now, quota)
            last_start, count = self._counters.get(entries, (start, 0))
            count = count + 1 if last_start == start else 1
            self._counters[entries] = (start, count)
            self.stats["total_hits"] += 1
            limit = quota.requests_per_unit
            if count > limit:
                over = True
                self.stats["over_limit"] += 1
                if count == limit + 1:
                    key = "_".join([self.config.domain, *(f"{k}_{v}" for k, v in entries),
                                    str(start)])
                    self.events.append((now, "over_limit", key, quota.unit))
            elif count > math.floor(limit * self.near_limit_ratio):
                self.stats["near_limit"] += 1
        return "OVER_LIMIT" if over else "OK"

    def _window(self, now: float, quota: Quota) -> int:
        # The service truncates to whole unix seconds, then to the unit (cache_key.go).
        divider = UNIT_SECONDS[quota.unit]
        return (math.floor(self.epoch + now + _EPS) // divider) * divider


# -- global rate limit: the filter ------------------------------------------------------------

@dataclass(frozen=True)
class GlobalRateLimitFilter:
    """Envoy's ``envoy.filters.http.ratelimit`` (§5.2) and what it does with an answer.

    Parameters
    ----------
    domain : str
    timeout : float, optional
        Seconds (Envoy's default 20 ms). A call slower than this is an error.
    failure_mode_deny : bool, optional
        False (Envoy's default): an error or timeout lets the request through. True: 500
        ``RLSE``, no upstream attempt.
    rate_limited_status : int, optional
        Status of an over-limit reply (429; below 400 becomes 429).
    status_on_error : int, optional
        Status when ``failure_mode_deny`` denies (500).
    disable_x_envoy_ratelimited_header : bool, optional
        Envoy adds ``x-envoy-ratelimited`` to an over-limit reply unless this is set; that
        header is what a caller's ``envoy-ratelimited`` retry reacts to.

    Notes
    -----
    Envoy makes no call when the route produces no descriptors; otherwise the request waits
    ``min(service latency, timeout)`` (see :meth:`answer_after`).
    """

    domain: str
    timeout: float = 0.020
    failure_mode_deny: bool = False
    rate_limited_status: int = 429
    status_on_error: int = 500
    disable_x_envoy_ratelimited_header: bool = False

    def __post_init__(self) -> None:
        if not self.timeout > 0:
            raise ValueError("timeout must be > 0 seconds")
        if self.rate_limited_status < 400:
            object.__setattr__(self, "rate_limited_status", 429)

    @property
    def ratelimited_header(self) -> bool:
        """Whether an over-limit reply carries ``x-envoy-ratelimited``."""
        return not self.disable_x_envoy_ratelimited_header

    def answer_after(self, latency: float, answer: ServiceAnswer) -> tuple[float, ServiceAnswer]:
        """The wait (seconds) and the answer the filter acts on, for a service call that would
        take ``latency`` seconds: past ``timeout`` the call is cut off and is a TIMEOUT."""
        if latency > self.timeout:
            return self.timeout, "TIMEOUT"
        return latency, answer

    def decide(self, service_answer: ServiceAnswer) -> Decision:
        """What happens to the request (pure: see :meth:`stat_names` for the counters).

        ``OK`` → allowed. ``OVER_LIMIT`` → 429 ``RL``. ``ERROR`` / ``TIMEOUT`` (a gRPC deadline
        is an error to Envoy) → allowed, with no flag, unless ``failure_mode_deny``, then
        500 ``RLSE`` (details ``rate_limiter_error``).
        """
        if service_answer == "OK":
            return _ALLOW
        if service_answer == "OVER_LIMIT":
            return Decision(False, self.rate_limited_status, "RL")
        if service_answer not in ("ERROR", "TIMEOUT"):
            raise ValueError(f"unknown rate-limit service answer {service_answer!r}")
        if self.failure_mode_deny:
            return Decision(False, self.status_on_error, "RLSE")
        return _ALLOW

    def stat_names(self, service_answer: ServiceAnswer) -> tuple[str, ...]:
        """Counters under ``cluster.<routed cluster>.ratelimit.`` that the answer increments:
        ``ok``, ``over_limit``, or ``error`` plus ``failure_mode_allowed`` when let through."""
        if service_answer == "OK":
            return ("ok",)
        if service_answer == "OVER_LIMIT":
            return ("over_limit",)
        if self.failure_mode_deny:
            return ("error",)
        return ("error", "failure_mode_allowed")
