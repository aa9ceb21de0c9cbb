"""Request mirroring (shadowing): which shadow requests the router fires for a request.

Follows ``../shared/envoy-semantics.md`` §6.3 (mirroring). Where the reference is silent, the
behaviour was read from Envoy's ``source/common/router/router.cc`` (``Filter::decodeHeaders``,
``FilterUtility::shouldShadow``, ``Filter::onRequestComplete``, ``Filter::maybeDoShadowing``),
``source/common/router/shadow_writer_impl.cc`` (``shadowAppendedHost``) and from istiod's
``pilot/pkg/networking/core/route/route.go`` (``applyHTTPRouteDestination``, ``MirrorPercent``,
``MirrorPercentByPolicy``, ``TranslateRequestMirrorPolicy``). Field references:
https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/route/v3/route_components.proto
(``RouteAction.RequestMirrorPolicy``) and
https://istio.io/latest/docs/reference/config/networking/virtual-service/#HTTPRoute
(``mirror``, ``mirrorPercentage``, ``mirrors``).

The engine asks :meth:`Mirroring.shadows` once per downstream request and fires one shadow
request per destination returned. What it must honour:

- **Fire and forget.** The main response never waits for a shadow, and the shadow's response
  is thrown away ([exp] §6.3: a shadow upstream sleeping 2 s did not slow the main request).
- **Own resources.** A shadow goes through the shadow cluster's own connection pool, circuit
  breakers, load balancer and outlier detection, so it adds real load there; its overflow or
  failure has no effect on the main request.
- **Once per request.** Envoy picks the shadow policies in ``decodeHeaders`` and fires them when
  the whole request has been received (``onRequestComplete`` → ``maybeDoShadowing``), only if
  the first attempt is still alive: no shadow when the main cluster has no healthy host (the
  router answers 503 ``UH`` before it looks at the policies), none when the first attempt failed
  at once, none for ``CONNECT``. Retries of the main request are never mirrored again.
- **One draw per request.** The router tests every policy against the *same* random value, the
  stream's id (``shouldShadow(policy, runtime, callbacks_->streamId())``), so two mirrors at 10 %
  and 20 % (same denominator) shadow nested sets of requests, not independent ones.
  :meth:`Mirroring.shadows` draws once per request for the same reason.
- **Timeout, no retries.** The shadow request gets the main route's timeout
  (``setTimeout(timeout_.global_timeout_)``; none under Istio's default) and no retry policy.
- **Authority.** The shadow's ``Host``/``:authority`` gets ``-shadow`` appended to the host,
  before the port (:func:`shadow_authority`), unless ``disable_shadow_host_suffix_append``.
- **Where.** Istio puts the mirror on the route of the client-side proxy (the caller's sidecar
  outbound route, or a gateway's route). A request aborted by that proxy's fault filter never
  reaches the router, so it is not mirrored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from meshsim.policies.fault import DENOMINATORS, FractionalPercent, envoy_random_value

__all__ = ["ALWAYS", "Mirror", "MirrorPolicy", "Mirroring", "shadow_authority"]

#: 100 %, Envoy's share for a mirror policy without ``runtime_fraction`` (and istiod's
#: ``translateIntegerToFractionalPercent(100)`` for an Istio mirror without a percentage).
ALWAYS = FractionalPercent(100, DENOMINATORS["HUNDRED"])

_ENVOY_MIRROR_KEYS = frozenset({"cluster", "cluster_header", "runtime_fraction", "trace_sampled",
                                "disable_shadow_host_suffix_append", "host_rewrite_literal"})
_ISTIO_DESTINATION_KEYS = frozenset({"host", "subset", "port"})
_ISTIO_MIRROR_POLICY_KEYS = frozenset({"destination", "percentage"})


def shadow_authority(authority: str, disable_suffix: bool = False) -> str:
    """The ``Host``/``:authority`` of a shadow request (Envoy's ``shadowAppendedHost``).

    ``-shadow`` goes after the host and before the port: ``127.0.0.1:28080`` →
    ``127.0.0.1-shadow:28080``, ``reviews`` → ``reviews-shadow``, ``[::1]:80`` →
    ``[::1]-shadow:80`` (``HeaderUtility::getPortStart`` ignores colons inside ``[...]``).

    Parameters
    ----------
    authority : str
        The main request's authority (after any ``host_rewrite_literal``), not empty.
    disable_suffix : bool, optional
        ``disable_shadow_host_suffix_append``: return ``authority`` unchanged.
    """
    if not authority:
        raise ValueError("the authority of a request is never empty")
    if disable_suffix:
        return authority
    port_start = authority.rfind(":")
    v6_end = authority.rfind("]")
    if port_start == -1 or v6_end > port_start:
        return authority + "-shadow"
    return authority[:port_start] + "-shadow" + authority[port_start:]


@dataclass(frozen=True, slots=True)
class Mirror:
    """One mirror destination and the share of requests shadowed to it.

    Attributes
    ----------
    host : str
        Istio ``destination.host``, or the Envoy cluster name.
    percentage : FractionalPercent
        Share of requests mirrored.
    subset : str or None
        Istio ``destination.subset`` (its own cluster, so its own breakers).
    port : int or None
        Istio ``destination.port.number``.
    disable_shadow_host_suffix_append : bool
        Keep the authority as is (Envoy only; Istio never sets it).
    host_rewrite_literal : str or None
        Envoy's authority override for the shadow, before the suffix is appended.
    """

    host: str
    percentage: FractionalPercent = ALWAYS
    subset: str | None = None
    port: int | None = None
    disable_shadow_host_suffix_append: bool = False
    host_rewrite_literal: str | None = None

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("a mirror needs a destination host (or cluster)")

    def authority(self, main_authority: str) -> str:
        """The shadow request's authority for a main request sent with ``main_authority``."""
        return shadow_authority(self.host_rewrite_literal or main_authority,
                                self.disable_shadow_host_suffix_append)


@dataclass(frozen=True)
class MirrorPolicy:
    """The mirror policies of one route (``RouteAction.request_mirror_policies``), in order.

    Build it with :meth:`from_istio` or :meth:`from_envoy`; an empty policy mirrors nothing.
    """

    mirrors: tuple[Mirror, ...] = ()

    @classmethod
    def from_istio(cls, http_route: Mapping[str, Any]) -> MirrorPolicy:
        """Translate a VirtualService ``http[]`` entry's mirrors as istiod does.

        Reads ``mirror`` (``{host, subset?, port?: {number}}``) with ``mirrorPercentage``
        (``{value}``; absent: 100 %; 0: no mirror at all) or the deprecated integer
        ``mirrorPercent``, and the newer ``mirrors[] {destination, percentage}`` (absent
        percentage: 100 %; 0: that mirror is dropped). Other fields of the entry are ignored.

        Raises
        ------
        ValueError
            Naming the field: both ``mirror`` and ``mirrors`` (rejected by Istio's
            validation), a percentage outside [0, 100], a mirror without a destination host.
        """
        mirror, mirrors = http_route.get("mirror"), http_route.get("mirrors")
        if mirror is not None and mirrors:
            raise ValueError("http[]: a route cannot contain both mirror and mirrors")
        out: list[Mirror] = []
        if mirror is not None:
            percentage = _istio_mirror_percentage(http_route)
            if percentage.numerator > 0:
                out.append(_istio_destination(mirror, "mirror", percentage))
        for i, entry in enumerate(mirrors or ()):
            field = f"mirrors[{i}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{field}: expected a mapping, got {entry!r}")
            unknown = sorted(set(entry) - _ISTIO_MIRROR_POLICY_KEYS)
            if unknown:
                raise ValueError(f"{field}: unknown field(s) {unknown}")
            if entry.get("destination") is None:
                raise ValueError(f"{field}.destination is required")
            percentage = ALWAYS
            if entry.get("percentage") is not None:
                percentage = FractionalPercent.from_istio(entry["percentage"],
                                                          f"{field}.percentage")
            if percentage.numerator > 0:  # MirrorPercentByPolicy: 0 % means no mirror
                out.append(_istio_destination(entry["destination"], f"{field}.destination",
                                              percentage))
        return cls(tuple(out))

    @classmethod
    def from_envoy(cls, request_mirror_policies: Sequence[Mapping[str, Any]]) -> MirrorPolicy:
        """Build from ``RouteAction.request_mirror_policies`` with Envoy's field names.

        Each entry: ``{cluster, runtime_fraction: {default_value: {numerator, denominator}},
        disable_shadow_host_suffix_append, host_rewrite_literal, trace_sampled}``. Without
        ``runtime_fraction`` every request is mirrored. ``cluster_header`` is not modelled.
        """
        out = []
        for i, policy in enumerate(request_mirror_policies):
            field = f"request_mirror_policies[{i}]"
            if not isinstance(policy, Mapping):
                raise ValueError(f"{field}: expected a mapping, got {policy!r}")
            unknown = sorted(set(policy) - _ENVOY_MIRROR_KEYS)
            if unknown:
                raise ValueError(f"{field}: field(s) not modelled {unknown}")
            if "cluster_header" in policy:
                raise ValueError(f"{field}.cluster_header is not modelled: use cluster")
            if not policy.get("cluster"):
                raise ValueError(f"{field}.cluster is required")
            percentage = ALWAYS
            fraction = policy.get("runtime_fraction")
            if fraction is not None:
                unknown = sorted(set(fraction) - {"default_value", "runtime_key"})
                if unknown:
                    raise ValueError(f"{field}.runtime_fraction: unknown field(s) {unknown}")
                # The runtime key is never set in a simulation: the default value applies.
                percentage = FractionalPercent.from_envoy(
                    fraction.get("default_value"), f"{field}.runtime_fraction.default_value")
            out.append(Mirror(
                host=str(policy["cluster"]), percentage=percentage,
                disable_shadow_host_suffix_append=bool(
                    policy.get("disable_shadow_host_suffix_append", False)),
                host_rewrite_literal=policy.get("host_rewrite_literal") or None))
        return cls(tuple(out))


def _istio_mirror_percentage(http_route: Mapping[str, Any]) -> FractionalPercent:
    # istiod MirrorPercent: mirrorPercentage, else the deprecated mirrorPercent, else 100 %.
    if http_route.get("mirrorPercentage") is not None:
        return FractionalPercent.from_istio(http_route["mirrorPercentage"], "mirrorPercentage")
    if http_route.get("mirrorPercent") is not None:
        value = http_route["mirrorPercent"]
        value = value.get("value", 0) if isinstance(value, Mapping) else value
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
            raise ValueError(f"mirrorPercent must be an integer in [0, 100], got {value!r}")
        return FractionalPercent(value, DENOMINATORS["HUNDRED"])
    return ALWAYS


def _istio_destination(destination: Any, field: str, percentage: FractionalPercent) -> Mirror:
    if not isinstance(destination, Mapping):
        raise ValueError(f"{field}: expected {{host, subset?, port?}}, got {destination!r}")
    unknown = sorted(set(destination) - _ISTIO_DESTINATION_KEYS)
    if unknown:
        raise ValueError(f"{field}: unknown field(s) {unknown}")
    if not destination.get("host"):
        raise ValueError(f"{field}.host is required")
    port = destination.get("port")
    if isinstance(port, Mapping):
        port = port.get("number")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int)
                             or not 0 < port < 65536):
        raise ValueError(f"{field}.port.number must be a port in 1..65535, got {port!r}")
    return Mirror(host=str(destination["host"]), percentage=percentage,
                  subset=destination.get("subset") or None, port=port)


class Mirroring:
    """The router's choice of shadows for the requests of one route.

    Parameters
    ----------
    policy : MirrorPolicy
    uniform : callable, optional
        ``uniform() -> float`` in [0, 1): one draw per request, and only when some mirror's
        percentage is strictly between 0 % and 100 %. Required only then.

    Envoy keeps no count of its own here: shadows show only in the shadow cluster's
    ``upstream_rq_*`` stats.
    """

    __slots__ = ("_open", "_uniform", "policy")

    def __init__(self, policy: MirrorPolicy, uniform: Callable[[], float] | None = None):
        self._open = any(not m.percentage.certain for m in policy.mirrors)
        if self._open and uniform is None:
            raise ValueError("a fractional mirror percentage needs uniform()")
        self.policy = policy
        self._uniform = uniform

    def shadows(self) -> tuple[Mirror, ...]:
        """The mirrors to shadow one request to, in policy order (fire and forget).

        One draw stands for the stream id Envoy tests every policy against
        (``FilterUtility::shouldShadow``, ``random % denominator < numerator``).
        """
        if not self.policy.mirrors:
            return ()
        random_value = envoy_random_value(self._uniform()) if self._open else 0  # type: ignore[misc]
        return tuple(m for m in self.policy.mirrors
                     if (m.percentage.numerator > 0 if m.percentage.certain
                         else m.percentage.enabled(random_value)))
