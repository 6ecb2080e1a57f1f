"""The search stage of `autodistil run`: budgets (ms, or fractions of the teacher's latency), the
agnostic search over the K supernets, the FLOPs-constrained baseline, and the choice per budget.

On the machine the table was profiled on, the best few candidates near each budget are measured end
to end with the teacher and its first-k-layer cuts in one session (search/verify.py); a correction of
the table is fitted on what they measured, the search runs again under the corrected table, and its
new candidates are measured in another session, until the choice no longer changes (at most
`verify_rounds` sessions). The best candidate whose measured latency plus its noise margin meets the
budget of its session is chosen. With a table from another
device nothing here can be measured on it: each budget is met by prediction with a margin equal to
the table's own measured prediction error (its calibration students, timed end to end when it was
profiled), and the report says that the choice is still to be measured on the target."""

from __future__ import annotations

import math

from ..cost import exact_cost
from .engine import Budget, CountingObjective
from .run import HeldoutLoss, SearchSpec, format_choice, research_fn, search

CHOSEN_KEYS = (
    "space",
    "layers",
    "hidden",
    "ffn_ratio",
    "heads",
    "loss",
    "latency_ms",
    "latency_sd_ms",
    "macs",
    "params",
    "corrected_ms",
    "measured_ms",
    "margin_ms",
    "share",
    "use",
    "sessions",
)


# what the run records of each verification session
SESSION_KEYS = (
    "round",
    "drift",
    "noise",
    "teacher_ms",
    "budgets_ms",
    "budgets_moved",
    "correction",
    "models_timed",
    "retimed",
)


def prediction_margin(table) -> float:
    """The relative margin a prediction-only choice keeps under a budget: the table's calibration error
    (leave-one-out MAPE of the predictor it uses; the raw block-sum MAPE otherwise), at least 2%."""
    cal = table.meta.get("calibration") or {}
    err = cal.get("loo_mape") if cal.get("used") else cal.get("raw_mape")
    return max(0.02, float(err)) if err is not None and math.isfinite(err) else 0.10


def _objectives(nets, teacher, held) -> tuple[list, dict]:
    """[(space, objective)] with each objective's values cached across searches (a search again under the
    corrected table evaluates only subnets it has not seen), and a note of the loss weights per space."""
    pairs, notes = [], {}
    for model, spaces, meta in nets:
        obj = HeldoutLoss.for_supernet(model, meta, teacher, held)
        notes[spaces[0].name] = {"weights": obj.w.__dict__, **obj.note}
        pairs.append((spaces[0], CountingObjective(obj)))
    return pairs, notes


def _flops_baselines(run, usable, fractions, t_ms, nets, info, head_dim, vocab) -> dict:
    """Baseline (b): per latency budget, a MACs budget at the same fraction of the teacher's MACs."""
    c = run.cfg
    seq = c.profile.seq_len
    teacher_macs = exact_cost(info.shape.as_subnet(), head_dim, seq, vocab).macs
    min_macs = min(exact_cost(spaces[0].smallest(), head_dim, seq, vocab).macs for _, spaces, _ in nets)
    flops_for = {}
    for i, b in enumerate(usable):
        m = round((fractions[i] if fractions is not None else b / t_ms) * teacher_macs)
        if m >= min_macs:
            flops_for[Budget(latency_ms=b).label()] = Budget(macs=m, plain=c.search.plain_only)
        else:
            run.log(
                f"[search] no FLOPs baseline for {b:g} ms: {m / 1e9:.3f} GMACs is below the smallest "
                f"subnet's {min_macs / 1e9:.3f}"
            )
    return flops_for, teacher_macs


def _predicted_choice(res, usable, fractions, margin, plain: bool) -> list:
    """Per budget, the best candidate (lowest objective) whose predicted latency x (1 + margin) meets it:
    the same record verify_budgets writes, with nothing measured."""
    out = []
    for i, b in enumerate(usable):
        ok = [
            r for r in res["candidates"] if r["latency_ms"] * (1 + margin) <= b and (r["plain"] or not plain)
        ]
        fr = fractions[i] if fractions is not None else None
        if not ok:
            out.append(
                {
                    "budget_ms": b,
                    "fraction": fr,
                    "met": False,
                    "chosen": None,
                    "message": f"no candidate predicted under {b:g} ms with the table's {100 * margin:.1f}% "
                    f"error margin",
                }
            )
            continue
        ch = min(ok, key=lambda r: (r["loss"], r["latency_ms"]))
        ch = {**ch, "measured_ms": None, "margin_ms": ch["latency_ms"] * margin}
        out.append(
            {
                "budget_ms": b,
                "fraction": fr,
                "met": True,
                "chosen": ch,
                "message": f"predicted {ch['latency_ms']:.2f} ms + {100 * margin:.1f}% margin <= {b:g} ms "
                f"(not measured: the table is from another device)",
            }
        )
    return out


def run_search_stage(run) -> dict:
    from ..data.text import corpus_blocks
    from ..latency.predict import LatencyTable
    from .verify import verify_search

    c, sc = run.cfg, run.cfg.search
    nets = run._supernets()
    table = LatencyTable.load(run.state["profile"]["table"])
    hf, tok, info, teacher = run._teacher()
    _, held = corpus_blocks(
        c.train.corpus,
        tok,
        c.train.seq_len,
        max_train_blocks=1,
        max_eval_blocks=sc.heldout_blocks,
        seed=c.seed,
    )
    t_ms = run.state["profile"]["teacher_ms"]
    budgets_ms = list(sc.latency_ms) or [round(f * t_ms, 3) for f in sc.budget_fractions]
    pairs, notes = _objectives(nets, teacher, held)
    head_dim, vocab = nets[0][0].config.head_dim, nets[0][0].config.vocab_size
    # budgets nobody can meet are reported, not fatal: the others still run
    lo = min(table.predict(spaces[0].smallest()) for _, spaces, _ in nets)
    usable = [b for b in budgets_ms if b >= lo]
    skipped = [b for b in budgets_ms if b < lo]
    # fractions of the teacher: final budgets from the teacher timed with the finalists (verify_budgets)
    fractions = None if sc.latency_ms else [f for f, b in zip(sc.budget_fractions, budgets_ms) if b >= lo]
    if not usable:
        usable, fractions = [round(lo * 1.05, 3)], None
        run.log(f"[search] no budget reachable (smallest student {lo:.2f} ms); using {usable[0]} ms")
    budgets = [Budget(latency_ms=b, plain=sc.plain_only) for b in usable]
    flops_for, teacher_macs = (
        _flops_baselines(run, usable, fractions, t_ms, nets, info, head_dim, vocab)
        if sc.baselines
        else ({}, None)
    )
    if teacher_macs is None:
        teacher_macs = exact_cost(info.shape.as_subnet(), head_dim, c.profile.seq_len, vocab).macs
    res = search(
        pairs,
        table,
        SearchSpec(
            budgets=budgets + list(flops_for.values()),
            method=sc.method,
            seed=c.seed,
            seq_len=c.profile.seq_len,
        ),
        head_dim,
        vocab,
        run.out / "search",
    )
    cands = [r for r in res["candidates"] if r["plain"]] if sc.plain_only else res["candidates"]
    if run.foreign_table:
        margin = prediction_margin(table)
        ver = {
            "budgets": _predicted_choice(res, usable, fractions, margin, sc.plain_only),
            "teacher_ms": None,
            "measurement": {},
            "sessions": [],
            "correction": None,
            "prediction_margin": margin,
        }
        run.log(
            f"[search] the table is from another device: students chosen by prediction with a "
            f"{100 * margin:.1f}% margin (its measured error); measure them there (see the report)"
        )
    else:
        # baseline (a) candidates: the teacher's first k layers, for every k that could fit the largest
        # budget (each layer costs about 1/L of the teacher's latency), timed with the finalists
        L = info.shape.layers
        first_ks = (
            [k for k in range(1, L) if k == 1 or t_ms * k / L <= 1.5 * max(usable)] if sc.baselines else []
        )
        research = research_fn(
            pairs, table, sc.method, c.seed, c.profile.seq_len, head_dim, vocab, sc.plain_only
        )
        ver = verify_search(
            cands,
            usable,
            nets,
            run.state["profile"]["table"],
            run.out / "search",
            top_k=sc.verify_top,
            teacher=info.path,
            first_layers=first_ks,
            fractions=fractions,
            rounds=sc.verify_rounds,
            research=research,
        )
        for i, s_ in enumerate(ver["sessions"]):
            corr = s_["correction"]
            run.log(
                f"[search] verification session {i + 1}: {s_['models_timed']} models timed"
                + (f", candidates offered under the corrected table: {corr['text']}" if corr else "")
            )
        if fractions is not None and ver["teacher_ms"]:
            shown = ", ".join(f"{f:g}x = {b['budget_ms']:g} ms" for f, b in zip(fractions, ver["budgets"]))
            run.log(
                f"[search] teacher {ver['teacher_ms']:.2f} ms in the verification session (profiled "
                f"{t_ms:.2f} ms): budgets {shown}"
            )
    t_ver = ver["teacher_ms"] or t_ms
    best, unmet, first_for, flops_final = {}, [], {}, {}
    for b, requested in zip(ver["budgets"], usable):
        label = Budget(latency_ms=b["budget_ms"]).label()
        if Budget(latency_ms=requested).label() in flops_for:
            flops_final[label] = flops_for[Budget(latency_ms=requested).label()]
        run.log(f"[search] latency<={b['budget_ms']:g}ms: {b['message']}")
        if not b["met"]:
            unmet.append({"budget_ms": b["budget_ms"], "message": b["message"]})
            continue
        ch = b["chosen"]
        best[label] = {k: ch.get(k) for k in CHOSEN_KEYS}
        best[label]["budget_ms"] = b["budget_ms"]
        best[label]["fraction"] = b["fraction"] if b["fraction"] is not None else b["budget_ms"] / t_ver
        best[label]["fraction_given"] = b["fraction"] is not None  # else explicit / fallback ms budget
        run.log("[search] " + format_choice(f"latency<={b['budget_ms']:g}ms", ch, "loss"))
        if "first_layers" in b:
            fl = b["first_layers"]
            first_for[label] = {
                "chosen": None
                if fl["chosen"] is None
                else {
                    k: fl["chosen"].get(k)
                    for k in ("name", "layers", "measured_ms", "margin_ms", "use", "sessions")
                },
                "message": fl["message"],
            }
            run.log(f"[search] baseline teacher's first k layers for {label}: {fl['message']}")
    flops_best = {}
    for label, fb in flops_final.items():
        r = res["best"][fb.label()]
        flops_best[label] = {
            **{
                k: r[k]
                for k in (
                    "space",
                    "layers",
                    "hidden",
                    "ffn_ratio",
                    "heads",
                    "loss",
                    "latency_ms",
                    "macs",
                    "params",
                )
            },
            "macs_budget": fb.macs,
            "macs_fraction": fb.macs / teacher_macs,
        }
        run.log("[search] baseline " + format_choice(f"{fb.label()} (for {label})", r, "loss"))
    return {
        "budgets_ms": [b["budget_ms"] for b in ver["budgets"]],
        "requested_budgets_ms": usable,
        "skipped_budgets_ms": skipped,
        "skipped_fractions": [f for f, b in zip(sc.budget_fractions, budgets_ms) if b < lo]
        if not sc.latency_ms
        else None,
        "unmet_budgets": unmet,
        "best": best,
        "flops_best": flops_best,
        "first_layers_for": first_for,
        "teacher_macs": teacher_macs,
        "predicted_best": res["best"],
        "objective": notes,
        "front_size": len(res["front"]),
        "evaluations": res["evaluations"],
        "verification_noise": ver["measurement"].get("noise"),
        "verification_drift": ver["measurement"].get("drift"),
        "verification_sessions": [{k: s_.get(k) for k in SESSION_KEYS} for s_ in ver.get("sessions", [])],
        "verification_rounds": {
            Budget(latency_ms=b["budget_ms"]).label(): b.get("rounds", []) for b in ver["budgets"]
        },
        "verification_correction": ver.get("correction"),
        "verification_cross_session_sd_pct": ver.get("cross_session_sd_pct"),
        "verification_teacher_ms": ver.get("teacher_ms"),
        "prediction_margin": ver.get("prediction_margin"),
        "measured_here": not run.foreign_table,
        "search_dir": str(run.out / "search"),
    }
