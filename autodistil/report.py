"""The run report: results.json (every number), report.md (generated from results.json, one function
per section) and PNG plots. The report opens with what to ship: per budget, the fine-tuned folder."""

from __future__ import annotations

import platform
from pathlib import Path

from .cost import exact_cost, paper_cost
from .io import atomic_save, atomic_write_json, atomic_write_text, read_json
from .space import SubnetConfig

# the compared models of one budget: role -> label (report table and plots; the searched student first)
ROLES = {
    "searched": "searched (latency)",
    "first-layers": "teacher's first k layers",
    "flops-search": "FLOPs-constrained search",
}
_MARKERS = {
    "teacher": ("*", "k"),
    "searched": ("o", "C0"),
    "first-layers": ("s", "C1"),
    "flops-search": ("^", "C2"),
}


def budget_holds(ms: float, teacher_ms: float, budget_ms: float, fraction: float | None = None) -> bool:
    """Whether a model timed at `ms` (teacher: `teacher_ms` in the same session) holds its budget. A
    budget given as a fraction of the teacher is judged on the model's latency over the teacher's in
    that session: its ms figure (`budget_ms`) was that fraction of the teacher timed in another
    session (search-time verification), and the machine's speed moves between sessions by more than
    the margins. An explicit budget (fraction None) is absolute: ms <= budget_ms."""
    if fraction:
        return ms / teacher_ms <= fraction
    return ms <= budget_ms


# --- results.json -------------------------------------------------------------------------------
def _latencies(run) -> tuple[dict, bool]:
    """({name: {"ms", "spread_ms"}}, measured): the report's measurement on this machine, or with a
    table from another device the table's predictions (the teacher: its latency in the table)."""
    st = run.state
    meas = st["measure"]
    if not meas.get("skipped"):
        return {k: v for k, v in meas.items() if not k.startswith("_")}, True
    out = {
        "teacher": {"ms": st["profile"]["teacher_ms"], "spread_ms": st["profile"].get("teacher_noise_sd_ms")}
    }
    for group in ("students", "flops_students"):
        for name, s in st["export"].get(group, {}).items():
            out[name] = {"ms": s["predicted_ms"], "spread_ms": None}
    return out, False


def _model_rows(run, lat, head_dim, seq) -> list:
    st, info = run.state, run._teacher()[2]
    ft, ex = st["finetune"], st["export"]
    t_ms = lat["teacher"]["ms"]

    def row(name, sub: SubnetConfig, kind, extra=None):
        e, p = exact_cost(sub, head_dim, seq), paper_cost(sub, seq)
        f = ft[name]
        return {
            "name": name,
            "kind": kind,
            **sub.as_dict(),
            "qkv_width": sub.heads * head_dim,
            "gmacs_exact": e.macs / 1e9,
            "gmacs_paper_formula": p.macs / 1e9,
            "mparams": e.params / 1e6,
            "latency_ms": lat[name]["ms"],
            "latency_spread_ms": lat[name]["spread_ms"],
            "speedup": t_ms / lat[name]["ms"],
            "task": f["task"],
            "headline_metric": f["headline"],
            "score": f["score"],
            "metrics": f["metrics"],
            **(extra or {}),
        }

    t = ft["teacher"]
    models = [
        row(
            "teacher",
            info.shape.as_subnet(),
            "teacher",
            {"teacher": info.name, "as_is": bool(t.get("as_is")), "folder": t.get("folder")},
        )
    ]
    for group in ("students", "flops_students"):
        for name, s in ex.get(group, {}).items():
            if any(m["name"] == name for m in models):
                continue  # the FLOPs search chose the searched student itself
            models.append(
                row(
                    name,
                    SubnetConfig.from_dict(s["subnet"]),
                    s.get("kind", "searched"),
                    {
                        "space": s["space"],
                        "budgets": s["budgets"],
                        "predicted_ms": s["predicted_ms"],
                        "heldout_loss": s["heldout_loss"],
                        "folder": s["folder"],
                    },
                )
            )
    for name, s in sorted(ex.get("first_layers", {}).items()):
        models.append(
            row(
                name,
                info.shape.as_subnet(s["layers"]),
                "first-layers",
                {"folder": s["folder"], "budgets": s["budgets"], "verified_ms": s["verified_ms"]},
            )
        )
    return models


def _comparison(run, by_name, t_ms, holds, frac) -> list:
    st, ex = run.state, run.state["export"]
    first_for = st["search"].get("first_layers_for", {})  # baseline (a), chosen at search time
    chosen_first = {label: n for n, s in ex.get("first_layers", {}).items() for label in s["budgets"]}
    teacher_score = by_name["teacher"]["score"]
    out = []
    for label, b in sorted(st["search"]["best"].items(), key=lambda kv: kv[1]["budget_ms"]):
        entries = [
            ("searched", next(n for n, s in ex["students"].items() if label in s["budgets"])),
            ("first-layers", chosen_first.get(label)),
        ]
        fl = [n for n, s in ex.get("flops_students", {}).items() if label in s["budgets"]]
        entries.append(("flops-search", fl[0] if fl else None))
        rows = []
        for role, name in entries:
            if name is None:
                why = (first_for.get(label) or {}).get("message") if role == "first-layers" else None
                rows.append({"role": role, "name": None, "why": why})
                continue
            m = by_name[name]
            rows.append(
                {
                    "role": role,
                    "name": name,
                    "measured_ms": m["latency_ms"],
                    "vs_teacher": m["latency_ms"] / t_ms,
                    "score": m["score"],
                    "metrics": m["metrics"],
                    "share_of_teacher": m["score"] / teacher_score if teacher_score else None,
                    "within_budget": holds(m["latency_ms"], b),
                    "within_budget_ms": m["latency_ms"] <= b["budget_ms"],
                }
            )
        out.append(
            {
                "budget": label,
                "budget_ms": b["budget_ms"],
                "fraction_judged": frac(b) is not None,
                "fraction": b.get("fraction", b["budget_ms"] / st["profile"]["teacher_ms"]),
                "rows": rows,
            }
        )
    return out


def _budget_rows(run, lat, t_ms, holds, frac) -> list:
    st, ex = run.state, run.state["export"]
    out = []
    for name, s in ex["students"].items():
        for label in s["budgets"]:
            b = st["search"]["best"][label]
            m = lat[name]["ms"]
            fr = frac(b)
            here = fr * t_ms if fr else b["budget_ms"]  # the budget in this measurement's terms
            out.append(
                {
                    "budget": label,
                    "budget_ms": b["budget_ms"],
                    "student": name,
                    "predicted_ms": s["predicted_ms"],
                    "corrected_ms": b.get("corrected_ms"),
                    "verified_ms": s.get("verified_ms"),
                    "verify_margin_ms": b.get("margin_ms"),
                    "verified_use": b.get("use"),  # mean over its sessions of (measured + margin) / budget
                    "verified_share": b.get("share")
                    or (s["verified_ms"] / b["budget_ms"] if s.get("verified_ms") else None),
                    "measured_ms": m,
                    "measured_noise_sd_ms": lat[name]["spread_ms"],
                    "fraction": fr,
                    "budget_here_ms": fr * t_ms if fr else None,
                    "vs_teacher_here": m / t_ms,
                    "share_of_budget": m / here,
                    "holds": holds(m, b),
                    "holds_ms": m <= b["budget_ms"],
                }
            )
    for u in st["search"].get("unmet_budgets", []):
        out.append(
            {
                "budget": f"latency<={u['budget_ms']:g}ms",
                "budget_ms": u["budget_ms"],
                "student": None,
                "predicted_ms": None,
                "corrected_ms": None,
                "verified_ms": None,
                "verify_margin_ms": None,
                "verified_use": None,
                "verified_share": None,
                "measured_ms": None,
                "measured_noise_sd_ms": None,
                "fraction": None,
                "budget_here_ms": None,
                "vs_teacher_here": None,
                "share_of_budget": None,
                "holds": False,
                "holds_ms": False,
                "message": u["message"],
            }
        )
    return sorted(out, key=lambda b: b["budget_ms"])


def measure_command(run) -> str:
    """The command that judges the shipped students on the target device (teacher in the same rounds)."""
    return (
        f"autodistil measure --table {Path(run.state['profile']['table']).name} --teacher TEACHER_FOLDER "
        f"--ship ship --out measured.json"
    )


def collect_results(run) -> dict:
    st, cfg = run.state, run.cfg
    info = run._teacher()[2]
    head_dim, seq = info.shape.head_dim, cfg.profile.seq_len
    lat, measured = _latencies(run)
    t_ms = lat["teacher"]["ms"]
    models = _model_rows(run, lat, head_dim, seq)
    by_name = {m["name"]: m for m in models}
    fractional = not cfg.search.latency_ms  # budgets are fractions of the teacher timed with the students
    frac = lambda b: b.get("fraction") if b.get("fraction_given", fractional) else None  # noqa: E731
    holds = lambda ms, b: budget_holds(ms, t_ms, b["budget_ms"], frac(b))  # noqa: E731
    ship = st.get("ship") or {}
    return {
        "budgets": _budget_rows(run, lat, t_ms, holds, frac),
        "comparison": _comparison(run, by_name, t_ms, holds, frac),
        "objective": st["search"].get("objective"),
        "latency_measured_here": measured,
        "measure_session": (st["measure"] or {}).get("_session"),
        "verification": {
            "teacher_ms": st["search"].get("verification_teacher_ms"),
            "noise": st["search"].get("verification_noise"),
            "drift": st["search"].get("verification_drift"),
            "sessions": st["search"].get("verification_sessions") or [],
            "rounds": st["search"].get("verification_rounds") or {},
            "correction": st["search"].get("verification_correction"),
            "cross_session_sd_pct": st["search"].get("verification_cross_session_sd_pct"),
            "verify_rounds": cfg.search.verify_rounds,
            "prediction_margin": st["search"].get("prediction_margin"),
        },
        "latency_statistic": _statistic(cfg, st),
        "profile": {
            k: st["profile"].get(k)
            for k in ("profile_seconds", "noise", "calibration", "teacher_ms", "foreign", "device", "source")
        },
        "ship": {
            "budgets": ship.get("budgets", []),
            "students": ship.get("students", {}),
            "measure_command": None if measured else measure_command(run),
        },
        "finetune": {
            "seq_len": st["finetune"].get("_seq_len"),
            "task": st["finetune"]["teacher"].get("task"),
        },
        "config": cfg.to_dict(),
        "checks": run.inputs,
        "machine": {"cpu": _cpu(), "python": platform.python_version(), **_versions()},
        "teacher": {"name": info.name, "shape": info.shape.__dict__, "latency_ms": t_ms},
        "supernets": st["train"]["summary"],
        "search": {
            k: st["search"].get(k)
            for k in ("budgets_ms", "skipped_budgets_ms", "skipped_fractions", "front_size", "evaluations")
        },
        "latency_table": st["profile"]["table"],
        "models": models,
    }


def _statistic(cfg, st) -> dict:
    """What a budget bounds: the statistic of per-call latency the table predicts, and where it holds."""
    from .latency.predict import LatencyTable
    from .latency.profile import stat_label

    try:
        t = LatencyTable.load(st["profile"]["table"])
        sett, key = t.settings, t.key
    except (OSError, ValueError, KeyError):
        sett, key = {}, {}
    stat = sett.get("stat", cfg.search.latency_stat)
    return {
        "stat": stat,
        "label": stat_label(stat, sett.get("low_pct", 10.0)),
        "batch": sett.get("batch"),
        "seq_len": sett.get("seq_len"),
        "threads": key.get("threads"),
        "runtime": sett.get("runtime"),
        "dtype": sett.get("dtype"),
        "device": key.get("device_name"),
    }


def statistic_sentence(s: dict) -> str:
    """One sentence: what the latency figures and budgets are."""
    threads = f", {s['threads']} thread{'s' if s['threads'] != 1 else ''}" if s.get("threads") else ""
    return (
        f"Every latency here is {s['label']} of one forward call (batch {s.get('batch')}, seq len "
        f"{s.get('seq_len')}{threads}, `{s.get('runtime')}` {s.get('dtype')}): the statistic the latency "
        f"table predicts, verification measures and every budget bounds (`--latency-stat`, default "
        f"median)."
    )


def _cpu():
    from .machine import cpu_model

    return cpu_model()


def _versions():
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


# --- report.md ----------------------------------------------------------------------------------
f2 = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731


def _header(res) -> list:
    c, models = res["config"], res["models"]
    teacher = models[0]
    tc, pc, sc = c["train"], c["profile"], c["search"]
    budgets = (
        "as given"
        if sc.get("latency_ms")
        else f"{', '.join(f'{f:g}' for f in sc['budget_fractions'])} x the teacher's latency"
    )
    where = (
        f"the table profiled on {res['profile'].get('device')}"
        if res["profile"].get("foreign")
        else f"this machine ({res['machine']['cpu']})"
    )
    L = [
        "# AutoDistil run report\n",
        f"Teacher **{res['teacher']['name']}** ({teacher['layers']} layers, hidden {teacher['hidden']}, "
        f"{teacher['heads']} heads x {teacher['qkv_width'] // teacher['heads']}); K={len(res['supernets'])} "
        f"supernets ({', '.join(res['supernets'])}) distilled for {tc['steps']} sandwich steps on "
        f"`{tc['corpus']}` text (seq len {tc['seq_len']}, batch {tc['batch_size']}, init from {tc['init']}); "
        "students chosen by held-out distillation loss under latency budgets "
        f"{', '.join(f'{b:.2f} ms' for b in res['search']['budgets_ms'])} ({budgets}); all fine-tuned on "
        f"`{res['finetune']['task']}`. Latency: {where}, runtime `{pc['runtime']}`, {pc['dtype']}, batch "
        f"{pc['batch']}, seq len {pc['seq_len']}, "
        f"{(res.get('latency_statistic') or {}).get('label', 'the median')} of one call"
        + (f" (torch {res['machine']['torch']})." if not res["profile"].get("foreign") else ".")
        + "\n",
    ]
    if sc.get("plain_only"):
        L.append("Plain shapes only (`--plain-only`): every student loads without autodistil.\n")
    if res["search"]["skipped_budgets_ms"]:
        fr = res["search"].get("skipped_fractions")
        L.append(
            "Budgets no student could meet (skipped, by the table's prediction for the smallest student): "
            + (f"{', '.join(f'{f:g}x' for f in fr)} the profiled teacher (" if fr else "")
            + f"{', '.join(f'{b:.2f}' for b in res['search']['skipped_budgets_ms'])} ms"
            + (")" if fr else "")
            + ".\n"
        )
    return L


def _ship_section(res) -> list:
    ship = res.get("ship") or {}
    if not ship.get("budgets"):
        return []
    L = [
        "## What to ship\n",
        "Per budget, a fine-tuned classifier folder (head, label names, tokenizer) that "
        "`AutoModelForSequenceClassification.from_pretrained(folder)` loads:\n",
        "| budget | folder | class | needs `import autodistil` | "
        + f"{res['models'][0]['headline_metric']} | "
        "latency (ms) | ONNX |",
        "|---|---|---|---|---|---|---|",
    ]
    lat = {m["name"]: m["latency_ms"] for m in res["models"]}
    for b in ship["budgets"]:
        s = ship["students"][b["student"]]
        onnx = "-" if not s.get("onnx") else f"model.onnx (max diff {s['onnx']['max_rel_diff']:.1e})"
        label = (
            f"{b['fraction']:g}x = {b['budget_ms']:.2f} ms"
            if b.get("fraction")
            else f"{b['budget_ms']:.2f} ms"
        )
        L.append(
            f"| {label} | `{b['folder']}` | {s.get('model_class') or '-'} | "
            f"{'yes' if s.get('needs_autodistil') else 'no'} | {s['score']:.4f} | "
            f"{lat[b['student']]:.2f} | {onnx} |"
        )
    if ship.get("measure_command"):
        L.append(
            "\nNot measured on the target: the latency column is the table's prediction. On the target, "
            f"with the run's `ship/` folder and the table beside it, run\n\n    {ship['measure_command']}\n\n"
            "It times the teacher and every shipped student in the same rounds and says, per budget, "
            "whether it holds (a budget in ms is judged at the table's speed, through the teacher)."
        )
    L.append("")
    return L


def _budgets_section(res) -> list:
    measured = res.get("latency_measured_here", True)
    col = "measured here (ms)" if measured else "predicted (ms, target's table)"
    L = [
        "## Latency budgets: predicted, corrected, verified at search time, measured for this report\n"
        if measured
        else "## Latency budgets: predicted from the target's table\n"
    ]
    if res.get("latency_statistic"):
        L.append(statistic_sentence(res["latency_statistic"]) + "\n")
    L += [
        f"| budget (ms) | student | predicted (ms) | corrected (ms) | verified at search (ms) | {col} | "
        f"share of budget | holds | budget here (ms) | x teacher here |",
        "|---" * 10 + "|",
    ]
    frac_of = lambda b: f"{b['fraction']:g}x = " if b.get("fraction") else ""  # noqa: E731
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for b in res.get("budgets", []):
        L.append(
            f"| {frac_of(b)}{b['budget_ms']:.2f} | {b['student'] or 'none: ' + b.get('message', '')} | "
            f"{f2(b['predicted_ms'])} | {f2(b.get('corrected_ms'))} | {f2(b['verified_ms'])} | "
            f"{f2(b['measured_ms'])} | {pct(b.get('share_of_budget')) if measured else '-'} | "
            f"{'yes' if b['holds'] else 'no'} | {f2(b.get('budget_here_ms'))} | "
            + ("-" if b.get("vs_teacher_here") is None else f"{b['vs_teacher_here']:.3f}")
            + " |"
        )
    teacher = res["models"][0]
    if not measured:
        m = (res.get("verification") or {}).get("prediction_margin")
        L.append(
            f"\nChosen by prediction on the target's table with a {100 * (m or 0):.1f}% margin (the table's "
            f"measured prediction error); nothing here was timed on the target.\n"
        )
        return L
    over_ms = [b for b in res.get("budgets", []) if b.get("fraction") and b["student"] and not b["holds_ms"]]
    if any(b.get("fraction") for b in res.get("budgets", [])):
        over = ", ".join(
            f"{b['student']} {b['measured_ms']:.2f} > {b['budget_ms']:.2f} (the teacher ran "
            f"{teacher['latency_ms'] / (b['budget_ms'] / b['fraction']):.3f}x its time in that session "
            f"here)"
            for b in over_ms
        )
        L.append(
            f"\nA budget given as a fraction of the teacher is judged in the session its model is "
            f"timed in: the model's latency over the teacher's, both measured here, against the "
            f"fraction (budget here = fraction x the teacher here, {teacher['latency_ms']:.2f} ms; "
            f"share of budget = measured here / budget here); the budget's ms figure is that fraction "
            f"of the teacher timed in the verification session its student was chosen in."
            + (f" Against those ms figures: {over}." if over else "")
        )
    ms = res.get("measure_session") or {}
    sd = ms.get("noise", {}).get("sd_pct", float("nan"))
    L.append(
        f"\nPredicted: the latency table; corrected: the table corrected from the candidates measured "
        f"at search time, for the session that offered the student (see below; - where session 1 "
        f"offered it); verified: measured end to end at search time in the choice's latest session, the "
        f"best candidate whose (measured latency + margin) / budget averaged over its sessions is within 1 "
        f"(that session alone may be over); measured here: a separate measurement "
        f"in a fresh process for this report (noise sd of that statistic {sd:.2f}%, machine speed vs "
        f"profiling {ms.get('drift', float('nan')):.3f}x)."
    )
    v = res.get("verification") or {}
    if v.get("teacher_ms"):
        L.append(
            f" The teacher ran {res['profile']['teacher_ms']:.2f} ms when profiled (the search's provisional "
            f"budgets), {v['teacher_ms']:.2f} ms in the first search-time verification session and "
            f"{teacher['latency_ms']:.2f} ms in this report's."
        )
    if v.get("drift"):
        L.append(
            f" Machine speed vs profiling (the anchor) in the first verification session: {v['drift']:.3f}x."
        )
    L.append("")
    L += _rounds_section(v)
    return L


def _rounds_section(v: dict) -> list:
    """Each verification session: the correction the search ran under, its offers, the choice after it."""
    sessions, rounds = v.get("sessions") or [], v.get("rounds") or {}
    if not sessions:
        return []
    L = [
        "### Verification sessions: the search corrected by what it measured\n",
        f"Session 1 timed the best candidates near each budget by the table's prediction. After each "
        f"session a correction of the table was fitted on every candidate measured so far (none, one "
        f"factor, one per space, or scale plus a fixed cost per call, chosen by leave-one-out error); the "
        f"search ran again under it and the next session timed its new candidates whose corrected "
        f"prediction lay within the correction's measured error above the budget, until the choice no "
        f"longer changed (at most {v.get('verify_rounds', len(sessions))} sessions); each session also "
        f"timed every budget's current choice and the candidates waiting to be confirmed again (the last "
        f"allowed session offers nothing new); a choice holds when the mean over the sessions it was timed "
        f"in (two or more where any holds) of (measured latency + margin) / that session's budget is "
        f"within 1, so one session alone may be over; the margin is no smaller than the cross-session sd "
        f"of a model's latency relative to the teacher "
        f"({(v.get('cross_session_sd_pct') or float('nan')):.1f}% here). Measured: the choice's latest "
        f"session; share: measured / the budget of its session, the mean over the sessions the choice was "
        f"timed in.\n",
        "| session | models timed | teacher (ms) | budgets (ms) | correction the search ran under |",
        "|---|---|---|---|---|",
    ]
    for s in sessions:
        c = s.get("correction")
        L.append(
            f"| {s['round']} | {s.get('models_timed', '-')} | {f2(s.get('teacher_ms'))} | "
            f"{', '.join(f'{b:.2f}' for b in s.get('budgets_ms') or [])} | "
            f"{c['text'] if c else 'none (the table as profiled)'} |"
        )
    fin = v.get("correction")
    if fin:
        loo = ", ".join(f"{k} {100 * x['mape']:.1f}%" for k, x in (fin.get("loo") or {}).items())
        L.append(
            f"\nFitted on every candidate measured: {fin['text']}"
            + (f"; leave-one-out MAPE {loo}" if loo else "")
            + ".\n"
        )
    L += [
        "| budget | session | offered | choice after the session | predicted (ms) | corrected (ms) | "
        "measured, latest session (ms) | mean share of its budget |",
        "|---" * 8 + "|",
    ]
    for label, hist in rounds.items():
        for h in hist:
            p = h.get("pick") or {}
            since = f" (session {p['round']})" if p and p.get("round") != h["round"] else ""
            share = "-" if h.get("share") is None else f"{100 * h['share']:.1f}%"
            L.append(
                f"| {label} | {h['round']} | {len(h.get('offered') or [])} | "
                f"{p.get('name') or 'none holds'}{since} | {f2(p.get('predicted_ms'))} | "
                f"{f2(p.get('corrected_ms'))} | {f2(p.get('measured_ms'))} | {share} |"
            )
    L.append("")
    return L


def _comparison_section(res) -> list:
    if not res.get("comparison"):
        return []
    c, models = res["config"], res["models"]
    ft = c["finetune"]
    metric = models[0]["headline_metric"]
    extra = [k for k in models[0]["metrics"] if k != metric]
    L = [
        "## Students vs baselines at equal latency\n",
        "Per budget: (c) the student of the latency-constrained agnostic search, (a) the teacher's first k "
        "layers with k the largest that holds the budget by the students' rule (timed with the finalists in "
        "every verification session; the mean of latency + margin over budget within 1), (b) the student of "
        "the FLOPs-constrained search at the same fraction of the teacher's MACs. All fine-tuned with one "
        f"recipe (lr {ft['lr']:g}, {ft['epochs']:g} epoch{'' if ft['epochs'] == 1 else 's'}, logits "
        f"distillation weight {ft['kd_alpha']:g} from the fine-tuned teacher, seed {c['seed']}). One seed."
        + (
            " Fits: for a budget given as a fraction, x teacher <= that fraction; otherwise ms <= budget ms."
            if any(cmp.get("fraction_judged") for cmp in res["comparison"])
            else ""
        )
        + "\n",
        f"| budget (ms) | budget x teacher | model | role | latency (ms) | x teacher | fits | {metric} | "
        + "".join(f"{k} | " for k in extra)
        + f"share of teacher {metric} |",
        "|---|---|---|---|---|---|---|---|" + "---|" * len(extra) + "---|",
    ]
    for cmp in res["comparison"]:
        for r in cmp["rows"]:
            head = f"| {cmp['budget_ms']:.2f} | {cmp['fraction']:.2f} | "
            if r["name"] is None:
                why = (
                    "off (baselines=false)"
                    if not c["search"].get("baselines", True)
                    else (r.get("why") or "none fits")
                )
                L.append(
                    head + f"{why} | {ROLES[r['role']]} | - | - | - | - | " + "- | " * len(extra) + "- |"
                )
                continue
            share = "-" if r["share_of_teacher"] is None else f"{100 * r['share_of_teacher']:.1f}%"
            L.append(
                head + f"{r['name']} | {ROLES[r['role']]} | {r['measured_ms']:.2f} | {r['vs_teacher']:.3f} | "
                f"{'yes' if r['within_budget'] else 'no'} | {r['score']:.4f} | "
                + "".join(f"{r['metrics'][k]:.4f} | " for k in extra)
                + f"{share} |"
            )
    L.append("")
    obj = res.get("objective") or {}
    if obj:
        o = next(iter(obj.values()))
        L.append(
            "Search objective: held-out distillation loss with the supernets' trained loss weights "
            f"({o.get('source')}; relation {o['weights']['relation']:g}, "
            f"attention {o['weights']['attention']:g}"
            + (
                f"; hidden-state / logits terms dropped: {o['dropped']}, the hidden-state projection is not "
                f"exported"
                if o.get("dropped")
                else ""
            )
            + ").\n"
        )
    return L


def _cost_section(res) -> list:
    L = [
        "## Students and their cost\n",
        "| model | layers | hidden | MLP ratio | heads | exact GMACs | paper-formula GMACs | params (M) | "
        "latency (ms) | speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for m in res["models"]:
        L.append(
            f"| {m['name']} | {m['layers']} | {m['hidden']} | {m['ffn_ratio']:g} | {m['heads']} | "
            f"{m['gmacs_exact']:.3f} | {m['gmacs_paper_formula']:.3f} | {m['mparams']:.2f} | "
            f"{m['latency_ms']:.2f} | {m['speedup']:.2f}x |"
        )
    stat = (res.get("latency_statistic") or {}).get("label", "the median")
    how = (
        f"end-to-end forward of the exported Hugging Face folder in a fresh process, {stat} of all runs "
        "of interleaved time-based rounds, normalised by an anchor model"
        if res.get("latency_measured_here", True)
        else "predicted from the target device's table (the teacher: timed in that table's session)"
    )
    L.append(f"\nLatency: {how}. GMACs: multiply-accumulates per sequence (the paper's 'FLOPs').\n")
    return L


def _task_section(res) -> list:
    models = res["models"]
    teacher = models[0]
    metric = teacher["headline_metric"]
    extra = [k for k in teacher["metrics"] if k != metric]
    seq = (res.get("finetune") or {}).get("seq_len") or {}
    how = ""
    if seq.get("auto"):
        a = seq["auto"]
        how = (
            f" Sequence length {seq['max_seq_len']} tokens (auto: holds {100 * a['coverage']:.2f}% of the "
            f"{a['examples']} train examples whole)."
        )
    elif seq.get("max_seq_len"):
        how = f" Sequence length {seq['max_seq_len']} tokens."
    as_is = (
        " The teacher was already fine-tuned on the task: used as it is, not trained."
        if teacher.get("as_is")
        else ""
    )
    L = [
        f"## Task results: `{res['finetune']['task']}` dev\n",
        (how + as_is).strip() + "\n" if how or as_is else "",
        f"| model | GMACs | params (M) | {metric} | "
        + " | ".join(extra)
        + (" | " if extra else "")
        + f"{metric} vs teacher | speed-up |",
        "|---|---|---|---|" + "---|" * len(extra) + "---|---|",
    ]
    for m in models:
        ex = " | ".join(f"{m['metrics'][k]:.4f}" for k in extra)
        L.append(
            f"| {m['name']} | {m['gmacs_exact']:.3f} | {m['mparams']:.2f} | {m['score']:.4f} | "
            + (ex + " | " if extra else "")
            + f"{m['score'] - teacher['score']:+.4f} | {m['speedup']:.2f}x |"
        )
    searched = [m for m in models if m["kind"] == "searched"]
    if searched:
        s = min(searched, key=lambda m: m["latency_ms"])
        L.append(
            f"\nThe smallest student ({s['name']}) runs {s['speedup']:.2f}x faster than the teacher "
            f"({s['latency_ms']:.2f} vs {teacher['latency_ms']:.2f} ms) at {metric} {s['score']:.4f} vs "
            f"{teacher['score']:.4f}.\n"
        )
    return L


def _training_section(res) -> list:
    L = [
        "## Plots\n",
        "![score vs latency](score_vs_latency.png)\n\n![score vs FLOPs](score_vs_flops.png)\n\n"
        "![search Pareto front](search/pareto.png)\n",
        "## Supernet training (held-out distillation loss, first -> last evaluation)\n",
        "| space | steps | largest | smallest | random |",
        "|---|---|---|---|---|",
    ]
    for name, s in res["supernets"].items():
        fe, le = s.get("first_eval") or {}, s.get("final_eval") or {}
        L.append(
            f"| {name} | {s['steps']} | "
            + " | ".join(
                f"{fe.get(k, float('nan')):.4f} -> {le.get(k, float('nan')):.4f}"
                for k in ("largest", "smallest", "random")
            )
            + " |"
        )
    L.append("\nAll numbers come from `results.json` in this folder.\n")
    return L


SECTIONS = (
    _header,
    _ship_section,
    _budgets_section,
    _comparison_section,
    _cost_section,
    _task_section,
    _training_section,
)


def render_markdown(res: dict) -> str:
    return "\n".join(line for section in SECTIONS for line in section(res))


def plot_scores(res: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    lat_label = (
        "measured latency (ms)" if res.get("latency_measured_here", True) else "predicted latency (ms)"
    )
    for key, xlabel, fname in (
        ("latency_ms", lat_label, "score_vs_latency.png"),
        ("gmacs_exact", "GMACs per sequence", "score_vs_flops.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        seen = set()
        for m in res["models"]:
            mk, col = _MARKERS.get(m["kind"], ("o", "C0"))
            lab = ROLES.get(m["kind"], m["kind"])
            ax.scatter(
                [m[key]],
                [m["score"]],
                marker=mk,
                c=col,
                s=140 if mk == "*" else 50,
                zorder=3,
                label=None if lab in seen else lab,
            )
            seen.add(lab)
            ax.annotate(
                m["name"], (m[key], m["score"]), fontsize=7, xytext=(4, 4), textcoords="offset points"
            )
        st = sorted((m for m in res["models"] if m["kind"] == "searched"), key=lambda m: m[key])
        ax.plot([m[key] for m in st], [m["score"] for m in st], "C0--", lw=0.8)
        ax.legend(fontsize=7, loc="lower right")
        ax.set(
            xlabel=xlabel,
            ylabel=f"{res['models'][0]['task']} dev {res['models'][0]['headline_metric']}",
            title="students vs teacher",
        )
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
