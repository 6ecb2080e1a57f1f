"""Does the agnostic search objective rank subnets? (issue #15, item 4)

    python -m experiments.objective_rank --supernet RUN/supernets/small [--teacher-ft RUN/finetuned/teacher]
        [--n 12] [--seeds 1] [--epochs 1] [--lr 3e-4] [--batch 32] [--max-seq-len 64]
        [--max-train-examples N] [--subnets-from EARLIER/objective_rank.json] [--out DIR]
    python -m experiments.objective_rank --compare A/objective_rank.json B/objective_rank.json --out DIR

The search ranks the subnets of a trained supernet by their held-out distillation loss
(autodistil.search.run.HeldoutLoss.for_supernet: the loss weights the supernet was trained with,
the held-out blocks of the main job). This bench asks whether that loss predicts what a user gets:
the fine-tuned task accuracy of the exported subnet.

1. Choice: a seeded pool of distinct random subnets of the supernet's space(s) (the whole space
   when it is smaller than --pool) is sorted by held-out loss (or by MACs, --stratify macs), and
   --n evenly spaced quantiles of that order are taken (smallest and largest key included), so the
   losses spread over the range the search sees. --subnets-from takes the subnets of an earlier run
   instead (its objective_rank.json): the same architectures under another supernet (a paired
   comparison of two training defaults; --n, --pool and --stratify do not apply; each subnet's
   earlier pool rank is kept as from_pool_rank, and no pool.csv is written).
2. Per subnet: held-out loss (the same blocks for all), export (autodistil.export.export_subnet),
   fine-tune (autodistil.finetune.train.finetune; logits KD from --teacher-ft with --kd-alpha when
   given), accuracy and F1 on the dev split, MACs and parameters (autodistil.cost.exact_cost at the
   supernet's sequence length, as the search counts them). --seeds K fine-tunes each subnet with K
   seeds and uses the mean score (the spread is reported as the seed noise).
   Resumable: OUT/subnets/<name>-seed<k>.json is written atomically when a fine-tuning finishes;
   a rerun reuses it (and refuses one made with another recipe or supernet).
3. Statistics (autodistil.stats): Kendall tau-b of (-loss, score), so a positive tau means the
   objective ranks well; a percentile bootstrap CI over subnets (--boot 2000 resamples, seeded) and a
   permutation p-value (--perm resamples). The same
   for MACs vs score (the trivial predictor "bigger is better"), the paired bootstrap CI of the
   difference tau(objective) - tau(MACs), and tau(-loss, MACs) (how much the loss just tracks size).
   A bootstrap resample whose tau is undefined (all its scores equal) counts as tau 0. The verdict
   says "ranks better than chance" only when the CI excludes 0 AND the permutation p < 0.05, and
   warns when several subnets share one score (students stuck at the majority class).
   Every seed is scored on the same dev examples (fine-tuning draws its dev subset with seed 0).

Outputs in --out (default experiments/results/<today>_objective_rank; give the same --out to resume
on another day): objective_rank.json (everything), objective_rank.csv (one row per subnet),
objective_rank.png (loss vs score and MACs vs score, labelled), pool.csv (the pool the subnets were
drawn from), subnets/*.json (per fine-tuning run, the resume units). Exported and fine-tuned model
weights go to --work (default runs/objective_rank/<out folder name>, git-ignored; exports under a
folder named by the supernet's weights hash, so two supernets never share one) and are deleted
after each run unless --keep-models.

--compare A B (no fine-tuning): two runs over the same subnets under two supernets, made with the same
recipe and seeds (refused otherwise): each run's tau(-loss, score) with its bootstrap CI (the same
resamples as its own run, in run A's subnet order), and paired over the subnets, the CI of
tau(B) - tau(A) and of the mean score difference B - A -> OUT/compare.json.
"""

from __future__ import annotations

import argparse
import math
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from autodistil.io import write_rows_csv
from autodistil.machine import device_info
from autodistil.stats import bootstrap_indices, bootstrap_taus, kendall_tau, percentile_ci, rank_stats
from experiments.common import ROOT, dated

MIN_SUBNETS = 10


# --- configuration ----------------------------------------------------------------------------
@dataclass(frozen=True)
class BenchConfig:
    supernet: str
    out: str = str(dated("objective_rank"))
    work: Optional[str] = None  # exported / fine-tuned weights; default runs/objective_rank/<out name>
    teacher_ft: Optional[str] = None  # fine-tuned teacher folder: logits KD during fine-tuning
    kd_alpha: float = 0.5
    n: int = 10
    pool: int = 200
    stratify: str = "loss"  # loss | macs
    task: str = "sentiment"
    epochs: float = 1.0  # the main job's student recipe (RunConfig)
    lr: float = 3e-4
    batch: int = 32
    max_seq_len: int = 64
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None
    seeds: int = 1  # fine-tuning seeds per subnet (seed, seed+1, ...)
    seed: int = 0
    heldout_blocks: Optional[int] = None  # default: the main job's (RunConfig.heldout_blocks)
    corpus: Optional[str] = None  # default: the corpus the supernet was trained on
    boot: int = 2000
    perm: int = 10000
    keep_models: bool = False
    subnets_from: Optional[str] = None  # an earlier objective_rank.json: fine-tune the same subnets

    def __post_init__(self):
        if self.n < MIN_SUBNETS:
            raise ValueError(
                f"--n {self.n}: at least {MIN_SUBNETS} subnets are needed (issue #15); with fewer the "
                f"confidence interval of Kendall's tau is too wide to tell anything"
            )
        if self.pool < self.n:
            raise ValueError(
                f"--pool {self.pool} must be at least --n {self.n} (the subnets are quantiles of the pool)"
            )
        if self.stratify not in ("loss", "macs"):
            raise ValueError(f"--stratify {self.stratify!r} is not allowed: loss | macs")
        if not 0.0 <= self.kd_alpha <= 1.0:
            raise ValueError(f"--kd-alpha {self.kd_alpha} must be within [0, 1]")
        for f in ("epochs", "lr", "batch", "max_seq_len", "seeds", "boot", "perm"):
            if not getattr(self, f) > 0:
                raise ValueError(f"--{f.replace('_', '-')} {getattr(self, f)} must be positive")
        for f in ("max_train_examples", "max_eval_examples", "heldout_blocks"):
            v = getattr(self, f)
            if v is not None and v <= 0:
                raise ValueError(f"--{f.replace('_', '-')} {v} must be positive (or left out)")

    def recipe(self) -> dict:
        """What a fine-tuning result depends on besides its subnet and seed (the resume check)."""
        return {
            "task": self.task,
            "epochs": self.epochs,
            "lr": self.lr,
            "batch": self.batch,
            "max_seq_len": self.max_seq_len,
            "max_train_examples": self.max_train_examples,
            "max_eval_examples": self.max_eval_examples,
            "teacher_ft": str(Path(self.teacher_ft).resolve()) if self.teacher_ft else None,
            "kd_alpha": self.kd_alpha if self.teacher_ft else 0.0,
        }


# --- subnet choice ----------------------------------------------------------------------------
def choose_subnets(
    spaces: Sequence, n: int, key: Callable, pool: int = 200, seed: int = 0, progress: bool = False
) -> tuple[list[dict], list[dict]]:
    """n distinct subnets spread over `spaces` by `key` (a callable (space_name, SubnetConfig) -> float).

    A seeded pool of `pool` distinct subnets (every subnet when the spaces hold fewer) is sorted by
    key and the n evenly spaced quantiles are taken, the smallest and largest key included.
    Returns (chosen, pool), each a list of {"space", "cfg", "key", "rank"} (rank: position in the
    sorted pool), chosen in increasing key order."""
    from tqdm.auto import tqdm

    if n < 2:
        raise ValueError(f"n={n}: at least 2 subnets are needed to spread them")
    total = sum(len(s) for s in spaces)
    if total < n:
        raise ValueError(
            f"the space(s) {[s.name for s in spaces]} hold {total} subnets, fewer than the {n} asked for"
        )
    if total <= pool:
        cands = [(s.name, c) for s in spaces for c in s]
    else:
        rng = random.Random(seed)
        seen, cands = set(), []
        sizes = [len(s) for s in spaces]
        while len(cands) < pool:  # terminates: pool < total distinct subnets
            s = rng.choices(spaces, weights=sizes)[0]  # uniform over the union of the spaces
            c = s.sample(rng)
            if (s.name, c) not in seen:
                seen.add((s.name, c))
                cands.append((s.name, c))
    rows = []
    for name, c in tqdm(cands, desc=f"pool: {len(cands)} subnets", disable=not progress, leave=False):
        k = float(key(name, c))
        if not math.isfinite(k):
            raise ValueError(f"key of {name} {c.short()} is {k}: a finite number is needed to order the pool")
        rows.append({"space": name, "cfg": c, "key": k})
    rows.sort(key=lambda r: (r["key"], r["space"], r["cfg"]))
    for i, r in enumerate(rows):
        r["rank"] = i
    step = (len(rows) - 1) / (n - 1)  # >= 1, so the indices are distinct
    idx = [int(math.floor(i * step + 0.5)) for i in range(n)]
    return [rows[i] for i in idx], rows


def read_earlier(path) -> dict:
    """An earlier run's objective_rank.json (--subnets-from), with a clear error when it is missing."""
    from autodistil.io import read_json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--subnets-from {path}: no such file (an objective_rank.json of an earlier run)"
        )
    return read_json(path, "objective_rank result")


def pairing(run: dict) -> dict:
    """What two runs must share for their scores to pair up subnet by subnet: the fine-tuning recipe
    and seeds (a run's JSON, or {"recipe": ..., "config": {"seeds": ..., "seed": ...}})."""
    c = run.get("config") or {}
    return {"recipe": run.get("recipe"), "fine-tuning seeds": (c.get("seeds"), c.get("seed"))}


def subnets_from(path, spaces: Sequence, doc: Optional[dict] = None) -> list[dict]:
    """The subnets of an earlier run's objective_rank.json (`doc`, read from `path` when not given)
    as chooser rows ({"space", "cfg", "key", "rank"}; rank = position in that run, key None), each
    checked to lie in one of `spaces` (by name): the same architectures under another supernet."""
    from autodistil.space import SubnetConfig

    path = Path(path)
    d = read_earlier(path) if doc is None else doc
    rows = d.get("subnets") if isinstance(d, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(
            f"--subnets-from {path}: no 'subnets' list; expected the objective_rank.json of an earlier run"
        )
    by_name = {s.name: s for s in spaces}
    out = []
    for i, r in enumerate(rows):
        try:
            c = SubnetConfig.from_dict(r)
        except (ValueError, TypeError) as e:
            raise ValueError(
                f"--subnets-from {path}: subnet {i}: {e}; expected the objective_rank.json of an earlier run"
            ) from None
        sp = by_name.get(r.get("space"))
        if sp is None:
            raise ValueError(
                f"--subnets-from {path}: subnet {i} is from space {r.get('space')!r}; this supernet has "
                f"{sorted(by_name)}"
            )
        if c not in sp:
            raise ValueError(f"--subnets-from {path}: {c.short()} is outside this supernet's {sp.describe()}")
        out.append({"space": sp.name, "cfg": c, "key": None, "rank": i, "from_pool_rank": r.get("pool_rank")})
    if len({(r["space"], r["cfg"]) for r in out}) != len(out):
        raise ValueError(f"--subnets-from {path}: a subnet is listed twice")
    if len(out) < MIN_SUBNETS:
        raise ValueError(f"--subnets-from {path}: {len(out)} subnets; at least {MIN_SUBNETS} are needed")
    return out


# --- statistics (autodistil.stats: kendall_tau, rank_stats, bootstrap, permutation) ---------------
def objective_rank_stats(
    losses: Sequence[float],
    macs: Sequence[float],
    scores: Sequence[float],
    n_boot: int = 2000,
    n_perm: int = 10000,
    seed: int = 0,
    ci: float = 0.95,
) -> dict:
    """The bench's verdict numbers. "objective": tau of (-held-out loss, score) (positive: a lower
    loss goes with a higher score, the objective ranks well); "macs": tau of (MACs, score) (the
    trivial predictor, bigger is better); "difference": tau(objective) - tau(MACs) with a paired
    bootstrap CI (the same resamples for both); "loss_vs_macs_tau": tau(-loss, MACs)."""
    n = len(scores)
    if not (len(losses) == len(macs) == n):
        raise ValueError(
            f"losses ({len(losses)}), macs ({len(macs)}) and scores ({n}) must have one value per subnet"
        )
    boot_idx = bootstrap_indices(n, n_boot, seed)
    neg = [-float(v) for v in losses]
    obj = rank_stats(neg, scores, n_boot, n_perm, seed, ci, boot_idx)
    base = rank_stats(macs, scores, n_boot, n_perm, seed, ci, boot_idx)
    diffs = [a - b for a, b in zip(obj.pop("_boots"), base.pop("_boots"))]
    lo, hi = percentile_ci(diffs, ci)
    return {
        "objective": obj,
        "macs": base,
        "difference": {
            "tau": obj["tau"] - base["tau"],
            "ci": ci,
            "ci_low": lo,
            "ci_high": hi,
            "boot": len(diffs),
        },
        "loss_vs_macs_tau": kendall_tau(neg, [float(m) for m in macs]),
    }


def compare_runs(a: dict, b: dict, n_boot: int = 2000, seed: int = 0, ci: float = 0.95) -> dict:
    """Two runs of this bench over the same subnets under two supernets (two training defaults,
    --subnets-from): per run tau(-loss, score) (the objective's ranking) and the mean score; paired
    over the subnets, with the same bootstrap resamples for both: the difference of the taus
    tau(b) - tau(a) and the mean score difference b - a, each with a percentile CI. Subnets are
    matched by (space, layers, hidden, ffn_ratio, heads) and taken in run a's order (so each run's
    CI is the one its own run reports, for the same seed and resample count). Refused: different
    subnet sets, recipes, score metrics or fine-tuning seeds, and two runs of the same supernet
    weights. A run whose tau is undefined (all its scores equal) gets NaN for its CI and the difference's."""
    key = lambda r: (r["space"], int(r["layers"]), int(r["hidden"]), float(r["ffn_ratio"]), int(r["heads"]))
    ra, rb = {key(r): r for r in a["subnets"]}, {key(r): r for r in b["subnets"]}
    if len(ra) != len(a["subnets"]) or len(rb) != len(b["subnets"]):
        raise ValueError("a run lists one subnet twice")
    if set(ra) != set(rb):
        only = sorted(set(ra) ^ set(rb))
        raise ValueError(
            f"the two runs hold different subnets ({len(only)} in one only, e.g. {only[:2]}); run the "
            f"second with --subnets-from the first's objective_rank.json"
        )
    same = lambda f: (f(a), f(b))
    pa, pb = pairing(a), pairing(b)
    for what, (x, y) in [(k, (pa[k], pb[k])) for k in pa] + [
        ("score metric", same(lambda r: r.get("score_metric")))
    ]:
        if x != y:
            raise ValueError(f"the two runs differ in {what} ({x} against {y}): their scores are not paired")
    sha = same(lambda r: r["identity"].get("supernet_sha256"))
    if sha[0] is not None and sha[0] == sha[1]:
        raise ValueError("the two runs fine-tuned the same supernet weights: nothing to compare")
    keys = [key(r) for r in a["subnets"]]
    n = len(keys)
    for r in list(ra.values()) + list(rb.values()):
        if not (isinstance(r.get("score"), (int, float)) and isinstance(r.get("heldout_loss"), (int, float))):
            raise ValueError(
                f"subnet {r.get('name')} has no finite score or loss ({r.get('score')}, "
                f"{r.get('heldout_loss')})"
            )
    la, lb = [-ra[k]["heldout_loss"] for k in keys], [-rb[k]["heldout_loss"] for k in keys]
    sa, sb = [ra[k]["score"] for k in keys], [rb[k]["score"] for k in keys]
    idx = bootstrap_indices(n, n_boot, seed)
    (ta, _), (tb, _) = bootstrap_taus(la, sa, idx), bootstrap_taus(lb, sb, idx)  # undefined resamples: tau 0
    q = lambda xs: percentile_ci(xs, ci)
    nan = float("nan")
    out = {"n": n, "ci": ci, "boot": n_boot}
    for name, r, l, sc, boots in (("a", a, la, sa, ta), ("b", b, lb, sb, tb)):
        t = kendall_tau(l, sc)
        lo, hi = q(boots) if math.isfinite(t) else (nan, nan)
        out[name] = {
            "supernet": r["identity"]["supernet"],
            "supernet_sha256": r["identity"].get("supernet_sha256"),
            "train_loss": r.get("train_loss"),
            "objective_weights": r.get("objective_weights"),
            "objective_note": r.get("objective_note"),
            "tau": t,
            "ci_low": lo,
            "ci_high": hi,
            "mean_score": float(np.mean(sc)),
            "seed_noise_sd": r.get("seed_noise_sd"),
        }
    d = out["b"]["tau"] - out["a"]["tau"]
    lo, hi = q([y - x for x, y in zip(ta, tb)]) if math.isfinite(d) else (nan, nan)
    out["tau_difference"] = {"tau": d, "ci_low": lo, "ci_high": hi}
    lo, hi = q([float(np.mean([sb[i] - sa[i] for i in ii])) for ii in idx])
    out["mean_score_difference"] = {
        "diff": out["b"]["mean_score"] - out["a"]["mean_score"],
        "ci_low": lo,
        "ci_high": hi,
        "subnets_b_higher": int(sum(y > x for x, y in zip(sa, sb))),
    }
    out["subnets"] = [
        {
            "space": k[0],
            "subnet": f"L{k[1]}-H{k[2]}-R{k[3]:g}-A{k[4]}",
            "loss_a": ra[k]["heldout_loss"],
            "loss_b": rb[k]["heldout_loss"],
            "score_a": ra[k]["score"],
            "score_b": rb[k]["score"],
        }
        for k in keys
    ]
    return out


def json_safe(o):
    """NaN / inf -> None (strict JSON), recursively."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    return o


def verdict(st: dict) -> list[str]:
    o, m, d = st["objective"], st["macs"], st["difference"]
    pct = f"{100 * o['ci']:.0f}%"
    lines = [
        f"objective (-held-out loss) vs score: tau {o['tau']:+.3f}, {pct} CI [{o['ci_low']:+.3f}, "
        f"{o['ci_high']:+.3f}], permutation p {o['p_two_sided']:.4f} (two-sided), "
        f"{o['p_greater']:.4f} (tau > 0)",
        f"MACs (bigger is better) vs score:  tau {m['tau']:+.3f}, {pct} CI [{m['ci_low']:+.3f}, "
        f"{m['ci_high']:+.3f}], permutation p {m['p_two_sided']:.4f}",
        f"objective - MACs: {d['tau']:+.3f}, {pct} CI [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]; "
        f"tau(-loss, MACs) {st['loss_vs_macs_tau']:+.3f}",
    ]
    if not math.isfinite(o["tau"]):
        return lines + [
            "verdict: undefined: every subnet got the same score (or the same loss), so there is no "
            "ranking to compare; fine-tune longer or spread the subnets more"
        ]
    sig = o["p_two_sided"] < 1 - o["ci"]  # both the CI and the permutation test must agree
    if o["ci_low"] > 0 and sig:
        v = "the objective ranks subnets better than chance (CI above 0, permutation p < %g)" % (1 - o["ci"])
    elif o["ci_high"] < 0 and sig:
        v = "the objective ranks subnets WORSE than chance (CI below 0, permutation p < %g)" % (1 - o["ci"])
    else:
        v = "no evidence that the objective ranks subnets (CI covers 0 or permutation p >= %g)" % (
            1 - o["ci"]
        )
    if d["ci_low"] > 0:
        v += "; it ranks better than MACs alone"
    elif d["ci_high"] < 0:
        v += "; MACs alone rank better"
    elif math.isfinite(d["tau"]):
        v += "; not distinguishable from MACs alone"
    else:
        v += "; MACs do not rank (all scores or all MACs equal)"
    lines.append("verdict: " + v)
    return lines


def ties_note(scores: Sequence[float]) -> Optional[str]:
    """A warning when several subnets share one score (typically the majority-class accuracy of
    students that did not learn the task): tau then rests on the few that differ."""
    from collections import Counter

    val, k = Counter(round(float(v), 9) for v in scores).most_common(1)[0]
    if k < 2:
        return None
    return (
        f"{k} of {len(scores)} subnets have the same score {val:.4f} (a constant predictor such as the "
        f"majority class?): the ranking rests on the other {len(scores) - k}; fine-tune longer"
    )


# --- the bench --------------------------------------------------------------------------------
def _load(cfg: BenchConfig):
    from autodistil.io import file_sha256
    from autodistil.nn.checkpoint import WEIGHTS, read_meta
    from autodistil.pipeline import RunConfig
    from autodistil.search.run import HeldoutLoss, load_search_inputs

    folder = Path(cfg.supernet)
    meta = read_meta(folder)  # clear errors for a folder that is no supernet
    train = (meta.get("extra") or {}).get("train") or {}
    run = RunConfig()  # the main job's defaults
    corpus = cfg.corpus or train.get("corpus") or run.train.corpus
    seq_len = int(train.get("seq_len") or run.train.seq_len)
    blocks = cfg.heldout_blocks or run.search.heldout_blocks
    nets, _, teacher, held, tok, head_dim = load_search_inputs([folder], None, corpus, blocks, seq_len)
    model, spaces, meta = nets[0]
    obj = HeldoutLoss.for_supernet(model, meta, teacher, held)
    ident = {
        "supernet": str(folder.resolve()),
        "supernet_sha256": file_sha256([folder / WEIGHTS]),
        "corpus": corpus,
        "seq_len": seq_len,
        "heldout_blocks": blocks,
        "heldout_used": len(held),
    }
    return model, spaces, meta, obj, tok, head_dim, ident


def _finetune_one(
    cfg: BenchConfig, model, sub, tok, seq_len: int, work: Path, ft_seed: int, sha: str
) -> dict:
    from autodistil.data.tasks import DataConfig
    from autodistil.export import export_subnet
    from autodistil.finetune.train import FinetuneConfig, finetune

    name = sub["name"]
    folder = work / "students" / sha[:16] / name  # a reused export is this supernet's
    if not (folder / "config.json").is_file():  # atomic: a folder that exists is complete
        export_subnet(
            model, sub["cfg"], folder, tok, seq_len, extra={"space": sub["space"], "bench": "objective_rank"}
        )
    kd = (
        dict(teacher=str(cfg.teacher_ft), kd_alpha=cfg.kd_alpha)
        if cfg.teacher_ft and cfg.kd_alpha > 0
        else {}
    )
    ft_dir = work / "finetuned" / f"{name}-seed{ft_seed}"
    fc = FinetuneConfig(
        model=str(folder),
        data=DataConfig(task=cfg.task),
        out_dir=str(ft_dir),
        lr=cfg.lr,
        batch_size=cfg.batch,
        epochs=cfg.epochs,
        max_seq_len=cfg.max_seq_len,
        seed=ft_seed,
        max_train_examples=cfg.max_train_examples,
        max_eval_examples=cfg.max_eval_examples,
        **kd,
    )
    r = finetune(fc)
    if not cfg.keep_models:
        shutil.rmtree(ft_dir, ignore_errors=True)
    return {k: v for k, v in r.items() if k not in ("log", "config", "model")} | {
        "finetune_config": asdict(fc)
    }


def _check_resumed(path: Path, rec: dict, want: dict) -> None:
    """A reused result must come from the same supernet weights, held-out data and recipe (the
    supernet's path may differ: its weights' hash decides)."""
    strip = lambda d: {k: v for k, v in (d or {}).items() if k != "supernet"}
    got = {"identity": strip(rec.get("identity")), "recipe": rec.get("recipe")}
    want = {"identity": strip(want["identity"]), "recipe": want["recipe"]}
    bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    if bad:
        raise ValueError(
            f"{path} was made with other settings {bad} (found, wanted); use another --out "
            f"or delete it to redo that run"
        )


def run_bench(cfg: BenchConfig, log=print) -> dict:
    import torch
    from autodistil.cost import exact_cost
    from autodistil.io import atomic_write_json, read_json
    from autodistil.search.run import candidate_name
    from tqdm.auto import tqdm

    t0 = time.time()
    out = Path(cfg.out)
    work = Path(cfg.work) if cfg.work else ROOT / "runs" / "objective_rank" / out.name
    if cfg.teacher_ft:
        tf = Path(cfg.teacher_ft)
        if not (tf / "config.json").is_file():
            raise FileNotFoundError(f"--teacher-ft {tf} is not a fine-tuned model folder (no config.json)")
        fr = tf / "finetune_results.json"
        done = read_json(fr).get("task") if fr.is_file() else None
        if done not in (None, cfg.task):
            raise ValueError(f"--teacher-ft {tf} was fine-tuned on '{done}', not on --task {cfg.task}")
    model, spaces, meta, obj, tok, head_dim, ident = _load(cfg)
    vocab, seq_len = model.config.vocab_size, ident["seq_len"]
    log(f"supernet {cfg.supernet}: {', '.join(s.describe() for s in spaces)}")
    log(
        f"objective weights {obj.w.__dict__} ({obj.note}); {ident['heldout_used']} held-out blocks "
        f"of {seq_len}"
    )
    loss_cache, cost_cache = {}, {}

    def loss(c):
        if c not in loss_cache:
            loss_cache[c] = obj(c)
        return loss_cache[c]

    def cost(c):
        if c not in cost_cache:
            cost_cache[c] = exact_cost(c, head_dim, seq_len, vocab)
        return cost_cache[c]

    key = (lambda _s, c: loss(c)) if cfg.stratify == "loss" else (lambda _s, c: cost(c).macs)
    t_pool = time.time()
    if cfg.subnets_from:
        earlier = read_earlier(cfg.subnets_from)
        chosen = subnets_from(cfg.subnets_from, spaces, earlier)
        if pairing(earlier) != pairing({"recipe": cfg.recipe(), "config": asdict(cfg)}):
            log(
                f"warning: {cfg.subnets_from} was fine-tuned with another recipe or seeds; "
                f"--compare will refuse to pair the two runs"
            )
        for r in chosen:
            r["key"] = float(key(r["space"], r["cfg"]))
            if not math.isfinite(r["key"]):
                raise ValueError(
                    f"key of {r['space']} {r['cfg'].short()} is {r['key']}: a finite number is needed"
                )
        pool = chosen
    else:
        chosen, pool = choose_subnets(spaces, cfg.n, key, cfg.pool, cfg.seed, progress=True)
    pool_s = time.time() - t_pool
    subs = []
    for r in chosen:
        c = r["cfg"]
        d = {"space": r["space"], **c.as_dict()}
        subs.append(
            {
                "name": candidate_name(d),
                "space": r["space"],
                "cfg": c,
                "pool_rank": r["rank"],
                "from_pool_rank": r.get("from_pool_rank"),
                "heldout_loss": loss(c),
                "macs": cost(c).macs,
                "params": cost(c).params,
            }
        )
    how = (
        f"from {cfg.subnets_from}"
        if cfg.subnets_from
        else f"by {cfg.stratify} quantiles of a pool of {len(pool)}"
    )
    log(f"chosen {how} ({pool_s:.0f} s): " + ", ".join(s["name"] for s in subs))
    want = {"identity": ident, "recipe": cfg.recipe()}
    runs = []
    bar = tqdm([(s, cfg.seed + k) for s in subs for k in range(cfg.seeds)], desc="fine-tuning subnets")
    for sub, ft_seed in bar:
        bar.set_postfix_str(f"{sub['name']} seed {ft_seed}")
        path = out / "subnets" / f"{sub['name']}-seed{ft_seed}.json"
        if path.is_file():
            rec = read_json(path, "subnet result")
            _check_resumed(path, rec, want)
            log(f"{sub['name']} seed {ft_seed}: reused {path}")
        else:
            t = time.time()
            res = _finetune_one(cfg, model, sub, tok, seq_len, work, ft_seed, ident["supernet_sha256"])
            rec = {
                "name": sub["name"],
                "space": sub["space"],
                "subnet": sub["cfg"].as_dict(),
                "seed": ft_seed,
                "heldout_loss": sub["heldout_loss"],
                "macs": sub["macs"],
                "params": sub["params"],
                **want,
                "result": res,
                "seconds": round(time.time() - t, 1),
                "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            atomic_write_json(path, rec)
            log(
                f"{sub['name']} seed {ft_seed}: loss {sub['heldout_loss']:.4f}  "
                f"{res['headline']} {res['score']:.4f}"
                f"  ({rec['seconds']:.0f} s)"
            )
        runs.append(rec)
    if not cfg.keep_models:
        shutil.rmtree(work / "students", ignore_errors=True)
    headline = runs[0]["result"]["headline"]
    rows = []
    for sub in subs:
        rs = [r for r in runs if r["name"] == sub["name"]]
        sc = [r["result"]["score"] for r in rs]
        m = {k: float(np.mean([r["result"]["metrics"][k] for r in rs])) for k in rs[0]["result"]["metrics"]}
        rows.append(
            {
                "name": sub["name"],
                "space": sub["space"],
                **sub["cfg"].as_dict(),
                "pool_rank": sub["pool_rank"],
                **({"from_pool_rank": sub["from_pool_rank"]} if cfg.subnets_from else {}),
                "heldout_loss": sub["heldout_loss"],
                "gmacs": sub["macs"] / 1e9,
                "mparams": sub["params"] / 1e6,
                "score": float(np.mean(sc)),
                "score_sd": float(np.std(sc, ddof=1)) if len(sc) > 1 else None,
                **m,
                "seeds": len(sc),
                "scores": " ".join(f"{s:.4f}" for s in sc),
                "train_seconds": float(sum(r["result"]["train_seconds"] for r in rs)),
            }
        )
    st = objective_rank_stats(
        [r["heldout_loss"] for r in rows],
        [r["gmacs"] for r in rows],
        [r["score"] for r in rows],
        cfg.boot,
        cfg.perm,
        cfg.seed,
    )
    sds = [r["score_sd"] for r in rows if r["score_sd"] is not None]
    pool_losses = [loss_cache[p["cfg"]] for p in pool if p["cfg"] in loss_cache]
    note = ties_note([r["score"] for r in rows])
    res = {
        "bench": "objective_rank",
        "issue": 15,
        "ties_note": note,
        "config": asdict(cfg),
        "identity": ident,
        "recipe": cfg.recipe(),
        "score_metric": headline,
        "objective_weights": obj.w.__dict__,
        "objective_note": obj.note,
        "spaces": [s.to_dict() for s in spaces],
        "stats": st,
        "verdict": verdict(st),
        "seed_noise_sd": float(math.sqrt(np.mean(np.square(sds)))) if sds else None,
        "train_loss": ((meta.get("extra") or {}).get("train") or {}).get("loss"),  # what trained the supernet
        "pool": {"source": "subnets_from", "file": cfg.subnets_from, "size": len(pool)}
        if cfg.subnets_from
        else {
            "size": len(pool),
            "stratify": cfg.stratify,
            "seconds": round(pool_s, 1),
            "key_min": pool[0]["key"],
            "key_max": pool[-1]["key"],
            "loss_min": min(pool_losses) if pool_losses else None,
            "loss_max": max(pool_losses) if pool_losses else None,
        },
        "subnets": rows,
        "device": device_info("cpu"),
        "torch_threads": torch.get_num_threads(),
        "seconds": round(time.time() - t0, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_json(out / "objective_rank.json", json_safe(res))
    write_rows_csv(out / "objective_rank.csv", rows)
    if not cfg.subnets_from:  # with --subnets-from there is no pool: the earlier run's pool.csv holds it
        write_rows_csv(
            out / "pool.csv",
            [
                {
                    "space": p["space"],
                    **p["cfg"].as_dict(),
                    "rank": p["rank"],
                    cfg.stratify: p["key"],
                    "chosen": any(p is c for c in chosen),
                }
                for p in pool
            ],
        )
    plot(res, out / "objective_rank.png")
    return res


def plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from autodistil.io import atomic_save

    rows, st, metric = res["subnets"], res["stats"], res["score_metric"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    panels = [
        (
            axes[0],
            "heldout_loss",
            "held-out distillation loss (search objective; lower = predicted better)",
            "objective",
            "tau(-loss, score)",
        ),
        (
            axes[1],
            "gmacs",
            f"GMACs per sequence (seq {res['identity']['seq_len']})",
            "macs",
            "tau(MACs, score)",
        ),
    ]
    for ax, k, xl, sk, lab in panels:
        xs, ys = [r[k] for r in rows], [r["score"] for r in rows]
        err = [r["score_sd"] or 0.0 for r in rows]
        ax.errorbar(xs, ys, yerr=err if any(err) else None, fmt="o", ms=5, capsize=3)
        one_space = len({r["space"] for r in rows}) == 1
        for i, (r, x, y) in enumerate(zip(rows, xs, ys)):  # alternate offsets: fewer overlapping labels
            point = r["name"][len(r["space"]) + 1 :] if one_space else r["name"]
            ax.annotate(point, (x, y), fontsize=7, xytext=(4, 3 if i % 2 else -9), textcoords="offset points")
        s = {
            k: float("nan") if v is None else v for k, v in st[sk].items()
        }  # None: from the JSON (undefined)
        ax.set(
            xlabel=xl,
            ylabel=f"dev {metric} after fine-tuning",
            title=f"{lab} = {s['tau']:+.3f}  {100 * s['ci']:.0f}% CI "
            f"[{s['ci_low']:+.2f}, {s['ci_high']:+.2f}]"
            f"  p={s['p_two_sided']:.3g}",
        )
        ax.grid(alpha=0.3)
    r = res["recipe"]
    fig.suptitle(
        f"Does the agnostic objective rank subnets? {len(rows)} subnets of "
        f"{Path(res['identity']['supernet']).name}"
        f" ({res['spaces'][0]['name'] if len(res['spaces']) == 1 else 'several spaces'})"
        f"; fine-tune {r['epochs']:g} ep, lr {r['lr']:g}, {r['max_train_examples'] or 'all'} examples"
        f"{', KD a=%g' % r['kd_alpha'] if r['teacher_ft'] else ''}",
        fontsize=10,
    )
    fig.tight_layout()
    atomic_save(Path(path), lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return Path(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = BenchConfig(supernet="")
    ap.add_argument("--supernet", help="a trained supernet folder (supernet.json + .safetensors)")
    ap.add_argument(
        "--compare",
        nargs=2,
        metavar=("A_JSON", "B_JSON"),
        default=None,
        help="no fine-tuning: compare two runs over the same subnets (paired taus and scores) -> "
        "OUT/compare.json",
    )
    ap.add_argument(
        "--teacher-ft", default=None, help="fine-tuned teacher folder: logits KD while fine-tuning"
    )
    ap.add_argument("--kd-alpha", type=float, default=d.kd_alpha, help="KD weight with --teacher-ft")
    ap.add_argument("--n", type=int, default=d.n, help=f"subnets to fine-tune (at least {MIN_SUBNETS})")
    ap.add_argument("--pool", type=int, default=d.pool, help="random subnets the n are spread over")
    ap.add_argument("--stratify", default=d.stratify, choices=("loss", "macs"))
    ap.add_argument("--task", default=d.task)
    ap.add_argument("--epochs", type=float, default=d.epochs)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--batch", type=int, default=d.batch)
    ap.add_argument("--max-seq-len", type=int, default=d.max_seq_len)
    ap.add_argument(
        "--max-train-examples", type=int, default=d.max_train_examples, help="default: the whole split"
    )
    ap.add_argument(
        "--max-eval-examples", type=int, default=d.max_eval_examples, help="default: the whole dev split"
    )
    ap.add_argument(
        "--seeds", type=int, default=d.seeds, help="fine-tuning seeds per subnet (mean score is used)"
    )
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--heldout-blocks", type=int, default=None, help="default: the main job's")
    ap.add_argument("--corpus", default=None, help="default: the supernet's training corpus")
    ap.add_argument("--boot", type=int, default=d.boot)
    ap.add_argument("--perm", type=int, default=d.perm)
    ap.add_argument("--out", default=d.out)
    ap.add_argument(
        "--work", default=None, help="model weights (default runs/objective_rank/<out folder name>)"
    )
    ap.add_argument("--keep-models", action="store_true")
    ap.add_argument(
        "--subnets-from",
        default=None,
        metavar="JSON",
        help="fine-tune the subnets of an earlier run (its objective_rank.json) instead of choosing",
    )
    a = ap.parse_args(argv)
    if a.compare:
        from autodistil.io import atomic_write_json, read_json

        if a.supernet or a.subnets_from:
            ap.error("--compare fine-tunes nothing: leave out --supernet and --subnets-from")
        if a.boot < 2:
            ap.error(f"--boot {a.boot}: at least 2 resamples are needed for a CI")
        c = compare_runs(
            *(read_json(p, "objective_rank result") for p in a.compare), n_boot=a.boot, seed=a.seed
        )
        c["runs"] = list(a.compare)
        atomic_write_json(Path(a.out) / "compare.json", json_safe(c))
        for k in ("a", "b"):
            r = c[k]
            print(
                f"{k}: {r['supernet']}: tau {r['tau']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
                f"mean score {r['mean_score']:.4f}"
            )
        d, m = c["tau_difference"], c["mean_score_difference"]
        print(
            f"tau(b) - tau(a) {d['tau']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]; mean score b - a "
            f"{m['diff']:+.4f} [{m['ci_low']:+.4f}, {m['ci_high']:+.4f}], b higher on "
            f"{m['subnets_b_higher']} of {c['n']}"
        )
        print(f"-> {Path(a.out) / 'compare.json'}")
        return 0
    if not a.supernet:
        ap.error("--supernet is required (unless --compare)")
    try:
        cfg = BenchConfig(**{k.replace("-", "_"): v for k, v in vars(a).items() if k != "compare"})
    except ValueError as e:
        ap.error(str(e))
    res = run_bench(cfg)
    print()
    print(
        f"{len(res['subnets'])} subnets, score = dev {res['score_metric']} "
        f"(seed noise sd {res['seed_noise_sd'] if res['seed_noise_sd'] is not None else 'n/a (1 seed)'})"
    )
    for r in res["subnets"]:
        print(
            f"  {r['name']:<24} loss {r['heldout_loss']:.4f}  {r['gmacs']:.3f} GMACs  {res['score_metric']} "
            f"{r['score']:.4f}"
        )
    for line in res["verdict"]:
        print(line)
    if res["ties_note"]:
        print("WARNING: " + res["ties_note"])
    print(f"-> {Path(cfg.out) / 'objective_rank.json'} ({res['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
