"""Where latency-aware search and FLOPs-constrained search (the paper's) pick different
students at the same budget, measured.

    python bench/latency_vs_flops.py RUN_DIR [--fraction 0.3]

RUN_DIR is an `autodistil run` folder (its supernets, latency table, held-out loss). The
latency budget is `fraction` x the teacher's measured latency; the FLOPs budget is the MACs of
the latency-chosen student, so both searches get "the same budget". Both winners are exported
and measured end to end, interleaved; writes bench/results/latency_vs_flops.json."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, device_info  # noqa: E402


def main(argv=None):
    from transformers import AutoModel
    from autodistil.export import export_subnet
    from autodistil.latency.predict import LatencyTable
    from autodistil.latency.profile import ProfileSettings, make_runner, measure_interleaved
    from autodistil.search.engine import Budget
    from autodistil.space import SubnetConfig
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args(argv)
    run = Path(a.run_dir)
    cands = json.loads((run / "search" / "search.json").read_text())["candidates"]
    stages = json.loads((run / "stages" / "profile.json").read_text())["output"]
    table = LatencyTable.load(stages["table"])
    budget_ms = a.fraction * stages["teacher_ms"]
    lat = min((r for r in cands if r["latency_ms"] <= budget_ms), key=lambda r: r["loss"])
    flops_budget = lat["macs"]
    flo = min((r for r in cands if r["macs"] <= flops_budget), key=lambda r: r["loss"])
    st = ProfileSettings(**{k: v for k, v in table.settings.items()})
    st = ProfileSettings(**{**st.__dict__, "rounds": a.rounds})
    from autodistil.nn import load_supernet
    nets = {}
    for p in sorted((run / "supernets").iterdir()):
        if (p / "supernet.json").is_file():
            m, spaces, _ = load_supernet(p)
            nets[spaces[0].name] = m
    runners, rows = {}, {}
    tmp = Path(tempfile.mkdtemp())
    for tag, r in (("latency-constrained", lat), ("FLOPs-constrained", flo)):
        cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
        f = export_subnet(nets[r["space"]], cfg, tmp / tag)
        runners[tag] = make_runner(AutoModel.from_pretrained(f).eval(), st)
        rows[tag] = {"space": r["space"], "subnet": cfg.short(), "heldout_loss": r["loss"], "gmacs": r["macs"] / 1e9,
                     "mparams": r["params"] / 1e6, "predicted_ms": r["latency_ms"]}
    meas = measure_interleaved(runners, st, desc="measuring")
    for tag in rows:
        rows[tag]["measured_ms"] = meas[tag][0]
        rows[tag]["measured_spread_ms"] = meas[tag][1]
    out = {"device": device_info("cpu"), "latency_budget_ms": budget_ms, "flops_budget_gmacs": flops_budget / 1e9,
           "students": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latency_vs_flops.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
