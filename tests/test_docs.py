"""The docs are executed: the reference is generated, every example runs, every link resolves.

Each page (but the generated reference) runs top to bottom in a fresh directory in which
``scenarios/`` is the repository's: a ```` ```yaml title="FILE" ```` block is written to
``FILE``, each ``$ meshsim ...`` line of a ```` ```console ```` block runs (``$ echo $?`` shows
the exit code of the command before it; any other failing command fails the test), and
```` ```python ```` blocks run in one namespace per page, like a notebook. What they print must
be what the page shows under them (in the console block, or in a ```` ```text ```` block right
after the python block), wall-clock times aside.

When a change moves the figures, refresh the pages and read the diff::

    MESHSIM_UPDATE_DOCS=1 .venv/bin/pytest tests/test_docs.py
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
from pathlib import Path

import pytest

import meshsim
from meshsim import cli, schema_doc

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference" / "scenario.md"
# Every page of ours but the generated reference (performance.md is the benchmark's own page).
EXECUTED = sorted(p for p in DOCS.rglob("*.md") if p != REFERENCE and p.name != "performance.md")
UPDATE = os.environ.get("MESHSIM_UPDATE_DOCS") == "1"

FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```$", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# Set-up commands the pages show but the tests do not run (the venv is already there).
SETUP = (
    "python3 -m venv",
    "python -m venv",
    "pip ",
    ".venv/bin/pip ",
    "git clone ",
    "cd ",
    "source ",
)
WALL = re.compile(r"\d+(\.\d+)?s wall")


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(DOCS)) for p in paths]


# --- the generated reference ---------------------------------------------------------------------


def test_scenario_reference_is_up_to_date():
    assert REFERENCE.read_text(encoding="utf-8") == schema_doc.render(), (
        "docs/reference/scenario.md is out of date: run .venv/bin/python -m meshsim.schema_doc"
    )


def test_schema_doc_check_and_write(tmp_path):
    out = tmp_path / "ref" / "scenario.md"
    assert schema_doc.main(["--check", "-o", str(out)]) == 1  # missing
    assert schema_doc.main(["-o", str(out)]) == 0
    assert schema_doc.main(["--check", "-o", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["scenario.md"]  # no temporary file left
    out.write_text(out.read_text(encoding="utf-8") + "edited\n", encoding="utf-8")
    assert schema_doc.main(["--check", "-o", str(out)]) == 1


# --- executed pages ------------------------------------------------------------------------------


class Page:
    """Runs one page's blocks in order and gives back the page with the output they printed."""

    def __init__(self, name: str):
        self.name = name
        self.namespace: dict = {"__name__": "__docs__"}
        self.rc = 0
        self.rc_shown = True
        self.last = ""

    def run(self, text: str) -> str:
        pieces, pos, end, printed = [], 0, 0, None
        for i, m in enumerate(FENCE.finditer(text)):
            lang, info, body = m.group(1), m.group(2), m.group(3)
            new = body
            if lang == "yaml" and (title := re.search(r'title="([^"]+)"', info)):
                Path(title[1]).parent.mkdir(parents=True, exist_ok=True)
                Path(title[1]).write_text(body, encoding="utf-8")
            elif lang == "console":
                new = self.console(body)
            elif lang in ("bash", "sh"):
                for line in _joined(body.splitlines()):
                    if line.strip() and not line.lstrip().startswith("#"):
                        self.command(line)
            elif lang == "python":
                printed = self.python(body, f"{self.name}, block {i + 1}")
            elif lang == "text" and printed is not None and not text[end : m.start()].strip():
                new = printed  # the output of the python block just before
            if lang != "python":
                printed = None
            pieces += [text[pos : m.start(3)], new]
            pos, end = m.end(3), m.end()
        self.check_rc()
        return "".join([*pieces, text[pos:]])

    def console(self, body: str) -> str:
        out = []
        for written, cmd, shown in _commands(body, self.name):
            printed = self.command(cmd)
            out.append(written + (shown if printed is None else printed))
        return "".join(out)

    def command(self, cmd: str) -> str | None:
        if cmd.startswith(SETUP):
            return None
        if cmd.strip() == "echo $?":
            self.rc_shown = True
            return f"{self.rc}\n"
        self.check_rc()
        args = shlex.split(cmd)
        assert args[0] == "meshsim", f"{self.name}: the docs tests do not know how to run {cmd!r}"
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                self.rc = cli.main(args[1:])
            except SystemExit as exc:  # argparse: --help, usage errors
                self.rc = exc.code if isinstance(exc.code, int) else 1
        self.rc_shown = self.rc == 0
        self.last = cmd
        return buf.getvalue()

    def check_rc(self) -> None:
        assert self.rc_shown, f"{self.name}: {self.last!r} exited {self.rc} (show it with echo $?)"

    def python(self, body: str, where: str) -> str:
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            exec(compile(body, where, "exec"), self.namespace)
        return buf.getvalue()


def _joined(lines: list[str]) -> list[str]:
    """Lines with backslash continuations joined."""
    out: list[str] = []
    for line in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1] + " " + line.strip()
        else:
            out.append(line)
    return out


def _commands(body: str, where: str) -> list[list[str]]:
    """A console block as ``[command lines as written, the command, output shown]`` items."""
    items: list[list[str]] = []
    for line in body.splitlines(keepends=True):
        if items and items[-1][0].endswith("\\\n") and not items[-1][2]:
            items[-1][0] += line
            items[-1][1] = items[-1][1][:-1] + " " + line.strip()
        elif line.startswith("$ "):
            items.append([line, line[2:].rstrip("\n"), ""])
        else:
            assert items, f"{where}: a console block must start with a $ command"
            items[-1][2] += line
    return items


def _mask(text: str) -> str:
    return WALL.sub("#s wall", text)


@pytest.mark.parametrize("page", EXECUTED, ids=_ids(EXECUTED))
def test_page_runs_and_shows_its_real_output(page, tmp_path, monkeypatch):
    (tmp_path / "scenarios").symlink_to(ROOT / "scenarios")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps --help to the terminal's width
    text = page.read_text(encoding="utf-8")
    fresh = Page(str(page.relative_to(DOCS))).run(text)
    if UPDATE and _mask(fresh) != _mask(text):
        page.write_text(fresh, encoding="utf-8")
    else:
        assert _mask(fresh) == _mask(text), (
            f"{page.name} shows output its examples no longer print; refresh it with "
            "MESHSIM_UPDATE_DOCS=1 and read the diff"
        )


def _documented_columns(section: str) -> list[str]:
    """First-column names of the table under the heading ``## `section` `` of results.md."""
    text = (DOCS / "reference" / "results.md").read_text(encoding="utf-8")
    body = text.split(f"## `{section}`\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)` \|", body, re.M)


def test_results_reference_lists_every_column():
    shop = ROOT / "scenarios" / "shop.yaml"
    result = meshsim.run(shop, overrides={"duration": "10s", "warmup": "2s"})
    timeseries = sorted({re.sub(r"^status_\d+$", "status_<code>", c) for c in result.timeseries})
    assert _documented_columns("requests") == list(result.requests.columns)
    assert list(result.in_flight.columns) == list(result.requests.columns)
    assert sorted(_documented_columns("timeseries")) == timeseries
    assert _documented_columns("summary()") == ["scope", *result.summary().columns]
    assert _documented_columns("events") == list(result.events.columns)


# --- links ---------------------------------------------------------------------------------------


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    titles = re.findall(r"^#+\s+(.*)$", text, re.M)
    return {schema_doc._slug(t.strip()) for t in titles}


ALL_PAGES = sorted(DOCS.rglob("*.md"))


@pytest.mark.parametrize("page", ALL_PAGES, ids=_ids(ALL_PAGES))
def test_relative_links_resolve(page):
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(DOCS)}: broken link {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.relative_to(DOCS)}: no heading for {target}"
