"""Held-out latency validation over several runs (issue 29's target: MAPE <= 5 %, >= 90 % within 10 %,
over 3 runs at different times of day), from the raw folders `bench/latency_validate.py` writes.

    python bench/validation_summary.py bench/results/DATE-latency-validate-run1 ... --out DIR

Per run: when it was validated, the held-out students, the machine's drift since profiling (the anchor
now over the anchor in the table), and the table's errors as profiled and against the anchor timed in
the same rounds (`*_drift_adjusted`: every prediction x that drift). Writes DIR/validation_summary.json
and .csv; prints a markdown table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from autodistil.io import atomic_write_json, write_rows_csv

TARGET = {"mape_pct": 5.0, "within_10_pct": 90.0}


def summarise(folder: Path) -> dict:
    v = json.loads((folder / "latency_validation.json").read_text())
    o = v["overall"]
    return {
        "run": folder.name,
        "validated": v["when"],
        "n": o["n"],
        "machine_drift": v["machine_drift"],
        "noise_sd_pct": v["noise"]["sd_pct"],
        "mape_pct_as_profiled": o["mape_pct"],
        "within_10_pct_as_profiled": o["within_10_pct"],
        "mape_pct": o["mape_pct_drift_adjusted"],
        "within_5_pct": o["within_5_pct_drift_adjusted"],
        "within_10_pct": o["within_10_pct_drift_adjusted"],
        "kendall_tau": o["kendall_tau"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="folders written by bench/latency_validate.py")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    rows = [summarise(Path(r)) for r in a.runs]
    met = all(
        r["mape_pct"] <= TARGET["mape_pct"] and r["within_10_pct"] >= TARGET["within_10_pct"] for r in rows
    )
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out / "validation_summary.json", {"runs": rows, "target": TARGET, "met_in_every_run": met}
    )
    write_rows_csv(out / "validation_summary.csv", rows)
    print(
        "| run | validated | n | drift | MAPE as profiled | MAPE with the anchor | within 5 % | within 10 % |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['run']} | {r['validated']} | {r['n']} | {r['machine_drift']:.3f} | "
            f"{r['mape_pct_as_profiled']:.1f} % | {r['mape_pct']:.1f} % | {r['within_5_pct']:.0f} % | "
            f"{r['within_10_pct']:.0f} % |"
        )
    print(f"target (MAPE <= 5 %, >= 90 % within 10 %) met in every run: {met}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
