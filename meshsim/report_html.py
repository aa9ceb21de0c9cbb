"""The pieces of ``meshsim report``'s page: the call graph as inline SVG, figures inlined as PNG
``data:`` URIs, tables whose cells carry the exact figures of the data files, and the page with
its style sheet (a print style included).

Every string given to these functions is escaped here; callers pass raw values.
"""

from __future__ import annotations

import base64
import io
import math
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from .scenario import Call, Scenario

__all__ = ["HEADINGS", "bullet_list", "call_graph_svg", "cell", "data_value", "figure_img",
           "finite", "fmt", "frame_table", "page", "png_img", "section"]


def _edges(scenario: Scenario) -> list[tuple[str, str, bool]]:
    """(caller, callee, always) for every client entry and downstream call."""
    edges = []
    for c in scenario.workload:
        client = f"client:{c.client}"
        if c.via_ingress:
            edges += [(client, "ingress", True), ("ingress", c.entry, True)]
        else:
            edges.append((client, c.entry, True))
    for name, service in scenario.services.items():
        for step in service.calls:
            for call in [step] if isinstance(step, Call) else step.parallel:
                edges.append((name, call.to, call.probability >= 1.0))
    return list(dict.fromkeys(edges))


def call_graph_svg(scenario: Scenario) -> str:
    """The scenario's call graph as an inline SVG element, callers left of their callees.

    A node's column is the length of the longest chain of calls that reaches it (cycles are cut).
    """
    edges = _edges(scenario)
    nodes = list(dict.fromkeys([n for e in edges for n in e[:2]] + list(scenario.services)))
    depth = {n: 0 for n in nodes}
    for _ in range(len(nodes)):  # longest path, at most len(nodes) rounds (a cycle stops there)
        changed = False
        for a, b, _always in edges:
            if depth[b] < depth[a] + 1 and depth[a] + 1 < len(nodes):
                depth[b], changed = depth[a] + 1, True
        if not changed:
            break
    columns: dict[int, list[str]] = {}
    for n in nodes:
        columns.setdefault(depth[n], []).append(n)
    w, h, gap_x, gap_y = 130, 34, 60, 18
    pos = {n: (20 + d * (w + gap_x), 20 + i * (h + gap_y))
           for d, col in columns.items() for i, n in enumerate(col)}
    width = 40 + (max(columns) + 1) * (w + gap_x) - gap_x
    height = 40 + max(len(c) for c in columns.values()) * (h + gap_y) - gap_y
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="graph" role="img" '
             f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
             '<title>call graph</title><defs><marker id="arrow" viewBox="0 0 10 10" refX="10" '
             'refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
             '<path d="M0,0L10,5L0,10z" fill="#555"/></marker></defs>']
    for a, b, always in edges:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        dash = "" if always else ' stroke-dasharray="5,4"'
        parts.append(f'<line x1="{x1 + w}" y1="{y1 + h / 2}" x2="{x2}" y2="{y2 + h / 2}" '
                     f'stroke="#555"{dash} marker-end="url(#arrow)"/>')
    for n in nodes:
        x, y = pos[n]
        cls = ("client" if n.startswith("client:") else "gateway" if n == "ingress"
               else "external" if n in scenario.external_services else "service")
        label = n.removeprefix("client:")
        parts.append(f'<g class="node {cls}" data-node="{escape(n, quote=True)}">'
                     f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6"/>'
                     f'<text x="{x + w / 2}" y="{y + h / 2 + 4}" text-anchor="middle">'
                     f'{escape(label[:18])}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


# --- HTML pieces -----------------------------------------------------------------------------


HEADINGS = {
    "requests": "requests", "success_rate": "success rate", "throughput": "throughput",
    "goodput": "goodput", "latency_p50": "p50", "latency_p99": "p99", "slo_met": "SLO met",
    "utilisation": "utilisation", "queue_wait_mean": "queue wait",
}


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def data_value(value: Any) -> str:
    """The exact figure for ``data-value``: ``repr`` of a float, empty for no data."""
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(float(value)) if isinstance(value, float) else str(value)


def fmt(metric: str, value: Any) -> str:
    """A figure for people: latencies in ms, shares in %, rates per second."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    for suffix in ("_mean", "_ci_low", "_ci_high"):  # the mean and interval of a metric
        if metric.endswith(suffix) and metric not in ("latency_mean", "queue_wait_mean"):
            metric = metric.removesuffix(suffix)
    if metric == "slo_met":
        return {True: "met", False: "MISSED"}.get(value, f"{float(value):.0%} of runs")
    if metric.startswith("latency_") or metric == "queue_wait_mean":
        seconds = float(value)
        return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"
    if metric in ("success_rate", "utilisation"):
        return f"{float(value) * 100:.2f}%"
    if metric in ("throughput", "goodput"):
        return f"{float(value):.4g}/s"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def cell(value: Any, metric: str, scope: str) -> str:
    if isinstance(value, float) and metric == "slo_met" and not math.isnan(value):
        value = bool(value)
    text = "no SLO" if metric == "slo_met" and data_value(value) == "" else fmt(metric, value)
    cls = {"met": ' class="ok"', "MISSED": ' class="bad"'}.get(text, "")
    return (f'<td{cls} data-scope="{escape(scope, quote=True)}" data-metric="{metric}" '
            f'data-value="{data_value(value)}">{escape(text)}</td>')


def frame_table(frame: pd.DataFrame, name: str) -> str:
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, (index, row) in enumerate(frame.iterrows()):
        cells = "".join(
            f'<td data-table="{name}" data-row="{i}" data-scope="{escape(str(index), quote=True)}" '
            f'data-metric="{escape(str(c), quote=True)}" data-value="{escape(data_value(v))}">'
            f"{escape(fmt(str(c), v))}</td>"
            for c, v in row.items())
        rows.append(f"<tr><th scope=\"row\">{escape(str(index))}</th>{cells}</tr>")
    return (f"<div class=\"wide\"><table><thead><tr><th>{escape(str(frame.index.name or ''))}"
            f"</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


def figure_img(fig: Figure, alt: str, name: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<img data-figure="{name}" alt="{escape(alt, quote=True)}" '
            f'src="data:image/png;base64,{data}">')


def png_img(path: Path) -> str:
    """A PNG file of the directory, inlined."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<img data-figure="{escape(path.stem, quote=True)}" '
            f'alt="{escape(path.stem, quote=True)}" src="data:image/png;base64,{data}">')


def bullet_list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" if items else "<p>-</p>"


def section(title: str, body: str) -> str:
    return f"<section><h2>{escape(title)}</h2>{body}</section>"


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ddd;padding:.2em .5em;
text-align:right}th{background:#f4f4f4;text-align:left}td.ok{color:#1a7f37}
td.bad{color:#b42318;font-weight:bold}img{max-width:100%;height:auto}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:12px}
.graph rect{fill:#eef4ff;stroke:#4a6fa5}.graph .client rect{fill:#f3f3f3;stroke:#777}
.graph .gateway rect{fill:#fff6e0;stroke:#b58100}.graph .external rect{fill:#fdecec;stroke:#b42318}
.facts td{text-align:left}.wide{overflow-x:auto}
.graph text{font:12px system-ui,sans-serif;fill:#222}figcaption{font-size:.9em;color:#555}
@media print{body{margin:0;max-width:none;font-size:10pt}.wide{overflow:visible}
.wide table{font-size:8pt}section{break-inside:avoid-page}
h2{break-after:avoid}table,img,figure,pre{break-inside:avoid}pre{white-space:pre-wrap}
a{color:inherit;text-decoration:none}tr{break-inside:avoid}}
"""


def page(title: str, sections: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
            f"<body><h1>{escape(title)}</h1>{''.join(sections)}</body></html>\n")
