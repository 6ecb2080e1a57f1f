"""Budgets verified on the device at search time.

A search picks, among many candidates near a latency budget, those whose *predicted* latency
is just under it; any candidate the table under-predicts is favoured (the winner's curse), so
chosen students land over budget systematically. Here the best few candidates near each budget
(by objective, predicted latency up to `slack` above the budget) and a few safer ones (predicted
well under it) are measured end to end with the table's protocol, and the best one whose
*measured* latency plus a margin equal to its measured noise meets the budget is chosen.
Predicted, measured and margin are recorded; a budget no measured candidate meets says so."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from .run import candidate_key, candidate_name


def finalists(rows: list, budget_ms: float, top_k: int = 4, slack: float = 0.10, safe_k: int = 2,
              safe_frac: float = 0.8, score: str = "loss") -> list:
    """The best `top_k` candidates (lowest `score`) with predicted latency <= budget x (1 + slack),
    plus the best `safe_k` with predicted latency <= budget x safe_frac (a fallback)."""
    ranked = sorted(rows, key=lambda r: (r[score], r["latency_ms"]))
    near = [r for r in ranked if r["latency_ms"] <= budget_ms * (1 + slack)][:top_k]
    safe = [r for r in ranked if r["latency_ms"] <= budget_ms * safe_frac][:safe_k]
    out, seen = [], set()
    for r in near + safe:
        k = candidate_key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def verify_budgets(rows: list, budgets_ms: list, measure_fn: Callable[[list], dict], top_k: int = 4,
                   slack: float = 0.10, safe_k: int = 2, safe_frac: float = 0.8, score: str = "loss") -> dict:
    """measure_fn(list of candidate rows) -> {"models": {candidate_name: {"ms", "noise_sd_ms"}},
    "noise": {"sd_pct"}, ...} (one interleaved session for all finalists of all budgets).
    Returns {"budgets": [per budget: budget_ms, met, chosen (row + predicted/measured/margin),
    finalists, message], "measurement": what measure_fn returned less its per-model details}."""
    per_budget = {b: finalists(rows, b, top_k, slack, safe_k, safe_frac, score) for b in budgets_ms}
    union = {}
    for fs in per_budget.values():
        for r in fs:
            union.setdefault(candidate_name(r), r)
    meas = measure_fn(list(union.values())) if union else {"models": {}, "noise": {"sd_pct": float("nan")}}
    session_sd = meas.get("noise", {}).get("sd_pct", float("nan"))
    out = []
    for b in budgets_ms:
        checked = []
        for r in per_budget[b]:
            m = meas["models"][candidate_name(r)]
            own = m.get("noise_sd_ms", float("nan"))
            sess = session_sd / 100 * m["ms"] if math.isfinite(session_sd) else float("nan")
            margin = max(x for x in (own, sess, 0.0) if math.isfinite(x))
            checked.append({**r, "name": candidate_name(r), "predicted_ms": r["latency_ms"], "measured_ms": m["ms"],
                            "margin_ms": margin, "holds": m["ms"] + margin <= b})
        ok = sorted((c for c in checked if c["holds"]), key=lambda c: (c[score], c["measured_ms"]))
        entry = {"budget_ms": b, "met": bool(ok), "finalists": checked}
        if ok:
            entry["chosen"] = ok[0]
            entry["message"] = (f"{ok[0]['name']}: predicted {ok[0]['predicted_ms']:.2f} ms, measured "
                                f"{ok[0]['measured_ms']:.2f} ms + margin {ok[0]['margin_ms']:.2f} ms <= {b:g} ms")
        elif checked:
            best = min(checked, key=lambda c: c["measured_ms"] + c["margin_ms"])
            entry["message"] = (f"no measured candidate meets {b:g} ms: the fastest of {len(checked)} finalists, "
                                f"{best['name']}, measured {best['measured_ms']:.2f} ms + margin "
                                f"{best['margin_ms']:.2f} ms")
        else:
            entry["message"] = f"no candidate predicted within {b:g} ms x {1 + slack:g}: nothing to measure"
        out.append(entry)
    return {"budgets": out, "measurement": {k: v for k, v in meas.items() if k not in ("models", "timings")},
            "measured": meas.get("models", {})}


def measure_candidates(rows: list, nets_by_space: dict, table_path, work, rounds: int | None = None) -> dict:
    """Export candidate rows from their supernets and time them end to end in a fresh process
    (`autodistil measure`, the table's protocol and anchor); the folders are removed after."""
    import shutil
    import tempfile
    from pathlib import Path
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
        return measure_in_subprocess(table_path, folders, work / "verify_measure.json", rounds)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def verify_search(candidates: list, budgets_ms: list, nets, table_path, out_dir, top_k: int = 4) -> dict:
    """The search-time check both `autodistil search --verify-top` and `autodistil run` use: measure the
    finalists of each budget end to end in a fresh process (work files in OUT/verify) and write
    OUT/verified.json. nets: (model, spaces, meta) as the search loaded them."""
    from ..io import atomic_write_json
    out_dir = Path(out_dir)
    by_space = {spaces[0].name: model for model, spaces, _ in nets}
    ver = verify_budgets(candidates, budgets_ms,
                         lambda rows: measure_candidates(rows, by_space, table_path, out_dir / "verify"), top_k=top_k)
    atomic_write_json(out_dir / "verified.json", ver)
    return ver
