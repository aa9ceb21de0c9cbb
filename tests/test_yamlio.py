"""Safe YAML loading: lines of keys, and a clear ScenarioError for every kind of bad input."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshsim import yamlio
from meshsim.errors import ScenarioError
from meshsim.yamlio import MAX_BYTES, LineMap, load_file, load_yaml, parse_scalar


@pytest.fixture(autouse=True, params=[L.__name__ for L in yamlio._LOADERS])
def loader(request, monkeypatch):
    """Run every test with libyaml's parser and with PyYAML's pure-Python one."""
    chosen = next(L for L in yamlio._LOADERS if L.__name__ == request.param)
    monkeypatch.setattr(yamlio, "_Loader", chosen)
    return chosen


def refusal(text: str | bytes) -> str:
    """The one formatted issue of loading ``text`` as ``s.yaml``."""
    with pytest.raises(ScenarioError) as info:
        load_yaml(text, "s.yaml")
    assert len(info.value.issues) == 1
    return str(info.value)


# --- loading and lines -----------------------------------------------------------------------

SCENARIO = """\
# a scenario
services:
  cart:
    replicas: 2
    calls:
      - to: db
        timeout: 250ms
      -
        to: search
  db: {replicas: 1, calls: [{to: x}]}
workload:
  rate: 400/s
"""


def test_loads_plain_values():
    data, _ = load_yaml(SCENARIO, "s.yaml")
    assert data == {
        "services": {
            "cart": {"replicas": 2, "calls": [{"to": "db", "timeout": "250ms"}, {"to": "search"}]},
            "db": {"replicas": 1, "calls": [{"to": "x"}]},
        },
        "workload": {"rate": "400/s"},
    }


@pytest.mark.parametrize(
    ("path", "line"),
    [
        ((), 2),
        (("services",), 2),
        (("services", "cart", "replicas"), 4),
        (("services", "cart", "calls"), 5),
        (("services", "cart", "calls", 0), 6),
        (("services", "cart", "calls", 0, "timeout"), 7),
        (("services", "cart", "calls", 1), 9),
        (("services", "db", "calls", 0, "to"), 10),
        (("workload", "rate"), 12),
        # Missing keys and indexes: the line of the deepest part that exists.
        (("services", "cart", "maxPending"), 3),
        (("services", "cart", "calls", 5, "to"), 5),
        (("services", "nope", "replicas"), 2),
        (("workload", "rate", "deeper"), 12),
    ],
)
def test_line_for(path, line):
    _, lines = load_yaml(SCENARIO, "s.yaml")
    assert lines.line_for(path) == line


def test_merge_keys_take_the_line_where_the_value_is_written():
    text = "base: &b {replicas: 1, timeout: 1s}\nsvc:\n  <<: *b\n  replicas: 3\n"
    data, lines = load_yaml(text, "s.yaml")
    assert data["svc"] == {"replicas": 3, "timeout": "1s"}
    assert lines.line_for(("svc", "replicas")) == 4
    assert lines.line_for(("svc", "timeout")) == 1


def test_non_string_keys():
    data, lines = load_yaml("codes:\n  503: retry\n  true: yes\n", "s.yaml")
    assert data == {"codes": {503: "retry", True: True}}
    assert lines.line_for(("codes", 503)) == 2
    assert lines.line_for(("codes", "503")) == 2
    assert lines.line_for(("codes", True)) == 3


def test_line_map_without_a_document():
    assert LineMap().line_for(("a", 1)) is None


def test_byte_order_mark_is_accepted():
    assert load_yaml(b"\xef\xbb\xbfa: 1\n", "s.yaml")[0] == {"a": 1}
    assert load_yaml("\ufeffa: 1\n", "s.yaml")[0] == {"a": 1}


def test_anchors_and_aliases_are_fine_in_moderation():
    data, _ = load_yaml("x: &a {p: 1}\ny: [*a, *a]\n", "s.yaml")
    assert data == {"x": {"p": 1}, "y": [{"p": 1}, {"p": 1}]}


# --- refusals --------------------------------------------------------------------------------

EMPTY = (
    "s.yaml: (top level): the file is empty: expected a scenario mapping with at least "
    "`services` and `workload`"
)


@pytest.mark.parametrize("text", ["", "   \n\n", "# only a comment\n", "---\n", b""])
def test_empty_file(text):
    assert refusal(text) == EMPTY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "s.yaml:3: (top level): the file looks binary (NUL byte at offset 8); "
            "expected YAML text",
        ),
        (
            "a: 1\x00",
            "s.yaml:1: (top level): the file looks binary (NUL byte at offset 4); "
            "expected YAML text",
        ),
        (
            b"a: 1\nb: caf\xe9\n",
            "s.yaml:2: (top level): the file is not UTF-8 text (byte 0xe9 at offset 11)",
        ),
        (
            "a: 1".encode("utf-16"),
            "s.yaml:1: (top level): the file is UTF-16 encoded: save it as UTF-8",
        ),
        ("- a\n- b\n", "s.yaml:1: (top level): expected a mapping of scenario fields, got a list"),
        (
            "# c\njust text\n",
            "s.yaml:2: (top level): expected a mapping of scenario fields, "
            "got a single value ('just text')",
        ),
        ("a: 1\nb: 2\na: 3\n", "s.yaml:3: a: duplicate key 'a' (first at line 1)"),
        (
            "services:\n  cart:\n    replicas: 1\n    replicas: 2\n",
            "s.yaml:4: services.cart.replicas: duplicate key 'replicas' (first at line 3)",
        ),
        (
            "calls:\n  - {to: a, to: b}\n",
            "s.yaml:2: calls[0].to: duplicate key 'to' (first at line 2)",
        ),
        (
            "a: 1\n---\nb: 2\n",
            "s.yaml:2: (top level): expected one YAML document, found a second one (after `---`)",
        ),
        (
            "run: !!python/object/apply:os.system [echo hi]\n",
            "s.yaml:1: run: unsupported YAML tag '!!python/object/apply:os.system': "
            "scenario files may use only plain YAML values",
        ),
        (
            "a:\n  b: !Ref x\n",
            "s.yaml:2: a.b: unsupported YAML tag '!Ref': scenario files may use only plain YAML "
            "values",
        ),
        ("a: [1, !!int x]\n", "s.yaml:1: a[1]: cannot read 'x' as an integer"),
        (
            "when: 2024-13-45\n",
            "s.yaml:1: when: cannot read '2024-13-45' as a date: month must be in 1..12",
        ),
        ("a: *nope\n", "s.yaml:1: a: unknown alias *nope (no anchor &nope before it)"),
        (
            "a: &x [1, *x]\n",
            "s.yaml:1: a[1]: alias *x refers to a mapping or list that contains it",
        ),
        (
            "[" * 100 + "]" * 100,
            "s.yaml:1: (top level): the document is nested more than 64 levels deep",
        ),
    ],
)
def test_refused(text, expected):
    assert refusal(text) == expected


def test_deep_block_nesting_names_the_line():
    text = "".join("  " * i + f"k{i}:\n" for i in range(80))
    assert (
        refusal(text) == "s.yaml:65: (top level): the document is nested more than 64 levels deep"
    )


def test_alias_that_nests_too_deep():
    deep = "[" * 40 + "]" * 40
    text = f"a: &a {deep}\nb: {'[' * 30}*a{']' * 30}\n"
    assert refusal(text) == (
        "s.yaml:2: (top level): alias *a nests the document more than 64 levels deep"
    )


def test_billion_laughs_is_refused_before_expansion():
    lines = ['lol0: &lol0 "lol"']
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * 10)}]" for i in range(1, 10)]
    message = refusal("\n".join(lines) + "\n")
    assert re.fullmatch(
        r"s\.yaml:\d+: lol\d: the document expands to more than 1,000,000 values once its "
        r"aliases \(\*name\) are expanded \(an alias bomb\?\)",
        message,
    )


def test_wide_alias_bomb():
    text = "a: &a [" + ", ".join(["x"] * 1000) + "]\nb: [" + ", ".join(["*a"] * 1001) + "]\n"
    assert "expands to more than 1,000,000 values" in refusal(text)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_too_large(as_bytes):
    text = "a" * (MAX_BYTES + 1)
    expected = "s.yaml: (top level): the file is too large (10.0 MiB; the limit is 10 MiB)"
    assert refusal(text.encode() if as_bytes else text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "a: [1, 2\n",
        "a:\n  b: 1\n c: 2\n",
        "a: 'unterminated\n",
        "key: value: other\n",
        "a: b\x07\n",
        "? [1]\n: 2\n",
        "a: {b: 1}}\n",
        "\t- x\n",
    ],
)
def test_syntax_errors_are_one_clean_line(text):
    message = refusal(text)
    assert re.fullmatch(r"s\.yaml:\d+: \(top level\): invalid (YAML: |character ).+", message)
    assert "\n" not in message


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.text(alphabet=" \n\t-:,[]{}&*!|>'\"#%@`?ab1.~\x07\x00\ufeff"),
        st.binary(max_size=64),
    )
)
def test_bad_input_raises_only_scenario_error(text):
    try:
        load_yaml(text, "s.yaml")
    except ScenarioError as err:
        assert str(err).startswith("s.yaml")


# --- files -----------------------------------------------------------------------------------


def test_load_file(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("a: 1\nb: [x]\n", encoding="utf-8")
    data, lines = load_file(path)
    assert data == {"a": 1, "b": ["x"]}
    assert lines.line_for(("b", 0)) == 2


def test_load_file_names_the_file_as_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("a: 1\na: 2\n", encoding="utf-8")
    with pytest.raises(ScenarioError) as info:
        load_file("s.yaml")
    assert str(info.value) == "s.yaml:2: a: duplicate key 'a' (first at line 1)"


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ScenarioError) as info:
        load_file(path)
    assert str(info.value) == f"{path}: (top level): no such file"


def test_directory(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_file(tmp_path)
    assert str(info.value) == f"{tmp_path}: (top level): is a directory, not a scenario file"


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (PermissionError(13, "Permission denied"), "permission denied: cannot read the file"),
        (OSError(5, "Input/output error"), "cannot read the file: Input/output error"),
    ],
)
def test_unreadable_file(monkeypatch, error, message):
    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(yamlio, "open", refuse, raising=False)  # also when tests run as root
    with pytest.raises(ScenarioError) as info:
        load_file("s.yaml")
    assert str(info.value) == f"s.yaml: (top level): {message}"


def test_huge_file_is_not_read_whole(tmp_path):
    path = tmp_path / "big.yaml"
    with open(path, "wb") as f:
        f.truncate(3 * MAX_BYTES)
    with pytest.raises(ScenarioError) as info:
        load_file(path)
    assert str(info.value) == (
        f"{path}: (top level): the file is too large (30.0 MiB; the limit is 10 MiB)"
    )


# --- --set values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4", 4),
        ("0.5", 0.5),
        ("250ms", "250ms"),
        ("400/s", "400/s"),
        ("99.9%", "99.9%"),
        ("true", True),
        ("'4'", "4"),
        ("[a, b]", ["a", "b"]),
        ("{kind: constant, value: 1ms}", {"kind": "constant", "value": "1ms"}),
        ("null", None),
        ("", None),
    ],
)
def test_parse_scalar(text, value):
    assert parse_scalar(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[a", "invalid YAML: "),
        ("!!python/name:os.system ''", "unsupported YAML tag '!!python/name:os.system'"),
        ("a\n---\nb", "expected one YAML document"),
    ],
)
def test_parse_scalar_errors_name_the_option_and_path(text, message):
    with pytest.raises(ScenarioError) as info:
        parse_scalar(text, path=("services", "cart", "replicas"))
    assert str(info.value).startswith(f"--set: services.cart.replicas: {message}")
