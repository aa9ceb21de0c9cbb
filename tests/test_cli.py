"""The command line: exit codes, messages instead of tracebacks, output directories, schema.

Most tests call :func:`meshsim.cli.main` in-process; a few run ``python -m meshsim`` for real to
prove the entry point and the process exit codes.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import meshsim
from meshsim import cli, output
from meshsim.cli import main
from meshsim.output import read_requests

CASES = Path(__file__).parent / "cases"
VALID = sorted((CASES / "valid").glob("*.yaml"))
INVALID = sorted((CASES / "invalid").glob("*.yaml"))
MINIMAL = CASES / "valid" / "minimal.yaml"
SHORT = ["--set", "duration=2s"]

#: The public columns of requests.parquet, in order (the contract with analysis notebooks).
CONTRACT = [
    "request_id",
    "span_id",
    "parent_span_id",
    "client",
    "source",
    "destination",
    "host",
    "attempt",
    "t_start",
    "t_end",
    "status",
    "flags",
    "shadow",
]
RUN_FILES = [
    "events.csv",
    "in_flight.csv",
    "requests.parquet",
    "scenario.resolved.yaml",
    "stats.csv",
    "summary.json",
    "timeseries.csv",
]

#: Invalid cases whose input currently ends in an internal error (exit 1) instead of exit 2.
EXIT_BUGS: dict[str, str] = {}


def cli_run(capsys, *args: Any) -> tuple[int, str, str]:
    """``main(args)`` and what it printed: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def python_m(*args: Any, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python -m meshsim ARGS`` in a fresh interpreter, output captured (not a terminal)."""
    return subprocess.run(
        [sys.executable, "-m", "meshsim", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def wall_free(text: str) -> str:
    """The summary without the wall-clock time, which differs between identical runs."""
    return re.sub(r", [0-9.]+s wall", "", text)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- validate --------------------------------------------------------------------------------


def test_validate_ok(capsys):
    code, out, err = cli_run(capsys, "validate", MINIMAL)
    assert code == 0
    assert out == f"{MINIMAL}: ok (1 services, 0 external, 1 clients, 10s)\n"
    assert err == ""


def test_validate_bad(capsys):
    bad = CASES / "invalid" / "replicas-not-int.yaml"
    code, out, err = cli_run(capsys, "validate", bad)
    assert code == 2
    assert out == ""
    assert err == f"{bad}:7: services.cart.replicas: expected an integer, got 'two'\n"


def test_validate_reports_every_file(capsys):
    first = CASES / "invalid" / "zero-workers.yaml"
    second = CASES / "invalid" / "cycle.yaml"
    code, out, err = cli_run(capsys, "validate", first, MINIMAL, second)
    assert code == 2
    assert out.startswith(f"{MINIMAL}: ok")
    assert err.startswith(f"{first}:6: services.api.workers:")
    assert f"{second}:9: services.a.calls: the call graph has a cycle" in err


def _invalid_params() -> list[Any]:
    return [
        pytest.param(
            p,
            id=p.stem,
            marks=[pytest.mark.xfail(strict=True, reason=EXIT_BUGS[p.stem])]
            if p.stem in EXIT_BUGS
            else [],
        )
        for p in INVALID
    ]


@pytest.mark.parametrize("path", _invalid_params())
@pytest.mark.parametrize("command", ["validate", "run"])
def test_invalid_case_is_a_message_not_a_traceback(capsys, path, command):
    code, out, err = cli_run(capsys, command, path)
    assert code == 2
    assert "Traceback" not in out + err
    assert "internal error" not in err
    assert err.startswith(f"{path}:") or err.startswith(f"{path}: ")
    assert out == ""


def test_invalid_bytes_are_a_message(capsys, tmp_path):
    for name, data in [
        ("empty.yaml", b""),
        ("binary.yaml", b"\x7fELF\x02\x01\x01\x00\x00"),
        ("latin.yaml", b"name: caf\xe9\n"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        code, out, err = cli_run(capsys, "run", path)
        assert (code, out) == (2, "")
        assert err.startswith(f"{path}") and "Traceback" not in err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_nonexistent_file(capsys, tmp_path, command):
    missing = tmp_path / "nope.yaml"
    code, out, err = cli_run(capsys, command, missing)
    assert (code, out) == (2, "")
    assert err == f"{missing}: (top level): no such file\n"


@pytest.mark.parametrize("command", ["validate", "run"])
def test_directory_as_file(capsys, tmp_path, command):
    code, out, err = cli_run(capsys, command, tmp_path)
    assert (code, out) == (2, "")
    assert err == f"{tmp_path}: (top level): is a directory, not a scenario file\n"


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["run", str(MINIMAL), "--seed", "abc"])
    assert info.value.code == 2
    assert "--seed: expected a whole number >= 0, got 'abc'" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"meshsim {meshsim.__version__}\n"


# --- run -------------------------------------------------------------------------------------


def test_run_prints_the_summary_table(capsys):
    code, out, err = cli_run(capsys, "run", CASES / "valid" / "external-egress.yaml", *SHORT)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert re.fullmatch(
        r"external-egress: 2s simulated \(warm-up 0s\), seed 1, [0-9.]+s wall", lines[0]
    )
    assert lines[2].split() == [
        "scope",
        "requests",
        "success",
        "rate/s",
        "p50",
        "ms",
        "p99",
        "ms",
        "max",
        "ms",
        "util",
        "wait",
        "ms",
    ]
    scopes = [line.split()[0] for line in lines[3:] if line.strip()][:6]
    assert scopes == ["end-to-end", "client:load", "ingress", "orders", "egress", "payments"]
    assert lines[-1].startswith("end-user requests still in flight at the end: ")


def test_same_seed_same_output_other_seed_other_output(capsys):
    runs = {}
    for seed in ("7", "7", "8"):
        code, out, _ = cli_run(capsys, "run", MINIMAL, *SHORT, "--seed", seed)
        assert code == 0
        runs.setdefault(seed, []).append(wall_free(out))
    assert runs["7"][0] == runs["7"][1]
    assert "seed 7" in runs["7"][0] and "seed 8" in runs["8"][0]
    assert runs["7"][0].replace("seed 7", "") != runs["8"][0].replace("seed 8", "")


def test_seed_changes_the_requests(capsys, tmp_path):
    for name, seed in [("a", 1), ("b", 2), ("c", 1)]:
        assert (
            main(
                [
                    "run",
                    str(MINIMAL),
                    *SHORT,
                    "--seed",
                    str(seed),
                    "--quiet",
                    "--out",
                    str(tmp_path / name),
                ]
            )
            == 0
        )
    a, b, c = (read_requests(tmp_path / n) for n in "abc")
    pd.testing.assert_frame_equal(a, c)
    assert not a.equals(b)


def test_negative_seed_is_an_input_error(capsys):
    with pytest.raises(SystemExit) as info:  # argparse's usage error: exit 2, before any work
        main(["run", str(MINIMAL), *SHORT, "--seed", "-1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--seed: expected a whole number >= 0, got -1" in err
    assert "internal error" not in err


def test_set_overrides_fields(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = cli_run(
        capsys,
        "run",
        MINIMAL,
        "--set",
        "services.api.replicas=3",
        "--set",
        "duration=1500ms",
        "--set",
        "name=tuned",
        "--out",
        out_dir,
    )
    assert (code, err) == (0, "")
    assert out.startswith("tuned: 1.5s simulated")
    assert out.rstrip().endswith(f"results written to {out_dir}")
    resolved = yaml.safe_load((out_dir / "scenario.resolved.yaml").read_text(encoding="utf-8"))
    assert resolved["services"]["api"]["replicas"] == 3
    assert resolved["duration"] == "1500ms"
    hosts = set(read_requests(out_dir).query("destination == 'api'")["host"].astype(str))
    assert hosts == {"api-0", "api-1", "api-2"}


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        (
            "servces.api.replicas=2",
            "--set: servces: unknown field 'servces' (did you mean 'services'?)\n",
        ),
        (
            "services.api.workrs=2",
            "--set: services.api.workrs: unknown field 'workrs' (did you mean 'workers'?)\n",
        ),
        (
            "services.api.replicas=two",
            "--set: services.api.replicas: expected an integer, got 'two'\n",
        ),
        (
            "duration=10 parsecs",
            "--set: duration: expected a duration such as 250ms, 1.5s, 2m or "
            "1h (a bare number is seconds), got '10 parsecs'\n",
        ),
        ("warmup=20s", "--set: warmup: warm-up must be shorter than the duration (20s >= 10s)\n"),
        (
            "services.api.replicas",
            "--set: (top level): expected PATH=VALUE, got 'services.api.replicas'\n",
        ),
    ],
    ids=["unknown-path", "unknown-nested", "bad-int", "bad-duration", "cross-check", "no-equals"],
)
def test_set_errors(capsys, tmp_path, setting, message):
    code, out, err = cli_run(capsys, "run", MINIMAL, "--set", setting, "--out", tmp_path / "run")
    assert (code, out, err) == (2, "", message)
    assert leftovers(tmp_path) == []


# --- --out -----------------------------------------------------------------------------------


def test_out_writes_exactly_the_run_files(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, _, err = cli_run(capsys, "run", MINIMAL, *SHORT, "--out", out_dir)
    assert (code, err) == (0, "")
    assert leftovers(out_dir) == RUN_FILES
    assert leftovers(tmp_path) == ["run"]


def test_requests_columns_follow_the_contract(capsys, tmp_path):
    assert (
        main(
            [
                "run",
                str(CASES / "valid" / "calls.yaml"),
                *SHORT,
                "-q",
                "--out",
                str(tmp_path / "run"),
            ]
        )
        == 0
    )
    requests = pd.read_parquet(tmp_path / "run" / "requests.parquet")
    assert list(requests.columns[: len(CONTRACT)]) == CONTRACT
    assert (requests["parent_span_id"] == 0).any()
    assert set(requests["source"].astype(str)) >= {"client", "ingress", "front"}


def test_resolved_scenario_reruns_identically(capsys, tmp_path):
    # rate-trace reads a CSV next to the scenario: the resolved copy must not need it.
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    assert (
        main(
            [
                "run",
                str(CASES / "valid" / "rate-trace.yaml"),
                *SHORT,
                "--seed",
                "11",
                "-q",
                "--out",
                str(first),
            ]
        )
        == 0
    )
    resolved = first / "scenario.resolved.yaml"
    assert main(["run", str(resolved), "--seed", "11", "-q", "--out", str(second)]) == 0
    assert main(["run", str(resolved), "-q", "--out", str(third)]) == 0  # the seed is in the file
    for other in (second, third):
        pd.testing.assert_frame_equal(read_requests(first), read_requests(other))
        for name in ("timeseries.csv", "events.csv", "scenario.resolved.yaml"):
            assert (first / name).read_bytes() == (other / name).read_bytes(), name


def test_out_refuses_a_foreign_directory(capsys, tmp_path):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("keep me\n", encoding="utf-8")
    code, out, err = cli_run(capsys, "run", MINIMAL, *SHORT, "--out", foreign)
    assert (code, out) == (2, "")
    assert err.startswith(f"meshsim: {foreign} exists and does not look like a meshsim output")
    assert leftovers(foreign) == ["todo.txt"]
    assert (foreign / "todo.txt").read_text(encoding="utf-8") == "keep me\n"
    assert leftovers(tmp_path) == ["notes"]


def test_out_replaces_an_earlier_run(capsys, tmp_path):
    out_dir = tmp_path / "run"
    assert main(["run", str(MINIMAL), *SHORT, "--seed", "1", "-q", "--out", str(out_dir)]) == 0
    assert main(["run", str(MINIMAL), *SHORT, "--seed", "2", "-q", "--out", str(out_dir)]) == 0
    assert json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))["seed"] == 2
    assert leftovers(tmp_path) == ["run"]


def test_error_while_writing_leaves_nothing(capsys, tmp_path, monkeypatch):
    def broken(result):
        raise RuntimeError("writer exploded")

    monkeypatch.setattr(output, "summary_dict", broken)
    code, out, err = cli_run(capsys, "run", MINIMAL, *SHORT, "--out", tmp_path / "run")
    assert (code, out) == (1, "")
    assert "internal error: RuntimeError: writer exploded" in err
    assert "Traceback" not in err
    assert leftovers(tmp_path) == []


def test_disk_full_while_writing_is_not_an_internal_error(capsys, tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    code, _, err = cli_run(capsys, "run", MINIMAL, *SHORT, "--out", tmp_path / "run")
    assert leftovers(tmp_path) == []
    assert code == 2
    assert "No space left on device" in err and "internal error" not in err


def test_interrupt_before_writing(capsys, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(meshsim, "run", interrupted)
    code, out, err = cli_run(capsys, "run", MINIMAL, "--out", tmp_path / "run")
    assert (code, out) == (130, "")
    assert err == "meshsim: interrupted; nothing was written\n"
    assert leftovers(tmp_path) == []


def test_interrupt_in_the_middle_of_the_simulation(capsys, tmp_path, monkeypatch):
    seen = []

    def progress_bar(horizon, stream):
        def tick(t):
            seen.append(t)
            if t >= horizon / 2:
                raise KeyboardInterrupt

        return tick

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setattr(cli, "_progress_bar", progress_bar)
    code, out, _ = cli_run(capsys, "run", MINIMAL, *SHORT, "--out", tmp_path / "run")
    assert (code, out) == (130, "")
    assert 0 < seen[-1] < 2.0
    assert leftovers(tmp_path) == []


def test_interrupt_while_writing(capsys, tmp_path, monkeypatch):
    def interrupted(result):
        raise KeyboardInterrupt

    monkeypatch.setattr(output, "summary_dict", interrupted)
    code, out, err = cli_run(capsys, "run", MINIMAL, *SHORT, "--out", tmp_path / "run")
    assert (code, out) == (130, "")
    assert "interrupted" in err
    assert leftovers(tmp_path) == []


# --- progress and --quiet --------------------------------------------------------------------


def test_no_progress_bar_when_not_a_terminal(capsys):
    code, out, err = cli_run(capsys, "run", MINIMAL, *SHORT)
    assert (code, err) == (0, "")
    assert "end-to-end" in out


def test_progress_bar_on_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = cli_run(capsys, "run", MINIMAL, *SHORT)
    assert code == 0
    assert "100.0%" in err and "2s simulated" in err
    assert err.endswith("\r\033[K")  # the bar is cleared before the table


def test_quiet_prints_nothing(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = cli_run(capsys, "run", MINIMAL, *SHORT, "--quiet", "--out", tmp_path / "r")
    assert (code, out, err) == (0, "", "")
    assert leftovers(tmp_path / "r") == RUN_FILES


# --- schema ----------------------------------------------------------------------------------

try:
    import jsonschema
except ImportError:  # not a dependency: fall back to the subset validator below
    jsonschema = None

_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: (
        (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and v.is_integer())
    ),
}


def _subset_errors(schema: dict, value: Any, root: dict, at: str = "") -> list[str]:
    """Errors of ``value`` against the JSON Schema keywords pydantic emits (draft 2020-12)."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix("#/$defs/")
        return _subset_errors(root["$defs"][name], value, root, at)
    errors: list[str] = []

    def fail(msg: str) -> None:
        errors.append(f"{at or '/'}: {msg}")

    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{at or '/'}: {value!r} is not of type {kind}"]
    if "const" in schema and value != schema["const"]:
        fail(f"{value!r} != {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        fail(f"{value!r} not in {schema['enum']}")
    for key, test in [
        ("minimum", lambda v, b: v >= b),
        ("maximum", lambda v, b: v <= b),
        ("exclusiveMinimum", lambda v, b: v > b),
        ("exclusiveMaximum", lambda v, b: v < b),
    ]:
        if key in schema and _TYPES["number"](value) and not test(value, schema[key]):
            fail(f"{value!r} violates {key} {schema[key]}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        fail(f"{value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                fail(f"{key!r} is required")
        if len(value) < schema.get("minProperties", 0):
            fail("too few properties")
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += _subset_errors(props[key], item, root, f"{at}/{key}")
            elif extra is False:
                fail(f"additional property {key!r}")
            elif isinstance(extra, dict):
                errors += _subset_errors(extra, item, root, f"{at}/{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 1e9):
            fail("wrong number of items")
        prefix = schema.get("prefixItems", [])
        for i, item in enumerate(value):
            sub = prefix[i] if i < len(prefix) else schema.get("items")
            if sub is not None:
                errors += _subset_errors(sub, item, root, f"{at}/{i}")
    for sub in schema.get("allOf", []):
        errors += _subset_errors(sub, value, root, at)
    if "anyOf" in schema and not any(
        not _subset_errors(s, value, root, at) for s in schema["anyOf"]
    ):
        fail("not valid under any of anyOf")
    if "oneOf" in schema:
        matches = sum(not _subset_errors(s, value, root, at) for s in schema["oneOf"])
        if matches != 1:
            fail(f"valid under {matches} of oneOf, expected exactly 1")
    return errors


def schema_errors(schema: dict, value: Any) -> list[str]:
    """Validation errors of ``value`` (plain JSON data) against ``schema``."""
    if jsonschema is not None:
        validator = jsonschema.Draft202012Validator(schema)
        return [
            f"/{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(value)
        ]
    return _subset_errors(schema, value, schema)


def as_json(path: Path) -> Any:
    """A YAML file as the JSON a schema-aware editor would see (mapping keys become strings)."""
    return json.loads(json.dumps(yaml.safe_load(path.read_text(encoding="utf-8"))))


@pytest.fixture(scope="module")
def schema() -> dict:
    """The schema exactly as ``meshsim schema`` prints it on stdout."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["schema"]) == 0
    return json.loads(stdout.getvalue())


def test_schema_prints_json_on_stdout_only(capsys):
    code, out, err = cli_run(capsys, "schema")
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data["type"] == "object"
    assert data["additionalProperties"] is False
    assert set(data["required"]) == {"duration", "services", "workload"}
    assert {
        "duration",
        "warmup",
        "seed",
        "services",
        "externalServices",
        "workload",
        "network",
        "mesh",
    } <= set(data["properties"])


def test_schema_is_well_formed(schema):
    if jsonschema is not None:
        jsonschema.Draft202012Validator.check_schema(schema)
    refs = re.findall(r'"\$ref": "([^"]+)"', json.dumps(schema))
    assert refs
    for ref in refs:
        assert ref.startswith("#/$defs/") and ref.removeprefix("#/$defs/") in schema["$defs"]
    for definition in schema["$defs"].values():
        if definition.get("type") == "object":
            assert set(definition.get("required", [])) <= set(definition["properties"])
    # Field names are the camelCase names of the files.
    assert "viaIngress" in schema["$defs"]["Client"]["properties"]
    assert "destinationRules" in schema["$defs"]["Mesh"]["properties"]


def test_schema_rejects_what_the_loader_rejects(schema):
    data = as_json(CASES / "valid" / "closed-users.yaml")
    assert schema_errors(schema, data) == []
    assert schema_errors(schema, {**data, "warmpu": "1s"})
    assert schema_errors(schema, {**data, "services": {"api": {"latency": "5ms", "replicas": 0}}})
    assert schema_errors(schema, {k: v for k, v in data.items() if k != "workload"})


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem) for p in VALID])
def test_schema_accepts_valid_case(schema, path):
    assert schema_errors(schema, as_json(path)) == []


def test_schema_out_file(capsys, tmp_path):
    _, out, _ = cli_run(capsys, "schema")
    target = tmp_path / "scenario.schema.json"
    assert cli_run(capsys, "schema", "--out", target) == (0, "", "")
    assert target.read_text(encoding="utf-8") == out
    assert leftovers(tmp_path) == ["scenario.schema.json"]


@pytest.mark.parametrize("where", ["missing-parent", "directory"])
def test_schema_out_bad_path(capsys, tmp_path, where):
    target = tmp_path / "missing" / "s.json" if where == "missing-parent" else tmp_path / "dir"
    if where == "directory":
        target.mkdir()
    code, _, err = cli_run(capsys, "schema", "--out", target)
    assert leftovers(tmp_path) == ([] if where == "missing-parent" else ["dir"])
    assert code == 2 and "internal error" not in err


# --- real processes --------------------------------------------------------------------------


def test_process_run_ok(tmp_path):
    proc = python_m("run", MINIMAL, *SHORT, "--out", tmp_path / "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress bar: stderr is a pipe
    assert "end-to-end" in proc.stdout
    assert leftovers(tmp_path / "run") == RUN_FILES


def test_process_every_invalid_case_exits_2_without_traceback(tmp_path):
    paths = [p for p in INVALID if p.stem not in EXIT_BUGS]
    proc = python_m("validate", *paths, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    for path in paths:
        assert f"{path}:" in proc.stderr, path.name


def test_process_missing_file_and_bad_set(tmp_path):
    proc = python_m("run", tmp_path / "missing.yaml", cwd=tmp_path)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == f"{tmp_path / 'missing.yaml'}: (top level): no such file\n"
    proc = python_m("run", MINIMAL, "--set", "services.api.latency.kind=lognormall", cwd=tmp_path)
    assert proc.returncode == 2
    assert "(did you mean 'lognormal'?)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_run_names_the_envoy_flags_it_saw(capsys):
    code, out, _ = cli_run(capsys, "run", CASES.parent.parent / "scenarios" / "pool-limits.yaml")
    assert code == 0
    flags_line = [line for line in out.splitlines() if line.startswith("Envoy response flags")]
    assert len(flags_line) == 1 and " UO " in flags_line[0] + " "
    code, out, _ = cli_run(capsys, "run", MINIMAL, *SHORT)
    assert code == 0 and "Envoy response flags" not in out  # nothing flagged, nothing said


def test_run_reports_work_done_for_callers_that_had_given_up(capsys, tmp_path):
    path = tmp_path / "giving-up.yaml"
    path.write_text(
        "duration: 10s\n"
        "services:\n"
        "  a: {latency: 0ms, calls: [{to: b}]}\n"
        "  b: {latency: 1s, workers: 100}\n"
        "workload:\n"
        "  - {client: u, entry: a, viaIngress: false,\n"
        "     arrival: {kind: closed, users: 1, thinkTime: 2s}}\n"
        "network: {latency: 0ms}\n"
        "mesh:\n"
        "  sidecar: {hopOverhead: 0ms}\n"
        "  virtualServices: {b: {http: [{timeout: 0.25s}]}}\n")
    code, out, err = cli_run(capsys, "run", path)
    assert (code, err) == (0, "")
    # The user thinks first: requests start at 2, 4.25, 6.5 and 8.75 s, and b works 0.75 s on
    # each after a gave up at 0.25 s.
    assert "work for callers that had given up (after warm-up): b 4 requests, 3.0 worker-s" in out
