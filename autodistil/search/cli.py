"""`autodistil search`: load supernets (K-shot), a latency table, held-out text; search."""
from __future__ import annotations

from pathlib import Path

from ..latency.predict import LatencyTable
from .engine import Budget
from .run import HeldoutLoss, SearchSpec, metrics_fn, search


def load_search_inputs(supernets, table_path, corpus, heldout_blocks, seq_len):
    from ..data.text import corpus_blocks
    from ..distill.train import TeacherNet
    from ..nn import load_supernet
    from ..teacher import load_teacher
    nets = [load_supernet(p) for p in supernets]
    tnames = {m["teacher"].get("sha256") for _, _, m in nets}
    if len(tnames) > 1:
        raise ValueError(f"supernets were distilled from different teachers: {sorted(map(str, tnames))}")
    teacher_ref = nets[0][2]["teacher"]
    table = LatencyTable.load(table_path) if table_path else None
    head_dim = nets[0][0].config.head_dim
    if table is not None and table.head_dim != head_dim:
        raise ValueError(f"latency table is for head dim {table.head_dim}, the supernets use {head_dim}")
    hf, tok, info = load_teacher(teacher_ref.get("path") or teacher_ref.get("name"))
    if teacher_ref.get("sha256") and teacher_ref["sha256"] != info.sha256:
        raise ValueError(f"teacher '{info.name}' does not match the one the supernets were distilled from")
    teacher = TeacherNet(hf, info.shape)
    _, held = corpus_blocks(corpus, tok, seq_len, max_train_blocks=1, max_eval_blocks=heldout_blocks)
    return nets, table, teacher, held, tok, head_dim


def budgets_from_args(a) -> list:
    """One Budget per --latency-ms value (or one without a latency limit), sharing --flops / --params."""
    macs = a.flops * 1e9 if a.flops else None
    params = a.params * 1e6 if a.params else None
    return [Budget(latency_ms=l, macs=macs, params=params) for l in a.latency_ms] or [Budget(macs=macs, params=params)]


def run_search_command(a):
    if a.objective == "proxy":
        from ..finetune.proxy import run_proxy_search_command
        return run_proxy_search_command(a)
    budgets = budgets_from_args(a)
    nets, table, teacher, held, tok, head_dim = load_search_inputs(a.supernet, a.table, a.corpus,
                                                                    a.heldout_blocks, a.seq_len)
    vocab = nets[0][0].config.vocab_size
    pairs = []
    for model, spaces, _ in nets:
        space = spaces[0]
        if a.objective == "agnostic":
            fn = HeldoutLoss(model, teacher, held)
        else:
            m = metrics_fn(table, head_dim, a.seq_len, vocab)
            key = {"latency": "latency_ms", "flops": "macs", "params": "params"}[a.objective]
            if key == "latency_ms" and table is None:
                raise ValueError("objective 'latency' needs --table")
            fn = lambda c, m=m, key=key: m(c)[key]
        pairs.append((space, fn))
    spec = SearchSpec(budgets=budgets, method=a.method, max_evals=a.max_evals, seed=a.seed, seq_len=a.seq_len)
    res = search(pairs, table, spec, head_dim, vocab, Path(a.out))
    for label, r in res["best"].items():
        print(f"{label}: {r['space']} L{r['layers']} H{r['hidden']} R{r['ffn_ratio']:g} A{r['heads']}  "
              f"loss {r['loss']:.4f}  latency {r['latency_ms']:.2f} ms  {r['macs'] / 1e9:.3f} GMACs  "
              f"{r['params'] / 1e6:.2f}M params")
    print(f"Pareto front: {len(res['front'])} students -> {Path(a.out) / 'pareto_front.csv'}, plot pareto.png")
    return res
