"""Budgets verified on the device at search time.

A search picks, among many candidates near a latency budget, those whose *predicted* latency
is just under it; any candidate the table under-predicts is favoured (the winner's curse), so
chosen students land over budget systematically. Here the best few candidates near each budget
(by objective, predicted latency up to `slack` above the budget) and a few safer ones (predicted
well under it) are measured end to end with the table's protocol, and the best one whose
*measured* latency plus a margin equal to its measured noise meets the budget is chosen.
Predicted, measured and margin are recorded; a budget no measured candidate meets says so.

Baseline (a), the teacher's first k layers, is timed in the same session and chosen per budget by
the same rule (the largest k whose measured latency plus margin meets the budget): chosen in
another session, on a machine running faster or slower then, it would be compared on other terms."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .run import candidate_key, candidate_name


def finalists(rows: list, budget_ms: float, top_k: int = 4, slack: float = 0.10, safe_k: int = 2,
              safe_frac: float = 0.8, score: str = "loss", scale: float = 1.0) -> list:
    """The best `top_k` candidates (lowest `score`) with predicted latency x `scale` <= budget x (1 + slack),
    plus the best `safe_k` with predicted latency x `scale` <= budget x safe_frac (a fallback). `scale`:
    the machine's speed now relative to when the table was profiled (1: unchanged)."""
    ranked = sorted(rows, key=lambda r: (r[score], r["latency_ms"]))
    near = [r for r in ranked if r["latency_ms"] * scale <= budget_ms * (1 + slack)][:top_k]
    safe = [r for r in ranked if r["latency_ms"] * scale <= budget_ms * safe_frac][:safe_k]
    out, seen = [], set()
    for r in near + safe:
        k = candidate_key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def _margin(m: dict, session_sd_pct: float) -> float:
    """The noise margin of one measured model: the larger of its own spread and the session's noise
    (sd % of the statistic) at its latency."""
    own = m.get("noise_sd_ms", float("nan"))
    sess = session_sd_pct / 100 * m["ms"] if math.isfinite(session_sd_pct) else float("nan")
    return max(x for x in (own, sess, 0.0) if math.isfinite(x))


def choose_first_layers(checked: list, budget_ms: float) -> dict:
    """Baseline (a) for one budget: among the teacher's first-k-layer cuts measured in the same session as
    the students' finalists ({name, layers, measured_ms, margin_ms}), the largest k whose measured latency
    plus its margin meets the budget (the rule the students are chosen by). Returns {chosen: row or None,
    message}."""
    ok = [c for c in checked if c["measured_ms"] + c["margin_ms"] <= budget_ms]
    if ok:
        ch = max(ok, key=lambda c: c["layers"])
        return {"chosen": ch, "message": f"{ch['name']}: measured {ch['measured_ms']:.2f} ms + margin "
                                         f"{ch['margin_ms']:.2f} ms <= {budget_ms:g} ms"}
    if not checked:
        return {"chosen": None, "message": "no first-k cut measured"}
    lo = min(checked, key=lambda c: c["measured_ms"] + c["margin_ms"])
    return {"chosen": None, "message": f"none fits {budget_ms:g} ms: {lo['name']} measured {lo['measured_ms']:.2f} ms "
                                       f"+ margin {lo['margin_ms']:.2f} ms"}


def verify_budgets(rows: list, budgets_ms: list, measure_fn: Callable[[list, list], dict], top_k: int = 4,
                   slack: float = 0.10, safe_k: int = 2, safe_frac: float = 0.8, score: str = "loss",
                   first_layers: dict | None = None, rescale: bool = True, min_drift: float = 0.03,
                   with_teacher: bool = False, fractions: list | None = None) -> dict:
    """measure_fn(candidate rows, extra names) -> {"models": {name: {"ms", "noise_sd_ms"}}, "noise": {"sd_pct"},
    "drift", ...}: one interleaved session for all finalists of all budgets and the extra models named:
    "teacher" (`with_teacher`) and the teacher's first-k-layer cuts of `first_layers` {name: k}
    (baseline (a)), chosen per budget by the students' rule in the same session: a machine slower or
    faster in another session moves both alike. Every measured candidate is judged against every budget.

    `fractions` (one per budget, with `with_teacher`): the budgets are those fractions of the teacher's
    latency measured in this session, the one the students and cuts are timed in; `budgets_ms` only
    picked the first session's finalists (a teacher timed once elsewhere, on a machine then slower or
    faster, would put "0.3x the teacher" somewhere else).

    A second session follows when candidates that could beat a budget's current choice lie near it
    and were not timed: with `rescale`, under the predictions scaled by the machine's speed change
    since profiling (`drift`, the anchor now / then, when it moved by more than `min_drift`): e.g. 19%
    slower, every finalist predicted near the budget measures over it and only the safe fallbacks hold,
    while candidates predicted near budget / 1.19 were never timed; and when `fractions` moved the
    budgets. Those candidates hold or not by that session's measurement, with a margin no smaller than
    session 1's noise; the first-k cuts are timed again there, and a budget whose student comes from
    the second session takes baseline (a) from it too.

    With fractional budgets the second session times the teacher too, and its candidates and cuts are
    judged against the fractions of that timing; a budget's `budget_ms` is that of the session its
    chosen student was timed in.

    Returns {"budgets": [per budget: budget_ms, requested_ms, fraction, round, met, chosen (row +
    predicted/measured/margin/budget/round), finalists (every measured candidate, judged), message,
    first_layers (when asked: chosen, message, checked, round)], "teacher_ms", "measurement": what
    measure_fn returned less its per-model details, "second_round" (the same for the second session
    with scaled_by, budgets_moved, teacher_ms, budgets_ms; or None), "measured" and
    "measured_round2": the per-model details of each session}."""
    first_layers = dict(first_layers or {})
    if fractions is not None and (not with_teacher or len(fractions) != len(budgets_ms)):
        raise ValueError(f"fractions {fractions} need with_teacher=True and one fraction per budget "
                         f"({len(budgets_ms)} budgets)")

    def union_of(per_budget):
        u = {}
        for fs in per_budget:
            for r in fs:
                u.setdefault(candidate_name(r), r)
        return u

    def check(r, m, sd, b, rnd):
        margin = _margin(m, sd)
        return {**r, "name": candidate_name(r), "predicted_ms": r["latency_ms"], "measured_ms": m["ms"],
                "margin_ms": margin, "budget_ms": b, "holds": m["ms"] + margin <= b, "round": rnd}

    def best_holding(checked):
        ok = sorted((c for c in checked if c["holds"]), key=lambda c: (c[score], c["measured_ms"]))
        return ok[0] if ok else None

    def cuts_of(meas, sd, rnd):
        return [{"name": n, "layers": k, "measured_ms": meas["models"][n]["ms"],
                 "margin_ms": _margin(meas["models"][n], sd), "round": rnd}
                for n, k in sorted(first_layers.items(), key=lambda kv: kv[1])]

    def budgets_of(meas, default):
        """The budgets of one session: the fractions of its teacher timing, else `default`."""
        t = meas["models"].get("teacher", {}).get("ms")
        return ([round(f * t, 3) for f in fractions] if fractions is not None and t else list(default)), t

    union = union_of(finalists(rows, b, top_k, slack, safe_k, safe_frac, score) for b in budgets_ms)
    extra1 = [*first_layers, *(["teacher"] if with_teacher else [])]
    if budgets_ms and (union or extra1):
        meas = measure_fn(list(union.values()), extra1)
    else:
        meas = {"models": {}, "noise": {"sd_pct": float("nan")}}
    session_sd = meas.get("noise", {}).get("sd_pct", float("nan"))
    final, teacher_ms = budgets_of(meas, budgets_ms)
    final = {1: final}
    cuts = {1: cuts_of(meas, session_sd, 1)}
    checked = [[check(r, meas["models"][n], session_sd, b, 1) for n, r in union.items()] for b in final[1]]
    # second round: candidates near the (final) budgets, under the predictions scaled by the session's
    # measured speed change, that were not timed and could beat a budget's current choice
    drift = meas.get("drift", float("nan"))
    moved = (rescale and isinstance(drift, (int, float)) and math.isfinite(drift) and drift > 0
             and abs(drift - 1) > min_drift)
    scale = drift if moved else 1.0
    meas2, teacher2 = None, None
    if moved or final[1] != list(budgets_ms):
        more = []
        for i, b in enumerate(final[1]):
            cur = best_holding(checked[i])
            more.append([r for r in finalists(rows, b, top_k, slack, safe_k, safe_frac, score, scale=scale)
                         if candidate_name(r) not in union and (cur is None or r[score] < cur[score])])
        union2 = union_of(more)
        if union2:
            # the first-k cuts (and, for fractional budgets, the teacher) again, so that a student chosen
            # here meets baseline (a) and its budget in its own session
            meas2 = measure_fn(list(union2.values()),
                               [*first_layers, *(["teacher"] if with_teacher and fractions is not None else [])])
            # margins no smaller than session 1's noise: a session of one or two models estimates it poorly
            sd2 = max((x for x in (meas2.get("noise", {}).get("sd_pct", float("nan")), session_sd)
                       if math.isfinite(x)), default=float("nan"))
            final[2], teacher2 = budgets_of(meas2, final[1])
            cuts[2] = cuts_of(meas2, sd2, 2)
            for i, b in enumerate(final[2]):
                checked[i] += [check(r, meas2["models"][n], sd2, b, 2) for n, r in union2.items()]
    out = []
    for i in range(len(budgets_ms)):
        ch = best_holding(checked[i])
        rnd = ch["round"] if ch is not None else 1
        b = final[rnd][i]  # the budget of the session the chosen student was timed in
        entry = {"budget_ms": b, "requested_ms": budgets_ms[i], "fraction": None if fractions is None else fractions[i],
                 "round": rnd, "met": ch is not None, "finalists": checked[i]}
        if ch is not None:
            entry["chosen"] = ch
            entry["message"] = (f"{ch['name']}: predicted {ch['predicted_ms']:.2f} ms, measured "
                                f"{ch['measured_ms']:.2f} ms + margin {ch['margin_ms']:.2f} ms <= {b:g} ms"
                                + (" (second session)" if rnd == 2 else ""))
        elif checked[i]:
            best = min(checked[i], key=lambda c: c["measured_ms"] + c["margin_ms"] - c["budget_ms"])
            entry["message"] = (f"no measured candidate meets {b:g} ms: the closest of {len(checked[i])} measured, "
                                f"{best['name']}, measured {best['measured_ms']:.2f} ms + margin "
                                f"{best['margin_ms']:.2f} ms (session {best['round']}, budget {best['budget_ms']:g} ms)")
        else:
            entry["message"] = f"no candidate predicted within {b:g} ms x {1 + slack:g}: nothing to measure"
        if first_layers:  # from the session the chosen student was timed in, against that session's budget
            entry["first_layers"] = {**choose_first_layers(cuts[rnd], b), "checked": cuts[rnd], "round": rnd}
        out.append(entry)
    summ = lambda m: {k: v for k, v in m.items() if k not in ("models", "timings")}
    second = None
    if meas2 is not None:
        second = {**summ(meas2), "scaled_by": scale, "budgets_moved": final[1] != list(budgets_ms),
                  "teacher_ms": teacher2, "budgets_ms": final[2]}
    return {"budgets": out, "teacher_ms": teacher_ms, "measurement": summ(meas), "second_round": second,
            "measured": meas.get("models", {}), "measured_round2": (meas2 or {}).get("models", {})}


def measure_candidates(rows: list, nets_by_space: dict, table_path, work, rounds: int | None = None,
                       extra: dict | None = None, out_name: str = "verify_measure.json") -> dict:
    """Export candidate rows from their supernets and time them end to end in a fresh process
    (`autodistil measure`, the table's protocol and anchor), in one session with `extra` models
    ({name: folder}, measured as they are, or a function writing the folder at a given path); the
    exported folders are removed after."""
    import shutil
    import tempfile
    from ..export import export_subnet
    from ..latency.run_measure import measure_in_subprocess
    from ..space import SubnetConfig
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="verify-", dir=work))
    try:
        folders = {}
        for r in rows:
            cfg = SubnetConfig(r["layers"], r["hidden"], r["ffn_ratio"], r["heads"])
            folders[candidate_name(r)] = export_subnet(nets_by_space[r["space"]], cfg, tmp / candidate_name(r))
        for name, src in (extra or {}).items():
            if name in folders:
                raise ValueError(f"extra model name {name!r} clashes with a candidate's")
            folders[name] = src(tmp / name) if callable(src) else src
        return measure_in_subprocess(table_path, folders, work / out_name, rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def first_layer_name(k: int) -> str:
    """The name (and export folder) of baseline (a) with k layers."""
    return f"teacher-first{k}"


def verify_search(candidates: list, budgets_ms: list, nets, table_path, out_dir, top_k: int = 4,
                  teacher=None, first_layers=(), rescale: bool = True, fractions: list | None = None) -> dict:
    """The search-time check both `autodistil search --verify-top` and `autodistil run` use: measure the
    finalists of each budget end to end in a fresh process (work files in OUT/verify) and write
    OUT/verified.json. nets: (model, spaces, meta) as the search loaded them. With `teacher` (a Hugging
    Face folder) the teacher is timed in the first session (`teacher_ms`; with `fractions` the budgets
    are those fractions of it), and for each k in `first_layers` its first k layers, cut with
    export.export_first_layers, are timed and chosen per budget by the students' rule (baseline (a))."""
    from ..export import export_first_layers
    from ..io import atomic_write_json
    out_dir = Path(out_dir)
    by_space = {spaces[0].name: model for model, spaces, _ in nets}
    if (first_layers or fractions is not None) and teacher is None:
        raise ValueError("first_layers and fractions need the teacher folder")
    cuts = {first_layer_name(k): k for k in first_layers}
    extra = {n: (lambda p, k=k: export_first_layers(teacher, k, p)) for n, k in cuts.items()}
    if teacher is not None:
        extra["teacher"] = str(teacher)
    calls = []

    def measure(rows, names):
        calls.append(len(rows))
        return measure_candidates(rows, by_space, table_path, out_dir / "verify", extra={n: extra[n] for n in names},
                                  out_name=f"verify_measure{len(calls)}.json")
    ver = verify_budgets(candidates, budgets_ms, measure, top_k=top_k, first_layers=cuts, rescale=rescale,
                         with_teacher=teacher is not None, fractions=fractions)
    atomic_write_json(out_dir / "verified.json", ver)
    return ver
