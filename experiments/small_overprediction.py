"""Why are small students over-predicted by the latency table? (issue 29, item 2)

    python experiments/small_overprediction.py --out experiments/results/DATE-small-overprediction
        [--threads 0] [--n 12] [--conditions short long short+big]

First a table is profiled in a fresh process, as `autodistil profile` does (default spaces, settings and
teacher), keeping every raw run of that session (OUT/profile_session.json.gz). Then each condition runs in
a fresh process and times, in one interleaved session with the table's anchor (raw runs kept too):

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
and compares every model's latency over the session's anchor between the protocols. It does so twice
from the same raw runs: with each model's median over all its runs alike ("runs", a fast round of a
short model holding more runs than a slow one) and with every round alike ("rounds"); the table is
refitted from the profile session's runs for each (`build_table(replay=...)`).
Raw: OUT/table.json, OUT/*_session.json.gz, OUT/<condition>.json, OUT/summary.json, OUT/summary.csv."""

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

# how each model's runs become its statistic: (weighting, anchor points smoothed by a running median of 3)
WEIGHTINGS = {"runs": ("runs", False), "rounds": ("rounds", False), "rounds+median3": ("rounds", True)}
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
    rest = studs[n // 2 :]
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
        spec = (
            ModelSpec(0, cfg.hidden, cfg.heads if cls == "bert" else 1, cfg.hidden, cls)
            if d == 0
            else ModelSpec(d, cfg.hidden, cfg.heads, cfg.ffn, cls)
        )
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


def save_session(path: Path, sess, names: dict | None = None) -> None:
    """The raw runs of a session (gzip JSON): per model its runs per round and their times, and the anchor."""
    import gzip

    t0 = sess.series[0][0]
    doc = {
        "raw": sess.raw,
        "stamps": {k: [t - t0 for t in v] for k, v in sess.stamps.items()},
        "series": [[t - t0, m] for t, m in sess.series],
        "threads": sess.threads,
        "seconds": sess.seconds,
        "names": names or {},
    }
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as fh:
        json.dump(doc, fh)
    tmp.replace(path)


def median3(series: list) -> list:
    """Each anchor point replaced by the median of itself and its neighbours (the ends kept)."""
    ms = [m for _, m in series]
    return [
        (t, statistics.median(ms[max(0, i - 1) : i + 2]) if 0 < i < len(ms) - 1 else m)
        for i, (t, m) in enumerate(series)
    ]


def load_session(path: Path, stat: str = "median", low_pct: float = 10.0, variant: str = "runs"):
    import gzip
    from autodistil.latency.profile import Session, normalise

    with gzip.open(path, "rt") as fh:
        d = json.load(fh)
    series = [tuple(x) for x in d["series"]]
    weighting, smooth = WEIGHTINGS[variant]
    timings = normalise(
        d["raw"], d["stamps"], median3(series) if smooth else series, stat, low_pct, weighting
    )
    a = [m for _, m in series]
    a_med = statistics.median(a)
    anchor = {"ms": a_med, "series": d["series"], "spread_pct": 100 * (max(a) - min(a)) / a_med}
    return Session(timings, anchor, d["threads"], d["seconds"], False, d["raw"], d["stamps"], series)


def profile_spaces():
    """The spaces and teacher `autodistil profile` takes by default."""
    from autodistil.cli.common import spaces_for
    from autodistil.teacher import DEFAULT_TEACHER

    spaces = list(spaces_for(argparse.Namespace(teacher=DEFAULT_TEACHER, paper=False, space=None)).values())
    return spaces, DEFAULT_TEACHER


def run_profile(threads: int, out: Path) -> None:
    """Profile as `autodistil profile --threads T` does, in this process, keeping the session's raw runs."""
    import autodistil.latency.profile as prof
    from autodistil.cli.latency import _teacher_model

    spaces, teacher = profile_spaces()
    captured = []
    real = prof.measure

    def capture(*a, **kw):
        sess = real(*a, **kw)
        captured.append(sess)
        return sess

    prof.measure = capture
    try:
        table = prof.build_table(
            spaces, prof.ProfileSettings(threads=threads), teacher=(teacher, _teacher_model(teacher))
        )
    finally:
        prof.measure = real
    table.save(out / "table.json")
    save_session(out / "profile_session.json.gz", captured[0])


def refit_table(out: Path, weighting: str):
    """The table refitted from the profile session's raw runs with `weighting`."""
    import autodistil.latency.profile as prof
    from autodistil.latency.predict import LatencyTable

    base = LatencyTable.load(out / "table.json")
    st = prof.ProfileSettings.from_dict(base.settings)
    sess = load_session(out / "profile_session.json.gz", st.stat, st.low_pct, weighting)
    spaces, teacher = profile_spaces()
    t = prof.build_table(
        spaces,
        st,
        vocab=base.vocab,
        grid=tuple(base.meta["grid_points"]),
        teacher=(teacher, None),
        replay=sess,
        device=prof.TorchDevice(st, base.head_dim, base.vocab),
    )
    t.key = base.key
    return t


def run_condition(table_path: Path, name: str, n: int, out: Path) -> dict:
    """Time every model of the condition in this process (one interleaved session) and write OUT/name.json."""
    import dataclasses
    from transformers import AutoModel
    import autodistil  # noqa: F401 - registers AutoDistilBertModel
    from autodistil.io import atomic_write_json
    from autodistil.latency.predict import LatencyTable
    from autodistil.latency.profile import (
        ModelSpec,
        ProfileSettings,
        TorchDevice,
        _loadavg,
        make_student,
        measure,
    )
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
            meta[key] = {
                "space": sname,
                **c.as_dict(),
                "ffn": c.ffn,
                "cls": same.cls,
                "blocks": list(blocks),
                "predicted_ms": table.predict(c),
                "predicted_raw_ms": table.raw(c)[0],
            }
        if name == "short+big":
            specs.update(big_neighbours(table))
        from autodistil.teacher import resolve_teacher_path

        _, teacher = profile_spaces()
        models["teacher"] = AutoModel.from_pretrained(resolve_teacher_path(teacher)).eval()
        runners = {k: dev.runner(m) for k, m in models.items()}
        for k, s in specs.items():
            runners[k] = dev.runner(
                make_student(s.layers, s.hidden, s.heads, s.ffn, table.head_dim, table.vocab, s.cls)
            )
        anchor = ModelSpec(**table.meta["anchor"]["spec"])
        load = _loadavg()
        t0 = time.strftime("%Y-%m-%dT%H:%M:%S")
        sess = measure(runners, st, dev, dev.runner(anchor), seed=0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save_session(out / f"{name}_session.json.gz", sess)
    rec = {
        "condition": name,
        "settings": st.to_dict(),
        "start": t0,
        "end": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loadavg_before": load,
        "loadavg_after": _loadavg(),
        "threads": sess.threads,
        "seconds": sess.seconds,
        "anchor": sess.anchor,
        "table_anchor_ms": table.anchor_ms,
        "noise": sess.noise(),
        "students": meta,
        "depths": table.settings["depths"],
        "models": {k: t.summary() for k, t in sess.timings.items()},
    }
    atomic_write_json(out / f"{name}.json", rec)
    return rec


def ols_at(depths, ys, x):
    n = len(depths)
    mx, my = sum(depths) / n, sum(ys) / n
    s = sum((d - mx) * (y - my) for d, y in zip(depths, ys)) / sum((d - mx) ** 2 for d in depths)
    return my + s * (x - mx)


def summarise(out: Path, conditions: list) -> dict:
    """Per weighting, condition and student: the error split; per model: latency over the anchor in each
    protocol; per weighting: the error's trend with size (small half against large half of the students)."""
    from autodistil.io import atomic_write_json, write_rows_csv
    from autodistil.space import SubnetConfig

    recs = {
        c: json.loads((out / f"{c}.json").read_text()) for c in conditions if (out / f"{c}.json").is_file()
    }
    rows, per_cond, protocol = [], {}, []
    for w in WEIGHTINGS:
        table = refit_table(out, w)
        st = table.settings
        ms_of = {}
        for c, rec in recs.items():
            sess = load_session(out / f"{c}_session.json.gz", st["stat"], st["low_pct"], w)
            ms = {k: t.ms for k, t in sess.timings.items()}
            ms_of[c] = (ms, sess.anchor["ms"])
            drift = sess.anchor["ms"] / table.anchor_ms
            errs = []
            for key, s in rec["students"].items():
                cfg = SubnetConfig(s["layers"], s["hidden"], s["ffn_ratio"], s["heads"])
                e2e, same = ms[f"e2e:{key}"], ms[f"same:{key}"]
                exact = ols_at(rec["depths"], [ms[b] for b in s["blocks"]], s["layers"])
                pred = table.predict(cfg) * drift
                t_here, t_table = ms.get("teacher"), (table.meta.get("teacher") or {}).get("ms")
                frac = (
                    100 * ((table.predict(cfg) / t_table) / (e2e / t_here) - 1)
                    if t_here and t_table
                    else None
                )
                row = {
                    "weighting": w,
                    "condition": c,
                    "student": key,
                    "space": s["space"],
                    "layers": s["layers"],
                    "hidden": s["hidden"],
                    "heads": s["heads"],
                    "ffn": s["ffn"],
                    "cls": s["cls"],
                    "e2e_ms": e2e,
                    "same_ms": same,
                    "exact_regression_ms": exact,
                    "table_ms": pred,
                    "drift": drift,
                    "err_as_is_pct": 100 * (table.predict(cfg) / e2e - 1),
                    "err_total_pct": 100 * (pred / e2e - 1),
                    "err_interpolation_pct": 100 * (pred / exact - 1),
                    "err_depth_regression_pct": 100 * (exact / same - 1),
                    "err_build_vs_export_pct": 100 * (same / e2e - 1),
                    "d0_share_of_e2e": ms[s["blocks"][0]] / e2e,
                    "err_fraction_of_teacher_pct": frac,
                    "teacher_vs_anchor_here": t_here / sess.anchor["ms"] if t_here else None,
                    "teacher_vs_anchor_table": t_table / table.anchor_ms if t_table else None,
                }
                rows.append(row)
                errs.append(row)
            keys = (
                "err_as_is_pct",
                "err_total_pct",
                "err_interpolation_pct",
                "err_depth_regression_pct",
                "err_build_vs_export_pct",
            )
            if errs[0]["err_fraction_of_teacher_pct"] is not None:
                keys += ("err_fraction_of_teacher_pct",)
            order = sorted(errs, key=lambda r: r["e2e_ms"])
            small, large = order[: len(order) // 2], order[len(order) // 2 :]
            mean = lambda rs, k: statistics.mean(r[k] for r in rs)  # noqa: E731
            per_cond[f"{w}/{c}"] = {
                "weighting": w,
                "condition": c,
                "drift": drift,
                "noise_sd_pct": sess.noise()["sd_pct"],
                "loadavg_before": rec["loadavg_before"],
                "start": rec["start"],
                "seconds": rec["seconds"],
                "anchor_spread_pct": rec["anchor"]["spread_pct"],
                "mape_pct": statistics.mean(abs(r["err_total_pct"]) for r in errs),
                "within_10_pct": 100 * sum(abs(r["err_total_pct"]) <= 10 for r in errs) / len(errs),
                **{
                    f"{grp}_{k}": mean(rs, k)
                    for grp, rs in (("small", small), ("large", large), ("all", errs))
                    for k in keys
                },
            }
        if "short" in ms_of:
            base, a_base = ms_of["short"]
            for c, (ms, a) in ms_of.items():
                if c == "short":
                    continue
                rel = {k: (v / a) / (base[k] / a_base) - 1 for k, v in ms.items() if k in base}
                for k, v in sorted(rel.items()):
                    protocol.append(
                        {
                            "weighting": w,
                            "condition": c,
                            "model": k,
                            "short_ms": base[k],
                            "vs_short_pct": 100 * v,
                        }
                    )
                order = sorted((k for k in rel if k.startswith("e2e:")), key=lambda k: base[k])
                h = len(order) // 2
                pc = per_cond[f"{w}/{c}"]
                pc["e2e_vs_short_small_pct"] = 100 * statistics.mean(rel[k] for k in order[:h])
                pc["e2e_vs_short_large_pct"] = 100 * statistics.mean(rel[k] for k in order[h:])
    summary = {"conditions": per_cond, "students": rows, "protocol": protocol}
    atomic_write_json(out / "summary.json", summary)
    write_rows_csv(out / "summary.csv", rows)
    for key, p in per_cond.items():
        pair = lambda k: f"{p['small_' + k]:+.1f} / {p['large_' + k]:+.1f}"  # noqa: E731
        line = (
            f"{key}: drift {p['drift']:.3f}, noise {p['noise_sd_pct']:.2f}%, load {p['loadavg_before']}; "
            f"MAPE {p['mape_pct']:.1f}% ({p['within_10_pct']:.0f}% within 10%); error small / large "
            f"{pair('err_total_pct')}% (as is {pair('err_as_is_pct')}) | interpolation "
            f"{pair('err_interpolation_pct')}, depth regression {pair('err_depth_regression_pct')}, "
            f"build vs export {pair('err_build_vs_export_pct')}"
        )
        if "e2e_vs_short_small_pct" in p:
            line += (
                f"; e2e vs short protocol: small {p['e2e_vs_short_small_pct']:+.1f}%, large "
                f"{p['e2e_vs_short_large_pct']:+.1f}%"
            )
        if "small_err_fraction_of_teacher_pct" in p:
            line += (
                f"; as a fraction of the teacher (table / table's teacher vs e2e / teacher here): "
                f"small / large {pair('err_fraction_of_teacher_pct')}%"
            )
        print(line)
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument(
        "--threads", type=int, default=0, help="profile threads (0: all cores, the run's default)"
    )
    ap.add_argument("--n", type=int, default=12, help="held-out students (half of them the smallest)")
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--condition", default=None, help=argparse.SUPPRESS)  # internal: one step, this process
    ap.add_argument("--summary-only", action="store_true", help="recompute OUT/summary.* from the raw files")
    ap.add_argument("--skip-profile", action="store_true", help="use the table and profile session in OUT")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.summary_only:
        summarise(out, a.conditions)
        return 0
    if a.condition == "profile":
        run_profile(a.threads, out)
        return 0
    if a.condition:
        run_condition(out / "table.json", a.condition, a.n, out)
        return 0
    env = {**os.environ, "TQDM_DISABLE": "1", "TOKENIZERS_PARALLELISM": "false"}
    steps = []
    cmds = [
        (
            c,
            [
                sys.executable,
                __file__,
                "--out",
                str(out),
                "--n",
                str(a.n),
                "--threads",
                str(a.threads),
                "--condition",
                c,
            ],
        )
        for c in [*([] if a.skip_profile else ["profile"]), *a.conditions]
    ]
    for what, cmd in cmds:
        rec = {
            "step": what,
            "cmd": cmd,
            "start": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "loadavg_before": list(os.getloadavg()),
        }
        t = time.time()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rec.update(
            {
                "seconds": round(time.time() - t, 1),
                "loadavg_after": list(os.getloadavg()),
                "rc": r.returncode,
                "stdout": r.stdout[-4000:],
                "stderr_tail": r.stderr[-3000:],
            }
        )
        steps.append(rec)
        print(
            f"[{what}] rc {r.returncode}, {rec['seconds']} s, load {rec['loadavg_before']} -> "
            f"{rec['loadavg_after']}",
            flush=True,
        )
        (out / "run.json").write_text(json.dumps({"steps": steps, "cpu_count": os.cpu_count()}, indent=2))
        if r.returncode:
            print(r.stderr[-3000:], file=sys.stderr)
            return 1
    summarise(out, a.conditions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
