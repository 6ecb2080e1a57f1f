"""Does the importance-ordered ("rewired") teacher initialisation give better subnets?

    python -m experiments.rewire_init [--steps 0] [--spaces tiny small base] [--eval-blocks 32]
        [--ablations] [--out JSON]

For the default teacher and its teacher-derived spaces: the held-out distillation loss of the
smallest, the largest and 4 random subnets of each space's supernet right after the teacher
initialisation, plain (leading slices of the teacher as it is), rewired (as the trainer does it:
the last teacher layer's heads, which the loss reads, keep the teacher's order), and reversed
(every ordering least important first, a control). Two losses: the default LossWeights (relation
loss on the last layer's Q/K/V, what training and search use) and the last layer's attention-map
loss.
--ablations adds the full rewiring (the last layer's heads reordered too) and rewiring of one
part only (hidden features, heads, FFN neurons). With --steps N > 0 also after
N training steps of the supernet (the real trainer, plain and rewired).
It also lists the parameters that get no gradient from one backward of the largest subnet under
the default loss (relation only) and with the hidden-state loss at weight 1.
Writes --out (default experiments/results/<today>_rewire_init/rewire_init.json)."""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from autodistil.machine import device_info
from experiments.common import dated


def _variants(rw, ablations: bool):
    """`rw`: the full importance orderings (every layer's heads included). "rewired" is what the
    trainer uses (the last teacher layer's heads, the layer the loss reads, in the teacher's
    order); controls: the reversed full order; with `ablations` also the full order (all heads
    rewired) and each part alone."""
    from autodistil.nn.rewire import Rewiring

    out = {"rewired": rw.keep_heads([-1]), "reversed": rw.reversed()}
    if ablations:
        ident = lambda p: torch.arange(p.numel())
        heads_id, ffn_id = [ident(p) for p in rw.heads], [ident(p) for p in rw.ffn]
        out.update(
            all_heads_rewired=rw,
            hidden_only=Rewiring(rw.hidden, heads_id, ffn_id, "hidden only"),
            heads_only=Rewiring(ident(rw.hidden), rw.heads, ffn_id, "heads only (every layer)"),
            ffn_only=Rewiring(ident(rw.hidden), heads_id, rw.ffn, "FFN only"),
        )
    return out


def _trainer(cfg, space, teacher, info, train, held, out, rewiring=None):
    from autodistil.distill.train import SupernetTrainer

    meta = {"name": info.name, "sha256": info.sha256, "head_dim": info.shape.head_dim}
    return SupernetTrainer(cfg, space, teacher, meta, train, held, out, rewiring=rewiring)


class HeldoutEval:
    """Held-out distillation losses with the teacher's outputs computed once for every supernet,
    variant and space: the default LossWeights (relation loss on the last layer's Q/K/V, as
    search.run.HeldoutLoss) and, with `attention`, the last layer's attention-map loss
    (LossWeights(relation=0, attention=1)) as a second view."""

    def __init__(self, teacher, held, batch: int = 16, attention: bool = True):
        from types import SimpleNamespace
        from autodistil.distill.losses import LossWeights

        self.weights = {"relation": LossWeights()}
        if attention:
            self.weights["attention_map"] = LossWeights(relation=0.0, attention=1.0)
        n = len(held)
        self.batches = []
        with torch.no_grad():
            for s in range(0, n, batch):
                ids, mask = held.batch(torch.arange(s, min(n, s + batch)))
                t = teacher(ids, mask, output_qkv=True, output_attentions=attention)
                last = SimpleNamespace(
                    qkv=(t.qkv[-1],), attentions=(t.attentions[-1],) if attention else None
                )
                self.batches.append((ids, mask, last))  # the losses read the last layer only

    @torch.no_grad()
    def __call__(self, model, subnets: dict) -> dict:
        """{loss name: {subnet name: mean over held-out batches}}."""
        from autodistil.distill.losses import combined_loss

        model.eval()
        att = "attention_map" in self.weights
        out = {k: {} for k in self.weights}
        for name, cfg in subnets.items():
            tot = {k: 0.0 for k in self.weights}
            for ids, mask, t_out in self.batches:
                s_out = model(ids, mask, subnet=cfg, output_qkv=True, output_attentions=att)
                for k, w in self.weights.items():
                    tot[k] += float(combined_loss(w, t_out, s_out, mask)[0])
            for k in self.weights:
                out[k][name] = round(tot[k] / len(self.batches), 5)
        return out


def _no_grad_params(tr, ids, mask, sub) -> dict:
    """Names of the parameters with no gradient (None) or an all-zero one after one backward of
    `sub`'s loss (the trainer's own member loss)."""
    tr.model.train()
    for p in tr.model.parameters():
        p.grad = None
    t_out = tr._teacher_out(ids, mask)
    loss, parts = tr._member_loss(ids, mask, t_out, sub)
    loss.backward()
    none, zero = [], []
    for n, p in tr.model.named_parameters():
        if p.grad is None:
            none.append(n)
        elif not bool(p.grad.ne(0).any()):
            zero.append(n)
    return {
        "loss_parts": {k: float(v) for k, v in parts.items()},
        "none": none,
        "zero": zero,
        "n_params": sum(1 for _ in tr.model.parameters()),
        "n_without_grad": len(none) + len(zero),
    }


def main(argv=None):
    from autodistil.data.text import corpus_blocks
    from autodistil.distill.losses import LossWeights
    from autodistil.distill.train import TrainConfig
    from autodistil.io import atomic_write_json
    from autodistil.nn import TeacherNet
    from autodistil.nn.rewire import importance_rewiring
    from autodistil.space import derive_spaces
    from autodistil.teacher import DEFAULT_TEACHER, load_teacher

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=DEFAULT_TEACHER)
    ap.add_argument("--corpus", default="treebank")
    ap.add_argument("--spaces", nargs="+", default=["tiny", "small", "base"])
    ap.add_argument("--steps", type=int, default=0, help="supernet training steps after init (0: init only)")
    ap.add_argument("--n-random", type=int, default=4, help="random subnets per space")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--eval-blocks", type=int, default=32)
    ap.add_argument("--max-train-blocks", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-attention-map", action="store_true", help="only the relation loss (faster)")
    ap.add_argument(
        "--ablations",
        action="store_true",
        help="also rewire one part only (hidden / heads / FFN), and all but the last layer's heads",
    )
    ap.add_argument(
        "--out",
        default=None,
        help="the JSON to write (default experiments/results/<today>_rewire_init/rewire_init.json)",
    )
    a = ap.parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(a.seed)
    hf, tok, info = load_teacher(a.teacher)
    teacher = TeacherNet(hf, info.shape)
    train, held = corpus_blocks(a.corpus, tok, a.seq_len, a.max_train_blocks, a.eval_blocks, a.seed)
    base_cfg = TrainConfig(
        teacher=a.teacher,
        corpus=a.corpus,
        spaces=tuple(a.spaces),
        seq_len=a.seq_len,
        steps=max(1, a.steps),
        seed=a.seed,
        eval_every=10**9,
        ckpt_every=10**9,
        eval_blocks=a.eval_blocks,
        max_train_blocks=a.max_train_blocks,
    )
    t0 = time.perf_counter()
    from autodistil.distill.train import REWIRE_BLOCKS

    rw = importance_rewiring(teacher, train, REWIRE_BLOCKS, a.seed)
    rewire_s = time.perf_counter() - t0
    print(f"rewiring: {rw.note}: {rewire_s:.2f} s", flush=True)
    variants = _variants(rw, a.ablations)
    spaces = derive_spaces(info.shape, tuple(a.spaces))
    res = {
        "device": device_info("cpu"),
        "args": vars(a),
        "teacher": {"name": info.name, "sha256": info.sha256, "shape": info.shape.__dict__},
        "loss_weights": LossWeights().__dict__,
        "heldout_blocks": len(held),
        "train_blocks": len(train),
        "rewiring": {
            "note": variants["rewired"].note,
            "seconds": round(rewire_s, 3),
            "hidden_top16": rw.hidden[:16].tolist(),
            "heads_by_importance": [p.tolist() for p in rw.heads],
        },
        "spaces": {},
    }
    ids, mask = train.batch(torch.arange(min(len(train), base_cfg.batch_size)))
    t0 = time.perf_counter()
    evaluate = HeldoutEval(teacher, held, attention=not a.no_attention_map)
    print(f"teacher outputs on {len(held)} held-out blocks: {time.perf_counter() - t0:.1f} s", flush=True)
    tmp_dir = tempfile.TemporaryDirectory(prefix="rewire_init_")  # trainer folders: nothing kept
    tmp = Path(tmp_dir.name)
    for name, space in spaces.items():
        rng = random.Random(a.seed + 101)
        subnets = {"smallest": space.smallest(), "largest": space.largest()}
        seen = set(subnets.values())
        for _ in range(1000):  # distinct random subnets
            if len(subnets) == 2 + a.n_random:
                break
            c = space.sample(rng)
            if c not in seen:
                seen.add(c)
                subnets[f"random{len(subnets) - 1}"] = c
        row = {
            "space": space.to_dict(),
            "subnets": {k: v.short() for k, v in subnets.items()},
            "init": {},
            "trained": {},
            "train_s": {},
        }
        for label in ("plain", *variants):
            cfg = replace(base_cfg, rewire=label != "plain", out_dir=str(tmp / name / label))
            tr = _trainer(cfg, space, teacher, info, train, held, tmp / name / label, variants.get(label))
            row["init"][label] = evaluate(tr.model, subnets)
            for loss, v in row["init"][label].items():
                print(
                    f"{name} init {label:15s} {loss:13s} " + " ".join(f"{k} {x:.4f}" for k, x in v.items()),
                    flush=True,
                )
            if a.steps > 0 and label in ("plain", "rewired"):
                t1 = time.perf_counter()
                tr.train()
                row["train_s"][label] = round(time.perf_counter() - t1, 1)
                row["trained"][label] = evaluate(tr.model, subnets)
                for loss, v in row["trained"][label].items():
                    print(
                        f"{name} after {a.steps} steps {label:8s} {loss:13s} "
                        + " ".join(f"{k} {x:.4f}" for k, x in v.items()),
                        flush=True,
                    )
        # which weights get no gradient (largest subnet, one batch), default loss vs hidden-state loss
        row["no_grad"] = {}
        for lw_name, lw in (
            ("relation_only", LossWeights()),
            ("relation_and_hidden_1", LossWeights(hidden=1.0)),
        ):
            cfg = replace(base_cfg, loss=lw, out_dir=str(tmp / name / lw_name))
            tr = _trainer(cfg, space, teacher, info, train, held, tmp / name / lw_name, variants["rewired"])
            row["no_grad"][lw_name] = _no_grad_params(tr, ids, mask, space.largest())
            print(
                f"{name} no gradient with {lw_name}: {row['no_grad'][lw_name]['n_without_grad']} of "
                f"{row['no_grad'][lw_name]['n_params']} parameters",
                flush=True,
            )
        row["init_ratio_to_plain"] = {
            v: {
                loss: {s: round(row["init"][v][loss][s] / row["init"]["plain"][loss][s], 4) for s in subnets}
                for loss in row["init"][v]
            }
            for v in row["init"]
            if v != "plain"
        }
        res["spaces"][name] = row
    tmp_dir.cleanup()
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    out = Path(a.out) if a.out else dated("rewire_init") / "rewire_init.json"
    atomic_write_json(out, res)
    print(f"-> {out} ({res['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
