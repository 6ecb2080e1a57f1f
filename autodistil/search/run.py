"""The agnostic search (the paper's, whose code was never released): rank subnets extracted
from the trained K supernets by their held-out self-attention distillation loss, under
FLOPs / params / *predicted latency* budgets; Pareto fronts, best student per budget."""

from __future__ import annotations

import itertools
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


def candidate_key(r: dict) -> tuple:
    """The one identity of a search candidate row: (space, layers, hidden, ffn_ratio, heads)."""
    return (r["space"], int(r["layers"]), int(r["hidden"]), float(r["ffn_ratio"]), int(r["heads"]))


def candidate_name(r: dict) -> str:
    """The one printable name of a candidate row (also its export folder name): space-L..-H..-R..-A.."""
    return f"{r['space']}-{SubnetConfig(r['layers'], r['hidden'], r['ffn_ratio'], r['heads']).short()}"


def format_choice(label: str, r: dict, score: str | None = None) -> str:
    """One line per chosen student, for every search front end."""
    s = f"{label}: {candidate_name(r)}"
    if score and score in r:
        s += f"  {score} {r[score]:.4f}"
    if "loss" in r and score != "loss":
        s += f"  loss {r['loss']:.4f}"
    if "latency_ms" in r and r["latency_ms"] == r["latency_ms"]:
        s += f"  predicted {r['latency_ms']:.2f} ms"
    if r.get("measured_ms") is not None:
        s += f"  measured {r['measured_ms']:.2f} ms (+{r.get('margin_ms', 0.0):.2f} margin)"
    if "macs" in r:
        s += f"  {r['macs'] / 1e9:.3f} GMACs"
    if "params" in r:
        s += f"  {r['params'] / 1e6:.2f}M params"
    return s


def trained_loss_weights(meta: dict, warn=None) -> tuple[LossWeights, dict]:
    """The loss weights a supernet was trained with (supernet.json extra["train"]["loss"]), as the
    search objective uses them, and a note of what was changed and why.

    The hidden-state term needs the learned projection from student to teacher width, which is a
    training-only part dropped on export and consolidation; the supernet has no logits head. So the
    objective keeps the relation and attention-map terms at their trained weights and sets the
    hidden-state and logits weights to 0 (the note says so). Where the weights are not recorded,
    or no kept term has a positive weight, it warns and falls back to LossWeights() (relation only)."""
    import warnings

    warn = warn or (lambda m: warnings.warn(m, stacklevel=3))
    note = {"source": "trained", "dropped": {}}
    rec = (meta.get("extra") or {}).get("train", {}).get("loss") if isinstance(meta, dict) else None
    if not isinstance(rec, dict):
        warn(
            "supernet.json records no training loss weights (extra['train']['loss']); the search objective "
            "falls back to the default weights (relation loss only)"
        )
        return LossWeights(), {"source": "default (not recorded)", "dropped": {}}
    known = {f for f in LossWeights.__dataclass_fields__}
    kw = {k: v for k, v in rec.items() if k in known}
    for k in ("hidden", "logits"):
        if kw.get(k):
            note["dropped"][k] = kw[k]
            kw[k] = 0.0
    if note["dropped"]:
        warn(
            f"search objective: trained weights {note['dropped']} dropped (the hidden-state projection is "
            "not exported with the supernet; it has no logits head); "
            "relation/attention terms kept at their weights"
        )
    if not (kw.get("relation", 0) or kw.get("attention", 0)):
        warn(
            "search objective: no relation or attention weight left from the trained loss; falling back to "
            "the default weights (relation loss only)"
        )
        return LossWeights(), {**note, "source": "default (no usable trained term)"}
    try:
        return LossWeights(**kw), note
    except (TypeError, ValueError) as e:
        warn(f"supernet.json loss weights {rec} are not usable ({e}); falling back to the default weights")
        return LossWeights(), {"source": f"default ({e})", "dropped": {}}


class HeldoutLoss:
    """Held-out distillation loss of a subnet of a trained supernet (no fine-tuning).
    Teacher outputs are computed once and reused for every candidate.

    `weights`: the loss weights; pass the ones the supernet was trained with
    (`trained_loss_weights(meta)`, what every front end does). The hidden-state term is not part
    of the objective: its projection was dropped on export, so `trained_loss_weights` sets it to 0
    and records that in its note; a hidden weight given here directly is refused."""

    def __init__(
        self,
        supernet,
        teacher,
        heldout,
        weights: LossWeights = LossWeights(),
        batch: int = 16,
        device: str = "cpu",
    ):
        if weights.hidden or weights.logits:
            raise ValueError(
                f"HeldoutLoss: hidden={weights.hidden}, logits={weights.logits} cannot be evaluated on "
                f"an exported supernet (no hidden-state projection, no logits head); use "
                f"trained_loss_weights(meta), which drops them and says so"
            )
        self.net, self.w, self.device = supernet.to(device).eval(), weights, device
        self.batches = []
        n = len(heldout)
        with torch.no_grad():
            for s in range(0, n, batch):
                ids, mask = (t.to(device) for t in heldout.batch(torch.arange(s, min(n, s + batch))))
                t_out = teacher(
                    ids, mask, output_qkv=bool(weights.relation), output_attentions=bool(weights.attention)
                )
                self.batches.append((ids, mask, t_out))
        if not self.batches:
            raise ValueError("held-out data is empty")

    @classmethod
    def for_supernet(cls, supernet, meta: dict, teacher, heldout, **kw) -> "HeldoutLoss":
        w, note = trained_loss_weights(meta)
        obj = cls(supernet, teacher, heldout, w, **kw)
        obj.note = note
        return obj

    @torch.no_grad()
    def __call__(self, cfg: SubnetConfig) -> float:
        tot = 0.0
        for ids, mask, t_out in self.batches:
            s_out = self.net(
                ids,
                mask,
                subnet=cfg,
                output_qkv=bool(self.w.relation),
                output_attentions=bool(self.w.attention),
            )
            tot += float(combined_loss(self.w, t_out, s_out, mask)[0])
        return tot / len(self.batches)


@dataclass
class SearchSpec:
    budgets: list = field(default_factory=list)  # [Budget]
    method: str = "auto"  # auto | exhaustive | evolutionary
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
            cache[cfg] = {
                "latency_ms": lat,
                "latency_sd_ms": lat_sd,
                "macs": ec.macs,
                "params": ec.params,
                "paper_macs": paper_cost(cfg, seq_len).macs,
                "plain": cfg.heads * head_dim == cfg.hidden,
            }
        return cache[cfg]

    return m


def search(
    spaces_objectives: list,
    table,
    spec: SearchSpec,
    head_dim: int,
    vocab: int = 30522,
    out_dir: Optional[Path] = None,
) -> dict:
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
    exhaust = {
        s.name: spec.method == "exhaustive" or (spec.method == "auto" and len(s) <= spec.exhaustive_limit)
        for s, _ in objectives
    }
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
            raise UnmetBudget(unmet_budget_message(b, [c for s, _ in objectives for c in s], metrics))
        loss, sname, w = min(winners, key=lambda t: (t[0], metrics(t[2])["latency_ms"]))
        best[b.label()] = {"budget": b.label(), "space": sname, **w.as_dict(), "loss": loss, **metrics(w)}
    for space, obj in objectives:
        for c, v in obj.cache.items():
            rows.append({"space": space.name, **c.as_dict(), "loss": v, **metrics(c)})
    front_keys = ("loss", "latency_ms") if table is not None else ("loss", "macs")
    front = pareto_front(rows, front_keys)
    front_ids = {candidate_key(r) for r in front}
    for r in rows:
        r["pareto"] = candidate_key(r) in front_ids
    result = {
        "candidates": rows,
        "front": front,
        "best": best,
        "evaluations": {s.name: o.evaluations for s, o in objectives},
        "table": table.key if table is not None else None,
        "table_speed": table.speed if table is not None else None,
    }  # predictions x this (1: as profiled)
    if out_dir is not None:
        write_search_outputs(result, Path(out_dir), has_latency=table is not None)
    return result


class UnmetBudget(ValueError):
    """No subnet the search evaluated meets a budget (an evolutionary search may miss a small feasible
    region that exists)."""


def research_fn(
    pairs,
    table,
    method: str,
    seed: int,
    seq_len: int,
    head_dim: int,
    vocab: int,
    plain: bool,
    max_evals: Optional[int] = None,
):
    """verify_budgets' `research`: {space: [predicted-ms limit per budget]} -> the candidate rows of a search
    of each space under those limits (the corrected budgets expressed in the table's predictions), objective
    values cached. A limit below every subnet of a space (every plain one with `plain`) finds nothing there
    and is skipped; where a subnet is predicted under the limit but an evolutionary search found none, that
    subnet is the row; any other error of the search is raised. `max_evals`: objective evaluations per
    budget of an evolutionary search (None: SearchSpec's default)."""
    metrics = metrics_fn(table, head_dim, seq_len, vocab)
    evals = {} if max_evals is None else {"max_evals": max_evals}

    def predicted_under(space, budget: Budget):
        """A subnet of `space` predicted under the budget, or None. The smallest first (it decides almost
        always), then every subnet: a prediction need not grow in every dimension, and a plain-only budget
        needs a plain shape."""
        return next((c for c in itertools.chain([space.smallest()], space) if budget.ok(metrics(c))), None)

    def research(limits: dict) -> list:
        rows = []
        for space, obj in pairs:
            for lim in sorted({x for x in limits.get(space.name, []) if x > 0}):
                budget = Budget(latency_ms=lim, plain=plain)
                feasible = predicted_under(space, budget)
                if feasible is None:  # no subnet of this space predicted under the limit
                    continue
                spec = SearchSpec(budgets=[budget], method=method, seed=seed, seq_len=seq_len, **evals)
                try:
                    rows += search([(space, obj)], table, spec, head_dim, vocab)["candidates"]
                except UnmetBudget:  # the evolutionary search missed the feasible region: offer what is known
                    rows.append(
                        {
                            "space": space.name,
                            **feasible.as_dict(),
                            "loss": obj(feasible),
                            **metrics(feasible),
                        }
                    )
        return [r for r in rows if r["plain"]] if plain else rows

    return research


def write_search_outputs(result: dict, out: Path, has_latency: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(out / "candidates.csv", result["candidates"])
    write_rows_csv(out / "pareto_front.csv", result["front"])
    atomic_write_json(out / "search.json", result)
    plot_search(result, out / "pareto.png", has_latency)


def plot_search(
    result: dict, path: Path, has_latency: bool, score_key: str = "loss", score_label: str = None
):
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
            ax.annotate(
                f"{candidate_name(r)}\n{b}",
                (r[k] / scale, r[score_key]),
                fontsize=7,
                xytext=(5, 5),
                textcoords="offset points",
            )
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
