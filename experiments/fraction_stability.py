"""How much does a student's latency as a fraction of the teacher's move from one session to the next?

    python experiments/fraction_stability.py --run runs/main --sessions 6 \\
        --out experiments/results/DATE-fraction-stability

A budget given as a fraction of the teacher is judged on the student's latency over the teacher's, both
timed in the same rounds. Verification chooses a student in some sessions and the report judges it in
another: what the choice can promise depends on how much that fraction moves between sessions. This
times a finished run's shipped students and the teacher with `autodistil measure` (the table's protocol,
each session a fresh process), alternating the table's rounds (12, what verification uses) and the
report's (20), and records per session and student the fraction, the teacher and the anchor.
Raw: OUT/session<i>.json (each measurement), OUT/summary.json."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished `autodistil run` folder")
    ap.add_argument("--sessions", type=int, default=6)
    ap.add_argument("--rounds", type=int, nargs="+", default=[12, 20], help="rounds per session, alternated")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from autodistil.io import atomic_write_json
    from autodistil.latency.run_measure import measure_in_subprocess

    run = Path(a.run)
    res = json.loads((run / "results.json").read_text())
    folders = {m["name"]: m["folder"] for m in res["models"] if m["kind"] == "searched"}
    from autodistil.teacher import resolve_teacher_path

    teacher = resolve_teacher_path(res["config"]["teacher"])
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(a.sessions):
        rounds = a.rounds[i % len(a.rounds)]
        load = list(os.getloadavg())
        m = measure_in_subprocess(
            run / "latency_table.json",
            {**folders, "teacher": teacher},
            out / f"session{i + 1}.json",
            rounds=rounds,
        )
        t = m["models"]["teacher"]["ms"]
        row = {
            "session": i + 1,
            "rounds": rounds,
            "when": m["when"],
            "loadavg_before": load,
            "teacher_ms": t,
            "anchor_ms": m["anchor_ms"],
            "noise_sd_pct": m["noise"]["sd_pct"],
            "fractions": {k: m["models"][k]["ms"] / t for k in folders},
        }
        rows.append(row)
        print(
            f"session {i + 1} ({rounds} rounds, {m['when']}, load {load[0]:.2f}): teacher {t:.2f} ms, "
            f"anchor {m['anchor_ms']:.3f} ms; "
            + ", ".join(f"{k} {v:.4f}" for k, v in row["fractions"].items()),
            flush=True,
        )
    summ = {}
    for k in folders:
        xs = [r["fractions"][k] for r in rows]
        by = {n: [r["fractions"][k] for r in rows if r["rounds"] == n] for n in a.rounds}
        summ[k] = {
            "mean": statistics.fmean(xs),
            "cv_pct": 100 * statistics.stdev(xs) / statistics.fmean(xs),
            "min": min(xs),
            "max": max(xs),
            "mean_by_rounds": {str(n): statistics.fmean(v) for n, v in by.items() if v},
        }
    doc = {"run": str(run), "sessions": rows, "students": summ, "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_json(out / "summary.json", doc)
    for k, s in summ.items():
        print(
            f"{k}: fraction {s['mean']:.4f} (cv {s['cv_pct']:.1f}%, {s['min']:.4f}-{s['max']:.4f}); "
            f"by rounds " + ", ".join(f"{n}: {v:.4f}" for n, v in s["mean_by_rounds"].items())
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
