"""The teacher students distil from on a task: used as it is when it already is a classifier for the
task (its head's label count and names match), else fine-tuned once per (teacher weights, data,
recipe) and cached on disk, so every student and baseline of every run distils from the same
converged teacher.

Cache: ``<root>/finetuned/<name>-<task>-<key16>/`` with root = ``cache_root``, else
``$AUTODISTIL_CACHE``, else ``~/.cache/autodistil``. The folder is written atomically by
``finetune`` (a half-written one never appears); it is reused when its finetune_results.json
names the same teacher weights and the same recipe."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, replace
from pathlib import Path
from typing import Optional

from ..data.tasks import DataConfig, data_identity
from . import train as _train

CACHE_ENV = "AUTODISTIL_CACHE"
_NOT_RECIPE = ("model", "out_dir")  # where the teacher lives and where it goes: not part of the recipe


def cache_dir(root=None) -> Path:
    """cache_root argument, else $AUTODISTIL_CACHE, else ~/.cache/autodistil."""
    return Path(root or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "autodistil").expanduser()


def recipe_of(cfg: "_train.FinetuneConfig") -> dict:
    """The fields of a fine-tuning config that decide its result (all but model and out_dir),
    JSON-normalised so that it compares equal to what finetune_results.json holds."""
    return json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in _NOT_RECIPE}))


def _folder_name(path: str) -> str:
    """A readable name from the resolved folder, so one teacher named two ways shares one cache entry
    (packaged weights sit in .../<package>/model: the package names it)."""
    p = Path(path).resolve()
    name = p.parent.name if p.name in ("model", "") else p.name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "teacher"


def finetuned_teacher_key(teacher_sha256: str, task: str, recipe: dict) -> str:
    blob = json.dumps({"teacher_sha256": teacher_sha256, "task": task, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def as_is_result(
    path: str, data: DataConfig, max_seq_len: int, max_eval_examples: Optional[int] = None, log=print
) -> Optional[dict]:
    """The dev result of a teacher folder that is already a classifier for this task (its head's label
    count and names match), used as it is; None when it is not one."""
    from ..data.tasks import load_data

    spec, _ = load_data(data)
    if _train.head_mismatch(path, spec) is not None:
        return None
    r = _train.evaluate_folder(path, data, max_eval_examples, max_seq_len)
    log(
        f"[teacher] {path} is already fine-tuned on {spec.name} ({spec.num_labels} labels): used as it is, "
        f"{r['headline']} {r['score']:.4f} on dev; nothing trained"
    )
    return {**r, "as_is": True, "cached": False, "steps": 0, "seconds": 0.0, "train_seconds": 0.0}


def finetuned_teacher(
    teacher: str,
    data,
    *,
    lr: float,
    epochs: float,
    batch_size: int,
    max_seq_len: int,
    seed: int,
    max_train_examples: Optional[int] = None,
    max_steps: Optional[int] = None,
    max_eval_examples: Optional[int] = None,
    group_by_length: bool = True,
    cache_root=None,
    log=print,
    progress: bool = True,
) -> tuple[Path, dict]:
    """(folder, result): `teacher` (a name autodistil.teacher resolves, or a HF folder) ready to distil
    from on `data` (a DataConfig or a built-in task name). A folder that is already a classifier for
    the task is used as it is (its dev score measured, nothing trained); otherwise it is fine-tuned
    with the given recipe once and then reused from the cache. The result is finetune()'s (dev
    metrics, seconds, ...) plus teacher_sha256, "cached" (True when reused) and "as_is"."""
    from ..teacher import resolve_teacher_path, teacher_hash

    data = data if isinstance(data, DataConfig) else DataConfig(task=data)
    path = resolve_teacher_path(teacher)
    if not Path(path).is_dir():
        raise ValueError(
            f"teacher '{teacher}' resolves to '{path}', not a local folder: fine-tuning caches "
            f"need local weights (give a Hugging Face folder or the embedded default teacher)"
        )
    sha = teacher_hash(path)
    as_is = as_is_result(path, data, max_seq_len, max_eval_examples, log)
    if as_is is not None:
        return Path(path), {**as_is, "teacher_sha256": sha}
    if epochs == 0 and not max_steps:
        raise ValueError(
            f"teacher_epochs 0 (no training) needs a teacher already fine-tuned on {data.describe()} "
            f"(a *ForSequenceClassification folder with its labels); {path} is not one"
        )
    name = _folder_name(path)
    probe = _train.FinetuneConfig(
        model=path,
        data=data,
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        seed=seed,
        max_train_examples=max_train_examples,
        max_steps=max_steps,
        max_eval_examples=max_eval_examples,
        group_by_length=group_by_length,
    )
    recipe = recipe_of(probe)
    key = finetuned_teacher_key(sha, data_identity(data), recipe)
    folder = cache_dir(cache_root) / "finetuned" / f"{name}-{_slug(data.name)}-{key[:16]}"
    hit = _train.reusable_result(folder, probe, ignore=_NOT_RECIPE, teacher_sha256=sha)
    if hit is not None:
        log(
            f"[teacher] cached: {folder} ({hit['headline']} {hit['score']:.4f}, trained in "
            f"{hit.get('seconds', '?')} s)"
        )
        return folder, {**{k: v for k, v in hit.items() if k != "log"}, "cached": True, "as_is": False}
    log(
        f"[teacher] fine-tuning {teacher} on {data.describe()} (lr {lr}, {epochs} epoch(s), "
        f"batch {batch_size}, seq {max_seq_len}) -> {folder}"
    )
    cfg = replace(probe, out_dir=str(folder))
    r = _train.finetune(cfg, progress=progress, extra={"teacher_sha256": sha, "teacher_path": path}, log=log)
    log(f"[teacher] done: {r['headline']} {r['score']:.4f} in {r['seconds']} s")
    return folder, {**{k: v for k, v in r.items() if k != "log"}, "cached": False, "as_is": False}


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "task"
