"""A run's request rows as an Istio sidecar access log (Envoy's TEXT format).

One line per row of :attr:`Result.requests <meshsim.result.Result.requests>` (one attempt of
one hop, as the caller's proxy saw it), in order of ``t_start``, in Istio's default format
(``../shared/envoy-semantics.md`` §10.1)::

    [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
    %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
    "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
    %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
    "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
    %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
    %REQUESTED_SERVER_NAME% %ROUTE_NAME%

(on one line). How the fields are filled:

- ``START_TIME``: simulated time from a fixed epoch, ``1970-01-01T00:00:00.000Z`` + ``t_start``,
  cut to the millisecond as Envoy prints it; ``DURATION``: ``t_end - t_start`` in whole ms (cut);
- ``GET / HTTP/1.1``; bytes 0; ``X-REQUEST-ID`` is ``request_id`` (shared by every hop of one
  end-user request); ``:AUTHORITY`` is the destination, and for a gateway the host it forwards to;
- ``RESPONSE_CODE`` and ``RESPONSE_FLAGS`` from ``status`` and ``flags`` (``-`` when none);
  ``RESPONSE_CODE_DETAILS`` as Envoy 1.40 was observed to set it (§10.2): ``via_upstream`` for an
  upstream's answer, ``upstream_reset_before_response_started{overflow}`` for a circuit-breaker
  overflow, ``no_healthy_upstream``, ``response_timeout`` (route timeout),
  ``upstream_per_try_timeout``, ``local_rate_limited`` (flag ``RL``; a row does not tell the
  global limit's refusals apart, so they read the same), ``rate_limiter_error`` (``RLSE``);
- ``UPSTREAM_HOST`` is the pod with a port (``cart-1:80``; gateways ``ingress-0:8080``,
  ``egress-0:8443``; external hosts ``payments:443``), ``-`` when no upstream was reached;
  ``UPSTREAM_CLUSTER_RAW`` is ``outbound|80||<service>.<namespace>.svc.cluster.local``
  (``outbound|443||<host>`` for an external host, Istio's gateway Services for gateways);
- everything else is ``-``.

Calls that the caller's app-level circuit breaker refused (flags ``breaker_open`` and
``fallback``) never reached the sidecar and have no line.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .app_breakers import APP_FLAGS
from .output import OutputError, write_text_atomic
from .result import Result

__all__ = ["EPOCH", "access_log_lines", "check_log_path", "response_code_details",
           "write_access_log"]

#: Simulated time 0 in the log's timestamps.
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_GATEWAYS = {
    # destination: (Service host, service port, pod port)
    "ingress": ("istio-ingressgateway.istio-system.svc.cluster.local", 80, 8080),
    "egress": ("istio-egressgateway.istio-system.svc.cluster.local", 443, 8443),
}
_SERVICE_PORT = 80
_EXTERNAL_PORT = 443
# Float noise (0.57 s is 569.99999999999 ms) must not move a value to the millisecond below.
_MS_SLACK = 1e-6


def write_access_log(result: Result, path: str | os.PathLike, namespace: str = "default") -> None:
    """Write the access log of ``result`` to ``path``, all or nothing.

    Parameters
    ----------
    result : Result
    path : str or path-like
        The log file; replaced if it exists.
    namespace : str
        Kubernetes namespace of the services, for the cluster names.

    Raises
    ------
    meshsim.output.OutputError
        If the file cannot be written.
    """
    lines = access_log_lines(result, namespace)
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def check_log_path(path: str | os.PathLike) -> None:
    """Refuse, before a run, a log path that cannot be written (a directory, a missing folder)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path} is a directory")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"cannot write {path}: no such directory {parent}")


def access_log_lines(result: Result, namespace: str = "default") -> list[str]:
    """The access-log lines of ``result`` (without newlines), in ``t_start`` order."""
    sc = result.scenario
    rows = result.requests.sort_values(["t_start", "span_id"], kind="stable")
    entries = {cl.client: cl.entry for cl in sc.workload}
    # Where each attempt went next: a gateway's request row has the gateway's own request as
    # its child, which names the host the gateway forwarded to.
    forwarded = dict(zip(result.requests["parent_span_id"],
                         result.requests["destination"].astype(str), strict=True))
    lines = []
    for r in rows.itertuples(index=False):
        dest, source = str(r.destination), str(r.source)
        flags = str(r.flags)
        if flags in APP_FLAGS:
            continue  # refused by the caller's own code: it never reached the sidecar
        target = dest
        if dest in _GATEWAYS:
            target = forwarded.get(r.span_id) or (
                entries.get(str(r.client), "-") if dest == "ingress" else "-")
        per_try = _per_try_timeout(sc, source, target)
        details = response_code_details(int(r.status), flags, r.t_arrive, r.t_reply,
                                        r.t_end - r.t_start, per_try)
        status = int(r.status)
        if "UT" in flags.split(","):
            # Envoy answers a timeout with a local 504 whatever the upstream sends later.
            status = 504
        reached = details not in _LOCAL_REPLIES and str(r.host) != "-"
        lines.append(
            f"[{_timestamp(r.t_start)}] \"GET / HTTP/1.1\" {status} {flags} {details} - \"-\" "
            f"0 0 {_millis(r.t_end - r.t_start)} - \"-\" \"-\" \"{r.request_id}\" \"{target}\" "
            f"\"{_upstream_host(sc, dest, str(r.host)) if reached else '-'}\" "
            f"{_cluster(sc, dest, namespace)} - - - - -"
        )
    return lines


_LOCAL_REPLIES = frozenset({"upstream_reset_before_response_started{overflow}",
                            "no_healthy_upstream", "local_rate_limited", "rate_limiter_error"})


def response_code_details(status: int, flags: str, t_arrive: float, t_reply: float,
                          elapsed: float, per_try_timeout: float | None) -> str:
    """Envoy's ``%RESPONSE_CODE_DETAILS%`` for a request row.

    Parameters
    ----------
    status : int
        The row's status (0: no response).
    flags : str
        The row's response flags (``-`` for none).
    t_arrive, t_reply : float
        When the attempt reached the callee and when the callee answered (NaN if never).
    elapsed : float
        ``t_end - t_start`` of the row, seconds.
    per_try_timeout : float or None
        The per-try timeout of the route the caller applied, seconds.

    Notes
    -----
    A row does not say which timer ended a timed-out attempt, so it is told from the times:
    the per-try timer runs only once the attempt has reached a connection and fires
    ``perTryTimeout`` after that, so an attempt that reached its callee and waited at least that
    long is taken as a per-try timeout, anything else as the route timeout. An attempt that
    waited in the pool for a connection and was then cut by the route timer after more than
    ``perTryTimeout`` in all would be misread.
    """
    names = set(flags.split(",")) - {"-"}
    if "UH" in names:
        return "no_healthy_upstream"
    if "UT" in names:
        if (per_try_timeout is not None and not math.isnan(t_arrive)
                and elapsed >= per_try_timeout - 1e-9):
            return "upstream_per_try_timeout"
        return "response_timeout"
    if "UO" in names and math.isnan(t_reply):
        return "upstream_reset_before_response_started{overflow}"
    if "UF" in names:
        return "upstream_reset_before_response_started{remote_connection_failure}"
    if "RL" in names:
        return "local_rate_limited"
    if "RLSE" in names:
        return "rate_limiter_error"
    if "FI" in names:
        return "fault_filter_abort"
    if status == 0:
        return "-"
    return "via_upstream"


def _per_try_timeout(sc: Any, source: str, target: str) -> float | None:
    if source == "client" or target == "-":
        return None  # clients have no proxy
    gateway = source if source in _GATEWAYS else None
    route = sc.http_route(target, gateway)
    retries = route.retries if route is not None else None
    return retries.per_try_timeout if retries is not None else None


def _timestamp(t: float) -> str:
    ms = _millis(t)
    stamp = EPOCH + timedelta(milliseconds=ms)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def _millis(seconds: float) -> int:
    return math.floor(seconds * 1000.0 + _MS_SLACK)


def _upstream_host(sc: Any, dest: str, host: str) -> str:
    if dest in _GATEWAYS:
        return f"{host}:{_GATEWAYS[dest][2]}"
    if dest in sc.external_services:
        return f"{host}:{_EXTERNAL_PORT}"
    return f"{host}:{_SERVICE_PORT}"


def _cluster(sc: Any, dest: str, namespace: str) -> str:
    if dest in _GATEWAYS:
        host, port, _ = _GATEWAYS[dest]
        return f"outbound|{port}||{host}"
    if dest in sc.external_services:
        return f"outbound|{_EXTERNAL_PORT}||{dest}"
    return f"outbound|{_SERVICE_PORT}||{dest}.{namespace}.svc.cluster.local"
