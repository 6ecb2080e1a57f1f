"""Students vs baselines at equal measured latency, over several fine-tuning seeds.

Takes a finished `autodistil run` folder (its exported students, baselines and latency
measurement are reused as they are) and fine-tunes every compared model again with each seed,
with the run's recipe (the teacher is the run's fine-tuned teacher). Per budget and role
((c) searched student, (a) teacher's first k layers, (b) FLOPs-search student): mean and std of
the headline metric and F1 over seeds, share of the teacher's score, and the paired difference
searched - baseline. A difference counts as a win (or a loss) only when |mean difference| is
larger than the seed noise, the larger of the two roles' seed std (autodistil.stats.seed_noise_verdict).

    python -m experiments.students_vs_baselines --run runs/main --seeds 0 1 2 [--out DIR]

The run folder may come from the current version (its config recorded in sections) or an older one
(a flat config): experiments.common.load_run reads both. The run's own seed takes the run's
fine-tuning results as they are; other seeds fine-tune only the compared models into
<run>/finetuned_seed<s>/ (each model resumable). Output (default
experiments/results/<today>_students_vs_baselines/): students_vs_baselines.{json,csv,md}.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from autodistil.machine import cpu_model
from autodistil.report import ROLES  # role -> label; the searched student first
from autodistil.stats import seed_noise_verdict
from experiments.common import dated, finetune_models, load_run, run_seq_len, run_teacher, stage_output


def summarize(per_seed: dict, comparison: list, teacher_score: float, baselines_off: bool = False) -> dict:
    """per_seed: {seed: {model name: finetune result}}; comparison: results.json's 'comparison';
    baselines_off: the run had baselines=false (a missing baseline is then not 'none fits')."""
    seeds = sorted(per_seed)
    out = []
    for cmp in comparison:
        names = {r["role"]: r["name"] for r in cmp["rows"]}
        entry = {
            "budget": cmp["budget"],
            "budget_ms": cmp["budget_ms"],
            "fraction": cmp["fraction"],
            "roles": {},
            "why_none": {},
        }
        for role, r in ((r["role"], r) for r in cmp["rows"]):
            name = names[role]
            if name is None:
                entry["roles"][role] = None
                entry["why_none"][role] = r.get("why") or "none fits"
                if role != "searched" and baselines_off:
                    entry["why_none"][role] = "off (baselines=false)"
                continue
            scores = [per_seed[s][name]["score"] for s in seeds]
            f1 = [per_seed[s][name]["metrics"].get("f1") for s in seeds]
            entry["roles"][role] = {
                "name": name,
                "measured_ms": r["measured_ms"],
                "vs_teacher": r["vs_teacher"],
                "scores": scores,
                "mean": statistics.fmean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "f1_mean": statistics.fmean(f1) if None not in f1 else None,
                "share_of_teacher": statistics.fmean(scores) / teacher_score,
            }
        base = entry["roles"].get("searched")
        entry["vs"] = {}
        for role in ROLES:
            if role == "searched":
                continue
            other = entry["roles"].get(role)
            if base is None or other is None:
                continue
            v = seed_noise_verdict(base["scores"], other["scores"])
            if base["name"] == other["name"]:
                v["verdict"] = "same model"
            entry["vs"][role] = v
        out.append(entry)
    return {"seeds": seeds, "teacher_score": teacher_score, "budgets": out}


def render(summary: dict, metric: str) -> str:
    L = [
        f"| budget (x teacher) | role | model | measured x teacher | "
        f"{metric} mean +- std (n={len(summary['seeds'])}) | share of teacher | searched - this |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in summary["budgets"]:
        for role in ROLES:
            if role not in b["roles"]:
                continue
            r = b["roles"].get(role)
            head = f"| {b['budget_ms']:.2f} ms ({b['fraction']:.2f}) | {role} | "
            if r is None:
                L.append(head + f"{b.get('why_none', {}).get(role) or 'none fits'} | - | - | - | - |")
                continue
            v = b["vs"].get(role)
            vs = "-" if v is None else f"{v['mean_diff']:+.4f} ({v['verdict']})"
            L.append(
                head + f"{r['name']} | {r['vs_teacher']:.2f} | {r['mean']:.4f} +- {r['std']:.4f} | "
                f"{100 * r['share_of_teacher']:.1f}% | {vs} |"
            )
    return "\n".join(L)


def compared_folders(run, comparison: list) -> dict:
    """{name: exported folder} of the models the comparison names (students and baselines)."""
    ex = run.state["export"]
    folders = {
        n: m["folder"]
        for g in ("students", "flops_students", "first_layers")
        for n, m in ex.get(g, {}).items()
    }
    names = {r["name"] for c in comparison for r in c["rows"] if r["name"]}
    missing = sorted(names - set(folders))
    if missing:
        raise RuntimeError(f"{run.out}: the comparison names {missing}, which its export stage did not write")
    return {n: folders[n] for n in sorted(names)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/main", help="a finished `autodistil run` folder")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default=None, help="default experiments/results/<today>_students_vs_baselines")
    ap.add_argument(
        "--roles",
        nargs="+",
        default=list(ROLES),
        choices=ROLES,
        help="roles to compare (default all; the searched student is always included)",
    )
    a = ap.parse_args(argv)
    if len(a.seeds) < 2:
        ap.error("--seeds needs at least 2 seeds to measure seed noise")
    from autodistil.io import atomic_write_json, atomic_write_text, read_json, write_rows_csv

    run_dir = Path(a.run)
    run = load_run(run_dir)
    res = read_json(run_dir / "results.json", "run results")
    t0 = time.time()
    roles = set(a.roles) | {"searched"}
    res["comparison"] = [
        {**c, "rows": [r for r in c["rows"] if r["role"] in roles]} for c in res["comparison"]
    ]
    folders = compared_folders(run, res["comparison"])
    seq = run_seq_len(run)
    t_dir, t_res = run_teacher(run)
    per_seed, seconds = {}, {}
    for s in a.seeds:
        t = time.time()
        done = stage_output(run, "finetune") if s == run.cfg.seed else None
        if done is not None:  # the run's own seed: its fine-tuning stage's results, as the report shows them
            per_seed[s] = done
        else:
            tuned = finetune_models(run, folders, s, run_dir / f"finetuned_seed{s}", t_dir, seq)
            per_seed[s] = {"teacher": t_res, **tuned}
        seconds[s] = round(time.time() - t, 1)
    teacher = per_seed[a.seeds[0]]["teacher"]
    summary = summarize(
        per_seed, res["comparison"], teacher["score"], baselines_off=not run.cfg.search.baselines
    )
    ft = run.cfg.finetune
    summary.update(
        {
            "run": str(run_dir),
            "cpu": cpu_model(),
            "seconds_per_seed": seconds,
            "recipe": {
                "lr": ft.lr,
                "epochs": ft.epochs,
                "kd_alpha": ft.kd_alpha,
                "batch_size": ft.batch_size,
                "max_seq_len": seq,
                "task": run.cfg.data.name,
            },
            "teacher": {"folder": teacher["folder"], "score": teacher["score"]},
            "wall_s": round(time.time() - t0, 1),
        }
    )
    out = Path(a.out) if a.out else dated("students_vs_baselines")
    atomic_write_json(out / "students_vs_baselines.json", summary)
    rows = []
    for b in summary["budgets"]:
        for role, r in b["roles"].items():
            if r is not None:
                rows.append(
                    {
                        "budget_ms": b["budget_ms"],
                        "fraction": b["fraction"],
                        "role": role,
                        "name": r["name"],
                        "vs_teacher": r["vs_teacher"],
                        "mean": r["mean"],
                        "std": r["std"],
                        "scores": " ".join(f"{x:.4f}" for x in r["scores"]),
                        "share_of_teacher": r["share_of_teacher"],
                        "verdict": (b["vs"].get(role) or {}).get("verdict", ""),
                    }
                )
    write_rows_csv(out / "students_vs_baselines.csv", rows)
    table = render(summary, teacher["headline"])
    atomic_write_text(out / "students_vs_baselines.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
