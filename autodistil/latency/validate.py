"""Validate a latency table: export N random students (not used to build the table), measure
their end-to-end latency the same way (interleaved, repeated), and compare with predictions.
Reports MAPE, share within 5% / 10%, Kendall tau (overall and within each subspace), the
Kendall tau of the FLOPs proxy on the same students, and the measurement noise floor."""
from __future__ import annotations

import random
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Optional

from ..cost import exact_cost
from ..io import atomic_write_json, write_rows_csv
from ..space import SearchSpace, SubnetConfig
from .predict import LatencyTable
from .profile import ProfileSettings, machine_key, make_runner, measure_interleaved


def kendall_tau(x: list, y: list) -> float:
    """Kendall's tau-b (ties handled), O(n^2)."""
    n = len(x)
    if n < 2:
        return float("nan")
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            dx, dy = x[i] - x[j], y[i] - y[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                tx += 1
            elif dy == 0:
                ty += 1
            elif (dx > 0) == (dy > 0):
                conc += 1
            else:
                disc += 1
    den = ((conc + disc + tx) * (conc + disc + ty)) ** 0.5
    return (conc - disc) / den if den else float("nan")


def error_stats(pred: list, meas: list) -> dict:
    rel = [abs(p - m) / m for p, m in zip(pred, meas)]
    n = len(rel)
    return {"n": n, "mape_pct": 100 * sum(rel) / n, "within_5_pct": 100 * sum(r <= 0.05 for r in rel) / n,
            "within_10_pct": 100 * sum(r <= 0.10 for r in rel) / n, "max_err_pct": 100 * max(rel),
            "kendall_tau": kendall_tau(pred, meas)}


def noise_floor(per_round: dict) -> dict:
    """How well one round predicts the median of the others (no predictor can beat this)."""
    rel = []
    for rounds in per_round.values():
        for i, v in enumerate(rounds):
            rest = rounds[:i] + rounds[i + 1:]
            if rest:
                m = statistics.median(rest)
                rel.append(abs(v - m) / m)
    if not rel:
        return {"noise_mape_pct": float("nan")}
    return {"noise_mape_pct": 100 * sum(rel) / len(rel), "noise_within_5_pct": 100 * sum(r <= 0.05 for r in rel) / len(rel)}


def random_students(spaces: list[SearchSpace], n: int, seed: int = 1) -> list[tuple[str, SubnetConfig]]:
    rng = random.Random(seed)
    out, seen = [], set()
    per = max(1, n // len(spaces))
    for s in spaces:
        k = 0
        while k < per and len(seen) < sum(len(x) for x in spaces):
            c = s.sample(rng)
            if (s.name, c) not in seen:
                seen.add((s.name, c))
                out.append((s.name, c))
                k += 1
    return out


def measure_students(students, table_vocab: int, head_dim: int, settings: ProfileSettings, supernet=None,
                     seed: int = 0, anchor: tuple | None = None) -> dict:
    """Export each student to a HF folder, load it back with AutoModel, time it interleaved.
    Returns {(space, cfg): (median_ms, spread_ms, per_round)}."""
    from transformers import AutoModel
    from ..export import export_subnet
    from ..nn import SuperBert, SuperBertConfig
    tmp = Path(tempfile.mkdtemp(prefix="autodistil-validate-"))
    try:
        runners = {}
        by_space = {}
        for sname, cfg in students:
            by_space.setdefault(sname, []).append(cfg)
        for sname, cfgs in by_space.items():
            net = supernet
            if net is None:  # a randomly initialised supernet: latency does not depend on weight values
                big = SubnetConfig(max(c.layers for c in cfgs), max(c.hidden for c in cfgs),
                                   max(c.ffn for c in cfgs) / max(c.hidden for c in cfgs), max(c.heads for c in cfgs))
                mcfg = SuperBertConfig(layers=big.layers, hidden=big.hidden, heads=big.heads,
                                       ffn=max(c.ffn for c in cfgs), head_dim=head_dim, vocab_size=table_vocab)
                net = SuperBert(mcfg)
            for cfg in cfgs:
                folder = export_subnet(net, cfg, tmp / f"{sname}-{cfg.short()}")
                model = AutoModel.from_pretrained(folder).eval()
                runners[(sname, cfg)] = make_runner(model, settings, tmp)
        if anchor is not None:
            from .profile import make_student
            runners["anchor"] = make_runner(make_student(*anchor, head_dim, table_vocab), settings, tmp)
        return measure_interleaved(runners, settings, seed, desc="measuring students")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def validate_table(table: LatencyTable, spaces: list[SearchSpace], settings: ProfileSettings, n: int = 24,
                   seed: int = 1, out_dir: Optional[Path] = None, supernet=None) -> dict:
    key = machine_key(settings)
    diff = table.same_device(key)
    if diff:
        raise ValueError(f"refusing to validate: the table was measured on {table.describe_key()}, this run is "
                         f"{key.get('device_name')} (differs in {diff}); validate on the device the table was built on")
    students = random_students(spaces, n, seed)
    anchor = table.meta.get("anchor")
    res = measure_students(students, table.vocab, table.head_dim, settings, supernet, seed,
                           tuple(anchor["model"]) if anchor else None)
    drift = 1.0
    if anchor:
        drift = res.pop("anchor")[0] / anchor["ms"]
    rows = []
    for (sname, cfg), (ms, spread, rounds) in res.items():
        p, sd = table.predict_with_uncertainty(cfg)
        rows.append({"space": sname, **cfg.as_dict(), "measured_ms": ms, "measured_spread_ms": spread,
                     "predicted_ms": p, "predicted_sd_ms": sd, "err_pct": 100 * (p - ms) / ms,
                     "predicted_drift_adjusted_ms": p * drift, "err_drift_adjusted_pct": 100 * (p * drift - ms) / ms,
                     "macs": exact_cost(cfg, table.head_dim, table.key["seq_len"], table.vocab).macs})
    report = {"key": key, "n": len(rows), "machine_drift": drift,
              "overall": error_stats([r["predicted_ms"] for r in rows], [r["measured_ms"] for r in rows]),
              "overall_drift_adjusted": error_stats([r["predicted_drift_adjusted_ms"] for r in rows],
                                                    [r["measured_ms"] for r in rows])}
    report["overall"]["flops_kendall_tau"] = kendall_tau([r["macs"] for r in rows], [r["measured_ms"] for r in rows])
    report["per_space"] = {}
    for s in spaces:
        rs = [r for r in rows if r["space"] == s.name]
        if len(rs) >= 2:
            st = error_stats([r["predicted_ms"] for r in rs], [r["measured_ms"] for r in rs])
            st["flops_kendall_tau"] = kendall_tau([r["macs"] for r in rs], [r["measured_ms"] for r in rs])
            adj = error_stats([r["predicted_drift_adjusted_ms"] for r in rs], [r["measured_ms"] for r in rs])
            st.update({f"{k}_drift_adjusted": adj[k] for k in ("mape_pct", "within_5_pct", "within_10_pct")})
            report["per_space"][s.name] = st
    report["noise"] = noise_floor({k: v[2] for k, v in res.items()})
    report["students"] = rows
    if out_dir is not None:
        out_dir = Path(out_dir)
        atomic_write_json(out_dir / "latency_validation.json", report)
        write_rows_csv(out_dir / "latency_validation.csv", rows)
        plot_validation(rows, out_dir / "latency_validation.png", report)
    return report


def plot_validation(rows, path, report) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from ..io import atomic_save
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    spaces = sorted({r["space"] for r in rows})
    for s in spaces:
        rs = [r for r in rows if r["space"] == s]
        axes[0].scatter([r["measured_ms"] for r in rs], [r["predicted_ms"] for r in rs], label=s, s=18)
        axes[1].scatter([r["macs"] / 1e6 for r in rs], [r["measured_ms"] for r in rs], label=s, s=18)
    lo = min(min(r["measured_ms"], r["predicted_ms"]) for r in rows)
    hi = max(max(r["measured_ms"], r["predicted_ms"]) for r in rows)
    axes[0].plot([lo, hi], [lo, hi], "k--", lw=1)
    o = report["overall"]
    axes[0].set(xlabel="measured latency (ms)", ylabel="predicted latency (ms)",
                title=f"table predictor: MAPE {o['mape_pct']:.1f}%, tau {o['kendall_tau']:.3f}")
    axes[1].set(xlabel="exact MMACs per sequence", ylabel="measured latency (ms)",
                title=f"FLOPs proxy: tau {o['flops_kendall_tau']:.3f}")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['key'].get('device_name')} | {report['key'].get('runtime')} | "
                 f"batch {report['key'].get('batch')} seq {report['key'].get('seq_len')}", fontsize=9)
    fig.tight_layout()
    atomic_save(Path(path), lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return Path(path)
