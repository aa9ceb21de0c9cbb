"""``meshsim export istio``: manifests checked against Istio's typed models (cloudcoil) and read
back into a scenario.

The cloudcoil models accept unknown keys silently, so every manifest is validated *and* dumped
back: a key the round trip drops is a key Istio does not know (``../shared/design.md``, "Checking
exported Istio manifests").
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloudcoil.models.istio.networking import v1 as istio

import meshsim
from meshsim import export
from meshsim.cli import main
from meshsim.errors import ScenarioError
from meshsim.export import istio_duration, istio_manifests, manifests_yaml
from meshsim.istio import HTTPRoute, TrafficPolicy
from meshsim.scenario import Mesh, load_scenario, loads_scenario

ROOT = Path(__file__).parent.parent
FILES = sorted((ROOT / "scenarios").glob("*.yaml")) + sorted(
    (ROOT / "tests" / "cases" / "valid").glob("*.yaml"))
MODELS = {
    "DestinationRule": istio.DestinationRule,
    "VirtualService": istio.VirtualService,
    "ServiceEntry": istio.ServiceEntry,
    "Gateway": istio.Gateway,
    "Sidecar": istio.Sidecar,
}
#: Fields of Istio's API newer than the models on PyPI (cloudcoil-models-istio 1.24): meshsim
#: simulates them, the export writes them, the round trip drops them. Any other dropped key fails.
NEWER_THAN_MODELS = {
    ("DestinationRule", ("spec", "trafficPolicy", "retryBudget")),
    ("VirtualService", ("spec", "http", "[]", "retries", "backoff")),
    ("VirtualService", ("spec", "http", "[]", "retries", "retryIgnorePreviousHosts")),
}

#: Every Istio field meshsim takes, at the sidecars and at both gateways.
POLICIES = """
name: policies
duration: 10s
workload:
  - {client: web, entry: front, arrival: {rate: 10/s}}
  - {client: batch, entry: api, viaIngress: false, arrival: {rate: 1/s}}
services:
  front: {latency: 1ms, calls: [{to: api}, {to: api.payments.example}, {to: geo.example.com}]}
  api: {latency: 2ms, calls: [{to: db}]}
  db: {latency: 1ms}
externalServices:
  api.payments.example: {latency: 20ms}
  geo.example.com: {latency: 5ms}
mesh:
  ingressGateway:
    destinationRules:
      front: {trafficPolicy: {connectionPool: {http: {http2MaxRequests: 100}}}}
    virtualServices:
      front: {http: [{timeout: 3s, retries: {attempts: 1, retryOn: 5xx},
                      fault: {abort: {httpStatus: 503, percentage: {value: 0.1}}}}]}
  egressGateway:
    replicas: 1
    destinationRules:
      api.payments.example: {trafficPolicy: {outlierDetection: {consecutive5xxErrors: 3}}}
    virtualServices:
      api.payments.example: {http: [{timeout: 2s}]}
  destinationRules:
    api:
      trafficPolicy:
        loadBalancer: {simple: ROUND_ROBIN}
        connectionPool:
          tcp:
            maxConnections: 10
            connectTimeout: 250ms
            tcpKeepalive: {probes: 3, time: 10s, interval: 75s}
            idleTimeout: 30m
          http:
            http1MaxPendingRequests: 5
            http2MaxRequests: 20
            maxRequestsPerConnection: 1
            maxRetries: 3
            idleTimeout: 90s
            h2UpgradePolicy: UPGRADE
            useClientProtocol: false
            maxConcurrentStreams: 100
        outlierDetection:
          splitExternalLocalOriginErrors: true
          consecutiveLocalOriginFailures: 2
          consecutiveGatewayErrors: 4
          consecutive5xxErrors: 0
          interval: 1.5s
          baseEjectionTime: 0.009s
          maxEjectionPercent: 50
          minHealthPercent: 0
    db: {trafficPolicy: {retryBudget: {percent: 25.5, minRetryConcurrency: 2}}}
    geo.example.com: {}
  virtualServices:
    api:
      http:
        - name: primary
          timeout: 500ms
          retries: {attempts: 3, perTryTimeout: 100ms, retryOn: "5xx,gateway-error,503",
                    retryRemoteLocalities: false}
          fault:
            delay: {fixedDelay: 1500ms, percentage: {value: 2.5}}
            abort: {httpStatus: 429, percentage: {value: 0.5}}
        - fault: {delay: {fixedDelay: 5s, percent: 1}}
        - {timeout: 1s}
    db: {http: [{retries: {attempts: 2, retryIgnorePreviousHosts: false, backoff: 10ms}}]}
    api.payments.example: {http: [{timeout: 5s, retries: {attempts: 0}}]}
  sidecars:
    api: {inboundConnectionPool: {tcp: {maxConnections: 40}, http: {http1MaxPendingRequests: 10}}}
    db: {}
"""


def policies() -> meshsim.Scenario:
    return loads_scenario(POLICIES, "policies.yaml")


def all_scenarios() -> list[Any]:
    params = [pytest.param(load_scenario(p), id=p.stem) for p in FILES]
    return [*params, pytest.param(policies(), id="policies")]


# --------------------------------------------------------------------------------------------
# Validation against Istio's typed models
# --------------------------------------------------------------------------------------------


def round_trip(manifest: dict[str, Any]) -> dict[str, Any]:
    model = MODELS[manifest["kind"]].model_validate(manifest)
    return model.model_dump(by_alias=True, exclude_none=True, mode="json")


def key_paths(data: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every key path in ``data``; list items are ``[]``."""
    out = set()
    if isinstance(data, dict):
        for key, value in data.items():
            out.add((*prefix, key))
            out |= key_paths(value, (*prefix, key))
    elif isinstance(data, list):
        for item in data:
            out |= key_paths(item, (*prefix, "[]"))
    return out


def dropped_keys(before: dict[str, Any], after: dict[str, Any]) -> set[tuple[str, ...]]:
    """Key paths of ``before`` missing from ``after``, outermost only."""
    missing = key_paths(before) - key_paths(after)
    return {p for p in missing if p[:-1] not in missing and p[:-2] not in missing}


def without_newer(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest less the fields of :data:`NEWER_THAN_MODELS`."""
    out = copy.deepcopy(manifest)
    for kind, path in NEWER_THAN_MODELS:
        if kind == manifest["kind"]:
            _drop(out, path)
    return out


def _drop(node: Any, path: tuple[str, ...]) -> None:
    if isinstance(node, list):
        for item in node:
            _drop(item, path)
    elif isinstance(node, dict) and path[0] in node:
        if len(path) == 1:
            del node[path[0]]
        elif path[1] == "[]":
            _drop(node[path[0]], path[2:])
        else:
            _drop(node[path[0]], path[1:])


@pytest.mark.parametrize("scenario", all_scenarios())
def test_every_manifest_validates_and_round_trips(scenario):
    manifests = istio_manifests(scenario, "shop")
    assert "&id0" not in manifests_yaml(manifests)  # no YAML aliases for a reviewer to chase
    for m in manifests:
        out = round_trip(m)
        dropped = {(m["kind"], p) for p in dropped_keys(m, out)}
        assert dropped <= NEWER_THAN_MODELS, f"keys Istio does not know: {dropped}"
        assert out == without_newer(m)


def test_the_newer_fields_are_the_only_ones_dropped():
    """The allowance above is used, and only for these fields (drop it once the models know
    them)."""
    dropped = set()
    for m in istio_manifests(policies()):
        dropped |= {(m["kind"], p) for p in dropped_keys(m, round_trip(m))}
    assert dropped == NEWER_THAN_MODELS


def test_a_misspelt_field_is_caught_by_the_round_trip():
    m = next(m for m in istio_manifests(policies()) if m["kind"] == "DestinationRule"
             and "outlierDetection" in m["spec"].get("trafficPolicy", {}))
    assert round_trip(m) == m
    bad = copy.deepcopy(m)
    outlier = bad["spec"]["trafficPolicy"]["outlierDetection"]
    outlier["consecutive5xxError"] = outlier.pop("consecutive5xxErrors")
    MODELS["DestinationRule"].model_validate(bad)  # accepted silently ...
    assert round_trip(bad) != bad  # ... but the round trip drops it
    assert "consecutive5xxError" not in round_trip(bad)["spec"]["trafficPolicy"][
        "outlierDetection"]


@pytest.mark.parametrize("scenario", all_scenarios())
def test_names_are_dns_labels_and_unique(scenario):
    seen = set()
    for m in istio_manifests(scenario):
        meta = m["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", meta["name"]), meta["name"]
        key = (m["kind"], meta["namespace"], meta["name"])
        assert key not in seen
        seen.add(key)


# --------------------------------------------------------------------------------------------
# The policies are the scenario's
# --------------------------------------------------------------------------------------------


def by_source(manifests: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["annotations"][export.SOURCE_ANNOTATION]: m for m in manifests}


def test_traffic_policies_and_routes_equal_the_scenarios():
    sc = policies()
    found = by_source(istio_manifests(sc, "shop"))
    blocks = [("mesh", sc.mesh)]
    blocks += [("mesh.ingressGateway", sc.mesh.ingress_gateway),
               ("mesh.egressGateway", sc.mesh.egress_gateway)]
    checked = 0
    for where, block in blocks:
        for host, rule in block.destination_rules.items():
            spec = found[f"{where}.destinationRules.{host}"]["spec"]
            if rule.traffic_policy is None:
                assert "trafficPolicy" not in spec
            else:
                assert TrafficPolicy.model_validate(spec["trafficPolicy"]) == rule.traffic_policy
                assert spec["trafficPolicy"] == export.istio_block(rule.traffic_policy)
            checked += 1
        for host, vs in block.virtual_services.items():
            spec = found[f"{where}.virtualServices.{host}"]["spec"]
            routes = [{k: v for k, v in r.items() if k != "route"} for r in spec["http"]]
            assert [HTTPRoute.model_validate(r) for r in routes] == vs.http
            assert [r.get("retries") for r in routes] == [
                export.istio_block(r.retries) if r.retries else None for r in vs.http]
            checked += 1
    assert checked == 10


def test_hosts_and_destinations():
    found = by_source(istio_manifests(policies(), "shop"))
    api = found["mesh.destinationRules.api"]
    assert api["metadata"] == {
        "name": "api", "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "meshsim"},
        "annotations": {"meshsim/source": "mesh.destinationRules.api"},
    }
    assert api["spec"]["host"] == "api.shop.svc.cluster.local"
    assert found["mesh.destinationRules.geo.example.com"]["spec"] == {"host": "geo.example.com"}
    assert found["mesh.destinationRules.geo.example.com"]["metadata"]["name"] == "geo-example-com"
    vs = found["mesh.virtualServices.api"]["spec"]
    assert vs["hosts"] == ["api"] and "gateways" not in vs
    assert vs["http"][0] == {
        "name": "primary",
        "route": [{"destination": {"host": "api.shop.svc.cluster.local"}}],
        "timeout": "500ms",
        "retries": {"attempts": 3, "perTryTimeout": "100ms", "retryOn": "5xx,gateway-error,503",
                    "retryRemoteLocalities": False},
        "fault": {"delay": {"fixedDelay": "1500ms", "percentage": {"value": 2.5}},
                  "abort": {"httpStatus": 429, "percentage": {"value": 0.5}}},
    }
    assert vs["http"][1]["fault"] == {"delay": {"fixedDelay": "5s", "percent": 1}}
    gw_rule = found["mesh.ingressGateway.destinationRules.front"]
    assert gw_rule["metadata"]["namespace"] == "istio-system"
    assert gw_rule["spec"]["workloadSelector"] == {"matchLabels": {"istio": "ingressgateway"}}
    assert gw_rule["spec"]["host"] == "front.shop.svc.cluster.local"


def test_subsets_and_weighted_destinations():
    sc = load_scenario(ROOT / "tests" / "cases" / "valid" / "versions-subsets.yaml")
    found = by_source(istio_manifests(sc, "shop"))
    rule = found["mesh.destinationRules.reviews"]["spec"]
    assert [s["name"] for s in rule["subsets"]] == ["v1", "v2", "all"]
    assert rule["subsets"][0] == {"name": "v1", "labels": {"version": "v1"}}
    assert rule["subsets"][1]["trafficPolicy"]["outlierDetection"]["interval"] == "1s"
    assert rule["subsets"][2] == {"name": "all"}  # no labels: every pod
    host = "reviews.shop.svc.cluster.local"
    assert found["mesh.virtualServices.reviews"]["spec"]["http"][0]["route"] == [
        {"destination": {"host": host, "subset": "v1"}, "weight": 80},
        {"destination": {"host": host, "subset": "v2", "port": {"number": 9080}}, "weight": 20},
        {"destination": {"host": host, "subset": "all"}, "weight": 0},
    ]
    gateway = found["mesh.ingressGateway.virtualServices.productpage"]["spec"]
    assert gateway["gateways"] == ["ingress-gateway"]
    assert [(d["destination"]["subset"], d["weight"]) for d in gateway["http"][0]["route"]] == [
        ("stable", 95), ("canary", 5)]
    gw_rule = found["mesh.ingressGateway.destinationRules.productpage"]["spec"]
    assert [s["name"] for s in gw_rule["subsets"]] == ["stable", "canary"]
    for m in found.values():
        assert round_trip(m) == m


def test_service_entries():
    entries = [m for m in istio_manifests(policies()) if m["kind"] == "ServiceEntry"]
    assert [m["spec"] for m in entries] == [
        {"hosts": [host], "location": "MESH_EXTERNAL",
         "ports": [{"number": 443, "name": "https", "protocol": "HTTPS"}], "resolution": "DNS"}
        for host in ("api.payments.example", "geo.example.com")
    ]


def test_ingress_gateway_and_its_routes():
    found = by_source(istio_manifests(policies()))
    gateway = found["mesh.ingressGateway"]
    assert gateway["kind"] == "Gateway" and gateway["metadata"]["name"] == "ingress-gateway"
    assert gateway["spec"]["selector"] == {"istio": "ingressgateway"}
    front = found["mesh.ingressGateway.virtualServices.front"]["spec"]
    assert front == {
        "hosts": ["front"],
        "gateways": ["ingress-gateway"],
        "http": [{"route": [{"destination": {"host": "front.default.svc.cluster.local"}}],
                  "timeout": "3s", "retries": {"attempts": 1, "retryOn": "5xx"},
                  "fault": {"abort": {"httpStatus": 503, "percentage": {"value": 0.1}}}}],
    }


def test_an_entry_without_a_gateway_route_gets_a_plain_one():
    found = by_source(istio_manifests(load_scenario(ROOT / "scenarios" / "three-tier.yaml")))
    assert found["workload[0].entry"]["spec"] == {
        "hosts": ["a"], "gateways": ["ingress-gateway"],
        "http": [{"route": [{"destination": {"host": "a.default.svc.cluster.local"}}]}],
    }
    assert "mesh.ingressGateway" in found


def test_egress_pattern():
    found = {(m["kind"], m["metadata"]["name"]): m for m in istio_manifests(policies())}
    gateway = found["Gateway", "egress-gateway"]["spec"]
    assert gateway["selector"] == {"istio": "egressgateway"}
    assert gateway["servers"][1] == {
        "port": {"number": 443, "name": "tls", "protocol": "TLS"},
        "hosts": ["api.payments.example", "geo.example.com"], "tls": {"mode": "PASSTHROUGH"}}
    egress_svc = {"host": "istio-egressgateway.istio-system.svc.cluster.local"}
    # The sidecars send the external host to the egress gateway ...
    geo = found["VirtualService", "geo-example-com"]["spec"]
    assert geo == {"hosts": ["geo.example.com"], "tls": [{
        "match": [{"port": 443, "sniHosts": ["geo.example.com"]}],
        "route": [{"destination": {**egress_svc, "port": {"number": 443}}}]}]}
    # ... and the gateway sends it on to the host.
    geo_gw = found["VirtualService", "geo-example-com-egress"]["spec"]
    assert geo_gw == {"hosts": ["geo.example.com"], "gateways": ["egress-gateway"], "tls": [{
        "match": [{"gateways": ["egress-gateway"], "port": 443, "sniHosts": ["geo.example.com"]}],
        "route": [{"destination": {"host": "geo.example.com", "port": {"number": 443}}}]}]}
    # Routes of the scenario ride along for HTTP.
    pay = found["VirtualService", "api-payments-example"]["spec"]
    assert pay["http"] == [{"route": [{"destination": {**egress_svc, "port": {"number": 80}}}],
                            "timeout": "5s", "retries": {"attempts": 0}}]
    pay_gw = found["VirtualService", "api-payments-example-egress"]["spec"]
    assert pay_gw["http"] == [{"route": [{"destination": {
        "host": "api.payments.example", "port": {"number": 443}}}], "timeout": "2s"}]


def test_sidecar_carries_the_pods_own_inbound_limits():
    sidecars = [m for m in istio_manifests(policies()) if m["kind"] == "Sidecar"]
    # db's Sidecar sets nothing, so nothing is written for it.
    assert [(m["metadata"]["name"], m["spec"]) for m in sidecars] == [("api", {
        "workloadSelector": {"labels": {"app": "api"}},
        "inboundConnectionPool": {"tcp": {"maxConnections": 40},
                                  "http": {"http1MaxPendingRequests": 10}}})]
    assert sidecars[0]["metadata"]["annotations"][export.SOURCE_ANNOTATION] == "mesh.sidecars.api"


def test_no_egress_gateway_no_egress_routes():
    kinds = [(m["kind"], m["metadata"]["name"])
             for m in istio_manifests(load_scenario(ROOT / "tests/cases/valid/external.yaml"))]
    assert kinds == [("Gateway", "ingress-gateway"), ("ServiceEntry", "payments"),
                     ("ServiceEntry", "geo"), ("VirtualService", "checkout-ingress")]


# --------------------------------------------------------------------------------------------
# Reading the blocks back
# --------------------------------------------------------------------------------------------


def mesh_from_manifests(manifests: list[dict[str, Any]], namespace: str) -> dict[str, Any]:
    """The ``destinationRules`` / ``virtualServices`` of a scenario's ``mesh`` section, read from
    manifests: the gateway from ``workloadSelector`` / ``gateways``, the host from
    ``spec.host`` / ``hosts``, the blocks from ``trafficPolicy`` and ``http``. Routes the export
    made up (a plain route for an entry, TLS routing through the egress gateway) carry no block
    and are skipped."""
    suffix = f".{namespace}.svc.cluster.local"
    selectors = {"ingressgateway": "ingressGateway", "egressgateway": "egressGateway"}
    gateways = {"ingress-gateway": "ingressGateway", "egress-gateway": "egressGateway"}
    mesh: dict[str, Any] = {}
    for m in manifests:
        spec = m["spec"]
        if m["kind"] == "DestinationRule":
            labels = spec.get("workloadSelector", {}).get("matchLabels", {})
            where = selectors.get(labels.get("istio", ""))
            host = spec["host"].removesuffix(suffix)
            block = {k: spec[k] for k in ("trafficPolicy", "subsets") if k in spec}
            _section(mesh, where, "destinationRules")[host] = block
        elif m["kind"] == "VirtualService" and "http" in spec:
            if not m["metadata"]["annotations"][export.SOURCE_ANNOTATION].startswith("mesh."):
                continue
            where = gateways[spec["gateways"][0]] if "gateways" in spec else None
            routes = [_route_back(r, suffix) for r in spec["http"]]
            _section(mesh, where, "virtualServices")[spec["hosts"][0]] = {"http": routes}
    return mesh


def _route_back(route: dict[str, Any], suffix: str) -> dict[str, Any]:
    """An ``http`` route as the scenario writes it: the destinations kept only where they say
    more than the host (a subset, a weight, a port the export did not make up), hosts short."""
    out = {k: v for k, v in route.items() if k not in ("route", "match")}
    dests = copy.deepcopy(route["route"])
    for d in dests:
        d["destination"]["host"] = d["destination"]["host"].removesuffix(suffix)
    if len(dests) > 1 or "weight" in dests[0] or "subset" in dests[0]["destination"]:
        out["route"] = dests
    return out


def _section(mesh: dict[str, Any], gateway: str | None, field: str) -> dict[str, Any]:
    node = mesh if gateway is None else mesh.setdefault(gateway, {})
    return node.setdefault(field, {})


@pytest.mark.parametrize("scenario", all_scenarios())
def test_reading_the_manifests_back_gives_the_same_mesh(scenario):
    text = manifests_yaml(istio_manifests(scenario, "shop"))
    read = mesh_from_manifests(list(yaml.safe_load_all(text)), "shop")
    data = scenario.mesh.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert set(read) <= {"destinationRules", "virtualServices", *data}
    for node, got in [(data, read), *[(data[g], read.get(g, {})) for g in
                                      ("ingressGateway", "egressGateway") if g in data]]:
        node["destinationRules"] = got.get("destinationRules", {})
        node["virtualServices"] = got.get("virtualServices", {})
    assert Mesh.model_validate(data) == scenario.mesh


# --------------------------------------------------------------------------------------------
# Names, durations, bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "text"), [
    (10.0, "10s"), (0.25, "250ms"), (1.5, "1500ms"), (0.0001, "0.0001s"), (0.0, "0s"),
    (3600.0, "3600s"), (0.009, "9000us"), (0.009000000000000001, "9ms"), (1e-9, "1ns"),
    (0.1 + 0.2, "300000000ns"), (meshsim.units.parse_duration("100us"), "100us"),
])
def test_istio_durations(seconds, text):
    assert istio_duration(seconds) == text
    assert meshsim.units.parse_duration(text) == seconds


def test_dns_labels():
    assert export.dns_label("api.payments.example") == "api-payments-example"
    assert export.dns_label("x" * 80) == "x" * 56 + "-" + export.dns_label("x" * 80)[-6:]
    assert len(export.dns_label("x" * 80)) == 63
    assert export.dns_label("a") != export.dns_label("a", force_hash=True)


def test_colliding_names_get_a_hash():
    sc = loads_scenario(POLICIES.replace("geo.example.com", "geo-example.com"))
    names = [m["metadata"]["name"] for m in istio_manifests(sc) if m["kind"] == "ServiceEntry"]
    assert names[0] == "api-payments-example"
    assert names[1] == "geo-example-com"
    sc = loads_scenario(POLICIES.replace("geo.example.com", "api-payments.example"))
    names = [m["metadata"]["name"] for m in istio_manifests(sc) if m["kind"] == "ServiceEntry"]
    assert names[0] == "api-payments-example" and names[1].startswith("api-payments-example-")
    assert len(set(names)) == 2


def test_a_host_that_cannot_be_a_kubernetes_name_is_refused():
    sc = loads_scenario(POLICIES.replace("db", "Db_Main"))
    with pytest.raises(ScenarioError) as info:
        istio_manifests(sc)
    assert [i.path for i in info.value.issues] == [("services", "Db_Main")]
    with pytest.raises(ScenarioError):
        istio_manifests(policies(), namespace="Shop")


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def cli(capsys, *args: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_prints_a_yaml_stream(capsys):
    path = ROOT / "scenarios" / "shop.yaml"
    code, out, err = cli(capsys, "export", "istio", path, "--namespace", "shop")
    assert (code, err) == (0, "")
    assert out.startswith("---\napiVersion: networking.istio.io/v1\n")
    assert list(yaml.safe_load_all(out)) == istio_manifests(load_scenario(path), "shop")


def test_export_writes_one_file_per_kind(capsys, tmp_path):
    out_dir = tmp_path / "manifests"
    code, out, err = cli(capsys, "export", "istio", ROOT / "scenarios" / "shop.yaml",
                         "-o", out_dir)
    assert (code, err) == (0, "")
    assert out == f"8 resources written to {out_dir}\n"
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "README.txt", "destinationrules.yaml", "gateways.yaml", "serviceentries.yaml",
        "virtualservices.yaml"]
    docs = [d for f in sorted(out_dir.glob("*.yaml"))
            for d in yaml.safe_load_all(f.read_text())]
    assert {d["kind"] for d in docs} == set(export.KIND_FILES) - {"Sidecar"}  # shop has none
    kinds = {f.name: {d["kind"] for d in yaml.safe_load_all(f.read_text())}
             for f in out_dir.glob("*.yaml")}
    assert all({export.KIND_FILES[k] for k in v} == {name} for name, v in kinds.items())
    # An earlier export is replaced (mmc has no policies and no gateway: nothing to apply).
    code, out, err = cli(capsys, "export", "istio", ROOT / "scenarios" / "mmc.yaml", "-o", out_dir)
    assert (code, out, err) == (0, f"0 resources written to {out_dir}\n", "")
    assert [p.name for p in out_dir.iterdir()] == ["README.txt"]
    # A foreign directory is refused and left alone.
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.md").write_text("mine")
    code, out, err = cli(capsys, "export", "istio", ROOT / "scenarios" / "shop.yaml",
                         "-o", foreign)
    assert code == 2 and "does not look like a meshsim output directory" in err
    assert (foreign / "notes.md").read_text() == "mine"


def test_export_bad_input_exits_2_with_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("duration: 1s\nservices:\n  Api_Main: {latency: 1ms}\n"
                   "workload:\n  - {client: u, entry: Api_Main, arrival: {rate: 1/s}}\n")
    code, out, err = cli(capsys, "export", "istio", bad)
    assert (code, out) == (2, "")
    assert err.startswith(f"{bad}:3: services.Api_Main: 'Api_Main' cannot be a Kubernetes ")
    invalid = ROOT / "tests" / "cases" / "invalid" / "unknown-call-target.yaml"
    code, out, err = cli(capsys, "export", "istio", invalid)
    assert (code, out) == (2, "") and err.startswith(f"{invalid}:")
    with pytest.raises(SystemExit) as info:
        main(["export", "istio", str(ROOT / "scenarios" / "shop.yaml"), "--namespace", "Shop"])
    assert info.value.code == 2
    assert "--namespace: expected a Kubernetes namespace name" in capsys.readouterr().err


def test_rate_limits_are_not_exported_and_the_export_says_so(capsys, tmp_path):
    # Istio has no API for rate limits (EnvoyFilter territory): nothing carries them, and both
    # the CLI and README.txt name the blocks left out.
    path = ROOT / "tests" / "cases" / "valid" / "rate-limits.yaml"
    scenario = load_scenario(path)
    assert export.not_exported(scenario) == [
        "mesh.ingressGateway.localRateLimit", "mesh.ingressGateway.globalRateLimit",
        "mesh.sidecars.cart.localRateLimit", "mesh.rateLimitService"]
    assert {m["kind"] for m in istio_manifests(scenario)} == {"Gateway", "VirtualService"}
    assert export.not_exported(load_scenario(ROOT / "scenarios" / "shop.yaml")) == []
    code, out, err = cli(capsys, "export", "istio", path, "-o", tmp_path / "out")
    assert code == 0 and out.startswith("2 resources written")
    assert err.startswith("meshsim: Not exported: settings Istio has no API for.")
    assert "  mesh.sidecars.cart.localRateLimit\n" in err
    readme = (tmp_path / "out" / "README.txt").read_text()
    assert readme.endswith(export.NOT_EXPORTED_NOTE + "\n  mesh.ingressGateway.localRateLimit\n"
                           "  mesh.ingressGateway.globalRateLimit\n"
                           "  mesh.sidecars.cart.localRateLimit\n  mesh.rateLimitService\n")


def test_breakers_and_envoy_filters_are_listed_as_not_exported():
    sc = load_scenario(ROOT / "tests" / "cases" / "valid" / "breakers.yaml")
    assert export.not_exported(sc) == [
        "services.api.breakers.cart", "services.api.breakers.stock",
        "services.api.breakers.pay.example.com", "mesh.ingressGateway.breakers.api",
        "mesh.egressGateway.breakers.pay.example.com"]
    sc = sc.with_overrides({"mesh.sidecars.api": {
        "adaptiveConcurrency": {"gradient_controller_config": {
            "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
            "min_rtt_calc_params": {"interval": "60s"}}},
        "admissionControl": {"cart": {"success_criteria": {}}}}})
    assert export.not_exported(sc)[:2] == ["mesh.sidecars.api.adaptiveConcurrency",
                                           "mesh.sidecars.api.admissionControl.cart"]
