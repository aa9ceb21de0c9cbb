"""Kubernetes manifests that carry a scenario's Istio policies, ready to review and apply.

:func:`istio_manifests` turns a :class:`~meshsim.scenario.Scenario` into plain dicts
(``networking.istio.io/v1``): one ``DestinationRule`` and one ``VirtualService`` per host that has
a rule or a route in the scenario, a ``ServiceEntry`` per external service, and the ``Gateway``
resources and routes that bind the scenario's gateways. :func:`manifests_yaml` prints them as one
multi-document YAML stream; :func:`write_manifests` writes one file per kind into a directory,
all or nothing, for ``kubectl apply -f DIR``.

The policy blocks are copied field for field (Istio's camelCase names; durations as Istio writes
them, ``250ms``, ``10s``), so reading a manifest's ``trafficPolicy`` or ``http[]`` route back into a
scenario gives the same block. What the export assumes about the cluster:

- services are Kubernetes Services of the same name in ``namespace``, port 80;
  ``spec.host`` is ``<name>.<namespace>.svc.cluster.local``; their pods carry the label
  ``app: <name>``, which a ``Sidecar`` (``mesh.sidecars``) selects them by;
- an external service's name is its DNS host name, reached over TLS on port 443 (``ServiceEntry``
  port ``https``, ``MESH_EXTERNAL``, ``resolution: DNS``). The proxies then see TLS, not HTTP, for
  that traffic: its ``http`` routes (timeouts, retries) and HTTP-level pool limits are carried for
  review but act only where the mesh itself originates TLS, which is not exported. Give external
  services their real (dotted) host names: Istio reads a dot-less host in a ``VirtualService`` or
  ``DestinationRule`` as an in-cluster short name;
- the gateways are Istio's default deployments in ``istio-system`` (labels
  ``istio: ingressgateway`` / ``istio: egressgateway``, Services ``istio-ingressgateway`` /
  ``istio-egressgateway``). Their ``Gateway`` resources (``ingress-gateway``, ``egress-gateway``)
  live in ``namespace``; a gateway's own rules (``mesh.ingressGateway.destinationRules``) are
  ``DestinationRule`` objects with a ``workloadSelector``, which Istio applies only in the
  workload's namespace, so they go to ``istio-system``;
- clients that enter through the ingress gateway reach their entry service by its host name; an
  entry without a route in ``mesh.ingressGateway.virtualServices`` gets a plain route (Istio's
  default timeout and retries, as in the simulation);
- with an egress gateway, external hosts are routed through it with Istio's egress pattern for
  TLS traffic (SNI passthrough): ``mesh`` → ``istio-egressgateway`` → the external host.

Every resource is labelled ``app.kubernetes.io/managed-by: meshsim`` and annotated with the
scenario path it comes from (``meshsim/source: mesh.destinationRules.cart``).

Rate limits are not exported. Istio has no API for them: a local rate limit is an
``EnvoyFilter`` that patches the filter into a workload's listener (its ``typed_config`` is the
scenario's block as it is, plus the ``rate_limits`` action that gives requests their
``client`` descriptor), and a global one needs the rate-limit service deployed with its config
and ``EnvoyFilter`` patches for the filter and the route's actions. Those depend on how the
cluster identifies clients and runs the service, which a scenario does not say, and Istio's
typed models cannot check an ``EnvoyFilter``'s patch. :func:`not_exported` lists the scenario
paths left out; the CLI prints them and the export directory's ``README.txt`` names them.
"""

from __future__ import annotations

import copy
import hashlib
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ._base import Model
from .errors import Issue, ScenarioError
from .istio import DestinationRule, HTTPRoute, HTTPRouteDestination, Subset, VirtualService
from .output import atomic_dir
from .scenario import Scenario, SidecarResource
from .units import parse_duration

__all__ = [
    "GATEWAY_NAMESPACE",
    "KIND_FILES",
    "dns_label",
    "istio_block",
    "istio_duration",
    "istio_manifests",
    "manifests_yaml",
    "not_exported",
    "write_manifests",
]

API_VERSION = "networking.istio.io/v1"
#: Namespace of Istio's gateway deployments (and of the rules that apply to them only).
GATEWAY_NAMESPACE = "istio-system"
#: Files of an export directory, by kind, in the order they are written and printed.
KIND_FILES = {
    "Gateway": "gateways.yaml",
    "ServiceEntry": "serviceentries.yaml",
    "DestinationRule": "destinationrules.yaml",
    "VirtualService": "virtualservices.yaml",
    "Sidecar": "sidecars.yaml",
}
#: The file an export directory always holds; it marks the directory as meshsim's.
README = "README.txt"
SOURCE_ANNOTATION = "meshsim/source"
MANAGED_BY = {"app.kubernetes.io/managed-by": "meshsim"}

#: Why some settings are not exported (README.txt and the CLI say it before listing them).
NOT_EXPORTED_NOTE = ("Not exported: settings Istio has no API for. Rate limits, adaptive "
                     "concurrency and admission\ncontrol need EnvoyFilter resources (and, for a "
                     "global limit, a rate-limit service); app-level\nbreakers live in the "
                     "application's code. Write them from these blocks:")
_SNAKE = {"localRateLimit": "local_rate_limit", "globalRateLimit": "global_rate_limit"}
_GATEWAY_NAMES = {"ingress": "ingress-gateway", "egress": "egress-gateway"}
_GATEWAY_LABELS = {"ingress": {"istio": "ingressgateway"}, "egress": {"istio": "egressgateway"}}
_GATEWAY_HOSTS = {kind: f"istio-{kind}gateway.{GATEWAY_NAMESPACE}.svc.cluster.local"
                  for kind in ("ingress", "egress")}
_GATEWAY_FIELD = {"ingress": "ingressGateway", "egress": "egressGateway"}
_EXTERNAL_PORT = 443
_HTTP_SERVER = {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": ["*"]}

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def istio_manifests(scenario: Scenario, namespace: str = "default") -> list[dict[str, Any]]:
    """The Istio resources that carry ``scenario``'s policies, as plain dicts.

    Parameters
    ----------
    scenario : Scenario
    namespace : str
        Kubernetes namespace of the services (and of the exported resources, except the rules
        of a gateway, which go to ``istio-system``).

    Returns
    -------
    list of dict
        ``Gateway``, ``ServiceEntry``, ``DestinationRule`` and ``VirtualService`` objects, in that
        order, each as ``{"apiVersion", "kind", "metadata", "spec"}``.

    Raises
    ------
    ScenarioError
        If a host or the namespace cannot be a Kubernetes or DNS name (source ``<scenario>``;
        the issues carry the path of the field at fault).
    """
    return _Exporter(scenario, namespace).build()


def not_exported(scenario: Scenario) -> list[str]:
    """The scenario's settings that no exported resource carries (Istio has no API for them):
    rate limits (see the module docstring), adaptive concurrency and admission control (also
    ``EnvoyFilter`` territory) and app-level breakers (application code), as paths in the
    scenario file (``mesh.ingressGateway.localRateLimit``)."""
    mesh = scenario.mesh
    paths = []
    for field in ("ingressGateway", "egressGateway"):
        gw = getattr(mesh, f"{field[:-7]}_gateway")
        for name in ("localRateLimit", "globalRateLimit"):
            if gw is not None and getattr(gw, _SNAKE[name]) is not None:
                paths.append(f"mesh.{field}.{name}")
    for name, sidecar in mesh.sidecars.items():
        if sidecar.local_rate_limit is not None:
            paths.append(f"mesh.sidecars.{name}.localRateLimit")
        if sidecar.adaptive_concurrency is not None:
            paths.append(f"mesh.sidecars.{name}.adaptiveConcurrency")
        paths += [f"mesh.sidecars.{name}.admissionControl.{dest}"
                  for dest in sidecar.admission_control]
    if mesh.rate_limit_service is not None:
        paths.append("mesh.rateLimitService")
    paths += [f"services.{name}.breakers.{dest}" for name, svc in scenario.services.items()
              for dest in svc.breakers]
    for field in ("ingressGateway", "egressGateway"):
        gw = getattr(mesh, f"{field[:-7]}_gateway")
        if gw is not None:
            paths += [f"mesh.{field}.breakers.{dest}" for dest in gw.breakers]
    return paths


def manifests_yaml(manifests: Iterable[dict[str, Any]]) -> str:
    """The manifests as one multi-document YAML stream (``---`` between documents)."""
    return "".join(f"---\n{_dump(m)}" for m in manifests)


def write_manifests(manifests: list[dict[str, Any]], out: str | os.PathLike,
                    source: str = "", skipped: Iterable[str] = ()) -> Path:
    """Write the manifests into directory ``out``, one YAML file per kind, all or nothing.

    The files are those of :data:`KIND_FILES` that have resources, plus ``README.txt`` (what was
    exported from where, how to apply it, and the ``skipped`` scenario paths, as
    :func:`not_exported` lists them). ``kubectl apply -f DIR`` reads only the YAML.

    Raises
    ------
    meshsim.output.OutputError
        If ``out`` exists with foreign content or cannot be written.
    """
    by_kind: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KIND_FILES}
    for m in manifests:
        by_kind[m["kind"]].append(m)

    def fill(tmp: Path) -> None:
        written = []
        for kind, items in by_kind.items():
            if items:
                (tmp / KIND_FILES[kind]).write_text(manifests_yaml(items), encoding="utf-8")
                written.append(f"  {KIND_FILES[kind]:<24} {len(items)} {kind}")
        (tmp / README).write_text(_readme(source, written, list(skipped)), encoding="utf-8")

    return atomic_dir(out, fill, marker=README)


def istio_duration(seconds: float) -> str:
    """Format float seconds as an Istio (Go) duration: ``10s``, ``250ms``, ``1.5s`` -> ``1500ms``.

    Istio keeps nanoseconds. The first whole-unit form (``s``, ``ms``, ``us``) that parses back
    to the very same float is used, else the shorter of decimal seconds and ``ns`` that does, so
    a re-read block equals the scenario's; if none does, the value is rounded to the nanosecond.
    """
    ns = round(seconds * 1e9)
    whole, frac = divmod(ns, 10**9)
    units = [f"{ns // size}{unit}" for unit, size in (("s", 10**9), ("ms", 10**6), ("us", 10**3))
             if ns % size == 0]
    others = sorted([f"{whole}.{frac:09d}".rstrip("0").rstrip(".") + "s", f"{ns}ns"], key=len)
    candidates = units + others
    for text in candidates:
        if parse_duration(text) == seconds:
            return text
    return candidates[0]


# --------------------------------------------------------------------------------------------
# Building the resources
# --------------------------------------------------------------------------------------------


class _Exporter:
    def __init__(self, scenario: Scenario, namespace: str):
        self.sc = scenario
        self.ns = namespace
        self.externals = set(scenario.external_services)
        self._names: dict[tuple[str, str], set[str]] = {}
        self.http_via_egress: set[str] = set()
        self.out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KIND_FILES}

    def build(self) -> list[dict[str, Any]]:
        mesh = self.sc.mesh
        egress = mesh.egress_gateway
        ingress_routes = self._ingress_routes()
        self._check_names(ingress_routes)
        for host in self.sc.external_services:
            self._service_entry(host)
        for host, rule in mesh.destination_rules.items():
            self._destination_rule(host, rule, None)
        for kind, gw in (("ingress", mesh.ingress_gateway), ("egress", egress)):
            for host, rule in (gw.destination_rules.items() if gw is not None else ()):
                self._destination_rule(host, rule, kind)
        # External hosts that get HTTP routes through the egress gateway: those with a route of
        # their own at the sidecars or at the gateway (the other hop then gets a plain route).
        self.http_via_egress = set() if egress is None else self.externals & (
            set(mesh.virtual_services) | set(egress.virtual_services))
        hosts = list(mesh.virtual_services)
        if egress is not None:
            hosts += [h for h in self.sc.external_services if h not in hosts]
        for host in hosts:
            self._mesh_route(host, mesh.virtual_services.get(host), egress is not None)
        if ingress_routes:
            self._gateway("ingress", tls_hosts=[], http=True)
            for host, source in ingress_routes.items():
                self._gateway_route("ingress", host, source)
        if egress is not None:
            routes = dict.fromkeys([*egress.virtual_services, *self.sc.external_services])
            if routes:
                http = bool(self.http_via_egress or set(egress.virtual_services) - self.externals)
                self._gateway("egress", tls_hosts=list(self.sc.external_services), http=http)
            for host in routes:
                source = (f"mesh.egressGateway.virtualServices.{host}"
                          if host in egress.virtual_services else "mesh.egressGateway")
                self._gateway_route("egress", host, source)
        for name, sidecar in mesh.sidecars.items():
            self._sidecar(name, sidecar)
        return [m for kind in KIND_FILES for m in self.out[kind]]

    # ---- resources ----------------------------------------------------------------------------

    def _sidecar(self, service: str, sidecar: SidecarResource) -> None:
        if sidecar.inbound_connection_pool is None:
            return
        spec = {"workloadSelector": {"labels": {"app": service}},
                "inboundConnectionPool": istio_block(sidecar.inbound_connection_pool)}
        self._add("Sidecar", service, self.ns, f"mesh.sidecars.{service}", spec)

    def _service_entry(self, host: str) -> None:
        spec = {
            "hosts": [host],
            "location": "MESH_EXTERNAL",
            "ports": [{"number": _EXTERNAL_PORT, "name": "https", "protocol": "HTTPS"}],
            "resolution": "DNS",
        }
        self._add("ServiceEntry", host, self.ns, f"externalServices.{host}", spec)

    def _destination_rule(self, host: str, rule: DestinationRule, gateway: str | None) -> None:
        spec: dict[str, Any] = {"host": self._fqdn(host)}
        if rule.traffic_policy is not None:
            spec["trafficPolicy"] = istio_block(rule.traffic_policy)
        if rule.subsets:
            spec["subsets"] = [_subset(s) for s in rule.subsets]
        if gateway is None:
            name, namespace, source = host, self.ns, f"mesh.destinationRules.{host}"
        else:
            spec["workloadSelector"] = {"matchLabels": dict(_GATEWAY_LABELS[gateway])}
            name = f"{host}-{gateway}gateway"
            namespace = GATEWAY_NAMESPACE
            source = f"mesh.{_GATEWAY_FIELD[gateway]}.destinationRules.{host}"
        self._add("DestinationRule", name, namespace, source, spec)

    def _mesh_route(self, host: str, vs: VirtualService | None, egress: bool) -> None:
        """The sidecars' route for ``host``: the scenario's routes, and for an external host
        with an egress gateway, the hop to the gateway."""
        via_gateway = egress and host in self.externals
        dest = _destination(_GATEWAY_HOSTS["egress"], 80) if via_gateway else self._dest(host)
        spec: dict[str, Any] = {"hosts": [host]}
        if vs is not None:
            spec["http"] = [_http_route(r, dest) for r in vs.http]
        elif host in self.http_via_egress:
            spec["http"] = [{"route": [dest]}]
        if via_gateway:
            spec["tls"] = [_tls_route(host, None, _GATEWAY_HOSTS["egress"])]
        source = f"mesh.virtualServices.{host}" if vs is not None else "mesh.egressGateway"
        self._add("VirtualService", host, self.ns, source, spec)

    def _gateway(self, kind: str, tls_hosts: list[str], http: bool) -> None:
        servers = [copy.deepcopy(_HTTP_SERVER)] if http else []
        if tls_hosts:
            servers.append({"port": {"number": _EXTERNAL_PORT, "name": "tls", "protocol": "TLS"},
                            "hosts": list(tls_hosts), "tls": {"mode": "PASSTHROUGH"}})
        spec = {"selector": dict(_GATEWAY_LABELS[kind]), "servers": servers}
        self._add("Gateway", _GATEWAY_NAMES[kind], self.ns, f"mesh.{_GATEWAY_FIELD[kind]}", spec)

    def _gateway_route(self, kind: str, host: str, source: str) -> None:
        """A route bound to gateway ``kind``: the scenario's routes for ``host`` there, or a
        plain one (Istio's default timeout and retries); TLS passthrough for external hosts at
        the egress gateway."""
        vs = getattr(self.sc.mesh, f"{kind}_gateway").virtual_services.get(host)
        gw_name = _GATEWAY_NAMES[kind]
        tls = kind == "egress" and host in self.externals
        spec: dict[str, Any] = {"hosts": [host], "gateways": [gw_name]}
        dest = self._dest(host)
        if vs is not None:
            spec["http"] = [_http_route(r, dest) for r in vs.http]
        elif not tls or host in self.http_via_egress:
            spec["http"] = [{"route": [dest]}]
        if tls:
            spec["tls"] = [_tls_route(host, gw_name, host)]
        self._add("VirtualService", f"{host}-{kind}", self.ns, source, spec)

    def _ingress_routes(self) -> dict[str, str]:
        """Hosts the ingress gateway routes to, with the scenario path each route comes from."""
        gw = self.sc.mesh.ingress_gateway
        routes = {host: f"mesh.ingressGateway.virtualServices.{host}"
                  for host in gw.virtual_services}
        for i, client in enumerate(self.sc.workload):
            if client.via_ingress:
                routes.setdefault(client.entry, f"workload[{i}].entry")
        return routes

    # ---- names and hosts ----------------------------------------------------------------------

    def _fqdn(self, host: str) -> str:
        return host if host in self.externals else f"{host}.{self.ns}.svc.cluster.local"

    def _dest(self, host: str) -> dict[str, Any]:
        if host in self.externals:
            return _destination(host, _EXTERNAL_PORT)
        return _destination(self._fqdn(host), None)

    def _add(self, kind: str, name: str, namespace: str, source: str,
             spec: dict[str, Any]) -> None:
        self.out[kind].append({
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {
                "name": self._unique(kind, namespace, name),
                "namespace": namespace,
                "labels": dict(MANAGED_BY),
                "annotations": {SOURCE_ANNOTATION: source},
            },
            "spec": spec,
        })

    def _unique(self, kind: str, namespace: str, text: str) -> str:
        used = self._names.setdefault((kind, namespace), set())
        name = dns_label(text)
        if name in used:
            name = dns_label(text, force_hash=True)
        used.add(name)
        return name

    def _check_names(self, ingress_routes: dict[str, str]) -> None:
        issues = []
        if not _is_label(self.ns):
            issues.append(Issue((), f"namespace {self.ns!r} is not a Kubernetes namespace name "
                                "(lowercase letters, digits and '-', at most 63)"))
        mesh = self.sc.mesh
        hosts = set(mesh.destination_rules) | set(mesh.virtual_services) | set(ingress_routes)
        for gw in (mesh.ingress_gateway, mesh.egress_gateway):
            if gw is not None:
                hosts |= set(gw.destination_rules) | set(gw.virtual_services)
        for host in sorted(hosts - self.externals):
            if not (len(host) <= 63 and _DNS1035.fullmatch(host)):
                issues.append(Issue(("services", host), f"{host!r} cannot be a Kubernetes "
                                    "Service name (lowercase letters, digits and '-', starting "
                                    "with a letter, at most 63): rename it to export it"))
        for host in self.sc.external_services:
            if not (len(host) <= 253 and _DNS_NAME.fullmatch(host)
                    and all(len(part) <= 63 for part in host.split("."))):
                issues.append(Issue(("externalServices", host), f"{host!r} is not a DNS host "
                                    "name (lowercase labels of letters, digits and '-', "
                                    "separated by dots): rename it to its real host name"))
        if issues:
            raise ScenarioError("<scenario>", issues)


def istio_block(block: Model) -> dict[str, Any]:
    """An Istio block of the scenario as it appears in a manifest: the fields set, by Istio
    name, durations as Istio strings (``10s``, ``250ms``)."""
    plain = block.model_dump(by_alias=True, exclude_none=True)
    text = block.model_dump(by_alias=True, exclude_none=True, mode="json")
    return _with_durations(plain, text)


def _with_durations(plain: Any, text: Any) -> Any:
    # A duration is a float in Python and a string in JSON; nothing else in Istio's blocks is.
    if isinstance(plain, dict):
        return {key: _with_durations(plain[key], text[key]) for key in plain}
    if isinstance(plain, list):
        return [_with_durations(p, t) for p, t in zip(plain, text, strict=True)]
    if isinstance(plain, float) and isinstance(text, str):
        return istio_duration(plain)
    return text


def _subset(subset: Subset) -> dict[str, Any]:
    """A ``subsets[]`` entry; labels only when it has some (empty selects every pod)."""
    block = istio_block(subset)
    if not block.get("labels"):
        block.pop("labels", None)
    return block


def _http_route(route: HTTPRoute, dest: dict[str, Any]) -> dict[str, Any]:
    # Istio's usual order: name, match, route, then the policies.
    block = istio_block(route)
    block.pop("route", None)
    out = {"name": block.pop("name")} if "name" in block else {}
    if route.route is None:
        out["route"] = [copy.deepcopy(dest)]  # shared objects would become YAML aliases
    else:
        out["route"] = [_route_destination(d, dest) for d in route.route]
    out.update(block)
    return out


def _route_destination(route: HTTPRouteDestination, dest: dict[str, Any]) -> dict[str, Any]:
    """One weighted destination: the host as the export names it (``dest``), with the
    scenario's subset, port and weight."""
    out = copy.deepcopy(dest)
    target = out["destination"]
    if route.destination.subset is not None:
        target["subset"] = route.destination.subset
    if route.destination.port is not None:
        target["port"] = {"number": route.destination.port.number}
    if route.weight is not None:
        out["weight"] = route.weight
    return out


def _tls_route(host: str, gateway: str | None, to: str) -> dict[str, Any]:
    match: dict[str, Any] = {"port": _EXTERNAL_PORT, "sniHosts": [host]}
    if gateway is not None:
        match = {"gateways": [gateway], **match}
    return {"match": [match], "route": [_destination(to, _EXTERNAL_PORT)]}


def _destination(host: str, port: int | None) -> dict[str, Any]:
    dest: dict[str, Any] = {"host": host}
    if port is not None:
        dest["port"] = {"number": port}
    return {"destination": dest}


def dns_label(text: str, force_hash: bool = False) -> str:
    """A DNS-1123 label (Kubernetes object name) for ``text``: lowercase, other characters
    replaced by ``-``, at most 63 characters; a short hash of ``text`` is appended when it
    had to be cut or when ``force_hash`` (two texts gave the same name)."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if force_hash or len(name) > 63 or not name:
        digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:6]
        name = f"{name[:56].rstrip('-')}-{digest}".lstrip("-")
    return name


def _is_label(text: str) -> bool:
    return len(text) <= 63 and re.fullmatch(_LABEL, text) is not None


def _dump(manifest: dict[str, Any]) -> str:
    return yaml.safe_dump(manifest, sort_keys=False, allow_unicode=True, width=100)


def _readme(source: str, written: list[str], skipped: list[str]) -> str:
    origin = f" from {source}" if source else ""
    text = (
        f"Istio resources exported by meshsim{origin}.\n\n"
        + "\n".join(written)
        + "\n\nReview, then apply with:  kubectl apply -f <this directory>\n"
        "Rules that apply to a gateway only are in namespace istio-system. External services\n"
        "are assumed to be HTTPS on port 443 (see meshsim.export for every assumption).\n"
    )
    if skipped:
        text += (
            f"\n{NOT_EXPORTED_NOTE}\n" + "".join(f"  {path}\n" for path in skipped)
        )
    return text
