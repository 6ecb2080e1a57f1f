"""The run report: results.json (every number), report.md (the seed's two tables for this
run, in our words, generated from results.json) and PNG plots."""
from __future__ import annotations

import platform
from pathlib import Path

from .cost import exact_cost, paper_cost
from .io import atomic_save, atomic_write_json, atomic_write_text, read_json
from .space import SubnetConfig

# the compared models of one budget: role -> label (report table, plots, bench/students_vs_baselines.py)
ROLES = {"searched": "searched (latency)", "first-layers": "teacher's first k layers",
         "flops-search": "FLOPs-constrained search"}
_MARKERS = {"teacher": ("*", "k"), "searched": ("o", "C0"), "first-layers": ("s", "C1"), "flops-search": ("^", "C2")}


def budget_holds(ms: float, teacher_ms: float, budget_ms: float, fraction: float | None = None) -> bool:
    """Whether a model timed at `ms` (teacher: `teacher_ms` in the same session) holds its budget. A
    budget given as a fraction of the teacher is judged on the model's latency over the teacher's in
    that session: its ms figure (`budget_ms`) was that fraction of the teacher timed in another
    session (search-time verification), and the machine's speed moves between sessions by more than
    the margins. An explicit budget (fraction None) is absolute: ms <= budget_ms."""
    if fraction:
        return ms / teacher_ms <= fraction
    return ms <= budget_ms


def collect_results(run) -> dict:
    st, cfg = run.state, run.cfg
    _, _, info, _ = run._teacher()
    head_dim = info.shape.head_dim
    teacher_cfg = info.shape.as_subnet()
    meas, ft = st["measure"], st["finetune"]
    t_ms = meas["teacher"]["ms"]

    def row(name, sub: SubnetConfig, kind, extra=None):
        e, p = exact_cost(sub, head_dim, cfg.seq_len), paper_cost(sub, cfg.seq_len)
        f = ft[name]
        return {"name": name, "kind": kind, **sub.as_dict(), "qkv_width": sub.heads * head_dim,
                "gmacs_exact": e.macs / 1e9, "gmacs_paper_formula": p.macs / 1e9, "mparams": e.params / 1e6,
                "latency_ms": meas[name]["ms"], "latency_spread_ms": meas[name]["spread_ms"],
                "speedup": t_ms / meas[name]["ms"], "task": f["task"], "headline_metric": f["headline"],
                "score": f["score"], "metrics": f["metrics"], **(extra or {})}

    ex = st["export"]
    models = [row("teacher", teacher_cfg, "teacher", {"teacher": info.name})]
    for group in ("students", "flops_students"):
        for name, s in ex.get(group, {}).items():
            if any(m["name"] == name for m in models):
                continue  # the FLOPs search chose the searched student itself
            sub = SubnetConfig.from_dict(s["subnet"])
            models.append(row(name, sub, s.get("kind", "searched"), {
                "space": s["space"], "budgets": s["budgets"], "predicted_ms": s["predicted_ms"],
                "heldout_loss": s["heldout_loss"], "folder": s["folder"]}))
    first_for = st["search"].get("first_layers_for", {})  # baseline (a), chosen at search time
    chosen_first = {label: n for n, s in ex.get("first_layers", {}).items() for label in s["budgets"]}
    for name, s in sorted(ex.get("first_layers", {}).items()):
        models.append(row(name, info.shape.as_subnet(s["layers"]), "first-layers",
                          {"folder": s["folder"], "budgets": s["budgets"], "verified_ms": s["verified_ms"]}))
    by_name = {m["name"]: m for m in models}
    teacher_row = models[0]
    fractional = not cfg.latency_ms  # budgets are fractions of the teacher timed with the students
    frac = lambda b: b.get("fraction") if b.get("fraction_given", fractional) else None
    holds = lambda ms, b: budget_holds(ms, t_ms, b["budget_ms"], frac(b))
    comparison = []
    for label, b in sorted(st["search"]["best"].items(), key=lambda kv: kv[1]["budget_ms"]):
        entries = [("searched", next(n for n, s in ex["students"].items() if label in s["budgets"]))]
        entries.append(("first-layers", chosen_first.get(label)))
        fl = [n for n, s in ex.get("flops_students", {}).items() if label in s["budgets"]]
        entries.append(("flops-search", fl[0] if fl else None))
        rows = []
        for role, name in entries:
            if name is None:
                why = (first_for.get(label) or {}).get("message") if role == "first-layers" else None
                rows.append({"role": role, "name": None, "why": why})
                continue
            m = by_name[name]
            rows.append({"role": role, "name": name, "measured_ms": m["latency_ms"],
                         "vs_teacher": m["latency_ms"] / t_ms, "score": m["score"], "metrics": m["metrics"],
                         "share_of_teacher": m["score"] / teacher_row["score"] if teacher_row["score"] else None,
                         "within_budget": holds(m["latency_ms"], b),
                         "within_budget_ms": m["latency_ms"] <= b["budget_ms"]})
        comparison.append({"budget": label, "budget_ms": b["budget_ms"], "fraction_judged": frac(b) is not None,
                           "fraction": b.get("fraction", b["budget_ms"] / st["profile"]["teacher_ms"]), "rows": rows})
    train = st["train"]["summary"]
    budgets = []
    for name, s in ex["students"].items():
        for label in s["budgets"]:
            b = st["search"]["best"][label]
            m = meas[name]["ms"]
            fr = frac(b)
            budgets.append({"budget": label, "budget_ms": b["budget_ms"], "student": name,
                            "predicted_ms": s["predicted_ms"], "verified_ms": s.get("verified_ms"),
                            "verify_margin_ms": b.get("margin_ms"), "measured_ms": m,
                            "measured_noise_sd_ms": meas[name]["spread_ms"], "fraction": fr,
                            "budget_here_ms": fr * t_ms if fr else None, "vs_teacher_here": m / t_ms,
                            "holds": holds(m, b), "holds_ms": m <= b["budget_ms"]})
    for u in st["search"].get("unmet_budgets", []):
        budgets.append({"budget": f"latency<={u['budget_ms']:g}ms", "budget_ms": u["budget_ms"], "student": None,
                        "predicted_ms": None, "verified_ms": None, "verify_margin_ms": None, "measured_ms": None,
                        "measured_noise_sd_ms": None, "fraction": None, "budget_here_ms": None,
                        "vs_teacher_here": None, "holds": False, "holds_ms": False, "message": u["message"]})
    budgets.sort(key=lambda b: b["budget_ms"])
    return {"budgets": budgets, "comparison": comparison, "objective": st["search"].get("objective"),
            "measure_session": meas.get("_session"),
            "verification": {"teacher_ms": st["search"].get("verification_teacher_ms"),
                             "noise": st["search"].get("verification_noise"),
                             "drift": st["search"].get("verification_drift"),
                             "second_round": st["search"].get("verification_second_round")}, "profile": {k: st["profile"].get(k) for k in (
                "profile_seconds", "noise", "calibration", "teacher_ms")},
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
            "machine": {"cpu": _cpu(), "python": platform.python_version(), **_versions()},
            "teacher": {"name": info.name, "shape": info.shape.__dict__, "latency_ms": t_ms},
            "supernets": train, "search": {k: st["search"].get(k) for k in (
                "budgets_ms", "skipped_budgets_ms", "skipped_fractions", "front_size", "evaluations")},
            "latency_table": st["profile"]["table"], "models": models}


def _cpu():
    from .latency.profile import cpu_model
    return cpu_model()


def _versions():
    import torch
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def render_markdown(res: dict) -> str:
    c, models = res["config"], res["models"]
    teacher = models[0]
    L = []
    L.append("# AutoDistil run report\n")
    L.append(f"Teacher **{res['teacher']['name']}** ({teacher['layers']} layers, hidden {teacher['hidden']}, "
             f"{teacher['heads']} heads x {teacher['qkv_width'] // teacher['heads']}); K={len(res['supernets'])} "
             f"supernets ({', '.join(res['supernets'])}) distilled for {c['train_steps']} sandwich steps on "
             f"`{c['corpus']}` text (seq len {c['seq_len']}, batch {c['train_batch']}, init from {c['init']}); "
             f"students chosen by held-out distillation loss under latency budgets "
             f"{', '.join(f'{b:.2f} ms' for b in res['search']['budgets_ms'])} ("
             + ("as given" if c.get("latency_ms") else f"{', '.join(f'{f:g}' for f in c['budget_fractions'])} x the "
                f"teacher's latency timed with the students' finalists at search time")
             + f"); all fine-tuned on `{c['task']}`. Machine: {res['machine']['cpu']}, "
             f"torch {res['machine']['torch']}, runtime `{c['runtime']}`, batch {c['batch']}, "
             f"seq len {c['seq_len']}.\n")
    if res["search"]["skipped_budgets_ms"]:
        fr = res["search"].get("skipped_fractions")
        L.append("Budgets no student could meet (skipped, by the table's prediction for the smallest student): "
                 + (f"{', '.join(f'{f:g}x' for f in fr)} the profiled teacher ("
                    if fr else "") + f"{', '.join(f'{b:.2f}' for b in res['search']['skipped_budgets_ms'])} ms"
                 + (")" if fr else "") + ".\n")
    L.append("## Latency budgets: predicted, verified at search time, measured for this report\n")
    L.append("| budget (ms) | student | predicted (ms) | verified at search (ms) | measured here (ms) | holds |"
             " budget here (ms) | x teacher here |")  # a fractional budget's cell reads "0.15x = 6.40"
    L.append("|---|---|---|---|---|---|---|---|")
    f2 = lambda x: "-" if x is None else f"{x:.2f}"
    frac_of = lambda b: f"{b['fraction']:g}x = " if b.get("fraction") else ""
    for b in res.get("budgets", []):
        L.append(f"| {frac_of(b)}{b['budget_ms']:.2f} | {b['student'] or 'none: ' + b.get('message', '')} | "
                 f"{f2(b['predicted_ms'])} | {f2(b['verified_ms'])} | {f2(b['measured_ms'])} | "
                 f"{'yes' if b['holds'] else 'no'} | {f2(b.get('budget_here_ms'))} | "
                 + ("-" if b.get("vs_teacher_here") is None else f"{b['vs_teacher_here']:.3f}") + " |")
    over_ms = [b for b in res.get("budgets", []) if b.get("fraction") and b["student"] and not b["holds_ms"]]
    if any(b.get("fraction") for b in res.get("budgets", [])):
        # each budget's ms figure is its fraction of the teacher timed in the session its student was chosen in
        over = ", ".join(f"{b['student']} {b['measured_ms']:.2f} > {b['budget_ms']:.2f} (the teacher ran "
                         f"{teacher['latency_ms'] / (b['budget_ms'] / b['fraction']):.3f}x its time in that session "
                         f"here)" for b in over_ms)
        L.append(f"\nA budget given as a fraction of the teacher is judged in the session its model is timed in: "
                 f"the model's latency over the teacher's, both measured here, against the fraction (budget here = "
                 f"fraction x the teacher here, {teacher['latency_ms']:.2f} ms); the budget's ms figure is that "
                 f"fraction of the teacher timed in the verification session its student was chosen in."
                 + (f" Against those ms figures: {over}." if over else ""))
    ms = res.get("measure_session") or {}
    L.append(f"\nPredicted: the latency table; verified: the best few candidates near each budget measured end to "
             f"end at search time, the best one whose measured latency plus its noise margin meets the budget "
             f"chosen; measured here: a separate measurement in a fresh process for this report (noise sd of "
             f"that statistic {ms.get('noise', {}).get('sd_pct', float('nan')):.2f}%, machine speed vs profiling "
             f"{ms.get('drift', float('nan')):.3f}x).")
    vt = (res.get("verification") or {}).get("teacher_ms")
    if vt:
        L.append(f" The teacher ran {res['profile']['teacher_ms']:.2f} ms when profiled (the search's provisional "
                 f"budgets), {vt:.2f} ms in the search-time verification session (where the students and the "
                 f"first-k cuts were chosen; fractional budgets are fractions of this) and "
                 f"{teacher['latency_ms']:.2f} ms in this report's.")
    v = res.get("verification") or {}
    if v.get("drift"):
        L.append(f" Machine speed vs profiling (the anchor) in the verification session: {v['drift']:.3f}x.")
    sr = v.get("second_round") or {}
    if sr:
        why = [w for w, on in ((f"predictions scaled by {sr.get('scaled_by', 1.0):.3f}", sr.get("scaled_by", 1.0) != 1.0),
                               ("the budgets moved", sr.get("budgets_moved"))) if on]
        L.append(f" A second session timed the candidates near the budgets that could beat the first one's choice "
                 f"({' and '.join(why) or 'new candidates'}" + (f"; the teacher {sr['teacher_ms']:.2f} ms there, a "
                 f"student chosen there is held to those fractions of it" if sr.get("teacher_ms") else "") + ").")
    L.append("")
    if res.get("comparison"):
        metric = models[0]["headline_metric"]
        extra = [k for k in models[0]["metrics"] if k != metric]
        L.append("## Students vs baselines at equal measured latency\n")
        L.append(f"Per budget: (c) the student of the latency-constrained agnostic search, (a) the teacher's first k "
                 f"layers with k the largest whose latency, measured with the students' finalists at search time, "
                 f"plus its noise margin meets the budget (the students' rule, same session), (b) the student of the "
                 f"FLOPs-constrained search at the same fraction of the teacher's MACs. All fine-tuned with one "
                 f"recipe (lr {c['student_lr']:g}, {c['student_epochs']:g} epoch{'' if c['student_epochs'] == 1 else 's'}, logits distillation weight "
                 f"{c['kd_alpha']:g} from the fine-tuned teacher, seed {c['seed']}); latency from this report's "
                 f"measurement. One seed: see bench/students_vs_baselines.py for the seed noise."
                 + (" Fits: for a budget given as a fraction, x teacher (measured here) <= that fraction; "
                    "otherwise measured ms <= budget ms." if any(cmp.get("fraction_judged") for cmp in res["comparison"])
                    else "") + "\n")
        L.append(f"| budget (ms) | budget x teacher (verification) | model | role | measured (ms) | x teacher (measured) "
                 f"| fits | {metric} | " + "".join(f"{k} | " for k in extra) + f"share of teacher {metric} |")
        L.append("|---|---|---|---|---|---|---|---|" + "---|" * len(extra) + "---|")
        for cmp in res["comparison"]:
            for r in cmp["rows"]:
                head = f"| {cmp['budget_ms']:.2f} | {cmp['fraction']:.2f} | "
                if r["name"] is None:
                    why = "off (baselines=false)" if not c.get("baselines", True) else (r.get("why") or "none fits")
                    L.append(head + f"{why} | {ROLES[r['role']]} | - | - | - | - | " + "- | " * len(extra) + "- |")
                    continue
                share = "-" if r["share_of_teacher"] is None else f"{100 * r['share_of_teacher']:.1f}%"
                L.append(head + f"{r['name']} | {ROLES[r['role']]} | {r['measured_ms']:.2f} | {r['vs_teacher']:.3f} | "
                         f"{'yes' if r['within_budget'] else 'no'} | {r['score']:.4f} | "
                         + "".join(f"{r['metrics'][k]:.4f} | " for k in extra) + f"{share} |")
        L.append("")
    obj = res.get("objective") or {}
    if obj:
        o = next(iter(obj.values()))
        L.append(f"Search objective: held-out distillation loss with the supernets' trained loss weights "
                 f"({o.get('source')}; relation {o['weights']['relation']:g}, attention {o['weights']['attention']:g}"
                 + (f"; hidden-state / logits terms dropped: {o['dropped']}, the hidden-state projection is not "
                    f"exported" if o.get("dropped") else "") + ").\n")
    L.append("## Students and their cost (cf. the seed's architecture table)\n")
    L.append("| model | layers | hidden | MLP ratio | heads | exact GMACs | paper-formula GMACs | params (M) | "
             "latency (ms) | speed-up |")
    L.append("|---|---|---|---|---|---|---|---|---|---|")
    for m in models:
        L.append(f"| {m['name']} | {m['layers']} | {m['hidden']} | {m['ffn_ratio']:g} | {m['heads']} | "
                 f"{m['gmacs_exact']:.3f} | {m['gmacs_paper_formula']:.3f} | {m['mparams']:.2f} | "
                 f"{m['latency_ms']:.2f} | {m['speedup']:.2f}x |")
    L.append("\nLatency: end-to-end forward of the exported Hugging Face folder in a fresh process, median of all "
             "runs of interleaved time-based rounds, normalised by an anchor model. GMACs: multiply-accumulates per "
             "sequence (the paper's 'FLOPs').\n")
    metric = teacher["headline_metric"]
    extra = [k for k in teacher["metrics"] if k != metric]
    L.append(f"## Task results (cf. the seed's GLUE table): `{c['task']}` dev\n")
    L.append(f"| model | GMACs | params (M) | {metric} | " + " | ".join(extra) + (" | " if extra else "")
             + f"{metric} vs teacher | speed-up |")
    L.append("|---|---|---|---|" + "---|" * len(extra) + "---|---|")
    for m in models:
        ex = " | ".join(f"{m['metrics'][k]:.4f}" for k in extra)
        L.append(f"| {m['name']} | {m['gmacs_exact']:.3f} | {m['mparams']:.2f} | {m['score']:.4f} | "
                 + (ex + " | " if extra else "") + f"{m['score'] - teacher['score']:+.4f} | {m['speedup']:.2f}x |")
    searched = [m for m in models if m["kind"] == "searched"]
    smallest = min(searched, key=lambda m: m["latency_ms"]) if searched else None
    if smallest:
        L.append(f"\nThe smallest student ({smallest['name']}) runs {smallest['speedup']:.2f}x faster than the teacher "
                 f"({smallest['latency_ms']:.2f} vs {teacher['latency_ms']:.2f} ms) at {metric} "
                 f"{smallest['score']:.4f} vs {teacher['score']:.4f}.\n")
    L.append("## Plots\n")
    L.append("![score vs latency](score_vs_latency.png)\n\n![score vs FLOPs](score_vs_flops.png)\n\n"
             "![search Pareto front](search/pareto.png)\n")
    L.append("## Supernet training (held-out distillation loss, first -> last evaluation)\n")
    L.append("| space | steps | largest | smallest | random |")
    L.append("|---|---|---|---|---|")
    for name, s in res["supernets"].items():
        fe, le = s.get("first_eval") or {}, s.get("final_eval") or {}
        L.append(f"| {name} | {s['steps']} | " + " | ".join(
            f"{fe.get(k, float('nan')):.4f} -> {le.get(k, float('nan')):.4f}" for k in ("largest", "smallest", "random"))
                 + " |")
    L.append("\nAll numbers come from `results.json` in this folder.\n")
    return "\n".join(L)


def plot_scores(res: dict, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    paths = []
    for key, xlabel, fname in (("latency_ms", "measured latency (ms)", "score_vs_latency.png"),
                               ("gmacs_exact", "GMACs per sequence", "score_vs_flops.png")):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        seen = set()
        for m in res["models"]:
            mk, col = _MARKERS.get(m["kind"], ("o", "C0"))
            lab = ROLES.get(m["kind"], m["kind"])
            ax.scatter([m[key]], [m["score"]], marker=mk, c=col, s=140 if mk == "*" else 50, zorder=3,
                       label=None if lab in seen else lab)
            seen.add(lab)
            ax.annotate(m["name"], (m[key], m["score"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        st = sorted((m for m in res["models"] if m["kind"] == "searched"), key=lambda m: m[key])
        ax.plot([m[key] for m in st], [m["score"] for m in st], "C0--", lw=0.8)
        ax.legend(fontsize=7, loc="lower right")
        ax.set(xlabel=xlabel, ylabel=f"{res['models'][0]['task']} dev {res['models'][0]['headline_metric']}",
               title="students vs teacher")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        p = out / fname
        atomic_save(p, lambda f: fig.savefig(f, format="png", dpi=110))
        plt.close(fig)
        paths.append(p)
    return paths


def write_report(run) -> dict:
    res = collect_results(run)
    out = run.out
    atomic_write_json(out / "results.json", res)
    res = read_json(out / "results.json")  # the report is rendered from exactly what was written
    plot_scores(res, out)
    atomic_write_text(out / "report.md", render_markdown(res))
    return {"report": str(out / "report.md"), "results": str(out / "results.json")}
