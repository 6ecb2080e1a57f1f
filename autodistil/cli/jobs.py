"""The jobs: run (the whole pipeline), train (supernets), finetune, evaluate, example-data."""

from __future__ import annotations

from .common import add_data_args, config_command, config_from, data_from

RUN_HELP = "the whole job: train, profile, search, export, measure, fine-tune, ship, report"
RUN_DESCRIPTION = (
    "Distil the teacher into students that meet latency budgets: K-shot supernets, a latency table (this "
    "machine, or --table from the target device), search, export, fine-tuning on your task (built-in or "
    "--train-file/--dev-file), and per budget a folder to ship. Every input is checked before the first "
    "stage."
)


def cmd_run(a):
    from ..pipeline import run_pipeline

    state = run_pipeline(config_from(a))
    if "report" in state:
        print(f"report: {state['report']['report']}")


def cmd_train(a):
    from ..distill.train import train_supernets

    res = train_supernets(config_from(a))
    for name, s in res.items():
        fe, le = s.get("first_eval") or {}, s.get("final_eval") or {}
        print(
            f"{name}: {s['steps']} steps; held-out distillation loss "
            + ", ".join(f"{k} {fe.get(k, float('nan')):.4f} -> {le.get(k, float('nan')):.4f}" for k in le)
        )


def cmd_finetune(a):
    from ..finetune.train import finetune

    cfg = config_from(a)
    if not cfg.model:
        raise ValueError("--model is required (a Hugging Face folder: an exported student or a teacher)")
    r = finetune(cfg)
    print(
        f"{r['task']}: "
        + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
        + f" ({r['steps']} steps, {r['train_seconds']} s) -> {cfg.out_dir}"
    )


def cmd_evaluate(a):
    from ..finetune.train import evaluate_folder

    r = evaluate_folder(a.model, data_from(a), a.max_eval_examples, a.max_seq_len)
    print(
        f"{r['task']} ({r['dev_examples']} dev examples): "
        + ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items())
    )


def cmd_example_data(a):
    from ..data.examples import write_examples

    for name, paths in write_examples(a.out).items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in paths.items()))


def register_run(sub):
    from ..pipeline import RunConfig

    config_command(sub, "run", RUN_HELP, RunConfig, cmd_run, RUN_DESCRIPTION)


def register_train(sub):
    from ..distill.train import TrainConfig

    config_command(
        sub, "train", "distil K-shot supernets from a teacher (sandwich sampling)", TrainConfig, cmd_train
    )


def register_finetune(sub):
    from ..finetune.train import FinetuneConfig

    config_command(
        sub,
        "finetune",
        "fine-tune a student (or any Hugging Face encoder folder) on a task",
        FinetuneConfig,
        cmd_finetune,
    )
    ev = sub.add_parser("evaluate", help="dev metrics of a fine-tuned classifier folder on a task")
    ev.add_argument(
        "--model", required=True, help="a fine-tuned classifier folder (e.g. one under a run's ship/)"
    )
    add_data_args(ev)
    ev.add_argument(
        "--max-eval-examples", type=int, default=None, help="the first this many dev examples only"
    )
    ev.add_argument("--max-seq-len", type=int, default=128, help="tokens per example (default: 128)")
    ev.set_defaults(fn=cmd_evaluate)
    ex = sub.add_parser(
        "example-data",
        help="write two small labelled datasets from the packaged text, to try your-own-data runs offline",
    )
    ex.add_argument("out", help="the folder to write them to")
    ex.set_defaults(fn=cmd_example_data)
