"""Istio AuthorizationPolicy as enforced by the server-side (inbound) sidecar.

Follows ``../shared/envoy-semantics.md`` §8.3 (RBAC / AuthorizationPolicy) and §10.2 (a RBAC
denial has no response flag; ``UAEX`` for ext_authz). Where the reference is silent, the
behaviour was read from istio/api ``security/v1beta1/authorization_policy.proto`` (the
evaluation order, empty rules, string matching), from istiod's
``pilot/pkg/security/authz/builder/builder.go`` (``build``: one Envoy RBAC policy per rule,
named ``ns[<namespace>]-policy[<name>]-rule[<index>]``) and from Envoy's
``source/extensions/filters/common/rbac/engine_impl.cc`` (``checkPolicyMatch``: the policies
sit in a ``std::map``, so the first match in name order is reported) and ``utility.cc``
(``responseDetail``). Field reference:
https://istio.io/latest/docs/reference/config/security/authorization-policy/.

:meth:`Authorizer.check` decides one request, in Istio's order:

1. ``CUSTOM``: if a CUSTOM policy matches, the external authorizer is asked; its denial is
   403 with flag ``UAEX`` and details ``ext_authz_denied``.
2. ``DENY``: any matching rule denies: 403, body ``RBAC: access denied``, no flag (``-``),
   details ``rbac_access_denied_matched_policy[<policy>]``.
3. ``ALLOW``: with no ALLOW policy the request is allowed; otherwise it needs a matching rule,
   else 403 as above with ``rbac_access_denied_matched_policy[none]``.

``AUDIT`` policies never change the decision and are ignored. What the engine must honour: the
check runs in the callee's sidecar (inbound), after the request crossed the network and before
the application, so a denial costs the caller one round trip, takes no application worker and
makes no upstream attempt (``%UPSTREAM_REQUEST_ATTEMPT_COUNT%`` 0). Which policies apply to a
workload (namespace, ``selector``, the root namespace) is the engine's business: an
:class:`Authorizer` holds the policies of one workload.

Rules match a request when at least one ``from`` source, one ``to`` operation and every
``when`` condition match; a missing part matches anything. Modelled fields:
``from.source.{principals, notPrincipals, namespaces, notNamespaces}`` and
``to.operation.{methods, notMethods, paths, notPaths}``, with Istio's exact, prefix (``abc*``),
suffix (``*abc``) and presence (``*``: any non-empty value) matching. ``when`` and every other
field raise ValueError naming the field.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "RBAC_DENIED_BODY",
    "Action",
    "AuthorizationPolicy",
    "Authorizer",
    "Operation",
    "RbacDecision",
    "RequestAttributes",
    "Rule",
    "Source",
    "matches_value",
]

#: Body of Envoy's RBAC denial (``Filters::Common::RBAC`` local reply).
RBAC_DENIED_BODY = "RBAC: access denied"

_SOURCE_FIELDS = {"principals": "principals", "notPrincipals": "not_principals",
                  "namespaces": "namespaces", "notNamespaces": "not_namespaces"}
_OPERATION_FIELDS = {"methods": "methods", "notMethods": "not_methods", "paths": "paths",
                     "notPaths": "not_paths"}
_SPEC_KEYS = frozenset({"action", "rules", "selector", "provider"})
_RULE_KEYS = frozenset({"from", "to"})


class Action(enum.StrEnum):
    """``AuthorizationPolicy.action``."""

    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


def matches_value(pattern: str, value: str | None) -> bool:
    """Istio's string match of one rule value against one request attribute.

    ``"abc"`` exact, ``"abc*"`` prefix, ``"*abc"`` suffix, ``"*"`` presence (any non-empty
    value). A missing attribute (None or ``""``, e.g. no principal without mTLS) matches
    nothing, not even ``"*"``.
    """
    if not value:
        return False
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def _any(patterns: Sequence[str], value: str | None) -> bool:
    return any(matches_value(p, value) for p in patterns)


def _namespace_of(principal: str | None) -> str | None:
    # A SPIFFE identity "<trust domain>/ns/<namespace>/sa/<service account>".
    if not principal:
        return None
    parts = principal.split("/")
    for i in range(len(parts) - 1):
        if parts[i] == "ns" and parts[i + 1]:
            return parts[i + 1]
    return None


@dataclass(frozen=True, slots=True)
class RequestAttributes:
    """What the inbound sidecar knows of one request.

    Attributes
    ----------
    principal : str or None
        The peer identity from the client certificate,
        ``"<trust domain>/ns/<namespace>/sa/<service account>"`` (a ``spiffe://`` prefix is
        dropped). None without mTLS.
    namespace : str or None
        ``source.namespace``. Istio reads it from the principal, so it is derived from it when
        left None, and a namespace without a principal is refused.
    method : str
        HTTP method (``POST`` for every gRPC call).
    path : str
        ``:path``; the query string is ignored in matching, as Istio matches the URL path.
    """

    principal: str | None = None
    namespace: str | None = None
    method: str = "GET"
    path: str = "/"

    def __post_init__(self) -> None:
        principal = self.principal
        if principal and principal.startswith("spiffe://"):
            principal = principal[len("spiffe://"):]
            object.__setattr__(self, "principal", principal)
        derived = _namespace_of(principal)
        if self.namespace is None:
            object.__setattr__(self, "namespace", derived)
        elif not principal:
            raise ValueError("the source namespace comes from the peer certificate: "
                             "a request without a principal has none")
        elif derived is not None and derived != self.namespace:
            raise ValueError(f"namespace {self.namespace!r} does not match the principal "
                             f"{principal!r}")

    @property
    def url_path(self) -> str:
        """The path without its query string."""
        return self.path.split("?", 1)[0]


@dataclass(frozen=True, slots=True)
class Source:
    """``from[].source``: every listed field must match (AND); values in a field are OR."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()

    def matches(self, request: RequestAttributes) -> bool:
        """Whether the request comes from this source."""
        p, ns = request.principal, request.namespace
        return ((not self.principals or _any(self.principals, p))
                and not _any(self.not_principals, p)
                and (not self.namespaces or _any(self.namespaces, ns))
                and not _any(self.not_namespaces, ns))


@dataclass(frozen=True, slots=True)
class Operation:
    """``to[].operation``: every listed field must match (AND); values in a field are OR."""

    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()

    def matches(self, request: RequestAttributes) -> bool:
        """Whether the request performs this operation."""
        m, path = request.method, request.url_path
        return ((not self.methods or _any(self.methods, m))
                and not _any(self.not_methods, m)
                and (not self.paths or _any(self.paths, path))
                and not _any(self.not_paths, path))


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule: some source (or any, when ``sources`` is empty) and some operation."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()

    def matches(self, request: RequestAttributes) -> bool:
        """``from`` OR-ed, ``to`` OR-ed, the two AND-ed; ``Rule()`` (``{}``) matches all."""
        return ((not self.sources or any(s.matches(request) for s in self.sources))
                and (not self.operations or any(o.matches(request) for o in self.operations)))


@dataclass(frozen=True)
class AuthorizationPolicy:
    """One AuthorizationPolicy resource.

    Attributes
    ----------
    name, namespace : str
        ``metadata.name`` / ``metadata.namespace``: they name the Envoy policies.
    action : Action
        Default ALLOW.
    rules : tuple of Rule
        Empty: the policy matches nothing. So an ALLOW policy with no rules (``spec: {}``,
        "allow-nothing") denies every request of the workload, and a DENY one does nothing;
        ``rules: [{}]`` matches every request ("allow-all" or "deny-all").
    provider : str or None
        ``provider.name`` of a CUSTOM policy.
    selector : tuple of (str, str)
        ``selector.matchLabels`` as sorted pairs, kept for the engine (not evaluated here).
    """

    name: str
    namespace: str = "default"
    action: Action = Action.ALLOW
    rules: tuple[Rule, ...] = ()
    provider: str | None = None
    selector: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        if (self.provider is not None) != (self.action is Action.CUSTOM):
            raise ValueError(f"policy {self.namespace}/{self.name}: provider must be set for, "
                             "and only for, the CUSTOM action")

    def rule_name(self, index: int) -> str:
        """The Envoy RBAC policy istiod writes for rule ``index``."""
        return f"ns[{self.namespace}]-policy[{self.name}]-rule[{index}]"

    def matching_rules(self, request: RequestAttributes) -> list[str]:
        """Envoy policy names of the rules that match ``request``."""
        return [self.rule_name(i) for i, rule in enumerate(self.rules) if rule.matches(request)]

    @classmethod
    def from_istio(cls, resource: Mapping[str, Any], *, name: str | None = None,
                   namespace: str | None = None) -> AuthorizationPolicy:
        """Build from an AuthorizationPolicy resource (``metadata`` + ``spec``) or a bare spec.

        Parameters
        ----------
        resource : mapping
            ``{metadata: {name, namespace}, spec: {action, rules, selector, provider}}``, or
            just the ``spec`` (then ``name`` is required).
        name, namespace : str, optional
            Override or supply ``metadata.name`` / ``metadata.namespace`` (default
            ``"default"``).

        Raises
        ------
        ValueError
            Naming the field (``spec.rules[0].when``, ``spec.rules[1].from[0].source.ipBlocks``,
            ...) for anything not modelled or malformed.
        """
        wrapped = "metadata" in resource or "spec" in resource
        metadata = resource.get("metadata") or {}
        spec = (resource.get("spec") or {}) if wrapped else resource
        name = name or metadata.get("name")
        if not name:
            raise ValueError("metadata.name is required")
        namespace = namespace or metadata.get("namespace") or "default"
        _check_keys(spec, _SPEC_KEYS, "spec")
        action = spec.get("action", "ALLOW")
        if action not in Action.__members__:
            raise ValueError(f"spec.action must be one of {list(Action.__members__)}, "
                             f"got {action!r}")
        provider = spec.get("provider")
        if provider is not None:
            if not isinstance(provider, Mapping) or not provider.get("name"):
                raise ValueError("spec.provider.name is required")
            provider = str(provider["name"])
        selector = spec.get("selector") or {}
        _check_keys(selector, frozenset({"matchLabels"}), "spec.selector")
        rules = tuple(_rule(r, f"spec.rules[{i}]") for i, r in enumerate(spec.get("rules") or ()))
        labels = selector.get("matchLabels") or {}
        return cls(name=name, namespace=namespace, action=Action(action), rules=rules,
                   provider=provider, selector=tuple(sorted(labels.items())))


def _rule(block: Any, path: str) -> Rule:
    if block is None:
        raise ValueError(f"{path}: a rule cannot be null")
    _check_keys(block, _RULE_KEYS, path)
    sources = tuple(_part(f, "source", _SOURCE_FIELDS, Source, f"{path}.from[{i}]")
                    for i, f in enumerate(block.get("from") or ()))
    operations = tuple(_part(t, "operation", _OPERATION_FIELDS, Operation, f"{path}.to[{i}]")
                       for i, t in enumerate(block.get("to") or ()))
    return Rule(sources, operations)


def _part(block: Any, key: str, fields: Mapping[str, str], cls: type, path: str) -> Any:
    _check_keys(block, frozenset({key}), path)
    inner = block.get(key) or {}
    _check_keys(inner, frozenset(fields), f"{path}.{key}")
    values: dict[str, tuple[str, ...]] = {}
    for istio_name, attr in fields.items():
        items = inner.get(istio_name)
        if items is None:
            continue
        where = f"{path}.{key}.{istio_name}"
        if isinstance(items, str) or not all(isinstance(v, str) and v for v in items):
            raise ValueError(f"{where} must be a list of non-empty strings, got {items!r}")
        if not items:
            raise ValueError(f"{where} must not be empty when set")
        if "paths" in istio_name.lower() and any("{" in v for v in items):
            raise ValueError(f"{where}: path templates ({{*}}, {{**}}) are not modelled")
        values[attr] = tuple(items)
    return cls(**values)


def _check_keys(block: Any, known: frozenset[str], path: str) -> None:
    if not isinstance(block, Mapping):
        raise ValueError(f"{path}: expected a mapping, got {block!r}")
    unknown = sorted(set(block) - known)
    if unknown:
        fields = ", ".join(f"{path}.{k}" for k in unknown)
        raise ValueError(f"{fields}: not supported ({path} supports {sorted(known)})")


class RbacDecision(NamedTuple):
    """What the inbound authorization filters do with one request.

    ``status``, ``flags`` and ``details`` are None when the request is allowed; for a denial
    they are 403, ``"-"`` (RBAC) or ``"UAEX"`` (ext_authz), and ``%RESPONSE_CODE_DETAILS%``.
    """

    allowed: bool
    status: int | None
    flags: str | None
    details: str | None


_ALLOWED = RbacDecision(True, None, None, None)


class Authorizer:
    """The authorization filters of one workload's inbound sidecar.

    Parameters
    ----------
    policies : iterable of AuthorizationPolicy
        The policies that apply to the workload.
    ext_authz : callable, optional
        ``ext_authz(request) -> bool``: the CUSTOM provider's verdict (True allows). Required
        when a CUSTOM policy is given. Istio allows one provider per workload.

    Attributes
    ----------
    stats : dict of str to int
        ``rbac.allowed`` / ``rbac.denied`` (requests past, or stopped by, the DENY and ALLOW
        checks; Envoy counts them per RBAC filter, and Istio installs one filter per action,
        so Envoy's ``rbac.allowed`` can be up to twice this) and ``ext_authz.ok`` /
        ``ext_authz.denied`` (requests sent to the provider).
    """

    __slots__ = ("_allow", "_custom", "_deny", "_ext_authz", "stats")

    def __init__(self, policies: Iterable[AuthorizationPolicy],
                 ext_authz: Callable[[RequestAttributes], bool] | None = None):
        policies = list(policies)
        by_action = {a: [p for p in policies if p.action is a] for a in Action}
        self._custom = by_action[Action.CUSTOM]
        self._deny = by_action[Action.DENY]
        self._allow = by_action[Action.ALLOW]
        providers = {p.provider for p in self._custom}
        if len(providers) > 1:
            raise ValueError(f"only one CUSTOM provider per workload, got {sorted(providers)}")
        if self._custom and ext_authz is None:
            raise ValueError("a CUSTOM policy needs the ext_authz callable")
        self._ext_authz = ext_authz
        self.stats = {"rbac.allowed": 0, "rbac.denied": 0, "ext_authz.ok": 0,
                      "ext_authz.denied": 0}

    def check(self, request: RequestAttributes) -> RbacDecision:
        """Allow or deny ``request`` (CUSTOM, then DENY, then ALLOW)."""
        if any(p.matching_rules(request) for p in self._custom):
            if not self._ext_authz(request):  # type: ignore[misc]
                self.stats["ext_authz.denied"] += 1
                return RbacDecision(False, 403, "UAEX", "ext_authz_denied")
            self.stats["ext_authz.ok"] += 1
        denied_by = sorted(n for p in self._deny for n in p.matching_rules(request))
        if denied_by:
            # Envoy's engine walks its std::map of policies: the first match in name order.
            return self._deny_reply(denied_by[0])
        if self._allow and not any(p.matching_rules(request) for p in self._allow):
            return self._deny_reply("none")
        self.stats["rbac.allowed"] += 1
        return _ALLOWED

    def _deny_reply(self, policy: str) -> RbacDecision:
        self.stats["rbac.denied"] += 1
        # responseDetail: whitespace in the policy name becomes "_".
        detail = "".join("_" if c.isspace() else c for c in policy)
        return RbacDecision(False, 403, "-", f"rbac_access_denied_matched_policy[{detail}]")
