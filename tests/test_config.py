"""One config tree: sections, flattened sections, fields a job owns, documentation as --help, and
the same vocabulary from flags and files."""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import pytest

from autodistil.config import add_dataclass_args, build_dataclass, field_docs, flat_values
from autodistil.pipeline import RunConfig


@dataclass(frozen=True)
class _Inner:
    a: int = 1  # the a knob
    b: Optional[int] = None  # the b knob, spread over
    # two comment lines
    c: tuple[float, ...] = ()  # some floats


@dataclass(frozen=True)
class _Outer:
    name: str = "x"  # a name
    inner: _Inner = field(default_factory=lambda: _Inner(a=5), metadata={"owned": ("b",)})
    flat: _Inner = field(default_factory=_Inner, metadata={"flatten": True})


def _parse(cls, argv):
    p = argparse.ArgumentParser()
    add_dataclass_args(p, cls)
    return p.parse_args(argv)


@dataclass(frozen=True)
class _Formatted:
    x: int = 1  # x's doc
    # continued at the block's indentation (as a formatter leaves it)

    # a section heading, after a blank line: nobody's doc
    y: int = 2  # y's doc


def test_field_docs_read_the_comments():
    d = field_docs(_Inner)
    assert d == {"a": "the a knob", "b": "the b knob, spread over two comment lines", "c": "some floats"}
    assert field_docs(_Formatted) == {
        "x": "x's doc continued at the block's indentation (as a formatter leaves it)",
        "y": "y's doc",
    }


def test_sections_flatten_owned_and_defaults_of_the_parent():
    a = _parse(_Outer, ["--inner-a", "7", "--a", "3", "--b", "none", "--c", "1", "2.5"])
    cfg = build_dataclass(_Outer, {}, a)
    assert cfg.inner == _Inner(a=7) and cfg.flat == _Inner(a=3, b=None, c=(1.0, 2.5))
    # the section's defaults are the parent's instance (a=5), not the class's (a=1)
    assert build_dataclass(_Outer, {}, _parse(_Outer, [])).inner.a == 5
    # files: a section is a mapping; a flattened one sits at the top
    cfg = build_dataclass(_Outer, {"inner": {"a": 9}, "a": 4, "c": [0.5]})
    assert cfg.inner.a == 9 and cfg.flat.a == 4 and cfg.flat.c == (0.5,)
    # an owned field has no flag and is refused in a file
    with pytest.raises(SystemExit):
        _parse(_Outer, ["--inner-b", "3"])
    with pytest.raises(ValueError, match=r"\['inner.b'\] are set by the job itself"):
        build_dataclass(_Outer, {"inner": {"b": 3}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['inner.zz'\]"):
        build_dataclass(_Outer, {"inner": {"zz": 3}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['zz'\]"):
        build_dataclass(_Outer, {"zz": 1})


def test_flags_override_the_file():
    a = _parse(_Outer, ["--inner-a", "2"])
    assert build_dataclass(_Outer, {"inner": {"a": 9}, "name": "y"}, a) == _Outer(name="y", inner=_Inner(a=2))


def test_every_flag_of_every_command_has_help():
    """Every option of every `autodistil` command says what it does (config-backed commands take the
    field's own comment); a field without a comment fails add_dataclass_args outright."""
    from autodistil.cli import build_parser

    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sp in sub.choices.items():
        for act in sp._actions:
            if isinstance(act, argparse._HelpAction):
                continue
            if not (act.help and len(act.help) > 8):
                missing.append(f"{name} {act.option_strings or act.dest}")
    assert not missing, missing
    assert all(c.help for c in sub._choices_actions)


def test_a_field_without_a_comment_is_refused():
    @dataclass(frozen=True)
    class Bad:
        x: int = 1

    with pytest.raises(TypeError, match="Bad.x has no documentation comment"):
        add_dataclass_args(argparse.ArgumentParser(), Bad)


def test_run_config_is_built_from_the_component_configs():
    """RunConfig holds TrainConfig, ProfileSettings, the search settings and FinetuneConfig as sections,
    not copies: every training knob is reachable from `run` (flags and files)."""
    from autodistil.distill.train import TrainConfig
    from autodistil.finetune.train import FinetuneConfig
    from autodistil.latency.profile import ProfileSettings

    cfg = RunConfig()
    assert isinstance(cfg.train, TrainConfig) and isinstance(cfg.profile, ProfileSettings)
    assert isinstance(cfg.finetune, FinetuneConfig)
    p = argparse.ArgumentParser()
    add_dataclass_args(p, RunConfig)
    flags = {o for a in p._actions for o in a.option_strings}
    owned = {"teacher", "out_dir", "resume", "seed"}
    for f in dataclasses.fields(TrainConfig):
        if f.name in owned:
            continue
        if dataclasses.is_dataclass(f.type) or f.name == "loss":
            assert "--train-loss-relation" in flags and "--train-loss-hidden" in flags
            continue
        assert f"--train-{f.name.replace('_', '-')}" in flags, f.name
    for knob in ("precision", "clip-norm", "dropout", "weight-decay", "depth-mapping"):
        assert f"--train-{knob}" in flags
    a = p.parse_args(
        [
            "--train-precision",
            "fp32",
            "--train-clip-norm",
            "0.5",
            "--train-loss-hidden",
            "1",
            "--profile-seq-len",
            "64",
            "--profile-dtype",
            "bf16",
            "--finetune-teacher-epochs",
            "0",
            "--latency-ms",
            "5",
            "10",
            "--train-file",
            "a.csv",
            "--dev-file",
            "b.csv",
        ]
    )
    cfg = build_dataclass(RunConfig, {}, a)
    assert (cfg.train.precision, cfg.train.clip_norm, cfg.train.loss.hidden) == ("fp32", 0.5, 1.0)
    assert (cfg.profile.seq_len, cfg.train.seq_len, cfg.profile.dtype) == (64, 128, "bf16")
    assert cfg.finetune.teacher_epochs == 0 and cfg.search.latency_ms == (5.0, 10.0)
    assert cfg.data.train_file == "a.csv" and cfg.finetune.data.train_file is None  # the run owns that one
    assert flat_values(cfg)["train.loss.hidden"] == 1.0


def test_stage_hashes_follow_their_sections(tmp_path):
    """Each stage's section is its dependency list: a fine-tuning knob reruns finetune (and after), not
    train; a training knob reruns everything."""
    import autodistil.pipeline as pl

    base = build_dataclass(RunConfig, {"out_dir": str(tmp_path)})
    h = lambda cfg: {s: pl.Run(cfg)._hash(s) for s in pl.STAGES}  # noqa: E731
    ref = h(base)
    ft = h(dataclasses.replace(base, finetune=dataclasses.replace(base.finetune, lr=1e-3)))
    i = pl.STAGES.index("finetune")
    assert all(ft[s] == ref[s] for s in pl.STAGES[:i]) and all(ft[s] != ref[s] for s in pl.STAGES[i:])
    tr = h(dataclasses.replace(base, train=dataclasses.replace(base.train, clip_norm=0.5)))
    assert all(tr[s] != ref[s] for s in pl.STAGES)
    pr = h(dataclasses.replace(base, profile=dataclasses.replace(base.profile, seq_len=64)))
    j = pl.STAGES.index("profile")
    assert pr["train"] == ref["train"] and all(pr[s] != ref[s] for s in pl.STAGES[j:])
