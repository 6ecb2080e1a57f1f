"""Which learning rate fine-tunes the default teacher best in one epoch, checked on dev.

    python -m experiments.teacher_lr [--lrs 3e-5 5e-5 1e-4] [--epochs 1] [--batch 32] [--seq 64] [--fresh]
        [--out DIR]
    python -m experiments.teacher_lr --grouping-steps 100 [--threads 1]   # grouped vs random batches

The teacher (autodistil.teacher.DEFAULT_TEACHER) is fine-tuned on the whole sentiment train split
with length-grouped batches, through the fine-tuned-teacher cache (autodistil.finetune.teacher):
a later `autodistil run` with the same recipe reuses the folder instead of training again. A row
that came from the cache says so ("cached": true) and carries the seconds of the run that trained
it; --fresh trains in a temporary cache instead. Writes OUT/teacher_lr.json and .csv (dev accuracy,
F1, wall seconds per lr); OUT defaults to experiments/results/<today>_teacher_lr.

--grouping-steps N: N steps of teacher fine-tuning (batch 32, seq 64) with random and N with
length-grouped batches, interleaved step by step (fair on a shared machine); writes
OUT/grouping_<N>steps[_<T>thread].json."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from autodistil.io import atomic_write_json, write_rows_csv
from autodistil.machine import device_info
from experiments.common import dated


def _machine() -> dict:
    return {**device_info("cpu"), "cpu_count": os.cpu_count(), "loadavg_at_start": list(os.getloadavg())}


def grouping(steps: int, batch: int, seq: int, seed: int, lr: float = 5e-5) -> dict:
    """`steps` fine-tuning steps of the teacher with random batches and as many with length-grouped
    batches, interleaved step by step (two copies of the model, each with its own optimizer), so
    that a load change on a shared machine hits both alike. Times forward + backward + optimizer
    step of each (fused AdamW, as finetune() uses); batch building is outside the timed part."""
    import copy
    import random
    import statistics

    import torch
    from transformers import AutoTokenizer

    from autodistil.data.tasks import load_task
    from autodistil.distill.train import make_optimizer  # the optimizer finetune() uses (fused AdamW)
    from autodistil.finetune.train import batch_stream, batches, encode, load_classifier
    from autodistil.teacher import DEFAULT_TEACHER, resolve_teacher_path

    path = resolve_teacher_path(DEFAULT_TEACHER)
    spec, ds = load_task("sentiment")
    tok = AutoTokenizer.from_pretrained(path)
    train = encode(spec, ds["train"], tok, seq)
    lengths = [len(x) for x in train["input_ids"]]
    torch.manual_seed(seed)
    random.seed(seed)
    base = load_classifier(path, spec.num_labels)
    arms = {}
    for grouped in (False, True):
        m = copy.deepcopy(base).train()
        arms[grouped] = {
            "model": m,
            "opt": make_optimizer([{"params": list(m.parameters())}], lr, "cpu"),
            "stream": batch_stream(lengths, batch, seed, grouped),
            "times": [],
            "pad": 0,
            "real": 0,
            "losses": [],
        }
    load0 = os.getloadavg()
    for step in range(steps):
        for grouped in (False, True) if step % 2 == 0 else (True, False):  # alternate who goes first
            a = arms[grouped]
            x, msk, tt, y = batches(train, next(a["stream"]), tok.pad_token_id)
            a["real"] += int(msk.sum())
            a["pad"] += msk.numel() - int(msk.sum())
            t = time.perf_counter()
            out = a["model"](input_ids=x, attention_mask=msk, token_type_ids=tt, labels=y)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(a["model"].parameters(), 1.0)
            a["opt"].step()
            a["opt"].zero_grad(set_to_none=True)
            a["times"].append(time.perf_counter() - t)
            a["losses"].append(round(float(out.loss.detach()), 4))
        if (step + 1) % 10 == 0:
            print(
                f"step {step + 1}/{steps}: random {sum(arms[False]['times']):.1f} s, "
                f"grouped {sum(arms[True]['times']):.1f} s",
                flush=True,
            )
    rows = []
    for grouped, a in arms.items():
        rows.append(
            {
                "group_by_length": grouped,
                "steps": steps,
                "seconds": round(sum(a["times"]), 2),
                "median_step_s": round(statistics.median(a["times"]), 4),
                "pad_fraction": round(a["pad"] / (a["pad"] + a["real"]), 4),
                "tokens_incl_pad": a["pad"] + a["real"],
                "step_seconds": [round(t, 4) for t in a["times"]],
                "losses": a["losses"],
            }
        )
    return {
        "what": f"{steps} teacher fine-tuning steps each, random vs length-grouped batches (batch {batch}, "
        f"max_seq_len {seq}, whole sentiment train split), interleaved step by step",
        "machine": {**_machine(), "loadavg_at_start": list(load0), "loadavg_at_end": list(os.getloadavg())},
        "rows": rows,
        "speedup_grouped": round(rows[0]["seconds"] / rows[1]["seconds"], 2),
        "speedup_grouped_median_step": round(rows[0]["median_step_s"] / rows[1]["median_step_s"], 2),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lrs", type=float, nargs="+", default=[3e-5, 5e-5, 1e-4])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-train-examples", type=int, default=None, help="default: the whole train split")
    ap.add_argument(
        "--fresh", action="store_true", help="train in a temporary cache (no reuse, nothing kept)"
    )
    ap.add_argument(
        "--grouping-steps", type=int, default=0, help="instead: time N steps with and without length grouping"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's own); 1 is far less sensitive to other processes on a "
        "shared 2-core machine",
    )
    ap.add_argument("--out", default=None, help="default experiments/results/<today>_teacher_lr")
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else dated("teacher_lr")
    out.mkdir(parents=True, exist_ok=True)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.grouping_steps:
        res = grouping(a.grouping_steps, a.batch, a.seq, a.seed)
        p = out / f"grouping_{a.grouping_steps}steps{f'_{a.threads}thread' if a.threads else ''}.json"
        atomic_write_json(p, res)
        print(p)
        return res

    from autodistil.finetune.teacher import finetuned_teacher
    from autodistil.teacher import DEFAULT_TEACHER

    machine = _machine()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in a.lrs:
            t0, load0 = time.perf_counter(), os.getloadavg()[0]
            folder, r = finetuned_teacher(
                DEFAULT_TEACHER,
                "sentiment",
                lr=lr,
                epochs=a.epochs,
                batch_size=a.batch,
                max_seq_len=a.seq,
                seed=a.seed,
                max_train_examples=a.max_train_examples,
                cache_root=tmp if a.fresh else None,
            )
            rows.append(
                {
                    "lr": lr,
                    "dev_accuracy": round(r["metrics"]["accuracy"], 4),
                    "dev_f1": round(r["metrics"]["f1"], 4),
                    "seconds": r["seconds"],
                    "train_seconds": r["train_seconds"],
                    "call_seconds": round(time.perf_counter() - t0, 1),
                    "cached": r["cached"],
                    "loadavg_1min": None
                    if r["cached"]
                    else [round(load0, 2), round(os.getloadavg()[0], 2)],  # before, after: others' load
                    "steps": r["steps"],
                    "train_examples": r["train_examples"],
                    "dev_examples": r["dev_examples"],
                    "pad_fraction": r["pad_fraction"],
                    "folder": None if a.fresh else str(folder),
                }
            )
            print({k: rows[-1][k] for k in ("lr", "dev_accuracy", "dev_f1", "seconds", "cached")}, flush=True)
    best = max(rows, key=lambda r: (r["dev_accuracy"], r["dev_f1"]))
    res = {
        "what": f"default teacher ({DEFAULT_TEACHER}) fine-tuned on sentiment: {a.epochs:g} epoch(s), batch "
        f"{a.batch}, max_seq_len {a.seq}, length-grouped batches, seed {a.seed}",
        "machine": machine,
        "rows": rows,
        "best_lr": best["lr"],
    }
    atomic_write_json(out / "teacher_lr.json", res)
    write_rows_csv(
        out / "teacher_lr.csv", [{**machine, **{k: v for k, v in r.items() if k != "folder"}} for r in rows]
    )
    print(
        f"best lr {best['lr']:g}: dev accuracy {best['dev_accuracy']:.4f}, F1 {best['dev_f1']:.4f} -> {out}"
    )
    return res


if __name__ == "__main__":
    main()
