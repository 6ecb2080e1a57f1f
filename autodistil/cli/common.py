"""What several commands share: the one-line error parser, subnet flags, config-backed commands."""

from __future__ import annotations

import argparse

from ..space import PAPER_SPACES, SubnetConfig


class CLIError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse prints usage too; we do not)
        raise CLIError(f"{self.prog}: {message}")


def add_subnet_args(p, required=True):
    g = p.add_argument_group("subnet")
    g.add_argument("--layers", type=int, required=required, help="encoder layers")
    g.add_argument("--hidden", type=int, required=required, help="hidden size")
    g.add_argument("--ffn-ratio", type=float, required=required, help="MLP ratio: FFN width / hidden size")
    g.add_argument(
        "--heads", type=int, required=required, help="attention heads (each of the teacher's head dim)"
    )


def subnet_from_args(a) -> SubnetConfig:
    return SubnetConfig(a.layers, a.hidden, a.ffn_ratio, a.heads)


def add_space_source_args(p):
    from ..teacher import DEFAULT_TEACHER

    p.add_argument(
        "--teacher",
        default=DEFAULT_TEACHER,
        help="the teacher whose shape the subspaces are derived from (a Hugging Face folder, a hub id, "
        f"or the embedded default; default: {DEFAULT_TEACHER})",
    )
    p.add_argument("--paper", action="store_true", help="the paper's BERT-base subspaces instead")
    p.add_argument("--space", action="append", help="tiny | small | base (repeatable; default all)")


def spaces_for(a) -> dict:
    """Paper spaces (--paper) or spaces derived from a teacher (default teacher)."""
    from ..space import derive_spaces

    names = a.space or ["tiny", "small", "base"]
    if getattr(a, "paper", False):
        bad = [n for n in names if n not in PAPER_SPACES]
        if bad:
            raise ValueError(f"unknown subspace {bad}: allowed are {sorted(PAPER_SPACES)}")
        return {n: PAPER_SPACES[n] for n in names}
    from transformers import AutoConfig
    from ..teacher import resolve_teacher_path, shape_of

    cfg = AutoConfig.from_pretrained(resolve_teacher_path(a.teacher))
    return derive_spaces(shape_of(cfg), names)


def config_command(sub, name, help_text, cls, fn, description=None):
    """A sub-command whose options are the fields of a frozen config dataclass (+ --config FILE)."""
    from ..config import add_dataclass_args

    p = sub.add_parser(name, help=help_text, description=description or help_text)
    p.add_argument("--config", help=f"a YAML/TOML/JSON file of {cls.__name__} fields (flags override it)")
    add_dataclass_args(p, cls)
    p.set_defaults(fn=fn, config_class=cls)
    return p


def config_from(a):
    from ..config import build_dataclass
    from ..io import load_config_file

    return build_dataclass(a.config_class, load_config_file(a.config) if a.config else {}, a)


def add_data_args(p):
    """The task flags (--task, --train-file, --dev-file, --text-columns, --label-column, ...)."""
    from ..config import add_dataclass_args
    from ..data.tasks import DataConfig

    add_dataclass_args(p, DataConfig)


def data_from(a):
    from ..config import build_dataclass
    from ..data.tasks import DataConfig

    return build_dataclass(DataConfig, {}, a)
