"""Frozen-dataclass configs <-> CLI flags and YAML/TOML files (one config object per job)."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional


def _base_type(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp


def _hints(cls):
    return typing.get_type_hints(cls)


def add_dataclass_args(parser, cls, prefix: str = "", skip=()) -> None:
    """One --flag per field (nested dataclasses get '<field>-' prefixes); defaults are None so
    that only flags given on the command line override a config file."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + (prefix + f.name).replace("_", "-")
        if dataclasses.is_dataclass(tp):
            add_dataclass_args(parser, tp, prefix + f.name + "_")
        elif tp is bool:
            parser.add_argument(flag, dest=prefix + f.name, action=argparse_bool(), default=None)
        elif tp is tuple or typing.get_origin(tp) is tuple:
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            parser.add_argument(flag, dest=prefix + f.name, nargs="+", default=None, type=args[0] if args else str)
        else:
            parser.add_argument(flag, dest=prefix + f.name, type=tp if tp in (int, float) else str, default=None)


def argparse_bool():
    import argparse
    return argparse.BooleanOptionalAction


def build_dataclass(cls, file_values: Optional[dict] = None, args: Any = None, prefix: str = ""):
    """Defaults <- config file values <- command-line flags; unknown file keys are refused."""
    file_values = dict(file_values or {})
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(file_values) - names)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for {cls.__name__}; allowed: {sorted(names)}")
    kw = {}
    for f in dataclasses.fields(cls):
        tp = _base_type(hints[f.name])
        if dataclasses.is_dataclass(tp):
            sub = file_values.get(f.name) or {}
            if not isinstance(sub, dict):
                raise ValueError(f"option '{f.name}' must be a mapping of {sorted(x.name for x in dataclasses.fields(tp))}")
            kw[f.name] = build_dataclass(tp, sub, args, prefix + f.name + "_")
            continue
        v = file_values.get(f.name, dataclasses.MISSING)
        cli = getattr(args, prefix + f.name, None) if args is not None else None
        if cli is not None:
            v = cli
        if v is dataclasses.MISSING:
            continue
        if (tp is tuple or typing.get_origin(tp) is tuple) and v is not None:
            v = tuple(v) if isinstance(v, (list, tuple)) else (v,)
        kw[f.name] = v
    return cls(**kw)
