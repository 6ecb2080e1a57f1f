"""Reusing a latency table later (issue 14): a table profiled earlier (another session, possibly
another host behind the same CPU name) is validated now, as is and under the factor that
`autodistil predict --reanchor` / `search --reanchor` use: the table's anchor alone, timed with its
protocol just before the students are measured (latency.validate.speed_now), not interleaved with
them as the validation's own "drift-adjusted" column is.

    python -m experiments.table_reuse --table OLD/table.json [--out DIR] [--n 36] [--seed 1]

Writes DIR/table_reuse.json (the pre-timed factor, the validation's interleaved anchor ratio, and
per scope the MAPE, bias and share within 5 / 10 % of: the table as is, x the pre-timed factor,
x the interleaved ratio) and the validation's own files (DIR/latency_validation.{json,csv,png});
DIR defaults to experiments/results/<today>_table_reuse.
The validation refuses a table from another device or settings (latency.validate.validate_table).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from autodistil.io import atomic_write_json
from autodistil.latency.predict import LatencyTable
from autodistil.latency.profile import ProfileSettings
from autodistil.latency.validate import error_stats, speed_now, validate_table
from autodistil.space import SearchSpace
from experiments.common import dated


def scope_stats(rows: list, factor: float, drift: float) -> dict:
    """Errors of the table's predictions against the students measured now: as is, x the pre-timed
    factor, x the validation's interleaved anchor ratio."""
    meas = [r["measured_ms"] for r in rows]
    pred = [r["predicted_ms"] for r in rows]
    out = {"n": len(rows)}
    for name, k in (("as_is", 1.0), ("reanchored", factor), ("interleaved", drift)):
        st = error_stats([p * k for p in pred], meas)
        out[name] = {m: round(st[m], 3) for m in ("mape_pct", "bias_pct", "within_5_pct", "within_10_pct")}
    return out


def reuse_report(rows: list, factor: float, drift: float) -> dict:
    scopes = {"all": rows}
    for r in rows:
        scopes.setdefault(r["space"], []).append(r)
    return {name: scope_stats(rs, factor, drift) for name, rs in scopes.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", required=True, help="a latency table profiled earlier on this kind of machine")
    ap.add_argument("--out", default=None, help="default experiments/results/<today>_table_reuse")
    ap.add_argument("--n", type=int, default=36)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else dated("table_reuse")
    out.mkdir(parents=True, exist_ok=True)
    table = LatencyTable.load(a.table)
    st = ProfileSettings.from_dict(table.settings)
    spaces = [SearchSpace.from_dict(d) for d in table.spaces]
    t0 = time.strftime("%Y-%m-%dT%H:%M:%S")
    sp = speed_now(table, st)
    print(
        f"anchor now {sp['anchor_ms']:.3f} ms, at profiling ({table.meta.get('created')}) "
        f"{sp['table_anchor_ms']:.3f} ms: factor {sp['factor']:.3f}",
        flush=True,
    )
    rep = validate_table(table, spaces, st, a.n, a.seed, out)
    res = {
        "table": str(a.table),
        "table_created": table.meta.get("created"),
        "start": t0,
        "speed_now": sp,
        "interleaved_ratio": rep["machine_drift"],
        "validation_noise": rep["noise"],
        "scopes": reuse_report(rep["students"], sp["factor"], rep["machine_drift"]),
    }
    atomic_write_json(out / "table_reuse.json", res)
    print(f"validation's own anchor ratio (interleaved with the students): {rep['machine_drift']:.3f}")
    print("| scope | n | as is: MAPE % / bias % / within 10 % | x pre-timed factor | x interleaved ratio |")
    print("|---|---|---|---|---|")
    for name, s in res["scopes"].items():
        cell = lambda d: f"{d['mape_pct']:.2f} / {d['bias_pct']:+.2f} / {d['within_10_pct']:.0f}"  # noqa: E731
        print(
            f"| {name} | {s['n']} | {cell(s['as_is'])} | {cell(s['reanchored'])} | {cell(s['interleaved'])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
