"""App-level circuit breakers in whole scenarios (``services.<caller>.breakers``, the gateways'
``breakers``) and the plug-in API (``kind: custom``).

The state machines themselves are pinned in ``tests/policies/test_breakers.py``; here the
engine's part: a refused call never leaves the app and gets ``whenOpen``; an admitted call's
outcome, after the sidecar's retries, reaches the breaker; each calling pod has its own breaker;
custom classes run and show in ``Result.events``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_conserved, build, closed, everything, poisson

import meshsim
from meshsim.app_breakers import register_breaker
from meshsim.errors import ScenarioError

ALWAYS_503 = {"rate": 1.0, "status": 503}


def failing(breaker: dict, *, replicas: int = 1, duration: str = "30s") -> meshsim.Scenario:
    """One user calls a (``replicas`` pods) every 0.1 s; a calls b, which always fails."""
    services = {
        "a": {"replicas": replicas, "latency": "0ms", "calls": [{"to": "b"}],
              "breakers": {"b": breaker}},
        "b": {"latency": "10ms", "errors": ALWAYS_503},
    }
    return build(services, [closed("a", think="0.1s")], duration=duration)


def hops(result: meshsim.Result, dest: str = "b"):
    both = everything(result)
    return both[both["destination"] == dest].sort_values("t_start")


def test_a_consecutive_breaker_opens_after_fail_max_and_probes_after_the_reset_timeout():
    r = meshsim.run(failing({"kind": "consecutive", "failMax": 5, "resetTimeout": "10s"}),
                    seed=1)
    assert_conserved(r)
    b = hops(r)
    sent = b[b["host"] != "-"]
    refused = b[b["host"] == "-"]
    # Five failures open it; then one trial call every 10 s (it fails: open again).
    opened = r.events.query("kind == 'breaker_open'")["t"].to_numpy()
    assert len(opened) == 3  # at the 5th failure, after the probes at ~10 s and ~20 s
    assert np.allclose(np.diff(opened), 10.0, atol=0.11)
    assert len(sent) == 5 + 2
    assert set(sent["status"]) == {503} and set(sent["flags"]) == {"-"}
    # Refused calls fail fast inside a: 503, flag breaker_open, no time, no host.
    assert set(refused["status"]) == {503} and set(refused["flags"]) == {"breaker_open"}
    assert (refused["t_end"] == refused["t_start"]).all() and refused["t_arrive"].isna().all()
    assert len(refused) > 200
    st = r.stats.query("cluster == 'b'").set_index("stat")["value"]
    assert st["app_circuit_breaker.calls_not_permitted"] == len(refused)
    assert st["app_circuit_breaker.failures"] == len(sent)


def test_a_fallback_answers_refused_calls_after_its_latency():
    breaker = {"kind": "consecutive", "failMax": 3, "resetTimeout": "1h",
               "whenOpen": {"fallback": {"status": 200, "latency": "5ms"}}}
    r = meshsim.run(failing(breaker, duration="5s"), seed=1)
    b = hops(r)
    fallback = b[b["flags"] == "fallback"]
    assert len(fallback) > 30 and set(fallback["status"]) == {200}
    assert np.allclose(fallback["t_end"] - fallback["t_start"], 0.005)
    # The end users see a's answers: 500 for the three failures, then 200 from the fallback.
    roots = r.end_to_end().sort_values("t_start")
    assert roots["status"].tolist()[:3] == [500, 500, 500]
    assert set(roots["status"].iloc[3:]) == {200}


def test_each_calling_pod_has_its_own_breaker():
    r = meshsim.run(failing({"kind": "consecutive", "failMax": 5, "resetTimeout": "1h"},
                            replicas=2), seed=1)
    b = hops(r)
    pod_of = everything(r).set_index("span_id")["host"]
    sent = b[b["host"] != "-"]
    callers = pod_of.loc[sent["parent_span_id"]].value_counts().to_dict()
    assert callers == {"a-0": 5, "a-1": 5}
    assert set(r.events.query("kind == 'breaker_open'")["source"]) == {"a-0", "a-1"}


def test_the_breaker_sees_the_outcome_after_the_sidecars_retries():
    # b fails 50 % of the time; with retryOn 5xx and 2 retries, a sees a failure only when all
    # three tries fail (12.5 %). A breaker counting 5 consecutive failures then opens far later
    # than one without the retries would: it records one outcome per call, not per try.
    services = {"a": {"latency": "0ms", "calls": [{"to": "b"}],
                      "breakers": {"b": {"kind": "consecutive", "failMax": 1000,
                                         "resetTimeout": "1h"}}},
                "b": {"latency": "1ms", "errors": {"rate": 0.5, "status": 503}}}
    mesh = {"virtualServices": {"b": {"http": [{"retries": {"attempts": 2, "retryOn": "5xx"}}]}}}
    r = meshsim.run(build(services, [closed("a", think="0.01s")], duration="20s", mesh=mesh),
                    seed=1)
    st = r.stats.query("cluster == 'b'").set_index("stat")["value"]
    calls = st["app_circuit_breaker.successes"] + st["app_circuit_breaker.failures"]
    roots = r.end_to_end()
    assert calls == len(roots[roots["t_end"].notna()])
    share = st["app_circuit_breaker.failures"] / calls
    # Binomial(calls, 1/8): 99.9 % two-sided bound.
    assert abs(share - 0.125) <= 3.3 * np.sqrt(0.125 * 0.875 / calls)


def test_a_breaker_at_the_ingress_gateway_flags_the_clients_row():
    services = {"a": {"latency": "1ms", "errors": ALWAYS_503}}
    mesh = {"ingressGateway": {"replicas": 1, "breakers": {"a": {
        "kind": "consecutive", "failMax": 2, "resetTimeout": "1h",
        "whenOpen": {"status": 429}}}}}
    sc = build(services, [closed("a", think="0.1s", via_ingress=True)], duration="2s", mesh=mesh)
    r = meshsim.run(sc, seed=1)
    roots = r.end_to_end().sort_values("t_start")
    assert roots["status"].tolist()[:2] == [503, 503]
    assert set(roots["status"].iloc[2:]) == {429}
    assert set(roots["flags"].astype(str).iloc[2:]) == {"breaker_open"}


# ---- the plug-in API ---------------------------------------------------------------------------


class EveryOther:
    """A custom breaker: refuses every other call; counts what it hears."""

    def __init__(self, label: str = "alt", start_open: bool = False):
        self.label = label
        self.closed = start_open  # allow() flips it first: the first call passes
        self.events: list[tuple[float, str, int, str]] = []
        self.stats = {"heard": 0}

    def allow(self, now: float) -> bool:
        self.closed = not self.closed
        self.events.append((now, f"{self.label}_{'pass' if self.closed else 'refuse'}", -1, ""))
        return self.closed

    def on_result(self, now: float, failure: bool, duration: float) -> None:
        self.stats["heard"] += 1


CUSTOM_YAML = """
duration: 2s
services:
  a: {{latency: 0ms, calls: [{{to: b}}], breakers: {{b: {breaker}}}}}
  b: {{latency: 1ms}}
workload:
  - {{client: u, entry: a, viaIngress: false, arrival: {{kind: closed, users: 1,
     thinkTime: {{kind: constant, value: 0.1s}}}}}}
mesh: {{sidecar: {{hopOverhead: 0ms}}}}
network: {{latency: 0ms}}
"""


@pytest.mark.parametrize("name", ["test_app_breakers:EveryOther", "every-other"])
def test_a_custom_breaker_runs_and_shows_in_the_events(name):
    register_breaker("every-other", EveryOther)
    breaker = f"{{kind: custom, class: '{name}', params: {{label: odd}}}}"
    r = meshsim.run(meshsim.loads_scenario(CUSTOM_YAML.format(breaker=breaker), "custom.yaml"))
    b = hops(r)
    assert b["flags"].astype(str).tolist()[:4] == ["-", "breaker_open", "-", "breaker_open"]
    kinds = r.events.query("source == 'a-0'")["kind"].tolist()
    assert kinds[:4] == ["odd_pass", "odd_refuse", "odd_pass", "odd_refuse"]
    st = r.stats.query("cluster == 'b'").set_index("stat")["value"]
    assert st["app_circuit_breaker.heard"] == (b["host"] != "-").sum()


@pytest.mark.parametrize(("breaker", "message"), [
    ("{kind: custom, class: 'test_app_breakers:EveryOhter'}",
     "has no class 'EveryOhter' (did you mean 'EveryOther'?)"),
    ("{kind: custom, class: 'no_such_module_here:X'}", "cannot import module"),
    ("{kind: custom, class: 'test_app_breakers:EveryOther', params: {lable: x}}",
     "EveryOther takes no parameter 'lable' (did you mean 'label'?)"),
    ("{kind: custom, class: 'test_app_breakers:ALWAYS_503'}", "has no class"),
    ("{kind: custom, class: 'not-registered'}", "no breaker class registered"),
    ("{kind: custom, class: 'test_app_breakers:NotABreaker'}", "implements neither"),
    ("{kind: hystrix, rollingStatsTime: 10s, rollingStatsNumBuckets: 3}", "whole-ms buckets"),
    ("{kind: polly, failureRatio: 1.5}", "failureRatio: must be <= 1"),
])
def test_a_bad_breaker_is_a_scenario_error_with_its_path(breaker, message):
    with pytest.raises(ScenarioError) as err:
        meshsim.loads_scenario(CUSTOM_YAML.format(breaker=breaker), "custom.yaml")
    text = str(err.value)
    assert "custom.yaml:4: services.a.breakers.b" in text and message in text


class NotABreaker:
    def __init__(self) -> None:
        pass


# ---- Envoy's admission control at the caller's sidecar -----------------------------------------


def admission(error_rate: float) -> meshsim.Scenario:
    services = {"a": {"latency": "0ms", "workers": 1000, "calls": [{"to": "b"}]},
                "b": {"latency": "1ms", "workers": 1000,
                      "errors": {"rate": error_rate, "status": 503}}}
    mesh = {"sidecars": {"a": {"admissionControl": {"b": {
        "success_criteria": {}, "sampling_window": "10s", "sr_threshold": {"default_value": {
            "value": 95}}, "max_rejection_probability": {"default_value": {"value": 80}}}}}}}
    return build(services, [{"client": "u", "entry": "a", "viaIngress": False,
                             "arrival": {"kind": "poisson", "rate": "200/s"}}],
                 duration="30s", mesh=mesh)


def test_admission_control_sheds_up_to_its_maximum_while_the_destination_fails():
    # b succeeds 10 % of the time: (total − successes / 0.95) / (total + 1) ≈ 0.89, capped at
    # max_rejection_probability 80 %. Rejected requests are not recorded (Envoy), so the window
    # keeps b's own success rate and the probability stays at the cap.
    r = meshsim.run(admission(0.9), seed=1)
    b = hops(r)
    b = b[b["t_start"] >= 10]  # once the sampling window is full
    rejected = (b["host"] == "-") & (b["status"] == 503)
    n = len(b)
    assert n > 3500  # 200/s for 20 s
    assert abs(rejected.mean() - 0.8) <= 3.3 * np.sqrt(0.8 * 0.2 / n)
    assert set(b.loc[rejected, "flags"]) == {"-"} and b.loc[rejected, "t_arrive"].isna().all()
    st = r.stats.query("cluster == 'b'").set_index("stat")["value"]
    assert st["admission_control.rq_rejected"] == int(((everything(r)["destination"] == "b")
                                                       & (everything(r)["host"] == "-")).sum())


def test_admission_control_lets_everything_through_to_a_healthy_destination():
    r = meshsim.run(admission(0.0), seed=1)
    b = hops(r)
    assert (b["host"] != "-").all() and len(b) > 5000


# ---- Envoy's adaptive concurrency in the destination's sidecar ---------------------------------


def test_adaptive_concurrency_pins_the_limit_to_min_concurrency_while_it_measures_min_rtt():
    # The gradient controller starts by measuring minRTT with the limit pinned to
    # min_concurrency (3) until request_count (50) samples are in: with b taking 1 s at 20/s,
    # b's app never works on more than 3 requests, and the rest are refused by its sidecar.
    services = {"a": {"latency": "0ms", "workers": 1000, "calls": [{"to": "b"}]},
                "b": {"latency": "1s", "workers": 100}}
    mesh = {"sidecars": {"b": {"adaptiveConcurrency": {"gradient_controller_config": {
        "concurrency_limit_params": {"concurrency_update_interval": "0.1s"},
        "min_rtt_calc_params": {"interval": "60s", "request_count": 50,
                                "min_concurrency": 3}}}}}}
    sc = build(services, [{"client": "u", "entry": "a", "viaIngress": False,
                           "arrival": {"kind": "poisson", "rate": "20/s"}}],
               duration="10s", mesh=mesh)
    r = meshsim.run(sc, seed=1)
    assert_conserved(r)
    b = hops(r)
    worked = b[b["t_begin"].notna()]
    refused = b[b["t_arrive"].notna() & b["t_begin"].isna()]
    starts, ends = worked["t_begin"].to_numpy(), worked["t_reply"].fillna(np.inf).to_numpy()
    peak = max(((starts <= t) & (t < ends)).sum() for t in starts)
    assert peak == 3
    assert len(refused) > 100 and set(refused["status"]) == {503}
    assert set(refused["flags"]) == {"-"}
    st = r.stats.query("proxy == 'b-0' and cluster == 'inbound'").set_index("stat")["value"]
    assert st["adaptive_concurrency.gradient_controller.rq_blocked"] == len(refused)


# ---- one breaker per calling pod and destination, whatever the routing below it --------------


def test_one_breaker_per_destination_across_its_subsets():
    # The breaker is in the caller's code: it cannot know which version Envoy will pick.
    sc = meshsim.load_scenario("scenarios/canary.yaml").with_overrides({
        "services.frontend.breakers.reviews": {"kind": "consecutive", "failMax": 3,
                                               "resetTimeout": "5s"}})
    r = meshsim.run(sc, seed=1)
    st = r.stats[r.stats["stat"].str.startswith("app_circuit_breaker.")]
    assert set(st["cluster"]) == {"reviews"}
    pods = sc.services["frontend"].replicas
    assert len(st) == pods * st["stat"].nunique()
    ev = r.events[r.events["kind"].str.startswith("breaker_")]
    assert set(ev["destination"]) <= {"reviews"}


def test_breakers_on_two_external_hosts_behind_the_egress_gateway_stay_apart():
    services = {"a": {"latency": "0ms", "calls": [{"to": "pay.example.com"},
                                                  {"to": "geo.example.com"}],
                      "breakers": {"pay.example.com": {"kind": "consecutive", "failMax": 2},
                                   "geo.example.com": {"kind": "consecutive", "failMax": 50}}}}
    sc = build(services, [closed("a", think="0.1s")], duration="3s",
               externalServices={"pay.example.com": {"latency": "1ms", "errors": ALWAYS_503},
                                 "geo.example.com": {"latency": "1ms"}},
               mesh={"egressGateway": {"replicas": 1}})
    r = meshsim.run(sc, seed=1)
    st = r.stats[r.stats["stat"] == "app_circuit_breaker.opened"].set_index("cluster")["value"]
    assert st.to_dict() == {"geo.example.com": 0, "pay.example.com": 1}


def test_calls_the_breaker_refused_are_not_in_the_sidecars_access_log():
    from meshsim.access_log import access_log_lines

    r = meshsim.run(failing({"kind": "consecutive", "failMax": 5, "resetTimeout": "10s"},
                            duration="3s"), seed=1)
    lines = access_log_lines(r)
    both = r.requests
    assert len(lines) == int((both["flags"] != "breaker_open").sum())
    assert not any("breaker_open" in line for line in lines)


class Faulty:
    """A custom breaker with bugs of its own."""

    def __init__(self, fail_in_init: bool = False):
        if fail_in_init:
            raise RuntimeError("cannot start")
        self.events: list = []
        self.stats: dict = {}

    def allow(self, now: float) -> bool:
        if now > 0.5:
            raise ZeroDivisionError("oops")
        return True

    def on_result(self, now: float, failure: bool, duration: float) -> None:
        pass


def test_a_custom_breaker_that_fails_in_its_constructor_is_a_scenario_error():
    breaker = "{kind: custom, class: 'test_app_breakers:Faulty', params: {fail_in_init: true}}"
    with pytest.raises(ScenarioError, match=r"custom.yaml:4: services\.a\.breakers\.b: Faulty"
                                            r"\(\*\*params\) failed: RuntimeError: cannot start"):
        meshsim.loads_scenario(CUSTOM_YAML.format(breaker=breaker), "custom.yaml")


def test_a_custom_breaker_that_fails_during_a_run_is_named_with_where_and_when(capsys, tmp_path):
    from meshsim.app_breakers import PluginError
    from meshsim.cli import main

    breaker = "{kind: custom, class: 'test_app_breakers:Faulty'}"
    sc = meshsim.loads_scenario(CUSTOM_YAML.format(breaker=breaker), "custom.yaml")
    with pytest.raises(PluginError, match=r"the custom breaker test_app_breakers:Faulty "
                                          r"\(a-0 -> b\) raised in allow\(\) at t=0\.5\d*s: "
                                          r"ZeroDivisionError: oops"):
        meshsim.run(sc)
    # The command line reports it as the user's code's error, exit 2, no traceback.
    path = tmp_path / "custom.yaml"
    path.write_text(CUSTOM_YAML.format(breaker=breaker))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "raised in allow()" in err and "Traceback" not in err and "bug in meshsim" not in err


# ---- the Policy protocol: custom policies in a pod's sidecar -----------------------------------


class ConcurrencyCap:
    """A server-side policy of one's own: at most ``limit`` requests in the app at once."""

    def __init__(self, limit: int = 2):
        self.limit, self.inside = limit, 0
        self.events: list = []
        self.stats = {"admitted": 0, "refused": 0, "ended": 0}

    def admit(self, now, request):
        if self.inside >= self.limit:
            self.stats["refused"] += 1
            return False
        self.inside += 1
        self.stats["admitted"] += 1
        if self.inside == self.limit:
            self.events.append((now, "cap_reached", -1, request.client))
        return True

    def on_outcome(self, now, request, completion):
        self.inside -= 1
        self.stats["ended"] += 1


class DenyClient:
    """Refuses every request of one client (by the end-user client id it serves)."""

    def __init__(self, client: str):
        self.client = client
        self.events: list = []
        self.stats = {"denied": 0}

    def admit(self, now, request):
        if request.client == self.client:
            self.stats["denied"] += 1
            return False
        return True

    def on_outcome(self, now, request, completion):
        pass


def test_a_custom_policy_in_a_pods_sidecar_caps_what_reaches_its_app():
    services = {"a": {"latency": "0ms", "workers": 1000, "calls": [{"to": "b"}]},
                "b": {"latency": "0.5s", "workers": 100}}
    mesh = {"sidecars": {"b": {"policies": [{"kind": "custom",
                                             "class": "test_app_breakers:ConcurrencyCap",
                                             "params": {"limit": 2}, "status": 429}]}}}
    sc = build(services, [poisson("a", "20/s")], duration="10s", mesh=mesh)
    r = meshsim.run(sc, seed=1)
    assert_conserved(r)
    b = hops(r)
    worked = b[b["t_begin"].notna()]
    starts, ends = worked["t_begin"].to_numpy(), worked["t_reply"].fillna(np.inf).to_numpy()
    assert max(((starts <= t) & (t < ends)).sum() for t in starts) == 2
    refused = b[b["t_arrive"].notna() & b["t_begin"].isna()]
    assert len(refused) > 100 and set(refused["status"]) == {429}
    st = r.stats.query("proxy == 'b-0' and cluster == 'inbound'").set_index("stat")["value"]
    prefix = "policy.test_app_breakers:ConcurrencyCap."
    assert st[prefix + "refused"] == len(refused)
    assert st[prefix + "admitted"] - st[prefix + "ended"] <= 2  # the ones still inside
    assert (r.events["kind"] == "cap_reached").any()


def test_a_custom_policy_sees_the_end_user_client_of_each_request():
    services = {"a": {"latency": "0ms", "calls": [{"to": "b"}]}, "b": {"latency": "1ms"}}
    mesh = {"sidecars": {"b": {"policies": [{"class": "test_app_breakers:DenyClient",
                                             "params": {"client": "bad"}, "status": 403}]}}}
    sc = build(services, [poisson("a", "20/s", client="good"), poisson("a", "20/s", client="bad")],
               duration="5s", mesh=mesh)
    r = meshsim.run(sc, seed=1)
    roots = r.end_to_end()
    roots = roots[roots["t_end"].notna()]
    assert set(roots.loc[roots["client"] == "good", "status"]) == {200}
    assert set(roots.loc[roots["client"] == "bad", "status"]) == {500}  # a's call to b failed
    b = hops(r)
    assert set(b.loc[b["client"] == "bad", "status"]) == {403}


def test_a_custom_policy_without_the_protocol_is_a_scenario_error():
    with pytest.raises(ScenarioError, match=r"mesh\.sidecars\.b\.policies\[0\]: NotABreaker "
                                            r"implements neither"):
        build({"a": {"latency": "0ms", "calls": [{"to": "b"}]}, "b": {"latency": "1ms"}},
              [poisson("a", "1/s")],
              mesh={"sidecars": {"b": {"policies": [
                  {"class": "test_app_breakers:NotABreaker"}]}}})
