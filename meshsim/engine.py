"""The engine: builds the pods and proxies of a scenario on a SimPy ``Environment`` and moves
requests through them with event callbacks.

Lifecycle (named as desmod names it): *elaborate* (build pods, proxies and clients from the
scenario), *simulate* (``env.run``), *collect* (records become DataFrames once, in
:mod:`meshsim.result`).

Why callbacks and not a process per hop: a SimPy process costs 3–4 events per hop, while a request
moved by continuations costs one event per delay; measured on this project's 3-tier chain, that is
5.5–5.9× faster (``../shared/design.md``). A hop is therefore: the caller's proxy picks a host
(:mod:`meshsim.sidecar`), one event for the request leg (network + proxy overhead), the callee pod
works (:mod:`meshsim.service`), one event for the response leg, and a record row.
"""

from __future__ import annotations

import dataclasses
import gc
import time
from collections import defaultdict
from collections.abc import Callable
from heapq import heappush
from typing import Any

import numpy as np
import simpy

from . import rng as rng_mod
from .app_breakers import build_breaker
from .attempt import Attempt
from .checks import selects
from .distributions import Constant
from .injection import FaultSchedule, faultable_pods
from .istio import TrafficPolicy, istio_dict
from .limiters import attach as attach_limits
from .pod_faults import REFUSED, FaultablePod
from .policies.adaptive_concurrency import GradientController, GradientControllerConfig
from .policies.admission_control import AdmissionControlConfig, AdmissionController
from .policies.connection_pool import ConnectionPool, PoolConfig
from .policies.outlier import OutlierConfig, OutlierDetector
from .policies.protocol import AdaptiveConcurrencyPolicy, AdmissionPolicy
from .policies.retry import RetryPolicy
from .result import Result
from .router import Router
from .scenario import BurstyErrors, Call, Deployment, Scenario
from .service import GatewayPod, Pod, bursty_state
from .sidecar import Cluster, WeightedClusters
from .workload import ClientDriver

__all__ = ["Attempt", "Engine", "simulate"]

_NORMAL = 1  # simpy.events.NORMAL: ordinary (not urgent) event priority
_NAN = float("nan")


class _Callback:
    """The least a SimPy ``Environment.step`` needs of an event: ``callbacks``, ``_ok`` and the
    ``_value`` the callback reads. A slotted object instead of a full ``simpy.Event`` saves an
    instance dict per scheduled delay, and that is most of the events a run makes."""

    __slots__ = ("_value", "callbacks")
    _ok = True


class _NoHost:
    """The ``host`` of a local reply that never reached a pod (503 ``UH``)."""

    __slots__ = ("code",)

    def __init__(self, code: int):
        self.code = code


class Names:
    """Interning table: name -> small integer code, in order of first use."""

    def __init__(self, first: list[str] | None = None):
        self.names: list[str] = []
        self._index: dict[str, int] = {}
        for name in first or []:
            self.code(name)

    def code(self, name: str) -> int:
        if name not in self._index:
            self._index[name] = len(self.names)
            self.names.append(name)
        return self._index[name]


class Engine:
    """Builds and runs one simulation of a :class:`~meshsim.scenario.Scenario`.

    Parameters
    ----------
    scenario : Scenario
    seed : int or numpy.random.SeedSequence
        Root of every random stream of the run.
    """

    def __init__(self, scenario: Scenario, seed: int | np.random.SeedSequence):
        self.scenario = scenario
        self.seed = seed
        self.env = simpy.Environment()
        self.horizon = scenario.duration
        self.streams = rng_mod.Streams(seed)
        self.records: list[tuple] = []
        self._span = 0
        self._req = 0
        self._queue = self.env._queue
        self._eid = self.env._eid
        self.respond_cb = (self._respond,)
        self._failed_cb = (self._failed,)
        self.clients: list[ClientDriver] = []
        self.pods: dict[str, list[Any]] = {}
        #: Labels of each service's pods, in the order of ``pods`` (subsets select by them).
        self.pod_labels: dict[str, list[dict[str, str]]] = defaultdict(list)
        self._samplers: dict[str, Callable[[], float]] = {}
        # Records hold small integer codes; the names become categories when collected.
        self.nodes = Names(["client"])
        self.hosts = Names()
        self.client_names = Names()
        self.flag_names = Names(["-"])
        self.no_host = _NoHost(self.hosts.code("-"))
        self.clusters: list[Cluster] = []
        #: The clusters of clients that enter through the ingress gateway (no policies).
        self.entry_clusters: list[Cluster] = []
        #: App-level breakers and admission controllers, by (calling pod, destination), as
        #: :class:`~meshsim.policies.protocol.Policy` objects.
        self.app_breakers: dict[tuple[str, str], Any] = {}
        self.admissions: dict[tuple[str, str], Any] = {}
        self.router = Router(self)
        self._elaborate()

    # ---- scheduling --------------------------------------------------------------------------

    def later(self, delay: float, callbacks: tuple[Callable[[Any], None]], value: Any) -> None:
        """Call ``fn(event)`` for each ``fn`` of ``callbacks`` after ``delay`` seconds, with
        ``event._value`` set to ``value``.

        This is ``env.schedule`` of a bare, already-triggered event, inlined: it is the one call
        every hop makes several times. Callers pass a prebuilt 1-tuple (see :func:`callback`) so
        that no container is allocated per event; SimPy only iterates over it.
        """
        ev = _Callback()
        ev.callbacks = callbacks
        ev._value = value
        heappush(self._queue, (self.env._now + delay, _NORMAL, next(self._eid), ev))

    def schedule(self, delay: float, callbacks: tuple[Callable[[Any], None]], a: Attempt) -> None:
        """Call ``fn(a)`` for each ``fn`` of ``callbacks`` after ``delay`` seconds.

        :meth:`later` for an attempt, which is its own event (see :class:`Attempt`).
        """
        a.callbacks = callbacks
        heappush(self._queue, (self.env._now + delay, _NORMAL, next(self._eid), a))

    # ---- the hop -----------------------------------------------------------------------------

    def start_request(self, client: ClientDriver) -> None:
        """An end-user request of ``client`` leaves the client now."""
        a = Attempt()
        a.req = self._req
        self._req += 1
        a.client = client
        a.parent = None
        a.source = 0  # code of "client"
        self._launch(a, client.cluster, False, client.route_to)

    def _send_lean(self, parent: Attempt, cluster: Cluster, optional: bool,
                   route_to: str | None) -> None:
        """The pod working on ``parent`` calls ``cluster``, which has no policy that can act
        (``cluster.send`` is this method, or :meth:`Router.start` on a cluster with policies);
        ``route_to`` is where a gateway upstream forwards the request next."""
        a = Attempt()
        a.req = parent.req
        a.client = parent.client
        a.parent = parent
        a.source = parent.host.service
        self._launch(a, cluster, optional, route_to)

    def _launch(self, a: Attempt, cluster: Cluster, optional: bool, route_to: str | None) -> None:
        self._span += 1
        a.span = self._span
        a.optional = optional
        a.cluster = cluster
        a.dest = cluster.code
        a.route_to = route_to
        idx = cluster.pick()
        a.hostidx = idx
        a.host = cluster.hosts[idx]
        cluster.active[idx] += 1
        a.failed = False
        a.flags = 0  # code of "-"
        a.t_start = self.env._now
        a.t_arrive = a.t_begin = a.t_reply = _NAN
        self.schedule(cluster.out_delay(), a.host.arrive_cb, a)

    def reply(self, a: Attempt, status: int) -> None:
        """The callee of ``a`` answers ``status`` now; the answer travels back to the caller."""
        now = self.env._now
        a.status = status
        a.t_reply = now
        cluster = a.cluster
        # schedule(), written out: this runs for every attempt.
        a.callbacks = cluster.respond_cb
        heappush(self._queue, (now + cluster.back_delay(), _NORMAL, next(self._eid), a))

    def _respond(self, a: Attempt) -> None:
        a.cluster.active[a.hostidx] -= 1
        parent = a.parent
        self.records.append((
            a.req, a.span, parent.span if parent is not None else 0, a.client.code, a.source,
            a.dest, a.host.code, 1, a.t_start, self.env._now, a.status, a.flags, 0,
            a.t_arrive, a.t_begin, a.t_reply,
        ))
        if parent is None:
            a.client.done(a)
        else:
            parent.host.child_done(parent, a.status, a.flags, a.optional)

    def fail(self, a: Attempt, why: int) -> None:
        """A faulty pod gives ``a`` no answer: its connection was refused or terminated
        (``why``); the caller's proxy learns it after the response leg's delay."""
        self.later(a.cluster.back_delay(), self._failed_cb, (a, why))

    def _failed(self, ev: Any) -> None:
        a, why = ev._value
        if a.cluster.policy_path:
            self.router.upstream_failed(a, why)
            return
        # No policy can act: the caller's proxy answers 503 with the reason's flag.
        a.status = 503
        a.flags = self.flag_code("UF" if why == REFUSED else "UC")
        self._respond(a)

    def all_clusters(self) -> list[Cluster]:
        """Every cluster of every proxy, the clients' entry clusters included."""
        return self.clusters + self.entry_clusters

    def fresh_inbound(self, service: str) -> ConnectionPool | None:
        """A new pod sidecar's inbound pool for ``service`` (a restarted pod's)."""
        return self._inbound_pool(service) if service in self.scenario.services else None

    def fault_sampler(self, name: str, dist: Any) -> Callable[[], float]:
        """A sampler of ``dist`` on the stream ``name`` (for a fault's draws)."""
        return self._sampler(name, dist)

    def flag_code(self, flags: str) -> int:
        """Code of an Envoy response-flags string (``"-"`` is 0) in the records."""
        return self.flag_names.code(flags)

    def in_flight(self) -> list[Attempt]:
        """Attempts not answered yet, found from what the simulation still holds.

        An unanswered attempt is travelling (a scheduled event carries it), waiting in a pod's
        queue, being worked on (its work event is scheduled), or waiting for its own downstream
        calls, one of which is then in one of these states: so walking up the parents of the
        first three finds them all, without any bookkeeping in the hot path.
        """
        from .router import Call

        found: dict[int, Attempt] = {}
        seeds = [ev if isinstance(ev, Attempt) else ev._value for _, _, _, ev in self._queue]
        seeds += [a for pods in self.pods.values() for p in pods for a in getattr(p, "queue", ())]
        # ... or held by a hung pod, or in work there.
        seeds += [a for pods in self.pods.values() for p in pods if isinstance(p, FaultablePod)
                  for a in [*p.held_attempts(), *p.working]]
        # ... or waiting in the pool of the callee's own sidecar.
        seeds += [a for pods in self.pods.values() for p in pods if p.inbound is not None
                  for a in p.inbound.hosts[0].pending]
        # The router's attempts may also wait in a connection pool, a call between two
        # attempts (back-off) is held only by its timer event, and a call whose next back-off
        # would end past its deadline only by the route deadline queue: their callers wait.
        for cl in self.clusters:
            if cl.pool is not None:
                seeds += [a for hp in cl.pool.hosts for a in hp.pending]
            if cl.route_timers is not None:
                seeds += cl.route_timers.calls()
        for a in seeds:
            if isinstance(a, Call):
                if a.done:
                    continue  # a spent route timer
                a = a.parent if a.current is None else a.current
            while isinstance(a, Attempt) and a.span not in found:
                found[a.span] = a
                if getattr(a, "abandoned", 0):
                    break  # nobody waits for it: its caller moved on (and may be answered)
                a = a.parent
        return sorted(found.values(), key=lambda a: a.span)

    # ---- elaborate -----------------------------------------------------------------------------

    def _elaborate(self) -> None:
        sc = self.scenario
        streams = self.streams
        #: Pods (and external hosts) a crash, hang or outage can hit: built as FaultablePod.
        self._faultable = faultable_pods(sc)
        for name, svc in sc.services.items():
            pods = []
            for dep in svc.deployments():
                pods += self._deployment(name, dep)
                self.pod_labels[name] += [dep.labels] * dep.replicas
            self.pods[name] = pods
        for name, ext in sc.external_services.items():
            latency = self._sampler(f"latency:{name}", ext.latency)
            error = self._error_fn(name, f"errors:{name}", ext.errors)
            cls = FaultablePod if name in self._faultable else Pod
            host = cls(self, name, ext.concurrency or float("inf"), None, latency, error)
            host.service = self.nodes.code(name)
            host.code = self.hosts.code(name)
            self.pods[name] = [host]
        self._gateways("ingress", sc.mesh.ingress_gateway.replicas)
        if sc.mesh.egress_gateway is not None:
            self._gateways("egress", sc.mesh.egress_gateway.replicas)
            for gw in self.pods["egress"]:
                gw.routes = {ext: self._cluster(gw.name, "egress", ext)
                             for ext in sc.external_services}
        entries = dict.fromkeys(cl.entry for cl in sc.workload if cl.via_ingress)
        for gw in self.pods["ingress"]:
            gw.routes = {entry: self._route(gw.name, "ingress", entry) for entry in entries}
        for name, svc in sc.services.items():
            uniform = None
            if any(c.probability < 1.0 for step in svc.calls for c in _calls(step)):
                uniform = streams.uniform(f"calls:{name}")
            for pod in self.pods[name]:
                # One cluster per upstream of this pod's proxy. Calls to several external hosts
                # through the egress gateway go to one cluster in Envoy, each with its own route
                # (and so its own retry policy and timeouts): here each external host gets its
                # own cluster object towards the gateway, which keeps the routes apart. The
                # gateway cluster has Istio's default (unlimited) pool, so nothing that could
                # bite is split by this.
                clusters: dict[str, Cluster] = {}
                steps = []
                for step in svc.calls:
                    calls = []
                    for c in _calls(step):
                        label, route_to = self._upstream(name, c.to)
                        key = label if route_to is None else f"{label}:{route_to}"
                        if key not in clusters:
                            clusters[key] = self._route(pod.name, name, c.to)
                        calls.append((clusters[key], c.probability, c.optional, route_to))
                    steps.append((not isinstance(step, Call), tuple(calls)))
                pod.steps = tuple(steps)
                pod.uniform = uniform
        for cl in sc.workload:
            if cl.via_ingress:
                gws = self.pods["ingress"]
                # Each client has its own network stream, so adding a client never shifts the
                # draws another one sees.
                net = self._net(f"client:{cl.client}", "ingress")
                entry = Cluster(f"client:{cl.client}", "ingress", self.nodes.code("ingress"),
                                gws, "RANDOM",
                                streams.uniform(f"gateway:{cl.client}") if len(gws) > 1 else None,
                                net, net)
                entry.respond_cb = self.respond_cb
                entry.send = self._send_lean
                entry.source_name = f"client:{cl.client}"
                self.entry_clusters.append(entry)
                route_to = cl.entry
            else:
                entry = self._cluster(f"client:{cl.client}", f"client:{cl.client}", cl.entry)
                route_to = None
            arrival = cl.arrival
            think = (self._sampler(f"think:{cl.client}", arrival.think_time)
                     if arrival.kind == "closed" else None)
            driver = ClientDriver(
                self, cl.client, self.client_names.code(cl.client), arrival, entry, route_to,
                streams.sampler(f"arrivals:{cl.client}", _standard_exponential),
                streams.uniform(f"thinning:{cl.client}"), think,
            )
            self.clients.append(driver)
        #: The rate limits in front of pods (:mod:`meshsim.limiters`); none in most scenarios.
        self.limits = attach_limits(self)
        for pods in self.pods.values():
            for pod in pods:
                if isinstance(pod, FaultablePod):
                    pod.on_fail = self.fail
        #: The fault schedule (:mod:`meshsim.injection`), started with the run.
        self.faults = FaultSchedule(self)

    def _deployment(self, name: str, dep: Deployment) -> list[Pod]:
        """The pods of one deployment of service ``name``.

        A version draws from the service's random streams for what it shares with the service
        and from streams of its own (``latency:reviews|v2``) for what it sets itself, so a
        service without versions sees exactly the draws it always did.
        """
        version = self.scenario.services[name].versions.get(dep.version or "")

        def stream(field: str) -> str:
            own = version is not None and getattr(version, field) is not None
            return f"{field}:{name}|{dep.version}" if own else f"{field}:{name}"

        key = stream("latency")
        if key not in self._samplers:
            self._samplers[key] = self._sampler(key, dep.latency)
        latency = self._samplers[key]
        pods = []
        for pod_name in dep.pod_names(name):
            error = self._error_fn(f"{name}:{pod_name}", stream("errors"), dep.errors)
            cls = FaultablePod if pod_name in self._faultable else Pod
            pod = cls(self, pod_name, dep.workers, dep.queue, latency, error,
                      dep.downstream_error_status)
            pod.service = self.nodes.code(name)
            pod.code = self.hosts.code(pod_name)
            self._pod_sidecar(pod, name)
            pods.append(pod)
        return pods

    def _pod_sidecar(self, pod: Pod, service: str) -> None:
        """The pod's own sidecar: its inbound limits and filters (``mesh.sidecars``).

        Its limits are the service's, whatever the pod's version: istiod builds the inbound
        cluster from the service's ``DestinationRule`` (its top-level ``connectionPool``) or
        the ``Sidecar``; subsets shape the callers' clusters only.
        """
        pod.inbound = self._inbound_pool(service)
        sidecar = self.scenario.mesh.sidecars.get(service)
        if sidecar is None:
            return
        gates = []
        if sidecar.adaptive_concurrency is not None:
            config = GradientControllerConfig.from_envoy(sidecar.adaptive_concurrency)
            controller = GradientController(config, self.streams.uniform(f"adaptive:{pod.name}"))
            gates.append((AdaptiveConcurrencyPolicy(controller),
                          config.concurrency_limit_exceeded_status,
                          "adaptive_concurrency.gradient_controller"))
        for spec in sidecar.policies:
            gates.append((spec.make_policy(pod.name), spec.status, f"policy.{spec.class_}"))
        if gates:
            pod.gates = tuple(gates)
            if pod.inbound is None:  # the filters run in the sidecar's inbound path
                pod.inbound = ConnectionPool(1, PoolConfig.istio_default())

    def _gateways(self, kind: str, replicas: int) -> None:
        pods = []
        for i in range(replicas):
            gw = GatewayPod(self, f"{kind}-{i}", passes_flags=kind == "ingress")
            gw.service = self.nodes.code(kind)
            gw.code = self.hosts.code(gw.name)
            pods.append(gw)
        self.pods[kind] = pods

    def _upstream(self, source: str, dest: str) -> tuple[str, str | None]:
        """The cluster a call from ``source`` to ``dest`` goes to, and where it is forwarded.

        Calls to external hosts go to the egress gateway when there is one (Istio routes them to
        the ``istio-egressgateway`` cluster); everything else goes to ``dest`` itself.
        """
        sc = self.scenario
        if dest in sc.external_services and sc.mesh.egress_gateway is not None \
                and source != "egress":
            return "egress", dest
        return dest, None

    def _route(self, proxy: str, source: str, dest: str) -> Cluster | WeightedClusters:
        """Where the proxy of pod ``proxy`` (of ``source``) sends requests for ``dest``: the
        cluster of the route's destination, or with several, a pick among their clusters in
        proportion to the weights, from the proxy's own stream (Envoy's ``weighted_clusters``).
        """
        gateway = source if source in ("ingress", "egress") else None
        if self._upstream(source, dest)[0] != dest:
            return self._cluster(proxy, source, dest)  # to the egress gateway: no subsets
        weights: dict[str | None, int] = {}
        for subset, weight in self.scenario.route_destinations(dest, gateway):
            if weight > 0:  # a destination of weight 0 gets no request
                weights[subset] = weights.get(subset, 0) + weight
        if len(weights) == 1:
            return self._cluster(proxy, source, dest, next(iter(weights)))
        clusters = [self._cluster(proxy, source, dest, subset) for subset in weights]
        return WeightedClusters(clusters, list(weights.values()),
                                self.streams.uniform(f"route:{proxy}->{dest}"))

    def _subset_hosts(self, host: str, subset: str, gateway: str | None) -> list[Any]:
        """The pods of ``host`` that its rule's ``subset`` selects by their labels."""
        rule = self.scenario.destination_rule(host, gateway)
        selector = rule.subset(subset).labels
        return [pod for pod, labels in zip(self.pods[host], self.pod_labels[host], strict=True)
                if selects(selector, labels)]

    def _cluster(self, proxy: str, source: str, dest: str, subset: str | None = None) -> Cluster:
        """The cluster for ``dest`` (or its ``subset``) as seen by the proxy of pod ``proxy``
        (of ``source``)."""
        sc = self.scenario
        label, route_to = self._upstream(source, dest)
        key = label if route_to is None else f"{label}:{route_to}"
        hosts = self.pods[label]
        gateway = source if source in ("ingress", "egress") else None
        if subset is not None:
            hosts = self._subset_hosts(label, subset, gateway)
            key = f"{key}|{subset}"
        policy = sc.lb_policy(label, gateway, subset)
        uniform = self.streams.uniform(f"lb:{proxy}->{key}") if len(hosts) > 1 else None
        # The hop overhead is that of two proxies; a hop with a proxy at one end only (a client
        # without a sidecar, an external host) pays the network alone.
        mesh_hop = not source.startswith("client") and label not in sc.external_services
        out = self._hop_out(source, label, mesh_hop)
        name = label if subset is None else f"{label}|{subset}"
        cl = Cluster(proxy, name, self.nodes.code(label), hosts, policy, uniform, out,
                     self._net(source, label))
        cl.respond_cb = self.respond_cb
        cl.send = self._send_lean
        cl.source_name = source
        if not source.startswith("client"):
            self._policies(cl, f"{proxy}->{key}", dest, gateway, source, subset)
        self.clusters.append(cl)
        return cl

    def _inbound_pool(self, service: str) -> ConnectionPool | None:
        """The connection pool of a pod's own sidecar towards its app, if it can ever limit.

        Its settings come from the service's ``Sidecar.inboundConnectionPool`` or else its
        ``DestinationRule``'s ``connectionPool`` (:meth:`Scenario.inbound_connection_pool`),
        translated as for a client proxy; with none, Istio's unlimited defaults leave nothing
        to simulate, while plain Envoy's defaults (1024) do.
        """
        sc = self.scenario
        istio = sc.mesh.istio_defaults
        block = sc.inbound_connection_pool(service)
        if block is not None:
            cfg = PoolConfig.from_istio(istio_dict(block), istio_defaults=istio)
        else:
            cfg = PoolConfig.istio_default() if istio else PoolConfig()
        if not _limits_pool(cfg):
            return None
        return ConnectionPool(1, cfg)

    def _breaker_spec(self, source: str, dest: str) -> Any:
        """The app-level breaker the caller ``source`` (a service or gateway) puts in front of
        its calls to ``dest``, or None."""
        sc = self.scenario
        if source in sc.services:
            return sc.services[source].breakers.get(dest)
        gw = sc.mesh.ingress_gateway if source == "ingress" else sc.mesh.egress_gateway
        return gw.breakers.get(dest) if gw is not None else None

    def _policies(self, cl: Cluster, stream: str, dest: str, gateway: str | None,
                  source: str, subset: str | None = None) -> None:
        """Attach the Istio/Envoy policies this proxy applies to the cluster ``cl``.

        The Istio blocks are translated as istiod translates them (``from_istio`` of each
        policy); where the scenario is silent, Istio's defaults apply (plain Envoy's with
        ``istioDefaults: false``).
        """
        sc = self.scenario
        istio = sc.mesh.istio_defaults
        # Calls to the egress gateway use its (default) settings; the external host's rules
        # and routes apply where the request goes to that host.
        tp = sc.traffic_policy(dest, gateway, subset) if cl.dest != "egress" else TrafficPolicy()
        route = sc.http_route(dest, gateway)
        retry = RetryPolicy.from_istio(istio_dict(route), istio_defaults=istio)
        pool_cfg = PoolConfig.from_istio(
            istio_dict(tp.connection_pool), istio_defaults=istio) if tp.connection_pool \
            else (PoolConfig.istio_default() if istio else PoolConfig())
        if tp.retry_budget is not None:
            budget = tp.retry_budget
            pool_cfg = dataclasses.replace(pool_cfg, budget_percent=budget.percent,
                                           min_retry_concurrency=budget.min_retry_concurrency)
        outlier = None
        panic = 50.0  # Envoy's default healthy_panic_threshold (Istio's too without outlier)
        od = tp.outlier_detection
        if od is not None:
            cfg, min_health = OutlierConfig.from_istio(istio_dict(od))
            if not istio:
                # Plain Envoy where the block is silent: success-rate ejection is enforced
                # (istiod writes 0 there) and the panic threshold stays 50 % unless set.
                cfg = dataclasses.replace(cfg, enforcing_success_rate=100)
            if istio or od.min_health_percent is not None:
                panic = min_health  # istiod writes minHealthPercent (default 0: panic off)
            outlier = OutlierDetector(len(cl.hosts), cfg,
                                      self.streams.uniform(f"outlier:{stream}"))
        connect = self.scenario.mesh.sidecar.connect_time
        connect_time = None if isinstance(connect, Constant) and connect.value == 0 \
            else self._sampler(f"connect:{stream}", connect)
        breaker = self._breaker_spec(source, dest)
        sidecar = sc.mesh.sidecars.get(source) if gateway is None else None
        admission = sidecar.admission_control.get(dest) if sidecar is not None else None
        # A host that can crash fails connections and resets requests, which the retry policy
        # may retry (Istio's default retries connect failures).
        can_fail = retry.num_retries > 0 and any(isinstance(h, FaultablePod) for h in cl.hosts)
        needs_router = (outlier is not None or _limits_pool(pool_cfg)
                        or _retry_can_act(retry) or connect_time is not None
                        or breaker is not None or admission is not None or can_fail)
        if not needs_router:
            return
        cl.policy_path = True
        cl.connect_time = connect_time
        # The app's breaker and the admission filter act before the call is routed, so there
        # is one per calling pod and destination, shared by the destination's subset clusters
        # (and named by the destination, not the egress gateway a call to an external host
        # goes through).
        key = (cl.proxy, dest)
        if breaker is not None:
            if key not in self.app_breakers:
                self.app_breakers[key] = build_breaker(breaker, f"{cl.proxy} -> {dest}")
            cl.breaker = self.app_breakers[key]
            cl.when_open = breaker.when_open
        if admission is not None:
            if key not in self.admissions:
                self.admissions[key] = AdmissionPolicy(AdmissionController(
                    AdmissionControlConfig.from_envoy(admission),
                    self.streams.uniform(f"admission:{cl.proxy}->{dest}")))
            cl.admission = self.admissions[key]
        cl.source_name, cl.guarded = source, dest
        cl.pool = ConnectionPool(len(cl.hosts), pool_cfg)
        cl.outlier = outlier
        cl.retry_policy = retry
        cl.retry_uniform = self.streams.uniform(f"retry:{stream}")
        cl.panic_threshold = panic
        cl.respond_cb = self.router.respond_cb
        cl.send = self.router.start
        self.router.timers(cl)

    # ---- random variates --------------------------------------------------------------------

    def _sampler(self, name: str, dist: Any) -> Callable[[], float]:
        if isinstance(dist, Constant):
            return rng_mod.constant(dist.value)
        return self.streams.sampler(name, dist.sample)

    def _net(self, source: str, dest: str) -> Callable[[], float]:
        """One-way network latency of the edge ``source -> dest`` (shared by all its pods)."""
        key = f"network:{source}->{dest}"
        if key not in self._samplers:
            self._samplers[key] = self._sampler(key, self.scenario.network.latency)
        return self._samplers[key]

    def _hop_out(self, source: str, dest: str, mesh_hop: bool) -> Callable[[], float]:
        """Delay of the request leg: network, plus both proxies' overhead on a mesh hop."""
        net = self._net(source, dest)
        overhead = self.scenario.mesh.sidecar.hop_overhead
        if not mesh_hop or (isinstance(overhead, Constant) and overhead.value == 0):
            return net  # no sum to make: one call less on every request leg
        key = f"overhead:{source}->{dest}"
        if key not in self._samplers:
            self._samplers[key] = self._sampler(key, self.scenario.mesh.sidecar.hop_overhead)
        over = self._samplers[key]
        return lambda: net() + over()

    def _error_fn(self, state_name: str, stream: str, errors: Any) -> Callable[[], int] | None:
        if errors is None:
            return None
        status = errors.status
        if isinstance(status, dict):
            codes = list(status)
            cum = np.cumsum(list(status.values()))
            cum = (cum / cum[-1]).tolist()
            pick_u = self._shared_uniform(f"status:{stream}")

            def pick_status() -> int:
                u = pick_u()
                for code, c in zip(codes, cum, strict=True):
                    if u < c:
                        return code
                return codes[-1]
        else:
            code = status

            def pick_status() -> int:
                return code

        u = self._shared_uniform(stream)
        if isinstance(errors, BurstyErrors):
            rate = bursty_state(
                lambda: self.env._now, errors.mean_good, errors.mean_bad, errors.rate_good,
                errors.rate_bad,
                self.streams.sampler(f"bursty:{state_name}", _standard_exponential),
                self.streams.uniform(f"bursty-start:{state_name}"),
            )
            return lambda: pick_status() if u() < rate() else 0
        p = errors.rate
        return lambda: pick_status() if u() < p else 0

    def _shared_uniform(self, name: str) -> Callable[[], float]:
        if name not in self._samplers:
            self._samplers[name] = self.streams.uniform(name)
        return self._samplers[name]

    # ---- simulate ----------------------------------------------------------------------------

    def run(self, progress: Callable[[float], None] | None = None) -> Result:
        """Run to the scenario's duration and collect the results.

        Python's cyclic garbage collector is paused meanwhile. The hot path allocates an attempt
        and a few events per hop and keeps many of them alive for a while (in timers, queues and
        the records), which makes the collector's periodic full scans cost a quarter of a run
        with timeouts; those objects form no reference cycles (a finished call lets go of its
        attempt), so reference counting frees them all the same.
        """
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run(progress)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _run(self, progress: Callable[[float], None] | None) -> Result:
        wall = time.perf_counter()
        for cl in self.clusters:
            if cl.outlier is not None:
                self.router.start_outlier_timer(cl)
        for driver in self.clients:
            driver.start()
        self.faults.start()
        if progress is None:
            self.env.run(until=self.horizon)
        else:
            chunks = 100
            for k in range(1, chunks + 1):
                self.env.run(until=self.horizon * k / chunks)
                progress(self.env.now)
        sim_wall = time.perf_counter() - wall
        return Result.collect(self, sim_wall)


#: Pool limits at or above this are Istio's "unlimited" (2^32−1): nothing can overflow.
_UNLIMITED = 2**31


def _limits_pool(cfg: PoolConfig) -> bool:
    """Whether a pool configuration can ever refuse or queue a request (or delay one)."""
    return (min(cfg.max_connections, cfg.max_pending_requests, cfg.max_requests) < _UNLIMITED
            or cfg.max_requests_per_connection > 0)


#: retry_on conditions that plain responses can match; the others need connection failures,
#: resets or gRPC statuses, which nothing in a scenario produces yet (faults will).
_STATUS_CONDITIONS = frozenset({"5xx", "gateway-error", "retriable-4xx"})


def _retry_can_act(policy: RetryPolicy) -> bool:
    """Whether the retry/timeout policy can change any outcome in this scenario."""
    if policy.route_timeout is not None or policy.per_try_timeout is not None:
        return True
    if policy.num_retries <= 0:
        return False
    on = policy.retry_on
    return bool(on & _STATUS_CONDITIONS) or (
        "retriable-status-codes" in on and bool(policy.retriable_status_codes))


def _standard_exponential(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_exponential(n)


def _calls(step: Any) -> list[Call]:
    return [step] if isinstance(step, Call) else list(step.parallel)


def simulate(
    scenario: Scenario,
    seed: int | np.random.SeedSequence | None = None,
    progress: Callable[[float], None] | None = None,
) -> Result:
    """Run ``scenario`` once.

    Parameters
    ----------
    scenario : Scenario
    seed : int or numpy.random.SeedSequence, optional
        Overrides ``scenario.seed``.
    progress : callable, optional
        Called with the simulated time, 100 times during the run.
    """
    if seed is not None and not isinstance(seed, np.random.SeedSequence):
        scenario = scenario.model_copy(update={"seed": int(seed)})
    root = seed if isinstance(seed, np.random.SeedSequence) else scenario.seed
    return Engine(scenario, root).run(progress)
