"""Copy a finished `autodistil run` folder's report artefacts into bench/results/YYYY-MM-DD_<name>/
(the day its report stage finished, UTC), with the seconds of every stage read from its stage
markers, so that a report on the main job has its raw output committed.

    python bench/collect_run.py --run runs/main --name main_run --note "empty cache, quiet machine"

Copies report.md, results.json, the plots, latency/measure.json (as measure.json) and
search/{verified.json, pareto_front.csv, pareto.png}; writes stage_seconds.json: per stage its
seconds and when its marker was written, the sum, and the note (say how the run was made: empty
cache or not, resumed or not, what else ran on the machine)."""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

FILES = {
    "report.md": "report.md",
    "results.json": "results.json",
    "score_vs_latency.png": "score_vs_latency.png",
    "score_vs_flops.png": "score_vs_flops.png",
    "latency/measure.json": "measure.json",
    "search/verified.json": "search/verified.json",
    "search/pareto_front.csv": "search/pareto_front.csv",
    "search/pareto.png": "search/pareto.png",
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/main")
    ap.add_argument("--name", required=True, help="topic of the folder under bench/results/ (after its date)")
    ap.add_argument("--note", required=True, help="how the run was made")
    ap.add_argument("--out", default=None, help="default bench/results/YYYY-MM-DD_<name>")
    a = ap.parse_args(argv)
    from autodistil.io import atomic_write_json
    from autodistil.pipeline import STAGES

    run = Path(a.run)
    if not (run / "results.json").is_file():
        raise SystemExit(f"{run}/results.json is missing: give the folder of a finished `autodistil run`")
    stages = {}
    for s in STAGES:
        p = run / "stages" / f"{s}.json"
        if not p.is_file():
            raise SystemExit(f"{p} is missing: the run is not finished")
        stages[s] = {
            "seconds": round(json.loads(p.read_text())["seconds"], 1),
            "marker_written": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(p.stat().st_mtime)),
        }
    out = Path(a.out) if a.out else RESULTS / f"{stages[STAGES[-1]]['marker_written'][:10]}_{a.name}"
    (out / "search").mkdir(parents=True, exist_ok=True)
    missing = []
    for src, dst in FILES.items():
        if (run / src).is_file():
            shutil.copy2(run / src, out / dst)
        else:
            missing.append(src)
    total = sum(v["seconds"] for v in stages.values())
    doc = {
        "stage_seconds": {s: v["seconds"] for s, v in stages.items()},
        "stages": stages,
        "total_s": round(total, 1),
        "total_min": round(total / 60, 1),
        "note": a.note,
        "missing_files": missing,
    }
    atomic_write_json(out / "stage_seconds.json", doc)
    print(json.dumps({k: doc[k] for k in ("stage_seconds", "total_s", "total_min")}), "->", out)
    return doc


if __name__ == "__main__":
    main()
