"""The CPU latency validation: does the latency table predict exported students (issue 14 targets)?

    python bench/latency_validate.py [--out DIR] [--n 36] [--threads 0]

Runs, each in a fresh process, `autodistil profile` (the default MiniLM-derived tiny/small/base
spaces, default settings) and `autodistil latency-validate --n 36` on that table, and records the
time, os.getloadavg() before and after each step, the profile's wall time, and both commands'
outputs. Raw files: OUT/table.json, OUT/latency_validation.{json,csv,png}, OUT/run.json; OUT
defaults to bench/results/<today>_latency_cpu_<N>threads (N the threads used: all cores of this
process for --threads 0, the default). The noise a report quotes is the `noise` entry of
latency_validation.json: the split-half noise of the same statistic the validation compares
(median of all runs of the rounds, anchor-normalised)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def step(cmd: list) -> dict:
    rec = {"cmd": cmd, "start": time.strftime("%Y-%m-%dT%H:%M:%S"), "loadavg_before": list(os.getloadavg())}
    t = time.time()
    r = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )
    rec.update(
        {
            "seconds": round(time.time() - t, 1),
            "loadavg_after": list(os.getloadavg()),
            "rc": r.returncode,
            "stdout": r.stdout,
            "stderr_tail": r.stderr[-3000:],
        }
    )
    print(r.stdout, flush=True)
    if r.returncode:
        print(r.stderr[-3000:], file=sys.stderr)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="default bench/results/<today>_latency_cpu_<N>threads")
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip-profile", action="store_true", help="validate the table already in OUT")
    a = ap.parse_args(argv)
    n = a.threads or len(os.sched_getaffinity(0))
    label = "1thread" if n == 1 else f"{n}threads"
    out = Path(a.out) if a.out else RESULTS / f"{time.strftime('%Y-%m-%d')}_latency_cpu_{label}"
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "autodistil.cli"]
    steps = []
    if not a.skip_profile:
        steps.append(step(cli + ["profile", "--threads", str(a.threads), "--out", str(out / "table.json")]))
        if steps[-1]["rc"]:
            return 1
    steps.append(
        step(
            cli + ["latency-validate", "--table", str(out / "table.json"), "--n", str(a.n), "--out", str(out)]
        )
    )
    (out / "run.json").write_text(json.dumps({"steps": steps, "cpu_count": os.cpu_count()}, indent=2))
    return steps[-1]["rc"]


if __name__ == "__main__":
    sys.exit(main())
