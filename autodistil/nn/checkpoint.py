"""The shared supernet artefact: ``supernet.safetensors`` + ``supernet.json``.

supernet.json: format version, model config (maximum shape, head dim, depth mapping), the
search spaces it was trained for, the teacher's name and hash, free-form training facts.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..io import FORMAT_VERSION, atomic_save, atomic_write_json, read_json
from ..space import SearchSpace
from .superbert import SuperBert, SuperBertConfig

WEIGHTS, META = "supernet.safetensors", "supernet.json"


def save_supernet(
    folder, model: SuperBert, spaces, teacher: dict | None = None, extra: dict | None = None
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_save(folder / WEIGHTS, lambda p: save_file(sd, p))
    meta = {
        "format": "autodistil-supernet",
        "format_version": FORMAT_VERSION,
        "model": model.config.to_dict(),
        "spaces": [s.to_dict() for s in spaces],
        "teacher": teacher or {},
        "extra": extra or {},
    }
    atomic_write_json(folder / META, meta)  # written last: its presence means the weights are complete
    return folder


def read_meta(folder) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"supernet folder not found: {folder}")
    meta = read_json(folder / META, "supernet metadata")
    if meta.get("format") != "autodistil-supernet":
        raise ValueError(
            f"{folder / META} is not an autodistil supernet description (format={meta.get('format')!r})"
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{folder / META} has format_version {meta.get('format_version')}; "
            f"this autodistil reads version {FORMAT_VERSION}"
        )
    return meta


def load_supernet(folder, teacher_sha256: str | None = None, spaces=None, backend: str | None = None):
    """(SuperBert, spaces, meta). Refuses a checkpoint of another teacher or space when given."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        cfg = SuperBertConfig(**meta["model"])
        ck_spaces = [SearchSpace.from_dict(d) for d in meta["spaces"]]
    except (TypeError, KeyError) as e:
        raise ValueError(f"{folder / META} is malformed: {e}") from None
    t = meta.get("teacher", {})
    if teacher_sha256 and t.get("sha256") and t["sha256"] != teacher_sha256:
        raise ValueError(
            f"supernet {folder} was distilled from teacher '{t.get('name')}' "
            f"(sha256 {t['sha256'][:12]}), not the teacher given (sha256 {teacher_sha256[:12]})"
        )
    if spaces is not None:
        want = [s.to_dict() for s in spaces]
        if [s.to_dict() for s in ck_spaces] != want:
            raise ValueError(
                f"supernet {folder} was trained for spaces {[s.name for s in ck_spaces]} "
                f"{[s.to_dict() for s in ck_spaces]}, not {want}"
            )
    wpath = folder / WEIGHTS
    if not wpath.is_file():
        raise FileNotFoundError(f"supernet weights not found: {wpath}")
    try:
        sd = load_file(str(wpath))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"supernet weights {wpath} are corrupt ({e})") from None
    model = SuperBert(cfg, backend=backend)
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    bad = [k for k in own if k in sd and own[k].shape != sd[k].shape]
    if missing or unexpected or bad:
        raise ValueError(
            f"supernet weights {wpath} do not match {META}: missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {[(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in bad[:3]]}"
        )
    with torch.no_grad():
        model.load_state_dict(sd)
    return model, ck_spaces, meta
