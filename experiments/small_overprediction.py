"""Why are small students over-predicted by the latency table? (issue 29, item 2)

    python experiments/small_overprediction.py --out experiments/results/DATE-small-overprediction
        [--table TABLE.json] [--threads 0] [--n 12] [--conditions short long short+big]

With no --table, `autodistil profile` (default spaces and settings) builds one in a fresh process first.
Then each condition runs in a fresh process and times, in one interleaved session with the table's anchor:

  e2e:S     held-out student S (`random_students(spaces, 36, seed=1)`, the validation's draw: the `--n`
            smallest by prediction and others spread over the rest), exported from a random supernet and
            loaded back with AutoModel.from_pretrained, as validation and verification time students
  same:S    the same shape built the way the table builds its models (`make_student`, random weights)
  dD:h-a-f  the table's blocks at S's exact (hidden, heads, FFN width) and class, at each profiled depth D
            (0, 2, 4 by default): the depth regression evaluated at S's depth without any interpolation

Conditions (the protocol is the only difference):
  short     the table's protocol (12 interleaved rounds of 0.125 s per model, anchor every 4 models)
  long      the same models, 3 rounds of 1 s per model (longer windows, a third of the switches)
  short+big the table's protocol with the largest grid models of the table's profile session among them
            (what profiling switches between)

The summary splits each student's prediction error (table / e2e - 1, the table rescaled by the session's
anchor so the machine's speed cancels) into: interpolation (table / exact regression), the depth
regression (exact regression / same shape timed at its depth), and building vs exporting (same / e2e);
and compares every model's latency over the session's anchor between the protocols.
Raw: OUT/table.json (when profiled here), OUT/<condition>.json, OUT/summary.json, OUT/summary.csv."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONDITIONS = {
    "short": {},
    "long": {"rounds": 3, "round_s": 1.0, "warmup_s": 0.25},
    "short+big": {},
}


def pick_students(table, spaces, n: int) -> list:
    """The n//2 smallest of the validation's 36 students by predicted latency, and n - n//2 spread over
    the rest."""
    from autodistil.latency.validate import random_students
    studs = sorted(random_students(spaces, 36, seed=1), key=lambda sc: table.predict(sc[1]))
    small = studs[: n // 2]
    rest = studs[n // 2:]
    k = n - n // 2
    idx = sorted({round(i * (len(rest) - 1) / max(1, k - 1)) for i in range(k)})
    return small + [rest[i] for i in idx]


def block_specs(table, cfg):
    """{name: ModelSpec} of the table's blocks at cfg's exact (hidden, heads, FFN width) and class, at each
    profiled depth (depth 0: the table's base model for that hidden and class)."""
    from autodistil.latency.profile import ModelSpec
    cls = "bert" if cfg.heads * table.head_dim == cfg.hidden else "autodistil"
    out = {}
    for d in table.settings["depths"]:
        spec = (ModelSpec(0, cfg.hidden, cfg.heads if cls == "bert" else 1, cfg.hidden, cls) if d == 0
                else ModelSpec(d, cfg.hidden, cfg.heads, cfg.ffn, cls))
        out[f"d{d}:H{cfg.hidden}-A{cfg.heads}-F{cfg.ffn}-{cls}"] = spec
    return out


def big_neighbours(table) -> dict:
    """The largest grid models of the table's profile session (the deepest depth at each space's largest
    hidden and FFN width, both heads values)."""
    from autodistil.latency.profile import ModelSpec
    out = {}
    dmax = max(table.settings["depths"])
    for g in table.grids:
        for a in g["heads"]:
            spec = ModelSpec(dmax, g["hidden"][-1], a, g["ffn"][-1], "autodistil")
            out[f"big:{g['space']}-H{spec.hidden}-A{a}-F{spec.ffn}"] = spec
    return out


def run_condition(table_path: Path, name: str, n: int, out: Path) -> dict:
    """Time every model of the condition in this process (one interleaved session) and write OUT/name.json."""
    import dataclasses
    from transformers import AutoModel
    import autodistil  # noqa: F401 - registers AutoDistilBertModel
    from autodistil.io import atomic_write_json
    from autodistil.latency.predict import LatencyTable
    from autodistil.latency.profile import ModelSpec, ProfileSettings, TorchDevice, _loadavg, make_student, measure
    from autodistil.latency.validate import export_students
    from autodistil.space import SearchSpace
    table = LatencyTable.load(table_path)
    spaces = [SearchSpace.from_dict(d) for d in table.spaces]
    st = dataclasses.replace(ProfileSettings.from_dict(table.settings), **CONDITIONS[name])
    studs = pick_students(table, spaces, n)
    dev = TorchDevice(st, table.head_dim, table.vocab)
    specs, models, meta = {}, {}, {}
    tmp = Path(tempfile.mkdtemp(prefix="smallover-"))
    try:
        folders = export_students(studs, table.vocab, table.head_dim, tmp)
        for sname, c in studs:
            key = f"{sname}-{c.short()}"
            models[f"e2e:{key}"] = AutoModel.from_pretrained(str(folders[(sname, c)])).eval()
            same = ModelSpec(c.layers, c.hidden, c.heads, c.ffn, "auto").resolved(table.head_dim)
            specs[f"same:{key}"] = same
            blocks = block_specs(table, c)
            specs.update(blocks)
            meta[key] = {"space": sname, **c.as_dict(), "ffn": c.ffn, "cls": same.cls, "blocks": list(blocks),
                         "predicted_ms": table.predict(c), "predicted_raw_ms": table.raw(c)[0]}
        if name == "short+big":
            specs.update(big_neighbours(table))
        runners = {k: dev.runner(m) for k, m in models.items()}
        for k, s in specs.items():
            runners[k] = dev.runner(make_student(s.layers, s.hidden, s.heads, s.ffn, table.head_dim, table.vocab,
                                                 s.cls))
        anchor = ModelSpec(**table.meta["anchor"]["spec"])
        load = _loadavg()
        t0 = time.strftime("%Y-%m-%dT%H:%M:%S")
        sess = measure(runners, st, dev, dev.runner(anchor), seed=0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec = {"condition": name, "settings": st.to_dict(), "start": t0, "end": time.strftime("%Y-%m-%dT%H:%M:%S"),
           "loadavg_before": load, "loadavg_after": _loadavg(), "threads": sess.threads, "seconds": sess.seconds,
           "anchor": sess.anchor, "table_anchor_ms": table.anchor_ms, "noise": sess.noise(), "students": meta,
           "depths": table.settings["depths"],
           "models": {k: t.summary() for k, t in sess.timings.items()}}
    atomic_write_json(out / f"{name}.json", rec)
    return rec


def ols_at(depths, ys, x):
    n = len(depths)
    mx, my = sum(depths) / n, sum(ys) / n
    s = sum((d - mx) * (y - my) for d, y in zip(depths, ys)) / sum((d - mx) ** 2 for d in depths)
    return my + s * (x - mx)


def summarise(out: Path, conditions: list) -> dict:
    """Per condition and student: the error split; per model: latency over the anchor in each protocol."""
    from autodistil.io import atomic_write_json, write_rows_csv
    recs = {c: json.loads((out / f"{c}.json").read_text()) for c in conditions if (out / f"{c}.json").is_file()}
    rows, per_cond = [], {}
    for c, rec in recs.items():
        drift = rec["anchor"]["ms"] / rec["table_anchor_ms"]
        ms = {k: v["ms"] for k, v in rec["models"].items()}
        errs = []
        for key, s in rec["students"].items():
            e2e, same = ms[f"e2e:{key}"], ms[f"same:{key}"]
            exact = ols_at(rec["depths"], [ms[b] for b in s["blocks"]], s["layers"])
            table = s["predicted_ms"] * drift
            row = {"condition": c, "student": key, "space": s["space"], "layers": s["layers"], "hidden": s["hidden"],
                   "heads": s["heads"], "ffn": s["ffn"], "cls": s["cls"], "e2e_ms": e2e, "same_ms": same,
                   "exact_regression_ms": exact, "table_ms": table,
                   "err_total_pct": 100 * (table / e2e - 1),
                   "err_interpolation_pct": 100 * (table / exact - 1),
                   "err_depth_regression_pct": 100 * (exact / same - 1),
                   "err_build_vs_export_pct": 100 * (same / e2e - 1),
                   "d0_share_of_e2e": ms[s["blocks"][0]] / e2e}
            rows.append(row)
            errs.append(row)
        small = sorted(errs, key=lambda r: r["e2e_ms"])[: len(errs) // 2]
        large = sorted(errs, key=lambda r: r["e2e_ms"])[len(errs) // 2:]
        mean = lambda rs, k: statistics.mean(r[k] for r in rs)  # noqa: E731
        per_cond[c] = {"drift": drift, "noise_sd_pct": rec["noise"]["sd_pct"], "loadavg_before": rec["loadavg_before"],
                       "start": rec["start"], "seconds": rec["seconds"], "anchor_spread_pct": rec["anchor"]["spread_pct"],
                       **{f"{grp}_{k}": mean(rs, k) for grp, rs in (("small", small), ("large", large), ("all", errs))
                          for k in ("err_total_pct", "err_interpolation_pct", "err_depth_regression_pct",
                                    "err_build_vs_export_pct")}}
    protocol = []
    if "short" in recs:
        base = recs["short"]
        ref = {k: v["ms"] / base["anchor"]["ms"] for k, v in base["models"].items()}
        for c, rec in recs.items():
            if c == "short":
                continue
            rel = {k: (v["ms"] / rec["anchor"]["ms"]) / ref[k] - 1 for k, v in rec["models"].items() if k in ref}
            for k, v in sorted(rel.items()):
                protocol.append({"condition": c, "model": k, "short_ms": base["models"][k]["ms"],
                                 "vs_short_pct": 100 * v})
            studs = [k for k in rel if k.startswith("e2e:")]
            order = sorted(studs, key=lambda k: base["models"][k]["ms"])
            h = len(order) // 2
            per_cond[c]["e2e_vs_short_small_pct"] = 100 * statistics.mean(rel[k] for k in order[:h])
            per_cond[c]["e2e_vs_short_large_pct"] = 100 * statistics.mean(rel[k] for k in order[h:])
    summary = {"conditions": per_cond, "students": rows, "protocol": protocol}
    atomic_write_json(out / "summary.json", summary)
    write_rows_csv(out / "summary.csv", rows)
    for c, p in per_cond.items():
        print(f"{c}: drift {p['drift']:.3f}, noise {p['noise_sd_pct']:.2f}%, load {p['loadavg_before']}; error "
              f"table vs e2e small {p['small_err_total_pct']:+.1f}% large {p['large_err_total_pct']:+.1f}% | "
              f"interpolation {p['small_err_interpolation_pct']:+.1f} / {p['large_err_interpolation_pct']:+.1f}, "
              f"depth regression {p['small_err_depth_regression_pct']:+.1f} / "
              f"{p['large_err_depth_regression_pct']:+.1f}, build vs export {p['small_err_build_vs_export_pct']:+.1f}"
              f" / {p['large_err_build_vs_export_pct']:+.1f}"
              + (f"; e2e vs short protocol: small {p['e2e_vs_short_small_pct']:+.1f}%, large "
                 f"{p['e2e_vs_short_large_pct']:+.1f}%" if "e2e_vs_short_small_pct" in p else ""))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--table", default=None, help="a table of this machine (default: profile one into OUT)")
    ap.add_argument("--threads", type=int, default=0, help="profile threads (0: all cores, the run's default)")
    ap.add_argument("--n", type=int, default=12, help="held-out students (half of them the smallest)")
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--condition", default=None, help=argparse.SUPPRESS)  # internal: one condition, this process
    ap.add_argument("--summary-only", action="store_true", help="recompute OUT/summary.* from the raw files")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.summary_only:
        summarise(out, a.conditions)
        return 0
    if a.condition:
        run_condition(Path(a.table), a.condition, a.n, out)
        return 0
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    steps = []
    table = Path(a.table) if a.table else out / "table.json"
    cmds = []
    if not a.table:
        cmds.append(("profile", [sys.executable, "-m", "autodistil.cli", "profile", "--threads", str(a.threads),
                                 "--out", str(table)]))
    for c in a.conditions:
        cmds.append((c, [sys.executable, __file__, "--out", str(out), "--table", str(table), "--n", str(a.n),
                         "--condition", c]))
    for what, cmd in cmds:
        rec = {"step": what, "cmd": cmd, "start": time.strftime("%Y-%m-%dT%H:%M:%S"),
               "loadavg_before": list(os.getloadavg())}
        t = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rec.update({"seconds": round(time.time() - t, 1), "loadavg_after": list(os.getloadavg()), "rc": r.returncode,
                    "stdout": r.stdout[-4000:], "stderr_tail": r.stderr[-3000:]})
        steps.append(rec)
        print(f"[{what}] rc {r.returncode}, {rec['seconds']} s, load {rec['loadavg_before']} -> "
              f"{rec['loadavg_after']}", flush=True)
        (out / "run.json").write_text(json.dumps({"steps": steps, "cpu_count": os.cpu_count()}, indent=2))
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
    summarise(out, a.conditions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
