"""Proxy search (the paper's Proxy-B/S/T students): the top-k candidates of the agnostic
ranking under each budget are exported, fine-tuned briefly on a proxy task and ranked by dev
score under the same budgets. Their measured scores join the Pareto front."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ..export import export_subnet
from ..io import atomic_write_json, write_rows_csv
from ..finetune.train import FinetuneConfig, finetune
from .run import HeldoutLoss, SearchSpec, candidate_key, candidate_name, pareto_front, plot_search, search
from ..space import SubnetConfig


def proxy_search(
    nets,
    table,
    teacher,
    held,
    tokenizer,
    budgets: list,
    data,
    top_k: int = 4,
    proxy_steps: int = 100,
    out_dir=None,
    seed: int = 0,
    max_seq_len: int = 64,
    max_eval_examples: int | None = 1000,
    method: str = "auto",
    lr: float = 5e-5,
) -> dict:
    """`data`: the proxy task, a DataConfig (built-in task or the user's files) or a built-in task name."""
    from ..data.tasks import DataConfig

    data = data if isinstance(data, DataConfig) else DataConfig(task=data)
    head_dim, vocab = nets[0][0].config.head_dim, nets[0][0].config.vocab_size
    pairs = [
        (spaces[0], HeldoutLoss.for_supernet(model, meta, teacher, held)) for model, spaces, meta in nets
    ]
    agn = search(pairs, table, SearchSpec(budgets=budgets, method=method, seed=seed), head_dim, vocab)
    by_space = {spaces[0].name: model for model, spaces, _ in nets}
    feas_rows = agn["candidates"]
    picked = {}
    for b in budgets:
        ok = sorted((r for r in feas_rows if b.ok(r)), key=lambda r: r["loss"])[:top_k]
        picked[b.label()] = ok
    tmp = Path(tempfile.mkdtemp(prefix="autodistil-proxy-"))
    scores = {}
    try:
        for rows in picked.values():
            for r in rows:
                key = candidate_key(r)
                if key in scores:
                    continue
                cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
                folder = export_subnet(by_space[r["space"]], cfg, tmp / candidate_name(r), tokenizer)
                res = finetune(
                    FinetuneConfig(
                        model=str(folder),
                        data=data,
                        out_dir=str(tmp / "ft" / cfg.short()),
                        max_steps=proxy_steps,
                        max_seq_len=max_seq_len,
                        seed=seed,
                        lr=lr,
                        max_eval_examples=max_eval_examples,
                    ),
                    progress=False,
                )
                scores[key] = res["score"]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rows, best = [], {}
    for label, cands in picked.items():
        for r in cands:
            key = candidate_key(r)
            rows.append({**r, "budget": label, "proxy_score": scores[key], "neg_score": -scores[key]})
        if cands:
            top = max((x for x in rows if x["budget"] == label), key=lambda x: x["proxy_score"])
            best[label] = top
    uniq = {candidate_key(r): r for r in rows}
    front = pareto_front(list(uniq.values()), ("neg_score", "latency_ms" if table is not None else "macs"))
    result = {
        "candidates": rows,
        "front": front,
        "best": best,
        "agnostic_best": agn["best"],
        "task": data.name,
        "table": agn["table"],
        "table_speed": agn["table_speed"],
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        write_rows_csv(out / "proxy_candidates.csv", rows)
        atomic_write_json(out / "proxy_search.json", result)
        plot_search(
            result,
            out / "proxy_pareto.png",
            table is not None,
            score_key="proxy_score",
            score_label=f"{data.name} dev score after {proxy_steps} proxy steps",
        )
    return result
