"""Where latency-aware search and FLOPs-constrained search (the paper's) pick different
students at the same budget, measured.

    python -m experiments.latency_vs_flops RUN_DIR [--fractions 0.15 0.3 0.5] [--out DIR]

RUN_DIR is a finished `autodistil run` folder (its supernets, latency table, held-out losses of every
candidate, read from search/search.json, stages/profile.json and results.json; the run may be from
an older version: only those files are read). "The same budget" is the same fraction of the
teacher: for each fraction f, the latency-constrained search keeps predicted latency <= f x the
teacher's latency timed at profiling, the FLOPs-constrained one (the paper's) keeps MACs <= f x the
teacher's MACs; both pick the lowest held-out loss, without the run's end-to-end verification.
Every winner is exported and measured end to end, interleaved, with the table's protocol (run on
the machine the table was profiled on); writes DIR/latency_vs_flops.json (DIR defaults to
experiments/results/<today>_latency_vs_flops)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from autodistil.machine import device_info
from experiments.common import dated


def main(argv=None):
    from transformers import AutoModel
    from autodistil.export import export_subnet
    from autodistil.latency.predict import LatencyTable
    from autodistil.latency.profile import ProfileSettings, rounds_for
    from autodistil.pipeline import MEASURE_S
    from autodistil.latency.validate import measure_models
    from autodistil.search.run import candidate_name
    from autodistil.space import SubnetConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.15, 0.3, 0.5])
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="default: the run report's seconds per model (pipeline.MEASURE_S) at the table's round length",
    )
    ap.add_argument("--out", default=None, help="default experiments/results/<today>_latency_vs_flops")
    a = ap.parse_args(argv)
    run = Path(a.run_dir)
    cands = json.loads((run / "search" / "search.json").read_text())["candidates"]
    stages = json.loads((run / "stages" / "profile.json").read_text())["output"]
    table = LatencyTable.load(stages["table"])
    res = json.loads((run / "results.json").read_text())
    teacher = res["models"][0]
    t_ms, t_macs = stages["teacher_ms"], teacher["gmacs_exact"] * 1e9
    picks = []
    for f in a.fractions:
        lat_ok = [r for r in cands if r["latency_ms"] <= f * t_ms]
        flo_ok = [r for r in cands if r["macs"] <= f * t_macs]
        if lat_ok and flo_ok:
            picks.append((f, min(lat_ok, key=lambda r: r["loss"]), min(flo_ok, key=lambda r: r["loss"])))
    import dataclasses

    st = ProfileSettings.from_dict(table.settings)
    st = dataclasses.replace(st, rounds=a.rounds or rounds_for(MEASURE_S, st.round_s))
    from autodistil.nn import load_supernet

    nets = {}
    for p in sorted((run / "supernets").iterdir()):
        if (p / "supernet.json").is_file():
            m, spaces, _ = load_supernet(p)
            nets[spaces[0].name] = m
    runners, rows, tmp = {}, {}, Path(tempfile.mkdtemp())
    for f, lat, flo in picks:
        for r in (lat, flo):
            cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
            key = candidate_name(r)
            if key not in runners:
                folder = export_subnet(nets[r["space"]], cfg, tmp / key)
                runners[key] = AutoModel.from_pretrained(folder).eval()
                rows[key] = {
                    "space": r["space"],
                    "subnet": cfg.short(),
                    "heldout_loss": r["loss"],
                    "gmacs": r["macs"] / 1e9,
                    "mparams": r["params"] / 1e6,
                    "predicted_ms": r["latency_ms"],
                }
    meas = measure_models(runners, table, st)["models"]
    for k in rows:
        rows[k]["measured_ms"], rows[k]["measured_noise_sd_ms"] = meas[k]["ms"], meas[k]["noise_sd_ms"]
    key = candidate_name
    out = {
        "device": device_info("cpu"),
        "teacher_ms": t_ms,
        "teacher_gmacs": t_macs / 1e9,
        "students": rows,
        "budgets": [
            {
                "fraction": f,
                "latency_budget_ms": f * t_ms,
                "flops_budget_gmacs": f * t_macs / 1e9,
                "latency_constrained": key(lat),
                "flops_constrained": key(flo),
            }
            for f, lat, flo in picks
        ],
    }
    from autodistil.io import atomic_write_json

    atomic_write_json((Path(a.out) if a.out else dated("latency_vs_flops")) / "latency_vs_flops.json", out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
