"""Checks that need the whole scenario: names that must exist (services, hosts, subsets,
clients), a call graph without cycles, routes and subsets that select pods, and limits that
name real clients. Each issue carries the path of the field at fault, for
``FILE:LINE: path: message`` errors.

:func:`cross_check` runs after the models have validated each field on its own
(:func:`meshsim.scenario.parse_scenario`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .errors import Issue, unknown_name
from .istio import DestinationRule, HTTPRouteDestination
from .scenario import RESERVED_NAMES, Call, Gateway, Mesh, Scenario

__all__ = ["cross_check", "selects"]


def cross_check(sc: Scenario) -> list[Issue]:
    """Checks that need the whole scenario; each issue carries the path of the field at fault."""
    issues: list[Issue] = []
    services = set(sc.services)
    externals = set(sc.external_services)
    for name in sorted(services & externals):
        issues.append(
            Issue(("externalServices", name), f"{name!r} is declared both as a service and as an "
                  "external service")
        )
    for name in sorted((services | externals) & RESERVED_NAMES):
        where = "services" if name in services else "externalServices"
        issues.append(
            Issue((where, name), f"{name!r} is a reserved name (client, ingress, egress)")
        )
    known = services | externals
    for sname, svc in sc.services.items():
        for i, step in enumerate(svc.calls):
            calls = [(("calls", i), step)] if isinstance(step, Call) else [
                (("calls", i, "parallel", j), c) for j, c in enumerate(step.parallel)
            ]
            for sub, call in calls:
                if call.to not in known:
                    issues.append(Issue(("services", sname, *sub, "to"),
                                        unknown_name(call.to, known, "service")))
    cycle = _find_cycle(sc)
    if cycle:
        issues.append(
            Issue(("services", cycle[0], "calls"), "the call graph has a cycle: "
                  + " -> ".join(cycle) + " (a synchronous chain would never end)")
        )
    seen: set[str] = set()
    for i, cl in enumerate(sc.workload):
        if cl.client in seen:
            issues.append(Issue(("workload", i, "client"), f"duplicate client id {cl.client!r}"))
        seen.add(cl.client)
        if cl.entry not in services:
            issues.append(Issue(("workload", i, "entry"),
                                unknown_name(cl.entry, services, "service")))
    blocks = [(("mesh",), sc.mesh)]
    blocks += [(("mesh", "ingressGateway"), sc.mesh.ingress_gateway)]
    if sc.mesh.egress_gateway is not None:
        blocks += [(("mesh", "egressGateway"), sc.mesh.egress_gateway)]
    for where, block in blocks:
        for field, hosts in (("destinationRules", block.destination_rules),
                             ("virtualServices", block.virtual_services)):
            for host in hosts:
                if host not in known:
                    issues.append(Issue((*where, field, host), unknown_name(host, known, "host")))
    for sname, svc in sc.services.items():
        called = {c.to for step in svc.calls for c in ([step] if isinstance(step, Call)
                                                        else step.parallel)}
        for dest in svc.breakers:
            if dest not in called:
                issues.append(Issue(("services", sname, "breakers", dest),
                                    unknown_name(dest, called, f"destination of {sname}'s calls")))
    for where, gw, targets in (("ingressGateway", sc.mesh.ingress_gateway, services),
                               ("egressGateway", sc.mesh.egress_gateway, externals)):
        for dest in (gw.breakers if gw is not None else {}):
            if dest not in targets:
                issues.append(Issue(("mesh", where, "breakers", dest),
                                    unknown_name(dest, targets, "host")))
    for name, sidecar in sc.mesh.sidecars.items():
        if name not in services:
            issues.append(Issue(("mesh", "sidecars", name),
                                unknown_name(name, services, "service")))
            continue
        svc = sc.services[name]
        called = {c.to for step in svc.calls for c in ([step] if isinstance(step, Call)
                                                        else step.parallel)}
        for dest in sidecar.admission_control:
            if dest not in called:
                issues.append(Issue(("mesh", "sidecars", name, "admissionControl", dest),
                                    unknown_name(dest, called, f"destination of {name}'s calls")))
    issues += _check_rate_limits(sc, seen)
    if sc.warmup >= sc.duration:
        issues.append(Issue(("warmup",), "warm-up must be shorter than the duration "
                            f"({sc.warmup:g}s >= {sc.duration:g}s)"))
    issues += _check_routing(sc)
    issues += _check_pod_names(sc)
    issues += _check_faults(sc, seen)
    return issues


def _check_faults(sc: Scenario, clients: set[str]) -> list[Issue]:
    """Faults name real services, pods, edges and clients, and start before the run ends."""
    issues: list[Issue] = []
    services = set(sc.services)
    hosts = services | set(sc.external_services)
    nodes = hosts | {"ingress"} | ({"egress"} if sc.mesh.egress_gateway is not None else set())
    for i, fault in enumerate(sc.faults):
        at = ("faults", i)
        if fault.start >= sc.duration:
            issues.append(Issue((*at, "start"), f"the fault starts at {fault.start:g}s, after "
                                f"the run ends ({sc.duration:g}s)"))
        if fault.kind == "loadSpike":
            if fault.client is not None and fault.client not in clients:
                issues.append(Issue((*at, "client"), unknown_name(fault.client, clients,
                                                                  "client")))
            continue
        if fault.kind == "network":
            if fault.destination not in nodes:
                issues.append(Issue((*at, "destination"),
                                    unknown_name(fault.destination, nodes, "destination")))
            callers = nodes | {f"client:{c}" for c in clients}
            if fault.source is not None and fault.source not in callers:
                issues.append(Issue((*at, "source"),
                                    unknown_name(fault.source, callers, "caller")))
            continue
        if fault.target not in hosts:
            issues.append(Issue((*at, "target"), unknown_name(fault.target, hosts,
                                                              "service or external host")))
            continue
        pods = getattr(fault, "pods", None)
        if pods is None:
            continue
        if fault.target not in services:
            issues.append(Issue((*at, "pods"), f"{fault.target!r} is an external host, which "
                                "has no pods to choose: leave 'pods' out"))
            continue
        names = [p for d in sc.services[fault.target].deployments()
                 for p in d.pod_names(fault.target)]
        if isinstance(pods, int):
            if pods > len(names):
                issues.append(Issue((*at, "pods"), f"{fault.target!r} has {len(names)} pods, "
                                    f"fewer than {pods}"))
            continue
        for j, pod in enumerate(pods):
            if pod not in names:
                issues.append(Issue((*at, "pods", j), unknown_name(pod, set(names), "pod")))
    return issues


def _check_routing(sc: Scenario) -> list[Issue]:
    """Subsets of the rules and destinations of the routes, at the sidecars and gateways."""
    blocks: list[tuple[tuple[str, ...], Mesh | Gateway, str | None]] = [
        (("mesh",), sc.mesh, None),
        (("mesh", "ingressGateway"), sc.mesh.ingress_gateway, "ingress")]
    if sc.mesh.egress_gateway is not None:
        blocks.append((("mesh", "egressGateway"), sc.mesh.egress_gateway, "egress"))
    known = set(sc.services) | set(sc.external_services)
    issues: list[Issue] = []
    for where, block, gateway in blocks:
        for host, rule in block.destination_rules.items():
            if host in known:
                issues += _check_subsets(sc, (*where, "destinationRules", host), host, rule)
        for host, vs in block.virtual_services.items():
            for k, http in enumerate(vs.http):
                if host in known and http.route is not None:
                    at = (*where, "virtualServices", host, "http", k, "route")
                    issues += _check_route(sc, at, host, http.route, gateway)
    return issues


def _pod_labels(sc: Scenario, host: str) -> list[dict[str, str]]:
    """The label sets of ``host``'s pods, one per deployment (an external host has none)."""
    svc = sc.services.get(host)
    return [{}] if svc is None else [d.labels for d in svc.deployments()]


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a subset's ``labels`` select a pod with ``labels`` (every pair must match)."""
    return all(labels.get(key) == value for key, value in selector.items())


def _check_subsets(sc: Scenario, at: tuple[str, ...], host: str,
                   rule: DestinationRule) -> list[Issue]:
    issues: list[Issue] = []
    pods = _pod_labels(sc, host)
    seen: set[str] = set()
    for i, subset in enumerate(rule.subsets):
        if subset.name in seen:
            issues.append(Issue((*at, "subsets", i, "name"),
                                f"duplicate subset name {subset.name!r}"))
        seen.add(subset.name)
        if not any(selects(subset.labels, labels) for labels in pods):
            carried = sorted({f"{k}={v}" for labels in pods for k, v in labels.items()})
            have = (f"its pods carry {', '.join(carried)}" if carried else
                    "its pods have no labels: give the service versions")
            issues.append(Issue((*at, "subsets", i, "labels"),
                                f"selects no pod of {host!r} ({have})"))
    return issues


def _check_route(sc: Scenario, at: tuple[str | int, ...], host: str,
                 route: list[HTTPRouteDestination], gateway: str | None) -> list[Issue]:
    issues: list[Issue] = []
    rule = sc.destination_rule(host, gateway)
    names = {s.name for s in rule.subsets} if rule is not None else set()
    for j, dest in enumerate(route):
        d = dest.destination
        path = (*at, j, "destination")
        if not _is_host(d.host, host, host in sc.services):
            issues.append(Issue((*path, "host"), f"routes to {d.host!r}: routing to another host "
                                f"is not simulated (a route of {host!r} sends to {host!r}, or to "
                                "subsets of it)"))
        elif d.subset is None:
            continue
        elif host in sc.external_services:
            issues.append(Issue((*path, "subset"), "subsets of external services are not "
                                "simulated (an external host is one endpoint)"))
        elif d.subset not in names:
            issues.append(Issue((*path, "subset"), unknown_name(d.subset, names, "subset") if names
                                else f"unknown subset {d.subset!r}: {_rule_of(sc, host, gateway)}"
                                " has no subsets"))
    total = sum(dest.weight or 0 for dest in route)
    if len(route) > 1 and total != 100:
        issues.append(Issue(at, f"total destination weight {total} != 100 (the weights of "
                            "several destinations must add up to 100, as Istio validates them)"))
    return issues


def _rule_of(sc: Scenario, host: str, gateway: str | None) -> str:
    """Which rule a proxy applies to ``host``, in words, for messages."""
    if gateway is not None and host in sc._gateway(gateway).destination_rules:
        return (f"the {gateway} gateway's own rule mesh.{gateway}Gateway.destinationRules.{host} "
                "(which replaces the mesh's)")
    if host in sc.mesh.destination_rules:
        return f"mesh.destinationRules.{host}"
    return f"there is no DestinationRule for {host!r}, so it"


def _is_host(name: str, host: str, in_mesh: bool) -> bool:
    """Whether ``name`` names ``host``: as written, or for a service in the mesh, with its
    namespace (``reviews.shop``, ``reviews.shop.svc.cluster.local``) as manifests write it."""
    if name == host:
        return True
    return in_mesh and re.fullmatch(rf"{re.escape(host)}\.[a-z0-9-]+(\.svc\.cluster\.local)?",
                                    name) is not None


def _check_pod_names(sc: Scenario) -> list[Issue]:
    """Pod names are unique: a version's ``reviews-v2-0`` may not be a pod of ``reviews-v2``."""
    owner: dict[str, str] = dict.fromkeys(sc.external_services, "")
    issues: list[Issue] = []
    for name, svc in sc.services.items():
        for dep in svc.deployments():
            for pod in dep.pod_names(name):
                other = owner.setdefault(pod, name)
                if other != name:
                    path = ("services", name) if dep.version is None else (
                        "services", name, "versions", dep.version)
                    what = f"a pod of service {other!r}" if other else "an external service"
                    issues.append(Issue(path, f"pod name {pod!r} is also {what}: rename the "
                                        "version or the service"))
                    break
    return issues


def _check_rate_limits(sc: Scenario, clients: set[str]) -> list[Issue]:
    """Rate-limit descriptors name clients of the workload; a global limit needs its service."""
    issues = []
    limits = [(("mesh", "sidecars", name), s.local_rate_limit)
              for name, s in sc.mesh.sidecars.items()]
    gateways = [(("mesh", "ingressGateway"), sc.mesh.ingress_gateway)]
    if sc.mesh.egress_gateway is not None:
        gateways += [(("mesh", "egressGateway"), sc.mesh.egress_gateway)]
    limits += [(where, gw.local_rate_limit) for where, gw in gateways]
    for where, limit in limits:
        for i, d in enumerate(limit.descriptors if limit is not None else ()):
            for j, e in enumerate(d.entries):
                if e.value not in clients:
                    issues.append(Issue((*where, "localRateLimit", "descriptors", i, "entries",
                                         j, "value"), unknown_name(e.value, clients, "client")))
    for where, gw in gateways:
        if gw.global_rate_limit is None:
            continue
        if where[-1] == "egressGateway":
            # Its 429s would carry x-envoy-ratelimited to the callers' routers, which decide
            # retries on statuses only.
            issues.append(Issue((*where, "globalRateLimit"), "a global rate limit is "
                                "simulated at the ingress gateway only"))
        elif sc.mesh.rate_limit_service is None:
            issues.append(Issue((*where, "globalRateLimit"), "a global rate limit needs "
                                "mesh.rateLimitService, the service it asks"))
    return issues


def _find_cycle(sc: Scenario) -> list[str] | None:
    graph: dict[str, list[str]] = {}
    for name, svc in sc.services.items():
        targets: list[str] = []
        for step in svc.calls:
            targets += [step.to] if isinstance(step, Call) else [c.to for c in step.parallel]
        graph[name] = [t for t in targets if t in sc.services]
    color: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        color[node] = 1
        stack.append(node)
        for nxt in graph.get(node, []):
            if color.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in color:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = 2
        return None

    for node in sorted(graph):
        if node not in color:
            found = visit(node)
            if found:
                return found
    return None
