"""Frozen-dataclass configs <-> CLI flags and YAML/TOML/JSON files (one config object per job).

- A field's documentation is the comment on its line, continued by the comment-only lines right
  below it (a blank line ends it); it becomes the flag's ``--help`` (``field_docs``).
- A field whose type is a dataclass is a *section*: its fields get flags ``--<section>-<field>`` and
  a mapping ``<section>: {...}`` in files. Field metadata ``{"flatten": True}`` puts a section's
  fields at its parent's level instead (flags ``--<field>``, file keys beside the parent's own).
- Metadata ``{"owned": (...)}`` on a section names the fields its parent sets itself (a run sets its
  supernet folder, say): they get no flag, and a file that sets them is refused with a message.
- A section's defaults are its parent's default instance of it, not its class defaults, so one
  dataclass serves several jobs with different defaults.
- Precedence: defaults <- config file <- command-line flags. Unknown file keys are refused.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import textwrap
import tokenize
import typing
from typing import Any, Optional

NONE_WORDS = ("none", "null")


# --- field documentation ----------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _class_comments(klass) -> dict:
    """{field: doc} from one class body's source: the comment on a field's line(s), continued by the
    comment-only lines right below it (a blank line or code ends it; formatters may re-indent them)."""
    try:
        src = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):
        return {}
    comments, code_lines = {}, set()  # line -> comment text; lines holding code
    for t in tokenize.generate_tokens(io.StringIO(src).readline):
        if t.type == tokenize.COMMENT:
            comments[t.start[0]] = t.string.lstrip("#").strip()
        elif t.type not in (
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            code_lines.update(range(t.start[0], t.end[0] + 1))
    cls_node = next(n for n in ast.parse(src).body if isinstance(n, ast.ClassDef))
    docs = {}
    for node in cls_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        own = [comments[ln] for ln in range(node.lineno, node.end_lineno + 1) if ln in comments]
        ln = node.end_lineno + 1
        while own and ln in comments and ln not in code_lines:
            own.append(comments[ln])
            ln += 1
        if own:
            docs[node.target.id] = " ".join(own)
    return docs


def field_docs(cls) -> dict:
    """{field name: one-line documentation} of a dataclass, from its source comments (base classes
    first, so a subclass's comment wins)."""
    docs = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_comments(klass))
    return docs


# --- types ----------------------------------------------------------------------------
def _args(tp):
    return [a for a in typing.get_args(tp) if a is not type(None)]


def _optional(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and type(
        None
    ) in typing.get_args(tp)


def _base_type(tp):
    """The type a value of `tp` is parsed as: Optional[X] -> X; int | str -> (int, str); tuple[X, ...]."""
    if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = _args(tp)
        if len(args) == 1:
            return _base_type(args[0])
        return tuple(args)
    return tp


def _is_tuple(tp) -> bool:
    return tp is tuple or typing.get_origin(tp) is tuple


def _parse_scalar(kind, optional: bool, flag: str):
    """An argparse `type` for one value: int/float/str, 'auto'-style words for int | str fields, and
    'none' for Optional fields."""

    def parse(text: str):
        if optional and text.lower() in NONE_WORDS:
            return _NoneValue
        kinds = kind if isinstance(kind, tuple) else (kind,)
        for k in kinds:
            if k is str:
                continue
            try:
                return k(text)
            except ValueError:
                pass
        if str in kinds:
            return text
        raise ValueError(
            f"{flag}: {text!r} is not a {' or '.join(k.__name__ for k in kinds)}"
            + (" (or 'none')" if optional else "")
        )

    parse.__name__ = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    return parse


class _NoneValue:
    """What a flag gives for an explicit 'none' (argparse's own None means 'not given')."""


def _hints(cls):
    return typing.get_type_hints(cls)


def _default_of(cls, base, name):
    if base is not None:
        return getattr(base, name)
    f = cls.__dataclass_fields__[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(v) -> str:
    if isinstance(v, tuple):
        return " ".join(map(str, v)) or "empty"
    return str(v)


# --- flags ----------------------------------------------------------------------------
def add_dataclass_args(parser, cls, prefix: str = "", skip=(), base=None) -> None:
    """One --flag per field, with the field's documentation and default as its help; sections get
    '<section>-' prefixes (or none, flattened). Parsed values default to None so that only flags
    given on the command line override a config file."""
    import argparse

    hints, docs = _hints(cls), field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        bt = _base_type(tp)
        default = _default_of(cls, base, f.name)
        if dataclasses.is_dataclass(bt):
            flat = f.metadata.get("flatten")
            group = parser
            if not flat and hasattr(parser, "add_argument_group"):
                title = f"{(prefix + f.name).replace('_', '-')} section ({bt.__name__})"
                group = parser.add_argument_group(
                    title, (bt.__doc__ or "").strip().splitlines()[0] if bt.__doc__ else None
                )
            add_dataclass_args(
                group, bt, prefix + ("" if flat else f.name + "_"), f.metadata.get("owned", ()), default
            )
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        doc = docs.get(f.name) or f.metadata.get("help")
        if not doc:
            raise TypeError(f"{cls.__name__}.{f.name} has no documentation comment (its --help)")
        helptext = (doc if "default" in doc else f"{doc} (default: {_shown(default)})").replace("%", "%%")
        dest = prefix + f.name
        if bt is bool:
            parser.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=helptext
            )
        elif _is_tuple(bt):
            el = [a for a in typing.get_args(bt) if a is not Ellipsis]
            parser.add_argument(
                flag,
                dest=dest,
                nargs="+",
                default=None,
                help=helptext,
                type=_parse_scalar(el[0] if el else str, _optional(tp), flag),
            )
        else:
            parser.add_argument(
                flag,
                dest=dest,
                default=None,
                help=helptext,
                type=_parse_scalar(
                    bt if bt in (int, float) or isinstance(bt, tuple) else str, _optional(tp), flag
                ),
            )


# --- building ---------------------------------------------------------------------------
def build_dataclass(
    cls,
    file_values: Optional[dict] = None,
    args: Any = None,
    prefix: str = "",
    base=None,
    where: str = "",
    owned=(),
):
    """Defaults (`base`, else the class's) <- config file values <- command-line flags. Unknown file
    keys, and keys a parent owns, are refused."""
    file_values = dict(file_values or {})
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    flat = [n for n, f in fields.items() if f.metadata.get("flatten")]
    allowed = set(fields) - set(owned) - set(flat) | {
        x.name
        for n in flat
        for x in dataclasses.fields(_base_type(hints[n]))
        if x.name not in fields[n].metadata.get("owned", ())
    }
    given_owned = sorted(set(file_values) & set(owned))
    if given_owned:
        raise ValueError(
            f"option(s) {[where + k for k in given_owned]} are set by the job itself, not by a config"
        )
    unknown = sorted(set(file_values) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {[where + k for k in unknown]} for {cls.__name__}; allowed: {sorted(allowed)}"
        )
    kw = {}
    for name, f in fields.items():
        tp = hints[name]
        bt = _base_type(tp)
        default = _default_of(cls, base, name)
        if dataclasses.is_dataclass(bt):
            sub_owned = f.metadata.get("owned", ())
            if f.metadata.get("flatten"):
                names = {x.name for x in dataclasses.fields(bt)}
                sub = {k: file_values.pop(k) for k in list(file_values) if k in names}
                kw[name] = build_dataclass(bt, sub, args, prefix, default, where, sub_owned)
            else:
                sub = file_values.get(name) or {}
                if not isinstance(sub, dict):
                    raise ValueError(
                        f"option '{where}{name}' must be a mapping of "
                        f"{sorted(x.name for x in dataclasses.fields(bt))}"
                    )
                kw[name] = build_dataclass(
                    bt, sub, args, prefix + name + "_", default, f"{where}{name}.", sub_owned
                )
            continue
        v = file_values.get(name, dataclasses.MISSING)
        cli = getattr(args, prefix + name, None) if args is not None and name not in owned else None
        if cli is not None:
            v = cli
        if v is dataclasses.MISSING:
            v = default
        if v is _NoneValue:
            v = None
        if _is_tuple(bt) and v is not None:
            v = tuple(None if x is _NoneValue else x for x in v) if isinstance(v, (list, tuple)) else (v,)
        kw[name] = v
    return cls(**kw)


def flat_values(obj, prefix: str = "") -> dict:
    """{dotted name: value} of a config and its sections (a section's own fields under 'section.')."""
    out = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(flat_values(v, prefix + f.name + "."))
        else:
            out[prefix + f.name] = v
    return out


def to_plain(obj):
    """A config (with its sections) as plain JSON-able data: dicts, lists, scalars."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    return obj
