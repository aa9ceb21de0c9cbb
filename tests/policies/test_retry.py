"""Exact unit tests of Envoy's router retry/timeout logic (meshsim.policies.retry)."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from meshsim.policies.retry import (
    Decision,
    Outcome,
    OutcomeKind,
    RetryPolicy,
    RetryState,
    backoff_delay,
    backoff_interval_ms,
    max_retries_allows,
    retry_budget_allows,
    retry_budget_max,
)

ZERO = lambda: 0.0  # noqa: E731 - a jitter draw of 0: no back-off
TOP = lambda: math.nextafter(1.0, 0.0)  # noqa: E731 - the largest draw below 1
ISTIO = RetryPolicy.istio_default()


def policy(retry_on: str, num_retries: int = 2, **fields) -> RetryPolicy:
    return RetryPolicy(retry_on=frozenset(retry_on.split(",")), num_retries=num_retries,
                       route_timeout=fields.pop("route_timeout", None), **fields)


def run(state: RetryState, outcomes: list[Outcome], *, allowed: bool = True) -> list[Decision]:
    """Feed one outcome per attempt at time 0 until the request is answered."""
    decisions = []
    for outcome in outcomes:
        decisions.append(state.decide(0.0, outcome, allowed))
        if not decisions[-1].retry:
            return decisions
    raise AssertionError("the request was not answered")


def run_silent_upstream(state: RetryState) -> tuple[list[float], Decision, float]:
    """An upstream that never answers: every attempt ends at its per-try deadline.

    Returns the attempts' start times, the final decision and when the reply goes downstream.
    """
    now, starts = state.start, []
    while True:
        starts.append(now)
        deadline = state.per_try_deadline(now)
        decision = state.decide(deadline, Outcome.per_try_timeout(), True)
        if not decision.retry:
            return starts, decision, deadline + decision.delay
        now = deadline + decision.delay


# ---- retry_on semantics --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503])
def test_istio_default_does_not_retry_a_plain_5xx(status):
    state = RetryState(ISTIO, 0.0, ZERO)
    assert run(state, [Outcome.response(status)]) == [Decision(False, 0.0, status, "-")]
    assert state.attempts == 1


def test_istio_default_retries_connect_failure_twice_then_urx_uf():
    state = RetryState(ISTIO, 0.0, ZERO)
    decisions = run(state, [Outcome.connect_failure()] * 3)
    assert [d.retry for d in decisions] == [True, True, False]
    assert (decisions[-1].status, decisions[-1].flags) == (503, "URX,UF")
    assert decisions[-1].counters == ("upstream_rq_retry_limit_exceeded",)
    assert decisions[0].counters == ("upstream_rq_retry", "upstream_rq_retry_backoff_exponential")
    assert state.attempts == 3


def test_istio_default_retries_grpc_unavailable_from_response_headers():
    assert ISTIO.wants_retry(Outcome.response(200, grpc_status=14))  # UNAVAILABLE
    assert ISTIO.wants_retry(Outcome.response(200, grpc_status=1))  # CANCELLED
    assert not ISTIO.wants_retry(Outcome.response(200, grpc_status=13))  # INTERNAL


def test_5xx_retries_500_per_try_timeout_and_resets():
    p = policy("5xx")
    for outcome in (Outcome.response(500), Outcome.per_try_timeout(), Outcome.reset(),
                    Outcome.connect_failure(), Outcome.refused_stream()):
        assert p.wants_retry(outcome), outcome
    assert not p.wants_retry(Outcome.response(404))


def test_gateway_error_is_502_503_504_resets_and_per_try_timeouts_not_500():
    p = policy("gateway-error")
    assert [p.wants_retry(Outcome.response(s)) for s in (500, 501, 502, 503, 504)] == [
        False, False, True, True, True]
    assert p.wants_retry(Outcome.per_try_timeout())
    assert p.wants_retry(Outcome.reset())
    state = RetryState(p, 0.0, ZERO)
    assert run(state, [Outcome.response(500)]) == [Decision(False, 0.0, 500, "-")]


def test_per_try_timeout_is_not_retried_by_connect_failure_or_status_codes():
    p = policy("connect-failure,refused-stream,retriable-status-codes",
               retriable_status_codes={504})
    assert not p.wants_retry(Outcome.per_try_timeout())
    state = RetryState(p, 0.0, ZERO)
    assert run(state, [Outcome.per_try_timeout()]) == [
        Decision(False, 0.0, 504, "UT", ("upstream_rq_per_try_timeout",))]


def test_reset_also_retries_per_try_timeouts():
    # Envoy 1.40 passes a per-try timeout to wouldRetryFromReset as LocalReset.
    assert policy("reset").wants_retry(Outcome.per_try_timeout())
    assert not policy("reset").wants_retry(Outcome.response(503))


def test_reset_before_request_covers_only_connect_failures():
    p = policy("reset-before-request")
    assert p.wants_retry(Outcome.connect_failure())
    assert not p.wants_retry(Outcome.reset())
    assert not p.wants_retry(Outcome.per_try_timeout())


def test_refused_stream_and_retriable_4xx():
    assert policy("refused-stream").wants_retry(Outcome.refused_stream())
    assert not policy("refused-stream").wants_retry(Outcome.reset())
    assert policy("retriable-4xx").wants_retry(Outcome.response(409))
    assert not policy("retriable-4xx").wants_retry(Outcome.response(429))


def test_overflow_is_never_retried():
    everything = RetryPolicy(retry_on=frozenset({"5xx", "gateway-error", "reset",
                                                 "reset-before-request", "connect-failure",
                                                 "refused-stream"}), num_retries=5)
    assert not everything.wants_retry(Outcome.overflow())
    state = RetryState(everything, 0.0, ZERO)
    assert run(state, [Outcome.overflow()]) == [Decision(False, 0.0, 503, "UO")]


def test_rate_limited_only_with_envoy_ratelimited():
    limited = Outcome.response(429, rate_limited=True)
    assert not policy("5xx,retriable-status-codes", retriable_status_codes={429}).wants_retry(
        limited)
    assert not policy("5xx").wants_retry(Outcome.response(503, rate_limited=True))
    assert policy("envoy-ratelimited").wants_retry(limited)


def test_overloaded_response_is_retried_like_any_5xx():
    # Envoy >= 1.15 (envoyproxy/envoy#10847) no longer lets x-envoy-overloaded block retries.
    assert policy("5xx").wants_retry(Outcome.response(503, overloaded=True))
    assert not ISTIO.wants_retry(Outcome.response(503, overloaded=True))


def test_envoy_default_never_retries():
    p = RetryPolicy.envoy_default()
    assert not p.enabled and p.route_timeout == 15.0
    state = RetryState(p, 0.0, ZERO)
    assert run(state, [Outcome.connect_failure()]) == [Decision(False, 0.0, 503, "UF")]


# ---- accounting ----------------------------------------------------------------------------------


def test_retry_overflow_returns_last_upstream_status_with_uo():
    state = RetryState(policy("5xx"), 0.0, ZERO)
    assert run(state, [Outcome.response(500)], allowed=False) == [
        Decision(False, 0.0, 500, "UO", ("upstream_rq_retry_overflow",))]
    assert state.retries_remaining == 1  # the retry was spent before the breaker said no


def test_retry_overflow_after_per_try_timeout_is_504_uo_ut():
    state = RetryState(policy("5xx"), 0.0, ZERO)
    decision = state.decide(1.0, Outcome.per_try_timeout(), False)
    assert (decision.status, decision.flags) == (504, "UO,UT")


def test_5xx_retries_exhausted_keep_the_upstream_status_with_urx():
    state = RetryState(policy("5xx", 2), 0.0, ZERO)
    decisions = run(state, [Outcome.response(500), Outcome.response(502), Outcome.response(503)])
    assert (decisions[-1].status, decisions[-1].flags) == (503, "URX")


def test_success_after_a_retry_counts_retry_success_and_frees_the_slot():
    state = RetryState(policy("5xx"), 0.0, ZERO)
    first = state.decide(0.0, Outcome.response(500), True)
    assert first.retry and state.holds_retry
    assert state.decide(0.0, Outcome.response(200), True) == Decision(
        False, 0.0, 200, "-", ("upstream_rq_retry_success",))
    assert not state.holds_retry


def test_decide_after_the_answer_is_an_error():
    state = RetryState(ISTIO, 0.0, ZERO)
    state.decide(0.0, Outcome.response(200), True)
    with pytest.raises(RuntimeError):
        state.decide(0.0, Outcome.response(200), True)


# ---- timeouts ------------------------------------------------------------------------------------


def test_route_timeout_2s_with_1s_per_try_allows_at_most_two_tries():
    p = policy("5xx", 3, per_try_timeout=1.0, route_timeout=2.0)
    state = RetryState(p, 0.0, ZERO)
    assert state.per_try_deadline(0.0) == 1.0  # try 1: [0, 1)
    first = state.decide(1.0, Outcome.per_try_timeout(), True)
    assert (first.retry, first.delay) == (True, 0.0)
    assert state.per_try_deadline(1.0) == 2.0  # try 2: [1, 2), cut by the route deadline
    second = state.decide(2.0, Outcome.per_try_timeout(), True)
    assert second == Decision(False, 0.0, 504, "UT", ("upstream_rq_timeout",))
    assert state.attempts == 2


def test_route_timeout_is_504_ut_not_urx_even_with_retries_left():
    state = RetryState(policy("5xx", 3, per_try_timeout=1.0, route_timeout=3.5), 0.0, ZERO)
    starts, decision, end = run_silent_upstream(state)
    assert starts == [0.0, 1.0, 2.0, 3.0]
    assert (decision.status, decision.flags, end) == (504, "UT", 3.5)


def test_per_try_timeouts_exhausted_match_the_envoy_experiment():
    # §4.2 [exp]: per-try 0.4 s, 3 retries, route 3 s, 2 s upstream -> 4 attempts, 504 URX,UT at
    # 1.68 s. Mid-range jitter draws 12 + 25 + 50 ms of back-off.
    state = RetryState(policy("5xx", 3, per_try_timeout=0.4, route_timeout=3.0), 0.0, lambda: 0.5)
    starts, decision, end = run_silent_upstream(state)
    assert starts == pytest.approx([0.0, 0.412, 0.837, 1.287])
    assert (decision.status, decision.flags) == (504, "URX,UT")
    assert end == pytest.approx(1.687)


def test_back_off_past_the_route_deadline_ends_in_504_ut_at_the_deadline():
    p = policy("5xx", 3, per_try_timeout=0.99, route_timeout=1.0)
    state = RetryState(p, 0.0, TOP)
    decision = state.decide(0.99, Outcome.per_try_timeout(), True)  # back-off 24 ms > 10 ms left
    assert (decision.retry, decision.status, decision.flags) == (False, 504, "UT")
    assert decision.delay == pytest.approx(0.01)
    assert decision.counters == ("upstream_rq_per_try_timeout", "upstream_rq_retry",
                                 "upstream_rq_retry_backoff_exponential")
    assert state.holds_retry  # Envoy holds the retry slot until the route timer fires
    assert state.attempts == 1  # the retry never started


def test_no_route_timeout_and_no_per_try_timeout_mean_no_deadline():
    state = RetryState(ISTIO, 5.0, ZERO)
    assert state.route_deadline is None and state.per_try_deadline(5.0) is None
    assert RetryState(policy("5xx", per_try_timeout=0.25), 5.0, ZERO).per_try_deadline(6.0) == 6.25


# ---- back-off ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("retry_number", "cap_ms"), [(1, 25), (2, 50), (3, 100), (4, 200),
                                                      (5, 250), (6, 250), (20, 250)])
def test_backoff_bounds_per_retry_number(retry_number, cap_ms):
    assert backoff_interval_ms(retry_number) == cap_ms
    assert backoff_delay(retry_number, ZERO) == 0.0
    assert backoff_delay(retry_number, TOP) == (cap_ms - 1) / 1000  # whole ms, never the cap
    draws = random.Random(retry_number).random
    delays = [backoff_delay(retry_number, draws) for _ in range(20_000)]
    assert sorted(set(delays)) == [ms / 1000 for ms in range(cap_ms)]
    # The mean of a uniform over {0, ..., cap-1} ms, within 4 standard errors.
    sd = math.sqrt((cap_ms**2 - 1) / 12) / 1000
    assert abs(statistics.fmean(delays) - (cap_ms - 1) / 2000) < 4 * sd / math.sqrt(len(delays))


def test_backoff_follows_envoys_integer_doubling():
    assert [backoff_interval_ms(n, 30, 300) for n in range(1, 7)] == [30, 60, 120, 240, 300, 300]
    assert [backoff_interval_ms(n, 125, 251) for n in (1, 2)] == [125, 251]  # not min(250, 251)
    assert RetryPolicy(backoff_base=0.0255).backoff_max_ms == 250  # 10 × the truncated 25 ms
    assert RetryPolicy(backoff_base=0.0001).backoff_base_ms == 1


def test_retry_state_draws_backoff_per_scheduled_retry():
    state = RetryState(policy("5xx", 6), 0.0, TOP)
    decisions = run(state, [Outcome.response(500)] * 7)
    assert [d.delay for d in decisions[:-1]] == [0.024, 0.049, 0.099, 0.199, 0.249, 0.249]


def test_backoff_max_below_base_is_rejected():
    with pytest.raises(ValueError, match="backoff_max"):
        RetryPolicy(backoff_base=0.1, backoff_max=0.05)


# ---- retry circuit breaker -----------------------------------------------------------------------


def test_retry_budget_examples_from_the_istio_doc():
    assert retry_budget_max(25, 0) == 5
    assert retry_budget_max(2, 0) == 3
    assert retry_budget_allows(20, 5, 4) and not retry_budget_allows(20, 5, 5)
    assert retry_budget_allows(2, 0, 2) and not retry_budget_allows(2, 0, 3)
    assert retry_budget_max(100, 0, percent=50.0, min_retry_concurrency=0) == 50


def test_max_retries_circuit_breaker():
    assert max_retries_allows(2) and not max_retries_allows(3)
    assert max_retries_allows(10, max_retries=2**32 - 1)


# ---- host selection ------------------------------------------------------------------------------


def test_previous_hosts_repicks_up_to_the_limit_then_keeps_the_last_pick():
    state = RetryState(ISTIO, 0.0, ZERO)
    picks = iter(["a", "a", "a", "a", "a", "a", "a", "b"])
    assert state.select_host(lambda: next(picks)) == "a"  # first attempt: no filtering
    state.decide(0.0, Outcome.connect_failure(), True)
    assert state.select_host(lambda: next(picks)) == "a"  # 1 + 5 picks, all "a": keep the last
    assert next(picks) == "b"  # the first attempt's pick and then exactly six
    assert state.attempted_hosts == ["a", "a"]


def test_previous_hosts_takes_the_first_new_host():
    state = RetryState(ISTIO, 0.0, ZERO)
    picks = iter(["a", "a", "b", "c"])
    state.select_host(lambda: next(picks))
    state.decide(0.0, Outcome.connect_failure(), True)
    assert state.select_host(lambda: next(picks)) == "b"


# ---- Istio translation ---------------------------------------------------------------------------


def test_from_istio_without_retries_is_istios_default_and_no_route_timeout():
    assert RetryPolicy.from_istio({}) == ISTIO
    assert ISTIO.route_timeout is None and ISTIO.retriable_status_codes == frozenset()
    assert (ISTIO.num_retries, ISTIO.previous_hosts, ISTIO.host_selection_retry_max_attempts) == (
        2, True, 5)
    assert not RetryPolicy.from_istio({}, consistent_hash=True).previous_hosts


def test_from_istio_without_istio_defaults_is_plain_envoy():
    assert RetryPolicy.from_istio({}, istio_defaults=False) == RetryPolicy.envoy_default()
    assert RetryPolicy.from_istio({"timeout": 2.0}, istio_defaults=False).route_timeout == 2.0


def test_from_istio_attempts_zero_disables_retries_and_drops_per_try_timeout():
    p = RetryPolicy.from_istio({"retries": {"attempts": 0, "perTryTimeout": 1.0}})
    assert not p.enabled and p.per_try_timeout is None
    state = RetryState(p, 0.0, ZERO)
    assert run(state, [Outcome.connect_failure()]) == [Decision(False, 0.0, 503, "UF")]


def test_from_istio_full_retries_block():
    p = RetryPolicy.from_istio({"timeout": 2.0, "retries": {
        "attempts": 3, "perTryTimeout": 0.5, "retryOn": "gateway-error, 500,429,connect-failure",
        "retryIgnorePreviousHosts": False, "retryRemoteLocalities": True, "backoff": 0.1}})
    assert p == RetryPolicy(
        retry_on=frozenset({"gateway-error", "connect-failure", "retriable-status-codes"}),
        num_retries=3, per_try_timeout=0.5, retriable_status_codes=frozenset({500, 429}),
        backoff_base=0.1, previous_hosts=False, host_selection_retry_max_attempts=5,
        previous_priorities=True, route_timeout=2.0)
    assert p.backoff_max_ms == 1000
    assert p.wants_retry(Outcome.response(500))  # through the status code, not gateway-error


def test_from_istio_attempts_only_keeps_the_default_retry_on_and_previous_hosts():
    p = RetryPolicy.from_istio({"retries": {"attempts": 5}})
    assert p.retry_on == ISTIO.retry_on and p.num_retries == 5 and p.previous_hosts
    assert not p.wants_retry(Outcome.response(503))


def test_from_istio_codes_only():
    p = RetryPolicy.from_istio({"retries": {"attempts": 1, "retryOn": "503"}})
    assert (p.retry_on, p.retriable_status_codes) == (
        frozenset({"retriable-status-codes"}), frozenset({503}))


def test_from_istio_timeout_zero_disables_the_route_timeout():
    assert RetryPolicy.from_istio({"timeout": 0.0}).route_timeout is None


@pytest.mark.parametrize("retry_on", ["5xx,bogus", "599"])
def test_from_istio_rejects_unknown_retry_on(retry_on):
    with pytest.raises(ValueError, match="unknown retry_on"):
        RetryPolicy.from_istio({"retries": {"attempts": 1, "retryOn": retry_on}})


def test_from_istio_rejects_unknown_retries_fields():
    with pytest.raises(ValueError, match="perTryTimout"):
        RetryPolicy.from_istio({"retries": {"attempts": 1, "perTryTimout": 1.0}})


def test_outcome_without_response_cannot_carry_a_status():
    with pytest.raises(ValueError):
        Outcome(OutcomeKind.RESET, 500)
    assert Outcome.reset().status == 503 and Outcome.per_try_timeout().status == 504


# ---- retries multiply down a chain ---------------------------------------------------------------


def call(depth: int, p: RetryPolicy, leaf: Outcome, leaf_attempts: list[int]) -> Outcome:
    """A chain of ``depth`` proxies over a leaf that always fails, each hop's final answer being
    what its caller's proxy sees as an upstream response."""
    if depth == 0:
        leaf_attempts[0] += 1
        return leaf
    state = RetryState(p, 0.0, ZERO)
    while True:
        decision = state.decide(0.0, call(depth - 1, p, leaf, leaf_attempts), True)
        if not decision.retry:
            return Outcome.response(decision.status)


@pytest.mark.parametrize("retries", [1, 2, 3])
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_retries_multiply_down_a_chain(retries, depth):
    leaf_attempts = [0]
    answer = call(depth, policy("5xx", retries), Outcome.response(503), leaf_attempts)
    assert answer.status == 503
    assert leaf_attempts[0] == (1 + retries) ** depth


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_istio_default_retries_do_not_multiply_past_the_first_hop(depth):
    # Connect failures are retried next to the leaf; the 503 URX,UF above it is a plain 503.
    leaf_attempts = [0]
    call(depth, ISTIO, Outcome.connect_failure(), leaf_attempts)
    assert leaf_attempts[0] == 3
