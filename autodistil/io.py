"""Atomic writes and the supernet checkpoint format (supernet.safetensors + supernet.json)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

FORMAT_VERSION = 1


def _tmp_beside(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o644)  # shared artefacts: readable like any ordinary file
    os.close(fd)
    return Path(tmp)


def atomic_write_text(path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_rows_csv(path, rows: list) -> Path:
    """A list of dicts as CSV (columns in first-seen order), written atomically."""
    import csv
    import io as _io

    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def atomic_write_json(path, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_save(path, writer) -> Path:
    """writer(tmp_path) writes the file; it appears at `path` only when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path)
    try:
        writer(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_torch_save(obj, path) -> Path:
    return atomic_save(path, lambda p: torch.save(obj, p))


def atomic_dir(final: Path, build) -> Path:
    """build(tmp_dir) fills a temporary folder that then replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    os.chmod(tmp, 0o755)
    try:
        build(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def read_json(path, what: str = "file") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e})") from None


def file_sha256(paths, chunk=1 << 20) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while b := f.read(chunk):
                h.update(b)
    return h.hexdigest()


def safe_torch_load(path):
    """Checkpoints are data: weights_only loading, with a clear error for corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"checkpoint {path} is corrupt or not a torch checkpoint ({type(e).__name__}: {e})"
        ) from None


def load_config_file(path) -> dict:
    """A job config from YAML (.yaml/.yml), TOML (.toml) or JSON, with safe loaders."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ValueError(f"config file {path}: use .yaml, .yml, .toml or .json")
    except Exception as e:  # json/yaml/toml decode errors, and the unsupported-suffix ValueError
        raise ValueError(f"config file {path} does not parse: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of options")
    return data
