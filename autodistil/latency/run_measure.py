"""End-to-end latency measured in a fresh process.

A process that has just trained or searched carries state that changes latency: thread pools
(tokenizers, data loaders, OpenMP workers of another size), a fragmented allocator, a different
torch thread setting. Every latency that a report or a budget decision rests on is therefore
measured by `autodistil measure` in a new interpreter, with the table's protocol and anchor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ..io import read_json


def _run_cli(cmd: list, what: str, timeout_s: float | None):
    """Run an `autodistil` sub-command in a fresh process; a failure raises with its last output."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s)
    if r.returncode != 0:
        raise RuntimeError(
            f"{what} in a fresh process failed (exit {r.returncode}): "
            f"{(r.stderr or r.stdout).strip()[-1500:]}"
        )
    return r


def measure_in_subprocess(
    table_path, folders: dict, out_json, rounds: int | None = None, timeout_s: float | None = None
) -> dict:
    """Time {name: HF folder} with `python -m autodistil.cli measure` and return its JSON."""
    out_json = Path(out_json)
    cmd = [
        sys.executable,
        "-m",
        "autodistil.cli",
        "measure",
        "--table",
        str(table_path),
        "--out",
        str(out_json),
    ]
    for k, v in folders.items():
        cmd += ["--model", f"{k}={v}"]
    if rounds:
        cmd += ["--rounds", str(rounds)]
    _run_cli(cmd, "latency measurement", timeout_s)
    return read_json(out_json, "latency measurement")


def profile_in_subprocess(
    supernets: list,
    out_table,
    settings,
    grid=None,
    calibrate: int = 12,
    log=print,
    timeout_s: float | None = None,
    teacher=None,
) -> Path:
    """Build a latency table with `python -m autodistil.cli profile` in a fresh process; every
    ProfileSettings field travels (one --settings JSON), none is left to the CLI's defaults.
    grid None: the device's default grid (latency.profile.default_grid). `teacher`: a folder timed
    end to end in the same session (the table's meta["teacher"])."""
    cmd = [
        sys.executable,
        "-m",
        "autodistil.cli",
        "profile",
        "--out",
        str(out_table),
        "--settings",
        json.dumps(settings.to_dict()),
        "--calibrate",
        str(calibrate),
    ]
    if teacher is not None:
        cmd += ["--teacher", str(teacher)]
    else:
        cmd += ["--no-time-teacher"]
    if grid is not None:
        cmd += ["--grid", *map(str, grid)]
    for p in supernets:
        cmd += ["--supernet", str(p)]
    r = _run_cli(cmd, "profiling", timeout_s)
    for line in r.stdout.strip().splitlines():
        log(f"[profile] {line}")
    return Path(out_table)
