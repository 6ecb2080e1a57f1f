"""The agnostic search (the paper's, whose code was never released): rank subnets extracted
from the trained K supernets by their held-out self-attention distillation loss, under
FLOPs / params / *predicted latency* budgets; Pareto fronts, best student per budget."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..cost import exact_cost, paper_cost
from ..distill.losses import LossWeights, combined_loss
from ..io import atomic_write_json, write_rows_csv
from ..space import SubnetConfig
from .engine import Budget, CountingObjective, evolutionary, exhaustive, pareto_front, unmet_budget_message


class HeldoutLoss:
    """Held-out distillation loss of a subnet of a trained supernet (no fine-tuning).
    Teacher outputs are computed once and reused for every candidate."""

    def __init__(self, supernet, teacher, heldout, weights: LossWeights = LossWeights(), batch: int = 16,
                 device: str = "cpu"):
        self.net, self.w, self.device = supernet.to(device).eval(), weights, device
        self.batches = []
        n = len(heldout)
        with torch.no_grad():
            for s in range(0, n, batch):
                ids, mask = (t.to(device) for t in heldout.batch(torch.arange(s, min(n, s + batch))))
                t_out = teacher(ids, mask, output_qkv=bool(weights.relation), output_attentions=bool(weights.attention),
                                output_hidden_states=bool(weights.hidden))
                self.batches.append((ids, mask, t_out))
        if not self.batches:
            raise ValueError("held-out data is empty")

    @torch.no_grad()
    def __call__(self, cfg: SubnetConfig) -> float:
        tot = 0.0
        for ids, mask, t_out in self.batches:
            s_out = self.net(ids, mask, subnet=cfg, output_qkv=bool(self.w.relation),
                             output_attentions=bool(self.w.attention), output_hidden_states=bool(self.w.hidden))
            tot += float(combined_loss(self.w, t_out, s_out, mask)[0])
        return tot / len(self.batches)


@dataclass
class SearchSpec:
    budgets: list = field(default_factory=list)     # [Budget]
    method: str = "auto"                            # auto | exhaustive | evolutionary
    exhaustive_limit: int = 4096
    max_evals: int = 64
    seed: int = 0
    seq_len: int = 128


def metrics_fn(table, head_dim: int, seq_len: int, vocab: int):
    cache = {}

    def m(cfg: SubnetConfig) -> dict:
        if cfg not in cache:
            ec = exact_cost(cfg, head_dim, seq_len, vocab)
            lat, lat_sd = table.predict_with_uncertainty(cfg) if table is not None else (float("nan"), 0.0)
            cache[cfg] = {"latency_ms": lat, "latency_sd_ms": lat_sd, "macs": ec.macs, "params": ec.params,
                          "paper_macs": paper_cost(cfg, seq_len).macs}
        return cache[cfg]
    return m


def search(spaces_objectives: list, table, spec: SearchSpec, head_dim: int, vocab: int = 30522,
           out_dir: Optional[Path] = None) -> dict:
    """spaces_objectives: [(SearchSpace, objective callable)], one per supernet (K-shot).
    Returns {"candidates": rows, "front": rows, "best": {budget label: row}}."""
    if spec.method not in ("auto", "exhaustive", "evolutionary"):
        raise ValueError(f"search method {spec.method!r} is not allowed: auto | exhaustive | evolutionary")
    if not spaces_objectives:
        raise ValueError("nothing to search: no spaces given")
    if table is None and any(b.latency_ms is not None for b in spec.budgets):
        raise ValueError("a latency budget needs a latency table (--table, from `autodistil profile`)")
    metrics = metrics_fn(table, head_dim, spec.seq_len, vocab)
    rows, best = [], {}
    objectives = []
    for space, fn in spaces_objectives:
        if len(space) == 0:
            raise ValueError(f"search space '{space.name}' is empty")
        objectives.append((space, CountingObjective(fn)))
    budgets = spec.budgets or [Budget()]
    exhaust = {s.name: spec.method == "exhaustive" or (spec.method == "auto" and len(s) <= spec.exhaustive_limit)
               for s, _ in objectives}
    # exhaustive spaces: evaluate every subnet once (it serves every budget and the front)
    for space, obj in objectives:
        if exhaust[space.name]:
            for c in tqdm(list(space), desc=f"evaluating {space.name}", leave=False):
                obj(c)
    for b in budgets:
        winners = []
        for space, obj in objectives:
            if exhaust[space.name]:
                w = exhaustive(space, obj, metrics, b)
            else:
                w = evolutionary(space, obj, metrics, b, spec.max_evals, seed=spec.seed)
            if w is not None:
                winners.append((obj(w), space.name, w))
        if not winners:
            raise ValueError(unmet_budget_message(b, [c for s, _ in objectives for c in s], metrics))
        loss, sname, w = min(winners, key=lambda t: (t[0], metrics(t[2])["latency_ms"]))
        best[b.label()] = {"budget": b.label(), "space": sname, **w.as_dict(), "loss": loss, **metrics(w)}
    for space, obj in objectives:
        for c, v in obj.cache.items():
            rows.append({"space": space.name, **c.as_dict(), "loss": v, **metrics(c)})
    front_keys = ("loss", "latency_ms") if table is not None else ("loss", "macs")
    front = pareto_front(rows, front_keys)
    front_ids = {(r["space"], r["layers"], r["hidden"], r["ffn_ratio"], r["heads"]) for r in front}
    for r in rows:
        r["pareto"] = (r["space"], r["layers"], r["hidden"], r["ffn_ratio"], r["heads"]) in front_ids
    result = {"candidates": rows, "front": front, "best": best,
              "evaluations": {s.name: o.evaluations for s, o in objectives},
              "table": table.key if table is not None else None}
    if out_dir is not None:
        write_search_outputs(result, Path(out_dir), has_latency=table is not None)
    return result


def write_search_outputs(result: dict, out: Path, has_latency: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(out / "candidates.csv", result["candidates"])
    write_rows_csv(out / "pareto_front.csv", result["front"])
    atomic_write_json(out / "search.json", result)
    plot_search(result, out / "pareto.png", has_latency)


def plot_search(result: dict, path: Path, has_latency: bool, score_key: str = "loss", score_label: str = None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..io import atomic_save
    rows, front, best = result["candidates"], result["front"], result["best"]
    xs = [("latency_ms", "predicted latency (ms)")] if has_latency else []
    xs.append(("macs", "MACs per sequence (G)"))
    fig, axes = plt.subplots(1, len(xs), figsize=(6 * len(xs), 4.5), squeeze=False)
    label = score_label or ("held-out distillation loss" if score_key == "loss" else score_key)
    for ax, (k, xl) in zip(axes[0], xs):
        scale = 1e9 if k == "macs" else 1.0
        for s in sorted({r["space"] for r in rows}):
            rs = [r for r in rows if r["space"] == s]
            ax.scatter([r[k] / scale for r in rs], [r[score_key] for r in rs], s=8, alpha=0.5, label=s)
        fr = sorted(front, key=lambda r: r[k])
        ax.plot([r[k] / scale for r in fr], [r[score_key] for r in fr], "k-", lw=1, label="Pareto front")
        for b, r in best.items():
            ax.scatter([r[k] / scale], [r[score_key]], marker="*", s=160, edgecolors="k", zorder=5)
            ax.annotate(f"{r['layers']}L-{r['hidden']}H-{r['ffn_ratio']:g}R-{r['heads']}A\n{b}",
                        (r[k] / scale, r[score_key]), fontsize=7, xytext=(5, 5), textcoords="offset points")
        ax.set(xlabel=xl, ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save(Path(path), lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def load_search_inputs(supernets, table_path, corpus, heldout_blocks, seq_len):
    from ..data.text import corpus_blocks
    from ..nn import TeacherNet, load_supernet
    from ..teacher import load_teacher
    nets = [load_supernet(p) for p in supernets]
    tnames = {m["teacher"].get("sha256") for _, _, m in nets}
    if len(tnames) > 1:
        raise ValueError(f"supernets were distilled from different teachers: {sorted(map(str, tnames))}")
    teacher_ref = nets[0][2]["teacher"]
    from ..latency.predict import LatencyTable
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
