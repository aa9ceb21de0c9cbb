"""Unit and property tests of Istio AuthorizationPolicy evaluation
(``../shared/envoy-semantics.md`` §8.3, §10.2): requests are checked by hand, no simulation runs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshsim.policies.rbac import (
    Action,
    AuthorizationPolicy,
    Authorizer,
    RbacDecision,
    RequestAttributes,
    matches_value,
)

SLEEP = "cluster.local/ns/default/sa/sleep"
DEV = "cluster.local/ns/dev/sa/tester"
ALLOWED = RbacDecision(True, None, None, None)
NO_ALLOW_MATCH = RbacDecision(False, 403, "-", "rbac_access_denied_matched_policy[none]")


def policy(name: str, spec: dict, namespace: str = "foo") -> AuthorizationPolicy:
    return AuthorizationPolicy.from_istio({"metadata": {"name": name, "namespace": namespace},
                                           "spec": spec})


def request(principal: str | None = SLEEP, method: str = "GET", path: str = "/") -> \
        RequestAttributes:
    return RequestAttributes(principal=principal, method=method, path=path)


# -- empty rules, allow-nothing, allow-all (§8.3; authorization_policy.proto) ---------------------

def test_no_policy_allows_everything():
    assert Authorizer([]).check(request(None)) == ALLOWED


def test_allow_nothing_spec_denies_every_request_with_matched_policy_none():
    # `spec: {}`: ALLOW with no rules matches nothing, and its existence requires a match.
    authorizer = Authorizer([policy("allow-nothing", {})])
    assert authorizer.check(request()) == NO_ALLOW_MATCH
    assert authorizer.stats["rbac.denied"] == 1


def test_deny_without_rules_does_nothing_but_one_empty_rule_denies_all():
    assert Authorizer([policy("noop", {"action": "DENY"})]).check(request()) == ALLOWED
    deny_all = Authorizer([policy("deny-all", {"action": "DENY", "rules": [{}]})])
    assert deny_all.check(request(None)) == RbacDecision(
        False, 403, "-", "rbac_access_denied_matched_policy[ns[foo]-policy[deny-all]-rule[0]]")


def test_allow_all_with_one_empty_rule():
    authorizer = Authorizer([policy("allow-nothing", {}), policy("allow-all", {"rules": [{}]})])
    assert authorizer.check(request(None, "DELETE", "/x")) == ALLOWED
    assert authorizer.stats["rbac.allowed"] == 1


# -- order: CUSTOM, DENY, ALLOW (§8.3) ----------------------------------------------------------

def test_deny_beats_allow_and_names_the_first_matching_envoy_policy():
    deny = policy("deny-post", {"action": "DENY", "rules": [
        {"to": [{"operation": {"methods": ["DELETE"]}}]},
        {"to": [{"operation": {"methods": ["POST"]}}]}]})
    also = policy("also-deny", {"action": "DENY", "rules": [
        {"to": [{"operation": {"paths": ["/admin*"]}}]}]})
    authorizer = Authorizer([policy("allow-all", {"rules": [{}]}), deny, also])
    assert authorizer.check(request(method="POST")).details == \
        "rbac_access_denied_matched_policy[ns[foo]-policy[deny-post]-rule[1]]"
    # Both policies match: Envoy's std::map reports the first name in order ("also-" < "deny-").
    assert authorizer.check(request(method="POST", path="/admin/x")).details == \
        "rbac_access_denied_matched_policy[ns[foo]-policy[also-deny]-rule[0]]"
    assert authorizer.check(request(method="GET")) == ALLOWED


def test_custom_runs_first_and_its_denial_is_uaex():
    asked = []

    def ext_authz(req: RequestAttributes) -> bool:
        asked.append(req.path)
        return req.path != "/admin/secret"

    custom = policy("ext-authz", {"action": "CUSTOM", "provider": {"name": "opa"},
                                  "rules": [{"to": [{"operation": {"paths": ["/admin/*"]}}]}]})
    deny_all = policy("deny-all", {"action": "DENY", "rules": [{}]})
    authorizer = Authorizer([deny_all, custom], ext_authz)
    assert authorizer.check(request(path="/admin/secret")) == RbacDecision(
        False, 403, "UAEX", "ext_authz_denied")
    # Allowed by the provider: DENY still applies (the extension cannot bypass it).
    assert authorizer.check(request(path="/admin/ok")).flags == "-"
    # Not matched by the CUSTOM rules: the provider is not asked.
    authorizer.check(request(path="/public"))
    assert asked == ["/admin/secret", "/admin/ok"]
    assert authorizer.stats == {"rbac.allowed": 0, "rbac.denied": 2, "ext_authz.ok": 1,
                                "ext_authz.denied": 1}


def test_audit_policies_change_nothing():
    audit = policy("audit", {"action": "AUDIT", "rules": [{}]})
    assert Authorizer([audit]).check(request()) == ALLOWED


# -- matching (authorization_policy.proto: Rule, Source, Operation) -------------------------------

def test_sources_and_operations_or_inside_and_between():
    # The example of the Istio reference: sleep's principal or namespace test, doing GET on
    # /info* or POST on /data.
    allow = policy("httpbin", {"rules": [{
        "from": [{"source": {"principals": [SLEEP]}}, {"source": {"namespaces": ["test"]}}],
        "to": [{"operation": {"methods": ["GET"], "paths": ["/info*"]}},
               {"operation": {"methods": ["POST"], "paths": ["/data"]}}]}]})
    authorizer = Authorizer([allow])
    tester = "cluster.local/ns/test/sa/any"
    assert [authorizer.check(r).allowed for r in (
        request(SLEEP, "GET", "/info/1?x=1"),  # the query string is not part of the path
        request(tester, "POST", "/data"),
        request(SLEEP, "POST", "/info"),
        request(DEV, "GET", "/info"),
        request(None, "GET", "/info"))] == [True, True, False, False, False]


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("abc", "abc", True), ("abc", "abcd", False),
    ("abc*", "abc", True), ("abc*", "abcd", True), ("abc*", "xabc", False),
    ("*abc", "abc", True), ("*abc", "xabc", True), ("*abc", "abcd", False),
    ("*", "x", True), ("*", "", False), ("*", None, False),
    ("a*c", "abc", False), ("a*c", "a*c", True),  # a middle star is literal
])
def test_exact_prefix_suffix_and_presence_match(pattern, value, expected):
    assert matches_value(pattern, value) is expected


def test_principal_star_needs_mtls_and_not_principals_matches_plaintext():
    authenticated = policy("mtls-only", {"rules": [{"from": [{"source": {"principals": ["*"]}}]}]})
    assert Authorizer([authenticated]).check(request(None)) == NO_ALLOW_MATCH
    assert Authorizer([authenticated]).check(request(SLEEP)) == ALLOWED
    deny_plain = policy("deny-plaintext", {"action": "DENY", "rules": [
        {"from": [{"source": {"notPrincipals": ["*"]}}]}]})
    assert not Authorizer([deny_plain]).check(request(None)).allowed
    assert Authorizer([deny_plain]).check(request(SLEEP)).allowed


def test_namespace_comes_from_the_principal():
    assert RequestAttributes(SLEEP).namespace == "default"
    assert RequestAttributes("spiffe://" + DEV).principal == DEV
    with pytest.raises(ValueError, match="without a principal"):
        RequestAttributes(namespace="dev")
    with pytest.raises(ValueError, match="does not match"):
        RequestAttributes(SLEEP, namespace="dev")
    deny_dev = policy("deny-dev", {"action": "DENY", "rules": [
        {"from": [{"source": {"namespaces": ["dev"]}}],
         "to": [{"operation": {"notMethods": ["GET", "HEAD"]}}]}]})
    authorizer = Authorizer([deny_dev])
    assert [authorizer.check(r).allowed for r in (
        request(DEV, "POST"), request(DEV, "GET"), request(SLEEP, "POST"),
        request(None, "POST"))] == [False, True, True, True]


# -- parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ({"rules": [{"when": [{"key": "request.headers[x]", "values": ["1"]}]}]},
     r"spec.rules\[0\].when: not supported"),
    ({"rules": [{}, {"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}]},
     r"spec.rules\[1\].from\[0\].source.ipBlocks: not supported"),
    ({"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]},
     r"spec.rules\[0\].to\[0\].operation.ports: not supported"),
    ({"rules": [{"to": [{"operation": {"paths": ["/api/{*}/x"]}}]}]}, "path templates"),
    ({"rules": [{"to": [{"operation": {"methods": "GET"}}]}]}, "list of non-empty strings"),
    ({"action": "REJECT"}, "spec.action"),
    ({"action": "CUSTOM", "rules": [{}]}, "provider"),
    ({"action": "DENY", "provider": {"name": "opa"}}, "provider"),
    ({"targetRef": {"kind": "Gateway", "name": "gw"}}, r"spec.targetRef: not supported"),
])
def test_unsupported_or_bad_fields_are_named(spec, message):
    with pytest.raises(ValueError, match=message):
        policy("p", spec)


def test_bare_spec_and_full_resource():
    bare = AuthorizationPolicy.from_istio({"action": "DENY", "rules": [{}]}, name="d",
                                          namespace="bar")
    assert (bare.name, bare.namespace, bare.action, bare.rule_name(0)) == (
        "d", "bar", Action.DENY, "ns[bar]-policy[d]-rule[0]")
    full = AuthorizationPolicy.from_istio({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "allow-nothing", "namespace": "bar"},
        "spec": {"selector": {"matchLabels": {"app": "httpbin"}}}})
    assert (full.action, full.rules, full.selector) == (Action.ALLOW, (), (("app", "httpbin"),))
    with pytest.raises(ValueError, match=r"metadata\.name"):
        AuthorizationPolicy.from_istio({"rules": [{}]})


def test_authorizer_refuses_custom_without_its_provider():
    custom = policy("c", {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]})
    with pytest.raises(ValueError, match="ext_authz callable"):
        Authorizer([custom])
    other = policy("d", {"action": "CUSTOM", "provider": {"name": "oauth"}, "rules": [{}]})
    with pytest.raises(ValueError, match="one CUSTOM provider"):
        Authorizer([custom, other], lambda r: True)


# -- properties ---------------------------------------------------------------------------------

NAMES = st.sampled_from(["default", "dev", "test"])
PRINCIPALS = st.one_of(st.none(), NAMES.map(lambda ns: f"cluster.local/ns/{ns}/sa/app"))
REQUESTS = st.builds(RequestAttributes, principal=PRINCIPALS,
                     method=st.sampled_from(["GET", "POST", "DELETE"]),
                     path=st.sampled_from(["/", "/info", "/admin/x", "/data?q=1"]))
RULES = st.lists(st.fixed_dictionaries({}, optional={
    "from": st.lists(st.builds(lambda ns: {"source": {"namespaces": [ns]}}, NAMES),
                     min_size=1, max_size=2),
    "to": st.lists(st.builds(lambda m: {"operation": {"methods": [m]}},
                             st.sampled_from(["GET", "POST", "*"])), min_size=1, max_size=2)}),
    max_size=3)


@settings(max_examples=200, deadline=None)
@given(allow_rules=st.lists(RULES, max_size=2), deny_rules=st.lists(RULES, max_size=2),
       req=REQUESTS)
def test_decision_is_istio_evaluation_order(allow_rules, deny_rules, req):
    allows = [policy(f"a{i}", {"rules": r}) for i, r in enumerate(allow_rules)]
    denies = [policy(f"d{i}", {"action": "DENY", "rules": r}) for i, r in enumerate(deny_rules)]
    decision = Authorizer(allows + denies).check(req)
    denied = any(p.matching_rules(req) for p in denies)
    allowed = not denied and (not allows or any(p.matching_rules(req) for p in allows))
    assert decision.allowed is allowed
    if not allowed:
        assert (decision.status, decision.flags) == (403, "-")
        assert decision.details.endswith("[none]") is (not denied)
    # Adding an allow-all policy never denies a request that was allowed.
    if allowed:
        everyone = allows + denies + [policy("everyone", {"rules": [{}]})]
        assert Authorizer(everyone).check(req).allowed
