"""What using the budget buys: the student chosen after one verification session (the table's predictions as
they are) against the one the self-correcting search chose, fine-tuned at the same seeds (issue 29).

    python experiments/budget_use_accuracy.py --run runs/main --seeds 0 1 2 \\
        --out experiments/results/DATE-budget-use-accuracy

Takes a finished `autodistil run` folder. Per budget, the choice after session 1 (``verified.json``: the
budget's first round) and the final choice are fine-tuned with the run's recipe and its fine-tuned teacher at
each seed (the run's own seed reuses the run's fine-tuning of its final choice), and both are timed with the
teacher in one fresh-process session, so that the share of the budget each uses is judged in the same rounds.
Work folders: RUN/budget_use/. Raw: OUT/budget_use.json, OUT/budget_use.csv, OUT/budget_use.md."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

OWNED = {
    "train": ("teacher", "out_dir", "resume", "seed"),
    "profile": ("stat",),
    "finetune": ("model", "data", "out_dir", "teacher", "seed"),
}
FLAT = ("search", "data")


def load_run(run_dir: Path):
    """The Run of a finished run folder (config from run_config.json), its stages up to `finetune` loaded from
    their markers: nothing is recomputed."""
    from autodistil.config import build_dataclass
    from autodistil.pipeline import STAGES, Run, RunConfig

    d = json.loads((run_dir / "run_config.json").read_text())
    for sec, keys in OWNED.items():
        d[sec] = {k: v for k, v in d.get(sec, {}).items() if k not in keys}
    for sec in FLAT:
        d.update(d.pop(sec, {}))
    cfg = build_dataclass(RunConfig, d)
    run = Run(cfg, log=print)
    for stage in STAGES[: STAGES.index("finetune") + 1]:
        m = run.done(stage)
        if m is None:
            raise RuntimeError(f"stage '{stage}' of {run_dir} is missing or stale: finish the run first")
        run.state[stage] = m["output"]
    return run


def picks(run) -> list:
    """Per budget: the choice after verification session 1 and the final one (names, rows, measurements)."""
    srch = run.state["search"]
    ver = json.loads((Path(srch["search_dir"]) / "verified.json").read_text())
    out = []
    for b in ver["budgets"]:
        if not b["met"] or not b.get("rounds"):
            continue
        first = (b["rounds"][0].get("pick") or {}).get("name")
        row1 = next((f for f in b["finalists"] if f["name"] == first and f["round"] == 1), None)
        if row1 is None:  # nothing held after session 1: no "pick as it was" to compare with
            print(f"budget {b['budget_ms']:g} ms: no choice held after session 1; left out", flush=True)
            continue
        out.append(
            {
                "budget_ms": b["budget_ms"],
                "fraction": b["fraction"],
                "sessions": len(b["rounds"]),
                "session1": row1,
                "final": b["chosen"],
            }
        )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="a finished `autodistil run` folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from autodistil.export import export_subnet
    from autodistil.finetune.teacher import finetuned_teacher
    from autodistil.finetune.train import finetune
    from autodistil.io import atomic_write_json, atomic_write_text, write_rows_csv
    from autodistil.latency.run_measure import measure_in_subprocess
    from autodistil.pipeline import _finetune_cached
    from autodistil.space import SubnetConfig

    run_dir = Path(a.run).absolute()
    run = load_run(run_dir)
    work = run_dir / "budget_use"
    nets = {s[1][0].name: s[0] for s in run._supernets()}
    _, tok, info, _ = run._teacher()
    ft = run.cfg.finetune
    seq, _ = run.seq_len()
    t_dir, t_res = finetuned_teacher(
        info.path,
        run.cfg.data,
        lr=ft.teacher_lr,
        epochs=ft.teacher_epochs,
        batch_size=ft.batch_size,
        max_seq_len=seq,
        seed=run.cfg.seed,
        max_train_examples=ft.max_train_examples,
        max_steps=ft.max_steps,
        max_eval_examples=ft.max_eval_examples,
        cache_root=run.cfg.cache_dir,
        log=print,
    )
    students = run.state["export"]["students"]
    budgets = picks(run)
    folders = {}
    for b in budgets:
        for role in ("session1", "final"):
            r = b[role]
            name = r["name"]
            if name in folders:
                continue
            if name in students:
                folders[name] = students[name]["folder"]
            else:
                cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
                folders[name] = str(export_subnet(nets[r["space"]], cfg, work / "students" / name, tok, seq))
    t0 = time.time()
    load = list(os.getloadavg())
    meas = measure_in_subprocess(
        run.state["profile"]["table"], {**folders, "teacher": info.path}, work / "measure.json"
    )
    t_ms = meas["models"]["teacher"]["ms"]
    scores = {}
    for s in a.seeds:
        for name, folder in folders.items():
            own = s == run.cfg.seed and name in students  # the run's fine-tuning of its own choice
            out = run.out / "finetuned" / name if own else work / f"seed{s}" / name
            fc = run.student_finetune_config(folder, out, s, t_dir, seq)
            r = _finetune_cached(fc, finetune)
            scores.setdefault(name, {})[s] = {"score": r["score"], "metrics": r["metrics"]}
            print(f"seed {s} {name}: {r['headline']} {r['score']:.4f}", flush=True)
    rows = []
    for b in budgets:
        ent = {}
        for role in ("session1", "final"):
            name = b[role]["name"]
            m = meas["models"][name]["ms"]
            here = b["fraction"] * t_ms if b["fraction"] else b["budget_ms"]
            sc = [scores[name][s]["score"] for s in a.seeds]
            ent[role] = {
                "name": name,
                "predicted_ms": b[role]["predicted_ms"],
                "verified_ms": b[role]["measured_ms"],
                # the final choice's share is its mean over its sessions (what the search reports)
                "verified_share": b[role].get("share") or b[role]["measured_ms"] / b[role]["budget_ms"],
                "measured_ms": m,
                "share_here": m / here,
                "holds_here": m <= here,
                "scores": sc,
                "mean": statistics.fmean(sc),
                "std": statistics.stdev(sc) if len(sc) > 1 else 0.0,
            }
        diffs = [x - y for x, y in zip(ent["final"]["scores"], ent["session1"]["scores"])]
        rows.append(
            {
                "budget_ms": b["budget_ms"],
                "fraction": b["fraction"],
                "sessions": b["sessions"],
                **ent,
                "paired_diffs": diffs,
                "mean_diff": statistics.fmean(diffs),
                "same_model": ent["final"]["name"] == ent["session1"]["name"],
            }
        )
    res = {
        "run": str(run_dir),
        "seeds": a.seeds,
        "teacher_ms_here": t_ms,
        "teacher_score": t_res.get("score"),
        "measure": {
            "when": meas["when"],
            "noise": meas["noise"],
            "drift": meas["drift"],
            "threads": meas["threads"],
            "loadavg_before": load,
        },
        "wall_s": round(time.time() - t0, 1),
        "budgets": rows,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "budget_use.json", res)
    write_rows_csv(
        out / "budget_use.csv",
        [
            {
                "fraction": r["fraction"],
                "budget_ms": r["budget_ms"],
                "role": role,
                "name": r[role]["name"],
                "share_here": r[role]["share_here"],
                "verified_share": r[role]["verified_share"],
                "scores": " ".join(f"{x:.4f}" for x in r[role]["scores"]),
                "mean": r[role]["mean"],
                "std": r[role]["std"],
            }
            for r in rows
            for role in ("session1", "final")
        ],
    )
    metric = "accuracy"
    L = [
        f"| budget | choice | student | share of budget (same session as the teacher) | {metric} per seed "
        f"{a.seeds} | mean +- std | final - session 1 (paired) |",
        "|---" * 7 + "|",
    ]
    for r in rows:
        lab = f"{r['fraction']:g}x" if r["fraction"] else f"{r['budget_ms']:g} ms"
        for role, what in (("session1", "after session 1"), ("final", f"final ({r['sessions']} sessions)")):
            e = r[role]
            diff = (
                f"{r['mean_diff']:+.4f} ({', '.join(f'{d:+.4f}' for d in r['paired_diffs'])})"
                if role == "final"
                else ""
            )
            L.append(
                f"| {lab} | {what} | {e['name']} | {100 * e['share_here']:.1f}% | "
                f"{', '.join(f'{x:.4f}' for x in e['scores'])} | {e['mean']:.4f} +- {e['std']:.4f} | "
                f"{diff} |"
            )
    atomic_write_text(out / "budget_use.md", "\n".join(L) + "\n")
    print("\n".join(L))
    return 0


if __name__ == "__main__":
    sys.exit(main())
