"""What the experiments share: where their raw results go, and a finished `autodistil run` folder
read back (its recorded config, its stages' outputs, the fine-tuned teacher its students distilled
from, and the fine-tuning of a chosen set of its models with the run's recipe).

A run folder records its RunConfig in results.json ("config"). The current RunConfig is built from
sections (train, profile, search, finetune, data); run folders made before that record a flat one
(`train_steps`, `student_lr`, `finetune_seq_len`, ...). ``run_config_from_dict`` reads both."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# a flat RunConfig's fields -> where they live in the sectioned one ("section.field"; a bare name is
# a top-level or flattened field; seq_len set both the supernets' and the timed sequence length)
FLAT_FIELDS = {
    "corpus": "train.corpus",
    "spaces": "train.spaces",
    "paper_spaces": "train.paper_spaces",
    "train_steps": "train.steps",
    "train_batch": "train.batch_size",
    "seq_len": ("train.seq_len", "profile.seq_len"),
    "train_lr": "train.lr",
    "init": "train.init",
    "rewire": "train.rewire",
    "n_random": "train.n_random",
    "max_train_blocks": "train.max_train_blocks",
    "eval_blocks": "train.eval_blocks",
    "deepspeed": "train.deepspeed",
    "backend": "train.backend",
    "runtime": "profile.runtime",
    "device": "profile.device",
    "batch": "profile.batch",
    "threads": "profile.threads",
    "profile_rounds": "profile.rounds",
    "profile_round_s": "profile.round_s",
    "profile_grid": "profile.grid",
    "calibrate": "profile.calibrate",
    "search_method": "method",
    "teacher_lr": "finetune.teacher_lr",
    "teacher_epochs": "finetune.teacher_epochs",
    "student_lr": "finetune.lr",
    "student_epochs": "finetune.epochs",
    "finetune_max_steps": "finetune.max_steps",
    "finetune_batch": "finetune.batch_size",
    "finetune_seq_len": "finetune.max_seq_len",
    "max_train_examples": "finetune.max_train_examples",
    "max_eval_examples": "finetune.max_eval_examples",
    "kd_alpha": "finetune.kd_alpha",
}
SECTIONS = ("train", "profile", "finetune")


def dated(topic: str, day: Optional[str] = None) -> Path:
    """experiments/results/YYYY-MM-DD_<topic>: where a new result goes (today, or `day`)."""
    return RESULTS / f"{day or time.strftime('%Y-%m-%d')}_{topic}"


# --- a run's recorded config -------------------------------------------------------------------
def is_flat(d: dict) -> bool:
    """A RunConfig recorded before it had sections."""
    return not any(isinstance(d.get(s), dict) for s in SECTIONS)


def _sectioned(flat: dict) -> dict:
    out: dict = {}
    for k, v in flat.items():
        where = FLAT_FIELDS.get(k, k)
        for w in where if isinstance(where, tuple) else (where,):
            sec, _, name = w.rpartition(".")
            (out.setdefault(sec, {}) if sec else out)[name] = v
    return out


def run_config_from_dict(d: dict):
    """A RunConfig from a run folder's recorded config: the current sectioned form (RunConfig.to_dict(),
    sections nested, owned fields included) or an older flat one. Unknown keys are refused."""
    from autodistil.config import build_dataclass
    from autodistil.pipeline import RunConfig

    if is_flat(d):
        d = _sectioned(d)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    values = {}
    for k, v in d.items():
        f = fields.get(k)
        if f is not None and isinstance(v, dict) and f.metadata.get("flatten"):
            values.update(v)  # search, data: their fields sit at the top level in files
        elif f is not None and isinstance(v, dict):
            owned = f.metadata.get("owned", ())  # set by the run itself (teacher, out_dir, seed, ...)
            values[k] = {kk: vv for kk, vv in v.items() if kk not in owned}
        else:
            values[k] = v
    return build_dataclass(RunConfig, values)


# --- a finished run -----------------------------------------------------------------------------
def recorded_config(run_dir) -> dict:
    """results.json's "config" of a finished run folder (FileNotFoundError when it is not one)."""
    from autodistil.io import read_json

    p = Path(run_dir) / "results.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: give the folder of a finished `autodistil run`")
    return read_json(p, "run results")["config"]


def stage_output(run, stage: str) -> Optional[dict]:
    """A stage's recorded output (its marker), None when the stage did not run. A run recorded with
    the current sectioned config is checked: a marker its settings no longer match is refused. A run
    recorded flat predates the current stage hashes: its markers are taken as they are."""
    from autodistil.io import read_json

    marker = run.out / "stages" / f"{stage}.json"
    if not marker.is_file():
        return None
    if getattr(run, "flat_config", False):
        return read_json(marker, "stage marker")["output"]
    d = run.done(stage)
    if d is None:
        raise RuntimeError(
            f"stage '{stage}' of {run.out} is stale: its settings differ from the run's recorded config"
        )
    return d["output"]


def load_run(run_dir, upto: str = "measure", log=print):
    """The Run of a finished `autodistil run` folder, its stages up to `upto` loaded from their markers
    (nothing recomputed; see stage_output). The folder may have been moved: its own path is used."""
    from autodistil.pipeline import STAGES, Run

    run_dir = Path(run_dir)
    d = recorded_config(run_dir)
    cfg = dataclasses.replace(run_config_from_dict(d), out_dir=str(run_dir))
    run = Run(cfg, log=log)
    run.flat_config = is_flat(d)
    for stage in STAGES[: STAGES.index(upto) + 1]:
        out = stage_output(run, stage)
        if out is None:
            raise RuntimeError(f"stage '{stage}' of {run_dir} is missing: finish the run first")
        run.state[stage] = out
    return run


def run_seq_len(run) -> int:
    """The fine-tuning sequence length the run used: its finetune stage's record, else its recipe's
    (resolved on the train split when 'auto')."""
    ft = run.state.get("finetune") or stage_output(run, "finetune") or {}
    if (ft.get("_seq_len") or {}).get("max_seq_len"):
        return int(ft["_seq_len"]["max_seq_len"])
    return run.seq_len()[0]


def run_teacher(run, log=print) -> tuple[str, dict]:
    """(folder, result) of the fine-tuned teacher the run's students distilled from: the folder its
    finetune stage recorded when it is still there, else the fine-tuned-teacher cache's with the
    run's teacher recipe (trained there once when missing)."""
    from autodistil.finetune.teacher import finetuned_teacher

    ft_out = run.state.get("finetune") or stage_output(run, "finetune") or {}
    t = ft_out.get("teacher")
    if t and t.get("folder") and Path(t["folder"]).is_dir():
        return t["folder"], t
    log("[run] the run's recorded teacher folder is gone: using the fine-tuned-teacher cache")
    c, ft = run.cfg, run.cfg.finetune
    _, _, info, _ = run._teacher()
    folder, r = finetuned_teacher(
        info.path,
        c.data,
        lr=ft.teacher_lr,
        epochs=ft.teacher_epochs,
        batch_size=ft.batch_size,
        max_seq_len=run_seq_len(run),
        seed=c.seed,
        max_train_examples=ft.max_train_examples,
        max_steps=ft.max_steps,
        max_eval_examples=ft.max_eval_examples,
        cache_root=c.cache_dir,
        log=log,
    )
    return str(folder), {**r, "folder": str(folder)}


def finetune_models(
    run, folders: dict, seed: int, out_root, teacher_dir, max_seq_len: int, log=print, **overrides
) -> dict:
    """{name: fine-tuning result} of the given exported models ({name: folder}), each with the run's
    recipe (`overrides` replace recipe fields: lr, epochs, kd_alpha, ...) and `seed`, distilling
    from `teacher_dir`, into out_root/<name>; a finished one with the same settings is reused."""
    from autodistil.finetune.train import finetune
    from autodistil.pipeline import _finetune_cached

    out = {}
    for name, folder in folders.items():
        fc = run.student_finetune_config(
            folder, Path(out_root) / name, seed, teacher_dir, max_seq_len, **overrides
        )
        r = _finetune_cached(fc, finetune)
        log(
            f"[finetune] {name} seed {seed}: {r['headline']} {r['score']:.4f} ({r['steps']} steps, "
            f"{r['train_seconds']} s)"
        )
        out[name] = r
    return out
