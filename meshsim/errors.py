"""Errors in scenario input, reported as ``FILE:LINE: path.to.field: what is wrong``.

Bad input is the normal case for a tool that reads hand-written files, so it never ends in a
traceback: loading and validation collect :class:`Issue` records into one :class:`ScenarioError`,
whose text has one line per issue. :func:`from_validation_error` rewrites pydantic's errors in the
words of the file (camelCase keys, YAML values) and suggests the nearest valid name for typos.

A validator that checks a whole block (a mapping taken in another program's own shape, such as an
Envoy filter's ``typed_config``) may raise a ``ValueError`` with a ``path`` attribute: a tuple of
keys and list indexes inside the block. The issue then points at that key and its line.
"""

from __future__ import annotations

import difflib
import enum
import json
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, Discriminator, Tag, ValidationError

if TYPE_CHECKING:
    from meshsim.yamlio import LineMap

__all__ = [
    "Issue",
    "ScenarioError",
    "format_path",
    "from_validation_error",
    "issue",
    "unknown_name",
]

FieldPath = tuple[str | int, ...]

_MAX_LISTED = 12
_PLAIN_KEY = re.compile(r"^[\w-]+$")
_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'")

# What a type error expected, in the words of a YAML file.
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "a whole number",
    "int_parsing_size": "an integer of reasonable size",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "string_sub_type": "a string",
    "bytes_type": "a string",
    "dict_type": "a mapping",
    "mapping_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dataclass_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "iterable_type": "a list",
    "none_required": "null",
    "date_type": "a date",
    "date_parsing": "a date",
    "date_from_datetime_parsing": "a date",
    "datetime_type": "a date and time",
    "datetime_parsing": "a date and time",
    "time_delta_type": "a duration",
    "time_delta_parsing": "a duration",
}
_COMPARISONS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


@dataclass(frozen=True)
class Issue:
    """One thing wrong with the input.

    Attributes
    ----------
    path : tuple of str and int
        Keys and list indexes from the top of the document, as written in the file.
    message : str
        What is wrong, ideally with what was expected.
    line : int or None
        1-based line in the source, when known.
    source : str or None
        Where this issue comes from when that differs from the error's source (e.g. ``--set``).
    """

    path: FieldPath
    message: str
    line: int | None = None
    source: str | None = field(default=None, compare=False)

    def path_text(self) -> str:
        """The path as ``services.cart.calls[1].to``; ``(top level)`` for the empty path."""
        return format_path(self.path)

    def format(self, source: str) -> str:
        """``SOURCE:LINE: path: message`` (``:LINE`` left out when the line is unknown)."""
        where = self.source or source
        if self.line is not None:
            where += f":{self.line}"
        return f"{where}: {self.path_text()}: {self.message}"


class ScenarioError(Exception):
    """Invalid scenario input: one or more issues from one source (a file name, ``--set``, ...).

    ``str(err)`` has one ``SOURCE:LINE: path: message`` line per issue.
    """

    def __init__(self, source: str, issues: Iterable[Issue]) -> None:
        self.source = source
        self.issues = list(issues)
        super().__init__(source, self.issues)

    def lines(self) -> list[str]:
        """The formatted issues, one string each."""
        return [i.format(self.source) for i in self.issues]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def issue(path: Sequence[str | int], message: str, line: int | None = None) -> Issue:
    """Build an :class:`Issue` for a check made after validation (unknown service, cycle, ...)."""
    return Issue(tuple(path), message, line)


def format_path(path: Sequence[Any]) -> str:
    """Format a path as ``services.cart.calls[1].to``; odd keys are quoted (``services["a.b"]``)."""
    if not path:
        return "(top level)"
    text = ""
    for segment in path:
        if isinstance(segment, int) and not isinstance(segment, bool):
            text += f"[{segment}]"
        elif isinstance(segment, str) and _PLAIN_KEY.match(segment):
            text += f".{segment}" if text else segment
        elif isinstance(segment, str):
            text += f"[{json.dumps(segment, ensure_ascii=False)}]"
        else:
            text += f"[{segment!r}]"
    return text


def from_validation_error(
    err: ValidationError,
    model: type[BaseModel],
    data: Any,
    source: str,
    lines: LineMap | None,
) -> ScenarioError:
    """Rewrite a pydantic ``ValidationError`` as a :class:`ScenarioError` about the input file.

    Parameters
    ----------
    err : pydantic.ValidationError
        Raised by ``model.model_validate(data)``.
    model : type of BaseModel
        The validated model; used to list valid field names and choices.
    data : Any
        The validated input (as loaded from YAML), used to drop path segments pydantic adds for
        unions and validators.
    source : str
        Shown before each issue, usually the file name.
    lines : LineMap or None
        Lines of the input; issues get no line without it.

    Returns
    -------
    ScenarioError
        One issue per distinct problem, in file order.
    """
    located = [_locate(e, model, data) for e in err.errors(include_url=False)]
    drafts = [_draft(x.error, x.path, model, data) for x in _drop_rejected_members(located)]
    issues = []
    for d in _merge(drafts):
        line = lines.line_for(d.path) if lines is not None else None
        issues.append(Issue(d.path, d.render(), line))
    issues = list(dict.fromkeys(issues))  # identical issues from several union members
    issues.sort(key=lambda i: (i.line is None, i.line or 0))
    return ScenarioError(source, issues)


@dataclass
class _Draft:
    """An issue before rendering: type and choice problems at one path are merged first."""

    path: FieldPath
    category: str  # "type" (expected X), "choice" (unknown value of a set), or "text"
    text: str = ""
    expected: list[str] = field(default_factory=list)
    got: Any = None
    label: str = "value"

    def render(self) -> str:
        if self.category == "type":
            return f"expected {' or '.join(dict.fromkeys(self.expected))}, got {_show(self.got)}"
        if self.category == "choice":
            choices = list(dict.fromkeys(self.expected))
            return (
                f"unknown {self.label} {_show(self.got)}{_suggest(self.got, choices)}; "
                f"expected one of: {_listing(choices)}"
            )
        return self.text


def _merge(drafts: list[_Draft]) -> list[_Draft]:
    """Merge type/choice drafts at the same path (the branches of a union) into one."""
    merged: dict[tuple, _Draft] = {}
    out: list[_Draft] = []
    for d in drafts:
        if d.category == "text":
            out.append(d)
            continue
        key = (d.path, d.category)
        if key in merged:
            merged[key].expected.extend(d.expected)
        else:
            merged[key] = d
            out.append(d)
    return out


def _draft(e: Mapping[str, Any], path: FieldPath, model: type[BaseModel], data: Any) -> _Draft:
    kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
    if kind == "missing":
        text = "required field missing"
        tags = (
            _union_tags(_type_at(model, path[:-1], data), "kind") if path[-1:] == ("kind",) else []
        )
        if tags:  # a plain union of models none of which got its `kind`
            text += f" (expected one of: {_listing(tags)})"
        return _Draft(path, "text", text)
    if kind == "extra_forbidden":
        return _Draft(path, "text", _unknown_field(path, model, data))
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return _tag_draft(kind, ctx, value, path, model, data)
    if kind in ("literal_error", "enum"):
        choices = _choices(_type_at(model, path, data)) or _QUOTED.findall(ctx.get("expected", ""))
        label = "kind" if path and path[-1] == "kind" else "value"
        return _Draft(path, "choice", expected=[str(c) for c in choices], got=value, label=label)
    if kind in _EXPECTED:
        return _Draft(path, "type", expected=[_EXPECTED[kind]], got=value)
    inner_error = ctx.get("error")
    inner = getattr(inner_error, "path", None)
    if kind == "value_error" and isinstance(inner, tuple):
        path = (*path, *inner)  # a key inside the validated block (see the module docstring)
        bare = getattr(inner_error, "bare", None)  # its message without that path, if it has one
        if bare is not None:
            return _Draft(path, "text", bare)
    return _Draft(path, "text", _message(kind, ctx, value, e["msg"]))


def _message(kind: str, ctx: Mapping[str, Any], value: Any, msg: str) -> str:
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _COMPARISONS:
        key, op = _COMPARISONS[kind]
        return f"must be {op} {ctx[key]}, got {_show(value)}"
    if kind == "multiple_of":
        return f"must be a multiple of {ctx['multiple_of']}, got {_show(value)}"
    if kind in ("too_short", "too_long"):
        bound = "at least" if kind == "too_short" else "at most"
        limit = ctx.get("min_length", ctx.get("max_length"))
        return f"must have {bound} {limit} item{'s' * (limit != 1)}, got {ctx.get('actual_length')}"
    if kind in ("string_too_short", "string_too_long"):
        bound = "at least" if kind == "string_too_short" else "at most"
        limit = ctx.get("min_length", ctx.get("max_length"))
        return f"must be {bound} {limit} character{'s' * (limit != 1)} long, got {_show(value)}"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}, got {_show(value)}"
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg


def _tag_draft(
    kind: str,
    ctx: Mapping[str, Any],
    value: Any,
    path: FieldPath,
    model: type[BaseModel],
    data: Any,
) -> _Draft:
    disc = ctx.get("discriminator", "")
    name = disc[1:-1] if _QUOTED.fullmatch(disc) else None
    tags = _QUOTED.findall(ctx.get("expected_tags", "")) or _union_tags(
        _type_at(model, path, data), name
    )
    if (
        name is None
        and kind == "union_tag_invalid"
        and isinstance(value, Mapping)
        and "kind" in value
        and str(value["kind"]) == str(ctx.get("tag"))
    ):
        name = "kind"  # a callable discriminator names no field, but this tag is the `kind`
    if name is None:  # a callable discriminator whose tag comes from elsewhere
        text = "could not tell which kind of value this is"
        return _Draft(path, "text", f"{text} (expected one of: {_listing(tags)})" if tags else text)
    if kind == "union_tag_not_found":
        missing = "required field missing"
        if not isinstance(value, dict):
            return _Draft(path, "type", expected=["a mapping"], got=value)
        text = f"{missing} (expected one of: {_listing(tags)})" if tags else missing
        return _Draft((*path, name), "text", text)
    got = value.get(name, ctx.get("tag")) if isinstance(value, dict) else ctx.get("tag")
    return _Draft((*path, name), "choice", expected=tags, got=got, label=name)


def _unknown_field(path: FieldPath, model: type[BaseModel], data: Any) -> str:
    key = path[-1] if path else "?"
    tp, value = _type_at(model, path[:-1], data), _value_at(data, path[:-1])
    owner = _resolve(tp, value)
    names = _field_names(owner) if _is_model(owner) else []
    # A typo can also be the key that would have chosen another member (`parallell` for a fan-out).
    members = [_resolve(m, None) for m in _union_members(tp) or []]
    siblings = [n for m in members if _is_model(m) for n in _field_names(m)]
    if key in siblings and names:
        # Spelt right, but a field of another member (a resilience4j setting under hystrix).
        return (f"unknown field {_show(key)} for this kind (another kind has it); expected "
                f"one of: {_listing(names)}")
    hint = _suggest(key, names) or _suggest(key, siblings)
    if hint or not names:
        return f"unknown field {_show(key)}{hint}"
    return f"unknown field {_show(key)}; expected one of: {_listing(names)}"


# --- paths -----------------------------------------------------------------------------------


class _Located(NamedTuple):
    error: dict[str, Any]
    path: FieldPath  # the error's loc without pydantic's extra segments
    members: frozenset[int]  # positions in the loc that name a union member


def _locate(error: dict[str, Any], model: type[BaseModel], data: Any) -> _Located:
    """Find the path in the file of a pydantic error.

    Pydantic's ``loc`` has extra segments: the member of a union it tried (the tag, ``lognormal``,
    or a class or type name), validator names, ``[key]``. The model says where a union is, so the
    segment after it is a member name even when the data has a key of that name; elsewhere (and
    below types we cannot follow) a segment that is not in the data is pydantic's.
    """
    loc = error["loc"]
    keep_last = error["type"] in ("missing", "extra_forbidden")
    path: list[str | int] = []
    members = set()
    tp, value = model, data
    for i, segment in enumerate(loc):
        union = _union_members(tp)
        if union is not None:
            members.add(i)
            tp = _member_named(union, segment)
            continue
        found, value = _step(value, segment)
        if found or (keep_last and i == len(loc) - 1):
            path.append(segment)
        tp = _child(_resolve(tp, None), segment)
    return _Located(error, tuple(path), frozenset(members))


def _step(value: Any, segment: Any) -> tuple[bool, Any]:
    """Follow one segment into the data: ``(found, child)``; the value itself if not found."""
    if isinstance(value, Mapping):
        try:
            if segment in value:
                return True, value[segment]
        except TypeError:
            return False, value
    elif (
        isinstance(value, list | tuple)
        and isinstance(segment, int)
        and not isinstance(segment, bool)
        and -len(value) <= segment < len(value)
    ):
        return True, value[segment]
    return False, value


def _value_at(data: Any, path: FieldPath) -> Any:
    for segment in path:
        _, data = _step(data, segment)
    return data


def _drop_rejected_members(located: list[_Located]) -> list[_Located]:
    """Forget the members of a plain union of models that were rejected for their ``kind``.

    Without a discriminator, pydantic reports every member's errors; the user only cares about the
    member whose ``kind`` they wrote. When all members reject (or miss) the kind, only the kind
    errors stay (they merge into one "unknown kind" or "required field missing" issue).
    """
    rejected: dict[tuple, set] = {}  # union loc -> members that rejected the kind
    for x in located:
        loc = tuple(x.error["loc"])
        if (
            x.error["type"] in ("literal_error", "missing")
            and loc[-1:] == ("kind",)
            and len(loc) - 2 in x.members
        ):
            rejected.setdefault(loc[:-2], set()).add(loc[-2])
    drop = set()
    for union_loc, names in rejected.items():
        n = len(union_loc)
        under = [
            (i, tuple(x.error["loc"]))
            for i, x in enumerate(located)
            if tuple(x.error["loc"])[:n] == union_loc and n in x.members
        ]
        all_rejected = all(loc[n] in names for _, loc in under)
        for i, loc in under:
            if loc[n] in names and not (all_rejected and loc[n + 1 :] == ("kind",)):
                drop.add(i)
    return [x for i, x in enumerate(located) if i not in drop]


# --- types -----------------------------------------------------------------------------------


def _type_at(model: type[BaseModel], path: FieldPath, data: Any) -> Any:
    """The annotation of the value at ``path``, following fields, items and union members."""
    tp: Any = model
    value = data
    for segment in path:
        tp = _child(_resolve(tp, value), segment)
        _, value = _step(value, segment)
        if tp is None:
            return None
    return tp


def _child(tp: Any, segment: Any) -> Any:
    if _is_model(tp):
        for name, info in tp.model_fields.items():
            if segment in (name, info.alias, info.validation_alias):
                # pydantic moves a field's outer metadata (a Discriminator) off the annotation
                meta = [m for m in info.metadata if isinstance(m, Discriminator)]
                return Annotated[(info.annotation, *meta)] if meta else info.annotation
        return None
    origin, args = get_origin(tp), get_args(tp)
    if origin in (list, set, frozenset, Sequence) and args:
        return args[0]
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0]
        return args[segment] if isinstance(segment, int) and 0 <= segment < len(args) else None
    if origin in (dict, Mapping) and len(args) == 2:
        return args[1]
    return None


def _union_members(tp: Any) -> list[Any] | None:
    """The members of a union of two or more non-null types (``Annotated`` kept), else None."""
    tp, _ = _unwrap(tp)
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    members = [m for m in get_args(tp) if m is not type(None)]
    if len(members) == 1:
        return _union_members(members[0])
    return members


def _unwrap(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """Strip ``Annotated``: the bare type and the metadata of every layer."""
    meta: tuple[Any, ...] = ()
    while get_origin(tp) is Annotated:
        tp, *more = get_args(tp)
        meta += tuple(more)
    return tp, meta


def _tag_of(tp: Any) -> str | None:
    """The ``Tag`` of a member of a union chosen by a callable ``Discriminator``."""
    return next((m.tag for m in _unwrap(tp)[1] if isinstance(m, Tag)), None)


def _resolve(tp: Any, value: Any) -> Any:
    """Strip ``Annotated`` and ``Optional``; pick the union member that ``value`` is meant to be.

    The member is the one a callable ``Discriminator`` picks for ``value``, else the one whose
    ``kind`` choices include ``value['kind']``, else the only model member.
    """
    tp, meta = _unwrap(tp)
    if get_origin(tp) in (Union, types.UnionType):
        members = [m for m in get_args(tp) if m is not type(None)]
        if len(members) == 1:
            return _resolve(members[0], value)
        tag = _discriminate(meta, value)
        for m in members:
            if tag is not None and _tag_of(m) == tag:
                return _resolve(m, value)
        bare = [_unwrap(m)[0] for m in members]
        if isinstance(value, dict) and "kind" in value:
            for m in bare:
                if _is_model(m) and value["kind"] in _choices(_child(m, "kind")):
                    return m
        models = [m for m in bare if _is_model(m)]
        if len(models) == 1 and isinstance(value, dict):
            return models[0]
    return tp


def _discriminate(meta: Sequence[Any], value: Any) -> str | None:
    """The tag a callable ``Discriminator`` in ``meta`` gives a mapping ``value``, if any."""
    if not isinstance(value, Mapping):
        return None
    for m in meta:
        if isinstance(m, Discriminator) and callable(m.discriminator):
            try:
                return m.discriminator(value)
            except Exception:  # the discriminator is user code: no tag rather than a crash
                return None
    return None


def _member_named(members: list[Any], segment: Any) -> Any:
    """The union member pydantic names ``segment`` in a loc: by tag or by class name."""
    for member in members:
        m = _resolve(member, None)
        if _is_model(m) and (
            segment == _tag_of(member)
            or segment == m.__name__
            or any(segment in _choices(info.annotation) for info in m.model_fields.values())
        ):
            return m
    return None


def _choices(tp: Any) -> list[Any]:
    """The allowed values of a ``Literal``, an ``Enum`` or a union of them."""
    tp = _resolve(tp, None)
    if get_origin(tp) is Literal:
        return [a.value if isinstance(a, enum.Enum) else a for a in get_args(tp)]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [m.value for m in tp]
    if get_origin(tp) in (Union, types.UnionType):
        return [c for m in get_args(tp) for c in _choices(m)]
    return []


def _union_tags(tp: Any, name: str | None) -> list[str]:
    tp = _resolve(tp, None)
    members = get_args(tp) if get_origin(tp) in (Union, types.UnionType) else (tp,)
    models = [_resolve(m, None) for m in members]
    return [str(c) for m in models if _is_model(m) and name for c in _choices(_child(m, name))]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _field_names(model: type[BaseModel]) -> list[str]:
    """Field names as written in files: the (camelCase) alias when there is one."""
    names = []
    for name, info in model.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        names.append(alias or name)
    return names


# --- words -----------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A short description of an input value, in YAML's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple | set | frozenset):
        return "a list"
    return f"a {type(value).__name__}"


def _suggest(word: Any, choices: Sequence[Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, ignoring case, ``_`` and ``-``."""
    if not isinstance(word, str):
        return ""

    def norm(s: str) -> str:
        return s.lower().replace("_", "").replace("-", "")

    by_norm = {norm(c): c for c in choices if isinstance(c, str)}
    match = difflib.get_close_matches(norm(word), list(by_norm), n=1, cutoff=0.6)
    return f" (did you mean {by_norm[match[0]]!r}?)" if match else ""


def _listing(items: Sequence[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    return shown + (", ..." if len(items) > _MAX_LISTED else "")


def unknown_name(name: str, known: set[str], what: str) -> str:
    """The message for a name that is not one of ``known`` (a ``what``), with a suggestion."""
    msg = f"unknown {what} {name!r}"
    close = difflib.get_close_matches(name, sorted(known), n=1)
    if close:
        return f"{msg} (did you mean {close[0]!r}?)"
    if known:
        return f"{msg} (expected one of: {', '.join(sorted(known)[:12])})"
    return msg
