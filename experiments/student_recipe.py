"""Which fine-tuning recipe (lr, epochs, logits-KD weight) serves the main job's students best.

    python -m experiments.student_recipe --run runs/main \
        --students small-L4-H176-R4-A7 tiny-L2-H112-R3.5-A10 \
        --recipes 1e-4:1:0.5 3e-4:1:0.5 1e-3:1:0.5 3e-4:1:1.0 3e-4:2:0.5 [--out DIR]

Each recipe is lr:epochs:kd_alpha. Every exported student named (a folder under <run>/students/ or
<run>/baselines/) is fine-tuned with each recipe from the same exported weights, with the run's
other settings (task, batch, sequence length, seed) and the run's fine-tuned teacher (the folder
its finetune stage recorded, else the fine-tuned-teacher cache: nothing is trained again when it
is there). The run folder may come from the current version or an older one (a flat recorded
config): experiments.common.load_run reads both. Rows are kept as they finish (OUT/student_recipe.json
and .csv, default OUT experiments/results/<today>_student_recipe: dev metric, F1, steps, train
seconds, the share of the teacher's score) and a finished row is not run again, so the script
resumes when given the same --out. The fine-tuned students go to a temporary folder and are not kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

from autodistil.io import write_rows_csv
from autodistil.machine import device_info
from experiments.common import dated, load_run, run_seq_len, run_teacher


def parse_recipe(s: str) -> dict:
    parts = s.split(":")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"recipe {s!r}: expected lr:epochs:kd_alpha, e.g. 3e-4:1:0.5")
    try:
        lr, ep, a = float(parts[0]), float(parts[1]), float(parts[2])
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"recipe {s!r}: {e}") from None
    if not all(map(math.isfinite, (lr, ep, a))) or lr <= 0 or ep <= 0 or not 0 <= a <= 1:
        raise argparse.ArgumentTypeError(
            f"recipe {s!r}: lr and epochs must be finite and > 0, kd_alpha within [0, 1]"
        )
    return {"lr": lr, "epochs": ep, "kd_alpha": a}


def student_folder(run_dir: Path, name: str) -> Path:
    for sub in ("students", "baselines"):
        p = run_dir / sub / name
        if (p / "config.json").is_file():
            return p
    have = sorted(
        p.name
        for sub in ("students", "baselines")
        for p in (run_dir / sub).glob("*")
        if (p / "config.json").is_file()
    )
    raise FileNotFoundError(
        f"no exported model '{name}' under {run_dir}/students or /baselines; there are: {have}"
    )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/main", help="a finished `autodistil run` folder")
    ap.add_argument("--students", nargs="+", required=True, help="exported model names in the run")
    ap.add_argument("--recipes", nargs="+", type=parse_recipe, required=True, help="lr:epochs:kd_alpha")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--out", default=None, help="default experiments/results/<today>_student_recipe")
    a = ap.parse_args(argv)
    import torch

    from autodistil.finetune.train import finetune, weights_identity
    from autodistil.io import atomic_write_json

    if a.threads:
        torch.set_num_threads(a.threads)
    run_dir = Path(a.run)
    run = load_run(run_dir)
    c, ft = run.cfg, run.cfg.finetune
    seq = run_seq_len(run)
    folders = {n: student_folder(run_dir, n) for n in a.students}
    out = Path(a.out) if a.out else dated("student_recipe")
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "student_recipe.json"
    doc = json.loads(res_path.read_text()) if res_path.is_file() else {"rows": []}
    # a row stands for (weights it started from, recipe, the run's other settings): names recur across runs
    setting = {
        "task": c.data.name,
        "batch": ft.batch_size,
        "seq": seq,
        "max_train_examples": ft.max_train_examples,
        "max_eval_examples": ft.max_eval_examples,
    }

    def weights_of(folder):
        return hashlib.sha256(json.dumps(weights_identity(folder)).encode()).hexdigest()[:16]

    def key_of(r):
        return (
            r["student"],
            r["weights"],
            r["lr"],
            r["epochs"],
            r["kd_alpha"],
            r["seed"],
            json.dumps(r.get("setting"), sort_keys=True),
        )

    done = {key_of(r) for r in doc["rows"] if "weights" in r}
    t_dir = None
    for name, folder in folders.items():
        for rc in a.recipes:
            key = key_of(
                {"student": name, "weights": weights_of(folder), **rc, "seed": c.seed, "setting": setting}
            )
            if key in done:
                print(
                    f"[recipe] {name} lr {rc['lr']:g} epochs {rc['epochs']:g} kd {rc['kd_alpha']:g}: "
                    f"done before, kept"
                )
                continue
            if t_dir is None:
                t_dir, t_res = run_teacher(run)
                t_score = t_res["score"]
            load0 = list(os.getloadavg())
            with tempfile.TemporaryDirectory() as tmp:
                fc = run.student_finetune_config(folder, Path(tmp) / name, c.seed, t_dir, seq, **rc)
                r = finetune(fc)
            row = {
                "student": name,
                "weights": key[1],
                **rc,
                "seed": c.seed,
                "setting": setting,
                "run": str(run_dir),
                "threads": torch.get_num_threads(),
                "score": r["score"],
                "metric": r["headline"],
                "f1": r["metrics"].get("f1"),
                "share_of_teacher": round(r["score"] / t_score, 4),
                "teacher_score": t_score,
                "steps": r["steps"],
                "train_seconds": r["train_seconds"],
                "loadavg_1min": [load0[0], os.getloadavg()[0]],
            }
            print(
                f"[recipe] {name} lr {rc['lr']:g} epochs {rc['epochs']:g} kd {rc['kd_alpha']:g}: "
                f"{r['headline']} {r['score']:.4f} ({row['share_of_teacher']:.1%} of the teacher), "
                f"{r['train_seconds']} s",
                flush=True,
            )
            doc["rows"].append(row)
            done.add(key)
            doc.update(
                {
                    "machine": {**device_info("cpu"), "cpu_count": os.cpu_count()},
                    "updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                }
            )
            atomic_write_json(res_path, doc)
            write_rows_csv(out / "student_recipe.csv", doc["rows"])
    return doc


if __name__ == "__main__":
    main()
