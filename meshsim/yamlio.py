"""Safe YAML loading that remembers where every key came from.

Scenario files are read with PyYAML's safe constructor only (plain mappings, lists, strings,
numbers, booleans, null, timestamps). The document is first composed into a node graph, which lets
us refuse what PyYAML would accept silently (duplicate keys, several documents) or expensively
(alias bombs, absurd nesting) before any Python object is built, and keeps each node's line for
error messages.

Every refusal is a :class:`~meshsim.errors.ScenarioError` with one issue; nothing here lets a
traceback reach the user.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    MappingStartEvent,
    SequenceStartEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from meshsim.errors import Issue, ScenarioError

try:  # libyaml parses ~10x faster; composition and construction stay in Python either way.
    from yaml.cyaml import CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    CParser = None

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "LineMap",
    "load_file",
    "load_yaml",
    "parse_scalar",
]

#: Largest scenario text accepted, in bytes (characters for ``str`` input).
MAX_BYTES = 10 * 1024 * 1024
#: Deepest nesting of mappings and lists accepted, counting aliases as expanded.
MAX_DEPTH = 64
#: Most nodes accepted after expanding every alias (a billion-laughs document has 10**9).
MAX_NODES = 1_000_000

_STD_PREFIX = "tag:yaml.org,2002:"
_MERGE_TAG = _STD_PREFIX + "merge"
_SAFE_TAGS = frozenset(t for t in SafeConstructor.yaml_constructors if t) | {_MERGE_TAG}
_EMPTY_MESSAGE = (
    "the file is empty: expected a scenario mapping with at least `services` and `workload`"
)


class _RefusedError(Exception):
    """Raised inside the loader; :func:`_load` turns it into a ScenarioError with the source."""

    def __init__(self, message: str, mark: Any = None, path: tuple = (), node: Any = None) -> None:
        super().__init__(message)
        self.node = node  # the failing node, when its path is still to be found
        self.issue = Issue(path, message, None if mark is None else mark.line + 1)


class _GuardedComposer(Composer):
    """PyYAML's composer plus limits, duplicate-key and tag checks, and the current key path.

    Aliases are not expanded here (both references share one node), so sizes are tracked per node:
    an alias adds the full expanded size of its anchor, which is how a 1 kB billion-laughs document
    is refused after composing a few dozen nodes instead of building 10**9 objects.
    """

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0  # mappings and lists currently open
        self._measure: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded size, height)
        self._path: list[Any] = []
        self._keys = SafeConstructor()

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        segment = index if isinstance(index, int) else _key_value(self._keys, index)
        self._path.append(segment)
        try:
            if self.check_event(AliasEvent):
                return self._compose_alias()
            is_collection = self.check_event(SequenceStartEvent, MappingStartEvent)
            if is_collection:
                self._depth += 1
                if self._depth > MAX_DEPTH:
                    raise _RefusedError(
                        f"the document is nested more than {MAX_DEPTH} levels deep",
                        self.peek_event().start_mark,
                    )
            node = super().compose_node(parent, index)
            if is_collection:
                self._depth -= 1
            self._check_tag(node)
            self._record_size(node)
            return node
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor: str | None) -> MappingNode:
        node = super().compose_mapping_node(anchor)
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = _key_value(self._keys, key_node)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    raise _RefusedError(
                        f"duplicate key {key!r} (first at line {first_line[key]})",
                        key_node.start_mark,
                        (*self._where(), key),
                    )
                first_line[key] = line
            except TypeError:  # unhashable key; the constructor reports it
                continue
        return node

    def _where(self) -> tuple:
        """Path of the node being composed (key nodes add no segment)."""
        return tuple(s for s in self._path[1:] if s is not None)

    def _compose_alias(self) -> Node:
        event = self.get_event()
        node = self.anchors.get(event.anchor)
        if node is None:
            raise _RefusedError(
                f"unknown alias *{event.anchor} (no anchor &{event.anchor} before it)",
                event.start_mark,
                self._where(),
            )
        if id(node) not in self._measure:
            raise _RefusedError(
                f"alias *{event.anchor} refers to a mapping or list that contains it",
                event.start_mark,
                self._where(),
            )
        size, height = self._measure[id(node)]
        if self._depth + height > MAX_DEPTH:
            raise _RefusedError(
                f"alias *{event.anchor} nests the document more than {MAX_DEPTH} levels deep",
                event.start_mark,  # no path: at this depth it would be longer than the message
            )
        if size > MAX_NODES:  # pragma: no cover - the anchor itself was refused first
            raise _RefusedError(_too_many_nodes(), event.start_mark)
        return node

    def _record_size(self, node: Node) -> None:
        if isinstance(node, SequenceNode):
            children = node.value
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        measures = [self._measure[id(c)] for c in children]
        size = 1 + sum(s for s, _ in measures)
        height = 0 if isinstance(node, ScalarNode) else 1 + max((h for _, h in measures), default=0)
        if size > MAX_NODES:
            raise _RefusedError(_too_many_nodes(), node.start_mark, self._where())
        self._measure[id(node)] = (size, height)

    def _check_tag(self, node: Node) -> None:
        if node.tag not in _SAFE_TAGS:
            tag = _short_tag(node.tag)
            raise _RefusedError(
                f"unsupported YAML tag {tag!r}: scenario files may use only plain YAML values",
                node.start_mark,
                self._where(),
            )


class _CheckedConstructor(SafeConstructor):
    """SafeConstructor whose scalar failures (``!!int x``, ``2024-13-45``) carry a line."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as err:
            what = repr(node.value) if isinstance(node, ScalarNode) else "this value"
            # int() and float() say nothing new; the date checks say which part is wrong.
            why = f": {err}" if node.tag.endswith(":timestamp") else ""
            message = f"cannot read {what} as {_tag_name(node.tag)}{why}"
            raise _RefusedError(message, node.start_mark, node=node) from None


class _PyLoader(Reader, Scanner, Parser, _GuardedComposer, _CheckedConstructor, Resolver):
    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _GuardedComposer.__init__(self)
        _CheckedConstructor.__init__(self)
        Resolver.__init__(self)


_LOADERS: list[type] = [_PyLoader]
if CParser is not None:

    class _CLoader(_GuardedComposer, CParser, _CheckedConstructor, Resolver):
        def __init__(self, text: str) -> None:
            CParser.__init__(self, text)
            _GuardedComposer.__init__(self)
            _CheckedConstructor.__init__(self)
            Resolver.__init__(self)

    _LOADERS.insert(0, _CLoader)

_Loader: type = _LOADERS[0]


class LineMap:
    """Lines (1-based) of the keys and items of a loaded YAML document, looked up by path.

    Parameters
    ----------
    root : yaml.Node or None
        The composed document; ``None`` gives a map that knows no lines (data built in code).
    """

    def __init__(self, root: Node | None = None) -> None:
        self._root = root
        self._keys = SafeConstructor()

    def line_for(self, path: Sequence[str | int]) -> int | None:
        """Line of the deepest prefix of ``path`` present in the document.

        A key's line is where the key is written, a list item's where the item starts; a missing
        field therefore gets the line of the mapping that lacks it, an unknown key its own line.
        Returns ``None`` when there is no document.
        """
        node = self._root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for segment in path:
            if isinstance(node, MappingNode):
                # Last occurrence wins, as in the loaded dict (merged ``<<`` keys come first).
                for key_node, value_node in reversed(node.value):
                    if _same_key(_key_value(self._keys, key_node), segment):
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    break
            elif (
                isinstance(node, SequenceNode)
                and isinstance(segment, int)
                and (0 <= segment < len(node.value))
            ):
                node = node.value[segment]
                line = node.start_mark.line + 1
            else:
                break
        return line


def load_yaml(text: str | bytes, source: str) -> tuple[Any, LineMap]:
    """Load one scenario document from YAML text.

    Parameters
    ----------
    text : str or bytes
        The YAML text; bytes must be UTF-8 (a BOM is allowed).
    source : str
        Name shown in error messages, usually the file path.

    Returns
    -------
    data : dict
        The top-level mapping, built from plain Python values.
    lines : LineMap
        Where each key and item of ``data`` is written.

    Raises
    ------
    ScenarioError
        With a single issue, for empty, binary, non-UTF-8, oversized or malformed input, several
        documents, duplicate keys, non-standard tags, nesting deeper than :data:`MAX_DEPTH`, alias
        expansion beyond :data:`MAX_NODES` nodes, or a top level that is not a mapping.
    """
    decoded = _decode(text, source)
    data, root = _load(decoded, source)
    if root is None:
        raise _error(source, _EMPTY_MESSAGE)
    if not isinstance(root, MappingNode):
        message = f"expected a mapping of scenario fields, got {_node_kind(root)}"
        raise _error(source, message, root.start_mark.line + 1)
    return data, LineMap(root)


def load_file(path: str | os.PathLike[str]) -> tuple[Any, LineMap]:
    """Read and load a scenario file; see :func:`load_yaml`.

    Errors name the file as given in ``path``. A missing, unreadable or directory path is a
    :class:`~meshsim.errors.ScenarioError` too.
    """
    source = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)  # one byte more than allowed is enough to refuse
            if len(raw) > MAX_BYTES:
                raise _too_large(source, os.fstat(f.fileno()).st_size)
    except FileNotFoundError:
        message = "no such file"
    except IsADirectoryError:
        message = "is a directory, not a scenario file"
    except PermissionError:
        message = "permission denied: cannot read the file"
    except OSError as err:
        message = f"cannot read the file: {err.strerror or err}"
    else:
        return load_yaml(raw, source)
    raise _error(source, message)


def parse_scalar(text: str, source: str = "--set", path: tuple[str | int, ...] = ()) -> Any:
    """Parse one YAML value written on a command line, as in ``--set path=value``.

    ``"4"`` gives ``4``, ``"true"`` gives ``True``, ``"250ms"`` stays ``"250ms"``, ``"[a, b]"``
    gives ``["a", "b"]``; an empty text gives ``None``, as an empty value in a file does.

    Parameters
    ----------
    text : str
        The value text.
    source, path
        Where the value comes from, for error messages (e.g. ``"--set"`` and the field path).

    Raises
    ------
    ScenarioError
        If the text is not a single valid YAML value (issues carry ``path`` and no line).
    """
    try:
        data, _ = _load(_decode(text, source), source)
    except ScenarioError as err:
        raise ScenarioError(source, [Issue(path, i.message) for i in err.issues]) from None
    return data


def _decode(text: str | bytes, source: str) -> str:
    if len(text) > MAX_BYTES:
        raise _too_large(source, len(text))
    if isinstance(text, str):
        if "\x00" in text:
            raise _binary(source, text, text.index("\x00"))
        return text
    if text.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _error(source, "the file is UTF-16 encoded: save it as UTF-8", 1)
    if b"\x00" in text:
        raise _binary(source, text, text.index(b"\x00"))
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        byte = text[err.start]
        line = text.count(b"\n", 0, err.start) + 1
        message = f"the file is not UTF-8 text (byte 0x{byte:02x} at offset {err.start})"
        raise _error(source, message, line) from None


def _too_large(source: str, size: int) -> ScenarioError:
    mib = 1024 * 1024
    return _error(
        source, f"the file is too large ({size / mib:.1f} MiB; the limit is {MAX_BYTES // mib} MiB)"
    )


def _binary(source: str, text: str | bytes, offset: int) -> ScenarioError:
    newline = "\n" if isinstance(text, str) else b"\n"
    line = text.count(newline, 0, offset) + 1  # type: ignore[arg-type]
    message = f"the file looks binary (NUL byte at offset {offset}); expected YAML text"
    return _error(source, message, line)


def _error(source: str, message: str, line: int | None = None) -> ScenarioError:
    """A ScenarioError about the whole document."""
    return ScenarioError(source, [Issue((), message, line)])


def _load(text: str, source: str) -> tuple[Any, Node | None]:
    """Compose and construct the single document of ``text``; ``(None, None)`` if there is none."""
    root: Node | None = None
    loader = None
    try:
        loader = _Loader(text)  # PyYAML's pure-Python reader checks characters right here
        loader.get_event()  # stream start
        if loader.check_event(StreamEndEvent):
            return None, None
        root = loader.compose_document()
        if not loader.check_event(StreamEndEvent):
            raise _RefusedError(
                "expected one YAML document, found a second one (after `---`)",
                loader.peek_event().start_mark,
            )
        if isinstance(root, ScalarNode) and root.tag == _STD_PREFIX + "null" and not root.value:
            return None, None  # only `---`, comments or blank lines
        return loader.construct_document(root), root
    except _RefusedError as refused:
        found = refused.node is not None and _path_to(root, refused.node)
        issue = replace(refused.issue, path=found) if found else refused.issue
        raise ScenarioError(source, [issue]) from None
    except yaml.MarkedYAMLError as err:
        raise ScenarioError(source, [_syntax_issue(err)]) from None
    except yaml.reader.ReaderError as err:
        line = text.count("\n", 0, err.position) + 1
        what = f"U+{err.character:04X}" if isinstance(err.character, int) else repr(err.character)
        raise _error(source, f"invalid character {what}: {err.reason}", line) from None
    except yaml.YAMLError as err:  # pragma: no cover - every PyYAML error above has a subclass
        raise _error(source, f"invalid YAML: {err}") from None
    except RecursionError:  # pragma: no cover - nesting is limited to MAX_DEPTH first
        raise _error(source, "the document is nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _path_to(root: Node, target: Node) -> tuple | None:
    """The key path of ``target`` in the node graph (only used when reporting an error)."""
    constructor = SafeConstructor()
    stack: list[tuple[Node, tuple]] = [(root, ())]
    seen: set[int] = set()
    while stack:
        node, path = stack.pop()
        if node is target:
            return path
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            stack.extend((child, (*path, i)) for i, child in enumerate(node.value))
        elif isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                stack.append((value_node, (*path, _key_value(constructor, key_node))))
    return None


def _syntax_issue(err: yaml.MarkedYAMLError) -> Issue:
    mark = err.problem_mark or err.context_mark
    problem = (err.problem or "").replace(_STD_PREFIX, "!!")
    if problem.startswith("could not determine a constructor for the tag"):
        problem = (
            problem.replace("could not determine a constructor for the tag", "unsupported YAML tag")
            + " (only plain YAML values are allowed)"
        )
    message = f"invalid YAML: {problem}"
    if err.context:
        message += f" ({err.context}"
        if err.context_mark is not None and err.context_mark.line != getattr(mark, "line", None):
            message += f" started at line {err.context_mark.line + 1}"
        message += ")"
    return Issue((), message, None if mark is None else mark.line + 1)


def _key_value(constructor: SafeConstructor, node: Any) -> Any:
    """The Python value of a scalar key node (``None`` for complex keys or unusable values)."""
    if not isinstance(node, ScalarNode):
        return None
    try:
        return constructor.construct_object(node)
    except Exception:  # a malformed key; the main constructor reports it with a line
        return node.value


def _same_key(key: Any, segment: Any) -> bool:
    # bool is an int in Python; `true:` and `1:` must not match the same path segment.
    if type(key) is type(segment):
        return key == segment
    return isinstance(segment, str) and not isinstance(key, str) and str(key) == segment


def _node_kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    value = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    return f"a single value ({value!r})"


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_STD_PREFIX) if tag.startswith(_STD_PREFIX) else tag


def _tag_name(tag: str) -> str:
    names = {
        "int": "an integer",
        "float": "a number",
        "bool": "a boolean",
        "timestamp": "a date",
        "binary": "base64 data",
        "null": "null",
    }
    short = tag.removeprefix(_STD_PREFIX)
    return names.get(short, f"!!{short}")


def _too_many_nodes() -> str:
    return (
        f"the document expands to more than {MAX_NODES:,} values once its aliases (*name) are "
        "expanded (an alias bomb?)"
    )
