"""``meshsim report``: one self-contained, escaped HTML page whose figures equal the data files.

The last tests open the page in a real headless Chromium (Debian's ``chromium``) when it is
installed, and are skipped otherwise.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from meshsim import cli
from meshsim.report import ReportError, directory_kind, report_html

EVIL = "<script>alert(1)</script>"

SCENARIO = f"""\
name: "{EVIL}"
description: "a & b <i>not italic</i>"
duration: 6s
warmup: 1s
seed: 3
slo: {{p99: 50ms, successRate: 99%}}
services:
  "front<b>":
    replicas: 2
    workers: 4
    latency: {{kind: exponential, mean: 5ms}}
    calls:
      - {{to: db}}
      - {{to: cache, probability: 0.5}}
  db:
    workers: 2
    latency: {{kind: exponential, mean: 10ms}}
    errors: {{rate: 2%, status: 503}}
  cache:
    latency: {{kind: constant, value: 1ms}}
workload:
  - client: users
    entry: "front<b>"
    arrival: {{kind: poisson, rate: 100/s}}
faults:
  - {{name: slow db, kind: slow, target: db, start: 3s, end: 5s, factor: 4}}
variants:
  "more<db>": {{services.db.workers: 4}}
"""


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "evil.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run_dir(scenario_file):
    out = scenario_file.parent / "run"
    assert cli.main(["run", str(scenario_file), "--out", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def sweep_dir(scenario_file):
    out = scenario_file.parent / "sweep"
    assert cli.main(["sweep", str(scenario_file), "--grid", "workload.0.arrival.rate=50/s,150/s",
                     "-n", "2", "--workers", "1", "--out", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def comparison_dir(scenario_file):
    out = scenario_file.parent / "compare"
    assert cli.main(["compare", str(scenario_file), "--out", str(out), "-q"]) == 0
    return out


@pytest.fixture(scope="module")
def comparison_html(comparison_dir):
    return report_html(comparison_dir)


@pytest.fixture(scope="module")
def capacity_dir(run_dir):
    """A capacity directory in the format documented in ``meshsim.capacity`` (made up figures)."""
    out = run_dir.parent / "capacity"
    out.mkdir()
    shutil.copy(run_dir / "scenario.resolved.yaml", out)
    ci = {f"{m}_{s}": v * k for m, v in (("throughput", 90.0), ("success_rate", 0.99),
                                         ("latency_mean", 0.01), ("latency_p99", 0.04),
                                         ("amplification", 1.0))
          for s, k in (("mean", 1.0), ("ci_low", 0.98), ("ci_high", 1.02))}
    load = pd.DataFrame([{"load_factor": f, "offered_rps": 100.0 * f, "replications": 3,
                          **{k: v * f for k, v in ci.items()}, "verdict": verdict}
                         for f, verdict in ((0.5, "met"), (1.0, "uncertain"), (2.0, "missed"))])
    services = pd.DataFrame([
        {"service": "front<b>", "replicas": 2, "workers": 4, "utilisation_mean": 0.5,
         "utilisation_ci_low": 0.45, "utilisation_ci_high": 0.55, "headroom": 0.5,
         "saturation_rps": 200.0, "queue_wait_mean": 0.001, "bottleneck": False,
         "replicas_proposed": 2},
        {"service": "db", "replicas": 1, "workers": 2, "utilisation_mean": 0.8,
         "utilisation_ci_low": 0.75, "utilisation_ci_high": 0.85, "headroom": 0.2,
         "saturation_rps": 125.0, "queue_wait_mean": 0.01, "bottleneck": True,
         "replicas_proposed": 2}])
    failures = pd.DataFrame([{"service": "front<b>", "replicas": 2, "replicas_after": 1,
                              "utilisation_mean": 0.9, "success_rate_mean": 0.97,
                              "success_rate_ci_low": 0.96, "success_rate_ci_high": 0.98,
                              "latency_p99_mean": 0.2, "latency_p99_ci_low": 0.15,
                              "latency_p99_ci_high": 0.25, "verdict": "missed"}])
    load.to_csv(out / "load.csv", index=False)
    services.to_csv(out / "services.csv", index=False)
    failures.to_csv(out / "failures.csv", index=False)
    plan = {"scenario": EVIL, "seed": 3, "replications": 3, "level": 0.95,
            "slos": ["p99<50ms"], "base_rps": 100.0, "target_rps": 100.0, "margin": 0.2,
            "plan_rps": 120.0, "knee": {"rps_low": 110.0, "rps_high": 130.0,
                                        "rps_estimate": 120.0, "converged": True},
            "bottleneck": "db", "replica_plan": {"front<b>": 2, "db": 2},
            "plan_verdict": "met", "no_slack": ["front<b>"],
            "policy_effect": {"amplification_at_knee": 1.1, "wasted_work_at_knee": 0.5}}
    (out / "capacity.json").write_text(json.dumps(plan), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def capacity_html(capacity_dir):
    return report_html(capacity_dir)


@pytest.fixture(scope="module")
def run_html(run_dir):
    return report_html(run_dir)


@pytest.fixture(scope="module")
def sweep_html(sweep_dir):
    return report_html(sweep_dir)


class _Cells(HTMLParser):
    """Every element with a ``data-metric``, as its attributes, and every tag's src/href."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "data-metric" in attrs:
            self.cells.append(attrs)
        self.links += [attrs[k] for k in ("src", "href", "xlink:href") if attrs.get(k)]


def _parse(html: str) -> _Cells:
    parser = _Cells()
    parser.feed(html)
    return parser


def _same(page: str, data: object) -> bool:
    if data is None or (isinstance(data, float) and math.isnan(data)):
        return page == ""
    if isinstance(data, bool):
        return page == str(data).lower()
    return float(page) == float(data)


# --- kinds of directory ----------------------------------------------------------------------


def test_kinds_of_directory(run_dir, sweep_dir, tmp_path):
    assert directory_kind(run_dir) == "run"
    assert directory_kind(sweep_dir) == "sweep"
    with pytest.raises(ReportError, match="not written by meshsim"):
        directory_kind(tmp_path)
    (tmp_path / "capacity.json").write_text("{}", encoding="utf-8")
    assert directory_kind(tmp_path) == "capacity"
    with pytest.raises(ReportError, match=r"no scenario\.resolved\.yaml"):
        report_html(tmp_path)


def test_cli_writes_the_file_and_refuses_a_foreign_directory(run_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    assert cli.main(["report", str(run_dir), "-o", str(out)]) == 0
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left
    assert cli.main(["report", str(tmp_path), "-o", str(tmp_path / "x.html")]) == 2
    assert "not written by meshsim" in capsys.readouterr().err
    assert not (tmp_path / "x.html").exists()


# --- escaping and self-containment -----------------------------------------------------------


@pytest.mark.parametrize("page", ["run_html", "sweep_html", "comparison_html", "capacity_html"])
def test_user_strings_are_escaped(page, request):
    html = request.getfixturevalue(page)
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "front&lt;b&gt;" in html and "<b>" not in html
    assert "script" not in _parse(html).tags


@pytest.mark.parametrize("page", ["run_html", "sweep_html", "comparison_html", "capacity_html"])
def test_the_page_is_self_contained(page, request):
    html = request.getfixturevalue(page)
    links = _parse(html).links
    assert links, "the page should have inline images"
    assert all(link.startswith(("data:image/png;base64,", "#", "url(#")) for link in links), links
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html and "url(http" not in html
    assert "@media print" in html


def test_the_run_report_has_every_section(run_html):
    for title in ("Scenario", "SLO verdicts", "Throughput and p99 latency over time",
                  "Per-service utilisation", "Failures", "Cascade metrics", "Findings",
                  "Recommended Istio configuration"):
        assert f"<h2>{title}</h2>" in run_html
    assert "<svg" in run_html and 'data-node="client:users"' in run_html
    assert 'data-node="front&lt;b&gt;"' in run_html


# --- the numbers in the page are the data files' ---------------------------------------------


def test_run_figures_equal_summary_json(run_dir, run_html):
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["summary"]
    cells = [c for c in _parse(run_html).cells if "data-scope" in c and "data-table" not in c
             and c["data-metric"] != "failures"]
    assert len(cells) >= 6 * len(summary)
    for cell in cells:
        expected = summary[cell["data-scope"]][cell["data-metric"]]
        assert _same(cell["data-value"], expected), cell
    assert any(c["data-metric"] == "slo_met" and c["data-value"] in ("true", "false")
               for c in cells)


def test_run_failures_equal_the_requests_table(run_dir, run_html):
    requests = pd.read_parquet(run_dir / "requests.parquet") \
        if (run_dir / "requests.parquet").exists() else pd.read_csv(run_dir / "requests.csv")
    failed = requests[(requests["status"] < 200) | (requests["status"] >= 400)]
    cells = [c for c in _parse(run_html).cells if c["data-metric"] == "failures"]
    assert cells
    for cell in cells:
        destination, status, flags = cell["data-scope"].rsplit("|", 2)
        count = ((failed["destination"] == destination) & (failed["status"] == int(status))
                 & (failed["flags"] == flags)).sum()
        assert int(cell["data-value"]) == count


def test_run_cascade_equals_cascade_csv(run_dir, run_html):
    cascade = pd.read_csv(run_dir / "cascade.csv", index_col=0)
    cells = [c for c in _parse(run_html).cells if c.get("data-table") == "cascade"]
    assert len(cells) == cascade.size
    for cell in cells:
        value = cascade.at[cell["data-scope"], cell["data-metric"]]
        if isinstance(value, str):
            continue
        assert _same(cell["data-value"], value.item() if hasattr(value, "item") else value)


def test_sweep_figures_equal_summary_csv(sweep_dir, sweep_html):
    summary = pd.read_csv(sweep_dir / "summary.csv").set_index(["point", "variant"])
    cells = [c for c in _parse(sweep_html).cells if "data-point" in c]
    assert {int(c["data-point"]) for c in cells} == {0, 1}
    for cell in cells:
        expected = summary.at[(int(cell["data-point"]), cell["data-variant"]),
                              cell["data-metric"]]
        assert _same(cell["data-value"], float(expected)), cell


def test_comparison_figures_equal_table_csv(comparison_dir, comparison_html):
    table = pd.read_csv(comparison_dir / "table.csv", index_col=0)
    cells = [c for c in _parse(comparison_html).cells if c.get("data-table") == "comparison"]
    assert len(cells) == table.size and {c["data-metric"] for c in cells} == {"baseline",
                                                                               "more<db>"}
    for cell in cells:
        assert _same(cell["data-value"], table.at[cell["data-scope"], cell["data-metric"]])
    pngs = sorted(p.stem for p in comparison_dir.glob("*.png"))
    assert pngs and all(f'data-figure="{name}"' in comparison_html for name in pngs)


def test_capacity_figures_equal_its_files(capacity_dir, capacity_html):
    cells = _parse(capacity_html).cells
    for table, name in (("load", "load.csv"), ("services", "services.csv"),
                        ("failures", "failures.csv")):
        frame = pd.read_csv(capacity_dir / name)
        found = [c for c in cells if c.get("data-table") == table]
        assert len(found) == frame.size - len(frame), table  # all but the index column
        for cell in found:
            value = frame.at[int(cell["data-row"]), cell["data-metric"]]
            if isinstance(value, str):
                assert cell["data-value"] == value
            else:
                assert _same(cell["data-value"], value.item()), cell
    assert "120 requests/s" in capacity_html and "The bottleneck is db." in capacity_html


# --- a real browser --------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000"]
# Written into the page under test only (the report itself has no script): once everything has
# loaded, it records which images decoded.
PROBE = """<script>window.addEventListener("load", () => {
  const images = [...document.images].map(i => i.complete && i.naturalWidth > 0);
  const out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify(images); document.body.appendChild(out);
});</script>"""


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=90, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.parametrize("page", ["run_html", "sweep_html", "comparison_html", "capacity_html"])
def test_chromium_loads_every_image_without_console_errors(page, request, tmp_path):
    html = request.getfixturevalue(page)
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    done = _chromium(["--dump-dom", probed.as_uri()], tmp_path / "profile")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, done.stdout[-2000:]
    images = json.loads(found.group(1))
    assert images and all(images), images
    assert html.count("<img ") == len(images)
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []

    page_file = tmp_path / "report.html"
    page_file.write_text(html, encoding="utf-8")
    shot = tmp_path / "report.png"
    done = _chromium([f"--screenshot={shot}", "--window-size=1200,3000", page_file.as_uri()],
                     tmp_path / "profile2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
