"""Validate a latency table: export N random students (not used to build the table), load them
back with AutoModel, time them end to end with the table's protocol (same settings, same anchor),
and compare with predictions. Reports MAPE, bias, share within 5% / 10%, Kendall tau within each
subspace over all pairs and over the pairs whose measured latencies differ by more than the
measured noise (with the FLOPs proxy's tau on the same pairs), the machine's speed drift since
profiling (the anchor), and the measured noise of the statistic (split halves of the rounds)."""

from __future__ import annotations

import math
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Optional

from ..cost import exact_cost
from ..io import atomic_write_json, write_rows_csv
from ..space import SearchSpace, SubnetConfig
from ..stats import kendall_tau, kendall_tau_pairs  # noqa: F401  (the validation's statistics; re-exported)
from .predict import LatencyTable
from ..machine import loadavg
from .profile import ModelSpec, ProfileSettings, TorchDevice, anchor_spec, machine_key, measure


def separable_pairs(meas: list, noise_sd_pct: float, k: float = 2.0) -> list[tuple]:
    """Pairs whose measured latencies differ by more than the measured noise: |m_i - m_j| >
    k x sd of that difference, with each measurement's sd = noise_sd_pct % of it (k=2: ~95 %)."""
    sd = noise_sd_pct / 100 if math.isfinite(noise_sd_pct) else 0.0
    out = []
    for i in range(len(meas)):
        for j in range(i + 1, len(meas)):
            diff_sd = sd * math.hypot(meas[i], meas[j])
            if abs(meas[i] - meas[j]) > k * diff_sd:
                out.append((i, j))
    return out


def error_stats(
    pred: list, meas: list, noise_sd_pct: float = float("nan"), flops: list | None = None
) -> dict:
    rel = [abs(p - m) / m for p, m in zip(pred, meas)]
    n = len(rel)
    st = {
        "n": n,
        "mape_pct": 100 * sum(rel) / n,
        "bias_pct": 100 * sum((p - m) / m for p, m in zip(pred, meas)) / n,
        "within_5_pct": 100 * sum(r <= 0.05 for r in rel) / n,
        "within_10_pct": 100 * sum(r <= 0.10 for r in rel) / n,
        "max_err_pct": 100 * max(rel),
        "kendall_tau": kendall_tau(pred, meas),
    }
    pairs = separable_pairs(meas, noise_sd_pct)
    st["pairs_beyond_noise"] = len(pairs)
    st["pairs_total"] = n * (n - 1) // 2
    st["kendall_tau_beyond_noise"] = kendall_tau_pairs(pred, meas, pairs)
    if flops is not None:
        st["flops_kendall_tau"] = kendall_tau(flops, meas)
        st["flops_kendall_tau_beyond_noise"] = kendall_tau_pairs(flops, meas, pairs)
    return st


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


def measure_models(
    models: dict, table: LatencyTable, settings: ProfileSettings, seed: int = 0, device=None, progress=None
) -> dict:
    """Time ready models ({name: nn.Module}) with the table's protocol and anchor, in this process.
    Returns {"models": {name: Timing.summary()}, "timings": {name: Timing}, "anchor_ms", "drift"
    (anchor now / at profiling), "noise" (split halves), "threads", "loadavg", "seconds"}."""
    dev = device or TorchDevice(settings, table.head_dim, table.vocab)
    spec = table.meta.get("anchor", {}).get("spec")
    anchor = ModelSpec(**spec) if spec else anchor_spec([SearchSpace.from_dict(d) for d in table.spaces])
    runners = {k: dev.runner(m) for k, m in models.items()}
    sess = measure(runners, settings, dev, dev.runner(anchor), seed, progress=progress)
    drift = sess.anchor["ms"] / table.anchor_ms if table.anchor_ms else float("nan")
    if hasattr(dev, "close"):
        dev.close()
    return {
        "models": {k: t.summary() for k, t in sess.timings.items()},
        "timings": sess.timings,
        "anchor_ms": sess.anchor["ms"],
        "anchor_spread_pct": sess.anchor["spread_pct"],
        "drift": drift,
        "noise": sess.noise(),
        "threads": sess.threads,
        "seconds": sess.seconds,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def check_same_device(table: LatencyTable, settings: ProfileSettings, what: str, hint: str = "") -> dict:
    """This machine's key under `settings`; raises ValueError (`what`: ...) when the table was
    measured on another device or with other settings."""
    key = machine_key(settings)
    diff = table.same_device(key)
    if diff:
        detail = ", ".join(f"{k}: table {table.key.get(k)!r}, here {key.get(k)!r}" for k in diff)
        raise ValueError(
            f"{what}: the table was measured on {table.describe_key()}, this machine is "
            f"{key.get('device_name')} (differs in {detail})" + (f"; {hint}" if hint else "")
        )
    return key


def speed_now(table: LatencyTable, settings: ProfileSettings, seed: int = 0, device=None) -> dict:
    """The machine's speed now against when the table was profiled: the table's anchor alone, timed
    with the table's protocol (its rounds: about rounds x round_s seconds), over the anchor then.
    `factor` goes to ``table.rescaled`` (docs/guides/latency.md, "Re-anchoring"). Refuses another
    device or settings (the anchor there says nothing about the table's) and a table without an
    anchor."""
    if not table.anchor_ms:
        raise ValueError(
            "the latency table records no anchor timing: profile again with `autodistil profile`"
        )
    if device is None:
        check_same_device(table, settings, "cannot time the anchor for this table here")
    res = measure_models({}, table, settings, seed, device=device)
    return {
        "factor": res["drift"],
        "anchor_ms": res["anchor_ms"],
        "table_anchor_ms": table.anchor_ms,
        "anchor_spread_pct": res["anchor_spread_pct"],
        "seconds": res["seconds"],
        "when": res["when"],
        "threads": res["threads"],
    }


def measure_folders(folders: dict, table: LatencyTable, settings: ProfileSettings, seed: int = 0) -> dict:
    """Load exported folders with AutoModel.from_pretrained and time them (measure_models)."""
    from transformers import AutoModel
    import autodistil  # noqa: F401 - registers AutoDistilBertModel with AutoModel

    models = {k: AutoModel.from_pretrained(str(p)).eval() for k, p in folders.items()}
    out = measure_models(models, table, settings, seed)
    out.pop("timings")
    return out


def export_students(students, vocab: int, head_dim: int, out: Path, supernet=None) -> dict:
    """Export each (space, cfg) from a supernet (a randomly initialised one by default: latency
    does not depend on weight values) to a HF folder under `out`. {(space, cfg): folder}."""
    from ..export import export_subnet
    from ..nn import SuperBert, SuperBertConfig

    by_space, folders = {}, {}
    for sname, cfg in students:
        by_space.setdefault(sname, []).append(cfg)
    for sname, cfgs in by_space.items():
        net = supernet
        if net is None:
            mcfg = SuperBertConfig(
                layers=max(c.layers for c in cfgs),
                hidden=max(c.hidden for c in cfgs),
                heads=max(c.heads for c in cfgs),
                ffn=max(c.ffn for c in cfgs),
                head_dim=head_dim,
                vocab_size=vocab,
            )
            net = SuperBert(mcfg)
        for cfg in cfgs:
            folders[(sname, cfg)] = export_subnet(net, cfg, out / f"{sname}-{cfg.short()}")
    return folders


def validate_table(
    table: LatencyTable,
    spaces: list[SearchSpace],
    settings: ProfileSettings,
    n: int = 24,
    seed: int = 1,
    out_dir: Optional[Path] = None,
    supernet=None,
) -> dict:
    """Export n random students, load them back with AutoModel, time them end to end with the
    table's protocol, compare with the predictions."""
    from transformers import AutoModel

    if table.speed != 1.0:
        raise ValueError(
            f"validate the table as profiled, not rescaled by {table.speed:g} (the report scales by the "
            f"anchor it times itself)"
        )
    key = check_same_device(
        table, settings, "refusing to validate", "validate on the device the table was built on"
    )
    students = random_students(spaces, n, seed)
    tmp = Path(tempfile.mkdtemp(prefix="autodistil-validate-"))
    try:
        folders = export_students(students, table.vocab, table.head_dim, tmp, supernet)
        models = {
            f"{sn}-{c.short()}": AutoModel.from_pretrained(str(folders[(sn, c)])).eval() for sn, c in students
        }
        res = measure_models(models, table, settings, seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return validation_report(table, spaces, students, res, key, out_dir)


def validation_report(table, spaces, students, res, key, out_dir=None) -> dict:
    drift = res["drift"] if math.isfinite(res["drift"]) else 1.0
    noise = res["noise"]
    rows = []
    for sname, cfg in students:
        m = res["models"][f"{sname}-{cfg.short()}"]
        p, sd = table.predict_with_uncertainty(cfg)
        lo = table.predict_low(cfg)
        rows.append(
            {
                "space": sname,
                **cfg.as_dict(),
                "measured_ms": m["ms"],
                "measured_noise_sd_ms": m["noise_sd_ms"],
                "measured_median_ms": m["median_ms"],
                "measured_low_ms": m["low_ms"],
                "measured_raw_median_ms": m["raw_median_ms"],
                "predicted_ms": p,
                "predicted_sd_ms": sd,
                "err_pct": 100 * (p - m["ms"]) / m["ms"],
                "predicted_low_ms": lo,
                "err_low_pct": 100 * (lo - m["low_ms"]) / m["low_ms"],
                "predicted_drift_adjusted_ms": p * drift,
                "err_drift_adjusted_pct": 100 * (p * drift - m["ms"]) / m["ms"],
                "macs": exact_cost(cfg, table.head_dim, table.key["seq_len"], table.vocab).macs,
            }
        )

    def stats(rs):
        meas = [r["measured_ms"] for r in rs]
        st = error_stats([r["predicted_ms"] for r in rs], meas, noise["sd_pct"], [r["macs"] for r in rs])
        adj = error_stats([r["predicted_drift_adjusted_ms"] for r in rs], meas)
        low = error_stats([r["predicted_low_ms"] for r in rs], [r["measured_low_ms"] for r in rs])
        st.update({f"{k}_drift_adjusted": adj[k] for k in ("mape_pct", "within_5_pct", "within_10_pct")})
        st.update({f"{k}_low": low[k] for k in ("mape_pct", "within_5_pct", "within_10_pct")})
        return st

    report = {
        "key": key,
        "n": len(rows),
        "when": res["when"],
        "loadavg_after": loadavg(),
        "threads": res["threads"],
        "machine_drift": drift,
        "anchor_ms": res["anchor_ms"],
        "anchor_spread_pct": res["anchor_spread_pct"],
        "table_anchor_ms": table.anchor_ms,
        "stat": table.settings.get("stat", "median"),
        "seconds": res["seconds"],
        "noise": noise,
        "table_noise": table.meta.get("noise"),
        "correction": table.correction,
        "overall": stats(rows),
        "per_space": {},
    }
    for s in spaces:
        rs = [r for r in rows if r["space"] == s.name]
        if len(rs) >= 2:
            report["per_space"][s.name] = stats(rs)
    report["students"] = rows
    report["measured"] = res["models"]
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
    axes[0].set(
        xlabel="measured latency (ms)",
        ylabel="predicted latency (ms)",
        title=f"table predictor: MAPE {o['mape_pct']:.1f}%, tau {o['kendall_tau']:.3f}",
    )
    axes[1].set(
        xlabel="exact MMACs per sequence",
        ylabel="measured latency (ms)",
        title=f"FLOPs proxy: tau {o['flops_kendall_tau']:.3f}",
    )
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{report['key'].get('device_name')} | {report['key'].get('runtime')} | "
        f"batch {report['key'].get('batch')} seq {report['key'].get('seq_len')}",
        fontsize=9,
    )
    fig.tight_layout()
    atomic_save(Path(path), lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return Path(path)
