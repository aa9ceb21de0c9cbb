"""Access logs in Istio's default TEXT format: exact lines for tiny runs, the response-code
details of overflow, timeouts and friends, and ``meshsim run --access-log``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import build, closed

import meshsim
from meshsim.access_log import access_log_lines, response_code_details, write_access_log
from meshsim.cli import main
from meshsim.output import read_requests

MINIMAL = Path(__file__).parent / "cases" / "valid" / "minimal.yaml"
NAN = float("nan")
# The fields after %UPSTREAM_CLUSTER_RAW%: local and remote addresses, SNI, route name.
TAIL = " - - - - -"


def line(t: str, status: int, flags: str, details: str, ms: int, rid: int, authority: str,
         host: str, cluster: str) -> str:
    return (f'[1970-01-01T00:00:{t}Z] "GET / HTTP/1.1" {status} {flags} {details} - "-" 0 0 {ms} '
            f'- "-" "-" "{rid}" "{authority}" "{host}" {cluster}{TAIL}')


INGRESS = "outbound|80||istio-ingressgateway.istio-system.svc.cluster.local"
EGRESS = "outbound|443||istio-egressgateway.istio-system.svc.cluster.local"


def api_db(mesh: dict | None = None, users: int = 1, db: str = "2ms") -> meshsim.Result:
    """Closed users (think 0.5 s) -> ingress -> api (5 ms) -> db; free network and proxies."""
    sc = build({"api": {"latency": "5ms", "calls": [{"to": "db"}]}, "db": {"latency": db}},
               [closed("api", users=users, think="0.5s", via_ingress=True)], duration="1.2s",
               mesh=mesh)
    return meshsim.run(sc)


def test_exact_lines_of_a_tiny_run():
    ok = "via_upstream"
    api = "outbound|80||api.shop.svc.cluster.local"
    db = "outbound|80||db.shop.svc.cluster.local"
    assert access_log_lines(api_db(), "shop") == [
        line("00.500", 200, "-", ok, 7, 0, "api", "ingress-0:8080", INGRESS),
        line("00.500", 200, "-", ok, 7, 0, "api", "api-0:80", api),
        line("00.505", 200, "-", ok, 2, 0, "db", "db-0:80", db),
        line("01.007", 200, "-", ok, 7, 1, "api", "ingress-0:8080", INGRESS),
        line("01.007", 200, "-", ok, 7, 1, "api", "api-0:80", api),
        line("01.012", 200, "-", ok, 2, 1, "db", "db-0:80", db),
    ]


def test_exact_lines_through_the_egress_gateway():
    sc = build({"api": {"latency": "5ms", "calls": [{"to": "pay.example"}]}},
               [closed("api", think="0.5s", via_ingress=True)], duration="1s",
               externalServices={"pay.example": {"latency": "10ms"}},
               mesh={"egressGateway": {"replicas": 1}})
    ok = "via_upstream"
    assert access_log_lines(meshsim.run(sc)) == [
        line("00.500", 200, "-", ok, 15, 0, "api", "ingress-0:8080", INGRESS),
        line("00.500", 200, "-", ok, 15, 0, "api", "api-0:80",
             "outbound|80||api.default.svc.cluster.local"),
        # The sidecar's request names the external host the egress gateway forwards to.
        line("00.505", 200, "-", ok, 10, 0, "pay.example", "egress-0:8443", EGRESS),
        line("00.505", 200, "-", ok, 10, 0, "pay.example", "pay.example:443",
             "outbound|443||pay.example"),
    ]


def db_lines(result: meshsim.Result) -> list[str]:
    return [x for x in access_log_lines(result) if '"db"' in x]


def test_circuit_breaker_overflow_is_uo():
    # Two users at once, one request allowed to db: the second overflows at api's sidecar.
    pool = {"trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": 1}}}}
    result = api_db({"destinationRules": {"db": pool}}, users=2, db="100ms")
    db = "outbound|80||db.default.svc.cluster.local"
    assert db_lines(result)[:2] == [
        line("00.505", 200, "-", "via_upstream", 100, 0, "db", "db-0:80", db),
        line("00.505", 503, "UO", "upstream_reset_before_response_started{overflow}", 0, 1,
             "db", "-", db),
    ]


def test_route_timeout_is_ut_response_timeout():
    result = api_db({"virtualServices": {"db": {"http": [{"timeout": "50ms"}]}}}, db="100ms")
    db = "outbound|80||db.default.svc.cluster.local"
    assert db_lines(result)[0] == line("00.505", 504, "UT", "response_timeout", 50, 0, "db",
                                       "db-0:80", db)
    # api answers its caller 500 when the call failed: that answer came from upstream.
    assert access_log_lines(result)[1].startswith(
        '[1970-01-01T00:00:00.500Z] "GET / HTTP/1.1" 500 - via_upstream - "-" 0 0 55 ')


def test_per_try_timeouts_are_upstream_per_try_timeout():
    retries = {"attempts": 1, "perTryTimeout": "30ms", "retryOn": "5xx"}
    result = api_db({"virtualServices": {"db": {"http": [{"retries": retries}]}}}, db="100ms")
    db = "outbound|80||db.default.svc.cluster.local"
    first, second = db_lines(result)[:2]
    assert first == line("00.505", 504, "UT", "upstream_per_try_timeout", 30, 0, "db",
                         "db-0:80", db)
    # The retry (after a random back-off) times out too, with no retry left.
    assert second.split(" ", 1)[1].startswith(
        '"GET / HTTP/1.1" 504 URX,UT upstream_per_try_timeout - "-" 0 0 30 ')


@pytest.mark.parametrize(("status", "flags", "arrive", "reply", "elapsed", "per_try", "want"), [
    (200, "-", 1.0, 1.1, 0.1, None, "via_upstream"),
    (503, "-", 1.0, 1.1, 0.1, None, "via_upstream"),  # the app itself answered 503
    (503, "URX", 1.0, 1.1, 0.1, None, "via_upstream"),
    (503, "UO", 1.0, 1.1, 0.1, None, "via_upstream"),  # retry breaker: upstream's answer
    (503, "UO", NAN, NAN, 0.0, None, "upstream_reset_before_response_started{overflow}"),
    (503, "UH", NAN, NAN, 0.0, None, "no_healthy_upstream"),
    (504, "UT", 1.0, NAN, 0.05, None, "response_timeout"),
    (504, "UT", 1.0, NAN, 0.05, 0.1, "response_timeout"),  # the route timer fired first
    (504, "UT", 1.0, NAN, 0.1, 0.1, "upstream_per_try_timeout"),
    (504, "URX,UT", 1.0, NAN, 0.1, 0.1, "upstream_per_try_timeout"),
    (504, "UT", NAN, NAN, 0.2, 0.1, "response_timeout"),  # still waiting for a connection
    (503, "UF", NAN, NAN, 0.0, None,
     "upstream_reset_before_response_started{remote_connection_failure}"),
    (429, "RL", NAN, NAN, 0.0, None, "local_rate_limited"),
    (500, "RLSE", NAN, NAN, 0.02, None, "rate_limiter_error"),
    (0, "-", NAN, NAN, 0.0, None, "-"),
])
def test_response_code_details(status, flags, arrive, reply, elapsed, per_try, want):
    assert response_code_details(status, flags, arrive, reply, elapsed, per_try) == want


def test_times_are_cut_to_the_millisecond_without_float_noise():
    from meshsim.access_log import _millis, _timestamp

    assert _millis(0.57) == 570  # 0.57 * 1000 is 569.999...
    assert _millis(0.0079999) == 7
    assert _timestamp(3661.0125) == "1970-01-01T01:01:01.012Z"
    assert _timestamp(86400.0) == "1970-01-02T00:00:00.000Z"


def test_lines_follow_t_start_one_per_row(tmp_path):
    result = meshsim.run(meshsim.load_scenario(MINIMAL).with_overrides({"duration": "2s"}))
    path = tmp_path / "access.log"
    path.write_text("old\n")
    write_access_log(result, path)
    lines = path.read_text().splitlines()
    assert len(lines) == len(result.requests)
    stamps = [x[1:25] for x in lines]
    assert stamps == sorted(stamps)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_run_access_log(capsys, tmp_path):
    log, out_dir = tmp_path / "access.log", tmp_path / "out"
    code, out, err = cli(capsys, "run", MINIMAL, "--set", "duration=2s", "--out", out_dir,
                         "--access-log", log)
    assert (code, err) == (0, "")
    assert out.endswith(f"access log written to {log}\n")
    lines = log.read_text().splitlines()
    requests = read_requests(out_dir)
    assert len(lines) == len(requests) > 0
    first = requests.sort_values(["t_start", "span_id"]).iloc[0]
    assert lines[0].startswith(f"[1970-01-01T00:00:00.{math.floor(first.t_start * 1000):03d}Z]")
    assert all(x.endswith(TAIL) for x in lines)


@pytest.mark.parametrize("where", ["directory", "missing-folder"])
def test_run_access_log_bad_path_fails_before_the_run(capsys, tmp_path, monkeypatch, where):
    target = tmp_path if where == "directory" else tmp_path / "nope" / "access.log"
    monkeypatch.setattr(meshsim, "run", lambda *a, **k: pytest.fail("the run started"))
    code, out, err = cli(capsys, "run", MINIMAL, "--access-log", target)
    assert (code, out) == (2, "")
    assert err.startswith("meshsim: ") and str(target) in err
