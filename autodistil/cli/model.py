"""Commands on the search space and on single students: space, cost, export, consolidate."""

from __future__ import annotations

import json
import sys

from ..space import SubnetConfig
from .common import add_space_source_args, add_subnet_args, spaces_for, subnet_from_args


def cmd_space(a):
    rows = []
    for n, s in spaces_for(a).items():
        print(s.describe())
        print(
            f"  largest  {s.largest().short()}   smallest {s.smallest().short()}   max FFN width {s.max_ffn}"
        )
        rows.append(
            {
                "name": n,
                **s.to_dict(),
                "size": len(s),
                "largest": s.largest().as_dict(),
                "smallest": s.smallest().as_dict(),
            }
        )
    if a.json:
        print(json.dumps(rows, indent=2))


def cmd_cost(a):
    from ..cost import exact_cost, paper_cost

    cfg = SubnetConfig(a.L, a.H, a.R, a.A)
    p, e = paper_cost(cfg, a.seq_len), exact_cost(cfg, a.head_dim, a.seq_len)
    w = a.A * a.head_dim
    print(f"subnet {cfg.short()}, seq len {a.seq_len} (FLOPs are multiply-accumulates, MACs, per sequence)")
    print(f"  paper formula : {p.gmacs:.3f} GMACs  {p.mparams:.2f}M params  (Q/K/V width taken as H*A/12)")
    print(
        f"  exact (ours)  : {e.gmacs:.3f} GMACs  {e.mparams:.2f}M params  "
        f"(Q/K/V width {a.A}x{a.head_dim}={w})"
    )


def cmd_export(a):
    from ..export import export_onnx, export_subnet
    from ..nn import load_supernet

    model, spaces, meta = load_supernet(a.supernet)
    cfg = subnet_from_args(a)
    if not any(cfg in s for s in spaces) and not a.allow_outside_space:
        raise ValueError(
            f"subnet {cfg.short()} is in none of the checkpoint's spaces "
            f"({'; '.join(s.describe() for s in spaces)}); pass --allow-outside-space to export anyway"
        )
    tok = None
    tname = meta.get("teacher", {}).get("path") or meta.get("teacher", {}).get("name")
    if tname:
        try:
            from transformers import AutoTokenizer
            from ..teacher import resolve_teacher_path

            tok = AutoTokenizer.from_pretrained(resolve_teacher_path(tname))
        except Exception as e:  # the weights still export; say why the tokenizer did not
            print(f"autodistil: note: tokenizer of teacher '{tname}' not copied ({e})", file=sys.stderr)
    out = export_subnet(model, cfg, a.out, tokenizer=tok)
    print(f"exported {cfg.short()} -> {out}")
    if a.onnx:
        print(f"onnx -> {export_onnx(out)}")


def cmd_consolidate(a):
    from ..distill.train import consolidate_zero

    print(f"consolidated -> {consolidate_zero(a.run, a.out)}")


def register(sub):
    s = sub.add_parser("space", help="print the subspaces (derived from a teacher, or the paper's)")
    add_space_source_args(s)
    s.add_argument("--json", action="store_true", help="also print the spaces as JSON")
    s.set_defaults(fn=cmd_space)

    c = sub.add_parser(
        "cost", help="FLOPs (MACs) and params of a subnet: the paper's formula and the exact count"
    )
    c.add_argument("L", type=int, help="number of encoder layers")
    c.add_argument("H", type=int, help="hidden size")
    c.add_argument("R", type=float, help="MLP ratio")
    c.add_argument("A", type=int, help="attention heads")
    c.add_argument("--head-dim", type=int, default=64, help="width of one head (default: 64, BERT-base)")
    c.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: 128)")
    c.set_defaults(fn=cmd_cost)

    e = sub.add_parser("export", help="export one subnet of a supernet checkpoint as a Hugging Face folder")
    e.add_argument("--supernet", required=True, help="folder with supernet.safetensors + supernet.json")
    add_subnet_args(e)
    e.add_argument("--out", required=True, help="the folder to write")
    e.add_argument("--onnx", action="store_true", help="also write model.onnx (the encoder)")
    e.add_argument(
        "--allow-outside-space",
        action="store_true",
        help="export a subnet in none of the checkpoint's spaces too",
    )
    e.set_defaults(fn=cmd_export)

    z = sub.add_parser(
        "consolidate", help="a DeepSpeed ZeRO checkpoint -> supernet.safetensors + supernet.json"
    )
    z.add_argument(
        "--run", required=True, help="a space's training folder (holds state/zero and supernet.json)"
    )
    z.add_argument("--out", required=True, help="the supernet folder to write")
    z.set_defaults(fn=cmd_consolidate)
